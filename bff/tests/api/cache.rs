//! The two-level cache on the card path: stale-if-error, single flight on
//! one node and across nodes sharing Redis, warm cards, pre-warm,
//! invalidation on every node, and the embedded store on one node.

use std::time::Duration;

use bff::auth::Role;
use bff::config::{FaultSettings, Settings};
use serde_json::{Value, json};

use crate::helpers::{TestApp, codes, down, spawn_app, spawn_app_with, spawn_second_node};
use crate::store::{redis_url, unique_namespace};

/// A public card: mall, both product lists with their stores and prices.
const CARD: &str = r#"{
  homeCard(mallId: "mall-1") {
    mall { id name openingHours { opens closes } }
    flashSale { id name price { final { amount } } store { id name } }
    recommended { id name price { final { amount } } store { id name } }
  }
}"#;

fn on_redis(test: &str) -> impl FnOnce(&mut Settings) {
    let namespace = unique_namespace(test);
    move |s: &mut Settings| {
        s.redis_url = Some(redis_url());
        s.store.namespace = namespace;
    }
}

/// Calls made to the services that feed the cached kinds.
fn catalogue_requests(app: &TestApp) -> u64 {
    app.mall.requests() + app.product.requests()
}

async fn invalidate(app: &TestApp, token: &str, body: Value) -> (u16, Value) {
    let resp = app
        .http
        .post(format!("{}/admin/cache/invalidate", app.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn stale_kinds(body: &Value) -> Vec<(String, String)> {
    let mut parts: Vec<(String, String)> = body["extensions"]["stale"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .map(|p| {
                    (
                        p["kind"].as_str().unwrap_or_default().to_owned(),
                        p["id"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    parts
}

#[tokio::test]
async fn with_the_mall_service_down_after_a_warm_up_cards_show_the_mall_marked_stale() {
    let redis = on_redis("stale");
    let app = spawn_app_with(|s| {
        redis(s);
        s.cache.mall_ttl_secs = 1;
        s.cache.store_ttl_secs = 1;
        s.cache.stale_secs = 600;
    })
    .await;
    let (_, warm) = app.query(CARD, None).await;
    assert_eq!(warm["errors"], Value::Null, "{warm}");
    assert_eq!(warm["extensions"]["stale"], Value::Null, "{warm}");
    // Past the malls' and stores' freshness, with their service down.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    app.mall.set_faults(down());

    let (status, body) = app.query(CARD, None).await;

    assert_eq!(status, 200);
    assert_eq!(body["errors"], Value::Null, "{body}");
    let card = &body["data"]["homeCard"];
    assert_eq!(card["mall"]["id"], "mall-1");
    assert_eq!(
        card["mall"]["name"],
        warm["data"]["homeCard"]["mall"]["name"]
    );
    assert!(card["recommended"][0]["store"]["id"].is_string(), "{body}");
    let stale = stale_kinds(&body);
    assert!(stale.contains(&("mall".into(), "mall-1".into())), "{body}");
    assert!(stale.iter().any(|(kind, _)| kind == "store"), "{body}");
    // Product lists are still fresh: not marked.
    assert!(
        stale
            .iter()
            .all(|(kind, _)| kind == "mall" || kind == "store"),
        "{body}"
    );
    assert!(app.state.metrics().cache_lookups("mall", "l2", "stale") >= 1);

    // Back up: fresh again, no longer marked.
    app.mall.set_faults(FaultSettings::default());
    let (_, body) = app.query(CARD, None).await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    assert_eq!(body["extensions"]["stale"], Value::Null, "{body}");
}

#[tokio::test]
async fn two_hundred_cold_cards_on_two_nodes_make_one_mall_call_per_node_at_most_and_warm_cards_almost_none()
 {
    let redis = on_redis("single-flight");
    let a = spawn_app_with(redis).await;
    let b = spawn_second_node(&a, |_| {}).await;
    // A slow mall service: every cold card is in flight at once.
    a.mall.set_faults(FaultSettings {
        latency_ms: 300,
        ..FaultSettings::default()
    });

    let cards = (0..200).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        node.query(CARD, None)
    });
    let bodies = futures::future::join_all(cards).await;

    for (status, body) in &bodies {
        assert_eq!(*status, 200);
        assert_eq!(body["errors"], Value::Null, "{body}");
        assert_eq!(body["data"]["homeCard"]["mall"]["id"], "mall-1");
    }
    // The demo mall service serves both nodes; it saw at most one mall
    // lookup and one store lookup per node.
    let mall_lookups = a.calls("mall", "malls.batch") + b.calls("mall", "malls.batch");
    assert!(mall_lookups <= 2, "{mall_lookups} mall lookups");
    assert!(
        a.mall.requests() <= 4,
        "{} mall service requests",
        a.mall.requests()
    );
    for endpoint in ["flash_sales.list", "products.listing"] {
        let calls = a.calls("product", endpoint) + b.calls("product", endpoint);
        assert!(calls <= 2, "{calls} calls to {endpoint}");
    }

    // Warm: a hundred more cards over both nodes.
    let before = catalogue_requests(&a);
    for i in 0..100 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (_, body) = node.query(CARD, None).await;
        assert_eq!(body["errors"], Value::Null, "{body}");
    }
    let per_card = (catalogue_requests(&a) - before) as f64 / 100.0;
    assert!(per_card <= 0.1, "{per_card} upstream calls per warm card");
}

#[tokio::test]
async fn an_invalidation_reaches_the_other_node_within_a_second() {
    let redis = on_redis("invalidate");
    let a = spawn_app_with(redis).await;
    let b = spawn_second_node(&a, |_| {}).await;
    a.query(CARD, None).await;
    b.query(CARD, None).await;
    let b_before = b.calls("mall", "malls.batch");
    // Both nodes hold the mall: another card on B asks nobody.
    b.query(CARD, None).await;
    assert_eq!(b.calls("mall", "malls.batch"), b_before);

    let operator = a.token_for("demo", "ops-1", Role::Operator);
    let (status, body) =
        invalidate(&a, &operator, json!({ "kind": "mall", "key": "mall-1" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["invalidated"]["kind"], "mall");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (_, body) = b.query(CARD, None).await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    assert_eq!(b.calls("mall", "malls.batch"), b_before + 1);
}

#[tokio::test]
async fn invalidation_needs_an_operator_of_the_tenant_and_a_known_kind() {
    let app = spawn_app_with(|_| {}).await;
    let body = json!({ "kind": "mall", "key": "mall-1" });

    let member = app.token("member-1");
    let (status, refused) = invalidate(&app, &member, body.clone()).await;
    assert_eq!(status, 403);
    assert_eq!(codes(&refused), ["FORBIDDEN"]);

    let author = app.token_for("demo", "author-1", Role::RuleAuthor);
    assert_eq!(invalidate(&app, &author, body.clone()).await.0, 403);

    let resp = app
        .http
        .post(format!("{}/admin/cache/invalidate", app.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    let operator = app.token_for("demo", "ops-1", Role::Operator);
    for bad in [
        json!({ "kind": "member", "key": "member-1" }),
        json!({ "kind": "mall", "key": "../x" }),
        json!({ "kind": "mall" }),
        json!("mall-1"),
    ] {
        let (status, refused) = invalidate(&app, &operator, bad.clone()).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(codes(&refused), ["BAD_USER_INPUT"], "{bad}");
    }
}

#[tokio::test]
async fn on_the_embedded_store_one_node_caches_serves_stale_and_invalidates() {
    let app = spawn_app_with(|s| {
        s.cache.mall_ttl_secs = 1;
        s.cache.stale_secs = 600;
    })
    .await;
    assert_eq!(app.state.store().kind(), "embedded");
    app.query(CARD, None).await;
    app.query(CARD, None).await;
    assert_eq!(app.calls("mall", "malls.batch"), 1);
    assert_eq!(app.calls("product", "flash_sales.list"), 1);
    assert!(app.state.metrics().cache_lookups("mall", "l1", "hit") >= 1);

    tokio::time::sleep(Duration::from_millis(1_300)).await;
    app.mall.set_faults(down());
    let (_, body) = app.query(CARD, None).await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    assert!(
        stale_kinds(&body).contains(&("mall".into(), "mall-1".into())),
        "{body}"
    );

    // Invalidated, nothing is left to serve stale: the card now fails on
    // its mall, naming the service.
    let operator = app.token_for("demo", "ops-1", Role::Operator);
    let (status, _) = invalidate(&app, &operator, json!({ "kind": "mall", "key": "mall-1" })).await;
    assert_eq!(status, 200);
    let (_, body) = app.query(CARD, None).await;
    assert_eq!(body.get("data"), Some(&Value::Null), "{body}");
    assert_eq!(codes(&body), ["UPSTREAM_UNAVAILABLE"]);
}

#[tokio::test]
async fn flash_sales_are_pre_warmed_before_any_card_asks_for_them() {
    let redis = on_redis("prewarm");
    let app = spawn_app_with(|s| {
        redis(s);
        s.cache.prewarm_interval_secs = 3_600;
    })
    .await;
    // The pre-warm asks for every mall's flash sales once at start.
    let mut waited = Duration::ZERO;
    while app.calls("product", "flash_sales.list") < 3 && waited < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert_eq!(app.calls("product", "flash_sales.list"), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (_, body) = app.query(CARD, None).await;

    assert_eq!(body["errors"], Value::Null, "{body}");
    assert!(
        !body["data"]["homeCard"]["flashSale"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(app.calls("product", "flash_sales.list"), 3);
    // A second node finds them in the shared level.
    let b = spawn_second_node(&app, |_| {}).await;
    let (_, body) = b.query(CARD, None).await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    assert_eq!(b.calls("product", "flash_sales.list"), 0);
    assert!(b.state.metrics().cache_lookups("flash_sale", "l2", "hit") >= 1);
}

#[tokio::test]
async fn every_configured_tenant_and_every_tenant_seen_lately_is_pre_warmed() {
    use bff::domain::TenantId;
    let beta = TenantId::parse("beta").unwrap();
    let app = spawn_app_with(|s| {
        s.demo.extra_tenants = vec![TenantId::parse("beta").unwrap()];
        s.cache.prewarm_interval_secs = 3_600;
    })
    .await;
    // Three malls for each of the two tenants, once at start.
    let mut waited = Duration::ZERO;
    while app.calls("product", "flash_sales.list") < 6 && waited < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert_eq!(app.calls("product", "flash_sales.list"), 6);

    // Beta's card finds its flash sales warm.
    let token = app.token_for("beta", "member-1", Role::Member);
    let (_, body) = app.query(CARD, Some(&token)).await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    assert!(
        !body["data"]["homeCard"]["flashSale"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{body}"
    );
    assert_eq!(app.calls("product", "flash_sales.list"), 6);
    // A tenant whose members browse flash sales is remembered for the next
    // round even when the configuration does not name it.
    let products = &app.state.catalog().products;
    assert_eq!(products.prewarm_tenants([]), vec![beta.clone()]);
    let (_, body) = app.query(CARD, None).await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    let demo = TenantId::parse("demo").unwrap();
    assert_eq!(products.prewarm_tenants([demo.clone()]), vec![beta, demo]);
}

#[tokio::test]
async fn a_product_page_is_cached_shared_by_nodes_and_served_stale_when_the_service_fails() {
    const PAGE: &str = r#"{ product(id: "sku-flash-1") { id name listPrice { amount } } }"#;
    let redis = on_redis("product-page");
    let app = spawn_app_with(|s| {
        redis(s);
        s.cache.product_ttl_secs = 1;
        s.cache.stale_secs = 600;
    })
    .await;
    let (_, first) = app.query(PAGE, None).await;
    assert_eq!(first["errors"], Value::Null, "{first}");
    assert_eq!(first["data"]["product"]["id"], "sku-flash-1");
    let (_, again) = app.query(PAGE, None).await;
    assert_eq!(again, first);
    assert_eq!(app.calls("product", "products.batch"), 1);
    // A second node finds it in the shared level.
    let b = spawn_second_node(&app, |_| {}).await;
    let (_, there) = b.query(PAGE, None).await;
    assert_eq!(there, first);
    assert_eq!(b.calls("product", "products.batch"), 0);

    // Expired, with the product service down: served stale, marked so.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    app.product.set_faults(down());
    let (_, stale) = app.query(PAGE, None).await;
    assert_eq!(stale["data"], first["data"], "{stale}");
    assert!(
        stale_kinds(&stale).contains(&("product".into(), "sku-flash-1".into())),
        "{stale}"
    );
}

/// A quote prices from the product service itself, even when a card in the
/// same document listed the product from the catalogue cache.
#[tokio::test]
async fn a_quote_beside_a_card_reads_the_product_service_itself() {
    let app = spawn_app().await;
    let token = app.token("member-1");
    const BOTH: &str = r#"{
      homeCard(mallId: "mall-1") { flashSale { id } }
      quote(input: { mallId: "mall-1", items: [{ productId: "sku-flash-1", quantity: 1 }] }) { id }
    }"#;
    // Warm the card's caches first.
    let (_, body) = app.query(BOTH, Some(&token)).await;
    assert!(body.get("errors").is_none(), "{body}");
    assert!(
        body["data"]["homeCard"]["flashSale"]
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p["id"] == "sku-flash-1")),
        "the card lists the quoted product: {body}"
    );
    let before = app.calls("product", "products.batch");
    let (_, body) = app.query(BOTH, Some(&token)).await;
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(
        app.calls("product", "products.batch") - before,
        1,
        "the quote asked the product service"
    );
}
