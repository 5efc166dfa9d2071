//! The referee: runs a tenant's active deployments over a batch in a defined
//! order, validates every proposal, applies stacking groups and caps, and
//! records what each rule applied.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::host::{CompiledRule, Evaluation, LogEntry, RuleHost, sanitize, wit};
use super::model::{FailurePolicy, FailureReason, Stage, Version};

/// What the host accepts from one rule and keeps for one batch. Every
/// bound is applied before anything is copied into a price or a quote.
pub mod caps {
    /// Line discounts one rule may propose: two per line of the batch,
    /// plus this many.
    pub const LINE_DISCOUNTS_EXTRA: usize = 8;
    /// Order discounts one rule may propose.
    pub const ORDER_DISCOUNTS_PER_RULE: usize = 16;
    /// Hints one rule may give.
    pub const HINTS_PER_RULE: usize = 8;
    /// Hints kept per batch (later ones are dropped).
    pub const HINTS_PER_BATCH: usize = 16;
    /// Applied entries (line and order discounts, points) per batch: a
    /// rule whose proposal would exceed it is refused (`INVALID_OUTPUT`).
    pub const APPLIED_PER_BATCH: usize = 1_000;
    /// Largest hint shortfall (minor units): ¥100,000,000,000.
    pub const MAX_SHORTFALL: i64 = 10_000_000_000_000;
    /// Characters kept of a label.
    pub const LABEL_CHARS: usize = 120;
    /// Characters kept of a hint's message.
    pub const HINT_MESSAGE_CHARS: usize = 300;
    /// Characters kept of a hint's code.
    pub const HINT_CODE_CHARS: usize = 64;
    /// Characters kept of a failure's detail (stored, logged, shown).
    pub const DETAIL_CHARS: usize = 300;
}

/// A deployment version ready to run.
#[derive(Debug, Clone)]
pub struct ActiveRule {
    /// Deployment name (unique within the tenant).
    pub name: String,
    /// The version that runs.
    pub version: Arc<Version>,
    /// Its compiled component.
    pub compiled: Arc<CompiledRule>,
    /// The deployment record's revision this rule was loaded from.
    pub revision: u64,
}

impl ActiveRule {
    /// The id shown to clients: `name@version`.
    pub fn rule_id(&self) -> String {
        format!("{}@{}", self.name, self.version.version)
    }
}

/// What one rule applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `name@version` of the deployment.
    pub rule_id: String,
    /// Label the rule gave.
    pub label: String,
    /// Money taken off (minor units).
    pub amount: i64,
    /// The line it applies to, for line discounts.
    pub line_id: Option<String>,
    /// The coupon it redeems, for coupon discounts.
    pub coupon_id: Option<String>,
    /// Points spent, for a points offset.
    pub points: i64,
}

/// A hint for the member, with the rule that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// `name@version`.
    pub rule_id: String,
    /// Stable code.
    pub code: String,
    /// Text for the member.
    pub message: String,
    /// How much more to spend, if that applies.
    pub shortfall: Option<i64>,
}

/// A rule that failed during this pricing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Deployment name.
    pub name: String,
    /// `name@version`.
    pub rule_id: String,
    /// Stable reason code.
    pub code: &'static str,
    /// Detail for the author.
    pub detail: String,
}

/// One line after pricing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedLine {
    /// Line id as given.
    pub id: String,
    /// `unit_price * quantity`.
    pub subtotal: i64,
    /// What the line costs after line discounts.
    pub payable: i64,
    /// Line discounts applied, in order.
    pub applied: Vec<Applied>,
}

/// The priced batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Priced {
    /// Lines in input order.
    pub lines: Vec<PricedLine>,
    /// Sum of line subtotals.
    pub subtotal: i64,
    /// Everything taken off, points offset excluded.
    pub discount: i64,
    /// Points spent.
    pub points_used: i64,
    /// Money the points pay.
    pub points_amount: i64,
    /// What the member pays.
    pub payable: i64,
    /// Every applied promotion, in order.
    pub applied: Vec<Applied>,
    /// Hints, in rule order.
    pub hints: Vec<Hint>,
    /// Rules that failed and were skipped.
    pub failures: Vec<Failure>,
    /// Whether a rule in scope was skipped (see `failures` for which and
    /// why): the price was computed without every rule the shop set up.
    /// Show it as provisional; checkout must refuse to charge it.
    pub degraded: bool,
}

impl Priced {
    /// The rules skipped, as `(rule id, failure code)`.
    pub fn skipped(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.failures.iter().map(|f| (f.rule_id.as_str(), f.code))
    }
}

/// A rule with fail-closed policy failed: the batch cannot be priced.
#[derive(Debug, Clone, thiserror::Error)]
#[error("rule {rule_id} failed ({code}) and its policy refuses to price without it")]
pub struct RuleFailed {
    /// `name@version`.
    pub rule_id: String,
    /// Failure code.
    pub code: &'static str,
}

/// Receives every evaluation's result (for metrics, counting, quarantine).
pub trait Observer: Send + Sync {
    /// Called once per evaluation.
    fn observed(&self, rule: &ActiveRule, evaluation: &Evaluation, failure: Option<&FailureReason>);
}

/// Runs rules over a batch.
pub struct Referee<'a> {
    /// The host.
    pub host: &'a RuleHost,
    /// Receives every evaluation.
    pub observer: &'a dyn Observer,
    /// Wall-clock time all rules of one batch may take together; rules
    /// left when it is spent fail with `BUDGET_EXHAUSTED`.
    pub budget: Duration,
}

struct State {
    applied: usize,
    hints: usize,
    line_payable: Vec<i64>,
    order_discount: i64,
    points_used: i64,
    points_amount: i64,
    coupons_used: HashSet<String>,
}

impl State {
    fn payable(&self) -> i64 {
        self.line_payable
            .iter()
            .fold(0i64, |a, b| a.saturating_add(*b))
            .saturating_sub(self.order_discount)
            .saturating_sub(self.points_amount)
    }
}

/// One rule's accepted proposals, before they are applied.
struct Proposal {
    lines: Vec<(usize, i64, String)>,
    order: Vec<(i64, String, Option<String>)>,
    points: Option<(i64, i64, String)>,
    hints: Vec<wit::Hint>,
}

impl Proposal {
    fn total(&self) -> i64 {
        // Every amount was checked against a payable, so this cannot
        // overflow; saturate anyway.
        self.lines
            .iter()
            .map(|l| l.1)
            .chain(self.order.iter().map(|o| o.0))
            .chain(self.points.as_ref().map(|p| p.1))
            .fold(0i64, i64::saturating_add)
    }
}

