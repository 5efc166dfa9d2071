//! The two-level cache of reference and catalogue data: L1 in-process
//! (moka), L2 in the shared store (Redis, or the embedded file on one box).
//!
//! What is cached: malls, stores, product details, a mall's recommended
//! listing and its flash-sale list ([`Kind`]), each kind with its own
//! freshness (`cache.*_ttl_secs`). Personal data (members, coupons,
//! points) and prices are never cached: prices are computed per request
//! from cached product records.
//!
//! * **Single flight.** Concurrent misses for one key make one upstream
//!   call: on one node, later callers join the call in flight; across
//!   nodes, the node that takes the key's fill lock in the store (a short
//!   `SET NX PX`) asks the upstream, and the others wait up to
//!   `cache.lock_wait_ms` for its value in L2, then ask the upstream
//!   themselves (a lost lock never blocks a request for long).
//! * **Stale-if-error.** A record is kept `cache.stale_secs` past its
//!   freshness. When the upstream fails, such a record is served and the
//!   request's [`StaleLog`] records it; the GraphQL response then carries
//!   `extensions.stale` (see `bff/docs/caching.md`).
//! * **Invalidation.** [`Caches::invalidate`] deletes a key from L2 and
//!   publishes an event on which every node drops it from its L1.
//!
//! Records are keyed by tenant, so one tenant never reads another's.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::CacheSettings;
use crate::domain::TenantId;
use crate::metrics::Metrics;
use crate::store::{Event, SharedStore};
use crate::upstream::UpstreamError;

/// The topic of invalidation events.
pub const INVALIDATE_TOPIC: &str = "cache.invalidate";

/// A kind of cached record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A mall, by mall id.
    Mall,
    /// A store, by store id.
    Store,
    /// A product's details, by product id.
    Product,
    /// A mall's recommended listing (the home card's first page), by mall id.
    Listing,
    /// A mall's flash-sale products, by mall id.
    FlashSale,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::Mall,
        Kind::Store,
        Kind::Product,
        Kind::Listing,
        Kind::FlashSale,
    ];

    /// The kind's name in metrics, events, the admin API and responses.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Mall => "mall",
            Kind::Store => "store",
            Kind::Product => "product",
            Kind::Listing => "listing",
            Kind::FlashSale => "flash_sale",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn ttl_secs(self, settings: &CacheSettings) -> u64 {
        match self {
            Kind::Mall => settings.mall_ttl_secs,
            Kind::Store => settings.store_ttl_secs,
            Kind::Product => settings.product_ttl_secs,
            Kind::Listing => settings.listing_ttl_secs,
            Kind::FlashSale => settings.flash_sale_ttl_secs,
        }
    }

    fn space(self) -> &'static str {
        match self {
            Kind::Mall => "cache:mall",
            Kind::Store => "cache:store",
            Kind::Product => "cache:product",
            Kind::Listing => "cache:listing",
            Kind::FlashSale => "cache:flash_sale",
        }
    }
}

/// One part of a response served from an expired record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct StalePart {
    /// The kind of record.
    pub kind: Kind,
    /// Its id (a mall id for `listing` and `flash_sale`).
    pub id: String,
}

/// The records one request was served stale. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct StaleLog(Arc<Mutex<Vec<StalePart>>>);

impl StaleLog {
    fn mark(&self, kind: Kind, id: &str) {
        let mut parts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let part = StalePart {
            kind,
            id: id.to_owned(),
        };
        if !parts.contains(&part) {
            parts.push(part);
        }
    }

