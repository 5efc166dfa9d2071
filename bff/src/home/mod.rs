//! The home card: a whole home screen in one round trip.
//!
//! The resolver looks ahead at what the client selected, then fans out to
//! the mall, member and product services **concurrently**. Once both
//! product lists are in, the stores of all their products are loaded in
//! one batch (when selected), so a card costs at most one call per
//! upstream endpoint. A failing upstream nulls only the fields it feeds.

use async_graphql::parser::types::Field;
use async_graphql::{Context, ContextSelectionSet, ID, Object, Result, Value};
use futures::future::OptionFuture;

use crate::domain::MallId;
use crate::error::ApiError;
use crate::graphql::plain::{PlainFields, plain_list, plain_object, plain_option};
use crate::graphql::request;
use crate::mall::Mall;
use crate::member::{Coupon, Member};
use crate::product::Product;
use crate::upstream::UpstreamError;

/// How many recommended products a card shows.
pub use crate::product::RECOMMENDED;

/// Complexity charged for a card beyond its selected fields: it fans out
/// to five upstream endpoints and prices `RECOMMENDED` + flash-sale
/// products, so a handful of aliased cards must not pass for cheap.
pub const HOME_CARD_COST: usize = 200;

/// What one part of the card came to: not asked for / not applicable
/// (`None`), or the upstream's answer.
type Part<T> = Option<Result<T, UpstreamError>>;

/// A whole home screen for a mall and the asking member.
pub struct HomeCard {
    mall: Mall,
    member: Part<Option<Member>>,
    coupons: Part<Option<Vec<Coupon>>>,
    flash_sale: Part<Vec<Product>>,
    recommended: Part<Vec<Product>>,
}

fn part<T>(part: &Part<T>) -> Result<Option<&T>> {
    match part {
        None => Ok(None),
        Some(Ok(value)) => Ok(Some(value)),
        Some(Err(err)) => Err(ApiError::Upstream(err.clone()).into()),
    }
}

/// The GraphQL `HomeCard` object: its fields, descriptions and the
/// general resolution path. [`HomeCard`] resolves through it whenever a
/// selection is more than plain fields answered at once.
struct HomeCardFields<'a>(&'a HomeCard);

/// Everything a home screen shows, built in one round trip. Fields fed by
/// an upstream that fails are null, with an `UPSTREAM_UNAVAILABLE` error
/// naming it.
#[Object(name = "HomeCard")]
impl HomeCardFields<'_> {
    /// The mall.
    async fn mall(&self) -> &Mall {
        &self.0.mall
    }
    /// The asking member; null without a member token.
    async fn member(&self) -> Result<Option<&Member>> {
        Ok(part(&self.0.member)?.and_then(Option::as_ref))
    }
    /// Products on flash sale in this mall now or soon.
    async fn flash_sale(&self) -> Result<Option<&[Product]>> {
        Ok(part(&self.0.flash_sale)?.map(Vec::as_slice))
    }
    /// Products recommended for this member in this mall.
    async fn recommended(&self) -> Result<Option<&[Product]>> {
        Ok(part(&self.0.recommended)?.map(Vec::as_slice))
    }
    /// Coupons the member can use; empty without a member token.
    async fn coupons(&self) -> Result<Option<&[Coupon]>> {
        Ok(Some(match part(&self.0.coupons)? {
            Some(Some(coupons)) => coupons.as_slice(),
            None | Some(None) => &[],
        }))
    }
}

/// A part's value when it came: `None` (general path) when it failed.
fn plain_part<T>(part: &Part<T>, value: impl FnOnce(Option<&T>) -> Option<Value>) -> Option<Value> {
    match part {
        None => value(None),
        Some(Ok(got)) => value(Some(got)),
        Some(Err(_)) => None,
    }
}

impl PlainFields for HomeCard {
    const TYPE_NAME: &'static str = "HomeCard";

    fn plain_field(&self, ctx: &ContextSelectionSet<'_>, field: &Field) -> Option<Value> {
        match field.name.node.as_str() {
            "mall" => plain_object(&self.mall, ctx, &field.selection_set.node),
            "member" => plain_part(&self.member, |member| {
                plain_option(member.and_then(Option::as_ref), ctx, field)
            }),
            "flashSale" => plain_part(&self.flash_sale, |list| match list {
                Some(list) => plain_list(list, ctx, field),
                None => Some(Value::Null),
            }),
            "recommended" => plain_part(&self.recommended, |list| match list {
                Some(list) => plain_list(list, ctx, field),
                None => Some(Value::Null),
            }),
            "coupons" => plain_part(&self.coupons, |coupons| {
                plain_list(
                    coupons.and_then(Option::as_ref).into_iter().flatten(),
                    ctx,
                    field,
                )
            }),
            _ => None,
        }
    }
}

