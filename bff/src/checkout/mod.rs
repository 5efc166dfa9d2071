//! One-tap checkout, below any API: validate → price → reserve stock →
//! freeze points, wallet and coupons at the member service → await the
//! external payment → paid → completed; or cancelled / expired with
//! compensation exactly once.
//!
//! Every step is recorded in the store before the next begins, and every
//! order sits in the store's due index until nothing is left to do for it,
//! so the [sweeper](Checkout::sweep) — safe to run on every node at once —
//! finishes or compensates whatever a crash left half done:
//!
//! * `RESERVED` past its recovery time (the checkout stopped between
//!   reserving and awaiting payment): cancelled, stock released, any hold
//!   released (the member service remembers a release that comes before
//!   its freeze, so a late freeze cannot hold funds for ever);
//! * `AWAITING_PAYMENT` past its deadline: expired, likewise compensated;
//! * `CANCELLED` / `EXPIRED` with a hold not yet released: released;
//! * `PAID` with a hold not yet consumed: consumed, then `COMPLETED`.
//!
//! The order id is derived from (tenant, member, idempotency key), so a
//! retry — even one that arrives after the first attempt's node died —
//! finds the same order instead of making a second one.

pub mod api;
mod error;
pub mod model;
mod payments;
pub mod pricer;
mod sweeper;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

pub use self::error::CheckoutError;
use self::model::{
    CartPricer, CheckoutOutcome, CheckoutRequest, HoldProgress, OrderRecord, OrderView,
};
use crate::domain::{CNY, MallId, MemberId, Money, ProductId, TenantId};
use crate::store::SharedCheckoutStore;
use crate::store::checkout::{
    CreateRefusal, Due, IdempotencyBegin, IdempotencyRef, NewOrder, OrderId, OrderStatus,
    Reservation, Scope, Step, StepOutcome, StockEffect, StockLine, StoredOrder,
};
use crate::upstream::Upstreams;
use crate::upstream::member::{HoldRefusal, HoldRequest, HoldState};

/// Timing of the checkout.
#[derive(Debug, Clone, Copy)]
pub struct CheckoutSettings {
    /// How long an order waits for its external payment (default 15 min).
    pub payment_ttl_ms: i64,
    /// How long after creation a checkout that stopped before awaiting
    /// payment is compensated (default 60 s).
    pub recovery_after_ms: i64,
    /// How long idempotency records are kept (default 24 h).
    pub idempotency_ttl_ms: i64,
    /// How long an unfinished request blocks retries of its key if its
    /// node dies (default 30 s).
    pub in_progress_lease_ms: i64,
    /// How long a sweeper owns a due order before another node may take
    /// it (default 30 s).
    pub sweep_lease_ms: i64,
}

impl Default for CheckoutSettings {
    fn default() -> Self {
        Self {
            payment_ttl_ms: 15 * 60_000,
            recovery_after_ms: 60_000,
            idempotency_ttl_ms: 24 * 3_600_000,
            in_progress_lease_ms: 30_000,
            sweep_lease_ms: 30_000,
        }
    }
}

/// Points where a checkout can be made to stop as if its node crashed
/// (tests of recovery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Stock is reserved and the order recorded; nothing frozen (an order
    /// with nothing to freeze awaits payment already).
    AfterReserve,
    /// The member service froze the hold; the order does not know yet.
    AfterFreeze,
    /// The order awaits payment; the answer was not sent.
    AfterAwaitingPayment,
    /// The order is paid; its hold is not consumed yet.
    AfterPaid,
}

/// What a payment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentEffect {
    /// The order is paid now.
    Paid,
    /// This payment was recorded before: nothing changed.
    Duplicate,
    /// The order was no longer payable (expired, cancelled, or paid by
    /// another payment): the payment is recorded as needing a refund.
    RefundRequired,
    /// The external part failed: the order is cancelled and its other
    /// parts (stock, points, wallet, coupons) given back.
    Cancelled,
}

