//! SDK for writing promotion rules for the mall BFF.
//!
//! A rule is a WebAssembly component targeting the `rule` world of
//! `mall:promotion@1.0.0` (see `components/wit/promotion.wit`). This crate
//! generates the guest bindings for that world once and adds a few helpers, so
//! a rule crate only needs:
//!
//! ```ignore
//! use promotion_sdk::{Cart, Guest, Outcome, RuleError};
//!
//! struct MyRule;
//!
//! impl Guest for MyRule {
//!     fn check_config(config: String) -> Result<(), RuleError> { /* ... */ Ok(()) }
//!     fn evaluate(config: String, input: Cart) -> Result<Outcome, RuleError> {
//!         Ok(Outcome::empty())
//!     }
//! }
//!
//! promotion_sdk::export!(MyRule);
//! ```
//!
//! Money is always an integer number of minor units (fen for CNY).

use core::fmt::Write as _;

use serde::de::DeserializeOwned;

/// The bindings generated from `components/wit/promotion.wit`. Everything a
/// rule needs is re-exported at the crate root.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "rule",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "promotion_sdk::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::Guest;
/// Exports a type implementing [`Guest`] as the rule:
/// `promotion_sdk::export!(MyRule);`
#[doc(inline)]
pub use bindings::export;
pub use bindings::mall::promotion::log::Level;
pub use bindings::mall::promotion::types::*;

#[cfg(feature = "testing")]
pub mod testing;

/// Exports a rule written as two plain functions,
/// `check(config: &str) -> Result<(), RuleError>` and
/// `run(config: &str, cart: Cart) -> Result<Outcome, RuleError>`:
///
/// ```ignore
/// promotion_sdk::rule!(check, run);
/// ```
///
/// It defines `pub struct Rule` implementing [`Guest`] with them, and exports
/// it when built for `wasm32`. The functions stay callable natively, for unit
/// tests and benchmarks.
#[macro_export]
macro_rules! rule {
    ($check:path, $run:path) => {
        /// The rule as exported to the host.
        pub struct Rule;

        impl $crate::Guest for Rule {
            fn check_config(config: String) -> Result<(), $crate::RuleError> {
                $check(&config)
            }

            fn evaluate(
                config: String,
                input: $crate::Cart,
            ) -> Result<$crate::Outcome, $crate::RuleError> {
                $run(&config, input)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::export!(Rule);
    };
}

#[cfg(target_arch = "wasm32")]
pub mod alloc;

#[cfg(all(target_arch = "wasm32", feature = "bump-alloc"))]
#[global_allocator]
static ALLOCATOR: alloc::Bump = alloc::Bump::new();

impl Outcome {
    /// An outcome that proposes nothing.
    pub fn empty() -> Self {
        Outcome {
            line_discounts: Vec::new(),
            order_discounts: Vec::new(),
            points: None,
            hints: Vec::new(),
        }
    }

    /// Whether the outcome proposes nothing at all (no discounts, points or hints).
    pub fn is_empty(&self) -> bool {
        self.line_discounts.is_empty()
            && self.order_discounts.is_empty()
            && self.points.is_none()
            && self.hints.is_empty()
    }
}

impl FlashSale {
    /// Whether the sale window contains `now` (`starts_at <= now < ends_at`).
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.starts_at <= now && now < self.ends_at
    }
}

/// Formats an amount in minor units as yuan: `2000` → `"¥20.00"`,
/// `-150` → `"-¥1.50"`.
pub fn yuan(amount: Money) -> String {
    let abs = amount.unsigned_abs();
    let mut s = String::with_capacity(16);
    if amount < 0 {
        s.push('-');
    }
    let _ = write!(s, "¥{}.{:02}", abs / 100, abs % 100);
    s
}

/// Formats basis points as a percentage with at most two decimals and no
/// trailing zeros: `500` → `"5%"`, `750` → `"7.5%"`, `1234` → `"12.34%"`.
pub fn percent(bp: u32) -> String {
    let mut s = String::with_capacity(12);
    let _ = write!(s, "{}", bp / 100);
    let frac = bp % 100;
    if frac != 0 {
        if frac.is_multiple_of(10) {
            let _ = write!(s, ".{}", frac / 10);
        } else {
            let _ = write!(s, ".{frac:02}");
        }
    }
    s.push('%');
    s
}

/// Writes an entry to the rule's bounded log (shown to the rule author in dry
/// runs). The host keeps a limited number of entries per evaluation and
/// truncates long messages.
///
/// Only calls the host on `wasm32`; natively (unit tests, benches) it does
/// nothing.
#[inline]
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::mall::promotion::log::write(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, message);
}

