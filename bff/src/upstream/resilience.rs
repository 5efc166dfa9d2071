//! What keeps one request, and one failing upstream, from taking the read
//! path down: the request's deadline, retries with a retry budget, and a
//! circuit breaker per (tenant, upstream).
//!
//! * **Deadline.** The HTTP layer runs each request inside [`within`]; every
//!   upstream call then waits at most `min(its own timeout, what is left of
//!   the request's budget)`, so no call outlives the request. The deadline
//!   is a task-local: work a request spawns (DataLoader batches) must carry
//!   it over with [`spawn_within`].
//! * **Retries** (idempotent reads only): exponential backoff with jitter
//!   (`backon`), started only when the deadline leaves time for the try and
//!   the upstream's retry budget (`tower`'s `TpsBudget`: retries at most a
//!   share of calls) allows it, so a failing upstream is not hit twice as
//!   hard.
//! * **Breakers.** One per (tenant, upstream), so one tenant's broken CRM
//!   opens only its own. A small state machine (closed → open → half-open →
//!   closed) over a window of the last calls; state and transitions are in
//!   `/metrics` and in the operator status.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tower::retry::budget::{Budget, TpsBudget};

use crate::config::{BreakerSettings, RetrySettings};
use crate::metrics::Metrics;

tokio::task_local! {
    /// When the current request must have answered.
    static DEADLINE: Instant;
}

/// Runs `fut` with `deadline` as the deadline of every upstream call made
/// inside it.
pub async fn within<F: Future>(deadline: Instant, fut: F) -> F::Output {
    DEADLINE.scope(deadline, fut).await
}

/// The deadline of the request being served, if any (background work has
/// none: its calls get their upstream's timeout).
pub fn deadline() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Spawns `fut` on the runtime, carrying `deadline` into the new task
/// (task-locals do not cross `tokio::spawn`).
pub fn spawn_within<F>(deadline: Option<Instant>, fut: F) -> tokio::task::JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    match deadline {
        Some(deadline) => tokio::spawn(DEADLINE.scope(deadline, fut)),
        None => tokio::spawn(fut),
    }
}

/// The time one try may take now: its upstream's timeout, cut to what is
/// left of the request's deadline. `None` when the deadline has passed.
pub fn attempt_timeout(upstream_timeout: Duration) -> Option<Duration> {
    match deadline() {
        None => Some(upstream_timeout),
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            (!left.is_zero()).then(|| left.min(upstream_timeout))
        }
    }
}

/// The retry policy of one upstream route, with its retry budget.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    settings: RetrySettings,
    budget: Arc<TpsBudget>,
}

impl RetryPolicy {
    /// A policy with a fresh budget.
    pub fn new(settings: &RetrySettings) -> Self {
        Self {
            settings: settings.clone(),
            // A ten-second window smooths bursts without remembering an
            // outage long after it ended.
            budget: Arc::new(TpsBudget::new(
                Duration::from_secs(10),
                settings.budget_min_per_sec,
                settings.budget_ratio,
            )),
        }
    }

    /// The backoff between tries.
    pub fn backoff(&self) -> backon::ExponentialBuilder {
        backon::ExponentialBuilder::default()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(self.settings.min_delay())
            .with_max_delay(Duration::from_millis(self.settings.max_delay_ms))
            .with_max_times(self.settings.max_retries as usize)
    }

    /// Waits out a retry's backoff `delay`. The runtime's timer counts
    /// whole milliseconds: a shorter sleep lasts until a later tick, often
    /// a millisecond or more, so a delay under a millisecond only yields
    /// (the tasks already waiting run first, then the retry). Longer
    /// delays sleep. The retry budget, not the delay, is what spares a
    /// failing upstream.
    pub async fn pause(delay: Duration) {
        if delay < Duration::from_millis(1) {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(delay).await;
        }
    }

    /// Records a first try (it earns the budget a share of a retry).
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Whether a retry after `delay` may start: the request's deadline
    /// must leave time for it and the retry budget must allow it (which it
    /// then spends).
    pub fn may_retry(&self, delay: Duration) -> bool {
        if let Some(deadline) = deadline() {
            let left = deadline.saturating_duration_since(Instant::now());
            // A try needs some time of its own to be worth sending.
            if left <= delay + delay.max(self.settings.min_delay()) {
                return false;
            }
        }
        self.budget.withdraw()
    }
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; outcomes are counted.
    Closed,
    /// Calls fail at once until the open period ends.
    Open,
    /// One probe call is in flight; the others fail at once.
    HalfOpen,
}

impl BreakerState {
    /// The state's name in metrics and the status.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// Permission to call, from [`Breaker::permit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// A normal call.
    Call,
    /// The half-open probe: its outcome decides the breaker's state.
    Probe,
}

