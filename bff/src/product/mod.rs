//! Products: types, the paged listing, prices, loaders; the cached
//! catalogue in [`catalogue`].

pub mod catalogue;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use async_graphql::connection::{Edge, EmptyFields, PageInfo};
use async_graphql::dataloader::Loader;
use async_graphql::parser::types::Field;
use async_graphql::{Context, ContextSelectionSet, ID, Object, Result, SimpleObject, Value};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::domain::{InvalidInput, MallId, Money, ProductId, StoreId, TenantId};
use crate::error::ApiError;
use crate::graphql::plain::{self, PlainFields, plain_list, plain_object};
use crate::graphql::{RequestContext, request};
use crate::mall::Store;
use crate::pricing::engine::{ActiveRule, Applied, PricedLine};
use crate::upstream::{ProductClient, UpstreamError};

/// Default page size of product listings.
pub const DEFAULT_PAGE: usize = 20;
/// Largest page size of product listings.
pub const MAX_PAGE: usize = 100;

pub use catalogue::{Catalogue, RECOMMENDED};

/// A product (SKU) sold in a store of a mall.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Product {
    /// Id (SKU).
    pub id: ProductId,
    /// Display name.
    pub name: String,
    /// The mall it is sold in.
    pub mall_id: MallId,
    /// The store that sells it.
    pub store_id: StoreId,
    /// Category.
    pub category: String,
    /// Merchandising tags.
    pub tags: Vec<String>,
    /// Price before any promotion.
    pub list_price: Money,
    /// Units available.
    pub stock: u32,
    /// Flash-sale window, if the product has one.
    pub flash_sale: Option<FlashSale>,
}

/// A flash-sale window on a product.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FlashSale {
    /// Price during the window.
    pub price: Money,
    /// When the window opens.
    pub starts_at: crate::domain::Timestamp,
    /// When the window closes.
    pub ends_at: crate::domain::Timestamp,
    /// Units offered in the flash sale.
    pub stock: u32,
    /// Most units one member may buy in the sale (0: no limit).
    pub per_member_limit: u32,
}

impl FlashSale {
    /// Whether the sale's window is open at `now` (from its start, up to
    /// but excluding its end). A flash-sale SKU is sold only then.
    pub fn is_open(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.starts_at.0 <= now && now < self.ends_at.0
    }
}

/// A product's flash sale as clients see it: the window, and what is left
/// of it now (the checkout's stock, which is the admission gate).
pub struct FlashSaleView<'a> {
    sale: &'a FlashSale,
    product: &'a Product,
}

/// A flash-sale window on a product.
#[Object(name = "FlashSale")]
impl FlashSaleView<'_> {
    /// Price during the window.
    async fn price(&self) -> Money {
        self.sale.price
    }
    /// When the window opens.
    async fn starts_at(&self) -> crate::domain::Timestamp {
        self.sale.starts_at
    }
    /// When the window closes.
    async fn ends_at(&self) -> crate::domain::Timestamp {
        self.sale.ends_at
    }
    /// Units offered in the flash sale in all.
    async fn stock(&self) -> u32 {
        self.sale.stock
    }
    /// Most units one member may buy in the sale (0: no limit).
    async fn per_member_limit(&self) -> u32 {
        self.sale.per_member_limit
    }
    /// Units still sellable now: the sale's stock less what unpaid and paid
    /// orders hold (units of cancelled or expired orders come back); 0
    /// outside the sale's window.
    async fn remaining(&self, ctx: &Context<'_>) -> Result<u32> {
        if !self.sale.is_open(chrono::Utc::now()) {
            // Nothing is sellable before the window opens or after it ends.
            return Ok(0);
        }
        let req = request(ctx)?;
        let checkout = req.checkout.as_ref().ok_or_else(|| {
            tracing::error!("checkout service missing from the request context");
            ApiError::Coded {
                code: crate::error::code::INTERNAL_SERVER_ERROR,
                message: "internal error".into(),
            }
        })?;
        let remaining = checkout
            .remaining(
                req.principal.tenant(),
                &self.product.mall_id,
                &self.product.id,
                self.sale.stock,
            )
            .await
            .map_err(ApiError::from)?;
        Ok(remaining)
    }
}

