//! Rule engine isolation benchmark: what one tenant's hostile rules cost
//! another tenant and the node.
//!
//! `cargo bench -p bff --bench rules_isolation`
//!
//! 1. The demo tenant's quotes (4 concurrent loops) and an unrelated
//!    `malls` query (1 loop): p50/p99, clean, then while a second tenant runs
//!    a spin-to-deadline rule (1000 ms limit, fail-closed so it is never
//!    quarantined) under 20 concurrent quotes.
//! 2. Peak resident memory during a burst of 150 concurrent `publishRule`
//!    calls whose `check-config` grows to 48 MiB and spins to its deadline.
//! 3. Time to refuse a 700,000-function core module at upload.
//! 4. Compile time of the costliest modules the upload limits accept
//!    (`host::costs`), and time to refuse modules just beyond them.
//! 5. When a spinning rule with `timeoutMs: 1` stops (dry runs).
//!
//! The app runs in this process (the figures include the load generator).
//! Seconds per load phase: `BENCH_SECS` (default 10). `BENCH_ONLY=compile`
//! runs parts 4 and 5 alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bff::auth::{Authenticator, Role};
use bff::config::Settings;
use bff::domain::TenantId;
use bff::startup::{AppState, Application};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

const DIR: &str = env!("PROMOTION_RULES_WASM_DIR");
const QUOTE: &str = "query($c: CartInput!) { quote(input: $c) { payable { amount } degraded skippedRules { code } } }";

fn secs() -> u64 {
    std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    async fn graphql(&self, token: Option<&str>, query: &str, vars: Value) -> Value {
        let mut req = self
            .http
            .post(format!("{}/graphql", self.url))
            .json(&json!({ "query": query, "variables": vars }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    async fn upload(&self, token: &str, bytes: Vec<u8>) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/rules/components", self.url))
            .bearer_auth(token)
            .body(bytes)
            .send()
            .await
            .expect("upload answered");
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }
}

/// Latencies (µs) of a loop of requests until `stop`.
async fn load(
    client: Arc<Client>,
    stop: Arc<AtomicBool>,
    request: impl Fn(Arc<Client>) -> futures::future::BoxFuture<'static, bool>,
) -> (Histogram<u64>, u64) {
    let mut h = Histogram::<u64>::new(3).unwrap();
    let mut bad = 0;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        if !request(client.clone()).await {
            bad += 1;
        }
        h.record(started.elapsed().as_micros() as u64).ok();
    }
    (h, bad)
}

struct Phase {
    quotes: Histogram<u64>,
    malls: Histogram<u64>,
    changed: u64,
    /// CPU seconds the process used during the phase.
    cpu: f64,
    /// Samples of the pool threads' priorities.
    nice: std::collections::BTreeMap<String, u32>,
}

async fn phase(
    client: &Arc<Client>,
    member: &str,
    cart: &Value,
    expected: &Value,
    attacker: Option<(&AppState, usize)>,
) -> Phase {
    let stop = Arc::new(AtomicBool::new(false));
    let mut victims = Vec::new();
    for _ in 0..4 {
        let (member, cart, expected) = (member.to_owned(), cart.clone(), expected.clone());
        victims.push(tokio::spawn(load(client.clone(), stop.clone(), move |c| {
            let (member, cart, expected) = (member.clone(), cart.clone(), expected.clone());
            Box::pin(async move {
                let body = c.graphql(Some(&member), QUOTE, json!({ "c": cart })).await;
                let same = body["data"]["quote"] == expected;
                if !same {
                    eprintln!("a demo quote changed: {body}");
                }
                same
            })
        })));
    }
    let malls = tokio::spawn(load(client.clone(), stop.clone(), |c| {
        Box::pin(async move {
            let body = c.graphql(None, "{ malls { id } }", json!({})).await;
            body["data"]["malls"].is_array()
        })
    }));
    let mut attackers = Vec::new();
    if let Some((state, n)) = attacker {
        for _ in 0..n {
            let (state, stop) = (state.clone(), stop.clone());
            attackers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    intruder_quote(&state).await;
                }
            }));
        }
    }
    let cpu_before = process_cpu_secs();
    // The pool threads' priorities, sampled every 100 ms.
    let mut nice: std::collections::BTreeMap<String, u32> = Default::default();
    let until = Instant::now() + Duration::from_secs(secs());
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for n in pool_nice() {
            *nice.entry(n).or_default() += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let cpu = process_cpu_secs() - cpu_before;
    let mut quotes = Histogram::<u64>::new(3).unwrap();
    let mut changed = 0;
    for v in victims {
        let (h, bad) = v.await.unwrap();
        quotes.add(h).unwrap();
        changed += bad;
    }
    let (malls, _) = malls.await.unwrap();
    for a in attackers {
        a.await.unwrap();
    }
    Phase {
        quotes,
        malls,
        changed,
        nice,
        cpu,
    }
}

