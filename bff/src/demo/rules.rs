//! The demo tenant's promotion deployments, built from the example rules in
//! `components/rules/`, so the embedded default shows member prices, a
//! spend-more offer, coupons and points out of the box.

use crate::pricing::model::{FailurePolicy, Limits, Scope, Stage};
use crate::pricing::registry::{PublishRequest, Registry, RegistryError};

/// Compiled example rules (core modules carrying their component type).
pub mod wasm {
    /// Member-level discount.
    pub const MEMBER_DISCOUNT: &[u8] = include_bytes!(concat!(
        env!("PROMOTION_RULES_WASM_DIR"),
        "/rule_member_discount.wasm"
    ));
    /// Flash-sale price.
    pub const FLASH_SALE: &[u8] = include_bytes!(concat!(
        env!("PROMOTION_RULES_WASM_DIR"),
        "/rule_flash_sale.wasm"
    ));
    /// Spend X get Y off.
    pub const SPEND_THRESHOLD: &[u8] = include_bytes!(concat!(
        env!("PROMOTION_RULES_WASM_DIR"),
        "/rule_spend_threshold.wasm"
    ));
    /// Coupons.
    pub const COUPON: &[u8] = include_bytes!(concat!(
        env!("PROMOTION_RULES_WASM_DIR"),
        "/rule_coupon.wasm"
    ));
    /// Points offset.
    pub const POINTS_OFFSET: &[u8] = include_bytes!(concat!(
        env!("PROMOTION_RULES_WASM_DIR"),
        "/rule_points_offset.wasm"
    ));
}

/// One demo deployment.
pub struct DemoRule {
    /// Deployment name.
    pub name: &'static str,
    /// Component bytes.
    pub wasm: &'static [u8],
    /// Stage.
    pub stage: Stage,
    /// Priority.
    pub priority: i32,
    /// Stacking group.
    pub group: Option<&'static str>,
    /// Settings.
    pub config: &'static str,
}

/// The demo deployments.
pub const DEMO_RULES: &[DemoRule] = &[
    DemoRule {
        name: "flash-sale",
        wasm: wasm::FLASH_SALE,
        stage: Stage::Item,
        priority: 10,
        group: Some("item-price"),
        config: r#"{"label":"Flash sale","limit_per_order":2}"#,
    },
    DemoRule {
        name: "member-price",
        wasm: wasm::MEMBER_DISCOUNT,
        stage: Stage::Item,
        priority: 20,
        group: Some("item-price"),
        config: r#"{"levels":{"silver":200,"gold":500,"platinum":800}}"#,
    },
    DemoRule {
        name: "spend-200-save-30",
        wasm: wasm::SPEND_THRESHOLD,
        stage: Stage::Order,
        priority: 10,
        group: None,
        config: r#"{"threshold":20000,"off":3000,"repeatable":true,"max_times":3}"#,
    },
    DemoRule {
        name: "coupons",
        wasm: wasm::COUPON,
        stage: Stage::Coupon,
        priority: 10,
        group: None,
        config: r#"{"max_per_order":1}"#,
    },
    DemoRule {
        name: "points",
        wasm: wasm::POINTS_OFFSET,
        stage: Stage::Points,
        priority: 10,
        group: None,
        config: r#"{"points_per_yuan":100,"max_share_bp":3000}"#,
    },
];

/// Publishes and activates the demo deployments for `tenant` unless it
/// already has deployments.
pub async fn install(registry: &Registry, tenant: &str) -> Result<bool, RegistryError> {
    if !registry.deployments(tenant).await?.is_empty() {
        return Ok(false);
    }
    for rule in DEMO_RULES {
        let (sha, _) = registry.upload(tenant, rule.wasm.to_vec()).await?;
        registry
            .publish(
                tenant,
                "demo",
                PublishRequest {
                    name: rule.name.to_owned(),
                    component: sha,
                    config: rule.config.to_owned(),
                    scope: Scope::default(),
                    stage: rule.stage,
                    priority: rule.priority,
                    stacking_group: rule.group.map(str::to_owned),
                    limits: Limits::default(),
                    failure_policy: FailurePolicy::Skip,
                },
                true,
            )
            .await?;
    }
    Ok(true)
}
