//! Random interleavings of pay / replayed pay / second payment / cancel /
//! expire per order, on Redis with the real demo upstreams: an order is
//! never both paid and cancelled or expired, compensation runs once, and
//! stock, points and wallet balances are conserved.
//!
//! Prices come from the test-only `StubPricer` (see `checkout.rs`).

use std::sync::OnceLock;

use bff::checkout::PaymentEffect;
use bff::checkout::model::CheckoutOutcome;
use bff::domain::{MemberId, Money, ProductId, TenantId};
use bff::payment::sign;
use bff::store::checkout::{OrderStatus, Scope};
use proptest::prelude::*;

use crate::checkout::{Backend, Harness, harness, items};

const ORDERS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// A payment notification for order `i` with payment id variant `v`
    /// (two variants: a replay, or a second payment).
    Pay(usize, u8),
    Cancel(usize),
    /// Every node's sweeper runs after the payment deadline.
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..ORDERS, 0u8..2).prop_map(|(i, v)| Op::Pay(i, v)),
        (0..ORDERS).prop_map(Op::Cancel),
        Just(Op::Expire),
    ]
}

struct World {
    runtime: tokio::runtime::Runtime,
    harness: Harness,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let harness = runtime.block_on(harness(Backend::Redis, "co-prop"));
        World { runtime, harness }
    })
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn balances(h: &Harness, who: &MemberId) -> (i64, i64) {
    let tenant = TenantId::parse("demo").unwrap();
    let m = h
        .upstreams
        .member
        .members_by_ids(&tenant, std::slice::from_ref(who))
        .await
        .unwrap();
    (m[who].points, m[who].wallet.minor())
}

async fn notify(h: &Harness, order: &CheckoutOutcome, payment: &str) -> PaymentEffect {
    let now = now_ms() / 1000;
    let body = serde_json::json!({
        "payment_id": payment, "tenant": "demo",
        "order_id": order.order.record.id.to_string(),
        "amount": order.order.record.external.minor(), "currency": "CNY",
        "status": "succeeded",
    })
    .to_string()
    .into_bytes();
    let header = sign("whsec_demo_test", now, &body);
    h.payments
        .notify("demo", Some(&header), &body, now)
        .await
        .unwrap()
}

static NEXT_MEMBER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(100);
static COMPLETED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn run_case(ops: Vec<Op>) {
    use std::sync::atomic::Ordering;
    let h = &world().harness;
    let tenant = TenantId::parse("demo").unwrap();
    let mut orders = Vec::new();
    let mut opening = Vec::new();
    for _ in 0..ORDERS {
        let n = NEXT_MEMBER.fetch_add(1, Ordering::Relaxed);
        let buyer = MemberId::parse(format!("member-{n}")).unwrap();
        let (points, wallet) = balances(h, &buyer).await;
        let mut cart = items("sku-flash-2", 1);
        cart.points_to_use = points.min(50);
        let req = bff::checkout::model::CheckoutRequest {
            tenant: tenant.clone(),
            member: buyer.clone(),
            cart,
            payments: Some(bff::checkout::model::Payments {
                wallet: Money::from_minor(wallet.min(50)).unwrap(),
            }),
            idempotency_key: bff::checkout::model::IdempotencyKey::parse(format!("prop-{n}"))
                .unwrap(),
        };
        let outcome = h.checkout.checkout(req).await.unwrap();
        opening.push((buyer, points, wallet));
        orders.push(outcome);
    }
    let mut payment_ids: Vec<std::collections::HashSet<String>> = vec![Default::default(); ORDERS];
    for op in ops {
        match op {
            Op::Pay(i, v) => {
                let id = format!("pay-{}-{v}", orders[i].order.record.id);
                payment_ids[i].insert(id.clone());
                notify(h, &orders[i], &id).await;
            }
            Op::Cancel(i) => {
                let record = &orders[i].order.record;
                // A paid order refuses; that is part of the property.
                let _ = h.checkout.cancel(&tenant, &record.member, &record.id).await;
            }
            Op::Expire => {
                h.checkout.sweep(now_ms() + 16 * 60_000).await.unwrap();
            }
        }
    }
    // Settle everything.
    h.checkout.sweep(now_ms() + 16 * 60_000).await.unwrap();
    h.checkout.sweep(now_ms() + 60 * 60_000).await.unwrap();

    let scope = Scope::new(
        tenant.clone(),
        bff::domain::MallId::parse("mall-1").unwrap(),
    );
    let events = h.store.outbox_events(&scope).await.unwrap();
    for (i, order) in orders.iter().enumerate() {
        let id = &order.order.record.id;
        let view = h.checkout.order_any(&tenant, id).await.unwrap();
        let kinds: Vec<&str> = events
            .iter()
            .filter(|e| e.order == id.as_str())
            .map(|e| e.kind.as_str())
            .collect();
        let count = |k: &str| kinds.iter().filter(|x| **x == k).count();
        let closed = count("order.cancelled") + count("order.expired");
        assert!(count("order.paid") <= 1, "{kinds:?}");
        assert!(
            !(count("order.paid") == 1 && closed > 0),
            "paid and closed: {kinds:?}"
        );
        assert_eq!(count("order.paid") + closed, 1, "{kinds:?}");
        // Holds released at most once.
        assert!(count("order.hold_released") <= 1, "{kinds:?}");
        let (buyer, points, wallet) = &opening[i];
        let now = balances(h, buyer).await;
        let refunds = count("payment.refund_required");
        match view.status {
            OrderStatus::Completed => {
                COMPLETED.fetch_add(1, Ordering::Relaxed);
                assert_eq!(
                    now,
                    (
                        points - view.record.points,
                        wallet - view.record.wallet.minor()
                    )
                );
                assert_eq!(refunds, payment_ids[i].len() - 1);
            }
            OrderStatus::Cancelled | OrderStatus::Expired => {
                assert_eq!(now, (*points, *wallet), "compensated exactly once");
                assert_eq!(refunds, payment_ids[i].len());
            }
            other => panic!("order left {other}"),
        }
        assert_eq!(view.record.refunds.len(), refunds);
    }
    let level = h
        .store
        .stock(&scope, &ProductId::parse("sku-flash-2").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(level.reserved, 0);
    assert_eq!(level.available + level.sold, 100);
    assert_eq!(level.sold, COMPLETED.load(Ordering::Relaxed));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_interleavings_of_pay_cancel_and_expire_conserve_stock_and_balances(
        ops in proptest::collection::vec(op(), 1..10)
    ) {
        world().runtime.block_on(run_case(ops));
    }
}
