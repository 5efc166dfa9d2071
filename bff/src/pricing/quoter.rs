//! The quoter: prices a member's cart with every stage of the rules — the
//! one pricing path that both the `quote` query and checkout take, so a
//! checkout charges exactly what the quote showed for the same cart and
//! rule snapshot.
//!
//! It is plain Rust: the cart comes in as domain values, every check of the
//! cart (sizes, limits, the mall, a bill's store) happens here with
//! [`QuoteError`], and what it reads (products, the store, the member, the
//! member's coupons, the rule snapshot) comes from a [`QuoteSources`] — the
//! request's loaders for the GraphQL query, the upstreams for a checkout.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;

use super::engine::{ActiveRule, Applied, Failure, Hint, Priced, RuleFailed};
use super::limits::{MAX_BILL, MAX_CART_LINES, MAX_CART_TOTAL, MAX_COUPONS, MAX_QUANTITY};
use super::model::Channel;
use super::{CartLine, CartRequest, Pricing};
use crate::domain::{InvalidInput, MallId, MemberId, Money, ProductId, StoreId, TenantId};
use crate::error::ApiError;
use crate::mall::Store;
use crate::member::{Coupon, Member};
use crate::product::Product;
use crate::upstream::{UpstreamError, Upstreams};

/// The line id of a bill (and the product id of the line standing for it).
pub const BILL_LINE: &str = "bill";

/// One line of a cart to quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteItem {
    /// The product (SKU).
    pub product: ProductId,
    /// Units, as asked (checked against [`MAX_QUANTITY`] here).
    pub quantity: i64,
}

/// A cart to quote, for a tenant and (optionally) a member.
#[derive(Debug, Clone)]
pub struct QuoteRequest {
    /// The tenant whose rules and upstreams price the cart.
    pub tenant: TenantId,
    /// The member who asks; none for a visitor (who may use neither coupons
    /// nor points).
    pub member: Option<MemberId>,
    /// The mall.
    pub mall: MallId,
    /// The store of a bill (read only with `bill_amount`).
    pub store: Option<StoreId>,
    /// Items to buy (given: 1 to [`MAX_CART_LINES`] lines, each product
    /// once), or none for a bill.
    pub items: Option<Vec<QuoteItem>>,
    /// A bill amount in minor units to pay at `store`, instead of items.
    pub bill_amount: Option<i64>,
    /// Coupons the member chooses, as the client named them (a coupon the
    /// member does not hold is never applied).
    pub coupons: Vec<String>,
    /// Points the member wants to spend.
    pub points_to_use: i64,
    /// Where the member shops.
    pub channel: Channel,
}

/// Why a cart cannot be quoted. Each variant maps to one client-facing
/// error of the `quote` query (and to a checkout refusal).
#[derive(Debug, Clone, thiserror::Error)]
pub enum QuoteError {
    /// A value of the cart is invalid.
    #[error("{0}")]
    BadInput(InvalidInput),
    /// Coupons or points without a member.
    #[error("coupons and points need a member")]
    MemberRequired,
    /// A product or store of the cart does not exist for the tenant.
    #[error("{what} `{id}` was not found")]
    NotFound {
        /// `product` or `store`.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// An upstream failed (the member service, with coupons or points; the
    /// product or mall service).
    #[error(transparent)]
    Upstream(UpstreamError),
    /// A fail-closed promotion rule failed: no price without it.
    #[error(transparent)]
    RuleFailed(RuleFailed),
}

impl From<InvalidInput> for QuoteError {
    fn from(err: InvalidInput) -> Self {
        QuoteError::BadInput(err)
    }
}

impl From<UpstreamError> for QuoteError {
    fn from(err: UpstreamError) -> Self {
        QuoteError::Upstream(err)
    }
}

impl From<QuoteError> for ApiError {
    fn from(err: QuoteError) -> Self {
        match err {
            QuoteError::BadInput(invalid) => ApiError::BadInput(invalid),
            QuoteError::MemberRequired => ApiError::Unauthenticated,
            QuoteError::NotFound { what, id } => ApiError::NotFound { what, id },
            QuoteError::Upstream(cause) => ApiError::Upstream(cause),
            QuoteError::RuleFailed(f) => ApiError::RuleFailed { rule: f.rule_id },
        }
    }
}

fn bad(what: &'static str, reason: &'static str) -> QuoteError {
    QuoteError::BadInput(InvalidInput { what, reason })
}

/// What the quoter reads. The GraphQL query reads through its request's
/// loaders (batched, cached for the request, with the request's rule
/// snapshot); a checkout reads the upstreams afresh ([`UpstreamSources`]).
#[async_trait]
pub trait QuoteSources: Send + Sync {
    /// Products by id; unknown ids are absent.
    async fn products(
        &self,
        ids: &[ProductId],
    ) -> Result<HashMap<ProductId, Product>, UpstreamError>;
    /// A store, if it exists.
    async fn store(&self, id: &StoreId) -> Result<Option<Store>, UpstreamError>;
    /// A member, if it exists.
    async fn member(&self, id: &MemberId) -> Result<Option<Member>, UpstreamError>;
    /// A member's usable coupons (`None`: no such member).
    async fn coupons(&self, id: &MemberId) -> Result<Option<Vec<Coupon>>, UpstreamError>;
    /// The rules to price with: the snapshot of `tenant`'s active rules
    /// this caller prices with to the end.
    fn rules(&self, pricing: &Pricing, tenant: &TenantId) -> Arc<Vec<ActiveRule>>;
}

/// Sources that read the upstreams afresh on every call and take the rule
/// snapshot of the moment: what a checkout prices with.
pub struct UpstreamSources<'a> {
    /// The upstream clients.
    pub upstreams: &'a Upstreams,
    /// The tenant read for.
    pub tenant: &'a TenantId,
}

