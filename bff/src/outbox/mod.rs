//! The outbox relay: delivers every order event to the order service, at
//! least once.
//!
//! Events are read through a consumer group (`order-service`), so several
//! nodes share the work and each event goes to one of them; an event is
//! acknowledged only after the order service accepted it. Events a relay
//! read and never acknowledged (its node died mid-batch) are claimed by
//! another relay once they have been idle for `min_idle`, and delivered
//! again — the order service applies each (order, version) once.
//!
//! Acknowledged events are kept for a retention time (for operators and
//! audits), then removed by the relay; an event not acknowledged yet is
//! never removed, whatever its age.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::SharedCheckoutStore;
use crate::store::checkout::{OutboxEvent, Scope};
use crate::upstream::order::{OrderClient, OrderEvent};

/// Most batches one pass reads from one scope, so that one busy scope
/// does not hold up the others.
pub const MAX_BATCHES_PER_PASS: usize = 20;

/// The consumer group of the order service.
pub const ORDER_SERVICE_GROUP: &str = "order-service";

/// Delivers outbox events to the order service.
#[derive(Debug, Clone)]
pub struct Relay {
    store: SharedCheckoutStore,
    client: OrderClient,
    consumer: String,
    batch: usize,
    min_idle: Duration,
    retention: Duration,
    /// When this relay last removed old events.
    last_trim: Arc<Mutex<Option<Instant>>>,
}

/// How often a relay removes acknowledged events past their retention.
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// What one pass delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Events delivered and acknowledged.
    pub delivered: usize,
    /// Of those, events taken over from a consumer that stopped.
    pub reclaimed: usize,
    /// Events left pending after a failed delivery.
    pub failed: usize,
}

impl Relay {
    /// A relay named `consumer` (unique per node).
    pub fn new(
        store: SharedCheckoutStore,
        client: OrderClient,
        consumer: impl Into<String>,
        min_idle: Duration,
    ) -> Self {
        Self {
            store,
            client,
            consumer: consumer.into(),
            batch: 100,
            min_idle,
            retention: Duration::from_secs(24 * 3600),
            last_trim: Arc::default(),
        }
    }

    /// Reads at most `batch` events at a time (default 100).
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Keeps acknowledged events for `retention` (default a day).
    pub fn retaining(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Removes, in every scope, the events acknowledged by every consumer
    /// group and older than the retention. Returns how many were removed.
    pub async fn trim(&self) -> Result<u64, crate::store::StoreError> {
        let retention = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let before = chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(retention);
        let mut removed = 0;
        for scope in self.store.scopes().await? {
            removed += self.store.outbox_trim(&scope, before).await?;
        }
        Ok(removed)
    }

    /// Whether a trim is due (at most one per [`TRIM_EVERY`] per relay).
    fn trim_due(&self) -> bool {
        let mut last = self.last_trim.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= TRIM_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// One pass over every scope: reclaims stale pending events, reads new
    /// ones, delivers them in order and acknowledges what was delivered.
    /// A scope whose batch came back full is read again at once (up to
    /// [`MAX_BATCHES_PER_PASS`] batches), so a backlog drains at the speed
    /// of delivery rather than one batch per pass. A failed delivery stops
    /// the scope's pass; the rest stay pending for the next pass (of this
    /// or another relay).
    pub async fn pass(&self) -> Result<RelayReport, crate::store::StoreError> {
        let mut report = RelayReport::default();
        for scope in self.store.scopes().await? {
            for round in 0..MAX_BATCHES_PER_PASS {
                let (full, failed) = self.scope_batch(&scope, round == 0, &mut report).await?;
                if !full || failed {
                    break;
                }
            }
        }
        if self.trim_due() {
            match self.trim().await {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(removed, "acknowledged order events removed"),
                Err(error) => tracing::warn!(%error, "old order events could not be removed"),
            }
        }
        Ok(report)
    }

    /// Delivers one batch of a scope (with the reclaimed events first if
    /// `reclaim`); answers whether the read batch was full and whether a
    /// delivery failed.
    async fn scope_batch(
        &self,
        scope: &Scope,
        reclaim: bool,
        report: &mut RelayReport,
    ) -> Result<(bool, bool), crate::store::StoreError> {
        let min_idle = u64::try_from(self.min_idle.as_millis()).unwrap_or(u64::MAX);
        let reclaimed = if reclaim {
            self.store
                .outbox_claim(
                    scope,
                    ORDER_SERVICE_GROUP,
                    &self.consumer,
                    min_idle,
                    self.batch,
                )
                .await?
        } else {
            Vec::new()
        };
        let fresh = self
            .store
            .outbox_read(scope, ORDER_SERVICE_GROUP, &self.consumer, self.batch)
            .await?;
        let full = fresh.len() >= self.batch;
        let reclaimed_count = reclaimed.len();
        let events: Vec<OutboxEvent> = reclaimed.into_iter().chain(fresh).collect();
        let mut delivered = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let sent = self
                .client
                .deliver(
                    &scope.tenant,
                    OrderEvent {
                        order: &event.order,
                        version: event.version,
                        kind: &event.kind,
                        status: &event.status,
                        body: &event.body,
                    },
                )
                .await;
            match sent {
                Ok(()) => {
                    delivered.push(event.id.clone());
                    if i < reclaimed_count {
                        report.reclaimed += 1;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, scope = %scope, "outbox delivery failed; will retry");
                    report.failed += events.len() - i;
                    break;
                }
            }
        }
        self.store
            .outbox_ack(scope, ORDER_SERVICE_GROUP, &delivered)
            .await?;
        report.delivered += delivered.len();
        Ok((full, delivered.len() < events.len()))
    }
}

/// One event as `bff events tail` prints it: a line of JSON with its scope
/// (`tenant/mall`), position, kind, order, status, version and the order
/// record after the step.
pub fn event_line(scope: &Scope, event: &OutboxEvent) -> String {
    let body = serde_json::from_str::<serde_json::Value>(&event.body)
        .unwrap_or_else(|_| serde_json::Value::String(event.body.clone()));
    serde_json::json!({
        "scope": scope.to_string(),
        "id": event.id,
        "kind": event.kind,
        "order": event.order,
        "status": event.status,
        "version": event.version,
        "at_ms": event.at_ms,
        "body": body,
    })
    .to_string()
}

/// Prints every scope's events not printed yet (`seen`: the last event
/// printed of each scope) through `print`; answers how many it printed.
/// Reads only: consumer groups are untouched. Old events are only ever
/// removed from the front of an outbox, so when the last one printed is
/// gone, every event left is newer.
pub async fn print_new_events(
    store: &SharedCheckoutStore,
    seen: &mut std::collections::HashMap<Scope, String>,
    mut print: impl FnMut(&str),
) -> Result<usize, crate::store::StoreError> {
    let mut printed = 0;
    let mut scopes = store.scopes().await?;
    scopes.sort();
    for scope in scopes {
        let events = store.outbox_events(&scope).await?;
        let start = seen
            .get(&scope)
            .and_then(|last| events.iter().position(|e| &e.id == last))
            .map_or(0, |i| i + 1);
        for event in &events[start..] {
            print(&event_line(&scope, event));
            printed += 1;
        }
        if let Some(last) = events.last() {
            seen.insert(scope, last.id.clone());
        }
    }
    Ok(printed)
}
