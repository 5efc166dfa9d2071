//! Load benchmark of the home card.
//!
//! `cargo bench -p bff --bench homecard_load`
//!
//! In one run, for upstream latencies of 0 ms and 5 ms, it starts (as
//! separate processes) the demo upstreams (`bff upstreams`), the BFF
//! (`bff serve`) pointed at them, and a hand-written axum handler that makes
//! the same upstream calls with `futures::join!` and returns the same JSON
//! (the ceiling for this stack). It then drives each with the same load:
//!
//! * closed loop, `BENCH_CONNS` connections (default 32) for `BENCH_SECS`
//!   seconds (default 8): max requests/s, p50/p99, server CPU, peak RSS;
//! * at 5 ms: open loop at half of the max rate: p50/p99 at half load;
//! * upstream calls per card, from the BFF's `/metrics`;
//! * the DataLoader batching delay: 0 µs, 100 µs and 1 ms on the card and
//!   on a query whose batching relies on the delay alone.
//!
//! With `BENCH_ONLY=cache` it runs only the two-level cache and admission
//! section instead (Redis at `BFF_REDIS_URL`, default the local server):
//! the card with the cache off, with the reference cache of before, with
//! L1 only and with L1 + L2; upstream calls per card cold and warm; and the
//! cost of rate limiting per request on Redis and on the embedded store.
//! With `BENCH_BEFORE_BFF` (an earlier `bff` binary) it also measures that
//! binary's card and the warm card in alternating rounds; with
//! `BENCH_ONLY=rounds` it runs only those rounds.
//!
//! Figures are written to stdout as Markdown; `bff/docs/benchmarks.md`
//! records them.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use bff::auth::Authenticator;
use bff::config::{AuthSettings, UpstreamsSettings};
use bff::domain::{MallId, TenantId};
use bff::metrics::Metrics;
use bff::product::Product;
use bff::upstream::{BaseUrls, Upstreams};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

// The same allocator as the `bff` binary, so the baseline stays a fair
// ceiling.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CARD: &str = r#"query Card($mallId: ID!) {
  homeCard(mallId: $mallId) {
    mall { id name openingHours { opens closes } }
    member { id level points }
    coupons { id kind }
    flashSale { id name listPrice { amount } price { final { amount } } store { id name } }
    recommended { id name price { list { amount } final { amount } savings { amount } applied { ruleId } } store { id name } }
  }
}"#;

/// Three malls looked up by separate root fields: only the DataLoader's
/// batching window can merge them into one call.
const UNPRIMED: &str =
    r#"{ a: mall(id: "mall-1") { id } b: mall(id: "mall-2") { id } c: mall(id: "mall-3") { id } }"#;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process, killed when dropped (with its data directory, if any).
struct Proc(Child, Option<tempfile::TempDir>);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

fn spawn(cmd: &mut Command) -> Proc {
    Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("process starts"),
        None,
    )
}

async fn wait_up(url: &str) {
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(url).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not come up");
}

/// CPU seconds (user, system) used so far by a process.
fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let secs = |i: usize| {
        // USER_HZ is 100 on Linux.
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    (secs(11), secs(12))
}

/// Busy CPU seconds of the whole machine so far (all cores), from
/// `/proc/stat`.
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return 0.0;
    };
    let v: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle+iowait.
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle) / 100.0
}

/// Peak resident set size of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Stats {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    cpu_pct: f64,
    cpu_us_per_req: f64,
    /// Of `cpu_us_per_req`, the kernel's share (system time).
    sys_us_per_req: f64,
    machine_pct: f64,
}

struct Target {
    /// `GET` the URL (an upstream endpoint) instead of POSTing the query.
    get: bool,
    url: String,
    token: String,
    body: Value,
    pid: u32,
}

impl Target {
    /// A GraphQL endpoint at `base` served by process `pid`.
    fn graphql(base: &str, token: &str, body: Value, pid: u32) -> Arc<Self> {
        Arc::new(Self {
            get: false,
            url: format!("{base}/graphql"),
            token: token.to_owned(),
            body,
            pid,
        })
    }
}

async fn send(http: &reqwest::Client, t: &Target) -> bool {
    let request = if t.get {
        http.get(&t.url)
    } else {
        http.post(&t.url).bearer_auth(&t.token).json(&t.body)
    };
    match request.send().await {
        Ok(resp) if resp.status().is_success() => match resp.bytes().await {
            Ok(b) => !b.windows(9).any(|w| w == b"\"errors\":"),
            Err(_) => false,
        },
        _ => false,
    }
}

/// Closed loop: `conns` clients, each sending the next request when the
/// last one is answered.
async fn closed_loop(t: &Arc<Target>, conns: usize, secs: u64) -> Stats {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(conns)
        .build()
        .unwrap();
    // Warm up connections and caches.
    for _ in 0..conns {
        send(&http, t).await;
    }
    let cpu0 = cpu_split(t.pid);
    let busy0 = machine_busy_secs();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (http, t) = (http.clone(), t.clone());
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).unwrap();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let s = Instant::now();
                    if !send(&http, &t).await {
                        errors += 1;
                    }
                    let _ = hist.record(s.elapsed().as_micros() as u64);
                }
                (hist, errors)
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await.unwrap();
        hist.add(h).unwrap();
        errors += e;
    }
    finish(
        hist,
        errors,
        started.elapsed(),
        cpu_used(t.pid, cpu0),
        machine_busy_secs() - busy0,
    )
}

