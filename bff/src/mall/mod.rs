//! Malls and their stores: types, queries and loaders.

use std::collections::HashMap;

use async_graphql::dataloader::Loader;
use async_graphql::{Context, ID, Object, Result};

use crate::domain::{MallId, StoreId, TenantId};
use crate::error::ApiError;
use crate::graphql::request;
use crate::upstream::{MallClient, UpstreamError};

/// A mall of the tenant.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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
    /// Client.
    pub client: MallClient,
    /// Tenant of the request.
    pub tenant: TenantId,
}

impl Loader<MallId> for MallLoader {
    type Value = Mall;
    type Error = UpstreamError;

    async fn load(&self, keys: &[MallId]) -> Result<HashMap<MallId, Mall>, UpstreamError> {
        self.client.malls_by_ids(&self.tenant, keys).await
    }
}

/// Batches store lookups of one request.
pub struct StoreLoader {
    /// Client.
    pub client: MallClient,
    /// Tenant of the request.
    pub tenant: TenantId,
}

impl Loader<StoreId> for StoreLoader {
    type Value = Store;
    type Error = UpstreamError;

    async fn load(&self, keys: &[StoreId]) -> Result<HashMap<StoreId, Store>, UpstreamError> {
        self.client.stores_by_ids(&self.tenant, keys).await
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
