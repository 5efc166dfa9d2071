//! A rule that is not hostile but large: a 5 MiB static table puts its
//! memory above the 4 MiB default at instantiation. Deployments may allow
//! up to 64 MiB, so the upload must be accepted (it is test-instantiated
//! with the largest limits). It proposes nothing.

use promotion_sdk::{Cart, Guest, Outcome, RuleError};

static mut TABLE: [u8; 5 << 20] = [0; 5 << 20];

pub struct Rule;

impl Guest for Rule {
    fn check_config(_config: String) -> Result<(), RuleError> {
        Ok(())
    }

    fn evaluate(_config: String, input: Cart) -> Result<Outcome, RuleError> {
        let at = (input.lines.len() * 4099) % (5 << 20);
        // SAFETY: a guest is single-threaded; nothing else touches the table.
        unsafe {
            let table = &raw mut TABLE;
            (*table)[at] = core::hint::black_box(1);
        }
        Ok(Outcome::empty())
    }
}

promotion_sdk::export!(Rule);
