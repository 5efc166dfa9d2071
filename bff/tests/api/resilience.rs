//! The read path under upstream and store faults: the request budget,
//! retries with a retry budget, circuit breakers per (tenant, upstream),
//! public prices when the member service fails, readiness that means "this
//! node can serve", and the rule registry when Redis is lost or restarted
//! empty. Real demo HTTP upstreams with injected faults, real Redis.

use std::time::{Duration, Instant};

use bff::auth::Role;
use bff::config::FaultSettings;
use bff::demo::{DemoUpstreams, Service};
use bff::domain::TenantId;
use serde_json::{Value, json};

use crate::helpers::{TestApp, codes, down, spawn_app, spawn_app_with};
use crate::store::{redis_url, unique_namespace};

const CARD: &str = r#"{
  homeCard(mallId: "mall-1") {
    mall { id name }
    member { id level }
    coupons { id }
    flashSale { id price { final { amount } degraded publicFallback } store { id } }
    recommended { id price { list { amount } final { amount } applied { ruleId } degraded publicFallback } store { id } }
  }
}"#;

/// POSTs the card with extra headers; returns the body.
async fn card_with(app: &TestApp, token: &str, headers: &[(&str, &str)]) -> Value {
    let mut req = app
        .http
        .post(format!("{}/graphql", app.url))
        .bearer_auth(token)
        .json(&json!({ "query": CARD }));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("BFF answers");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("JSON body")
}

/// Demo services of their own that know the extra tenant `beta` (its own
/// CRM, or what a proxy or redirect points at).
async fn beta_demo() -> DemoUpstreams {
    DemoUpstreams::start(&bff::config::DemoSettings {
        extra_tenants: vec![TenantId::parse("beta").unwrap()],
        ..Default::default()
    })
    .await
    .unwrap()
}

/// An app whose extra tenant `beta` has its own member service at `url`.
async fn with_beta_member_service(url: &str) -> TestApp {
    spawn_app_with(|s| {
        s.demo.extra_tenants = vec![TenantId::parse("beta").unwrap()];
        s.upstreams.tenants.insert(
            TenantId::parse("beta").unwrap(),
            bff::config::TenantUpstreams {
                member: Some(bff::config::TenantUpstream {
                    base_url: url.parse().unwrap(),
                    timeout_ms: Some(2_000),
                }),
                ..Default::default()
            },
        );
    })
    .await
}

/// Requests the three demo services of `app` received so far.
fn upstream_requests(app: &TestApp) -> u64 {
    app.mall.requests() + app.member.requests() + app.product.requests()
}

/// Whether every part of a card is there, with no error.
fn complete(body: &Value) -> bool {
    let card = &body["data"]["homeCard"];
    body["errors"].is_null()
        && card["mall"]["id"].is_string()
        && card["member"]["id"].is_string()
        && card["coupons"].is_array()
        && card["flashSale"].is_array()
        && card["recommended"]
            .as_array()
            .is_some_and(|r| !r.is_empty() && r.iter().all(|p| p["price"].is_object()))
}

