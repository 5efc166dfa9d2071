//! The `bff` command: serve, run demo upstreams, print the schema, mint
//! demo tokens, show the outbox's order events.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use bff::auth::{Authenticator, Role};
use bff::config::{FaultSettings, Settings};
use bff::domain::{MemberId, TenantId};
use bff::startup::Application;

// A general-purpose allocator tuned for many small, short-lived
// allocations: a GraphQL response is built from thousands of them, and
// the system allocator showed up as a fifth of the server's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// GraphQL backend-for-frontend for shopping-mall marketing apps.
#[derive(Parser)]
#[command(name = "bff", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the BFF. With no settings: embedded demo upstreams, playground
    /// at http://127.0.0.1:8080/playground/.
    Serve {
        /// Address to listen on (also `BFF_LISTEN`).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// TOML config file (layered over defaults, under `BFF_*` env).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the demo upstream services standalone on one port, under
    /// `/mall`, `/member` and `/product`.
    Upstreams {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// Fixed latency added to every response, in milliseconds
        /// (default: `demo.faults.latency_ms`).
        #[arg(long)]
        latency_ms: Option<u64>,
        /// Extra random latency, 0..=N milliseconds (default:
        /// `demo.faults.jitter_ms`).
        #[arg(long)]
        jitter_ms: Option<u64>,
        /// Share of requests answered with 503, 0.0..=1.0 (default:
        /// `demo.faults.error_rate`).
        #[arg(long)]
        error_rate: Option<f64>,
        /// Answer every request with 503.
        #[arg(long)]
        down: bool,
        /// TOML config file (`demo.seed`, `demo.size`, `demo.faults`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Order events in the checkout's outbox.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Print a member token signed with the configured key (development
    /// only).
    Token {
        /// The member id, e.g. `member-1`.
        #[arg(long)]
        member: String,
        /// The tenant (default: the configured default tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// The role the token grants.
        #[arg(long, value_enum, default_value = "member")]
        role: Role,
        /// Lifetime in seconds (default: `auth.token_ttl_secs`).
        #[arg(long)]
        ttl_secs: Option<u64>,
        /// TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print the outbox's order events, one JSON line each, from the
    /// store the configuration names (Redis, or the embedded file when no
    /// server holds it open). Reads only: deliveries are not affected.
    Tail {
        /// Keep printing new events as they are written (Ctrl-C stops).
        #[arg(long)]
        follow: bool,
        /// TOML config file (`store.*`, `redis_url`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bff: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { listen, config } => {
            let mut settings = Settings::load(config.as_deref())?;
            if let Some(listen) = listen {
                settings.listen = listen;
            }
            bff::telemetry::init(&settings.log);
            runtime()?.block_on(async {
                let app = Application::build(settings).await?;
                app.run_until_stopped().await?;
                Ok(())
            })
        }
        Command::Upstreams {
            listen,
            latency_ms,
            jitter_ms,
            error_rate,
            down,
            config,
        } => {
            let settings = Settings::load(config.as_deref())?;
            let configured = settings.demo.faults;
            let faults = FaultSettings {
                latency_ms: latency_ms.unwrap_or(configured.latency_ms),
                jitter_ms: jitter_ms.unwrap_or(configured.jitter_ms),
                error_rate: error_rate.unwrap_or(configured.error_rate),
                down: down || configured.down,
            };
            if !(0.0..=1.0).contains(&faults.error_rate) {
                anyhow::bail!("--error-rate must be between 0.0 and 1.0");
            }
            bff::telemetry::init(&settings.log);
            runtime()?.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                tracing::info!(%listen, "demo upstreams at /mall, /member, /product");
                bff::demo::serve_standalone(listener, &settings.demo, faults).await?;
                Ok(())
            })
        }
        Command::Events {
            command: EventsCommand::Tail { follow, config },
        } => {
            let settings = Settings::load(config.as_deref())?;
            runtime()?.block_on(async {
                let (_, store) = bff::store::open_with_checkout(
                    settings.redis_url.as_deref(),
                    &settings.store.namespace,
                    &settings.store.data_dir,
                    false,
                    Duration::from_secs(settings.checkout.order_retention_secs),
                )
                .await?;
                let mut seen = std::collections::HashMap::new();
                loop {
                    bff::outbox::print_new_events(&store, &mut seen, |line| println!("{line}"))
                        .await?;
                    if !follow {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        }
        Command::Schema => {
            print!("{}", bff::graphql::sdl());
            Ok(())
        }
        Command::Token {
            member,
            tenant,
            role,
            ttl_secs,
            config,
        } => {
            let settings = Settings::load(config.as_deref())?;
            if settings.is_production() {
                anyhow::bail!(
                    "refusing to mint tokens: the configuration says production \
                     (tokens come from the identity service there)"
                );
            }
            let tenant = match tenant {
                Some(t) => TenantId::parse(t)?,
                None => settings.default_tenant.clone(),
            };
            let subject = if role == Role::Member {
                MemberId::parse(member)?.to_string()
            } else {
                member
            };
            let token = Authenticator::new(&settings.auth).issue(
                &tenant,
                &subject,
                role,
                ttl_secs.map(Duration::from_secs),
            )?;
            println!("{token}");
            Ok(())
        }
    }
}
