//! Points offset: the member pays part of the order with points.
//!
//! Points-stage rule; cart batches only (a catalogue batch gets an empty
//! outcome).
//!
//! ```json
//! {"points_per_yuan": 100, "max_share_bp": 5000, "label": null}
//! ```
//!
//! * `points_per_yuan` — how many points are worth ¥1 (100 minor units), ≥ 1.
//! * `max_share_bp` — the largest share of the cart's payable points may pay,
//!   in basis points, `1..=10000` (default 10000: all of it).
//! * `label` — the offset's label (default e.g. `"Paid with 1500 points"`).
//!
//! The member spends `min(points_to_use, balance)` at most. The offset is
//! `min(points * 100 / points_per_yuan, payable * max_share_bp / 10000)`
//! (both rounded down), and the points spent are what that amount costs,
//! rounded up — never more than requested or held. When fewer points are
//! spent than requested, a `points-capped` hint says why.

use promotion_sdk::{
    BatchKind, Cart, Hint, Outcome, PointsOffset, RuleError, invalid_config, parse_config, percent,
};
use serde::Deserialize;

/// The deployment settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    points_per_yuan: u32,
    #[serde(default = "all")]
    max_share_bp: u32,
    #[serde(default)]
    label: Option<String>,
}

fn all() -> u32 {
    10_000
}

