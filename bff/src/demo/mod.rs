//! The demo upstream services (mall, member, product) and their data set.
//!
//! In the embedded default the BFF starts them inside its own process, each
//! on its own loopback port, and talks to them over real HTTP exactly as it
//! talks to real services. `bff upstreams` runs them standalone on one port
//! under `/mall`, `/member` and `/product`.

pub mod data;
pub mod ledger;
pub mod orders;
pub mod rules;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use url::Url;

pub use data::DemoData;
pub use server::{Service, ServiceControl};

use crate::config::{DemoSettings, FaultSettings};

/// One running demo service.
#[derive(Debug)]
pub struct RunningService {
    /// Which service.
    pub service: Service,
    /// Base URL the BFF's client uses.
    pub base_url: Url,
    /// Fault injection and request count.
    pub control: ServiceControl,
    task: JoinHandle<()>,
}

/// The three demo services, running on loopback ports. Dropping this stops
/// them.
#[derive(Debug)]
pub struct DemoUpstreams {
    services: Vec<RunningService>,
}

impl DemoUpstreams {
    /// Generates the data set and starts the three services on ephemeral
    /// loopback ports.
    pub async fn start(settings: &DemoSettings) -> std::io::Result<Self> {
        let data = Arc::new(settings.data());
        let mut services = Vec::new();
        for service in Service::ALL {
            let control = ServiceControl::new(settings.faults);
            let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            let addr = listener.local_addr()?;
            let counter = control.clone();
            let listener = listener.tap_io(move |_| counter.accepted());
            let app = server::router(service, data.clone(), control.clone());
            let task = tokio::spawn(async move {
                if let Err(err) = axum::serve(listener, app).await {
                    tracing::error!(error = %err, "demo upstream stopped");
                }
            });
            let base_url = Url::parse(&format!("http://{addr}/"))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            tracing::info!(service = service.name(), %base_url, "demo upstream listening");
            services.push(RunningService {
                service,
                base_url,
                control,
                task,
            });
        }
        Ok(Self { services })
    }

    /// The running service.
    pub fn service(&self, service: Service) -> &RunningService {
        // `start` always creates all three, in `Service::ALL` order.
        &self.services[Service::ALL
            .iter()
            .position(|s| *s == service)
            .unwrap_or_default()]
    }
}

impl Drop for DemoUpstreams {
    fn drop(&mut self) {
        for s in &self.services {
            s.task.abort();
        }
    }
}

impl DemoSettings {
    /// The data set these settings describe.
    fn data(&self) -> DemoData {
        self.extra_tenants
            .iter()
            .fold(DemoData::generate(self.seed, self.size), |data, tenant| {
                data.also_as(tenant.as_str())
            })
    }
}

/// Serves the three demo services on one listener, under `/mall`,
/// `/member` and `/product`, until the process is stopped.
pub async fn serve_standalone(
    listener: TcpListener,
    settings: &DemoSettings,
    faults: FaultSettings,
) -> std::io::Result<()> {
    let data = Arc::new(settings.data());
    let mut app = axum::Router::new();
    for service in Service::ALL {
        let control = ServiceControl::new(faults);
        app = app.nest(
            &format!("/{}", service.name()),
            server::router(service, data.clone(), control),
        );
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::startup::shutdown_signal())
        .await
}
