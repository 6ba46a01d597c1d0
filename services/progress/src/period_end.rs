//! When a milestone's period is over (in its tenant's time zone), publish
//! PERIOD_ENDED for it and, if the target was not reached, MISSED. Each
//! fires once per milestone, recorded in its fired set in the same
//! transaction as the events.

use std::time::Duration;

use chrono::Utc;
use milestones_api::progress as pb;
use milestones_domain::calendar::format_date;
use milestones_runtime::ApiError;
use tokio::sync::watch;

use crate::ops::{event_of, Progress, ProgressChanged};
use crate::rules::Crossing;
use crate::store;

/// Checks every `every` until `stop` flips.
pub async fn run(progress: Progress, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(e) = progress.close_ended_periods().await {
            tracing::warn!(error = %e, "period-end check failed; will retry");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
    }
}

impl Progress {
    /// Publishes the period-end events of every active milestone whose
    /// period ended before today in its tenant's zone.
    pub async fn close_ended_periods(&self) -> Result<usize, ApiError> {
        let candidates = store::milestones_where(
            self.db.conn(),
            "state = 'active' AND fired NOT LIKE '%\"period_ended\":true%' AND end_date < $1",
            // Any tenant's "today" is at most one day ahead of UTC's.
            vec![format_date(Utc::now().date_naive() + chrono::Days::new(1)).into()],
        )
        .await?;
        let mut closed = 0;
        for candidate in candidates {
            let txn = self.db.begin_write().await?;
            let settings = store::tenant_settings(&*txn, &candidate.tenant_id).await?;
            let today = format_date(settings.today(Utc::now()));
            // Re-read inside the transaction, locked: the row may have moved
            // on, and the whole row is written back below, so an ingestion
            // committing meanwhile would lose its increment and the
            // thresholds it announced. SQLite has one writer at a time.
            let clause = if self.db.backend() == sea_orm::DatabaseBackend::Postgres {
                "id = $1 FOR UPDATE"
            } else {
                "id = $1"
            };
            let Some(mut m) = store::milestones_where(&*txn, clause, vec![candidate.id.clone().into()])
                .await?
                .into_iter()
                .next()
            else {
                continue;
            };
            if m.fired.period_ended || m.state != "active" || m.end_date >= today {
                continue;
            }
            m.fired.period_ended = true;
            let now = milestones_runtime::wire::now_micros();
            // The period's last day: who the owner belonged to when it ended.
            let owner_teams = store::owner_teams_on(&*txn, &m, &m.end_date).await?;
            let mut events = vec![event_of(
                &m,
                &Crossing {
                    kind: pb::MilestoneEventKind::PeriodEnded,
                    checkpoint_index: None,
                    threshold: m.target,
                },
                &owner_teams,
                None,
                &settings.calendar,
                now,
            )];
            if m.value < m.target {
                events.push(event_of(
                    &m,
                    &Crossing {
                        kind: pb::MilestoneEventKind::Missed,
                        checkpoint_index: None,
                        threshold: m.target,
                    },
                    &owner_teams,
                    None,
                    &settings.calendar,
                    now,
                ));
            }
            m.save_progress(&*txn).await?;
            let changed = ProgressChanged {
                tenant_id: m.tenant_id.clone(),
                milestone_id: m.id.clone(),
                owner_kind: m.owner_kind.clone(),
                owner_id: m.owner_id.clone(),
            };
            self.commit_with_events(txn, events, vec![changed]).await?;
            closed += 1;
        }
        Ok(closed)
    }
}
