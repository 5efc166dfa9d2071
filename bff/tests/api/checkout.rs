//! The checkout core against the real demo upstreams over HTTP, on Redis
//! and on the embedded store: the promises of DESIGN §7.
//!
//! The promotion engine cannot be wired into the checkout yet, so these
//! tests price carts with `StubPricer` below (list or flash price per unit,
//! one point = one fen off, a switch for a degraded price). Everything
//! else — stock, holds at the member service, payments, the sweeper, the
//! outbox and the order service — is the real thing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bff::checkout::model::{
    Cart, CartItem, CartPricer, CheckoutOutcome, CheckoutRequest, IdempotencyKey, Payments,
    PricedCart, PricedLine,
};
use bff::checkout::{
    Checkout, CheckoutError, CheckoutSettings, FaultPoint, PaymentEffect, SweepReport,
};
use bff::config::{DemoSettings, UpstreamsSettings};
use bff::demo::DemoUpstreams;
use bff::demo::Service;
use bff::demo::orders::RunningOrderService;
use bff::domain::{CouponId, MallId, MemberId, Money, ProductId, StoreId, TenantId};
use bff::metrics::Metrics;
use bff::outbox::Relay;
use bff::payment::{PaymentNotifications, sign};
use bff::store::SharedCheckoutStore;
use bff::store::checkout::{OrderId, OrderStatus, Scope};
use bff::upstream::order::OrderClient;
use bff::upstream::{BaseUrls, Upstreams};
use secrecy::SecretString;

use crate::checkout_store;

const SECRET: &str = "whsec_demo_test";
const MINUTE: i64 = 60_000;

/// Test-only pricer (the real quoter is wired by the GraphQL layer): unit
/// price is the flash price of a flash-sale SKU, else the list price; a
/// bill costs its amount; one point takes one fen off, at most the
/// subtotal.
pub struct StubPricer {
    upstreams: Arc<Upstreams>,
    degraded: AtomicBool,
}

#[async_trait]
impl CartPricer for StubPricer {
    async fn price(
        &self,
        tenant: &TenantId,
        _member: &MemberId,
        cart: &Cart,
    ) -> Result<PricedCart, CheckoutError> {
        let ids: Vec<ProductId> = cart.items.iter().map(|i| i.product.clone()).collect();
        let products = self.upstreams.product.products_by_ids(tenant, &ids).await?;
        let mut lines = Vec::new();
        let mut subtotal = cart.bill_amount.map(Money::minor).unwrap_or(0);
        for item in &cart.items {
            let Some(p) = products.get(&item.product) else {
                // The checkout refuses unknown SKUs itself.
                continue;
            };
            let unit = p
                .flash_sale
                .as_ref()
                .map(|f| f.price)
                .unwrap_or(p.list_price);
            let amount = unit.minor() * i64::from(item.quantity);
            subtotal += amount;
            lines.push(PricedLine {
                product: item.product.clone(),
                quantity: item.quantity,
                amount: Money::from_minor(amount)?,
            });
        }
        let points = cart.points_to_use.min(subtotal);
        Ok(PricedCart {
            lines,
            // Not passed on: the checkout reads the product service itself.
            products: Vec::new(),
            subtotal: Money::from_minor(subtotal)?,
            discount: Money::from_minor(points)?,
            points_used: points,
            payable: Money::from_minor(subtotal - points)?,
            degraded: self.degraded.load(Ordering::Relaxed),
        })
    }
}

pub enum Backend {
    Redis,
    Embedded,
}

pub struct Harness {
    pub checkout: Checkout,
    pub payments: PaymentNotifications,
    pub upstreams: Arc<Upstreams>,
    pub store: SharedCheckoutStore,
    pub pricer: Arc<StubPricer>,
    pub orders: RunningOrderService,
    pub order_client: OrderClient,
    pub demo: DemoUpstreams,
    _dir: Option<tempfile::TempDir>,
}

pub async fn harness(backend: Backend, test: &str) -> Harness {
    harness_with(backend, test, CheckoutSettings::default()).await
}

pub async fn harness_with(backend: Backend, test: &str, settings: CheckoutSettings) -> Harness {
    let (store, dir) = match backend {
        Backend::Redis => (checkout_store::redis(test).await, None),
        Backend::Embedded => {
            let (store, dir) = checkout_store::embedded().await;
            (store, Some(dir))
        }
    };
    let demo = DemoUpstreams::start(&DemoSettings::default())
        .await
        .unwrap();
    let urls = BaseUrls {
        mall: demo.service(Service::Mall).base_url.clone(),
        member: demo.service(Service::Member).base_url.clone(),
        product: demo.service(Service::Product).base_url.clone(),
    };
    let mut upstream_settings = UpstreamsSettings::default();
    // A thousand buyers at once on a noisy machine: generous timeouts.
    upstream_settings.member.timeout_ms = 30_000;
    upstream_settings.product.timeout_ms = 30_000;
    let upstreams = Arc::new(Upstreams::new(&upstream_settings, &urls, Metrics::new()).unwrap());
    let pricer = Arc::new(StubPricer {
        upstreams: upstreams.clone(),
        degraded: AtomicBool::new(false),
    });
    let checkout = Checkout::new(store.clone(), upstreams.clone(), pricer.clone(), settings);
    let payments = PaymentNotifications::new(
        checkout.clone(),
        HashMap::from([("demo".to_owned(), SecretString::from(SECRET))]),
        300,
    );
    let orders = RunningOrderService::start().await.unwrap();
    let order_client = OrderClient::new(&orders.base_url, &Default::default(), Metrics::new());
    Harness {
        checkout,
        payments,
        upstreams,
        store,
        pricer,
        orders,
        order_client,
        demo,
        _dir: dir,
    }
}

