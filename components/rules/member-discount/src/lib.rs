//! Member discount: a percentage off every eligible line, by membership level.
//!
//! Item-level rule; works for catalogue and cart batches alike.
//!
//! ```json
//! {"levels": {"gold": 500, "platinum": 800},
//!  "exclude_tags": ["no-member-discount"],
//!  "skip_flash_sale": true,
//!  "label": null}
//! ```
//!
//! * `levels` — basis points off per membership level (`500` = 5 %),
//!   each `1..=10000`; at least one level. Levels match the member's level
//!   exactly.
//! * `exclude_tags` — lines carrying any of these product tags get nothing
//!   (default: none).
//! * `skip_flash_sale` — leave lines whose flash sale is active alone
//!   (default: `true`).
//! * `label` — the label on every discount (default e.g. `"Gold member 5% off"`).
//!
//! The discount on a line is `payable * bp / 10000`, rounded down.

use std::collections::BTreeMap;

use promotion_sdk::{
    Cart, LineDiscount, Outcome, RuleError, invalid_config, parse_config, percent,
};
use serde::Deserialize;

/// The deployment settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    levels: BTreeMap<String, u32>,
    #[serde(default)]
    exclude_tags: Vec<String>,
    #[serde(default = "default_true")]
    skip_flash_sale: bool,
    #[serde(default)]
    label: Option<String>,
}

fn default_true() -> bool {
    true
}

fn parse(config: &str) -> Result<Config, RuleError> {
    let cfg: Config = parse_config(config)?;
    if cfg.levels.is_empty() {
        return invalid_config("levels must name at least one membership level");
    }
    for (level, &bp) in &cfg.levels {
        if level.is_empty() {
            return invalid_config("levels: a level name must not be empty");
        }
        if bp == 0 || bp > 10_000 {
            return invalid_config(format!(
                "levels.{level}: basis points must be between 1 and 10000, got {bp}"
            ));
        }
    }
    if cfg.label.as_deref().is_some_and(|l| l.trim().is_empty()) {
        return invalid_config("label must not be empty");
    }
    Ok(cfg)
}

/// Checks the deployment settings.
pub fn check(config: &str) -> Result<(), RuleError> {
    parse(config).map(|_| ())
}

/// Prices one batch.
pub fn run(config: &str, cart: Cart) -> Result<Outcome, RuleError> {
    let cfg = parse(config)?;
    let mut outcome = Outcome::empty();
    let Some(member) = &cart.member else {
        return Ok(outcome);
    };
    let Some(&bp) = cfg.levels.get(&member.level) else {
        return Ok(outcome);
    };
    let label = match cfg.label {
        Some(label) => label,
        None => default_label(&member.level, bp),
    };
    for line in &cart.lines {
        if line.payable <= 0 {
            continue;
        }
        if line.tags.iter().any(|t| cfg.exclude_tags.contains(t)) {
            continue;
        }
        if cfg.skip_flash_sale
            && line
                .flash_sale
                .as_ref()
                .is_some_and(|s| s.is_active(cart.now))
        {
            continue;
        }
        // Rounded down, so never more than the line's payable (bp <= 10000).
        let amount = (i128::from(line.payable) * i128::from(bp) / 10_000) as i64;
        if amount <= 0 {
            continue;
        }
        outcome.line_discounts.push(LineDiscount {
            line_id: line.id.clone(),
            amount,
            label: label.clone(),
        });
    }
    Ok(outcome)
}

/// `"gold"`, 500 → `"Gold member 5% off"`.
fn default_label(level: &str, bp: u32) -> String {
    let mut name = level.to_owned();
    if let Some(first) = name.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    format!("{name} member {} off", percent(bp))
}

promotion_sdk::rule!(check, run);

#[cfg(test)]
mod tests {
    use super::*;
    use promotion_sdk::BatchKind;
    use promotion_sdk::Guest;
    use promotion_sdk::testing::{HOUR, NOW, cart, flash_sale, line, member};

