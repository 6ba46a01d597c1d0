//! Group commit: concurrent calls recorded in one transaction.
//!
//! Every activity updates its team milestones up the tree, so concurrent
//! calls queue on the same few rows (the root team's milestone above all),
//! each holding its row locks until its commit has been flushed to disk:
//! one flush per call bounds throughput however many clients there are.
//! Instead, calls that arrive while earlier ones are being written wait in a
//! queue and are recorded together, in one transaction with one flush, by
//! the same code path as a `RecordActivities` batch.
//!
//! Bulk `RecordActivities` calls are merged the same way, in a queue of
//! their own: a batch's running totals cost one row per milestone and per
//! rep's day it touches, however many of its activities touch them, so a
//! transaction of several batches pays for the common rows once. Measured
//! on PostgreSQL (2026-11-29, 1,000 reps, 390,000 activities): 1,000
//! activities per transaction 31-34k activities/s, 2,000 43k, 4,000 56k.
//!
//! Each call keeps its own semantics: its own `request_id`s, its own reply,
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

/// How a queue merges its calls.
#[derive(Clone, Copy, Debug)]
struct Tuning {
    /// Batches being written at once. Every batch updates the same team
    /// milestones up the tree, so a second writer waits on the first one's
    /// row locks (or its turn at the totals) for part of its write; but it
    /// plans, inserts and talks to its clients meanwhile. More writers only
    /// queue on the same rows.
    writers: u32,
    /// The fewest activities a batch must hold to be written beside
    /// another one; a smaller batch waits for the writer in flight instead,
    /// gathering the calls that arrive meanwhile.
    second_writer_from: usize,
    /// Most activities merged into one transaction.
    max_merged: usize,
    /// Calls that may wait in the queue before callers wait to enqueue.
    queued: usize,
    /// Whether the calls are `RecordActivities` batches.
    bulk: bool,
}

/// Unary `RecordActivity`. A second writer pays a whole transaction for its
/// batch (most of a small batch's cost), while the calls it takes would
/// otherwise only wait for the first writer's commit and join the next,
/// larger batch: so it starts only when 24 calls wait. Measured on
/// PostgreSQL (2026-11-29, three A/B pairs): 16 clients 3.9-4.5k calls/s
/// with one writer against 3.7k with two; 64 clients 6.8-7.8k with two
/// against 6.0-6.5k with one.
const UNARY: Tuning = Tuning {
    writers: 2,
    second_writer_from: 24,
    max_merged: 512,
    queued: 2_048,
    bulk: false,
};

/// `RecordActivities`: up to four full batches per transaction (a larger
/// transaction holds the totals' row locks longer for little gain), and a
/// second writer as soon as a whole batch waits, so that one batch is
/// planned and inserted while another updates the totals.
const BULK: Tuning = Tuning {
    writers: 2,
    second_writer_from: crate::ops::MAX_BATCH,
    max_merged: 4 * crate::ops::MAX_BATCH,
    queued: 64,
    bulk: true,
};

/// One waiting call.
struct Pending {
    caller: Caller,
    entries: Vec<NewActivity>,
    reply: oneshot::Sender<Result<Vec<pb::Activity>, ApiError>>,
}

/// A queue of calls; cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// The queue of unary calls. Its dispatcher ends when the last handle
    /// is dropped.
    pub fn unary(progress: Progress) -> Self {
        Self::start(progress, UNARY)
    }

    /// The queue of `RecordActivities` batches.
    pub fn bulk(progress: Progress) -> Self {
        Self::start(progress, BULK)
    }

    fn start(progress: Progress, tuning: Tuning) -> Self {
        let (queue, calls) = mpsc::channel(tuning.queued);
        tokio::spawn(dispatch(progress, calls, tuning));
        Self { queue }
    }

    /// Records a call's activities, possibly in a transaction with other
    /// calls', and returns them in order.
    pub async fn record(&self, caller: Caller, entries: Vec<NewActivity>) -> Result<Vec<pb::Activity>, ApiError> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Pending { caller, entries, reply })
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

