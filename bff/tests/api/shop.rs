//! The member-facing path end to end: the payment simulator, the shop demo
//! page in real headless Chromium, and checkouts of the flash SKU on two BFF
//! nodes sharing one Redis namespace.

use bff::domain::{MallId, ProductId, TenantId};
use bff::store::checkout::Scope;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{TestApp, codes, run_browser_test, spawn_app, spawn_app_with};
use crate::store::{redis_url, unique_namespace};

const CHECKOUT: &str = r#"mutation($input: CheckoutInput!) {
  checkout(input: $input) { order { id status externalAmount { amount } } }
}"#;

const ORDER: &str = r#"query($id: ID!) { order(id: $id) { id status } }"#;

fn flash() -> Value {
    json!({ "mallId": "mall-1", "items": [{ "productId": "sku-flash-1", "quantity": 1 }] })
}

async fn checkout(app: &TestApp, member: &str, cart: Value, key: &str) -> Value {
    let (_, body) = app
        .query_vars(
            CHECKOUT,
            json!({ "input": { "cart": cart, "idempotencyKey": key } }),
            Some(&app.token(member)),
        )
        .await;
    body
}

async fn simulate(app: &TestApp, order: &str, query: &str) -> (u16, Value) {
    let resp = app
        .http
        .post(format!("{}/dev/pay/{order}{query}", app.url))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn status_of(app: &TestApp, member: &str, id: &str) -> String {
    let (_, body) = app
        .query_vars(ORDER, json!({ "id": id }), Some(&app.token(member)))
        .await;
    body["data"]["order"]["status"]
        .as_str()
        .unwrap_or_else(|| panic!("order {id}: {body}"))
        .to_owned()
}

/// The flash SKU's counters in `mall-1` of the demo tenant.
async fn flash_stock(app: &TestApp) -> (u64, u64, u64) {
    let scope = Scope::new(
        TenantId::parse("demo").unwrap(),
        MallId::parse("mall-1").unwrap(),
    );
    let level = app
        .state
        .checkout()
        .store()
        .stock(&scope, &ProductId::parse("sku-flash-1").unwrap())
        .await
        .unwrap()
        .expect("the flash SKU's stock is defined");
    (level.available, level.reserved, level.sold)
}

#[tokio::test]
async fn the_payment_simulator_pays_an_order_once_through_the_signed_callback() {
    let app = spawn_app().await;
    let bill = json!({ "mallId": "mall-1", "storeId": "store-1", "billAmount": 8_880 });
    let body = checkout(&app, "member-51", bill, "sim-1").await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    let id = body["data"]["checkout"]["order"]["id"].as_str().unwrap();

    let (status, effect) = simulate(&app, id, "").await;
    assert_eq!(
        (status, effect["effect"].as_str()),
        (200, Some("paid")),
        "{effect}"
    );
    let paid = status_of(&app, "member-51", id).await;
    assert!(matches!(paid.as_str(), "PAID" | "COMPLETED"), "{paid}");

    // Again: the same payment, recorded once.
    let (status, effect) = simulate(&app, id, "").await;
    assert_eq!(
        (status, effect["effect"].as_str()),
        (200, Some("duplicate")),
        "{effect}"
    );

    // A failed payment cancels an unpaid order and gives its unit back.
    let body = checkout(&app, "member-52", flash(), "sim-2").await;
    let id = body["data"]["checkout"]["order"]["id"].as_str().unwrap();
    assert_eq!(flash_stock(&app).await, (99, 1, 0));
    let (status, effect) = simulate(&app, id, "?outcome=failed").await;
    assert_eq!(
        (status, effect["effect"].as_str()),
        (200, Some("cancelled")),
        "{effect}"
    );
    assert_eq!(status_of(&app, "member-52", id).await, "CANCELLED");
    assert_eq!(flash_stock(&app).await, (100, 0, 0));

    let (status, unknown) = simulate(&app, "mall-1.0123456789abcdef", "").await;
    assert_eq!(status, 404, "{unknown}");
    assert_eq!(unknown["error"]["code"], "ORDER_NOT_FOUND");
    let (status, bad) = simulate(&app, id, "?outcome=maybe").await;
    assert_eq!(status, 400, "{bad}");
}

#[tokio::test]
async fn the_payment_simulator_is_not_served_with_a_real_signing_key() {
    let app = spawn_app_with(|s| {
        s.auth.jwt_secret = SecretString::from("a-real-key-that-is-not-the-development-one-000");
    })
    .await;
    let body = checkout(&app, "member-53", flash(), "nosim-1").await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    let id = body["data"]["checkout"]["order"]["id"].as_str().unwrap();
    let (status, _) = simulate(&app, id, "").await;
    assert_eq!(status, 404);
    assert_eq!(status_of(&app, "member-53", id).await, "AWAITING_PAYMENT");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shop_page_buys_the_flash_item_once_per_tap_and_pays_it_in_a_real_browser() {
    let app = spawn_app().await;
    run_browser_test("tests/shop.test.mjs", &[("SHOP_URL", &app.url)]).await;
    // The page's two taps made one order, paid: one unit sold, none held.
    assert_eq!(flash_stock(&app).await, (99, 0, 1));
}

/// Two nodes on one Redis namespace, each with its own demo upstreams
/// (the same deterministic data set).
async fn two_nodes(test: &str) -> (TestApp, TestApp) {
    let namespace = unique_namespace(test);
    let settings = |s: &mut bff::config::Settings| {
        s.redis_url = Some(redis_url());
        s.store.namespace = namespace.clone();
        // Hundreds of checkouts at once on a small, shared machine: what is
        // tested is that none oversells, not how fast they answer.
        s.upstreams.request_budget_ms = 30_000;
    };
    (
        spawn_app_with(settings).await,
        spawn_app_with(settings).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_flash_checkouts_on_two_nodes_sharing_redis_never_oversell() {
    let (a, b) = two_nodes("two-nodes-flash").await;
    let buyers = 160;
    let answers = futures::future::join_all((0..buyers).map(|n| {
        let node = if n % 2 == 0 { &a } else { &b };
        async move {
            let member = format!("member-{}", 100 + n);
            let key = format!("two-{n}");
            (n, checkout(node, &member, flash(), &key).await)
        }
    }))
    .await;

    let mut sold = Vec::new();
    let mut sold_out = 0;
    for (n, body) in &answers {
        match codes(body).as_slice() {
            [] => {
                assert_eq!(
                    body["data"]["checkout"]["order"]["status"], "AWAITING_PAYMENT",
                    "{body}"
                );
                sold.push((*n, body["data"]["checkout"]["order"]["id"].clone()));
            }
            [code] if code == "SOLD_OUT" => sold_out += 1,
            other => panic!("buyer {n}: unexpected {other:?}: {body}"),
        }
    }
    assert_eq!(sold.len(), 100, "exactly the initial stock is sold");
    assert_eq!(sold_out, buyers - 100);
    assert_eq!(flash_stock(&a).await, (0, 100, 0));
    assert_eq!(flash_stock(&b).await, (0, 100, 0));

    // Retries on the other node answer the same orders and take nothing.
    for (n, id) in sold.iter().take(20) {
        let other = if n % 2 == 0 { &b } else { &a };
        let retry = checkout(
            other,
            &format!("member-{}", 100 + n),
            flash(),
            &format!("two-{n}"),
        )
        .await;
        assert_eq!(retry["errors"], Value::Null, "{retry}");
        assert_eq!(&retry["data"]["checkout"]["order"]["id"], id, "{retry}");
    }
    assert_eq!(flash_stock(&a).await, (0, 100, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_sent_to_two_nodes_at_once_makes_one_order() {
    let (a, b) = two_nodes("two-nodes-key").await;
    let answers = futures::future::join_all((0..20).map(|n| {
        let node = if n % 2 == 0 { &a } else { &b };
        checkout(node, "member-300", flash(), "one-key")
    }))
    .await;
    let mut ids = std::collections::HashSet::new();
    for body in &answers {
        match codes(body).as_slice() {
            [] => {
                ids.insert(body["data"]["checkout"]["order"]["id"].to_string());
            }
            [code] if code == "IDEMPOTENCY_KEY_IN_PROGRESS" => {}
            other => panic!("unexpected {other:?}: {body}"),
        }
    }
    assert!(ids.len() <= 1, "one order at most: {ids:?}");
    // Once the first finished, both nodes answer its order.
    let settled_a = checkout(&a, "member-300", flash(), "one-key").await;
    let settled_b = checkout(&b, "member-300", flash(), "one-key").await;
    assert_eq!(settled_a["errors"], Value::Null, "{settled_a}");
    assert_eq!(
        settled_a["data"]["checkout"]["order"]["id"],
        settled_b["data"]["checkout"]["order"]["id"]
    );
    if let Some(id) = ids.iter().next() {
        assert_eq!(
            &settled_a["data"]["checkout"]["order"]["id"].to_string(),
            id
        );
    }
    assert_eq!(flash_stock(&a).await, (99, 1, 0));
}
