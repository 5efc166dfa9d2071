//! The group commit's promises, on the real embedded store (a redb file in
//! a temporary directory). Each test first holds the writer with a job that
//! waits for a signal, queues the jobs under test behind it, then lets it
//! go: the queued jobs then run as groups whose make-up the test knows.

use std::sync::Arc;
use std::time::Duration;

use redb::{ReadableDatabase, TableDefinition};

use super::checkout::{
    CheckoutStore, CreateRefusal, IdempotencyBegin, IdempotencyRef, NewOrder, OrderId, Scope,
    StockLine, StoredOrder,
};
use super::writer::{GROUP_MAX, QUEUE_MAX};
use super::{EmbeddedStore, Store, StoreError};
use crate::domain::{MallId, MemberId, ProductId, TenantId};

/// A table only these tests write.
const SCRATCH: TableDefinition<&str, &[u8]> = TableDefinition::new("test_scratch");

fn open() -> (Arc<EmbeddedStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("bff.redb")).unwrap();
    (Arc::new(store), dir)
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

async fn create(
    store: &Arc<EmbeddedStore>,
    order: NewOrder,
) -> tokio::task::JoinHandle<Result<Result<StoredOrder, CreateRefusal>, StoreError>> {
    let store = store.clone();
    tokio::spawn(async move { store.create_order(&scope(), &order).await })
}

async fn level(store: &EmbeddedStore, id: &str) -> (u64, u64, u64) {
    let level = store.stock(&scope(), &sku(id)).await.unwrap().unwrap();
    (level.available, level.reserved, level.sold)
}

async fn scratch(store: &EmbeddedStore, key: &'static str) -> Option<Vec<u8>> {
    let db = store.database();
    tokio::task::spawn_blocking(move || {
        let tx = db.begin_read().unwrap();
        let table = match tx.open_table(SCRATCH) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return None,
            Err(e) => panic!("{e}"),
        };
        table.get(key).unwrap().map(|v| v.value().to_vec())
    })
    .await
    .unwrap()
}

