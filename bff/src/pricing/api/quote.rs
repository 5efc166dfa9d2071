//! The `quote` query's input and answer, a thin layer over the
//! [quoter](crate::pricing::quoter): the cart input is parsed into a
//! [`QuoteRequest`], read through the request's loaders and rule snapshot,
//! and the [`Quoted`] cart mapped to the API's types.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::{ID, InputObject, SimpleObject};
use async_trait::async_trait;

use super::{money, points};
use crate::domain::{MallId, MemberId, MinorUnits, Money, ProductId, StoreId, TenantId};
use crate::error::ApiError;
use crate::graphql::RequestContext;
use crate::mall::Store;
use crate::member::{Coupon, Member};
use crate::pricing::Pricing;
use crate::pricing::engine::{ActiveRule, Applied, Hint};
use crate::pricing::model::{Channel, SkippedRule};
use crate::pricing::quoter::{QuoteItem, QuoteRequest, QuoteSources, Quoted};
use crate::product::{AppliedPromotion, Product};
use crate::upstream::UpstreamError;

/// A product and quantity in a cart.
#[derive(InputObject, Debug, Clone)]
pub struct CartItemInput {
    /// Product (SKU) id.
    pub product_id: ID,
    /// Units, 1 to 99.
    pub quantity: i32,
}

/// A cart to price: either items, or a bill amount at a store.
#[derive(InputObject, Debug, Clone)]
pub struct CartInput {
    /// The mall.
    pub mall_id: ID,
    /// The store, for a store bill (`billAmount`).
    pub store_id: Option<ID>,
    /// Items to buy (at most 100 lines, each product once, 1 to 999 units
    /// each).
    pub items: Option<Vec<CartItemInput>>,
    /// A bill amount in minor units to pay at `storeId` (1 to
    /// 10000000000).
    pub bill_amount: Option<MinorUnits>,
    /// Coupons the member chooses to use.
    pub coupon_ids: Option<Vec<ID>>,
    /// Points the member wants to spend.
    pub points_to_use: Option<i32>,
    /// Where the member shops (default: the `X-Channel` header, else `APP`).
    pub channel: Option<Channel>,
}

/// A priced cart line.
#[derive(SimpleObject, Debug, Clone)]
pub struct QuoteLine {
    /// Identifies this line of this quote: `<quote id>:<product id>` (or
    /// `<quote id>:bill`), so client caches never merge lines of different
    /// quotes.
    pub id: ID,
    /// Product id (the store id for a bill).
    pub product_id: ID,
    /// Units bought.
    pub quantity: i32,
    /// List price of one unit.
    pub unit_price: Money,
    /// `unitPrice × quantity`.
    pub subtotal: Money,
    /// Line discounts.
    pub discount: Money,
    /// `subtotal - discount`.
    pub payable: Money,
    /// Line promotions applied.
    pub applied: Vec<AppliedPromotion>,
}

/// A message for the member from a promotion.
#[derive(SimpleObject, Debug, Clone)]
pub struct PromotionHint {
    /// The rule that gave it.
    pub rule_id: ID,
    /// Stable code, e.g. `spend-more`.
    pub code: String,
    /// Text for the member.
    pub message: String,
    /// How much more to spend, if that applies.
    pub shortfall: Option<Money>,
}

/// A promotion applied to the whole order (or points spent).
#[derive(SimpleObject, Debug, Clone)]
pub struct OrderPromotion {
    /// `name@version` of the rule.
    pub rule_id: ID,
    /// Label shown to the member, e.g. "Gold member price".
    pub label: String,
    /// Amount taken off.
    pub amount: Money,
    /// The line (its `QuoteLine.id`), for a line discount.
    pub line_id: Option<ID>,
    /// The coupon redeemed, if any.
    pub coupon_id: Option<ID>,
    /// Points spent, for a points offset.
    pub points: i32,
}

/// A priced cart: no side effects, nothing reserved.
#[derive(SimpleObject, Debug, Clone)]
pub struct Quote {
    /// Identifies this answer: a digest of its content, so the same cart
    /// priced the same way has the same id and different answers never
    /// share one.
    pub id: ID,
    /// Lines in the order given.
    pub lines: Vec<QuoteLine>,
    /// Sum of line subtotals.
    pub subtotal: Money,
    /// Everything taken off by promotions and coupons (points excluded).
    pub discount: Money,
    /// Points spent.
    pub points_used: i32,
    /// Money the points pay.
    pub points_amount: Money,
    /// What the member pays.
    pub payable: Money,
    /// Every promotion applied, in order.
    pub applied: Vec<AppliedPromotion>,
    /// The same with what each one applied to.
    pub applied_detail: Vec<OrderPromotion>,
    /// Hints ("spend ¥20.00 more for ¥30.00 off").
    pub hints: Vec<PromotionHint>,
    /// Whether a promotion rule was skipped while pricing this cart (see
    /// `skippedRules`): the amounts may change when it runs again. Show
    /// them as provisional; checkout refuses to charge a degraded quote.
    pub degraded: bool,
    /// The rules skipped, with why.
    pub skipped_rules: Vec<SkippedRule>,
    /// Whether the cart was priced as for a visitor because the member's
    /// data could not be read (the member service failed; only without
    /// coupons or points, which need it): member promotions are left out,
    /// and `degraded` is true as well.
    pub public_fallback: bool,
    /// Why the member's data could not be read (reported once beside the
    /// quote).
    #[graphql(skip)]
    pub member_failure: Option<crate::upstream::UpstreamError>,
}

