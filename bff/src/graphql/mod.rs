//! Schema assembly and the per-request context.
//!
//! Schema-wide handles (upstream clients) are built once; per-request
//! facts (who is asking, the request's DataLoaders) travel in
//! [`RequestContext`], inserted into each request's data by the HTTP
//! handler.

pub mod complete;
pub mod guard;
pub mod http;
pub mod limits;
pub mod persisted;
pub mod plain;

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{Context, EmptySubscription, MergedObject, Schema, ServerError};

use crate::auth::Principal;
use crate::checkout::api::{CheckoutMutation, CheckoutQuery};
use crate::config::GraphqlSettings;
use async_graphql::ErrorExtensions;

use crate::cache::{Caches, StaleLog};
use crate::config::CacheSettings;
use crate::domain::{MallId, MemberId, StoreId, TenantId};
use crate::error::code;
use crate::home::HomeQuery;
use crate::mall::{Directory, Mall, MallLoader, MallQuery, Store, StoreLoader, StoresByMallLoader};
use crate::member::{Coupon, Member, MemberQuery};
use crate::pricing::api::{PricingQuery, RulesMutation};
use crate::product::{Catalogue, Product, ProductLoader, ProductQuery};
use crate::upstream::{MAX_BATCH, MemberRecord, UpstreamError, Upstreams};

/// The root query: each capability contributes its own fields.
#[derive(MergedObject, Default)]
pub struct Query(
    MallQuery,
    MemberQuery,
    ProductQuery,
    HomeQuery,
    PricingQuery,
    CheckoutQuery,
);

/// The root mutation.
#[derive(MergedObject, Default)]
pub struct Mutation(RulesMutation, CheckoutMutation);

/// The BFF's GraphQL schema.
pub type BffSchema = Schema<Query, Mutation, EmptySubscription>;

/// Parsed documents by query text. Client apps send the same few queries
/// over and over, and parsing is a large share of a small query's CPU.
/// Only documents that kept the document limits are kept, so a hit needs
/// no re-check; validation still runs on every request. The cache is
/// bounded by an estimate of the memory a document takes once parsed (its
/// text plus [`DOC_BYTES_PER_TOKEN`] per token), not by its text alone.
#[derive(Clone)]
pub struct DocumentCache {
    cache: Option<moka::sync::Cache<Arc<str>, CachedDocument>>,
    limits: limits::Limits,
}

#[derive(Clone)]
struct CachedDocument {
    doc: Arc<ExecutableDocument>,
    /// Estimated bytes held: the text plus the parsed tree.
    weight: u32,
}

/// Heap bytes a parsed document takes per lexical token, measured on the
/// card and introspection queries (see the `parsed_size` unit test).
pub const DOC_BYTES_PER_TOKEN: usize = 160;

impl DocumentCache {
    /// A cache holding up to about `bytes` of parsed documents (0: parse
    /// every time), admitting documents within `settings`' limits.
    pub fn new(settings: &GraphqlSettings) -> Self {
        let bytes = settings.document_cache_bytes;
        let cache = (bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|_: &Arc<str>, cached: &CachedDocument| cached.weight)
                .build()
        });
        Self {
            cache,
            limits: limits::Limits {
                document: guard::DocumentLimits {
                    max_nesting: settings.max_nesting,
                    max_tokens: settings.max_tokens,
                    max_directives: settings.max_directives,
                    max_fields: settings.max_fields,
                },
                max_aliases: settings.max_aliases,
                max_depth: settings.max_depth,
            },
        }
    }

    /// The parsed document of `query`: cached, or scanned, parsed and
    /// checked now. A document that does not parse or breaks a limit is
    /// refused with a coded error and never cached.
    pub fn prepare(&self, query: &str) -> Result<Arc<ExecutableDocument>, ServerError> {
        if let Some(cached) = self.cache.as_ref().and_then(|c| c.get(query)) {
            return Ok(cached.doc);
        }
        let checked = limits::parse(query, &self.limits)?;
        let doc = Arc::new(checked.doc);
        if let Some(cache) = &self.cache {
            let weight = query
                .len()
                .saturating_add(checked.tokens.saturating_mul(DOC_BYTES_PER_TOKEN));
            cache.insert(
                Arc::from(query),
                CachedDocument {
                    doc: doc.clone(),
                    weight: u32::try_from(weight).unwrap_or(u32::MAX),
                },
            );
        }
        Ok(doc)
    }
}