/// Parses a deployment's JSON settings into `T`.
///
/// A blank config is read as `{}` so that rules whose fields all have
/// defaults accept an empty settings string. Errors become
/// [`RuleError::InvalidConfig`] with serde's message.
pub fn parse_config<T: DeserializeOwned>(config: &str) -> Result<T, RuleError> {
    let text = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    serde_json::from_str(text).map_err(|e| RuleError::InvalidConfig(e.to_string()))
}

/// Shorthand for `Err(RuleError::InvalidConfig(message))`.
pub fn invalid_config<T>(message: impl Into<String>) -> Result<T, RuleError> {
    Err(RuleError::InvalidConfig(message.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_formats_minor_units() {
        assert_eq!(yuan(0), "¥0.00");
        assert_eq!(yuan(5), "¥0.05");
        assert_eq!(yuan(99), "¥0.99");
        assert_eq!(yuan(2000), "¥20.00");
        assert_eq!(yuan(123_456), "¥1234.56");
        assert_eq!(yuan(-150), "-¥1.50");
        assert_eq!(yuan(i64::MIN), "-¥92233720368547758.08");
        assert_eq!(yuan(i64::MAX), "¥92233720368547758.07");
    }

    #[test]
    fn percent_trims_trailing_zeros() {
        assert_eq!(percent(500), "5%");
        assert_eq!(percent(750), "7.5%");
        assert_eq!(percent(1234), "12.34%");
        assert_eq!(percent(1205), "12.05%");
        assert_eq!(percent(1), "0.01%");
        assert_eq!(percent(10_000), "100%");
        assert_eq!(percent(0), "0%");
    }

    #[test]
    fn flash_sale_window_is_half_open() {
        let sale = FlashSale {
            price: 100,
            starts_at: 10,
            ends_at: 20,
        };
        assert!(!sale.is_active(9));
        assert!(sale.is_active(10));
        assert!(sale.is_active(19));
        assert!(!sale.is_active(20));
    }

    #[test]
    fn empty_outcome() {
        let mut o = Outcome::empty();
        assert!(o.is_empty());
        o.hints.push(Hint {
            code: "x".into(),
            message: "y".into(),
            shortfall: None,
        });
        assert!(!o.is_empty());
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[serde(default)]
        n: u32,
    }

    #[test]
    fn parse_config_ok_blank_and_errors() {
        assert_eq!(parse_config::<Cfg>(r#"{"n": 3}"#).unwrap(), Cfg { n: 3 });
        assert_eq!(parse_config::<Cfg>("").unwrap(), Cfg { n: 0 });
        assert_eq!(parse_config::<Cfg>("  \n").unwrap(), Cfg { n: 0 });
        for bad in [
            r#"{"m": 1}"#,
            "{",
            r#""text""#,
            r#"{"n": -1}"#,
            "null",
            "{} x",
        ] {
            match parse_config::<Cfg>(bad) {
                Err(RuleError::InvalidConfig(msg)) => assert!(!msg.is_empty(), "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_config_shorthand() {
        assert_eq!(
            invalid_config::<()>("nope"),
            Err(RuleError::InvalidConfig("nope".into()))
        );
    }

    #[test]
    fn log_is_a_no_op_natively() {
        log(Level::Info, "hello");
        log(Level::Error, "");
    }
}
