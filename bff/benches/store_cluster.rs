//! Throughput of the shared store's hot operations on one Redis server and
//! on a 3-master Redis Cluster: `get` (one hash field), `compare_and_set`
//! (the CAS script) and the checkout's reservation script
//! (`create_order`), the latter on one scope (one slot, so one node) and
//! spread over many scopes (many slots, so every node); and `admit`, the
//! per-request rate-limit check, there and on the embedded store.
//!
//! `cargo bench -p bff --bench store_cluster --profile dev`
//!
//! One server: `BFF_REDIS_URL` (default the local server). The cluster:
//! `BENCH_REDIS_CLUSTER_URL` (a `redis+cluster://` URL), or else the bench
//! starts its own 3 masters on free ports (it needs `redis-server` and
//! `redis-cli`). Calls per operation: `BENCH_CALLS` (default 20000);
//! concurrency: `BENCH_CONCURRENCY` (default 64). Figures are printed as
//! Markdown; `bff/docs/benchmarks.md` records them.

#[path = "../tests/api/local_redis.rs"]
#[allow(dead_code)]
mod local_redis;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bff::domain::{MallId, MemberId, ProductId, TenantId};
use bff::store::checkout::{CheckoutStore, NewOrder, OrderId, Scope, StockLine};
use bff::store::{EmbeddedStore, RateKey, RedisStore, Store};
use hdrhistogram::Histogram;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `op(n)` for n in 0..calls from `concurrency` workers and prints a
/// row.
async fn measure<F, Fut>(operation: &str, backend: &str, calls: u64, concurrency: u64, op: F)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new(3).expect("histogram");
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= calls {
                        break histogram;
                    }
                    let t = Instant::now();
                    op(n).await;
                    histogram
                        .record(t.elapsed().as_micros() as u64)
                        .expect("record");
                }
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3).expect("histogram");
    for w in workers {
        all.add(w.await.expect("worker")).expect("merge");
    }
    let took = started.elapsed();
    println!(
        "| {operation} | {backend} | {calls} | {concurrency} | {:.0} | {:.2} | {:.2} |",
        calls as f64 / took.as_secs_f64(),
        all.value_at_quantile(0.5) as f64 / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0,
    );
}

fn scope(mall: u64) -> Scope {
    Scope::new(
        TenantId::parse("bench").unwrap(),
        MallId::parse(format!("mall-{mall}")).unwrap(),
    )
}

fn order(scope: &Scope, sku: &ProductId, n: u64) -> NewOrder {
    NewOrder {
        id: OrderId::new(&scope.mall, &format!("{n:016x}")).expect("id"),
        member: MemberId::parse(format!("member-{n}")).expect("member"),
        lines: vec![StockLine {
            sku: sku.clone(),
            quantity: 1,
        }],
        due_at_ms: 0,
        body: "{}".into(),
    }
}

/// A member's and the tenant's rates, as admission checks them (limits far
/// above the load: every call is admitted).
fn rates(n: u64) -> Vec<RateKey> {
    let rate = |key: String| RateKey {
        key,
        interval: Duration::from_micros(1),
        burst: 1_000_000,
    };
    vec![
        rate(format!("member:member-{}", n % 200)),
        rate("tenant".into()),
    ]
}

/// `admit` (the per-request rate-limit check) on `store`.
async fn admit(store: Arc<dyn Store>, backend: &str, calls: u64, concurrency: u64) {
    measure(
        "admit (member and tenant rates)",
        backend,
        calls,
        concurrency,
        move |n| {
            let s = store.clone();
            async move {
                let refused = s.admit("bench", &rates(n), 1).await.expect("admit");
                assert!(refused.is_none(), "limits are far above the load");
            }
        },
    )
    .await;
}