/// Requests known to pass every validation rule: the exact query text,
/// operation name and variables of a request that executed before.
///
/// Validation is a pure function of the schema, the document, the
/// operation and the variables, and it is a large share of a card's CPU
/// (every rule visits the whole document, twice). A request seen before
/// runs on a schema that does not validate it again ([`Schemas::known`]):
/// whatever validation would find was found not to be there. Variables
/// are part of the key, so a request differing in any value is validated
/// in full.
#[derive(Clone)]
pub struct ValidationCache {
    cache: Option<moka::sync::Cache<ValidationKey, u32>>,
}

/// What validation depends on, besides the schema.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ValidationKey {
    query: Arc<str>,
    operation: Option<String>,
    variables: String,
}

/// Variables larger than this (as JSON) are validated every time: keys
/// stay small.
const MAX_CACHED_VARIABLES: usize = 4 * 1024;

impl ValidationCache {
    /// Remembers up to about `bytes` of request keys (0: validate every
    /// request in full).
    pub fn new(bytes: u64) -> Self {
        let cache = (bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(bytes)
                // The query text is shared with the document cache; count
                // it anyway, so the bound holds on its own.
                .weigher(|k: &ValidationKey, _: &u32| {
                    let len = k.query.len()
                        + k.variables.len()
                        + k.operation.as_ref().map_or(0, String::len)
                        + 64;
                    u32::try_from(len).unwrap_or(u32::MAX)
                })
                .build()
        });
        Self { cache }
    }

    /// The key of a request; `None` when it is not cached (cache off,
    /// large variables).
    pub fn key(
        &self,
        query: &Arc<str>,
        operation: Option<&str>,
        variables: &async_graphql::Variables,
    ) -> Option<ValidationKey> {
        self.cache.as_ref()?;
        let variables = serde_json::to_string(variables).ok()?;
        (variables.len() <= MAX_CACHED_VARIABLES).then(|| ValidationKey {
            query: query.clone(),
            operation: operation.map(str::to_owned),
            variables,
        })
    }

    /// Whether a request with this key passed validation before.
    /// `Some(fields resolved the general way)` if so (see
    /// [`Schemas::for_known`]).
    pub fn passed(&self, key: &ValidationKey) -> Option<u32> {
        self.cache.as_ref()?.get(key)
    }

    /// Records that a request with this key passed validation, and how many
    /// of its fields resolved the general way ([`GeneralFields`]).
    pub fn remember(&self, key: ValidationKey, general_fields: u32) {
        if let Some(cache) = &self.cache {
            cache.insert(key, general_fields);
        }
    }
}

/// The schema three times: validating with every rule, and two ways for a
/// request that passed it all before (see [`ValidationCache`]).
#[derive(Clone)]
pub struct Schemas {
    /// Every validation rule; counts the fields resolved the general way
    /// ([`GeneralFields`]).
    pub strict: BffSchema,
    /// No validation: for known requests with few fields resolved the
    /// general way.
    pub known: BffSchema,
    /// Complexity, depth and fragment cycles only: for known requests
    /// with many fields resolved the general way.
    pub known_general: BffSchema,
}

/// Known requests with at most this many fields resolved the general way
/// skip validation. Every such field costs about 2.5 k instructions more on
/// a schema with an extension (the extension chain, its resolve info);
/// the checks kept on [`Schemas::known_general`] cost about 1.3 k per field
/// of the document. Below this the saving always wins; a card (one general
/// field, about 45 in its document) saves 9 % of its CPU, while a page of
/// 50 product edges (about 150 general fields) would pay 31 % more.
pub const MAX_GENERAL_FIELDS_UNVALIDATED: u32 = 8;