    const CFG: &str = r#"{"levels": {"gold": 500, "platinum": 750}, "exclude_tags": ["no-member-discount"], "skip_flash_sale": true}"#;

    fn gold_cart(lines: Vec<promotion_sdk::Line>) -> Cart {
        let mut c = cart(BatchKind::Cart, lines);
        c.member = Some(member("gold", 0));
        c
    }

    fn invalid(config: &str) -> bool {
        matches!(check(config), Err(RuleError::InvalidConfig(_)))
    }

    #[test]
    fn discounts_every_line_for_a_listed_level() {
        let out = run(CFG, gold_cart(vec![line("a", 1000, 2), line("b", 399, 1)])).unwrap();
        assert_eq!(
            out.line_discounts,
            vec![
                LineDiscount {
                    line_id: "a".into(),
                    amount: 100,
                    label: "Gold member 5% off".into()
                },
                // 399 * 5% = 19.95 → 19 (rounded down)
                LineDiscount {
                    line_id: "b".into(),
                    amount: 19,
                    label: "Gold member 5% off".into()
                },
            ]
        );
        assert!(out.order_discounts.is_empty() && out.points.is_none() && out.hints.is_empty());
    }

    #[test]
    fn uses_the_members_level_and_fractional_percent_label() {
        let mut c = gold_cart(vec![line("a", 1000, 1)]);
        c.member = Some(member("platinum", 0));
        let out = run(CFG, c).unwrap();
        assert_eq!(out.line_discounts[0].amount, 75);
        assert_eq!(out.line_discounts[0].label, "Platinum member 7.5% off");
    }

    #[test]
    fn discount_is_on_payable_not_list_price() {
        let mut l = line("a", 1000, 3);
        l.payable = 2000; // an earlier rule took 1000 off
        let out = run(CFG, gold_cart(vec![l])).unwrap();
        assert_eq!(out.line_discounts[0].amount, 100);
    }

    #[test]
    fn anonymous_or_unlisted_level_gets_nothing() {
        let c = cart(BatchKind::Cart, vec![line("a", 1000, 1)]);
        assert!(run(CFG, c).unwrap().is_empty());
        let mut c = gold_cart(vec![line("a", 1000, 1)]);
        c.member = Some(member("normal", 0));
        assert!(run(CFG, c).unwrap().is_empty());
        // Levels match exactly.
        let mut c = gold_cart(vec![line("a", 1000, 1)]);
        c.member = Some(member("Gold", 0));
        assert!(run(CFG, c).unwrap().is_empty());
    }

    #[test]
    fn excluded_tags_are_skipped() {
        let mut l = line("a", 1000, 1);
        l.tags = vec!["new".into(), "no-member-discount".into()];
        let out = run(CFG, gold_cart(vec![l, line("b", 1000, 1)])).unwrap();
        assert_eq!(out.line_discounts.len(), 1);
        assert_eq!(out.line_discounts[0].line_id, "b");
    }

    #[test]
    fn active_flash_sales_are_skipped_when_configured() {
        let mut active = line("active", 1000, 1);
        active.flash_sale = Some(flash_sale(500, NOW, NOW + HOUR));
        let mut ended = line("ended", 1000, 1);
        ended.flash_sale = Some(flash_sale(500, NOW - HOUR, NOW));
        let mut upcoming = line("upcoming", 1000, 1);
        upcoming.flash_sale = Some(flash_sale(500, NOW + 1, NOW + HOUR));
        let lines = vec![active, ended, upcoming];

        let out = run(CFG, gold_cart(lines.clone())).unwrap();
        let ids: Vec<_> = out
            .line_discounts
            .iter()
            .map(|d| d.line_id.as_str())
            .collect();
        assert_eq!(ids, ["ended", "upcoming"]);

        let cfg = r#"{"levels": {"gold": 500}, "skip_flash_sale": false}"#;
        assert_eq!(run(cfg, gold_cart(lines)).unwrap().line_discounts.len(), 3);
    }

