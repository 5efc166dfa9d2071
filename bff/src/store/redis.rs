//! The Redis backend: one hash per space under a namespace, events over
//! pub/sub. A dropped subscription is re-established and announced as
//! [`Event::Resync`] so listeners reload what they may have missed.
//!
//! It runs on one Redis server or on a Redis Cluster (see
//! [`super::redis_connection`]), so every key follows the **hash-tag rule**:
//! all the keys one script (or one `MULTI`, or one multi-key command) touches
//! must hash to one cluster slot. Either the script takes a single key (the
//! compare-and-set below: one hash per space), or every key it names carries
//! the same `{...}` hash tag (the checkout's scripts: `{tenant:mall}` per
//! scope, `{tenant}` for idempotency records). A tagged key holds exactly
//! one braced part: braces coming from configuration (the namespace) are
//! replaced in it, so the tag is always the intended one. Key names stay plain
//! strings, so the same names work on a single Redis. Scripts never build
//! key names inside Lua: every key is passed in `KEYS`, which is how a
//! cluster routes the call.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::broadcast;

use super::redis_connection::{Connection, Target, connect_cluster};
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

/// How long a checkout script may wait for its reply: a timed-out script may
/// still have run, so it waits longer rather than report an ambiguous error.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// Generic cell rate algorithm over several keys at once: each key holds
/// its theoretical arrival time (µs, Redis' clock). The request is admitted
/// only if every key admits it, and only then are they all advanced.
/// Returns 0, or the µs to wait. ARGV: the request's cost (operations; at
/// most a key's burst counts), then interval µs and burst per key.
const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local tats = {}
local wait = 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local tolerance = interval * burst
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval * math.min(cost, burst)
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
    /// General operations: short timeouts.
    connection: Connection,
    /// The checkout's scripts: a longer response timeout (see `connect`).
    checkout_connection: Connection,
    namespace: String,
    events: broadcast::Sender<Event>,
    cas: redis::Script,
    admit: redis::Script,
    checkout: super::checkout_redis::Scripts,
    /// How long a finished order is kept (milliseconds).
    order_retention_ms: u64,
}

/// How long finished orders are kept on Redis unless configured: 30 days.
pub const DEFAULT_ORDER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects, and starts the event subscription. Keys are
    /// `<namespace>:<space>`; events travel on `<namespace>:events`. A
    /// `redis+cluster://` URL selects a Redis Cluster.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, StoreError> {
        let target = Target::parse(url)?;
        if let Target::Cluster(seeds) = &target {
            let connection = connect_cluster(seeds, STORE_TIMEOUT).await?;
            // The checkout's scripts wait longer, as on one server (below).
            let checkout_connection = connect_cluster(seeds, CHECKOUT_TIMEOUT).await?;
            return Self::start(
                connection,
                checkout_connection,
                target.subscribers()?,
                namespace,
            )
            .await;
        }
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
            reconnect().set_response_timeout(Some(CHECKOUT_TIMEOUT)),
        )
        .await?;
        Self::start(
            connection.into(),
            checkout_connection.into(),
            vec![client],
            namespace,
        )
        .await
    }

    /// Subscribes to events through `subscribers` (tried in turn) and
    /// assembles the store.
    async fn start(
        connection: Connection,
        checkout_connection: Connection,
        subscribers: Vec<redis::Client>,
        namespace: &str,
    ) -> Result<Self, StoreError> {
        let (events, _) = broadcast::channel(1024);
        let channel = format!("{namespace}:events");
        // Subscribe before returning, so no event published after `connect`
        // is missed.
        let (first, at) = subscribe_any(&subscribers, 0, &channel).await?;
        tokio::spawn(listen(subscribers, at, channel, events.clone(), first));
        Ok(Self {
            connection,
            checkout_connection,
            namespace: namespace.to_owned(),
            events,
            cas: redis::Script::new(CAS),
            admit: redis::Script::new(ADMIT),
            checkout: super::checkout_redis::Scripts::new(),
            order_retention_ms: duration_ms(DEFAULT_ORDER_RETENTION),
        })
    }

    /// Keeps finished orders (completed, cancelled or expired, nothing left
    /// to do) for `retention`, then lets Redis drop them (at least 1 ms).
    pub fn with_order_retention(mut self, retention: Duration) -> Self {
        self.order_retention_ms = duration_ms(retention).max(1);
        self
    }

    /// How long a finished order is kept, in milliseconds.
    pub(super) fn order_retention_ms(&self) -> u64 {
        self.order_retention_ms
    }

    /// The key namespace.
    pub(super) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A handle on the checkout's connection.
    pub(super) fn connection(&self) -> Connection {
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

/// How long subscribing to one node may take before the next is tried.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Subscribes through the first client that answers, starting at `from`;
/// returns the subscription and the index of that client.
async fn subscribe_any(
    clients: &[redis::Client],
    from: usize,
    channel: &str,
) -> Result<(redis::aio::PubSub, usize), StoreError> {
    let mut last = StoreError("no Redis node to subscribe to".into());
    for n in 0..clients.len() {
        let at = (from + n) % clients.len();
        // A node that does not answer must not hold up the others.
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe(&clients[at], channel)).await {
            Ok(Ok(pubsub)) => return Ok((pubsub, at)),
            Ok(Err(error)) => last = error,
            Err(_) => last = StoreError("timed out subscribing to Redis".into()),
        }
    }
    Err(last)
}

async fn listen(
    clients: Vec<redis::Client>,
    mut at: usize,
    channel: String,
    events: broadcast::Sender<Event>,
    first: redis::aio::PubSub,
) {
    let mut pubsub = Some(first);
    loop {
        let current = match pubsub.take() {
            Some(p) => p,
            // Start with the node after the one that went away: on a
            // cluster, any live node hears every publish.
            None => match subscribe_any(&clients, at + 1, &channel).await {
                Ok((p, now_at)) => {
                    at = now_at;
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
        cost: u32,
    ) -> Result<Option<Duration>, StoreError> {
        if limits.is_empty() {
            return Ok(None);
        }
        let mut invocation = self.admit.prepare_invoke();
        invocation.arg(cost.max(1));
        for limit in limits {
            // One hash tag per scope: the keys of one call share a slot
            // (braces from configuration would change the tag).
            let tag = format!("{}:rate:{scope}", self.namespace).replace(['{', '}'], "_");
            invocation
                .key(format!("{{{tag}}}:{}", limit.key))
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

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