/// A price for the asking member: the list price, what they pay, and
/// which promotions made the difference.
#[derive(Debug, Clone, SimpleObject)]
pub struct Price {
    /// Price before promotions.
    pub list: Money,
    /// Price the member pays.
    #[graphql(name = "final")]
    pub final_: Money,
    /// `list - final`.
    pub savings: Money,
    /// Promotions applied, in the order they were applied.
    pub applied: Vec<AppliedPromotion>,
    /// Whether a promotion rule was skipped while computing this price (it
    /// may change when the rule runs again): show it as provisional. A
    /// degraded price is never charged.
    pub degraded: bool,
    /// The rules skipped, with why.
    pub skipped_rules: Vec<crate::pricing::model::SkippedRule>,
    /// Whether this is the public (non-member) price because the member's
    /// data could not be read (the member service failed): member
    /// promotions are left out, and `degraded` is true as well.
    pub public_fallback: bool,
}

/// Catalogue prices computed during one request, and the rule snapshot
/// they were computed with (so every price of a response uses the same rule
/// versions, whatever is activated meanwhile).
#[derive(Default)]
pub struct PriceBook {
    prices: Mutex<HashMap<ProductId, Price>>,
    snapshot: OnceLock<Arc<Vec<ActiveRule>>>,
    /// A fail-closed rule failed: every price of this request reports it
    /// instead of trying again product by product.
    failed: OnceLock<String>,
    /// The member service failed: prices of this request are public ones.
    member_failure: OnceLock<UpstreamError>,
    /// Whether that failure was reported in this response already (once
    /// per response, not once per price).
    member_failure_reported: std::sync::atomic::AtomicBool,
}

impl PriceBook {
    /// A price computed earlier in this request.
    pub fn get(&self, id: &ProductId) -> Option<Price> {
        self.prices
            .lock()
            .expect("price book lock")
            .get(id)
            .cloned()
    }

    /// `answer` applied to a price computed earlier in this request, when
    /// it can be shown as it is; `None` when it is not in the book yet, or
    /// when the member service failed (the `price` field then reports that
    /// once per response).
    pub fn with_price<R>(&self, id: &ProductId, answer: impl FnOnce(&Price) -> R) -> Option<R> {
        if self.member_failure.get().is_some() {
            return None;
        }
        self.prices
            .lock()
            .expect("price book lock")
            .get(id)
            .map(answer)
    }

    /// Marks the member service's failure as reported by another field
    /// (the card's `member`), so prices do not report it again.
    pub fn member_failure_reported(&self) {
        self.member_failure_reported
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The member service's failure, the first time it is asked for in
    /// this response (prices fell back to public ones because of it).
    fn member_failure_to_report(&self) -> Option<UpstreamError> {
        let err = self.member_failure.get()?;
        (!self
            .member_failure_reported
            .swap(true, std::sync::atomic::Ordering::Relaxed))
        .then(|| err.clone())
    }

    /// The rule snapshot of this request, taken on first use.
    pub fn snapshot(
        &self,
        pricing: &crate::pricing::Pricing,
        tenant: &TenantId,
    ) -> Arc<Vec<ActiveRule>> {
        self.snapshot
            .get_or_init(|| pricing.snapshot(tenant))
            .clone()
    }
}

/// Prices every product of `products` not priced yet in this request, in
/// one batch per mall: each item-stage rule runs once for the whole batch.
pub async fn price_products(req: &RequestContext, products: &[&Product]) -> Result<(), ApiError> {
    let todo: Vec<&Product> = {
        let book = req.prices.prices.lock().expect("price book lock");
        products
            .iter()
            .copied()
            .filter(|p| !book.contains_key(&p.id))
            .collect()
    };
    if todo.is_empty() {
        return Ok(());
    }
    if let Some(rule) = req.prices.failed.get() {
        return Err(ApiError::RuleFailed { rule: rule.clone() });
    }
    let tenant = req.principal.tenant();
    let member = match req.principal.member() {
        Some(id) => match req.loaders.member_now(id).await {
            Ok(member) => member,
            // Degrade, don't null: without the member's level and tags,
            // price as for a visitor and mark the prices as such.
            Err(err) => {
                tracing::warn!(error = %err, "member unavailable: public prices");
                let _ = req.prices.member_failure.set(err);
                None
            }
        },
        None => None,
    };
    let public_fallback = req.prices.member_failure.get().is_some();
    let snapshot = req.prices.snapshot(&req.pricing, tenant);
    let mut by_mall: HashMap<&MallId, Vec<&Product>> = HashMap::new();
    for p in todo {
        by_mall.entry(&p.mall_id).or_default().push(p);
    }
    for (mall, products) in by_mall {
        let priced = req
            .pricing
            .price_catalog(
                &snapshot,
                tenant,
                mall.as_str(),
                req.channel,
                member.as_ref(),
                &products,
            )
            .await
            .map_err(|failed| {
                let _ = req.prices.failed.set(failed.rule_id.clone());
                ApiError::RuleFailed {
                    rule: failed.rule_id,
                }
            })?;
        let mut book = req.prices.prices.lock().expect("price book lock");
        let skipped = crate::pricing::model::SkippedRule::list(&priced.failures);
        for p in products {
            if let Some(line) = priced.lines.get(p.id.as_str()) {
                let mut price = Price::from_line(p.list_price, line);
                price.degraded = priced.degraded || public_fallback;
                price.skipped_rules = skipped.clone();
                price.public_fallback = public_fallback;
                book.insert(p.id.clone(), price);
            }
        }
    }
    Ok(())
}

impl Price {
    fn from_line(list: Money, line: &PricedLine) -> Self {
        let final_ = Money::from_minor(line.payable).unwrap_or(Money::ZERO);
        Price {
            list,
            final_,
            savings: list.saturating_sub(final_),
            applied: line.applied.iter().map(AppliedPromotion::from).collect(),
            degraded: false,
            skipped_rules: Vec::new(),
            public_fallback: false,
        }
    }
}

impl From<&Applied> for AppliedPromotion {
    fn from(a: &Applied) -> Self {
        AppliedPromotion {
            rule_id: ID(a.rule_id.clone()),
            label: a.label.clone(),
            amount: Money::from_minor(a.amount).unwrap_or(Money::ZERO),
        }
    }
}

impl PlainFields for Price {
    const TYPE_NAME: &'static str = "Price";