#[async_trait]
impl QuoteSources for UpstreamSources<'_> {
    async fn products(
        &self,
        ids: &[ProductId],
    ) -> Result<HashMap<ProductId, Product>, UpstreamError> {
        self.upstreams
            .product
            .products_by_ids(self.tenant, ids)
            .await
    }

    async fn store(&self, id: &StoreId) -> Result<Option<Store>, UpstreamError> {
        Ok(self
            .upstreams
            .mall
            .stores_by_ids(self.tenant, std::slice::from_ref(id))
            .await?
            .remove(id))
    }

    async fn member(&self, id: &MemberId) -> Result<Option<Member>, UpstreamError> {
        Ok(self
            .upstreams
            .member
            .members_by_ids(self.tenant, std::slice::from_ref(id))
            .await?
            .remove(id))
    }

    async fn coupons(&self, id: &MemberId) -> Result<Option<Vec<Coupon>>, UpstreamError> {
        self.upstreams.member.coupons(self.tenant, id).await
    }

    fn rules(&self, pricing: &Pricing, tenant: &TenantId) -> Arc<Vec<ActiveRule>> {
        pricing.snapshot(tenant)
    }
}

/// A priced line of a quote.
#[derive(Debug, Clone)]
pub struct QuotedLine {
    /// The line's id within the quote: the product id, or [`BILL_LINE`].
    pub id: String,
    /// The product (for a bill, a line standing for the bill at its store:
    /// id [`BILL_LINE`], the store's id as `store_id`).
    pub product: Product,
    /// Units.
    pub quantity: u32,
    /// List price of one unit.
    pub unit_price: Money,
    /// `unit_price × quantity`.
    pub subtotal: Money,
    /// What the line costs after line promotions.
    pub payable: Money,
    /// Line promotions applied, in order.
    pub applied: Vec<Applied>,
}

impl QuotedLine {
    /// Whether the line is a bill at a store.
    pub fn is_bill(&self) -> bool {
        self.product.id.as_str() == BILL_LINE
    }

    /// What the line is of, as clients name it: the product, or the store
    /// of a bill.
    pub fn item_id(&self) -> &str {
        if self.is_bill() {
            self.product.store_id.as_str()
        } else {
            self.product.id.as_str()
        }
    }
}