fn tenant() -> TenantId {
    TenantId::parse("demo").unwrap()
}

fn mall() -> MallId {
    MallId::parse("mall-1").unwrap()
}

fn scope() -> Scope {
    Scope::new(tenant(), mall())
}

fn member(n: usize) -> MemberId {
    MemberId::parse(format!("member-{n}")).unwrap()
}

pub fn items(sku: &str, quantity: u32) -> Cart {
    Cart {
        mall: mall(),
        store: None,
        items: vec![CartItem {
            product: ProductId::parse(sku).unwrap(),
            quantity,
        }],
        bill_amount: None,
        coupons: vec![],
        points_to_use: 0,
        channel: None,
    }
}

fn bill(amount: i64) -> Cart {
    Cart {
        mall: mall(),
        store: Some(StoreId::parse("store-1").unwrap()),
        items: vec![],
        bill_amount: Some(Money::from_minor(amount).unwrap()),
        coupons: vec![],
        points_to_use: 0,
        channel: None,
    }
}

fn request(buyer: &MemberId, cart: Cart, wallet: i64, key: &str) -> CheckoutRequest {
    CheckoutRequest {
        tenant: tenant(),
        member: buyer.clone(),
        cart,
        payments: (wallet > 0).then(|| Payments {
            wallet: Money::from_minor(wallet).unwrap(),
        }),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A signed notification body and header for an order's external part.
fn callback(order: &CheckoutOutcome, payment_id: &str, amount: i64, t: i64) -> (Vec<u8>, String) {
    let body = serde_json::json!({
        "payment_id": payment_id,
        "tenant": "demo",
        "order_id": order.order.record.id.to_string(),
        "amount": amount,
        "currency": "CNY",
        "status": "succeeded",
    })
    .to_string()
    .into_bytes();
    let header = sign(SECRET, t, &body);
    (body, header)
}

async fn pay(h: &Harness, order: &CheckoutOutcome, payment_id: &str) -> PaymentEffect {
    let now = now_ms() / 1000;
    let (body, header) = callback(order, payment_id, order.pay_externally.minor(), now);
    h.payments
        .notify("demo", Some(&header), &body, now)
        .await
        .unwrap()
}

async fn stock(h: &Harness, sku: &str) -> (u64, u64, u64) {
    let level = h
        .store
        .stock(&scope(), &ProductId::parse(sku).unwrap())
        .await
        .unwrap()
        .unwrap();
    (level.available, level.reserved, level.sold)
}

/// The member's live (points, wallet) at the member service.
async fn balances(h: &Harness, who: &MemberId) -> (i64, i64) {
    let members = h
        .upstreams
        .member
        .members_by_ids(&tenant(), std::slice::from_ref(who))
        .await
        .unwrap();
    let m = &members[who];
    (m.points, m.wallet.minor())
}

async fn status(h: &Harness, id: &OrderId) -> OrderStatus {
    h.checkout.order_any(&tenant(), id).await.unwrap().status
}

async fn events_of(h: &Harness, id: &OrderId) -> Vec<String> {
    h.store
        .outbox_events(&scope())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.order == id.as_str())
        .map(|e| e.kind)
        .collect()
}

async fn sweep(h: &Harness, at: i64) -> SweepReport {
    h.checkout.sweep(at).await.unwrap()
}

// ---------------------------------------------------------------- oversell

async fn thousand_buyers(h: Harness) {
    let tasks: Vec<_> = (1..=1000)
        .map(|n| {
            let checkout = h.checkout.clone();
            tokio::spawn(async move {
                checkout
                    .checkout(request(
                        &member(n),
                        items("sku-flash-1", 1),
                        0,
                        &format!("buy-{n}"),
                    ))
                    .await
            })
        })
        .collect();
    let mut won = Vec::new();
    let mut sold_out = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(outcome) => won.push(outcome),
            Err(CheckoutError::SoldOut(_)) => sold_out += 1,
            Err(other) => panic!("unexpected refusal: {other:?}"),
        }
    }
    assert_eq!(won.len(), 100);
    assert_eq!(sold_out, 900);
    assert!(
        won.iter()
            .all(|o| o.order.status == OrderStatus::AwaitingPayment
                && o.pay_externally > Money::ZERO)
    );
    assert_eq!(stock(&h, "sku-flash-1").await, (0, 100, 0));

    // Pay 40, cancel 30, let 30 expire.
    for (i, order) in won.iter().enumerate() {
        let id = &order.order.record.id;
        match i % 10 {
            0..=3 => assert_eq!(pay(&h, order, &format!("p-{i}")).await, PaymentEffect::Paid),
            4..=6 => {
                h.checkout
                    .cancel(&tenant(), &order.order.record.member, id)
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    let report = sweep(&h, now_ms() + 16 * MINUTE).await;
    assert_eq!(report.expired, 30);
    let (available, reserved, sold) = stock(&h, "sku-flash-1").await;
    assert_eq!((available, reserved, sold), (60, 0, 40));
    assert_eq!(available + sold, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_buyers_on_stock_100_get_exactly_100_orders_on_redis() {
    thousand_buyers(harness(Backend::Redis, "co-1000").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_buyers_on_stock_100_get_exactly_100_orders_on_the_embedded_store() {
    thousand_buyers(harness(Backend::Embedded, "co-1000").await).await;
}

#[tokio::test]
async fn a_member_cannot_buy_more_of_a_flash_sale_than_its_per_member_limit() {
    let h = harness(Backend::Redis, "co-limit").await;
    let buyer = member(7);
    let first = h
        .checkout
        .checkout(request(&buyer, items("sku-flash-2", 1), 0, "first"))
        .await
        .unwrap();
    assert_eq!(first.order.status, OrderStatus::AwaitingPayment);
    let second = h
        .checkout
        .checkout(request(&buyer, items("sku-flash-2", 1), 0, "second"))
        .await;
    assert_eq!(
        second.unwrap_err().code(),
        bff::error::code::PURCHASE_LIMIT_EXCEEDED
    );
    let two = h
        .checkout
        .checkout(request(&member(8), items("sku-flash-2", 2), 0, "two"))
        .await;
    assert_eq!(
        two.unwrap_err().code(),
        bff::error::code::PURCHASE_LIMIT_EXCEEDED
    );
    assert_eq!(stock(&h, "sku-flash-2").await, (99, 1, 0));
    // Cancelling gives the allowance back.
    h.checkout
        .cancel(&tenant(), &buyer, &first.order.record.id)
        .await
        .unwrap();
    h.checkout
        .checkout(request(&buyer, items("sku-flash-2", 1), 0, "third"))
        .await
        .unwrap();
}

// ------------------------------------------------------------- idempotency

async fn one_key_fifty_times(h: Harness) {
    let buyer = member(1);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let checkout = h.checkout.clone();
            let buyer = buyer.clone();
            tokio::spawn(async move {
                checkout
                    .checkout(request(&buyer, items("sku-flash-3", 1), 0, "same-key"))
                    .await
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(outcome) => {
                ids.insert(outcome.order.record.id.clone());
            }
            Err(CheckoutError::IdempotencyKeyInProgress) => {}
            Err(other) => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(ids.len(), 1, "every answer names the same order");
    let id = ids.into_iter().next().unwrap();
    assert_eq!(stock(&h, "sku-flash-3").await, (99, 1, 0));
    let created = h
        .store
        .outbox_events(&scope())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "order.created")
        .count();
    assert_eq!(created, 1);
    // After it finished: the same answer, nothing new.
    let again = h
        .checkout
        .checkout(request(&buyer, items("sku-flash-3", 1), 0, "same-key"))
        .await
        .unwrap();
    assert_eq!(again.order.record.id, id);
    // A different request with the key.
    let other = h
        .checkout
        .checkout(request(&buyer, items("sku-flash-3", 2), 0, "same-key"))
        .await;
    assert_eq!(
        other.unwrap_err().code(),
        bff::error::code::IDEMPOTENCY_KEY_REUSED
    );
    assert_eq!(stock(&h, "sku-flash-3").await, (99, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_checkouts_with_one_key_make_one_order_on_redis() {
    one_key_fifty_times(harness(Backend::Redis, "co-idem").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_checkouts_with_one_key_make_one_order_on_the_embedded_store() {
    one_key_fifty_times(harness(Backend::Embedded, "co-idem").await).await;
}

// ----------------------------------------------------------- bad input

#[tokio::test]
async fn bad_input_is_refused_with_clear_codes_and_nothing_stays_reserved() {
    use bff::error::code;
    let h = harness(Backend::Redis, "co-bad").await;
    let buyer = member(2); // basic, no points, no coupons
    let refused = |r: Result<CheckoutOutcome, CheckoutError>| r.unwrap_err().code();
    assert_eq!(
        refused(
            h.checkout
                .checkout(request(&buyer, items("sku-flash-4", 0), 0, "k1"))
                .await
        ),
        code::BAD_USER_INPUT
    );
    assert_eq!(
        refused(
            h.checkout
                .checkout(request(
                    &buyer,
                    items("sku-flash-4", bff::pricing::limits::MAX_QUANTITY as u32 + 1),
                    0,
                    "k2"
                ))
                .await
        ),
        code::BAD_USER_INPUT
    );
    assert_eq!(
        refused(
            h.checkout
                .checkout(request(&buyer, items("no-such-sku", 1), 0, "k3"))
                .await
        ),
        code::BAD_USER_INPUT
    );
    // A SKU of another mall.
    assert_eq!(
        refused(
            h.checkout
                .checkout(request(&buyer, items("sku-flash-6", 1), 0, "k4"))
                .await
        ),
        code::BAD_USER_INPUT
    );
    let mut points = items("sku-flash-4", 1);
    points.points_to_use = 50;
    let (p0, w0) = balances(&h, &buyer).await;
    assert_eq!(p0, 0);
    assert_eq!(
        refused(h.checkout.checkout(request(&buyer, points, 0, "k5")).await),
        code::INSUFFICIENT_POINTS
    );
    let mut coupon = items("sku-flash-4", 1);
    coupon.coupons = vec![CouponId::parse("coupon-1").unwrap()];
    assert_eq!(
        refused(h.checkout.checkout(request(&buyer, coupon, 0, "k6")).await),
        code::BAD_USER_INPUT
    );
    assert_eq!(
        refused(
            h.checkout
                .checkout(request(&buyer, bill(100), 101, "k7"))
                .await
        ),
        code::BAD_USER_INPUT,
        "a wallet part above the payable"
    );
    assert_eq!(
        refused(
            h.checkout
                .checkout(request(&member(1), bill(600_000), 600_000, "k8"))
                .await
        ),
        code::INSUFFICIENT_BALANCE
    );
    h.pricer.degraded.store(true, Ordering::Relaxed);
    assert_eq!(
        refused(
            h.checkout
                .checkout(request(&buyer, items("sku-flash-4", 1), 0, "k9"))
                .await
        ),
        code::PRICE_DEGRADED
    );
    h.pricer.degraded.store(false, Ordering::Relaxed);
    // Nothing stays reserved, nothing stays frozen.
    assert_eq!(stock(&h, "sku-flash-4").await, (100, 0, 0));
    assert_eq!(balances(&h, &buyer).await, (p0, w0));
    // A degraded price is transient: the same key works once prices do.
    h.checkout
        .checkout(request(&buyer, items("sku-flash-4", 1), 0, "k9"))
        .await
        .unwrap();
    // A refusal is the key's answer for good.
    let mut points = items("sku-flash-4", 1);
    points.points_to_use = 50;
    assert_eq!(
        refused(h.checkout.checkout(request(&buyer, points, 0, "k5")).await),
        code::INSUFFICIENT_POINTS
    );
}

// -------------------------------------------------------------- payments

#[tokio::test]
async fn combined_payments_freeze_points_and_wallet_and_consume_them_once_paid() {
    let h = harness(Backend::Redis, "co-combined").await;
    let buyer = member(1);
    let (p0, w0) = balances(&h, &buyer).await;
    let mut cart = bill(26_800);
    cart.points_to_use = 2_000;
    cart.coupons = vec![CouponId::parse("coupon-1").unwrap()];
    let outcome = h
        .checkout
        .checkout(request(&buyer, cart, 4_800, "combined"))
        .await
        .unwrap();
    assert_eq!(outcome.frozen_points, 2_000);
    assert_eq!(outcome.frozen_wallet.minor(), 4_800);
    // The parts sum to the payable: points are priced in, wallet + external.
    let record = &outcome.order.record;
    assert_eq!(record.payable.minor(), 24_800);
    assert_eq!(outcome.pay_externally.minor(), 20_000);
    assert_eq!(
        record.wallet.minor() + outcome.pay_externally.minor(),
        24_800
    );
    assert_eq!(balances(&h, &buyer).await, (p0 - 2_000, w0 - 4_800));
    let coupons = h
        .upstreams
        .member
        .coupons(&tenant(), &buyer)
        .await
        .unwrap()
        .unwrap();
    assert!(coupons.iter().all(|c| c.id.as_str() != "coupon-1"), "held");

    assert_eq!(pay(&h, &outcome, "pay-combined").await, PaymentEffect::Paid);
    assert_eq!(status(&h, &record.id).await, OrderStatus::Completed);
    assert_eq!(balances(&h, &buyer).await, (p0 - 2_000, w0 - 4_800));
    let hold = h
        .upstreams
        .member
        .hold(&tenant(), &record.hold_key())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hold.state, bff::upstream::member::HoldState::Committed);
}

#[tokio::test]
async fn an_order_paid_entirely_with_points_and_wallet_completes_at_once() {
    let h = harness(Backend::Embedded, "co-prepaid").await;
    let buyer = member(1);
    let (p0, w0) = balances(&h, &buyer).await;
    let mut cart = bill(5_000);
    cart.points_to_use = 1_000;
    let outcome = h
        .checkout
        .checkout(request(&buyer, cart, 4_000, "prepaid"))
        .await
        .unwrap();
    assert_eq!(outcome.order.status, OrderStatus::Completed);
    assert_eq!(outcome.pay_externally, Money::ZERO);
    assert_eq!(balances(&h, &buyer).await, (p0 - 1_000, w0 - 4_000));
}

#[tokio::test]
async fn a_callback_replayed_ten_times_in_any_order_has_one_effect() {
    use rand::seq::SliceRandom;
    let h = harness(Backend::Redis, "co-replay").await;
    let outcome = h
        .checkout
        .checkout(request(&member(3), items("sku-flash-5", 1), 0, "replay"))
        .await
        .unwrap();
    let id = outcome.order.record.id.clone();
    let now = now_ms() / 1000;
    // Ten deliveries, each signed at its own moment, in a shuffled order,
    // all at once.
    let mut deliveries: Vec<(Vec<u8>, String)> = (0..10)
        .map(|i| {
            callback(
                &outcome,
                "pay-replayed",
                outcome.pay_externally.minor(),
                now - i,
            )
        })
        .collect();
    deliveries.shuffle(&mut rand::rng());
    let tasks: Vec<_> = deliveries
        .into_iter()
        .map(|(body, header)| {
            let payments = h.payments.clone();
            tokio::spawn(async move { payments.notify("demo", Some(&header), &body, now).await })
        })
        .collect();
    let mut effects = Vec::new();
    for t in tasks {
        effects.push(t.await.unwrap().unwrap());
    }
    assert_eq!(
        effects
            .iter()
            .filter(|e| **e == PaymentEffect::Paid)
            .count(),
        1
    );
    assert!(
        effects
            .iter()
            .all(|e| matches!(e, PaymentEffect::Paid | PaymentEffect::Duplicate))
    );
    let kinds = events_of(&h, &id).await;
    assert_eq!(kinds.iter().filter(|k| *k == "order.paid").count(), 1);
    assert_eq!(stock(&h, "sku-flash-5").await, (99, 0, 1));
    assert_eq!(status(&h, &id).await, OrderStatus::Completed);
}

#[tokio::test]
async fn forged_stale_wrong_amount_and_unknown_order_callbacks_change_nothing() {
    use bff::error::code;
    let h = harness(Backend::Redis, "co-forged").await;
    let outcome = h
        .checkout
        .checkout(request(&member(4), items("sku-flash-1", 1), 0, "forged"))
        .await
        .unwrap();
    let id = outcome.order.record.id.clone();
    let amount = outcome.pay_externally.minor();
    let now = now_ms() / 1000;
    let before = h.store.order(&scope(), &id).await.unwrap().unwrap();
    let events_before = h.store.outbox_events(&scope()).await.unwrap().len();

    let (body, _) = callback(&outcome, "p1", amount, now);
    let forged = sign("not-the-secret", now, &body);
    let refused = |r: Result<PaymentEffect, CheckoutError>| r.unwrap_err().code();
    assert_eq!(
        refused(h.payments.notify("demo", Some(&forged), &body, now).await),
        code::INVALID_SIGNATURE
    );
    assert_eq!(
        refused(h.payments.notify("demo", None, &body, now).await),
        code::INVALID_SIGNATURE
    );
    // A signature for another body.
    let (_, header) = callback(&outcome, "p1", amount, now);
    let (tampered, _) = callback(&outcome, "p1", amount + 1, now);
    assert_eq!(
        refused(
            h.payments
                .notify("demo", Some(&header), &tampered, now)
                .await
        ),
        code::INVALID_SIGNATURE
    );
    // Unknown provider.
    assert_eq!(
        refused(h.payments.notify("other", Some(&header), &body, now).await),
        code::INVALID_SIGNATURE
    );
    // Stale, and from the future.
    let (body, stale) = callback(&outcome, "p1", amount, now - 301);
    assert_eq!(
        refused(h.payments.notify("demo", Some(&stale), &body, now).await),
        code::SIGNATURE_EXPIRED
    );
    let (body, future) = callback(&outcome, "p1", amount, now + 301);
    assert_eq!(
        refused(h.payments.notify("demo", Some(&future), &body, now).await),
        code::SIGNATURE_EXPIRED
    );
    // Correctly signed, wrong amount.
    let (body, header) = callback(&outcome, "p1", amount - 1, now);
    assert_eq!(
        refused(h.payments.notify("demo", Some(&header), &body, now).await),
        code::AMOUNT_MISMATCH
    );
    // Correctly signed, unknown order.
    let body = serde_json::json!({
        "payment_id": "p1", "tenant": "demo", "order_id": "mall-1.0000000000000000",
        "amount": amount, "currency": "CNY", "status": "succeeded",
    })
    .to_string()
    .into_bytes();
    let header = sign(SECRET, now, &body);
    assert_eq!(
        refused(h.payments.notify("demo", Some(&header), &body, now).await),
        code::ORDER_NOT_FOUND
    );
    // Wrong currency.
    let body = serde_json::json!({
        "payment_id": "p1", "tenant": "demo", "order_id": id.to_string(),
        "amount": amount, "currency": "USD", "status": "succeeded",
    })
    .to_string()
    .into_bytes();
    let header = sign(SECRET, now, &body);
    assert_eq!(
        refused(h.payments.notify("demo", Some(&header), &body, now).await),
        code::AMOUNT_MISMATCH
    );

    let after = h.store.order(&scope(), &id).await.unwrap().unwrap();
    assert_eq!(after, before);
    assert_eq!(
        h.store.outbox_events(&scope()).await.unwrap().len(),
        events_before
    );
    // The genuine callback still works.
    assert_eq!(pay(&h, &outcome, "p1").await, PaymentEffect::Paid);
}

#[tokio::test]
async fn a_payment_after_expiry_is_recorded_as_needing_a_refund_and_does_not_revive_the_order() {
    let h = harness(Backend::Embedded, "co-late").await;
    let buyer = member(5);
    let (p0, w0) = balances(&h, &buyer).await;
    let mut cart = items("sku-flash-1", 1);
    cart.points_to_use = p0.min(100);
    let outcome = h
        .checkout
        .checkout(request(&buyer, cart, 0, "late"))
        .await
        .unwrap();
    let id = outcome.order.record.id.clone();
    let report = sweep(&h, now_ms() + 16 * MINUTE).await;
    assert_eq!(report.expired, 1);
    assert_eq!(status(&h, &id).await, OrderStatus::Expired);
    assert_eq!(balances(&h, &buyer).await, (p0, w0), "points given back");
    assert_eq!(stock(&h, "sku-flash-1").await, (100, 0, 0));

    assert_eq!(
        pay(&h, &outcome, "late-pay").await,
        PaymentEffect::RefundRequired
    );
    assert_eq!(
        pay(&h, &outcome, "late-pay").await,
        PaymentEffect::Duplicate
    );
    let view = h.checkout.order_any(&tenant(), &id).await.unwrap();
    assert_eq!(view.status, OrderStatus::Expired);
    assert_eq!(view.record.refunds.len(), 1);
    assert_eq!(view.record.refunds[0].payment_id, "late-pay");
    let kinds = events_of(&h, &id).await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "payment.refund_required")
            .count(),
        1
    );
    assert!(!kinds.contains(&"order.paid".to_owned()));
    assert_eq!(stock(&h, "sku-flash-1").await, (100, 0, 0));
}

#[tokio::test]
async fn a_failed_external_payment_cancels_the_order_and_reverses_the_other_parts() {
    let h = harness(Backend::Redis, "co-failed").await;
    let buyer = member(1);
    let (p0, w0) = balances(&h, &buyer).await;
    let mut cart = items("sku-flash-1", 1);
    cart.points_to_use = 100;
    let outcome = h
        .checkout
        .checkout(request(&buyer, cart, 100, "failing"))
        .await
        .unwrap();
    assert_eq!(balances(&h, &buyer).await, (p0 - 100, w0 - 100));
    let now = now_ms() / 1000;
    let body = serde_json::json!({
        "payment_id": "pf", "tenant": "demo",
        "order_id": outcome.order.record.id.to_string(),
        "amount": outcome.pay_externally.minor(), "currency": "CNY", "status": "failed",
    })
    .to_string()
    .into_bytes();
    let header = sign(SECRET, now, &body);
    assert_eq!(
        h.payments
            .notify("demo", Some(&header), &body, now)
            .await
            .unwrap(),
        PaymentEffect::Cancelled
    );
    assert_eq!(
        status(&h, &outcome.order.record.id).await,
        OrderStatus::Cancelled
    );
    assert_eq!(balances(&h, &buyer).await, (p0, w0));
    assert_eq!(stock(&h, "sku-flash-1").await, (100, 0, 0));
}

// ---------------------------------------------------------------- cancel

#[tokio::test]
async fn a_member_cancels_an_unpaid_order_once_and_cannot_cancel_a_paid_one() {
    use bff::error::code;
    let h = harness(Backend::Embedded, "co-cancel").await;
    let buyer = member(1);
    let (p0, w0) = balances(&h, &buyer).await;
    let mut cart = items("sku-flash-1", 1);
    cart.points_to_use = 500;
    let outcome = h
        .checkout
        .checkout(request(&buyer, cart, 0, "to-cancel"))
        .await
        .unwrap();
    let id = outcome.order.record.id.clone();
    assert_eq!(
        h.checkout
            .cancel(&tenant(), &member(2), &id)
            .await
            .unwrap_err()
            .code(),
        code::ORDER_NOT_FOUND
    );
    let cancelled = h.checkout.cancel(&tenant(), &buyer, &id).await.unwrap();
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    let again = h.checkout.cancel(&tenant(), &buyer, &id).await.unwrap();
    assert_eq!(again.status, OrderStatus::Cancelled);
    assert_eq!(balances(&h, &buyer).await, (p0, w0));
    assert_eq!(stock(&h, "sku-flash-1").await, (100, 0, 0));
    let kinds = events_of(&h, &id).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "order.cancelled").count(),
        1,
        "{kinds:?}"
    );

    let paid = h
        .checkout
        .checkout(request(&buyer, items("sku-flash-2", 1), 0, "to-pay"))
        .await
        .unwrap();
    pay(&h, &paid, "pp").await;
    assert_eq!(
        h.checkout
            .cancel(&tenant(), &buyer, &paid.order.record.id)
            .await
            .unwrap_err()
            .code(),
        code::INVALID_TRANSITION
    );
}

// -------------------------------------------------------------- recovery

async fn crash_then_recover(point: FaultPoint) {
    let h = harness(Backend::Redis, "co-crash").await;
    let buyer = member(1);
    let (p0, w0) = balances(&h, &buyer).await;
    let mut cart = items("sku-flash-1", 1);
    cart.points_to_use = 300;
    let req = request(&buyer, cart, 200, "crashing");
    let paid_point = point == FaultPoint::AfterPaid;
    if !paid_point {
        h.checkout.fail_at(Some(point));
    }
    let first = h.checkout.checkout(req.clone()).await;
    let id = if paid_point {
        let outcome = first.unwrap();
        h.checkout.fail_at(Some(point));
        let now = now_ms() / 1000;
        let (body, header) = callback(&outcome, "crash-pay", outcome.pay_externally.minor(), now);
        let crashed = h.payments.notify("demo", Some(&header), &body, now).await;
        assert!(matches!(crashed, Err(CheckoutError::Crashed)));
        outcome.order.record.id
    } else {
        assert!(matches!(first, Err(CheckoutError::Crashed)), "{first:?}");
        let ids: Vec<String> = h
            .store
            .outbox_events(&scope())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.order)
            .collect();
        OrderId::parse(ids[0].clone()).unwrap()
    };
    h.checkout.fail_at(None);
    // Much later: every node's sweeper runs at once.
    let later = now_ms() + 16 * MINUTE;
    let (a, b) = tokio::join!(h.checkout.sweep(later), h.checkout.sweep(later));
    a.unwrap();
    b.unwrap();
    sweep(&h, later + 10 * MINUTE).await;
    let final_status = status(&h, &id).await;
    let hold = h
        .upstreams
        .member
        .hold(&tenant(), &format!("{id}.hold"))
        .await
        .unwrap();
    if paid_point {
        // Completed: the hold consumed, the unit sold.
        assert_eq!(final_status, OrderStatus::Completed);
        assert_eq!(
            hold.unwrap().state,
            bff::upstream::member::HoldState::Committed
        );
        assert_eq!(stock(&h, "sku-flash-1").await, (99, 0, 1));
        assert_eq!(balances(&h, &buyer).await, (p0 - 300, w0 - 200));
    } else {
        // Restored: nothing sold, nothing frozen.
        assert!(
            matches!(final_status, OrderStatus::Cancelled | OrderStatus::Expired),
            "{final_status}"
        );
        assert_eq!(
            hold.map(|h| h.state),
            Some(bff::upstream::member::HoldState::Released)
        );
        assert_eq!(stock(&h, "sku-flash-1").await, (100, 0, 0));
        assert_eq!(balances(&h, &buyer).await, (p0, w0));
    }
    // Nothing is left for the sweeper.
    assert_eq!(
        h.store
            .claim_due(&scope(), later + 100 * MINUTE, 1, 100)
            .await
            .unwrap(),
        Vec::<OrderId>::new()
    );
}

#[tokio::test]
async fn a_crash_after_reserving_is_compensated_by_the_recovery_sweep() {
    crash_then_recover(FaultPoint::AfterReserve).await;
}

#[tokio::test]
async fn a_crash_after_freezing_is_compensated_by_the_recovery_sweep() {
    crash_then_recover(FaultPoint::AfterFreeze).await;
}

#[tokio::test]
async fn a_crash_after_awaiting_payment_is_expired_and_compensated() {
    crash_then_recover(FaultPoint::AfterAwaitingPayment).await;
}

#[tokio::test]
async fn a_crash_after_payment_is_completed_by_the_sweep() {
    crash_then_recover(FaultPoint::AfterPaid).await;
}

#[tokio::test]
async fn a_retry_after_a_crash_finishes_the_same_order() {
    let settings = CheckoutSettings {
        in_progress_lease_ms: 1,
        ..CheckoutSettings::default()
    };
    let h = harness_with(Backend::Embedded, "co-resume", settings).await;
    let buyer = member(1);
    let mut cart = items("sku-flash-1", 1);
    cart.points_to_use = 100;
    let req = request(&buyer, cart, 0, "resumed");
    h.checkout.fail_at(Some(FaultPoint::AfterFreeze));
    assert!(matches!(
        h.checkout.checkout(req.clone()).await,
        Err(CheckoutError::Crashed)
    ));
    h.checkout.fail_at(None);
    // The crashed attempt's lease (1 ms) has run out by now.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let outcome = h.checkout.checkout(req).await.unwrap();
    assert_eq!(outcome.order.status, OrderStatus::AwaitingPayment);
    assert_eq!(outcome.frozen_points, 100);
    assert_eq!(stock(&h, "sku-flash-1").await, (99, 1, 0));
    let created = h
        .store
        .outbox_events(&scope())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "order.created")
        .count();
    assert_eq!(created, 1);
}

// ---------------------------------------------------------------- outbox

#[tokio::test]
async fn every_transition_has_one_event_and_the_order_service_sees_each_once() {
    let h = harness(Backend::Redis, "co-relay").await;
    let outcome = h
        .checkout
        .checkout(request(&member(1), items("sku-flash-1", 1), 0, "relay-1"))
        .await
        .unwrap();
    let id = outcome.order.record.id.clone();
    pay(&h, &outcome, "relay-pay").await;
    assert_eq!(
        events_of(&h, &id).await,
        vec![
            "order.created",
            "order.reserved",
            "order.awaiting_payment",
            "order.paid",
            "order.completed"
        ]
    );
    let relay = Relay::new(
        h.store.clone(),
        h.order_client.clone(),
        "node-a",
        Duration::from_secs(60),
    );
    let report = relay.pass().await.unwrap();
    assert_eq!(report.delivered, 5);
    let seen = h
        .order_client
        .order(&tenant(), id.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.status, "COMPLETED");
    assert_eq!(seen.kinds.len(), 5);
    assert_eq!(relay.pass().await.unwrap().delivered, 0);

    // A consumer reads a batch and dies before acknowledging it.
    let second = h
        .checkout
        .checkout(request(&member(2), items("sku-flash-1", 1), 0, "relay-2"))
        .await
        .unwrap();
    let taken = h
        .store
        .outbox_read(&scope(), bff::outbox::ORDER_SERVICE_GROUP, "node-dead", 100)
        .await
        .unwrap();
    assert_eq!(taken.len(), 3);
    // It even delivered one before dying.
    h.order_client
        .deliver(
            &tenant(),
            bff::upstream::order::OrderEvent {
                order: &taken[0].order,
                version: taken[0].version,
                kind: &taken[0].kind,
                status: &taken[0].status,
                body: &taken[0].body,
            },
        )
        .await
        .unwrap();
    // A relay that reclaims idle entries at once gets them again.
    let rescuer = Relay::new(
        h.store.clone(),
        h.order_client.clone(),
        "node-b",
        Duration::ZERO,
    );
    let report = rescuer.pass().await.unwrap();
    assert_eq!((report.delivered, report.reclaimed), (3, 3));
    let seen = h
        .order_client
        .order(&tenant(), second.order.record.id.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen.kinds,
        vec!["order.created", "order.reserved", "order.awaiting_payment"]
    );
    assert_eq!(h.orders.book.applied(), 8);
    assert_eq!(h.orders.book.deliveries(), 9);
    // Relays keep delivered events for their retention (a day by default):
    // all eight are still there; with none, a pass removes them.
    assert_eq!(h.store.outbox_events(&scope()).await.unwrap().len(), 8);
    let tidy = Relay::new(
        h.store.clone(),
        h.order_client.clone(),
        "node-c",
        Duration::from_secs(60),
    )
    .retaining(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(tidy.pass().await.unwrap().delivered, 0);
    assert!(h.store.outbox_events(&scope()).await.unwrap().is_empty());
    assert_eq!(h.orders.book.applied(), 8);
}

#[tokio::test]
async fn one_relay_pass_delivers_a_backlog_of_several_batches() {
    let h = harness(Backend::Redis, "co-relay-backlog").await;
    for n in 1..=3 {
        h.checkout
            .checkout(request(
                &member(n),
                items("sku-flash-1", 1),
                0,
                &format!("backlog-{n}"),
            ))
            .await
            .unwrap();
    }
    // Nine events, read two at a time: one pass takes them all.
    let relay = Relay::new(
        h.store.clone(),
        h.order_client.clone(),
        "node-a",
        Duration::from_secs(60),
    )
    .with_batch(2);
    assert_eq!(relay.pass().await.unwrap().delivered, 9);
    assert_eq!(h.orders.book.applied(), 9);
    assert_eq!(relay.pass().await.unwrap().delivered, 0);
}

// ---------------------------------------------------- member-service holds

#[tokio::test]
async fn member_service_holds_are_idempotent_and_a_release_before_the_freeze_wins() {
    use bff::upstream::member::{HoldRefusal, HoldRequest, HoldState};
    let h = harness(Backend::Embedded, "co-holds").await;
    let client = &h.upstreams.member;
    let buyer = member(1);
    let (p0, w0) = balances(&h, &buyer).await;
    let req = HoldRequest {
        member: buyer.clone(),
        points: 10,
        wallet: Money::from_minor(20).unwrap(),
        coupons: vec![CouponId::parse("coupon-2").unwrap()],
    };
    let first = client.freeze(&tenant(), "h1", &req).await.unwrap().unwrap();
    let again = client.freeze(&tenant(), "h1", &req).await.unwrap().unwrap();
    assert_eq!(first, again);
    assert_eq!(first.state, HoldState::Frozen);
    assert_eq!(balances(&h, &buyer).await, (p0 - 10, w0 - 20));
    // The same key for something else.
    let other = HoldRequest {
        points: 11,
        ..req.clone()
    };
    assert_eq!(
        client.freeze(&tenant(), "h1", &other).await.unwrap(),
        Err(HoldRefusal::KeyReused)
    );
    // The coupon is held: another hold cannot take it.
    assert_eq!(
        client.freeze(&tenant(), "h2", &req).await.unwrap(),
        Err(HoldRefusal::CouponUnavailable)
    );
    client.commit(&tenant(), "h1").await.unwrap().unwrap();
    client.commit(&tenant(), "h1").await.unwrap().unwrap();
    assert_eq!(balances(&h, &buyer).await, (p0 - 10, w0 - 20));
    assert_eq!(
        client.release(&tenant(), "h1").await.unwrap(),
        Err(HoldRefusal::Committed)
    );
    // Released before it was frozen: the late freeze is refused.
    let released = client.release(&tenant(), "h3").await.unwrap().unwrap();
    assert_eq!(released.state, HoldState::Released);
    let late = HoldRequest {
        coupons: vec![],
        ..req.clone()
    };
    assert_eq!(
        client.freeze(&tenant(), "h3", &late).await.unwrap(),
        Err(HoldRefusal::Released)
    );
    assert_eq!(balances(&h, &buyer).await, (p0 - 10, w0 - 20));
    // Too much.
    let greedy = HoldRequest {
        points: p0 * 10,
        coupons: vec![],
        ..req
    };
    assert_eq!(
        client.freeze(&tenant(), "h4", &greedy).await.unwrap(),
        Err(HoldRefusal::InsufficientPoints)
    );
    let _ = &h.demo;
}

// ------------------------------------------------------ notification route

#[tokio::test]
async fn the_notification_route_answers_provider_facing_status_codes() {
    let h = harness(Backend::Redis, "co-route").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app: axum::Router = bff::http::payments::router(h.payments.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let outcome = h
        .checkout
        .checkout(request(&member(6), items("sku-flash-1", 1), 0, "route"))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/payments/notify/demo");
    let send = |body: Vec<u8>, header: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let resp = http
                .post(url)
                .header("Payment-Signature", header)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let now = now_ms() / 1000;
    let amount = outcome.pay_externally.minor();
    let (body, _) = callback(&outcome, "r1", amount, now);
    let (code, answer) = send(body.clone(), sign("forged", now, &body)).await;
    assert_eq!(code, 401);
    assert_eq!(answer["error"]["code"], "INVALID_SIGNATURE");
    let (body, header) = callback(&outcome, "r1", amount + 1, now);
    let (code, answer) = send(body, header).await;
    assert_eq!(code, 422);
    assert_eq!(answer["error"]["code"], "AMOUNT_MISMATCH");
    let (body, header) = callback(&outcome, "r1", amount, now);
    assert_eq!(send(body.clone(), header.clone()).await.1["effect"], "paid");
    assert_eq!(send(body, header).await.1["effect"], "duplicate");
    assert_eq!(
        status(&h, &outcome.order.record.id).await,
        OrderStatus::Completed
    );
}
