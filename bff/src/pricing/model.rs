//! The vocabulary of the promotion engine: stages, limits, failure reasons and
//! deployments as they are stored.

use async_graphql::{Enum, InputObject, SimpleObject};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// When a rule runs. Stages run in this order; within a stage, by priority.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Enum,
)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Per-line price rules (member price, flash sale). The only stage used
    /// for catalogue prices.
    Item,
    /// Whole-order rules (spend X get Y off).
    Order,
    /// Coupon redemption.
    Coupon,
    /// Points offset.
    Points,
}

impl Stage {
    /// All stages in running order.
    pub const ALL: [Stage; 4] = [Stage::Item, Stage::Order, Stage::Coupon, Stage::Points];
}

/// What happens when a rule fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, Enum)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Price without the rule; the quote and checkout go on.
    #[default]
    Skip,
    /// Refuse the quote with `RULE_FAILED` (for rules a price must never be
    /// computed without).
    FailClosed,
}

/// Sandbox limits of one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, SimpleObject, InputObject)]
#[graphql(input_name = "LimitsInput")]
#[serde(default)]
pub struct Limits {
    /// Fuel per evaluation (about one unit per WebAssembly instruction).
    pub fuel: u64,
    /// Linear-memory cap in bytes.
    pub memory_bytes: u64,
    /// Time limit in milliseconds, counted in CPU time of the rule's own
    /// evaluation (time waiting for a thread or a CPU never counts). A
    /// wall-clock backstop stops an evaluation the node cannot schedule
    /// (`HOST_OVERLOADED`, not the rule's fault).
    pub timeout_ms: u64,
    /// Largest input (cart + config) in bytes.
    pub max_input_bytes: u64,
    /// Largest outcome in bytes.
    pub max_output_bytes: u64,
    /// Log entries kept per evaluation.
    pub max_log_entries: u32,
    /// Most this rule may take off one batch, in minor units (0: no cap).
    /// Larger proposals are reduced to the cap.
    pub max_discount: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 5_000_000,
            memory_bytes: 4 * 1024 * 1024,
            timeout_ms: 50,
            max_input_bytes: 256 * 1024,
            max_output_bytes: 256 * 1024,
            max_log_entries: 64,
            max_discount: 0,
        }
    }
}

/// Why a rule produced nothing usable. Each has a stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    /// The fuel budget ran out.
    OutOfFuel,
    /// The wall-clock backstop fired.
    DeadlineExceeded,
    /// The rule tried to grow memory past its cap.
    OutOfMemory,
    /// The rule trapped on an invalid operation (bad memory access, integer
    /// division by zero, an indirect call of the wrong type).
    Trap,
    /// The rule panicked (`unreachable` executed: how a Rust panic ends in
    /// a guest built with `panic = "abort"`).
    Panic,
    /// The rule recursed past the host's WebAssembly stack limit.
    StackOverflow,
    /// The input was larger than the deployment allows.
    InputTooLarge,
    /// The outcome was larger than the deployment allows.
    OutputTooLarge,
    /// The rule proposed something the host refuses.
    InvalidOutput(String),
    /// The rule returned an error.
    RuleError(String),
    /// The rule could not be instantiated (a binary the host cannot load).
    Instantiation,
    /// The batch's time budget was spent by the rules before this one.
    BudgetExhausted,
    /// The node had no room to run the rule: its evaluation queue, its
    /// tenant's share of the pool or the instance pool was full, or the
    /// evaluation waited in the queue longer than allowed. The host's
    /// failure, never the rule's.
    EngineBusy,
    /// The node was so overloaded that the rule ran far past its time limit
    /// in wall-clock time without using its CPU time. The host's failure,
    /// never the rule's.
    HostOverloaded,
}

impl FailureReason {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            FailureReason::OutOfFuel => "OUT_OF_FUEL",
            FailureReason::DeadlineExceeded => "DEADLINE_EXCEEDED",
            FailureReason::OutOfMemory => "OUT_OF_MEMORY",
            FailureReason::Trap => "TRAP",
            FailureReason::Panic => "PANIC",
            FailureReason::StackOverflow => "STACK_OVERFLOW",
            FailureReason::InputTooLarge => "INPUT_TOO_LARGE",
            FailureReason::OutputTooLarge => "OUTPUT_TOO_LARGE",
            FailureReason::InvalidOutput(_) => "INVALID_OUTPUT",
            FailureReason::RuleError(_) => "RULE_ERROR",
            FailureReason::Instantiation => "INSTANTIATION_FAILED",
            FailureReason::BudgetExhausted => "BUDGET_EXHAUSTED",
            FailureReason::EngineBusy => "ENGINE_BUSY",
            FailureReason::HostOverloaded => "HOST_OVERLOADED",
        }
    }

    /// Human-readable detail for the rule's author.
    pub fn detail(&self) -> String {
        match self {
            FailureReason::OutOfFuel => "the evaluation used up its fuel budget".into(),
            FailureReason::DeadlineExceeded => "the evaluation ran past its time limit".into(),
            FailureReason::OutOfMemory => "the rule tried to grow memory past its cap".into(),
            FailureReason::Trap => "the rule trapped on an invalid operation".into(),
            FailureReason::Panic => "the rule panicked (unreachable code was reached)".into(),
            FailureReason::StackOverflow => "the rule overflowed its call stack".into(),
            FailureReason::InputTooLarge => "the cart is larger than the rule's input limit".into(),
            FailureReason::OutputTooLarge => "the outcome is larger than the output limit".into(),
            FailureReason::InvalidOutput(why) => why.clone(),
            FailureReason::RuleError(why) => why.clone(),
            FailureReason::Instantiation => "the rule could not be instantiated".into(),
            FailureReason::BudgetExhausted => {
                "the rules before this one used up the batch's time budget".into()
            }
            FailureReason::EngineBusy => {
                "the node had no room to run the rule; it was skipped, not blamed".into()
            }
            FailureReason::HostOverloaded => {
                "the node was too busy to give the rule its CPU time; it was skipped, not blamed"
                    .into()
            }
        }
    }

    /// Whether the failure is evidence against the rule itself. Failures of
    /// the host (a full pool or queue, an overloaded node, a spent batch
    /// budget) and a cart over the rule's input cap are counted but never
    /// lead to quarantine.
    pub fn is_rules_fault(&self) -> bool {
        !matches!(
            self,
            FailureReason::Instantiation
                | FailureReason::InputTooLarge
                | FailureReason::BudgetExhausted
                | FailureReason::EngineBusy
                | FailureReason::HostOverloaded
        )
    }
}

