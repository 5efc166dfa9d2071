//! The shared store on a real local Redis Cluster (3 masters, started by
//! the tests), and what the BFF does while Redis — one server or a whole
//! cluster — is down and when it comes back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bff::store::{Event, RedisStore, Store};
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app_with};
use crate::local_redis::{LocalRedis, cluster_url, shared_cluster};
use crate::rules::{
    author, gold_price_of, plain_products, two_nodes_see_an_activation_within_a_second,
};
use crate::store::{conformance, unique_namespace};

async fn on_cluster(namespace: &str) -> RedisStore {
    let url = tokio::task::spawn_blocking(cluster_url).await.unwrap();
    RedisStore::connect(&url, namespace)
        .await
        .expect("the local Redis Cluster answers")
}

#[tokio::test]
async fn the_redis_cluster_store_passes_the_conformance_suite() {
    let store = on_cluster(&unique_namespace("cluster-conformance")).await;
    conformance(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_published_on_a_cluster_reaches_subscribers_on_every_node() {
    let cluster = tokio::task::spawn_blocking(shared_cluster).await.unwrap();
    let ns = unique_namespace("cluster-events");
    // One store per node: each subscribes through the first seed its URL
    // names.
    let url = cluster.url();
    let seeds: Vec<&str> = url
        .trim_start_matches("redis+cluster://")
        .split(',')
        .collect();
    let mut stores = Vec::new();
    for first in 0..seeds.len() {
        let rotated: Vec<&str> = seeds[first..]
            .iter()
            .chain(&seeds[..first])
            .copied()
            .collect();
        let url = format!("redis+cluster://{}", rotated.join(","));
        stores.push(RedisStore::connect(&url, &ns).await.unwrap());
    }
    let mut receivers: Vec<_> = stores.iter().map(|s| s.subscribe()).collect();
    stores[1].publish("rules", "demo/x").await.unwrap();
    for (n, events) in receivers.iter_mut().enumerate() {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap_or_else(|_| panic!("the store subscribed on node {n} heard nothing"))
            .unwrap();
        assert_eq!(
            event,
            Event::Message {
                topic: "rules".into(),
                payload: "demo/x".into()
            }
        );
    }
    // Data written through one is read through another.
    assert!(
        stores[0]
            .compare_and_set("s", "k", None, b"v")
            .await
            .unwrap()
    );
    assert_eq!(
        stores[2].get("s", "k").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_node_on_a_redis_cluster_sees_an_activation_within_a_second() {
    let url = tokio::task::spawn_blocking(cluster_url).await.unwrap();
    two_nodes_see_an_activation_within_a_second(url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_redis_cluster_down_reads_keep_serving_writes_fail_closed_and_it_recovers_by_itself()
{
    let cluster = tokio::task::spawn_blocking(|| LocalRedis::cluster(3))
        .await
        .unwrap();
    outage(cluster).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_single_redis_down_reads_keep_serving_writes_fail_closed_and_it_recovers_by_itself()
{
    let redis = tokio::task::spawn_blocking(LocalRedis::single)
        .await
        .unwrap();
    outage(redis).await;
}

const DEACTIVATE: &str = "mutation { deactivateRule(name: \"member-price\") { status } }";

/// Two nodes on `redis`; Redis stops and comes back (with its data, as an
/// orderly restart or a failover would leave it).
async fn outage(redis: LocalRedis) {
    let redis = Arc::new(redis);
    let url = redis.url();
    let ns = unique_namespace("outage");
    let node = |url: String, ns: String| {
        spawn_app_with(move |s| {
            s.redis_url = Some(url);
            s.store.namespace = ns;
        })
    };
    let a = node(url.clone(), ns.clone()).await;
    let b = node(url.clone(), ns.clone()).await;
    let store = RedisStore::connect(&url, &unique_namespace("outage-store"))
        .await
        .unwrap();
    let mut events = store.subscribe();
    let plain = plain_products(&b).await;
    let id = plain[0]["id"].clone();
    let list = plain[0]["listPrice"]["amount"].as_i64().unwrap();
    let member_price = list - list * 500 / 10000;
    assert_eq!(gold_price_of(&b, &id).await, member_price);

    let stopping = redis.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();

    // Reads keep serving from the rule snapshot each node holds.
    for app in [&a, &b] {
        assert_eq!(gold_price_of(app, &id).await, member_price);
    }
    // Writes fail closed: a clear error, and nothing changed.
    assert_write_refused(&a).await;
    assert!(store.ping().await.is_err());
    assert!(store.compare_and_set("s", "k", None, b"v").await.is_err());
    assert_eq!(gold_price_of(&b, &id).await, member_price);

    let restarting = redis.clone();
    tokio::task::spawn_blocking(move || restarting.restart())
        .await
        .unwrap();

    // The subscription comes back by itself and says events may have been
    // missed.
    let resync = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(Event::Resync) => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await;
    assert!(resync.is_ok(), "no Resync within 30 s of Redis coming back");

    // Writes work again on the same nodes, without a restart of the BFF.
    let started = Instant::now();
    loop {
        let (_, body) = a.query(DEACTIVATE, Some(&author(&a))).await;
        if body["errors"].is_null() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "writes still fail 30 s after Redis came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The test's own connection reconnects on its first commands too.
    let started = Instant::now();
    let written = loop {
        match store.compare_and_set("s", "k", None, b"v").await {
            Ok(written) => break written,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(30),
                "the store still fails 30 s after Redis came back: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(written);
    // …and the other node hears about them again (well before the periodic
    // full reload).
    let started = Instant::now();
    while gold_price_of(&b, &id).await != list {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "node B did not see the change made after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A rule change while the store is down is refused with an error code,
/// not applied.
async fn assert_write_refused(app: &TestApp) {
    let (status, body) = app.query(DEACTIVATE, Some(&author(app))).await;
    assert_eq!(status, 200, "{body}");
    // Present and null: the refused mutation's field is non-null.
    assert_eq!(body.get("data"), Some(&Value::Null), "{body}");
    let code = body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_default();
    assert!(
        code == "STORE_UNAVAILABLE",
        "unexpected answer to a write while Redis is down: {body}"
    );
    assert!(
        !body.to_string().contains("store error"),
        "the internal cause leaked to the client: {body}"
    );
}