    /// The stale parts so far, in the order first served.
    pub fn parts(&self) -> Vec<StalePart> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A cached record: the value and when it was fetched (wall clock, so
/// every node judges an L2 record's age alike).
#[derive(Debug)]
struct Entry<V> {
    value: V,
    fetched_ms: i64,
}

/// The L2 form of a record.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored<V> {
    at: i64,
    v: V,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What every tier shares: the store, the settings, the metrics, and each
/// kind's L1 for invalidation.
struct Common {
    store: Option<SharedStore>,
    settings: CacheSettings,
    metrics: Metrics,
    l1s: Mutex<Vec<(Kind, Arc<dyn DropL1>)>>,
}

/// Drops L1 records (for invalidation).
trait DropL1: Send + Sync {
    fn drop_key(&self, key: &str);
    fn drop_all(&self);
}

impl<V: Clone + Send + Sync + 'static> DropL1 for moka::sync::Cache<String, Arc<Entry<V>>> {
    fn drop_key(&self, key: &str) {
        self.invalidate(key);
    }
    fn drop_all(&self) {
        self.invalidate_all();
    }
}

/// The cache handle: builds one [`Tier`] per kind, invalidates keys on
/// every node. Cheap to clone.
#[derive(Clone)]
pub struct Caches {
    common: Arc<Common>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

/// An invalidation request could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum InvalidateError {
    /// The shared store failed; nothing is known to be invalidated.
    #[error("the shared store is unavailable")]
    Store(#[from] crate::store::StoreError),
}

impl Caches {
    /// Caches over `store` as L2 (when `settings.l2`).
    pub fn new(settings: &CacheSettings, store: SharedStore, metrics: Metrics) -> Self {
        Self {
            common: Arc::new(Common {
                store: settings.l2.then_some(store),
                settings: settings.clone(),
                metrics,
                l1s: Mutex::new(Vec::new()),
            }),
        }
    }

    /// In-process only, never shared (tools and tests that have no store).
    pub fn local(settings: &CacheSettings, metrics: Metrics) -> Self {
        Self {
            common: Arc::new(Common {
                store: None,
                settings: settings.clone(),
                metrics,
                l1s: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The tier of records of `kind` (values of type `V`).
    pub fn tier<V>(&self, kind: Kind) -> Tier<V>
    where
        V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let s = &self.common.settings;
        let ttl = Duration::from_secs(kind.ttl_secs(s));
        let stale = Duration::from_secs(s.stale_secs);
        let l1 = (!ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(s.max_entries)
                .time_to_live(ttl + stale)
                .build()
        });
        if let Some(l1) = &l1 {
            self.common
                .l1s
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((kind, Arc::new(l1.clone())));
        }
        Tier {
            kind,
            ttl,
            stale,
            l1,
            inflight: Arc::default(),
            common: self.common.clone(),
        }
    }

    /// Drops `id` of `kind` for `tenant` from L2 and from every node's L1
    /// (through a store event, so within moments on every node).
    pub async fn invalidate(
        &self,
        kind: Kind,
        tenant: &TenantId,
        id: &str,
    ) -> Result<(), InvalidateError> {
        let key = key_of(tenant, id);
        if let Some(store) = &self.common.store {
            store.delete_expiring(kind.space(), &key).await?;
            store
                .publish(INVALIDATE_TOPIC, &format!("{}\n{key}", kind.name()))
                .await?;
        }
        // This node at once; the others on the event.
        self.drop_local(kind, &key);
        Ok(())
    }

    fn drop_local(&self, kind: Kind, key: &str) {
        for (k, l1) in self
            .common
            .l1s
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if *k == kind {
                l1.drop_key(key);
            }
        }
    }

    fn drop_everything(&self) {
        for (_, l1) in self
            .common
            .l1s
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            l1.drop_all();
        }
    }

