//! The catalogue through the two-level cache: product details, a mall's
//! recommended listing (the home card's first page) and its flash-sale
//! list, and the pre-warm that loads flash sales before they open.

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;

use super::Product;
use crate::cache::{Caches, Fetch, Kind, StaleLog, Tier};
use crate::domain::{MallId, ProductId, TenantId};
use crate::upstream::{MallClient, ProductClient, UpstreamError};

/// How many recommended products a card shows (the cached listing head).
pub const RECOMMENDED: usize = 10;

/// Products, listings and flash sales, cached.
#[derive(Debug, Clone)]
pub struct Catalogue {
    client: ProductClient,
    products: Tier<Product>,
    /// `None`: the mall does not exist (cached too).
    listings: Tier<Option<Vec<Product>>>,
    flash_sales: Tier<Option<Vec<Product>>>,
    /// Tenants whose flash sales were asked for lately: the pre-warm keeps
    /// their sales warm too, not only the configured tenants'.
    recent_tenants: moka::sync::Cache<TenantId, ()>,
}

/// Tenants remembered for the pre-warm, and for how long after their last
/// flash-sale read.
const RECENT_TENANTS: u64 = 10_000;
const RECENT_TENANT_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

impl Catalogue {
    /// The catalogue of `client`, cached in `caches`.
    pub fn new(client: ProductClient, caches: &Caches) -> Self {
        Self {
            client,
            products: caches.tier(Kind::Product),
            listings: caches.tier(Kind::Listing),
            flash_sales: caches.tier(Kind::FlashSale),
            recent_tenants: moka::sync::Cache::builder()
                .max_capacity(RECENT_TENANTS)
                .time_to_idle(RECENT_TENANT_IDLE)
                .build(),
        }
    }

    /// The uncached client.
    pub fn client(&self) -> &ProductClient {
        &self.client
    }

    /// Product details by id; unknown ids are absent. Catalogue display
    /// only: a checkout reads the product service itself.
    pub async fn products(
        &self,
        tenant: &TenantId,
        ids: &[ProductId],
        stale: &StaleLog,
    ) -> Result<HashMap<ProductId, Product>, UpstreamError> {
        let (client, owner) = (self.client.clone(), tenant.clone());
        let fetch: Fetch<Product> = Arc::new(move |ids: Vec<String>| {
            let (client, tenant) = (client.clone(), owner.clone());
            async move {
                let ids: Vec<ProductId> = ids
                    .into_iter()
                    .filter_map(|i| ProductId::parse(i).ok())
                    .collect();
                let found = client.products_by_ids(&tenant, &ids).await?;
                Ok(found
                    .into_iter()
                    .map(|(id, p)| (id.to_string(), p))
                    .collect())
            }
            .boxed()
        });
        let keys: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        let found = self.products.get_many(tenant, &keys, stale, fetch).await?;
        Ok(found.into_values().map(|p| (p.id.clone(), p)).collect())
    }

    /// The first [`RECOMMENDED`] products of the mall's listing; `None` if
    /// the mall does not exist.
    pub async fn recommended(
        &self,
        tenant: &TenantId,
        mall: &MallId,
        stale: &StaleLog,
    ) -> Result<Option<Vec<Product>>, UpstreamError> {
        let (client, owner, key) = (self.client.clone(), tenant.clone(), mall.clone());
        self.listings
            .get_one(tenant, mall.as_str(), stale, move || {
                let (client, tenant, mall) = (client.clone(), owner.clone(), key.clone());
                async move {
                    let page = client.listing(&tenant, &mall, RECOMMENDED, None).await?;
                    Ok(page.map(|p| p.items.into_iter().map(|(_, p)| p).collect()))
                }
                .boxed()
            })
            .await
    }

    /// The mall's flash-sale products; `None` if the mall does not exist.
    pub async fn flash_sales(
        &self,
        tenant: &TenantId,
        mall: &MallId,
        stale: &StaleLog,
    ) -> Result<Option<Vec<Product>>, UpstreamError> {
        if !self.recent_tenants.contains_key(tenant) {
            self.recent_tenants.insert(tenant.clone(), ());
        }
        let (client, owner, key) = (self.client.clone(), tenant.clone(), mall.clone());
        self.flash_sales
            .get_one(tenant, mall.as_str(), stale, move || {
                let (client, tenant, mall) = (client.clone(), owner.clone(), key.clone());
                async move { client.flash_sales(&tenant, &mall).await }.boxed()
            })
            .await
    }

    /// The tenants to pre-warm: `configured` and every tenant whose flash
    /// sales were read in the last hour, each once, in a stable order.
    pub fn prewarm_tenants(&self, configured: impl IntoIterator<Item = TenantId>) -> Vec<TenantId> {
        let mut tenants: Vec<TenantId> = configured.into_iter().collect();
        tenants.extend(self.recent_tenants.iter().map(|(t, ())| (*t).clone()));
        tenants.sort();
        tenants.dedup();
        tenants
    }

    /// Loads every mall's flash-sale list and its products into both cache
    /// levels (hot keys, before the sale opens). Returns how many products
    /// were loaded.
    pub async fn prewarm(
        &self,
        tenant: &TenantId,
        malls: &MallClient,
    ) -> Result<usize, UpstreamError> {
        let malls = malls.all_malls(tenant).await?;
        let mut loaded = 0;
        for mall in malls {
            let flash = self.client.flash_sales(tenant, &mall.id).await?;
            let products: HashMap<String, Product> = flash
                .iter()
                .flatten()
                .map(|p| (p.id.to_string(), p.clone()))
                .collect();
            loaded += products.len();
            self.products.put_many(tenant, products).await;
            self.flash_sales
                .put_many(tenant, HashMap::from([(mall.id.to_string(), flash)]))
                .await;
        }
        Ok(loaded)
    }
}
