//! The embedded backend: one redb file, events in-process. Every write
//! goes through the store's writer (group commit, see [`super::writer`]);
//! reads run on the blocking pool in read transactions of their own,
//! concurrently with the writer.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::broadcast;

use super::writer::Writer;
use super::{Event, Store, StoreError};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Expiring values: 8 bytes of expiry (ms since the epoch, big endian),
/// then the value. Expired entries are ignored when read and purged now
/// and then when written.
const EXPIRING: TableDefinition<&str, &[u8]> = TableDefinition::new("expiring");

/// Every this many expiring writes, expired entries are purged.
const PURGE_EVERY: u64 = 256;

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// A file-backed store for a single node.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// The one writer of the file (dropped with the last handle, which
    /// closes the file).
    writer: Arc<Writer>,
    events: broadcast::Sender<Event>,
    expiring_writes: Arc<std::sync::atomic::AtomicU64>,
    /// Rate limiters by scope and key; one node, so in-process. Idle ones
    /// are forgotten (a forgotten limiter is a full one, which is what an
    /// idle key has anyway).
    rates: moka::sync::Cache<String, Arc<(governor::Quota, governor::DefaultDirectRateLimiter)>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

fn full_key(space: &str, key: &str) -> String {
    format!("{space}\u{0}{key}")
}