/// Open loop: requests start at a fixed rate whatever the answers do;
/// latency counts from the scheduled start (no coordinated omission).
async fn open_loop(t: &Arc<Target>, rate: f64, secs: u64) -> Stats {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let cpu0 = cpu_split(t.pid);
    let busy0 = machine_busy_secs();
    let started = Instant::now();
    let total = (rate * secs as f64) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..total {
        let scheduled = started + interval * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let (http, t, tx) = (http.clone(), t.clone(), tx.clone());
        tokio::spawn(async move {
            let ok = send(&http, &t).await;
            let _ = tx.send((scheduled.elapsed(), ok));
        });
    }
    drop(tx);
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let mut errors = 0;
    while let Some((took, ok)) = rx.recv().await {
        let _ = hist.record(took.as_micros() as u64);
        errors += u64::from(!ok);
    }
    finish(
        hist,
        errors,
        started.elapsed(),
        cpu_used(t.pid, cpu0),
        machine_busy_secs() - busy0,
    )
}

/// CPU seconds (user + system, system) a process used since `before`
/// (from [`cpu_split`]).
fn cpu_used(pid: u32, before: (f64, f64)) -> (f64, f64) {
    let (user, system) = cpu_split(pid);
    (user - before.0 + system - before.1, system - before.1)
}

fn finish(
    hist: Histogram<u64>,
    errors: u64,
    wall: Duration,
    (cpu, sys): (f64, f64),
    busy: f64,
) -> Stats {
    let n = hist.len().max(1);
    Stats {
        sys_us_per_req: sys * 1e6 / n as f64,
        rps: n as f64 / wall.as_secs_f64(),
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
        cpu_pct: 100.0 * cpu / wall.as_secs_f64(),
        cpu_us_per_req: cpu * 1e6 / n as f64,
        machine_pct: 100.0 * busy / wall.as_secs_f64(),
    }
}

fn row(name: &str, s: &Stats, rss: f64) -> String {
    format!(
        "| {name} | {:.0} | {:.2} | {:.2} | {:.0}% | {:.0} | {:.0}% | {:.1} | {} |",
        s.rps, s.p50_ms, s.p99_ms, s.cpu_pct, s.cpu_us_per_req, s.machine_pct, rss, s.errors
    )
}