fn parse(config: &str) -> Result<Config, RuleError> {
    let cfg: Config = parse_config(config)?;
    if cfg.points_per_yuan == 0 {
        return invalid_config("points_per_yuan must be at least 1");
    }
    if cfg.max_share_bp == 0 || cfg.max_share_bp > 10_000 {
        return invalid_config("max_share_bp must be between 1 and 10000");
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

/// Why fewer points were spent than requested.
enum Cap {
    Balance,
    Share,
    Rounding,
}

/// Prices one batch.
pub fn run(config: &str, cart: Cart) -> Result<Outcome, RuleError> {
    let cfg = parse(config)?;
    let mut outcome = Outcome::empty();
    if cart.kind != BatchKind::Cart {
        return Ok(outcome);
    }
    let Some(member) = &cart.member else {
        return Ok(outcome);
    };
    let requested = cart.points_to_use;
    if requested <= 0 || member.points <= 0 {
        return Ok(outcome);
    }

    let ppy = i128::from(cfg.points_per_yuan);
    let points = i128::from(requested.min(member.points));
    let worth = points * 100 / ppy;
    let share = i128::from(cart.payable.max(0)) * i128::from(cfg.max_share_bp) / 10_000;
    let amount = worth.min(share);
    // What `amount` costs, rounded up; <= points because amount <= points * 100 / ppy.
    let spent = (amount * ppy + 99) / 100;
    debug_assert!(spent <= points);
    let (amount, spent) = (amount as i64, spent as i64);

    if amount > 0 {
        let label = match cfg.label {
            Some(ref label) => label.clone(),
            None => format!("Paid with {spent} points"),
        };
        outcome.points = Some(PointsOffset {
            points: spent,
            amount,
            label,
        });
    }

    if spent < requested {
        let cap = if member.points < requested && spent == member.points {
            Cap::Balance
        } else if share < worth {
            Cap::Share
        } else if member.points < requested {
            Cap::Balance
        } else {
            Cap::Rounding
        };
        let why = match cap {
            Cap::Balance => format!("your balance is {} points", member.points),
            Cap::Share if cfg.max_share_bp == 10_000 => {
                "points cannot pay more than the order".to_owned()
            }
            Cap::Share => format!(
                "points can pay at most {} of the order",
                percent(cfg.max_share_bp)
            ),
            Cap::Rounding => format!("{} points are worth ¥1.00", cfg.points_per_yuan),
        };
        outcome.hints.push(Hint {
            code: "points-capped".into(),
            message: format!("{spent} of the {requested} points requested can be used: {why}"),
            shortfall: None,
        });
    }
    Ok(outcome)
}

promotion_sdk::rule!(check, run);

#[cfg(test)]
mod tests {
    use super::*;
    use promotion_sdk::Guest;
    use promotion_sdk::testing::{cart, line, member};

    const CFG: &str = r#"{"points_per_yuan": 100, "max_share_bp": 5000}"#;

    fn with_points(payable: i64, balance: i64, to_use: i64) -> Cart {
        let mut c = cart(BatchKind::Cart, vec![line("a", payable, 1)]);
        c.member = Some(member("gold", balance));
        c.points_to_use = to_use;
        c
    }

    fn offset(out: &Outcome) -> Option<(i64, i64)> {
        out.points.as_ref().map(|p| (p.points, p.amount))
    }

    fn capped(out: &Outcome) -> Option<&str> {
        assert!(out.hints.len() <= 1);
        out.hints.first().map(|h| {
            assert_eq!(h.code, "points-capped");
            assert_eq!(h.shortfall, None);
            h.message.as_str()
        })
    }

    fn invalid(config: &str) -> bool {
        matches!(check(config), Err(RuleError::InvalidConfig(_)))
    }

    #[test]
    fn spends_the_requested_points() {
        let out = run(CFG, with_points(10000, 5000, 1500)).unwrap();
        assert_eq!(
            out.points,
            Some(PointsOffset {
                points: 1500,
                amount: 1500,
                label: "Paid with 1500 points".into()
            })
        );
        assert!(
            out.hints.is_empty() && out.line_discounts.is_empty() && out.order_discounts.is_empty()
        );
    }

    #[test]
    fn capped_by_share_of_payable() {
        let out = run(CFG, with_points(10000, 20000, 8000)).unwrap();
        assert_eq!(offset(&out), Some((5000, 5000)));
        assert_eq!(
            capped(&out),
            Some(
                "5000 of the 8000 points requested can be used: points can pay at most 50% of the order"
            )
        );
    }

    #[test]
    fn capped_by_balance() {
        let out = run(CFG, with_points(100000, 1200, 3000)).unwrap();
        assert_eq!(offset(&out), Some((1200, 1200)));
        assert_eq!(
            capped(&out),
            Some("1200 of the 3000 points requested can be used: your balance is 1200 points")
        );
    }

    #[test]
    fn capped_by_the_whole_order() {
        let cfg = r#"{"points_per_yuan": 100}"#;
        let out = run(cfg, with_points(800, 5000, 1000)).unwrap();
        assert_eq!(offset(&out), Some((800, 800)));
        assert_eq!(
            capped(&out),
            Some(
                "800 of the 1000 points requested can be used: points cannot pay more than the order"
            )
        );
    }

    #[test]
    fn rounding_never_overspends() {
        // 300 points = ¥1: 250 points are worth 83 fen, which cost 249 points.
        let cfg = r#"{"points_per_yuan": 300}"#;
        let out = run(cfg, with_points(100000, 1000, 250)).unwrap();
        assert_eq!(offset(&out), Some((249, 83)));
        assert_eq!(
            capped(&out),
            Some("249 of the 250 points requested can be used: 300 points are worth ¥1.00")
        );

        // 3 points = ¥1: 10 points are worth 333 fen, which cost 9.99 → 10 points.
        let cfg = r#"{"points_per_yuan": 3}"#;
        let out = run(cfg, with_points(100000, 1000, 10)).unwrap();
        assert_eq!(offset(&out), Some((10, 333)));
        assert!(out.hints.is_empty());
    }

    #[test]
    fn share_cap_cost_is_rounded_up() {
        // payable 999 * 50% = 499 fen; at 3 points/¥ that costs 14.97 → 15 points.
        let cfg = r#"{"points_per_yuan": 3, "max_share_bp": 5000}"#;
        let out = run(cfg, with_points(999, 1000, 1000)).unwrap();
        assert_eq!(offset(&out), Some((15, 499)));
        let p = out.points.unwrap();
        assert!(p.points * 100 / 3 >= p.amount);
    }

    #[test]
    fn too_few_points_for_a_fen() {
        // 1000 points = ¥1: 5 points are worth 0.5 fen → nothing.
        let cfg = r#"{"points_per_yuan": 1000}"#;
        let out = run(cfg, with_points(10000, 5, 5)).unwrap();
        assert_eq!(offset(&out), None);
        assert_eq!(
            capped(&out),
            Some("0 of the 5 points requested can be used: 1000 points are worth ¥1.00")
        );
    }

    #[test]
    fn nothing_without_member_request_or_balance() {
        let mut anon = with_points(10000, 0, 500);
        anon.member = None;
        assert!(run(CFG, anon).unwrap().is_empty());
        assert!(run(CFG, with_points(10000, 5000, 0)).unwrap().is_empty());
        assert!(run(CFG, with_points(10000, 5000, -10)).unwrap().is_empty());
        assert!(run(CFG, with_points(10000, 0, 500)).unwrap().is_empty());
    }

    #[test]
    fn zero_payable_uses_no_points() {
        let mut c = with_points(10000, 5000, 500);
        c.payable = 0;
        let out = run(CFG, c).unwrap();
        assert_eq!(offset(&out), None);
        assert_eq!(
            capped(&out),
            Some(
                "0 of the 500 points requested can be used: points can pay at most 50% of the order"
            )
        );
    }

    #[test]
    fn catalogue_batches_get_nothing() {
        let mut c = with_points(10000, 5000, 500);
        c.kind = BatchKind::Catalog;
        assert!(run(CFG, c).unwrap().is_empty());
    }

    #[test]
    fn custom_label_and_rates() {
        let cfg = r#"{"points_per_yuan": 10, "max_share_bp": 10000, "label": "Points"}"#;
        let out = run(cfg, with_points(10000, 500, 500)).unwrap();
        // 10 points = ¥1: 500 points = ¥50.
        assert_eq!(
            out.points.unwrap(),
            PointsOffset {
                points: 500,
                amount: 5000,
                label: "Points".into()
            }
        );
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let cfg = r#"{"points_per_yuan": 1}"#;
        let mut c = with_points(1, i64::MAX, i64::MAX);
        c.payable = i64::MAX;
        let p = run(cfg, c).unwrap().points.unwrap();
        assert_eq!(p.amount, i64::MAX);
        assert_eq!(p.points, i64::MAX / 100 + 1);
    }

    #[test]
    fn configs() {
        check(CFG).unwrap();
        check(r#"{"points_per_yuan": 1, "max_share_bp": 1}"#).unwrap();
        check(r#"{"points_per_yuan": 100, "max_share_bp": 10000, "label": null}"#).unwrap();
        assert!(invalid(""));
        assert!(invalid(r#"{"max_share_bp": 5000}"#));
        assert!(invalid(r#"{"points_per_yuan": 0}"#));
        assert!(invalid(r#"{"points_per_yuan": -100}"#));
        assert!(invalid(r#"{"points_per_yuan": 100, "max_share_bp": 0}"#));
        assert!(invalid(
            r#"{"points_per_yuan": 100, "max_share_bp": 10001}"#
        ));
        assert!(invalid(r#"{"points_per_yuan": 100, "label": "  "}"#));
        assert!(invalid(r#"{"points_per_yuan": 100, "min_points": 10}"#));
        assert!(matches!(
            run("{}", with_points(1, 1, 1)),
            Err(RuleError::InvalidConfig(_))
        ));
    }

    #[test]
    fn guest_impl_delegates() {
        assert!(Rule::check_config(CFG.into()).is_ok());
        let out = Rule::evaluate(CFG.into(), with_points(10000, 5000, 1500)).unwrap();
        assert!(out.points.is_some());
    }
}
