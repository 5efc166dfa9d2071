//! The checkout's state: stock counters, orders and their transitions,
//! idempotency records, the due index and the outbox, as *domain
//! operations* that are each one atomic step in both backends.
//!
//! The store does not decide which transition is allowed (that is the
//! checkout's state machine); it guarantees that a step is applied only to
//! the version it was computed from (compare-and-set), that stock moves
//! exactly once per order (a reservation is `held` until it is released or
//! sold, and only a held reservation can move), that a payment id is
//! recorded at most once per order, and that every committed step writes
//! exactly one outbox event in the same atomic write.
//!
//! # Partitioning (Redis hash tags)
//!
//! Everything one order step touches — the order, the stock counters of its
//! SKUs, the per-member purchase counters, the due index and the outbox
//! stream — lives under one hash tag per *scope*, a (tenant, mall) pair:
//! `<ns>:co:{tenant:mall}:…`. An order belongs to one mall (a cart is priced
//! for one mall), so a multi-SKU reservation is one script on one cluster
//! slot. Malls spread over slots; one mall's flash sale is bounded by one
//! shard, as a single hot SKU counter would be anyway. Idempotency records
//! are single-key operations under a per-tenant tag. The list of scopes
//! (for the sweeper and the outbox relay) is a plain set written before the
//! first step of a scope; it is idempotent and needs no atomicity with it.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::{InvalidInput, MallId, MemberId, ProductId, TenantId};

/// The unit of atomicity: one mall of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// The tenant.
    pub tenant: TenantId,
    /// The mall whose stock and orders these are.
    pub mall: MallId,
}

impl Scope {
    /// A scope.
    pub fn new(tenant: TenantId, mall: MallId) -> Self {
        Self { tenant, mall }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.mall)
    }
}

/// An order's id. It names its mall, so the scope of an order is known
/// from its id alone: `<mall>.<hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrderId {
    raw: String,
    mall: MallId,
}

impl OrderId {
    /// The id of the order in `mall` whose unique part is `unique` (hex
    /// digits, derived by the checkout from the idempotency key).
    pub fn new(mall: &MallId, unique: &str) -> Result<Self, InvalidInput> {
        Self::parse(format!("{mall}.{unique}"))
    }