pub(super) fn order_promotion(quote_id: &str, a: &Applied) -> OrderPromotion {
    OrderPromotion {
        rule_id: ID(a.rule_id.clone()),
        label: a.label.clone(),
        amount: money(a.amount),
        line_id: a.line_id.as_ref().map(|l| ID(format!("{quote_id}:{l}"))),
        coupon_id: a.coupon_id.clone().map(ID),
        points: points(a.points),
    }
}

fn hint(h: &Hint) -> PromotionHint {
    PromotionHint {
        rule_id: ID(h.rule_id.clone()),
        code: h.code.clone(),
        message: h.message.clone(),
        shortfall: h.shortfall.map(money),
    }
}

/// What a GraphQL request quotes with: its loaders (batched, cached for
/// the request) and its rule snapshot (a request keeps the one it started
/// with, whatever is activated meanwhile).
struct RequestSources<'a>(&'a RequestContext);

#[async_trait]
impl QuoteSources for RequestSources<'_> {
    async fn products(
        &self,
        ids: &[ProductId],
    ) -> Result<HashMap<ProductId, Product>, UpstreamError> {
        self.0.loaders.products.load_many(ids.iter().cloned()).await
    }

    async fn store(&self, id: &StoreId) -> Result<Option<Store>, UpstreamError> {
        self.0.loaders.store(id.clone()).await
    }

    async fn member(&self, id: &MemberId) -> Result<Option<Member>, UpstreamError> {
        self.0.loaders.member_now(id).await
    }

    async fn coupons(&self, id: &MemberId) -> Result<Option<Vec<Coupon>>, UpstreamError> {
        self.0.loaders.coupons_now(id).await
    }

    fn rules(&self, pricing: &Pricing, tenant: &TenantId) -> Arc<Vec<ActiveRule>> {
        self.0.prices.snapshot(pricing, tenant)
    }
}

/// The quoter's request for `input`, asked by the request's principal.
fn quote_request(req: &RequestContext, input: CartInput) -> Result<QuoteRequest, ApiError> {
    let mall = MallId::parse(input.mall_id.0)?;
    let items = input
        .items
        .map(|items| {
            items
                .into_iter()
                .map(|i| {
                    Ok(QuoteItem {
                        product: ProductId::parse(i.product_id.0)?,
                        quantity: i64::from(i.quantity),
                    })
                })
                .collect::<Result<Vec<_>, ApiError>>()
        })
        .transpose()?;
    let bill_amount = input.bill_amount.map(|m| m.0);
    // The store names a bill's store; without a bill it is not read.
    let store = match (&input.store_id, bill_amount) {
        (Some(id), Some(_)) => Some(StoreId::parse(id.0.clone())?),
        _ => None,
    };
    Ok(QuoteRequest {
        tenant: req.principal.tenant().clone(),
        member: req.principal.member().cloned(),
        mall,
        store,
        items,
        bill_amount,
        coupons: input
            .coupon_ids
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.0)
            .collect(),
        points_to_use: i64::from(input.points_to_use.unwrap_or(0)),
        channel: input.channel.unwrap_or(req.channel),
    })
}

/// Prices a cart (the `quote` field) for the request's principal.
pub async fn quote(req: &RequestContext, input: CartInput) -> Result<Quote, ApiError> {
    let request = quote_request(req, input)?;
    let quoted = req
        .pricing
        .quote_cart(&RequestSources(req), &request)
        .await?;
    Ok(Quote::from(quoted))
}

impl From<Quoted> for Quote {
    fn from(q: Quoted) -> Self {
        let lines = q
            .lines
            .iter()
            .map(|l| QuoteLine {
                id: ID(format!("{}:{}", q.id, l.id)),
                product_id: ID(l.item_id().to_owned()),
                // At most MAX_QUANTITY.
                quantity: i32::try_from(l.quantity).unwrap_or(i32::MAX),
                unit_price: l.unit_price,
                subtotal: l.subtotal,
                discount: money(l.subtotal.minor() - l.payable.minor()),
                payable: l.payable,
                applied: l.applied.iter().map(AppliedPromotion::from).collect(),
            })
            .collect();
        Quote {
            lines,
            subtotal: q.subtotal,
            discount: q.discount,
            points_used: points(q.points_used),
            points_amount: q.points_amount,
            payable: q.payable,
            applied: q.applied.iter().map(AppliedPromotion::from).collect(),
            applied_detail: q
                .applied
                .iter()
                .map(|a| order_promotion(&q.id, a))
                .collect(),
            hints: q.hints.iter().map(hint).collect(),
            degraded: q.degraded,
            skipped_rules: SkippedRule::list(&q.skipped),
            public_fallback: q.public_fallback(),
            member_failure: q.member_failure,
            id: ID(q.id),
        }
    }
}