    /// Applies invalidation events from every node until the store's event
    /// stream ends. After a gap in the stream (events may have been
    /// missed) every L1 record is dropped.
    pub async fn follow_invalidations(self, store: SharedStore) {
        let mut events = store.subscribe();
        loop {
            match events.recv().await {
                Ok(Event::Message { topic, payload }) if topic == INVALIDATE_TOPIC => {
                    let Some((kind, key)) = payload.split_once('\n') else {
                        continue;
                    };
                    if let Some(kind) = Kind::parse(kind) {
                        self.drop_local(kind, key);
                    }
                }
                Ok(Event::Message { .. }) => {}
                Ok(Event::Resync) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    tracing::info!("cache events may have been missed; dropping every L1 record");
                    self.drop_everything();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

fn key_of(tenant: &TenantId, id: &str) -> String {
    let tenant = tenant.as_str();
    let mut key = String::with_capacity(tenant.len() + 1 + id.len());
    key.push_str(tenant);
    key.push('/');
    key.push_str(id);
    key
}

/// What a fill found for one id: the value, and whether it is stale.
#[derive(Debug, Clone)]
struct Found<V> {
    value: V,
    stale: bool,
}

impl<V> Found<V> {
    /// A value read fresh (from the upstream, or within its TTL).
    fn fresh(value: V) -> Self {
        Self {
            value,
            stale: false,
        }
    }
}

type FillResult<V> = Result<Arc<HashMap<String, Found<V>>>, UpstreamError>;
type Flight<V> = Shared<BoxFuture<'static, FillResult<V>>>;

/// Fetches the given ids from the upstream: the ones it knows are in the
/// map, unknown ones are absent.
pub type Fetch<V> = Arc<
    dyn Fn(Vec<String>) -> BoxFuture<'static, Result<HashMap<String, V>, UpstreamError>>
        + Send
        + Sync,
>;

/// The cache of one kind of record.
pub struct Tier<V> {
    kind: Kind,
    ttl: Duration,
    stale: Duration,
    /// `None`: the kind is not cached (its TTL is 0).
    l1: Option<moka::sync::Cache<String, Arc<Entry<V>>>>,
    inflight: Arc<Mutex<HashMap<String, Flight<V>>>>,
    common: Arc<Common>,
}

impl<V> Clone for Tier<V> {
    fn clone(&self) -> Self {
        Self {
            kind: self.kind,
            ttl: self.ttl,
            stale: self.stale,
            l1: self.l1.clone(),
            inflight: self.inflight.clone(),
            common: self.common.clone(),
        }
    }
}

impl<V> std::fmt::Debug for Tier<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier").field("kind", &self.kind).finish()
    }
}

impl<V> Tier<V>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn fresh(&self, fetched_ms: i64, now: i64) -> bool {
        now.saturating_sub(fetched_ms) < i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    fn servable(&self, fetched_ms: i64, now: i64) -> bool {
        now.saturating_sub(fetched_ms)
            < i64::try_from((self.ttl + self.stale).as_millis()).unwrap_or(i64::MAX)
    }

    fn count(&self, level: &'static str, outcome: &'static str, n: usize) {
        self.common
            .metrics
            .cache_lookup(self.kind.name(), level, outcome, n as u64);
    }

    /// Records of `ids` for `tenant`: fresh ones from L1 or L2, the rest from
    /// one `fetch` of the missing ids (single flight). When the upstream
    /// fails, records within their stale window are served and logged in
    /// `stale`; the call fails only if some id has none. Unknown ids are
    /// absent from the answer.
    pub async fn get_many(
        &self,
        tenant: &TenantId,
        ids: &[String],
        stale: &StaleLog,
        fetch: Fetch<V>,
    ) -> Result<HashMap<String, V>, UpstreamError> {
        let Some(l1) = &self.l1 else {
            return fetch(ids.to_vec()).await;
        };
        let now = now_ms();
        let mut out = HashMap::with_capacity(ids.len());
        let mut fallback: HashMap<String, Arc<Entry<V>>> = HashMap::new();
        let mut missing: Vec<String> = Vec::new();
        for id in ids {
            match l1.get(&key_of(tenant, id)) {
                Some(e) if self.fresh(e.fetched_ms, now) => {
                    out.insert(id.clone(), e.value.clone());
                }
                Some(e) => {
                    fallback.insert(id.clone(), e);
                    missing.push(id.clone());
                }
                None => missing.push(id.clone()),
            }
        }
        self.count("l1", "hit", out.len());
        self.count("l1", "miss", missing.len());
        if missing.is_empty() {
            return Ok(out);
        }
        missing.sort_unstable();
        missing.dedup();

        // Join fills in flight; start one for the rest.
        let mut flights: Vec<(Vec<String>, Flight<V>)> = Vec::new();
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            let mut mine = Vec::new();
            let mut joined: HashMap<usize, Vec<String>> = HashMap::new();
            let mut joined_flights: Vec<Flight<V>> = Vec::new();
            for id in missing {
                match inflight.get(&key_of(tenant, &id)) {
                    Some(flight) => {
                        let at = joined_flights
                            .iter()
                            .position(|f| f.ptr_eq(flight))
                            .unwrap_or_else(|| {
                                joined_flights.push(flight.clone());
                                joined_flights.len() - 1
                            });
                        joined.entry(at).or_default().push(id);
                    }
                    None => mine.push(id),
                }
            }
            for (at, flight) in joined_flights.into_iter().enumerate() {
                flights.push((joined.remove(&at).unwrap_or_default(), flight));
            }
            if !mine.is_empty() {
                let fallback: HashMap<String, Arc<Entry<V>>> = mine
                    .iter()
                    .filter_map(|id| fallback.get(id).map(|e| (id.clone(), e.clone())))
                    .collect();
                let task =
                    tokio::spawn(
                        self.clone()
                            .fill(tenant.clone(), mine.clone(), fallback, fetch),
                    );
                let flight: Flight<V> = async move {
                    task.await.unwrap_or_else(|e| {
                        tracing::error!(error = %e, "a cache fill panicked");
                        Err(UpstreamError::Unavailable("cache"))
                    })
                }
                .boxed()
                .shared();
                for id in &mine {
                    inflight.insert(key_of(tenant, id), flight.clone());
                }
                flights.push((mine, flight));
            }
        }

        let mut failure = None;
        for (wanted, flight) in flights {
            match flight.await {
                Ok(found) => {
                    for id in wanted {
                        if let Some(f) = found.get(&id) {
                            if f.stale {
                                stale.mark(self.kind, &id);
                            }
                            out.insert(id, f.value.clone());
                        }
                    }
                }
                Err(err) => {
                    // A joined fill failed: this request may still hold a
                    // servable record of its own.
                    for id in wanted {
                        match fallback.get(&id) {
                            Some(e) if self.servable(e.fetched_ms, now_ms()) => {
                                self.count("l1", "stale", 1);
                                stale.mark(self.kind, &id);
                                out.insert(id, e.value.clone());
                            }
                            _ => failure = Some(err.clone()),
                        }
                    }
                }
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(out),
        }
    }

    /// One record (`V` may be an `Option` to cache "not found" too).
    pub async fn get_one(
        &self,
        tenant: &TenantId,
        id: &str,
        stale: &StaleLog,
        fetch: impl Fn() -> BoxFuture<'static, Result<V, UpstreamError>> + Send + Sync + 'static,
    ) -> Result<V, UpstreamError> {
        let wanted = id.to_owned();
        let fetch: Fetch<V> = Arc::new(move |_ids| {
            let one = fetch();
            let id = wanted.clone();
            async move { Ok(HashMap::from([(id, one.await?)])) }.boxed()
        });
        let mut found = self
            .get_many(tenant, &[id.to_owned()], stale, fetch)
            .await?;
        found.remove(id).ok_or(UpstreamError::BadResponse("cache"))
    }

    /// Puts fresh records into both levels (pre-warm).
    pub async fn put_many(&self, tenant: &TenantId, records: HashMap<String, V>) {
        if self.l1.is_none() {
            return;
        }
        let at = now_ms();
        futures::future::join_all(
            records
                .into_iter()
                .map(|(id, value)| self.store_record(tenant, id, value, at)),
        )
        .await;
    }

    async fn store_record(&self, tenant: &TenantId, id: String, value: V, at: i64) {
        let key = key_of(tenant, &id);
        if let Some(store) = &self.common.store {
            match serde_json::to_vec(&Stored { at, v: &value }) {
                Ok(bytes) => {
                    if let Err(error) = store
                        .put_expiring(self.kind.space(), &key, &bytes, self.ttl + self.stale)
                        .await
                    {
                        tracing::warn!(%error, kind = self.kind.name(), "cache L2 write failed");
                    }
                }
                Err(error) => {
                    tracing::error!(%error, kind = self.kind.name(), "cache record not serializable");
                }
            }
        }
        if let Some(l1) = &self.l1 {
            l1.insert(
                key,
                Arc::new(Entry {
                    value,
                    fetched_ms: at,
                }),
            );
        }
    }

    async fn read_l2(&self, tenant: &TenantId, id: &str) -> Option<Entry<V>> {
        let store = self.common.store.as_ref()?;
        match store
            .get_expiring(self.kind.space(), &key_of(tenant, id))
            .await
        {
            Ok(Some(bytes)) => match serde_json::from_slice::<Stored<V>>(&bytes) {
                Ok(s) => Some(Entry {
                    value: s.v,
                    fetched_ms: s.at,
                }),
                Err(error) => {
                    tracing::warn!(%error, kind = self.kind.name(), "unreadable cache record ignored");
                    None
                }
            },
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, kind = self.kind.name(), "cache L2 read failed");
                None
            }
        }
    }

