use std::collections::HashSet;

use serde_json::Value;

use crate::helpers::{codes, spawn_app};

const PAGE: &str = r#"query($after: String, $first: Int) {
  products(mallId: "mall-1", first: $first, after: $after) {
    edges { cursor node { id store { id } } }
    pageInfo { hasNextPage hasPreviousPage endCursor }
  }
}"#;

fn page_ids(body: &Value) -> Vec<String> {
    body["data"]["products"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_listing_pages_forward_with_cursors_and_batches_stores() {
    let app = spawn_app().await;

    let (_, first) = app
        .query_vars(PAGE, serde_json::json!({ "first": 7 }), None)
        .await;
    assert_eq!(first["errors"], Value::Null, "{first}");
    let ids1 = page_ids(&first);
    assert_eq!(ids1.len(), 7);
    let info = &first["data"]["products"]["pageInfo"];
    assert_eq!(info["hasNextPage"], true);
    assert_eq!(info["hasPreviousPage"], false);
    assert_eq!(app.calls("mall", "stores.batch"), 1);

    let after = info["endCursor"].as_str().unwrap();
    let (_, second) = app
        .query_vars(
            PAGE,
            serde_json::json!({ "first": 7, "after": after }),
            None,
        )
        .await;
    let ids2 = page_ids(&second);
    assert_eq!(ids2.len(), 7);
    let all: HashSet<_> = ids1.iter().chain(&ids2).collect();
    assert_eq!(all.len(), 14, "pages do not overlap");
    assert_eq!(
        second["data"]["products"]["pageInfo"]["hasPreviousPage"],
        true
    );
    assert_eq!(
        app.calls("mall", "stores.batch"),
        2,
        "one store batch per page"
    );
}

#[tokio::test]
async fn bad_page_arguments_are_bad_user_input() {
    let app = spawn_app().await;

    for vars in [
        serde_json::json!({ "first": 0 }),
        serde_json::json!({ "first": 101 }),
        serde_json::json!({ "after": "bm90IGEgY3Vyc29y!" }),
        serde_json::json!({ "after": "cDk5OTk5" }), // well-formed, but no such position
    ] {
        let (_, body) = app.query_vars(PAGE, vars.clone(), None).await;
        assert_eq!(codes(&body), ["BAD_USER_INPUT"], "{vars}: {body}");
    }
}
