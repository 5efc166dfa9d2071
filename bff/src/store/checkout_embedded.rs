//! The checkout's domain operations on the embedded file. Each step is one
//! job of the store's writer (see [`super::writer`]): the jobs of a group
//! run one after another in one redb write transaction, so a step sees no
//! interleaving and commits whole or not at all, with one fsync per group.
//! Hence every step makes all the checks that can refuse it before its
//! first write (a refusal commits with its group). The outbox is a table
//! ordered by a global sequence; consumer groups keep their cursor and their
//! pending (delivered, unacknowledged) entries in two more tables.

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::checkout::{
    CheckoutStore, CreateRefusal, Due, IdempotencyBegin, IdempotencyRef, NewOrder, OrderId,
    OrderStatus, OutboxEvent, Reservation, Scope, Step, StepOutcome, StockEffect, StockLevel,
    StockLine, StoredOrder, check_lines,
};
use super::embedded::EmbeddedStore;
use crate::domain::{MallId, MemberId, ProductId, TenantId};

const STOCK: TableDefinition<&str, &[u8]> = TableDefinition::new("co_stock");
const BOUGHT: TableDefinition<&str, u64> = TableDefinition::new("co_bought");
const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("co_orders");
const DUE: TableDefinition<&str, i64> = TableDefinition::new("co_due");
const IDEM: TableDefinition<&str, &[u8]> = TableDefinition::new("co_idempotency");
const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("co_outbox");
const SEQ: TableDefinition<&str, u64> = TableDefinition::new("co_seq");
const GROUPS: TableDefinition<&str, u64> = TableDefinition::new("co_groups");
const PENDING: TableDefinition<&str, &[u8]> = TableDefinition::new("co_pending");
const SCOPES: TableDefinition<&str, u8> = TableDefinition::new("co_scopes");

/// Creates the checkout's tables (so read transactions always find them).
pub(super) fn create_tables(tx: &WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(STOCK)?;
    tx.open_table(BOUGHT)?;
    tx.open_table(ORDERS)?;
    tx.open_table(DUE)?;
    tx.open_table(IDEM)?;
    tx.open_table(OUTBOX)?;
    tx.open_table(SEQ)?;
    tx.open_table(GROUPS)?;
    tx.open_table(PENDING)?;
    tx.open_table(SCOPES)?;
    Ok(())
}

impl EmbeddedStore {
    /// Empties the checkout's tables (stock, orders, idempotency records,
    /// the due index and the outbox) in one transaction, keeping everything
    /// else. For a development node whose demo upstreams live in the same
    /// process: their holds and the demo order service start empty on every
    /// start, so the checkout's state must too.
    pub fn reset_checkout(&self) -> Result<(), StoreError> {
        let db = self.database();
        let tx = db.begin_write()?;
        for table in [STOCK, ORDERS, IDEM, OUTBOX, PENDING] {
            tx.delete_table(table)?;
        }
        tx.delete_table(BOUGHT)?;
        tx.delete_table(DUE)?;
        tx.delete_table(SEQ)?;
        tx.delete_table(GROUPS)?;
        tx.delete_table(SCOPES)?;
        create_tables(&tx)?;
        tx.commit()?;
        Ok(())
    }
}

/// An order row.
#[derive(Serialize, Deserialize)]
struct OrderRow {
    member: MemberId,
    status: OrderStatus,
    version: u64,
    lines: Vec<StockLine>,
    reservation: Reservation,
    body: String,
    payments: Vec<String>,
}

