use serde_json::json;

use crate::helpers::{codes, spawn_app};

/// The introspection query GraphiQL sends (graphql-js `getIntrospectionQuery`).
const INTROSPECTION: &str = r#"
query IntrospectionQuery {
  __schema {
    queryType { name } mutationType { name } subscriptionType { name }
    types { ...FullType }
    directives { name description locations args { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) {
    name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason
  }
  inputFields { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
fragment TypeRef on __Type {
  kind name
  ofType { kind name ofType { kind name ofType { kind name ofType { kind name
    ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } }
}
"#;

#[tokio::test]
async fn a_depth_bomb_is_refused_before_anything_runs() {
    let app = spawn_app().await;
    // Introspection types nest without end: 25 levels of `ofType`.
    let mut inner = "name".to_owned();
    for _ in 0..25 {
        inner = format!("ofType {{ {inner} }}");
    }
    let query = format!("{{ __schema {{ types {{ fields {{ type {{ {inner} }} }} }} }} }}");

    let (status, body) = app.query(&query, None).await;

    assert_eq!(status, 200);
    assert_eq!(codes(&body), ["QUERY_TOO_DEEP"]);
    assert_eq!(body["data"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_query_deeper_than_the_configured_depth_is_refused_but_introspection_is_not() {
    let app = crate::helpers::spawn_app_with(|s| s.graphql.max_depth = 2).await;

    let (_, body) = app
        .query(r#"{ homeCard(mallId: "mall-1") { mall { id } } }"#, None)
        .await;
    assert_eq!(codes(&body), ["QUERY_TOO_DEEP"]);
    assert_eq!(app.mall.requests(), 0);

    // The full introspection query GraphiQL sends is far deeper than 2.
    let (_, body) = app.query(INTROSPECTION, None).await;
    assert_eq!(body["errors"], serde_json::Value::Null, "{body}");
    assert!(body["data"]["__schema"]["types"].as_array().unwrap().len() > 10);
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

#[tokio::test]
async fn a_dozen_aliased_home_cards_are_refused_as_too_complex() {
    let app = spawn_app().await;
    let cards: String = (0..12)
        .map(|i| format!("c{i}: homeCard(mallId: \"mall-1\") {{ mall {{ id }} }} "))
        .collect();

    let (_, body) = app.query(&format!("{{ {cards} }}"), None).await;

    assert_eq!(codes(&body), ["QUERY_TOO_COMPLEX"]);
    assert_eq!(app.mall.requests() + app.product.requests(), 0);
}
