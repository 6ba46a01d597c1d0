//! Group commit for unary `RecordActivity`.
//!
//! Every activity updates its team milestones up the tree, so concurrent
//! calls queue on the same few rows (the root team's milestone above all),
//! each holding its row locks until its commit has been flushed to disk:
//! one flush per call bounds throughput however many clients there are.
//! Instead, calls that arrive while earlier ones are being written wait in a
//! queue and are recorded together, in one transaction with one flush, by
//! the same code path as a `RecordActivities` batch.
//!
//! Each call keeps its own semantics: its own `request_id`, its own reply,
//! and its own errors. A merged batch is all or nothing, so when it fails
//! (an unknown member in one call, a request id sent twice at once) its
//! calls are recorded again one by one, and each gets the outcome it would
//! have had alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use milestones_api::progress as pb;
use milestones_runtime::auth::Caller;
use milestones_runtime::ApiError;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::ops::{NewActivity, Progress};

/// Batches being written at once. Every batch updates the same team
/// milestones up the tree, so a second writer waits on the first one's row
/// locks for part of its write; but it plans, inserts and talks to its
/// clients meanwhile. More writers only queue on the same rows.
const WRITERS: u32 = 2;

/// The fewest calls a batch must hold to be written beside another one.
/// A second writer pays a whole transaction for its batch (most of a
/// small batch's cost), while the calls it takes would otherwise only wait
/// for the first writer's commit and join the next, larger batch. So it
/// starts only when enough calls wait. Measured on PostgreSQL (2026-11-29,
/// three A/B pairs): 16 clients 3.9-4.5k calls/s with one writer against
/// 3.7k with two; 64 clients 6.8-7.8k with two against 6.0-6.5k with one.
const SECOND_WRITER_FROM: usize = 24;

/// Most calls merged into one transaction.
const MAX_MERGED: usize = 512;

/// One waiting call.
struct Pending {
    caller: Caller,
    entry: NewActivity,
    reply: oneshot::Sender<Result<pb::Activity, ApiError>>,
}

/// The queue of unary calls; cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts the dispatcher; it ends when the last handle is dropped.
    pub fn start(progress: Progress) -> Self {
        let (queue, calls) = mpsc::channel(4 * MAX_MERGED);
        tokio::spawn(dispatch(progress, calls));
        Self { queue }
    }

    /// Records one activity, possibly in a transaction with others.
    pub async fn record(&self, caller: Caller, entry: NewActivity) -> Result<pb::Activity, ApiError> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Pending { caller, entry, reply })
            .await
            .map_err(|_| ApiError::Unavailable {
                message: "the service is shutting down; retry on another replica".into(),
            })?;
        outcome
            .await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("the group commit writer stopped")))?
    }
}

/// How long a batch waits for the callers of the previous batch to come
/// back: a client that got its reply usually sends its next call within a
/// fraction of a millisecond.
const REGROUP_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

/// Takes whatever has queued each time a writer is free, so batches grow
/// with load and a lone call waits for nothing.
///
/// Callers that wait on their replies (most clients) come back together
/// just after a batch commits, while the next batch has already started
/// with the one or two calls that were early: batches would alternate
/// between a few calls and all the others, each paying a whole
/// transaction. So when fewer calls are waiting than the previous batch
/// held, the next batch waits briefly (at most [`REGROUP_WAIT`]) for that
/// many to gather.
async fn dispatch(progress: Progress, mut calls: mpsc::Receiver<Pending>) {
    let writers = Arc::new(Semaphore::new(WRITERS as usize));
    let mut previous_size = 0;
    loop {
        let Ok(mut permit) = writers.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = calls.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let regroup = tokio::time::Instant::now() + REGROUP_WAIT;
        while batch.len() < MAX_MERGED {
            match calls.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) if batch.len() < previous_size => match tokio::time::timeout_at(regroup, calls.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    _ => break,
                },
                Err(_) => break,
            }
        }
        // A small batch waits for the other writer, gathering the calls
        // that arrive meanwhile, unless they become enough to go beside it.
        // The calls already taken are written whatever happens: with no
        // more calls to come (the service stopping), without waiting.
        let mut more = true;
        while more && batch.len() < SECOND_WRITER_FROM && permit.num_permits() < WRITERS as usize {
            tokio::select! {
                rest = writers.clone().acquire_many_owned(WRITERS - 1) => match rest {
                    Ok(rest) => permit.merge(rest),
                    Err(_) => more = false,
                },
                p = calls.recv() => match p {
                    Some(p) => batch.push(p),
                    None => more = false,
                },
            }
        }
        previous_size = batch.len();
        let progress = progress.clone();
        tokio::spawn(async move {
            // Idempotency keys belong to a caller: merge per caller only.
            let mut by_caller: BTreeMap<(String, String), Vec<Pending>> = BTreeMap::new();
            for p in batch {
                by_caller
                    .entry((p.caller.tenant_id.clone(), p.caller.subject.clone()))
                    .or_default()
                    .push(p);
            }
            for (_, group) in by_caller {
                write(&progress, group).await;
            }
            drop(permit);
        });
    }
}

/// Records a caller's merged calls; on failure, each alone.
async fn write(progress: &Progress, group: Vec<Pending>) {
    if group.len() > 1 {
        let caller = group[0].caller.clone();
        let entries: Vec<NewActivity> = group.iter().map(|p| p.entry.clone()).collect();
        if let Ok(recorded) = progress.record(&caller, entries, false).await {
            // One activity per entry, in order.
            let mut recorded = recorded.into_iter();
            for p in group {
                let _ = p.reply.send(
                    recorded
                        .next()
                        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("record returned too few activities"))),
                );
            }
            return;
        }
    }
    for p in group {
        let outcome = progress
            .record(&p.caller, vec![p.entry], false)
            .await
            .and_then(|mut out| {
                out.pop()
                    .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("record returned nothing")))
            });
        // The caller may have gone; its activity is recorded all the same.
        let _ = p.reply.send(outcome);
    }
}