/// A priced cart: no side effects, nothing reserved.
#[derive(Debug, Clone)]
pub struct Quoted {
    /// A digest of everything the quote answers: the same cart priced the
    /// same way has the same id, different answers never share one.
    pub id: String,
    /// Lines in the order given.
    pub lines: Vec<QuotedLine>,
    /// Sum of line subtotals.
    pub subtotal: Money,
    /// Everything taken off by promotions and coupons (points excluded).
    pub discount: Money,
    /// Points spent.
    pub points_used: i64,
    /// Money the points pay.
    pub points_amount: Money,
    /// What the member pays.
    pub payable: Money,
    /// Every promotion applied, in order.
    pub applied: Vec<Applied>,
    /// Hints for the member.
    pub hints: Vec<Hint>,
    /// Whether the amounts may differ from the ones the shop set up: a rule
    /// was skipped, or the member's data could not be read. Never charged.
    pub degraded: bool,
    /// The rules skipped, with why.
    pub skipped: Vec<Failure>,
    /// Why the cart was priced as for a visitor: the member service failed
    /// (only without coupons or points, which need it).
    pub member_failure: Option<UpstreamError>,
}

impl Quoted {
    /// Whether the cart was priced as for a visitor because the member's
    /// data could not be read.
    pub fn public_fallback(&self) -> bool {
        self.member_failure.is_some()
    }
}

fn money(minor: i64) -> Money {
    Money::from_minor(minor.max(0)).unwrap_or(Money::ZERO)
}

/// The lines of a cart: its products, or one line for a bill.
async fn lines(
    sources: &dyn QuoteSources,
    request: &QuoteRequest,
) -> Result<Vec<(Product, u32)>, QuoteError> {
    let mall = &request.mall;
    match (&request.items, request.bill_amount) {
        (Some(items), None) => {
            if items.is_empty() || items.len() > MAX_CART_LINES {
                return Err(bad("items", "must have 1 to 100 lines"));
            }
            let mut ids = Vec::with_capacity(items.len());
            let mut seen = HashSet::new();
            for item in items {
                if !(1..=i64::from(MAX_QUANTITY)).contains(&item.quantity) {
                    return Err(bad("items.quantity", "must be between 1 and 999"));
                }
                if !seen.insert(&item.product) {
                    return Err(bad("items", "list each product once, with its quantity"));
                }
                ids.push(item.product.clone());
            }
            let found = sources.products(&ids).await?;
            let mut lines = Vec::with_capacity(items.len());
            for item in items {
                let Some(product) = found.get(&item.product) else {
                    return Err(QuoteError::NotFound {
                        what: "product",
                        id: item.product.to_string(),
                    });
                };
                if &product.mall_id != mall {
                    return Err(bad(
                        "items",
                        "every product must be sold in the cart's mall",
                    ));
                }
                // Checked against MAX_QUANTITY above.
                lines.push((product.clone(), item.quantity as u32));
            }
            Ok(lines)
        }
        (None, Some(amount)) => {
            if !(1..=MAX_BILL).contains(&amount) {
                return Err(bad("billAmount", "must be between 1 and 10000000000"));
            }
            let store_id = request
                .store
                .clone()
                .ok_or_else(|| bad("storeId", "is required with billAmount"))?;
            let store = sources
                .store(&store_id)
                .await?
                .ok_or_else(|| QuoteError::NotFound {
                    what: "store",
                    id: store_id.to_string(),
                })?;
            if &store.mall_id != mall {
                return Err(bad("storeId", "the store is not in the cart's mall"));
            }
            Ok(vec![(
                Product {
                    id: ProductId::parse(BILL_LINE)?,
                    name: format!("Bill at {}", store.name),
                    mall_id: mall.clone(),
                    store_id,
                    category: "store-bill".into(),
                    tags: Vec::new(),
                    list_price: Money::from_minor(amount)?,
                    stock: 1,
                    flash_sale: None,
                },
                1,
            )])
        }
        _ => Err(bad(
            "items",
            "give either items or billAmount (with storeId)",
        )),
    }
}