fn metric(app_metrics: &str, line_start: &str) -> Option<f64> {
    app_metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics_text(app: &TestApp) -> String {
    app.http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn status(app: &TestApp) -> Value {
    let token = app.token_for("demo", "ops-1", Role::Operator);
    let resp = app
        .http
        .get(format!("{}/status", app.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_member_service_costs_the_card_its_budget_not_more() {
    // The member service's own timeout is far above the budget: only the
    // request budget can cut the call short.
    let app = spawn_app_with(|s| s.upstreams.member.timeout_ms = 20_000).await;
    let budget = Duration::from_millis(app.state.settings().upstreams.request_budget_ms);
    app.member.set_faults(FaultSettings {
        latency_ms: 60_000,
        ..FaultSettings::default()
    });

    let started = Instant::now();
    let body = card_with(&app, &app.token("member-1"), &[]).await;
    let took = started.elapsed();

    assert!(
        took < budget * 3,
        "took {took:?} with a budget of {budget:?}"
    );
    let card = &body["data"]["homeCard"];
    assert_eq!(card["member"], Value::Null, "{body}");
    assert_eq!(card["coupons"], Value::Null, "{body}");
    assert_eq!(card["mall"]["id"], "mall-1");
    assert!(card["flashSale"].is_array(), "{body}");
    let recommended = card["recommended"].as_array().expect("recommended");
    assert!(!recommended.is_empty());
    for p in recommended {
        assert!(p["store"]["id"].is_string(), "{p}");
        // Public prices, marked as such, instead of null prices.
        assert_eq!(p["price"]["publicFallback"], true, "{p}");
        assert_eq!(p["price"]["degraded"], true, "{p}");
    }
    let errors = body["errors"].as_array().expect("errors");
    assert!(
        errors
            .iter()
            .all(|e| e["extensions"]["upstream"] == "member"
                && e["extensions"]["code"] == "UPSTREAM_TIMEOUT"),
        "{body}"
    );
    // The member and coupons fields; not one error per price.
    assert!(errors.len() <= 2, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_may_ask_for_a_smaller_budget_but_never_a_larger_one() {
    let app = spawn_app_with(|s| {
        s.upstreams.request_budget_ms = 20_000;
        s.upstreams.member.timeout_ms = 20_000;
    })
    .await;
    app.member.set_faults(FaultSettings {
        latency_ms: 60_000,
        ..FaultSettings::default()
    });
    let token = app.token("member-1");

    let started = Instant::now();
    let body = card_with(&app, &token, &[("X-Request-Budget-Ms", "500")]).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: the header was ignored"
    );
    assert!(
        codes(&body).contains(&"UPSTREAM_TIMEOUT".to_owned()),
        "{body}"
    );

    let resp = app
        .http
        .post(format!("{}/graphql", app.url))
        .header("X-Request-Budget-Ms", "soon")
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(codes(&body), ["BAD_REQUEST"]);

    // Asking for more than configured gets the configured budget.
    let app = spawn_app_with(|s| {
        s.upstreams.request_budget_ms = 500;
        s.upstreams.member.timeout_ms = 20_000;
    })
    .await;
    app.member.set_faults(FaultSettings {
        latency_ms: 60_000,
        ..FaultSettings::default()
    });
    let started = Instant::now();
    card_with(
        &app,
        &app.token("member-1"),
        &[("X-Request-Budget-Ms", "60000")],
    )
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: the budget grew"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dataloader_batches_keep_the_requests_deadline() {
    // `mall(id:)` root fields are batched by a DataLoader, whose batches
    // run in tasks of their own.
    let app = spawn_app_with(|s| {
        s.upstreams.mall.timeout_ms = 20_000;
        crate::helpers::cache_off(s);
    })
    .await;
    app.mall.set_faults(FaultSettings {
        latency_ms: 60_000,
        ..FaultSettings::default()
    });

    let started = Instant::now();
    let (status, body) = app
        .query(
            r#"{ a: mall(id: "mall-1") { id } b: mall(id: "mall-2") { id } }"#,
            None,
        )
        .await;
    let took = started.elapsed();

    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(
        !codes(&body).is_empty() && codes(&body).iter().all(|c| c == "UPSTREAM_TIMEOUT"),
        "{body}"
    );
}

/// Renders `n` cards for `n` members, four at a time; returns how many
/// came back complete.
async fn render_cards(app: &TestApp, n: usize) -> usize {
    let tokens: Vec<String> = (1..=n).map(|i| app.token(&format!("member-{i}"))).collect();
    let mut complete_cards = 0;
    for chunk in tokens.chunks(4) {
        let bodies = futures::future::join_all(chunk.iter().map(|t| card_with(app, t, &[]))).await;
        complete_cards += bodies.iter().filter(|b| complete(b)).count();
    }
    complete_cards
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_fifth_of_upstream_calls_failing_cards_complete_without_hammering_upstreams() {
    const CARDS: usize = 100;
    let clean = spawn_app().await;
    assert_eq!(render_cards(&clean, CARDS).await, CARDS, "fault-free cards");
    let fault_free_calls = upstream_requests(&clean);

    let faulty = spawn_app().await;
    let errors = FaultSettings {
        error_rate: 0.2,
        ..FaultSettings::default()
    };
    for service in [&faulty.mall, &faulty.member, &faulty.product] {
        service.set_faults(errors);
    }
    let complete_cards = render_cards(&faulty, CARDS).await;
    let calls = upstream_requests(&faulty);

    assert!(
        complete_cards * 100 >= 95 * CARDS,
        "{complete_cards} of {CARDS} cards complete"
    );
    assert!(
        calls as f64 <= 1.3 * fault_free_calls as f64,
        "{calls} upstream calls under faults vs {fault_free_calls} without"
    );
    let text = metrics_text(&faulty).await;
    assert!(
        text.contains(r#"bff_upstream_retries_total{upstream="#),
        "retries are counted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_tenants_broken_crm_opens_only_its_own_breaker_which_closes_after_recovery() {
    // Tenant `beta` has its own member service (a second demo server).
    let crm = beta_demo().await;
    let crm_member = crm.service(Service::Member);
    let crm_url = crm_member.base_url.clone();
    let app = spawn_app_with(|s| {
        s.demo.extra_tenants = vec![TenantId::parse("beta").unwrap()];
        s.upstreams.breaker.open_ms = 500;
        s.upstreams.tenants.insert(
            TenantId::parse("beta").unwrap(),
            bff::config::TenantUpstreams {
                member: Some(bff::config::TenantUpstream {
                    base_url: crm_url,
                    timeout_ms: Some(2_000),
                }),
                ..Default::default()
            },
        );
    })
    .await;
    let beta = app.token_for("beta", "member-1", Role::Member);
    let demo = app.token("member-1");

    // Beta's own CRM answers beta's cards.
    let body = card_with(&app, &beta, &[]).await;
    assert!(complete(&body), "{body}");
    assert!(
        crm_member.control.requests() > 0,
        "beta's member calls go to its CRM"
    );

    crm_member.control.set_faults(down());
    let mut opened = false;
    for _ in 0..40 {
        let body = card_with(&app, &beta, &[]).await;
        assert_eq!(body["data"]["homeCard"]["member"], Value::Null, "{body}");
        assert!(
            body["data"]["homeCard"]["recommended"].is_array(),
            "the rest of beta's card renders: {body}"
        );
        let text = metrics_text(&app).await;
        if metric(
            &text,
            r#"bff_upstream_breaker_state{tenant="beta",upstream="member"}"#,
        ) == Some(2.0)
        {
            opened = true;
            break;
        }
    }
    assert!(opened, "beta's member breaker opened");

    // Open: beta's cards fail fast without calling its CRM.
    let before = crm_member.control.requests();
    let body = card_with(&app, &beta, &[]).await;
    assert_eq!(crm_member.control.requests(), before, "no call while open");
    assert!(
        body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["extensions"]["code"] == "UPSTREAM_UNAVAILABLE"
                && e["extensions"]["upstream"] == "member"),
        "{body}"
    );
    // Other tenants are untouched.
    for _ in 0..5 {
        let body = card_with(&app, &demo, &[]).await;
        assert!(complete(&body), "{body}");
    }
    let text = metrics_text(&app).await;
    assert_eq!(
        metric(
            &text,
            r#"bff_upstream_breaker_state{tenant="demo",upstream="member"}"#
        ),
        Some(0.0),
        "{text}"
    );

    // Recovery: a probe after the open period closes the breaker.
    crm_member.control.set_faults(FaultSettings::default());
    let mut closed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if complete(&card_with(&app, &beta, &[]).await) {
            closed = true;
            break;
        }
    }
    assert!(closed, "beta's cards complete again after recovery");
    let text = metrics_text(&app).await;
    assert_eq!(
        metric(
            &text,
            r#"bff_upstream_breaker_state{tenant="beta",upstream="member"}"#
        ),
        Some(0.0)
    );
    assert!(
        metric(
            &text,
            r#"bff_upstream_breaker_transitions_total{tenant="beta",upstream="member",to="closed"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    let breakers = status(&app).await["breakers"].clone();
    assert!(
        breakers
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["tenant"] == "beta" && b["upstream"] == "member" && b["state"] == "closed"),
        "{breakers}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_stays_green_while_an_upstream_is_down_and_the_card_renders_partially() {
    let app = spawn_app().await;
    app.product.set_faults(down());

    let body = card_with(&app, &app.token("member-1"), &[]).await;
    assert_eq!(body["data"]["homeCard"]["mall"]["id"], "mall-1");
    assert_eq!(body["data"]["homeCard"]["recommended"], Value::Null);

    let before = upstream_requests(&app);
    for _ in 0..50 {
        let resp = app
            .http
            .get(format!("{}/readyz", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["ready"], true, "{body}");
    }
    assert_eq!(
        upstream_requests(&app),
        before,
        "probes cost no upstream call"
    );

    // The detailed view is for operators and shows the upstream down.
    let resp = app
        .http
        .get(format!("{}/status", app.url))
        .bearer_auth(app.token("member-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = app
        .http
        .get(format!("{}/status", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let status = status(&app).await;
    assert_eq!(status["upstreams"]["product"], "down", "{status}");
    assert_eq!(status["upstreams"]["mall"], "up", "{status}");
}

const PRICES: &str = r#"{ products(mallId: "mall-1", first: 20) { nodes { id price { list { amount } final { amount } applied { ruleId } } } } }"#;

/// The promotions applied to the member's first page, by product.
async fn promotions(app: &TestApp) -> Vec<(String, usize)> {
    let (status, body) = app.query(PRICES, Some(&app.token("member-1"))).await;
    assert_eq!(status, 200);
    assert!(body["errors"].is_null(), "{body}");
    body["data"]["products"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_owned(),
                p["price"]["applied"].as_array().unwrap().len(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_restarted_empty_keeps_the_promotions_and_reports_the_fault() {
    let ns = unique_namespace("restarted-empty");
    let app = spawn_app_with(|s| {
        s.redis_url = Some(redis_url());
        s.store.namespace = ns.clone();
    })
    .await;
    let before = promotions(&app).await;
    assert!(before.iter().any(|(_, n)| *n > 0), "the demo rules apply");

    // Redis comes back empty: this test's namespace only.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys = crate::local_redis::keys_matching(&mut conn, &format!("{ns}:*")).await;
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Any rule change announced by a node makes this one reload.
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{ns}:events"))
        .arg("rules\ndemo/member-price")
        .query_async(&mut conn)
        .await
        .unwrap();

    let mut reported = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = metrics_text(&app).await;
        if metric(&text, "bff_rule_registry_lost_tenants ") == Some(1.0) {
            reported = true;
            break;
        }
    }
    assert!(reported, "the lost registry shows in metrics");
    assert_eq!(
        promotions(&app).await,
        before,
        "prices keep their promotions"
    );
    let status = status(&app).await;
    assert_eq!(status["rules"]["lost_tenants"], json!(["demo"]), "{status}");

    // A rule change now would make one deployment the whole rule set.
    let author = app.token_for("demo", "author-1", Role::RuleAuthor);
    let (_, body) = app
        .query(
            r#"mutation { deactivateRule(name: "member-price") { status } }"#,
            Some(&author),
        )
        .await;
    assert_eq!(codes(&body), ["STORE_UNAVAILABLE"], "{body}");
}

/// A Redis server of this test's own on a free port.
struct OwnRedis {
    port: u16,
    child: std::process::Child,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        Self { port, child }
    }

    async fn wait_ready(&self) {
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_down_rule_changes_fail_fast_reads_serve_and_the_node_reconnects() {
    let port = free_port();
    let mut redis = OwnRedis::start(port);
    redis.wait_ready().await;
    let url = redis.url();
    let app = spawn_app_with(|s| {
        s.redis_url = Some(url);
        s.store.namespace = "bff-test-down".into();
    })
    .await;
    let before = promotions(&app).await;
    let author = app.token_for("demo", "author-1", Role::RuleAuthor);
    const LIST: &str = "{ ruleDeployments { name } }";
    let (_, body) = app.query(LIST, Some(&author)).await;
    assert!(body["errors"].is_null(), "{body}");

    redis.stop();

    for _ in 0..3 {
        let started = Instant::now();
        let (_, body) = app.query(LIST, Some(&author)).await;
        let took = started.elapsed();
        assert_eq!(codes(&body), ["STORE_UNAVAILABLE"], "{body}");
        // Generous for a loaded machine; the point is "not ~9 s".
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }
    let (_, body) = app
        .query(
            r#"mutation { deactivateRule(name: "member-price") { status } }"#,
            Some(&author),
        )
        .await;
    assert_eq!(codes(&body), ["STORE_UNAVAILABLE"], "{body}");
    // Reads go on with the rules the node has.
    assert_eq!(promotions(&app).await, before);
    // Readiness answers are cached for a second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let resp = app
        .http
        .get(format!("{}/readyz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503, "the store is part of readiness");

    // Redis is back (empty, so the demo rules are published afresh by
    // nobody): the node reconnects by itself.
    let redis = OwnRedis::start(port);
    redis.wait_ready().await;
    let mut back = false;
    for _ in 0..50 {
        let (_, body) = app.query(LIST, Some(&author)).await;
        if body["errors"].is_null() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back, "rule-author calls work again after Redis returns");
    drop(redis);
}

#[tokio::test]
async fn with_the_member_service_down_a_quote_is_public_marked_and_never_charged() {
    let app = spawn_app().await;
    let token = app.token("member-1");
    const QUOTE: &str = r#"query($c: CartInput!) {
      quote(input: $c) { payable { amount } degraded publicFallback applied { ruleId } }
    }"#;
    let cart = json!({ "mallId": "mall-1", "items": [{ "productId": "sku-1", "quantity": 2 }] });
    let (_, healthy) = app
        .query_vars(QUOTE, json!({ "c": cart }), Some(&token))
        .await;
    assert_eq!(healthy["errors"], Value::Null, "{healthy}");
    assert_eq!(healthy["data"]["quote"]["publicFallback"], false);
    let member_price = healthy["data"]["quote"]["payable"]["amount"]
        .as_i64()
        .unwrap();

    app.member.set_faults(down());
    let (_, public) = app
        .query_vars(QUOTE, json!({ "c": cart }), Some(&token))
        .await;
    let quote = &public["data"]["quote"];
    assert_eq!(quote["publicFallback"], true, "{public}");
    assert_eq!(quote["degraded"], true, "{public}");
    assert_eq!(codes(&public), ["UPSTREAM_UNAVAILABLE"], "{public}");
    let public_price = quote["payable"]["amount"].as_i64().unwrap();
    // The gold member's discount is left out, never guessed.
    assert!(public_price > member_price, "{public} vs {healthy}");

    // Points need the member: no guess either, the quote fails.
    let with_points = json!({ "mallId": "mall-1", "items": [{ "productId": "sku-1", "quantity": 2 }], "pointsToUse": 100 });
    let (_, refused) = app
        .query_vars(QUOTE, json!({ "c": with_points }), Some(&token))
        .await;
    assert_eq!(refused.get("data"), Some(&Value::Null), "{refused}");
    assert_eq!(codes(&refused), ["UPSTREAM_UNAVAILABLE"], "{refused}");

    // And a public price is never charged.
    let (_, checkout) = app
        .query_vars(
            "mutation($i: CheckoutInput!) { checkout(input: $i) { order { id } } }",
            json!({ "i": { "cart": cart, "idempotencyKey": "public-1" } }),
            Some(&token),
        )
        .await;
    let code = codes(&checkout);
    assert!(
        code == ["PRICE_DEGRADED"] || code == ["UPSTREAM_UNAVAILABLE"],
        "{checkout}"
    );
    assert_eq!(checkout.get("data"), Some(&Value::Null), "{checkout}");
}

/// A service that answers with a redirect is failing, not pointing
/// elsewhere: the BFF never follows it (an upstream must not be able to
/// send the BFF's calls, with their tenant paths, to another host).
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_redirect_is_an_error_and_is_never_followed() {
    // Where the redirects point: a working member service for `beta`.
    let elsewhere = beta_demo().await;
    let target = elsewhere.service(Service::Member);
    let target_url = target.base_url.to_string();
    // Beta's member service redirects every call there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirector = format!("http://{}/", listener.local_addr().unwrap());
    let router = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let location = format!(
            "{}{}",
            target_url.trim_end_matches('/'),
            uri.path_and_query().map_or("/", |p| p.as_str())
        );
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, location)],
            )
        }
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    let app = with_beta_member_service(&redirector).await;
    let beta = app.token_for("beta", "member-1", Role::Member);
    let body = card_with(&app, &beta, &[]).await;
    let card = &body["data"]["homeCard"];
    assert_eq!(card.get("member"), Some(&Value::Null), "{body}");
    assert!(card["recommended"].is_array(), "the rest renders: {body}");
    assert!(
        codes(&body).iter().any(|c| c == "UPSTREAM_UNAVAILABLE"),
        "{body}"
    );
    assert_eq!(
        target.control.requests(),
        0,
        "no call reached the redirect's target"
    );
}

/// A member service that predates `include=coupons` (the demo service
/// behind a proxy that drops that parameter): coupons still show, from the
/// coupons endpoint, and once the BFF knows, it asks both endpoints at
/// once rather than one after the other.
#[tokio::test]
async fn a_member_service_that_does_not_embed_coupons_is_asked_for_them_separately() {
    let demo = beta_demo().await;
    let target = demo.service(Service::Member).base_url.to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}/", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let router = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let (target, log) = (target.clone(), log.clone());
        async move {
            // Everything but `include`, as a service that does not know it.
            let query: Vec<&str> = uri
                .query()
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty() && !p.starts_with("include="))
                .collect();
            log.lock().unwrap().push(uri.path().to_owned());
            let url = format!(
                "{}{}?{}",
                target.trim_end_matches('/'),
                uri.path(),
                query.join("&")
            );
            let resp = reqwest::get(url).await.unwrap();
            let status = axum::http::StatusCode::from_u16(resp.status().as_u16()).unwrap();
            (status, resp.text().await.unwrap())
        }
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    let app = with_beta_member_service(&proxy).await;
    let beta = app.token_for("beta", "member-1", Role::Member);
    let calls = |suffix: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|p| p.ends_with(suffix))
            .count()
    };
    // A complete card showing the member's coupons.
    let with_coupons = |body: &Value| {
        complete(body)
            && body["data"]["homeCard"]["coupons"]
                .as_array()
                .is_some_and(|c| c.len() >= 2)
    };
    for round in 1..=2 {
        let body = card_with(&app, &beta, &[]).await;
        assert!(with_coupons(&body), "{body}");
        assert_eq!(calls("/members"), round, "one member call per card");
        assert_eq!(calls("/coupons"), round, "one coupons call per card");
    }

    // The default tenant's member service embeds them: one call a card.
    let demo_token = app.token("member-1");
    let body = card_with(&app, &demo_token, &[]).await;
    assert!(with_coupons(&body), "{body}");
    assert_eq!(app.member.requests(), 1, "member and coupons in one call");
}