impl EmbeddedStore {
    /// Opens (or creates) the file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(StoreError::from_display)?;
        let tx = db.begin_write().map_err(StoreError::from_display)?;
        tx.open_table(KV).map_err(StoreError::from_display)?;
        tx.open_table(EXPIRING).map_err(StoreError::from_display)?;
        super::checkout_embedded::create_tables(&tx).map_err(StoreError::from_display)?;
        tx.commit().map_err(StoreError::from_display)?;
        let db = Arc::new(db);
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            writer: Arc::new(Writer::start(db.clone())?),
            db,
            events,
            expiring_writes: Arc::default(),
            rates: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(std::time::Duration::from_secs(600))
                .build(),
        })
    }

    /// The database, for the checkout's operations.
    pub(super) fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// Runs `work` in a write transaction shared with the other writes
    /// waiting now (group commit); answers once it is durably committed.
    /// `work` may run more than once and must make every check that can
    /// refuse before its first write (see [`super::writer`]).
    pub(super) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.write(work).await
    }

    /// The writer, for tests of the group semantics.
    #[cfg(test)]
    pub(super) fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Runs a read on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(StoreError::from_display)?
            .map_err(StoreError::from_display)
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, space: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = full_key(space, key);
        self.blocking(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(KV)?;
            Ok(table.get(key.as_str())?.map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn list(&self, space: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let start = format!("{space}\u{0}");
        let end = format!("{space}\u{1}");
        let skip = start.len();
        self.blocking(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(KV)?;
            let mut out = Vec::new();
            for entry in table.range(start.as_str()..end.as_str())? {
                let (k, v) = entry?;
                out.push((k.value()[skip..].to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }

    async fn compare_and_set(
        &self,
        space: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, StoreError> {
        let key = full_key(space, key);
        let expected = expected.map(<[u8]>::to_vec);
        let value = value.to_vec();
        self.write(move |tx| {
            let mut table = tx.open_table(KV)?;
            let current = table.get(key.as_str())?.map(|v| v.value().to_vec());
            if current != expected {
                return Ok(false);
            }
            table.insert(key.as_str(), value.as_slice())?;
            Ok(true)
        })
        .await
    }

    async fn delete(&self, space: &str, key: &str) -> Result<bool, StoreError> {
        let key = full_key(space, key);
        self.write(move |tx| Ok(tx.open_table(KV)?.remove(key.as_str())?.is_some()))
            .await
    }

    async fn get_expiring(&self, space: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = full_key(space, key);
        self.blocking(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(EXPIRING)?;
            let Some(entry) = table.get(key.as_str())? else {
                return Ok(None);
            };
            let raw = entry.value();
            let Some((expiry, value)) = raw.split_first_chunk::<8>() else {
                return Ok(None);
            };
            Ok((u64::from_be_bytes(*expiry) > now_millis()).then(|| value.to_vec()))
        })
        .await
    }

    async fn put_expiring(
        &self,
        space: &str,
        key: &str,
        value: &[u8],
        ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        let key = full_key(space, key);
        let now = now_millis();
        let expiry = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let mut entry = Vec::with_capacity(8 + value.len());
        entry.extend_from_slice(&expiry.to_be_bytes());
        entry.extend_from_slice(value);
        let purge = self
            .expiring_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(PURGE_EVERY);
        self.write(move |tx| {
            let mut table = tx.open_table(EXPIRING)?;
            table.insert(key.as_str(), entry.as_slice())?;
            if purge {
                table.retain(|_, v| {
                    v.split_first_chunk::<8>()
                        .is_some_and(|(e, _)| u64::from_be_bytes(*e) > now)
                })?;
            }
            Ok(())
        })
        .await
    }

    async fn put_expiring_if_absent(
        &self,
        space: &str,
        key: &str,
        value: &[u8],
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let key = full_key(space, key);
        let now = now_millis();
        let expiry = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let mut entry = Vec::with_capacity(8 + value.len());
        entry.extend_from_slice(&expiry.to_be_bytes());
        entry.extend_from_slice(value);
        self.write(move |tx| {
            let mut table = tx.open_table(EXPIRING)?;
            let live = table.get(key.as_str())?.is_some_and(|v| {
                v.value()
                    .split_first_chunk::<8>()
                    .is_some_and(|(e, _)| u64::from_be_bytes(*e) > now)
            });
            if live {
                return Ok(false);
            }
            table.insert(key.as_str(), entry.as_slice())?;
            Ok(true)
        })
        .await
    }

    async fn delete_expiring(&self, space: &str, key: &str) -> Result<bool, StoreError> {
        let key = full_key(space, key);
        let now = now_millis();
        self.write(move |tx| {
            Ok(tx
                .open_table(EXPIRING)?
                .remove(key.as_str())?
                .is_some_and(|v| {
                    v.value()
                        .split_first_chunk::<8>()
                        .is_some_and(|(e, _)| u64::from_be_bytes(*e) > now)
                }))
        })
        .await
    }

    /// In-process, with `governor`. The rates are checked in the order
    /// given, most specific first: a request refused by a later rate has
    /// taken its place in the earlier ones (a member refused by the
    /// tenant's rate loses one request of its own, never the reverse).
    async fn admit(
        &self,
        scope: &str,
        limits: &[super::RateKey],
        cost: u32,
    ) -> Result<Option<std::time::Duration>, StoreError> {
        use governor::clock::Clock;
        for limit in limits {
            let Some(quota) = governor::Quota::with_period(limit.interval) else {
                continue;
            };
            let quota = quota.allow_burst(
                std::num::NonZeroU32::new(limit.burst).unwrap_or(std::num::NonZeroU32::MIN),
            );
            let name = format!("{scope}\u{0}{}", limit.key);
            let mut limiter = self.rates.get_with(name.clone(), || {
                Arc::new((quota, governor::RateLimiter::direct(quota)))
            });
            if limiter.0 != quota {
                // The configured rate changed.
                limiter = Arc::new((quota, governor::RateLimiter::direct(quota)));
                self.rates.insert(name, limiter.clone());
            }
            // At most the burst counts: a larger batch waits for a full
            // bucket, never for ever.
            let n = std::num::NonZeroU32::new(cost.clamp(1, limit.burst.max(1)))
                .unwrap_or(std::num::NonZeroU32::MIN);
            match limiter.1.check_n(n) {
                Ok(Ok(())) => {}
                // The limiter's own clock: making one costs a CPUID
                // instruction (a trap to the hypervisor on a VM), far
                // more than the check.
                Ok(Err(not_until)) => {
                    return Ok(Some(not_until.wait_time_from(limiter.1.clock().now())));
                }
                // Cannot happen (n is at most the burst); refuse for one
                // interval rather than admit.
                Err(_) => return Ok(Some(limit.interval)),
            }
        }
        Ok(None)
    }

    async fn publish(&self, topic: &str, payload: &str) -> Result<(), StoreError> {
        // No receivers is fine.
        let _ = self.events.send(Event::Message {
            topic: topic.to_owned(),
            payload: payload.to_owned(),
        });
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|db| {
            db.begin_read()?;
            Ok(())
        })
        .await
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}
