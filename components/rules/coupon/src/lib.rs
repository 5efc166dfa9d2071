//! Coupons: redeems the coupons the member chose, best first.
//!
//! Coupon-stage rule; cart batches only (a catalogue batch gets an empty
//! outcome).
//!
//! ```json
//! {"max_per_order": 1}
//! ```
//!
//! * `max_per_order` — how many coupons one order may use, at least 1
//!   (default 1; a blank config is the default).
//!
//! A chosen coupon is usable when the member holds it, it has not expired
//! (`now < expires_at`) and the cart's payable reaches its `min_spend`. The
//! usable coupons are ranked by what they take off the cart (largest first,
//! ties in the order chosen) and the best `max_per_order` are redeemed one
//! after another: an amount-off coupon takes `min(amount, what is left)`, a
//! percent-off coupon `what is left * bp / 10000`, rounded down. Each redeemed
//! coupon is an order discount carrying its `coupon_id` and labelled with its
//! title.
//!
//! Every chosen coupon that is not redeemed gets a hint: `coupon-not-held`,
//! `coupon-expired`, `coupon-min-spend` (with the shortfall),
//! `coupon-limit` or `coupon-no-discount` (nothing left to take off).

use promotion_sdk::{
    BatchKind, Cart, Coupon, CouponValue, Hint, Money, OrderDiscount, Outcome, RuleError,
    invalid_config, parse_config, yuan,
};
use serde::Deserialize;

/// The deployment settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "one")]
    max_per_order: u32,
}

fn one() -> u32 {
    1
}

fn parse(config: &str) -> Result<Config, RuleError> {
    let cfg: Config = parse_config(config)?;
    if cfg.max_per_order == 0 {
        return invalid_config("max_per_order must be at least 1");
    }
    Ok(cfg)
}

/// Checks the deployment settings.
pub fn check(config: &str) -> Result<(), RuleError> {
    parse(config).map(|_| ())
}

/// What `coupon` takes off `payable` on its own, rounded down, at most `payable`.
fn value_of(coupon: &Coupon, payable: Money) -> Money {
    let payable = payable.max(0);
    match coupon.value {
        CouponValue::AmountOff(amount) => amount.clamp(0, payable),
        CouponValue::PercentOff(bp) => {
            let off = i128::from(payable) * i128::from(bp.min(10_000)) / 10_000;
            off as Money
        }
    }
}

fn hint(code: &str, message: String, shortfall: Option<Money>) -> Hint {
    Hint {
        code: code.into(),
        message,
        shortfall,
    }
}

fn no_discount(coupon: &Coupon) -> Hint {
    hint(
        "coupon-no-discount",
        format!("{} takes nothing off this order", coupon.title),
        None,
    )
}

/// Prices one batch.
pub fn run(config: &str, cart: Cart) -> Result<Outcome, RuleError> {
    let cfg = parse(config)?;
    let mut outcome = Outcome::empty();
    if cart.kind != BatchKind::Cart {
        return Ok(outcome);
    }

    // Usable coupons with what each would take off on its own.
    let mut usable: Vec<(&Coupon, Money)> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for id in &cart.chosen_coupons {
        if seen.contains(&id.as_str()) {
            continue; // chosen twice: one redemption at most
        }
        seen.push(id);
        let Some(coupon) = cart.held_coupons.iter().find(|c| c.id == *id) else {
            outcome.hints.push(hint(
                "coupon-not-held",
                format!("Coupon {id} is not in your account"),
                None,
            ));
            continue;
        };
        if cart.now >= coupon.expires_at {
            outcome.hints.push(hint(
                "coupon-expired",
                format!("{} has expired", coupon.title),
                None,
            ));
            continue;
        }
        if coupon.min_spend > cart.payable {
            let shortfall = coupon.min_spend - cart.payable;
            outcome.hints.push(hint(
                "coupon-min-spend",
                format!("Spend {} more to use {}", yuan(shortfall), coupon.title),
                Some(shortfall),
            ));
            continue;
        }
        let value = value_of(coupon, cart.payable);
        if value <= 0 {
            outcome.hints.push(no_discount(coupon));
            continue;
        }
        usable.push((coupon, value));
    }

    // Best first; the sort is stable, so ties keep the member's order.
    usable.sort_by_key(|&(_, value)| core::cmp::Reverse(value));
    let max = usize::try_from(cfg.max_per_order).unwrap_or(usize::MAX);
    let mut left = cart.payable.max(0);
    for (coupon, _) in usable {
        if outcome.order_discounts.len() >= max {
            let message = if max == 1 {
                format!(
                    "Only 1 coupon can be used per order; {} was not applied",
                    coupon.title
                )
            } else {
                format!(
                    "Only {max} coupons can be used per order; {} was not applied",
                    coupon.title
                )
            };
            outcome.hints.push(hint("coupon-limit", message, None));
            continue;
        }
        // Redeemed one after another on what is left, so together they never
        // take off more than the cart's payable.
        let amount = value_of(coupon, left);
        if amount <= 0 {
            outcome.hints.push(no_discount(coupon));
            continue;
        }
        left -= amount;
        outcome.order_discounts.push(OrderDiscount {
            amount,
            label: coupon.title.clone(),
            coupon_id: Some(coupon.id.clone()),
        });
    }
    Ok(outcome)
}