    fn plain_field(&self, ctx: &ContextSelectionSet<'_>, field: &Field) -> Option<Value> {
        let set = &field.selection_set.node;
        match field.name.node.as_str() {
            "list" => plain_object(&self.list, ctx, set),
            "final" => plain_object(&self.final_, ctx, set),
            "savings" => plain_object(&self.savings, ctx, set),
            "applied" => plain_list(&self.applied, ctx, field),
            "degraded" => Some(Value::Boolean(self.degraded)),
            "skippedRules" => plain_list(&self.skipped_rules, ctx, field),
            "publicFallback" => Some(Value::Boolean(self.public_fallback)),
            _ => None,
        }
    }
}

impl PlainFields for AppliedPromotion {
    const TYPE_NAME: &'static str = "AppliedPromotion";

    fn plain_field(&self, ctx: &ContextSelectionSet<'_>, field: &Field) -> Option<Value> {
        match field.name.node.as_str() {
            "ruleId" => plain::string(&self.rule_id),
            "label" => plain::string(&self.label),
            "amount" => plain_object(&self.amount, ctx, &field.selection_set.node),
            _ => None,
        }
    }
}

/// A page of products with the cursors to continue.
#[derive(SimpleObject)]
pub struct ProductConnection {
    /// Paging information: whether more pages follow, the end cursor.
    pub page_info: PageInfo,
    /// The products of this page, each with its cursor.
    pub edges: Vec<Edge<String, Product, EmptyFields>>,
    /// The products of this page (the edges' nodes).
    pub nodes: Vec<Product>,
}

/// One promotion's effect on a price.
#[derive(Debug, Clone, SimpleObject)]
pub struct AppliedPromotion {
    /// The promotion rule deployment that applied.
    pub rule_id: ID,
    /// Text for the shopper, e.g. "Gold members 5% off".
    pub label: String,
    /// Amount it took off.
    pub amount: Money,
}

/// The GraphQL `Product` object: its fields, descriptions and the general
/// resolution path. [`Product`] resolves through it whenever a selection
/// is more than plain fields answered at once.
pub struct ProductFields<'a>(&'a Product);

