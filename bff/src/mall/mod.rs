//! Malls and their stores: types, queries and loaders.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use async_graphql::{Context, ID, Object, Result};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

use crate::cache::{Caches, Fetch, Kind, StaleLog, Tier};
use crate::domain::{MallId, StoreId, TenantId};
use crate::error::ApiError;
use crate::graphql::request;
use crate::upstream::{MallClient, UpstreamError};

/// A mall of the tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mall {
    /// Id.
    pub id: MallId,
    /// Display name.
    pub name: String,
    /// City.
    pub city: String,
    /// Street address.
    pub address: String,
    /// Opening time, local, `HH:MM`.
    pub opens: String,
    /// Closing time, local, `HH:MM`.
    pub closes: String,
    /// Number of floors.
    pub floor_count: u32,
}

/// A store inside a mall.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Store {
    /// Id.
    pub id: StoreId,
    /// The mall the store is in.
    pub mall_id: MallId,
    /// Display name.
    pub name: String,
    /// Floor label, e.g. `L3`.
    pub floor: String,
    /// Category, e.g. `food`, `fashion`.
    pub category: String,
}

/// Malls and stores through the two-level cache (reference data: they
/// change rarely, and caching them takes them off a card's critical path).
#[derive(Debug, Clone)]
pub struct Directory {
    client: MallClient,
    malls: Tier<Mall>,
    stores: Tier<Store>,
}

impl Directory {
    /// Malls and stores of `client`, cached in `caches`.
    pub fn new(client: MallClient, caches: &Caches) -> Self {
        Self {
            client,
            malls: caches.tier(Kind::Mall),
            stores: caches.tier(Kind::Store),
        }
    }

    /// The uncached client.
    pub fn client(&self) -> &MallClient {
        &self.client
    }

    /// Malls by id; unknown ids are absent. Records served stale (the
    /// mall service failing) are logged in `stale`.
    pub async fn malls(
        &self,
        tenant: &TenantId,
        ids: &[MallId],
        stale: &StaleLog,
    ) -> Result<HashMap<MallId, Mall>, UpstreamError> {
        let (client, owner) = (self.client.clone(), tenant.clone());
        let fetch: Fetch<Mall> = Arc::new(move |ids: Vec<String>| {
            let (client, tenant) = (client.clone(), owner.clone());
            async move {
                let ids: Vec<MallId> = ids
                    .into_iter()
                    .filter_map(|i| MallId::parse(i).ok())
                    .collect();
                let found = client.malls_by_ids(&tenant, &ids).await?;
                Ok(found
                    .into_iter()
                    .map(|(id, m)| (id.to_string(), m))
                    .collect())
            }
            .boxed()
        });
        let keys: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        let found = self.malls.get_many(tenant, &keys, stale, fetch).await?;
        Ok(found.into_values().map(|m| (m.id.clone(), m)).collect())
    }

    /// Stores by id; unknown ids are absent. Records served stale are
    /// logged in `stale`.
    pub async fn stores(
        &self,
        tenant: &TenantId,
        ids: &[StoreId],
        stale: &StaleLog,
    ) -> Result<HashMap<StoreId, Store>, UpstreamError> {
        let (client, owner) = (self.client.clone(), tenant.clone());
        let fetch: Fetch<Store> = Arc::new(move |ids: Vec<String>| {
            let (client, tenant) = (client.clone(), owner.clone());
            async move {
                let ids: Vec<StoreId> = ids
                    .into_iter()
                    .filter_map(|i| StoreId::parse(i).ok())
                    .collect();
                let found = client.stores_by_ids(&tenant, &ids).await?;
                Ok(found
                    .into_iter()
                    .map(|(id, s)| (id.to_string(), s))
                    .collect())
            }
            .boxed()
        });
        let keys: Vec<String> = ids.iter().map(|i| i.as_str().to_owned()).collect();
        let found = self.stores.get_many(tenant, &keys, stale, fetch).await?;
        Ok(found.into_values().map(|s| (s.id.clone(), s)).collect())
    }
}

/// A shopping mall: where it is, when it is open, its stores.
#[Object]
impl Mall {
    /// The mall's id.
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    /// Display name.
    async fn name(&self) -> &str {
        &self.name
    }
    /// City the mall is in.
    async fn city(&self) -> &str {
        &self.city
    }
    /// Street address.
    async fn address(&self) -> &str {
        &self.address
    }
    /// Today's opening hours, in the mall's local time.
    async fn opening_hours(&self) -> OpeningHours {
        OpeningHours {
            opens: self.opens.clone(),
            closes: self.closes.clone(),
        }
    }
    /// Number of floors.
    async fn floor_count(&self) -> u32 {
        self.floor_count
    }
    /// The mall's stores. Null when the mall service cannot be reached.
    async fn stores(&self, ctx: &Context<'_>) -> Result<Option<Vec<Store>>> {
        let loaders = &request(ctx)?.loaders;
        let stores = loaders
            .stores_by_mall
            .load_one(self.id.clone())
            .await
            .map_err(ApiError::from)?;
        Ok(Some(stores.unwrap_or_default()))
    }
}

/// Opening hours of a day.
#[derive(Debug, Clone, async_graphql::SimpleObject)]
pub struct OpeningHours {
    /// Opening time, `HH:MM`.
    pub opens: String,
    /// Closing time, `HH:MM`.
    pub closes: String,
}

