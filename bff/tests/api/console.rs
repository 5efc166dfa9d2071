//! The rule console in real headless Chromium (playwright-core driving
//! Debian's chromium), against the real app with the demo deployments:
//! list, deactivate / activate, dry run, upload (a bad and a good module),
//! publish, roll back, and a panicking rule that quotes quarantine and the
//! page re-activates, all through the page (the quotes come from the test).

use std::path::Path;

use crate::helpers::{ensure_node_modules, spawn_app, web_dir};

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
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "the browser test needs Chromium at {chromium} (apt-get install chromium, or set CHROMIUM_PATH)"
    );
    for wasm in [RULE_WASM, WRONG_WORLD_WASM, PANIC_WASM] {
        assert!(
            Path::new(wasm).exists(),
            "{wasm} is missing (the bff build script builds it)"
        );
    }
    ensure_node_modules();
    let app = spawn_app().await;

    let output = tokio::process::Command::new("node")
        .args(["--test", "tests/console.test.mjs"])
        .current_dir(web_dir())
        .env("CONSOLE_URL", &app.url)
        .env("CHROMIUM_PATH", &chromium)
        .env("RULE_WASM", RULE_WASM)
        .env("WRONG_WORLD_WASM", WRONG_WORLD_WASM)
        .env("PANIC_WASM", PANIC_WASM)
        .output()
        .await
        .expect("node runs");

    assert!(
        output.status.success(),
        "browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
