//! Hostile rule: `evaluate` spins until its time limit stops it, every
//! time (give it ample fuel and the longest timeout). One tenant running it
//! under load must not slow another tenant's prices or the node's other
//! queries. `check-config` accepts anything.

use promotion_sdk::{Cart, Guest, Outcome, RuleError};

pub struct Rule;

impl Guest for Rule {
    fn check_config(_config: String) -> Result<(), RuleError> {
        Ok(())
    }

    fn evaluate(_config: String, input: Cart) -> Result<Outcome, RuleError> {
        let mut state = core::hint::black_box(input.payable as u64);
        loop {
            state = core::hint::black_box(state.rotate_left(7) ^ 0x9e37_79b9_7f4a_7c15);
        }
    }
}

promotion_sdk::export!(Rule);