/// A product on sale in a mall.
#[Object(name = "Product")]
impl ProductFields<'_> {
    /// The product's id (SKU).
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Display name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Category, e.g. `food`.
    async fn category(&self) -> &str {
        &self.0.category
    }
    /// Merchandising tags, e.g. `new`, `hot`.
    async fn tags(&self) -> &[String] {
        &self.0.tags
    }
    /// Whether any unit is available.
    async fn in_stock(&self) -> bool {
        self.0.stock > 0
    }
    /// The store that sells it. Null when the mall service cannot be
    /// reached (the error names it).
    async fn store(&self, ctx: &Context<'_>) -> Result<Option<Store>> {
        Ok(request(ctx)?
            .loaders
            .store(self.0.store_id.clone())
            .await
            .map_err(ApiError::from)?)
    }
    /// Price before any promotion.
    async fn list_price(&self) -> Money {
        self.0.list_price
    }
    /// The price for the asking member (the token's member; anonymous
    /// visitors see public prices), with the promotions that apply. Null
    /// when it cannot be computed (the error says why). When the member
    /// service fails it is the public price, marked `publicFallback` and
    /// `degraded`, with one error per response naming the service.
    async fn price(&self, ctx: &Context<'_>) -> Result<Option<Price>> {
        let req = request(ctx)?;
        // A list's prices are usually in the book already (one batch for
        // the list); price this one only if not.
        let price = match req.prices.get(&self.0.id) {
            Some(price) => Some(price),
            None => {
                price_products(req, &[self.0]).await?;
                req.prices.get(&self.0.id)
            }
        };
        if let Some(err) = req.prices.member_failure_to_report() {
            // The price is there (public); the response says once why.
            let error: async_graphql::Error = ApiError::from(err).into();
            ctx.add_error(ctx.set_error_path(error.into_server_error(ctx.item.pos)));
        }
        Ok(price)
    }
    /// The product's flash-sale window, if it has one.
    async fn flash_sale(&self) -> Option<FlashSaleView<'_>> {
        self.0.flash_sale.as_ref().map(|sale| FlashSaleView {
            sale,
            product: self.0,
        })
    }
}

impl PlainFields for Product {
    const TYPE_NAME: &'static str = "Product";

    fn plain_field(&self, ctx: &ContextSelectionSet<'_>, field: &Field) -> Option<Value> {
        match field.name.node.as_str() {
            "id" => plain::string(self.id.as_str()),
            "name" => plain::string(&self.name),
            "category" => plain::string(&self.category),
            "tags" => Some(Value::List(
                self.tags.iter().map(|t| Value::String(t.clone())).collect(),
            )),
            "inStock" => Some(Value::Boolean(self.stock > 0)),
            "listPrice" => plain_object(&self.list_price, ctx, &field.selection_set.node),
            "store" => ctx
                .data_opt::<RequestContext>()?
                .loaders
                .with_primed_store(&self.store_id, |store| {
                    plain_object(store, ctx, &field.selection_set.node)
                })?,
            "price" => ctx
                .data_opt::<RequestContext>()?
                .prices
                .with_price(&self.id, |price| {
                    plain_object(price, ctx, &field.selection_set.node)
                })?,
            // A flash sale's `remaining` reads the checkout's stock.
            "flashSale" if self.flash_sale.is_none() => Some(Value::Null),
            _ => None,
        }
    }
}

crate::graphql::plain::plain_output_type!(Product, ProductFields);

/// Product queries.
#[derive(Default)]
pub struct ProductQuery;

#[Object]
impl ProductQuery {
    /// One product (a product detail page); null if no product has this
    /// id. A malformed id is refused (`BAD_USER_INPUT`).
    async fn product(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The product's id (SKU).")] id: ID,
    ) -> Result<Option<Product>> {
        let id = ProductId::parse(id.0).map_err(ApiError::from)?;
        let req = request(ctx)?;
        // Display only, through the catalogue cache (stale-if-error
        // included); quotes and checkout read the product service itself.
        let mut found = req
            .loaders
            .catalog
            .products
            .products(
                req.principal.tenant(),
                std::slice::from_ref(&id),
                &req.loaders.stale,
            )
            .await
            .map_err(ApiError::from)?;
        Ok(found.remove(&id))
    }