/// CPU time this process has used (user and system), in seconds.
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some(end) = stat.rfind(')') else {
        return 0.0;
    };
    let rest: Vec<&str> = stat[end + 2..].split(' ').collect();
    // utime and stime: the 14th and 15th fields, in clock ticks.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| rest.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: a plain query of a system constant.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The priorities of the rule pool's threads now (Linux).
fn pool_nice() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            if !comm.starts_with("rule-worker") {
                return None;
            }
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            // Fields after the command's closing parenthesis; nice is the
            // 19th field of the line, the 17th after it.
            let rest: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            // The policy is the 41st field; 5 is SCHED_IDLE.
            Some(if rest.get(38) == Some(&"5") {
                "SCHED_IDLE".to_owned()
            } else {
                format!("nice {}", rest.get(16)?)
            })
        })
        .collect()
}

/// A quote of the second tenant through the pricing capability (the demo
/// services hold no catalogue for it): its spinning rule runs to its
/// deadline on every call.
async fn intruder_quote(state: &AppState) {
    use bff::domain::{MallId, Money, ProductId, StoreId};
    use bff::pricing::model::Channel;
    use bff::pricing::{CartLine, CartRequest};

    let tenant = TenantId::parse("other").unwrap();
    let product = bff::product::Product {
        id: ProductId::parse("sku-x").unwrap(),
        name: "X".into(),
        mall_id: MallId::parse("mall-1").unwrap(),
        store_id: StoreId::parse("store-1").unwrap(),
        category: "food".into(),
        tags: vec![],
        list_price: Money::from_minor(10_000).unwrap(),
        stock: 1,
        flash_sale: None,
    };
    let pricing = state.pricing();
    let snapshot = pricing.snapshot(&tenant);
    let request = CartRequest {
        mall: "mall-1",
        channel: Channel::App,
        member: None,
        lines: vec![CartLine {
            id: "sku-x".into(),
            product: &product,
            quantity: 1,
        }],
        held_coupons: &[],
        chosen_coupons: Vec::new(),
        points_to_use: 0,
    };
    let _ = pricing.quote(&snapshot, &tenant, &request).await;
}

/// A core module of `count` empty functions.
fn many_functions(count: u32) -> Vec<u8> {
    fn leb(mut n: u32, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, body: Vec<u8>, out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len() as u32, out);
        out.extend(body);
    }
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, vec![1, 0x60, 0, 0], &mut module);
    let mut functions = Vec::new();
    leb(count, &mut functions);
    functions.extend(std::iter::repeat_n(0u8, count as usize));
    section(3, functions, &mut module);
    let mut code = Vec::new();
    leb(count, &mut code);
    for _ in 0..count {
        code.extend([2, 0, 0x0b]);
    }
    section(10, code, &mut module);
    module
}

fn leb(mut n: u32, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
}

