//! The promotion engine: rules are WebAssembly components (`host`), run in a
//! defined order and refereed (`engine`), and managed in a registry shared by
//! every node (`registry`). This module turns products, members and carts
//! into rule input and the results back into prices; `quoter` prices a
//! member's cart — the one path of the `quote` query and of checkout — and
//! `api` is the GraphQL layer over all of it.

pub mod api;
pub mod engine;
pub mod host;
pub mod limits;
pub mod model;
pub mod pool;
pub mod quoter;
pub mod registry;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use self::engine::{ActiveRule, Priced, Referee, RuleFailed};
use self::host::{Evaluation, wit};
use self::model::{Channel, FailureReason};
use self::pool::{PoolError, Work};
use self::registry::Registry;
use crate::domain::TenantId;
use crate::member::{Coupon, CouponKind, Member};
use crate::product::Product;

/// The engine as the rest of the BFF sees it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Pricing {
    registry: Arc<Registry>,
    budget: std::time::Duration,
}

/// A line of a cart to quote.
#[derive(Debug, Clone)]
pub struct CartLine<'a> {
    /// Line id used in results.
    pub id: String,
    /// The product.
    pub product: &'a Product,
    /// Units.
    pub quantity: u32,
}

/// A cart to quote.
#[derive(Debug, Clone)]
pub struct CartRequest<'a> {
    /// Mall id.
    pub mall: &'a str,
    /// Channel.
    pub channel: Channel,
    /// The member, if known.
    pub member: Option<&'a Member>,
    /// Lines.
    pub lines: Vec<CartLine<'a>>,
    /// Coupons the member holds.
    pub held_coupons: &'a [Coupon],
    /// Coupons the member chose.
    pub chosen_coupons: Vec<String>,
    /// Points the member wants to spend.
    pub points_to_use: i64,
}

