//! The Redis backend: one hash per space under a namespace, events over
//! pub/sub. A dropped subscription is re-established and announced as
//! [`Event::Resync`] so listeners reload what they may have missed.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::broadcast;

use super::{Event, Store, StoreError};

const CAS: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (ARGV[2] == '0' and current == false) or (ARGV[2] == '1' and current == ARGV[3]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
  return 1
end
return 0
"#;

/// How long a general store operation (rule registry, persisted queries)
/// may wait for Redis, to connect or to answer: with Redis down, callers
/// learn it at once (`STORE_UNAVAILABLE`) rather than after the client's
/// reconnection backoff, and reads go on with what the node holds.
pub const STORE_TIMEOUT: Duration = Duration::from_millis(500);

/// A store shared by every node through Redis.
#[derive(Clone)]
pub struct RedisStore {
    /// General operations: short timeouts.
    connection: ConnectionManager,
    /// The checkout's scripts: a longer response timeout (see `connect`).
    checkout_connection: ConnectionManager,
    namespace: String,
    events: broadcast::Sender<Event>,
    cas: redis::Script,
    checkout: super::checkout_redis::Scripts,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects, and starts the event subscription. Keys are
    /// `<namespace>:<space>`; events travel on `<namespace>:events`.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::from_display)?;
        // A lost connection is re-established in the background, but a
        // command waits for that attempt: one quick retry, bounded connect
        // time, so a command on a dead Redis fails within about a second
        // (the client's default backoff waits ~9 s).
        let reconnect = || {
            redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(STORE_TIMEOUT))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(200))
        };
        let connection = manager(
            &client,
            reconnect().set_response_timeout(Some(STORE_TIMEOUT)),
        )
        .await?;
        // Replies to a checkout script can take longer than the client's
        // default half second on a loaded box, and a timed-out script may
        // still have run: wait longer rather than report an ambiguous error.
        let checkout_connection = manager(
            &client,
            reconnect().set_response_timeout(Some(Duration::from_secs(5))),
        )
        .await?;
        let (events, _) = broadcast::channel(1024);
        let channel = format!("{namespace}:events");
        // Subscribe before returning, so no event published after `connect`
        // is missed.
        let first = subscribe(&client, &channel).await?;
        tokio::spawn(listen(client, channel, events.clone(), first));
        Ok(Self {
            connection,
            checkout_connection,
            namespace: namespace.to_owned(),
            events,
            cas: redis::Script::new(CAS),
            checkout: super::checkout_redis::Scripts::new(),
        })
    }

    /// The key namespace.
    pub(super) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A handle on the checkout's connection.
    pub(super) fn connection(&self) -> ConnectionManager {
        self.checkout_connection.clone()
    }

    /// The checkout's scripts.
    pub(super) fn scripts(&self) -> &super::checkout_redis::Scripts {
        &self.checkout
    }

    fn hash(&self, space: &str) -> String {
        format!("{}:{space}", self.namespace)
    }

    /// Expiring values are plain keys (a hash field cannot expire on its
    /// own): `<namespace>:x:<space>:<key>`.
    fn expiring_key(&self, space: &str, key: &str) -> String {
        format!("{}:x:{space}:{key}", self.namespace)
    }
}

async fn manager(
    client: &redis::Client,
    config: redis::aio::ConnectionManagerConfig,
) -> Result<ConnectionManager, StoreError> {
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| StoreError("timed out connecting to Redis".into()))?
    .map_err(StoreError::from_display)
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> Result<redis::aio::PubSub, StoreError> {
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .map_err(StoreError::from_display)?;
    pubsub
        .subscribe(channel)
        .await
        .map_err(StoreError::from_display)?;
    Ok(pubsub)
}

async fn listen(
    client: redis::Client,
    channel: String,
    events: broadcast::Sender<Event>,
    first: redis::aio::PubSub,
) {
    let mut pubsub = Some(first);
    loop {
        let current = match pubsub.take() {
            Some(p) => p,
            None => match subscribe(&client, &channel).await {
                Ok(p) => {
                    let _ = events.send(Event::Resync);
                    p
                }
                Err(error) => {
                    tracing::warn!(%error, "redis subscription failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        let mut stream = current.into_on_message();
        while let Some(message) = stream.next().await {
            let Ok(text) = message.get_payload::<String>() else {
                continue;
            };
            let Some((topic, payload)) = text.split_once('\n') else {
                continue;
            };
            // Having no listener is not an error.
            let _ = events.send(Event::Message {
                topic: topic.to_owned(),
                payload: payload.to_owned(),
            });
        }
        tracing::warn!("redis subscription closed; reconnecting");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, space: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.connection.clone();
        c.hget(self.hash(space), key)
            .await
            .map_err(StoreError::from_display)
    }

    async fn list(&self, space: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut c = self.connection.clone();
        let mut all: Vec<(String, Vec<u8>)> = c
            .hgetall(self.hash(space))
            .await
            .map_err(StoreError::from_display)?;
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    async fn compare_and_set(
        &self,
        space: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, StoreError> {
        let mut c = self.connection.clone();
        let swapped: i32 = self
            .cas
            .key(self.hash(space))
            .arg(key)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(value)
            .invoke_async(&mut c)
            .await
            .map_err(StoreError::from_display)?;
        Ok(swapped == 1)
    }

    async fn delete(&self, space: &str, key: &str) -> Result<bool, StoreError> {
        let mut c = self.connection.clone();
        let removed: i32 = c
            .hdel(self.hash(space), key)
            .await
            .map_err(StoreError::from_display)?;
        Ok(removed > 0)
    }

    async fn get_expiring(&self, space: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.connection.clone();
        c.get(self.expiring_key(space, key))
            .await
            .map_err(StoreError::from_display)
    }

    async fn put_expiring(
        &self,
        space: &str,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut c = self.connection.clone();
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let _: () = c
            .pset_ex(self.expiring_key(space, key), value, millis)
            .await
            .map_err(StoreError::from_display)?;
        Ok(())
    }

    async fn publish(&self, topic: &str, payload: &str) -> Result<(), StoreError> {
        let mut c = self.connection.clone();
        let _: i64 = c
            .publish(
                format!("{}:events", self.namespace),
                format!("{topic}\n{payload}"),
            )
            .await
            .map_err(StoreError::from_display)?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.connection.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut c)
            .await
            .map_err(StoreError::from_display)?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
