//! Hostile rule: `evaluate` writes 10,000 log entries of 1 KiB each (cycling
//! through the levels), then returns an empty outcome. The host must keep only
//! its bounded number of entries and truncate each one. `check-config`
//! accepts anything.

use promotion_sdk::{Cart, Guest, Level, Outcome, RuleError, log};

const ENTRIES: usize = 10_000;
const ENTRY_BYTES: usize = 1024;

pub struct Rule;

impl Guest for Rule {
    fn check_config(_config: String) -> Result<(), RuleError> {
        Ok(())
    }

    fn evaluate(_config: String, _input: Cart) -> Result<Outcome, RuleError> {
        // Built once: the point is the log traffic, not the guest's own work.
        let message = "x".repeat(ENTRY_BYTES);
        let levels = [Level::Debug, Level::Info, Level::Warn, Level::Error];
        for i in 0..ENTRIES {
            log(levels[i % levels.len()], &message);
        }
        Ok(Outcome::empty())
    }
}

promotion_sdk::export!(Rule);
