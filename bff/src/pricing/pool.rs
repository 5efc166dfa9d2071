//! The evaluation pool: a fixed set of OS threads that run every piece of
//! rule work (pricing batches, `check-config`, upload compilation and test
//! instantiation, dry runs), so that no rule ever runs on the async
//! workers that serve requests.
//!
//! Work waits in one queue per tenant. An idle thread takes the next job of
//! the tenant that used the least of the pool's CPU time recently (tenants
//! in turn when equal: fair queuing by CPU time, not by job count), and a
//! tenant never runs more than its share of the threads at once, so a
//! burst from one tenant cannot take every thread (and with it every
//! pooled instance: a thread runs one instance at a time). Administrative
//! work (uploads, config checks, dry runs) has smaller limits of its own.
//! The queues are bounded: work that does not fit, or that waits longer
//! than allowed, is refused with [`PoolError::Busy`] — the host's failure,
//! never a rule's.
//!
//! A job that has run longer than ordinary rules do (20 ms of CPU by
//! default) drops to the lowest OS scheduling priority (`SCHED_IDLE`, Linux;
//! where the process may raise a thread's priority back) and, everywhere,
//! pauses for 4 ms
//! after each millisecond it runs while another tenant has work: a tenant's
//! spinning rules get a fifth of a CPU at most while others need it, and
//! slow its own work, not the node's requests nor other tenants' prices.
//! Rule deadlines count the rule's own CPU time, so a low priority or a
//! pause never counts against a rule.

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
    /// Nice value of the threads (Linux; 0 to 19). 0: the request
    /// threads' priority; higher: every rule job (quotes' too) gets only
    /// the CPU that serving requests leaves.
    pub nice: i32,
    /// Whether a job that has run longer than `demote_after` drops to the
    /// lowest priority (`SCHED_IDLE`, Linux) and pauses while other tenants
    /// have work (see `pause_point`).
    pub demote_long_jobs: bool,
    /// CPU time after which a running job drops to the lowest priority:
    /// the short jobs of ordinary rules keep the CPU before long-running
    /// ones.
    pub demote_after: Duration,
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
            nice: 0,
            demote_long_jobs: true,
            demote_after: Duration::from_millis(20),
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
        config.nice = rules.pool_nice;
        config.demote_long_jobs = rules.pool_demote_long_jobs;
        config.demote_after = Duration::from_millis(rules.pool_demote_after_ms);
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

/// How far back CPU time counts: a tenant's use halves every second.
const USAGE_HALF_LIFE: Duration = Duration::from_secs(1);

/// Pool CPU time a tenant used recently, decaying.
#[derive(Clone, Copy)]
struct Usage {
    seconds: f64,
    at: Instant,
}

impl Usage {
    fn now(&self, now: Instant) -> f64 {
        let age = now.saturating_duration_since(self.at).as_secs_f64();
        self.seconds * 0.5f64.powf(age / USAGE_HALF_LIFE.as_secs_f64())
    }
}

/// A job running on a pool thread, for the CPU time it has used so far.
struct Running {
    tenant: Arc<str>,
    clock: Option<CpuClock>,
    cpu_start: Duration,
    /// The thread's id, to lower its priority from outside.
    thread: Option<i32>,
    /// Whether the job was moved to the lowest priority while it ran.
    demoted: bool,
}

impl Running {
    fn cpu_so_far(&self) -> Duration {
        self.clock
            .and_then(cpu_time_of)
            .map_or(Duration::ZERO, |t| t.saturating_sub(self.cpu_start))
    }
}

#[derive(Default)]
struct State {
    lanes: HashMap<Arc<str>, Lane>,
    /// Tenants with queued work, in turn.
    rotation: VecDeque<Arc<str>>,
    /// CPU time of finished jobs, by tenant.
    usage: HashMap<Arc<str>, Usage>,
    /// What each thread runs now.
    running: Vec<Option<Running>>,
    queued: usize,
    admin_running: usize,
    stopping: bool,
}

impl State {
    fn enqueue(&mut self, tenant: &str, job: Job) {
        let key: Arc<str> = match self.lanes.get_key_value(tenant) {
            Some((k, _)) => k.clone(),
            None => Arc::from(tenant),
        };
        let lane = self.lanes.entry(key.clone()).or_default();
        match job.work {
            Work::Price => lane.price.push_back(job),
            Work::Admin => lane.admin.push_back(job),
        }
        if !lane.in_rotation {
            lane.in_rotation = true;
            self.rotation.push_back(key);
        }
        self.queued += 1;
    }