    fn lock_key(tenant: &TenantId, id: &str) -> String {
        format!("lock/{}", key_of(tenant, id))
    }

    /// Fills `ids` (none in flight on this node): L2, then the upstream
    /// under the shared fill locks, then stale records if it fails.
    async fn fill(
        self,
        tenant: TenantId,
        ids: Vec<String>,
        mut fallback: HashMap<String, Arc<Entry<V>>>,
        fetch: Fetch<V>,
    ) -> FillResult<V> {
        let result = self.fill_inner(&tenant, &ids, &mut fallback, fetch).await;
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        for id in &ids {
            inflight.remove(&key_of(&tenant, id));
        }
        result.map(Arc::new)
    }

    async fn fill_inner(
        &self,
        tenant: &TenantId,
        ids: &[String],
        fallback: &mut HashMap<String, Arc<Entry<V>>>,
        fetch: Fetch<V>,
    ) -> Result<HashMap<String, Found<V>>, UpstreamError> {
        let mut found: HashMap<String, Found<V>> = HashMap::new();
        let mut missing: Vec<String> = ids.to_vec();
        let store = self.common.store.clone();
        if let Some(store) = &store {
            let now = now_ms();
            let read =
                futures::future::join_all(ids.iter().map(|id| self.read_l2(tenant, id))).await;
            missing.clear();
            for (id, entry) in ids.iter().zip(read) {
                match entry {
                    Some(e) if self.fresh(e.fetched_ms, now) => {
                        self.remember(tenant, id, &e);
                        found.insert(id.clone(), Found::fresh(e.value));
                    }
                    Some(e) => {
                        let newer = fallback.get(id).is_none_or(|f| f.fetched_ms < e.fetched_ms);
                        if newer {
                            fallback.insert(id.clone(), Arc::new(e));
                        }
                        missing.push(id.clone());
                    }
                    None => missing.push(id.clone()),
                }
            }
            self.count("l2", "hit", found.len());
            self.count("l2", "miss", missing.len());
            if missing.is_empty() {
                return Ok(found);
            }

            // Across nodes: one node fills each key; the others wait for it.
            let lock_ttl = Duration::from_millis(self.common.settings.lock_ms.max(1));
            let locked = futures::future::join_all(missing.iter().map(|id| {
                let store = store.clone();
                let key = Self::lock_key(tenant, id);
                async move {
                    store
                        .put_expiring_if_absent(self.kind.space(), &key, b"1", lock_ttl)
                        .await
                        // The store failing must not stop the read path.
                        .unwrap_or(true)
                }
            }))
            .await;
            let (won, lost): (Vec<_>, Vec<_>) = missing
                .iter()
                .cloned()
                .zip(locked)
                .partition(|(_, locked)| *locked);
            let won: Vec<String> = won.into_iter().map(|(id, _)| id).collect();
            let lost: Vec<String> = lost.into_iter().map(|(id, _)| id).collect();

            let (from_upstream, waited) = futures::join!(
                self.fetch_and_store(tenant, won.clone(), fetch.clone()),
                self.wait_for_others(tenant, lost.clone()),
            );
            futures::future::join_all(won.iter().map(|id| {
                let store = store.clone();
                let key = Self::lock_key(tenant, id);
                async move {
                    let _ = store.delete_expiring(self.kind.space(), &key).await;
                }
            }))
            .await;
            let mut leftover: Vec<String> = lost
                .iter()
                .filter(|id| !waited.contains_key(*id))
                .cloned()
                .collect();
            for (id, value) in waited {
                found.insert(id, Found::fresh(value));
            }
            let mut failure = None;
            match from_upstream {
                Ok(values) => {
                    for (id, value) in values {
                        found.insert(id, Found::fresh(value));
                    }
                }
                Err(err) => {
                    self.serve_stale(&won, fallback, &mut found, &mut failure, err);
                }
            }
            if !leftover.is_empty() {
                // The filling node did not answer in time: ask ourselves.
                match self
                    .fetch_and_store(tenant, std::mem::take(&mut leftover), fetch)
                    .await
                {
                    Ok(values) => {
                        for (id, value) in values {
                            found.insert(id, Found::fresh(value));
                        }
                    }
                    Err(err) => {
                        let left: Vec<String> = lost
                            .iter()
                            .filter(|id| !found.contains_key(*id))
                            .cloned()
                            .collect();
                        self.serve_stale(&left, fallback, &mut found, &mut failure, err);
                    }
                }
            }
            return match failure {
                Some(err) => Err(err),
                None => Ok(found),
            };
        }

        // In-process only.
        let mut failure = None;
        match self.fetch_and_store(tenant, missing.clone(), fetch).await {
            Ok(values) => {
                for (id, value) in values {
                    found.insert(id, Found::fresh(value));
                }
            }
            Err(err) => self.serve_stale(&missing, fallback, &mut found, &mut failure, err),
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(found),
        }
    }