promotion_sdk::rule!(check, run);

#[cfg(test)]
mod tests {
    use super::*;
    use promotion_sdk::Guest;
    use promotion_sdk::testing::{NOW, cart, coupon, line};

    fn wallet(payable: i64, held: Vec<Coupon>, chosen: &[&str]) -> Cart {
        let mut c = cart(BatchKind::Cart, vec![line("a", payable, 1)]);
        c.held_coupons = held;
        c.chosen_coupons = chosen.iter().map(|s| s.to_string()).collect();
        c
    }

    fn off(id: &str, amount: i64) -> Coupon {
        coupon(
            id,
            &format!("¥{} off", amount / 100),
            CouponValue::AmountOff(amount),
        )
    }

    fn pct(id: &str, bp: u32) -> Coupon {
        coupon(
            id,
            &format!("{}% off", bp / 100),
            CouponValue::PercentOff(bp),
        )
    }

    fn applied(out: &Outcome) -> Vec<(&str, i64)> {
        out.order_discounts
            .iter()
            .map(|d| (d.coupon_id.as_deref().unwrap(), d.amount))
            .collect()
    }

    fn codes(out: &Outcome) -> Vec<&str> {
        out.hints.iter().map(|h| h.code.as_str()).collect()
    }

    fn invalid(config: &str) -> bool {
        matches!(check(config), Err(RuleError::InvalidConfig(_)))
    }

    #[test]
    fn redeems_a_chosen_held_coupon() {
        let out = run("", wallet(10000, vec![off("c1", 2000)], &["c1"])).unwrap();
        assert_eq!(
            out.order_discounts,
            vec![OrderDiscount {
                amount: 2000,
                label: "¥20 off".into(),
                coupon_id: Some("c1".into())
            }]
        );
        assert!(out.hints.is_empty() && out.line_discounts.is_empty() && out.points.is_none());
    }

