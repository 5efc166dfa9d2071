//! The GraphQL edge under hostile documents and as real clients see it:
//! documents that would exhaust the stack or the CPU are refused before
//! anything recursive runs, the process stays up, answers follow the
//! GraphQL specification key by key, and GraphQL over HTTP behaves as the
//! specification says.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use bff::config::FaultSettings;

use crate::helpers::{TestApp, codes, down, run_node_test, spawn_app, spawn_app_with};

/// The server still answers `/healthz` promptly.
async fn assert_alive(app: &TestApp) {
    let resp = app
        .http
        .get(format!("{}/healthz", app.url))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("the server is still up");
    assert_eq!(resp.status(), 200);
}

/// The answer's raw text (JSON maps in tests do not keep key order).
async fn raw_answer(app: &TestApp, query: impl AsRef<str>, token: Option<&str>) -> String {
    let mut request = app.http.post(format!("{}/graphql", app.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request
        .json(&json!({ "query": query.as_ref() }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value at `name` in `value`, asserting the key is present (a
/// missing key is not a null).
fn key<'a>(value: &'a Value, name: &str) -> &'a Value {
    value
        .as_object()
        .unwrap_or_else(|| panic!("expected an object holding `{name}`, got {value}"))
        .get(name)
        .unwrap_or_else(|| panic!("`{name}` is missing from {value}"))
}

fn nested_objects(depth: usize) -> String {
    format!(
        "{{ malls(zzz: {}1{}) {{ id }} }}",
        "{a:".repeat(depth),
        "}".repeat(depth)
    )
}

fn nested_lists(depth: usize) -> String {
    format!(
        "{{ malls @include(if: {}true{}) {{ id }} }}",
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[tokio::test]
async fn deeply_nested_values_are_refused_and_the_process_stays_up() {
    let app = spawn_app().await;
    for depth in [1_000, 2_000, 5_000, 10_000] {
        for query in [nested_objects(depth), nested_lists(depth)] {
            let (status, body) = app.query(&query, None).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(codes(&body), ["QUERY_TOO_DEEP"], "depth {depth}");
            assert!(
                body.get("data").is_none(),
                "a request error has no data: {body}"
            );
        }
    }
    // The same over GET, as any web page could send with an <img>.
    let query = nested_objects(2_000);
    let resp = app
        .http
        .get(format!("{}/graphql", app.url))
        .query(&[("query", query.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(codes(&body), ["QUERY_TOO_DEEP"]);
    assert_alive(&app).await;
}

fn diamond(n: usize) -> String {
    let mut text = String::from("{ malls { ...F0 } }\n");
    for i in 0..n {
        text.push_str(&format!(
            "fragment F{i} on Mall {{ ...F{} ...F{} }}\n",
            i + 1,
            i + 1
        ));
    }
    text.push_str(&format!("fragment F{n} on Mall {{ id }}\n"));
    text
}

#[tokio::test]
async fn fragment_diamonds_are_refused_without_expanding_them() {
    let app = spawn_app().await;
    for n in [30, 60] {
        let (status, body) = app.query(&diamond(n), None).await;
        assert_eq!(status, 200);
        assert_eq!(codes(&body), ["QUERY_TOO_COMPLEX"], "n = {n}: {body}");
        assert!(body.get("data").is_none());
    }
    // Two at once, and the node still answers its health check at once.
    let bomb = diamond(60);
    let (a, b) = tokio::join!(app.query(&bomb, None), app.query(&bomb, None));
    assert_eq!(codes(&a.1), ["QUERY_TOO_COMPLEX"]);
    assert_eq!(codes(&b.1), ["QUERY_TOO_COMPLEX"]);
    assert_alive(&app).await;
    // A small diamond is an ordinary query.
    let (_, body) = app.query(&diamond(3), None).await;
    assert!(body.get("errors").is_none(), "{body}");
    assert!(
        key(&body["data"], "malls")
            .as_array()
            .is_some_and(|m| m.len() >= 3)
    );
}

#[tokio::test]
async fn long_documents_and_directive_floods_get_short_bounded_answers() {
    let app = spawn_app_with(|s| s.graphql.max_body_bytes = 1024 * 1024).await;
    let long = format!("{{ malls {{ {} }} }}", "id ".repeat(20_000));
    let (_, body) = app.query(&long, None).await;
    assert_eq!(codes(&body), ["QUERY_TOO_LARGE"]);

    let directives = format!("{{ malls {{ id {} }} }}", "@skip(if: false) ".repeat(3_000));
    let (_, body) = app.query(&directives, None).await;
    assert_eq!(codes(&body), ["TOO_MANY_DIRECTIVES"]);
    assert!(
        body.to_string().len() < 1_000,
        "{} bytes",
        body.to_string().len()
    );

    // Within the directive limit but repeated: validation errors are merged.
    let repeated = format!("{{ malls {{ id {} }} }}", "@skip(if: false) ".repeat(40));
    let (_, body) = app.query(&repeated, None).await;
    let errors = body["errors"].as_array().expect("errors");
    assert!(
        !errors.is_empty() && errors.len() <= 21,
        "{} errors",
        errors.len()
    );
    for error in errors {
        let message = error["message"].as_str().unwrap();
        assert!(!message.contains('\n'), "{message}");
    }
    assert_alive(&app).await;
}

#[tokio::test]
async fn parse_errors_are_one_line_for_people() {
    let app = spawn_app().await;
    let (_, body) = app.query("{ malls { id }\n zz( }", None).await;
    assert_eq!(codes(&body), ["GRAPHQL_PARSE_FAILED"]);
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        !message.contains('\n') && !message.contains("-->"),
        "{message}"
    );
    assert_eq!(body["errors"][0]["locations"][0]["line"], 2);
}

#[tokio::test]
async fn a_failed_nullable_field_is_present_as_null() {
    let app = spawn_app().await;
    // Anonymous: `me` fails, `malls` answers.
    let (status, body) = app.query("{ me { id } malls { id } }", None).await;
    assert_eq!(status, 200);
    let data = key(&body, "data");
    assert_eq!(key(data, "me"), &Value::Null);
    assert!(key(data, "malls").as_array().is_some_and(|m| !m.is_empty()));
    assert_eq!(codes(&body), ["UNAUTHENTICATED"]);
    assert_eq!(body["errors"][0]["path"], json!(["me"]));
}

#[tokio::test]
async fn with_the_member_service_down_the_card_keeps_its_shape() {
    let app = spawn_app().await;
    app.member.set_faults(down());
    let token = app.token("member-1");
    let (status, body) = app
        .query(
            r#"{ homeCard(mallId: "mall-1") { member { level } coupons { id } mall { id } } }"#,
            Some(&token),
        )
        .await;
    assert_eq!(status, 200);
    let card = key(key(&body, "data"), "homeCard");
    assert_eq!(key(card, "member"), &Value::Null);
    assert_eq!(key(card, "coupons"), &Value::Null);
    assert_eq!(key(key(card, "mall"), "id"), "mall-1");
    assert!(codes(&body).iter().all(|c| c == "UPSTREAM_UNAVAILABLE"));

    // Only the member selected: the card is an object with a null member,
    // not a null card.
    let (_, body) = app
        .query(
            r#"{ homeCard(mallId: "mall-1") { member { level } } }"#,
            Some(&token),
        )
        .await;
    let card = key(key(&body, "data"), "homeCard");
    assert_eq!(card, &json!({ "member": null }));
    assert_eq!(body["errors"][0]["extensions"]["upstream"], "member");
}

#[tokio::test]
async fn with_the_product_service_down_the_product_fields_are_null_keys() {
    let app = spawn_app().await;
    app.product.set_faults(down());
    let (_, body) = app
        .query(
            r#"{ homeCard(mallId: "mall-1") { mall { id } recommended { id price { final { amount } } } flashSale { id } } }"#,
            None,
        )
        .await;
    let card = key(key(&body, "data"), "homeCard");
    assert_eq!(key(card, "recommended"), &Value::Null);
    assert_eq!(key(card, "flashSale"), &Value::Null);
    assert_eq!(key(key(card, "mall"), "id"), "mall-1");
}

#[tokio::test]
async fn a_failed_non_null_field_nulls_its_nearest_nullable_parent() {
    let app = spawn_app().await;
    // `homeCard` is non-null at the root: its failure nulls `data`, and
    // `malls` beside it goes too, as the specification says.
    let (status, body) = app
        .query(
            r#"{ malls { id } homeCard(mallId: "nope") { mall { id } } }"#,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(key(&body, "data"), &Value::Null);
    assert_eq!(codes(&body), ["NOT_FOUND"]);
    assert_eq!(body["errors"][0]["path"], json!(["homeCard"]));
}

#[tokio::test]
async fn fields_come_in_the_order_they_were_selected() {
    let app = spawn_app().await;
    let text = app
        .http
        .post(format!("{}/graphql", app.url))
        .json(&json!({ "query": "{ zz: malls { name id } malls { id name } }" }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Read the raw text: JSON maps in tests do not keep key order.
    assert!(text.starts_with(r#"{"data":{"zz":[{"name":"#), "{text}");
    let malls = text
        .find(r#""malls":[{"id":"#)
        .expect("malls with id first");
    assert!(malls > text.find(r#""zz""#).unwrap());
}

#[tokio::test]
async fn fields_answer_in_the_order_they_were_selected_whichever_finishes_first() {
    let app = spawn_app().await;

    // Inside an object: a product's store (not primed, so loaded from the
    // slow mall service) is selected before its id, which is at hand.
    app.mall.set_faults(FaultSettings {
        latency_ms: 300,
        ..FaultSettings::default()
    });
    let text = raw_answer(
        &app,
        r#"{ product(id: "sku-2") { store { id } id } }"#,
        None,
    )
    .await;
    assert!(
        text.starts_with(r#"{"data":{"product":{"store":{"id":"#),
        "{text}"
    );
    assert!(text.ends_with(r#"},"id":"sku-2"}}}"#), "{text}");

    // Root fields: `product` waits on the product service, `malls` (from
    // the mall service, fast again) is done first.
    app.mall.set_faults(FaultSettings::default());
    app.product.set_faults(FaultSettings {
        latency_ms: 300,
        ..FaultSettings::default()
    });
    let text = raw_answer(
        &app,
        r#"{ product(id: "sku-1") { id } malls { id } }"#,
        None,
    )
    .await;
    assert!(
        text.starts_with(r#"{"data":{"product":{"id":"sku-1"},"malls":[{"id":"#),
        "{text}"
    );

    // Errors come in selection order too: the waiting field's error
    // first, although the anonymous `me` fails at once. (A product no
    // answer above has cached.)
    app.product.set_faults(FaultSettings {
        latency_ms: 300,
        ..down()
    });
    let (_, body) = app
        .query(r#"{ product(id: "sku-none") { id } me { id } }"#, None)
        .await;
    assert_eq!(codes(&body), ["UPSTREAM_UNAVAILABLE", "UNAUTHENTICATED"]);
    assert_eq!(body["errors"][0]["path"], json!(["product"]), "{body}");
    assert_eq!(body["errors"][1]["path"], json!(["me"]), "{body}");
}

#[tokio::test]
async fn an_object_whose_fields_are_all_skipped_is_an_empty_object() {
    let app = spawn_app().await;
    let text = raw_answer(
        &app,
        r#"{ mall(id: "mall-1") { id @skip(if: true) } malls { name @include(if: false) } }"#,
        None,
    )
    .await;
    assert!(
        text.starts_with(r#"{"data":{"mall":{},"malls":[{},{}"#),
        "{text}"
    );
    assert!(!text.contains("null") && !text.contains("errors"), "{text}");
    let text = raw_answer(&app, "{ __typename @skip(if: true) }", None).await;
    assert_eq!(text, r#"{"data":{}}"#);
}

async fn post_raw(
    app: &TestApp,
    content_type: Option<&str>,
    accept: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut req = app
        .http
        .post(format!("{}/graphql", app.url))
        .body(body.to_owned());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn posts_that_browsers_send_cross_site_are_refused() {
    let app = spawn_app().await;
    let body = r#"{"query":"{ malls { id } }"}"#;
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/json; charset=latin1"),
        None,
    ] {
        let resp = post_raw(&app, ct, None, body).await;
        assert_eq!(resp.status(), 415, "{ct:?}");
        let json: Value = resp.json().await.unwrap();
        assert_eq!(codes(&json), ["UNSUPPORTED_MEDIA_TYPE"]);
    }
    let resp = post_raw(&app, Some("application/json; charset=utf-8"), None, body).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn graphql_response_json_is_served_with_its_status_codes() {
    let app = spawn_app().await;
    let accept = Some("application/graphql-response+json, application/json;q=0.9");
    let resp = post_raw(
        &app,
        Some("application/json"),
        accept,
        r#"{"query":"{ malls { id } }"}"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/graphql-response+json")
    );

    // A request error: 400 and no data.
    let resp = post_raw(
        &app,
        Some("application/json"),
        accept,
        r#"{"query":"{ malls { nope } }"}"#,
    )
    .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(body.get("data").is_none(), "{body}");
    assert_eq!(codes(&body), ["GRAPHQL_VALIDATION_FAILED"]);

    // A field error: 200 with data.
    let resp = post_raw(
        &app,
        Some("application/json"),
        accept,
        r#"{"query":"{ me { id } }"}"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(key(key(&body, "data"), "me"), &Value::Null);

    // The legacy type: 200 for the request error, still without data.
    let resp = post_raw(
        &app,
        Some("application/json"),
        Some("application/json"),
        r#"{"query":"{ malls { nope } }"}"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert!(body.get("data").is_none());

    // Neither type acceptable.
    let resp = post_raw(
        &app,
        Some("application/json"),
        Some("text/html"),
        r#"{"query":"{ malls { id } }"}"#,
    )
    .await;
    assert_eq!(resp.status(), 406);
}

#[tokio::test]
async fn mutations_over_get_and_other_methods_get_405_with_allow() {
    let app = spawn_app().await;
    // The selected operation is a mutation.
    let doc = "query Q { malls { id } } mutation M { deactivateRule(name: \"x\") { status } }";
    let resp = app
        .http
        .get(format!("{}/graphql", app.url))
        .query(&[("query", doc), ("operationName", "M")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    // The same document selecting its query runs over GET.
    let resp = app
        .http
        .get(format!("{}/graphql", app.url))
        .query(&[("query", doc), ("operationName", "Q")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(key(key(&body, "data"), "malls").is_array(), "{body}");

    let resp = app
        .http
        .put(format!("{}/graphql", app.url))
        .header("content-type", "application/json")
        .body(r#"{"query":"{ malls { id } }"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, POST");
}

#[tokio::test]
async fn batches_are_answered_in_order_up_to_the_limit() {
    let app = spawn_app_with(|s| s.graphql.max_batch = 3).await;
    let batch = json!([
        { "query": "{ malls { id } }" },
        { "query": "{ me { id } }" },
        { "query": "{ malls { nope } }" },
    ]);
    let resp = post_raw(&app, Some("application/json"), None, &batch.to_string()).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let answers = body.as_array().expect("an array answers a batch");
    assert_eq!(answers.len(), 3);
    assert!(key(key(&answers[0], "data"), "malls").is_array());
    assert_eq!(key(key(&answers[1], "data"), "me"), &Value::Null);
    assert!(answers[2].get("data").is_none());

    let too_many = Value::Array(vec![json!({ "query": "{ malls { id } }" }); 4]);
    let resp = post_raw(&app, Some("application/json"), None, &too_many.to_string()).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(codes(&body), ["BATCH_TOO_LARGE"]);
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn apq(hash: &str) -> Value {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } })
}

async fn get_persisted(app: &TestApp, hash: &str) -> Value {
    app.http
        .get(format!("{}/graphql", app.url))
        .query(&[("extensions", apq(hash).to_string())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn persisted_queries_register_once_and_every_node_on_the_store_knows_them() {
    let namespace = format!("bff-test-apq-{}", std::process::id());
    let redis = std::env::var("BFF_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let settings = |s: &mut bff::config::Settings| {
        s.redis_url = Some(redis.clone());
        s.store.namespace = namespace.clone();
    };
    let a = spawn_app_with(settings).await;
    let b = spawn_app_with(settings).await;
    let query = format!("query Apq{} {{ malls {{ id }} }}", std::process::id());
    let hash = sha256_hex(&query);

    let body = get_persisted(&a, &hash).await;
    assert_eq!(codes(&body), ["PERSISTED_QUERY_NOT_FOUND"]);
    assert_eq!(body["errors"][0]["message"], "PersistedQueryNotFound");

    // A wrong hash with the text is refused and registers nothing.
    let (_, body) = post_json(
        &a,
        json!({ "query": query, "extensions": apq(&sha256_hex("other")) }),
    )
    .await;
    assert_eq!(codes(&body), ["PERSISTED_QUERY_HASH_MISMATCH"]);

    let (_, body) = post_json(&a, json!({ "query": query, "extensions": apq(&hash) })).await;
    assert!(key(key(&body, "data"), "malls").is_array(), "{body}");

    // The other node finds it in the shared store.
    let body = get_persisted(&b, &hash).await;
    assert!(body.get("errors").is_none(), "{body}");
    assert!(key(key(&body, "data"), "malls").is_array());
}

async fn post_json(app: &TestApp, body: Value) -> (u16, Value) {
    let resp = app
        .http
        .post(format!("{}/graphql", app.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn safelist_mode_runs_only_the_manifest_operations() {
    let allowed = "query Malls { malls { id name } }";
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("persisted-query-manifest.json");
    std::fs::write(
        &manifest,
        json!({
            "format": "apollo-persisted-query-manifest",
            "version": 1,
            "operations": [
                { "id": sha256_hex(allowed), "name": "Malls", "type": "query", "body": allowed }
            ]
        })
        .to_string(),
    )
    .unwrap();
    let path = manifest.clone();
    let app = spawn_app_with(move |s| s.graphql.safelist_manifest = Some(path)).await;

    // By id, as persisted-query links send it.
    let body = get_persisted(&app, &sha256_hex(allowed)).await;
    assert!(key(key(&body, "data"), "malls").is_array(), "{body}");
    // As full text.
    let (_, body) = app.query(allowed, None).await;
    assert!(key(key(&body, "data"), "malls").is_array());
    // Anything else, even with a hash that would register it.
    let other = "{ malls { id } }";
    let (_, body) = app.query(other, None).await;
    assert_eq!(codes(&body), ["PERSISTED_QUERY_NOT_IN_LIST"]);
    assert!(body.get("data").is_none());
    let (_, body) = post_json(
        &app,
        json!({ "query": other, "extensions": apq(&sha256_hex(other)) }),
    )
    .await;
    assert_eq!(codes(&body), ["PERSISTED_QUERY_NOT_IN_LIST"]);
    let body = get_persisted(&app, &sha256_hex(other)).await;
    assert_eq!(codes(&body), ["PERSISTED_QUERY_NOT_IN_LIST"]);
}

#[tokio::test]
async fn a_bad_safelist_manifest_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest.json");
    std::fs::write(
        &manifest,
        r#"{"format":"something-else","version":1,"operations":[]}"#,
    )
    .unwrap();
    let mut settings = bff::config::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..bff::config::Settings::default()
    };
    settings.store.data_dir = dir.path().to_path_buf();
    settings.graphql.safelist_manifest = Some(manifest);
    let err = bff::startup::Application::build(settings)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("manifest"), "{err}");
}

#[tokio::test]
async fn money_beyond_32_bits_is_exact_and_bills_take_strings() {
    let app = spawn_app().await;
    let token = app.token("member-1");
    let (_, body) = app
        .query_vars(
            r#"query($bill: MinorUnits) { quote(input: { mallId: "mall-1", storeId: "store-1", billAmount: $bill }) { subtotal { amount } } }"#,
            json!({ "bill": "9999999999" }),
            Some(&token),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(
        body["data"]["quote"]["subtotal"]["amount"],
        json!(9_999_999_999_i64)
    );

    for bad in [
        json!("10000000001"),
        json!(-5),
        json!("12.5"),
        json!(1.5),
        json!("1e3"),
    ] {
        let (_, body) = app
            .query_vars(
                r#"query($bill: MinorUnits) { quote(input: { mallId: "mall-1", storeId: "store-1", billAmount: $bill }) { subtotal { amount } } }"#,
                json!({ "bill": bad }),
                Some(&token),
            )
            .await;
        assert_eq!(codes(&body), ["BAD_USER_INPUT"], "{bad}: {body}");
    }
}

#[tokio::test]
async fn ids_identify_their_objects() {
    let app = spawn_app().await;
    let token = app.token("member-1");
    let quote = |quantity: u32| {
        format!(
            r#"{{ quote(input: {{ mallId: "mall-1", items: [{{ productId: "sku-flash-1", quantity: {quantity} }}] }}) {{ id lines {{ id quantity }} }} }}"#
        )
    };
    let (_, one) = app.query(&quote(1), Some(&token)).await;
    let (_, five) = app.query(&quote(5), Some(&token)).await;
    let (_, one_again) = app.query(&quote(1), Some(&token)).await;
    assert_ne!(one["data"]["quote"]["id"], five["data"]["quote"]["id"]);
    assert_ne!(
        one["data"]["quote"]["lines"][0]["id"],
        five["data"]["quote"]["lines"][0]["id"]
    );
    // The same answer has the same id.
    assert_eq!(one["data"]["quote"]["id"], one_again["data"]["quote"]["id"]);
}

/// A request that passed validation is not validated in full again; one
/// that differs in anything validation depends on (here its variables)
/// gets exactly the answer a node that never saw the first would give.
#[tokio::test]
async fn a_request_like_one_validated_before_gets_the_answer_it_would_get_first() {
    let seen = spawn_app().await;
    let fresh = spawn_app().await;
    let query = "query M($id: ID!, $n: Int) { mall(id: $id) { id } products(mallId: $id, first: $n) { nodes { id } } }";
    let good = json!({ "id": "mall-1", "n": 2 });
    let (_, first) = seen.query_vars(query, good.clone(), None).await;
    assert!(first.get("errors").is_none(), "{first}");
    let (_, again) = seen.query_vars(query, good.clone(), None).await;
    assert_eq!(first, again);
    for bad in [
        json!({ "id": { "a": 1 }, "n": 2 }),
        json!({ "id": "mall-1", "n": "two" }),
        json!({ "id": "mall-1", "n": 1.5 }),
        json!({ "id": null, "n": 2 }),
        json!({ "id": "mall-1", "n": 2, "unused": [1] }),
    ] {
        let (status, answer) = seen.query_vars(query, bad.clone(), None).await;
        let (fresh_status, fresh_answer) = fresh.query_vars(query, bad.clone(), None).await;
        assert_eq!(
            (status, &answer),
            (fresh_status, &fresh_answer),
            "variables {bad}"
        );
    }
    // A value of the wrong type is refused before execution: no `data`.
    let (_, refused) = seen
        .query_vars(query, json!({ "id": { "a": 1 }, "n": 2 }), None)
        .await;
    assert!(refused.get("data").is_none(), "{refused}");
    assert!(!codes(&refused).is_empty(), "{refused}");
}

/// An amount selected as plain fields is built directly; through
/// fragments it takes the general path. Both answer the same, key by key
/// and in selection order.
#[tokio::test]
async fn money_answers_the_same_through_plain_fields_and_fragments() {
    let app = spawn_app().await;
    let raw = |query: &'static str| raw_answer(&app, query, None);
    let plain = raw(
        r#"{ product(id: "sku-1") { listPrice { amount currency __typename cents: amount } } }"#,
    )
    .await;
    let fragments = raw(r#"{ product(id: "sku-1") { listPrice { ... on Money { amount currency } ...M __typename cents: amount } } } fragment M on Money { amount }"#).await;
    // The raw text: JSON maps in tests do not keep key order.
    assert_eq!(plain, fragments);
    let body: Value = serde_json::from_str(&plain).unwrap();
    assert!(body.get("errors").is_none(), "{plain}");
    let price = key(key(key(&body, "data"), "product"), "listPrice");
    let amount = price["amount"].as_i64().expect("an integer amount");
    assert!(amount > 0, "{plain}");
    assert_eq!(
        plain,
        format!(
            r#"{{"data":{{"product":{{"listPrice":{{"amount":{amount},"currency":"CNY","__typename":"Money","cents":{amount}}}}}}}}}"#
        )
    );
}

/// The card, its products, their stores and prices are built at once for
/// plain selections, and through the general resolvers whenever a
/// fragment is involved: both must give the same bytes, in selection order.
#[tokio::test]
async fn a_card_answers_the_same_through_plain_fields_and_fragments() {
    let app = spawn_app().await;
    let token = app.token("member-1");
    const FIELDS: &str = "__typename id sku: id name category tags inStock listPrice { amount } \
        store { __typename id mallId name floor category } \
        price { __typename list { amount currency } final { amount } savings { amount } \
          applied { __typename ruleId label amount { amount } } degraded \
          skippedRules { ruleId code } publicFallback }";
    let raw = |query: String| raw_answer(&app, query, Some(&token));
    // Every object of the card, plain; then each behind a fragment, which
    // takes the general path.
    let card = |product: &str, wrap: fn(&str, &str) -> String| {
        let product = wrap("Product", product);
        let mall = wrap(
            "Mall",
            "__typename id name city address openingHours { opens closes } floorCount",
        );
        let member = wrap(
            "Member",
            "__typename id nickname level points wallet { amount }",
        );
        let coupon = wrap(
            "Coupon",
            "__typename id title kind amountOff { amount } percentOff minSpend { amount } expiresAt",
        );
        let fields = format!(
            "__typename mall {{ {mall} }} member {{ {member} }} coupons {{ {coupon} }} \
             flashSale {{ {product} }} recommended {{ {product} }}"
        );
        let card = wrap("HomeCard", &fields);
        format!(r#"{{ homeCard(mallId: "mall-1") {{ {card} }} }}"#)
    };
    let plain = |product| card(product, |_, fields| fields.to_owned());
    let general = |product| card(product, |ty, fields| format!("... on {ty} {{ {fields} }}"));
    // A flash sale's `remaining` may wait on the checkout's stock: products
    // on sale then take the general path within a plain selection.
    let with_sale = format!("{FIELDS} flashSale {{ price {{ amount }} stock remaining }}");
    assert_eq!(raw(plain(&with_sale)).await, raw(general(&with_sale)).await);
    let (plain, general) = (raw(plain(FIELDS)).await, raw(general(FIELDS)).await);
    // The raw text: JSON maps in tests do not keep key order.
    assert_eq!(plain, general);
    let body: Value = serde_json::from_str(&plain).unwrap();
    assert!(body.get("errors").is_none(), "{plain}");
    let card = key(key(&body, "data"), "homeCard");
    assert_eq!(card["mall"]["id"], "mall-1", "{plain}");
    assert_eq!(card["member"]["level"], "GOLD", "{plain}");
    assert!(card["coupons"].as_array().unwrap().len() >= 2, "{plain}");
    let recommended = key(card, "recommended").as_array().unwrap();
    assert!(!recommended.is_empty(), "{plain}");
    for product in recommended {
        assert_eq!(product["__typename"], "Product");
        assert_eq!(product["sku"], product["id"]);
        assert_eq!(product["store"]["__typename"], "Store", "{product}");
        assert_eq!(product["store"]["mallId"], "mall-1", "{product}");
    }
    // The gold member's member price shows as an applied promotion.
    assert!(
        recommended
            .iter()
            .any(|p| p["price"]["applied"][0]["ruleId"] == "member-price@1"),
        "{plain}"
    );
}

#[tokio::test]
async fn a_cursor_of_one_mall_does_not_page_another() {
    let app = spawn_app().await;
    let (_, body) = app
        .query(
            r#"{ products(mallId: "mall-1", first: 2) { pageInfo { endCursor } } }"#,
            None,
        )
        .await;
    let cursor = body["data"]["products"]["pageInfo"]["endCursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, body) = app
        .query_vars(
            r#"query($c: String) { products(mallId: "mall-2", first: 2, after: $c) { nodes { id } } }"#,
            json!({ "c": cursor }),
            None,
        )
        .await;
    assert_eq!(codes(&body), ["BAD_USER_INPUT"]);
}

#[tokio::test]
async fn real_clients_read_the_api_as_its_schema_says() {
    let app = spawn_app().await;
    let token = app.token("member-1");
    run_node_test(
        "tests/clients.test.mjs",
        &[
            ("BFF_URL", app.url.as_str()),
            ("MEMBER_TOKEN", token.as_str()),
        ],
    )
    .await;
}
