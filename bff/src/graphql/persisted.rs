//! Persisted queries: Apollo's automatic persisted queries (APQ) and a
//! safelist of operations for production app builds.
//!
//! * **APQ.** A client sends only `extensions.persistedQuery.sha256Hash`;
//!   an unknown hash is answered `PERSISTED_QUERY_NOT_FOUND`, and the client
//!   retries with the query text and the hash, which registers it. A GET
//!   with just the hash is short and cacheable. Registered queries live in
//!   the shared store (every node knows them; they expire after
//!   `graphql.apq_ttl_secs`), with an in-process cache in front. Only a
//!   query whose hash matches and that passed the document limits is
//!   registered.
//! * **Safelist.** With `graphql.safelist_manifest` set (Apollo's
//!   persisted-query manifest JSON, loaded at start), only the manifest's
//!   operations run: by id (`sha256Hash`), or as full text whose sha256 is
//!   in the manifest. Anything else is refused with
//!   `PERSISTED_QUERY_NOT_IN_LIST`, and nothing is registered.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::code;
use crate::store::SharedStore;

/// The store space of registered APQ documents.
const SPACE: &str = "apq";

/// Why a persisted-query request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Stable code.
    pub code: &'static str,
    /// Message for people.
    pub message: &'static str,
}

impl Refused {
    const fn new(code: &'static str, message: &'static str) -> Self {
        Self { code, message }
    }
}

/// The `persistedQuery` request extension.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PersistedQueryExtension {
    version: u32,
    sha256_hash: String,
}

/// Apollo's persisted-query manifest.
#[derive(Debug, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    operations: Vec<ManifestOperation>,
}

#[derive(Debug, Deserialize)]
struct ManifestOperation {
    id: String,
    body: String,
}

/// The persisted-query registry of this node.
#[derive(Clone)]
pub struct PersistedQueries {
    apq: bool,
    ttl: Duration,
    /// Safelisted operations by id and by the sha256 of their body.
    safelist: Option<Arc<HashMap<String, Arc<str>>>>,
    local: moka::sync::Cache<String, Arc<str>>,
    store: SharedStore,
}

impl std::fmt::Debug for PersistedQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistedQueries")
            .field("apq", &self.apq)
            .field("safelist", &self.safelist.as_ref().map(|s| s.len()))
            .finish_non_exhaustive()
    }
}

/// Lower-case hex sha256 of a query text.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a request resolved to.
#[derive(Debug)]
pub enum Resolved {
    /// Run this text (the request's own, or the persisted one).
    Run(Arc<str>),
    /// Run the request's own text, and register it under `hash` once it
    /// passed the document limits.
    RunAndRegister {
        /// The query text.
        text: Arc<str>,
        /// Its sha256 (checked).
        hash: String,
    },
}

impl PersistedQueries {
    /// A registry; `manifest` turns safelist-only mode on.
    pub fn new(
        apq: bool,
        ttl: Duration,
        manifest: Option<&Path>,
        store: SharedStore,
    ) -> anyhow::Result<Self> {
        let safelist = match manifest {
            None => None,
            Some(path) => Some(Arc::new(load_manifest(path)?)),
        };
        Ok(Self {
            apq,
            ttl,
            safelist,
            local: moka::sync::Cache::builder()
                .max_capacity(16 * 1024 * 1024)
                .weigher(|k: &String, v: &Arc<str>| {
                    u32::try_from(k.len() + v.len()).unwrap_or(u32::MAX)
                })
                .build(),
            store,
        })
    }

    /// Whether only safelisted operations run.
    pub fn safelist_only(&self) -> bool {
        self.safelist.is_some()
    }