impl Schemas {
    /// The schemas with the configured limits.
    pub fn new(settings: &GraphqlSettings) -> Self {
        Self {
            strict: schema_builder(settings).extension(Counted).finish(),
            known: schema_builder(settings)
                .validation_mode(async_graphql::ValidationMode::Fast)
                .extension(Validated)
                .finish(),
            known_general: schema_builder(settings)
                .validation_mode(async_graphql::ValidationMode::Fast)
                .finish(),
        }
    }

    /// The schema for a request: `passed` is what the validation cache
    /// knows of it.
    pub fn for_request(&self, passed: Option<u32>) -> &BffSchema {
        match passed {
            None => &self.strict,
            Some(general) if general <= MAX_GENERAL_FIELDS_UNVALIDATED => &self.known,
            Some(_) => &self.known_general,
        }
    }
}

/// How many fields (and list items) of one request resolved the general
/// way, through async-graphql's per-field futures (not [`plain`]): counted
/// on the strict schema, put in the request's data by the HTTP handler.
#[derive(Clone, Default)]
pub struct GeneralFields(Arc<std::sync::atomic::AtomicU32>);

impl GeneralFields {
    /// The count so far.
    pub fn get(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The strict schema's extension: counts [`GeneralFields`].
struct Counted;

impl async_graphql::extensions::ExtensionFactory for Counted {
    fn create(&self) -> Arc<dyn async_graphql::extensions::Extension> {
        Arc::new(Counted)
    }
}

#[async_trait::async_trait]
impl async_graphql::extensions::Extension for Counted {
    async fn resolve(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        info: async_graphql::extensions::ResolveInfo<'_>,
        next: async_graphql::extensions::NextResolve<'_>,
    ) -> async_graphql::ServerResult<Option<async_graphql::Value>> {
        if let Some(count) = ctx.data_opt::<GeneralFields>() {
            count.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        next.run(ctx, info).await
    }
}

/// The known-request schema's extension: validation is skipped, since the
/// request passed every rule (limits included) on the strict schema, and
/// validation is a pure function of the request. What it would compute
/// besides errors is the default here: no field of the schema sets a
/// cache control, and complexity and depth are only compared to the
/// limits.
///
/// An extension puts every field resolved the general way through the
/// extension chain (a few hundred instructions each); the card's objects
/// resolve the plain way (see [`plain`]), so a card saves its whole
/// validation for that.
struct Validated;

impl async_graphql::extensions::ExtensionFactory for Validated {
    fn create(&self) -> Arc<dyn async_graphql::extensions::Extension> {
        Arc::new(Validated)
    }
}

#[async_trait::async_trait]
impl async_graphql::extensions::Extension for Validated {
    async fn validation(
        &self,
        _: &async_graphql::extensions::ExtensionContext<'_>,
        _: async_graphql::extensions::NextValidation<'_>,
    ) -> Result<async_graphql::ValidationResult, Vec<ServerError>> {
        Ok(async_graphql::ValidationResult {
            cache_control: async_graphql::CacheControl::default(),
            complexity: 0,
            depth: 0,
        })
    }
}

/// Builds the schema with the configured limits.
pub fn build_schema(settings: &GraphqlSettings) -> BffSchema {
    schema_builder(settings).finish()
}

fn schema_builder(
    settings: &GraphqlSettings,
) -> async_graphql::SchemaBuilder<Query, Mutation, EmptySubscription> {
    let mut builder = Schema::build(Query::default(), Mutation::default(), EmptySubscription)
        // The configured depth applies to the product's fields (checked in
        // `limits::parse`); this is the ceiling for introspection.
        .limit_depth(limits::INTROSPECTION_MAX_DEPTH.max(settings.max_depth))
        .limit_complexity(settings.max_complexity);
    // Unset means "decided by the environment" (`Settings::resolve`);
    // unresolved, the safe choice.
    if settings.introspection != Some(true) {
        builder = builder.disable_introspection();
    }
    builder
}

/// The SDL of the public schema (what `bff schema` prints).
pub fn sdl() -> String {
    build_schema(&GraphqlSettings::default()).sdl()
}

type Loader<T> = DataLoader<T, HashMapCache>;

type SharedFetch<V> = Shared<BoxFuture<'static, Result<V, UpstreamError>>>;

/// Per-request single flight for lookups of one known key: the first
/// caller starts the fetch, every later or concurrent caller of the same
/// key in the request awaits that same fetch (its error included).
///
/// Used instead of a DataLoader where keys are known up front, because a
/// DataLoader batch always waits on a tokio timer first — even with a zero
/// delay, and tokio rounds timer deadlines up to the next millisecond — so
/// on a card's critical path that is up to 1 ms of pure waiting per lookup
/// (see `bff/docs/benchmarks.md`).
struct Memo<K, V> {
    inflight: Mutex<HashMap<K, SharedFetch<V>>>,
}

impl<K: Hash + Eq, V: Clone> Memo<K, V> {
    fn new() -> Self {
        Self {
            inflight: Mutex::new(HashMap::new()),
        }
    }

    async fn get(
        &self,
        key: K,
        fetch: impl FnOnce() -> BoxFuture<'static, Result<V, UpstreamError>>,
    ) -> Result<V, UpstreamError> {
        let shared = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            inflight
                .entry(key)
                .or_insert_with(|| fetch().shared())
                .clone()
        };
        shared.await
    }
}

/// Reference and catalogue data through the two-level cache: built once,
/// shared by every request.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Malls and stores.
    pub malls: Directory,
    /// Products, listings, flash sales.
    pub products: Catalogue,
}

impl Catalog {
    /// The catalog of `upstreams`, cached in `caches`.
    pub fn new(upstreams: &Upstreams, caches: &Caches) -> Self {
        Self {
            malls: Directory::new(upstreams.mall.clone(), caches),
            products: Catalogue::new(upstreams.product.clone(), caches),
        }
    }

