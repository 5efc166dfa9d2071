use std::collections::HashSet;
use std::time::{Duration, Instant};

use bff::config::FaultSettings;
use serde_json::Value;

use crate::helpers::{cache_off, codes, down, spawn_app, spawn_app_with};

const CARD: &str = r#"{
  homeCard(mallId: "mall-1") {
    mall { id name openingHours { opens closes } }
    member { id level points }
    coupons { id kind }
    flashSale { id name listPrice { amount } price { final { amount } } store { id name } }
    recommended { id name price { list { amount } final { amount } savings { amount } applied { ruleId } } store { id name } }
  }
}"#;

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_members_home_card_has_everything_from_one_call_per_upstream_endpoint() {
    let app = spawn_app().await;
    let token = app.token("member-1");

    let (status, body) = app.query(CARD, Some(&token)).await;

    assert_eq!(status, 200);
    assert_eq!(body["errors"], Value::Null, "{body}");
    let card = &body["data"]["homeCard"];
    assert_eq!(card["mall"]["id"], "mall-1");
    assert_eq!(card["member"]["id"], "member-1");
    assert_eq!(card["member"]["level"], "GOLD");
    assert_eq!(card["member"]["points"], 10_000);
    assert!(card["coupons"].as_array().unwrap().len() >= 2);
    assert!(ids(&card["flashSale"]).contains(&"sku-flash-1".to_owned()));
    assert!(ids(&card["recommended"]).len() >= 5);
    let stores: HashSet<&str> = card["flashSale"]
        .as_array()
        .unwrap()
        .iter()
        .chain(card["recommended"].as_array().unwrap())
        .map(|p| {
            p["store"]["id"]
                .as_str()
                .expect("every product has its store")
        })
        .collect();
    assert!(
        stores.len() >= 3,
        "products come from several stores: {stores:?}"
    );
    // The gold member sees member prices from the demo rules; pricing both
    // lists costs no upstream call of its own (checked below).
    let mut member_priced = 0;
    for p in card["recommended"].as_array().unwrap() {
        let price = &p["price"];
        let (list, fin) = (
            price["list"]["amount"].as_i64().unwrap(),
            price["final"]["amount"].as_i64().unwrap(),
        );
        assert_eq!(price["savings"]["amount"].as_i64().unwrap(), list - fin);
        if price["applied"][0]["ruleId"] == "member-price@1" {
            assert_eq!(fin, list - list * 500 / 10000, "{p}");
            member_priced += 1;
        }
    }
    assert!(member_priced > 0, "{card}");

    for (upstream, endpoint) in [
        ("mall", "malls.batch"),
        ("mall", "stores.batch"),
        // The member with their coupons embedded.
        ("member", "members.batch"),
        ("product", "flash_sales.list"),
        ("product", "products.listing"),
    ] {
        assert_eq!(app.calls(upstream, endpoint), 1, "{upstream} {endpoint}");
    }
    assert_eq!(app.calls("product", "products.batch"), 0);
    assert_eq!(app.calls("member", "coupons.list"), 0);
    // And the services themselves saw exactly those requests.
    assert_eq!(app.mall.requests(), 2);
    assert_eq!(app.member.requests(), 1);
    assert_eq!(app.product.requests(), 2);
}

#[tokio::test]
async fn a_public_card_renders_without_a_member_or_coupons_and_asks_no_member_service() {
    let app = spawn_app().await;

    let (status, body) = app.query(CARD, None).await;

    assert_eq!(status, 200);
    assert_eq!(body["errors"], Value::Null, "{body}");
    let card = &body["data"]["homeCard"];
    assert_eq!(card["member"], Value::Null);
    assert_eq!(card["coupons"], serde_json::json!([]));
    assert!(!ids(&card["recommended"]).is_empty());
    assert_eq!(app.member.requests(), 0);
}