    #[test]
    fn unchosen_coupons_are_not_used() {
        let out = run("", wallet(10000, vec![off("c1", 2000)], &[])).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn percent_off_rounds_down() {
        let out = run("", wallet(9999, vec![pct("p", 1000)], &["p"])).unwrap();
        assert_eq!(applied(&out), [("p", 999)]);
    }

    #[test]
    fn amount_off_is_capped_at_payable() {
        let out = run("", wallet(1500, vec![off("c1", 2000)], &["c1"])).unwrap();
        assert_eq!(applied(&out), [("c1", 1500)]);
    }

    #[test]
    fn picks_the_best_and_hints_the_limit() {
        let held = vec![off("small", 500), pct("ten", 1000), off("big", 1500)];
        let out = run(
            r#"{"max_per_order": 1}"#,
            wallet(20000, held, &["small", "ten", "big"]),
        )
        .unwrap();
        // 10% of ¥200 = ¥20 beats ¥15 and ¥5.
        assert_eq!(applied(&out), [("ten", 2000)]);
        assert_eq!(codes(&out), ["coupon-limit", "coupon-limit"]);
        assert_eq!(
            out.hints[0].message,
            "Only 1 coupon can be used per order; ¥15 off was not applied"
        );
        assert_eq!(out.hints[0].shortfall, None);
    }

    #[test]
    fn ties_keep_the_members_order() {
        let held = vec![off("x", 1000), off("y", 1000)];
        let out = run("", wallet(5000, held.clone(), &["y", "x"])).unwrap();
        assert_eq!(applied(&out), [("y", 1000)]);
        let out = run("", wallet(5000, held, &["x", "y"])).unwrap();
        assert_eq!(applied(&out), [("x", 1000)]);
    }

    #[test]
    fn several_coupons_never_exceed_the_payable_together() {
        let held = vec![off("a", 3000), off("b", 3000), pct("half", 5000)];
        let out = run(
            r#"{"max_per_order": 3}"#,
            wallet(5000, held, &["a", "b", "half"]),
        )
        .unwrap();
        // Ranked on their own: a 3000, b 3000, half 2500; redeemed in turn on what is left.
        assert_eq!(applied(&out), [("a", 3000), ("b", 2000)]);
        assert_eq!(codes(&out), ["coupon-no-discount"]);
        assert_eq!(out.hints[0].message, "50% off takes nothing off this order");
        let total: i64 = out.order_discounts.iter().map(|d| d.amount).sum();
        assert!(total <= 5000);
    }

    #[test]
    fn percent_after_amount_uses_what_is_left() {
        let held = vec![off("a", 4000), pct("ten", 1000)];
        let out = run(
            r#"{"max_per_order": 2}"#,
            wallet(10000, held, &["ten", "a"]),
        )
        .unwrap();
        assert_eq!(applied(&out), [("a", 4000), ("ten", 600)]);
    }

    #[test]
    fn not_held_expired_and_min_spend_hints() {
        let mut expired = off("old", 1000);
        expired.expires_at = NOW; // expiry is exclusive
        let mut big = off("big", 5000);
        big.min_spend = 30000;
        big.title = "¥50 off over ¥300".into();
        let out = run(
            "",
            wallet(
                28800,
                vec![expired, big, off("ok", 100)],
                &["ghost", "old", "big", "ok"],
            ),
        )
        .unwrap();
        assert_eq!(applied(&out), [("ok", 100)]);
        assert_eq!(
            out.hints,
            vec![
                Hint {
                    code: "coupon-not-held".into(),
                    message: "Coupon ghost is not in your account".into(),
                    shortfall: None
                },
                Hint {
                    code: "coupon-expired".into(),
                    message: "¥10 off has expired".into(),
                    shortfall: None
                },
                Hint {
                    code: "coupon-min-spend".into(),
                    message: "Spend ¥12.00 more to use ¥50 off over ¥300".into(),
                    shortfall: Some(1200),
                },
            ]
        );
    }

    #[test]
    fn min_spend_is_inclusive_and_uses_cart_payable() {
        let mut c1 = off("c1", 1000);
        c1.min_spend = 10000;
        let out = run("", wallet(10000, vec![c1.clone()], &["c1"])).unwrap();
        assert_eq!(applied(&out), [("c1", 1000)]);

        let mut c = wallet(10000, vec![c1], &["c1"]);
        c.payable = 9000; // an order discount already applied
        let out = run("", c).unwrap();
        assert_eq!(codes(&out), ["coupon-min-spend"]);
        assert_eq!(out.hints[0].shortfall, Some(1000));
    }

    #[test]
    fn not_yet_expired_is_usable() {
        let mut c1 = off("c1", 1000);
        c1.expires_at = NOW + 1;
        assert_eq!(
            applied(&run("", wallet(5000, vec![c1], &["c1"])).unwrap()),
            [("c1", 1000)]
        );
    }

    #[test]
    fn chosen_twice_is_redeemed_once() {
        let out = run(
            r#"{"max_per_order": 5}"#,
            wallet(10000, vec![off("c1", 1000)], &["c1", "c1"]),
        )
        .unwrap();
        assert_eq!(applied(&out), [("c1", 1000)]);
        assert!(out.hints.is_empty());
    }

    #[test]
    fn zero_payable_or_zero_value() {
        let mut c = wallet(0, vec![off("c1", 1000)], &["c1"]);
        c.payable = 0;
        let out = run("", c).unwrap();
        assert!(out.order_discounts.is_empty());
        assert_eq!(codes(&out), ["coupon-no-discount"]);

        let out = run(
            "",
            wallet(1000, vec![pct("zero", 0), off("nil", 0)], &["zero", "nil"]),
        )
        .unwrap();
        assert!(out.order_discounts.is_empty());
        assert_eq!(codes(&out), ["coupon-no-discount", "coupon-no-discount"]);
    }

    #[test]
    fn a_worthless_coupon_does_not_take_the_slot() {
        let out = run(
            "",
            wallet(1000, vec![pct("tiny", 1), off("c", 500)], &["tiny", "c"]),
        )
        .unwrap();
        // 0.01% of ¥10 rounds down to nothing.
        assert_eq!(applied(&out), [("c", 500)]);
        assert_eq!(codes(&out), ["coupon-no-discount"]);
    }

    #[test]
    fn percent_over_100_is_capped() {
        let out = run("", wallet(1000, vec![pct("p", 20000)], &["p"])).unwrap();
        assert_eq!(applied(&out), [("p", 1000)]);
    }

    #[test]
    fn limit_hint_plural() {
        let held = vec![off("a", 300), off("b", 200), off("c", 100)];
        let out = run(
            r#"{"max_per_order": 2}"#,
            wallet(10000, held, &["a", "b", "c"]),
        )
        .unwrap();
        assert_eq!(applied(&out), [("a", 300), ("b", 200)]);
        assert_eq!(
            out.hints[0].message,
            "Only 2 coupons can be used per order; ¥1 off was not applied"
        );
    }

    #[test]
    fn catalogue_batches_get_nothing() {
        let mut c = wallet(10000, vec![off("c1", 1000)], &["c1"]);
        c.kind = BatchKind::Catalog;
        assert!(run("", c).unwrap().is_empty());
    }

    #[test]
    fn configs() {
        check("").unwrap();
        check("{}").unwrap();
        check(r#"{"max_per_order": 3}"#).unwrap();
        assert!(invalid(r#"{"max_per_order": 0}"#));
        assert!(invalid(r#"{"max_per_order": -1}"#));
        assert!(invalid(r#"{"max_per_order": "1"}"#));
        assert!(invalid(r#"{"max": 1}"#));
        assert!(invalid("1"));
        assert!(matches!(
            run(r#"{"max_per_order": 0}"#, wallet(1, vec![], &[])),
            Err(RuleError::InvalidConfig(_))
        ));
    }

    #[test]
    fn guest_impl_delegates() {
        assert!(Rule::check_config(String::new()).is_ok());
        let out =
            Rule::evaluate(String::new(), wallet(10000, vec![off("c1", 2000)], &["c1"])).unwrap();
        assert_eq!(out.order_discounts.len(), 1);
    }
}
