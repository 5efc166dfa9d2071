//! Client of the product service.

use std::collections::HashMap;

use chrono::DateTime;
use serde::Deserialize;

use super::{Endpoint, Items, UpstreamError, keep_valid};
use crate::domain::{MallId, Money, ProductId, StoreId, TenantId};
use crate::product::{FlashSale, Product};

/// The product service's product record.
#[derive(Deserialize)]
struct ProductDto {
    sku_id: String,
    spu_name: String,
    mall_id: String,
    store_id: String,
    category: String,
    #[serde(default)]
    tags: Vec<String>,
    list_price_fen: i64,
    stock: u32,
    flash: Option<FlashDto>,
}

/// The product service's flash-sale window.
#[derive(Deserialize)]
struct FlashDto {
    flash_price_fen: i64,
    start_at: i64,
    end_at: i64,
    flash_stock: u32,
    /// Absent: one unit per member.
    #[serde(default = "one")]
    per_member_limit: u32,
}

fn one() -> u32 {
    1
}

/// One entry of the listing: the product and the cursor that resumes
/// after it.
#[derive(Deserialize)]
struct ListingItemDto {
    cursor: String,
    product: ProductDto,
}

#[derive(Deserialize)]
struct ListingDto {
    items: Vec<ListingItemDto>,
    has_more: bool,
}

impl ProductDto {
    fn into_domain(self) -> Option<Product> {
        let flash_sale = match self.flash {
            Some(f) => Some(FlashSale {
                price: Money::from_minor(f.flash_price_fen).ok()?,
                starts_at: DateTime::from_timestamp(f.start_at, 0)?.into(),
                ends_at: DateTime::from_timestamp(f.end_at, 0)?.into(),
                stock: f.flash_stock,
                per_member_limit: f.per_member_limit,
            }),
            None => None,
        };
        Some(Product {
            id: ProductId::parse(self.sku_id).ok()?,
            name: self.spu_name,
            mall_id: MallId::parse(self.mall_id).ok()?,
            store_id: StoreId::parse(self.store_id).ok()?,
            category: self.category,
            tags: self.tags,
            list_price: Money::from_minor(self.list_price_fen).ok()?,
            stock: self.stock,
            flash_sale,
        })
    }
}

/// A page of a listing: `(upstream cursor, product)` pairs.
#[derive(Debug)]
pub struct Page {
    /// The products, each with the cursor that resumes after it.
    pub items: Vec<(String, Product)>,
    /// Whether more products follow.
    pub has_more: bool,
}

/// Products, listings and flash sales.
#[derive(Debug, Clone)]
pub struct ProductClient {
    endpoint: Endpoint,
}

impl ProductClient {
    pub(super) fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    /// Whether the service answers its health check.
    pub async fn health(&self) -> Result<(), UpstreamError> {
        self.endpoint.health().await
    }

    /// Products by id; unknown ids are absent from the map.
    pub async fn products_by_ids(
        &self,
        tenant: &TenantId,
        ids: &[ProductId],
    ) -> Result<HashMap<ProductId, Product>, UpstreamError> {
        let path = ["tenants", tenant.as_str(), "products"];
        let ids: Vec<&str> = ids.iter().map(ProductId::as_str).collect();
        let items = self
            .endpoint
            .get_batch("products.batch", &path, "ids", &ids)
            .await?;
        Ok(keep_valid("product", items, ProductDto::into_domain)
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect())
    }

    /// A page of the mall's listing; `None` if the mall does not exist.
    pub async fn listing(
        &self,
        tenant: &TenantId,
        mall: &MallId,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Option<Page>, UpstreamError> {
        let path = [
            "tenants",
            tenant.as_str(),
            "malls",
            mall.as_str(),
            "products",
        ];
        let limit = limit.to_string();
        let mut query = vec![("limit", limit.as_str())];
        if let Some(cursor) = after {
            query.push(("cursor", cursor));
        }
        let page: Option<ListingDto> = self.endpoint.get("products.listing", &path, &query).await?;
        Ok(page.map(|page| {
            let total = page.items.len();
            let items: Vec<(String, Product)> = page
                .items
                .into_iter()
                .filter_map(|i| Some((i.cursor, i.product.into_domain()?)))
                .collect();
            if items.len() != total {
                tracing::warn!(
                    upstream = "product",
                    dropped = total - items.len(),
                    "records with invalid ids dropped"
                );
            }
            Page {
                items,
                has_more: page.has_more,
            }
        }))
    }

    /// The mall's flash-sale products; `None` if the mall does not exist.
    pub async fn flash_sales(
        &self,
        tenant: &TenantId,
        mall: &MallId,
    ) -> Result<Option<Vec<Product>>, UpstreamError> {
        let path = [
            "tenants",
            tenant.as_str(),
            "malls",
            mall.as_str(),
            "flash-sales",
        ];
        let items: Option<Items<ProductDto>> =
            self.endpoint.get("flash_sales.list", &path, &[]).await?;
        Ok(items.map(|i| keep_valid("product", i.items, ProductDto::into_domain)))
    }
}
