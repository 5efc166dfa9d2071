//! Hostile rule: `evaluate` recurses without end. The host must stop it
//! with its stack limit and name the failure `STACK_OVERFLOW`.
//! `check-config` accepts anything.

use promotion_sdk::{Cart, Guest, Outcome, RuleError};

#[inline(never)]
fn deeper(n: u64) -> u64 {
    // Never true in practice: the stack runs out long before.
    if n == u64::MAX {
        return n;
    }
    // Only scalars: the frames live on the host's stack, not on the
    // guest's stack in linear memory.
    core::hint::black_box(deeper(core::hint::black_box(n + 1))).wrapping_add(n)
}

pub struct Rule;

impl Guest for Rule {
    fn check_config(_config: String) -> Result<(), RuleError> {
        Ok(())
    }

    fn evaluate(_config: String, input: Cart) -> Result<Outcome, RuleError> {
        core::hint::black_box(deeper(input.lines.len() as u64));
        Ok(Outcome::empty())
    }
}

promotion_sdk::export!(Rule);
