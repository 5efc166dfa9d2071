//! The rule registry: components stored by sha256, deployments with their
//! version history, the active set per tenant, failure counting and
//! automatic quarantine. Every change is written to the store with
//! compare-and-set and announced to every node, which swaps in a new active
//! set; requests already running keep the set they started with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::broadcast::error::RecvError;

use super::engine::{ActiveRule, Observer};
use super::host::{CompileError, CompiledRule, Evaluation, RuleHost};
use super::model::{
    Deployment, DeploymentStatus, FailurePolicy, FailureReason, Limits, Scope, Stage, Version,
};
use super::pool::{PoolError, RulePool, Work};
use crate::metrics::Metrics;
use crate::store::{Event, SharedStore, StoreError};

const COMPONENTS: &str = "rule-components";
const OWNERS: &str = "rule-component-owners";
const DEPLOYMENTS: &str = "rule-deployments";
const TOPIC: &str = "rules";
/// Most deployments one tenant may have.
pub const MAX_DEPLOYMENTS_PER_TENANT: usize = 500;
/// Most components one tenant may upload.
pub const MAX_COMPONENTS_PER_TENANT: usize = 200;
/// Most versions kept per deployment.
pub const MAX_VERSIONS: usize = 100;
/// Largest settings string.
pub const MAX_CONFIG_BYTES: usize = 16 * 1024;

/// A registry operation that was refused. Each has a stable code.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The binary was refused.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// No such deployment, version or component (for this tenant).
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The rule refused its settings.
    #[error("the rule refused its config: {0}")]
    InvalidConfig(String),
    /// The rule failed while checking its settings.
    #[error("the rule failed while checking its config ({0})")]
    CheckFailed(&'static str),
    /// Someone else changed the deployment at the same time.
    #[error("the deployment changed concurrently; retry")]
    Conflict,
    /// The rule engine had no room for the work; retry shortly.
    #[error("the rule engine is busy; retry shortly")]
    Busy,
    /// Too many uploads from this author or tenant; retry later.
    #[error("too many uploads; retry in a minute")]
    RateLimited,
    /// The store failed (unreachable, timed out): retry shortly.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something on this node failed (an unreadable record, the rule
    /// engine); logged where it happened.
    #[error("{0}")]
    Internal(String),
}

impl RegistryError {
    /// Stable code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            RegistryError::Compile(e) => e.code(),
            RegistryError::NotFound(_) => crate::error::code::NOT_FOUND,
            RegistryError::Invalid(_) => crate::error::code::BAD_USER_INPUT,
            RegistryError::InvalidConfig(_) | RegistryError::CheckFailed(_) => {
                crate::error::code::INVALID_RULE_CONFIG
            }
            RegistryError::Conflict => crate::error::code::CONFLICT,
            RegistryError::Busy => crate::error::code::ENGINE_BUSY,
            RegistryError::RateLimited => crate::error::code::RATE_LIMITED,
            RegistryError::Store(_) => crate::error::code::STORE_UNAVAILABLE,
            RegistryError::Internal(_) => crate::error::code::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What is published: a new version of a deployment.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Deployment name.
    pub name: String,
    /// sha256 of an uploaded component.
    pub component: String,
    /// Settings string.
    pub config: String,
    /// Scope.
    pub scope: Scope,
    /// Stage.
    pub stage: Stage,
    /// Priority within the stage.
    pub priority: i32,
    /// Stacking group.
    pub stacking_group: Option<String>,
    /// Limits (defaults when absent).
    pub limits: Limits,
    /// Failure policy.
    pub failure_policy: FailurePolicy,
}

/// Evaluation counts of one deployment version on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Evaluations.
    pub evaluations: u64,
    /// Failed evaluations.
    pub failures: u64,
    /// Failures in a row, up to now.
    pub consecutive_failures: u32,
    /// Code of the last failure.
    pub last_failure: Option<&'static str>,
    /// Detail of the last failure.
    pub last_failure_detail: Option<String>,
    /// Fuel used by the last evaluation.
    pub last_fuel: u64,
    /// Outcomes of the last 32 evaluations, newest in bit 0 (1: failed).
    pub recent: u32,
    /// The deployment revision these counts follow (a change starts a new
    /// streak).
    pub revision: u64,
}