    /// After the upstream failed for `ids`: serves their servable records,
    /// stale; `failure` is set if any has none.
    fn serve_stale(
        &self,
        ids: &[String],
        fallback: &HashMap<String, Arc<Entry<V>>>,
        found: &mut HashMap<String, Found<V>>,
        failure: &mut Option<UpstreamError>,
        err: UpstreamError,
    ) {
        let now = now_ms();
        let mut served = 0;
        for id in ids {
            match fallback.get(id) {
                Some(e) if self.servable(e.fetched_ms, now) => {
                    served += 1;
                    found.insert(
                        id.clone(),
                        Found {
                            value: e.value.clone(),
                            stale: true,
                        },
                    );
                }
                _ => *failure = Some(err.clone()),
            }
        }
        if served > 0 {
            tracing::warn!(kind = self.kind.name(), served, error = %err, "upstream failed; serving stale records");
        }
        self.count(
            if self.common.store.is_some() {
                "l2"
            } else {
                "l1"
            },
            "stale",
            served,
        );
    }

    fn remember(&self, tenant: &TenantId, id: &str, e: &Entry<V>) {
        if let Some(l1) = &self.l1 {
            l1.insert(
                key_of(tenant, id),
                Arc::new(Entry {
                    value: e.value.clone(),
                    fetched_ms: e.fetched_ms,
                }),
            );
        }
    }

