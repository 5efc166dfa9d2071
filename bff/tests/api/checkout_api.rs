//! One-tap checkout through the real app: GraphQL `checkout`, `order` and
//! the signed payment callback route, priced by the same path as `quote`,
//! against the real demo upstreams and the embedded store.

use bff::config::DEV_PAYMENT_SECRET;
use bff::payment::{SIGNATURE_HEADER, sign};
use serde_json::{Value, json};

use crate::helpers::{TestApp, codes, spawn_app};

const CHECKOUT: &str = r#"mutation($input: CheckoutInput!) {
  checkout(input: $input) {
    order { id status payable { amount currency } externalAmount { amount } }
    payExternally { amount }
  }
}"#;

const QUOTE: &str = r#"query($input: CartInput!) { quote(input: $input) { payable { amount } } }"#;

const ORDER: &str = r#"query($id: ID!) { order(id: $id) { id status payable { amount } } }"#;

fn bill(amount: i64) -> Value {
    json!({ "mallId": "mall-1", "storeId": "store-1", "billAmount": amount })
}

fn flash() -> Value {
    json!({ "mallId": "mall-1", "items": [{ "productId": "sku-flash-1", "quantity": 1 }] })
}

async fn checkout(app: &TestApp, token: &str, cart: Value, key: &str) -> Value {
    let (_, body) = app
        .query_vars(
            CHECKOUT,
            json!({ "input": { "cart": cart, "idempotencyKey": key } }),
            Some(token),
        )
        .await;
    body
}

