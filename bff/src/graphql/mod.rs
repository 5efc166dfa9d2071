//! Schema assembly and the per-request context.
//!
//! Schema-wide handles (upstream clients) are built once; per-request
//! facts (who is asking, the request's DataLoaders) travel in
//! [`RequestContext`], inserted into each request's data by the HTTP
//! handler.

pub mod http;
pub mod limits;

use std::sync::Arc;
use std::time::Duration;

use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{Context, EmptyMutation, EmptySubscription, MergedObject, Schema, ServerError};

use crate::auth::Principal;
use crate::config::GraphqlSettings;
use async_graphql::ErrorExtensions;

use crate::domain::{MallId, MemberId, StoreId};
use crate::error::code;
use crate::home::HomeQuery;
use crate::mall::{Mall, MallLoader, MallQuery, StoreLoader, StoresByMallLoader};
use crate::member::{Coupon, CouponsLoader, Member, MemberLoader, MemberQuery};
use crate::product::{Product, ProductLoader, ProductQuery};
use crate::upstream::{MAX_BATCH, UpstreamError, Upstreams};

/// The root query: each capability contributes its own fields.
#[derive(MergedObject, Default)]
pub struct Query(MallQuery, MemberQuery, ProductQuery, HomeQuery);

/// The BFF's GraphQL schema.
pub type BffSchema = Schema<Query, EmptyMutation, EmptySubscription>;

/// Parsed documents by query text. Client apps send the same few queries
/// over and over, and parsing is a large share of a small query's CPU.
/// Only documents that passed the document-level limits are kept, so a hit
/// needs no re-check; validation still runs on every request.
#[derive(Clone)]
pub struct DocumentCache {
    cache: Option<moka::sync::Cache<Arc<str>, Arc<ExecutableDocument>>>,
    max_aliases: usize,
}

impl DocumentCache {
    /// A cache holding up to `bytes` of query text (0: parse every time).
    pub fn new(bytes: u64, max_aliases: usize) -> Self {
        let cache = (bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|query: &Arc<str>, _doc| u32::try_from(query.len()).unwrap_or(u32::MAX))
                .build()
        });
        Self { cache, max_aliases }
    }

    /// Gives `request` its parsed document (cached, or parsed and checked
    /// now). A document that does not parse or breaks a limit is refused
    /// with a coded error and never cached.
    pub fn prepare(&self, request: &mut async_graphql::Request) -> Result<(), ServerError> {
        if let Some(doc) = self
            .cache
            .as_ref()
            .and_then(|c| c.get(request.query.as_str()))
        {
            request.set_parsed_query((*doc).clone());
            return Ok(());
        }
        let doc = limits::parse(&request.query, self.max_aliases)?;
        if let Some(cache) = &self.cache {
            cache.insert(Arc::from(request.query.as_str()), Arc::new(doc.clone()));
        }
        request.set_parsed_query(doc);
        Ok(())
    }
}

/// Builds the schema with the configured limits.
pub fn build_schema(settings: &GraphqlSettings) -> BffSchema {
    let mut builder = Schema::build(Query::default(), EmptyMutation, EmptySubscription)
        .limit_depth(settings.max_depth)
        .limit_complexity(settings.max_complexity);
    if !settings.introspection {
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// The SDL of the public schema (what `bff schema` prints).
pub fn sdl() -> String {
    build_schema(&GraphqlSettings::default()).sdl()
}

type Loader<T> = DataLoader<T, HashMapCache>;

/// The DataLoaders of one request. Each batches and de-duplicates the
/// lookups of that request only, so one member never sees another's
/// cached data.
pub struct Loaders {
    /// Malls by id.
    pub malls: Loader<MallLoader>,
    /// Stores by id.
    pub stores: Loader<StoreLoader>,
    /// Stores of a mall.
    pub stores_by_mall: Loader<StoresByMallLoader>,
    /// Members by id.
    pub members: Loader<MemberLoader>,
    /// A member's coupons.
    pub coupons: Loader<CouponsLoader>,
    /// Products by id.
    pub products: Loader<ProductLoader>,
}

impl Loaders {
    /// Fresh loaders for one request of `principal`'s tenant.
    pub fn new(upstreams: &Upstreams, principal: &Principal, delay: Duration) -> Self {
        let tenant = principal.tenant().clone();
        macro_rules! new_loader {
            ($loader:ident, $client:ident) => {
                DataLoader::with_cache(
                    $loader {
                        client: upstreams.$client.clone(),
                        tenant: tenant.clone(),
                    },
                    tokio::spawn,
                    HashMapCache::default(),
                )
                .delay(delay)
                .max_batch_size(MAX_BATCH)
            };
        }
        Self {
            malls: new_loader!(MallLoader, mall),
            stores: new_loader!(StoreLoader, mall),
            stores_by_mall: new_loader!(StoresByMallLoader, mall),
            members: new_loader!(MemberLoader, member),
            coupons: new_loader!(CouponsLoader, member),
            products: new_loader!(ProductLoader, product),
        }
    }

    /// Feeds products fetched by a list call into the product cache and,
    /// when the client selected their stores, fetches all those stores in
    /// one call now, so per-item `store` lookups hit the cache instead of
    /// depending on batching timing. A failure here is not reported: the
    /// per-item lookups retry (in one batch) and report it on their fields.
    pub async fn prime(&self, products: &[&Product], with_stores: bool) {
        self.products
            .feed_many(products.iter().map(|p| (p.id.clone(), (*p).clone())))
            .await;
        if with_stores {
            let mut ids: Vec<StoreId> = products.iter().map(|p| p.store_id.clone()).collect();
            ids.sort_unstable();
            ids.dedup();
            let loader = self.stores.loader();
            if let Ok(stores) = loader.client.stores_by_ids(&loader.tenant, &ids).await {
                self.stores.feed_many(stores).await;
            }
        }
    }

    // The `*_now` lookups below fetch one known key directly and feed the
    // request's loader cache. They exist because a DataLoader batch always
    // waits on a tokio timer first, even with a zero delay, and tokio
    // rounds timer deadlines up to the next millisecond: on a card's
    // critical path, where the keys are known up front, that is up to 1 ms
    // of pure waiting per lookup (see `bff/docs/benchmarks.md`).

    /// A mall, now (cached per request for later lookups).
    pub async fn mall_now(&self, id: &MallId) -> Result<Option<Mall>, UpstreamError> {
        let loader = self.malls.loader();
        let mall = loader
            .client
            .malls_by_ids(&loader.tenant, std::slice::from_ref(id))
            .await?
            .remove(id);
        if let Some(mall) = &mall {
            self.malls.feed_one(id.clone(), mall.clone()).await;
        }
        Ok(mall)
    }

    /// A member, now (cached per request for later lookups).
    pub async fn member_now(&self, id: &MemberId) -> Result<Option<Member>, UpstreamError> {
        let loader = self.members.loader();
        let member = loader
            .client
            .members_by_ids(&loader.tenant, std::slice::from_ref(id))
            .await?
            .remove(id);
        if let Some(member) = &member {
            self.members.feed_one(id.clone(), member.clone()).await;
        }
        Ok(member)
    }

    /// A member's coupons, now (cached per request for later lookups).
    pub async fn coupons_now(&self, id: &MemberId) -> Result<Option<Vec<Coupon>>, UpstreamError> {
        let loader = self.coupons.loader();
        let coupons = loader.client.coupons(&loader.tenant, id).await?;
        if let Some(coupons) = &coupons {
            self.coupons.feed_one(id.clone(), coupons.clone()).await;
        }
        Ok(coupons)
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
