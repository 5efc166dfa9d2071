//! Hostile rule: floods its outcome. The config picks the attack:
//! `hints` (60,000 hints), `entries` (14,000 one-fen discounts on the
//! first line) or `shortfall` (one hint whose shortfall is `i64::MAX`).
//! The host must refuse each as invalid output before it inflates a quote.
//! `check-config` accepts anything.

use promotion_sdk::{Cart, Guest, Hint, LineDiscount, Outcome, RuleError};

pub struct Rule;

impl Guest for Rule {
    fn check_config(_config: String) -> Result<(), RuleError> {
        Ok(())
    }

    fn evaluate(config: String, input: Cart) -> Result<Outcome, RuleError> {
        let mut outcome = Outcome::empty();
        match config.trim() {
            "entries" => {
                let Some(line) = input.lines.first() else {
                    return Ok(outcome);
                };
                outcome.line_discounts = (0..14_000)
                    .map(|_| LineDiscount {
                        line_id: line.id.clone(),
                        amount: 1,
                        label: "1".into(),
                    })
                    .collect();
            }
            "shortfall" => outcome.hints.push(Hint {
                code: "spend-more".into(),
                message: "spend more".into(),
                shortfall: Some(i64::MAX),
            }),
            _ => {
                outcome.hints = (0..60_000)
                    .map(|_| Hint {
                        code: "h".into(),
                        message: "m".into(),
                        shortfall: None,
                    })
                    .collect();
            }
        }
        Ok(outcome)
    }
}

promotion_sdk::export!(Rule);
