//! GraphQL of promotions: `quote` for members, and the rule registry and
//! dry run for rule authors (scoped to their tenant).

use std::collections::HashSet;
use std::sync::Arc;

use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use chrono::Utc;

use super::engine::{ActiveRule, Applied, Priced};
use super::host::{LogLevel, wit};
use super::model::{
    Channel, Deployment, DeploymentStatus, FailurePolicy, Limits, Scope, Stage, Version,
};
use super::registry::{PublishRequest, RuleStats};
use super::{CartLine, CartRequest};
use crate::auth::{Principal, Role};
use crate::domain::{
    InvalidInput, MallId, MinorUnits, Money, ProductId, StoreId, TenantId, Timestamp,
};
use crate::error::ApiError;
use crate::graphql::{RequestContext, request};
use crate::product::{AppliedPromotion, Product};

pub use super::limits::{MAX_BILL, MAX_CART_LINES, MAX_COUPONS, MAX_QUANTITY};

/// Most lines in a dry run's sample cart.
const MAX_SAMPLE_LINES: usize = 100;
/// Most units of one line of a dry run's sample cart.
const MAX_SAMPLE_QUANTITY: i32 = 999;
/// Largest unit price (minor units): ¥100,000,000. With at most
/// [`MAX_SAMPLE_LINES`] lines of [`MAX_SAMPLE_QUANTITY`] units, every sum
/// stays far below [`crate::domain::MAX_MINOR_UNITS`].
pub const MAX_UNIT_PRICE: i64 = 10_000_000_000;
/// Dry runs that may run at once on a node (they may use large limits).
const DRY_RUNS_AT_ONCE: usize = 2;
/// Longest sample-cart coupon or tag list.
const MAX_SAMPLE_LIST: usize = 100;

fn money(minor: i64) -> Money {
    Money::from_minor(minor.max(0)).unwrap_or(Money::ZERO)
}

fn bad(what: &'static str, reason: &'static str) -> ApiError {
    ApiError::BadInput(InvalidInput { what, reason })
}

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
    pub skipped_rules: Vec<super::model::SkippedRule>,
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

fn order_promotion(quote_id: &str, a: &Applied) -> OrderPromotion {
    OrderPromotion {
        rule_id: ID(a.rule_id.clone()),
        label: a.label.clone(),
        amount: money(a.amount),
        line_id: a.line_id.as_ref().map(|l| ID(format!("{quote_id}:{l}"))),
        coupon_id: a.coupon_id.clone().map(ID),
        points: points(a.points),
    }
}

/// Points as the API carries them (`Int`): balances are capped at the
/// upstream edge, so this never saturates in practice.
fn points(points: i64) -> i32 {
    i32::try_from(points.max(0)).unwrap_or(i32::MAX)
}

