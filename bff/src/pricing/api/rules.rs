//! Rule deployments as rule authors and operators see them: publishing
//! input, deployments, versions and their counts on this node.

use async_graphql::{ID, InputObject, Object};

use crate::domain::Timestamp;
use crate::graphql::RequestContext;
use crate::pricing::model::{
    Deployment, DeploymentStatus, FailurePolicy, Limits, Scope, Stage, Version,
};
use crate::pricing::registry::{PublishRequest, RuleStats};

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
    pub(super) fn into_request(self) -> PublishRequest {
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
    pub(super) fn new(req: &RequestContext, deployment: Deployment) -> Self {
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
