//! The edge as hostile clients meet it: raw sockets that trickle, idle or
//! flood; tokens at the edges of validity; ids that are path segments;
//! the production defaults.
//!
//! Timing bounds here are generous "eventually within" limits: the
//! configured timeouts are a fraction of a second, the bound is seconds.

use std::time::Duration;

use bff::auth::Role;
use bff::config::{DemoSettings, Environment};
use bff::demo::{DemoUpstreams, Service};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, codes, spawn_app, spawn_app_with};

/// How long a test waits for something the server must do "soon".
const EVENTUALLY: Duration = Duration::from_secs(10);

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.url.trim_start_matches("http://"))
        .await
        .expect("the BFF accepts")
}

/// Reads until the server closes the connection (EOF or reset); `None` if
/// it is still open after `EVENTUALLY`. Returns what it sent first.
async fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(EVENTUALLY, read_all).await.ok()?;
    Some(received)
}

/// `GET /healthz` on an open keep-alive connection; the whole response.
async fn healthz_on(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: bff\r\n\r\n")
        .await
        .expect("request sent");
    let mut received = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        while !received.ends_with(b"\r\n\r\nok") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(EVENTUALLY, read)
        .await
        .expect("healthz answers");
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn a_client_trickling_its_request_head_is_cut_off() {
    let app = spawn_app_with(|s| s.server.header_read_timeout_ms = 300).await;
    let stream = connect(&app).await;
    let (mut read, mut write) = stream.into_split();

    // One header line every 50 ms, for as long as the server listens.
    let trickle = tokio::spawn(async move {
        if write.write_all(b"GET /healthz HTTP/1.1\r\n").await.is_err() {
            return;
        }
        for i in 0..1_000 {
            let line = format!("x-slow-{i}: a\r\n");
            if write.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(EVENTUALLY, async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    trickle.abort();

    assert!(closed.is_ok(), "a trickled head keeps its connection");
    let mut fresh = connect(&app).await;
    assert!(healthz_on(&mut fresh).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(|s| s.server.idle_timeout_ms = 300).await;

    // Never says a word.
    let mut silent = connect(&app).await;
    assert_eq!(read_until_closed(&mut silent).await, Some(Vec::new()));

    // Asks once, then keeps the connection open without asking again.
    let mut kept = connect(&app).await;
    assert!(healthz_on(&mut kept).await.starts_with("HTTP/1.1 200"));
    assert_eq!(read_until_closed(&mut kept).await, Some(Vec::new()));
}

#[tokio::test]
async fn a_request_in_flight_outlives_the_idle_and_header_timeouts() {
    let app = spawn_app_with(|s| {
        s.server.idle_timeout_ms = 200;
        s.server.header_read_timeout_ms = 200;
        s.upstreams.member.timeout_ms = 5_000;
    })
    .await;
    // The member service takes longer than both timeouts to answer.
    app.member.set_faults(bff::config::FaultSettings {
        latency_ms: 800,
        ..Default::default()
    });

    let (status, body) = app.query(ME, Some(&app.token("member-1"))).await;

    assert_eq!(status, 200);
    assert_eq!(body["data"]["me"]["id"], "member-1", "{body}");
}

#[tokio::test]
async fn a_client_trickling_its_body_is_cut_off() {
    let app = spawn_app_with(|s| s.server.body_read_timeout_ms = 300).await;
    let stream = connect(&app).await;
    let (mut read, mut write) = stream.into_split();

    let trickle = tokio::spawn(async move {
        let head = "POST /graphql HTTP/1.1\r\nhost: bff\r\ncontent-type: application/json\r\n\
                    content-length: 4000\r\n\r\n{\"query\":\"";
        if write.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..1_000 {
            if write.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut received = Vec::new();
    let closed = tokio::time::timeout(EVENTUALLY, async {
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    trickle.abort();

    assert!(closed.is_ok(), "a trickled body keeps its connection");
    let response = String::from_utf8_lossy(&received);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("REQUEST_TIMEOUT"), "{response}");
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_are_refused_and_open_ones_still_served() {
    let cap = 6;
    let app = spawn_app_with(|s| s.server.max_connections = cap).await;

    // Fill the cap with keep-alive connections that each asked once (so
    // each is known to be accepted), the first kept for later.
    let mut open = Vec::new();
    for _ in 0..cap {
        let mut stream = connect(&app).await;
        assert!(healthz_on(&mut stream).await.starts_with("HTTP/1.1 200"));
        open.push(stream);
    }

    // Anything more is turned away at once, with a 503.
    for _ in 0..3 {
        let mut extra = connect(&app).await;
        let answer = read_until_closed(&mut extra)
            .await
            .expect("a connection past the cap is closed");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    }

    // The connections already open are still served.
    assert!(healthz_on(&mut open[0]).await.starts_with("HTTP/1.1 200"));

    // Once one closes, a new connection gets in.
    drop(open.pop());
    let served = tokio::time::timeout(EVENTUALLY, async {
        loop {
            let mut stream = connect(&app).await;
            let _ = stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: bff\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            if let Ok(n) = stream.read(&mut buf).await
                && buf[..n].starts_with(b"HTTP/1.1 200")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "a freed slot is never reused");
}

#[tokio::test]
async fn a_request_head_larger_than_allowed_is_refused_with_431() {
    let app = spawn_app_with(|s| s.server.max_header_bytes = 16 * 1024).await;
    let mut stream = connect(&app).await;

    // 40 kB of headers that never end.
    let mut head = b"GET /healthz HTTP/1.1\r\nhost: bff\r\n".to_vec();
    for i in 0..400 {
        head.extend_from_slice(format!("x-pad-{i:03}: {}\r\n", "a".repeat(88)).as_bytes());
    }
    let _ = stream.write_all(&head).await;
    let answer = read_until_closed(&mut stream)
        .await
        .expect("an oversized head is refused and closed");

    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

/// Resident memory of a process, in bytes (Linux).
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test]
async fn unfinished_huge_request_heads_from_many_clients_keep_memory_bounded() {
    // The real binary, so its memory is its own.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let data = tempfile::tempdir().unwrap();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_bff"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("BFF_STORE__DATA_DIR", data.path())
        .env("BFF_LOG__FILTER", "error")
        .env("BFF_RULES__DEMO_DEPLOYMENTS", "false")
        .kill_on_drop(true)
        .spawn()
        .expect("bff serve starts");
    let pid = server.id().expect("a pid");
    let addr = format!("127.0.0.1:{port}");
    let up = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if let Ok(mut s) = TcpStream::connect(&addr).await {
                let _ = s
                    .write_all(b"GET /healthz HTTP/1.1\r\nhost: bff\r\n\r\n")
                    .await;
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await
                    && buf[..n].starts_with(b"HTTP/1.1 200")
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(up.is_ok(), "bff serve did not come up");
    let before = resident_bytes(pid);

    // 200 clients each send 380 kB of request head that never ends.
    let line = format!("x-pad: {}\r\n", "a".repeat(990));
    let attackers: Vec<_> = (0..200)
        .map(|_| {
            let addr = addr.clone();
            let line = line.clone();
            tokio::spawn(async move {
                let Ok(mut s) = TcpStream::connect(&addr).await else {
                    return None;
                };
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nhost: bff\r\n").await;
                for _ in 0..380 {
                    if s.write_all(line.as_bytes()).await.is_err() {
                        break;
                    }
                }
                Some(s)
            })
        })
        .collect();
    let mut held = Vec::new();
    for attacker in attackers {
        held.push(attacker.await.unwrap());
    }
    let during = resident_bytes(pid);
    let mut refused = 0;
    for s in held.iter_mut().flatten() {
        if let Some(answer) = read_until_closed(s).await
            && answer.starts_with(b"HTTP/1.1 431")
        {
            refused += 1;
        }
    }
    let mut fresh = TcpStream::connect(&addr).await.unwrap();
    let alive = healthz_on(&mut fresh).await;
    let _ = server.kill().await;

    assert!(alive.starts_with("HTTP/1.1 200"), "{alive}");
    assert!(refused > 0, "no oversized head was answered 431");
    // Unbounded, this held ~105 MB (380 kB per connection); bounded by
    // `server.max_header_bytes` (64 KiB) it is at most ~13 MB of buffers.
    let grown = during.saturating_sub(before);
    assert!(
        grown < 48 * 1024 * 1024,
        "resident memory grew by {} MiB",
        grown / (1024 * 1024)
    );
}

const ME: &str = "{ me { id } }";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn dev_signed(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(bff::config::DEV_JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    let token = app.token("member-1");

    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let resp = app
            .http
            .post(format!("{}/graphql", app.url))
            .header("authorization", format!("{scheme} {token}"))
            .json(&json!({ "query": ME }))
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["data"]["me"]["id"], "member-1", "{scheme}: {body}");
    }
}

#[tokio::test]
async fn a_token_not_valid_yet_or_valid_for_too_long_is_refused_with_401() {
    let app = spawn_app_with(|s| {
        s.auth.max_token_lifetime_secs = 3600;
        s.auth.token_ttl_secs = 1800;
    })
    .await;
    let t = now();
    let claims = |iat: u64, exp: u64, nbf: Option<u64>| {
        let mut c = json!({ "iss": "mall-bff", "sub": "member-1", "tenant": "demo",
                            "role": "member", "iat": iat, "exp": exp });
        if let Some(nbf) = nbf {
            c["nbf"] = json!(nbf);
        }
        dev_signed(c)
    };
    let valid = claims(t, t + 1800, Some(t - 60));
    let not_yet = claims(t, t + 1800, Some(t + 900));
    let too_long = claims(t, t + 30 * 24 * 3600, None);

    let (status, body) = app.query(ME, Some(&valid)).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["me"]["id"], "member-1", "{body}");
    for token in [not_yet, too_long] {
        let (status, body) = app.query(ME, Some(&token)).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(codes(&body), ["UNAUTHENTICATED"]);
    }
}

#[tokio::test]
async fn dot_and_dot_dot_ids_are_bad_input_and_reach_no_upstream() {
    let app = spawn_app().await;
    let token = app.token("member-1");
    for id in [".", ".."] {
        let (_, body) = app
            .query(&format!(r#"{{ mall(id: "{id}") {{ id }} }}"#), Some(&token))
            .await;
        assert_eq!(codes(&body), ["BAD_USER_INPUT"], "{id}: {body}");
        let (_, body) = app
            .query(
                &format!(r#"{{ homeCard(mallId: "{id}") {{ mall {{ id }} }} }}"#),
                Some(&token),
            )
            .await;
        assert_eq!(codes(&body), ["BAD_USER_INPUT"], "{id}: {body}");
    }
    assert_eq!(app.mall.requests(), 0, "a '.' id reached the mall service");
    assert_eq!(app.product.requests(), 0);
}

const CSP_SOURCES_ALLOWED: [&str; 3] = ["'self'", "'none'", "'unsafe-inline'"];

#[tokio::test]
async fn the_web_pages_carry_security_headers_and_load_nothing_remote() {
    let app = spawn_app().await;
    for page in ["/playground/", "/console/", "/playground/playground.js"] {
        let resp = app
            .http
            .get(format!("{}{page}", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{page}");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("x-content-type-options"), "nosniff", "{page}");
        assert_eq!(header("x-frame-options"), "DENY", "{page}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{page}");
        let csp = header("content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{page}: {csp}");
        assert!(csp.contains("default-src 'none'"), "{page}: {csp}");
        assert!(csp.contains("script-src 'self';"), "{page}: {csp}");
        // Every source is this server (or inline data), never a remote one.
        for directive in csp.split(';') {
            for source in directive.split_whitespace().skip(1) {
                assert!(
                    CSP_SOURCES_ALLOWED.contains(&source) || source == "data:",
                    "{page}: remote source {source} in {csp}"
                );
            }
        }
    }
}

const METRICS_TOKEN: &str = "a-metrics-scraper-token-of-32-bytes-or-more";

/// A production node in front of real (demo) upstreams.
async fn production_app(demo: &DemoUpstreams) -> (TestApp, bff::demo::orders::RunningOrderService) {
    let url = |s| Some(demo.service(s).base_url.clone());
    let orders = bff::demo::orders::RunningOrderService::start()
        .await
        .expect("the demo order service starts");
    let orders_url = orders.base_url.clone();
    let app = spawn_app_with(|s| {
        s.environment = Some(Environment::Production);
        s.checkout.order_service_url = Some(orders_url);
        s.auth.jwt_secret = "a-private-production-key-of-32-bytes!".into();
        s.metrics.bearer_token = Some(METRICS_TOKEN.into());
        s.upstreams.mall.base_url = url(Service::Mall);
        s.upstreams.member.base_url = url(Service::Member);
        s.upstreams.product.base_url = url(Service::Product);
    })
    .await;
    (app, orders)
}

#[tokio::test]
async fn production_serves_no_playground_introspection_dev_tokens_or_open_metrics() {
    let demo = DemoUpstreams::start(&DemoSettings::default())
        .await
        .unwrap();
    let (app, _orders) = production_app(&demo).await;
    let get = |path: &str, token: Option<String>| {
        let mut req = app.http.get(format!("{}{path}", app.url));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };

    assert_eq!(get("/playground/", None).await, 404);
    assert_eq!(get("/dev/token?member=member-1", None).await, 404);
    assert_eq!(
        get("/dev/token?role=rule_author&subject=mallory", None).await,
        404
    );
    // The rule console is a static page whose every action needs a token.
    assert_eq!(get("/console/", None).await, 200);

    // Introspection is off: no type of the schema is revealed.
    let (_, body) = app.query("{ __schema { types { name } } }", None).await;
    assert_eq!(
        body["data"].get("__schema"),
        Some(&serde_json::Value::Null),
        "{body}"
    );
    assert!(!body.to_string().contains("Mall"), "{body}");
    // The product itself works.
    let (_, body) = app.query(r#"{ mall(id: "mall-1") { id } }"#, None).await;
    assert_eq!(body["data"]["mall"]["id"], "mall-1", "{body}");

    assert_eq!(get("/metrics", None).await, 401);
    assert_eq!(get("/metrics", Some(app.token("member-1"))).await, 403);
    assert_eq!(
        get(
            "/metrics",
            Some(app.token_for("demo", "bob", Role::RuleAuthor))
        )
        .await,
        403
    );
    assert_eq!(get("/metrics", Some("a-wrong-token".into())).await, 401);
    assert_eq!(get("/metrics", Some(METRICS_TOKEN.into())).await, 200);
    assert_eq!(
        get(
            "/metrics",
            Some(app.token_for("demo", "ops", Role::Operator))
        )
        .await,
        200
    );
    assert_eq!(get("/healthz", None).await, 200);
}

#[tokio::test]
async fn development_keeps_the_playground_introspection_and_metrics_open() {
    let app = spawn_app().await;
    for path in ["/playground/", "/console/", "/metrics"] {
        let status = app
            .http
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{path}");
    }
    let (_, body) = app.query("{ __schema { queryType { name } } }", None).await;
    assert_eq!(body["data"]["__schema"]["queryType"]["name"], "Query");
}

/// The node's `bff_api_requests_in_flight` gauge.
async fn in_flight(app: &TestApp) -> f64 {
    let text = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("bff_api_requests_in_flight "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no in-flight gauge in: {text}"))
}

#[tokio::test]
async fn a_client_that_hangs_up_takes_its_request_with_it() {
    // The member service answers after a minute, and nothing else would
    // stop the request before: only the client leaving can.
    let app = spawn_app_with(|s| {
        s.upstreams.request_budget_ms = 120_000;
        s.upstreams.member.timeout_ms = 120_000;
    })
    .await;
    app.member.set_faults(bff::config::FaultSettings {
        latency_ms: 60_000,
        ..bff::config::FaultSettings::default()
    });
    let body = json!({ "query": "{ me { id level } }" }).to_string();
    let token = app.token("member-1");
    let mut stream = connect(&app).await;
    let request = format!(
        "POST /graphql HTTP/1.1\r\nhost: bff\r\ncontent-type: application/json\r\n\
         authorization: Bearer {token}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();

    let waiting = tokio::time::timeout(EVENTUALLY, async {
        while in_flight(&app).await < 1.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waiting.is_ok(), "the request never started");

    drop(stream);
    let dropped = tokio::time::timeout(EVENTUALLY, async {
        while in_flight(&app).await > 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        dropped.is_ok(),
        "the request went on after its client hung up (the member service answers in a minute)"
    );
}
