//! The evaluation pool: a fixed set of OS threads that run every piece of
//! rule work (pricing batches, `check-config`, upload compilation and test
//! instantiation, dry runs), so that no rule ever runs on the async
//! workers that serve requests.
//!
//! Work waits in one queue per tenant; idle threads take work from the
//! tenants in turn (round robin), and a tenant never runs more than its
//! share of the threads at once, so a burst from one tenant cannot take
//! every thread (and with it every pooled instance: a thread runs one
//! instance at a time). Administrative work (uploads, config checks, dry
//! runs) has smaller limits of its own. The queues are bounded: work that
//! does not fit, or that waits longer than allowed, is refused with
//! [`PoolError::Busy`] — the host's failure, never a rule's.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// Sizing and limits of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Threads that run rule work.
    pub threads: usize,
    /// Most threads one tenant may use at once.
    pub tenant_share: usize,
    /// Most administrative jobs (uploads, config checks, dry runs) one
    /// tenant may run at once.
    pub admin_per_tenant: usize,
    /// Most administrative jobs running at once on the node.
    pub admin_total: usize,
    /// Most jobs waiting on the node.
    pub queue_limit: usize,
    /// Most jobs one tenant may have waiting.
    pub tenant_queue_limit: usize,
    /// Longest a job may wait before it is refused.
    pub max_wait: Duration,
}

impl PoolConfig {
    /// Limits for `threads` threads: a tenant may use all but a quarter of
    /// them (at least one thread is always left for the others), and
    /// administrative work at most half of them.
    pub fn for_threads(threads: usize) -> Self {
        let threads = threads.max(2);
        PoolConfig {
            threads,
            tenant_share: (threads - threads.div_ceil(4)).max(1),
            admin_per_tenant: 1,
            admin_total: (threads / 2).max(1),
            queue_limit: 512,
            tenant_queue_limit: 128,
            max_wait: Duration::from_secs(2),
        }
    }
}

impl PoolConfig {
    /// The pool the settings ask for.
    pub fn from_settings(rules: &crate::config::RulesSettings) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let threads = match rules.pool_threads {
            0 => cpus.max(2),
            n => n,
        }
        .min(rules.pool_instances.max(1) as usize);
        let mut config = PoolConfig::for_threads(threads);
        config.threads = threads;
        if rules.tenant_share > 0 {
            config.tenant_share = rules.tenant_share.min(threads);
        }
        config.tenant_share = config.tenant_share.min(threads).max(1);
        config.admin_total = config.admin_total.min(threads).max(1);
        config.queue_limit = rules.queue_limit.max(1);
        config.tenant_queue_limit = rules.tenant_queue_limit.max(1);
        config.max_wait = Duration::from_millis(rules.queue_wait_ms);
        config
    }
}

/// What kind of work a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Pricing a batch (catalogue prices, quotes).
    Price,
    /// Uploads, config checks and dry runs.
    Admin,
}

impl Work {
    fn label(self) -> &'static str {
        match self {
            Work::Price => "price",
            Work::Admin => "admin",
        }
    }
}

/// Why work did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The queue was full, or the job waited longer than allowed.
    #[error("the rule engine is busy; retry shortly")]
    Busy,
    /// The job stopped abnormally (a host bug, not a rule's failure).
    #[error("the rule engine failed to complete the work")]
    Failed,
}

enum Start {
    Run,
    Expired,
}

struct Job {
    work: Work,
    enqueued: Instant,
    cancelled: Arc<AtomicBool>,
    task: Box<dyn FnOnce(Start) + Send>,
}

#[derive(Default)]
struct Lane {
    price: VecDeque<Job>,
    admin: VecDeque<Job>,
    running: usize,
    admin_running: usize,
    in_rotation: bool,
}

impl Lane {
    fn queued(&self) -> usize {
        self.price.len() + self.admin.len()
    }
}

#[derive(Default)]
struct State {
    lanes: HashMap<Arc<str>, Lane>,
    rotation: VecDeque<Arc<str>>,
    queued: usize,
    admin_running: usize,
    stopping: bool,
}

struct Shared {
    config: PoolConfig,
    state: Mutex<State>,
    ready: Condvar,
    metrics: Metrics,
}

struct Stop(Arc<Shared>);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Ok(mut state) = self.0.state.lock() {
            state.stopping = true;
        }
        self.0.ready.notify_all();
    }
}

/// The pool. Cheap to clone; the threads stop when the last clone is
/// dropped.
#[derive(Clone)]
pub struct RulePool {
    shared: Arc<Shared>,
    _stop: Arc<Stop>,
}

