//! Flash sale: the flash-sale price for lines whose sale is running.
//!
//! Item-level rule; works for catalogue and cart batches.
//!
//! ```json
//! {"label": "Flash sale", "limit_per_order": 2}
//! ```
//!
//! * `label` — the label on every discount (default `"Flash sale"`).
//! * `limit_per_order` — how many units of one product (SKU) get the flash
//!   price per order, at least 1 (default: no limit). Units beyond the limit
//!   pay the normal price.
//!
//! A line's sale is running when `starts_at <= now < ends_at` and its price is
//! below the unit price. The discount is
//! `(unit_price - price) * min(quantity, units left under the limit)`, at most
//! the line's payable.
//!
//! Cart batches also get hints: `flash-sale-upcoming` for sales starting within
//! 24 hours, and `flash-sale-limit` when the limit stopped some units getting
//! the flash price.

use promotion_sdk::{
    BatchKind, Cart, Hint, Line, LineDiscount, Outcome, RuleError, Timestamp, invalid_config,
    parse_config, yuan,
};
use serde::Deserialize;

/// How far ahead an upcoming sale is announced.
const UPCOMING_WINDOW: Timestamp = 24 * 60 * 60 * 1000;
const MINUTE: Timestamp = 60 * 1000;

/// The deployment settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    limit_per_order: Option<u32>,
}