fn hints(priced: &Priced) -> Vec<PromotionHint> {
    priced
        .hints
        .iter()
        .map(|h| PromotionHint {
            rule_id: ID(h.rule_id.clone()),
            code: h.code.clone(),
            message: h.message.clone(),
            shortfall: h.shortfall.map(money),
        })
        .collect()
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
            .map_err(|e| ApiError::from(super::registry::RegistryError::Store(e)))?;
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
            .map_err(|e| ApiError::from(super::registry::RegistryError::Store(e)))?;
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
        Ok(test_rule(req, tenant, input).await?)
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

/// Publishing a version.
#[derive(InputObject, Debug, Clone)]
pub struct PublishRuleInput {
    /// Deployment name: 1–64 of a-z, 0-9, `-`, `_`.
    pub name: String,
    /// sha256 of a component uploaded by this tenant.
    pub component: String,
    /// Settings handed to the rule (usually JSON).
    pub config: String,
    /// Where and when it applies (default: everywhere, always).
    pub scope: Option<Scope>,
    /// The stage the rule runs in (item, order, coupon or points).
    pub stage: Stage,
    /// Order within the stage, lower first (default 100).
    pub priority: Option<i32>,
    /// Rules in one stacking group never stack; the best one applies.
    pub stacking_group: Option<String>,
    /// Sandbox limits (defaults when omitted).
    pub limits: Option<Limits>,
    /// What a failure does (default `SKIP`).
    pub failure_policy: Option<FailurePolicy>,
    /// Activate this version at once (default false).
    pub activate: Option<bool>,
}

impl PublishRuleInput {
    fn into_request(self) -> PublishRequest {
        PublishRequest {
            name: self.name,
            component: self.component,
            config: self.config,
            scope: self.scope.unwrap_or_default(),
            stage: self.stage,
            priority: self.priority.unwrap_or(100),
            stacking_group: self.stacking_group.filter(|g| !g.is_empty()),
            limits: self.limits.unwrap_or_default(),
            failure_policy: self.failure_policy.unwrap_or_default(),
        }
    }
}

/// A rule deployment and its history.
pub struct RuleDeployment {
    deployment: Deployment,
    stats: RuleStats,
}

impl RuleDeployment {
    fn new(req: &RequestContext, deployment: Deployment) -> Self {
        let stats = deployment
            .active_version
            .map(|v| {
                req.pricing
                    .registry()
                    .stats(&deployment.tenant, &deployment.name, v)
            })
            .unwrap_or_default();
        Self { deployment, stats }
    }
}

/// A named rule deployment of the tenant.
#[Object]
impl RuleDeployment {
    /// Identifies the deployment across tenants: `<tenant>/<name>`.
    async fn id(&self) -> ID {
        ID(format!(
            "{}/{}",
            self.deployment.tenant, self.deployment.name
        ))
    }
    /// Name, unique within the tenant.
    async fn name(&self) -> &str {
        &self.deployment.name
    }
    /// Lifecycle state.
    async fn status(&self) -> DeploymentStatus {
        self.deployment.status
    }
    /// The version that runs when active.
    async fn active_version(&self) -> Option<u32> {
        self.deployment.active_version
    }
    /// Why it was quarantined.
    async fn quarantine_reason(&self) -> Option<&str> {
        self.deployment.quarantine_reason.as_deref()
    }
    /// Last change.
    async fn updated_at(&self) -> Timestamp {
        Timestamp(self.deployment.updated_at)
    }
    /// Every version, newest first.
    async fn versions(&self) -> Vec<RuleVersion> {
        self.deployment
            .versions
            .iter()
            .rev()
            .cloned()
            .map(RuleVersion)
            .collect()
    }
    /// The active version's settings, for convenience.
    async fn active(&self) -> Option<RuleVersion> {
        self.deployment
            .active_version
            .and_then(|v| self.deployment.version(v))
            .cloned()
            .map(RuleVersion)
    }
    /// Evaluation counts of the active version on this node.
    async fn stats(&self) -> RuleStatsView {
        RuleStatsView(self.stats.clone())
    }
}

/// One published version.
pub struct RuleVersion(Version);

/// An immutable published version of a deployment.
#[Object]
impl RuleVersion {
    /// Version number.
    async fn version(&self) -> u32 {
        self.0.version
    }
    /// sha256 of the component.
    async fn component(&self) -> &str {
        &self.0.component
    }
    /// The settings string handed to the rule.
    async fn config(&self) -> &str {
        &self.0.config
    }
    /// Where and when the version applies.
    async fn scope(&self) -> &Scope {
        &self.0.scope
    }
    /// The stage the version runs in.
    async fn stage(&self) -> Stage {
        self.0.stage
    }
    /// Priority within the stage.
    async fn priority(&self) -> i32 {
        self.0.priority
    }
    /// Stacking group.
    async fn stacking_group(&self) -> Option<&str> {
        self.0.stacking_group.as_deref()
    }
    /// Sandbox limits.
    async fn limits(&self) -> &Limits {
        &self.0.limits
    }
    /// Failure policy.
    async fn failure_policy(&self) -> FailurePolicy {
        self.0.failure_policy
    }
    /// When it was published.
    async fn published_at(&self) -> Timestamp {
        Timestamp(self.0.published_at)
    }
    /// Who published it.
    async fn published_by(&self) -> &str {
        &self.0.published_by
    }
}

/// Evaluation counts on this node.
pub struct RuleStatsView(RuleStats);

/// How a rule version has been doing on this node.
#[Object(name = "RuleStats")]
impl RuleStatsView {
    /// Evaluations on this node since it started.
    async fn evaluations(&self) -> u64 {
        self.0.evaluations
    }
    /// Failed evaluations.
    async fn failures(&self) -> u64 {
        self.0.failures
    }
    /// Failures in a row up to now.
    async fn consecutive_failures(&self) -> u32 {
        self.0.consecutive_failures
    }
    /// Code of the last failure.
    async fn last_failure_code(&self) -> Option<&str> {
        self.0.last_failure
    }
    /// Detail of the last failure.
    async fn last_failure_detail(&self) -> Option<&str> {
        self.0.last_failure_detail.as_deref()
    }
    /// Fuel used by the last evaluation.
    async fn last_fuel(&self) -> u64 {
        self.0.last_fuel
    }
}

/// A sample member for a dry run.
#[derive(InputObject, Debug, Clone)]
pub struct SampleMemberInput {
    /// Level, e.g. `gold`.
    pub level: String,
    /// Points balance.
    #[graphql(default)]
    pub points: i32,
    /// Member tags the rule sees.
    #[graphql(default)]
    pub tags: Vec<String>,
}

/// A sample flash sale.
#[derive(InputObject, Debug, Clone)]
pub struct SampleFlashSaleInput {
    /// Flash price of one unit.
    pub price: MinorUnits,
    /// When the flash sale opens.
    pub starts_at: Timestamp,
    /// When the flash sale closes.
    pub ends_at: Timestamp,
}

/// A sample line for a dry run.
#[derive(InputObject, Debug, Clone)]
pub struct SampleLineInput {
    /// Line id (default `line-<n>`).
    pub id: Option<String>,
    /// The product (SKU) id the rule sees.
    #[graphql(default)]
    pub sku: String,
    /// The store id the rule sees.
    #[graphql(default)]
    pub store: String,
    /// The product category the rule sees.
    #[graphql(default)]
    pub category: String,
    /// Product tags the rule sees.
    #[graphql(default)]
    pub tags: Vec<String>,
    /// Unit price in minor units.
    pub unit_price: MinorUnits,
    /// Units (default 1).
    pub quantity: Option<i32>,
    /// Flash sale.
    pub flash_sale: Option<SampleFlashSaleInput>,
}

/// A sample coupon held by the member.
#[derive(InputObject, Debug, Clone)]
pub struct SampleCouponInput {
    /// Coupon id, as `chosenCoupons` names it.
    pub id: String,
    /// Title shown to the member.
    #[graphql(default)]
    pub title: String,
    /// Amount off (minor units), for a fixed coupon.
    pub amount_off: Option<MinorUnits>,
    /// Percent off (1–100), for a percentage coupon — as `Coupon.percentOff`.
    pub percent_off: Option<i32>,
    /// Minimum payable (default 0).
    #[graphql(default)]
    pub min_spend: MinorUnits,
    /// Expiry (default: in 30 days).
    pub expires_at: Option<Timestamp>,
}

/// A sample cart for a dry run.
#[derive(InputObject, Debug, Clone)]
pub struct SampleCartInput {
    /// `CART` (default) or `CATALOG`.
    pub kind: Option<SampleKind>,
    /// The mall the rule sees (default: none, so mall-scoped checks see
    /// an empty mall id).
    pub mall_id: Option<ID>,
    /// Channel (default `APP`).
    pub channel: Option<Channel>,
    /// The time the rule sees (default: now).
    pub now: Option<Timestamp>,
    /// The member (none: anonymous).
    pub member: Option<SampleMemberInput>,
    /// The cart's lines (at most 100).
    pub lines: Vec<SampleLineInput>,
    /// Coupons held.
    #[graphql(default)]
    pub held_coupons: Vec<SampleCouponInput>,
    /// Coupons chosen.
    #[graphql(default)]
    pub chosen_coupons: Vec<String>,
    /// Points to use.
    #[graphql(default)]
    pub points_to_use: i32,
}

/// Kind of a sample batch.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleKind {
    /// Catalogue prices.
    Catalog,
    /// A cart.
    Cart,
}

