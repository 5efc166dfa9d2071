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

/// Generic cell rate algorithm over several keys at once: each key holds
/// its theoretical arrival time (µs, Redis' clock). The request is admitted
/// only if every key admits it, and only then are they all advanced.
/// Returns 0, or the µs to wait. ARGV: interval µs and burst per key.
const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local wait = 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = interval * tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - tolerance
  if allow_at > now and allow_at - now > wait then wait = allow_at - now end
  tats[i] = new_tat
end
if wait > 0 then return wait end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)
end
return 0
"#;

/// A store shared by every node through Redis.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    namespace: String,
    events: broadcast::Sender<Event>,
    cas: redis::Script,
    admit: redis::Script,
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
        // Replies to a checkout script can take longer than the client's
        // default half second on a loaded box, and a timed-out script may
        // still have run: wait longer rather than report an ambiguous error.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(5)));
        let connection = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| StoreError("timed out connecting to Redis".into()))?
        .map_err(StoreError::from_display)?;
        let (events, _) = broadcast::channel(1024);
        let channel = format!("{namespace}:events");
        // Subscribe before returning, so no event published after `connect`
        // is missed.
        let first = subscribe(&client, &channel).await?;
        tokio::spawn(listen(client, channel, events.clone(), first));
        Ok(Self {
            connection,
            namespace: namespace.to_owned(),
            events,
            cas: redis::Script::new(CAS),
            admit: redis::Script::new(ADMIT),
            checkout: super::checkout_redis::Scripts::new(),
        })
    }

    /// The key namespace.
    pub(super) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A handle on the shared connection.
    pub(super) fn connection(&self) -> ConnectionManager {
        self.connection.clone()
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

    async fn put_expiring_if_absent(
        &self,
        space: &str,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut c = self.connection.clone();
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let written: Option<String> = redis::cmd("SET")
            .arg(self.expiring_key(space, key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis)
            .query_async(&mut c)
            .await
            .map_err(StoreError::from_display)?;
        Ok(written.is_some())
    }

    async fn delete_expiring(&self, space: &str, key: &str) -> Result<bool, StoreError> {
        let mut c = self.connection.clone();
        let removed: i64 = c
            .del(self.expiring_key(space, key))
            .await
            .map_err(StoreError::from_display)?;
        Ok(removed > 0)
    }

    async fn admit(
        &self,
        scope: &str,
        limits: &[super::RateKey],
    ) -> Result<Option<Duration>, StoreError> {
        if limits.is_empty() {
            return Ok(None);
        }
        let mut invocation = self.admit.prepare_invoke();
        for limit in limits {
            // One hash tag per scope: the keys of one call share a slot.
            invocation
                .key(format!("{{{}:rate:{scope}}}:{}", self.namespace, limit.key))
                .arg(
                    u64::try_from(limit.interval.as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1),
                )
                .arg(limit.burst.max(1));
        }
        let mut c = self.connection.clone();
        let wait_us: u64 = invocation
            .invoke_async(&mut c)
            .await
            .map_err(StoreError::from_display)?;
        Ok((wait_us > 0).then(|| Duration::from_micros(wait_us)))
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