crate::graphql::plain::plain_output_type!(HomeCard, HomeCardFields);

/// The home-card query.
#[derive(Default)]
pub struct HomeQuery;

#[Object]
impl HomeQuery {
    /// A whole home screen for a mall in one round trip: the mall, the
    /// asking member, flash sales, recommendations and coupons.
    #[graphql(complexity = "HOME_CARD_COST + child_complexity")]
    #[tracing::instrument(name = "home_card", level = "debug", skip_all, fields(mall_id = %mall_id.0))]
    async fn home_card(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The mall whose home screen to build.")] mall_id: ID,
    ) -> Result<HomeCard> {
        let mall_id = MallId::parse(mall_id.0).map_err(ApiError::from)?;
        let req = request(ctx)?;
        let loaders = &req.loaders;
        let tenant = req.principal.tenant();
        let member_id = req.principal.member().cloned();

        let look = ctx.look_ahead();
        let wants = |field: &str| look.field(field).exists();
        let wants_member = wants("member") && member_id.is_some();
        let wants_coupons = wants("coupons") && member_id.is_some();
        let wants_flash = wants("flashSale");
        let wants_recommended = wants("recommended");
        let wants_stores = look.field("flashSale").field("store").exists()
            || look.field("recommended").field("store").exists();
        let wants_prices = look.field("flashSale").field("price").exists()
            || look.field("recommended").field("price").exists();

        // Every key here is known up front: fetch at once rather than
        // through a batching window (see `graphql::Memo`).
        let mall = loaders.mall_now(&mall_id);
        // The member (for its field and for prices) and their coupons: one
        // call when the member service embeds coupons in the member record.
        // Pricing reads the member through the same single flight.
        let member_and_coupons = async {
            match member_id.as_ref() {
                Some(id) if wants_coupons && (wants_member || wants_prices) => {
                    let (member, coupons) = loaders.member_and_coupons_now(id).await;
                    (wants_member.then_some(member), Some(coupons))
                }
                Some(id) if wants_member => (Some(loaders.member_now(id).await), None),
                Some(id) if wants_coupons => (None, Some(loaders.coupons_now(id).await)),
                _ => (None, None),
            }
        };
        let products = async {
            // Both lists come through the catalogue cache.
            let catalogue = &loaders.catalog.products;
            let flash: OptionFuture<_> = wants_flash
                .then(|| catalogue.flash_sales(tenant, &mall_id, &loaders.stale))
                .into();
            let recommended: OptionFuture<_> = wants_recommended
                .then(|| catalogue.recommended(tenant, &mall_id, &loaders.stale))
                .into();
            let (flash, recommended) = futures::join!(flash, recommended);
            // An unknown mall has no listing (`None`); the mall lookup
            // reports that, so treat it as empty here.
            let flash = flash.map(|r| r.map(Option::unwrap_or_default));
            let recommended = recommended.map(|r| r.map(Option::unwrap_or_default));
            let all: Vec<&Product> = [&flash, &recommended]
                .into_iter()
                .flatten()
                .flatten()
                .flatten()
                .collect();
            if wants_prices {
                // Both lists in one batch: one evaluation per rule. A failure
                // shows on each `price` field.
                let (_, priced) = futures::join!(
                    loaders.prime_stores(&all, wants_stores),
                    crate::product::price_products(req, &all)
                );
                let _ = priced;
            } else {
                loaders.prime_stores(&all, wants_stores).await;
            }
            (flash, recommended)
        };

        let (mall, (member, coupons), (flash_sale, recommended)) =
            futures::join!(mall, member_and_coupons, products);
        if matches!(member, Some(Err(_))) {
            // The `member` field reports the member service's failure; the
            // prices that fell back to public ones need not repeat it.
            req.prices.member_failure_reported();
        }
        let mall = mall
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound {
                what: "mall",
                id: mall_id.to_string(),
            })?;
        Ok(HomeCard {
            mall,
            member,
            coupons,
            flash_sale,
            recommended,
        })
    }
}