/// Failures among the last 32 evaluations that quarantine a rule even when
/// it sometimes succeeds.
const RECENT_FAILURES: u32 = 16;

#[derive(Default)]
struct Tracker {
    stats: HashMap<String, RuleStats>,
    quarantining: std::collections::HashSet<String>,
}

/// Uploads allowed per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadRates {
    /// Per author (token subject) of a tenant.
    pub per_author: u32,
    /// Per tenant, all its authors together.
    pub per_tenant: u32,
}

impl Default for UploadRates {
    fn default() -> Self {
        UploadRates {
            per_author: 30,
            per_tenant: 60,
        }
    }
}

type KeyedLimiter = governor::DefaultKeyedRateLimiter<String>;

fn per_minute(n: u32) -> KeyedLimiter {
    let n = std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    governor::RateLimiter::keyed(governor::Quota::per_minute(n))
}

/// The registry of one BFF node.
pub struct Registry {
    store: SharedStore,
    host: Arc<RuleHost>,
    pool: RulePool,
    runtime: Option<tokio::runtime::Handle>,
    author_uploads: KeyedLimiter,
    tenant_uploads: KeyedLimiter,
    compiled: moka::sync::Cache<String, Arc<CompiledRule>>,
    active: RwLock<HashMap<String, Arc<Vec<ActiveRule>>>>,
    tracker: Mutex<Tracker>,
    quarantine_after: u32,
    generation: AtomicU64,
    metrics: Metrics,
    /// Tenants whose deployment records vanished from the store while this
    /// node was running their rules (see [`Registry::lost_tenants`]).
    lost: Mutex<std::collections::BTreeSet<String>>,
    lost_gauge: prometheus_client::metrics::gauge::Gauge,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

fn deployment_key(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

fn tracker_key(tenant: &str, name: &str, version: u32) -> String {
    format!("{tenant}/{name}@{version}")
}

impl Registry {
    /// A registry over `store` whose rule work runs on `pool`; call
    /// [`Registry::start`] to load and follow changes. Call it inside the
    /// async runtime (quarantines are written from it).
    pub fn new(
        store: SharedStore,
        host: Arc<RuleHost>,
        pool: RulePool,
        quarantine_after: u32,
        uploads: UploadRates,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            host,
            pool,
            runtime: tokio::runtime::Handle::try_current().ok(),
            author_uploads: per_minute(uploads.per_author),
            tenant_uploads: per_minute(uploads.per_tenant),
            compiled: moka::sync::Cache::new(256),
            active: RwLock::new(HashMap::new()),
            tracker: Mutex::new(Tracker::default()),
            quarantine_after: quarantine_after.max(1),
            generation: AtomicU64::new(0),
            lost: Mutex::default(),
            lost_gauge: {
                let gauge = prometheus_client::metrics::gauge::Gauge::default();
                metrics.register(
                    "rule_registry_lost_tenants",
                    "Tenants whose rule deployments vanished from the store while this node \
                     ran them (the node keeps serving its last good rules)",
                    gauge.clone(),
                );
                gauge
            },
            metrics,
        })
    }