    async fn fetch_and_store(
        &self,
        tenant: &TenantId,
        ids: Vec<String>,
        fetch: Fetch<V>,
    ) -> Result<HashMap<String, V>, UpstreamError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let values = fetch(ids).await?;
        let at = now_ms();
        futures::future::join_all(
            values
                .iter()
                .map(|(id, value)| self.store_record(tenant, id.clone(), value.clone(), at)),
        )
        .await;
        Ok(values)
    }

    /// Waits up to `cache.lock_wait_ms` (at most half of what the request's
    /// deadline leaves) for other nodes to put fresh records of `ids` into
    /// L2.
    async fn wait_for_others(&self, tenant: &TenantId, ids: Vec<String>) -> HashMap<String, V> {
        let mut got = HashMap::new();
        if ids.is_empty() {
            return got;
        }
        let mut waiting: HashSet<String> = ids.into_iter().collect();
        let mut wait = Duration::from_millis(self.common.settings.lock_wait_ms);
        if let Some(request_deadline) = crate::upstream::resilience::deadline() {
            // Never past the request's deadline: leave the fallback call to
            // the upstream half of what the request has left.
            let left = request_deadline.saturating_duration_since(std::time::Instant::now());
            wait = wait.min(left / 2);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        while !waiting.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(pause.min(deadline - tokio::time::Instant::now())).await;
            pause = (pause * 2).min(Duration::from_millis(40));
            let now = now_ms();
            let ids: Vec<String> = waiting.iter().cloned().collect();
            let read =
                futures::future::join_all(ids.iter().map(|id| self.read_l2(tenant, id))).await;
            for (id, entry) in ids.into_iter().zip(read) {
                if let Some(e) = entry.filter(|e| self.fresh(e.fetched_ms, now)) {
                    self.remember(tenant, &id, &e);
                    waiting.remove(&id);
                    got.insert(id, e.value);
                }
            }
        }
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn settings() -> CacheSettings {
        CacheSettings {
            mall_ttl_secs: 1,
            stale_secs: 60,
            ..CacheSettings::default()
        }
    }

    fn counting_fetch(
        calls: Arc<AtomicUsize>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    ) -> Fetch<String> {
        Arc::new(move |ids: Vec<String>| {
            let calls = calls.clone();
            let fail = fail.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                if fail.load(Ordering::SeqCst) {
                    return Err(UpstreamError::Unavailable("mall"));
                }
                Ok(ids
                    .into_iter()
                    .filter(|id| id != "unknown")
                    .map(|id| (id.clone(), format!("value of {id}")))
                    .collect())
            }
            .boxed()
        })
    }

