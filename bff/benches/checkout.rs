//! End-to-end checkout benchmark: `checkout` mutations through the real
//! HTTP GraphQL endpoint of a running app, on the embedded store and on
//! Redis, with the demo upstreams at 0 ms and 5 ms.
//!
//! `cargo bench -p bff --bench checkout` (add `--profile dev` for a quick,
//! unoptimised run)
//!
//! Per backend and upstream latency it starts the app (the demo upstreams
//! in-process, as `bff serve` on the embedded default does; the app on its
//! own runtime) and measures:
//!
//! * pay-the-bill, closed loop: `BENCH_CONNS` clients (default 32) for
//!   `BENCH_SECS` seconds (default 5): max checkouts/s, p50/p99;
//! * pay-the-bill, open loop at half that rate: p50/p99 at half load;
//! * a flash-sale burst: `BENCH_BUYERS` distinct members (default 1000)
//!   buying `sku-flash-1` (stock 100) through `BENCH_CONNS` clients: answers/s
//!   and p50/p99, then the zero-oversell check: exactly 100 orders, the rest
//!   `SOLD_OUT`, and the stock counters `reserved + sold == 100`.
//!
//! At max load it also reports the CPU time one checkout costs: this
//! process's (app, demo upstreams and load generator together) and, on
//! Redis, the server's (`INFO cpu`; other clients of the server count too).
//!
//! Redis: `BFF_REDIS_URL` (default the local server), a fresh namespace per
//! run. `BENCH_STORES` (`embedded,redis`) and `BENCH_LATENCIES` (`0,5`)
//! narrow the runs, e.g. to profile one of them. Figures are printed as Markdown; `bff/docs/benchmarks.md` records
//! them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bff::auth::{Authenticator, Role};
use bff::config::{Environment, Settings};
use bff::domain::{MallId, ProductId, TenantId};
use bff::startup::{AppState, Application};
use bff::store::checkout::Scope;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHECKOUT: &str = r#"mutation($input: CheckoutInput!) {
  checkout(input: $input) { order { id status } payExternally { amount } }
}"#;

/// Members of the demo data set (size 1).
const MEMBERS: u64 = 1000;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A running app, served on a runtime of its own.
struct Node {
    url: String,
    state: AppState,
    tokens: Vec<String>,
    _data: tempfile::TempDir,
}

fn start(redis: Option<String>, latency_ms: u64) -> Node {
    let data = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().expect("address"),
        environment: Some(Environment::Development),
        ..Settings::default()
    };
    settings.store.data_dir = data.path().to_path_buf();
    settings.demo.faults.latency_ms = latency_ms;
    if let Some(url) = redis {
        settings.redis_url = Some(url);
        settings.store.namespace = format!(
            "bff-bench:checkout:{}:{}",
            std::process::id(),
            rand::random::<u32>()
        );
    }
    let auth = Authenticator::new(&settings.auth);
    let tenant = TenantId::parse("demo").expect("tenant");
    let tokens = (1..=MEMBERS)
        .map(|n| {
            auth.issue(&tenant, &format!("member-{n}"), Role::Member, None)
                .expect("token")
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let app = Application::build(settings).await.expect("app builds");
            let url = format!("http://127.0.0.1:{}", app.port());
            tx.send((url, app.state().clone())).expect("send");
            let _ = app.run_until_stopped().await;
        });
    });
    let (url, state) = rx.recv().expect("app started");
    Node {
        url,
        state,
        tokens,
        _data: data,
    }
}

/// What one checkout answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ordered,
    SoldOut,
    Other,
}

async fn checkout(
    http: &reqwest::Client,
    node: &Node,
    member: u64,
    cart: &Value,
    key: &str,
) -> Answer {
    let token = &node.tokens[(member % MEMBERS) as usize];
    let resp = http
        .post(format!("{}/graphql", node.url))
        .bearer_auth(token)
        .json(&json!({ "query": CHECKOUT, "variables": { "input": { "cart": cart, "idempotencyKey": key } } }))
        .send()
        .await;
    let Ok(resp) = resp else {
        return Answer::Other;
    };
    let Ok(body) = resp.json::<Value>().await else {
        return Answer::Other;
    };
    if body["data"]["checkout"]["order"]["status"] == "AWAITING_PAYMENT" {
        Answer::Ordered
    } else if body["errors"][0]["extensions"]["code"] == "SOLD_OUT" {
        Answer::SoldOut
    } else {
        Answer::Other
    }
}