    #[test]
    fn skip_flash_sale_defaults_to_true() {
        let mut l = line("a", 1000, 1);
        l.flash_sale = Some(flash_sale(500, NOW - HOUR, NOW + HOUR));
        assert!(
            run(r#"{"levels": {"gold": 500}}"#, gold_cart(vec![l]))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn zero_payable_and_tiny_discounts_are_skipped() {
        let mut free = line("free", 1000, 1);
        free.payable = 0;
        let cheap = line("cheap", 19, 1); // 5% of 19 = 0.95 → 0
        assert!(run(CFG, gold_cart(vec![free, cheap])).unwrap().is_empty());
    }

    #[test]
    fn full_discount_never_exceeds_payable() {
        let cfg = r#"{"levels": {"gold": 10000}}"#;
        let out = run(cfg, gold_cart(vec![line("a", 1234, 3)])).unwrap();
        assert_eq!(out.line_discounts[0].amount, 3702);
        assert_eq!(out.line_discounts[0].label, "Gold member 100% off");
    }

    #[test]
    fn huge_amounts_do_not_overflow() {
        let mut l = line("a", 1, 1);
        l.payable = i64::MAX;
        let out = run(r#"{"levels": {"gold": 9999}}"#, gold_cart(vec![l])).unwrap();
        let amount = out.line_discounts[0].amount;
        assert!(amount > 0 && amount < i64::MAX);
    }

    #[test]
    fn works_for_catalogue_batches() {
        let mut c = cart(
            BatchKind::Catalog,
            vec![line("a", 1000, 1), line("b", 2000, 1)],
        );
        c.member = Some(member("gold", 0));
        let out = run(CFG, c).unwrap();
        assert_eq!(out.line_discounts.len(), 2);
        assert_eq!(out.line_discounts[1].amount, 100);
    }

    #[test]
    fn label_override() {
        let cfg = r#"{"levels": {"gold": 500}, "label": "Members' week"}"#;
        let out = run(cfg, gold_cart(vec![line("a", 1000, 1)])).unwrap();
        assert_eq!(out.line_discounts[0].label, "Members' week");
    }

    #[test]
    fn default_labels() {
        assert_eq!(default_label("gold", 500), "Gold member 5% off");
        assert_eq!(default_label("silver", 250), "Silver member 2.5% off");
        assert_eq!(default_label("vip", 1234), "Vip member 12.34% off");
        assert_eq!(default_label("金卡", 500), "金卡 member 5% off");
    }

    #[test]
    fn accepts_good_configs() {
        check(CFG).unwrap();
        check(r#"{"levels": {"gold": 1}}"#).unwrap();
        check(r#"{"levels": {"gold": 10000}, "exclude_tags": []}"#).unwrap();
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(invalid(""));
        assert!(invalid("not json"));
        assert!(invalid(r#"{"levels": {}}"#));
        assert!(invalid(r#"{"levels": {"gold": 0}}"#));
        assert!(invalid(r#"{"levels": {"gold": 10001}}"#));
        assert!(invalid(r#"{"levels": {"gold": -5}}"#));
        assert!(invalid(r#"{"levels": {"gold": 5.5}}"#));
        assert!(invalid(r#"{"levels": {"": 500}}"#));
        assert!(invalid(r#"{"levels": {"gold": 500}, "label": " "}"#));
        assert!(invalid(r#"{"levels": {"gold": 500}, "extra": 1}"#));
        assert!(invalid(r#"{"levels": ["gold"]}"#));
        // run reports the same error
        let c = gold_cart(vec![line("a", 1000, 1)]);
        assert!(matches!(
            run(r#"{"levels": {}}"#, c),
            Err(RuleError::InvalidConfig(_))
        ));
    }

    #[test]
    fn guest_impl_delegates() {
        assert!(Rule::check_config(CFG.into()).is_ok());
        let out = Rule::evaluate(CFG.into(), gold_cart(vec![line("a", 1000, 1)])).unwrap();
        assert_eq!(out.line_discounts.len(), 1);
    }
}
