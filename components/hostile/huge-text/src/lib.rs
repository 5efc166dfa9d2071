//! Hostile rule: its errors are enormous and forge log lines.
//! `check-config` refuses every config but `ok` with a 20 MB message;
//! `evaluate` fails with an 8 MB message. Both start with a newline and an ANSI escape.
//! The host must copy only a bounded, escaped prefix of either.

use promotion_sdk::{Cart, Guest, Outcome, RuleError};

fn huge(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes);
    text.push_str("bad\n\u{1b}[2J2026-01-01T00:00:00Z ERROR forged: ");
    while text.len() < bytes {
        text.push_str("\nline");
    }
    text
}

pub struct Rule;

impl Guest for Rule {
    fn check_config(config: String) -> Result<(), RuleError> {
        if config == "ok" {
            return Ok(());
        }
        Err(RuleError::InvalidConfig(huge(20_000_000)))
    }

    fn evaluate(_config: String, _input: Cart) -> Result<Outcome, RuleError> {
        Err(RuleError::Failed(huge(8_000_000)))
    }
}

promotion_sdk::export!(Rule);
