//! Starting the real app for a test and talking to it.

use std::time::Duration;

use bff::auth::{Authenticator, Role};
use bff::config::{FaultSettings, Settings};
use bff::demo::{Service, ServiceControl};
use bff::domain::TenantId;
use bff::startup::{AppState, Application};
use serde_json::{Value, json};

/// A running app with handles on its demo upstreams.
pub struct TestApp {
    pub url: String,
    pub http: reqwest::Client,
    pub state: AppState,
    pub mall: ServiceControl,
    pub member: ServiceControl,
    pub product: ServiceControl,
    /// Base URLs of the demo upstreams this app started (mall, member,
    /// product), to point a second node at the same services.
    pub demo_urls: Option<[url::Url; 3]>,
    /// The embedded store's directory, removed when the test ends.
    pub _data: std::sync::Arc<tempfile::TempDir>,
}

/// The app with default settings on a free port.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The app with adjusted settings on a free port.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let data = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        // Tests point the app at real Redis and at their own upstreams.
        environment: Some(bff::config::Environment::Development),
        ..Settings::default()
    };
    settings.store.data_dir = data.path().to_path_buf();
    // Pre-warm calls upstreams on its own schedule; tests that count calls
    // turn it on when they want it.
    settings.cache.prewarm_interval_secs = 0;
    // Tests fire bursts of one member's requests; the admission tests set
    // the rates they check.
    settings.admission.limits.member_per_sec = 100_000.0;
    settings.admission.limits.member_burst = 100_000;
    adjust(&mut settings);
    let app = Application::build(settings).await.expect("app builds");
    let url = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    // With every base URL configured no demo runs; the controls then
    // steer nothing.
    let control = |s| app.demo_control(s).unwrap_or_default();
    let (mall, member, product) = (
        control(Service::Mall),
        control(Service::Member),
        control(Service::Product),
    );
    let demo_urls = match (
        app.demo_url(Service::Mall),
        app.demo_url(Service::Member),
        app.demo_url(Service::Product),
    ) {
        (Some(a), Some(b), Some(c)) => Some([a, b, c]),
        _ => None,
    };
    tokio::spawn(app.run_until_stopped());
    TestApp {
        url,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        state,
        mall,
        member,
        product,
        demo_urls,
        _data: std::sync::Arc::new(data),
    }
}

/// A second node beside `first`: the same upstream services (the first
/// node's demo services, so their request counters see both nodes) and
/// the same Redis namespace.
pub async fn spawn_second_node(first: &TestApp, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let urls = first
        .demo_urls
        .clone()
        .expect("the first node runs the demo upstreams");
    let redis = first.state.settings().redis_url.clone();
    let namespace = first.state.settings().store.namespace.clone();
    spawn_app_with(move |s| {
        let [mall, member, product] = urls;
        s.upstreams.mall.base_url = Some(mall);
        s.upstreams.member.base_url = Some(member);
        s.upstreams.product.base_url = Some(product);
        s.redis_url = redis;
        s.store.namespace = namespace;
        adjust(s);
    })
    .await
}

/// Settings that cache no reference or catalogue data.
pub fn cache_off(s: &mut Settings) {
    s.cache.mall_ttl_secs = 0;
    s.cache.store_ttl_secs = 0;
    s.cache.product_ttl_secs = 0;
    s.cache.listing_ttl_secs = 0;
    s.cache.flash_sale_ttl_secs = 0;
}

/// A fault injection that takes a service down.
pub fn down() -> FaultSettings {
    FaultSettings {
        down: true,
        ..FaultSettings::default()
    }
}

impl TestApp {
    /// A member token of the demo tenant.
    pub fn token(&self, member: &str) -> String {
        self.token_for("demo", member, Role::Member)
    }

    /// A token of any tenant and role, signed with the app's key.
    pub fn token_for(&self, tenant: &str, subject: &str, role: Role) -> String {
        Authenticator::new(&self.state.settings().auth)
            .issue(&TenantId::parse(tenant).unwrap(), subject, role, None)
            .unwrap()
    }

    /// POSTs a query, with a bearer token if given; returns status and body.
    pub async fn query(&self, query: &str, token: Option<&str>) -> (u16, Value) {
        self.query_vars(query, json!({}), token).await
    }

    /// POSTs a query with variables.
    pub async fn query_vars(&self, query: &str, vars: Value, token: Option<&str>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/graphql", self.url))
            .json(&json!({ "query": query, "variables": vars }));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("BFF answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON body"))
    }

    /// Upstream calls the BFF made to one endpoint so far.
    pub fn calls(&self, upstream: &str, endpoint: &str) -> u64 {
        self.state.metrics().upstream_calls(upstream, endpoint)
    }
}

/// The codes of a response's errors.
pub fn codes(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    e["extensions"]["code"]
                        .as_str()
                        .unwrap_or("<none>")
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The web pages and their browser tests.
fn web_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web")
}

/// Runs one of `web/tests/` with node against a running app: playwright-core
/// drives Debian's Chromium (or `CHROMIUM_PATH`). `env` passes the app's URL
/// and anything else the script needs. Fails with the script's output.
pub async fn run_browser_test(script: &str, env: &[(&str, &str)]) {
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "the browser test needs Chromium at {chromium} (apt-get install chromium, or set CHROMIUM_PATH)"
    );
    ensure_node_modules();
    let output = tokio::process::Command::new("node")
        .args(["--test", script])
        .current_dir(web_dir())
        .env("CHROMIUM_PATH", &chromium)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("node runs");
    assert!(
        output.status.success(),
        "browser test {script} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs one of `web/tests/` with node (no browser): a real GraphQL client
/// against a running app. Fails with the script's output.
pub async fn run_node_test(script: &str, env: &[(&str, &str)]) {
    ensure_node_modules();
    let output = tokio::process::Command::new("node")
        .args(["--test", script])
        .current_dir(web_dir())
        .envs(env.iter().copied())
        .output()
        .await
        .expect("node runs");
    assert!(
        output.status.success(),
        "node test {script} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Installs the web test dependencies from the lock file if missing, once
/// per test run (`npm ci` empties `node_modules` first, so two at once would
/// break each other).
fn ensure_node_modules() {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let web = web_dir();
    if web.join("node_modules/playwright-core").exists()
        && web.join("node_modules/@apollo/client").exists()
    {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&web)
        .status()
        .expect("npm is needed for the browser tests (install Node.js)");
    assert!(status.success(), "npm ci failed in web/");
}
