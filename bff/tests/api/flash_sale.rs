//! The product detail page and the flash sale as a member sees it:
//! `product(id)`, `FlashSale.remaining` from the checkout's stock, the
//! per-member limit, and a sale that is open with its whole stock on every
//! start of the embedded default and in every new Redis namespace.

use bff::domain::{MallId, ProductId, TenantId};
use bff::store::EmbeddedStore;
use bff::store::checkout::{CheckoutStore, Scope};
use serde_json::{Value, json};

use crate::helpers::{TestApp, codes, spawn_app, spawn_app_with};
use crate::store::{redis_url, unique_namespace};

const PRODUCT: &str = r#"query($id: ID!) {
  product(id: $id) {
    id name listPrice { amount }
    flashSale { price { amount } stock perMemberLimit remaining }
  }
}"#;

const CHECKOUT: &str = r#"mutation($input: CheckoutInput!) {
  checkout(input: $input) { order { id status } }
}"#;

const CANCEL: &str = r#"mutation($id: ID!) { cancelOrder(id: $id) { status } }"#;

async fn product(app: &TestApp, id: &str) -> Value {
    let (_, body) = app.query_vars(PRODUCT, json!({ "id": id }), None).await;
    body
}

async fn remaining(app: &TestApp, sku: &str) -> i64 {
    let body = product(app, sku).await;
    body["data"]["product"]["flashSale"]["remaining"]
        .as_i64()
        .unwrap_or_else(|| panic!("remaining of {sku}: {body}"))
}

async fn buy(app: &TestApp, member: &str, sku: &str, quantity: i64, key: &str) -> Value {
    let cart = json!({ "mallId": "mall-1", "items": [{ "productId": sku, "quantity": quantity }] });
    let (_, body) = app
        .query_vars(
            CHECKOUT,
            json!({ "input": { "cart": cart, "idempotencyKey": key } }),
            Some(&app.token(member)),
        )
        .await;
    body
}

#[tokio::test]
async fn the_product_page_answers_a_product_null_for_an_unknown_id_and_a_code_for_a_malformed_one()
{
    let app = spawn_app().await;

    let found = product(&app, "sku-flash-1").await;
    assert_eq!(found["errors"], Value::Null, "{found}");
    let p = &found["data"]["product"];
    assert_eq!(p["id"], "sku-flash-1");
    assert!(p["name"].as_str().is_some_and(|n| !n.is_empty()), "{found}");
    let sale = &p["flashSale"];
    assert_eq!(sale["stock"], 100, "{found}");
    assert_eq!(sale["perMemberLimit"], 1, "{found}");
    assert_eq!(sale["remaining"], 100, "{found}");
    assert!(
        sale["price"]["amount"].as_i64() < p["listPrice"]["amount"].as_i64(),
        "{found}"
    );

    let plain = product(&app, "sku-1").await;
    assert_eq!(plain["data"]["product"]["id"], "sku-1", "{plain}");
    assert_eq!(plain["data"]["product"]["flashSale"], Value::Null);

    let unknown = product(&app, "sku-does-not-exist").await;
    assert_eq!(unknown["errors"], Value::Null, "{unknown}");
    assert_eq!(unknown["data"]["product"], Value::Null, "{unknown}");

    for malformed in ["", "sku 1", "{sku-1}", &"x".repeat(200)] {
        let body = product(&app, malformed).await;
        assert_eq!(codes(&body), ["BAD_USER_INPUT"], "{malformed:?}: {body}");
    }
}

#[tokio::test]
async fn remaining_drops_with_each_order_and_comes_back_when_an_order_is_cancelled() {
    let app = spawn_app().await;
    assert_eq!(remaining(&app, "sku-flash-1").await, 100);

    let first = buy(&app, "member-11", "sku-flash-1", 1, "rem-1").await;
    assert_eq!(first["errors"], Value::Null, "{first}");
    let second = buy(&app, "member-12", "sku-flash-1", 1, "rem-2").await;
    assert_eq!(second["errors"], Value::Null, "{second}");
    assert_eq!(remaining(&app, "sku-flash-1").await, 98);
    // The catalogue's figure does not move: it is the sale's size.
    let page = product(&app, "sku-flash-1").await;
    assert_eq!(page["data"]["product"]["flashSale"]["stock"], 100);

    let id = first["data"]["checkout"]["order"]["id"].clone();
    let (_, cancelled) = app
        .query_vars(CANCEL, json!({ "id": id }), Some(&app.token("member-11")))
        .await;
    assert_eq!(cancelled["data"]["cancelOrder"]["status"], "CANCELLED");
    assert_eq!(remaining(&app, "sku-flash-1").await, 99);
    // The other sales are untouched.
    assert_eq!(remaining(&app, "sku-flash-2").await, 100);
}

#[tokio::test]
async fn a_member_buys_at_most_the_sales_own_limit() {
    let app = spawn_app().await;

    // sku-flash-1: the default limit, one unit.
    let one = buy(&app, "member-21", "sku-flash-1", 1, "lim-1").await;
    assert_eq!(one["errors"], Value::Null, "{one}");
    let again = buy(&app, "member-21", "sku-flash-1", 1, "lim-2").await;
    assert_eq!(codes(&again), ["PURCHASE_LIMIT_EXCEEDED"], "{again}");

    // sku-flash-4 sets its own limit in the demo data: two units.
    let page = product(&app, "sku-flash-4").await;
    assert_eq!(page["data"]["product"]["flashSale"]["perMemberLimit"], 2);
    let two = buy(&app, "member-21", "sku-flash-4", 2, "lim-3").await;
    assert_eq!(two["errors"], Value::Null, "{two}");
    let third = buy(&app, "member-21", "sku-flash-4", 1, "lim-4").await;
    assert_eq!(codes(&third), ["PURCHASE_LIMIT_EXCEEDED"], "{third}");
    let too_many = buy(&app, "member-22", "sku-flash-4", 3, "lim-5").await;
    assert_eq!(codes(&too_many), ["PURCHASE_LIMIT_EXCEEDED"], "{too_many}");
    assert_eq!(remaining(&app, "sku-flash-4").await, 98);
}

