//! Hostile rule: `evaluate` never returns. The host must stop it with the fuel
//! budget (or the wall-clock backstop). `check-config` accepts anything.

use promotion_sdk::{Cart, Guest, Outcome, RuleError};

pub struct Rule;

impl Guest for Rule {
    fn check_config(_config: String) -> Result<(), RuleError> {
        Ok(())
    }

    fn evaluate(_config: String, input: Cart) -> Result<Outcome, RuleError> {
        let mut state = input.lines.len() as u64;
        loop {
            // black_box keeps the optimiser from proving the loop has no effect.
            state = core::hint::black_box(
                state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1),
            );
        }
    }
}

promotion_sdk::export!(Rule);
