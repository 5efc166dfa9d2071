//! Promotion rules through the real app: personal prices, quotes, the
//! registry (publish, activate, roll back, both backends, two nodes), the
//! sandbox against hostile components, and tenant isolation.

use std::time::{Duration, Instant};

use bff::auth::Role;
use serde_json::{Value, json};

use crate::helpers::{TestApp, codes, spawn_app, spawn_app_with};
use crate::store::{redis_url, unique_namespace};

const WASM_DIR: &str = env!("PROMOTION_RULES_WASM_DIR");

pub(crate) fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(format!("{WASM_DIR}/{name}.wasm")).expect("guest built by build.rs")
}

pub(crate) fn author(app: &TestApp) -> String {
    app.token_for("demo", "author-1", Role::RuleAuthor)
}

pub(crate) async fn upload(app: &TestApp, token: Option<&str>, bytes: Vec<u8>) -> (u16, Value) {
    let mut req = app
        .http
        .post(format!("{}/rules/components", app.url))
        .body(bytes);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

pub(crate) async fn publish(app: &TestApp, input: Value) -> Value {
    let (status, body) = app
        .query_vars(
            "mutation($i: PublishRuleInput!) { publishRule(input: $i) { name status activeVersion } }",
            json!({ "i": input }),
            Some(&author(app)),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Uploads a guest and publishes it active; returns the response body.
pub(crate) async fn deploy(
    app: &TestApp,
    guest: &str,
    name: &str,
    stage: &str,
    config: &str,
    limits: Option<Value>,
) -> Value {
    let (status, up) = upload(app, Some(&author(app)), wasm(guest)).await;
    assert_eq!(status, 201, "{up}");
    let mut input = json!({
        "name": name, "component": up["sha256"], "config": config,
        "stage": stage, "activate": true,
    });
    if let Some(l) = limits {
        input["limits"] = l;
    }
    publish(app, input).await
}

pub(crate) fn limits(fuel: u64, memory: u64, timeout_ms: u64) -> Value {
    json!({ "fuel": fuel, "memoryBytes": memory, "timeoutMs": timeout_ms,
            "maxInputBytes": 262144, "maxOutputBytes": 262144, "maxLogEntries": 64, "maxDiscount": 0 })
}

const PRODUCTS: &str = "{ products(mallId: \"mall-1\", first: 30) { nodes { id category listPrice { amount } flashSale { price { amount } startsAt endsAt } price { final { amount } savings { amount } applied { ruleId label amount { amount } } } } } }";

pub(crate) async fn products(app: &TestApp, token: Option<&str>) -> Vec<Value> {
    let (status, body) = app.query(PRODUCTS, token).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["errors"].is_null(), "{body}");
    body["data"]["products"]["nodes"]
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) fn flash_active(p: &Value) -> bool {
    let now = chrono::Utc::now();
    let f = &p["flashSale"];
    if f.is_null() {
        return false;
    }
    let s: chrono::DateTime<chrono::Utc> = f["startsAt"].as_str().unwrap().parse().unwrap();
    let e: chrono::DateTime<chrono::Utc> = f["endsAt"].as_str().unwrap().parse().unwrap();
    s <= now && now < e
}

/// Products without a running flash sale (their price is the member price).
pub(crate) async fn plain_products(app: &TestApp) -> Vec<Value> {
    products(app, None)
        .await
        .into_iter()
        .filter(|p| !flash_active(p))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gold_member_sees_the_member_price_and_an_anonymous_visitor_does_not() {
    let app = spawn_app().await;
    let gold = products(&app, Some(&app.token("member-1"))).await;
    let anonymous = products(&app, None).await;
    let mut member_priced = 0;
    for (g, a) in gold.iter().zip(&anonymous) {
        let list = g["listPrice"]["amount"].as_i64().unwrap();
        if flash_active(g) {
            // Flash sale and member price share a stacking group: the
            // better one for the member applies, never both.
            assert!(g["price"]["applied"].as_array().unwrap().len() <= 1, "{g}");
            continue;
        }
        let expected = list - list * 500 / 10000;
        assert_eq!(g["price"]["final"]["amount"], expected, "{g}");
        assert_eq!(g["price"]["savings"]["amount"], list - expected);
        assert_eq!(g["price"]["applied"][0]["ruleId"], "member-price@1");
        assert_eq!(
            a["price"]["final"]["amount"], list,
            "anonymous pays list: {a}"
        );
        member_priced += 1;
    }
    assert!(member_priced > 0);
    // One evaluation per rule for the whole page, not one per product.
    let stats = rule_stats(&app, "member-price").await;
    assert_eq!(stats["evaluations"], 2, "one per page request: {stats}");
}

pub(crate) async fn rule_stats(app: &TestApp, name: &str) -> Value {
    let (_, body) = app
        .query_vars(
            "query($n: String!) { ruleDeployment(name: $n) { status quarantineReason stats { evaluations failures consecutiveFailures lastFailureCode lastFailureDetail lastFuel } } }",
            json!({ "n": name }),
            Some(&author(app)),
        )
        .await;
    let mut stats = body["data"]["ruleDeployment"]["stats"].clone();
    stats["status"] = body["data"]["ruleDeployment"]["status"].clone();
    stats["quarantineReason"] = body["data"]["ruleDeployment"]["quarantineReason"].clone();
    stats
}

pub(crate) const QUOTE: &str = "query($c: CartInput!) { quote(input: $c) { subtotal { amount } discount { amount } pointsUsed pointsAmount { amount } payable { amount } lines { id quantity subtotal { amount } payable { amount } applied { ruleId amount { amount } } } appliedDetail { ruleId label amount { amount } lineId couponId points } hints { ruleId code message shortfall { amount } } } }";

/// A quote with its degraded marker.
pub(crate) async fn quote_marked(app: &TestApp, cart: Value, token: Option<&str>) -> Value {
    let query = QUOTE.replacen(
        "quote(input: $c) {",
        "quote(input: $c) { degraded skippedRules { ruleId code }",
        1,
    );
    let (status, body) = app.query_vars(&query, json!({ "c": cart }), token).await;
    assert_eq!(status, 200, "{body}");
    body
}

pub(crate) async fn quote(app: &TestApp, cart: Value, token: Option<&str>) -> Value {
    let (status, body) = app.query_vars(QUOTE, json!({ "c": cart }), token).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quote_runs_item_order_coupon_and_points_rules_in_order() {
    let app = spawn_app().await;
    let token = app.token("member-1");
    let plain = plain_products(&app).await;
    // Enough to pass ¥200 after the member price.
    let mut items = Vec::new();
    let mut total = 0;
    for p in &plain {
        items.push(json!({ "productId": p["id"], "quantity": 2 }));
        total += 2 * p["listPrice"]["amount"].as_i64().unwrap();
        if total > 60_000 {
            break;
        }
    }
    let body = quote(
        &app,
        json!({ "mallId": "mall-1", "items": items, "pointsToUse": 1000 }),
        Some(&token),
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    let q = &body["data"]["quote"];
    let detail = q["appliedDetail"].as_array().unwrap();
    let rules: Vec<&str> = detail
        .iter()
        .map(|a| a["ruleId"].as_str().unwrap())
        .collect();
    // Item stage first, then order, then points.
    let first_order = rules
        .iter()
        .position(|r| *r == "spend-200-save-30@1")
        .expect("spend offer applied");
    assert!(
        rules[..first_order].iter().all(|r| *r == "member-price@1"),
        "{rules:?}"
    );
    assert_eq!(rules.last(), Some(&"points@1"), "{rules:?}");

    let after_items: i64 = q["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["payable"]["amount"].as_i64().unwrap())
        .sum();
    let times = (after_items / 20000).min(3);
    assert_eq!(detail[first_order]["amount"]["amount"], times * 3000);
    // Points: 100 points per yuan, at most 30 % of what is left.
    let left = after_items - times * 3000;
    let points_amount = (1000 * 100 / 100).min(left * 3000 / 10000);
    assert_eq!(q["pointsAmount"]["amount"], points_amount);
    assert_eq!(q["pointsUsed"], 1000);
    // The books balance.
    let subtotal = q["subtotal"]["amount"].as_i64().unwrap();
    assert_eq!(
        q["payable"]["amount"].as_i64().unwrap(),
        subtotal - q["discount"]["amount"].as_i64().unwrap() - points_amount
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quote_below_the_threshold_hints_how_much_more_to_spend() {
    let app = spawn_app().await;
    let plain = plain_products(&app).await;
    let cheap = plain
        .iter()
        .find(|p| p["listPrice"]["amount"].as_i64().unwrap() < 15_000)
        .expect("a product under ¥150");
    let body = quote(
        &app,
        json!({ "mallId": "mall-1", "items": [{ "productId": cheap["id"], "quantity": 1 }] }),
        None,
    )
    .await;
    let q = &body["data"]["quote"];
    let payable = q["payable"]["amount"].as_i64().unwrap();
    let hint = q["hints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["code"] == "spend-more")
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(hint["ruleId"], "spend-200-save-30@1");
    assert_eq!(hint["shortfall"]["amount"], 20000 - payable);
    assert!(hint["message"].as_str().unwrap().contains('¥'), "{hint}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_bill_is_quoted_with_a_chosen_coupon() {
    let app = spawn_app().await;
    let token = app.token("member-1");
    let (_, body) = app
        .query("{ homeCard(mallId: \"mall-1\") { mall { stores { id } } coupons { id title kind amountOff { amount } percentOff minSpend { amount } } } }", Some(&token))
        .await;
    let store = body["data"]["homeCard"]["mall"]["stores"][0]["id"].clone();
    let coupons = body["data"]["homeCard"]["coupons"]
        .as_array()
        .unwrap()
        .clone();
    let cash = coupons
        .iter()
        .find(|c| c["kind"] == "CASH")
        .unwrap_or_else(|| panic!("member-1 holds a cash coupon: {body}"));
    let bill = cash["minSpend"]["amount"].as_i64().unwrap() + 50_000;
    let body = quote(
        &app,
        json!({ "mallId": "mall-1", "storeId": store, "billAmount": bill, "couponIds": [cash["id"]] }),
        Some(&token),
    )
    .await;
    let q = &body["data"]["quote"];
    assert!(body["errors"].is_null(), "{body}");
    let coupon = q["appliedDetail"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["ruleId"] == "coupons@1")
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(coupon["couponId"], cash["id"]);
    assert_eq!(coupon["amount"], cash["amountOff"]);

    // A coupon the member does not hold applies nothing, and says why.
    let body = quote(
        &app,
        json!({ "mallId": "mall-1", "storeId": store, "billAmount": bill, "couponIds": ["coupon-not-mine"] }),
        Some(&token),
    )
    .await;
    let q = &body["data"]["quote"];
    assert!(
        q["appliedDetail"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["ruleId"] != "coupons@1")
    );
    assert!(
        q["hints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["code"] == "coupon-not-held"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_carts_get_coded_errors() {
    let app = spawn_app().await;
    let token = app.token("member-1");
    let cases = [
        (json!({ "mallId": "mall-1" }), "BAD_USER_INPUT"),
        (
            json!({ "mallId": "mall-1", "items": [{ "productId": "nope", "quantity": 1 }] }),
            "NOT_FOUND",
        ),
        (
            json!({ "mallId": "mall-1", "items": [{ "productId": "p-1", "quantity": 0 }] }),
            "BAD_USER_INPUT",
        ),
        (
            json!({ "mallId": "mall-1", "billAmount": 100 }),
            "BAD_USER_INPUT",
        ),
        (
            json!({ "mallId": "mall-1", "billAmount": -5, "storeId": "store-1" }),
            "BAD_USER_INPUT",
        ),
    ];
    for (cart, code) in cases {
        let body = quote(&app, cart.clone(), Some(&token)).await;
        assert_eq!(codes(&body), vec![code], "{cart}: {body}");
    }
    // Coupons and points need a member.
    let body = quote(
        &app,
        json!({ "mallId": "mall-1", "billAmount": 100, "storeId": "store-1", "pointsToUse": 5 }),
        None,
    )
    .await;
    assert_eq!(codes(&body), vec!["UNAUTHENTICATED"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_activate_and_roll_back_change_prices_without_a_restart() {
    let app = spawn_app().await;
    registry_round_trip(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_round_trip_works_on_redis_too() {
    let ns = unique_namespace("round-trip");
    let url = redis_url();
    let app = spawn_app_with(|s| {
        s.redis_url = Some(url);
        s.store.namespace = ns;
    })
    .await;
    assert_eq!(app.state.store().kind(), "redis");
    registry_round_trip(&app).await;
}

pub(crate) async fn gold_price_of(app: &TestApp, id: &Value) -> i64 {
    let gold = products(app, Some(&app.token("member-1"))).await;
    gold.iter().find(|p| &p["id"] == id).unwrap()["price"]["final"]["amount"]
        .as_i64()
        .unwrap()
}

async fn registry_round_trip(app: &TestApp) {
    let plain = plain_products(app).await;
    let id = plain[0]["id"].clone();
    let list = plain[0]["listPrice"]["amount"].as_i64().unwrap();
    assert_eq!(gold_price_of(app, &id).await, list - list * 500 / 10000);

    // Version 2: gold 10 % off.
    let (_, up) = upload(app, Some(&author(app)), wasm("rule_member_discount")).await;
    let body = publish(
        app,
        json!({ "name": "member-price", "component": up["sha256"], "config": "{\"levels\":{\"gold\":1000}}",
                "stage": "ITEM", "priority": 20, "stackingGroup": "item-price" }),
    )
    .await;
    assert_eq!(
        body["data"]["publishRule"]["activeVersion"], 1,
        "published, not active: {body}"
    );
    assert_eq!(gold_price_of(app, &id).await, list - list * 500 / 10000);

    let (_, body) = app
        .query(
            "mutation { activateRule(name: \"member-price\") { status activeVersion } }",
            Some(&author(app)),
        )
        .await;
    assert_eq!(body["data"]["activateRule"]["activeVersion"], 2, "{body}");
    assert_eq!(gold_price_of(app, &id).await, list - list * 1000 / 10000);

    let (_, body) = app
        .query(
            "mutation { rollbackRule(name: \"member-price\") { status activeVersion } }",
            Some(&author(app)),
        )
        .await;
    assert_eq!(body["data"]["rollbackRule"]["activeVersion"], 1, "{body}");
    assert_eq!(gold_price_of(app, &id).await, list - list * 500 / 10000);

    let (_, body) = app
        .query(
            "mutation { deactivateRule(name: \"member-price\") { status } }",
            Some(&author(app)),
        )
        .await;
    assert_eq!(
        body["data"]["deactivateRule"]["status"], "INACTIVE",
        "{body}"
    );
    assert_eq!(gold_price_of(app, &id).await, list);

    let (_, body) = app
        .query("{ ruleDeployment(name: \"member-price\") { versions { version config publishedBy } } }", Some(&author(app)))
        .await;
    let versions = body["data"]["ruleDeployment"]["versions"]
        .as_array()
        .unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["version"], 2);
    assert_eq!(versions[0]["publishedBy"], "author-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_node_sharing_redis_sees_an_activation_within_a_second() {
    two_nodes_see_an_activation_within_a_second(redis_url()).await;
}

/// Two nodes on the store at `url`: a rule change on one reaches the other
/// within a second, both ways.
pub(crate) async fn two_nodes_see_an_activation_within_a_second(url: String) {
    let ns = unique_namespace("two-nodes");
    let (ns_a, url_a) = (ns.clone(), url.clone());
    let a = spawn_app_with(|s| {
        s.redis_url = Some(url_a);
        s.store.namespace = ns_a;
    })
    .await;
    let b = spawn_app_with(|s| {
        s.redis_url = Some(url);
        s.store.namespace = ns;
    })
    .await;
    let plain = plain_products(&b).await;
    let id = plain[0]["id"].clone();
    let list = plain[0]["listPrice"]["amount"].as_i64().unwrap();
    let member_price = list - list * 500 / 10000;
    // Both nodes load the same registry (installed once, by the first).
    assert_eq!(gold_price_of(&b, &id).await, member_price);

    // A change on A reaches B within a second, both ways.
    for (mutation, expected) in [
        (
            "mutation { deactivateRule(name: \"member-price\") { status } }",
            list,
        ),
        (
            "mutation { activateRule(name: \"member-price\") { status } }",
            member_price,
        ),
    ] {
        let (_, body) = a.query(mutation, Some(&author(&a))).await;
        assert!(body["errors"].is_null(), "{body}");
        let started = Instant::now();
        loop {
            if gold_price_of(&b, &id).await == expected {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "node B did not see `{mutation}` within a second"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Publishes a hostile guest, quotes, and checks the quote equals the one
/// without it, the failure is named and counted, and repeated failures
/// quarantine it.
async fn contained(guest: &str, stage: &str, config: &str, limits: Option<Value>, code: &str) {
    let app = spawn_app().await;
    let token = app.token("member-1");
    let plain = plain_products(&app).await;
    let cart = json!({ "mallId": "mall-1", "items": [
        { "productId": plain[0]["id"], "quantity": 1 },
        { "productId": plain[1]["id"], "quantity": 3 } ] });
    let before = quote(&app, cart.clone(), Some(&token)).await;
    let body = deploy(&app, guest, "hostile", stage, config, limits).await;
    assert_eq!(body["data"]["publishRule"]["status"], "ACTIVE", "{body}");

    let after = quote(&app, cart.clone(), Some(&token)).await;
    assert!(after["errors"].is_null(), "{guest}: {after}");
    assert_eq!(
        after["data"]["quote"], before["data"]["quote"],
        "{guest} changed the quote"
    );
    let stats = rule_stats(&app, "hostile").await;
    assert_eq!(stats["lastFailureCode"], code, "{guest}: {stats}");
    assert_eq!(stats["failures"], 1);

    for _ in 0..4 {
        // The skipped rule marks the quote degraded, with its code; the
        // amounts are the ones without it.
        let mut again = quote_marked(&app, cart.clone(), Some(&token)).await;
        let quote = again["data"]["quote"].as_object_mut().unwrap();
        assert_eq!(quote.remove("degraded"), Some(json!(true)), "{guest}");
        assert_eq!(
            quote.remove("skippedRules"),
            Some(json!([{ "ruleId": "hostile@1", "code": code }])),
            "{guest}"
        );
        assert_eq!(again["data"]["quote"], before["data"]["quote"]);
    }
    let started = Instant::now();
    loop {
        let stats = rule_stats(&app, "hostile").await;
        if stats["status"] == "QUARANTINED" {
            assert!(
                stats["quarantineReason"].as_str().unwrap().contains(code),
                "{stats}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "not quarantined: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Quarantined rules no longer run (once this node has swapped in the
    // new active set, right after the record is written).
    let tenant = bff::domain::TenantId::parse("demo").unwrap();
    while app
        .state
        .pricing()
        .snapshot(&tenant)
        .iter()
        .any(|r| r.name == "hostile")
    {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still in the active set"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    quote(&app, cart, Some(&token)).await;
    assert_eq!(rule_stats(&app, "hostile").await["failures"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_infinite_loop_runs_out_of_fuel() {
    contained("hostile_loop", "ORDER", "", None, "OUT_OF_FUEL").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_infinite_loop_with_ample_fuel_hits_the_deadline() {
    contained(
        "hostile_loop",
        "ORDER",
        "",
        Some(limits(1_000_000_000, 4 << 20, 10)),
        "DEADLINE_EXCEEDED",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_growth_hits_the_memory_cap() {
    contained(
        "hostile_memory",
        "ORDER",
        "",
        Some(limits(1_000_000_000, 4 << 20, 1000)),
        "OUT_OF_MEMORY",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_is_named_panic() {
    contained("hostile_panic", "ORDER", "", None, "PANIC").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unbounded_recursion_is_a_stack_overflow() {
    contained("hostile_stack", "ORDER", "", None, "STACK_OVERFLOW").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_output_is_rejected() {
    contained(
        "hostile_huge_output",
        "ORDER",
        "",
        Some(limits(1_000_000_000, 64 << 20, 1000)),
        "OUTPUT_TOO_LARGE",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_that_aliases_one_big_string_is_rejected_before_it_is_copied() {
    // 20,000 hints sharing one 1 MiB message: 2 MiB in the guest, 20 GiB if
    // the host copied each one. The node must stay up and refuse it.
    contained(
        "hostile_huge_output",
        "ORDER",
        "alias:20000",
        Some(limits(1_000_000_000, 64 << 20, 1000)),
        "OUTPUT_TOO_LARGE",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_discount_on_an_unknown_line_is_invalid() {
    contained(
        "hostile_invalid",
        "ORDER",
        "unknown-line",
        None,
        "INVALID_OUTPUT",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_negative_discount_is_invalid() {
    contained(
        "hostile_invalid",
        "ORDER",
        "negative",
        None,
        "INVALID_OUTPUT",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_discount_above_the_price_is_invalid() {
    contained(
        "hostile_invalid",
        "ORDER",
        "above-price",
        None,
        "INVALID_OUTPUT",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redeeming_a_coupon_not_chosen_is_invalid() {
    contained(
        "hostile_invalid",
        "COUPON",
        "foreign-coupon",
        None,
        "INVALID_OUTPUT",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fail_closed_rule_that_fails_refuses_the_quote() {
    let app = spawn_app().await;
    let (_, up) = upload(&app, Some(&author(&app)), wasm("hostile_panic")).await;
    publish(
        &app,
        json!({ "name": "must-apply", "component": up["sha256"], "config": "", "stage": "ORDER",
                "failurePolicy": "FAIL_CLOSED", "activate": true }),
    )
    .await;
    let plain = plain_products(&app).await;
    let body = quote(
        &app,
        json!({ "mallId": "mall-1", "items": [{ "productId": plain[0]["id"], "quantity": 1 }] }),
        None,
    )
    .await;
    assert_eq!(codes(&body), vec!["RULE_FAILED"], "{body}");
    assert_eq!(body["errors"][0]["extensions"]["rule"], "must-apply@1");
    // It keeps refusing: a fail-closed rule is never quarantined away.
    for _ in 0..6 {
        let body = quote(
            &app,
            json!({ "mallId": "mall-1", "items": [{ "productId": plain[0]["id"], "quantity": 1 }] }),
            None,
        )
        .await;
        assert_eq!(codes(&body), vec!["RULE_FAILED"]);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rule_stats(&app, "must-apply").await["status"], "ACTIVE");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_wrong_world_binaries_are_refused_at_upload() {
    let app = spawn_app().await;
    let token = author(&app);
    let (status, body) = upload(&app, Some(&token), b"definitely not wasm".to_vec()).await;
    assert_eq!(status, 422);
    assert_eq!(codes(&body), vec!["INVALID_COMPONENT"]);
    let mut truncated = wasm("rule_member_discount");
    truncated.truncate(truncated.len() / 2);
    let (status, body) = upload(&app, Some(&token), truncated).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        ["INVALID_COMPONENT", "WRONG_WORLD"].contains(&codes(&body)[0].as_str()),
        "{body}"
    );
    let limit = bff::pricing::host::MAX_COMPONENT_BYTES;
    let (status, body) = upload(&app, Some(&token), vec![0u8; limit + 1]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(codes(&body), vec!["COMPONENT_TOO_LARGE"]);
    let (status, body) = upload(&app, None, vec![0u8; 64 << 10]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(codes(&body), vec!["UNAUTHENTICATED"]);
    // Refused before its body was read: the connection is not reused.
    let resp = app
        .http
        .post(format!("{}/rules/components", app.url))
        .body(vec![0u8; 64 << 10])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["connection"], "close");
    // ...and the client goes on over a fresh one.
    let (status, _) = app.query("{ malls { id } }", None).await;
    assert_eq!(status, 200);
    let (status, body) = upload(&app, Some(&token), wasm("hostile_wrong_world")).await;
    assert_eq!(status, 422);
    assert_eq!(codes(&body), vec!["WRONG_WORLD"], "{body}");
    // Right world, but instantiating it traps: its own code, not its shape.
    let (status, body) = upload(&app, Some(&token), wasm("hostile_start_trap")).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(codes(&body), vec!["RULE_START_TRAPPED"], "{body}");
    // A config the rule refuses is refused at publish.
    let (_, up) = upload(&app, Some(&token), wasm("rule_member_discount")).await;
    let body = publish(&app, json!({ "name": "bad-config", "component": up["sha256"], "config": "{\"levels\":{\"gold\":20000}}", "stage": "ITEM" })).await;
    assert_eq!(codes(&body), vec!["INVALID_RULE_CONFIG"], "{body}");
    let (_, list) = app
        .query("{ ruleDeployments { name } }", Some(&token))
        .await;
    assert!(
        !list.to_string().contains("bad-config"),
        "nothing half-written: {list}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn authors_see_and_change_only_their_own_tenant() {
    let app = spawn_app().await;
    let other = app.token_for("other", "author-9", Role::RuleAuthor);
    let (_, body) = app
        .query("{ ruleDeployments { name } }", Some(&other))
        .await;
    assert_eq!(body["data"]["ruleDeployments"], json!([]), "{body}");
    let (_, body) = app
        .query(
            "mutation { deactivateRule(name: \"member-price\") { status } }",
            Some(&other),
        )
        .await;
    assert_eq!(codes(&body), vec!["NOT_FOUND"]);
    // The demo tenant's component is not the other tenant's to publish.
    let (_, mine) = app
        .query(
            "{ ruleDeployment(name: \"member-price\") { active { component } } }",
            Some(&author(&app)),
        )
        .await;
    let sha = mine["data"]["ruleDeployment"]["active"]["component"].clone();
    let (_, body) = app
        .query_vars(
            "mutation($i: PublishRuleInput!) { publishRule(input: $i) { name } }",
            json!({ "i": { "name": "stolen", "component": sha, "config": "{}", "stage": "ITEM" } }),
            Some(&other),
        )
        .await;
    assert_eq!(codes(&body), vec!["NOT_FOUND"], "{body}");

    // Members cannot publish or upload; anonymous callers are refused.
    let member = app.token("member-1");
    let (_, body) = app
        .query(
            "mutation { deactivateRule(name: \"member-price\") { status } }",
            Some(&member),
        )
        .await;
    assert_eq!(codes(&body), vec!["FORBIDDEN"]);
    let (_, body) = app
        .query("{ ruleDeployments { name } }", Some(&member))
        .await;
    assert_eq!(codes(&body), vec!["FORBIDDEN"]);
    let (status, _) = upload(&app, Some(&member), wasm("rule_coupon")).await;
    assert_eq!(status, 403);
    let (status, _) = upload(&app, None, wasm("rule_coupon")).await;
    assert_eq!(status, 401);
    // Operators read but do not write.
    let operator = app.token_for("demo", "op-1", Role::Operator);
    let (_, body) = app
        .query("{ ruleDeployments { name } }", Some(&operator))
        .await;
    assert_eq!(
        body["data"]["ruleDeployments"].as_array().unwrap().len(),
        5,
        "{body}"
    );
    let (_, body) = app
        .query(
            "mutation { deactivateRule(name: \"member-price\") { status } }",
            Some(&operator),
        )
        .await;
    assert_eq!(codes(&body), vec!["FORBIDDEN"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_reports_outcome_fuel_and_bounded_logs_without_activating() {
    let app = spawn_app().await;
    let token = author(&app);
    let (_, up) = upload(&app, Some(&token), wasm("rule_member_discount")).await;
    let (_, body) = app
        .query_vars(
            "query($i: TestRuleInput!) { testRule(input: $i) { ok failureCode fuelUsed durationMicros payable outcome { lineDiscounts { lineId amount label } } applied { ruleId amount { amount } lineId } } }",
            json!({ "i": { "component": up["sha256"], "config": "{\"levels\":{\"gold\":500}}",
                "cart": { "member": { "level": "gold" }, "lines": [ { "id": "a", "unitPrice": 10000, "quantity": 2 } ] } } }),
            Some(&token),
        )
        .await;
    let r = &body["data"]["testRule"];
    assert_eq!(r["ok"], true, "{body}");
    assert_eq!(r["outcome"]["lineDiscounts"][0]["amount"], 1000);
    assert_eq!(r["payable"], 19000);
    assert!(r["fuelUsed"].as_u64().unwrap() > 0);

    // A chatty rule: logs are bounded.
    let (_, up) = upload(&app, Some(&token), wasm("hostile_chatty")).await;
    let (_, body) = app
        .query_vars(
            "query($i: TestRuleInput!) { testRule(input: $i) { ok logsDropped logs { level message } } }",
            json!({ "i": { "component": up["sha256"], "config": "", "cart": { "lines": [ { "unitPrice": 100 } ] } } }),
            Some(&token),
        )
        .await;
    let r = &body["data"]["testRule"];
    assert_eq!(r["ok"], true, "{body}");
    let logs = r["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 64);
    assert!(
        logs.iter()
            .all(|l| l["message"].as_str().unwrap().len() <= 520)
    );
    assert!(r["logsDropped"].as_u64().unwrap() > 0);

    // A dry run of a failing rule names the failure; nothing is published.
    let (_, up) = upload(&app, Some(&token), wasm("hostile_loop")).await;
    let (_, body) = app
        .query_vars(
            "query($i: TestRuleInput!) { testRule(input: $i) { ok failureCode fuelUsed } }",
            json!({ "i": { "component": up["sha256"], "config": "", "cart": { "lines": [ { "unitPrice": 100 } ] } } }),
            Some(&token),
        )
        .await;
    assert_eq!(
        body["data"]["testRule"]["failureCode"], "OUT_OF_FUEL",
        "{body}"
    );
    assert_eq!(body["data"]["testRule"]["fuelUsed"], 5_000_000);
    let (_, list) = app
        .query("{ ruleDeployments { name } }", Some(&token))
        .await;
    assert_eq!(list["data"]["ruleDeployments"].as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn mutations_over_get_are_refused() {
    let app = spawn_app().await;
    let resp = app
        .http
        .get(format!("{}/graphql", app.url))
        .query(&[(
            "query",
            "mutation { deactivateRule(name: \"member-price\") { status } }",
        )])
        .bearer_auth(author(&app))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(codes(&body), vec!["METHOD_NOT_ALLOWED"]);
    let stats = rule_stats(&app, "member-price").await;
    assert_eq!(stats["status"], "ACTIVE");
}

async fn line_applied(
    app: &TestApp,
    product: &str,
    token: Option<&str>,
) -> (i64, Vec<(String, i64)>) {
    let body = quote(
        app,
        json!({ "mallId": "mall-1", "items": [{ "productId": product, "quantity": 1 }] }),
        token,
    )
    .await;
    assert!(body["errors"].is_null(), "{body}");
    let line = &body["data"]["quote"]["lines"][0];
    (
        line["payable"]["amount"].as_i64().unwrap(),
        line["applied"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["ruleId"].as_str().unwrap().to_owned(),
                    a["amount"]["amount"].as_i64().unwrap(),
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_in_one_stacking_group_never_stack_and_others_do() {
    let app = spawn_app().await;
    let gold = app.token("member-1");
    let (_, card) = app
        .query("{ homeCard(mallId: \"mall-1\") { flashSale { id listPrice { amount } flashSale { price { amount } startsAt endsAt } } } }", None)
        .await;
    let sales = card["data"]["homeCard"]["flashSale"]
        .as_array()
        .unwrap()
        .clone();

    // The flash sale and the member price share a group: a gold member gets
    // the better of the two on a flash-sale line, never both.
    let flash = sales
        .iter()
        .find(|p| flash_active(p))
        .unwrap_or_else(|| panic!("a running flash sale in mall-1: {card}"));
    let list = flash["listPrice"]["amount"].as_i64().unwrap();
    let sale = flash["flashSale"]["price"]["amount"].as_i64().unwrap();
    let (payable, applied) = line_applied(&app, flash["id"].as_str().unwrap(), None).await;
    assert_eq!(payable, sale, "anonymous visitors get the flash price");
    assert_eq!(applied, vec![("flash-sale@1".to_owned(), list - sale)]);
    let (payable, applied) = line_applied(&app, flash["id"].as_str().unwrap(), Some(&gold)).await;
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(payable, sale.min(list - list * 500 / 10000));

    // A second member campaign outside the group stacks on the member price.
    let plain = plain_products(&app).await;
    let id = plain[0]["id"].as_str().unwrap().to_owned();
    let list = plain[0]["listPrice"]["amount"].as_i64().unwrap();
    deploy(
        &app,
        "rule_member_discount",
        "vip-week",
        "ITEM",
        r#"{"levels":{"gold":1000},"label":"VIP week"}"#,
        None,
    )
    .await;
    let (payable, applied) = line_applied(&app, &id, Some(&gold)).await;
    let after_member = list - list * 500 / 10000;
    let expected = after_member - after_member * 1000 / 10000;
    assert_eq!(payable, expected, "{applied:?}");
    assert_eq!(applied.len(), 2);

    // In the member price's group, only the better one applies.
    let (_, up) = upload(&app, Some(&author(&app)), wasm("rule_member_discount")).await;
    publish(
        &app,
        json!({ "name": "vip-week", "component": up["sha256"], "config": r#"{"levels":{"gold":1000},"label":"VIP week"}"#,
                "stage": "ITEM", "stackingGroup": "item-price", "activate": true }),
    )
    .await;
    let (payable, applied) = line_applied(&app, &id, Some(&gold)).await;
    assert_eq!(
        applied,
        vec![("vip-week@2".to_owned(), list * 1000 / 10000)]
    );
    assert_eq!(payable, list - list * 1000 / 10000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_keeps_the_rule_versions_it_started_with() {
    use async_graphql::ID;
    use bff::auth::Principal;
    use bff::domain::{MemberId, TenantId};
    use bff::graphql::{Loaders, RequestContext};
    use bff::pricing::api::{CartInput, CartItemInput, quote};
    use bff::pricing::model::Channel;

    let app = spawn_app().await;
    let product = plain_products(&app).await.remove(0);
    let id = product["id"].as_str().unwrap().to_owned();
    let list = product["listPrice"]["amount"].as_i64().unwrap();
    // A gold member's request, as the HTTP handler builds it: its own
    // loaders and price book (which holds the rule snapshot).
    let request = || {
        let principal = Principal::Member {
            tenant: TenantId::parse("demo").unwrap(),
            member: MemberId::parse("member-1").unwrap(),
        };
        RequestContext {
            loaders: Loaders::new(app.state.upstreams_arc(), &principal, Duration::ZERO),
            principal,
            upstreams: app.state.upstreams_arc().clone(),
            pricing: app.state.pricing().clone(),
            channel: Channel::App,
            prices: bff::product::PriceBook::default(),
            idempotency_key: None,
            checkout: None,
        }
    };
    let line_payable = async |req: &RequestContext| {
        let cart = CartInput {
            mall_id: ID("mall-1".into()),
            store_id: None,
            items: Some(vec![CartItemInput {
                product_id: ID(id.clone()),
                quantity: 1,
            }]),
            bill_amount: None,
            coupon_ids: None,
            points_to_use: None,
            channel: None,
        };
        quote(req, cart).await.unwrap().lines[0].payable.minor()
    };
    let member_price = list - list * 500 / 10000;
    // A request takes its snapshot when it starts pricing...
    let in_flight = request();
    assert_eq!(line_payable(&in_flight).await, member_price);
    // ...the rule is deactivated meanwhile...
    let (_, body) = app
        .query(
            "mutation { deactivateRule(name: \"member-price\") { status } }",
            Some(&author(&app)),
        )
        .await;
    assert_eq!(body["data"]["deactivateRule"]["status"], "INACTIVE");
    // ...and it still prices with the versions it started with, while new
    // requests see the change.
    assert_eq!(line_payable(&in_flight).await, member_price);
    assert_eq!(line_payable(&request()).await, list);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_cap_reduces_what_its_rule_takes() {
    let app = spawn_app().await;
    let gold = app.token("member-1");
    let plain = plain_products(&app).await;
    let p = plain
        .iter()
        .find(|p| p["listPrice"]["amount"].as_i64().unwrap() > 2_000)
        .unwrap();
    let list = p["listPrice"]["amount"].as_i64().unwrap();
    let mut capped = limits(5_000_000, 4 << 20, 50);
    capped["maxDiscount"] = json!(300);
    deploy(
        &app,
        "rule_member_discount",
        "half-price",
        "ITEM",
        r#"{"levels":{"gold":5000}}"#,
        Some(capped),
    )
    .await;
    let (payable, applied) = line_applied(&app, p["id"].as_str().unwrap(), Some(&gold)).await;
    let after_member = list - list * 500 / 10000;
    assert!(
        applied.contains(&("half-price@1".to_owned(), 300)),
        "{applied:?}"
    );
    assert_eq!(payable, after_member - 300);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_discount_above_the_payable_is_invalid() {
    contained(
        "hostile_invalid",
        "ORDER",
        "over-order",
        None,
        "INVALID_OUTPUT",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spending_points_the_member_does_not_have_is_invalid() {
    contained(
        "hostile_invalid",
        "POINTS",
        "points-overdraw",
        None,
        "INVALID_OUTPUT",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_author_cannot_dry_run_another_tenants_component_or_deployment() {
    let app = spawn_app().await;
    let (_, mine) = app
        .query(
            "{ ruleDeployment(name: \"member-price\") { active { component } } }",
            Some(&author(&app)),
        )
        .await;
    let sha = mine["data"]["ruleDeployment"]["active"]["component"].clone();
    let other = app.token_for("other", "author-9", Role::RuleAuthor);
    for input in [
        json!({ "component": sha, "config": "{}", "cart": { "lines": [ { "unitPrice": 100 } ] } }),
        json!({ "deployment": "member-price", "cart": { "lines": [ { "unitPrice": 100 } ] } }),
    ] {
        let (_, body) = app
            .query_vars(
                "query($i: TestRuleInput!) { testRule(input: $i) { ok } }",
                json!({ "i": input }),
                Some(&other),
            )
            .await;
        assert_eq!(codes(&body), vec!["NOT_FOUND"], "{body}");
    }
    let (_, body) = app
        .query(
            "{ ruleDeployment(name: \"member-price\") { stats { evaluations } } }",
            Some(&other),
        )
        .await;
    assert_eq!(body["data"]["ruleDeployment"], Value::Null, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_runs_refuse_limits_beyond_the_hosts() {
    let app = spawn_app().await;
    let (_, up) = upload(&app, Some(&author(&app)), wasm("hostile_loop")).await;
    let mut huge = limits(1_000_000_000, 4 << 20, 1000);
    huge["maxLogEntries"] = json!(4_000_000_000u64);
    let (_, body) = app
        .query_vars(
            "query($i: TestRuleInput!) { testRule(input: $i) { ok } }",
            json!({ "i": { "component": up["sha256"], "config": "", "limits": huge,
                           "cart": { "lines": [ { "unitPrice": 100 } ] } } }),
            Some(&author(&app)),
        )
        .await;
    assert_eq!(codes(&body), vec!["BAD_USER_INPUT"], "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_scoped_rule_prices_only_that_channel() {
    let app = spawn_app().await;
    let gold = app.token("member-1");
    let (_, up) = upload(&app, Some(&author(&app)), wasm("rule_member_discount")).await;
    publish(
        &app,
        json!({ "name": "mini-program-week", "component": up["sha256"], "config": r#"{"levels":{"gold":1000}}"#,
                "stage": "ITEM", "scope": { "malls": ["mall-1"], "channels": ["MINI_PROGRAM"] }, "activate": true }),
    )
    .await;
    let applied_by = |channel: Option<&'static str>| {
        let app = &app;
        let gold = gold.clone();
        async move {
            let mut req = app
                .http
                .post(format!("{}/graphql", app.url))
                .bearer_auth(gold)
                .json(&json!({ "query": PRODUCTS }));
            if let Some(c) = channel {
                req = req.header("x-channel", c);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            (
                status,
                body.to_string().contains("mini-program-week@1"),
                body,
            )
        }
    };
    let (status, applied, body) = applied_by(None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !applied,
        "the app channel does not get the mini-program rule"
    );
    let (_, applied, body) = applied_by(Some("mini-program")).await;
    assert!(applied, "{body}");
    let (status, _, body) = applied_by(Some("tv")).await;
    assert_eq!(status, 400);
    assert_eq!(codes(&body), vec!["BAD_REQUEST"]);
}