impl Referee<'_> {
    /// Prices `cart` with `rules` (already filtered to the batch's scope).
    /// Catalogue batches run only item-stage rules.
    pub fn price(&self, rules: &[ActiveRule], cart: &mut wit::Cart) -> Result<Priced, RuleFailed> {
        let host = self.host;
        self.price_with(rules, cart, &mut |rule, cart| {
            host.evaluate(
                &rule.compiled,
                &rule.version.limits,
                &rule.version.config,
                cart,
            )
        })
    }

    /// Like [`Referee::price`], with `evaluate` standing in for the host
    /// (a dry run's one evaluation, or a failure for every rule when the
    /// node had no room to run them).
    pub fn price_with(
        &self,
        rules: &[ActiveRule],
        cart: &mut wit::Cart,
        evaluate: &mut dyn FnMut(&ActiveRule, &wit::Cart) -> Evaluation,
    ) -> Result<Priced, RuleFailed> {
        let catalog = matches!(cart.kind, wit::BatchKind::Catalog);
        let mut state = State {
            applied: 0,
            hints: 0,
            line_payable: cart
                .lines
                .iter()
                .map(|l| l.unit_price.saturating_mul(i64::from(l.quantity)))
                .collect(),
            order_discount: 0,
            points_used: 0,
            points_amount: 0,
            coupons_used: HashSet::new(),
        };
        let mut priced = Priced {
            lines: cart
                .lines
                .iter()
                .zip(&state.line_payable)
                .map(|(l, &subtotal)| PricedLine {
                    id: l.id.clone(),
                    subtotal,
                    payable: subtotal,
                    applied: Vec::new(),
                })
                .collect(),
            subtotal: state
                .line_payable
                .iter()
                .fold(0i64, |a, b| a.saturating_add(*b)),
            ..Priced::default()
        };
        let index: HashMap<&str, usize> = cart
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| (l.id.as_str(), i))
            .collect();
        let index: HashMap<String, usize> =
            index.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();

        let mut ordered: Vec<&ActiveRule> = rules
            .iter()
            .filter(|r| !catalog || r.version.stage == Stage::Item)
            .collect();
        ordered.sort_by(|a, b| {
            (a.version.stage, a.version.priority, &a.name).cmp(&(
                b.version.stage,
                b.version.priority,
                &b.name,
            ))
        });

        // Group consecutive runs: a stacking group runs where its first member
        // (by stage, priority) would run; its members see the same state.
        let started = std::time::Instant::now();
        let mut done: HashSet<&str> = HashSet::new();
        for (i, rule) in ordered.iter().enumerate() {
            if done.contains(rule.name.as_str()) {
                continue;
            }
            let members: Vec<&ActiveRule> = match &rule.version.stacking_group {
                Some(group) => ordered[i..]
                    .iter()
                    .copied()
                    .filter(|r| {
                        r.version.stage == rule.version.stage
                            && r.version.stacking_group.as_deref() == Some(group)
                    })
                    .collect(),
                None => vec![*rule],
            };
            sync_cart(cart, &state);
            let mut proposals = Vec::with_capacity(members.len());
            for member in &members {
                done.insert(member.name.as_str());
                let over_budget = started.elapsed() > self.budget;
                let evaluation = if over_budget {
                    Evaluation::skipped(FailureReason::BudgetExhausted)
                } else {
                    evaluate(member, cart)
                };
                if let Some(p) =
                    self.run_one(member, evaluation, cart, &state, &index, &mut priced)?
                {
                    proposals.push((*member, p));
                }
            }
            if proposals.len() > 1 {
                proposals = best_per_line_and_order(proposals);
            }
            for (member, proposal) in proposals {
                apply(member, proposal, &mut state, &mut priced, catalog);
            }
        }

        for (line, payable) in priced.lines.iter_mut().zip(&state.line_payable) {
            line.payable = *payable;
        }
        priced.points_used = state.points_used;
        priced.points_amount = state.points_amount;
        priced.payable = state.payable().max(0);
        priced.discount = priced.subtotal - priced.payable - state.points_amount;
        priced.degraded = !priced.failures.is_empty();
        Ok(priced)
    }

    fn run_one(
        &self,
        rule: &ActiveRule,
        evaluation: Evaluation,
        cart: &wit::Cart,
        state: &State,
        index: &HashMap<String, usize>,
        priced: &mut Priced,
    ) -> Result<Option<Proposal>, RuleFailed> {
        let catalog = matches!(cart.kind, wit::BatchKind::Catalog);
        let checked = match &evaluation.result {
            Ok(Ok(outcome)) => validate(rule, outcome, cart, state, index, catalog),
            Ok(Err(error)) => Err(FailureReason::RuleError(rule_error_text(error))),
            Err(reason) => Err(reason.clone()),
        };
        match checked {
            Ok(proposal) => {
                self.observer.observed(rule, &evaluation, None);
                Ok(Some(proposal))
            }
            Err(reason) => {
                self.observer.observed(rule, &evaluation, Some(&reason));
                let detail = sanitize(&reason.detail(), caps::DETAIL_CHARS);
                tracing::warn!(
                    rule = %rule.rule_id(),
                    code = reason.code(),
                    %detail,
                    "promotion rule failed"
                );
                if rule.version.failure_policy == FailurePolicy::FailClosed {
                    return Err(RuleFailed {
                        rule_id: rule.rule_id(),
                        code: reason.code(),
                    });
                }
                priced.failures.push(Failure {
                    name: rule.name.clone(),
                    rule_id: rule.rule_id(),
                    code: reason.code(),
                    detail,
                });
                Ok(None)
            }
        }
    }
}

/// Text of a rule's own error, bounded and safe to log.
pub fn rule_error_text(error: &wit::RuleError) -> String {
    let text = match error {
        wit::RuleError::InvalidConfig(m) => format!("invalid config: {m}"),
        wit::RuleError::Failed(m) => m.clone(),
    };
    sanitize(&text, caps::DETAIL_CHARS)
}

fn sync_cart(cart: &mut wit::Cart, state: &State) {
    for (line, payable) in cart.lines.iter_mut().zip(&state.line_payable) {
        line.payable = *payable;
    }
    cart.payable = state.payable().max(0);
}

