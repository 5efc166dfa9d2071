//! Spend threshold (满减): money off the order when it reaches a threshold.
//!
//! Order-level rule; cart batches only (a catalogue batch gets an empty
//! outcome).
//!
//! ```json
//! {"threshold": 20000, "off": 3000, "repeatable": false, "max_times": null,
//!  "categories": null, "label": null}
//! ```
//!
//! * `threshold` — the spend that earns the reward, in minor units, > 0.
//! * `off` — the reward, in minor units, `0 < off < threshold`.
//! * `repeatable` — `true`: `off` for every full `threshold` spent
//!   ("¥30 off every ¥200"); `false` (default): once.
//! * `max_times` — with `repeatable`, the most times the reward is given
//!   (default: no limit), at least 1.
//! * `categories` — only lines in these product categories count towards the
//!   threshold (default `null`: every line).
//! * `label` — the discount's label (default `"¥30.00 off orders over ¥200.00"`
//!   or `"¥30.00 off every ¥200.00"`).
//!
//! The eligible spend is the sum of the payables of the counted lines. While
//! the member can still earn (more of) the reward, the outcome carries a
//! `spend-more` hint with the shortfall, e.g. "Spend ¥12.00 more for ¥30.00 off".

use promotion_sdk::{
    BatchKind, Cart, Hint, Money, OrderDiscount, Outcome, RuleError, invalid_config, parse_config,
    yuan,
};
use serde::Deserialize;

/// The deployment settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    threshold: Money,
    off: Money,
    #[serde(default)]
    repeatable: bool,
    #[serde(default)]
    max_times: Option<u32>,
    #[serde(default)]
    categories: Option<Vec<String>>,
    #[serde(default)]
    label: Option<String>,
}