/// The writer, busy with one job until [`Hold::release`].
struct Hold {
    release: std::sync::mpsc::Sender<()>,
    job: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl Hold {
    async fn release(self) {
        self.release.send(()).unwrap();
        self.job.await.unwrap().unwrap();
    }
}

/// Occupies the writer (nothing else may be queued at this point, so the
/// hold is a group of its own).
async fn hold(store: &Arc<EmbeddedStore>) -> Hold {
    assert_eq!(store.writer().waiting(), 0);
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let (started, running) = tokio::sync::oneshot::channel::<()>();
    let mut started = Some(started);
    let writer = store.clone();
    let job = tokio::spawn(async move {
        writer
            .write(move |_tx| {
                if let Some(started) = started.take() {
                    let _ = started.send(());
                }
                gate.recv().map_err(StoreError::from_display)
            })
            .await
    });
    running.await.unwrap();
    Hold { release, job }
}

/// Waits until `n` jobs wait for the writer.
async fn queued(store: &EmbeddedStore, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.writer().waiting() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} jobs queued",
            store.writer().waiting()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_committed_in_groups_never_oversell() {
    let (store, _dir) = open();
    let s = scope();
    assert!(store.define_stock(&s, &sku("flash"), 100, 1).await.unwrap());
    let commits = store.writer().commits();

    let held = hold(&store).await;
    let buyers = 300;
    let mut calls = Vec::new();
    for n in 0..buyers {
        calls.push(create(&store, new_order(n, n, &[("flash", 1)])).await);
    }
    queued(&store, buyers).await;
    held.release().await;

    let mut created = Vec::new();
    let mut sold_out = Vec::new();
    for (n, call) in calls.into_iter().enumerate() {
        match call.await.unwrap().unwrap() {
            Ok(order) => created.push((n, order)),
            Err(CreateRefusal::SoldOut(_)) => sold_out.push(n),
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    assert_eq!(created.len(), 100);
    assert_eq!(sold_out.len(), 200);
    assert_eq!(level(&store, "flash").await, (0, 100, 0));
    for n in sold_out {
        assert_eq!(store.order(&s, &order_id(n)).await.unwrap(), None);
        assert_eq!(
            store
                .held_by_member(&s, &sku("flash"), &member(n))
                .await
                .unwrap(),
            0
        );
    }
    assert_eq!(store.outbox_events(&s).await.unwrap().len(), 2 * 100);
    // The hold, then the 300 jobs in groups of at most GROUP_MAX.
    assert_eq!(
        store.writer().commits() - commits,
        1 + buyers.div_ceil(GROUP_MAX) as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_jobs_leave_nothing_while_their_group_commits() {
    let (store, _dir) = open();
    let s = scope();
    assert!(store.define_stock(&s, &sku("a"), 5, 0).await.unwrap());
    assert!(store.define_stock(&s, &sku("b"), 1, 0).await.unwrap());
    let commits = store.writer().commits();

    let held = hold(&store).await;
    // Queued one at a time, so the group runs them in this order.
    let first = create(&store, new_order(1, 1, &[("a", 1), ("b", 1)])).await;
    queued(&store, 1).await;
    // b is gone by now (the job before took it): refused, and its line of
    // a must not stay reserved.
    let sold_out = create(&store, new_order(2, 2, &[("a", 2), ("b", 1)])).await;
    queued(&store, 2).await;
    let third = create(&store, new_order(3, 3, &[("a", 1)])).await;
    queued(&store, 3).await;
    let mismatch = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .compare_and_set("space", "key", Some(b"other"), b"value")
                .await
        })
    };
    queued(&store, 4).await;
    let retry = create(&store, new_order(1, 1, &[("a", 1), ("b", 1)])).await;
    queued(&store, 5).await;
    let idempotency = {
        let store = store.clone();
        tokio::spawn(async move {
            let tenant = TenantId::parse("demo").unwrap();
            let member = member(9);
            let key = IdempotencyRef {
                tenant: &tenant,
                member: &member,
                key: "key-1",
            };
            store.idempotency_begin(&key, "fp", 60_000).await
        })
    };
    queued(&store, 6).await;
    held.release().await;

    let first = first.await.unwrap().unwrap().unwrap();
    assert_eq!(
        sold_out.await.unwrap().unwrap(),
        Err(CreateRefusal::SoldOut(sku("b")))
    );
    third.await.unwrap().unwrap().unwrap();
    assert!(!mismatch.await.unwrap().unwrap());
    assert_eq!(
        retry.await.unwrap().unwrap(),
        Err(CreateRefusal::Exists(Box::new(first)))
    );
    assert_eq!(
        idempotency.await.unwrap().unwrap(),
        IdempotencyBegin::Started
    );
    // One transaction for all six.
    assert_eq!(store.writer().commits() - commits, 2);

    // Orders 1 and 3 hold a: 2 units; order 2 holds nothing.
    assert_eq!(level(&store, "a").await, (3, 2, 0));
    assert_eq!(level(&store, "b").await, (0, 1, 0));
    assert_eq!(store.order(&s, &order_id(2)).await.unwrap(), None);
    assert_eq!(
        store
            .held_by_member(&s, &sku("a"), &member(2))
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.get("space", "key").await.unwrap(), None);
    let events = store.outbox_events(&s).await.unwrap();
    let orders: Vec<&str> = events.iter().map(|e| e.order.as_str()).collect();
    let (one, three) = (order_id(1).to_string(), order_id(3).to_string());
    assert_eq!(orders, [&one, &one, &three, &three]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_or_panicking_job_leaves_nothing_and_its_neighbours_commit() {
    let (store, _dir) = open();
    let s = scope();
    assert!(store.define_stock(&s, &sku("a"), 10, 0).await.unwrap());
    let commits = store.writer().commits();

    let held = hold(&store).await;
    let first = create(&store, new_order(1, 1, &[("a", 1)])).await;
    queued(&store, 1).await;
    let good = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write(|tx| {
                    tx.open_table(SCRATCH)?.insert("good", &b"1"[..])?;
                    Ok(())
                })
                .await
        })
    };
    queued(&store, 2).await;
    // Writes half a step, then fails.
    let failing = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write(|tx| -> Result<(), StoreError> {
                    tx.open_table(SCRATCH)?.insert("failed", &b"1"[..])?;
                    Err(StoreError("half way".into()))
                })
                .await
        })
    };
    queued(&store, 3).await;
    let second = create(&store, new_order(2, 2, &[("a", 2)])).await;
    queued(&store, 4).await;
    // Writes half a step, then panics.
    let panicking = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write(|tx| -> Result<(), StoreError> {
                    tx.open_table(SCRATCH)?.insert("panicked", &b"1"[..])?;
                    panic!("a job that panics");
                })
                .await
        })
    };
    queued(&store, 5).await;
    let cas = {
        let store = store.clone();
        tokio::spawn(async move { store.compare_and_set("space", "key", None, b"v").await })
    };
    queued(&store, 6).await;
    held.release().await;

    first.await.unwrap().unwrap().unwrap();
    good.await.unwrap().unwrap();
    assert_eq!(failing.await.unwrap().unwrap_err().0, "half way");
    second.await.unwrap().unwrap().unwrap();
    assert!(panicking.await.unwrap().is_err());
    assert!(cas.await.unwrap().unwrap());
    // The aborted rounds committed nothing; the last round committed the
    // four good jobs once (their first runs left nothing either: the
    // stock moved once per order, one pair of events each).
    assert_eq!(store.writer().commits() - commits, 2);
    assert_eq!(level(&store, "a").await, (7, 3, 0));
    assert_eq!(store.outbox_events(&s).await.unwrap().len(), 4);
    assert_eq!(scratch(&store, "good").await.as_deref(), Some(&b"1"[..]));
    assert_eq!(scratch(&store, "failed").await, None);
    assert_eq!(scratch(&store, "panicked").await, None);
    assert_eq!(
        store.get("space", "key").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    // The writer is still there.
    assert!(
        store
            .compare_and_set("space", "key", Some(b"v"), b"w")
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_are_in_the_file_after_reopening_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bff.redb");
    let s = scope();
    let orders = 150;
    {
        let store = Arc::new(EmbeddedStore::open(&path).unwrap());
        assert!(store.define_stock(&s, &sku("a"), 1_000, 0).await.unwrap());
        let held = hold(&store).await;
        let mut calls = Vec::new();
        for n in 0..orders {
            calls.push(create(&store, new_order(n, n, &[("a", 1)])).await);
        }
        let mut puts = Vec::new();
        for n in 0..orders {
            let store = store.clone();
            puts.push(tokio::spawn(async move {
                store
                    .compare_and_set("space", &format!("key-{n}"), None, b"v")
                    .await
            }));
        }
        queued(&store, 2 * orders).await;
        held.release().await;
        for call in calls {
            call.await.unwrap().unwrap().unwrap();
        }
        for put in puts {
            assert!(put.await.unwrap().unwrap());
        }
        // Dropping the last handle closes the file.
    }
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(level(&store, "a").await, (1_000 - 150, 150, 0));
    for n in 0..orders {
        assert!(store.order(&s, &order_id(n)).await.unwrap().is_some());
    }
    assert_eq!(store.list("space").await.unwrap().len(), orders);
    assert_eq!(store.outbox_events(&s).await.unwrap().len(), 2 * orders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_beyond_a_full_queue_wait_for_room_and_are_served() {
    let (store, _dir) = open();
    let held = hold(&store).await;
    let callers = QUEUE_MAX + 100;
    let mut puts = Vec::new();
    for n in 0..callers {
        let store = store.clone();
        puts.push(tokio::spawn(async move {
            store
                .compare_and_set("space", &format!("key-{n}"), None, b"v")
                .await
        }));
    }
    queued(&store, QUEUE_MAX).await;
    assert_eq!(store.writer().waiting(), QUEUE_MAX);
    held.release().await;
    for put in puts {
        assert!(put.await.unwrap().unwrap());
    }
    assert_eq!(store.list("space").await.unwrap().len(), callers);
}
