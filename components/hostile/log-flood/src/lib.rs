//! Hostile rule: `evaluate` builds one 3 MiB message (with newlines and an
//! ANSI escape that would forge a log line) and hands it to the host's
//! `log` many times (the config names how many; 1,000 by default), then
//! proposes nothing. The host must read only the first bytes of each
//! message and charge each call to the rule's fuel. `check-config` accepts
//! anything.

use promotion_sdk::{Cart, Guest, Level, Outcome, RuleError, log};

const MESSAGE_BYTES: usize = 3 << 20;

pub struct Rule;

impl Guest for Rule {
    fn check_config(_config: String) -> Result<(), RuleError> {
        Ok(())
    }

    fn evaluate(config: String, _input: Cart) -> Result<Outcome, RuleError> {
        let calls: usize = config.trim().parse().unwrap_or(1_000);
        let mut message = String::with_capacity(MESSAGE_BYTES);
        message.push_str("flood\n\u{1b}[31mERROR forged log line\n");
        while message.len() < MESSAGE_BYTES {
            message.push('x');
        }
        for _ in 0..calls {
            log(Level::Info, &message);
        }
        Ok(Outcome::empty())
    }
}

promotion_sdk::export!(Rule);