/// A payment reported by a provider, already authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalPayment {
    /// The provider (`demo`).
    pub provider: String,
    /// The provider's payment id (unique per provider).
    pub payment_id: String,
    /// The amount paid.
    pub amount: Money,
    /// ISO 4217 currency.
    pub currency: String,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Unpaid orders expired.
    pub expired: usize,
    /// Half-done checkouts cancelled.
    pub recovered: usize,
    /// Holds released after a cancellation or expiry.
    pub released: usize,
    /// Paid orders settled and completed.
    pub completed: usize,
}

/// The checkout service. Cheap to clone.
#[derive(Clone)]
pub struct Checkout {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedCheckoutStore,
    upstreams: Arc<Upstreams>,
    pricer: Arc<dyn CartPricer>,
    settings: CheckoutSettings,
    fault: Mutex<Option<FaultPoint>>,
    /// SKUs whose stock counter this node saw defined in the store, so a
    /// checkout does not define it again (a store write) every time.
    /// Counters are never deleted; should a store lose one anyway, the
    /// order it refuses as an unknown SKU makes the checkout forget the
    /// cart's SKUs here and define them again.
    defined: Mutex<HashSet<(Scope, ProductId)>>,
}

/// Most SKUs remembered as defined; beyond, the set starts afresh.
const MAX_DEFINED: usize = 100_000;

impl std::fmt::Debug for Checkout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkout").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn decode(order: &StoredOrder) -> Result<OrderRecord, CheckoutError> {
    serde_json::from_str(&order.body).map_err(|e| {
        tracing::error!(order = %order.id, error = %e, "unreadable order record");
        CheckoutError::Store
    })
}

fn encode(record: &OrderRecord) -> Result<String, CheckoutError> {
    serde_json::to_string(record).map_err(|e| {
        tracing::error!(error = %e, "order record not serialisable");
        CheckoutError::Store
    })
}

/// The stored answer of an idempotent request.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredAnswer {
    Ok(Box<CheckoutOutcome>),
    Refused { code: String, detail: String },
}

impl Checkout {
    /// A checkout over a store, the upstreams and a pricer.
    pub fn new(
        store: SharedCheckoutStore,
        upstreams: Arc<Upstreams>,
        pricer: Arc<dyn CartPricer>,
        settings: CheckoutSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                upstreams,
                pricer,
                settings,
                fault: Mutex::new(None),
                defined: Mutex::default(),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &SharedCheckoutStore {
        &self.inner.store
    }

    /// Makes checkouts stop at `point` as a crash would (`None`: never).
    /// For recovery tests.
    pub fn fail_at(&self, point: Option<FaultPoint>) {
        *self.inner.fault.lock().unwrap_or_else(|e| e.into_inner()) = point;
    }

    fn fault(&self, point: FaultPoint) -> Result<(), CheckoutError> {
        let armed = *self.inner.fault.lock().unwrap_or_else(|e| e.into_inner());
        if armed == Some(point) {
            tracing::warn!(?point, "checkout stopped at a fault point");
            return Err(CheckoutError::Crashed);
        }
        Ok(())
    }

    /// Checks out a cart: the same key with the same request answers the
    /// same outcome and creates nothing new.
    #[tracing::instrument(skip_all, fields(tenant = %req.tenant, member = %req.member))]
    pub async fn checkout(&self, req: CheckoutRequest) -> Result<CheckoutOutcome, CheckoutError> {
        req.cart.validate()?;
        let fingerprint = fingerprint(&req);
        let key = IdempotencyRef {
            tenant: &req.tenant,
            member: &req.member,
            key: req.idempotency_key.as_str(),
        };
        let store = &self.inner.store;
        match store
            .idempotency_begin(&key, &fingerprint, self.inner.settings.in_progress_lease_ms)
            .await?
        {
            IdempotencyBegin::Started => {}
            IdempotencyBegin::InProgress => return Err(CheckoutError::IdempotencyKeyInProgress),
            IdempotencyBegin::Reused => return Err(CheckoutError::IdempotencyKeyReused),
            IdempotencyBegin::Completed(answer) => {
                return match serde_json::from_str::<StoredAnswer>(&answer) {
                    Ok(StoredAnswer::Ok(outcome)) => Ok(*outcome),
                    Ok(StoredAnswer::Refused { code, detail }) => {
                        Err(CheckoutError::stored(&code, detail))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "unreadable idempotent answer");
                        Err(CheckoutError::Store)
                    }
                };
            }
        }
        let result = self.run(&req).await;
        let answer = match &result {
            Ok(outcome) => Some(StoredAnswer::Ok(Box::new(outcome.clone()))),
            // A crash leaves the record as it is: its lease runs out.
            Err(CheckoutError::Crashed) => None,
            Err(e) if e.is_transient() => {
                store.idempotency_abandon(&key, &fingerprint).await?;
                None
            }
            Err(e) => Some(StoredAnswer::Refused {
                code: e.code().to_owned(),
                detail: e.detail(),
            }),
        };
        if let Some(answer) = answer {
            let text = serde_json::to_string(&answer).map_err(|_| CheckoutError::Store)?;
            store
                .idempotency_complete(
                    &key,
                    &fingerprint,
                    &text,
                    self.inner.settings.idempotency_ttl_ms,
                )
                .await?;
        }
        result
    }