    fn charge(&mut self, tenant: &Arc<str>, cpu: Duration, now: Instant) {
        let before = self.usage.get(tenant).map_or(0.0, |u| u.now(now));
        let seconds = before + cpu.as_secs_f64();
        self.usage
            .insert(tenant.clone(), Usage { seconds, at: now });
        // Forget tenants whose use has decayed to nothing.
        if self.usage.len() > 64 {
            self.usage.retain(|_, u| u.now(now) > 1e-4);
        }
    }

    /// Each tenant's recent CPU time: its finished jobs' (decaying) and
    /// what its running jobs have used so far, so a long job counts while
    /// it runs.
    fn recent_cpu(&self, now: Instant) -> HashMap<Arc<str>, f64> {
        let mut recent: HashMap<Arc<str>, f64> = self
            .usage
            .iter()
            .map(|(t, u)| (t.clone(), u.now(now)))
            .collect();
        for run in self.running.iter().flatten() {
            *recent.entry(run.tenant.clone()).or_default() += run.cpu_so_far().as_secs_f64();
        }
        recent
    }
}

/// A thread's CPU-time clock.
#[cfg(unix)]
type CpuClock = libc::clockid_t;
#[cfg(not(unix))]
type CpuClock = ();

/// The calling thread's CPU-time clock.
fn own_cpu_clock() -> Option<CpuClock> {
    #[cfg(unix)]
    {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: `clock` is valid and writable; the thread is the caller.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        (rc == 0).then_some(clock)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// CPU time a thread's clock reads now (any thread of the process).
fn cpu_time_of(clock: CpuClock) -> Option<Duration> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is valid and writable; the clock is a pool thread's,
        // and pool threads live as long as the pool's state.
        let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    #[cfg(not(unix))]
    {
        let _ = clock;
        None
    }
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
            nice: config.nice.clamp(0, 19),
            demote_long_jobs: config.demote_long_jobs,
            demote_after: config.demote_after,
        };
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State {
                running: (0..config.threads).map(|_| None).collect(),
                ..State::default()
            }),
            ready: Condvar::new(),
            metrics,
        });
        let switch_nice = config.demote_long_jobs && can_switch_priority(config.nice);
        if config.demote_long_jobs && !switch_nice {
            tracing::warn!(
                nice = config.nice,
                "the process may not raise a thread's priority back (CAP_SYS_NICE or \
                 RLIMIT_NICE): long-running rule jobs keep the pool's priority and are \
                 only paused while other tenants have work"
            );
        }
        for n in 0..config.threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("rule-worker-{n}"))
                // Room for the guest's stack (wasmtime's default limit is
                // 512 KiB) on top of the host's frames.
                .stack_size(4 << 20)
                .spawn(move || {
                    WORKER.with(|w| *w.borrow_mut() = Some((shared.clone(), n)));
                    worker(&shared, n);
                    WORKER.with(|w| *w.borrow_mut() = None);
                })?;
        }
        // Long jobs are marked (and so paused while others have work)
        // wherever the pool is asked to; their priority drops only where it
        // can be raised back for the next job.
        if config.demote_long_jobs {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("rule-demoter".into())
                .spawn(move || demoter(&shared, switch_nice))?;
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
        state.enqueue(tenant, job);
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

thread_local! {
    /// The pool and slot of the pool thread this is, and when its job last
    /// resumed after a pause.
    static WORKER: std::cell::RefCell<Option<(Arc<Shared>, usize)>> =
        const { std::cell::RefCell::new(None) };
    static RESUMED: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// How long a long-running job pauses, after each millisecond it ran,
/// while other tenants have work: it keeps a fifth of a CPU.
const PAUSE: Duration = Duration::from_millis(4);

/// Called by a running rule every millisecond or so (on the thread that
/// runs it): a job that has run longer than ordinary rules do (see
/// [`PoolConfig::demote_after`]) pauses while another tenant has work
/// running or waiting, so it takes a fifth of a CPU from them at most.
/// The pause is not the rule's CPU time: its time limit does not run.
pub(crate) fn pause_point() {
    let pause = WORKER.with(|w| {
        let worker = w.borrow();
        let (shared, slot) = worker.as_ref()?;
        if !shared.config.demote_long_jobs {
            return None;
        }
        let state = shared.state.lock().ok()?;
        let mine = state.running.get(*slot)?.as_ref()?;
        if !mine.demoted {
            return None;
        }
        let others_busy = state
            .running
            .iter()
            .flatten()
            .any(|r| r.tenant != mine.tenant && !r.demoted)
            || state
                .lanes
                .iter()
                .any(|(t, l)| *t != mine.tenant && l.queued() > 0);
        others_busy.then_some(PAUSE)
    });
    let ran_since = RESUMED.get().map_or(Duration::MAX, |r| r.elapsed());
    if let Some(pause) = pause
        && ran_since >= Duration::from_millis(1)
    {
        std::thread::sleep(pause);
        RESUMED.set(Some(Instant::now()));
    }
}

/// The calling thread's id (Linux).
fn own_thread_id() -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a plain system call without arguments.
        Some(unsafe { libc::gettid() })
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Sets a thread's priority (Linux: per thread): `SCHED_IDLE` when `low`
/// (it runs only on a CPU nothing else wants, and yields it at once when
/// another thread wakes up), else the normal policy at `nice`. Lowering is
/// always allowed; raising it back needs `CAP_SYS_NICE` or a high enough
/// `RLIMIT_NICE`.
fn set_priority_of(tid: i32, low: bool, nice: i32) -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        let policy = if low {
            libc::SCHED_IDLE
        } else {
            libc::SCHED_OTHER
        };
        // SAFETY: plain system calls on a thread id of this process, with
        // a valid parameter block.
        unsafe {
            libc::sched_setscheduler(tid, policy, &param) == 0
                && (low || libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) == 0)
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (tid, low, nice);
        false
    }
}