impl Pricing {
    /// Prices a cart with every active rule of the tenant's snapshot (as
    /// `sources` takes it): item prices, order offers, the chosen coupons
    /// and points. No side effects.
    ///
    /// Without coupons or points, a member whose data cannot be read is
    /// priced as a visitor and the quote says so ([`Quoted::degraded`],
    /// [`Quoted::member_failure`]); with them, that is an error.
    pub async fn quote_cart(
        &self,
        sources: &dyn QuoteSources,
        request: &QuoteRequest,
    ) -> Result<Quoted, QuoteError> {
        if request.coupons.len() > MAX_COUPONS {
            return Err(bad("couponIds", "must have at most 10 coupons"));
        }
        let points_to_use = request.points_to_use;
        if points_to_use < 0 {
            return Err(bad("pointsToUse", "must not be negative"));
        }
        if request.member.is_none() && (!request.coupons.is_empty() || points_to_use > 0) {
            return Err(QuoteError::MemberRequired);
        }
        let products = lines(sources, request).await?;
        let subtotal = products.iter().fold(0i64, |a, (p, q)| {
            a.saturating_add(p.list_price.minor().saturating_mul(i64::from(*q)))
        });
        if subtotal > MAX_CART_TOTAL {
            return Err(bad("items", "the cart's total is larger than allowed"));
        }

        let mut member_failure = None;
        let (member, coupons) = match &request.member {
            Some(id) => {
                let (member, coupons) = futures::join!(sources.member(id), async {
                    if request.coupons.is_empty() {
                        Ok(Some(Vec::new()))
                    } else {
                        sources.coupons(id).await
                    }
                });
                let member = match member {
                    Ok(member) => member,
                    // Degrade, don't fail: a cart without coupons or points
                    // is priced as for a visitor, marked as such (and never
                    // charged: checkout refuses degraded quotes).
                    Err(err) if request.coupons.is_empty() && points_to_use == 0 => {
                        tracing::warn!(error = %err, "member unavailable: public quote");
                        member_failure = Some(err);
                        None
                    }
                    Err(err) => return Err(err.into()),
                };
                (member, coupons?.unwrap_or_default())
            }
            None => (None, Vec::new()),
        };

        let cart = CartRequest {
            mall: request.mall.as_str(),
            channel: request.channel,
            member: member.as_ref(),
            lines: products
                .iter()
                .map(|(p, q)| CartLine {
                    id: p.id.as_str().to_owned(),
                    product: p,
                    quantity: *q,
                })
                .collect(),
            held_coupons: &coupons,
            chosen_coupons: request.coupons.clone(),
            points_to_use,
        };
        let snapshot = sources.rules(self, &request.tenant);
        let priced = self
            .quote(&snapshot, &request.tenant, &cart)
            .await
            .map_err(QuoteError::RuleFailed)?;
        Ok(quoted(priced, products, member_failure))
    }
}

fn quoted(
    priced: Priced,
    products: Vec<(Product, u32)>,
    member_failure: Option<UpstreamError>,
) -> Quoted {
    let id = digest(&priced, &products);
    let lines = priced
        .lines
        .into_iter()
        .zip(products)
        .map(|(l, (product, quantity))| QuotedLine {
            id: l.id,
            unit_price: product.list_price,
            product,
            quantity,
            subtotal: money(l.subtotal),
            payable: money(l.payable),
            applied: l.applied,
        })
        .collect();
    Quoted {
        id,
        lines,
        subtotal: money(priced.subtotal),
        discount: money(priced.discount),
        points_used: priced.points_used.max(0),
        points_amount: money(priced.points_amount),
        payable: money(priced.payable),
        applied: priced.applied,
        hints: priced.hints,
        degraded: priced.degraded || member_failure.is_some(),
        skipped: priced.failures,
        member_failure,
    }
}

/// A short digest of everything a quote answers: its lines, amounts and
/// what was applied.
fn digest(priced: &Priced, products: &[(Product, u32)]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for (line, (product, quantity)) in priced.lines.iter().zip(products) {
        hash.update(
            format!(
                "{}|{}|{}|{}|{}|{};",
                line.id,
                product.store_id,
                quantity,
                product.list_price.minor(),
                line.subtotal,
                line.payable
            )
            .as_bytes(),
        );
    }
    hash.update(
        format!(
            "{}|{}|{}|{}|{}",
            priced.subtotal,
            priced.discount,
            priced.points_used,
            priced.points_amount,
            priced.payable
        )
        .as_bytes(),
    );
    for a in &priced.applied {
        hash.update(
            format!(
                "{}|{}|{:?}|{:?}|{};",
                a.rule_id, a.amount, a.line_id, a.coupon_id, a.points
            )
            .as_bytes(),
        );
    }
    for h in &priced.hints {
        hash.update(
            format!("{}|{}|{}|{:?};", h.rule_id, h.code, h.message, h.shortfall).as_bytes(),
        );
    }
    format!("q_{}", &hex::encode(hash.finalize())[..24])
}
