use serde_json::json;

use crate::helpers::{codes, spawn_app};

#[tokio::test]
async fn a_depth_bomb_is_refused_before_anything_runs() {
    let app = spawn_app().await;
    // Introspection types nest without end: 14 levels of `ofType`.
    let mut inner = "name".to_owned();
    for _ in 0..14 {
        inner = format!("ofType {{ {inner} }}");
    }
    let query = format!("{{ __schema {{ types {{ fields {{ type {{ {inner} }} }} }} }} }}");

    let (status, body) = app.query(&query, None).await;

    assert_eq!(status, 200);
    assert_eq!(codes(&body), ["QUERY_TOO_DEEP"]);
    assert_eq!(body["data"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_query_nested_past_the_parser_guard_is_refused_as_too_deep() {
    let app = spawn_app().await;
    let query = format!("{}{}", "{ malls ".repeat(200), "}".repeat(200));

    let (_, body) = app.query(&query, None).await;

    assert_eq!(codes(&body), ["QUERY_TOO_DEEP"]);
}

#[tokio::test]
async fn an_alias_heavy_query_is_refused_without_calling_upstreams() {
    let app = spawn_app().await;
    let fields: String = (0..100).map(|i| format!("m{i}: malls {{ id }} ")).collect();

    let (status, body) = app.query(&format!("{{ {fields} }}"), None).await;

    assert_eq!(status, 200);
    assert_eq!(codes(&body), ["TOO_MANY_ALIASES"]);
    assert_eq!(app.mall.requests(), 0);
}

#[tokio::test]
async fn an_expensive_query_is_refused_as_too_complex() {
    let app = spawn_app().await;
    let page = "products(mallId: \"mall-1\", first: 100) { edges { node { id name listPrice { amount } store { id name floor } } } }";
    let query = format!("{{ a: {page} b: {page} c: {page} d: {page} }}");

    let (_, body) = app.query(&query, None).await;

    assert_eq!(codes(&body), ["QUERY_TOO_COMPLEX"]);
    assert_eq!(app.product.requests(), 0);
}

#[tokio::test]
async fn malformed_requests_get_stable_codes() {
    let app = spawn_app().await;

    let (status, body) = app.query("{ malls { id ", None).await;
    assert_eq!(
        (status, codes(&body)),
        (200, vec!["GRAPHQL_PARSE_FAILED".to_owned()])
    );

    let (_, body) = app.query("{ malls { nope } }", None).await;
    assert_eq!(codes(&body), ["GRAPHQL_VALIDATION_FAILED"]);

    let (_, body) = app
        .query("query A { malls { id } } query B { malls { id } }", None)
        .await;
    assert_eq!(codes(&body), ["BAD_USER_INPUT"]);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("peration")
    );

    let (_, body) = app
        .query_vars(
            "query($id: ID!) { mall(id: $id) { id } }",
            json!({ "id": { "not": "an id" } }),
            None,
        )
        .await;
    assert_eq!(codes(&body), ["BAD_USER_INPUT"]);

    let resp = app
        .http
        .post(format!("{}/graphql", app.url))
        .header("content-type", "application/json")
        .body("this is not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(codes(&body), ["BAD_REQUEST"]);

    let huge = format!("{{ malls {{ id }} }} # {}", "x".repeat(200_000));
    let resp = app
        .http
        .post(format!("{}/graphql", app.url))
        .json(&json!({ "query": huge }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(codes(&body), ["PAYLOAD_TOO_LARGE"]);
}

#[tokio::test]
async fn get_requests_run_queries_from_the_url() {
    let app = spawn_app().await;

    let resp = app
        .http
        .get(format!("{}/graphql", app.url))
        .query(&[("query", "{ malls { id } }")])
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["data"]["malls"].as_array().unwrap().len(), 3);
}