/// A rule that was skipped when a price or quote was computed: the
/// result may differ from what the shop set up.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct SkippedRule {
    /// `name@version` of the deployment.
    pub rule_id: String,
    /// Why it was skipped: the failure code, e.g. `DEADLINE_EXCEEDED`,
    /// `BUDGET_EXHAUSTED` or `ENGINE_BUSY`.
    pub code: String,
}

impl crate::graphql::plain::PlainFields for SkippedRule {
    const TYPE_NAME: &'static str = "SkippedRule";

    fn plain_field(
        &self,
        _: &async_graphql::ContextSelectionSet<'_>,
        field: &async_graphql::parser::types::Field,
    ) -> Option<async_graphql::Value> {
        match field.name.node.as_str() {
            "ruleId" => crate::graphql::plain::string(&self.rule_id),
            "code" => crate::graphql::plain::string(&self.code),
            _ => None,
        }
    }
}

impl SkippedRule {
    /// The skipped rules of a pricing's failures.
    pub fn list(failures: &[super::engine::Failure]) -> Vec<SkippedRule> {
        failures
            .iter()
            .map(|f| SkippedRule {
                rule_id: f.rule_id.clone(),
                code: f.code.to_owned(),
            })
            .collect()
    }
}

/// Channels a deployment can be limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Enum)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// The mobile app.
    App,
    /// A mini-program.
    MiniProgram,
    /// The web shop.
    Web,
    /// A store's point of sale.
    Pos,
}

/// Where and when a deployment applies. Empty lists mean "all".
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, SimpleObject, InputObject,
)]
#[graphql(input_name = "ScopeInput")]
#[serde(default)]
pub struct Scope {
    /// Malls the rule applies in (empty: every mall of the tenant).
    pub malls: Vec<String>,
    /// Channels the rule applies on (empty: every channel).
    pub channels: Vec<Channel>,
    /// Start of the rule's window (inclusive).
    pub starts_at: Option<crate::domain::Timestamp>,
    /// End of the rule's window (exclusive).
    pub ends_at: Option<crate::domain::Timestamp>,
}

impl Scope {
    /// Whether a batch in `mall`, on `channel`, at `now` is in scope.
    pub fn covers(&self, mall: &str, channel: Channel, now: DateTime<Utc>) -> bool {
        (self.malls.is_empty() || self.malls.iter().any(|m| m == mall))
            && (self.channels.is_empty() || self.channels.contains(&channel))
            && self.starts_at.is_none_or(|s| now >= s.0)
            && self.ends_at.is_none_or(|e| now < e.0)
    }
}

/// One published version of a deployment: immutable once written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// 1, 2, 3, … within the deployment.
    pub version: u32,
    /// sha256 of the component bytes.
    pub component: String,
    /// The settings string handed to the rule.
    pub config: String,
    /// Where and when it applies.
    pub scope: Scope,
    /// Running stage.
    pub stage: Stage,
    /// Order within the stage (lower runs first).
    pub priority: i32,
    /// Rules sharing a stacking group never stack: per line, and per order,
    /// only the one saving the member most applies.
    pub stacking_group: Option<String>,
    /// Sandbox limits.
    pub limits: Limits,
    /// What a failure does.
    pub failure_policy: FailurePolicy,
    /// When it was published.
    pub published_at: DateTime<Utc>,
    /// Who published it (token subject).
    pub published_by: String,
}

/// The lifecycle state of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Published but not running.
    Inactive,
    /// Running on its active version.
    Active,
    /// Stopped automatically after repeated failures.
    Quarantined,
}

/// A named rule deployment of one tenant, with its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// Tenant that owns it.
    pub tenant: String,
    /// Name, unique within the tenant (e.g. "gold-member-price").
    pub name: String,
    /// Every version ever published, oldest first.
    pub versions: Vec<Version>,
    /// The version that runs when the deployment is active.
    pub active_version: Option<u32>,
    /// Lifecycle state.
    pub status: DeploymentStatus,
    /// Why it was quarantined, if it was.
    pub quarantine_reason: Option<String>,
    /// Bumped on every change; used for optimistic concurrency.
    pub revision: u64,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Deployment {
    /// The version with number `n`.
    pub fn version(&self, n: u32) -> Option<&Version> {
        self.versions.iter().find(|v| v.version == n)
    }

    /// The version that runs, if the deployment is active.
    pub fn running(&self) -> Option<&Version> {
        match self.status {
            DeploymentStatus::Active => self.active_version.and_then(|n| self.version(n)),
            _ => None,
        }
    }
}