/// A core module of the given function bodies (locals and instructions,
/// without the final `end`), all of type `() -> ()`, wrapped in a component
/// that embeds it (so the host compiles it, then finds no rule exports).
fn component_of(bodies: &[Vec<u8>]) -> Vec<u8> {
    fn section(id: u8, body: Vec<u8>, out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len() as u32, out);
        out.extend(body);
    }
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, vec![1, 0x60, 0, 0], &mut module);
    let mut functions = Vec::new();
    leb(bodies.len() as u32, &mut functions);
    functions.extend(std::iter::repeat_n(0u8, bodies.len()));
    section(3, functions, &mut module);
    let mut code = Vec::new();
    leb(bodies.len() as u32, &mut code);
    for body in bodies {
        leb(body.len() as u32 + 1, &mut code);
        code.extend(body);
        code.push(0x0b);
    }
    section(10, code, &mut module);
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, module, &mut component);
    component
}

/// Bodies of `per_body`-instruction chunks repeating `unit` (of `ops`
/// instructions) until `total` instructions, after a `prelude`.
fn spread(prelude: &[u8], unit: &[u8], ops: usize, total: usize) -> Vec<Vec<u8>> {
    let per_body = (60_000 / unit.len()) * ops;
    let mut bodies = Vec::new();
    let mut left = total;
    while left > ops {
        let here = left.min(per_body) / ops;
        let mut body = prelude.to_vec();
        body.extend(unit.repeat(here));
        bodies.push(body);
        left = left.saturating_sub(here * ops + 1);
    }
    bodies
}

/// A local-index immediate.
fn idx(i: u32) -> Vec<u8> {
    let mut out = Vec::new();
    leb(i, &mut out);
    out
}

/// The costliest shapes the cost limits accept, and one beyond each.
fn costly_modules() -> Vec<(&'static str, Vec<u8>)> {
    use bff::pricing::host::costs;
    let ops = costs::MAX_COMPILE_COST as usize - 64;
    let depth = costs::MAX_LOOP_DEPTH as u32;
    let locals = costs::MAX_LOCALS as u32;
    let weight = (costs::MAX_COMPILE_COST / costs::LOOP_LOCAL_COST) as u32 * 9 / 10;
    // (1 local) x + 1 -> x, over and over.
    let arithmetic = spread(&[1, 1, 0x7f], &[0x20, 0, 0x41, 1, 0x6a, 0x21, 0], 4, ops);
    // Calls of a function: each clobbers every register.
    let calls = spread(
        &[0],
        &[0x10, 0],
        1,
        ops / (costs::INSTRUCTION_COST + costs::CALL_COST) as usize,
    );
    // `locals` locals, each read and written inside `depth` nested loops
    // with a back edge each: every loop carries every local.
    let live = |reads_per_local: u32| {
        let mut body = vec![1];
        leb(locals, &mut body);
        body.push(0x7f);
        body.extend([0x03, 0x40].repeat(depth as usize));
        let updates = (weight / depth / 2 / reads_per_local).min(locals);
        for i in 0..updates {
            for _ in 0..reads_per_local {
                body.push(0x20);
                body.extend(idx(i));
                body.extend([0x41, 1, 0x6a, 0x21]);
                body.extend(idx(i));
            }
        }
        for _ in 0..depth {
            body.extend([0x20, 0, 0x0d, 0, 0x0b]);
        }
        body
    };
    // `br_table`s of 60,000 targets, as many as the instruction limit
    // allows.
    let table = {
        let mut body = vec![0, 0x02, 0x40, 0x41, 0, 0x0e];
        leb(60_000, &mut body);
        body.extend(std::iter::repeat_n(0u8, 60_001));
        body.push(0x0b);
        body
    };
    let tables = vec![table; ops / 60_004];
    let mut all = vec![
        (
            "cost limit: arithmetic on a local",
            component_of(&arithmetic),
        ),
        ("cost limit: calls", component_of(&calls)),
        ("cost limit: `br_table` targets", component_of(&tables)),
        (
            "cost limit: locals updated inside the deepest loops, with back edges",
            component_of(&[live(1)]),
        ),
    ];
    all.push((
        "beyond the cost limit by 64 (refused while parsing)",
        component_of(&spread(
            &[1, 1, 0x7f],
            &[0x20, 0, 0x41, 1, 0x6a, 0x21, 0],
            4,
            costs::MAX_COMPILE_COST as usize + 128,
        )),
    ));
    // The widest: as many such functions as the loop weight allows.
    let per_function = (weight / depth / 2).min(locals) * depth * 2 + depth * depth;
    let functions = (weight / per_function).max(1) as usize;
    if functions > 1 {
        all.push((
            "cost limit: functions like the one above",
            component_of(&vec![live(1); functions]),
        ));
    }
    all
}