impl std::fmt::Debug for RulePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulePool")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// Marks a job cancelled when the caller stops waiting for it.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl RulePool {
    /// Starts the threads.
    pub fn start(config: PoolConfig, metrics: Metrics) -> std::io::Result<Self> {
        let config = PoolConfig {
            threads: config.threads.max(1),
            tenant_share: config.tenant_share.clamp(1, config.threads.max(1)),
            admin_per_tenant: config.admin_per_tenant.max(1),
            admin_total: config.admin_total.clamp(1, config.threads.max(1)),
            queue_limit: config.queue_limit.max(1),
            tenant_queue_limit: config.tenant_queue_limit.max(1),
            max_wait: config.max_wait,
        };
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            metrics,
        });
        for n in 0..config.threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("rule-worker-{n}"))
                // Room for the guest's stack (wasmtime's default limit is
                // 512 KiB) on top of the host's frames.
                .stack_size(4 << 20)
                .spawn(move || worker(&shared))?;
        }
        Ok(Self {
            _stop: Arc::new(Stop(shared.clone())),
            shared,
        })
    }

    /// The limits the pool runs with.
    pub fn config(&self) -> PoolConfig {
        self.shared.config
    }

    /// Runs `f` on a pool thread for `tenant` and waits for its result
    /// without blocking the async runtime. Dropping the returned future
    /// before the job starts withdraws it.
    pub async fn run<R: Send + 'static>(
        &self,
        tenant: &str,
        work: Work,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, PoolError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let task = Box::new(move |start: Start| {
            let _ = tx.send(match start {
                Start::Run => Ok(f()),
                Start::Expired => Err(PoolError::Busy),
            });
        });
        self.submit(
            tenant,
            Job {
                work,
                enqueued: Instant::now(),
                cancelled: cancelled.clone(),
                task,
            },
        )?;
        let _withdraw = CancelOnDrop(cancelled);
        rx.await.unwrap_or(Err(PoolError::Failed))
    }

    fn submit(&self, tenant: &str, job: Job) -> Result<(), PoolError> {
        let shared = &self.shared;
        let mut state = shared.state.lock().map_err(|_| PoolError::Failed)?;
        let config = &shared.config;
        let lane_queued = state.lanes.get(tenant).map_or(0, Lane::queued);
        if state.stopping
            || state.queued >= config.queue_limit
            || lane_queued >= config.tenant_queue_limit
        {
            drop(state);
            shared.metrics.rule_pool_refused(tenant, job.work.label());
            return Err(PoolError::Busy);
        }
        let key: Arc<str> = match state.lanes.get_key_value(tenant) {
            Some((k, _)) => k.clone(),
            None => Arc::from(tenant),
        };
        let lane = state.lanes.entry(key.clone()).or_default();
        match job.work {
            Work::Price => lane.price.push_back(job),
            Work::Admin => lane.admin.push_back(job),
        }
        let join = !lane.in_rotation;
        lane.in_rotation = true;
        if join {
            state.rotation.push_back(key);
        }
        state.queued += 1;
        shared.metrics.rule_queue_depth(state.queued);
        drop(state);
        shared.ready.notify_one();
        Ok(())
    }
}

/// A job taken from the queue, with what it counts against.
struct Taken {
    tenant: Arc<str>,
    job: Job,
}