    /// Parses a client-supplied order id.
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidInput> {
        let raw = raw.into();
        let bad = InvalidInput {
            what: "orderId",
            reason: "is not an order id",
        };
        let Some((mall, unique)) = raw.rsplit_once('.') else {
            return Err(bad);
        };
        let Ok(mall) = MallId::parse(mall) else {
            return Err(bad);
        };
        if unique.len() < 8 || unique.len() > 32 || !unique.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad);
        }
        Ok(Self { raw, mall })
    }

    /// The mall the order belongs to.
    pub fn mall(&self) -> &MallId {
        &self.mall
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl TryFrom<String> for OrderId {
    type Error = InvalidInput;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<OrderId> for String {
    fn from(id: OrderId) -> String {
        id.raw
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Where an order is in its life. Forward only:
/// `CREATED → RESERVED → AWAITING_PAYMENT → PAID → COMPLETED`, or
/// `CANCELLED` / `EXPIRED` from any state before `PAID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Recorded; nothing held yet.
    Created,
    /// Stock is reserved.
    Reserved,
    /// Points, wallet and coupons are frozen; waiting for the external part.
    AwaitingPayment,
    /// Every part is paid; stock is sold.
    Paid,
    /// Paid and settled: frozen points and wallet amounts are deducted.
    Completed,
    /// Cancelled before payment; everything held is given back.
    Cancelled,
    /// Not paid in time; everything held is given back.
    Expired,
}

impl OrderStatus {
    /// Every status, in life order.
    pub const ALL: [OrderStatus; 7] = [
        OrderStatus::Created,
        OrderStatus::Reserved,
        OrderStatus::AwaitingPayment,
        OrderStatus::Paid,
        OrderStatus::Completed,
        OrderStatus::Cancelled,
        OrderStatus::Expired,
    ];

    /// The status as stored and sent in events (`AWAITING_PAYMENT`).
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Created => "CREATED",
            OrderStatus::Reserved => "RESERVED",
            OrderStatus::AwaitingPayment => "AWAITING_PAYMENT",
            OrderStatus::Paid => "PAID",
            OrderStatus::Completed => "COMPLETED",
            OrderStatus::Cancelled => "CANCELLED",
            OrderStatus::Expired => "EXPIRED",
        }
    }

    /// Parses a stored status.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Whether the order may move from `self` to `to`.
    pub fn can_go_to(self, to: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, to),
            (Created, Reserved)
                | (Reserved, AwaitingPayment)
                | (AwaitingPayment, Paid)
                | (Paid, Completed)
                | (Created | Reserved | AwaitingPayment, Cancelled | Expired)
        )
    }

    /// Whether nothing more can happen to the order's status.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderStatus::Completed | OrderStatus::Cancelled | OrderStatus::Expired
        )
    }

    /// The outbox event kind of a transition into this status
    /// (`order.awaiting_payment`).
    pub fn event_kind(self) -> String {
        format!("order.{}", self.as_str().to_ascii_lowercase())
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of an order as the stock sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLine {
    /// The SKU.
    pub sku: ProductId,
    /// Units; at least 1.
    pub quantity: u32,
}

/// A SKU's stock counters. `available + reserved + sold` is the stock the
/// SKU was defined with, always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    /// Units that can still be reserved.
    pub available: u64,
    /// Units held by unpaid orders.
    pub reserved: u64,
    /// Units of paid orders.
    pub sold: u64,
    /// Most units one member may hold or buy (0: no limit).
    pub per_member_limit: u32,
}

/// What happened to an order's stock reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reservation {
    /// The order has no stock lines.
    None,
    /// Units are held for the order.
    Held,
    /// The units went back to `available`.
    Released,
    /// The units were sold.
    Sold,
}

impl Reservation {
    fn as_str(self) -> &'static str {
        match self {
            Reservation::None => "none",
            Reservation::Held => "held",
            Reservation::Released => "released",
            Reservation::Sold => "sold",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        [
            Reservation::None,
            Reservation::Held,
            Reservation::Released,
            Reservation::Sold,
        ]
        .into_iter()
        .find(|r| r.as_str() == raw)
    }
}

/// An order as stored: the fields the store itself checks, and the
/// checkout's own record (`body`, JSON) that it keeps verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOrder {
    /// The order.
    pub id: OrderId,
    /// The buyer.
    pub member: MemberId,
    /// Current status.
    pub status: OrderStatus,
    /// Bumped by every step; a step names the version it was computed from.
    pub version: u64,
    /// The stock lines (empty for a pay-the-bill order).
    pub lines: Vec<StockLine>,
    /// The stock reservation's state.
    pub reservation: Reservation,
    /// The checkout's record of the order.
    pub body: String,
}

/// A new order: reserved all-or-nothing and created in one atomic step
/// (two transitions, `CREATED` and `RESERVED`, so two events).
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// Its id (the same checkout always gets the same id).
    pub id: OrderId,
    /// The buyer.
    pub member: MemberId,
    /// Distinct SKUs, each with at least one unit.
    pub lines: Vec<StockLine>,
    /// When the sweeper should look at it if nothing else happens (a
    /// checkout that stops here is recovered then), Unix milliseconds.
    pub due_at_ms: i64,
    /// The checkout's record of the order.
    pub body: String,
}

/// Why an order could not be created. No stock moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateRefusal {
    /// An order with this id exists already (a retry): here it is.
    Exists(Box<StoredOrder>),
    /// A SKU has no stock counter in this scope.
    UnknownSku(ProductId),
    /// A SKU has fewer units available than asked for.
    SoldOut(ProductId),
    /// The member would hold more of a SKU than its per-member limit.
    LimitExceeded(ProductId),
}

