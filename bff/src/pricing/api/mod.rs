//! GraphQL of promotions, a thin layer over the capability: `quote` for
//! members (over the [quoter](super::quoter)), and the rule registry and
//! dry run for rule authors (scoped to their tenant).
//!
//! * [`quote`] — the cart input, the quote's types and their mapping;
//! * [`rules`] — rule deployments as authors and operators see them;
//! * [`dry_run`] — `testRule` and its sample carts.

pub mod dry_run;
pub mod quote;
pub mod rules;

use async_graphql::{Context, Object, Result};

use crate::auth::{Principal, Role};
use crate::domain::{InvalidInput, Money, TenantId};
use crate::error::ApiError;
use crate::graphql::{RequestContext, request};

pub use self::dry_run::{MAX_UNIT_PRICE, RuleTestResult, TestRuleInput};
pub use self::quote::{CartInput, CartItemInput, OrderPromotion, PromotionHint, Quote, quote};
pub use self::rules::{PublishRuleInput, RuleDeployment};
pub use super::limits::{MAX_BILL, MAX_CART_LINES, MAX_COUPONS, MAX_QUANTITY};

fn money(minor: i64) -> Money {
    Money::from_minor(minor.max(0)).unwrap_or(Money::ZERO)
}

fn bad(what: &'static str, reason: &'static str) -> ApiError {
    ApiError::BadInput(InvalidInput { what, reason })
}

/// Points as the API carries them (`Int`): balances are capped at the
/// upstream edge, so this never saturates in practice.
fn points(points: i64) -> i32 {
    i32::try_from(points.max(0)).unwrap_or(i32::MAX)
}

/// Promotion queries.
#[derive(Default)]
pub struct PricingQuery;

#[Object]
impl PricingQuery {
    /// Prices a cart for the asking member with every active promotion:
    /// item prices, order offers, the chosen coupons and points. No side
    /// effects. Coupons and points need a member token.
    #[graphql(complexity = 200)]
    async fn quote(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The cart: items, or a bill amount at a store.")] input: CartInput,
    ) -> Result<Quote> {
        let req = request(ctx)?;
        let quote = quote(req, input).await?;
        if let Some(err) = &quote.member_failure {
            // The quote is there (public prices); the response says why.
            let error: async_graphql::Error = ApiError::from(err.clone()).into();
            ctx.add_error(ctx.set_error_path(error.into_server_error(ctx.item.pos)));
        }
        Ok(quote)
    }

    /// The tenant's rule deployments (rule authors and operators).
    async fn rule_deployments(&self, ctx: &Context<'_>) -> Result<Vec<RuleDeployment>> {
        let req = request(ctx)?;
        let tenant = staff(req, false)?;
        let mut list = req
            .pricing
            .registry()
            .deployments(tenant.as_str())
            .await
            .map_err(|e| ApiError::from(crate::pricing::registry::RegistryError::Store(e)))?;
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list
            .into_iter()
            .map(|d| RuleDeployment::new(req, d))
            .collect())
    }

    /// One rule deployment of the tenant.
    async fn rule_deployment(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The deployment's name.")] name: String,
    ) -> Result<Option<RuleDeployment>> {
        let req = request(ctx)?;
        let tenant = staff(req, false)?;
        let d = req
            .pricing
            .registry()
            .deployment(tenant.as_str(), &name)
            .await
            .map_err(|e| ApiError::from(crate::pricing::registry::RegistryError::Store(e)))?;
        Ok(d.map(|d| RuleDeployment::new(req, d)))
    }

    /// Dry-runs an uploaded component with a config against a sample cart:
    /// the outcome, what the host would apply, fuel, time and logs. Nothing
    /// is activated or counted.
    async fn test_rule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The rule, its settings and the sample cart.")] input: TestRuleInput,
    ) -> Result<RuleTestResult> {
        let req = request(ctx)?;
        let tenant = staff(req, true)?;
        Ok(dry_run::test_rule(req, tenant, input).await?)
    }
}

/// Rule registry mutations (rule authors of the token's tenant).
#[derive(Default)]
pub struct RulesMutation;

#[Object]
impl RulesMutation {
    /// Publishes a new version of a deployment from an uploaded component
    /// (see `POST /rules/components`). The rule checks its config first.
    /// Inactive unless `activate` is true.
    async fn publish_rule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The component, its settings, scope and limits.")] input: PublishRuleInput,
    ) -> Result<RuleDeployment> {
        let req = request(ctx)?;
        let tenant = staff(req, true)?;
        let author = match &req.principal {
            Principal::Staff { subject, .. } => subject.clone(),
            _ => String::new(),
        };
        let activate = input.activate.unwrap_or(false);
        let d = req
            .pricing
            .registry()
            .publish(tenant.as_str(), &author, input.into_request(), activate)
            .await
            .map_err(ApiError::from)?;
        Ok(RuleDeployment::new(req, d))
    }

    /// Activates a version (the latest when omitted); clears a quarantine.
    async fn activate_rule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The deployment's name.")] name: String,
        #[graphql(desc = "The version to run (default: the newest).")] version: Option<i32>,
    ) -> Result<RuleDeployment> {
        let req = request(ctx)?;
        let tenant = staff(req, true)?;
        let version = match version {
            Some(v) if v < 1 => return Err(bad("version", "must be at least 1").into()),
            v => v.map(|v| v as u32),
        };
        let d = req
            .pricing
            .registry()
            .activate(tenant.as_str(), &name, version)
            .await
            .map_err(ApiError::from)?;
        Ok(RuleDeployment::new(req, d))
    }

    /// Stops a deployment.
    async fn deactivate_rule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The deployment's name.")] name: String,
    ) -> Result<RuleDeployment> {
        let req = request(ctx)?;
        let tenant = staff(req, true)?;
        let d = req
            .pricing
            .registry()
            .deactivate(tenant.as_str(), &name)
            .await
            .map_err(ApiError::from)?;
        Ok(RuleDeployment::new(req, d))
    }

    /// Activates the version before the active one.
    async fn rollback_rule(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The deployment's name.")] name: String,
    ) -> Result<RuleDeployment> {
        let req = request(ctx)?;
        let tenant = staff(req, true)?;
        let d = req
            .pricing
            .registry()
            .rollback(tenant.as_str(), &name)
            .await
            .map_err(ApiError::from)?;
        Ok(RuleDeployment::new(req, d))
    }
}

/// The tenant of a staff token. Writes need the rule-author role.
pub fn staff(req: &RequestContext, write: bool) -> Result<TenantId, ApiError> {
    match &req.principal {
        Principal::Staff { tenant, role, .. } => match (role, write) {
            (Role::RuleAuthor, _) | (Role::Operator, false) => Ok(tenant.clone()),
            _ => Err(ApiError::Forbidden("this needs a rule-author token")),
        },
        Principal::Member { .. } => Err(ApiError::Forbidden(
            "rules are managed with a rule-author token",
        )),
        Principal::Anonymous { .. } => Err(ApiError::Unauthenticated),
    }
}