#[tokio::test]
async fn the_embedded_default_opens_the_flash_sale_afresh_on_every_start() {
    let dir = tempfile::tempdir().unwrap();
    // A previous run of the node sold most of the sale.
    {
        let store = EmbeddedStore::open(&dir.path().join("bff.redb")).unwrap();
        let scope = Scope::new(
            TenantId::parse("demo").unwrap(),
            MallId::parse("mall-1").unwrap(),
        );
        let sku = ProductId::parse("sku-flash-1").unwrap();
        store.define_stock(&scope, &sku, 3, 1).await.unwrap();
        assert_eq!(
            store.stock(&scope, &sku).await.unwrap().unwrap().available,
            3
        );
    }
    let path = dir.path().to_path_buf();
    let app = spawn_app_with(move |s| s.store.data_dir = path).await;

    assert_eq!(remaining(&app, "sku-flash-1").await, 100);
    let bought = buy(&app, "member-31", "sku-flash-1", 1, "fresh-1").await;
    assert_eq!(bought["errors"], Value::Null, "{bought}");
    assert_eq!(remaining(&app, "sku-flash-1").await, 99);
}

#[tokio::test]
async fn every_new_redis_namespace_opens_the_flash_sale_with_its_whole_stock() {
    let url = redis_url();
    let first_ns = unique_namespace("flash-fresh-a");
    let a = spawn_app_with({
        let url = url.clone();
        move |s| {
            s.redis_url = Some(url);
            s.store.namespace = first_ns;
        }
    })
    .await;
    let bought = buy(&a, "member-41", "sku-flash-1", 1, "ns-1").await;
    assert_eq!(bought["errors"], Value::Null, "{bought}");
    assert_eq!(remaining(&a, "sku-flash-1").await, 99);

    let b = spawn_app_with(move |s| {
        s.redis_url = Some(url);
        s.store.namespace = unique_namespace("flash-fresh-b");
    })
    .await;
    assert_eq!(remaining(&b, "sku-flash-1").await, 100);
    let bought = buy(&b, "member-41", "sku-flash-1", 1, "ns-1").await;
    assert_eq!(bought["errors"], Value::Null, "{bought}");
    assert_eq!(remaining(&b, "sku-flash-1").await, 99);
}

#[tokio::test]
async fn a_node_defines_a_stock_counter_again_when_redis_lost_it() {
    let url = redis_url();
    let ns = unique_namespace("flash-lost");
    let app = spawn_app_with({
        let (url, ns) = (url.clone(), ns.clone());
        move |s| {
            s.redis_url = Some(url);
            s.store.namespace = ns;
        }
    })
    .await;
    let first = buy(&app, "member-51", "sku-flash-1", 1, "lost-1").await;
    assert_eq!(first["errors"], Value::Null, "{first}");
    assert_eq!(remaining(&app, "sku-flash-1").await, 99);

    // Redis comes back without the counters (a restart without
    // persistence): the node, which remembers having defined them, must
    // not refuse the SKU as unknown.
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys = crate::local_redis::keys_matching(&mut conn, &format!("{ns}:co:*:stock:*")).await;
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();

    let again = buy(&app, "member-52", "sku-flash-1", 1, "lost-2").await;
    assert_eq!(again["errors"], Value::Null, "{again}");
    assert_eq!(remaining(&app, "sku-flash-1").await, 99);
}

#[tokio::test]
async fn a_sale_that_is_not_open_yet_sells_nothing_and_has_nothing_remaining() {
    let app = spawn_app().await;
    let sku = bff::demo::data::UPCOMING_FLASH;

    let page = product(&app, sku).await;
    let sale = &page["data"]["product"]["flashSale"];
    assert_eq!(sale["stock"], 100, "{page}");
    assert_eq!(sale["remaining"], 0, "{page}");

    let cart = json!({ "mallId": "mall-3", "items": [{ "productId": sku, "quantity": 1 }] });
    for _ in 0..2 {
        // The same key again: the refusal is not kept, so the key may buy
        // once the sale opens.
        let (_, body) = app
            .query_vars(
                CHECKOUT,
                json!({ "input": { "cart": cart, "idempotencyKey": "early-1" } }),
                Some(&app.token("member-51")),
            )
            .await;
        assert_eq!(codes(&body), ["SALE_NOT_OPEN"], "{body}");
        assert_eq!(body.get("data"), Some(&Value::Null), "{body}");
    }
    // An open sale of the same mall still sells.
    let open = product(&app, "sku-flash-11").await;
    assert_eq!(
        open["data"]["product"]["flashSale"]["remaining"], 100,
        "{open}"
    );
}

#[tokio::test]
async fn a_checkout_reads_its_products_once_for_its_price_and_its_stock() {
    let app = spawn_app().await;
    let before = app.calls("product", "products.batch");
    let body = buy(&app, "member-1", "sku-flash-1", 1, "reads-once").await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    assert_eq!(
        body["data"]["checkout"]["order"]["status"],
        "AWAITING_PAYMENT"
    );
    assert_eq!(app.calls("product", "products.batch") - before, 1);
    // The stock it defined is the flash sale's, from that same read.
    assert_eq!(remaining(&app, "sku-flash-1").await, 99);
}