fn parse(config: &str) -> Result<Config, RuleError> {
    let cfg: Config = parse_config(config)?;
    if cfg.label.as_deref().is_some_and(|l| l.trim().is_empty()) {
        return invalid_config("label must not be empty");
    }
    if cfg.limit_per_order == Some(0) {
        return invalid_config("limit_per_order must be at least 1");
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
    let label = cfg.label.as_deref().unwrap_or("Flash sale");
    let hints_wanted = cart.kind == BatchKind::Cart;
    let mut outcome = Outcome::empty();
    // Units that already got the flash price, per SKU.
    let mut used: Vec<(&str, u32)> = Vec::new();

    for line in &cart.lines {
        let Some(sale) = &line.flash_sale else {
            continue;
        };
        if sale.price < 0 || sale.price >= line.unit_price {
            continue;
        }
        if sale.is_active(cart.now) {
            if line.payable <= 0 || line.quantity == 0 {
                continue;
            }
            let units = match cfg.limit_per_order {
                None => line.quantity,
                Some(limit) => {
                    let slot = match used.iter().position(|(sku, _)| *sku == line.sku) {
                        Some(i) => i,
                        None => {
                            used.push((&line.sku, 0));
                            used.len() - 1
                        }
                    };
                    let units = line.quantity.min(limit - used[slot].1);
                    used[slot].1 += units;
                    if units < line.quantity && hints_wanted {
                        outcome.hints.push(limit_hint(line, limit));
                    }
                    units
                }
            };
            let saving = i128::from(line.unit_price - sale.price) * i128::from(units);
            let amount = saving.min(i128::from(line.payable)) as i64;
            if amount > 0 {
                outcome.line_discounts.push(LineDiscount {
                    line_id: line.id.clone(),
                    amount,
                    label: label.to_owned(),
                });
            }
        } else if hints_wanted
            && sale.starts_at > cart.now
            && sale.starts_at - cart.now <= UPCOMING_WINDOW
            && sale.ends_at > sale.starts_at
        {
            let minutes = (sale.starts_at - cart.now + MINUTE - 1) / MINUTE;
            outcome.hints.push(Hint {
                code: "flash-sale-upcoming".into(),
                message: format!("Flash sale at {} starts in {minutes} min", yuan(sale.price)),
                shortfall: None,
            });
        }
    }
    Ok(outcome)
}

fn limit_hint(line: &Line, limit: u32) -> Hint {
    let units = if limit == 1 { "unit" } else { "units" };
    Hint {
        code: "flash-sale-limit".into(),
        message: format!(
            "Flash sale price is limited to {limit} {units} per order; the rest are at {}",
            yuan(line.unit_price)
        ),
        shortfall: None,
    }
}

promotion_sdk::rule!(check, run);

#[cfg(test)]
mod tests {
    use super::*;
    use promotion_sdk::Guest;
    use promotion_sdk::testing::{HOUR, MINUTE, NOW, cart, flash_sale, line};

    const CFG: &str = r#"{"label": "Flash sale", "limit_per_order": 2}"#;

    fn on_sale(id: &str, unit_price: i64, qty: u32, price: i64) -> Line {
        let mut l = line(id, unit_price, qty);
        l.flash_sale = Some(flash_sale(price, NOW - HOUR, NOW + HOUR));
        l
    }

    fn invalid(config: &str) -> bool {
        matches!(check(config), Err(RuleError::InvalidConfig(_)))
    }

    #[test]
    fn active_sale_gives_the_flash_price() {
        let out = run(
            CFG,
            cart(
                BatchKind::Cart,
                vec![on_sale("a", 1000, 1, 600), line("b", 500, 1)],
            ),
        )
        .unwrap();
        assert_eq!(
            out.line_discounts,
            vec![LineDiscount {
                line_id: "a".into(),
                amount: 400,
                label: "Flash sale".into()
            }]
        );
        assert!(out.hints.is_empty() && out.order_discounts.is_empty() && out.points.is_none());
    }

    #[test]
    fn limit_caps_the_units_and_hints() {
        let out = run(CFG, cart(BatchKind::Cart, vec![on_sale("a", 1000, 5, 600)])).unwrap();
        assert_eq!(out.line_discounts[0].amount, 800);
        assert_eq!(out.hints.len(), 1);
        assert_eq!(out.hints[0].code, "flash-sale-limit");
        assert_eq!(
            out.hints[0].message,
            "Flash sale price is limited to 2 units per order; the rest are at ¥10.00"
        );
        assert_eq!(out.hints[0].shortfall, None);
    }

    #[test]
    fn limit_applies_per_sku_across_lines() {
        let a1 = on_sale("a1", 1000, 1, 600);
        let mut a2 = on_sale("a2", 1000, 3, 600);
        a2.sku = a1.sku.clone();
        let b = on_sale("b", 1000, 2, 900);
        let out = run(CFG, cart(BatchKind::Cart, vec![a1, a2, b])).unwrap();
        let amounts: Vec<_> = out
            .line_discounts
            .iter()
            .map(|d| (d.line_id.as_str(), d.amount))
            .collect();
        assert_eq!(amounts, [("a1", 400), ("a2", 400), ("b", 200)]);

        // A third line of the same SKU gets nothing once the limit is used up.
        let a1 = on_sale("a1", 1000, 2, 600);
        let mut a2 = on_sale("a2", 1000, 1, 600);
        a2.sku = a1.sku.clone();
        let out = run(CFG, cart(BatchKind::Cart, vec![a1, a2])).unwrap();
        assert_eq!(out.line_discounts.len(), 1);
        assert_eq!(out.hints.len(), 1);
    }

    #[test]
    fn no_limit_by_default() {
        let out = run(
            "{}",
            cart(BatchKind::Cart, vec![on_sale("a", 1000, 5, 600)]),
        )
        .unwrap();
        assert_eq!(out.line_discounts[0].amount, 2000);
        assert_eq!(out.line_discounts[0].label, "Flash sale");
        assert!(out.hints.is_empty());
        // A blank config is the same as {}.
        assert_eq!(
            run("", cart(BatchKind::Cart, vec![on_sale("a", 1000, 5, 600)])).unwrap(),
            out
        );
    }

    #[test]
    fn capped_at_payable() {
        let mut l = on_sale("a", 1000, 2, 100);
        l.payable = 1500; // an earlier rule already took 500 off
        let out = run("{}", cart(BatchKind::Cart, vec![l])).unwrap();
        assert_eq!(out.line_discounts[0].amount, 1500);
    }

    #[test]
    fn window_is_half_open() {
        let mut starts_now = line("starts", 1000, 1);
        starts_now.flash_sale = Some(flash_sale(600, NOW, NOW + HOUR));
        let mut ended = line("ended", 1000, 1);
        ended.flash_sale = Some(flash_sale(600, NOW - HOUR, NOW));
        let out = run("{}", cart(BatchKind::Catalog, vec![starts_now, ended])).unwrap();
        let ids: Vec<_> = out
            .line_discounts
            .iter()
            .map(|d| d.line_id.as_str())
            .collect();
        assert_eq!(ids, ["starts"]);
    }

    #[test]
    fn flash_price_not_below_unit_price_is_ignored() {
        let out = run(
            "{}",
            cart(
                BatchKind::Cart,
                vec![
                    on_sale("same", 1000, 1, 1000),
                    on_sale("higher", 1000, 1, 1200),
                ],
            ),
        )
        .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn free_flash_sale_and_zero_payable() {
        let mut paid = on_sale("paid", 1000, 1, 600);
        paid.payable = 0;
        let free = on_sale("free", 1000, 1, 0);
        let out = run("{}", cart(BatchKind::Cart, vec![paid, free])).unwrap();
        assert_eq!(out.line_discounts.len(), 1);
        assert_eq!(out.line_discounts[0].line_id, "free");
        assert_eq!(out.line_discounts[0].amount, 1000);
    }

    #[test]
    fn upcoming_sale_hint_for_carts_only() {
        let mut soon = line("soon", 1000, 1);
        soon.flash_sale = Some(flash_sale(599, NOW + 90 * MINUTE + 1, NOW + 3 * HOUR));
        let mut later = line("later", 1000, 1);
        later.flash_sale = Some(flash_sale(599, NOW + 25 * HOUR, NOW + 26 * HOUR));
        let lines = vec![soon, later];

        let out = run(CFG, cart(BatchKind::Cart, lines.clone())).unwrap();
        assert!(out.line_discounts.is_empty());
        assert_eq!(
            out.hints,
            vec![Hint {
                code: "flash-sale-upcoming".into(),
                message: "Flash sale at ¥5.99 starts in 91 min".into(),
                shortfall: None,
            }]
        );

        assert!(
            run(CFG, cart(BatchKind::Catalog, lines))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn upcoming_window_edge() {
        let mut edge = line("edge", 1000, 1);
        edge.flash_sale = Some(flash_sale(500, NOW + 24 * HOUR, NOW + 25 * HOUR));
        let out = run("{}", cart(BatchKind::Cart, vec![edge])).unwrap();
        assert_eq!(
            out.hints[0].message,
            "Flash sale at ¥5.00 starts in 1440 min"
        );
    }

    #[test]
    fn catalogue_lines_get_no_hints_even_over_the_limit() {
        let out = run(
            r#"{"limit_per_order": 1}"#,
            cart(BatchKind::Catalog, vec![on_sale("a", 1000, 3, 600)]),
        )
        .unwrap();
        assert_eq!(out.line_discounts[0].amount, 400);
        assert!(out.hints.is_empty());
    }

    #[test]
    fn singular_unit_in_limit_hint() {
        let out = run(
            r#"{"limit_per_order": 1}"#,
            cart(BatchKind::Cart, vec![on_sale("a", 1000, 2, 600)]),
        )
        .unwrap();
        assert_eq!(
            out.hints[0].message,
            "Flash sale price is limited to 1 unit per order; the rest are at ¥10.00"
        );
    }

    #[test]
    fn custom_label() {
        let out = run(
            r#"{"label": "Double 11"}"#,
            cart(BatchKind::Cart, vec![on_sale("a", 1000, 1, 600)]),
        )
        .unwrap();
        assert_eq!(out.line_discounts[0].label, "Double 11");
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let mut l = on_sale("a", 1, 1, 0);
        l.unit_price = i64::MAX;
        l.quantity = u32::MAX;
        l.payable = i64::MAX;
        let out = run("{}", cart(BatchKind::Cart, vec![l])).unwrap();
        assert_eq!(out.line_discounts[0].amount, i64::MAX);
    }

    #[test]
    fn configs() {
        check(CFG).unwrap();
        check("{}").unwrap();
        check("").unwrap();
        check(r#"{"limit_per_order": null, "label": null}"#).unwrap();
        assert!(invalid(r#"{"limit_per_order": 0}"#));
        assert!(invalid(r#"{"limit_per_order": -1}"#));
        assert!(invalid(r#"{"label": ""}"#));
        assert!(invalid(r#"{"label": 3}"#));
        assert!(invalid(r#"{"limit": 2}"#));
        assert!(invalid("[1]"));
        assert!(matches!(
            run(r#"{"limit_per_order": 0}"#, cart(BatchKind::Cart, vec![])),
            Err(RuleError::InvalidConfig(_))
        ));
    }

    #[test]
    fn guest_impl_delegates() {
        assert!(Rule::check_config(CFG.into()).is_ok());
        let out = Rule::evaluate(
            CFG.into(),
            cart(BatchKind::Cart, vec![on_sale("a", 1000, 1, 600)]),
        )
        .unwrap();
        assert_eq!(out.line_discounts.len(), 1);
    }
}