/// A dry run.
#[derive(InputObject, Debug, Clone)]
pub struct TestRuleInput {
    /// sha256 of an uploaded component, or the name of a deployment (its
    /// active, else latest, version) when `deployment` is given instead.
    pub component: Option<String>,
    /// A deployment whose component to run.
    pub deployment: Option<String>,
    /// Settings (default: the deployment version's).
    pub config: Option<String>,
    /// Stage the host validates against (default: the deployment's, else
    /// `ITEM`).
    pub stage: Option<Stage>,
    /// Limits (default: the deployment's or the defaults).
    pub limits: Option<Limits>,
    /// The sample cart.
    pub cart: SampleCartInput,
}

/// A log entry written by a rule.
#[derive(SimpleObject, Debug, Clone)]
pub struct RuleLog {
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// The text the rule logged (bounded).
    pub message: String,
}

/// A line discount proposed by a rule.
#[derive(SimpleObject, Debug, Clone)]
pub struct ProposedLineDiscount {
    /// The line (as the sample cart names it).
    pub line_id: String,
    /// Amount the rule proposes to take off the line.
    pub amount: MinorUnits,
    /// Label the rule gives the discount.
    pub label: String,
}

/// An order discount proposed by a rule.
#[derive(SimpleObject, Debug, Clone)]
pub struct ProposedOrderDiscount {
    /// Amount the rule proposes to take off the order.
    pub amount: MinorUnits,
    /// Label the rule gives the discount.
    pub label: String,
    /// Coupon redeemed.
    pub coupon_id: Option<String>,
}

