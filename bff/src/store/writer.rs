//! Group commit for the embedded file: every write of the embedded store
//! goes through one writer thread, which takes all the write jobs waiting
//! at that moment (up to [`GROUP_MAX`]), runs them one after another in one
//! redb write transaction and commits once — one fsync for the whole group
//! instead of one per job — then answers each job.
//!
//! Why: redb runs one write transaction at a time and each durable commit
//! costs an fsync, so with a transaction per job concurrent checkouts queue
//! behind each other's fsyncs. Grouping keeps the same order of effects (the
//! jobs of a group run serially, each seeing its predecessors' writes, as if
//! each had its own transaction) at a fraction of the syncs.
//!
//! The promises:
//!
//! * **Durability unchanged.** A job is answered only after the commit of
//!   its group returned, i.e. after its writes are durable (redb's default
//!   `Durability::Immediate`). If the commit fails, every job of the group
//!   gets the error.
//! * **A failed job leaves nothing.** A job that returns an error (or
//!   panics: the panic is caught and turned into an error for that job) may
//!   have written half of its step, and redb cannot roll back part of a
//!   transaction (its savepoints can only be taken before the first write).
//!   So the group's transaction is aborted, the failed job is answered with
//!   its error, and the rest of the group is run again in a fresh
//!   transaction. Each round removes a job, so a group of `n` jobs takes at
//!   most `n` rounds; a job may therefore run more than once (its closure
//!   is `FnMut`), and only its last run counts.
//! * **A refusal leaves nothing.** A job that declines (sold out, a
//!   compare-and-set mismatch, an order that already exists…) returns `Ok`
//!   with its refusal, and its group commits. So a job makes every check
//!   before its first write and never writes after a check that may refuse
//!   — the same rule the Redis scripts follow (a script cannot roll back
//!   either). Errors (storage, a corrupt row) may come at any point: they
//!   abort the group as above.
//! * **Bounded memory.** At most [`QUEUE_MAX`] jobs wait for the writer; a
//!   caller beyond that waits for room (backpressure: callers carry their
//!   own deadlines, and a caller that gives up while waiting never queues
//!   its job). A queued job runs even if its caller has gone, like a
//!   statement already sent to a database server.
//!
//! Reads never go through the writer: redb read transactions run
//! concurrently with the writer and see the last committed state.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use redb::{Database, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// The most jobs one transaction commits.
pub(super) const GROUP_MAX: usize = 64;

/// The most jobs waiting for the writer.
pub(super) const QUEUE_MAX: usize = 1024;

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::from_display(e)
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

/// One queued write: runs inside the group's transaction, keeps its result
/// until the group's fate is known, then answers its caller.
trait Job: Send {
    /// Runs the step in `tx` (possibly again, after a neighbour failed).
    fn run(&mut self, tx: &WriteTransaction) -> Result<(), StoreError>;
    /// Answers the caller: the last run's result if `outcome` is `Ok`.
    fn answer(self: Box<Self>, outcome: Result<(), StoreError>);
}

struct Typed<T, F> {
    work: F,
    result: Option<T>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Typed<T, F>
where
    T: Send,
    F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, tx: &WriteTransaction) -> Result<(), StoreError> {
        self.result = Some((self.work)(tx)?);
        Ok(())
    }

    fn answer(self: Box<Self>, outcome: Result<(), StoreError>) {
        let Typed { result, reply, .. } = *self;
        let answer = outcome.and_then(|()| {
            result.ok_or_else(|| StoreError("a write job was answered before it ran".into()))
        });
        // The caller may have gone; the write stands either way.
        let _ = reply.send(answer);
    }
}

type Queued = Box<dyn Job>;

/// The writer: a queue and the thread that drains it. Dropping it lets the
/// thread finish the queued jobs, then waits for it (so the file is closed
/// when the last handle of the store is gone and can be opened again).
pub(super) struct Writer {
    queue: Option<mpsc::Sender<Queued>>,
    thread: Option<JoinHandle<()>>,
    /// Transactions committed so far (each one group), for tests.
    #[cfg(test)]
    commits: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writer thread for `db`.
    pub(super) fn start(db: Arc<Database>) -> Result<Self, StoreError> {
        let (queue, jobs) = mpsc::channel(QUEUE_MAX);
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        let thread = std::thread::Builder::new()
            .name("bff-store-writer".into())
            .spawn(move || drain(&db, jobs, &counted))
            .map_err(StoreError::from_display)?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
            #[cfg(test)]
            commits,
        })
    }

    /// Transactions committed so far.
    #[cfg(test)]
    pub(super) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Jobs waiting for the writer (not counting the group it runs).
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.queue
            .as_ref()
            .map_or(0, |q| q.max_capacity() - q.capacity())
    }

    /// Runs `work` in a write transaction shared with the other jobs
    /// waiting now; answers once that transaction is durably committed.
    /// `work` may run more than once (see the module docs) and must make
    /// all its checks before its first write.
    pub(super) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let stopped = || StoreError("the embedded store's writer has stopped".into());
        let queue = self.queue.as_ref().ok_or_else(stopped)?;
        let (reply, answer) = oneshot::channel();
        queue
            .send(Box::new(Typed {
                work,
                result: None,
                reply,
            }))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has drained it.
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: one group per round until the queue closes.
fn drain(db: &Database, mut jobs: mpsc::Receiver<Queued>, commits: &AtomicU64) {
    while let Some(first) = jobs.blocking_recv() {
        let mut group = Vec::with_capacity(GROUP_MAX);
        group.push(first);
        while group.len() < GROUP_MAX {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(db, group, commits);
    }
}

/// Runs `group` in one transaction and commits it; a job that fails is
/// answered with its error and the others run again without it. Counts
/// the commit in `commits` (before answering, so an answered caller sees
/// its group counted).
fn commit_group(db: &Database, mut group: Vec<Queued>, commits: &AtomicU64) {
    while !group.is_empty() {
        let tx = match db.begin_write() {
            Ok(tx) => tx,
            Err(e) => {
                let e = StoreError::from(e);
                tracing::error!(error = %e, jobs = group.len(), "embedded store: cannot begin a write");
                for job in group {
                    job.answer(Err(StoreError(e.0.clone())));
                }
                return;
            }
        };
        let failed = group.iter_mut().enumerate().find_map(|(i, job)| {
            match catch_unwind(AssertUnwindSafe(|| job.run(&tx))) {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some((i, e)),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %what, "embedded store: a write job panicked");
                    Some((i, StoreError("a write job panicked".into())))
                }
            }
        });
        match failed {
            None => {
                let outcome = tx.commit().map_err(StoreError::from);
                match &outcome {
                    Ok(()) => {
                        commits.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, jobs = group.len(), "embedded store: commit failed");
                    }
                }
                for job in group {
                    job.answer(match &outcome {
                        Ok(()) => Ok(()),
                        Err(e) => Err(StoreError(e.0.clone())),
                    });
                }
                return;
            }
            Some((i, error)) => {
                // Nothing of this round may stay: not the failed job's half
                // step, not its neighbours' writes (they run again).
                if let Err(e) = tx.abort() {
                    tracing::error!(error = %e, "embedded store: abort failed");
                }
                group.remove(i).answer(Err(error));
            }
        }
    }
}