impl OrderRow {
    fn into_stored(self, id: &OrderId) -> StoredOrder {
        StoredOrder {
            id: id.clone(),
            member: self.member,
            status: self.status,
            version: self.version,
            lines: self.lines,
            reservation: self.reservation,
            body: self.body,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct IdemRow {
    fingerprint: String,
    answer: Option<String>,
    expires_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct PendingRow {
    consumer: String,
    delivered_ms: i64,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn scope_key(scope: &Scope) -> String {
    format!("{}\u{0}{}", scope.tenant, scope.mall)
}

fn in_scope(scope: &Scope, rest: &str) -> String {
    format!("{}\u{0}{rest}", scope_key(scope))
}

/// `[start, end)` of every key under `prefix\0`.
fn prefix_range(prefix: &str) -> (String, String) {
    (format!("{prefix}\u{0}"), format!("{prefix}\u{1}"))
}

fn seq_key(seq: u64) -> String {
    format!("{seq:020}")
}

fn event_of(id: u64, raw: &[u8]) -> Result<OutboxEvent, StoreError> {
    let mut event: OutboxEvent = serde_json::from_slice(raw)?;
    event.id = id.to_string();
    Ok(event)
}

/// Appends one event to the scope's outbox inside `tx`.
fn append_event(
    tx: &WriteTransaction,
    scope: &Scope,
    kind: &str,
    order: &OrderId,
    status: OrderStatus,
    version: u64,
    body: &str,
) -> Result<(), StoreError> {
    let mut seq = tx.open_table(SEQ)?;
    let next = seq.get("outbox")?.map(|v| v.value()).unwrap_or(0) + 1;
    seq.insert("outbox", next)?;
    let event = OutboxEvent {
        id: String::new(),
        kind: kind.to_owned(),
        order: order.to_string(),
        status: status.as_str().to_owned(),
        version,
        body: body.to_owned(),
        at_ms: now_ms(),
    };
    tx.open_table(OUTBOX)?.insert(
        in_scope(scope, &seq_key(next)).as_str(),
        serde_json::to_vec(&event)?.as_slice(),
    )?;
    Ok(())
}

fn read_stock(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<StockLevel>, StoreError> {
    match table.get(key)? {
        Some(raw) => Ok(Some(serde_json::from_slice(raw.value())?)),
        None => Ok(None),
    }
}

impl EmbeddedStore {
    /// Runs a read on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.database();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(StoreError::from_display)?
    }

    fn note_scope(tx: &WriteTransaction, scope: &Scope) -> Result<(), StoreError> {
        tx.open_table(SCOPES)?
            .insert(scope_key(scope).as_str(), 1u8)?;
        Ok(())
    }
}

/// Creates `order` inside `tx` (every check before the first write), as
/// `RESERVED`, or, with `pay_by_ms`, moved on at once to
/// `AWAITING_PAYMENT` due then (three events instead of two).
fn create_in(
    tx: &WriteTransaction,
    scope: &Scope,
    order: &NewOrder,
    pay_by_ms: Option<i64>,
) -> Result<Result<StoredOrder, CreateRefusal>, StoreError> {
    let awaiting = pay_by_ms.is_some();
    let order_key = in_scope(scope, order.id.as_str());
    let mut orders = tx.open_table(ORDERS)?;
    if let Some(raw) = orders.get(order_key.as_str())? {
        let row: OrderRow = serde_json::from_slice(raw.value())?;
        return Ok(Err(CreateRefusal::Exists(Box::new(
            row.into_stored(&order.id),
        ))));
    }
    let mut stock = tx.open_table(STOCK)?;
    let mut bought = tx.open_table(BOUGHT)?;
    // Checks first, for every line; then the writes.
    let mut levels = Vec::with_capacity(order.lines.len());
    for line in &order.lines {
        let key = in_scope(scope, line.sku.as_str());
        let Some(level) = read_stock(&stock, &key)? else {
            return Ok(Err(CreateRefusal::UnknownSku(line.sku.clone())));
        };
        let qty = u64::from(line.quantity);
        if level.available < qty {
            return Ok(Err(CreateRefusal::SoldOut(line.sku.clone())));
        }
        let bought_key = in_scope(scope, &format!("{}\u{0}{}", line.sku, order.member));
        let had = bought
            .get(bought_key.as_str())?
            .map(|v| v.value())
            .unwrap_or(0);
        if level.per_member_limit > 0 && had + qty > u64::from(level.per_member_limit) {
            return Ok(Err(CreateRefusal::LimitExceeded(line.sku.clone())));
        }
        levels.push((key, level, bought_key, had, qty));
    }
    EmbeddedStore::note_scope(tx, scope)?;
    for (key, mut level, bought_key, had, qty) in levels {
        level.available -= qty;
        level.reserved += qty;
        stock.insert(key.as_str(), serde_json::to_vec(&level)?.as_slice())?;
        bought.insert(bought_key.as_str(), had + qty)?;
    }
    let row = OrderRow {
        member: order.member.clone(),
        status: if awaiting {
            OrderStatus::AwaitingPayment
        } else {
            OrderStatus::Reserved
        },
        version: if awaiting { 3 } else { 2 },
        lines: order.lines.clone(),
        reservation: if order.lines.is_empty() {
            Reservation::None
        } else {
            Reservation::Held
        },
        body: order.body.clone(),
        payments: Vec::new(),
    };
    orders.insert(order_key.as_str(), serde_json::to_vec(&row)?.as_slice())?;
    tx.open_table(DUE)?
        .insert(order_key.as_str(), pay_by_ms.unwrap_or(order.due_at_ms))?;
    let steps = [
        (OrderStatus::Created, 1),
        (OrderStatus::Reserved, 2),
        (OrderStatus::AwaitingPayment, 3),
    ];
    for (status, version) in &steps[..if awaiting { 3 } else { 2 }] {
        let (status, version) = (*status, *version);
        append_event(
            tx,
            scope,
            &status.event_kind(),
            &order.id,
            status,
            version,
            &order.body,
        )?;
    }
    Ok(Ok(row.into_stored(&order.id)))
}

#[async_trait]
impl CheckoutStore for EmbeddedStore {
    async fn define_stock(
        &self,
        scope: &Scope,
        sku: &ProductId,
        initial: u64,
        per_member_limit: u32,
    ) -> Result<bool, StoreError> {
        let scope = scope.clone();
        let key = in_scope(&scope, sku.as_str());
        self.write(move |tx| {
            let mut table = tx.open_table(STOCK)?;
            if table.get(key.as_str())?.is_some() {
                return Ok(false);
            }
            Self::note_scope(tx, &scope)?;
            let level = StockLevel {
                available: initial,
                reserved: 0,
                sold: 0,
                per_member_limit,
            };
            table.insert(key.as_str(), serde_json::to_vec(&level)?.as_slice())?;
            Ok(true)
        })
        .await
    }

    async fn stock(
        &self,
        scope: &Scope,
        sku: &ProductId,
    ) -> Result<Option<StockLevel>, StoreError> {
        let key = in_scope(scope, sku.as_str());
        self.run(move |db| {
            let tx = db.begin_read()?;
            read_stock(&tx.open_table(STOCK)?, &key)
        })
        .await
    }

    async fn held_by_member(
        &self,
        scope: &Scope,
        sku: &ProductId,
        member: &MemberId,
    ) -> Result<u64, StoreError> {
        let key = in_scope(scope, &format!("{sku}\u{0}{member}"));
        self.run(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(BOUGHT)?;
            Ok(table.get(key.as_str())?.map(|v| v.value()).unwrap_or(0))
        })
        .await
    }

    async fn create_order(
        &self,
        scope: &Scope,
        order: &NewOrder,
    ) -> Result<Result<StoredOrder, CreateRefusal>, StoreError> {
        check_lines(&order.lines)?;
        let scope = scope.clone();
        let order = order.clone();
        self.write(move |tx| create_in(tx, &scope, &order, None))
            .await
    }

    /// Both steps in one write (one commit of the group).
    async fn create_awaiting_payment(
        &self,
        scope: &Scope,
        order: &NewOrder,
        pay_by_ms: i64,
    ) -> Result<Result<StoredOrder, CreateRefusal>, StoreError> {
        check_lines(&order.lines)?;
        let scope = scope.clone();
        let order = order.clone();
        self.write(move |tx| create_in(tx, &scope, &order, Some(pay_by_ms)))
            .await
    }

    async fn order(&self, scope: &Scope, id: &OrderId) -> Result<Option<StoredOrder>, StoreError> {
        let key = in_scope(scope, id.as_str());
        let id = id.clone();
        self.run(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(ORDERS)?;
            match table.get(key.as_str())? {
                Some(raw) => {
                    let row: OrderRow = serde_json::from_slice(raw.value())?;
                    Ok(Some(row.into_stored(&id)))
                }
                None => Ok(None),
            }
        })
        .await
    }

    async fn apply(
        &self,
        scope: &Scope,
        id: &OrderId,
        step: &Step,
    ) -> Result<StepOutcome, StoreError> {
        let scope = scope.clone();
        let id = id.clone();
        let step = step.clone();
        self.write(move |tx| {
            let order_key = in_scope(&scope, id.as_str());
            let mut orders = tx.open_table(ORDERS)?;
            let Some(raw) = orders.get(order_key.as_str())? else {
                return Ok(StepOutcome::Missing);
            };
            let mut row: OrderRow = serde_json::from_slice(raw.value())?;
            drop(raw);
            if row.status != step.expect_status || row.version != step.expect_version {
                return Ok(StepOutcome::Conflict);
            }
            if step.stock != StockEffect::None && row.reservation != Reservation::Held {
                return Ok(StepOutcome::Conflict);
            }
            if let Some(payment) = &step.payment_id
                && row.payments.contains(payment)
            {
                return Ok(StepOutcome::DuplicatePayment);
            }
            if step.stock != StockEffect::None {
                let mut stock = tx.open_table(STOCK)?;
                let mut bought = tx.open_table(BOUGHT)?;
                for line in &row.lines {
                    let key = in_scope(&scope, line.sku.as_str());
                    let mut level = read_stock(&stock, &key)?
                        .ok_or_else(|| StoreError(format!("stock of {} vanished", line.sku)))?;
                    let qty = u64::from(line.quantity);
                    level.reserved = level.reserved.saturating_sub(qty);
                    if step.stock == StockEffect::Release {
                        level.available += qty;
                        let bought_key =
                            in_scope(&scope, &format!("{}\u{0}{}", line.sku, row.member));
                        let had = bought
                            .get(bought_key.as_str())?
                            .map(|v| v.value())
                            .unwrap_or(0);
                        bought.insert(bought_key.as_str(), had.saturating_sub(qty))?;
                    } else {
                        level.sold += qty;
                    }
                    stock.insert(key.as_str(), serde_json::to_vec(&level)?.as_slice())?;
                }
                row.reservation = match step.stock {
                    StockEffect::Release => Reservation::Released,
                    _ => Reservation::Sold,
                };
            }
            if let Some(payment) = &step.payment_id {
                row.payments.push(payment.clone());
            }
            row.status = step.to;
            row.version += 1;
            row.body = step.body.clone();
            orders.insert(order_key.as_str(), serde_json::to_vec(&row)?.as_slice())?;
            let mut due = tx.open_table(DUE)?;
            match step.due {
                Due::Keep => {}
                Due::At(at) => {
                    due.insert(order_key.as_str(), at)?;
                }
                Due::Clear => {
                    due.remove(order_key.as_str())?;
                }
            }
            append_event(
                tx,
                &scope,
                &step.event,
                &id,
                row.status,
                row.version,
                &row.body,
            )?;
            Ok(StepOutcome::Applied(row.version))
        })
        .await
    }

    async fn claim_due(
        &self,
        scope: &Scope,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<OrderId>, StoreError> {
        let (start, end) = prefix_range(&scope_key(scope));
        self.write(move |tx| {
            let mut due = tx.open_table(DUE)?;
            let mut ready: Vec<(i64, String)> = Vec::new();
            for entry in due.range(start.as_str()..end.as_str())? {
                let (k, v) = entry?;
                if v.value() <= now_ms {
                    ready.push((v.value(), k.value().to_owned()));
                }
            }
            ready.sort();
            ready.truncate(limit);
            let mut ids = Vec::with_capacity(ready.len());
            for (_, key) in ready {
                due.insert(key.as_str(), now_ms + lease_ms)?;
                let id = key.get(start.len()..).unwrap_or_default();
                ids.push(OrderId::parse(id).map_err(StoreError::from_display)?);
            }
            Ok(ids)
        })
        .await
    }

    async fn scopes(&self) -> Result<Vec<Scope>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(SCOPES)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (k, _) = entry?;
                let raw = k.value();
                let (t, m) = raw
                    .split_once('\u{0}')
                    .ok_or_else(|| StoreError(format!("bad scope {raw:?}")))?;
                out.push(Scope::new(
                    TenantId::parse(t).map_err(StoreError::from_display)?,
                    MallId::parse(m).map_err(StoreError::from_display)?,
                ));
            }
            Ok(out)
        })
        .await
    }

