//! One conformance suite for both store backends: the embedded file and
//! Redis (`BFF_REDIS_URL`, default the local server; and a local 3-master
//! Redis Cluster the tests start), each test in its own namespace.

use std::sync::Arc;
use std::time::Duration;

use bff::store::{EmbeddedStore, Event, RedisStore, SharedStore};

pub fn redis_url() -> String {
    std::env::var("BFF_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A namespace no other test uses.
pub fn unique_namespace(test: &str) -> String {
    format!(
        "bff-test:{test}:{}:{}",
        std::process::id(),
        rand::random::<u64>()
    )
}

pub(crate) async fn conformance(store: SharedStore) {
    // Absent keys.
    assert_eq!(store.get("space", "a").await.unwrap(), None);
    assert!(store.list("space").await.unwrap().is_empty());

    // Create only when absent.
    assert!(
        store
            .compare_and_set("space", "b", None, b"1")
            .await
            .unwrap()
    );
    assert!(
        !store
            .compare_and_set("space", "b", None, b"2")
            .await
            .unwrap()
    );
    assert_eq!(
        store.get("space", "b").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );

    // Swap only from the expected value.
    assert!(
        !store
            .compare_and_set("space", "b", Some(b"0"), b"3")
            .await
            .unwrap()
    );
    assert!(
        store
            .compare_and_set("space", "b", Some(b"1"), b"3")
            .await
            .unwrap()
    );
    assert_eq!(
        store.get("space", "b").await.unwrap().as_deref(),
        Some(&b"3"[..])
    );

    // Listing is per space and sorted by key; binary values survive.
    store
        .compare_and_set("space", "a", None, &[0, 255, 10])
        .await
        .unwrap();
    store
        .compare_and_set("other", "z", None, b"x")
        .await
        .unwrap();
    let listed = store.list("space").await.unwrap();
    assert_eq!(
        listed,
        vec![
            ("a".to_owned(), vec![0, 255, 10]),
            ("b".to_owned(), b"3".to_vec())
        ]
    );

    // Delete.
    assert!(store.delete("space", "a").await.unwrap());
    assert!(!store.delete("space", "a").await.unwrap());
    assert_eq!(store.get("space", "a").await.unwrap(), None);

    // Concurrent compare-and-set: exactly one winner.
    store
        .compare_and_set("space", "race", None, b"0")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for n in 0..8u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .compare_and_set("space", "race", Some(b"0"), &[b'a' + n])
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.unwrap() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);

    // An expiring lock is taken once, until it is deleted or expires.
    let ttl = Duration::from_secs(30);
    assert!(
        store
            .put_expiring_if_absent("locks", "k", b"a", ttl)
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_expiring_if_absent("locks", "k", b"b", ttl)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_expiring("locks", "k").await.unwrap().as_deref(),
        Some(&b"a"[..])
    );
    assert!(store.delete_expiring("locks", "k").await.unwrap());
    assert!(!store.delete_expiring("locks", "k").await.unwrap());
    assert_eq!(store.get_expiring("locks", "k").await.unwrap(), None);
    let short = Duration::from_millis(50);
    assert!(
        store
            .put_expiring_if_absent("locks", "k", b"c", short)
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(
        store
            .put_expiring_if_absent("locks", "k", b"d", ttl)
            .await
            .unwrap()
    );

    // Rates: a burst, then refusals with a wait; each scope and key on its
    // own; a refusal by a later rate shows its wait.
    let rate = |key: &str, burst| bff::store::RateKey {
        key: key.into(),
        interval: Duration::from_secs(60),
        burst,
    };
    for _ in 0..3 {
        assert_eq!(
            store.admit("t1", &[rate("member:a", 3)], 1).await.unwrap(),
            None
        );
    }
    let wait = store.admit("t1", &[rate("member:a", 3)], 1).await.unwrap();
    let wait = wait.expect("the fourth request of a burst of 3 is refused");
    assert!(
        wait > Duration::from_secs(30) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );
    assert_eq!(
        store.admit("t1", &[rate("member:b", 3)], 1).await.unwrap(),
        None
    );
    assert_eq!(
        store.admit("t2", &[rate("member:a", 3)], 1).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .admit("t3", &[rate("member:a", 5), rate("tenant", 1)], 1)
            .await
            .unwrap(),
        None
    );
    assert!(
        store
            .admit("t3", &[rate("member:b", 5), rate("tenant", 1)], 1)
            .await
            .unwrap()
            .is_some()
    );
    // A request of several operations costs as many; more than the burst
    // costs the burst (it waits for a full bucket, not for ever).
    assert_eq!(
        store.admit("t4", &[rate("member:a", 3)], 2).await.unwrap(),
        None
    );
    assert!(
        store
            .admit("t4", &[rate("member:a", 3)], 2)
            .await
            .unwrap()
            .is_some(),
        "2 + 2 operations exceed a burst of 3"
    );
    assert_eq!(
        store.admit("t4", &[rate("member:a", 3)], 1).await.unwrap(),
        None
    );
    assert_eq!(
        store.admit("t5", &[rate("member:a", 3)], 50).await.unwrap(),
        None,
        "a batch above the burst is admitted by a full bucket"
    );
    assert!(
        store
            .admit("t5", &[rate("member:a", 3)], 1)
            .await
            .unwrap()
            .is_some()
    );

    // Events reach subscribers.
    let mut events = store.subscribe();
    store.publish("topic", "payload-1").await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .expect("event within 2 s")
        .unwrap();
    assert_eq!(
        event,
        Event::Message {
            topic: "topic".into(),
            payload: "payload-1".into()
        }
    );
    store.ping().await.unwrap();
}

#[tokio::test]
async fn the_embedded_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("bff.redb")).unwrap();
    conformance(Arc::new(store)).await;
}

#[tokio::test]
async fn the_embedded_store_keeps_its_data_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bff.redb");
    {
        let store = EmbeddedStore::open(&path).unwrap();
        use bff::store::Store;
        assert!(store.compare_and_set("s", "k", None, b"v").await.unwrap());
    }
    let store = EmbeddedStore::open(&path).unwrap();
    use bff::store::Store;
    assert_eq!(
        store.get("s", "k").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

#[tokio::test]
async fn the_redis_store_passes_the_conformance_suite() {
    let store = RedisStore::connect(&redis_url(), &unique_namespace("conformance"))
        .await
        .expect("Redis answers (set BFF_REDIS_URL)");
    conformance(Arc::new(store)).await;
}

#[tokio::test]
async fn redis_events_reach_another_connection_of_the_same_namespace() {
    let ns = unique_namespace("events");
    let a = RedisStore::connect(&redis_url(), &ns).await.unwrap();
    let b = RedisStore::connect(&redis_url(), &ns).await.unwrap();
    let other = RedisStore::connect(&redis_url(), &unique_namespace("events-other"))
        .await
        .unwrap();
    use bff::store::Store;
    let mut on_b = b.subscribe();
    let mut on_other = other.subscribe();
    a.publish("rules", "demo/x").await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(1), on_b.recv())
        .await
        .expect("event within 1 s")
        .unwrap();
    assert_eq!(
        event,
        Event::Message {
            topic: "rules".into(),
            payload: "demo/x".into()
        }
    );
    // Another namespace hears nothing.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), on_other.recv())
            .await
            .is_err()
    );
    // Data written by one is read by the other.
    assert!(a.compare_and_set("s", "k", None, b"v").await.unwrap());
    assert_eq!(b.get("s", "k").await.unwrap().as_deref(), Some(&b"v"[..]));
}
