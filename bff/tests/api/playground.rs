//! The playground in real headless Chromium (playwright-core driving
//! Debian's chromium), against the real app.

use std::path::Path;

use crate::helpers::{ensure_node_modules, spawn_app, web_dir};

#[tokio::test(flavor = "multi_thread")]
async fn the_playground_runs_the_example_home_card_query_in_a_real_browser() {
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "the browser test needs Chromium at {chromium} (apt-get install chromium, or set CHROMIUM_PATH)"
    );
    ensure_node_modules();
    let app = spawn_app().await;

    let output = tokio::process::Command::new("node")
        .args(["--test", "tests/playground.test.mjs"])
        .current_dir(web_dir())
        .env("PLAYGROUND_URL", &app.url)
        .env("CHROMIUM_PATH", &chromium)
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
