//! Client of the mall service.

use std::collections::HashMap;

use serde::Deserialize;

use super::{Endpoint, Items, UpstreamError, keep_valid};
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

/// Malls and stores. Uncached: [`crate::mall::Directory`] caches them.
#[derive(Debug, Clone)]
pub struct MallClient {
    endpoint: Endpoint,
}

impl MallClient {
    pub(super) fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
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

    /// Malls by id; unknown ids are absent from the map.
    pub async fn malls_by_ids(
        &self,
        tenant: &TenantId,
        ids: &[MallId],
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

    /// Stores by id; unknown ids are absent from the map.
    pub async fn stores_by_ids(
        &self,
        tenant: &TenantId,
        ids: &[StoreId],
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