/// A points offset proposed by a rule.
#[derive(SimpleObject, Debug, Clone)]
pub struct ProposedPoints {
    /// Points (capped at the largest `Int`).
    pub points: i32,
    /// Money the points would pay.
    pub amount: MinorUnits,
    /// Label the rule gives the offset.
    pub label: String,
}

/// What the rule returned, as is.
#[derive(SimpleObject, Debug, Clone)]
pub struct RuleOutcome {
    /// Line discounts.
    pub line_discounts: Vec<ProposedLineDiscount>,
    /// Order discounts.
    pub order_discounts: Vec<ProposedOrderDiscount>,
    /// Points offset.
    pub points: Option<ProposedPoints>,
    /// Hints the rule proposes to show the member.
    pub hints: Vec<PromotionHint>,
}

/// The result of a dry run.
#[derive(SimpleObject, Debug, Clone)]
pub struct RuleTestResult {
    /// Whether the rule ran and its outcome passed the host's checks.
    pub ok: bool,
    /// Failure code (e.g. `OUT_OF_FUEL`, `INVALID_OUTPUT`).
    pub failure_code: Option<String>,
    /// Failure detail.
    pub failure_detail: Option<String>,
    /// The outcome as the rule returned it.
    pub outcome: Option<RuleOutcome>,
    /// What the host would apply (validated, capped).
    pub applied: Vec<OrderPromotion>,
    /// Payable after the rule.
    pub payable: Option<MinorUnits>,
    /// Fuel used (about one unit per instruction).
    pub fuel_used: u64,
    /// Wall-clock microseconds of instantiate + evaluate.
    pub duration_micros: u64,
    /// The rule's log.
    pub logs: Vec<RuleLog>,
    /// Log entries dropped over the bound.
    pub logs_dropped: u32,
}