fn parse(config: &str) -> Result<Config, RuleError> {
    let cfg: Config = parse_config(config)?;
    if cfg.threshold <= 0 {
        return invalid_config("threshold must be positive");
    }
    if cfg.off <= 0 || cfg.off >= cfg.threshold {
        return invalid_config("off must be positive and less than threshold");
    }
    match cfg.max_times {
        Some(0) => return invalid_config("max_times must be at least 1"),
        Some(_) if !cfg.repeatable => {
            return invalid_config("max_times only applies when repeatable is true");
        }
        _ => {}
    }
    if cfg.categories.as_ref().is_some_and(Vec::is_empty) {
        return invalid_config("categories must not be empty (use null for every category)");
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
    if cart.kind != BatchKind::Cart {
        return Ok(outcome);
    }

    let eligible: i128 = cart
        .lines
        .iter()
        .filter(|l| l.payable > 0)
        .filter(|l| {
            cfg.categories
                .as_ref()
                .is_none_or(|c| c.contains(&l.category))
        })
        .map(|l| i128::from(l.payable))
        .sum();
    let threshold = i128::from(cfg.threshold);
    let reached = eligible / threshold;
    let (times, max) = if cfg.repeatable {
        match cfg.max_times {
            Some(max) => (reached.min(i128::from(max)), i128::from(max)),
            None => (reached, i128::MAX),
        }
    } else {
        (reached.min(1), 1)
    };

    if times > 0 {
        let amount = (i128::from(cfg.off) * times).min(i128::from(cart.payable)) as i64;
        if amount > 0 {
            let label = match cfg.label {
                Some(ref label) => label.clone(),
                None if cfg.repeatable => {
                    format!("{} off every {}", yuan(cfg.off), yuan(cfg.threshold))
                }
                None => format!("{} off orders over {}", yuan(cfg.off), yuan(cfg.threshold)),
            };
            outcome.order_discounts.push(OrderDiscount {
                amount,
                label,
                coupon_id: None,
            });
        }
    }

    if times < max && eligible > 0 {
        let shortfall = threshold * (times + 1) - eligible;
        if let Ok(shortfall) = i64::try_from(shortfall) {
            let another = if times > 0 { "another " } else { "" };
            outcome.hints.push(Hint {
                code: "spend-more".into(),
                message: format!(
                    "Spend {} more for {another}{} off",
                    yuan(shortfall),
                    yuan(cfg.off)
                ),
                shortfall: Some(shortfall),
            });
        }
    }
    Ok(outcome)
}

promotion_sdk::rule!(check, run);

#[cfg(test)]
mod tests {
    use super::*;
    use promotion_sdk::Guest;
    use promotion_sdk::Line;
    use promotion_sdk::testing::{cart, line};

    const ONCE: &str = r#"{"threshold": 20000, "off": 3000}"#;
    const EVERY: &str = r#"{"threshold": 20000, "off": 3000, "repeatable": true}"#;

    fn cart_of(lines: Vec<Line>) -> Cart {
        cart(BatchKind::Cart, lines)
    }

    fn in_category(id: &str, price: i64, category: &str) -> Line {
        let mut l = line(id, price, 1);
        l.category = category.into();
        l
    }

    fn invalid(config: &str) -> bool {
        matches!(check(config), Err(RuleError::InvalidConfig(_)))
    }

    fn discount(out: &Outcome) -> Option<(i64, &str)> {
        assert!(out.order_discounts.len() <= 1);
        out.order_discounts
            .first()
            .map(|d| (d.amount, d.label.as_str()))
    }

    fn hint(out: &Outcome) -> Option<(&str, Option<i64>)> {
        assert!(out.hints.len() <= 1);
        out.hints.first().map(|h| {
            assert_eq!(h.code, "spend-more");
            (h.message.as_str(), h.shortfall)
        })
    }

    #[test]
    fn below_threshold_hints_the_shortfall() {
        let out = run(ONCE, cart_of(vec![line("a", 9400, 2)])).unwrap();
        assert_eq!(discount(&out), None);
        assert_eq!(
            hint(&out),
            Some(("Spend ¥12.00 more for ¥30.00 off", Some(1200)))
        );
        assert!(out.line_discounts.is_empty() && out.points.is_none());
    }

    #[test]
    fn at_threshold_gives_the_reward_once() {
        let out = run(ONCE, cart_of(vec![line("a", 10000, 2)])).unwrap();
        assert_eq!(
            discount(&out),
            Some((3000, "¥30.00 off orders over ¥200.00"))
        );
        assert_eq!(hint(&out), None);

        let out = run(ONCE, cart_of(vec![line("a", 10000, 5)])).unwrap();
        assert_eq!(
            discount(&out),
            Some((3000, "¥30.00 off orders over ¥200.00"))
        );
        assert_eq!(hint(&out), None);
    }

    #[test]
    fn repeatable_gives_the_reward_per_threshold() {
        let out = run(EVERY, cart_of(vec![line("a", 10000, 5)])).unwrap();
        assert_eq!(discount(&out), Some((6000, "¥30.00 off every ¥200.00")));
        assert_eq!(
            hint(&out),
            Some(("Spend ¥100.00 more for another ¥30.00 off", Some(10000)))
        );
    }

    #[test]
    fn repeatable_below_first_tier() {
        let out = run(EVERY, cart_of(vec![line("a", 19999, 1)])).unwrap();
        assert_eq!(discount(&out), None);
        assert_eq!(
            hint(&out),
            Some(("Spend ¥0.01 more for ¥30.00 off", Some(1)))
        );
    }

    #[test]
    fn max_times_caps_the_reward_and_stops_hints() {
        let cfg = r#"{"threshold": 20000, "off": 3000, "repeatable": true, "max_times": 2}"#;
        let out = run(cfg, cart_of(vec![line("a", 10000, 7)])).unwrap();
        assert_eq!(discount(&out), Some((6000, "¥30.00 off every ¥200.00")));
        assert_eq!(hint(&out), None);

        let out = run(cfg, cart_of(vec![line("a", 10000, 3)])).unwrap();
        assert_eq!(discount(&out), Some((3000, "¥30.00 off every ¥200.00")));
        assert_eq!(
            hint(&out),
            Some(("Spend ¥100.00 more for another ¥30.00 off", Some(10000)))
        );
    }

    #[test]
    fn categories_limit_the_eligible_spend() {
        let cfg = r#"{"threshold": 20000, "off": 3000, "categories": ["food", "drink"]}"#;
        let lines = vec![
            in_category("a", 15000, "food"),
            in_category("b", 50000, "fashion"),
            in_category("c", 4000, "drink"),
        ];
        let out = run(cfg, cart_of(lines)).unwrap();
        assert_eq!(discount(&out), None);
        assert_eq!(
            hint(&out),
            Some(("Spend ¥10.00 more for ¥30.00 off", Some(1000)))
        );

        let lines = vec![
            in_category("a", 15000, "food"),
            in_category("c", 5000, "drink"),
        ];
        assert_eq!(
            discount(&run(cfg, cart_of(lines)).unwrap()).unwrap().0,
            3000
        );
    }

    #[test]
    fn no_eligible_lines_means_no_hint() {
        let cfg = r#"{"threshold": 20000, "off": 3000, "categories": ["food"]}"#;
        assert!(
            run(cfg, cart_of(vec![in_category("a", 50000, "fashion")]))
                .unwrap()
                .is_empty()
        );
        assert!(run(ONCE, cart_of(vec![])).unwrap().is_empty());
    }

    #[test]
    fn eligible_spend_uses_payable_after_earlier_rules() {
        let mut l = line("a", 10000, 2);
        l.payable = 19000; // a member discount took 1000 off
        let mut c = cart_of(vec![l]);
        c.payable = 19000;
        let out = run(ONCE, c).unwrap();
        assert_eq!(discount(&out), None);
        assert_eq!(hint(&out).unwrap().1, Some(1000));
    }

    #[test]
    fn zero_payable_lines_are_skipped() {
        let mut free = line("free", 50000, 1);
        free.payable = 0;
        let mut c = cart_of(vec![free, line("a", 100, 1)]);
        c.payable = 100;
        let out = run(ONCE, c).unwrap();
        assert_eq!(discount(&out), None);
        assert_eq!(hint(&out).unwrap().1, Some(19900));
    }

    #[test]
    fn capped_at_cart_payable() {
        // An earlier order discount left the cart payable below the reward.
        let mut c = cart_of(vec![line("a", 20000, 1)]);
        c.payable = 2500;
        assert_eq!(discount(&run(ONCE, c).unwrap()).unwrap().0, 2500);

        let mut c = cart_of(vec![line("a", 20000, 1)]);
        c.payable = 0;
        assert_eq!(discount(&run(ONCE, c).unwrap()), None);
    }

    #[test]
    fn catalogue_batches_get_nothing() {
        let c = cart(BatchKind::Catalog, vec![line("a", 50000, 1)]);
        assert!(run(ONCE, c).unwrap().is_empty());
    }

    #[test]
    fn custom_label() {
        let cfg = r#"{"threshold": 20000, "off": 3000, "label": "Summer sale"}"#;
        let out = run(cfg, cart_of(vec![line("a", 20000, 1)])).unwrap();
        assert_eq!(discount(&out), Some((3000, "Summer sale")));
    }

    #[test]
    fn huge_amounts_do_not_overflow() {
        let mut l = line("a", 1, 1);
        l.payable = i64::MAX;
        let mut l2 = line("b", 1, 1);
        l2.payable = i64::MAX;
        let mut c = cart_of(vec![l, l2]);
        c.payable = i64::MAX;
        let out = run(r#"{"threshold": 2, "off": 1, "repeatable": true}"#, c).unwrap();
        assert_eq!(discount(&out).unwrap().0, i64::MAX);
    }

    #[test]
    fn configs() {
        check(ONCE).unwrap();
        check(EVERY).unwrap();
        check(r#"{"threshold": 20000, "off": 3000, "repeatable": false, "max_times": null, "categories": null, "label": null}"#).unwrap();
        check(r#"{"threshold": 20000, "off": 3000, "repeatable": true, "max_times": 3, "categories": ["food"]}"#).unwrap();
        assert!(invalid(""));
        assert!(invalid(r#"{"threshold": 20000}"#));
        assert!(invalid(r#"{"off": 3000}"#));
        assert!(invalid(r#"{"threshold": 0, "off": 0}"#));
        assert!(invalid(r#"{"threshold": -100, "off": 10}"#));
        assert!(invalid(r#"{"threshold": 20000, "off": 0}"#));
        assert!(invalid(r#"{"threshold": 20000, "off": -1}"#));
        assert!(invalid(r#"{"threshold": 20000, "off": 20000}"#));
        assert!(invalid(r#"{"threshold": 20000, "off": 30000}"#));
        assert!(invalid(
            r#"{"threshold": 20000, "off": 3000, "repeatable": true, "max_times": 0}"#
        ));
        assert!(invalid(
            r#"{"threshold": 20000, "off": 3000, "max_times": 2}"#
        ));
        assert!(invalid(
            r#"{"threshold": 20000, "off": 3000, "categories": []}"#
        ));
        assert!(invalid(r#"{"threshold": 20000, "off": 3000, "label": ""}"#));
        assert!(invalid(r#"{"threshold": 200.5, "off": 30}"#));
        assert!(invalid(r#"{"threshold": "20000", "off": 3000}"#));
        assert!(invalid(
            r#"{"threshold": 20000, "off": 3000, "stackable": true}"#
        ));
    }

    #[test]
    fn guest_impl_delegates() {
        assert!(Rule::check_config(ONCE.into()).is_ok());
        assert!(Rule::check_config("{}".into()).is_err());
        let out = Rule::evaluate(ONCE.into(), cart_of(vec![line("a", 20000, 1)])).unwrap();
        assert_eq!(out.order_discounts.len(), 1);
    }
}
