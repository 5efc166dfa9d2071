//! Hostile rule: `evaluate` allocates 1 MiB chunks and touches every page of
//! each, forever. The host's memory cap must stop it (the failed allocation
//! aborts the guest). `check-config` accepts anything.

use promotion_sdk::{Cart, Guest, Outcome, RuleError};

const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

pub struct Rule;

impl Guest for Rule {
    fn check_config(_config: String) -> Result<(), RuleError> {
        Ok(())
    }

    fn evaluate(_config: String, _input: Cart) -> Result<Outcome, RuleError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; CHUNK];
            for (i, byte) in chunk.iter_mut().step_by(PAGE).enumerate() {
                *byte = i as u8 | 1;
            }
            hoard.push(core::hint::black_box(chunk));
        }
    }
}

promotion_sdk::export!(Rule);