    async fn run(&self, req: &CheckoutRequest) -> Result<CheckoutOutcome, CheckoutError> {
        let cart = &req.cart;
        let priced = self
            .inner
            .pricer
            .price(&req.tenant, &req.member, cart)
            .await?;
        if priced.degraded {
            return Err(CheckoutError::PriceDegraded);
        }
        let wallet = req.payments.map(|p| p.wallet).unwrap_or(Money::ZERO);
        if wallet > priced.payable {
            return Err(CheckoutError::BadInput(
                "the wallet part is larger than the payable amount".into(),
            ));
        }
        let scope = Scope::new(req.tenant.clone(), cart.mall.clone());
        let mut lines = self.stock_lines(&scope, req, &priced.products).await?;
        let id = order_id(req)?;
        let now = now_ms();
        let nothing_to_hold =
            priced.points_used == 0 && wallet == Money::ZERO && cart.coupons.is_empty();
        let record = OrderRecord {
            id: id.clone(),
            tenant: req.tenant.clone(),
            member: req.member.clone(),
            mall: cart.mall.clone(),
            store: cart.store.clone(),
            lines: priced.lines.clone(),
            subtotal: priced.subtotal,
            discount: priced.discount,
            payable: priced.payable,
            points: priced.points_used,
            wallet,
            coupons: cart.coupons.clone(),
            external: priced.payable.saturating_sub(wallet),
            currency: CNY.to_owned(),
            created_at_ms: now,
            pay_by_ms: now + self.inner.settings.payment_ttl_ms,
            hold: if nothing_to_hold {
                HoldProgress::NotNeeded
            } else {
                HoldProgress::Pending
            },
            payment_id: None,
            refunds: Vec::new(),
            cancel_reason: None,
        };
        let mut new = NewOrder {
            id: id.clone(),
            member: req.member.clone(),
            lines: Vec::new(),
            due_at_ms: now + self.inner.settings.recovery_after_ms,
            body: encode(&record)?,
        };
        // Nothing to freeze and something to pay externally: the order goes
        // straight on to awaiting payment, in the same store step.
        let straight_on = nothing_to_hold && record.external > Money::ZERO;
        let mut redefined = false;
        let (stored, known) = loop {
            new.lines = std::mem::take(&mut lines);
            let created = if straight_on {
                self.inner
                    .store
                    .create_awaiting_payment(&scope, &new, record.pay_by_ms)
                    .await?
            } else {
                self.inner.store.create_order(&scope, &new).await?
            };
            match created {
                Ok(stored) => {
                    // The record is the one just written unless another
                    // step came between (a store that takes two steps).
                    let known = (stored.body == new.body).then_some(record);
                    break (stored, known);
                }
                // A retry of a checkout whose first attempt stopped: go on
                // from where it is.
                Err(CreateRefusal::Exists(stored)) => break (*stored, None),
                // A counter this node remembered as defined is gone from
                // the store: define the cart's counters again, once.
                Err(CreateRefusal::UnknownSku(_)) if !redefined => {
                    redefined = true;
                    self.forget_defined(&scope, req);
                    lines = self.stock_lines(&scope, req, &priced.products).await?;
                }
                Err(refusal) => return Err(refusal_error(refusal)),
            }
        };
        self.fault(FaultPoint::AfterReserve)?;
        self.advance(&scope, stored, known).await
    }