fn bill(n: u64) -> Value {
    json!({ "mallId": "mall-1", "storeId": "store-1", "billAmount": 10_000 + (n % 5_000) })
}

struct Stats {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    ok: u64,
    errors: u64,
}

fn stats(hist: &Histogram<u64>, ok: u64, errors: u64, wall: Duration) -> Stats {
    Stats {
        rate: (ok + errors) as f64 / wall.as_secs_f64(),
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        ok,
        errors,
    }
}

/// CPU time used by this process so far (every thread).
fn process_cpu() -> Duration {
    // SAFETY: `getrusage` fills the struct it is given and nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time the Redis server used so far (`None` without Redis).
async fn redis_cpu(url: Option<&str>) -> Option<Duration> {
    let client = redis::Client::open(url?).ok()?;
    let mut c = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut c)
        .await
        .ok()?;
    let field = |name: &str| {
        info.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    Some(Duration::from_secs_f64(
        field("used_cpu_user")? + field("used_cpu_sys")?,
    ))
}

/// `conns` clients checking out bills back to back for `secs`.
async fn closed_loop(node: &Arc<Node>, run: &str, conns: usize, secs: u64) -> Stats {
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let (http, node, next, run) =
                (http.clone(), node.clone(), next.clone(), run.to_owned());
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).expect("histogram");
                let (mut ok, mut errors) = (0, 0);
                while Instant::now() < deadline {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    let answer = checkout(&http, &node, n, &bill(n), &format!("{run}-{n}")).await;
                    hist.record(t.elapsed().as_micros() as u64).expect("record");
                    if answer == Answer::Ordered {
                        ok += 1;
                    } else {
                        errors += 1;
                    }
                }
                (hist, ok, errors)
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3).expect("histogram");
    let (mut ok, mut errors) = (0, 0);
    for w in workers {
        let (h, o, e) = w.await.expect("worker");
        all.add(h).expect("merge");
        ok += o;
        errors += e;
    }
    stats(&all, ok, errors, started.elapsed())
}

/// Bills checked out at `rate` per second for `secs`, whatever the
/// latency (open loop: a slow answer does not slow the arrivals).
async fn open_loop(node: &Arc<Node>, run: &str, rate: f64, secs: u64) -> Stats {
    let http = reqwest::Client::new();
    let total = (rate * secs as f64) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let (http, node, run) = (http.clone(), node.clone(), run.to_owned());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let answer = checkout(&http, &node, n, &bill(n), &format!("{run}-{n}")).await;
            (t.elapsed(), answer)
        }));
    }
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (took, answer) = t.await.expect("task");
        hist.record(took.as_micros() as u64).expect("record");
        if answer == Answer::Ordered {
            ok += 1;
        } else {
            errors += 1;
        }
    }
    stats(&hist, ok, errors, started.elapsed())
}

