//! One conformance suite for the checkout's store operations on both
//! backends: the embedded file and Redis (one server, and a local 3-master
//! Redis Cluster), each test in its own namespace.

use std::sync::Arc;

use bff::domain::{MallId, MemberId, ProductId, TenantId};
use bff::store::checkout::{
    CreateRefusal, Due, IdempotencyBegin, IdempotencyRef, NewOrder, OrderId, OrderStatus,
    Reservation, Scope, Step, StepOutcome, StockEffect, StockLine,
};
use bff::store::{EmbeddedStore, RedisStore, SharedCheckoutStore};

use crate::local_redis::cluster_url;
use crate::store::{redis_url, unique_namespace};

/// A fresh embedded store (its directory lives as long as the store).
pub async fn embedded() -> (SharedCheckoutStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("bff.redb")).unwrap();
    (Arc::new(store), dir)
}

/// A Redis store in a namespace of its own.
pub async fn redis(test: &str) -> SharedCheckoutStore {
    Arc::new(
        RedisStore::connect(&redis_url(), &unique_namespace(test))
            .await
            .expect("Redis answers (set BFF_REDIS_URL)"),
    )
}

/// A store on the shared local Redis Cluster, in a namespace of its own.
pub async fn cluster(test: &str) -> SharedCheckoutStore {
    let url = tokio::task::spawn_blocking(cluster_url).await.unwrap();
    Arc::new(
        RedisStore::connect(&url, &unique_namespace(test))
            .await
            .expect("the local Redis Cluster answers"),
    )
}

fn scope() -> Scope {
    Scope::new(
        TenantId::parse("demo").unwrap(),
        MallId::parse("mall-1").unwrap(),
    )
}

fn sku(id: &str) -> ProductId {
    ProductId::parse(id).unwrap()
}

fn member(n: usize) -> MemberId {
    MemberId::parse(format!("member-{n}")).unwrap()
}

fn order_id(n: usize) -> OrderId {
    OrderId::new(&MallId::parse("mall-1").unwrap(), &format!("{n:016x}")).unwrap()
}

fn new_order(n: usize, buyer: usize, lines: &[(&str, u32)]) -> NewOrder {
    NewOrder {
        id: order_id(n),
        member: member(buyer),
        lines: lines
            .iter()
            .map(|(s, q)| StockLine {
                sku: sku(s),
                quantity: *q,
            })
            .collect(),
        due_at_ms: 1_000,
        body: format!("{{\"n\":{n}}}"),
    }
}

fn step(from: OrderStatus, version: u64, to: OrderStatus, stock: StockEffect) -> Step {
    Step {
        expect_version: version,
        expect_status: from,
        to,
        body: format!("{{\"to\":\"{to}\"}}"),
        stock,
        due: Due::Keep,
        payment_id: None,
        event: to.event_kind(),
    }
}

async fn available(store: &SharedCheckoutStore, id: &str) -> (u64, u64, u64) {
    let level = store.stock(&scope(), &sku(id)).await.unwrap().unwrap();
    (level.available, level.reserved, level.sold)
}