/// The calls of one transaction.
#[derive(Default)]
struct Batch {
    calls: Vec<Pending>,
    activities: usize,
}

impl Batch {
    /// Adds `p` if it fits below `max` activities (a first call always
    /// does); else gives it back.
    fn take(&mut self, p: Pending, max: usize) -> Option<Pending> {
        if !self.calls.is_empty() && self.activities + p.entries.len() > max {
            return Some(p);
        }
        self.activities += p.entries.len();
        self.calls.push(p);
        None
    }
}

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
async fn dispatch(progress: Progress, mut calls: mpsc::Receiver<Pending>, tuning: Tuning) {
    let writers = Arc::new(Semaphore::new(tuning.writers as usize));
    let mut previous_size = 0;
    // A call that did not fit in the last batch: it starts the next one.
    let mut left_over: Option<Pending> = None;
    loop {
        let Ok(mut permit) = writers.clone().acquire_owned().await else {
            return;
        };
        let first = match left_over.take() {
            Some(p) => p,
            None => match calls.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut batch = Batch::default();
        let _ = batch.take(first, tuning.max_merged);
        let regroup = tokio::time::Instant::now() + REGROUP_WAIT;
        while left_over.is_none() && batch.activities < tuning.max_merged {
            let next = match calls.try_recv() {
                Ok(p) => p,
                Err(_) if batch.calls.len() < previous_size => {
                    match tokio::time::timeout_at(regroup, calls.recv()).await {
                        Ok(Some(p)) => p,
                        _ => break,
                    }
                }
                Err(_) => break,
            };
            left_over = batch.take(next, tuning.max_merged);
        }
        // A small batch waits for the other writer, gathering the calls
        // that arrive meanwhile, unless they become enough to go beside it.
        // The calls already taken are written whatever happens: with no
        // more calls to come (the service stopping), without waiting.
        let mut more = true;
        while more
            && left_over.is_none()
            && batch.activities < tuning.second_writer_from
            && permit.num_permits() < tuning.writers as usize
        {
            tokio::select! {
                rest = writers.clone().acquire_many_owned(tuning.writers - 1) => match rest {
                    Ok(rest) => permit.merge(rest),
                    Err(_) => more = false,
                },
                p = calls.recv() => match p {
                    Some(p) => left_over = batch.take(p, tuning.max_merged),
                    None => more = false,
                },
            }
        }
        previous_size = batch.calls.len();
        tracing::debug!(calls = previous_size, "ingest: batch gathered");
        let progress = progress.clone();
        tokio::spawn(async move {
            // Idempotency keys belong to a caller: merge per caller only.
            let mut by_caller: BTreeMap<(String, String), Vec<Pending>> = BTreeMap::new();
            for p in batch.calls {
                by_caller
                    .entry((p.caller.tenant_id.clone(), p.caller.subject.clone()))
                    .or_default()
                    .push(p);
            }
            for (_, group) in by_caller {
                write(&progress, group, tuning.bulk).await;
            }
            drop(permit);
        });
    }
}

/// Records a caller's merged calls; on failure, each alone.
async fn write(progress: &Progress, group: Vec<Pending>, bulk: bool) {
    if group.len() > 1 {
        let caller = group[0].caller.clone();
        let entries: Vec<NewActivity> = group.iter().flat_map(|p| p.entries.iter().cloned()).collect();
        if let Ok(recorded) = progress.record(&caller, entries, bulk).await {
            // One activity per entry, in order.
            let mut recorded = recorded.into_iter();
            for p in group {
                let mine: Vec<pb::Activity> = recorded.by_ref().take(p.entries.len()).collect();
                let outcome = if mine.len() == p.entries.len() {
                    Ok(mine)
                } else {
                    Err(ApiError::Internal(anyhow::anyhow!(
                        "record returned too few activities"
                    )))
                };
                let _ = p.reply.send(outcome);
            }
            return;
        }
    }
    for p in group {
        let outcome = progress.record(&p.caller, p.entries, bulk).await;
        // The caller may have gone; its activities are recorded all the same.
        let _ = p.reply.send(outcome);
    }
}