/// A store (shop, restaurant) inside a mall.
#[Object]
impl Store {
    /// The store's id.
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    /// Id of the mall the store is in.
    async fn mall_id(&self) -> ID {
        ID(self.mall_id.to_string())
    }
    /// Display name.
    async fn name(&self) -> &str {
        &self.name
    }
    /// Floor label, e.g. `L3`.
    async fn floor(&self) -> &str {
        &self.floor
    }
    /// Category, e.g. `food`, `fashion`.
    async fn category(&self) -> &str {
        &self.category
    }
}

impl crate::graphql::plain::PlainFields for Mall {
    const TYPE_NAME: &'static str = "Mall";

    fn plain_field(
        &self,
        ctx: &async_graphql::ContextSelectionSet<'_>,
        field: &async_graphql::parser::types::Field,
    ) -> Option<async_graphql::Value> {
        use crate::graphql::plain::{plain_object, string};
        match field.name.node.as_str() {
            "id" => string(self.id.as_str()),
            "name" => string(&self.name),
            "city" => string(&self.city),
            "address" => string(&self.address),
            "openingHours" => plain_object(
                &OpeningHours {
                    opens: self.opens.clone(),
                    closes: self.closes.clone(),
                },
                ctx,
                &field.selection_set.node,
            ),
            "floorCount" => Some(async_graphql::Value::from(self.floor_count)),
            // `stores` may call the mall service.
            _ => None,
        }
    }
}

impl crate::graphql::plain::PlainFields for OpeningHours {
    const TYPE_NAME: &'static str = "OpeningHours";

    fn plain_field(
        &self,
        _: &async_graphql::ContextSelectionSet<'_>,
        field: &async_graphql::parser::types::Field,
    ) -> Option<async_graphql::Value> {
        use crate::graphql::plain::string;
        match field.name.node.as_str() {
            "opens" => string(&self.opens),
            "closes" => string(&self.closes),
            _ => None,
        }
    }
}

impl crate::graphql::plain::PlainFields for Store {
    const TYPE_NAME: &'static str = "Store";

    fn plain_field(
        &self,
        _: &async_graphql::ContextSelectionSet<'_>,
        field: &async_graphql::parser::types::Field,
    ) -> Option<async_graphql::Value> {
        use crate::graphql::plain::string;
        match field.name.node.as_str() {
            "id" => string(self.id.as_str()),
            "mallId" => string(self.mall_id.as_str()),
            "name" => string(&self.name),
            "floor" => string(&self.floor),
            "category" => string(&self.category),
            _ => None,
        }
    }
}

/// Mall queries.
#[derive(Default)]
pub struct MallQuery;

#[Object]
impl MallQuery {
    /// Every mall of the tenant.
    async fn malls(&self, ctx: &Context<'_>) -> Result<Vec<Mall>> {
        let req = request(ctx)?;
        let malls = req
            .upstreams
            .mall
            .all_malls(req.principal.tenant())
            .await
            .map_err(ApiError::from)?;
        // Later `mall(id:)` or card lookups in the same request reuse them.
        req.loaders
            .malls
            .feed_many(malls.iter().map(|m| (m.id.clone(), m.clone())))
            .await;
        // Every mall's stores in one call, rather than one per mall or
        // whatever a batching window happens to catch.
        if ctx.look_ahead().field("stores").exists() {
            let _ = req
                .loaders
                .stores_by_mall
                .load_many(malls.iter().map(|m| m.id.clone()))
                .await;
        }
        Ok(malls)
    }

    /// One mall by id; null if the tenant has no such mall.
    async fn mall(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The mall's id, e.g. `mall-1`.")] id: ID,
    ) -> Result<Option<Mall>> {
        let id = MallId::parse(id.0).map_err(ApiError::from)?;
        let mall = request(ctx)?
            .loaders
            .malls
            .load_one(id)
            .await
            .map_err(ApiError::from)?;
        Ok(mall)
    }
}

/// Batches mall lookups of one request.
pub struct MallLoader {
    /// Malls, cached.
    pub directory: Directory,
    /// Tenant of the request.
    pub tenant: TenantId,
    /// Where the request's stale records are logged.
    pub stale: StaleLog,
}

impl Loader<MallId> for MallLoader {
    type Value = Mall;
    type Error = UpstreamError;

    async fn load(&self, keys: &[MallId]) -> Result<HashMap<MallId, Mall>, UpstreamError> {
        self.directory.malls(&self.tenant, keys, &self.stale).await
    }
}

/// Batches store lookups of one request.
pub struct StoreLoader {
    /// Stores, cached.
    pub directory: Directory,
    /// Tenant of the request.
    pub tenant: TenantId,
    /// Where the request's stale records are logged.
    pub stale: StaleLog,
}

impl Loader<StoreId> for StoreLoader {
    type Value = Store;
    type Error = UpstreamError;

    async fn load(&self, keys: &[StoreId]) -> Result<HashMap<StoreId, Store>, UpstreamError> {
        self.directory.stores(&self.tenant, keys, &self.stale).await
    }
}

/// Batches "stores of a mall" lookups of one request.
pub struct StoresByMallLoader {
    /// Client.
    pub client: MallClient,
    /// Tenant of the request.
    pub tenant: TenantId,
}

impl Loader<MallId> for StoresByMallLoader {
    type Value = Vec<Store>;
    type Error = UpstreamError;

    async fn load(&self, keys: &[MallId]) -> Result<HashMap<MallId, Vec<Store>>, UpstreamError> {
        let stores = self.client.stores_by_malls(&self.tenant, keys).await?;
        let mut by_mall: HashMap<MallId, Vec<Store>> = HashMap::new();
        for store in stores {
            by_mall
                .entry(store.mall_id.clone())
                .or_default()
                .push(store);
        }
        Ok(by_mall)
    }
}
