//! The rule console in real headless Chromium (playwright-core driving
//! Debian's chromium), against the real app with the demo deployments:
//! list, deactivate / activate, dry run, upload (a bad and a good module),
//! publish, roll back, and a panicking rule that quotes quarantine and the
//! page re-activates, all through the page (the quotes come from the test).

use std::path::Path;

use crate::helpers::{run_browser_test, spawn_app};

/// A valid rule (core module carrying its component type).
const RULE_WASM: &str = concat!(
    env!("PROMOTION_RULES_WASM_DIR"),
    "/rule_member_discount.wasm"
);
/// A module that targets another world: refused with `WRONG_WORLD`.
const WRONG_WORLD_WASM: &str = concat!(
    env!("PROMOTION_RULES_WASM_DIR"),
    "/hostile_wrong_world.wasm"
);
/// A rule whose `evaluate` panics: every evaluation is a `TRAP`.
const PANIC_WASM: &str = concat!(env!("PROMOTION_RULES_WASM_DIR"), "/hostile_panic.wasm");

#[tokio::test(flavor = "multi_thread")]
async fn the_rule_console_manages_dry_runs_and_publishes_rules_in_a_real_browser() {
    for wasm in [RULE_WASM, WRONG_WORLD_WASM, PANIC_WASM] {
        assert!(
            Path::new(wasm).exists(),
            "{wasm} is missing (the bff build script builds it)"
        );
    }
    let app = spawn_app().await;
    run_browser_test(
        "tests/console.test.mjs",
        &[
            ("CONSOLE_URL", &app.url),
            ("RULE_WASM", RULE_WASM),
            ("WRONG_WORLD_WASM", WRONG_WORLD_WASM),
            ("PANIC_WASM", PANIC_WASM),
        ],
    )
    .await;
}