/// Checks a rule's outcome against the batch and the rule's stage, then
/// applies its cap.
fn validate(
    rule: &ActiveRule,
    outcome: &wit::Outcome,
    cart: &wit::Cart,
    state: &State,
    index: &HashMap<String, usize>,
    catalog: bool,
) -> Result<Proposal, FailureReason> {
    let stage = rule.version.stage;
    let invalid = |why: String| Err(FailureReason::InvalidOutput(why));
    let mut lines: Vec<(usize, i64, String)> = Vec::with_capacity(outcome.line_discounts.len());
    let mut per_line: HashMap<usize, i64> = HashMap::new();
    if !outcome.line_discounts.is_empty() && stage == Stage::Points {
        return invalid("a points-stage rule proposed line discounts".into());
    }
    let line_cap = cart.lines.len() * 2 + caps::LINE_DISCOUNTS_EXTRA;
    if outcome.line_discounts.len() > line_cap {
        return invalid(format!(
            "{} line discounts; at most {line_cap} for this batch",
            outcome.line_discounts.len()
        ));
    }
    if outcome.order_discounts.len() > caps::ORDER_DISCOUNTS_PER_RULE {
        return invalid(format!(
            "{} order discounts; at most {}",
            outcome.order_discounts.len(),
            caps::ORDER_DISCOUNTS_PER_RULE
        ));
    }
    if !catalog && outcome.hints.len() > caps::HINTS_PER_RULE {
        return invalid(format!(
            "{} hints; at most {}",
            outcome.hints.len(),
            caps::HINTS_PER_RULE
        ));
    }
    if let Some(h) = outcome
        .hints
        .iter()
        .find(|h| h.shortfall.is_some_and(|s| s > caps::MAX_SHORTFALL))
    {
        return invalid(format!(
            "hint shortfall {} is above the largest amount {}",
            h.shortfall.unwrap_or_default(),
            caps::MAX_SHORTFALL
        ));
    }
    for d in &outcome.line_discounts {
        let Some(&i) = index.get(&d.line_id) else {
            return invalid(format!(
                "line discount on unknown line {:?}",
                truncate(&d.line_id)
            ));
        };
        if d.amount < 0 {
            return invalid(format!(
                "negative discount {} on line {:?}",
                d.amount,
                truncate(&d.line_id)
            ));
        }
        if d.amount == 0 {
            continue;
        }
        let total = per_line.entry(i).or_insert(0);
        *total = total.saturating_add(d.amount);
        if *total > state.line_payable[i] {
            return invalid(format!(
                "discounts of {} on line {:?} exceed its payable {}",
                total,
                truncate(&d.line_id),
                state.line_payable[i]
            ));
        }
        lines.push((i, d.amount, label(&d.label, &rule.name)));
    }

    let mut order = Vec::new();
    let mut points = None;
    if !catalog {
        if !outcome.order_discounts.is_empty() && matches!(stage, Stage::Item | Stage::Points) {
            return invalid(format!(
                "an {}-stage rule proposed an order discount",
                stage_name(stage)
            ));
        }
        let payable_after_lines = state.payable() - lines.iter().map(|l| l.1).sum::<i64>();
        let mut order_total = 0i64;
        let mut coupons: HashSet<&str> = HashSet::new();
        for d in &outcome.order_discounts {
            if d.amount < 0 {
                return invalid(format!("negative order discount {}", d.amount));
            }
            if let Some(coupon) = &d.coupon_id {
                let chosen = cart.chosen_coupons.iter().any(|c| c == coupon);
                let held = cart.held_coupons.iter().find(|c| &c.id == coupon);
                let Some(held) = held.filter(|_| chosen) else {
                    return invalid(format!(
                        "coupon {:?} was not chosen by the member or is not held",
                        truncate(coupon)
                    ));
                };
                if state.coupons_used.contains(coupon) || !coupons.insert(coupon) {
                    return invalid(format!("coupon {:?} redeemed twice", truncate(coupon)));
                }
                // What the host knows of the coupon bounds what it may take.
                if held.expires_at <= cart.now {
                    return invalid(format!("coupon {:?} has expired", truncate(coupon)));
                }
                if held.min_spend > payable_after_lines {
                    return invalid(format!(
                        "coupon {:?} needs a spend of {}; the payable is {payable_after_lines}",
                        truncate(coupon),
                        held.min_spend
                    ));
                }
                let face = match held.value {
                    wit::CouponValue::AmountOff(a) => a,
                    wit::CouponValue::PercentOff(bp) => {
                        (i128::from(payable_after_lines) * i128::from(bp.min(10_000)) / 10_000)
                            as i64
                    }
                };
                if d.amount > face {
                    return invalid(format!(
                        "coupon {:?} is worth at most {face}; the rule proposed {}",
                        truncate(coupon),
                        d.amount
                    ));
                }
            }
            if d.amount == 0 {
                continue;
            }
            order_total = order_total.saturating_add(d.amount);
            if order_total > payable_after_lines {
                return invalid(format!(
                    "order discounts of {order_total} exceed the payable {payable_after_lines}"
                ));
            }
            order.push((d.amount, label(&d.label, &rule.name), d.coupon_id.clone()));
        }
        if let Some(p) = &outcome.points {
            if stage != Stage::Points {
                return invalid(format!(
                    "an {}-stage rule proposed a points offset",
                    stage_name(stage)
                ));
            }
            let balance = cart.member.as_ref().map_or(0, |m| m.points) - state.points_used;
            if p.points < 0 || p.amount < 0 {
                return invalid("negative points offset".into());
            }
            if p.points > balance || p.points > cart.points_to_use.saturating_sub(state.points_used)
            {
                return invalid(format!(
                    "points offset spends {} points; the member has {} and asked for {}",
                    p.points, balance, cart.points_to_use
                ));
            }
            if p.amount > payable_after_lines - order_total {
                return invalid(format!(
                    "points offset of {} exceeds the payable {}",
                    p.amount,
                    payable_after_lines - order_total
                ));
            }
            if p.points > 0 && p.amount > 0 {
                points = Some((p.points, p.amount, label(&p.label, &rule.name)));
            }
        }
    }

    let mut proposal = Proposal {
        lines,
        order,
        points,
        hints: if catalog {
            Vec::new()
        } else {
            outcome.hints.clone()
        },
    };
    cap(&mut proposal, rule.version.limits.max_discount);
    let entries =
        proposal.lines.len() + proposal.order.len() + usize::from(proposal.points.is_some());
    if state.applied + entries > caps::APPLIED_PER_BATCH {
        return invalid(format!(
            "the batch already has {} applied entries; {entries} more exceed the limit of {}",
            state.applied,
            caps::APPLIED_PER_BATCH
        ));
    }
    Ok(proposal)
}

