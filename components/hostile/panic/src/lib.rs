//! Hostile rule: `evaluate` panics (a trap: rules are built with
//! `panic = "abort"`). `check-config` accepts anything.

use promotion_sdk::{Cart, Guest, Outcome, RuleError};

pub struct Rule;

impl Guest for Rule {
    fn check_config(_config: String) -> Result<(), RuleError> {
        Ok(())
    }

    fn evaluate(_config: String, input: Cart) -> Result<Outcome, RuleError> {
        panic!(
            "hostile-panic: refusing to price {} lines",
            input.lines.len()
        );
    }
}

promotion_sdk::export!(Rule);