async fn test_rule(
    req: &RequestContext,
    tenant: TenantId,
    input: TestRuleInput,
) -> Result<RuleTestResult, ApiError> {
    let registry = req.pricing.registry();
    let (compiled, base) = match (&input.component, &input.deployment) {
        (Some(sha), None) => (registry.component_for(tenant.as_str(), sha).await?, None),
        (None, Some(name)) => {
            let d = registry
                .deployment(tenant.as_str(), name)
                .await
                .map_err(|e| ApiError::from(super::registry::RegistryError::Store(e)))?
                .ok_or_else(|| ApiError::NotFound {
                    what: "deployment",
                    id: name.clone(),
                })?;
            let v = d
                .active_version
                .and_then(|n| d.version(n))
                .or(d.versions.last())
                .cloned()
                .ok_or_else(|| ApiError::NotFound {
                    what: "deployment",
                    id: name.clone(),
                })?;
            (
                registry
                    .component_for(tenant.as_str(), &v.component)
                    .await?,
                Some(v),
            )
        }
        _ => {
            return Err(bad(
                "component",
                "give exactly one of component and deployment",
            ));
        }
    };
    let version = Version {
        version: base.as_ref().map_or(0, |v| v.version),
        component: compiled.sha256.clone(),
        config: input
            .config
            .clone()
            .or_else(|| base.as_ref().map(|v| v.config.clone()))
            .unwrap_or_default(),
        scope: Scope::default(),
        stage: input
            .stage
            .or(base.as_ref().map(|v| v.stage))
            .unwrap_or(Stage::Item),
        priority: 0,
        stacking_group: None,
        limits: input
            .limits
            .or(base.as_ref().map(|v| v.limits))
            .unwrap_or_default(),
        failure_policy: FailurePolicy::Skip,
        published_at: Utc::now(),
        published_by: String::new(),
    };
    let rule = ActiveRule {
        name: input.deployment.clone().unwrap_or_else(|| "dry-run".into()),
        version: Arc::new(version),
        compiled,
        revision: 0,
    };
    super::registry::validate_limits(&rule.version.limits).map_err(ApiError::from)?;
    let cart = sample_cart(&tenant, &input.cart)?;
    // Dry runs may use large limits: a few at a time per node, so they never
    // crowd out the pool that prices real carts.
    static DRY_RUNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(DRY_RUNS_AT_ONCE);
    let _permit = tokio::time::timeout(std::time::Duration::from_secs(5), DRY_RUNS.acquire())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or(ApiError::Coded {
            code: crate::error::code::RATE_LIMITED,
            message: "too many dry runs at once; retry shortly".into(),
        })?;
    let run = req
        .pricing
        .dry_run(&tenant, rule, cart)
        .await
        .map_err(|e| ApiError::Coded {
            code: match e {
                super::pool::PoolError::Busy => crate::error::code::ENGINE_BUSY,
                super::pool::PoolError::Failed => crate::error::code::INTERNAL_SERVER_ERROR,
            },
            message: e.to_string(),
        })?;
    let logs = run
        .logs
        .iter()
        .map(|l| RuleLog {
            level: match l.level {
                LogLevel::Debug => "debug",
                LogLevel::Info => "info",
                LogLevel::Warn => "warn",
                LogLevel::Error => "error",
            }
            .to_owned(),
            message: l.message.clone(),
        })
        .collect();
    let (ok, failure_code, failure_detail, outcome) = match &run.result {
        Ok(o) => (true, None, None, Some(outcome_view(o))),
        Err(f) => (false, Some(f.code.to_owned()), Some(f.detail.clone()), None),
    };
    Ok(RuleTestResult {
        ok,
        failure_code,
        failure_detail,
        outcome,
        applied: run
            .priced
            .as_ref()
            .map(|p| {
                p.applied
                    .iter()
                    .map(|a| order_promotion("dry-run", a))
                    .collect()
            })
            .unwrap_or_default(),
        payable: run.priced.as_ref().map(|p| MinorUnits(p.payable)),
        fuel_used: run.fuel_used,
        duration_micros: run.elapsed.as_micros() as u64,
        logs,
        logs_dropped: run.logs_dropped,
    })
}