fn worker(shared: &Shared) {
    loop {
        let mut expired = Vec::new();
        let taken = {
            let Ok(mut state) = shared.state.lock() else {
                return;
            };
            loop {
                if state.stopping {
                    return;
                }
                let taken = pick(&mut state, &shared.config, &mut expired);
                shared.metrics.rule_queue_depth(state.queued);
                if taken.is_some() || !expired.is_empty() {
                    break taken;
                }
                state = match shared.ready.wait(state) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
        };
        for (tenant, job) in expired {
            shared.metrics.rule_pool_refused(&tenant, job.work.label());
            (job.task)(Start::Expired);
        }
        let Some(Taken { tenant, job }) = taken else {
            continue;
        };
        let work = job.work;
        shared
            .metrics
            .rule_pool_wait(&tenant, work.label(), job.enqueued.elapsed());
        let started = Instant::now();
        let task = job.task;
        // A panicking job (a host bug) must not take the thread with it; its
        // caller sees `PoolError::Failed`.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(Start::Run)));
        shared
            .metrics
            .rule_pool_run(&tenant, work.label(), started.elapsed());
        if let Ok(mut state) = shared.state.lock() {
            state.admin_running -= usize::from(work == Work::Admin);
            let lane = state.lanes.get_mut(&tenant);
            let remove = match lane {
                Some(lane) => {
                    lane.running -= 1;
                    lane.admin_running -= usize::from(work == Work::Admin);
                    lane.running == 0 && lane.queued() == 0 && !lane.in_rotation
                }
                None => false,
            };
            if remove {
                state.lanes.remove(&tenant);
            }
        }
        // The finished job may have been what held its tenant's next one.
        shared.ready.notify_one();
    }
}

/// Takes the next runnable job, tenants in turn. Jobs whose caller gave
/// up are dropped; jobs that waited too long are moved to `expired`.
fn pick(
    state: &mut State,
    config: &PoolConfig,
    expired: &mut Vec<(Arc<str>, Job)>,
) -> Option<Taken> {
    let rounds = state.rotation.len();
    for _ in 0..rounds {
        let tenant = state.rotation.pop_front()?;
        let admin_room = state.admin_running < config.admin_total;
        let Some(lane) = state.lanes.get_mut(&tenant) else {
            continue;
        };
        lane.in_rotation = false;
        let mut dropped = 0;
        for queue in [&mut lane.price, &mut lane.admin] {
            while let Some(head) = queue.front() {
                if head.cancelled.load(Ordering::Relaxed) {
                    queue.pop_front();
                    dropped += 1;
                } else if head.enqueued.elapsed() > config.max_wait {
                    if let Some(job) = queue.pop_front() {
                        expired.push((tenant.clone(), job));
                    }
                    dropped += 1;
                } else {
                    break;
                }
            }
        }
        let mut job = None;
        if lane.running < config.tenant_share {
            job = lane.price.pop_front();
            if job.is_none() && admin_room && lane.admin_running < config.admin_per_tenant {
                job = lane.admin.pop_front();
            }
        }
        if let Some(j) = &job {
            lane.running += 1;
            if j.work == Work::Admin {
                lane.admin_running += 1;
            }
        }
        let (queued, running) = (lane.queued(), lane.running);
        if queued > 0 {
            lane.in_rotation = true;
        }
        state.queued -= dropped + usize::from(job.is_some());
        if job.is_some() {
            state.admin_running += usize::from(job.as_ref().is_some_and(|j| j.work == Work::Admin));
        }
        if queued > 0 {
            state.rotation.push_back(tenant.clone());
        } else if running == 0 {
            state.lanes.remove(&tenant);
        }
        if let Some(job) = job {
            return Some(Taken { tenant, job });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn config(threads: usize, share: usize) -> PoolConfig {
        PoolConfig {
            threads,
            tenant_share: share,
            admin_per_tenant: 1,
            admin_total: 1,
            queue_limit: 64,
            tenant_queue_limit: 16,
            max_wait: Duration::from_secs(30),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn one_tenant_never_holds_more_than_its_share_and_others_still_run() {
        let pool = RulePool::start(config(3, 2), Metrics::new()).unwrap();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut hogs = Vec::new();
        for _ in 0..6 {
            let (gate, running, peak) = (gate.clone(), running.clone(), peak.clone());
            let pool = pool.clone();
            hogs.push(tokio::spawn(async move {
                pool.run("hog", Work::Price, move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let (lock, cv) = &*gate;
                    let mut open = lock.lock().unwrap();
                    while !*open {
                        open = cv.wait(open).unwrap();
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        // The hog holds its share (two threads), blocked...
        while running.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // ...and another tenant's job still runs on the third.
        let other = pool.run("victim", Work::Price, || 42).await;
        assert_eq!(other, Ok(42));
        assert!(peak.load(Ordering::SeqCst) <= 2);
        {
            let (lock, cv) = &*gate;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        for h in hogs {
            assert_eq!(h.await.unwrap(), Ok(()));
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_full_tenant_queue_is_refused_as_busy_without_running() {
        let pool = RulePool::start(config(2, 1), Metrics::new()).unwrap();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let mut waiting = Vec::new();
        let wait_for = |queued: usize, running: usize| {
            let pool = pool.clone();
            async move {
                loop {
                    {
                        let state = pool.shared.state.lock().unwrap();
                        let lane_running = state.lanes.get("hog").map_or(0, |l| l.running);
                        if state.queued == queued && lane_running == running {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        for n in 0..17 {
            if n == 1 {
                // The first one is running before the others queue.
                wait_for(0, 1).await;
            }
            let gate = gate.clone();
            let pool = pool.clone();
            waiting.push(tokio::spawn(async move {
                pool.run("hog", Work::Price, move || {
                    let (lock, cv) = &*gate;
                    let mut open = lock.lock().unwrap();
                    while !*open {
                        open = cv.wait(open).unwrap();
                    }
                })
                .await
            }));
        }
        // One runs, 16 wait: the next is refused at once.
        wait_for(16, 1).await;
        assert_eq!(
            pool.run("hog", Work::Price, || ()).await,
            Err(PoolError::Busy)
        );
        assert_eq!(pool.run("other", Work::Price, || 1).await, Ok(1));
        {
            let (lock, cv) = &*gate;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        for w in waiting {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_panicking_job_fails_its_caller_and_the_thread_lives_on() {
        let pool = RulePool::start(config(1, 1), Metrics::new()).unwrap();
        let failed = pool.run("t", Work::Price, || panic!("host bug")).await;
        assert_eq!(failed, Err::<(), _>(PoolError::Failed));
        assert_eq!(pool.run("t", Work::Admin, || 7).await, Ok(7));
    }
}