impl Pricing {
    /// Wraps a started registry; `budget` is the wall-clock time all rules
    /// of one batch may take together.
    pub fn new(registry: Arc<Registry>, budget: std::time::Duration) -> Self {
        Self { registry, budget }
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The active rules of `tenant` now. A request takes this snapshot
    /// once and prices with it to the end, whatever is activated meanwhile.
    pub fn snapshot(&self, tenant: &TenantId) -> Arc<Vec<ActiveRule>> {
        self.registry.active(tenant.as_str())
    }

    fn rules_for(
        snapshot: &[ActiveRule],
        mall: &str,
        channel: Channel,
        now: DateTime<Utc>,
    ) -> Vec<ActiveRule> {
        snapshot
            .iter()
            .filter(|r| r.version.scope.covers(mall, channel, now))
            .cloned()
            .collect()
    }

    /// Catalogue prices of `products` for `member`: one evaluation per
    /// item-stage rule for the whole batch, on the rule pool. Returns
    /// per-product results and whether the batch is degraded (a rule was
    /// skipped; the rules and why are in the batch's `failures`).
    pub async fn price_catalog(
        &self,
        snapshot: &[ActiveRule],
        tenant: &TenantId,
        mall: &str,
        channel: Channel,
        member: Option<&Member>,
        products: &[&Product],
    ) -> Result<CatalogPrices, RuleFailed> {
        let now = Utc::now();
        let rules: Vec<ActiveRule> = Self::rules_for(snapshot, mall, channel, now)
            .into_iter()
            .filter(|r| r.version.stage == model::Stage::Item)
            .collect();
        if rules.is_empty() {
            // Nothing to run: every product at its list price, without
            // building the rules' input.
            let lines = products
                .iter()
                .map(|p| {
                    let id = p.id.as_str().to_owned();
                    let unit = p.list_price.minor();
                    let line = engine::PricedLine {
                        id: id.clone(),
                        subtotal: unit,
                        payable: unit,
                        applied: Vec::new(),
                    };
                    (id, line)
                })
                .collect();
            return Ok(CatalogPrices {
                degraded: false,
                failures: Vec::new(),
                lines,
            });
        }
        let mut seen = std::collections::HashSet::new();
        let lines: Vec<CartLine<'_>> = products
            .iter()
            .filter(|p| seen.insert(p.id.as_str().to_owned()))
            .map(|p| CartLine {
                id: p.id.as_str().to_owned(),
                product: p,
                quantity: 1,
            })
            .collect();
        let cart = build_cart(
            tenant,
            wit::BatchKind::Catalog,
            &CartRequest {
                mall,
                channel,
                member,
                lines,
                held_coupons: &[],
                chosen_coupons: Vec::new(),
                points_to_use: 0,
            },
            now,
        );
        let priced = self.run_batch(tenant, rules, cart).await?;
        Ok(CatalogPrices {
            degraded: priced.degraded,
            failures: priced.failures,
            lines: priced
                .lines
                .into_iter()
                .map(|l| (l.id.clone(), l))
                .collect(),
        })
    }

    /// Prices a batch on the rule pool, as `tenant`'s work. When the pool
    /// has no room, every rule fails with `ENGINE_BUSY` (the host's
    /// failure: counted, never quarantining) and the policies decide.
    async fn run_batch(
        &self,
        tenant: &TenantId,
        rules: Vec<ActiveRule>,
        mut cart: wit::Cart,
    ) -> Result<Priced, RuleFailed> {
        let registry = self.registry.clone();
        let budget = self.budget;
        let job_tenant = tenant.as_str().to_owned();
        let rules = Arc::new(rules);
        let (job_rules, job_cart) = (rules.clone(), cart.clone());
        let ran = self
            .registry
            .pool()
            .run(tenant.as_str(), Work::Price, move || {
                let mut cart = job_cart;
                let observer = registry.observer(&job_tenant);
                Referee {
                    host: registry.host(),
                    observer: &observer,
                    budget,
                }
                .price(&job_rules, &mut cart)
            })
            .await;
        match ran {
            Ok(priced) => priced,
            Err(error) => {
                let reason = match error {
                    PoolError::Busy => FailureReason::EngineBusy,
                    PoolError::Failed => FailureReason::Instantiation,
                };
                let observer = self.registry.observer(tenant.as_str());
                Referee {
                    host: self.registry.host(),
                    observer: &observer,
                    budget: self.budget,
                }
                .price_with(&rules, &mut cart, &mut |_, _| {
                    Evaluation::skipped(reason.clone())
                })
            }
        }
    }

    /// Prices a cart with every stage, on the rule pool. The result says
    /// whether it is degraded ([`Priced::degraded`]): a checkout must
    /// refuse to charge a degraded price.
    pub async fn quote(
        &self,
        snapshot: &[ActiveRule],
        tenant: &TenantId,
        request: &CartRequest<'_>,
    ) -> Result<Priced, RuleFailed> {
        let now = Utc::now();
        let rules = Self::rules_for(snapshot, request.mall, request.channel, now);
        let cart = build_cart(tenant, wit::BatchKind::Cart, request, now);
        if rules.is_empty() {
            return Ok(unpriced(&cart));
        }
        self.run_batch(tenant, rules, cart).await
    }

    /// Runs one rule alone against a cart on the rule pool (as the
    /// tenant's administrative work), recording nothing.
    pub async fn dry_run(
        &self,
        tenant: &TenantId,
        rule: ActiveRule,
        mut cart: wit::Cart,
    ) -> Result<engine::DryRun, PoolError> {
        let registry = self.registry.clone();
        self.registry
            .pool()
            .run(tenant.as_str(), Work::Admin, move || {
                engine::dry_run(registry.host(), &rule, &mut cart)
            })
            .await
    }
}

/// Catalogue prices of one batch.
#[derive(Debug, Clone, Default)]
pub struct CatalogPrices {
    /// Priced lines by product id.
    pub lines: HashMap<String, engine::PricedLine>,
    /// Whether a rule was skipped for the batch (every price of it may
    /// differ from the one the shop set up).
    pub degraded: bool,
    /// The rules skipped and why.
    pub failures: Vec<engine::Failure>,
}

fn unpriced(cart: &wit::Cart) -> Priced {
    let lines: Vec<engine::PricedLine> = cart
        .lines
        .iter()
        .map(|l| {
            let subtotal = l.unit_price.saturating_mul(i64::from(l.quantity));
            engine::PricedLine {
                id: l.id.clone(),
                subtotal,
                payable: subtotal,
                applied: Vec::new(),
            }
        })
        .collect();
    let subtotal = lines.iter().fold(0i64, |a, l| a.saturating_add(l.subtotal));
    Priced {
        lines,
        subtotal,
        payable: subtotal,
        ..Priced::default()
    }
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Turns domain values into rule input.
pub fn build_cart(
    tenant: &TenantId,
    kind: wit::BatchKind,
    request: &CartRequest<'_>,
    now: DateTime<Utc>,
) -> wit::Cart {
    let lines: Vec<wit::Line> = request
        .lines
        .iter()
        .map(|l| {
            let p = l.product;
            let unit = p.list_price.minor();
            wit::Line {
                id: l.id.clone(),
                sku: p.id.as_str().to_owned(),
                store: p.store_id.as_str().to_owned(),
                category: p.category.clone(),
                tags: p.tags.clone(),
                unit_price: unit,
                quantity: l.quantity,
                payable: unit.saturating_mul(i64::from(l.quantity)),
                flash_sale: p.flash_sale.as_ref().map(|f| wit::FlashSale {
                    price: f.price.minor(),
                    starts_at: millis(f.starts_at.0),
                    ends_at: millis(f.ends_at.0),
                }),
            }
        })
        .collect();
    let payable = lines.iter().fold(0i64, |a, l| a.saturating_add(l.payable));
    wit::Cart {
        kind,
        tenant: tenant.as_str().to_owned(),
        mall: request.mall.to_owned(),
        channel: match request.channel {
            Channel::App => wit::Channel::App,
            Channel::MiniProgram => wit::Channel::MiniProgram,
            Channel::Web => wit::Channel::Web,
            Channel::Pos => wit::Channel::Pos,
        },
        now: millis(now),
        member: request.member.map(|m| wit::Member {
            id: m.id.as_str().to_owned(),
            level: m.level.to_ascii_lowercase(),
            points: m.points,
            tags: m.tags.clone(),
        }),
        lines,
        payable,
        held_coupons: request
            .held_coupons
            .iter()
            .map(|c| wit::Coupon {
                id: c.id.as_str().to_owned(),
                title: c.title.clone(),
                value: match c.kind {
                    CouponKind::Cash => {
                        wit::CouponValue::AmountOff(c.amount_off.map_or(0, |m| m.minor()))
                    }
                    CouponKind::PercentOff => {
                        wit::CouponValue::PercentOff(c.percent_off.unwrap_or(0) * 100)
                    }
                },
                min_spend: c.min_spend.minor(),
                expires_at: millis(c.expires_at),
            })
            .collect(),
        chosen_coupons: request.chosen_coupons.clone(),
        points_to_use: request.points_to_use,
    }
}