    fn forget_defined(&self, scope: &Scope, req: &CheckoutRequest) {
        let mut defined = self.inner.defined.lock().unwrap_or_else(|e| e.into_inner());
        for item in &req.cart.items {
            defined.remove(&(scope.clone(), item.product.clone()));
        }
    }

    fn is_defined(&self, scope: &Scope, sku: &ProductId) -> bool {
        let defined = self.inner.defined.lock().unwrap_or_else(|e| e.into_inner());
        defined.contains(&(scope.clone(), sku.clone()))
    }

    fn mark_defined(&self, scope: &Scope, sku: &ProductId) {
        let mut defined = self.inner.defined.lock().unwrap_or_else(|e| e.into_inner());
        if defined.len() >= MAX_DEFINED {
            defined.clear();
        }
        defined.insert((scope.clone(), sku.clone()));
    }

    /// The stock lines of the cart, each SKU's counter defined from the
    /// product service on first sight (flash-sale stock and limit for a
    /// flash-sale SKU). `priced`: the products as the pricer read them, if
    /// it passed them on; otherwise they are read here.
    async fn stock_lines(
        &self,
        scope: &Scope,
        req: &CheckoutRequest,
        priced: &[crate::product::Product],
    ) -> Result<Vec<StockLine>, CheckoutError> {
        if req.cart.items.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<_> = req.cart.items.iter().map(|i| i.product.clone()).collect();
        let products: std::collections::HashMap<ProductId, crate::product::Product> =
            if ids.iter().all(|id| priced.iter().any(|p| &p.id == id)) {
                priced.iter().map(|p| (p.id.clone(), p.clone())).collect()
            } else {
                self.inner
                    .upstreams
                    .product
                    .products_by_ids(&req.tenant, &ids)
                    .await?
            };
        let mut lines = Vec::with_capacity(ids.len());
        for item in &req.cart.items {
            let product = products
                .get(&item.product)
                .filter(|p| p.mall_id == req.cart.mall)
                .ok_or_else(|| {
                    CheckoutError::BadInput(format!(
                        "productId `{}` is not sold in mall `{}`",
                        item.product, req.cart.mall
                    ))
                })?;
            let (stock, limit) = match &product.flash_sale {
                Some(sale) if !sale.is_open(chrono::Utc::now()) => {
                    return Err(CheckoutError::SaleNotOpen(item.product.to_string()));
                }
                Some(sale) => (sale.stock, sale.per_member_limit),
                None => (product.stock, 0),
            };
            if !self.is_defined(scope, &item.product) {
                self.inner
                    .store
                    .define_stock(scope, &item.product, u64::from(stock), limit)
                    .await?;
                self.mark_defined(scope, &item.product);
            }
            lines.push(StockLine {
                sku: item.product.clone(),
                quantity: item.quantity,
            });
        }
        Ok(lines)
    }

