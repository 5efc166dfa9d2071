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
}

/// The app with default settings on a free port.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The app with adjusted settings on a free port.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Settings::default()
    };
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
    }
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