/// Compiles each costly module on a thread of its own (as a pool thread
/// would), after the example rules; returns the table rows.
async fn compile_costs(state: &AppState) -> Vec<(String, usize, f64, String)> {
    let mut rows = Vec::new();
    let mut modules = Vec::new();
    for rule in [
        "rule_member_discount",
        "rule_flash_sale",
        "rule_spend_threshold",
        "rule_coupon",
        "rule_points_offset",
    ] {
        let bytes = std::fs::read(format!("{DIR}/{rule}.wasm")).unwrap();
        let c = bff::pricing::host::check_costs(&bytes).unwrap();
        let what = format!(
            "example `{rule}`: cost {}: {} functions, {} instructions, {} calls, \
             largest body {} B, {} locals, loop depth {}, loop weight {}",
            c.compile_cost(),
            c.functions,
            c.operators,
            c.calls,
            c.max_function_bytes,
            c.max_locals,
            c.max_loop_depth,
            c.loop_local_weight
        );
        // Compiled from scratch, not from the cache of the running app.
        modules.push((what, bytes));
    }
    modules.extend(costly_modules().into_iter().map(|(w, b)| (w.to_owned(), b)));
    for (what, bytes) in modules {
        let state = state.clone();
        let size = bytes.len();
        let (ms, outcome) = tokio::task::spawn_blocking(move || {
            let host = state.pricing().registry().host();
            let started = Instant::now();
            let result = host.compile(&bytes);
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            (
                ms,
                match result {
                    Ok(_) => "compiled".to_owned(),
                    Err(e) => e.code().to_owned(),
                },
            )
        })
        .await
        .unwrap();
        rows.push((what, size, ms, outcome));
    }
    rows
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let data = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Settings::default()
    };
    settings.store.data_dir = data.path().to_path_buf();
    settings.rules.uploads_per_author_per_minute = 1_000;
    settings.rules.uploads_per_tenant_per_minute = 1_000;
    // One member quotes in four loops: far beyond a member's request rate.
    settings.admission.limits.member_per_sec = 100_000.0;
    settings.admission.limits.member_burst = 100_000;
    let app = Application::build(settings).await.expect("app builds");
    let url = format!("http://127.0.0.1:{}", app.port());
    let auth = Authenticator::new(&app.state().settings().auth);
    let pool = app.state().pricing().registry().pool().config();
    let state = app.state().clone();
    tokio::spawn(app.run_until_stopped());
    let issue = |tenant: &str, subject: &str, role| {
        auth.issue(&TenantId::parse(tenant).unwrap(), subject, role, None)
            .unwrap()
    };
    let member = issue("demo", "member-1", Role::Member);
    let intruder = issue("other", "intruder", Role::RuleAuthor);
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build()
            .unwrap(),
        url,
    });

    let products = client
        .graphql(
            None,
            "{ products(mallId: \"mall-1\", first: 10) { nodes { id flashSale { price { amount } } } } }",
            json!({}),
        )
        .await;
    let ids: Vec<Value> = products["data"]["products"]["nodes"]
        .as_array()
        .expect("products")
        .iter()
        .filter(|p| p.get("flashSale") == Some(&serde_json::Value::Null))
        .map(|p| p["id"].clone())
        .take(2)
        .collect();
    let cart = json!({ "mallId": "mall-1", "items": [
        { "productId": ids[0], "quantity": 2 }, { "productId": ids[1], "quantity": 1 } ] });
    let expected = client
        .graphql(Some(&member), QUOTE, json!({ "c": cart }))
        .await["data"]["quote"]
        .clone();
    assert_eq!(expected["degraded"], false, "{expected}");

    println!("# Rule engine isolation benchmark\n");
    println!(
        "{} cores; rule pool: {} threads, {} per tenant; {} s per phase.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        pool.threads,
        pool.tenant_share,
        secs()
    );

    if std::env::var("BENCH_ONLY").as_deref() == Ok("compile") {
        return limits(&state, &client, &intruder).await;
    }
    let clean = phase(&client, &member, &cart, &expected, None).await;

    let spin = std::fs::read(format!("{DIR}/hostile_spin.wasm")).unwrap();
    let (status, up) = client.upload(&intruder, spin).await;
    assert_eq!(status, 201, "{up}");
    let published = client
        .graphql(
            Some(&intruder),
            "mutation($i: PublishRuleInput!) { publishRule(input: $i) { status } }",
            json!({ "i": { "name": "spin", "component": up["sha256"], "config": "",
                "stage": "ORDER", "activate": true, "failurePolicy": "FAIL_CLOSED",
                "limits": { "fuel": 1_000_000_000u64, "memoryBytes": 4 << 20, "timeoutMs": 1000,
                    "maxInputBytes": 262144, "maxOutputBytes": 262144, "maxLogEntries": 64,
                    "maxDiscount": 0 } } }),
        )
        .await;
    assert_eq!(
        published["data"]["publishRule"]["status"], "ACTIVE",
        "{published}"
    );
    let attacked = phase(&client, &member, &cart, &expected, Some((&state, 20))).await;

    println!("## The demo tenant beside a spin-to-deadline tenant\n");
    println!("| run | demo quotes | quote p50 ms | quote p99 ms | quotes changed | malls p99 ms |");
    println!("|---|---|---|---|---|---|");
    for (name, p) in [
        ("clean", &clean),
        ("20 concurrent quotes of a 1000 ms spinning rule", &attacked),
    ] {
        println!(
            "| {name} | {} | {:.2} | {:.2} | {} | {:.2} |",
            p.quotes.len(),
            ms(&p.quotes, 0.5),
            ms(&p.quotes, 0.99),
            p.changed,
            ms(&p.malls, 0.99)
        );
    }
    println!(
        "\nPool threads' priorities (samples every 100 ms): clean {:?}, under attack {:?}.",
        clean.nice, attacked.nice
    );
    println!(
        "\nCPU the process used: clean {:.1} s, under attack {:.1} s, of {} s.",
        clean.cpu,
        attacked.cpu,
        secs()
    );
    println!(
        "\nRatio under attack: quote p99 {:.2}×, malls p99 {:.2}×.",
        ms(&attacked.quotes, 0.99) / ms(&clean.quotes, 0.99).max(0.001),
        ms(&attacked.malls, 0.99) / ms(&clean.malls, 0.99).max(0.001)
    );

    // The publish burst.
    let hog = std::fs::read(format!("{DIR}/hostile_config_hog.wasm")).unwrap();
    let (status, up) = client.upload(&intruder, hog).await;
    assert_eq!(status, 201, "{up}");
    // Reset the peak to what is resident now.
    std::fs::write("/proc/self/clear_refs", "5").ok();
    let rss_before = status_kib("VmRSS:");
    let started = Instant::now();
    let mut burst = Vec::new();
    for n in 0..150 {
        let (client, token, sha) = (client.clone(), intruder.clone(), up["sha256"].clone());
        burst.push(tokio::spawn(async move {
            let body = client
                .graphql(
                    Some(&token),
                    "mutation($i: PublishRuleInput!) { publishRule(input: $i) { status } }",
                    json!({ "i": { "name": format!("hog-{n}"), "component": sha, "config": "48",
                        "stage": "ORDER", "activate": true,
                        "limits": { "fuel": 1_000_000_000u64, "memoryBytes": 64 << 20, "timeoutMs": 1000,
                            "maxInputBytes": 262144, "maxOutputBytes": 262144, "maxLogEntries": 64,
                            "maxDiscount": 0 } } }),
                )
                .await;
            body["errors"][0]["extensions"]["code"]
                .as_str()
                .unwrap_or("published")
                .to_owned()
        }));
    }
    let mut outcomes: std::collections::BTreeMap<String, u32> = Default::default();
    for b in burst {
        *outcomes.entry(b.await.unwrap()).or_default() += 1;
    }
    let burst_secs = started.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:");
    println!("\n## 150 concurrent publishes of a `check-config` that grows to 48 MiB and spins\n");
    println!(
        "Resident before {} MiB, peak during the burst {} MiB; the burst took {burst_secs:.1} s; \
         outcomes: {outcomes:?}.",
        rss_before / 1024,
        peak / 1024
    );

    // The 700k-function module.
    let module = many_functions(700_000);
    let mut took = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let (status, body) = client.upload(&intruder, module.clone()).await;
        took.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 422, "{body}");
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "COMPONENT_TOO_COMPLEX",
            "{body}"
        );
    }
    took.sort_by(f64::total_cmp);
    println!(
        "\n## A {:.1} MB module of 700,000 functions\n\nRefused (`COMPONENT_TOO_COMPLEX`) in \
         {:.1} ms median, {:.1} ms worst of 5 uploads (HTTP round trip included).",
        module.len() as f64 / 1e6,
        took[2],
        took[4]
    );
    limits(&state, &client, &intruder).await;
}