#[tokio::test]
async fn with_the_product_service_down_the_card_renders_without_products() {
    let app = spawn_app().await;
    app.product.set_faults(down());

    let (status, body) = app.query(CARD, Some(&app.token("member-1"))).await;

    assert_eq!(status, 200);
    let card = &body["data"]["homeCard"];
    assert_eq!(card["mall"]["id"], "mall-1");
    assert_eq!(card["member"]["id"], "member-1");
    assert_eq!(card["flashSale"], Value::Null);
    assert_eq!(card["recommended"], Value::Null);
    let errors = body["errors"].as_array().expect("errors explain the nulls");
    assert_eq!(errors.len(), 2, "{body}");
    for err in errors {
        assert_eq!(err["extensions"]["code"], "UPSTREAM_UNAVAILABLE");
        assert_eq!(err["extensions"]["upstream"], "product");
        assert!(err["message"].as_str().unwrap().contains("product"));
    }
    let paths: HashSet<String> = errors.iter().map(|e| e["path"].to_string()).collect();
    assert!(paths.contains(r#"["homeCard","flashSale"]"#), "{paths:?}");
    assert!(paths.contains(r#"["homeCard","recommended"]"#), "{paths:?}");
}

#[tokio::test]
async fn a_slow_product_service_is_cut_off_at_its_timeout_and_the_card_still_renders() {
    let app = spawn_app_with(|s| s.upstreams.product.timeout_ms = 200).await;
    app.product.set_faults(FaultSettings {
        latency_ms: 5_000,
        ..FaultSettings::default()
    });

    let started = Instant::now();
    let (status, body) = app.query(CARD, Some(&app.token("member-1"))).await;
    let took = started.elapsed();

    assert_eq!(status, 200);
    // Far below the upstream's 5 s: the card did not wait for it.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let card = &body["data"]["homeCard"];
    assert_eq!(card["member"]["id"], "member-1");
    assert_eq!(card["recommended"], Value::Null);
    assert!(
        codes(&body).iter().all(|c| c == "UPSTREAM_TIMEOUT"),
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("in time")
    );
}

#[tokio::test]
async fn with_the_member_service_down_the_card_renders_with_a_null_member() {
    let app = spawn_app().await;
    app.member.set_faults(down());

    let (_, body) = app.query(CARD, Some(&app.token("member-1"))).await;

    let card = &body["data"]["homeCard"];
    assert_eq!(card["member"], Value::Null);
    assert_eq!(card["coupons"], Value::Null);
    assert!(!ids(&card["recommended"]).is_empty());
    let errors = body["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .all(|e| e["extensions"]["upstream"] == "member"),
        "{body}"
    );
}

#[tokio::test]
async fn an_unknown_mall_is_not_found_and_a_malformed_id_is_bad_input() {
    let app = spawn_app().await;

    let (_, body) = app
        .query(r#"{ homeCard(mallId: "mall-999") { mall { id } } }"#, None)
        .await;
    assert_eq!(codes(&body), ["NOT_FOUND"]);
    assert_eq!(body.get("data"), Some(&Value::Null), "{body}");

    let (_, body) = app
        .query(
            r#"{ homeCard(mallId: "../etc/passwd") { mall { id } } }"#,
            None,
        )
        .await;
    assert_eq!(codes(&body), ["BAD_USER_INPUT"]);
    assert_eq!(
        app.mall.requests(),
        1,
        "a malformed id never reaches an upstream"
    );
}

#[tokio::test]
async fn every_malls_stores_come_from_one_batch_call() {
    let app = spawn_app().await;

    let (_, body) = app.query("{ malls { id stores { id name } } }", None).await;

    let malls = body["data"]["malls"].as_array().unwrap();
    assert_eq!(malls.len(), 3);
    for mall in malls {
        assert_eq!(mall["stores"].as_array().unwrap().len(), 20);
    }
    assert_eq!(app.calls("mall", "stores.by_mall"), 1);
}

#[tokio::test]
async fn a_second_card_reuses_cached_reference_and_catalogue_data_but_fetches_personal_data_again()
{
    let app = spawn_app().await;
    let token = app.token("member-1");

    let (_, first) = app.query(CARD, Some(&token)).await;
    let (_, second) = app.query(CARD, Some(&token)).await;

    assert_eq!(first, second);
    assert_eq!(app.calls("mall", "malls.batch"), 1);
    assert_eq!(app.calls("mall", "stores.batch"), 1);
    assert_eq!(app.calls("member", "members.batch"), 2);
    assert_eq!(app.calls("member", "coupons.list"), 0);
    assert_eq!(app.calls("product", "products.listing"), 1);
    assert_eq!(app.calls("product", "flash_sales.list"), 1);
}

#[tokio::test]
async fn with_the_reference_cache_off_every_card_asks_the_mall_service() {
    let app = spawn_app_with(cache_off).await;

    app.query(CARD, None).await;
    app.query(CARD, None).await;

    assert_eq!(app.calls("mall", "malls.batch"), 2);
    assert_eq!(app.calls("mall", "stores.batch"), 2);
}

#[tokio::test]
async fn cached_stores_keep_the_card_whole_while_the_mall_service_is_down() {
    let app = spawn_app().await;
    app.query(CARD, None).await;
    app.mall.set_faults(down());

    let (_, body) = app.query(CARD, None).await;

    assert_eq!(body["errors"], Value::Null, "{body}");
    assert!(body["data"]["homeCard"]["recommended"][0]["store"]["id"].is_string());
}

#[tokio::test]
async fn with_the_mall_service_down_and_nothing_cached_the_card_fails_naming_the_mall_service() {
    let app = spawn_app().await;
    app.mall.set_faults(down());

    let (status, body) = app.query(CARD, Some(&app.token("member-1"))).await;

    // A card without its mall cannot render: the whole card is null, and
    // the error says which service is to blame.
    assert_eq!(status, 200);
    assert_eq!(body.get("data"), Some(&Value::Null), "{body}");
    assert_eq!(codes(&body), ["UPSTREAM_UNAVAILABLE"]);
    assert_eq!(body["errors"][0]["extensions"]["upstream"], "mall");
}

#[tokio::test]
async fn the_member_is_fetched_once_however_many_fields_ask_for_it() {
    let app = spawn_app().await;
    let query = r#"{
      me { id coupons { id } }
      a: homeCard(mallId: "mall-1") { member { id } coupons { id } }
      b: homeCard(mallId: "mall-2") { member { level } coupons { id } }
    }"#;

    let (_, body) = app.query(query, Some(&app.token("member-1"))).await;

    assert_eq!(body["errors"], Value::Null, "{body}");
    assert_eq!(body["data"]["b"]["member"]["level"], "GOLD");
    assert_eq!(app.calls("member", "members.batch"), 1);
    assert_eq!(app.calls("member", "coupons.list"), 1);
}

#[tokio::test]
async fn when_stores_cannot_be_loaded_each_product_says_so_without_asking_again() {
    let app = spawn_app_with(|s| {
        cache_off(s);
        // One logical call: the products must not each ask again (retries
        // of that one call are `resilience`'s subject).
        s.upstreams.retry.max_retries = 0;
    })
    .await;
    // Malls answer, stores do not: only the store batch fails.
    let (_, warm) = app.query(r#"{ mall(id: "mall-1") { id } }"#, None).await;
    assert_eq!(warm["errors"], Value::Null);
    app.mall.set_faults(down());

    let (_, body) = app
        .query(
            r#"{ products(mallId: "mall-1", first: 10) { nodes { id store { id } } } }"#,
            None,
        )
        .await;

    let nodes = body["data"]["products"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 10);
    assert!(nodes.iter().all(|n| n["store"].is_null()));
    assert!(codes(&body).iter().all(|c| c == "UPSTREAM_UNAVAILABLE"));
    assert_eq!(
        app.calls("mall", "stores.batch"),
        1,
        "one failed batch, no retries"
    );
}

#[tokio::test]
async fn metrics_expose_upstream_calls_per_endpoint_and_outcome() {
    let app = spawn_app_with(|s| s.upstreams.retry.max_retries = 0).await;
    app.product.set_faults(down());
    app.query(CARD, None).await;

    let text = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    assert!(
        text.contains(
            r#"bff_upstream_calls_total{upstream="mall",endpoint="malls.batch",outcome="ok"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"bff_upstream_calls_total{upstream="product",endpoint="products.listing",outcome="error"} 1"#), "{text}");
    assert!(text.contains("bff_graphql_requests_total"));
}

/// A tenant with no rule in force sees every product at its list price:
/// nothing applied, nothing degraded.
#[tokio::test]
async fn without_rules_every_price_is_the_list_price() {
    let app = spawn_app_with(|s| s.rules.demo_deployments = false).await;
    let token = app.token("member-1");
    let (_, body) = app
        .query(
            r#"{ homeCard(mallId: "mall-1") {
                flashSale { listPrice { amount } price { final { amount } } }
                recommended { listPrice { amount } price { list { amount } final { amount } savings { amount } applied { ruleId } degraded } }
            } }"#,
            Some(&token),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let card = &body["data"]["homeCard"];
    let mut seen = 0;
    for list in ["flashSale", "recommended"] {
        for p in card[list].as_array().expect("a list") {
            let amount = &p["listPrice"]["amount"];
            assert!(amount.as_i64().is_some_and(|a| a > 0), "{p}");
            assert_eq!(&p["price"]["final"]["amount"], amount, "{p}");
            seen += 1;
        }
    }
    for p in card["recommended"].as_array().unwrap() {
        assert_eq!(&p["price"]["list"]["amount"], &p["listPrice"]["amount"]);
        assert_eq!(p["price"]["savings"]["amount"], 0, "{p}");
        assert_eq!(p["price"]["applied"], Value::Array(vec![]), "{p}");
        assert_eq!(p["price"]["degraded"], false, "{p}");
    }
    assert!(seen >= 10, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_burst_of_cards_reuses_the_member_service_connections_of_the_first() {
    let app = spawn_app().await;
    // Slow enough that the cards of a burst all hold a member-service
    // connection at once, even on a busy machine (within the 1 s request
    // budget).
    app.member.set_faults(FaultSettings {
        latency_ms: 600,
        ..FaultSettings::default()
    });
    let token = app.token("member-1");
    let burst = || futures::future::join_all((0..150).map(|_| app.query(CARD, Some(&token))));

    for (status, body) in burst().await {
        assert_eq!(status, 200);
        assert_eq!(body["errors"], Value::Null, "{body}");
    }
    let first = app.member.connections();
    assert!(
        first >= 100,
        "the first burst's member calls overlapped: {first} connections"
    );

    for (status, body) in burst().await {
        assert_eq!(status, 200);
        assert_eq!(body["errors"], Value::Null, "{body}");
    }
    // Every connection of the first burst was kept for the next one.
    let second = app.member.connections() - first;
    assert!(
        second <= 15,
        "{second} new connections for the second burst"
    );
}
