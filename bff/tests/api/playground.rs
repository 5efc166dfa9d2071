//! The playground in real headless Chromium (playwright-core driving
//! Debian's chromium), against the real app.

use crate::helpers::{run_browser_test, spawn_app};

#[tokio::test(flavor = "multi_thread")]
async fn the_playground_runs_the_example_home_card_query_in_a_real_browser() {
    let app = spawn_app().await;
    run_browser_test("tests/playground.test.mjs", &[("PLAYGROUND_URL", &app.url)]).await;
}