/// Upstream calls the BFF made so far, per endpoint, from `/metrics`.
async fn upstream_calls(bff: &str) -> Vec<(String, f64)> {
    let text = reqwest::get(format!("{bff}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out: Vec<(String, f64)> = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("bff_upstream_calls_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let endpoint = labels
            .split("endpoint=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?")
            .to_owned();
        let value: f64 = value.parse().unwrap_or(0.0);
        match out.iter_mut().find(|(e, _)| *e == endpoint) {
            Some((_, v)) => *v += value,
            None => out.push((endpoint, value)),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A BFF process; `rules` installs the demo promotion deployments (the
/// hand-written baseline applies none, so comparisons with it run without).
fn start_bff(upstreams: &str, delay_us: u64, cache: bool, rules: bool) -> (Proc, String) {
    let mode = if cache { Cache::Reference } else { Cache::Off };
    start_bff_with(upstreams, delay_us, mode, rules, &[])
}

/// What a benchmarked BFF caches.
#[derive(Clone, Copy, PartialEq)]
enum Cache {
    /// Nothing.
    Off,
    /// Malls and stores in-process only (the card's cache before the
    /// two-level cache).
    Reference,
    /// Every kind, in-process only (L2 off).
    L1,
    /// Every kind, in-process and in Redis.
    L1L2,
}

fn start_bff_with(
    upstreams: &str,
    delay_us: u64,
    cache: Cache,
    rules: bool,
    extra: &[(&str, String)],
) -> (Proc, String) {
    let port = free_port();
    let data = tempfile::tempdir().expect("temp dir");
    let ttl = |on: bool| if on { "60" } else { "0" };
    let reference = cache != Cache::Off;
    let catalogue = matches!(cache, Cache::L1 | Cache::L1L2);
    let mut command = Command::new(env!("CARGO_BIN_EXE_bff"));
    command
        .env("BFF_CACHE__MALL_TTL_SECS", ttl(reference))
        .env("BFF_CACHE__STORE_TTL_SECS", ttl(reference))
        .env("BFF_CACHE__PRODUCT_TTL_SECS", ttl(catalogue))
        .env("BFF_CACHE__LISTING_TTL_SECS", ttl(catalogue))
        .env("BFF_CACHE__FLASH_SALE_TTL_SECS", ttl(catalogue))
        .env("BFF_CACHE__L2", (cache == Cache::L1L2).to_string())
        .env("BFF_CACHE__PREWARM_INTERVAL_SECS", "0")
        // One member sends every request: rates off unless measured.
        .env("BFF_ADMISSION__ENABLED", "false");
    for (key, value) in extra {
        command.env(key, value);
    }
    let mut proc = spawn(
        serving(&mut command, port, upstreams, &data)
            .env("BFF_ENVIRONMENT", "development")
            .env("BFF_GRAPHQL__DATALOADER_DELAY_US", delay_us.to_string())
            .env("BFF_RULES__DEMO_DEPLOYMENTS", rules.to_string()),
    );
    proc.1 = Some(data);
    (proc, format!("http://127.0.0.1:{port}"))
}

/// `bff serve` on `port` against the demo `upstreams`, with the settings
/// every version of the binary knows.
fn serving<'c>(
    command: &'c mut Command,
    port: u16,
    upstreams: &str,
    data: &tempfile::TempDir,
) -> &'c mut Command {
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("BFF_LOG__FILTER", "warn")
        .env("BFF_UPSTREAMS__MALL__BASE_URL", format!("{upstreams}/mall"))
        .env(
            "BFF_UPSTREAMS__MEMBER__BASE_URL",
            format!("{upstreams}/member"),
        )
        .env(
            "BFF_UPSTREAMS__PRODUCT__BASE_URL",
            format!("{upstreams}/product"),
        )
        .env("BFF_STORE__DATA_DIR", data.path())
}

/// The BFF binary of an earlier commit, with the settings it knew (its
/// settings refuse unknown keys): malls and stores cached in-process, the
/// demo rules off, like the `Cache::Reference` row.
fn start_before(bin: &str, upstreams: &str) -> (Proc, String) {
    let port = free_port();
    let data = tempfile::tempdir().expect("temp dir");
    let mut proc = spawn(
        serving(&mut Command::new(bin), port, upstreams, &data)
            .env("BFF_CACHE__REFERENCE_TTL_SECS", "60")
            .env("BFF_GRAPHQL__DATALOADER_DELAY_US", "0")
            .env("BFF_RULES__DEMO_DEPLOYMENTS", "false"),
    );
    proc.1 = Some(data);
    (proc, format!("http://127.0.0.1:{port}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--baseline") {
        // Re-executed as the hand-written baseline server.
        let listen = args[i + 1].clone();
        let upstreams = args[i + 2].clone();
        return tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(baseline::serve(listen, upstreams));
    }
    // `cargo bench` passes `--bench`; anything else is ignored.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let secs: u64 = env_or("BENCH_SECS", 8);
    let conns: usize = env_or("BENCH_CONNS", 32);
    let token = Authenticator::new(&AuthSettings::default())
        .issue(
            &TenantId::parse("demo").unwrap(),
            "member-1",
            bff::auth::Role::Member,
            None,
        )
        .unwrap();
    let card_body = json!({ "query": CARD, "variables": { "mallId": "mall-1" } });

    println!("# Home card load benchmark\n");
    println!(
        "{conns} connections, {secs} s per run, {} cores.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if std::env::var("BENCH_ONLY").as_deref() == Ok("cache") {
        cache_and_admission(&token, &card_body, secs, conns).await;
        return;
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("rounds") {
        let bin = std::env::var("BENCH_BEFORE_BFF")
            .expect("BENCH_ONLY=rounds needs BENCH_BEFORE_BFF (an earlier bff binary)");
        let (upstreams, up_url) = demo_upstreams().await;
        let redis =
            std::env::var("BFF_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let extra = vec![
            ("BFF_REDIS_URL", redis),
            (
                "BFF_STORE__NAMESPACE",
                format!("bench-rounds-{}-{}", std::process::id(), free_port()),
            ),
        ];
        alternating_rounds(&bin, &up_url, &token, &card_body, &extra).await;
        drop(upstreams);
        return;
    }

    for latency in [0u64, 5] {
        let up_port = free_port();
        let upstreams = spawn(Command::new(env!("CARGO_BIN_EXE_bff")).args([
            "upstreams",
            "--listen",
            &format!("127.0.0.1:{up_port}"),
            "--latency-ms",
            &latency.to_string(),
        ]));
        let up_url = format!("http://127.0.0.1:{up_port}");
        wait_up(&format!("{up_url}/mall/healthz")).await;

        let (bff, bff_url) = start_bff(&up_url, 0, true, false);
        wait_up(&format!("{bff_url}/healthz")).await;
        let base_port = free_port();
        let base = spawn(Command::new(std::env::current_exe().unwrap()).args([
            "--baseline",
            &format!("127.0.0.1:{base_port}"),
            &up_url,
        ]));
        let base_url = format!("http://127.0.0.1:{base_port}");
        wait_up(&format!("{base_url}/healthz")).await;

        let gql = Target::graphql(&bff_url, &token, card_body.clone(), bff.pid());
        let hand = Target::graphql(&base_url, &token, card_body.clone(), base.pid());

        // Same JSON from both, and the BFF's calls for one card.
        let http = reqwest::Client::new();
        let fetch = |t: Arc<Target>| {
            let http = http.clone();
            async move {
                http.post(&t.url)
                    .bearer_auth(&t.token)
                    .json(&t.body)
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            }
        };
        let before = upstream_calls(&bff_url).await;
        let g = fetch(gql.clone()).await;
        let after = upstream_calls(&bff_url).await;
        let h = fetch(hand.clone()).await;
        assert_eq!(g, h, "the baseline must return the same JSON as the BFF");

        println!("## Upstream latency {latency} ms\n");
        if latency == 0 {
            println!("Upstream calls for one card (BFF):\n");
            for (endpoint, n) in &after {
                let was = before
                    .iter()
                    .find(|(e, _)| e == endpoint)
                    .map_or(0.0, |(_, v)| *v);
                if n - was > 0.0 {
                    println!("* `{endpoint}`: {}", n - was);
                }
            }
            println!();
        }

        println!(
            "| target | req/s | p50 ms | p99 ms | server CPU | server CPU µs/req | machine CPU (of 200%) | peak RSS MiB | errors |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        let g_max = closed_loop(&gql, conns, secs).await;
        let h_max = closed_loop(&hand, conns, secs).await;
        println!("{}", row("GraphQL BFF, max", &g_max, peak_rss_mib(gql.pid)));
        println!(
            "{}",
            row("hand-written, max", &h_max, peak_rss_mib(hand.pid))
        );
        let mut half = None;
        if latency > 0 {
            for (label, share) in [("half", 2.0), ("quarter", 4.0)] {
                let g = open_loop(&gql, g_max.rps / share, secs).await;
                let h = open_loop(&hand, h_max.rps / share, secs).await;
                let name =
                    |who: &str, rps: f64| format!("{who}, {label} load ({:.0}/s)", rps / share);
                println!(
                    "{}",
                    row(&name("GraphQL BFF", g_max.rps), &g, peak_rss_mib(gql.pid))
                );
                println!(
                    "{}",
                    row(&name("hand-written", h_max.rps), &h, peak_rss_mib(hand.pid))
                );
                if half.is_none() {
                    half = Some(g);
                }
            }
            // The floor of this harness: one upstream call (the card's
            // slowest kind, the listing) straight from the load generator,
            // at the BFF's half-load rate.
            let floor = Arc::new(Target {
                get: true,
                url: format!("{up_url}/product/tenants/demo/malls/mall-1/products?limit=10"),
                token: String::new(),
                body: Value::Null,
                pid: upstreams.pid(),
            });
            let f = open_loop(&floor, g_max.rps / 2.0, secs).await;
            println!(
                "{}",
                row(
                    &format!(
                        "floor: one upstream call, direct ({:.0}/s; CPU = upstream process)",
                        g_max.rps / 2.0
                    ),
                    &f,
                    peak_rss_mib(upstreams.pid())
                )
            );
        }
        println!();
        println!(
            "GraphQL / hand-written throughput: **{:.0}%** (CPU per request: {:.2}×)",
            100.0 * g_max.rps / h_max.rps,
            g_max.cpu_us_per_req / h_max.cpu_us_per_req
        );
        if let Some(h) = half {
            println!(
                "GraphQL p99 at half load: **{:.2} ms** (target ≤ {} ms)",
                h.p99_ms,
                5 + latency
            );
        }
        println!();
        drop((bff, base, upstreams));
    }

    // Promotion rules on vs off: the same card, personal prices computed by
    // the five demo deployments (one evaluation per item-stage rule per
    // card) or not at all.
    {
        let up_port = free_port();
        let upstreams = spawn(Command::new(env!("CARGO_BIN_EXE_bff")).args([
            "upstreams",
            "--listen",
            &format!("127.0.0.1:{up_port}"),
        ]));
        let up_url = format!("http://127.0.0.1:{up_port}");
        wait_up(&format!("{up_url}/mall/healthz")).await;
        let (off, off_url) = start_bff(&up_url, 0, true, false);
        let (on, on_url) = start_bff(&up_url, 0, true, true);
        wait_up(&format!("{off_url}/healthz")).await;
        wait_up(&format!("{on_url}/healthz")).await;
        let t_off = Target::graphql(&off_url, &token, card_body.clone(), off.pid());
        let t_on = Target::graphql(&on_url, &token, card_body.clone(), on.pid());
        // Rules really apply on one and not on the other.
        let http = reqwest::Client::new();
        let applied = |url: String| {
            let http = http.clone();
            let token = token.clone();
            let body = card_body.clone();
            async move {
                let v: Value = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                v["data"]["homeCard"]["recommended"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| !p["price"]["applied"].as_array().unwrap().is_empty())
                    .count()
            }
        };
        assert_eq!(applied(t_off.url.clone()).await, 0);
        assert!(applied(t_on.url.clone()).await > 0, "rules apply");
        println!("## Promotion rules on vs off (upstream latency 0 ms)\n");
        println!(
            "| target | req/s | p50 ms | p99 ms | server CPU | server CPU µs/req | machine CPU (of 200%) | peak RSS MiB | errors |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        let r_off = closed_loop(&t_off, conns, secs).await;
        let r_on = closed_loop(&t_on, conns, secs).await;
        println!(
            "{}",
            row("card, rules off", &r_off, peak_rss_mib(t_off.pid))
        );
        println!(
            "{}",
            row("card, 5 demo rules on", &r_on, peak_rss_mib(t_on.pid))
        );
        println!();
        println!(
            "Rules on / off throughput: **{:.0}%** (target ≥ 80 %)\n",
            100.0 * r_on.rps / r_off.rps
        );
        drop((off, on, upstreams));
    }

    // The DataLoader's batching window.
    let up_port = free_port();
    let upstreams = spawn(Command::new(env!("CARGO_BIN_EXE_bff")).args([
        "upstreams",
        "--listen",
        &format!("127.0.0.1:{up_port}"),
    ]));
    let up_url = format!("http://127.0.0.1:{up_port}");
    wait_up(&format!("{up_url}/mall/healthz")).await;
    println!("## DataLoader batching delay (upstream latency 0 ms, reference cache off)\n");
    println!(
        "| delay | card req/s | card p50 ms | card p99 ms | 3-mall query req/s | `malls.batch` calls per 3-mall query |"
    );
    println!("|---|---|---|---|---|---|");
    for delay_us in [0u64, 100, 1000] {
        // Reference cache off: the 3-mall query must reach the loader.
        let (bff, bff_url) = start_bff(&up_url, delay_us, false, false);
        wait_up(&format!("{bff_url}/healthz")).await;
        let card = Target::graphql(&bff_url, &token, card_body.clone(), bff.pid());
        let card_stats = closed_loop(&card, conns, secs / 2).await;
        let unprimed = Target::graphql(&bff_url, &token, json!({ "query": UNPRIMED }), bff.pid());
        let calls0 = upstream_calls(&bff_url).await;
        let u = closed_loop(&unprimed, conns, secs / 2).await;
        let calls1 = upstream_calls(&bff_url).await;
        let batch = |c: &Vec<(String, f64)>| {
            c.iter()
                .find(|(e, _)| e == "malls.batch")
                .map_or(0.0, |(_, v)| *v)
        };
        // `closed_loop` also sends one warm-up request per connection.
        let requests = u.rps * (secs / 2) as f64 + conns as f64;
        println!(
            "| {} µs | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} |",
            delay_us,
            card_stats.rps,
            card_stats.p50_ms,
            card_stats.p99_ms,
            u.rps,
            (batch(&calls1) - batch(&calls0)) / requests
        );
        drop(bff);
    }
    drop(upstreams);
}

/// Upstream calls per card so far: every endpoint of `bff`'s `/metrics`.
async fn total_calls(bff: &str) -> f64 {
    upstream_calls(bff).await.iter().map(|(_, n)| n).sum()
}

/// Calls for personal data (the member and their coupons), never cached.
async fn personal_calls(bff: &str) -> f64 {
    upstream_calls(bff)
        .await
        .iter()
        .filter(|(endpoint, _)| endpoint == "members.batch" || endpoint == "coupons.list")
        .map(|(_, n)| n)
        .sum()
}

/// The two-level cache and admission control: the card with the cache off,
/// with today's reference cache (malls and stores in-process), with every
/// kind in L1 only and in L1 + L2 (Redis); upstream calls per card cold and
/// warm; the same card with the rate limiter checking every request on
/// Redis and on the embedded store.
/// The demo upstreams (`bff upstreams`) with `BENCH_LATENCY_MS` (default
/// 5) of latency, and their base URL.
async fn demo_upstreams() -> (Proc, String) {
    let latency = env_or("BENCH_LATENCY_MS", 5u64);
    let up_port = free_port();
    let upstreams = spawn(Command::new(env!("CARGO_BIN_EXE_bff")).args([
        "upstreams",
        "--listen",
        &format!("127.0.0.1:{up_port}"),
        "--latency-ms",
        &latency.to_string(),
    ]));
    let up_url = format!("http://127.0.0.1:{up_port}");
    wait_up(&format!("{up_url}/mall/healthz")).await;
    (upstreams, up_url)
}

async fn cache_and_admission(token: &str, card_body: &Value, secs: u64, conns: usize) {
    let redis = std::env::var("BFF_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let latency = env_or("BENCH_LATENCY_MS", 5u64);
    let (upstreams, up_url) = demo_upstreams().await;
    println!("## Two-level cache (member card, upstream latency {latency} ms)\n");
    println!(
        "| target | req/s | p50 ms | p99 ms | server CPU | server CPU µs/req | machine CPU (of 200%) | peak RSS MiB | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut calls = Vec::new();
    let mut rps = Vec::new();
    let namespace = |what: &str| format!("bench-{what}-{}-{}", std::process::id(), free_port());
    // The card as it was before the read-path work (its binary built from
    // that commit, see the benchmark doc), on the same upstreams.
    let before = match std::env::var("BENCH_BEFORE_BFF") {
        Ok(bin) => {
            let (bff, url) = start_before(&bin, &up_url);
            wait_up(&format!("{url}/healthz")).await;
            let target = Target::graphql(&url, token, card_body.clone(), bff.pid());
            assert!(
                send(&reqwest::Client::new(), &target).await,
                "the card renders on the earlier binary"
            );
            let stats = closed_loop(&target, conns, secs).await;
            println!(
                "{}",
                row(
                    "the card before (earlier binary, malls and stores in-process)",
                    &stats,
                    peak_rss_mib(target.pid)
                )
            );
            Some(stats.rps)
        }
        Err(_) => None,
    };
    for (name, mode) in [
        ("cache off", Cache::Off),
        ("reference cache (malls, stores; before)", Cache::Reference),
        ("two-level cache, L2 off (L1 only)", Cache::L1),
        ("two-level cache, L1 + L2 on Redis", Cache::L1L2),
    ] {
        let extra = vec![
            ("BFF_REDIS_URL", redis.clone()),
            ("BFF_STORE__NAMESPACE", namespace("cache")),
        ];
        let (bff, url) = start_bff_with(&up_url, 0, mode, false, &extra);
        wait_up(&format!("{url}/healthz")).await;
        let target = Target::graphql(&url, token, card_body.clone(), bff.pid());
        let http = reqwest::Client::new();
        let c0 = total_calls(&url).await;
        assert!(send(&http, &target).await, "the card renders");
        let cold = total_calls(&url).await - c0;
        let (c1, p1) = (total_calls(&url).await, personal_calls(&url).await);
        let stats = closed_loop(&target, conns, secs).await;
        let cards = stats.rps * secs as f64 + conns as f64;
        let warm = (total_calls(&url).await - c1) / cards;
        let personal = (personal_calls(&url).await - p1) / cards;
        println!("{}", row(name, &stats, peak_rss_mib(target.pid)));
        calls.push((name, cold, warm, personal));
        rps.push(stats.rps);
        drop(bff);
    }
    println!();
    println!(
        "| target | upstream calls, first (cold) card | upstream calls per warm card | of which the member service (personal, never cached) | of which cached kinds |"
    );
    println!("|---|---|---|---|---|");
    for (name, cold, warm, personal) in &calls {
        println!(
            "| {name} | {cold:.0} | {warm:.2} | {personal:.2} | {:.2} |",
            (warm - personal).max(0.0)
        );
    }
    println!();
    println!(
        "Warm card throughput, two-level cache (L1 + L2) / reference cache: **{:.2}×**; / cache off: **{:.2}×**\n",
        rps[3] / rps[1],
        rps[3] / rps[0]
    );
    if let Some(before) = before {
        println!(
            "Warm card throughput, two-level cache (L1 + L2) / the card before (earlier binary): **{:.2}×**\n",
            rps[3] / before
        );
    }
    if let Ok(bin) = std::env::var("BENCH_BEFORE_BFF") {
        let extra = vec![
            ("BFF_REDIS_URL", redis.clone()),
            ("BFF_STORE__NAMESPACE", namespace("rounds")),
        ];
        alternating_rounds(&bin, &up_url, token, card_body, &extra).await;
    }

    // A node whose L1 is empty but whose L2 is warm: what a new or restarted
    // node pays for its first card.
    {
        let ns = namespace("l2");
        let extra = vec![
            ("BFF_REDIS_URL", redis.clone()),
            ("BFF_STORE__NAMESPACE", ns),
        ];
        let (first, first_url) = start_bff_with(&up_url, 0, Cache::L1L2, false, &extra);
        wait_up(&format!("{first_url}/healthz")).await;
        let http = reqwest::Client::new();
        let t = Target::graphql(&first_url, token, card_body.clone(), first.pid());
        assert!(send(&http, &t).await);
        let (second, second_url) = start_bff_with(&up_url, 0, Cache::L1L2, false, &extra);
        wait_up(&format!("{second_url}/healthz")).await;
        let t2 = Target::graphql(&second_url, token, card_body.clone(), second.pid());
        let c0 = total_calls(&second_url).await;
        assert!(send(&http, &t2).await);
        println!(
            "First card on a second node with L2 warm: **{:.0}** upstream calls (the member's, with coupons embedded; every cached kind from L2).\n",
            total_calls(&second_url).await - c0
        );
        drop((first, second));
    }

    println!("## Rate limiting: cost per request (member card, two-level cache warm)\n");
    println!(
        "| target | req/s | p50 ms | p99 ms | server CPU | server CPU µs/req | machine CPU (of 200%) | peak RSS MiB | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // Limits far above the load: every request is checked, none refused.
    let high = |store: Option<&str>| {
        let mut extra = vec![
            (
                "BFF_ADMISSION__LIMITS__MEMBER_PER_SEC",
                "1000000".to_owned(),
            ),
            ("BFF_ADMISSION__LIMITS__MEMBER_BURST", "1000000".to_owned()),
            (
                "BFF_ADMISSION__LIMITS__TENANT_PER_SEC",
                "1000000".to_owned(),
            ),
            ("BFF_ADMISSION__LIMITS__TENANT_BURST", "1000000".to_owned()),
            ("BFF_STORE__NAMESPACE", namespace("rate")),
        ];
        if let Some(url) = store {
            extra.push(("BFF_REDIS_URL", url.to_owned()));
        }
        extra
    };
    // All four run at once and are measured in rotating rounds, so each
    // on/off pair is compared under the same conditions.
    let configs = [
        ("Redis store, rate limits off", Some(redis.as_str()), false),
        (
            "Redis store, rate limits on (one script call per request)",
            Some(redis.as_str()),
            true,
        ),
        ("embedded store, rate limits off", None, false),
        (
            "embedded store, rate limits on (governor, in-process)",
            None,
            true,
        ),
    ];
    let mut nodes = Vec::new();
    let mut targets = Vec::new();
    for (_, store, on) in configs {
        let mut extra = high(store);
        // Set after `start_bff_with`'s own default, so it wins.
        extra.push(("BFF_ADMISSION__ENABLED", on.to_string()));
        let mode = if store.is_some() {
            Cache::L1L2
        } else {
            Cache::L1
        };
        let (bff, url2) = start_bff_with(&up_url, 0, mode, false, &extra);
        wait_up(&format!("{url2}/healthz")).await;
        targets.push(Target::graphql(&url2, token, card_body.clone(), bff.pid()));
        nodes.push(bff);
    }
    let rounds: usize = env_or("BENCH_ROUNDS", 6usize).max(1);
    let round_secs: u64 = env_or("BENCH_ROUND_SECS", 4);
    let measured = rounds_of(&targets, conns, rounds, round_secs).await;
    for ((name, _, _), (stats, target)) in configs.iter().zip(measured.iter().zip(&targets)) {
        println!(
            "{}",
            row(name, &median_stats(stats), peak_rss_mib(target.pid))
        );
    }
    // The cost of the limits: the median over rounds of (on − off).
    let added = |on: usize, off: usize, field: fn(&Stats) -> f64| {
        median(
            measured[on]
                .iter()
                .zip(&measured[off])
                .map(|(a, b)| field(a) - field(b))
                .collect(),
        )
    };
    println!();
    println!(
        "Medians of {rounds} rotating rounds of {round_secs} s. Rate limiting adds **{:.0} µs** of BFF CPU and **{:.2} ms** of p50 per request on Redis, **{:.0} µs** / **{:.2} ms** on the embedded store (median of each round's on − off).\n",
        added(1, 0, |s| s.cpu_us_per_req),
        added(1, 0, |s| s.p50_ms),
        added(3, 2, |s| s.cpu_us_per_req),
        added(3, 2, |s| s.p50_ms),
    );
    drop(nodes);
    drop(upstreams);
}

/// Measures every target in each of `rounds` rounds of `secs` seconds,
/// the order rotating from round to round (on a shared machine whose speed
/// drifts, targets measured in the same round compare under the same
/// conditions). Per target, its figures in round order.
async fn rounds_of(
    targets: &[Arc<Target>],
    conns: usize,
    rounds: usize,
    secs: u64,
) -> Vec<Vec<Stats>> {
    let n = targets.len();
    let mut out: Vec<Vec<Stats>> = (0..n).map(|_| Vec::with_capacity(rounds)).collect();
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            out[i].push(closed_loop(&targets[i], conns, secs).await);
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Each figure's median over `rounds`.
fn median_stats(rounds: &[Stats]) -> Stats {
    let m = |f: fn(&Stats) -> f64| median(rounds.iter().map(f).collect());
    Stats {
        rps: m(|s| s.rps),
        p50_ms: m(|s| s.p50_ms),
        p99_ms: m(|s| s.p99_ms),
        errors: rounds.iter().map(|s| s.errors).sum(),
        cpu_pct: m(|s| s.cpu_pct),
        cpu_us_per_req: m(|s| s.cpu_us_per_req),
        sys_us_per_req: m(|s| s.sys_us_per_req),
        machine_pct: m(|s| s.machine_pct),
    }
}

/// The card before (`before_bin`) and the warm card (L1 + L2) both running,
/// measured in alternating short rounds (`BENCH_ROUNDS`, default 6, of
/// `BENCH_ROUND_SECS`, default 4) at each connection count of
/// `BENCH_ROUND_CONNS` (default `32,64,128,256`): on a shared machine whose
/// speed drifts by a quarter between minutes, each round compares the two
/// under the same conditions. Which of the two goes first alternates from
/// round to round. Throughput is each binary's best median over the
/// connection counts (a card that is still latency-bound at one count is
/// not at its maximum there).
async fn alternating_rounds(
    before_bin: &str,
    up_url: &str,
    token: &str,
    card_body: &Value,
    extra: &[(&str, String)],
) {
    let rounds: usize = env_or("BENCH_ROUNDS", 6usize).max(1);
    let round_secs: u64 = env_or("BENCH_ROUND_SECS", 4);
    let conn_counts: Vec<usize> = std::env::var("BENCH_ROUND_CONNS")
        .unwrap_or_else(|_| "32,64,128,256".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .filter(|&c| c > 0)
        .collect();
    let (old, old_url) = start_before(before_bin, up_url);
    let (new, new_url) = start_bff_with(up_url, 0, Cache::L1L2, false, extra);
    wait_up(&format!("{old_url}/healthz")).await;
    wait_up(&format!("{new_url}/healthz")).await;
    let targets = [
        Target::graphql(&old_url, token, card_body.clone(), old.pid()),
        Target::graphql(&new_url, token, card_body.clone(), new.pid()),
    ];
    println!(
        "### The card before and the warm card in alternating rounds ({rounds} × {round_secs} s each)\n"
    );
    println!(
        "| connections | round | the card before req/s | its CPU µs/req (of which system) | machine CPU | warm card L1 + L2 req/s | its CPU µs/req (of which system) | machine CPU | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // Per connection count: the median req/s of each binary and the
    // rounds' ratios.
    let mut summary = Vec::new();
    for &conns in &conn_counts {
        let measured = rounds_of(&targets, conns, rounds, round_secs).await;
        let (mut before_rps, mut warm_rps, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for (round, (b, w)) in measured[0].iter().zip(&measured[1]).enumerate() {
            let ratio = w.rps / b.rps;
            println!(
                "| {conns} | {} | {:.0} | {:.0} ({:.0}) | {:.0}% | {:.0} | {:.0} ({:.0}) | {:.0}% | {ratio:.2}× |",
                round + 1,
                b.rps,
                b.cpu_us_per_req,
                b.sys_us_per_req,
                b.machine_pct,
                w.rps,
                w.cpu_us_per_req,
                w.sys_us_per_req,
                w.machine_pct,
            );
            before_rps.push(b.rps);
            warm_rps.push(w.rps);
            ratios.push(ratio);
        }
        let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        summary.push((
            conns,
            median(before_rps),
            median(warm_rps),
            median(ratios),
            lowest,
        ));
    }
    println!();
    println!(
        "| connections | the card before, median req/s | warm card, median req/s | median ratio of the rounds | lowest ratio |"
    );
    println!("|---|---|---|---|---|");
    for (conns, b, w, ratio, lowest) in &summary {
        println!("| {conns} | {b:.0} | {w:.0} | {ratio:.2}× | {lowest:.2}× |");
    }
    let best = |pick: fn(&(usize, f64, f64, f64, f64)) -> f64| {
        summary
            .iter()
            .map(|s| (s.0, pick(s)))
            .fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a })
    };
    let (b_conns, b_rps) = best(|s| s.1);
    let (w_conns, w_rps) = best(|s| s.2);
    println!();
    println!(
        "Throughput, each at its best connection count: the card before {b_rps:.0} req/s ({b_conns} connections), the warm card {w_rps:.0} req/s ({w_conns} connections): **{:.2}×**\n",
        w_rps / b_rps.max(f64::MIN_POSITIVE)
    );
    drop((old, new));
}

/// The hand-written ceiling: one axum handler, the same upstream clients,
/// the same calls with `futures::join!`, the same JSON.
mod baseline {
    use super::*;

    struct App {
        upstreams: Upstreams,
        auth: Authenticator,
    }

    pub async fn serve(listen: String, upstreams: String) {
        let url = |p: &str| format!("{upstreams}/{p}").parse().unwrap();
        let urls = BaseUrls {
            mall: url("mall"),
            member: url("member"),
            product: url("product"),
        };
        let app = Arc::new(App {
            upstreams: Upstreams::new(&UpstreamsSettings::default(), &urls, Metrics::new())
                .unwrap(),
            auth: Authenticator::new(&AuthSettings::default()),
        });
        let router = Router::new()
            .route("/graphql", post(card))
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .with_state(app);
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        axum::serve(listener, router).await.unwrap();
    }

    fn product_json(
        p: &Product,
        stores: &std::collections::HashMap<bff::domain::StoreId, bff::mall::Store>,
        full_price: bool,
    ) -> Value {
        let store = stores
            .get(&p.store_id)
            .map(|s| json!({ "id": s.id.as_str(), "name": s.name }));
        let price = if full_price {
            json!({ "list": { "amount": p.list_price.minor() }, "final": { "amount": p.list_price.minor() }, "savings": { "amount": 0 }, "applied": [] })
        } else {
            json!({ "final": { "amount": p.list_price.minor() } })
        };
        if full_price {
            json!({ "id": p.id.as_str(), "name": p.name, "price": price, "store": store })
        } else {
            json!({ "id": p.id.as_str(), "name": p.name, "listPrice": { "amount": p.list_price.minor() }, "price": price, "store": store })
        }
    }

    async fn card(
        State(app): State<Arc<App>>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::Json<Value> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let principal = app.auth.verify(token).unwrap();
        let request: Value = serde_json::from_slice(&body).unwrap();
        let mall =
            MallId::parse(request["variables"]["mallId"].as_str().unwrap_or_default()).unwrap();
        let tenant = principal.tenant().clone();
        let member = principal.member().unwrap().clone();
        let u = &app.upstreams;

        let (malls, members, coupons, (flash, listing, stores)) = futures::join!(
            u.mall.malls_by_ids(&tenant, std::slice::from_ref(&mall)),
            u.member
                .members_by_ids(&tenant, std::slice::from_ref(&member)),
            u.member.coupons(&tenant, &member),
            async {
                let (flash, listing) = futures::join!(
                    u.product.flash_sales(&tenant, &mall),
                    u.product.listing(&tenant, &mall, 10, None)
                );
                let flash = flash.unwrap().unwrap_or_default();
                let listing: Vec<Product> = listing
                    .unwrap()
                    .map(|p| p.items.into_iter().map(|(_, p)| p).collect())
                    .unwrap_or_default();
                let mut ids: Vec<_> = flash
                    .iter()
                    .chain(&listing)
                    .map(|p| p.store_id.clone())
                    .collect();
                ids.sort();
                ids.dedup();
                let stores = u.mall.stores_by_ids(&tenant, &ids).await.unwrap();
                (flash, listing, stores)
            }
        );
        let m = malls.unwrap().remove(&mall).unwrap();
        let me = members.unwrap().remove(&member);
        let coupons = coupons.unwrap().unwrap_or_default();
        axum::Json(json!({ "data": { "homeCard": {
            "mall": { "id": m.id.as_str(), "name": m.name, "openingHours": { "opens": m.opens, "closes": m.closes } },
            "member": me.map(|me| json!({ "id": me.id.as_str(), "level": me.level, "points": me.points })),
            "coupons": coupons.iter().map(|c| json!({ "id": c.id.as_str(), "kind": match c.kind { bff::member::CouponKind::Cash => "CASH", bff::member::CouponKind::PercentOff => "PERCENT_OFF" } })).collect::<Vec<_>>(),
            "flashSale": flash.iter().map(|p| product_json(p, &stores, false)).collect::<Vec<_>>(),
            "recommended": listing.iter().map(|p| product_json(p, &stores, true)).collect::<Vec<_>>(),
        } } }))
    }
}