/// What a step does to the order's stock reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockEffect {
    /// Nothing.
    None,
    /// Held units go back to `available` (and to the member's allowance).
    Release,
    /// Held units become sold.
    Sell,
}

/// What a step does to the order's entry in the due index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Leave it.
    Keep,
    /// Look at the order again at this time (Unix milliseconds).
    At(i64),
    /// Nothing more to do for the sweeper.
    Clear,
}

/// One atomic step on an existing order.
#[derive(Debug, Clone)]
pub struct Step {
    /// The version the step was computed from.
    pub expect_version: u64,
    /// The status the step was computed from.
    pub expect_status: OrderStatus,
    /// The status after the step (may equal `expect_status` for a step that
    /// only records something, such as a late payment).
    pub to: OrderStatus,
    /// The checkout's new record of the order.
    pub body: String,
    /// Stock movement; only applied to a held reservation.
    pub stock: StockEffect,
    /// Due-index change.
    pub due: Due,
    /// A payment to record once: the step is refused if this id was
    /// recorded on the order before.
    pub payment_id: Option<String>,
    /// The kind of the one event this step writes (`order.paid`).
    pub event: String,
}

/// The outcome of [`CheckoutStore::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Committed; the order is now at this version.
    Applied(u64),
    /// The order changed since it was read (or the reservation already
    /// moved): nothing was written. Re-read and decide again.
    Conflict,
    /// The payment id was recorded on this order before: nothing written.
    DuplicatePayment,
    /// No such order.
    Missing,
}

/// The answer of [`CheckoutStore::idempotency_begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// No record: this request owns the key now.
    Started,
    /// The same request is still running elsewhere.
    InProgress,
    /// The same request finished: its stored answer.
    Completed(String),
    /// The key was used for a different request.
    Reused,
}

/// Addresses one idempotency record.
#[derive(Debug, Clone)]
pub struct IdempotencyRef<'a> {
    /// The tenant.
    pub tenant: &'a TenantId,
    /// The member who sent the key (keys are per member).
    pub member: &'a MemberId,
    /// The client's key (already validated: printable, no braces).
    pub key: &'a str,
}

/// One outbox event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEvent {
    /// Position in the scope's outbox (opaque; increasing).
    pub id: String,
    /// The event kind (`order.paid`).
    pub kind: String,
    /// The order.
    pub order: String,
    /// The order's status after the step.
    pub status: String,
    /// The order's version after the step; (order, version) identifies the
    /// event for idempotent consumers.
    pub version: u64,
    /// The checkout's record of the order after the step.
    pub body: String,
    /// When the event was written (ms since the epoch).
    #[serde(default)]
    pub at_ms: i64,
}