    async fn idempotency_begin(
        &self,
        key: &IdempotencyRef<'_>,
        fingerprint: &str,
        lease_ms: i64,
    ) -> Result<IdempotencyBegin, StoreError> {
        let k = format!("{}\u{0}{}\u{0}{}", key.tenant, key.member, key.key);
        let fingerprint = fingerprint.to_owned();
        self.write(move |tx| {
            let mut table = tx.open_table(IDEM)?;
            let now = now_ms();
            let existing: Option<IdemRow> = match table.get(k.as_str())? {
                Some(raw) => Some(serde_json::from_slice(raw.value())?),
                None => None,
            };
            if let Some(row) = existing.filter(|r| r.expires_ms > now) {
                return Ok(if row.fingerprint != fingerprint {
                    IdempotencyBegin::Reused
                } else {
                    match row.answer {
                        Some(answer) => IdempotencyBegin::Completed(answer),
                        None => IdempotencyBegin::InProgress,
                    }
                });
            }
            let row = IdemRow {
                fingerprint: fingerprint.clone(),
                answer: None,
                expires_ms: now + lease_ms.max(1),
            };
            table.insert(k.as_str(), serde_json::to_vec(&row)?.as_slice())?;
            Ok(IdempotencyBegin::Started)
        })
        .await
    }

