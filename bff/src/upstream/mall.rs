//! Client of the mall service.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use moka::sync::Cache;
use serde::Deserialize;

use super::{Endpoint, Items, UpstreamError, keep_valid};
use crate::config::CacheSettings;
use crate::domain::{MallId, StoreId, TenantId};
use crate::mall::{Mall, Store};

/// The mall service's mall record.
#[derive(Deserialize)]
struct MallDto {
    mall_id: String,
    mall_name: String,
    city: String,
    address: String,
    open_time: String,
    close_time: String,
    floor_count: u32,
}

/// The mall service's store record.
#[derive(Deserialize)]
struct StoreDto {
    store_id: String,
    mall_id: String,
    store_name: String,
    floor: String,
    category: String,
}

impl MallDto {
    fn into_domain(self) -> Option<Mall> {
        Some(Mall {
            id: MallId::parse(self.mall_id).ok()?,
            name: self.mall_name,
            city: self.city,
            address: self.address,
            opens: self.open_time,
            closes: self.close_time,
            floor_count: self.floor_count,
        })
    }
}

impl StoreDto {
    fn into_domain(self) -> Option<Store> {
        Some(Store {
            id: StoreId::parse(self.store_id).ok()?,
            mall_id: MallId::parse(self.mall_id).ok()?,
            name: self.store_name,
            floor: self.floor,
            category: self.category,
        })
    }
}

/// Malls and stores, with a short-lived in-process cache of both (they
/// are reference data; see [`CacheSettings`]).
#[derive(Debug, Clone)]
pub struct MallClient {
    endpoint: Endpoint,
    malls: Option<Cache<(TenantId, MallId), Mall>>,
    stores: Option<Cache<(TenantId, StoreId), Store>>,
}

fn cache<K, V>(settings: &CacheSettings) -> Option<Cache<K, V>>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    (settings.reference_ttl_secs > 0).then(|| {
        Cache::builder()
            .max_capacity(settings.max_entries)
            .time_to_live(Duration::from_secs(settings.reference_ttl_secs))
            .build()
    })
}

/// Looks `ids` up in `cache` (keyed by tenant), fetches the misses with
/// `fetch` in one call, and caches what came back.
async fn cached<K, V, F, Fut>(
    cache: &Option<Cache<(TenantId, K), V>>,
    tenant: &TenantId,
    ids: &[K],
    fetch: F,
) -> Result<HashMap<K, V>, UpstreamError>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    F: FnOnce(Vec<K>) -> Fut,
    Fut: Future<Output = Result<HashMap<K, V>, UpstreamError>>,
{
    let Some(cache) = cache else {
        return fetch(ids.to_vec()).await;
    };
    let mut found = HashMap::with_capacity(ids.len());
    let mut missing = Vec::new();
    for id in ids {
        match cache.get(&(tenant.clone(), id.clone())) {
            Some(value) => {
                found.insert(id.clone(), value);
            }
            None => missing.push(id.clone()),
        }
    }
    if !missing.is_empty() {
        for (id, value) in fetch(missing).await? {
            cache.insert((tenant.clone(), id.clone()), value.clone());
            found.insert(id, value);
        }
    }
    Ok(found)
}

impl MallClient {
    pub(super) fn new(endpoint: Endpoint, settings: &CacheSettings) -> Self {
        Self {
            endpoint,
            malls: cache(settings),
            stores: cache(settings),
        }
    }

    /// Whether the service answers its health check.
    pub async fn health(&self) -> Result<(), UpstreamError> {
        self.endpoint.health().await
    }

    /// Every mall of the tenant.
    pub async fn all_malls(&self, tenant: &TenantId) -> Result<Vec<Mall>, UpstreamError> {
        let path = ["tenants", tenant.as_str(), "malls"];
        let items: Option<Items<MallDto>> = self.endpoint.get("malls.list", &path, &[]).await?;
        let items = items.map(|i| i.items).unwrap_or_default();
        Ok(keep_valid("mall", items, MallDto::into_domain))
    }

    /// Malls by id (cached); unknown ids are absent from the map.
    pub async fn malls_by_ids(
        &self,
        tenant: &TenantId,
        ids: &[MallId],
    ) -> Result<HashMap<MallId, Mall>, UpstreamError> {
        cached(&self.malls, tenant, ids, |missing| {
            self.fetch_malls(tenant, missing)
        })
        .await
    }

    async fn fetch_malls(
        &self,
        tenant: &TenantId,
        ids: Vec<MallId>,
    ) -> Result<HashMap<MallId, Mall>, UpstreamError> {
        let path = ["tenants", tenant.as_str(), "malls"];
        let ids: Vec<&str> = ids.iter().map(MallId::as_str).collect();
        let items = self
            .endpoint
            .get_batch("malls.batch", &path, "ids", &ids)
            .await?;
        Ok(keep_valid("mall", items, MallDto::into_domain)
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect())
    }

    /// Stores by id (cached); unknown ids are absent from the map.
    pub async fn stores_by_ids(
        &self,
        tenant: &TenantId,
        ids: &[StoreId],
    ) -> Result<HashMap<StoreId, Store>, UpstreamError> {
        cached(&self.stores, tenant, ids, |missing| {
            self.fetch_stores(tenant, missing)
        })
        .await
    }

    async fn fetch_stores(
        &self,
        tenant: &TenantId,
        ids: Vec<StoreId>,
    ) -> Result<HashMap<StoreId, Store>, UpstreamError> {
        let path = ["tenants", tenant.as_str(), "stores"];
        let ids: Vec<&str> = ids.iter().map(StoreId::as_str).collect();
        let items = self
            .endpoint
            .get_batch("stores.batch", &path, "ids", &ids)
            .await?;
        Ok(keep_valid("mall", items, StoreDto::into_domain)
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect())
    }

    /// Every store of the given malls.
    pub async fn stores_by_malls(
        &self,
        tenant: &TenantId,
        malls: &[MallId],
    ) -> Result<Vec<Store>, UpstreamError> {
        let path = ["tenants", tenant.as_str(), "stores"];
        let ids: Vec<&str> = malls.iter().map(MallId::as_str).collect();
        let items = self
            .endpoint
            .get_batch("stores.by_mall", &path, "mall_ids", &ids)
            .await?;
        Ok(keep_valid("mall", items, StoreDto::into_domain))
    }
}
