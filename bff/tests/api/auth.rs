use bff::auth::Role;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::{codes, spawn_app};

const ME: &str = "{ me { id level } }";

#[tokio::test]
async fn me_without_a_token_is_unauthenticated() {
    let app = spawn_app().await;

    let (status, body) = app.query(ME, None).await;

    assert_eq!(status, 200);
    assert_eq!(codes(&body), ["UNAUTHENTICATED"]);
    assert_eq!(body["data"]["me"], Value::Null);
}

#[tokio::test]
async fn me_with_a_member_token_is_that_member() {
    let app = spawn_app().await;

    let (_, body) = app.query(ME, Some(&app.token("member-2"))).await;

    assert_eq!(
        body["data"]["me"],
        json!({ "id": "member-2", "level": "BASIC" })
    );
}

#[tokio::test]
async fn expired_forged_and_malformed_tokens_are_refused_with_401() {
    let app = spawn_app().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |secret: &[u8], exp: u64| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({ "iss": "mall-bff", "sub": "member-1", "tenant": "demo", "role": "member", "iat": now - 7200, "exp": exp }),
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let expired = sign(bff::config::DEV_JWT_SECRET.as_bytes(), now - 3600);
    let forged = sign(b"an-attackers-own-secret-of-32-bytes!!", now + 3600);
    let mut tampered = app.token("member-1");
    tampered.push('x');

    for token in [
        expired.as_str(),
        forged.as_str(),
        tampered.as_str(),
        "not-a-jwt",
    ] {
        let (status, body) = app.query(ME, Some(token)).await;
        assert_eq!(status, 401, "{token}");
        assert_eq!(codes(&body), ["UNAUTHENTICATED"]);
        assert_eq!(body.get("data"), None);
    }

    let resp = app
        .http
        .post(format!("{}/graphql", app.url))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .json(&json!({ "query": ME }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    assert_eq!(
        app.member.requests(),
        0,
        "refused requests reach no upstream"
    );
}

#[tokio::test]
async fn a_token_of_another_tenant_sees_nothing_of_this_one() {
    let app = spawn_app().await;
    // Warm every cache with the demo tenant's data first: what the other
    // tenant sees must not come from caches either.
    let (_, warm) = app
        .query(
            r#"{ malls { id stores { id } } homeCard(mallId: "mall-1") { mall { id } member { id } recommended { store { id } } } }"#,
            Some(&app.token("member-1")),
        )
        .await;
    assert_eq!(warm["errors"], Value::Null, "{warm}");
    let other = app.token_for("acme", "member-1", Role::Member);

    let (_, body) = app.query(ME, Some(&other)).await;
    assert_eq!(body["data"]["me"], Value::Null);
    assert_eq!(body["errors"], Value::Null);

    let (_, body) = app
        .query(
            r#"{ malls { id } mall(id: "mall-1") { id } }"#,
            Some(&other),
        )
        .await;
    assert_eq!(body["data"]["malls"], json!([]));
    assert_eq!(body["data"]["mall"], Value::Null);

    let (_, body) = app
        .query(
            r#"{ homeCard(mallId: "mall-1") { mall { id } member { id } } }"#,
            Some(&other),
        )
        .await;
    assert_eq!(codes(&body), ["NOT_FOUND"]);

    let (_, body) = app
        .query(
            r#"{ products(mallId: "mall-1") { edges { node { id } } } }"#,
            Some(&other),
        )
        .await;
    assert_eq!(codes(&body), ["NOT_FOUND"]);
}

#[tokio::test]
async fn a_staff_token_has_no_member_card() {
    let app = spawn_app().await;
    let author = app.token_for("demo", "alice", Role::RuleAuthor);

    let (_, body) = app.query(ME, Some(&author)).await;

    assert_eq!(codes(&body), ["FORBIDDEN"]);
}

#[tokio::test]
async fn demo_tokens_are_only_minted_with_the_public_development_key() {
    let app = spawn_app().await;
    let resp = app
        .http
        .get(format!("{}/dev/token?member=member-1", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let token: Value = resp.json().await.unwrap();
    let (_, body) = app.query(ME, token["token"].as_str()).await;
    assert_eq!(body["data"]["me"]["id"], "member-1");

    let private = crate::helpers::spawn_app_with(|s| {
        s.auth.jwt_secret = "a-private-key-that-is-at-least-32-bytes-long".into();
    })
    .await;
    let resp = private
        .http
        .get(format!("{}/dev/token?member=member-1", private.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn an_anonymous_request_cannot_choose_another_tenant() {
    let app = spawn_app().await;

    let resp = app
        .http
        .post(format!("{}/graphql", app.url))
        .header("x-tenant-id", "acme")
        .json(&json!({ "query": "{ malls { id } }" }))
        .send()
        .await
        .unwrap();

    // The header is ignored: anonymous requests see the default tenant.
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"]["malls"].as_array().unwrap().len(), 3);
}