/// Reduces a proposal to the deployment's cap, taking from the last
/// proposals first.
fn cap(proposal: &mut Proposal, max: i64) {
    if max <= 0 {
        return;
    }
    let mut excess = proposal.total() - max;
    if excess <= 0 {
        return;
    }
    if let Some(p) = &mut proposal.points {
        let cut = excess.min(p.1);
        let before = p.1;
        p.1 -= cut;
        p.0 = scaled_points(p.0, before, p.1);
        excess -= cut;
    }
    for o in proposal.order.iter_mut().rev() {
        let cut = excess.min(o.0);
        o.0 -= cut;
        excess -= cut;
    }
    for l in proposal.lines.iter_mut().rev() {
        let cut = excess.min(l.1);
        l.1 -= cut;
        excess -= cut;
    }
    proposal.lines.retain(|l| l.1 > 0);
    proposal.order.retain(|o| o.0 > 0);
    if proposal.points.as_ref().is_some_and(|p| p.1 == 0) {
        proposal.points = None;
    }
}

/// Points for `after` of a points offset that spent `points` for `before`,
/// rounded down (in the member's favour).
fn scaled_points(points: i64, before: i64, after: i64) -> i64 {
    if before <= 0 || after >= before {
        return points;
    }
    (i128::from(points) * i128::from(after.max(0)) / i128::from(before)) as i64
}

/// Within a stacking group: per line, only the largest line discount stays;
/// of the order-level proposals, only the largest stays.
fn best_per_line_and_order(
    mut proposals: Vec<(&ActiveRule, Proposal)>,
) -> Vec<(&ActiveRule, Proposal)> {
    let mut best_line: HashMap<usize, (usize, i64)> = HashMap::new();
    for (p, (_, proposal)) in proposals.iter().enumerate() {
        let mut totals: HashMap<usize, i64> = HashMap::new();
        for l in &proposal.lines {
            *totals.entry(l.0).or_insert(0) += l.1;
        }
        for (line, total) in totals {
            let entry = best_line.entry(line).or_insert((p, total));
            if total > entry.1 {
                *entry = (p, total);
            }
        }
    }
    let best_order = proposals
        .iter()
        .enumerate()
        .map(|(p, (_, proposal))| {
            (
                p,
                proposal.order.iter().map(|o| o.0).sum::<i64>()
                    + proposal.points.as_ref().map_or(0, |x| x.1),
            )
        })
        .filter(|(_, total)| *total > 0)
        .fold(None::<(usize, i64)>, |best, (p, total)| match best {
            Some((_, t)) if t >= total => best,
            _ => Some((p, total)),
        });
    for (p, (_, proposal)) in proposals.iter_mut().enumerate() {
        proposal
            .lines
            .retain(|l| best_line.get(&l.0).is_some_and(|b| b.0 == p));
        if best_order.is_none_or(|b| b.0 != p) {
            proposal.order.clear();
            proposal.points = None;
        }
    }
    proposals
}

fn apply(
    rule: &ActiveRule,
    proposal: Proposal,
    state: &mut State,
    priced: &mut Priced,
    catalog: bool,
) {
    let rule_id = rule.rule_id();
    state.applied +=
        proposal.lines.len() + proposal.order.len() + usize::from(proposal.points.is_some());
    for (i, amount, label) in proposal.lines {
        let amount = amount.min(state.line_payable[i]);
        if amount <= 0 {
            continue;
        }
        state.line_payable[i] -= amount;
        let applied = Applied {
            rule_id: rule_id.clone(),
            label,
            amount,
            line_id: Some(priced.lines[i].id.clone()),
            coupon_id: None,
            points: 0,
        };
        priced.lines[i].applied.push(applied.clone());
        if !catalog {
            priced.applied.push(applied);
        }
    }
    for (amount, label, coupon) in proposal.order {
        let amount = amount.min(state.payable());
        if amount <= 0 {
            continue;
        }
        state.order_discount += amount;
        if let Some(c) = &coupon {
            state.coupons_used.insert(c.clone());
        }
        priced.applied.push(Applied {
            rule_id: rule_id.clone(),
            label,
            amount,
            line_id: None,
            coupon_id: coupon,
            points: 0,
        });
    }
    if let Some((points, proposed, label)) = proposal.points {
        let amount = proposed.min(state.payable());
        // Points pay for money: fewer of them when the money is reduced.
        let points = scaled_points(points, proposed, amount);
        if amount > 0 {
            state.points_used += points;
            state.points_amount += amount;
            priced.applied.push(Applied {
                rule_id: rule_id.clone(),
                label,
                amount,
                line_id: None,
                coupon_id: None,
                points,
            });
        }
    }
    for hint in proposal.hints {
        if state.hints >= caps::HINTS_PER_BATCH {
            break;
        }
        state.hints += 1;
        priced.hints.push(Hint {
            rule_id: rule_id.clone(),
            code: sanitize(&hint.code, caps::HINT_CODE_CHARS),
            message: sanitize(&hint.message, caps::HINT_MESSAGE_CHARS),
            shortfall: hint.shortfall.filter(|s| *s > 0),
        });
    }
}

fn label(label: &str, fallback: &str) -> String {
    let label = label.trim();
    if label.is_empty() {
        fallback.to_owned()
    } else {
        sanitize(label, caps::LABEL_CHARS)
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Item => "item",
        Stage::Order => "order",
        Stage::Coupon => "coupon",
        Stage::Points => "points",
    }
}

/// What a dry run reports.
#[derive(Debug)]
pub struct DryRun {
    /// The outcome or the failure.
    pub result: Result<wit::Outcome, Failure>,
    /// The outcome as the host would apply it (validated and capped), when
    /// the rule succeeded.
    pub priced: Option<Priced>,
    /// Fuel used.
    pub fuel_used: u64,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// Logs.
    pub logs: Vec<LogEntry>,
    /// Logs dropped over the bound.
    pub logs_dropped: u32,
}

