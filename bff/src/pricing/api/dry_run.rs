//! `testRule`: one rule run alone against a sample cart, with what the
//! host would apply, its fuel, time and logs. Nothing is activated or
//! counted.

use std::collections::HashSet;
use std::sync::Arc;

use async_graphql::{Enum, ID, InputObject, SimpleObject};
use chrono::Utc;

use super::quote::order_promotion;
use super::{OrderPromotion, PromotionHint, bad, money, points};
use crate::domain::{MinorUnits, TenantId, Timestamp};
use crate::error::ApiError;
use crate::graphql::RequestContext;
use crate::pricing::engine::ActiveRule;
use crate::pricing::host::{LogLevel, wit};
use crate::pricing::model::{Channel, FailurePolicy, Limits, Scope, Stage, Version};

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

pub(super) async fn test_rule(
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
                .map_err(|e| ApiError::from(crate::pricing::registry::RegistryError::Store(e)))?
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
    crate::pricing::registry::validate_limits(&rule.version.limits).map_err(ApiError::from)?;
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
                crate::pricing::pool::PoolError::Busy => crate::error::code::ENGINE_BUSY,
                crate::pricing::pool::PoolError::Failed => {
                    crate::error::code::INTERNAL_SERVER_ERROR
                }
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