    /// Moves a reserved order on to awaiting payment (freezing its hold),
    /// and a fully prepaid one on to paid; answers what the client sees.
    /// `known` is the order's record if the caller has it decoded already
    /// (it just created the order).
    async fn advance(
        &self,
        scope: &Scope,
        mut stored: StoredOrder,
        mut known: Option<OrderRecord>,
    ) -> Result<CheckoutOutcome, CheckoutError> {
        loop {
            let mut record = match known.take() {
                Some(record) => record,
                None => decode(&stored)?,
            };
            match stored.status {
                OrderStatus::Created | OrderStatus::Reserved => {}
                OrderStatus::AwaitingPayment | OrderStatus::Paid | OrderStatus::Completed => {
                    return Ok(outcome(stored.status, record));
                }
                OrderStatus::Cancelled | OrderStatus::Expired => {
                    return Err(CheckoutError::InvalidTransition {
                        order: stored.id.to_string(),
                        status: stored.status.as_str(),
                        action: "checked out",
                    });
                }
            }
            if record.hold == HoldProgress::Pending {
                let request = HoldRequest {
                    member: record.member.clone(),
                    points: record.points,
                    wallet: record.wallet,
                    coupons: record.coupons.clone(),
                };
                let frozen = self
                    .inner
                    .upstreams
                    .member
                    .freeze(&record.tenant, &record.hold_key(), &request)
                    .await?;
                match frozen {
                    Ok(hold) if hold.state == HoldState::Frozen => {}
                    Ok(_) | Err(HoldRefusal::Released | HoldRefusal::Committed) => {
                        // Recovery compensated this order meanwhile.
                        return Err(CheckoutError::InvalidTransition {
                            order: stored.id.to_string(),
                            status: OrderStatus::Cancelled.as_str(),
                            action: "checked out",
                        });
                    }
                    Err(refusal) => {
                        let error = match refusal {
                            HoldRefusal::InsufficientPoints => CheckoutError::InsufficientPoints,
                            HoldRefusal::InsufficientBalance => CheckoutError::InsufficientBalance,
                            HoldRefusal::CouponUnavailable => CheckoutError::BadInput(
                                "a chosen coupon is not the member's to use".into(),
                            ),
                            _ => CheckoutError::BadInput("the member cannot pay this way".into()),
                        };
                        self.compensate(
                            scope,
                            &stored.id,
                            OrderStatus::Cancelled,
                            &error.to_string(),
                        )
                        .await?;
                        return Err(error);
                    }
                }
                self.fault(FaultPoint::AfterFreeze)?;
                record.hold = HoldProgress::Frozen;
                stored.body = encode(&record)?;
            }
            let step = Step {
                expect_version: stored.version,
                expect_status: stored.status,
                to: OrderStatus::AwaitingPayment,
                // The record as it is now (unchanged if nothing was to be
                // held).
                body: std::mem::take(&mut stored.body),
                stock: StockEffect::None,
                due: Due::At(record.pay_by_ms),
                payment_id: None,
                event: OrderStatus::AwaitingPayment.event_kind(),
            };
            match self.inner.store.apply(scope, &stored.id, &step).await? {
                StepOutcome::Applied(_) => {
                    self.fault(FaultPoint::AfterAwaitingPayment)?;
                    if record.external == Money::ZERO {
                        self.settle_payment(scope, &stored.id, None).await?;
                        return self.view_outcome(scope, &stored.id).await;
                    }
                    // The step just committed is what the client sees: no
                    // need to read it back.
                    return Ok(outcome(OrderStatus::AwaitingPayment, record));
                }
                StepOutcome::Conflict | StepOutcome::DuplicatePayment => {}
                StepOutcome::Missing => {
                    return Err(CheckoutError::OrderNotFound(stored.id.to_string()));
                }
            }
            stored = self
                .inner
                .store
                .order(scope, &stored.id)
                .await?
                .ok_or_else(|| CheckoutError::OrderNotFound(stored.id.to_string()))?;
        }
    }

    async fn view_outcome(
        &self,
        scope: &Scope,
        id: &OrderId,
    ) -> Result<CheckoutOutcome, CheckoutError> {
        let stored = self
            .inner
            .store
            .order(scope, id)
            .await?
            .ok_or_else(|| CheckoutError::OrderNotFound(id.to_string()))?;
        Ok(outcome(stored.status, decode(&stored)?))
    }