/// Parts 4 and 5: what the upload and time limits let through.
async fn limits(state: &AppState, client: &Client, intruder: &str) {
    println!(
        "\n## The costliest modules the upload limits accept\n\n\
         Compiled on one thread (as on the rule pool), without HTTP; each is a \
         component embedding the module, refused after compiling for having \
         no rule exports.\n"
    );
    println!("| module | bytes | compile ms | outcome |");
    println!("|---|---|---|---|");
    for (what, size, ms, outcome) in compile_costs(state).await {
        println!("| {what} | {size} | {ms:.0} | {outcome} |");
    }

    // When a 1 ms limit stops a spinning rule.
    let spin = std::fs::read(format!("{DIR}/hostile_spin.wasm")).unwrap();
    let (_, up) = client.upload(intruder, spin).await;
    println!("\n## A spinning rule's stop time by limit (dry runs, instantiation included)\n");
    println!("| timeoutMs | runs | p50 ms | p99 ms | max ms | codes |");
    println!("|---|---|---|---|---|---|");
    for timeout in [1u64, 10, 50] {
        let mut h = Histogram::<u64>::new(3).unwrap();
        let mut codes: std::collections::BTreeMap<String, u32> = Default::default();
        for _ in 0..100 {
            let body = client
                .graphql(
                    Some(intruder),
                    "query($i: TestRuleInput!) { testRule(input: $i) { failureCode durationMicros } }",
                    json!({ "i": { "component": up["sha256"], "config": "",
                        "limits": { "fuel": 1_000_000_000u64, "memoryBytes": 4 << 20,
                            "timeoutMs": timeout, "maxInputBytes": 262144,
                            "maxOutputBytes": 262144, "maxLogEntries": 64, "maxDiscount": 0 },
                        "cart": { "lines": [ { "unitPrice": 100 } ] } } }),
                )
                .await;
            let r = &body["data"]["testRule"];
            *codes
                .entry(r["failureCode"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
            h.record(r["durationMicros"].as_u64().unwrap_or(0)).ok();
        }
        println!(
            "| {timeout} | {} | {:.2} | {:.2} | {:.2} | {codes:?} |",
            h.len(),
            ms(&h, 0.5),
            ms(&h, 0.99),
            h.max() as f64 / 1000.0
        );
    }
}
