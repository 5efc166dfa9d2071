//! The raw cost of the stock reservation step: `create_order` (one Lua
//! script on Redis, one write transaction in the embedded file) reserving
//! one unit of one SKU, from many concurrent callers.
//!
//! `cargo bench -p bff --bench reservation`
//!
//! Redis: `BFF_REDIS_URL` (default the local server), in a fresh namespace.
//! Calls per backend: `BENCH_CALLS` (default 20000 on Redis, 2000 on the
//! embedded file, whose every step is a durable commit); concurrency:
//! `BENCH_CONCURRENCY` (default 64). Figures are printed as Markdown;
//! `bff/docs/benchmarks.md` records them.

use std::sync::Arc;
use std::time::Instant;

use bff::domain::{MallId, MemberId, ProductId, TenantId};
use bff::store::checkout::{NewOrder, OrderId, Scope, StockLine};
use bff::store::{EmbeddedStore, RedisStore, SharedCheckoutStore};
use hdrhistogram::Histogram;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run(name: &str, store: SharedCheckoutStore, calls: u64, concurrency: u64) {
    let scope = Scope::new(
        TenantId::parse("bench").unwrap(),
        MallId::parse("mall-1").unwrap(),
    );
    let sku = ProductId::parse("sku-flash-1").unwrap();
    store
        .define_stock(&scope, &sku, calls, 0)
        .await
        .expect("stock defined");
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (store, scope, sku, next) =
                (store.clone(), scope.clone(), sku.clone(), next.clone());
            tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new(3).expect("histogram");
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= calls {
                        break histogram;
                    }
                    let order = NewOrder {
                        id: OrderId::new(&scope.mall, &format!("{n:016x}")).expect("id"),
                        member: MemberId::parse(format!("member-{n}")).expect("member"),
                        lines: vec![StockLine {
                            sku: sku.clone(),
                            quantity: 1,
                        }],
                        due_at_ms: 0,
                        body: "{}".into(),
                    };
                    let t = Instant::now();
                    let created = store
                        .create_order(&scope, &order)
                        .await
                        .expect("store answers");
                    assert!(created.is_ok(), "stock was sized for every call");
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
    let level = store
        .stock(&scope, &sku)
        .await
        .expect("stock")
        .expect("defined");
    assert_eq!(level.available, 0, "every unit reserved exactly once");
    println!(
        "| {name} | {calls} | {concurrency} | {:.0} | {:.2} | {:.2} |",
        calls as f64 / took.as_secs_f64(),
        all.value_at_quantile(0.5) as f64 / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0,
    );
}

#[tokio::main]
async fn main() {
    let concurrency = env_or("BENCH_CONCURRENCY", 64);
    println!("| backend | reservations | concurrency | calls/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    let url = std::env::var("BFF_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let namespace = format!("bff-bench:reservation:{}", std::process::id());
    let redis = RedisStore::connect(&url, &namespace)
        .await
        .expect("Redis answers (set BFF_REDIS_URL)");
    run(
        "Redis (Lua script)",
        Arc::new(redis),
        env_or("BENCH_CALLS", 20_000),
        concurrency,
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded = EmbeddedStore::open(&dir.path().join("bench.redb")).expect("embedded store");
    run(
        "embedded (redb)",
        Arc::new(embedded),
        env_or("BENCH_CALLS_EMBEDDED", 2_000),
        concurrency,
    )
    .await;
}