    /// Moves an order to `CANCELLED` or `EXPIRED` (stock released in the
    /// same step, exactly once), then releases its hold. Already final:
    /// nothing happens. Paid: refused.
    async fn compensate(
        &self,
        scope: &Scope,
        id: &OrderId,
        to: OrderStatus,
        reason: &str,
    ) -> Result<OrderStatus, CheckoutError> {
        loop {
            let stored = self
                .inner
                .store
                .order(scope, id)
                .await?
                .ok_or_else(|| CheckoutError::OrderNotFound(id.to_string()))?;
            if matches!(stored.status, OrderStatus::Cancelled | OrderStatus::Expired) {
                self.release_hold(scope, stored).await?;
                return Ok(to);
            }
            if !stored.status.can_go_to(to) {
                return Err(CheckoutError::InvalidTransition {
                    order: id.to_string(),
                    status: stored.status.as_str(),
                    action: if to == OrderStatus::Expired {
                        "expired"
                    } else {
                        "cancelled"
                    },
                });
            }
            let mut record = decode(&stored)?;
            record.cancel_reason = Some(reason.to_owned());
            let hold_open = matches!(record.hold, HoldProgress::Pending | HoldProgress::Frozen);
            let step = Step {
                expect_version: stored.version,
                expect_status: stored.status,
                to,
                body: encode(&record)?,
                stock: if stored.reservation == Reservation::Held {
                    StockEffect::Release
                } else {
                    StockEffect::None
                },
                // An open hold keeps the order due until it is released.
                due: if hold_open {
                    Due::At(now_ms())
                } else {
                    Due::Clear
                },
                payment_id: None,
                event: to.event_kind(),
            };
            match self.inner.store.apply(scope, id, &step).await? {
                StepOutcome::Applied(_) => {
                    if let Some(after) = self.inner.store.order(scope, id).await? {
                        self.release_hold(scope, after).await?;
                    }
                    return Ok(to);
                }
                StepOutcome::Missing => return Err(CheckoutError::OrderNotFound(id.to_string())),
                StepOutcome::Conflict | StepOutcome::DuplicatePayment => continue,
            }
        }
    }

    /// Releases a cancelled or expired order's hold at the member service
    /// (idempotent there) and records it.
    async fn release_hold(
        &self,
        scope: &Scope,
        mut stored: StoredOrder,
    ) -> Result<bool, CheckoutError> {
        loop {
            let mut record = decode(&stored)?;
            if !matches!(record.hold, HoldProgress::Pending | HoldProgress::Frozen) {
                return Ok(false);
            }
            match self
                .inner
                .upstreams
                .member
                .release(&record.tenant, &record.hold_key())
                .await?
            {
                Ok(_) | Err(HoldRefusal::Released) => {}
                Err(other) => {
                    tracing::error!(order = %stored.id, ?other, "member service refused a release");
                    return Ok(false);
                }
            }
            record.hold = HoldProgress::Released;
            let step = Step {
                expect_version: stored.version,
                expect_status: stored.status,
                to: stored.status,
                body: encode(&record)?,
                stock: StockEffect::None,
                due: Due::Clear,
                payment_id: None,
                event: "order.hold_released".into(),
            };
            match self.inner.store.apply(scope, &stored.id, &step).await? {
                StepOutcome::Applied(_) => return Ok(true),
                StepOutcome::Missing => return Ok(false),
                StepOutcome::Conflict | StepOutcome::DuplicatePayment => {
                    stored = match self.inner.store.order(scope, &stored.id).await? {
                        Some(s) => s,
                        None => return Ok(false),
                    };
                }
            }
        }
    }

    /// Units of a flash-sale SKU still sellable now: what its stock
    /// counter has available, or — before the first checkout defined the
    /// counter — the sale's whole stock.
    pub async fn remaining(
        &self,
        tenant: &TenantId,
        mall: &MallId,
        sku: &ProductId,
        sale_stock: u32,
    ) -> Result<u32, CheckoutError> {
        let scope = Scope::new(tenant.clone(), mall.clone());
        Ok(match self.inner.store.stock(&scope, sku).await? {
            Some(level) => u32::try_from(level.available).unwrap_or(u32::MAX),
            None => sale_stock,
        })
    }