/// Runs one rule alone against a cart without recording anything. The
/// rule is evaluated once; its outcome is then refereed as a quote would.
pub fn dry_run(host: &RuleHost, rule: &ActiveRule, cart: &mut wit::Cart) -> DryRun {
    struct Quiet;
    impl Observer for Quiet {
        fn observed(&self, _: &ActiveRule, _: &Evaluation, _: Option<&FailureReason>) {}
    }
    let evaluation = host.evaluate(
        &rule.compiled,
        &rule.version.limits,
        &rule.version.config,
        cart,
    );
    let failure = |reason: FailureReason| Failure {
        name: rule.name.clone(),
        rule_id: rule.rule_id(),
        code: reason.code(),
        detail: sanitize(&reason.detail(), caps::DETAIL_CHARS),
    };
    let (result, priced) = match &evaluation.result {
        Ok(Ok(outcome)) => {
            let mut solo = rule.clone();
            let mut version = (*solo.version).clone();
            version.failure_policy = FailurePolicy::Skip;
            solo.version = Arc::new(version);
            let referee = Referee {
                host,
                observer: &Quiet,
                budget: Duration::from_secs(5),
            };
            let mut once = Some(outcome.clone());
            let priced = referee
                .price_with(
                    std::slice::from_ref(&solo),
                    cart,
                    &mut |_, _| match once.take() {
                        Some(outcome) => Evaluation {
                            result: Ok(Ok(outcome)),
                            fuel_used: 0,
                            elapsed: Duration::ZERO,
                            logs: Vec::new(),
                            logs_dropped: 0,
                        },
                        None => Evaluation::skipped(FailureReason::BudgetExhausted),
                    },
                )
                .ok();
            match priced.as_ref().and_then(|p| p.failures.first()) {
                Some(f) => (Err(f.clone()), None),
                None => (Ok(outcome.clone()), priced),
            }
        }
        Ok(Err(error)) => (
            Err(failure(FailureReason::RuleError(rule_error_text(error)))),
            None,
        ),
        Err(reason) => (Err(failure(reason.clone())), None),
    };
    DryRun {
        result,
        priced,
        fuel_used: evaluation.fuel_used,
        elapsed: evaluation.elapsed,
        logs: evaluation.logs,
        logs_dropped: evaluation.logs_dropped,
    }
}

