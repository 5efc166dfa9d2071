//! The BFF's own state: a small key-value store with compare-and-set and
//! change events, with an embedded file-backed backend (one box) and a Redis
//! backend (many boxes). Both pass the same conformance suite.
//!
//! Data is kept in *spaces* (a Redis hash each; a key prefix in the embedded
//! file). Events are broadcast to every node: in-process for the embedded
//! store, over Redis pub/sub for Redis. The Redis backend runs on one server
//! or on a Redis Cluster (`redis+cluster://` URLs).
//!
//! The checkout has its own domain operations ([`checkout::CheckoutStore`]:
//! stock, orders, idempotency, the due index, the outbox), implemented by
//! the same two backends, each operation one atomic step.
//!
//! The embedded file has one writer (`writer`): concurrent writes are
//! committed in groups, one durable commit (one fsync) per group.

pub mod checkout;
mod checkout_embedded;
mod checkout_redis;
mod embedded;
#[cfg(test)]
mod group_commit_tests;
mod redis;
mod redis_connection;
mod writer;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use self::checkout::{CheckoutStore, SharedCheckoutStore};
pub use self::embedded::EmbeddedStore;
pub use self::redis::RedisStore;

/// A store failure. The message is for logs, never for clients.
#[derive(Debug, thiserror::Error)]
#[error("store error: {0}")]
pub struct StoreError(pub String);

impl StoreError {
    pub(crate) fn from_display(e: impl std::fmt::Display) -> Self {
        StoreError(e.to_string())
    }
}

/// A change event seen by every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message published on a topic.
    Message {
        /// Topic name.
        topic: String,
        /// Payload.
        payload: String,
    },
    /// Events may have been missed (the subscription was re-established):
    /// listeners should reload what they cache.
    Resync,
}

/// The store's operations. Every write is atomic.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Reads one value.
    async fn get(&self, space: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every key and value of a space, sorted by key.
    async fn list(&self, space: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Writes `value` only if the current value is `expected` (`None`: the key
    /// must be absent). Returns `false`, writing nothing, on a mismatch.
    async fn compare_and_set(
        &self,
        space: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, StoreError>;

    /// Removes a key. Returns whether it existed.
    async fn delete(&self, space: &str, key: &str) -> Result<bool, StoreError>;

    /// Reads a value written by [`Store::put_expiring`], unless it expired.
    async fn get_expiring(&self, space: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes a value that disappears after `ttl` (cache-like data every
    /// node shares, such as registered persisted queries).
    async fn put_expiring(
        &self,
        space: &str,
        key: &str,
        value: &[u8],
        ttl: std::time::Duration,
    ) -> Result<(), StoreError>;

    /// Writes an expiring value only if the key holds none (a short-lived
    /// lock every node sees, e.g. "this node is filling this cache key").
    /// Returns whether it was written.
    async fn put_expiring_if_absent(
        &self,
        space: &str,
        key: &str,
        value: &[u8],
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;

    /// Removes an expiring value. Returns whether it existed (unexpired).
    async fn delete_expiring(&self, space: &str, key: &str) -> Result<bool, StoreError>;

    /// Admits a request that costs `cost` (its operations; at most a
    /// rate's burst counts against that rate) against every rate of
    /// `limits` at once (generic cell rate algorithm, all or nothing: a
    /// refused request consumes no rate). `Ok(None)`: admitted;
    /// `Ok(Some(wait))`: refused, retry after `wait`. Every key of one call
    /// belongs to one tenant (`scope`), so they live together (one cluster
    /// slot).
    async fn admit(
        &self,
        scope: &str,
        limits: &[RateKey],
        cost: u32,
    ) -> Result<Option<std::time::Duration>, StoreError>;

    /// Publishes an event to every node (this one included).
    async fn publish(&self, topic: &str, payload: &str) -> Result<(), StoreError>;

    /// Subscribes to events.
    fn subscribe(&self) -> broadcast::Receiver<Event>;

    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// `"embedded"` or `"redis"`.
    fn kind(&self) -> &'static str;
}

/// One rate a request is counted against: `key` (within its scope) may
/// take a burst of `burst` requests at once, then one every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateKey {
    /// What is counted, e.g. `member:member-1` or `tenant`.
    pub key: String,
    /// Time between two requests at the sustained rate.
    pub interval: std::time::Duration,
    /// Requests admitted at once.
    pub burst: u32,
}

/// Shared handle.
pub type SharedStore = Arc<dyn Store>;

/// Opens the store the settings select: Redis when `redis_url` is set,
/// otherwise the embedded file in `data_dir`.
pub async fn open(
    redis_url: Option<&str>,
    namespace: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<SharedStore> {
    match redis_url {
        Some(url) => Ok(Arc::new(RedisStore::connect(url, namespace).await?)),
        None => {
            std::fs::create_dir_all(data_dir)?;
            Ok(Arc::new(EmbeddedStore::open(&data_dir.join("bff.redb"))?))
        }
    }
}

/// Opens the store like [`open`], answering it both as the general store
/// and as the checkout's store (one connection pool, or one file: the
/// embedded file cannot be opened twice). With `fresh_checkout`, the
/// embedded file's checkout state is emptied first (see
/// [`EmbeddedStore::reset_checkout`]); a Redis namespace is never emptied.
/// On Redis, finished orders are kept for `order_retention`.
pub async fn open_with_checkout(
    redis_url: Option<&str>,
    namespace: &str,
    data_dir: &std::path::Path,
    fresh_checkout: bool,
    order_retention: std::time::Duration,
) -> anyhow::Result<(SharedStore, SharedCheckoutStore)> {
    match redis_url {
        Some(url) => {
            let store = Arc::new(
                RedisStore::connect(url, namespace)
                    .await?
                    .with_order_retention(order_retention),
            );
            Ok((store.clone(), store))
        }
        None => {
            std::fs::create_dir_all(data_dir)?;
            let store = Arc::new(EmbeddedStore::open(&data_dir.join("bff.redb"))?);
            if fresh_checkout {
                store.reset_checkout()?;
            }
            Ok((store.clone(), store))
        }
    }
}
