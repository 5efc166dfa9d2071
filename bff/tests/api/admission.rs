//! Admission control: member and tenant rates shared by nodes on one
//! Redis (and in-process on the embedded store), 429 with `Retry-After`;
//! the node's concurrency limit sheds with 503 while probes still answer.

use std::time::Duration;

use bff::auth::Role;
use bff::config::{FaultSettings, RateLimits, Settings};
use serde_json::{Value, json};

use crate::helpers::{TestApp, codes, spawn_app_with, spawn_second_node};
use crate::store::{redis_url, unique_namespace};

const CHEAP: &str = "{ __typename }";

/// Sends `query` and returns the status, the `Retry-After` header and the
/// body.
async fn send(app: &TestApp, token: Option<&str>) -> (u16, Option<u64>, Value) {
    let mut req = app
        .http
        .post(format!("{}/graphql", app.url))
        .json(&json!({ "query": CHEAP }));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry, resp.json().await.unwrap())
}

/// Checks a refused answer and reports whether the request was admitted.
fn admitted(answer: &(u16, Option<u64>, Value)) -> bool {
    let (status, retry, body) = answer;
    if *status == 200 {
        assert_eq!(body["data"]["__typename"], "Query", "{body}");
        return true;
    }
    assert_eq!(*status, 429, "{body}");
    assert_eq!(codes(body), ["RATE_LIMITED"]);
    assert!(retry.is_some_and(|s| s >= 1), "Retry-After: {retry:?}");
    false
}

fn slow_member_rate(s: &mut Settings) {
    // Ten at once, then one every 100 s: nothing refills during the test.
    s.admission.limits.member_per_sec = 0.01;
    s.admission.limits.member_burst = 10;
}

#[tokio::test]
async fn a_members_rate_holds_across_two_nodes_sharing_redis() {
    let namespace = unique_namespace("member-rate");
    let a = spawn_app_with(|s| {
        s.redis_url = Some(redis_url());
        s.store.namespace = namespace;
        slow_member_rate(s);
    })
    .await;
    let b = spawn_second_node(&a, slow_member_rate).await;
    let token = a.token("member-1");

    let answers = futures::future::join_all((0..30).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        send(node, Some(&token))
    }))
    .await;

    let admitted = answers.iter().filter(|a| admitted(a)).count();
    assert_eq!(admitted, 10, "the burst of 10 is shared by both nodes");
    // Another member has a rate of their own.
    assert!(admitted_now(&b, Some(&a.token("member-2"))).await);
    let refused =
        a.state.metrics().admissions("rate_limited") + b.state.metrics().admissions("rate_limited");
    assert_eq!(refused, 20);
}

async fn admitted_now(app: &TestApp, token: Option<&str>) -> bool {
    admitted(&send(app, token).await)
}

#[tokio::test]
async fn a_tenant_override_limits_that_tenant_only() {
    let namespace = unique_namespace("tenant-rate");
    let a = spawn_app_with(|s| {
        s.redis_url = Some(redis_url());
        s.store.namespace = namespace;
        s.admission.tenants.insert(
            "demo".into(),
            RateLimits {
                tenant_per_sec: 0.01,
                tenant_burst: 5,
                ..RateLimits::default()
            },
        );
    })
    .await;

    let mut demo = 0;
    for _ in 0..8 {
        if admitted_now(&a, None).await {
            demo += 1;
        }
    }
    let other = a.token_for("other", "member-9", Role::Member);
    let mut others = 0;
    for _ in 0..8 {
        if admitted_now(&a, Some(&other)).await {
            others += 1;
        }
    }

    assert_eq!(demo, 5, "anonymous visitors count against their tenant");
    assert_eq!(others, 8);
}

#[tokio::test]
async fn on_the_embedded_store_a_members_rate_holds_in_process() {
    let app = spawn_app_with(slow_member_rate).await;
    assert_eq!(app.state.store().kind(), "embedded");
    let token = app.token("member-1");

    let mut admitted_count = 0;
    for _ in 0..15 {
        if admitted_now(&app, Some(&token)).await {
            admitted_count += 1;
        }
    }

    assert_eq!(admitted_count, 10);
}

#[tokio::test]
async fn a_batch_costs_one_request_per_operation() {
    let app = spawn_app_with(slow_member_rate).await;
    let token = app.token("member-1");
    let batch = |n: usize| {
        app.http
            .post(format!("{}/graphql", app.url))
            .bearer_auth(&token)
            .json(&vec![json!({ "query": CHEAP }); n])
            .send()
    };

    // Seven operations in one batch, then three more: the burst of ten is
    // spent, so a single request is refused.
    let resp = batch(7).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body.as_array().map(Vec::len), Some(7), "{body}");
    let resp = batch(4).await.unwrap();
    assert_eq!(resp.status(), 429, "4 operations exceed the 3 left");
    let resp = batch(3).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!admitted_now(&app, Some(&token)).await);
}

#[tokio::test]
async fn a_full_node_sheds_requests_with_503_and_still_answers_its_probes() {
    let app = spawn_app_with(|s| s.admission.max_concurrent = 2).await;
    // Cards wait on a slow mall service and hold their slots.
    app.mall.set_faults(FaultSettings {
        latency_ms: 3_000,
        ..FaultSettings::default()
    });
    let card = r#"{ homeCard(mallId: "mall-1") { mall { id } } }"#;
    let cards = futures::future::join_all((0..6).map(|_| async {
        let resp = app
            .http
            .post(format!("{}/graphql", app.url))
            .json(&json!({ "query": card }))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let retry = resp.headers().get("retry-after").cloned();
        (status, retry, resp.json::<Value>().await.unwrap())
    }));
    let probes = async {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let mut statuses = Vec::new();
        for path in ["healthz", "metrics"] {
            let resp = app
                .http
                .get(format!("{}/{path}", app.url))
                .send()
                .await
                .unwrap();
            statuses.push(resp.status().as_u16());
        }
        statuses
    };
    let (answers, probes) = futures::join!(cards, probes);

    assert_eq!(probes, [200, 200]);
    let served = answers.iter().filter(|(s, _, _)| *s == 200).count();
    let shed: Vec<_> = answers.iter().filter(|(s, _, _)| *s != 200).collect();
    assert!((1..=2).contains(&served), "{served} served at once");
    assert!(!shed.is_empty());
    for (status, retry, body) in &shed {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(codes(body), ["OVERLOADED"]);
        assert_eq!(retry.as_ref().and_then(|v| v.to_str().ok()), Some("1"));
    }
    assert_eq!(app.state.metrics().admissions("shed"), shed.len() as u64);
}
