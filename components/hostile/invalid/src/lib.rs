//! Hostile rule: returns a well-formed outcome with one proposal the host must
//! reject. The config selects which:
//!
//! * `unknown-line` — a line discount of 1 on line `"no-such-line"`;
//! * `negative` — a line discount of -100 on the first line;
//! * `above-price` — a line discount of the first line's payable + 1;
//! * `foreign-coupon` — an order discount of 1 redeeming coupon `"not-chosen"`;
//! * `over-order` — an order discount of the cart's payable + 1;
//! * `points-overdraw` — a points offset of 1 fen spending one point more than
//!   the member holds.
//!
//! `check-config` rejects any other config; `evaluate` fails with `failed`
//! when the batch has no line for the line modes.

use promotion_sdk::{Cart, Guest, LineDiscount, OrderDiscount, Outcome, PointsOffset, RuleError};

const MODES: [&str; 6] = [
    "unknown-line",
    "negative",
    "above-price",
    "foreign-coupon",
    "over-order",
    "points-overdraw",
];

fn mode(config: &str) -> Result<&str, RuleError> {
    let config = config.trim();
    if MODES.contains(&config) {
        Ok(config)
    } else {
        Err(RuleError::InvalidConfig(format!(
            "expected one of {}",
            MODES.join(", ")
        )))
    }
}

fn line_discount(line_id: &str, amount: i64) -> LineDiscount {
    LineDiscount {
        line_id: line_id.into(),
        amount,
        label: "hostile".into(),
    }
}

fn order_discount(amount: i64, coupon_id: Option<&str>) -> OrderDiscount {
    OrderDiscount {
        amount,
        label: "hostile".into(),
        coupon_id: coupon_id.map(Into::into),
    }
}

pub struct Rule;

impl Guest for Rule {
    fn check_config(config: String) -> Result<(), RuleError> {
        mode(&config).map(|_| ())
    }

    fn evaluate(config: String, input: Cart) -> Result<Outcome, RuleError> {
        let mut outcome = Outcome::empty();
        let first = input.lines.first();
        let need_line = || RuleError::Failed("this mode needs at least one line".into());
        match mode(&config)? {
            "unknown-line" => outcome
                .line_discounts
                .push(line_discount("no-such-line", 1)),
            "negative" => {
                let line = first.ok_or_else(need_line)?;
                outcome.line_discounts.push(line_discount(&line.id, -100));
            }
            "above-price" => {
                let line = first.ok_or_else(need_line)?;
                outcome
                    .line_discounts
                    .push(line_discount(&line.id, line.payable.saturating_add(1)));
            }
            "foreign-coupon" => outcome
                .order_discounts
                .push(order_discount(1, Some("not-chosen"))),
            "over-order" => outcome
                .order_discounts
                .push(order_discount(input.payable.saturating_add(1), None)),
            _ => {
                let balance = input.member.as_ref().map_or(0, |m| m.points);
                outcome.points = Some(PointsOffset {
                    points: balance.saturating_add(1),
                    amount: 1,
                    label: "hostile".into(),
                });
            }
        }
        Ok(outcome)
    }
}

promotion_sdk::export!(Rule);