/// `buyers` distinct members buying one unit of `sku-flash-1` through
/// `conns` clients; then the zero-oversell check.
async fn flash_burst(node: &Arc<Node>, buyers: u64, conns: usize) -> (Stats, u64, u64) {
    let http = reqwest::Client::new();
    let cart =
        json!({ "mallId": "mall-1", "items": [{ "productId": "sku-flash-1", "quantity": 1 }] });
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let (http, node, next, cart) = (http.clone(), node.clone(), next.clone(), cart.clone());
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).expect("histogram");
                let (mut ordered, mut sold_out, mut other) = (0, 0, 0);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= buyers {
                        break (hist, ordered, sold_out, other);
                    }
                    let t = Instant::now();
                    match checkout(&http, &node, n, &cart, &format!("flash-{n}")).await {
                        Answer::Ordered => ordered += 1,
                        Answer::SoldOut => sold_out += 1,
                        Answer::Other => other += 1,
                    }
                    hist.record(t.elapsed().as_micros() as u64).expect("record");
                }
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3).expect("histogram");
    let (mut ordered, mut sold_out, mut other) = (0, 0, 0);
    for w in workers {
        let (h, o, s, x) = w.await.expect("worker");
        all.add(h).expect("merge");
        ordered += o;
        sold_out += s;
        other += x;
    }
    let wall = started.elapsed();
    let scope = Scope::new(
        TenantId::parse("demo").expect("tenant"),
        MallId::parse("mall-1").expect("mall"),
    );
    let level = node
        .state
        .checkout()
        .store()
        .stock(&scope, &ProductId::parse("sku-flash-1").expect("sku"))
        .await
        .expect("store answers")
        .expect("stock defined");
    assert_eq!(
        ordered, 100,
        "exactly the stock is sold ({other} other answers)"
    );
    assert_eq!(
        level.reserved + level.sold,
        100,
        "no unit oversold: {level:?}"
    );
    assert_eq!(level.available, 0, "{level:?}");
    (
        stats(&all, ordered + sold_out, other, wall),
        ordered,
        sold_out,
    )
}

#[tokio::main]
async fn main() {
    let conns: usize = env_or("BENCH_CONNS", 32);
    let secs: u64 = env_or("BENCH_SECS", 5);
    let buyers: u64 = env_or("BENCH_BUYERS", 1000);
    let redis = std::env::var("BFF_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    println!(
        "| store | upstreams | scenario | load | checkouts/s | p50 ms | p99 ms | orders | refused | CPU µs/checkout |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let stores = std::env::var("BENCH_STORES").unwrap_or_else(|_| "embedded,redis".into());
    let latencies: Vec<u64> = std::env::var("BENCH_LATENCIES")
        .unwrap_or_else(|_| "0,5".into())
        .split(',')
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let backends = [("embedded", None), ("Redis", Some(redis.clone()))]
        .into_iter()
        .filter(|(name, _)| {
            stores
                .to_ascii_lowercase()
                .contains(&name.to_ascii_lowercase())
        });
    for (store, url) in backends {
        for &latency in &latencies {
            let node = Arc::new(start(url.clone(), latency));
            let run = format!("{store}-{latency}");
            // Warm up connections, rule instances and caches.
            let _ = closed_loop(&node, &format!("warm-{run}"), conns, 1).await;
            let (cpu_before, redis_before) = (process_cpu(), redis_cpu(url.as_deref()).await);
            let max = closed_loop(&node, &format!("max-{run}"), conns, secs).await;
            let per = |d: Duration| d.as_micros() as f64 / (max.ok + max.errors).max(1) as f64;
            let cpu = match (redis_before, redis_cpu(url.as_deref()).await) {
                (Some(a), Some(b)) => format!(
                    "{:.0} + {:.0}",
                    per(process_cpu() - cpu_before),
                    per(b.saturating_sub(a))
                ),
                _ => format!("{:.0}", per(process_cpu() - cpu_before)),
            };
            let half = open_loop(&node, &format!("half-{run}"), max.rate / 2.0, secs).await;
            let (flash, ordered, sold_out) = flash_burst(&node, buyers, conns).await;
            let up = format!("{latency} ms");
            println!(
                "| {store} | {up} | pay the bill | max ({conns} clients) | {:.0} | {:.1} | {:.1} | {} | {} | {cpu} |",
                max.rate, max.p50_ms, max.p99_ms, max.ok, max.errors
            );
            println!(
                "| {store} | {up} | pay the bill | half ({:.0}/s offered) | {:.0} | {:.1} | {:.1} | {} | {} | |",
                max.rate / 2.0,
                half.rate,
                half.p50_ms,
                half.p99_ms,
                half.ok,
                half.errors
            );
            println!(
                "| {store} | {up} | flash sale, {buyers} buyers on stock 100 | {conns} clients | {:.0} | {:.1} | {:.1} | {ordered} | {sold_out} sold out | |",
                flash.rate, flash.p50_ms, flash.p99_ms
            );
        }
    }
    println!("\nZero oversell: every flash run sold exactly 100 units (checked after each run).");
}
