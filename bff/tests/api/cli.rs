use std::process::Command;

use crate::helpers::spawn_app;

fn bff() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bff"));
    // The tests must not pick up a developer's own BFF_* settings.
    for (key, _) in std::env::vars() {
        if key.starts_with("BFF_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[tokio::test]
async fn a_token_printed_by_bff_token_is_accepted_by_the_server() {
    let app = spawn_app().await;
    let output = bff()
        .args(["token", "--member", "member-1"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();

    let (_, body) = app.query("{ me { id } }", Some(token.trim())).await;

    assert_eq!(body["data"]["me"]["id"], "member-1");
}

#[test]
fn bff_token_refuses_in_production() {
    let output = bff()
        .args(["token", "--member", "member-1"])
        .env("BFF_ENVIRONMENT", "production")
        .env(
            "BFF_AUTH__JWT_SECRET",
            "a-real-production-secret-of-enough-bytes",
        )
        .env("BFF_UPSTREAMS__MALL__BASE_URL", "http://mall.internal/")
        .env("BFF_UPSTREAMS__MEMBER__BASE_URL", "http://member.internal/")
        .env(
            "BFF_UPSTREAMS__PRODUCT__BASE_URL",
            "http://product.internal/",
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("production"));
    assert!(output.stdout.is_empty());
}

#[test]
fn an_unknown_config_key_stops_the_server_with_a_message() {
    let dir = std::env::temp_dir().join(format!("bff-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bff.toml");
    std::fs::write(&file, "[graphql]\nmax_depht = 5\n").unwrap();

    let output = bff()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .output()
        .unwrap();

    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("max_depht"));
}

/// Stops a child process even when the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_bff_pointed_at_standalone_upstreams_serves_the_card() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let upstreams = KillOnDrop(
        bff()
            .args(["upstreams", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if http
            .get(format!("{base}/mall/healthz"))
            .send()
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(up, "bff upstreams did not start");

    let app = crate::helpers::spawn_app_with(|s| {
        s.upstreams.mall.base_url = Some(format!("{base}/mall").parse().unwrap());
        s.upstreams.member.base_url = Some(format!("{base}/member").parse().unwrap());
        s.upstreams.product.base_url = Some(format!("{base}/product").parse().unwrap());
    })
    .await;
    let (_, body) = app
        .query(
            r#"{ homeCard(mallId: "mall-1") { mall { id } member { id } recommended { id store { id } } } }"#,
            Some(&app.token("member-1")),
        )
        .await;
    drop(upstreams);

    assert_eq!(body["errors"], serde_json::Value::Null, "{body}");
    assert_eq!(body["data"]["homeCard"]["member"]["id"], "member-1");
    assert!(
        !body["data"]["homeCard"]["recommended"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn bff_serve_keeps_its_state_on_a_redis_cluster_named_by_a_cluster_url() {
    let cluster = tokio::task::spawn_blocking(crate::local_redis::shared_cluster)
        .await
        .unwrap();
    let namespace = crate::store::unique_namespace("serve-cluster");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let data = tempfile::tempdir().unwrap();
    let _server = KillOnDrop(
        bff()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("BFF_ENVIRONMENT", "development")
            .env("BFF_REDIS_URL", cluster.url())
            .env("BFF_STORE__NAMESPACE", &namespace)
            .env("BFF_STORE__DATA_DIR", data.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..600 {
        if http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "bff serve did not start on the cluster");

    // The rule registry it installed lives in the cluster, under its
    // namespace.
    use bff::store::Store;
    let store = bff::store::RedisStore::connect(&cluster.url(), &namespace)
        .await
        .unwrap();
    let mut found = false;
    for _ in 0..100 {
        if !store.list("rule-deployments").await.unwrap().is_empty() {
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(found, "no rule deployment in the cluster");
}

#[test]
fn bff_serve_refuses_a_cluster_url_without_nodes() {
    let output = bff()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("BFF_ENVIRONMENT", "development")
        .env("BFF_REDIS_URL", "redis+cluster://")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("names no node"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn bff_events_tail_prints_the_outbox_events_of_an_order() {
    let namespace = crate::store::unique_namespace("events-tail");
    let url = crate::store::redis_url();
    let app = crate::helpers::spawn_app_with({
        let (namespace, url) = (namespace.clone(), url.clone());
        move |s| {
            s.redis_url = Some(url);
            s.store.namespace = namespace;
        }
    })
    .await;
    let cart = serde_json::json!({ "mallId": "mall-1", "storeId": "store-1", "billAmount": 5_000 });
    let (_, body) = app
        .query_vars(
            "mutation($input: CheckoutInput!) { checkout(input: $input) { order { id } } }",
            serde_json::json!({ "input": { "cart": cart, "idempotencyKey": "tail-1" } }),
            Some(&app.token("member-1")),
        )
        .await;
    let id = body["data"]["checkout"]["order"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();

    let output = bff()
        .args(["events", "tail"])
        .env("BFF_ENVIRONMENT", "development")
        .env("BFF_REDIS_URL", &url)
        .env("BFF_STORE__NAMESPACE", &namespace)
        .output()
        .unwrap();

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["order"] == id.as_str())
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["order.created", "order.reserved", "order.awaiting_payment"],
        "{events:?}"
    );
    assert!(events.iter().all(|e| e["scope"] == "demo/mall-1"));
    assert_eq!(events[0]["body"]["id"], id.as_str());
}