    /// The catalog of `upstreams` read fresh every time (no cache).
    pub fn uncached(upstreams: &Upstreams) -> Self {
        // Caching nothing, it counts nothing: one set of handles serves all.
        static OFF: std::sync::LazyLock<Caches> = std::sync::LazyLock::new(|| {
            let off = CacheSettings {
                mall_ttl_secs: 0,
                store_ttl_secs: 0,
                product_ttl_secs: 0,
                listing_ttl_secs: 0,
                flash_sale_ttl_secs: 0,
                ..CacheSettings::default()
            };
            Caches::local(&off, crate::metrics::Metrics::new())
        });
        Self::new(upstreams, &OFF)
    }
}

/// The lookups of one request: DataLoaders that batch and de-duplicate
/// per-item lookups, and single-flight memos for known keys. All of it
/// lives for one request only, so one member never sees another's data.
pub struct Loaders {
    /// Malls by id (batched).
    pub malls: Loader<MallLoader>,
    /// Stores by id (batched).
    pub stores: Loader<StoreLoader>,
    /// Stores of a mall (batched).
    pub stores_by_mall: Loader<StoresByMallLoader>,
    /// Products by id (batched).
    pub products: Loader<ProductLoader>,
    /// Cached reference and catalogue data.
    pub catalog: Catalog,
    /// The records this request was served stale.
    pub stale: StaleLog,
    upstreams: Arc<Upstreams>,
    tenant: TenantId,
    mall: Memo<MallId, Option<Mall>>,
    member: Memo<MemberId, MemberRecord>,
    coupons: Memo<MemberId, Option<Vec<Coupon>>>,
    /// Set when priming the stores of a list failed: the list's per-item
    /// `store` fields then report that failure at once instead of each
    /// asking the failing service again.
    store_failure: OnceLock<UpstreamError>,
    /// The stores of listed products, fetched in one call: each product's
    /// `store` field reads here before going through the loader.
    primed_stores: Mutex<HashMap<StoreId, Store>>,
}

impl Loaders {
    /// Fresh lookups for one request of `principal`'s tenant, reading
    /// every upstream afresh (no shared cache: what a checkout uses).
    pub fn new(upstreams: &Arc<Upstreams>, principal: &Principal, delay: Duration) -> Self {
        Self::with_catalog(
            upstreams,
            Catalog::uncached(upstreams),
            StaleLog::default(),
            principal,
            delay,
        )
    }