    /// A member's order.
    pub async fn order(
        &self,
        tenant: &TenantId,
        member: &MemberId,
        id: &OrderId,
    ) -> Result<OrderView, CheckoutError> {
        let scope = Scope::new(tenant.clone(), id.mall().clone());
        match self.inner.store.order(&scope, id).await? {
            Some(stored) if &stored.member == member => Ok(OrderView {
                status: stored.status,
                record: decode(&stored)?,
            }),
            _ => Err(CheckoutError::OrderNotFound(id.to_string())),
        }
    }

    /// An order by id, whoever bought it (payment callbacks, operators).
    pub async fn order_any(
        &self,
        tenant: &TenantId,
        id: &OrderId,
    ) -> Result<OrderView, CheckoutError> {
        let scope = Scope::new(tenant.clone(), id.mall().clone());
        match self.inner.store.order(&scope, id).await? {
            Some(stored) => Ok(OrderView {
                status: stored.status,
                record: decode(&stored)?,
            }),
            None => Err(CheckoutError::OrderNotFound(id.to_string())),
        }
    }

    /// The member cancels an unpaid order; stock, points, wallet and
    /// coupons are given back once. Cancelling a cancelled order answers
    /// it as it is.
    pub async fn cancel(
        &self,
        tenant: &TenantId,
        member: &MemberId,
        id: &OrderId,
    ) -> Result<OrderView, CheckoutError> {
        let scope = Scope::new(tenant.clone(), id.mall().clone());
        let current = self.order(tenant, member, id).await?;
        if current.status != OrderStatus::Expired {
            self.compensate(
                &scope,
                id,
                OrderStatus::Cancelled,
                "cancelled by the member",
            )
            .await?;
        }
        self.order(tenant, member, id).await
    }
}

fn refusal_error(refusal: CreateRefusal) -> CheckoutError {
    match refusal {
        CreateRefusal::SoldOut(sku) => CheckoutError::SoldOut(sku.to_string()),
        CreateRefusal::LimitExceeded(sku) => CheckoutError::PurchaseLimitExceeded(sku.to_string()),
        CreateRefusal::UnknownSku(sku) => {
            CheckoutError::BadInput(format!("productId `{sku}` is not sold here"))
        }
        // A retry finds its order: the caller goes on with it.
        CreateRefusal::Exists(stored) => CheckoutError::InvalidTransition {
            order: stored.id.to_string(),
            status: stored.status.as_str(),
            action: "checked out",
        },
    }
}

fn outcome(status: OrderStatus, record: OrderRecord) -> CheckoutOutcome {
    let frozen = record.hold != HoldProgress::NotNeeded;
    CheckoutOutcome {
        frozen_points: if frozen { record.points } else { 0 },
        frozen_wallet: if frozen { record.wallet } else { Money::ZERO },
        held_coupons: if frozen {
            record.coupons.clone()
        } else {
            Vec::new()
        },
        pay_externally: if status == OrderStatus::AwaitingPayment {
            record.external
        } else {
            Money::ZERO
        },
        order: OrderView { status, record },
    }
}

/// Identifies the request under its key: the cart and the payments.
fn fingerprint(req: &CheckoutRequest) -> String {
    let canonical = serde_json::json!({ "cart": req.cart, "payments": req.payments });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// The order id of a checkout: one per (tenant, member, key).
fn order_id(req: &CheckoutRequest) -> Result<OrderId, CheckoutError> {
    let digest = Sha256::digest(
        format!(
            "{}\u{0}{}\u{0}{}",
            req.tenant,
            req.member,
            req.idempotency_key.as_str()
        )
        .as_bytes(),
    );
    Ok(OrderId::new(&req.cart.mall, &hex::encode(&digest[..12]))?)
}