/// The referee's own checks, each against an outcome handed to it directly
/// (as a rule would return it): every check refuses the outcome that breaks
/// it with `INVALID_OUTPUT`, and accepts the same outcome within bounds.
#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, LazyLock};

    use super::*;
    use crate::pricing::host::PoolSize;
    use crate::pricing::model::{Limits, Scope};

    /// A real compiled rule, shared by every test: the referee never runs
    /// it here (outcomes are handed in), but a deployment needs one.
    static HOST: LazyLock<(Arc<RuleHost>, Arc<CompiledRule>)> = LazyLock::new(|| {
        let host = RuleHost::shared(PoolSize { instances: 2 }).expect("rule host");
        let compiled = host
            .compile_cached(crate::demo::rules::wasm::COUPON)
            .expect("the demo coupon rule compiles");
        (host, compiled)
    });

    const NOW: i64 = 1_700_000_000_000;
    const DAY: i64 = 86_400_000;

    struct Quiet;
    impl Observer for Quiet {
        fn observed(&self, _: &ActiveRule, _: &Evaluation, _: Option<&FailureReason>) {}
    }

    fn rule(name: &str, stage: Stage) -> ActiveRule {
        ActiveRule {
            name: name.to_owned(),
            version: Arc::new(Version {
                version: 1,
                component: HOST.1.sha256.clone(),
                config: String::new(),
                scope: Scope::default(),
                stage,
                priority: 100,
                stacking_group: None,
                limits: Limits::default(),
                failure_policy: FailurePolicy::Skip,
                published_at: chrono::Utc::now(),
                published_by: String::new(),
            }),
            compiled: HOST.1.clone(),
            revision: 0,
        }
    }

    fn with(mut rule: ActiveRule, change: impl FnOnce(&mut Version)) -> ActiveRule {
        change(Arc::make_mut(&mut rule.version));
        rule
    }

    fn coupon(id: &str, value: wit::CouponValue, min_spend: i64, expires_at: i64) -> wit::Coupon {
        wit::Coupon {
            id: id.to_owned(),
            title: id.to_owned(),
            value,
            min_spend,
            expires_at,
        }
    }

    fn line(id: &str, unit_price: i64, quantity: u32) -> wit::Line {
        wit::Line {
            id: id.to_owned(),
            sku: id.to_owned(),
            store: "store-1".into(),
            category: "food".into(),
            tags: Vec::new(),
            unit_price,
            quantity,
            payable: unit_price * i64::from(quantity),
            flash_sale: None,
        }
    }

    /// Line `a` costs 2 × 1000, line `b` 500: 2500 payable. The member has
    /// 1000 points and asks to spend 300.
    fn cart() -> wit::Cart {
        let held = vec![
            coupon("cash-5", wit::CouponValue::AmountOff(500), 1_000, NOW + DAY),
            coupon("pct-10", wit::CouponValue::PercentOff(1_000), 0, NOW + DAY),
            coupon("old", wit::CouponValue::AmountOff(100), 0, NOW),
            coupon(
                "min-3000",
                wit::CouponValue::AmountOff(100),
                3_000,
                NOW + DAY,
            ),
            coupon("unchosen", wit::CouponValue::AmountOff(100), 0, NOW + DAY),
        ];
        wit::Cart {
            kind: wit::BatchKind::Cart,
            tenant: "demo".into(),
            mall: "mall-1".into(),
            channel: wit::Channel::App,
            now: NOW,
            member: Some(wit::Member {
                id: "member-1".into(),
                level: "gold".into(),
                points: 1_000,
                tags: Vec::new(),
            }),
            lines: vec![line("a", 1_000, 2), line("b", 500, 1)],
            payable: 2_500,
            held_coupons: held,
            chosen_coupons: ["cash-5", "pct-10", "old", "min-3000", "not-held"]
                .map(String::from)
                .to_vec(),
            points_to_use: 300,
        }
    }

    fn outcome() -> wit::Outcome {
        wit::Outcome {
            line_discounts: Vec::new(),
            order_discounts: Vec::new(),
            points: None,
            hints: Vec::new(),
        }
    }

    fn on_line(id: &str, amount: i64) -> wit::LineDiscount {
        wit::LineDiscount {
            line_id: id.to_owned(),
            amount,
            label: "line offer".into(),
        }
    }

    fn off_order(amount: i64, coupon: Option<&str>) -> wit::OrderDiscount {
        wit::OrderDiscount {
            amount,
            label: "order offer".into(),
            coupon_id: coupon.map(str::to_owned),
        }
    }

    fn spend(points: i64, amount: i64) -> Option<wit::PointsOffset> {
        Some(wit::PointsOffset {
            points,
            amount,
            label: "points".into(),
        })
    }

    fn hint(shortfall: Option<i64>) -> wit::Hint {
        wit::Hint {
            code: "spend-more".into(),
            message: "spend more".into(),
            shortfall,
        }
    }

    /// Referees `cart` with each rule returning its outcome.
    fn run(cart: &wit::Cart, rules: &[(ActiveRule, wit::Outcome)]) -> Priced {
        let outcomes: HashMap<String, wit::Outcome> = rules
            .iter()
            .map(|(r, o)| (r.name.clone(), o.clone()))
            .collect();
        let active: Vec<ActiveRule> = rules.iter().map(|(r, _)| r.clone()).collect();
        let referee = Referee {
            host: &HOST.0,
            observer: &Quiet,
            budget: Duration::from_secs(60),
        };
        let mut cart = cart.clone();
        referee
            .price_with(&active, &mut cart, &mut |rule, _| Evaluation {
                result: Ok(Ok(outcomes[&rule.name].clone())),
                fuel_used: 0,
                elapsed: Duration::ZERO,
                logs: Vec::new(),
                logs_dropped: 0,
            })
            .expect("skip-policy rules never fail the batch")
    }

    fn one(stage: Stage, outcome: wit::Outcome) -> Priced {
        run(&cart(), &[(rule("r", stage), outcome)])
    }

    #[track_caller]
    fn assert_refused(priced: &Priced, rule: &str, detail: &str) {
        let failure = priced
            .failures
            .iter()
            .find(|f| f.name == rule)
            .unwrap_or_else(|| panic!("rule {rule} was accepted: {priced:?}"));
        assert_eq!(failure.code, "INVALID_OUTPUT", "{failure:?}");
        assert!(
            failure.detail.contains(detail),
            "detail {:?} does not say {detail:?}",
            failure.detail
        );
        assert!(priced.degraded);
        let id = format!("{rule}@1");
        assert!(
            priced.applied.iter().all(|a| a.rule_id != id),
            "a refused rule applied something: {priced:?}"
        );
    }

    #[track_caller]
    fn assert_accepted(priced: &Priced) {
        assert!(priced.failures.is_empty(), "{:?}", priced.failures);
        assert!(!priced.degraded);
    }

    #[test]
    fn an_expired_coupon_is_refused_and_a_valid_one_accepted() {
        let redeem = wit::Outcome {
            order_discounts: vec![off_order(100, Some("old"))],
            ..outcome()
        };
        // Expiring at the cart's `now` is expired.
        assert_refused(&one(Stage::Coupon, redeem.clone()), "r", "has expired");

        let mut fresh = cart();
        fresh.held_coupons[2].expires_at = NOW + 1;
        let priced = run(&fresh, &[(rule("r", Stage::Coupon), redeem)]);
        assert_accepted(&priced);
        assert_eq!(priced.payable, 2_400);
    }

    #[test]
    fn a_coupon_below_its_minimum_spend_is_refused() {
        let redeem = wit::Outcome {
            order_discounts: vec![off_order(100, Some("min-3000"))],
            ..outcome()
        };
        assert_refused(
            &one(Stage::Coupon, redeem.clone()),
            "r",
            "needs a spend of 3000",
        );

        let mut enough = cart();
        enough.held_coupons[3].min_spend = 2_500;
        assert_accepted(&run(&enough, &[(rule("r", Stage::Coupon), redeem)]));

        // The minimum is checked against the payable after the rule's own
        // line discounts.
        let with_lines = wit::Outcome {
            line_discounts: vec![on_line("a", 1)],
            order_discounts: vec![off_order(100, Some("min-3000"))],
            ..outcome()
        };
        let priced = run(&enough, &[(rule("r", Stage::Coupon), with_lines)]);
        assert_refused(&priced, "r", "the payable is 2499");
    }

    #[test]
    fn an_amount_off_coupon_takes_at_most_its_face_value() {
        let over = wit::Outcome {
            order_discounts: vec![off_order(501, Some("cash-5"))],
            ..outcome()
        };
        assert_refused(&one(Stage::Coupon, over), "r", "is worth at most 500");
        let face = wit::Outcome {
            order_discounts: vec![off_order(500, Some("cash-5"))],
            ..outcome()
        };
        let priced = one(Stage::Coupon, face);
        assert_accepted(&priced);
        assert_eq!(priced.payable, 2_000);
    }

    #[test]
    fn a_percent_off_coupon_takes_at_most_its_share_of_the_payable() {
        // 10% of 2500.
        let over = wit::Outcome {
            order_discounts: vec![off_order(251, Some("pct-10"))],
            ..outcome()
        };
        assert_refused(&one(Stage::Coupon, over), "r", "is worth at most 250");
        let share = wit::Outcome {
            order_discounts: vec![off_order(250, Some("pct-10"))],
            ..outcome()
        };
        let priced = one(Stage::Coupon, share);
        assert_accepted(&priced);
        assert_eq!(priced.payable, 2_250);
    }

    #[test]
    fn a_coupon_redeemed_twice_by_one_rule_is_refused() {
        let twice = wit::Outcome {
            order_discounts: vec![
                off_order(100, Some("cash-5")),
                off_order(100, Some("cash-5")),
            ],
            ..outcome()
        };
        assert_refused(&one(Stage::Coupon, twice), "r", "redeemed twice");
        let two_coupons = wit::Outcome {
            order_discounts: vec![
                off_order(100, Some("cash-5")),
                off_order(100, Some("pct-10")),
            ],
            ..outcome()
        };
        let priced = one(Stage::Coupon, two_coupons);
        assert_accepted(&priced);
        assert_eq!(priced.payable, 2_300);
    }

    #[test]
    fn a_coupon_redeemed_by_an_earlier_rule_is_refused_to_a_later_one() {
        let first = with(rule("first", Stage::Coupon), |v| v.priority = 1);
        let second = with(rule("second", Stage::Coupon), |v| v.priority = 2);
        let cash = wit::Outcome {
            order_discounts: vec![off_order(100, Some("cash-5"))],
            ..outcome()
        };
        let priced = run(
            &cart(),
            &[
                (first.clone(), cash.clone()),
                (second.clone(), cash.clone()),
            ],
        );
        assert_refused(&priced, "second", "redeemed twice");
        assert_eq!(priced.payable, 2_400, "the first redemption stands");

        let other = wit::Outcome {
            order_discounts: vec![off_order(100, Some("pct-10"))],
            ..outcome()
        };
        let priced = run(&cart(), &[(first, cash), (second, other)]);
        assert_accepted(&priced);
        assert_eq!(priced.payable, 2_300);
    }

    #[test]
    fn a_coupon_the_member_did_not_choose_or_does_not_hold_is_refused() {
        for id in ["unchosen", "not-held"] {
            let redeem = wit::Outcome {
                order_discounts: vec![off_order(100, Some(id))],
                ..outcome()
            };
            assert_refused(
                &one(Stage::Coupon, redeem),
                "r",
                "was not chosen by the member or is not held",
            );
        }
        let mut chosen = cart();
        chosen.chosen_coupons.push("unchosen".into());
        let redeem = wit::Outcome {
            order_discounts: vec![off_order(100, Some("unchosen"))],
            ..outcome()
        };
        assert_accepted(&run(&chosen, &[(rule("r", Stage::Coupon), redeem)]));
    }

    #[test]
    fn each_stage_proposes_only_what_it_may() {
        let lines = wit::Outcome {
            line_discounts: vec![on_line("a", 100)],
            ..outcome()
        };
        assert_refused(
            &one(Stage::Points, lines.clone()),
            "r",
            "a points-stage rule proposed line discounts",
        );
        assert_accepted(&one(Stage::Item, lines));

        let order = wit::Outcome {
            order_discounts: vec![off_order(100, None)],
            ..outcome()
        };
        assert_refused(
            &one(Stage::Item, order.clone()),
            "r",
            "item-stage rule proposed an order discount",
        );
        assert_refused(
            &one(Stage::Points, order.clone()),
            "r",
            "points-stage rule proposed an order discount",
        );
        assert_accepted(&one(Stage::Order, order));

        let points = wit::Outcome {
            points: spend(100, 100),
            ..outcome()
        };
        for stage in [Stage::Item, Stage::Order, Stage::Coupon] {
            assert_refused(
                &one(stage, points.clone()),
                "r",
                "-stage rule proposed a points offset",
            );
        }
        let priced = one(Stage::Points, points);
        assert_accepted(&priced);
        assert_eq!((priced.points_used, priced.points_amount), (100, 100));
    }

    #[test]
    fn points_are_bounded_by_the_balance_the_ask_and_the_payable() {
        let mut rich = cart();
        rich.points_to_use = 5_000;
        // Above the balance of 1000.
        let over_balance = wit::Outcome {
            points: spend(1_001, 100),
            ..outcome()
        };
        let priced = run(&rich, &[(rule("r", Stage::Points), over_balance)]);
        assert_refused(&priced, "r", "spends 1001 points; the member has 1000");
        let balance = wit::Outcome {
            points: spend(1_000, 100),
            ..outcome()
        };
        assert_accepted(&run(&rich, &[(rule("r", Stage::Points), balance)]));

        // Above what the member asked to spend (300).
        let over_ask = wit::Outcome {
            points: spend(301, 100),
            ..outcome()
        };
        assert_refused(&one(Stage::Points, over_ask), "r", "asked for 300");
        assert_accepted(&one(
            Stage::Points,
            wit::Outcome {
                points: spend(300, 100),
                ..outcome()
            },
        ));

        // Above the payable (2500).
        let over_payable = wit::Outcome {
            points: spend(300, 2_501),
            ..outcome()
        };
        assert_refused(
            &one(Stage::Points, over_payable),
            "r",
            "exceeds the payable 2500",
        );
        let all = one(
            Stage::Points,
            wit::Outcome {
                points: spend(300, 2_500),
                ..outcome()
            },
        );
        assert_accepted(&all);
        assert_eq!(all.payable, 0);
    }

    #[test]
    fn points_spent_by_an_earlier_rule_count_against_a_later_one() {
        let first = with(rule("first", Stage::Points), |v| v.priority = 1);
        let second = with(rule("second", Stage::Points), |v| v.priority = 2);
        let spend_200 = wit::Outcome {
            points: spend(200, 200),
            ..outcome()
        };
        let priced = run(
            &cart(),
            &[
                (first.clone(), spend_200.clone()),
                (second.clone(), spend_200.clone()),
            ],
        );
        assert_refused(&priced, "second", "spends 200 points");
        assert_eq!(priced.points_used, 200);

        let spend_100 = wit::Outcome {
            points: spend(100, 100),
            ..outcome()
        };
        let priced = run(&cart(), &[(first, spend_200), (second, spend_100)]);
        assert_accepted(&priced);
        assert_eq!((priced.points_used, priced.payable), (300, 2_200));

        // Without a member there is no balance at all.
        let mut visitor = cart();
        visitor.member = None;
        let priced = run(
            &visitor,
            &[(
                rule("r", Stage::Points),
                wit::Outcome {
                    points: spend(1, 1),
                    ..outcome()
                },
            )],
        );
        assert_refused(&priced, "r", "the member has 0");
    }

    #[test]
    fn negative_amounts_are_refused() {
        let line = wit::Outcome {
            line_discounts: vec![on_line("a", -1)],
            ..outcome()
        };
        assert_refused(&one(Stage::Item, line), "r", "negative discount -1");
        let order = wit::Outcome {
            order_discounts: vec![off_order(-1, None)],
            ..outcome()
        };
        assert_refused(&one(Stage::Order, order), "r", "negative order discount -1");
        for points in [spend(-1, 100), spend(100, -1)] {
            let negative = wit::Outcome {
                points,
                ..outcome()
            };
            assert_refused(&one(Stage::Points, negative), "r", "negative points offset");
        }
        // Zero is no discount, not an error.
        let zero = wit::Outcome {
            line_discounts: vec![on_line("a", 0)],
            ..outcome()
        };
        let priced = one(Stage::Item, zero);
        assert_accepted(&priced);
        assert!(priced.applied.is_empty());
    }

    #[test]
    fn discounts_never_exceed_a_line_or_the_order() {
        // Line `a` is 2000.
        let over_line = wit::Outcome {
            line_discounts: vec![on_line("a", 1_500), on_line("a", 501)],
            ..outcome()
        };
        assert_refused(
            &one(Stage::Item, over_line),
            "r",
            "discounts of 2001 on line",
        );
        let whole_line = wit::Outcome {
            line_discounts: vec![on_line("a", 1_500), on_line("a", 500)],
            ..outcome()
        };
        let priced = one(Stage::Item, whole_line);
        assert_accepted(&priced);
        assert_eq!(priced.lines[0].payable, 0);

        let over_order = wit::Outcome {
            order_discounts: vec![off_order(2_000, None), off_order(501, None)],
            ..outcome()
        };
        assert_refused(
            &one(Stage::Order, over_order),
            "r",
            "order discounts of 2501 exceed the payable 2500",
        );
        let whole_order = wit::Outcome {
            order_discounts: vec![off_order(2_000, None), off_order(500, None)],
            ..outcome()
        };
        let priced = one(Stage::Order, whole_order);
        assert_accepted(&priced);
        assert_eq!(priced.payable, 0);
    }

    #[test]
    fn a_discount_on_an_unknown_line_is_refused() {
        let unknown = wit::Outcome {
            line_discounts: vec![on_line("c", 100)],
            ..outcome()
        };
        assert_refused(&one(Stage::Item, unknown), "r", "unknown line");
        let known = wit::Outcome {
            line_discounts: vec![on_line("b", 100)],
            ..outcome()
        };
        assert_accepted(&one(Stage::Item, known));
    }

    #[test]
    fn a_hint_shortfall_above_the_largest_amount_is_refused() {
        let huge = wit::Outcome {
            hints: vec![hint(Some(caps::MAX_SHORTFALL + 1))],
            ..outcome()
        };
        assert_refused(&one(Stage::Order, huge), "r", "hint shortfall");
        let largest = wit::Outcome {
            hints: vec![hint(Some(caps::MAX_SHORTFALL))],
            ..outcome()
        };
        let priced = one(Stage::Order, largest);
        assert_accepted(&priced);
        assert_eq!(priced.hints.len(), 1);
    }

    #[test]
    fn one_rule_proposes_at_most_so_many_discounts_and_hints() {
        // Two lines: 2 × 2 + 8 line discounts.
        let line_cap = 2 * 2 + caps::LINE_DISCOUNTS_EXTRA;
        let lines = |n: usize| wit::Outcome {
            line_discounts: vec![on_line("a", 1); n],
            ..outcome()
        };
        assert_refused(
            &one(Stage::Item, lines(line_cap + 1)),
            "r",
            &format!("at most {line_cap} for this batch"),
        );
        assert_accepted(&one(Stage::Item, lines(line_cap)));

        let orders = |n: usize| wit::Outcome {
            order_discounts: vec![off_order(1, None); n],
            ..outcome()
        };
        let most = caps::ORDER_DISCOUNTS_PER_RULE;
        assert_refused(
            &one(Stage::Order, orders(most + 1)),
            "r",
            &format!("{} order discounts; at most {most}", most + 1),
        );
        assert_accepted(&one(Stage::Order, orders(most)));

        let hints = |n: usize| wit::Outcome {
            hints: vec![hint(None); n],
            ..outcome()
        };
        let most = caps::HINTS_PER_RULE;
        assert_refused(
            &one(Stage::Order, hints(most + 1)),
            "r",
            &format!("{} hints; at most {most}", most + 1),
        );
        assert_accepted(&one(Stage::Order, hints(most)));
    }

    #[test]
    fn a_batch_keeps_at_most_so_many_applied_entries() {
        // 100 lines; each rule takes 1 off every line twice: 200 entries.
        let mut big = cart();
        big.lines = (0..100)
            .map(|n| line(&format!("l{n}"), 10_000, 1))
            .collect();
        big.payable = 1_000_000;
        let per_rule = wit::Outcome {
            line_discounts: big
                .lines
                .iter()
                .flat_map(|l| [on_line(&l.id, 1), on_line(&l.id, 1)])
                .collect(),
            ..outcome()
        };
        let full = caps::APPLIED_PER_BATCH / per_rule.line_discounts.len();
        let mut rules: Vec<(ActiveRule, wit::Outcome)> = (0..full)
            .map(|n| (rule(&format!("r{n}"), Stage::Item), per_rule.clone()))
            .collect();
        let priced = run(&big, &rules);
        assert_accepted(&priced);
        assert_eq!(priced.applied.len(), caps::APPLIED_PER_BATCH);

        rules.push((
            with(rule("one-more", Stage::Item), |v| v.priority = 200),
            wit::Outcome {
                line_discounts: vec![on_line("l0", 1)],
                ..outcome()
            },
        ));
        let priced = run(&big, &rules);
        assert_refused(&priced, "one-more", "applied entries");
        assert_eq!(priced.applied.len(), caps::APPLIED_PER_BATCH);
    }

    #[test]
    fn a_deployment_cap_reduces_what_one_rule_takes() {
        let proposal = wit::Outcome {
            line_discounts: vec![on_line("a", 200)],
            order_discounts: vec![off_order(250, None)],
            ..outcome()
        };
        let uncapped = one(Stage::Order, proposal.clone());
        assert_accepted(&uncapped);
        assert_eq!(uncapped.payable, 2_050);

        // Capped at 300: cut from the last proposal first.
        let capped = with(rule("r", Stage::Order), |v| v.limits.max_discount = 300);
        let priced = run(&cart(), &[(capped, proposal)]);
        assert_accepted(&priced);
        assert_eq!(priced.payable, 2_200);
        let amounts: Vec<i64> = priced.applied.iter().map(|a| a.amount).collect();
        assert_eq!(amounts, [200, 100]);

        // A capped points offset spends proportionally fewer points.
        let points = wit::Outcome {
            points: spend(300, 300),
            ..outcome()
        };
        let capped = with(rule("p", Stage::Points), |v| v.limits.max_discount = 100);
        let priced = run(&cart(), &[(capped, points)]);
        assert_accepted(&priced);
        assert_eq!((priced.points_used, priced.points_amount), (100, 100));
    }

    #[test]
    fn a_stacking_group_keeps_the_best_offer_per_line_and_per_order() {
        let grouped = |name: &str, stage: Stage| {
            with(rule(name, stage), |v| {
                v.stacking_group = Some("best".into())
            })
        };
        let left = wit::Outcome {
            line_discounts: vec![on_line("a", 100), on_line("b", 50)],
            ..outcome()
        };
        let right = wit::Outcome {
            line_discounts: vec![on_line("a", 80), on_line("b", 90)],
            ..outcome()
        };
        let priced = run(
            &cart(),
            &[
                (grouped("left", Stage::Item), left.clone()),
                (grouped("right", Stage::Item), right.clone()),
            ],
        );
        assert_accepted(&priced);
        let by_line: Vec<(&str, i64)> = priced
            .applied
            .iter()
            .map(|a| (a.rule_id.as_str(), a.amount))
            .collect();
        assert_eq!(by_line, [("left@1", 100), ("right@1", 90)]);
        assert_eq!(priced.payable, 2_500 - 190);

        // Outside a group, both stack.
        let priced = run(
            &cart(),
            &[
                (rule("left", Stage::Item), left),
                (rule("right", Stage::Item), right),
            ],
        );
        assert_eq!(priced.payable, 2_500 - 320);

        let small = wit::Outcome {
            order_discounts: vec![off_order(200, None)],
            ..outcome()
        };
        let large = wit::Outcome {
            order_discounts: vec![off_order(300, None)],
            ..outcome()
        };
        let priced = run(
            &cart(),
            &[
                (grouped("small", Stage::Order), small),
                (grouped("large", Stage::Order), large),
            ],
        );
        assert_accepted(&priced);
        let applied: Vec<(&str, i64)> = priced
            .applied
            .iter()
            .map(|a| (a.rule_id.as_str(), a.amount))
            .collect();
        assert_eq!(applied, [("large@1", 300)]);
    }
}
