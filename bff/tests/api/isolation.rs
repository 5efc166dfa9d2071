//! Tenant isolation of the rule engine: a second tenant's rule authors
//! attack the node with their own components through the documented routes,
//! and the demo tenant's prices stay exact, none of its deployments is
//! quarantined, the node keeps answering unrelated queries, and memory stays
//! bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bff::auth::Role;
use serde_json::{Value, json};

use crate::helpers::{TestApp, codes, spawn_app_with};
use crate::rules::{author, limits, plain_products, quote, quote_marked, rule_stats, upload, wasm};

/// An app whose batch budget is far above what the demo rules need: the
/// test machine is noisy, and what is tested here is isolation, not the
/// budget.
async fn app() -> TestApp {
    spawn_app_with(|s| s.rules.batch_budget_ms = 10_000).await
}

fn intruder(app: &TestApp) -> String {
    app.token_for("other", "intruder", Role::RuleAuthor)
}

/// Resident memory of this process.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The demo tenant's cart and its quote before any attack.
async fn victim(app: &TestApp) -> (Value, Value) {
    let plain = plain_products(app).await;
    let cart = json!({ "mallId": "mall-1", "items": [
        { "productId": plain[0]["id"], "quantity": 2 },
        { "productId": plain[1]["id"], "quantity": 1 } ] });
    let before = quote_with_every_rule_run(app, cart.clone(), &app.token("member-1")).await;
    assert!(before.get("errors").is_none(), "{before}");
    assert_eq!(before["data"]["quote"]["degraded"], false, "{before}");
    (cart, before)
}