/// The checkout's domain operations. Every method is one atomic step.
#[async_trait]
pub trait CheckoutStore: Send + Sync + fmt::Debug + 'static {
    /// Defines a SKU's stock in a scope unless it is defined already.
    /// Returns whether it was created.
    async fn define_stock(
        &self,
        scope: &Scope,
        sku: &ProductId,
        initial: u64,
        per_member_limit: u32,
    ) -> Result<bool, StoreError>;

    /// A SKU's counters; `None` if not defined.
    async fn stock(&self, scope: &Scope, sku: &ProductId)
    -> Result<Option<StockLevel>, StoreError>;

    /// Units of a SKU the member holds in unpaid orders or bought.
    async fn held_by_member(
        &self,
        scope: &Scope,
        sku: &ProductId,
        member: &MemberId,
    ) -> Result<u64, StoreError>;

    /// Reserves every line (all or nothing) and records the order as
    /// `RESERVED`, writing the events `order.created` and `order.reserved`.
    async fn create_order(
        &self,
        scope: &Scope,
        order: &NewOrder,
    ) -> Result<Result<StoredOrder, CreateRefusal>, StoreError>;

    /// Creates an order with nothing to freeze and moves it straight on
    /// to `AWAITING_PAYMENT`, due at `pay_by_ms`: `create_order` followed
    /// by the step to awaiting payment (record unchanged), writing the
    /// events `order.created`, `order.reserved` and
    /// `order.awaiting_payment`. A backend may do both in one atomic step
    /// (Redis: one script); this default does them one after the other,
    /// and a crash between them leaves a `RESERVED` order for recovery, as
    /// the checkout's own two steps would. Answers the order as it is
    /// after both (or as it is, if another step came between), or why it
    /// was not created.
    async fn create_awaiting_payment(
        &self,
        scope: &Scope,
        order: &NewOrder,
        pay_by_ms: i64,
    ) -> Result<Result<StoredOrder, CreateRefusal>, StoreError> {
        let created = match self.create_order(scope, order).await? {
            Ok(created) => created,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let step = Step {
            expect_version: created.version,
            expect_status: created.status,
            to: OrderStatus::AwaitingPayment,
            body: order.body.clone(),
            stock: StockEffect::None,
            due: Due::At(pay_by_ms),
            payment_id: None,
            event: OrderStatus::AwaitingPayment.event_kind(),
        };
        match self.apply(scope, &order.id, &step).await? {
            StepOutcome::Applied(version) => Ok(Ok(StoredOrder {
                status: OrderStatus::AwaitingPayment,
                version,
                ..created
            })),
            _ => match self.order(scope, &order.id).await? {
                Some(current) => Ok(Ok(current)),
                None => Err(StoreError("order vanished after it was created".into())),
            },
        }
    }

    /// An order.
    async fn order(&self, scope: &Scope, id: &OrderId) -> Result<Option<StoredOrder>, StoreError>;

    /// Applies one step to an order (compare-and-set on its version).
    async fn apply(
        &self,
        scope: &Scope,
        id: &OrderId,
        step: &Step,
    ) -> Result<StepOutcome, StoreError>;

    /// Orders whose due time is at or before `now_ms`, at most `limit`;
    /// each is pushed `lease_ms` into the future so that other nodes
    /// sweeping at the same time skip it (a node that dies lets the lease
    /// run out, and another takes the order).
    async fn claim_due(
        &self,
        scope: &Scope,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<OrderId>, StoreError>;

    /// Every scope that has stock or orders.
    async fn scopes(&self) -> Result<Vec<Scope>, StoreError>;

    /// Starts a request under an idempotency key. `lease_ms` bounds how
    /// long an unfinished record blocks retries (a node that died
    /// mid-request); `fingerprint` identifies the request.
    async fn idempotency_begin(
        &self,
        key: &IdempotencyRef<'_>,
        fingerprint: &str,
        lease_ms: i64,
    ) -> Result<IdempotencyBegin, StoreError>;

    /// Stores the answer of a request begun with the same fingerprint; the
    /// record is kept `ttl_ms`.
    async fn idempotency_complete(
        &self,
        key: &IdempotencyRef<'_>,
        fingerprint: &str,
        answer: &str,
        ttl_ms: i64,
    ) -> Result<(), StoreError>;

    /// Drops an unfinished record (the request failed in a way a retry may
    /// fix).
    async fn idempotency_abandon(
        &self,
        key: &IdempotencyRef<'_>,
        fingerprint: &str,
    ) -> Result<(), StoreError>;

    /// Up to `count` events the consumer group has not been given yet,
    /// now pending for `consumer` until acknowledged. A new group starts at
    /// the first event.
    async fn outbox_read(
        &self,
        scope: &Scope,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Acknowledges events: they are not delivered to the group again.
    async fn outbox_ack(
        &self,
        scope: &Scope,
        group: &str,
        ids: &[String],
    ) -> Result<(), StoreError>;

    /// Takes over up to `count` events delivered to the group at least
    /// `min_idle_ms` ago and not acknowledged (their consumer died).
    async fn outbox_claim(
        &self,
        scope: &Scope,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError>;

    /// The scope's events in order (for operators and tests).
    async fn outbox_events(&self, scope: &Scope) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Removes the scope's events written before `before_ms` (ms since the
    /// epoch) that every consumer group has been given and has
    /// acknowledged; an event not yet read, or read and not acknowledged,
    /// by any group stays, and so does every later one. With no group yet,
    /// nothing is removed. Returns how many events were removed.
    async fn outbox_trim(&self, scope: &Scope, before_ms: i64) -> Result<u64, StoreError>;
}

/// Shared handle.
pub type SharedCheckoutStore = std::sync::Arc<dyn CheckoutStore>;

/// Lines of a new order must be distinct SKUs with at least one unit each;
/// both backends refuse anything else before touching state.
pub(super) fn check_lines(lines: &[StockLine]) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::new();
    for line in lines {
        if line.quantity == 0 || !seen.insert(&line.sku) {
            return Err(StoreError(format!(
                "order lines must be distinct SKUs with a positive quantity ({})",
                line.sku
            )));
        }
    }
    Ok(())
}

/// Encodes lines as stored: `qty sku` joined with `,` (SKU ids have no
/// spaces or commas).
pub(super) fn encode_lines(lines: &[StockLine]) -> String {
    lines
        .iter()
        .map(|l| format!("{} {}", l.quantity, l.sku))
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn decode_lines(raw: &str) -> Result<Vec<StockLine>, StoreError> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    raw.split(',')
        .map(|part| {
            let (qty, sku) = part
                .split_once(' ')
                .ok_or_else(|| StoreError(format!("bad stored order line {part:?}")))?;
            Ok(StockLine {
                sku: ProductId::parse(sku).map_err(StoreError::from_display)?,
                quantity: qty.parse().map_err(StoreError::from_display)?,
            })
        })
        .collect()
}

pub(super) fn reservation_from(raw: &str) -> Result<Reservation, StoreError> {
    Reservation::parse(raw).ok_or_else(|| StoreError(format!("bad reservation state {raw:?}")))
}

pub(super) fn status_from(raw: &str) -> Result<OrderStatus, StoreError> {
    OrderStatus::parse(raw).ok_or_else(|| StoreError(format!("bad order status {raw:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_only_moves_forward() {
        use OrderStatus::*;
        assert!(Created.can_go_to(Reserved));
        assert!(AwaitingPayment.can_go_to(Paid));
        assert!(AwaitingPayment.can_go_to(Expired));
        assert!(!Paid.can_go_to(Cancelled));
        assert!(!Cancelled.can_go_to(Paid));
        assert!(!Expired.can_go_to(AwaitingPayment));
        assert!(!Paid.can_go_to(AwaitingPayment));
        for s in OrderStatus::ALL {
            assert!(!s.can_go_to(s));
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn order_ids_name_their_mall_and_reject_anything_else() {
        let id = OrderId::new(&MallId::parse("mall.1").unwrap(), "0123456789abcdef").unwrap();
        assert_eq!(id.mall().as_str(), "mall.1");
        assert!(OrderId::parse("mall-1.xyz12345").is_err());
        assert!(OrderId::parse("mall-1").is_err());
        assert!(OrderId::parse(".0123456789").is_err());
        assert!(OrderId::parse("mall{1}.0123456789").is_err());
    }

    #[test]
    fn lines_round_trip_and_duplicates_are_refused() {
        let lines = vec![
            StockLine {
                sku: ProductId::parse("sku-1").unwrap(),
                quantity: 2,
            },
            StockLine {
                sku: ProductId::parse("sku-flash-1").unwrap(),
                quantity: 1,
            },
        ];
        assert_eq!(decode_lines(&encode_lines(&lines)).unwrap(), lines);
        assert!(check_lines(&lines).is_ok());
        let mut dup = lines.clone();
        dup.push(lines[0].clone());
        assert!(check_lines(&dup).is_err());
    }
}