    #[tokio::test]
    async fn concurrent_misses_on_one_node_make_one_fetch_and_unknown_ids_are_absent() {
        let caches = Caches::local(&settings(), Metrics::new());
        let tier: Tier<String> = caches.tier(Kind::Mall);
        let calls = Arc::new(AtomicUsize::new(0));
        let fetch = counting_fetch(calls.clone(), Arc::default());
        let tenant = TenantId::parse("demo").unwrap();
        let log = StaleLog::default();
        let ids = vec!["a".to_owned(), "unknown".to_owned()];
        let all = futures::future::join_all(
            (0..50).map(|_| tier.get_many(&tenant, &ids, &log, fetch.clone())),
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        for found in all {
            let found = found.unwrap();
            assert_eq!(found.get("a").map(String::as_str), Some("value of a"));
            assert!(!found.contains_key("unknown"));
        }
        assert!(log.parts().is_empty());
    }

    #[tokio::test]
    async fn an_expired_record_is_served_stale_when_the_upstream_fails() {
        let caches = Caches::local(&settings(), Metrics::new());
        let tier: Tier<String> = caches.tier(Kind::Mall);
        let calls = Arc::new(AtomicUsize::new(0));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fetch = counting_fetch(calls.clone(), fail.clone());
        let tenant = TenantId::parse("demo").unwrap();
        let ids = vec!["a".to_owned()];
        tier.get_many(&tenant, &ids, &StaleLog::default(), fetch.clone())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        fail.store(true, Ordering::SeqCst);
        let log = StaleLog::default();
        let found = tier
            .get_many(&tenant, &ids, &log, fetch.clone())
            .await
            .unwrap();
        assert_eq!(found["a"], "value of a");
        assert_eq!(
            log.parts(),
            vec![StalePart {
                kind: Kind::Mall,
                id: "a".into()
            }]
        );
        // Never fetched before: nothing to serve.
        let err = tier
            .get_many(&tenant, &["b".to_owned()], &StaleLog::default(), fetch)
            .await;
        assert!(err.is_err());
    }

    #[tokio::test]
    async fn invalidation_drops_the_local_record() {
        let caches = Caches::local(&settings(), Metrics::new());
        let tier: Tier<String> = caches.tier(Kind::Mall);
        let calls = Arc::new(AtomicUsize::new(0));
        let fetch = counting_fetch(calls.clone(), Arc::default());
        let tenant = TenantId::parse("demo").unwrap();
        let ids = vec!["a".to_owned()];
        let log = StaleLog::default();
        tier.get_many(&tenant, &ids, &log, fetch.clone())
            .await
            .unwrap();
        tier.get_many(&tenant, &ids, &log, fetch.clone())
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        caches.invalidate(Kind::Mall, &tenant, "a").await.unwrap();
        tier.get_many(&tenant, &ids, &log, fetch).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
