//! Hostile rule: `check-config` grows its memory to the number of MiB its
//! config names (touching every page), then spins until the host stops it.
//! Published by many authors at once, it tests that config checks run on
//! the bounded pool with a small share per tenant, cost bounded memory, and
//! never crowd out another tenant's prices. `evaluate` proposes nothing.

use promotion_sdk::{Cart, Guest, Outcome, RuleError};

const PAGE: usize = 4096;

pub struct Rule;

impl Guest for Rule {
    fn check_config(config: String) -> Result<(), RuleError> {
        let mib: usize = config.trim().parse().unwrap_or(64);
        let mut hoard = vec![0u8; mib << 20];
        for (i, byte) in hoard.iter_mut().step_by(PAGE).enumerate() {
            *byte = i as u8 | 1;
        }
        let mut state = core::hint::black_box(hoard.len() as u64);
        loop {
            state = core::hint::black_box(
                state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1),
            );
        }
    }

    fn evaluate(_config: String, _input: Cart) -> Result<Outcome, RuleError> {
        Ok(Outcome::empty())
    }
}

promotion_sdk::export!(Rule);
