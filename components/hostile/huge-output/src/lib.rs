//! Hostile rule: `evaluate` returns far more than the host's output cap
//! (256 KiB by default) while staying inside the default 4 MiB memory cap, so
//! the failure is the output size and not memory.
//!
//! Config (anything else is rejected by `check-config`):
//! * blank — 5,000 hints, each with a 100-byte message (~500 KB of text);
//! * `hints:N` — N such hints;
//! * `label:N` — one discount whose label is N bytes (a line discount of 1 on
//!   the first line, or an order discount of 1 when there are no lines);
//! * `alias:N` — N hints whose messages all point at the *same* 1 MiB of
//!   memory: small in the guest, N MiB if the host copied each one.

use promotion_sdk::{Cart, Guest, Hint, LineDiscount, OrderDiscount, Outcome, RuleError};

const DEFAULT_HINTS: usize = 5_000;
const MESSAGE_BYTES: usize = 100;

enum Mode {
    Hints(usize),
    Label(usize),
    Alias(usize),
}

fn mode(config: &str) -> Result<Mode, RuleError> {
    let config = config.trim();
    let number = |s: &str| {
        s.parse::<usize>()
            .map_err(|_| RuleError::InvalidConfig(format!("not a count: {s:?}")))
    };
    if config.is_empty() {
        Ok(Mode::Hints(DEFAULT_HINTS))
    } else if let Some(n) = config.strip_prefix("hints:") {
        number(n).map(Mode::Hints)
    } else if let Some(n) = config.strip_prefix("label:") {
        number(n).map(Mode::Label)
    } else if let Some(n) = config.strip_prefix("alias:") {
        number(n).map(Mode::Alias)
    } else {
        Err(RuleError::InvalidConfig(
            "expected blank, \"hints:N\", \"label:N\" or \"alias:N\"".into(),
        ))
    }
}

pub struct Rule;

impl Guest for Rule {
    fn check_config(config: String) -> Result<(), RuleError> {
        mode(&config).map(|_| ())
    }

    fn evaluate(config: String, input: Cart) -> Result<Outcome, RuleError> {
        let mut outcome = Outcome::empty();
        match mode(&config)? {
            Mode::Hints(n) => {
                let filler = "x".repeat(MESSAGE_BYTES);
                outcome.hints.reserve_exact(n);
                for _ in 0..n {
                    outcome.hints.push(Hint {
                        code: "huge".into(),
                        message: filler.clone(),
                        shortfall: None,
                    });
                }
            }
            Mode::Alias(n) => {
                let shared = core::mem::ManuallyDrop::new("x".repeat(1 << 20));
                outcome.hints.reserve_exact(n);
                for _ in 0..n {
                    // SAFETY (of the guest): every hint borrows the same
                    // buffer and nothing ever frees it (the SDK's allocator
                    // never frees); this is the attack, not a pattern.
                    let message = unsafe {
                        String::from_raw_parts(
                            shared.as_ptr() as *mut u8,
                            shared.len(),
                            shared.len(),
                        )
                    };
                    outcome.hints.push(Hint {
                        code: "alias".into(),
                        message,
                        shortfall: None,
                    });
                }
            }
            Mode::Label(n) => {
                let label = "x".repeat(n);
                match input.lines.first() {
                    Some(line) => outcome.line_discounts.push(LineDiscount {
                        line_id: line.id.clone(),
                        amount: 1,
                        label,
                    }),
                    None => outcome.order_discounts.push(OrderDiscount {
                        amount: 1,
                        label,
                        coupon_id: None,
                    }),
                }
            }
        }
        Ok(outcome)
    }
}

promotion_sdk::export!(Rule);