    /// Tenants whose deployment records vanished from the store (Redis
    /// restarted empty, or a failover to an empty replica) while this node
    /// was running rules of theirs. Deployments are never deleted, so that
    /// is a fault, not news: the node keeps the last good rules it has,
    /// logs an error, counts it in `bff_rule_registry_lost_tenants`, and
    /// refuses rule changes for those tenants (`STORE_UNAVAILABLE`) until
    /// the store has their records again (restored from a backup). It does
    /// not re-seed the store itself: it holds the running versions only,
    /// not the version histories and component binaries a faithful copy
    /// needs.
    pub fn lost_tenants(&self) -> Vec<String> {
        self.lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Records whether `tenant`'s records are lost; logs the change.
    fn set_lost(&self, tenant: &str, lost: bool) {
        let mut set = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        let changed = if lost {
            set.insert(tenant.to_owned())
        } else {
            set.remove(tenant)
        };
        if changed {
            if lost {
                tracing::error!(
                    tenant,
                    "rule deployments vanished from the store (restarted empty or failed over \
                     to an empty replica?): keeping the last good rules; rule changes are \
                     refused until the store is restored"
                );
            } else {
                tracing::warn!(tenant, "rule deployments are back in the store");
            }
        }
        self.lost_gauge
            .set(i64::try_from(set.len()).unwrap_or(i64::MAX));
    }

    /// Whether `tenant` runs rules on this node.
    fn runs_rules(&self, tenant: &str) -> bool {
        self.active
            .read()
            .expect("registry lock")
            .get(tenant)
            .is_some_and(|rules| !rules.is_empty())
    }

    /// The WebAssembly host.
    pub fn host(&self) -> &RuleHost {
        &self.host
    }

    /// The host, shared.
    pub fn shared_host(&self) -> Arc<RuleHost> {
        self.host.clone()
    }

    /// The pool every piece of rule work runs on.
    pub fn pool(&self) -> &RulePool {
        &self.pool
    }

    /// Loads every deployment and follows changes from other nodes (and a
    /// periodic full reload as a safety net).
    pub async fn start(self: &Arc<Self>) -> Result<(), StoreError> {
        let mut events = self.store.subscribe();
        self.reload_all().await?;
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            tick.tick().await;
            loop {
                let event = tokio::select! {
                    e = events.recv() => e,
                    _ = tick.tick() => Ok(Event::Resync),
                };
                let Some(registry) = weak.upgrade() else {
                    break;
                };
                let result = match event {
                    Ok(Event::Message { topic, payload }) if topic == TOPIC => {
                        registry.reload_one(&payload).await
                    }
                    Ok(Event::Message { .. }) => Ok(()),
                    Ok(Event::Resync) | Err(RecvError::Lagged(_)) => registry.reload_all().await,
                    Err(RecvError::Closed) => break,
                };
                if let Err(error) = result {
                    tracing::warn!(%error, "rule registry reload failed");
                }
            }
        });
        Ok(())
    }

    /// Bumped on every change of the active sets.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The active rules of a tenant: a snapshot that stays valid for the
    /// whole request that took it.
    pub fn active(&self, tenant: &str) -> Arc<Vec<ActiveRule>> {
        self.active
            .read()
            .expect("registry lock")
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    async fn reload_all(&self) -> Result<(), StoreError> {
        let all = self.store.list(DEPLOYMENTS).await?;
        let mut by_tenant: HashMap<String, Vec<Deployment>> = HashMap::new();
        for (key, bytes) in all {
            match serde_json::from_slice::<Deployment>(&bytes) {
                Ok(d) => by_tenant.entry(d.tenant.clone()).or_default().push(d),
                Err(error) => tracing::error!(%key, %error, "unreadable deployment record"),
            }
        }
        let mut next = HashMap::new();
        for (tenant, deployments) in by_tenant {
            self.set_lost(&tenant, false);
            next.insert(tenant, Arc::new(self.build_active(&deployments).await));
        }
        {
            let mut active = self.active.write().expect("registry lock");
            // A tenant running rules whose records are all gone: keep its
            // last good rules (see `lost_tenants`).
            for (tenant, rules) in active.iter() {
                if !rules.is_empty() && !next.contains_key(tenant) {
                    next.insert(tenant.clone(), rules.clone());
                    self.set_lost(tenant, true);
                }
            }
            *active = next;
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn reload_one(&self, key: &str) -> Result<(), StoreError> {
        let Some((tenant, _)) = key.split_once('/') else {
            return Ok(());
        };
        self.reload_tenant(tenant).await
    }

    async fn reload_tenant(&self, tenant: &str) -> Result<(), StoreError> {
        let deployments = self.deployments(tenant).await?;
        if deployments.is_empty() && self.runs_rules(tenant) {
            self.set_lost(tenant, true);
            return Ok(());
        }
        self.set_lost(tenant, false);
        let active = Arc::new(self.build_active(&deployments).await);
        self.active
            .write()
            .expect("registry lock")
            .insert(tenant.to_owned(), active);
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn build_active(&self, deployments: &[Deployment]) -> Vec<ActiveRule> {
        let mut out = Vec::new();
        for d in deployments {
            let Some(version) = d.running() else { continue };
            match self.compiled(&version.component).await {
                Ok(compiled) => out.push(ActiveRule {
                    name: d.name.clone(),
                    version: Arc::new(version.clone()),
                    compiled,
                    revision: d.revision,
                }),
                Err(error) => tracing::error!(
                    deployment = %deployment_key(&d.tenant, &d.name),
                    %error,
                    "active deployment cannot run; skipped"
                ),
            }
        }
        out
    }

    /// The compiled component with `sha256`, compiling it on first use.
    async fn compiled(&self, sha256: &str) -> Result<Arc<CompiledRule>, RegistryError> {
        if let Some(c) = self.compiled.get(sha256) {
            return Ok(c);
        }
        let bytes = self
            .store
            .get(COMPONENTS, sha256)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("no component {sha256}")))?;
        let compiled = self.compile_blocking(bytes).await?;
        self.compiled.insert(sha256.to_owned(), compiled.clone());
        Ok(compiled)
    }

    async fn compile_blocking(&self, bytes: Vec<u8>) -> Result<Arc<CompiledRule>, RegistryError> {
        let host = self.host.clone();
        let compiled = tokio::task::spawn_blocking(move || host.compile_cached(&bytes))
            .await
            .map_err(|e| RegistryError::Internal(e.to_string()))??;
        Ok(compiled)
    }

    /// Stores a component for `tenant` after checking it implements the rule
    /// world. Returns its sha256. Uploading the same bytes twice is a no-op.
    ///
    /// In order, cheapest first (after [`Registry::admit_upload`], which
    /// the upload route calls before it reads the body): the tenant's
    /// component quota, the binary's declared costs (while
    /// parsing), then compilation and a test instantiation on the rule
    /// pool (as the tenant's administrative work).
    pub async fn upload(
        &self,
        tenant: &str,
        bytes: Vec<u8>,
    ) -> Result<(String, usize), RegistryError> {
        let size = bytes.len();
        let sha = super::host::sha256_hex(&bytes);
        let owner = format!("{tenant}/{sha}");
        if self.store.get(OWNERS, &owner).await?.is_none() {
            let prefix = format!("{tenant}/");
            let held = self
                .store
                .list(OWNERS)
                .await?
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .count();
            if held >= MAX_COMPONENTS_PER_TENANT {
                return Err(RegistryError::Invalid(format!(
                    "a tenant may hold at most {MAX_COMPONENTS_PER_TENANT} components"
                )));
            }
        }
        let bytes = Arc::new(bytes);
        if self.compiled.get(&sha).is_none() {
            // Refused here, before anything is stored, if it is not a rule:
            // on the pool, first for what it would cost to compile (the
            // scan reads every instruction), then for what it is.
            if bytes.len() > super::host::MAX_COMPONENT_BYTES {
                return Err(CompileError::TooLarge(bytes.len()).into());
            }
            let host = self.host.clone();
            let input = bytes.clone();
            let compiled = self
                .pool
                .run(tenant, Work::Admin, move || host.compile_cached(&input))
                .await
                .map_err(busy)??;
            self.compiled.insert(sha.clone(), compiled);
        }
        if self.store.get(COMPONENTS, &sha).await?.is_none() {
            self.store
                .compare_and_set(COMPONENTS, &sha, None, &bytes)
                .await?;
        }
        if self.store.get(OWNERS, &owner).await?.is_none() {
            self.store
                .compare_and_set(OWNERS, &owner, None, Utc::now().to_rfc3339().as_bytes())
                .await?;
        }
        Ok((sha, size))
    }

    /// Counts an upload by `author` of `tenant` against their rates;
    /// refuses it when either is spent.
    pub fn admit_upload(&self, tenant: &str, author: &str) -> Result<(), RegistryError> {
        if self
            .author_uploads
            .check_key(&format!("{tenant}/{author}"))
            .is_err()
            || self.tenant_uploads.check_key(&tenant.to_owned()).is_err()
        {
            return Err(RegistryError::RateLimited);
        }
        Ok(())
    }

    /// A compiled component that `tenant` uploaded.
    pub async fn component_for(
        &self,
        tenant: &str,
        sha256: &str,
    ) -> Result<Arc<CompiledRule>, RegistryError> {
        let sha = sha256.trim().to_ascii_lowercase();
        if self
            .store
            .get(OWNERS, &format!("{tenant}/{sha}"))
            .await?
            .is_none()
        {
            return Err(RegistryError::NotFound(format!(
                "no uploaded component {sha} for this tenant"
            )));
        }
        self.compiled(&sha).await
    }

    /// Every deployment of a tenant, by name.
    pub async fn deployments(&self, tenant: &str) -> Result<Vec<Deployment>, StoreError> {
        let prefix = format!("{tenant}/");
        let mut out = Vec::new();
        for (key, bytes) in self.store.list(DEPLOYMENTS).await? {
            if !key.starts_with(&prefix) {
                continue;
            }
            match serde_json::from_slice::<Deployment>(&bytes) {
                Ok(d) => out.push(d),
                Err(error) => tracing::error!(%key, %error, "unreadable deployment record"),
            }
        }
        Ok(out)
    }

    /// One deployment.
    pub async fn deployment(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<Deployment>, StoreError> {
        Ok(self
            .store
            .get(DEPLOYMENTS, &deployment_key(tenant, name))
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Runs the rule's `check-config` on a settings string, on the rule
    /// pool as `tenant`'s administrative work. The rule's message comes
    /// back bounded and escaped.
    pub async fn check_config(
        &self,
        tenant: &str,
        compiled: &Arc<CompiledRule>,
        limits: &Limits,
        config: &str,
    ) -> Result<(), RegistryError> {
        let host = self.host.clone();
        let compiled = compiled.clone();
        let limits = *limits;
        let config = config.to_owned();
        let result = self
            .pool
            .run(tenant, Work::Admin, move || {
                host.check_config(&compiled, &limits, &config)
            })
            .await
            .map_err(busy)?;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(RegistryError::InvalidConfig(
                super::engine::rule_error_text(&error),
            )),
            Err(reason) if !reason.is_rules_fault() => Err(RegistryError::Busy),
            Err(reason) => Err(RegistryError::CheckFailed(reason.code())),
        }
    }

    /// Publishes a new version (inactive until activated, unless `activate`).
    pub async fn publish(
        &self,
        tenant: &str,
        author: &str,
        request: PublishRequest,
        activate: bool,
    ) -> Result<Deployment, RegistryError> {
        validate_name(&request.name)?;
        validate_limits(&request.limits)?;
        if request.config.len() > MAX_CONFIG_BYTES {
            return Err(RegistryError::Invalid(format!(
                "config is {} bytes; the limit is {MAX_CONFIG_BYTES}",
                request.config.len()
            )));
        }
        if let Some(group) = &request.stacking_group
            && (group.is_empty() || group.len() > 64)
        {
            return Err(RegistryError::Invalid(
                "stackingGroup must be 1 to 64 characters".into(),
            ));
        }
        if let (Some(s), Some(e)) = (request.scope.starts_at, request.scope.ends_at)
            && e <= s
        {
            return Err(RegistryError::Invalid(
                "scope.endsAt must be after scope.startsAt".into(),
            ));
        }
        let compiled = self.component_for(tenant, &request.component).await?;
        self.check_config(tenant, &compiled, &request.limits, &request.config)
            .await?;
        let count = self.deployments(tenant).await?.len();
        let name = request.name.clone();
        self.update(tenant, &name, |current| {
            let mut d = match current {
                Some(d) => d,
                None => {
                    if count >= MAX_DEPLOYMENTS_PER_TENANT {
                        return Err(RegistryError::Invalid(format!(
                            "a tenant may have at most {MAX_DEPLOYMENTS_PER_TENANT} deployments"
                        )));
                    }
                    Deployment {
                        tenant: tenant.to_owned(),
                        name: name.clone(),
                        versions: Vec::new(),
                        active_version: None,
                        status: DeploymentStatus::Inactive,
                        quarantine_reason: None,
                        revision: 0,
                        updated_at: Utc::now(),
                    }
                }
            };
            let number = d.versions.last().map_or(1, |v| v.version + 1);
            d.versions.push(Version {
                version: number,
                component: compiled.sha256.clone(),
                config: request.config.clone(),
                scope: request.scope.clone(),
                stage: request.stage,
                priority: request.priority,
                stacking_group: request.stacking_group.clone(),
                limits: request.limits,
                failure_policy: request.failure_policy,
                published_at: Utc::now(),
                published_by: author.to_owned(),
            });
            if d.versions.len() > MAX_VERSIONS {
                let keep_active = d.active_version;
                let drop = d.versions.len() - MAX_VERSIONS;
                let mut dropped = 0;
                d.versions.retain(|v| {
                    if dropped < drop && Some(v.version) != keep_active {
                        dropped += 1;
                        false
                    } else {
                        true
                    }
                });
            }
            if activate {
                d.active_version = Some(number);
                d.status = DeploymentStatus::Active;
                d.quarantine_reason = None;
            }
            Ok(d)
        })
        .await
    }

    /// Activates a version (the latest when `version` is `None`). Clears a
    /// quarantine.
    pub async fn activate(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Deployment, RegistryError> {
        let d = self
            .update(tenant, name, |current| {
                let mut d = current.ok_or_else(|| not_found(name))?;
                let number = match version {
                    Some(n) => d.version(n).map(|v| v.version).ok_or_else(|| {
                        RegistryError::NotFound(format!("{name} has no version {n}"))
                    })?,
                    None => d
                        .versions
                        .last()
                        .map(|v| v.version)
                        .ok_or_else(|| not_found(name))?,
                };
                d.active_version = Some(number);
                d.status = DeploymentStatus::Active;
                d.quarantine_reason = None;
                Ok(d)
            })
            .await?;
        if let Some(v) = d.active_version {
            self.reset_stats(tenant, name, v);
        }
        Ok(d)
    }

    /// Stops a deployment; its versions stay.
    pub async fn deactivate(&self, tenant: &str, name: &str) -> Result<Deployment, RegistryError> {
        self.update(tenant, name, |current| {
            let mut d = current.ok_or_else(|| not_found(name))?;
            d.status = DeploymentStatus::Inactive;
            Ok(d)
        })
        .await
    }

    /// Activates the version published before the current one.
    pub async fn rollback(&self, tenant: &str, name: &str) -> Result<Deployment, RegistryError> {
        let d = self
            .update(tenant, name, |current| {
                let mut d = current.ok_or_else(|| not_found(name))?;
                let current = d.active_version.ok_or_else(|| {
                    RegistryError::Invalid(format!("{name} has no active version"))
                })?;
                let previous = d
                    .versions
                    .iter()
                    .map(|v| v.version)
                    .filter(|&v| v < current)
                    .max()
                    .ok_or_else(|| {
                        RegistryError::Invalid(format!("{name} has no version before {current}"))
                    })?;
                d.active_version = Some(previous);
                d.status = DeploymentStatus::Active;
                d.quarantine_reason = None;
                Ok(d)
            })
            .await?;
        if let Some(v) = d.active_version {
            self.reset_stats(tenant, name, v);
        }
        Ok(d)
    }

    /// Quarantines `name` if `version` is still the one running.
    pub async fn quarantine(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
        revision: u64,
        reason: String,
    ) -> Result<(), RegistryError> {
        let result = self
            .update(tenant, name, |current| {
                let mut d = current.ok_or_else(|| not_found(name))?;
                // Only the record the failures were seen on: a re-activation
                // since then starts afresh.
                if d.status != DeploymentStatus::Active
                    || d.active_version != Some(version)
                    || d.revision != revision
                {
                    return Err(RegistryError::Conflict);
                }
                d.status = DeploymentStatus::Quarantined;
                d.quarantine_reason = Some(reason.clone());
                Ok(d)
            })
            .await;
        match result {
            Ok(_) => {
                tracing::warn!(tenant, deployment = name, version, %reason, "rule quarantined");
                Ok(())
            }
            Err(RegistryError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads, changes and writes a deployment with compare-and-set, then
    /// announces the change.
    async fn update(
        &self,
        tenant: &str,
        name: &str,
        change: impl Fn(Option<Deployment>) -> Result<Deployment, RegistryError>,
    ) -> Result<Deployment, RegistryError> {
        if self
            .lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(tenant)
        {
            // Writing into a store that lost the tenant's records would
            // make this one deployment the tenant's whole rule set.
            return Err(RegistryError::Store(StoreError(format!(
                "refusing a rule change: the deployments of tenant {tenant} are missing from \
                 the store"
            ))));
        }
        let key = deployment_key(tenant, name);
        for _ in 0..8 {
            let raw = self.store.get(DEPLOYMENTS, &key).await?;
            let current = match &raw {
                Some(bytes) => Some(serde_json::from_slice::<Deployment>(bytes).map_err(|e| {
                    RegistryError::Internal(format!("unreadable deployment {key}: {e}"))
                })?),
                None => None,
            };
            let mut next = change(current)?;
            next.revision += 1;
            next.updated_at = Utc::now();
            let bytes =
                serde_json::to_vec(&next).map_err(|e| RegistryError::Internal(e.to_string()))?;
            if self
                .store
                .compare_and_set(DEPLOYMENTS, &key, raw.as_deref(), &bytes)
                .await?
            {
                // The change is committed. This node sees it at once, the
                // others on the event (or the periodic reload if the event is
                // lost); neither failing undoes the change, so neither is
                // reported as its failure.
                if let Err(error) = self.reload_tenant(tenant).await {
                    tracing::warn!(%error, "reload after a registry change failed");
                }
                if let Err(error) = self.store.publish(TOPIC, &key).await {
                    tracing::warn!(%error, "announcing a registry change failed");
                }
                return Ok(next);
            }
        }
        Err(RegistryError::Conflict)
    }

    fn reset_stats(&self, tenant: &str, name: &str, version: u32) {
        let mut tracker = self.tracker.lock().expect("tracker lock");
        let key = tracker_key(tenant, name, version);
        if let Some(s) = tracker.stats.get_mut(&key) {
            s.consecutive_failures = 0;
        }
        tracker.quarantining.remove(&key);
    }

    /// Counts of a deployment version on this node.
    pub fn stats(&self, tenant: &str, name: &str, version: u32) -> RuleStats {
        self.tracker
            .lock()
            .expect("tracker lock")
            .stats
            .get(&tracker_key(tenant, name, version))
            .cloned()
            .unwrap_or_default()
    }

    /// An observer that counts evaluations of `tenant`'s rules and
    /// quarantines the ones that keep failing.
    pub fn observer(self: &Arc<Self>, tenant: &str) -> TenantObserver {
        TenantObserver {
            registry: self.clone(),
            tenant: tenant.to_owned(),
        }
    }
}

/// Counts evaluations of one tenant's rules.
pub struct TenantObserver {
    registry: Arc<Registry>,
    tenant: String,
}

impl Observer for TenantObserver {
    fn observed(
        &self,
        rule: &ActiveRule,
        evaluation: &Evaluation,
        failure: Option<&FailureReason>,
    ) {
        let registry = &self.registry;
        registry.metrics.rule_evaluation(
            failure.map_or("ok", FailureReason::code),
            evaluation.fuel_used,
        );
        let key = tracker_key(&self.tenant, &rule.name, rule.version.version);
        let quarantine = {
            let mut tracker = registry.tracker.lock().expect("tracker lock");
            let stats = tracker.stats.entry(key.clone()).or_default();
            let fresh = stats.revision != rule.revision;
            if fresh {
                // Re-activated (here or on another node): a new streak.
                stats.revision = rule.revision;
                stats.consecutive_failures = 0;
                stats.recent = 0;
            }
            stats.evaluations += 1;
            stats.last_fuel = evaluation.fuel_used;
            let verdict = match failure {
                None => {
                    stats.consecutive_failures = 0;
                    stats.recent <<= 1;
                    false
                }
                Some(reason) => {
                    stats.failures += 1;
                    stats.last_failure = Some(reason.code());
                    stats.last_failure_detail = Some(super::host::sanitize(
                        &reason.detail(),
                        super::engine::caps::DETAIL_CHARS,
                    ));
                    // Failures the rule did not cause (a busy pool or node,
                    // a cart over its input cap) are counted but do not
                    // quarantine it. Fail-closed rules are never
                    // quarantined: nothing may be priced without them.
                    let its_own = reason.is_rules_fault();
                    if its_own {
                        stats.consecutive_failures += 1;
                        stats.recent = (stats.recent << 1) | 1;
                    } else {
                        stats.recent <<= 1;
                    }
                    its_own
                        && rule.version.failure_policy != FailurePolicy::FailClosed
                        && (stats.consecutive_failures >= registry.quarantine_after
                            || stats.recent.count_ones() >= RECENT_FAILURES)
                }
            };
            if fresh {
                tracker.quarantining.remove(&key);
            }
            verdict && tracker.quarantining.insert(key)
        };
        if quarantine {
            let reason = failure
                .map(|r| format!("{} ({})", r.code(), r.detail()))
                .unwrap_or_default();
            let reason = format!("repeated failures; last: {reason}");
            let registry = registry.clone();
            let tenant = self.tenant.clone();
            let name = rule.name.clone();
            let version = rule.version.version;
            let revision = rule.revision;
            // Evaluations run on the rule pool's threads, outside the
            // runtime: the write goes to the runtime the registry was made in.
            let handle = tokio::runtime::Handle::try_current()
                .ok()
                .or_else(|| registry.runtime.clone());
            if let Some(handle) = handle {
                handle.spawn(async move {
                    if let Err(error) = registry
                        .quarantine(&tenant, &name, version, revision, reason)
                        .await
                    {
                        tracing::error!(%error, "quarantine failed");
                    }
                });
            }
        }
    }
}

fn busy(error: PoolError) -> RegistryError {
    match error {
        PoolError::Busy => RegistryError::Busy,
        PoolError::Failed => {
            RegistryError::Internal("the rule engine failed to complete the work".into())
        }
    }
}

fn not_found(name: &str) -> RegistryError {
    RegistryError::NotFound(format!("no deployment named {name:?}"))
}

fn validate_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(
            "name must be 1 to 64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit".into(),
        ))
    }
}

/// Checks limits are within what the host allows.
pub fn validate_limits(limits: &Limits) -> Result<(), RegistryError> {
    let checks: [(bool, &str); 6] = [
        (
            (10_000..=1_000_000_000).contains(&limits.fuel),
            "limits.fuel must be between 10,000 and 1,000,000,000",
        ),
        (
            (64 * 1024..=super::host::MAX_MEMORY_BYTES).contains(&limits.memory_bytes),
            "limits.memoryBytes must be between 65,536 and 67,108,864",
        ),
        (
            (1..=1_000).contains(&limits.timeout_ms),
            "limits.timeoutMs must be between 1 and 1000",
        ),
        (
            (1024..=4 * 1024 * 1024).contains(&limits.max_input_bytes),
            "limits.maxInputBytes must be between 1 KiB and 4 MiB",
        ),
        (
            (1024..=4 * 1024 * 1024).contains(&limits.max_output_bytes),
            "limits.maxOutputBytes must be between 1 KiB and 4 MiB",
        ),
        (
            limits.max_log_entries <= 1_000 && limits.max_discount >= 0,
            "limits.maxLogEntries must be at most 1000 and limits.maxDiscount not negative",
        ),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, why)) => Err(RegistryError::Invalid((*why).into())),
        None => Ok(()),
    }
}
