//! Hostile rule: its exports are fine, but the module's initialiser
//! (`_initialize`, run when the component is instantiated, before any
//! export is called) traps. The BFF must refuse it at upload as
//! `RULE_START_TRAPPED`, not as a rule of the wrong world.

use promotion_sdk::{Cart, Guest, Outcome, RuleError};

pub struct Rule;

impl Guest for Rule {
    fn check_config(_config: String) -> Result<(), RuleError> {
        Ok(())
    }

    fn evaluate(_config: String, _input: Cart) -> Result<Outcome, RuleError> {
        Ok(Outcome::empty())
    }
}

promotion_sdk::export!(Rule);

/// Run once at instantiation; traps at once.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    core::arch::wasm32::unreachable()
}