/// Sends a provider callback for an order's external part, signed with the
/// development secret of the `demo` provider.
async fn notify(app: &TestApp, order_id: &str, amount: i64) -> (u16, Value) {
    let body = json!({
        "payment_id": format!("pay-{order_id}"),
        "tenant": "demo",
        "order_id": order_id,
        "amount": amount,
        "currency": "CNY",
        "status": "succeeded",
    })
    .to_string();
    let signature = sign(
        DEV_PAYMENT_SECRET,
        chrono::Utc::now().timestamp(),
        body.as_bytes(),
    );
    let resp = app
        .http
        .post(format!("{}/payments/notify/demo", app.url))
        .header(SIGNATURE_HEADER, signature)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_member_pays_the_bill_at_a_store_for_what_the_quote_shows_then_the_callback_pays_it() {
    let app = spawn_app().await;
    let token = app.token("member-1");
    let (_, quote) = app
        .query_vars(QUOTE, json!({ "input": bill(12_345) }), Some(&token))
        .await;
    assert_eq!(quote["errors"], Value::Null, "{quote}");
    let quoted = quote["data"]["quote"]["payable"]["amount"]
        .as_i64()
        .unwrap();

    let body = checkout(&app, &token, bill(12_345), "bill-1").await;

    assert_eq!(body["errors"], Value::Null, "{body}");
    let order = &body["data"]["checkout"]["order"];
    assert_eq!(order["status"], "AWAITING_PAYMENT", "{body}");
    assert_eq!(order["payable"]["amount"].as_i64(), Some(quoted), "{body}");
    assert_eq!(order["payable"]["currency"], "CNY");
    let external = body["data"]["checkout"]["payExternally"]["amount"]
        .as_i64()
        .unwrap();
    assert_eq!(external, quoted, "no wallet part: all of it is external");

    let id = order["id"].as_str().unwrap();
    let (status, effect) = notify(&app, id, external).await;
    assert_eq!(status, 200, "{effect}");
    assert_eq!(effect["effect"], "paid");
    let (_, seen) = app
        .query_vars(ORDER, json!({ "id": id }), Some(&token))
        .await;
    // Paid; a paid order with nothing held settles to COMPLETED at once.
    let status = seen["data"]["order"]["status"].as_str().unwrap_or_default();
    assert!(matches!(status, "PAID" | "COMPLETED"), "{seen}");

    // Another member cannot see it.
    let (_, other) = app
        .query_vars(ORDER, json!({ "id": id }), Some(&app.token("member-2")))
        .await;
    assert_eq!(other["data"]["order"], Value::Null, "{other}");
}

#[tokio::test]
async fn the_same_key_and_cart_answer_the_same_order_and_a_different_cart_is_refused() {
    let app = spawn_app().await;
    let token = app.token("member-3");

    let first = checkout(&app, &token, flash(), "flash-1").await;
    let again = checkout(&app, &token, flash(), "flash-1").await;

    assert_eq!(first["errors"], Value::Null, "{first}");
    assert_eq!(
        first["data"]["checkout"]["order"]["status"],
        "AWAITING_PAYMENT"
    );
    assert_eq!(
        first["data"]["checkout"]["order"]["id"], again["data"]["checkout"]["order"]["id"],
        "{again}"
    );
    let reused = checkout(&app, &token, bill(100), "flash-1").await;
    assert_eq!(codes(&reused), ["IDEMPOTENCY_KEY_REUSED"], "{reused}");
}

#[tokio::test]
async fn the_idempotency_key_header_must_match_the_input() {
    let app = spawn_app().await;
    let resp = app
        .http
        .post(format!("{}/graphql", app.url))
        .bearer_auth(app.token("member-4"))
        .header("Idempotency-Key", "header-key")
        .json(&json!({
            "query": CHECKOUT,
            "variables": { "input": { "cart": bill(100), "idempotencyKey": "other-key" } },
        }))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(codes(&body), ["IDEMPOTENCY_KEY_MISMATCH"], "{body}");

    // An equal header is accepted.
    let resp = app
        .http
        .post(format!("{}/graphql", app.url))
        .bearer_auth(app.token("member-4"))
        .header("Idempotency-Key", "same-key")
        .json(&json!({
            "query": CHECKOUT,
            "variables": { "input": { "cart": bill(100), "idempotencyKey": "same-key" } },
        }))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"], Value::Null, "{body}");
    assert_eq!(
        body["data"]["checkout"]["order"]["status"],
        "AWAITING_PAYMENT"
    );
}

/// A product of `mall-1` (not on flash sale) with at least `units` in stock.
async fn product_with_stock(app: &TestApp, units: u32) -> String {
    let tenant = bff::domain::TenantId::parse("demo").unwrap();
    let ids: Vec<_> = (1..=60)
        .map(|n| bff::domain::ProductId::parse(format!("sku-{n}")).unwrap())
        .collect();
    let found = app
        .state
        .upstreams()
        .product
        .products_by_ids(&tenant, &ids)
        .await
        .unwrap();
    ids.iter()
        .filter_map(|id| found.get(id))
        .find(|p| p.mall_id.as_str() == "mall-1" && p.stock >= units)
        .map(|p| p.id.to_string())
        .expect("a mall-1 product with enough stock")
}

#[tokio::test]
async fn quote_and_checkout_accept_and_refuse_the_same_carts_at_the_limits() {
    let app = spawn_app().await;
    let token = app.token("member-6");
    let sku = product_with_stock(&app, 99).await;
    let max = i64::from(bff::pricing::limits::MAX_QUANTITY);
    let items = |quantity: i64| json!({ "mallId": "mall-1", "items": [{ "productId": sku, "quantity": quantity }] });
    // `Some(true)`: both accept (and charge what the quote shows);
    // `Some(false)`: both refuse as bad input; `None`: both accept the
    // cart's shape, though the checkout may find too little stock.
    let cases = [
        ("units-99", items(99), Some(true)),
        ("units-max", items(max), None),
        ("units-over", items(max + 1), Some(false)),
        ("units-0", items(0), Some(false)),
        ("bill-max", bill(10_000_000_000), Some(true)),
        ("bill-over", bill(10_000_000_001), Some(false)),
    ];
    for (key, cart, accepted) in cases {
        let (_, quote) = app
            .query_vars(QUOTE, json!({ "input": cart }), Some(&token))
            .await;
        let checked = checkout(&app, &token, cart.clone(), key).await;
        match accepted {
            Some(true) => {
                assert_eq!(quote["errors"], Value::Null, "quote {key}: {quote}");
                assert_eq!(checked["errors"], Value::Null, "checkout {key}: {checked}");
                assert_eq!(
                    checked["data"]["checkout"]["order"]["payable"]["amount"],
                    quote["data"]["quote"]["payable"]["amount"],
                    "{key}"
                );
            }
            None => {
                assert_eq!(quote["errors"], Value::Null, "quote {key}: {quote}");
                let code = codes(&checked);
                assert!(
                    code.is_empty() || code == ["SOLD_OUT"],
                    "checkout {key}: {checked}"
                );
            }
            Some(false) => {
                assert_eq!(codes(&quote), ["BAD_USER_INPUT"], "quote {key}: {quote}");
                assert_eq!(
                    codes(&checked),
                    ["BAD_USER_INPUT"],
                    "checkout {key}: {checked}"
                );
            }
        }
    }
}

#[tokio::test]
async fn bad_carts_get_clear_codes_and_anonymous_callers_cannot_check_out() {
    let app = spawn_app().await;
    let token = app.token("member-5");
    let unknown_sku =
        json!({ "mallId": "mall-1", "items": [{ "productId": "sku-nope", "quantity": 1 }] });
    let unknown_store = json!({ "mallId": "mall-1", "storeId": "store-nope", "billAmount": 100 });
    for (cart, key) in [
        (bill(-5), "neg"),
        (bill(0), "zero"),
        (unknown_sku, "sku"),
        (unknown_store, "store"),
    ] {
        let body = checkout(&app, &token, cart.clone(), key).await;
        assert_eq!(codes(&body), ["BAD_USER_INPUT"], "{cart}: {body}");
    }
    let bad_key = checkout(&app, &token, bill(100), "no spaces").await;
    assert_eq!(codes(&bad_key), ["BAD_USER_INPUT"], "{bad_key}");

    let (_, anonymous) = app
        .query_vars(
            CHECKOUT,
            json!({ "input": { "cart": bill(100), "idempotencyKey": "anon" } }),
            None,
        )
        .await;
    assert_eq!(codes(&anonymous), ["UNAUTHENTICATED"], "{anonymous}");
}