    /// Lookups for one request of `principal`'s tenant, with reference and
    /// catalogue data from `catalog`; records served stale are logged in
    /// `stale`.
    pub fn with_catalog(
        upstreams: &Arc<Upstreams>,
        catalog: Catalog,
        stale: StaleLog,
        principal: &Principal,
        delay: Duration,
    ) -> Self {
        let tenant = principal.tenant().clone();
        // Batches run in tasks of their own: they carry the request's
        // deadline over, so no batch outlives the request.
        let deadline = crate::upstream::resilience::deadline();
        macro_rules! batched {
            ($loader:expr) => {
                DataLoader::with_cache(
                    $loader,
                    move |batch| crate::upstream::resilience::spawn_within(deadline, batch),
                    HashMapCache::default(),
                )
                .delay(delay)
                .max_batch_size(MAX_BATCH)
            };
        }
        Self {
            malls: batched!(MallLoader {
                directory: catalog.malls.clone(),
                tenant: tenant.clone(),
                stale: stale.clone(),
            }),
            stores: batched!(StoreLoader {
                directory: catalog.malls.clone(),
                tenant: tenant.clone(),
                stale: stale.clone(),
            }),
            stores_by_mall: batched!(StoresByMallLoader {
                client: upstreams.mall.clone(),
                tenant: tenant.clone(),
            }),
            products: batched!(ProductLoader {
                client: upstreams.product.clone(),
                tenant: tenant.clone(),
            }),
            catalog,
            stale,
            upstreams: Arc::clone(upstreams),
            tenant,
            mall: Memo::new(),
            member: Memo::new(),
            coupons: Memo::new(),
            store_failure: OnceLock::new(),
            primed_stores: Mutex::new(HashMap::new()),
        }
    }

    /// When the client selected the stores of listed products, fetches
    /// all those stores in one call now, so per-item `store` lookups hit
    /// the cache instead of depending on batching timing. (Listed products
    /// are not fed to the product loader: they are display data from the
    /// catalogue cache, and what reads that loader — quotes — prices from
    /// the product service itself.)
    pub async fn prime_stores(&self, products: &[&Product], with_stores: bool) {
        if with_stores {
            let mut ids: Vec<StoreId> = products.iter().map(|p| p.store_id.clone()).collect();
            ids.sort_unstable();
            ids.dedup();
            match self
                .catalog
                .malls
                .stores(&self.tenant, &ids, &self.stale)
                .await
            {
                Ok(stores) => {
                    let mut primed = self.primed_stores.lock().unwrap_or_else(|e| e.into_inner());
                    if primed.is_empty() {
                        *primed = stores;
                    } else {
                        primed.extend(stores);
                    }
                }
                Err(err) => {
                    let _ = self.store_failure.set(err);
                }
            }
        }
    }

    /// A store, from the primed stores or a batched lookup.
    pub async fn store(&self, id: StoreId) -> Result<Option<Store>, UpstreamError> {
        if let Some(err) = self.store_failure.get() {
            return Err(err.clone());
        }
        let primed = self
            .primed_stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        if let Some(store) = primed {
            return Ok(Some(store));
        }
        self.stores.load_one(id).await
    }

    /// `answer` applied to a store primed for this request (`None` when
    /// it is not among them, or the lookup failed: the `store` field then
    /// loads it or reports the failure).
    pub fn with_primed_store<R>(
        &self,
        id: &StoreId,
        answer: impl FnOnce(&Store) -> R,
    ) -> Option<R> {
        if self.store_failure.get().is_some() {
            return None;
        }
        self.primed_stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(answer)
    }

    /// A mall, fetched at once (single flight per request).
    pub async fn mall_now(&self, id: &MallId) -> Result<Option<Mall>, UpstreamError> {
        let (directory, tenant, key, stale) = (
            self.catalog.malls.clone(),
            self.tenant.clone(),
            id.clone(),
            self.stale.clone(),
        );
        self.mall
            .get(id.clone(), move || {
                async move {
                    Ok(directory
                        .malls(&tenant, std::slice::from_ref(&key), &stale)
                        .await?
                        .remove(&key))
                }
                .boxed()
            })
            .await
    }