/// The quote of `cart`, asked again (up to five times) while the node
/// sheds a rule for want of CPU (`HOST_OVERLOADED`: the host's condition on
/// a busy machine, not the rule's). Tests that compare amounts need every
/// rule to have run.
async fn quote_with_every_rule_run(app: &TestApp, cart: Value, token: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..5 {
        last = quote_marked(app, cart.clone(), Some(token)).await;
        let shed = last["data"]["quote"]["skippedRules"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r["code"] == "HOST_OVERLOADED"));
        if !shed {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the node kept shedding rules: {last}");
}

/// Quotes the victim's cart over and over while `attacking` is set, and
/// checks every quote is exactly the baseline and `malls` answers.
/// Returns how many quotes were checked.
async fn watch(app: TestApp, cart: Value, before: Value, attacking: Arc<AtomicBool>) -> usize {
    let token = app.token("member-1");
    let mut checked = 0;
    while attacking.load(Ordering::Relaxed) || checked < 3 {
        let now = quote_marked(&app, cart.clone(), Some(&token)).await;
        assert_eq!(now, before, "the victim's quote changed under attack");
        let (status, malls) = app.query("{ malls { id } }", None).await;
        assert_eq!(status, 200, "{malls}");
        assert!(malls.get("errors").is_none(), "{malls}");
        checked += 1;
    }
    checked
}

/// Every demo deployment is still active (none quarantined).
async fn demo_rules_all_active(app: &TestApp) {
    let (_, body) = app
        .query("{ ruleDeployments { name status } }", Some(&author(app)))
        .await;
    let list = body["data"]["ruleDeployments"].as_array().unwrap();
    assert_eq!(list.len(), 5, "{body}");
    assert!(list.iter().all(|d| d["status"] == "ACTIVE"), "{body}");
}

async fn publish_as(app: &TestApp, token: &str, input: Value) -> Value {
    let (status, body) = app
        .query_vars(
            "mutation($i: PublishRuleInput!) { publishRule(input: $i) { name status } }",
            json!({ "i": input }),
            Some(token),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn test_rule(app: &TestApp, token: &str, input: Value) -> Value {
    let (status, body) = app
        .query_vars(
            "query($i: TestRuleInput!) { testRule(input: $i) { ok failureCode failureDetail fuelUsed logsDropped logs { message } } }",
            json!({ "i": input }),
            Some(token),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["testRule"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_hostile_publishes_from_another_tenant_leaves_the_victim_intact() {
    let app = app().await;
    let (cart, before) = victim(&app).await;
    let token = intruder(&app);
    let (status, up) = upload(&app, Some(&token), wasm("hostile_config_hog")).await;
    assert_eq!(status, 201, "{up}");
    let rss_before = rss_bytes();

    let attacking = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn(watch(
        app_clone(&app),
        cart.clone(),
        before.clone(),
        attacking.clone(),
    ));
    // 60 authors' publishes at once: each config check grows to 48 MiB and
    // spins to the longest deadline.
    let mut publishes = Vec::new();
    for n in 0..60 {
        let app = app_clone(&app);
        let token = token.clone();
        let sha = up["sha256"].clone();
        publishes.push(tokio::spawn(async move {
            publish_as(
                &app,
                &token,
                json!({ "name": format!("hog-{n}"), "component": sha, "config": "48",
                        "stage": "ORDER", "activate": true,
                        "limits": limits(1_000_000_000, 64 << 20, 1000) }),
            )
            .await
        }));
    }
    let mut peak = 0;
    let mut refused = Vec::new();
    for p in publishes {
        peak = peak.max(rss_bytes());
        let body = p.await.unwrap();
        refused.extend(codes(&body));
    }
    attacking.store(false, Ordering::Relaxed);
    let checked = watcher.await.unwrap();
    assert!(checked >= 3);
    // Every publish was refused: the rule's own deadline, or no room.
    assert_eq!(refused.len(), 60, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|c| c == "INVALID_RULE_CONFIG" || c == "ENGINE_BUSY"),
        "{refused:?}"
    );
    demo_rules_all_active(&app).await;
    // At most a few 64 MiB config checks ran at once.
    assert!(
        peak.saturating_sub(rss_before) < 768 << 20,
        "resident memory grew by {} MiB",
        peak.saturating_sub(rss_before) >> 20
    );
}

/// A second handle on the same running app.
fn app_clone(app: &TestApp) -> TestApp {
    TestApp {
        url: app.url.clone(),
        http: app.http.clone(),
        state: app.state.clone(),
        mall: app.mall.clone(),
        member: app.member.clone(),
        product: app.product.clone(),
        demo_urls: app.demo_urls.clone(),
        _data: app._data.clone(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spin_to_deadline_rule_under_load_leaves_the_other_tenants_prices_exact() {
    let app = app().await;
    let (cart, before) = victim(&app).await;
    let token = intruder(&app);
    let (status, up) = upload(&app, Some(&token), wasm("hostile_spin")).await;
    assert_eq!(status, 201, "{up}");
    // Fail-closed: never quarantined, so it spins on every quote. The
    // deadline comes first: the most fuel lasts a spinning loop about
    // 200 ms of CPU.
    let body = publish_as(
        &app,
        &token,
        json!({ "name": "spin", "component": up["sha256"], "config": "", "stage": "ORDER",
                "activate": true, "failurePolicy": "FAIL_CLOSED",
                "limits": limits(1_000_000_000, 4 << 20, 100) }),
    )
    .await;
    assert_eq!(body["data"]["publishRule"]["status"], "ACTIVE", "{body}");

    let attacking = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn(watch(
        app_clone(&app),
        cart.clone(),
        before.clone(),
        attacking.clone(),
    ));
    // The demo services hold no catalogue for the second tenant: its
    // quotes go through the pricing capability directly, on the same pool.
    let mut attackers = Vec::new();
    for _ in 0..20 {
        let app = app_clone(&app);
        attackers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(intruder_quote(&app).await);
            }
            seen
        }));
    }
    let mut seen = Vec::new();
    for a in attackers {
        seen.extend(a.await.unwrap());
    }
    attacking.store(false, Ordering::Relaxed);
    watcher.await.unwrap();
    // The attacker's own quotes are refused (its rule is fail-closed) for
    // its own limits (whichever of its deadline or its fuel the machine's
    // speed makes it reach first) or for want of room; nothing else.
    let own = ["DEADLINE_EXCEEDED", "OUT_OF_FUEL"];
    assert!(
        seen.iter().all(|c| own.contains(&c.as_str())
            || ["ENGINE_BUSY", "HOST_OVERLOADED"].contains(&c.as_str())),
        "{seen:?}"
    );
    assert!(seen.iter().any(|c| own.contains(&c.as_str())), "{seen:?}");
    demo_rules_all_active(&app).await;
    let (_, stats) = app
        .query(
            "{ ruleDeployment(name: \"spin\") { status stats { lastFailureCode } } }",
            Some(&token),
        )
        .await;
    let code = &stats["data"]["ruleDeployment"]["stats"]["lastFailureCode"];
    assert!(
        [
            "DEADLINE_EXCEEDED",
            "OUT_OF_FUEL",
            "ENGINE_BUSY",
            "HOST_OVERLOADED"
        ]
        .iter()
        .any(|c| code == c),
        "{stats}"
    );
}

/// A quote of the second tenant through the pricing capability; returns
/// the code its fail-closed rule failed with ("ok" if it priced).
async fn intruder_quote(app: &TestApp) -> String {
    use bff::domain::{MallId, Money, ProductId, StoreId, TenantId};
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
    let pricing = app.state.pricing();
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
    match pricing.quote(&snapshot, &tenant, &request).await {
        Ok(_) => "ok".into(),
        Err(failed) => failed.code.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_flood_is_read_only_up_to_the_bound_and_charged_as_fuel() {
    let app = app().await;
    let (cart, before) = victim(&app).await;
    let token = intruder(&app);
    let (status, up) = upload(&app, Some(&token), wasm("hostile_log_flood")).await;
    assert_eq!(status, 201, "{up}");
    let rss_before = rss_bytes();
    let attacking = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn(watch(app_clone(&app), cart, before, attacking.clone()));
    for _ in 0..4 {
        let r = test_rule(
            &app,
            &token,
            json!({ "component": up["sha256"], "config": "1000",
                    "limits": limits(1_000_000_000, 16 << 20, 1000),
                    "cart": { "lines": [ { "unitPrice": 100 } ] } }),
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
        let logs = r["logs"].as_array().unwrap();
        assert_eq!(logs.len(), 64);
        assert_eq!(r["logsDropped"], 1000 - 64);
        for l in logs {
            let m = l["message"].as_str().unwrap();
            // A bounded prefix, escaped: no raw newline or escape reaches
            // a log line.
            assert!(m.len() <= 600, "{} bytes", m.len());
            assert!(!m.contains('\n') && !m.contains('\u{1b}'), "{m:?}");
            assert!(m.starts_with("flood\\n\\u{1b}[31mERROR"), "{m:?}");
        }
        // Every call is charged to the rule.
        assert!(r["fuelUsed"].as_u64().unwrap() >= 1000 * 200, "{r}");
    }
    attacking.store(false, Ordering::Relaxed);
    watcher.await.unwrap();
    assert!(rss_bytes().saturating_sub(rss_before) < 256 << 20);
}

/// A core module of `count` empty functions (no locals).
fn many_functions(count: u32) -> Vec<u8> {
    core_module(&vec![vec![0u8]; count as usize])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_of_700k_functions_is_refused_before_it_is_compiled() {
    let app = app().await;
    let token = intruder(&app);
    let module = many_functions(700_000);
    assert!(module.len() > 2_000_000 && module.len() < 4 << 20);
    let (status, body) = upload(&app, Some(&token), module).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(codes(&body), ["COMPONENT_TOO_COMPLEX"], "{body}");
    // A small module of the same shape is not refused for its cost (it is
    // not a rule, so it is refused for that instead).
    let (status, body) = upload(&app, Some(&token), many_functions(10)).await;
    assert_eq!(status, 422, "{body}");
    assert_ne!(codes(&body), ["COMPONENT_TOO_COMPLEX"], "{body}");
    let (status, malls) = app.query("{ malls { id } }", None).await;
    assert_eq!(status, 200, "{malls}");
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_config_errors_and_failure_messages_are_bounded_and_escaped() {
    let app = app().await;
    let token = intruder(&app);
    let (status, up) = upload(&app, Some(&token), wasm("hostile_huge_text")).await;
    assert_eq!(status, 201, "{up}");
    // check-config refuses with 20 MB: the error is a short, escaped line.
    let body = publish_as(
        &app,
        &token,
        json!({ "name": "huge", "component": up["sha256"], "config": "", "stage": "ORDER",
                "limits": limits(1_000_000_000, 64 << 20, 1000) }),
    )
    .await;
    assert_eq!(codes(&body), ["INVALID_RULE_CONFIG"], "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.len() < 1024, "{} bytes", message.len());
    assert!(!message.contains('\n') && !message.contains('\u{1b}'));
    assert!(message.contains("bad\\n\\u{1b}[2J"), "{message}");

    // evaluate fails with 8 MB: the dry run's detail is bounded too.
    let r = test_rule(
        &app,
        &token,
        json!({ "component": up["sha256"], "config": "",
                "limits": limits(1_000_000_000, 64 << 20, 1000),
                "cart": { "lines": [ { "unitPrice": 100 } ] } }),
    )
    .await;
    assert_eq!(r["failureCode"], "RULE_ERROR", "{r}");
    let detail = r["failureDetail"].as_str().unwrap();
    assert!(detail.len() < 1024 && !detail.contains('\n'), "{detail:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_rules_stored_detail_is_bounded_and_its_quote_is_marked_degraded() {
    let app = app().await;
    let (cart, before) = victim(&app).await;
    // The tenant's own rule fails every evaluation with an 8 MB message.
    let token = author(&app);
    let (status, up) = upload(&app, Some(&token), wasm("hostile_huge_text")).await;
    assert_eq!(status, 201, "{up}");
    let body = publish_as(
        &app,
        &token,
        json!({ "name": "huge", "component": up["sha256"], "config": "ok",
                "stage": "ORDER", "activate": true,
                "limits": limits(1_000_000_000, 64 << 20, 1000) }),
    )
    .await;
    assert_eq!(body["data"]["publishRule"]["status"], "ACTIVE", "{body}");
    let mut marked = quote_with_every_rule_run(&app, cart, &app.token("member-1")).await;
    let q = marked["data"]["quote"].as_object_mut().unwrap();
    assert_eq!(q.remove("degraded"), Some(json!(true)));
    assert_eq!(
        q.remove("skippedRules"),
        Some(json!([{ "ruleId": "huge@1", "code": "RULE_ERROR" }]))
    );
    let mut expected = before;
    let e = expected["data"]["quote"].as_object_mut().unwrap();
    e.remove("degraded");
    e.remove("skippedRules");
    assert_eq!(marked, expected, "the failing rule changed the amounts");
    let stats = rule_stats(&app, "huge").await;
    assert_eq!(stats["lastFailureCode"], "RULE_ERROR", "{stats}");
    let detail = stats["lastFailureDetail"].as_str().unwrap();
    assert!(detail.len() <= 1024, "{} bytes", detail.len());
    assert!(
        !detail.contains('\n') && !detail.contains('\u{1b}'),
        "{detail:?}"
    );
    assert!(detail.starts_with("bad\\n\\u{1b}[2J"), "{detail:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hint_and_entry_floods_and_an_out_of_range_shortfall_are_invalid_output() {
    let app = app().await;
    let token = intruder(&app);
    let (status, up) = upload(&app, Some(&token), wasm("hostile_flood")).await;
    assert_eq!(status, 201, "{up}");
    for attack in ["hints", "entries", "shortfall"] {
        let r = test_rule(
            &app,
            &token,
            json!({ "component": up["sha256"], "config": attack, "stage": "ORDER",
                    "limits": { "fuel": 1_000_000_000u64, "memoryBytes": 64 << 20,
                        "timeoutMs": 1000, "maxInputBytes": 262144,
                        "maxOutputBytes": 4 << 20, "maxLogEntries": 64, "maxDiscount": 0 },
                    "cart": { "lines": [ { "id": "a", "unitPrice": 100000, "quantity": 1 } ] } }),
        )
        .await;
        assert_eq!(r["failureCode"], "INVALID_OUTPUT", "{attack}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_that_needs_more_than_the_default_memory_is_accepted_at_upload() {
    let app = app().await;
    let token = intruder(&app);
    let (status, up) = upload(&app, Some(&token), wasm("hostile_big_static")).await;
    assert_eq!(status, 201, "{up}");
    let roomy = test_rule(
        &app,
        &token,
        json!({ "component": up["sha256"], "config": "",
                "cart": { "lines": [ { "unitPrice": 100 } ] },
                "limits": limits(5_000_000, 8 << 20, 50) }),
    )
    .await;
    assert_eq!(roomy["ok"], true, "{roomy}");
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_beyond_the_authors_rate_are_refused() {
    let app = spawn_app_with(|s| {
        s.rules.uploads_per_author_per_minute = 2;
        s.rules.uploads_per_tenant_per_minute = 100;
    })
    .await;
    let token = intruder(&app);
    for _ in 0..2 {
        let (status, body) = upload(&app, Some(&token), wasm("hostile_spin")).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = upload(&app, Some(&token), wasm("hostile_spin")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(codes(&body), ["RATE_LIMITED"], "{body}");
    // Another author of the tenant has a rate of their own.
    let other = app.token_for("other", "colleague", Role::RuleAuthor);
    let (status, body) = upload(&app, Some(&other), wasm("hostile_spin")).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rule_pool_is_visible_in_the_metrics() {
    let app = app().await;
    let (cart, _) = victim(&app).await;
    quote(&app, cart, Some(&app.token("member-1"))).await;
    let text = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("bff_rule_queue_depth"), "{text}");
    assert!(
        text.contains("bff_rule_pool_run_seconds_count{tenant=\"demo\",work=\"price\"}"),
        "{text}"
    );
    assert!(text.contains("bff_rule_pool_wait_seconds_bucket"));
}

/// The demo tenant's deployments: none quarantined, the five demo ones
/// active (`extra` names deployments a test may have added).
async fn none_quarantined(app: &TestApp) {
    let (_, body) = app
        .query("{ ruleDeployments { name status } }", Some(&author(app)))
        .await;
    let list = body["data"]["ruleDeployments"].as_array().unwrap();
    assert!(list.len() >= 5, "{body}");
    assert!(list.iter().all(|d| d["status"] != "QUARANTINED"), "{body}");
    let active = list.iter().filter(|d| d["status"] == "ACTIVE").count();
    assert_eq!(active, 5, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saturated_engine_is_busy_for_everyone_marks_prices_degraded_and_blames_no_rule() {
    // One pool thread and room for one waiting job on the whole node: the
    // other tenant's spinning rule, quoted in a loop, keeps both taken.
    let app = spawn_app_with(|s| {
        s.rules.batch_budget_ms = 10_000;
        s.rules.pool_threads = 1;
        s.rules.tenant_share = 1;
        s.rules.queue_limit = 1;
        s.rules.tenant_queue_limit = 1;
    })
    .await;
    let (cart, before) = victim(&app).await;
    let (status, member_rule) =
        upload(&app, Some(&author(&app)), wasm("rule_member_discount")).await;
    assert_eq!(status, 201, "{member_rule}");
    let token = intruder(&app);
    let (status, up) = upload(&app, Some(&token), wasm("hostile_spin")).await;
    assert_eq!(status, 201, "{up}");
    let body = publish_as(
        &app,
        &token,
        json!({ "name": "spin", "component": up["sha256"], "config": "", "stage": "ORDER",
                "activate": true, "failurePolicy": "FAIL_CLOSED",
                "limits": limits(1_000_000_000, 4 << 20, 1000) }),
    )
    .await;
    assert_eq!(body["data"]["publishRule"]["status"], "ACTIVE", "{body}");

    let attacking = Arc::new(AtomicBool::new(true));
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let (app, attacking) = (app_clone(&app), attacking.clone());
        attackers.push(tokio::spawn(async move {
            while attacking.load(Ordering::Relaxed) {
                if intruder_quote(&app).await == "ENGINE_BUSY" {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
        }));
    }

    // The demo tenant's quotes: exact, or refused a slot and marked so.
    let member = app.token("member-1");
    let mut degraded = Vec::new();
    for _ in 0..400 {
        let now = quote_marked(&app, cart.clone(), Some(&member)).await;
        if now["data"]["quote"]["degraded"] == true {
            degraded.push(now);
            if degraded.len() == 8 {
                break;
            }
        } else {
            assert_eq!(now, before, "an unmarked quote changed");
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // More busy quotes than it takes to quarantine a failing rule.
    assert_eq!(degraded.len(), 8, "the engine was never saturated");
    let expected = &before["data"]["quote"];
    for marked in &degraded {
        let q = &marked["data"]["quote"];
        assert!(marked.get("errors").is_none(), "{marked}");
        let skipped = q["skippedRules"].as_array().unwrap();
        assert!(!skipped.is_empty(), "{marked}");
        assert!(
            skipped.iter().all(|s| s["code"] == "ENGINE_BUSY"),
            "{marked}"
        );
        // Every rule skipped: the list price, no discount, nothing applied.
        assert_eq!(q["subtotal"], expected["subtotal"], "{marked}");
        assert_eq!(q["payable"], q["subtotal"], "{marked}");
        assert_eq!(q["discount"]["amount"], 0, "{marked}");
        assert_eq!(q["appliedDetail"], json!([]), "{marked}");
    }

    // Checkout never charges a price computed without every rule.
    let mut refused = false;
    for n in 0..100 {
        let (_, body) = app
            .query_vars(
                "mutation($i: CheckoutInput!) { checkout(input: $i) { order { id payable { amount } } } }",
                json!({ "i": { "cart": cart, "idempotencyKey": format!("busy-{n}") } }),
                Some(&member),
            )
            .await;
        if codes(&body) == ["PRICE_DEGRADED"] {
            assert_eq!(body.get("data"), Some(&Value::Null), "{body}");
            refused = true;
            break;
        }
        // An order that found a slot was priced with every rule.
        assert!(body.get("errors").is_none(), "{body}");
        assert_eq!(
            body["data"]["checkout"]["order"]["payable"], expected["payable"],
            "{body}"
        );
    }
    assert!(refused, "checkout never met the saturated engine");

    // Administrative work is refused with a clear code.
    let mut busy = false;
    for n in 0..100 {
        let (_, body) = app
            .query_vars(
                "mutation($i: PublishRuleInput!) { publishRule(input: $i) { name } }",
                json!({ "i": { "name": format!("probe-{n}"), "component": member_rule["sha256"],
                    "config": "{\"levels\":{\"gold\":500}}", "stage": "ITEM" } }),
                Some(&author(&app)),
            )
            .await;
        if codes(&body) == ["ENGINE_BUSY"] {
            busy = true;
            break;
        }
        assert!(body.get("errors").is_none(), "{body}");
    }
    assert!(busy, "publishing never met the saturated engine");

    attacking.store(false, Ordering::Relaxed);
    for a in attackers {
        a.await.unwrap();
    }
    // The host's failure is nobody's: every demo deployment is active and
    // prices exactly as before once the engine has room.
    none_quarantined(&app).await;
    let mut now = quote_marked(&app, cart.clone(), Some(&member)).await;
    for _ in 0..100 {
        if now == before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        now = quote_marked(&app, cart.clone(), Some(&member)).await;
    }
    assert_eq!(now, before);
}

/// `bytes` with a custom section of its own: a component no other test
/// shares, so its counters are this test's alone.
fn unique(mut bytes: Vec<u8>, tag: &str) -> Vec<u8> {
    let nonce = format!(
        "{tag}-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    );
    let mut body = vec![nonce.len() as u8];
    body.extend(nonce.as_bytes());
    bytes.push(0);
    bytes.push(body.len() as u8);
    bytes.extend(body);
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_evaluates_the_rule_exactly_once() {
    let app = app().await;
    let token = intruder(&app);
    let (status, up) = upload(
        &app,
        Some(&token),
        unique(wasm("rule_member_discount"), "dry-run-once"),
    )
    .await;
    assert_eq!(status, 201, "{up}");
    let sha = up["sha256"].as_str().unwrap();
    let compiled = app
        .state
        .pricing()
        .registry()
        .component_for("other", sha)
        .await
        .unwrap();
    assert_eq!(compiled.evaluations(), 0);
    let r = test_rule(
        &app,
        &token,
        json!({ "component": sha, "config": "{\"levels\":{\"gold\":500}}",
                "cart": { "member": { "level": "gold" },
                          "lines": [ { "id": "a", "unitPrice": 10000, "quantity": 2 } ] } }),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(compiled.evaluations(), 1);
    // A failing dry run too.
    let r = test_rule(
        &app,
        &token,
        json!({ "component": sha, "config": "not json",
                "cart": { "lines": [ { "unitPrice": 100 } ] } }),
    )
    .await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(compiled.evaluations(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_millisecond_limit_stops_a_spinning_rule_as_its_own_deadline() {
    let app = app().await;
    let token = intruder(&app);
    let (status, up) = upload(&app, Some(&token), wasm("hostile_spin")).await;
    assert_eq!(status, 201, "{up}");
    let r = test_rule(
        &app,
        &token,
        json!({ "component": up["sha256"], "config": "",
                "limits": limits(1_000_000_000, 4 << 20, 1),
                "cart": { "lines": [ { "unitPrice": 100 } ] } }),
    )
    .await;
    assert_eq!(r["failureCode"], "DEADLINE_EXCEEDED", "{r}");
}

/// A core module of the given function bodies (each: its locals and
/// instructions, without the final `end`), all of type `() -> ()`.
fn core_module(bodies: &[Vec<u8>]) -> Vec<u8> {
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
    module
}

/// A body of one i32 local: `depth` nested loops around `uses` reads of it.
fn looped_reads(depth: usize, uses: usize) -> Vec<u8> {
    let mut body = vec![1, 1, 0x7f];
    body.extend([0x03, 0x40].repeat(depth));
    body.extend([0x20, 0x00, 0x1a].repeat(uses));
    body.extend([0x0b].repeat(depth));
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_just_beyond_the_compile_cost_limits_are_refused_with_their_code() {
    use bff::pricing::host::costs;
    let app = spawn_app_with(|s| s.rules.uploads_per_author_per_minute = 1_000).await;
    let token = intruder(&app);
    let depth = costs::MAX_LOOP_DEPTH as usize;
    let max = costs::MAX_COMPILE_COST as usize;
    // Reads of a local inside the deepest loops: the most such a body can
    // hold within the compile cost.
    let reads = max / (costs::LOOP_LOCAL_COST as usize * depth);
    // A function body is at most 64 KiB, so the nops are spread.
    let nops = |n: usize| {
        let mut bodies = Vec::new();
        let mut left = n;
        while left > 0 {
            let here = left.min(60_000);
            let mut body = vec![0];
            body.extend(std::iter::repeat_n(0x01, here));
            bodies.push(body);
            left -= here;
        }
        core_module(&bodies)
    };
    let over = [
        ("loops nested", core_module(&[looped_reads(depth + 1, 1)])),
        (
            "compile cost",
            core_module(&[looped_reads(depth, reads + 1)]),
        ),
        // Each body also ends in an `end`: one instruction more apiece.
        ("compile cost", nops(max)),
    ];
    for (what, module) in over {
        let (status, body) = upload(&app, Some(&token), module).await;
        assert_eq!(status, 422, "{what}: {body}");
        assert_eq!(codes(&body), ["COMPONENT_TOO_COMPLEX"], "{what}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(what), "{what}: {message}");
    }
    // At the limits: not refused for their cost (they are no rules, so
    // they are refused for that).
    let at = [
        core_module(&[looped_reads(depth, 1)]),
        core_module(&[looped_reads(depth, reads * 9 / 10)]),
        nops(max - 64),
    ];
    for module in at {
        let (status, body) = upload(&app, Some(&token), module).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(codes(&body), ["WRONG_WORLD"], "{body}");
    }
}