/// Marks every job that has run longer than `demote_after` as demoted (it
/// then pauses while other tenants have work) and, with `switch_priority`,
/// moves it to the lowest priority; looks every few milliseconds.
fn demoter(shared: &Shared, switch_priority: bool) {
    let config = shared.config;
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let Ok(mut state) = shared.state.lock() else {
            return;
        };
        if state.stopping {
            return;
        }
        for run in state.running.iter_mut().flatten() {
            if !run.demoted && run.cpu_so_far() > config.demote_after {
                run.demoted = true;
                if switch_priority && let Some(tid) = run.thread {
                    set_priority_of(tid, true, config.nice);
                }
            }
        }
    }
}

/// Whether a pool thread may move to the lowest priority and back (tried
/// on a thread of its own).
fn can_switch_priority(nice: i32) -> bool {
    std::thread::spawn(move || {
        own_thread_id().is_some_and(|tid| {
            set_priority_of(tid, true, nice) && set_priority_of(tid, false, nice)
        })
    })
    .join()
    .unwrap_or(false)
}

fn worker(shared: &Shared, slot: usize) {
    let config = shared.config;
    let clock = own_cpu_clock();
    let thread = own_thread_id();
    // Whether the thread runs at the lowest priority now.
    let mut low = false;
    if config.nice > 0 {
        thread.map(|tid| set_priority_of(tid, false, config.nice));
    }
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
                let taken = pick(&mut state, &config, &mut expired);
                shared.metrics.rule_queue_depth(state.queued);
                if let (Some(taken), Some(run)) = (&taken, state.running.get_mut(slot)) {
                    *run = Some(Running {
                        tenant: taken.tenant.clone(),
                        clock,
                        cpu_start: clock.and_then(cpu_time_of).unwrap_or_default(),
                        thread,
                        demoted: false,
                    });
                }
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
        // A job starts at the normal priority.
        if low && let Some(tid) = thread {
            low = !set_priority_of(tid, false, config.nice);
        }
        let work = job.work;
        shared
            .metrics
            .rule_pool_wait(&tenant, work.label(), job.enqueued.elapsed());
        let started = Instant::now();
        let cpu_started = clock.and_then(cpu_time_of);
        let task = job.task;
        // A panicking job (a host bug) must not take the thread with it; its
        // caller sees `PoolError::Failed`.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(Start::Run)));
        let cpu = match (cpu_started, clock.and_then(cpu_time_of)) {
            (Some(start), Some(end)) => end.saturating_sub(start),
            _ => started.elapsed(),
        };
        shared
            .metrics
            .rule_pool_run(&tenant, work.label(), started.elapsed());
        if let Ok(mut state) = shared.state.lock() {
            if let Some(run) = state.running.get_mut(slot)
                && run.take().is_some_and(|r| r.demoted)
            {
                low = true;
            }
            state.charge(&tenant, cpu, Instant::now());
            state.admin_running -= usize::from(work == Work::Admin);
            let remove = match state.lanes.get_mut(&tenant) {
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

/// Takes the next runnable job: of the tenants with work waiting and room
/// to run it, the one that used the least CPU time recently (the first in
/// turn among equals). Jobs whose caller gave up are dropped; jobs that
/// waited too long are moved to `expired`.
fn pick(
    state: &mut State,
    config: &PoolConfig,
    expired: &mut Vec<(Arc<str>, Job)>,
) -> Option<Taken> {
    let now = Instant::now();
    let recent = state.recent_cpu(now);
    let admin_room = state.admin_running < config.admin_total;
    let mut dropped = 0;
    let mut best: Option<(usize, f64)> = None;
    let State {
        lanes, rotation, ..
    } = state;
    for (at, tenant) in rotation.iter().enumerate() {
        let Some(lane) = lanes.get_mut(tenant) else {
            continue;
        };
        for queue in [&mut lane.price, &mut lane.admin] {
            while let Some(head) = queue.front() {
                if head.cancelled.load(Ordering::Relaxed) {
                    queue.pop_front();
                    dropped += 1;
                } else if now.saturating_duration_since(head.enqueued) > config.max_wait {
                    if let Some(job) = queue.pop_front() {
                        expired.push((tenant.clone(), job));
                    }
                    dropped += 1;
                } else {
                    break;
                }
            }
        }
        let runnable = lane.running < config.tenant_share
            && (!lane.price.is_empty()
                || (!lane.admin.is_empty()
                    && admin_room
                    && lane.admin_running < config.admin_per_tenant));
        if runnable {
            let used = recent.get(tenant).copied().unwrap_or(0.0);
            if best.is_none_or(|(_, least)| used < least) {
                best = Some((at, used));
            }
        }
    }
    state.queued -= dropped;
    let taken = best.and_then(|(at, _)| {
        let tenant = state.rotation.remove(at)?;
        let lane = state.lanes.get_mut(&tenant)?;
        let job = lane.price.pop_front().or_else(|| lane.admin.pop_front())?;
        lane.running += 1;
        if job.work == Work::Admin {
            lane.admin_running += 1;
            state.admin_running += 1;
        }
        state.queued -= 1;
        // Back of the line.
        state.rotation.push_back(tenant.clone());
        Some((tenant, job))
    });
    // Tenants with nothing left waiting leave the rotation (and the lanes,
    // once nothing of theirs runs either).
    let State {
        lanes, rotation, ..
    } = state;
    rotation.retain(|tenant| match lanes.get_mut(tenant) {
        Some(lane) if lane.queued() > 0 => true,
        Some(lane) => {
            lane.in_rotation = false;
            if lane.running == 0 {
                lanes.remove(tenant);
            }
            false
        }
        None => false,
    });
    let (tenant, job) = taken?;
    Some(Taken { tenant, job })
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
            nice: 0,
            demote_long_jobs: false,
            demote_after: Duration::from_millis(20),
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

    #[test]
    fn the_tenant_that_used_the_least_cpu_recently_goes_first() {
        let job = || Job {
            work: Work::Price,
            enqueued: Instant::now(),
            cancelled: Arc::new(AtomicBool::new(false)),
            task: Box::new(|_| {}),
        };
        let mut state = State::default();
        let now = Instant::now();
        state.charge(&Arc::from("heavy"), Duration::from_millis(900), now);
        state.charge(&Arc::from("light"), Duration::from_millis(100), now);
        // The heavy tenant's work waits first, and the light one's goes
        // first.
        state.enqueue("heavy", job());
        state.enqueue("light", job());
        state.enqueue("light", job());
        let config = config(4, 4);
        let mut expired = Vec::new();
        let order: Vec<String> = std::iter::from_fn(|| {
            pick(&mut state, &config, &mut expired).map(|t| t.tenant.to_string())
        })
        .collect();
        assert_eq!(order, ["light", "light", "heavy"]);
        assert!(expired.is_empty());
    }

    /// The calling thread's scheduling policy (Linux).
    #[cfg(target_os = "linux")]
    fn policy() -> i32 {
        // SAFETY: a plain query of the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread")]
    async fn a_long_job_drops_to_the_idle_policy_and_the_next_job_starts_normal() {
        if !can_switch_priority(0) {
            // Not allowed here (no CAP_SYS_NICE): nothing is demoted.
            return;
        }
        let mut config = config(1, 1);
        config.demote_long_jobs = true;
        let pool = RulePool::start(config, Metrics::new()).unwrap();
        let long = pool
            .run("t", Work::Price, || {
                let start = super::cpu_time_of(super::own_cpu_clock().unwrap()).unwrap();
                let cpu = || super::cpu_time_of(super::own_cpu_clock().unwrap()).unwrap() - start;
                let at_start = policy();
                // Spin past the demotion, until it happens (or 5 s of CPU).
                let mut x = 0u64;
                while policy() != libc::SCHED_IDLE && cpu() < Duration::from_secs(5) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                (at_start, policy())
            })
            .await
            .unwrap();
        assert_eq!(long, (libc::SCHED_OTHER, libc::SCHED_IDLE));
        let short = pool.run("t", Work::Price, policy).await.unwrap();
        assert_eq!(short, libc::SCHED_OTHER);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_panicking_job_fails_its_caller_and_the_thread_lives_on() {
        let pool = RulePool::start(config(1, 1), Metrics::new()).unwrap();
        let failed = pool.run("t", Work::Price, || panic!("host bug")).await;
        assert_eq!(failed, Err::<(), _>(PoolError::Failed));
        assert_eq!(pool.run("t", Work::Admin, || 7).await, Ok(7));
    }
}