fn outcome_view(o: &wit::Outcome) -> RuleOutcome {
    RuleOutcome {
        line_discounts: o
            .line_discounts
            .iter()
            .map(|d| ProposedLineDiscount {
                line_id: d.line_id.clone(),
                amount: MinorUnits(d.amount),
                label: d.label.clone(),
            })
            .collect(),
        order_discounts: o
            .order_discounts
            .iter()
            .map(|d| ProposedOrderDiscount {
                amount: MinorUnits(d.amount),
                label: d.label.clone(),
                coupon_id: d.coupon_id.clone(),
            })
            .collect(),
        points: o.points.as_ref().map(|p| ProposedPoints {
            points: points(p.points),
            amount: MinorUnits(p.amount),
            label: p.label.clone(),
        }),
        hints: o
            .hints
            .iter()
            .map(|h| PromotionHint {
                rule_id: ID("dry-run".into()),
                code: h.code.clone(),
                message: h.message.clone(),
                shortfall: h.shortfall.map(money),
            })
            .collect(),
    }
}

fn sample_cart(tenant: &TenantId, input: &SampleCartInput) -> Result<wit::Cart, ApiError> {
    if input.lines.len() > MAX_SAMPLE_LINES {
        return Err(bad("cart.lines", "must have at most 100 lines"));
    }
    let mut ids = HashSet::new();
    let mut lines = Vec::with_capacity(input.lines.len());
    for (n, l) in input.lines.iter().enumerate() {
        let quantity = l.quantity.unwrap_or(1);
        let unit_price = l.unit_price.0;
        if !(1..=MAX_SAMPLE_QUANTITY).contains(&quantity) {
            return Err(bad("cart.lines.quantity", "must be between 1 and 999"));
        }
        if !(0..=MAX_UNIT_PRICE).contains(&unit_price) {
            return Err(bad(
                "cart.lines.unitPrice",
                "must be between 0 and 10000000000",
            ));
        }
        if let Some(f) = &l.flash_sale
            && !(0..=MAX_UNIT_PRICE).contains(&f.price.0)
        {
            return Err(bad(
                "cart.lines.flashSale.price",
                "must be between 0 and 10000000000",
            ));
        }
        let id = l.id.clone().unwrap_or_else(|| format!("line-{}", n + 1));
        if !ids.insert(id.clone()) {
            return Err(bad("cart.lines.id", "must be unique"));
        }
        lines.push(wit::Line {
            id,
            sku: l.sku.clone(),
            store: l.store.clone(),
            category: l.category.clone(),
            tags: l.tags.clone(),
            unit_price,
            quantity: quantity as u32,
            payable: unit_price.saturating_mul(i64::from(quantity)),
            flash_sale: l.flash_sale.as_ref().map(|f| wit::FlashSale {
                price: f.price.0,
                starts_at: f.starts_at.0.timestamp_millis(),
                ends_at: f.ends_at.0.timestamp_millis(),
            }),
        });
    }
    let payable = lines.iter().fold(0i64, |a, l| a.saturating_add(l.payable));
    let now = input.now.map_or_else(Utc::now, |t| t.0);
    if input.held_coupons.len() > MAX_SAMPLE_LIST || input.chosen_coupons.len() > MAX_SAMPLE_LIST {
        return Err(bad("cart.heldCoupons", "must have at most 100 coupons"));
    }
    if input.points_to_use < 0 || input.member.as_ref().is_some_and(|m| m.points < 0) {
        return Err(bad("cart.pointsToUse", "points must not be negative"));
    }
    for c in &input.held_coupons {
        let amounts_ok = (0..=MAX_UNIT_PRICE).contains(&c.min_spend.0)
            && c.amount_off
                .is_none_or(|a| (0..=MAX_UNIT_PRICE).contains(&a.0))
            && c.percent_off.is_none_or(|p| (1..=100).contains(&p));
        if !amounts_ok {
            return Err(bad(
                "cart.heldCoupons",
                "amounts must be between 0 and 10000000000 and percentOff between 1 and 100",
            ));
        }
    }
    Ok(wit::Cart {
        kind: match input.kind {
            Some(SampleKind::Catalog) => wit::BatchKind::Catalog,
            _ => wit::BatchKind::Cart,
        },
        tenant: tenant.as_str().to_owned(),
        mall: input.mall_id.clone().map(|m| m.0).unwrap_or_default(),
        channel: channel_wit(input.channel.unwrap_or(Channel::App)),
        now: now.timestamp_millis(),
        member: input.member.as_ref().map(|m| wit::Member {
            id: "sample-member".into(),
            level: m.level.to_ascii_lowercase(),
            points: i64::from(m.points),
            tags: m.tags.clone(),
        }),
        lines,
        payable,
        held_coupons: input
            .held_coupons
            .iter()
            .map(|c| wit::Coupon {
                id: c.id.clone(),
                title: c.title.clone(),
                value: match (c.amount_off, c.percent_off) {
                    // Whole percent in the API, basis points in the WIT.
                    (_, Some(percent)) => {
                        wit::CouponValue::PercentOff(percent.unsigned_abs() * 100)
                    }
                    (amount, None) => wit::CouponValue::AmountOff(amount.map_or(0, |a| a.0)),
                },
                min_spend: c.min_spend.0,
                expires_at: c
                    .expires_at
                    .map_or_else(|| now + chrono::Duration::days(30), |t| t.0)
                    .timestamp_millis(),
            })
            .collect(),
        chosen_coupons: input.chosen_coupons.clone(),
        points_to_use: i64::from(input.points_to_use.max(0)),
    })
}