async fn suite(backend: &str, url: &str, calls: u64, concurrency: u64) {
    let namespace = format!(
        "bff-bench:store:{}:{}",
        std::process::id(),
        backend.replace(' ', "-")
    );
    let store = Arc::new(
        RedisStore::connect(url, &namespace)
            .await
            .expect("Redis answers"),
    );

    store
        .compare_and_set("hot", "key", None, &[7u8; 256])
        .await
        .expect("seeded");
    let s = store.clone();
    measure(
        "get (one hash field)",
        backend,
        calls,
        concurrency,
        move |_| {
            let s = s.clone();
            async move {
                s.get("hot", "key").await.expect("get");
            }
        },
    )
    .await;

    // Every call creates its own field, in one space per worker slot of
    // 16 spaces, so the hashes spread over the cluster's slots.
    let s = store.clone();
    measure(
        "compare_and_set (CAS script, 16 spaces)",
        backend,
        calls,
        concurrency,
        move |n| {
            let s = s.clone();
            async move {
                let swapped = s
                    .compare_and_set(&format!("cas-{}", n % 16), &n.to_string(), None, b"v")
                    .await
                    .expect("cas");
                assert!(swapped);
            }
        },
    )
    .await;

    let sku = ProductId::parse("sku-flash-1").unwrap();
    let one = scope(0);
    store
        .define_stock(&one, &sku, calls, 0)
        .await
        .expect("stock");
    let (s, sku1) = (store.clone(), sku.clone());
    measure(
        "create_order (reservation script, 1 scope)",
        backend,
        calls,
        concurrency,
        move |n| {
            let (s, scope, sku) = (s.clone(), one.clone(), sku1.clone());
            async move {
                let created = s
                    .create_order(&scope, &order(&scope, &sku, n))
                    .await
                    .expect("store answers");
                assert!(created.is_ok(), "stock was sized for every call");
            }
        },
    )
    .await;

    admit(store.clone(), backend, calls, concurrency).await;

    const SCOPES: u64 = 16;
    for mall in 1..=SCOPES {
        store
            .define_stock(&scope(mall), &sku, calls, 0)
            .await
            .expect("stock");
    }
    let s = store.clone();
    measure(
        "create_order (reservation script, 16 scopes)",
        backend,
        calls,
        concurrency,
        move |n| {
            let (s, sku) = (s.clone(), sku.clone());
            async move {
                let scope = scope(1 + n % SCOPES);
                let created = s
                    .create_order(&scope, &order(&scope, &sku, n))
                    .await
                    .expect("store answers");
                assert!(created.is_ok(), "stock was sized for every call");
            }
        },
    )
    .await;
}

/// Removes what the bench wrote to the single server (keys matching
/// `pattern`), so runs do not pile up keys in a Redis that tests share.
/// The cluster the bench starts itself goes away with it; keys written to a
/// cluster given by `BENCH_REDIS_CLUSTER_URL` stay.
async fn remove_keys(url: &str, pattern: &str) {
    let client = redis::Client::open(url).expect("Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers");
    let keys = local_redis::keys_matching(&mut conn, pattern).await;
    for batch in keys.chunks(10_000) {
        let _: () = redis::cmd("UNLINK")
            .arg(batch)
            .query_async(&mut conn)
            .await
            .expect("UNLINK");
    }
}

#[tokio::main]
async fn main() {
    let calls = env_or("BENCH_CALLS", 20_000);
    let concurrency = env_or("BENCH_CONCURRENCY", 64);
    let single = std::env::var("BFF_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let (cluster_url, _cluster) = match std::env::var("BENCH_REDIS_CLUSTER_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let cluster = local_redis::LocalRedis::cluster(3);
            (cluster.url(), Some(cluster))
        }
    };
    println!("| operation | backend | calls | concurrency | calls/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|");
    suite("one Redis", &single, calls, concurrency).await;
    // This run's keys only (keys of a script's scope carry the namespace
    // inside a hash tag).
    remove_keys(
        &single,
        &format!("*bff-bench:store:{}:*", std::process::id()),
    )
    .await;
    suite(
        "Redis Cluster (3 masters)",
        &cluster_url,
        calls,
        concurrency,
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(&dir.path().join("bff.redb")).expect("embedded store"));
    admit(embedded, "embedded (in-process)", calls, concurrency).await;
}