/// The breaker's state machine. Time is passed in, so it is tested without
/// sleeping.
#[derive(Debug)]
struct Machine {
    state: BreakerState,
    /// Outcomes of the last calls, `true` for a failure.
    window: VecDeque<bool>,
    failures: usize,
    opened_at: Instant,
    /// When the half-open probe in flight started. A probe whose request
    /// was dropped never reports; after an open period another may go.
    probing: Option<Instant>,
}

impl Machine {
    fn new(now: Instant) -> Self {
        Self {
            state: BreakerState::Closed,
            window: VecDeque::new(),
            failures: 0,
            opened_at: now,
            probing: None,
        }
    }

    fn permit(&mut self, s: &BreakerSettings, now: Instant) -> Option<Permit> {
        let open = Duration::from_millis(s.open_ms);
        match self.state {
            BreakerState::Closed => Some(Permit::Call),
            BreakerState::Open => {
                if now.duration_since(self.opened_at) >= open {
                    self.state = BreakerState::HalfOpen;
                    self.probing = Some(now);
                    Some(Permit::Probe)
                } else {
                    None
                }
            }
            BreakerState::HalfOpen => match self.probing {
                Some(started) if now.duration_since(started) < open => None,
                _ => {
                    self.probing = Some(now);
                    Some(Permit::Probe)
                }
            },
        }
    }

    fn record(&mut self, s: &BreakerSettings, permit: Permit, failed: bool, now: Instant) {
        match (permit, self.state) {
            (Permit::Probe, _) => {
                self.probing = None;
                if failed {
                    self.open(now);
                } else {
                    self.state = BreakerState::Closed;
                    self.window.clear();
                    self.failures = 0;
                }
            }
            (Permit::Call, BreakerState::Closed) => {
                self.window.push_back(failed);
                self.failures += usize::from(failed);
                while self.window.len() > s.window {
                    if self.window.pop_front() == Some(true) {
                        self.failures -= 1;
                    }
                }
                if self.window.len() >= s.min_calls
                    && self.failures as f64 >= s.failure_ratio * self.window.len() as f64
                {
                    self.open(now);
                }
            }
            // A call let through before the breaker opened: its outcome is
            // already stale.
            (Permit::Call, _) => {}
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = now;
        self.window.clear();
        self.failures = 0;
    }
}

/// Labels of a breaker.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    tenant: String,
    upstream: &'static str,
}

/// Labels of a breaker transition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    tenant: String,
    upstream: &'static str,
    to: &'static str,
}

/// Labels of a retry decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    upstream: &'static str,
    /// `retried`, `budget_exhausted` (refused by the budget or the
    /// deadline).
    outcome: &'static str,
}

/// The resilience metrics.
#[derive(Clone)]
struct ResilienceMetrics {
    state: Family<BreakerLabels, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    rejected: Family<BreakerLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
}

impl ResilienceMetrics {
    fn register(metrics: &Metrics) -> Self {
        let this = Self {
            state: Family::default(),
            transitions: Family::default(),
            rejected: Family::default(),
            retries: Family::default(),
        };
        metrics.register(
            "upstream_breaker_state",
            "Circuit breaker state per tenant and upstream (0 closed, 1 half-open, 2 open)",
            this.state.clone(),
        );
        metrics.register(
            "upstream_breaker_transitions",
            "Circuit breaker state changes per tenant and upstream, by new state",
            this.transitions.clone(),
        );
        metrics.register(
            "upstream_breaker_rejected",
            "Calls failed at once by an open circuit breaker",
            this.rejected.clone(),
        );
        metrics.register(
            "upstream_retries",
            "Retries of upstream reads, and retries refused by the retry budget or deadline",
            this.retries.clone(),
        );
        this
    }
}

/// One breaker and its labels.
#[derive(Debug)]
struct Entry {
    machine: Mutex<Machine>,
}

/// A breaker's state, for the operator status.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BreakerStatus {
    /// Tenant.
    pub tenant: String,
    /// Upstream.
    pub upstream: &'static str,
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
}