    async fn idempotency_complete(
        &self,
        key: &IdempotencyRef<'_>,
        fingerprint: &str,
        answer: &str,
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        let k = format!("{}\u{0}{}\u{0}{}", key.tenant, key.member, key.key);
        let fingerprint = fingerprint.to_owned();
        let answer = answer.to_owned();
        self.write(move |tx| {
            let mut table = tx.open_table(IDEM)?;
            let now = now_ms();
            let other_owner = match table.get(k.as_str())? {
                Some(raw) => {
                    let row: IdemRow = serde_json::from_slice(raw.value())?;
                    row.expires_ms > now && row.fingerprint != fingerprint
                }
                None => false,
            };
            if other_owner {
                return Ok(());
            }
            let row = IdemRow {
                fingerprint: fingerprint.clone(),
                answer: Some(answer.clone()),
                expires_ms: now + ttl_ms.max(1),
            };
            table.insert(k.as_str(), serde_json::to_vec(&row)?.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn idempotency_abandon(
        &self,
        key: &IdempotencyRef<'_>,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        let k = format!("{}\u{0}{}\u{0}{}", key.tenant, key.member, key.key);
        let fingerprint = fingerprint.to_owned();
        self.write(move |tx| {
            let mut table = tx.open_table(IDEM)?;
            let running = match table.get(k.as_str())? {
                Some(raw) => {
                    let row: IdemRow = serde_json::from_slice(raw.value())?;
                    row.fingerprint == fingerprint && row.answer.is_none()
                }
                None => false,
            };
            if running {
                table.remove(k.as_str())?;
            }
            Ok(())
        })
        .await
    }

    async fn outbox_read(
        &self,
        scope: &Scope,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let scope_k = scope_key(scope);
        let group_key = format!("{scope_k}\u{0}{group}");
        let consumer = consumer.to_owned();
        self.write(move |tx| {
            let mut groups = tx.open_table(GROUPS)?;
            let last = groups
                .get(group_key.as_str())?
                .map(|v| v.value())
                .unwrap_or(0);
            let start = format!("{scope_k}\u{0}{}", seq_key(last + 1));
            let (_, end) = prefix_range(&scope_k);
            let outbox = tx.open_table(OUTBOX)?;
            let mut events = Vec::new();
            let mut newest = last;
            for entry in outbox
                .range(start.as_str()..end.as_str())?
                .take(count.max(1))
            {
                let (k, v) = entry?;
                let seq: u64 = k
                    .value()
                    .rsplit('\u{0}')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .map_err(StoreError::from_display)?;
                newest = seq;
                events.push(event_of(seq, v.value())?);
            }
            if newest != last {
                groups.insert(group_key.as_str(), newest)?;
            }
            let mut pending = tx.open_table(PENDING)?;
            let row = serde_json::to_vec(&PendingRow {
                consumer: consumer.clone(),
                delivered_ms: now_ms(),
            })?;
            for event in &events {
                let seq: u64 = event.id.parse().map_err(StoreError::from_display)?;
                pending.insert(
                    format!("{group_key}\u{0}{}", seq_key(seq)).as_str(),
                    row.as_slice(),
                )?;
            }
            Ok(events)
        })
        .await
    }

    async fn outbox_ack(
        &self,
        scope: &Scope,
        group: &str,
        ids: &[String],
    ) -> Result<(), StoreError> {
        let group_key = format!("{}\u{0}{group}", scope_key(scope));
        let ids = ids.to_vec();
        self.write(move |tx| {
            let mut pending = tx.open_table(PENDING)?;
            for id in &ids {
                let Ok(seq) = id.parse::<u64>() else { continue };
                pending.remove(format!("{group_key}\u{0}{}", seq_key(seq)).as_str())?;
            }
            Ok(())
        })
        .await
    }

    async fn outbox_claim(
        &self,
        scope: &Scope,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let scope_k = scope_key(scope);
        let group_key = format!("{scope_k}\u{0}{group}");
        let consumer = consumer.to_owned();
        self.write(move |tx| {
            let now = now_ms();
            let mut pending = tx.open_table(PENDING)?;
            let (start, end) = prefix_range(&group_key);
            let mut stale = Vec::new();
            for entry in pending.range(start.as_str()..end.as_str())? {
                let (k, v) = entry?;
                let row: PendingRow = serde_json::from_slice(v.value())?;
                let idle = now.saturating_sub(row.delivered_ms);
                if idle >= i64::try_from(min_idle_ms).unwrap_or(i64::MAX) {
                    stale.push(k.value().to_owned());
                }
                if stale.len() >= count.max(1) {
                    break;
                }
            }
            let outbox = tx.open_table(OUTBOX)?;
            let row = serde_json::to_vec(&PendingRow {
                consumer: consumer.clone(),
                delivered_ms: now,
            })?;
            let mut events = Vec::new();
            for key in stale {
                let seq_text = key.rsplit('\u{0}').next().unwrap_or_default().to_owned();
                let seq: u64 = seq_text.parse().map_err(StoreError::from_display)?;
                match outbox.get(format!("{scope_k}\u{0}{seq_text}").as_str())? {
                    Some(raw) => {
                        events.push(event_of(seq, raw.value())?);
                        pending.insert(key.as_str(), row.as_slice())?;
                    }
                    None => {
                        pending.remove(key.as_str())?;
                    }
                }
            }
            Ok(events)
        })
        .await
    }

    async fn outbox_events(&self, scope: &Scope) -> Result<Vec<OutboxEvent>, StoreError> {
        let (start, end) = prefix_range(&scope_key(scope));
        self.run(move |db| {
            let tx = db.begin_read()?;
            let outbox = tx.open_table(OUTBOX)?;
            let mut events = Vec::new();
            for entry in outbox.range(start.as_str()..end.as_str())? {
                let (k, v) = entry?;
                let seq: u64 = k
                    .value()
                    .rsplit('\u{0}')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .map_err(StoreError::from_display)?;
                events.push(event_of(seq, v.value())?);
            }
            Ok(events)
        })
        .await
    }

    async fn outbox_trim(&self, scope: &Scope, before_ms: i64) -> Result<u64, StoreError> {
        let scope_k = scope_key(scope);
        self.write(move |tx| {
            // The first event some group still needs: its first pending
            // one, or the one after the last it was given.
            let groups = tx.open_table(GROUPS)?;
            let pending = tx.open_table(PENDING)?;
            let (start, end) = prefix_range(&scope_k);
            let mut floor: Option<u64> = None;
            for entry in groups.range(start.as_str()..end.as_str())? {
                let (k, v) = entry?;
                let mut needed = v.value() + 1;
                let (p_start, p_end) = prefix_range(k.value());
                if let Some(first) = pending.range(p_start.as_str()..p_end.as_str())?.next() {
                    let (pk, _) = first?;
                    let seq: u64 = pk
                        .value()
                        .rsplit('\u{0}')
                        .next()
                        .unwrap_or_default()
                        .parse()
                        .map_err(StoreError::from_display)?;
                    needed = needed.min(seq);
                }
                floor = Some(floor.map_or(needed, |f| f.min(needed)));
            }
            let Some(floor) = floor else {
                return Ok(0);
            };
            let mut outbox = tx.open_table(OUTBOX)?;
            let mut doomed = Vec::new();
            let below = format!("{scope_k}\u{0}{}", seq_key(floor));
            for entry in outbox.range(start.as_str()..below.as_str())? {
                let (k, v) = entry?;
                let event: OutboxEvent = serde_json::from_slice(v.value())?;
                if event.at_ms >= before_ms {
                    break;
                }
                doomed.push(k.value().to_owned());
            }
            for key in &doomed {
                outbox.remove(key.as_str())?;
            }
            Ok(doomed.len() as u64)
        })
        .await
    }
}