    /// A mall's products, in recommended order, a page at a time.
    #[graphql(
        complexity = "first.unwrap_or(DEFAULT_PAGE as i32).clamp(1, MAX_PAGE as i32) as usize * child_complexity"
    )]
    async fn products(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The mall whose products to list.")] mall_id: ID,
        #[graphql(desc = "Page size, 1 to 100.", default = 20)] first: Option<i32>,
        #[graphql(desc = "Continue after this cursor: an `endCursor` of this list (same mall).")]
        after: Option<String>,
    ) -> Result<ProductConnection> {
        let mall = MallId::parse(mall_id.0).map_err(ApiError::from)?;
        let req = request(ctx)?;
        let first = match first {
            None => DEFAULT_PAGE,
            Some(n) if n >= 1 && n as usize <= MAX_PAGE => n as usize,
            Some(_) => {
                return Err(ApiError::from(InvalidInput {
                    what: "first",
                    reason: "must be between 1 and 100",
                })
                .into());
            }
        };
        let tenant = req.principal.tenant();
        let after = after
            .as_deref()
            .map(|c| decode_cursor(c, tenant, &mall))
            .transpose()?;
        let page = req
            .upstreams
            .product
            .listing(req.principal.tenant(), &mall, first, after.as_deref())
            .await
            .map_err(|err| match err {
                // The only client-supplied part the service can refuse.
                UpstreamError::Rejected(_) if after.is_some() => ApiError::from(InvalidInput {
                    what: "after",
                    reason: "is not a cursor returned by this API",
                }),
                err => ApiError::from(err),
            })?
            .ok_or_else(|| ApiError::NotFound {
                what: "mall",
                id: mall.to_string(),
            })?;

        let look = ctx.look_ahead();
        let wants_store = look.field("edges").field("node").field("store").exists()
            || look.field("nodes").field("store").exists();
        let products: Vec<&Product> = page.items.iter().map(|(_, p)| p).collect();
        req.loaders.prime_stores(&products, wants_store).await;
        let wants_price = look.field("edges").field("node").field("price").exists()
            || look.field("nodes").field("price").exists();
        if wants_price {
            // One batch for the page; a failure shows on each `price` field.
            let _ = price_products(req, &products).await;
        }

        let nodes: Vec<Product> = page.items.iter().map(|(_, p)| p.clone()).collect();
        let end_cursor = page
            .items
            .last()
            .map(|(c, _)| encode_cursor(tenant, &mall, c));
        let start_cursor = page
            .items
            .first()
            .map(|(c, _)| encode_cursor(tenant, &mall, c));
        Ok(ProductConnection {
            page_info: PageInfo {
                has_previous_page: after.is_some(),
                has_next_page: page.has_more,
                start_cursor,
                end_cursor,
            },
            edges: page
                .items
                .into_iter()
                .map(|(cursor, product)| Edge::new(encode_cursor(tenant, &mall, &cursor), product))
                .collect(),
            nodes,
        })
    }
}

/// Client cursors wrap the upstream's opaque cursor, bound to the list
/// they page (tenant and mall), so clients never build or parse upstream
/// cursors and a cursor of one list cannot page another.
fn encode_cursor(tenant: &TenantId, mall: &MallId, upstream: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("1|{tenant}|{mall}|{upstream}"))
}

fn decode_cursor(cursor: &str, tenant: &TenantId, mall: &MallId) -> Result<String, ApiError> {
    const BAD: InvalidInput = InvalidInput {
        what: "after",
        reason: "is not a cursor returned by this API",
    };
    // Upstream cursors are opaque: any printable text up to 256 bytes,
    // behind a prefix of two ids of at most 64 bytes each.
    if cursor.len() > 600 {
        return Err(BAD.into());
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| BAD)?;
    let text = String::from_utf8(bytes).map_err(|_| BAD)?;
    let mut parts = text.splitn(4, '|');
    let (Some("1"), Some(t), Some(m), Some(raw)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD.into());
    };
    if t != tenant.as_str() || m != mall.as_str() {
        return Err(InvalidInput {
            what: "after",
            reason: "is a cursor of another list (another mall)",
        }
        .into());
    }
    if raw.is_empty() || raw.len() > 256 || raw.chars().any(char::is_control) {
        return Err(BAD.into());
    }
    Ok(raw.to_owned())
}

/// Batches product lookups of one request.
pub struct ProductLoader {
    /// Client.
    pub client: ProductClient,
    /// Tenant of the request.
    pub tenant: TenantId,
}

impl Loader<ProductId> for ProductLoader {
    type Value = Product;
    type Error = UpstreamError;

    async fn load(&self, keys: &[ProductId]) -> Result<HashMap<ProductId, Product>, UpstreamError> {
        self.client.products_by_ids(&self.tenant, keys).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        let t = TenantId::parse("demo").unwrap();
        let m = MallId::parse("mall-1").unwrap();
        let round = |raw: &str| decode_cursor(&encode_cursor(&t, &m, raw), &t, &m);
        assert_eq!(round("p19").unwrap(), "p19");
        assert_eq!(round("a=b/c.d|e").unwrap(), "a=b/c.d|e");
        assert!(decode_cursor("not base64!", &t, &m).is_err());
        assert!(round("p1\n").is_err());
        assert!(round(&"p".repeat(300)).is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("p19"), &t, &m).is_err());
    }

    #[test]
    fn a_cursor_only_pages_its_own_list() {
        let t = TenantId::parse("demo").unwrap();
        let m1 = MallId::parse("mall-1").unwrap();
        let m2 = MallId::parse("mall-2").unwrap();
        let other = TenantId::parse("other").unwrap();
        let cursor = encode_cursor(&t, &m1, "p19");
        assert!(decode_cursor(&cursor, &t, &m2).is_err());
        assert!(decode_cursor(&cursor, &other, &m1).is_err());
    }
}