/// A breaker's (tenant, upstream).
type BreakerKey = (String, &'static str);

/// Every breaker of the node, the retry metrics, and the settings.
#[derive(Clone)]
pub struct Guard {
    settings: BreakerSettings,
    breakers: Arc<Mutex<HashMap<BreakerKey, Arc<Entry>>>>,
    metrics: ResilienceMetrics,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

impl Guard {
    /// Breakers with `settings`, reporting to `metrics`.
    pub fn new(settings: &BreakerSettings, metrics: &Metrics) -> Self {
        Self {
            settings: settings.clone(),
            breakers: Arc::default(),
            metrics: ResilienceMetrics::register(metrics),
        }
    }

    /// No breakers (every call is let through), metrics kept apart.
    pub fn disabled() -> Self {
        Self::new(
            &BreakerSettings {
                enabled: false,
                ..BreakerSettings::default()
            },
            &Metrics::new(),
        )
    }

    fn entry(&self, tenant: &str, upstream: &'static str) -> Arc<Entry> {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = breakers.get(&(tenant.to_owned(), upstream)) {
            return entry.clone();
        }
        let entry = Arc::new(Entry {
            machine: Mutex::new(Machine::new(Instant::now())),
        });
        breakers.insert((tenant.to_owned(), upstream), entry.clone());
        self.metrics
            .state
            .get_or_create(&BreakerLabels {
                tenant: tenant.to_owned(),
                upstream,
            })
            .set(BreakerState::Closed.gauge());
        entry
    }

    /// Asks the (tenant, upstream) breaker for a call. `None`: it is open;
    /// fail at once.
    pub fn permit(&self, tenant: &str, upstream: &'static str) -> Option<Permit> {
        if !self.settings.enabled {
            return Some(Permit::Call);
        }
        let entry = self.entry(tenant, upstream);
        let (permit, before, after) = {
            let mut m = entry.machine.lock().unwrap_or_else(|e| e.into_inner());
            let before = m.state;
            let permit = m.permit(&self.settings, Instant::now());
            (permit, before, m.state)
        };
        self.transitioned(tenant, upstream, before, after);
        if permit.is_none() {
            self.metrics
                .rejected
                .get_or_create(&BreakerLabels {
                    tenant: tenant.to_owned(),
                    upstream,
                })
                .inc();
        }
        permit
    }

    /// Records the outcome of a permitted call.
    pub fn record(&self, tenant: &str, upstream: &'static str, permit: Permit, failed: bool) {
        if !self.settings.enabled {
            return;
        }
        let entry = self.entry(tenant, upstream);
        let (before, after) = {
            let mut m = entry.machine.lock().unwrap_or_else(|e| e.into_inner());
            let before = m.state;
            m.record(&self.settings, permit, failed, Instant::now());
            (before, m.state)
        };
        self.transitioned(tenant, upstream, before, after);
    }

    fn transitioned(
        &self,
        tenant: &str,
        upstream: &'static str,
        before: BreakerState,
        after: BreakerState,
    ) {
        if before == after {
            return;
        }
        match after {
            BreakerState::Open => {
                tracing::error!(tenant, upstream, "circuit breaker opened")
            }
            BreakerState::HalfOpen => {
                tracing::info!(tenant, upstream, "circuit breaker half-open: probing")
            }
            BreakerState::Closed => tracing::info!(tenant, upstream, "circuit breaker closed"),
        }
        let labels = BreakerLabels {
            tenant: tenant.to_owned(),
            upstream,
        };
        self.metrics.state.get_or_create(&labels).set(after.gauge());
        self.metrics
            .transitions
            .get_or_create(&TransitionLabels {
                tenant: labels.tenant,
                upstream,
                to: after.as_str(),
            })
            .inc();
    }

    /// Counts a retry decision.
    pub fn retry(&self, upstream: &'static str, retried: bool) {
        self.metrics
            .retries
            .get_or_create(&RetryLabels {
                upstream,
                outcome: if retried {
                    "retried"
                } else {
                    "budget_exhausted"
                },
            })
            .inc();
    }

    /// Every breaker's state (breakers are created on first use).
    pub fn status(&self) -> Vec<BreakerStatus> {
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<BreakerStatus> = breakers
            .iter()
            .map(|((tenant, upstream), entry)| BreakerStatus {
                tenant: tenant.clone(),
                upstream,
                state: entry
                    .machine
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .state
                    .as_str(),
            })
            .collect();
        out.sort_by(|a, b| (&a.tenant, a.upstream).cmp(&(&b.tenant, b.upstream)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_backoff_under_a_millisecond_only_yields_and_a_longer_one_sleeps() {
        // The clock is paused: it moves only when every task sleeps.
        let t0 = tokio::time::Instant::now();
        RetryPolicy::pause(Duration::from_micros(250)).await;
        RetryPolicy::pause(Duration::from_micros(999)).await;
        assert_eq!(tokio::time::Instant::now(), t0);
        RetryPolicy::pause(Duration::from_millis(2)).await;
        assert!(tokio::time::Instant::now() - t0 >= Duration::from_millis(2));
    }

    fn settings() -> BreakerSettings {
        BreakerSettings {
            enabled: true,
            window: 10,
            min_calls: 4,
            failure_ratio: 0.5,
            open_ms: 1_000,
        }
    }

    #[test]
    fn a_breaker_opens_on_a_failing_share_and_not_before_min_calls() {
        let s = settings();
        let t0 = Instant::now();
        let mut m = Machine::new(t0);
        for _ in 0..3 {
            m.record(&s, Permit::Call, true, t0);
        }
        assert_eq!(m.state, BreakerState::Closed, "3 calls < min_calls");
        m.record(&s, Permit::Call, true, t0);
        assert_eq!(m.state, BreakerState::Open);
        assert_eq!(m.permit(&s, t0 + Duration::from_millis(999)), None);
    }

    #[test]
    fn occasional_failures_keep_a_breaker_closed() {
        let s = settings();
        let t0 = Instant::now();
        let mut m = Machine::new(t0);
        for i in 0..1_000 {
            // One in five fails, as with a 20 % error rate.
            m.record(&s, Permit::Call, i % 5 == 0, t0);
            assert_eq!(m.state, BreakerState::Closed, "call {i}");
        }
    }

    #[test]
    fn after_the_open_period_one_probe_goes_through_and_decides() {
        let s = settings();
        let t0 = Instant::now();
        let mut m = Machine::new(t0);
        for _ in 0..4 {
            m.record(&s, Permit::Call, true, t0);
        }
        let later = t0 + Duration::from_millis(1_000);
        assert_eq!(m.permit(&s, later), Some(Permit::Probe));
        assert_eq!(m.state, BreakerState::HalfOpen);
        assert_eq!(m.permit(&s, later), None, "one probe at a time");
        assert_eq!(
            m.permit(&s, later + Duration::from_millis(1_000)),
            Some(Permit::Probe),
            "a probe that never reported is replaced after an open period"
        );
        // The probe fails: open again, for a full period.
        m.record(&s, Permit::Probe, true, later);
        assert_eq!(m.state, BreakerState::Open);
        assert_eq!(m.permit(&s, later + Duration::from_millis(500)), None);
        let again = later + Duration::from_millis(1_000);
        assert_eq!(m.permit(&s, again), Some(Permit::Probe));
        m.record(&s, Permit::Probe, false, again);
        assert_eq!(m.state, BreakerState::Closed);
        assert_eq!(m.permit(&s, again), Some(Permit::Call));
        // A closed breaker starts counting afresh.
        for _ in 0..3 {
            m.record(&s, Permit::Call, true, again);
        }
        assert_eq!(m.state, BreakerState::Closed);
    }

    #[test]
    fn breakers_are_per_tenant_and_upstream_and_show_in_metrics() {
        let metrics = Metrics::new();
        let guard = Guard::new(&settings(), &metrics);
        for _ in 0..4 {
            let permit = guard.permit("acme", "member").unwrap();
            guard.record("acme", "member", permit, true);
        }
        assert_eq!(guard.permit("acme", "member"), None);
        assert_eq!(guard.permit("demo", "member"), Some(Permit::Call));
        assert_eq!(guard.permit("acme", "product"), Some(Permit::Call));
        let text = metrics.encode();
        assert!(
            text.contains(r#"bff_upstream_breaker_state{tenant="acme",upstream="member"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"bff_upstream_breaker_transitions_total{tenant="acme",upstream="member",to="open"} 1"#
            ),
            "{text}"
        );
        let status = guard.status();
        assert!(
            status
                .iter()
                .any(|b| b.tenant == "acme" && b.upstream == "member" && b.state == "open")
        );
    }

    #[tokio::test]
    async fn a_call_gets_what_is_left_of_the_request_budget() {
        assert_eq!(
            attempt_timeout(Duration::from_millis(800)),
            Some(Duration::from_millis(800)),
            "no request: the upstream's own timeout"
        );
        let deadline = Instant::now() + Duration::from_millis(300);
        let cut = within(deadline, async {
            attempt_timeout(Duration::from_millis(800))
        })
        .await;
        assert!(
            cut.is_some_and(|t| t <= Duration::from_millis(300)),
            "{cut:?}"
        );
        let past = Instant::now();
        let none = within(past, async { attempt_timeout(Duration::from_millis(800)) }).await;
        assert_eq!(none, None);
        let spawned = spawn_within(Some(deadline), async {
            assert!(super::deadline().is_some(), "the deadline crosses spawn");
        });
        spawned.await.unwrap();
    }

    #[test]
    fn the_retry_budget_bounds_retries_to_a_share_of_calls() {
        let policy = RetryPolicy::new(&RetrySettings {
            budget_ratio: 0.2,
            budget_min_per_sec: 0,
            ..RetrySettings::default()
        });
        for _ in 0..100 {
            policy.deposit();
        }
        let allowed = (0..100)
            .filter(|_| policy.may_retry(Duration::ZERO))
            .count();
        assert!((15..=25).contains(&allowed), "{allowed} retries allowed");
    }
}