    /// Works out which text a request runs. `query` is the request's text
    /// (empty when it sent none), `extension` its `persistedQuery`.
    pub async fn resolve(
        &self,
        query: &str,
        extension: Option<&async_graphql::Value>,
    ) -> Result<Resolved, Refused> {
        let extension = match extension {
            None => None,
            Some(value) => {
                let json = value.clone().into_json().map_err(|_| bad_extension())?;
                let ext: PersistedQueryExtension =
                    serde_json::from_value(json).map_err(|_| bad_extension())?;
                if ext.version != 1 {
                    return Err(Refused::new(
                        code::PERSISTED_QUERY_NOT_SUPPORTED,
                        "only version 1 of persisted queries is supported",
                    ));
                }
                if !is_sha256_hex(&ext.sha256_hash) {
                    return Err(bad_extension());
                }
                Some(ext.sha256_hash.to_ascii_lowercase())
            }
        };
        if let Some(safelist) = &self.safelist {
            let key = match (&extension, query.is_empty()) {
                (Some(hash), _) => hash.clone(),
                (None, false) => sha256_hex(query),
                (None, true) => return Err(missing_query()),
            };
            return match safelist.get(&key) {
                Some(body) if query.is_empty() || **body == *query => {
                    Ok(Resolved::Run(body.clone()))
                }
                _ => Err(Refused::new(
                    code::PERSISTED_QUERY_NOT_IN_LIST,
                    "this server only runs the operations of its safelist",
                )),
            };
        }
        let Some(hash) = extension else {
            if query.is_empty() {
                return Err(missing_query());
            }
            return Ok(Resolved::Run(Arc::from(query)));
        };
        if !self.apq {
            return Err(Refused::new(
                code::PERSISTED_QUERY_NOT_SUPPORTED,
                "persisted queries are turned off on this server",
            ));
        }
        if !query.is_empty() {
            if sha256_hex(query) != hash {
                return Err(Refused::new(
                    code::PERSISTED_QUERY_HASH_MISMATCH,
                    "the persisted query hash does not match the query text",
                ));
            }
            return Ok(Resolved::RunAndRegister {
                text: Arc::from(query),
                hash,
            });
        }
        if let Some(text) = self.local.get(&hash) {
            return Ok(Resolved::Run(text));
        }
        match self.store.get_expiring(SPACE, &hash).await {
            Ok(Some(bytes)) => match String::from_utf8(bytes) {
                Ok(text) if sha256_hex(&text) == hash => {
                    let text: Arc<str> = Arc::from(text);
                    self.local.insert(hash, text.clone());
                    Ok(Resolved::Run(text))
                }
                _ => Err(not_found()),
            },
            Ok(None) => Err(not_found()),
            Err(error) => {
                // The client falls back to sending the full text, which runs
                // without the store.
                tracing::warn!(%error, "persisted query lookup failed");
                Err(not_found())
            }
        }
    }

    /// Registers a query that passed the document limits.
    pub async fn register(&self, hash: String, text: Arc<str>) {
        if self.local.get(&hash).is_some() {
            return;
        }
        if let Err(error) = self
            .store
            .put_expiring(SPACE, &hash, text.as_bytes(), self.ttl)
            .await
        {
            // Still runs; the next request with the hash registers again.
            tracing::warn!(%error, "persisted query registration failed");
        }
        self.local.insert(hash, text);
    }
}

fn bad_extension() -> Refused {
    Refused::new(
        code::BAD_REQUEST,
        "extensions.persistedQuery must be {\"version\": 1, \"sha256Hash\": \"<64 hex digits>\"}",
    )
}

fn missing_query() -> Refused {
    Refused::new(code::BAD_REQUEST, "the request has no query")
}

fn not_found() -> Refused {
    // Apollo clients look for this exact message, and for the code.
    Refused::new(code::PERSISTED_QUERY_NOT_FOUND, "PersistedQueryNotFound")
}

fn load_manifest(path: &Path) -> anyhow::Result<HashMap<String, Arc<str>>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!("cannot read the safelist manifest {}: {e}", path.display())
    })?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!("the safelist manifest {} is not valid: {e}", path.display())
    })?;
    if manifest.format != "apollo-persisted-query-manifest" || manifest.version != 1 {
        anyhow::bail!(
            "the safelist manifest {} is not an apollo-persisted-query-manifest of version 1",
            path.display()
        );
    }
    let mut out = HashMap::new();
    for op in manifest.operations {
        let body: Arc<str> = Arc::from(op.body);
        out.insert(sha256_hex(&body), body.clone());
        out.insert(op.id.to_ascii_lowercase(), body);
    }
    Ok(out)
}
