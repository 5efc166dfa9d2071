//! The home card under upstream faults.
//!
//! `cargo bench -p bff --bench resilience_load`
//!
//! Starts the app in-process on its embedded demo upstreams (which inject
//! the faults), then drives member cards over HTTP with `BENCH_CONNS`
//! connections (default 8) for `BENCH_SECS` seconds (default 8) per
//! scenario:
//!
//! * fault-free;
//! * 20 % of upstream requests answered `503` (every service);
//! * the member service hanging (latency far above the request budget).
//!
//! For each: cards/s, p50/p99 latency, the share of complete cards (no
//! error) and upstream requests per card, as counted by the demo services.
//! Rate limits are lifted (admission has its own benchmark).
//! Figures are printed as Markdown; `bff/docs/benchmarks.md` records them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bff::config::{FaultSettings, Settings};
use bff::demo::{Service, ServiceControl};
use bff::domain::TenantId;
use bff::startup::Application;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CARD: &str = r#"{
  homeCard(mallId: "mall-1") {
    mall { id name }
    member { id level }
    coupons { id }
    flashSale { id price { final { amount } } store { id } }
    recommended { id price { final { amount } applied { ruleId } } store { id } }
  }
}"#;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Result {
    cards: u64,
    complete: u64,
    p50: Duration,
    p99: Duration,
    per_sec: f64,
    upstream_per_card: f64,
}

async fn drive(
    url: &str,
    tokens: &Arc<Vec<String>>,
    controls: &[ServiceControl],
    conns: usize,
    secs: u64,
) -> Result {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let before: u64 = controls.iter().map(ServiceControl::requests).sum();
    let complete = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (http, url, tokens) = (http.clone(), url.to_owned(), tokens.clone());
        let (complete, next) = (complete.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            while Instant::now() < until {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let token = &tokens[i % tokens.len()];
                let t0 = Instant::now();
                let body: Value = match http
                    .post(format!("{url}/graphql"))
                    .bearer_auth(token)
                    .json(&json!({ "query": CARD }))
                    .send()
                    .await
                {
                    Ok(resp) => resp.json().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                let _ = hist.record(t0.elapsed().as_micros() as u64);
                if body["errors"].is_null() && body["data"]["homeCard"]["mall"].is_object() {
                    complete.fetch_add(1, Ordering::Relaxed);
                }
            }
            hist
        }));
    }
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for task in tasks {
        hist.add(task.await.expect("load task"))
            .expect("same bounds");
    }
    let wall = started.elapsed();
    let after: u64 = controls.iter().map(ServiceControl::requests).sum();
    let cards = hist.len();
    Result {
        cards,
        complete: complete.load(Ordering::Relaxed),
        p50: Duration::from_micros(hist.value_at_quantile(0.5)),
        p99: Duration::from_micros(hist.value_at_quantile(0.99)),
        per_sec: cards as f64 / wall.as_secs_f64(),
        upstream_per_card: (after - before) as f64 / cards.max(1) as f64,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let conns = env_or("BENCH_CONNS", 8usize);
    let secs = env_or("BENCH_SECS", 8u64);
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().expect("address"),
        environment: Some(bff::config::Environment::Development),
        ..Settings::default()
    };
    let data = tempfile::tempdir().expect("temp dir");
    settings.store.data_dir = data.path().to_path_buf();
    settings.log.filter = "error".into();
    // Faults are measured here, not admission: 200 members at 20 cards/s
    // each would cap the load at 4,000 cards/s.
    let limits = &mut settings.admission.limits;
    limits.member_per_sec = 1_000_000.0;
    limits.member_burst = 1_000_000;
    limits.tenant_per_sec = 1_000_000.0;
    limits.tenant_burst = 1_000_000;
    let budget = settings.upstreams.request_budget_ms;
    let app = Application::build(settings).await.expect("app builds");
    let url = format!("http://127.0.0.1:{}", app.port());
    let auth = bff::auth::Authenticator::new(&app.state().settings().auth);
    let tenant = TenantId::parse("demo").expect("tenant");
    let tokens: Arc<Vec<String>> = Arc::new(
        (1..=200)
            .map(|i| {
                auth.issue(
                    &tenant,
                    &format!("member-{i}"),
                    bff::auth::Role::Member,
                    None,
                )
                .expect("token")
            })
            .collect(),
    );
    let controls: Vec<ServiceControl> = [Service::Mall, Service::Member, Service::Product]
        .into_iter()
        .map(|s| app.demo_control(s).expect("demo upstreams"))
        .collect();
    tokio::spawn(app.run_until_stopped());

    // Warm-up: reference caches, rule snapshot, connection pools.
    drive(&url, &tokens, &controls, conns, 2).await;

    println!("| scenario | cards | cards/s | p50 | p99 | complete | upstream requests / card |");
    println!("|---|---|---|---|---|---|---|");
    let none = FaultSettings::default();
    let errors = FaultSettings {
        error_rate: 0.2,
        ..none
    };
    let hang = FaultSettings {
        latency_ms: 60_000,
        ..none
    };
    // Faults of the mall, member and product services.
    let scenarios = [
        ("fault-free", [none, none, none]),
        ("20 % upstream errors", [errors, errors, errors]),
        ("member service hangs", [none, hang, none]),
    ];
    for (name, faults) in scenarios {
        for (c, f) in controls.iter().zip(faults) {
            c.set_faults(f);
        }
        let r = drive(&url, &tokens, &controls, conns, secs).await;
        println!(
            "| {name} | {} | {:.0} | {:.1} ms | {:.1} ms | {:.1} % | {:.2} |",
            r.cards,
            r.per_sec,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            100.0 * r.complete as f64 / r.cards.max(1) as f64,
            r.upstream_per_card,
        );
    }
    println!(
        "\n{conns} connections, {secs} s per scenario, request budget {budget} ms; \
         cards of 200 members, the mall and store lookups served from the reference cache."
    );
}