    /// A member, fetched at once (single flight per request).
    pub async fn member_now(&self, id: &MemberId) -> Result<Option<Member>, UpstreamError> {
        let (client, tenant, key) = (
            self.upstreams.member.clone(),
            self.tenant.clone(),
            id.clone(),
        );
        let record = self
            .member
            .get(id.clone(), move || {
                async move {
                    let member = client
                        .members_by_ids(&tenant, std::slice::from_ref(&key))
                        .await?
                        .remove(&key);
                    Ok(MemberRecord {
                        member,
                        coupons: None,
                    })
                }
                .boxed()
            })
            .await?;
        Ok(record.member)
    }

    /// A member and their coupons (single flight per request, shared with
    /// [`Loaders::member_now`] and [`Loaders::coupons_now`]): one call when
    /// the tenant's member service embeds coupons in the member record,
    /// else both endpoints at once.
    pub async fn member_and_coupons_now(
        &self,
        id: &MemberId,
    ) -> (
        Result<Option<Member>, UpstreamError>,
        Result<Option<Vec<Coupon>>, UpstreamError>,
    ) {
        if !self.upstreams.member.embeds_coupons(&self.tenant) {
            return futures::join!(self.member_now(id), self.coupons_now(id));
        }
        let (client, tenant, key) = (
            self.upstreams.member.clone(),
            self.tenant.clone(),
            id.clone(),
        );
        let record = self
            .member
            .get(id.clone(), move || {
                async move { client.member_with_coupons(&tenant, &key).await }.boxed()
            })
            .await;
        let record = match record {
            Ok(record) => record,
            // One service, one failure: the coupons were in that call.
            Err(err) => return (Err(err.clone()), Err(err)),
        };
        let coupons = match record.coupons {
            Some(coupons) => {
                self.coupons
                    .get(id.clone(), move || {
                        futures::future::ready(Ok(coupons)).boxed()
                    })
                    .await
            }
            // The member came without them (another field fetched it first,
            // or the service does not embed them).
            None => self.coupons_now(id).await,
        };
        (Ok(record.member), coupons)
    }

    /// A member's coupons, fetched at once (single flight per request).
    pub async fn coupons_now(&self, id: &MemberId) -> Result<Option<Vec<Coupon>>, UpstreamError> {
        let (client, tenant, key) = (
            self.upstreams.member.clone(),
            self.tenant.clone(),
            id.clone(),
        );
        self.coupons
            .get(id.clone(), move || {
                async move { client.coupons(&tenant, &key).await }.boxed()
            })
            .await
    }
}

/// Everything a resolver needs to know about the request it serves.
pub struct RequestContext {
    /// Who is asking (and so which tenant).
    pub principal: Principal,
    /// The request's DataLoaders.
    pub loaders: Loaders,
    /// The upstream clients.
    pub upstreams: Arc<Upstreams>,
    /// The promotion engine.
    pub pricing: crate::pricing::Pricing,
    /// Where the client shops (`X-Channel` header; default the app): the
    /// channel of catalogue prices and the default of quotes.
    pub channel: crate::pricing::model::Channel,
    /// Prices computed during this request, and the rule snapshot they were
    /// computed with.
    pub prices: crate::product::PriceBook,
    /// The `Idempotency-Key` header, if sent.
    pub idempotency_key: Option<String>,
    /// The checkout service (absent where nothing checks out).
    pub checkout: Option<crate::checkout::Checkout>,
}

/// The request context of a resolver. Always present for requests served
/// over HTTP; a missing one is a wiring bug reported as an internal error.
pub fn request<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a RequestContext> {
    ctx.data::<RequestContext>().map_err(|_| {
        tracing::error!("request context missing");
        async_graphql::Error::new("internal error")
            .extend_with(|_, ext| ext.set("code", code::INTERNAL_SERVER_ERROR))
    })
}