async fn stock_and_orders(store: SharedCheckoutStore) {
    let s = scope();
    assert!(store.define_stock(&s, &sku("a"), 5, 2).await.unwrap());
    // Defining again changes nothing.
    assert!(!store.define_stock(&s, &sku("a"), 99, 0).await.unwrap());
    assert!(store.define_stock(&s, &sku("b"), 1, 0).await.unwrap());
    assert_eq!(available(&store, "a").await, (5, 0, 0));
    assert_eq!(store.stock(&s, &sku("zzz")).await.unwrap(), None);

    // All or nothing: b has one unit, so asking for two of b reserves no a.
    let refused = store
        .create_order(&s, &new_order(1, 1, &[("a", 1), ("b", 2)]))
        .await
        .unwrap();
    assert_eq!(refused, Err(CreateRefusal::SoldOut(sku("b"))));
    assert_eq!(available(&store, "a").await, (5, 0, 0));
    assert_eq!(store.order(&s, &order_id(1)).await.unwrap(), None);

    let unknown = store
        .create_order(&s, &new_order(1, 1, &[("a", 1), ("nope", 1)]))
        .await
        .unwrap();
    assert_eq!(unknown, Err(CreateRefusal::UnknownSku(sku("nope"))));

    // A multi-SKU reservation.
    let created = store
        .create_order(&s, &new_order(1, 1, &[("a", 2), ("b", 1)]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(created.status, OrderStatus::Reserved);
    assert_eq!(created.version, 2);
    assert_eq!(created.reservation, Reservation::Held);
    assert_eq!(available(&store, "a").await, (3, 2, 0));
    assert_eq!(available(&store, "b").await, (0, 1, 0));
    assert_eq!(
        store
            .held_by_member(&s, &sku("a"), &member(1))
            .await
            .unwrap(),
        2
    );

    // The same id again is a retry: the existing order, nothing reserved.
    let again = store
        .create_order(&s, &new_order(1, 1, &[("a", 2), ("b", 1)]))
        .await
        .unwrap();
    assert!(matches!(again, Err(CreateRefusal::Exists(o)) if o.version == 2));
    assert_eq!(available(&store, "a").await, (3, 2, 0));

    // Per-member limit of a is 2: member 1 holds 2 already.
    let over = store
        .create_order(&s, &new_order(2, 1, &[("a", 1)]))
        .await
        .unwrap();
    assert_eq!(over, Err(CreateRefusal::LimitExceeded(sku("a"))));
    assert_eq!(available(&store, "a").await, (3, 2, 0));

    // Stale version: nothing written.
    let stale = step(
        OrderStatus::Reserved,
        1,
        OrderStatus::Cancelled,
        StockEffect::Release,
    );
    assert_eq!(
        store.apply(&s, &order_id(1), &stale).await.unwrap(),
        StepOutcome::Conflict
    );
    assert_eq!(available(&store, "a").await, (3, 2, 0));

    // Release once; a second release (even at the right version) is refused.
    let cancel = step(
        OrderStatus::Reserved,
        2,
        OrderStatus::Cancelled,
        StockEffect::Release,
    );
    assert_eq!(
        store.apply(&s, &order_id(1), &cancel).await.unwrap(),
        StepOutcome::Applied(3)
    );
    assert_eq!(available(&store, "a").await, (5, 0, 0));
    assert_eq!(available(&store, "b").await, (1, 0, 0));
    assert_eq!(
        store
            .held_by_member(&s, &sku("a"), &member(1))
            .await
            .unwrap(),
        0
    );
    let twice = step(
        OrderStatus::Cancelled,
        3,
        OrderStatus::Cancelled,
        StockEffect::Release,
    );
    assert_eq!(
        store.apply(&s, &order_id(1), &twice).await.unwrap(),
        StepOutcome::Conflict
    );
    assert_eq!(available(&store, "a").await, (5, 0, 0));
    let stored = store.order(&s, &order_id(1)).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.version, stored.reservation),
        (OrderStatus::Cancelled, 3, Reservation::Released)
    );
    assert_eq!(stored.body, "{\"to\":\"CANCELLED\"}");

    // Sell: reserved units become sold; a payment id is recorded once.
    store
        .create_order(&s, &new_order(3, 2, &[("a", 2)]))
        .await
        .unwrap()
        .unwrap();
    let mut pay = step(
        OrderStatus::Reserved,
        2,
        OrderStatus::AwaitingPayment,
        StockEffect::None,
    );
    pay.payment_id = Some("pay-1".into());
    assert_eq!(
        store.apply(&s, &order_id(3), &pay).await.unwrap(),
        StepOutcome::Applied(3)
    );
    let mut paid = step(
        OrderStatus::AwaitingPayment,
        3,
        OrderStatus::Paid,
        StockEffect::Sell,
    );
    paid.payment_id = Some("pay-1".into());
    assert_eq!(
        store.apply(&s, &order_id(3), &paid).await.unwrap(),
        StepOutcome::DuplicatePayment
    );
    paid.payment_id = Some("pay-2".into());
    assert_eq!(
        store.apply(&s, &order_id(3), &paid).await.unwrap(),
        StepOutcome::Applied(4)
    );
    assert_eq!(available(&store, "a").await, (3, 0, 2));
    assert_eq!(
        store
            .apply(
                &s,
                &order_id(99),
                &step(
                    OrderStatus::Reserved,
                    2,
                    OrderStatus::Paid,
                    StockEffect::None
                )
            )
            .await
            .unwrap(),
        StepOutcome::Missing
    );
    // Also for a step that would move stock.
    assert_eq!(
        store
            .apply(
                &s,
                &order_id(99),
                &step(
                    OrderStatus::Reserved,
                    2,
                    OrderStatus::Cancelled,
                    StockEffect::Release
                )
            )
            .await
            .unwrap(),
        StepOutcome::Missing
    );

    // A pay-the-bill order has no stock lines.
    let bill = store
        .create_order(&s, &new_order(4, 3, &[]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bill.reservation, Reservation::None);

    assert_eq!(store.scopes().await.unwrap(), vec![s.clone()]);
}

async fn every_step_writes_exactly_one_event(store: SharedCheckoutStore) {
    let s = scope();
    store.define_stock(&s, &sku("a"), 10, 0).await.unwrap();
    store
        .create_order(&s, &new_order(1, 1, &[("a", 1)]))
        .await
        .unwrap()
        .unwrap();
    // A refused creation and a refused step write nothing.
    store
        .create_order(&s, &new_order(2, 1, &[("a", 11)]))
        .await
        .unwrap()
        .unwrap_err();
    let stale = step(
        OrderStatus::Created,
        1,
        OrderStatus::Cancelled,
        StockEffect::Release,
    );
    assert_eq!(
        store.apply(&s, &order_id(1), &stale).await.unwrap(),
        StepOutcome::Conflict
    );
    store
        .apply(
            &s,
            &order_id(1),
            &step(
                OrderStatus::Reserved,
                2,
                OrderStatus::AwaitingPayment,
                StockEffect::None,
            ),
        )
        .await
        .unwrap();
    store
        .apply(
            &s,
            &order_id(1),
            &step(
                OrderStatus::AwaitingPayment,
                3,
                OrderStatus::Expired,
                StockEffect::Release,
            ),
        )
        .await
        .unwrap();
    let events = store.outbox_events(&s).await.unwrap();
    let seen: Vec<(String, String, u64)> = events
        .iter()
        .map(|e| (e.kind.clone(), e.status.clone(), e.version))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("order.created".into(), "CREATED".into(), 1),
            ("order.reserved".into(), "RESERVED".into(), 2),
            (
                "order.awaiting_payment".into(),
                "AWAITING_PAYMENT".into(),
                3
            ),
            ("order.expired".into(), "EXPIRED".into(), 4),
        ]
    );
    assert!(events.iter().all(|e| e.order == order_id(1).to_string()));
    assert_eq!(events[3].body, "{\"to\":\"EXPIRED\"}");

    // Consumer groups: a group starts at the first event; what one consumer
    // read but did not acknowledge is claimed by another; acknowledged
    // events are never delivered to the group again.
    let first = store.outbox_read(&s, "orders", "c1", 3).await.unwrap();
    assert_eq!(first.len(), 3);
    let rest = store.outbox_read(&s, "orders", "c1", 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert!(
        store
            .outbox_read(&s, "orders", "c1", 10)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .outbox_ack(&s, "orders", &[first[0].id.clone(), first[1].id.clone()])
        .await
        .unwrap();
    // c1 "dies" holding first[2] and rest[0]: c2 takes them over.
    let claimed = store.outbox_claim(&s, "orders", "c2", 0, 10).await.unwrap();
    let claimed_ids: Vec<&str> = claimed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(claimed_ids, vec![first[2].id.as_str(), rest[0].id.as_str()]);
    assert_eq!(claimed[0].kind, "order.awaiting_payment");
    // Not yet idle long enough for a one-hour threshold.
    assert!(
        store
            .outbox_claim(&s, "orders", "c3", 3_600_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let ids: Vec<String> = claimed.iter().map(|e| e.id.clone()).collect();
    store.outbox_ack(&s, "orders", &ids).await.unwrap();
    assert!(
        store
            .outbox_claim(&s, "orders", "c2", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Another group reads everything from the start.
    assert_eq!(
        store
            .outbox_read(&s, "audit", "a1", 100)
            .await
            .unwrap()
            .len(),
        4
    );
}

async fn only_acknowledged_old_events_are_trimmed(store: SharedCheckoutStore) {
    let s = scope();
    let started = chrono::Utc::now().timestamp_millis();
    store.define_stock(&s, &sku("a"), 10, 0).await.unwrap();
    store
        .create_order(&s, &new_order(1, 1, &[("a", 1)]))
        .await
        .unwrap()
        .unwrap();
    for (from, version, to, stock) in [
        (
            OrderStatus::Reserved,
            2,
            OrderStatus::AwaitingPayment,
            StockEffect::None,
        ),
        (
            OrderStatus::AwaitingPayment,
            3,
            OrderStatus::Expired,
            StockEffect::Release,
        ),
    ] {
        store
            .apply(&s, &order_id(1), &step(from, version, to, stock))
            .await
            .unwrap();
    }
    let all = store.outbox_events(&s).await.unwrap();
    assert_eq!(all.len(), 4);
    let now = chrono::Utc::now().timestamp_millis();
    assert!(
        all.iter()
            .all(|e| e.at_ms >= started - 1_000 && e.at_ms <= now + 1_000),
        "{all:?}"
    );
    let ids = |events: &[bff::store::checkout::OutboxEvent]| -> Vec<String> {
        events.iter().map(|e| e.id.clone()).collect()
    };
    let later = now + 3_600_000;

    // No consumer yet: nothing goes, however old.
    assert_eq!(store.outbox_trim(&s, later).await.unwrap(), 0);
    // One group has everything; the other has acknowledged the first event
    // and holds the second unacknowledged: only the first may go.
    let audit = store.outbox_read(&s, "audit", "a1", 10).await.unwrap();
    store.outbox_ack(&s, "audit", &ids(&audit)).await.unwrap();
    let read = store.outbox_read(&s, "orders", "c1", 2).await.unwrap();
    store
        .outbox_ack(&s, "orders", &[read[0].id.clone()])
        .await
        .unwrap();
    assert_eq!(store.outbox_trim(&s, later).await.unwrap(), 1);
    assert_eq!(ids(&store.outbox_events(&s).await.unwrap()), ids(&all[1..]));
    // Too recent for the cutoff: nothing goes.
    store
        .outbox_ack(&s, "orders", &[read[1].id.clone()])
        .await
        .unwrap();
    assert_eq!(store.outbox_trim(&s, started - 60_000).await.unwrap(), 0);
    // Acknowledged up to the second; the third and fourth were never read
    // by the group: they stay.
    assert_eq!(store.outbox_trim(&s, later).await.unwrap(), 1);
    assert_eq!(ids(&store.outbox_events(&s).await.unwrap()), ids(&all[2..]));
    // Read and not acknowledged: they stay; acknowledged: they go.
    let rest = store.outbox_read(&s, "orders", "c1", 10).await.unwrap();
    assert_eq!(ids(&rest), ids(&all[2..]));
    assert_eq!(store.outbox_trim(&s, later).await.unwrap(), 0);
    store.outbox_ack(&s, "orders", &ids(&rest)).await.unwrap();
    assert_eq!(store.outbox_trim(&s, later).await.unwrap(), 2);
    assert!(store.outbox_events(&s).await.unwrap().is_empty());

    // New events after a trim reach the groups as before.
    store
        .create_order(&s, &new_order(2, 2, &[("a", 1)]))
        .await
        .unwrap()
        .unwrap();
    let fresh = store.outbox_read(&s, "orders", "c1", 10).await.unwrap();
    assert_eq!(fresh.len(), 2, "{fresh:?}");
    assert!(fresh.iter().all(|e| e.order == order_id(2).to_string()));
    assert_eq!(
        store
            .outbox_read(&s, "audit", "a1", 10)
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn due_orders_are_claimed_by_one_sweeper_at_a_time(store: SharedCheckoutStore) {
    let s = scope();
    for n in 1..=3 {
        let mut order = new_order(n, n, &[]);
        order.due_at_ms = 1_000 * n as i64;
        store.create_order(&s, &order).await.unwrap().unwrap();
    }
    // At t=2000, orders 1 and 2 are due.
    let due = store.claim_due(&s, 2_000, 500, 10).await.unwrap();
    assert_eq!(due, vec![order_id(1), order_id(2)]);
    // Leased: another sweeper at the same moment gets nothing.
    assert!(
        store
            .claim_due(&s, 2_000, 500, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The limit is honoured; after the lease they come back.
    let later = store.claim_due(&s, 3_000, 500, 2).await.unwrap();
    assert_eq!(later.len(), 2);
    // A step clears an order from the index.
    let mut done = step(
        OrderStatus::Reserved,
        2,
        OrderStatus::Cancelled,
        StockEffect::None,
    );
    done.due = Due::Clear;
    store.apply(&s, &order_id(3), &done).await.unwrap();
    let mut moved = step(
        OrderStatus::Reserved,
        2,
        OrderStatus::AwaitingPayment,
        StockEffect::None,
    );
    moved.due = Due::At(900_000);
    store.apply(&s, &order_id(1), &moved).await.unwrap();
    let all = store.claim_due(&s, 100_000, 500, 10).await.unwrap();
    assert_eq!(all, vec![order_id(2)]);
}

async fn idempotency_records(store: SharedCheckoutStore) {
    let tenant = TenantId::parse("demo").unwrap();
    let m = member(1);
    let key = IdempotencyRef {
        tenant: &tenant,
        member: &m,
        key: "key-1",
    };
    let hour = 3_600_000;
    assert_eq!(
        store.idempotency_begin(&key, "fp-a", hour).await.unwrap(),
        IdempotencyBegin::Started
    );
    assert_eq!(
        store.idempotency_begin(&key, "fp-a", hour).await.unwrap(),
        IdempotencyBegin::InProgress
    );
    assert_eq!(
        store.idempotency_begin(&key, "fp-b", hour).await.unwrap(),
        IdempotencyBegin::Reused
    );
    // Abandoning with another fingerprint does nothing.
    store.idempotency_abandon(&key, "fp-b").await.unwrap();
    assert_eq!(
        store.idempotency_begin(&key, "fp-a", hour).await.unwrap(),
        IdempotencyBegin::InProgress
    );
    store.idempotency_abandon(&key, "fp-a").await.unwrap();
    assert_eq!(
        store.idempotency_begin(&key, "fp-a", hour).await.unwrap(),
        IdempotencyBegin::Started
    );
    store
        .idempotency_complete(&key, "fp-a", "{\"order\":1}", 24 * hour)
        .await
        .unwrap();
    assert_eq!(
        store.idempotency_begin(&key, "fp-a", hour).await.unwrap(),
        IdempotencyBegin::Completed("{\"order\":1}".into())
    );
    assert_eq!(
        store.idempotency_begin(&key, "fp-b", hour).await.unwrap(),
        IdempotencyBegin::Reused
    );
    // A completed answer is not dropped by an abandon.
    store.idempotency_abandon(&key, "fp-a").await.unwrap();
    assert!(matches!(
        store.idempotency_begin(&key, "fp-a", hour).await.unwrap(),
        IdempotencyBegin::Completed(_)
    ));
    // Keys are per member.
    let other = member(2);
    let theirs = IdempotencyRef {
        tenant: &tenant,
        member: &other,
        key: "key-1",
    };
    assert_eq!(
        store
            .idempotency_begin(&theirs, "fp-b", hour)
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );
}

/// 1,000 concurrent buyers on stock 100: exactly 100 reservations; after
/// paying half and cancelling the other half, sold + available == 100.
async fn never_oversells(store: SharedCheckoutStore) {
    let s = scope();
    store
        .define_stock(&s, &sku("sku-flash-1"), 100, 1)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..1000)
        .map(|n| {
            let store = store.clone();
            let s = s.clone();
            tokio::spawn(async move {
                store
                    .create_order(&s, &new_order(n, n, &[("sku-flash-1", 1)]))
                    .await
                    .unwrap()
                    .map(|o| o.id)
            })
        })
        .collect();
    let mut won = Vec::new();
    let mut sold_out = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(id) => won.push(id),
            Err(CreateRefusal::SoldOut(_)) => sold_out += 1,
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    assert_eq!(won.len(), 100);
    assert_eq!(sold_out, 900);
    assert_eq!(available(&store, "sku-flash-1").await, (0, 100, 0));
    let tasks: Vec<_> = won
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let store = store.clone();
            let s = s.clone();
            tokio::spawn(async move {
                let (to, effect) = if i % 2 == 0 {
                    (OrderStatus::Paid, StockEffect::Sell)
                } else {
                    (OrderStatus::Cancelled, StockEffect::Release)
                };
                let outcome = store
                    .apply(&s, &id, &step(OrderStatus::Reserved, 2, to, effect))
                    .await
                    .unwrap();
                assert_eq!(outcome, StepOutcome::Applied(3));
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (available, reserved, sold) = available(&store, "sku-flash-1").await;
    assert_eq!((reserved, sold), (0, 50));
    assert_eq!(available + sold, 100);
}

async fn an_order_with_nothing_to_freeze_goes_straight_on_to_awaiting_payment(
    store: SharedCheckoutStore,
) {
    let s = scope();
    store.define_stock(&s, &sku("a"), 5, 0).await.unwrap();
    let new = new_order(1, 1, &[("a", 2)]);
    let created = store
        .create_awaiting_payment(&s, &new, 5_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(created.status, OrderStatus::AwaitingPayment);
    assert_eq!(created.version, 3);
    assert_eq!(created.reservation, Reservation::Held);
    assert_eq!(
        store.order(&s, &new.id).await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(available(&store, "a").await, (3, 2, 0));
    // Three transitions, three events, in order.
    let events: Vec<_> = store
        .outbox_events(&s)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.status, e.version, e.body))
        .collect();
    let body = new.body.clone();
    assert_eq!(
        events,
        [
            ("order.created".into(), "CREATED".into(), 1, body.clone()),
            ("order.reserved".into(), "RESERVED".into(), 2, body.clone()),
            (
                "order.awaiting_payment".into(),
                "AWAITING_PAYMENT".into(),
                3,
                body
            ),
        ]
    );
    // Due when payment is, not at the recovery time of a reserved order.
    assert!(store.claim_due(&s, 1_000, 10, 10).await.unwrap().is_empty());
    assert_eq!(
        store.claim_due(&s, 5_000, 10, 10).await.unwrap(),
        vec![new.id.clone()]
    );
    // A retry finds it; a refusal writes nothing.
    assert_eq!(
        store
            .create_awaiting_payment(&s, &new, 5_000)
            .await
            .unwrap(),
        Err(CreateRefusal::Exists(Box::new(created)))
    );
    assert_eq!(
        store
            .create_awaiting_payment(&s, &new_order(2, 2, &[("a", 4)]), 5_000)
            .await
            .unwrap(),
        Err(CreateRefusal::SoldOut(sku("a")))
    );
    assert_eq!(store.outbox_events(&s).await.unwrap().len(), 3);
    assert_eq!(available(&store, "a").await, (3, 2, 0));
    // It moves on from there like any order awaiting payment.
    assert_eq!(
        store
            .apply(
                &s,
                &new.id,
                &step(
                    OrderStatus::AwaitingPayment,
                    3,
                    OrderStatus::Cancelled,
                    StockEffect::Release
                )
            )
            .await
            .unwrap(),
        StepOutcome::Applied(4)
    );
    assert_eq!(available(&store, "a").await, (5, 0, 0));
    // A pay-the-bill order has no stock lines.
    let bill = store
        .create_awaiting_payment(&s, &new_order(3, 3, &[]), 5_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (bill.status, bill.reservation),
        (OrderStatus::AwaitingPayment, Reservation::None)
    );
}

#[tokio::test]
async fn the_embedded_checkout_store_creates_an_order_straight_on_to_awaiting_payment() {
    let (store, _dir) = embedded().await;
    an_order_with_nothing_to_freeze_goes_straight_on_to_awaiting_payment(store).await;
}

#[tokio::test]
async fn the_redis_checkout_store_creates_an_order_straight_on_to_awaiting_payment() {
    an_order_with_nothing_to_freeze_goes_straight_on_to_awaiting_payment(
        redis("co-straight").await,
    )
    .await;
}

#[tokio::test]
async fn the_cluster_checkout_store_creates_an_order_straight_on_to_awaiting_payment() {
    an_order_with_nothing_to_freeze_goes_straight_on_to_awaiting_payment(
        cluster("co-straight").await,
    )
    .await;
}

#[tokio::test]
async fn the_embedded_checkout_store_reserves_and_moves_stock_exactly_once() {
    let (store, _dir) = embedded().await;
    stock_and_orders(store).await;
}

#[tokio::test]
async fn the_redis_checkout_store_reserves_and_moves_stock_exactly_once() {
    stock_and_orders(redis("co-stock").await).await;
}

#[tokio::test]
async fn the_embedded_checkout_store_writes_one_event_per_step_and_redelivers_unacked_ones() {
    let (store, _dir) = embedded().await;
    every_step_writes_exactly_one_event(store).await;
}

#[tokio::test]
async fn the_redis_checkout_store_writes_one_event_per_step_and_redelivers_unacked_ones() {
    every_step_writes_exactly_one_event(redis("co-outbox").await).await;
}

#[tokio::test]
async fn the_embedded_checkout_store_leases_due_orders_to_one_sweeper() {
    let (store, _dir) = embedded().await;
    due_orders_are_claimed_by_one_sweeper_at_a_time(store).await;
}

#[tokio::test]
async fn the_redis_checkout_store_leases_due_orders_to_one_sweeper() {
    due_orders_are_claimed_by_one_sweeper_at_a_time(redis("co-due").await).await;
}

#[tokio::test]
async fn the_embedded_checkout_store_keeps_idempotency_records() {
    let (store, _dir) = embedded().await;
    idempotency_records(store).await;
}

#[tokio::test]
async fn the_redis_checkout_store_keeps_idempotency_records() {
    idempotency_records(redis("co-idem").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_embedded_checkout_store_never_oversells_under_1000_concurrent_buyers() {
    let (store, _dir) = embedded().await;
    never_oversells(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_redis_checkout_store_never_oversells_under_1000_concurrent_buyers() {
    never_oversells(redis("co-oversell").await).await;
}

#[tokio::test]
async fn the_cluster_checkout_store_reserves_and_moves_stock_exactly_once() {
    stock_and_orders(cluster("co-stock").await).await;
}

#[tokio::test]
async fn the_cluster_checkout_store_writes_one_event_per_step_and_redelivers_unacked_ones() {
    every_step_writes_exactly_one_event(cluster("co-outbox").await).await;
}

#[tokio::test]
async fn the_cluster_checkout_store_leases_due_orders_to_one_sweeper() {
    due_orders_are_claimed_by_one_sweeper_at_a_time(cluster("co-due").await).await;
}

#[tokio::test]
async fn the_cluster_checkout_store_keeps_idempotency_records() {
    idempotency_records(cluster("co-idem").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_checkout_store_never_oversells_under_1000_concurrent_buyers() {
    never_oversells(cluster("co-oversell").await).await;
}

#[tokio::test]
async fn on_redis_a_finished_order_expires_after_its_retention_and_an_open_one_never_does() {
    let namespace = unique_namespace("co-retention");
    let retention = std::time::Duration::from_secs(2 * 24 * 3600);
    let store: SharedCheckoutStore = Arc::new(
        RedisStore::connect(&redis_url(), &namespace)
            .await
            .unwrap()
            .with_order_retention(retention),
    );
    let scope = scope();
    let sku = ProductId::parse("sku-flash-1").unwrap();
    store.define_stock(&scope, &sku, 10, 0).await.unwrap();
    let member = MemberId::parse("member-1").unwrap();
    let new = |unique: &str| NewOrder {
        id: OrderId::new(&scope.mall, unique).unwrap(),
        member: member.clone(),
        lines: vec![StockLine {
            sku: sku.clone(),
            quantity: 1,
        }],
        due_at_ms: 0,
        body: "{}".into(),
    };
    let open = new("0000000000000001");
    let done = new("0000000000000002");
    for order in [&open, &done] {
        store.create_order(&scope, order).await.unwrap().unwrap();
    }
    let cancel = |due| Step {
        expect_version: 2,
        expect_status: OrderStatus::Reserved,
        to: OrderStatus::Cancelled,
        body: "{}".into(),
        stock: StockEffect::Release,
        due,
        payment_id: None,
        event: "order.cancelled".into(),
    };
    // Cancelled with a hold still to release: kept until that is done.
    assert_eq!(
        store
            .apply(&scope, &open.id, &cancel(Due::At(0)))
            .await
            .unwrap(),
        StepOutcome::Applied(3)
    );
    assert_eq!(
        store
            .apply(&scope, &done.id, &cancel(Due::Clear))
            .await
            .unwrap(),
        StepOutcome::Applied(3)
    );

    let client = redis::Client::open(redis_url()).unwrap();
    let c = client.get_multiplexed_async_connection().await.unwrap();
    let key = |id: &OrderId| format!("{namespace}:co:{{demo:mall-1}}:order:{id}");
    let ttl = |id: &OrderId| {
        let key = key(id);
        let mut c = c.clone();
        async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut c)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        ttl(&open.id).await,
        -1,
        "an order with work left never expires"
    );
    let left = ttl(&done.id).await;
    assert!(
        left > 0 && left <= retention.as_millis() as i64,
        "a finished order expires after its retention: {left} ms"
    );
    assert!(
        left > (retention.as_millis() as i64) / 2,
        "the retention is the configured one: {left} ms"
    );
}

#[tokio::test]
async fn the_embedded_checkout_store_trims_only_acknowledged_old_events() {
    let (store, _dir) = embedded().await;
    only_acknowledged_old_events_are_trimmed(store).await;
}

#[tokio::test]
async fn the_redis_checkout_store_trims_only_acknowledged_old_events() {
    only_acknowledged_old_events_are_trimmed(redis("co-trim").await).await;
}

#[tokio::test]
async fn the_cluster_checkout_store_trims_only_acknowledged_old_events() {
    only_acknowledged_old_events_are_trimmed(cluster("co-trim").await).await;
}

#[tokio::test]
async fn events_tail_prints_each_event_once_across_a_trim() {
    let (store, _dir) = embedded().await;
    let s = scope();
    store.define_stock(&s, &sku("a"), 10, 0).await.unwrap();
    let mut seen = std::collections::HashMap::new();
    let mut lines = Vec::new();
    store
        .create_order(&s, &new_order(1, 1, &[("a", 1)]))
        .await
        .unwrap()
        .unwrap();
    let printed = bff::outbox::print_new_events(&store, &mut seen, |l| lines.push(l.to_owned()))
        .await
        .unwrap();
    assert_eq!(printed, 2);
    // The order service takes and acknowledges both; they are trimmed.
    let read = store.outbox_read(&s, "orders", "c1", 10).await.unwrap();
    let ids: Vec<String> = read.iter().map(|e| e.id.clone()).collect();
    store.outbox_ack(&s, "orders", &ids).await.unwrap();
    let later = chrono::Utc::now().timestamp_millis() + 60_000;
    assert_eq!(store.outbox_trim(&s, later).await.unwrap(), 2);
    store
        .create_order(&s, &new_order(2, 2, &[("a", 1)]))
        .await
        .unwrap()
        .unwrap();
    let printed = bff::outbox::print_new_events(&store, &mut seen, |l| lines.push(l.to_owned()))
        .await
        .unwrap();
    assert_eq!(printed, 2, "{lines:?}");
    let orders: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["order"].to_string())
        .collect();
    assert_eq!(orders[..2], [orders[0].clone(), orders[0].clone()]);
    assert_ne!(orders[2], orders[0]);
    assert_eq!(orders[2], orders[3]);
    assert_eq!(
        bff::outbox::print_new_events(&store, &mut seen, |_| {})
            .await
            .unwrap(),
        0
    );
}