fn channel_wit(c: Channel) -> wit::Channel {
    match c {
        Channel::App => wit::Channel::App,
        Channel::MiniProgram => wit::Channel::MiniProgram,
        Channel::Web => wit::Channel::Web,
        Channel::Pos => wit::Channel::Pos,
    }
}

/// Prices a cart (the `quote` field).
pub async fn quote(req: &RequestContext, input: CartInput) -> Result<Quote, ApiError> {
    let tenant = req.principal.tenant().clone();
    let mall = MallId::parse(input.mall_id.0.clone()).map_err(ApiError::from)?;
    let coupon_ids: Vec<String> = input
        .coupon_ids
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.0)
        .collect();
    if coupon_ids.len() > MAX_COUPONS {
        return Err(bad("couponIds", "must have at most 10 coupons"));
    }
    let points_to_use = i64::from(input.points_to_use.unwrap_or(0));
    if points_to_use < 0 {
        return Err(bad("pointsToUse", "must not be negative"));
    }
    let member_id = req.principal.member().cloned();
    if member_id.is_none() && (!coupon_ids.is_empty() || points_to_use > 0) {
        return Err(ApiError::Unauthenticated);
    }

    // The lines: products of the mall, or one bill line at a store.
    let mut products: Vec<(Product, u32)> = Vec::new();
    match (&input.items, input.bill_amount.map(|m| m.0)) {
        (Some(items), None) => {
            if items.is_empty() || items.len() > MAX_CART_LINES {
                return Err(bad("items", "must have 1 to 100 lines"));
            }
            let mut ids = Vec::with_capacity(items.len());
            let mut seen = HashSet::new();
            for item in items {
                if !(1..=MAX_QUANTITY).contains(&item.quantity) {
                    return Err(bad("items.quantity", "must be between 1 and 999"));
                }
                let id = ProductId::parse(item.product_id.0.clone()).map_err(ApiError::from)?;
                if !seen.insert(id.clone()) {
                    return Err(bad("items", "list each product once, with its quantity"));
                }
                ids.push(id);
            }
            let found = req
                .loaders
                .products
                .load_many(ids.iter().cloned())
                .await
                .map_err(ApiError::from)?;
            for (item, id) in items.iter().zip(&ids) {
                let product = found.get(id).cloned().ok_or_else(|| ApiError::NotFound {
                    what: "product",
                    id: id.to_string(),
                })?;
                if product.mall_id != mall {
                    return Err(bad(
                        "items",
                        "every product must be sold in the cart's mall",
                    ));
                }
                products.push((product, item.quantity as u32));
            }
        }
        (None, Some(amount)) => {
            if !(1..=MAX_BILL).contains(&amount) {
                return Err(bad("billAmount", "must be between 1 and 10000000000"));
            }
            let store_id = input
                .store_id
                .as_ref()
                .ok_or_else(|| bad("storeId", "is required with billAmount"))?;
            let store_id = StoreId::parse(store_id.0.clone()).map_err(ApiError::from)?;
            let store = req
                .loaders
                .store(store_id.clone())
                .await
                .map_err(ApiError::from)?
                .ok_or_else(|| ApiError::NotFound {
                    what: "store",
                    id: store_id.to_string(),
                })?;
            if store.mall_id != mall {
                return Err(bad("storeId", "the store is not in the cart's mall"));
            }
            products.push((
                Product {
                    id: ProductId::parse("bill").map_err(ApiError::from)?,
                    name: format!("Bill at {}", store.name),
                    mall_id: mall.clone(),
                    store_id,
                    category: "store-bill".into(),
                    tags: Vec::new(),
                    list_price: Money::from_minor(amount).map_err(ApiError::from)?,
                    stock: 1,
                    flash_sale: None,
                },
                1,
            ));
        }
        _ => {
            return Err(bad(
                "items",
                "give either items or billAmount (with storeId)",
            ));
        }
    }

    let subtotal = products.iter().fold(0i64, |a, (p, q)| {
        a.saturating_add(p.list_price.minor().saturating_mul(i64::from(*q)))
    });
    if subtotal > MAX_UNIT_PRICE * 100 {
        return Err(bad("items", "the cart's total is larger than allowed"));
    }
    let mut member_failure = None;
    let (member, coupons) = match &member_id {
        Some(id) => {
            let (member, coupons) = futures::join!(req.loaders.member_now(id), async {
                if coupon_ids.is_empty() {
                    Ok(Some(Vec::new()))
                } else {
                    req.loaders.coupons_now(id).await
                }
            });
            let member = match member {
                Ok(member) => member,
                // Degrade, don't fail: a cart without coupons or points is
                // priced as for a visitor, marked as such (and never
                // charged: checkout refuses degraded quotes).
                Err(err) if coupon_ids.is_empty() && points_to_use == 0 => {
                    tracing::warn!(error = %err, "member unavailable: public quote");
                    member_failure = Some(err);
                    None
                }
                Err(err) => return Err(ApiError::from(err)),
            };
            (member, coupons.map_err(ApiError::from)?.unwrap_or_default())
        }
        None => (None, Vec::new()),
    };

    let request = CartRequest {
        mall: mall.as_str(),
        channel: input.channel.unwrap_or(req.channel),
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
        chosen_coupons: coupon_ids,
        points_to_use,
    };
    let snapshot = req.prices.snapshot(&req.pricing, &tenant);
    let priced = req
        .pricing
        .quote(&snapshot, &tenant, &request)
        .await
        .map_err(|f| ApiError::RuleFailed { rule: f.rule_id })?;

    let quote_id = quote_digest(&priced, &products);
    let lines = priced
        .lines
        .iter()
        .zip(&products)
        .map(|(l, (p, q))| QuoteLine {
            id: ID(format!("{quote_id}:{}", l.id)),
            product_id: ID(if p.id.as_str() == "bill" {
                p.store_id.to_string()
            } else {
                p.id.to_string()
            }),
            quantity: *q as i32,
            unit_price: p.list_price,
            subtotal: money(l.subtotal),
            discount: money(l.subtotal - l.payable),
            payable: money(l.payable),
            applied: l.applied.iter().map(AppliedPromotion::from).collect(),
        })
        .collect();
    Ok(Quote {
        lines,
        subtotal: money(priced.subtotal),
        discount: money(priced.discount),
        points_used: points(priced.points_used),
        points_amount: money(priced.points_amount),
        payable: money(priced.payable),
        applied: priced.applied.iter().map(AppliedPromotion::from).collect(),
        applied_detail: priced
            .applied
            .iter()
            .map(|a| order_promotion(&quote_id, a))
            .collect(),
        hints: hints(&priced),
        id: ID(quote_id),
        degraded: priced.degraded || member_failure.is_some(),
        skipped_rules: super::model::SkippedRule::list(&priced.failures),
        public_fallback: member_failure.is_some(),
        member_failure,
    })
}

/// A short digest of everything a quote answers: its lines, amounts and
/// what was applied.
fn quote_digest(priced: &Priced, products: &[(Product, u32)]) -> String {
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
