//! What the Redis backend talks to: one Redis server or a Redis Cluster,
//! behind one connection type, so every command and script of the store is
//! written once and runs on both.
//!
//! A cluster is selected by the URL scheme: `redis+cluster://` followed by
//! the comma-separated seed nodes, e.g.
//! `redis+cluster://:secret@10.0.0.5:6379,10.0.0.6:6379,10.0.0.7:6379`.
//! The credentials, when given, apply to every node. Any other URL is one
//! server. (`rediss+cluster://` gives `rediss://` seeds, which, like a
//! `rediss://` server URL, need a TLS-enabled build of the redis client.)
//!
//! Events travel over classic pub/sub, which a cluster broadcasts to every
//! node over its bus: subscribing on any one reachable node hears every
//! publish, so the subscriber uses a plain connection to one seed and moves
//! to the next seed when that node goes away.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::StoreError;

/// How long connecting may take before the store reports Redis as down.
pub(super) const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one command may wait for its reply, retries and redirections
/// included. Replies to a checkout script can take a while on a loaded box,
/// and a timed-out script may still have run: wait rather than report an
/// ambiguous error early.
pub(super) const CLUSTER_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the store's data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// One Redis server.
    Single(String),
    /// A Redis Cluster, by its seed nodes (each a `redis://` URL).
    Cluster(Vec<String>),
}

impl Target {
    /// Reads the store's URL (see the module documentation).
    pub(super) fn parse(url: &str) -> Result<Self, StoreError> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
            ("redis", rest)
        } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            ("rediss", rest)
        } else {
            return Ok(Target::Single(url.to_owned()));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        let (credentials, hosts) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let seeds: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|host| format!("{scheme}://{credentials}{host}{path}"))
            .collect();
        if seeds.is_empty() {
            return Err(StoreError(
                "a redis+cluster:// URL names no node (expected \
                 redis+cluster://host:port,host:port,...)"
                    .into(),
            ));
        }
        Ok(Target::Cluster(seeds))
    }

    /// Clients for the event subscription: the server, or every seed node
    /// of the cluster (tried in turn).
    pub(super) fn subscribers(&self) -> Result<Vec<redis::Client>, StoreError> {
        let urls = match self {
            Target::Single(url) => std::slice::from_ref(url),
            Target::Cluster(seeds) => seeds.as_slice(),
        };
        urls.iter()
            .map(|url| redis::Client::open(url.as_str()).map_err(StoreError::from_display))
            .collect()
    }
}

/// Connects to a Redis Cluster through its seed nodes, with every connect
/// and every reply bounded in time.
pub(super) async fn connect_cluster(seeds: &[String]) -> Result<Connection, StoreError> {
    let client = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .connection_timeout(CLUSTER_CONNECT_TIMEOUT)
        .response_timeout(CLUSTER_RESPONSE_TIMEOUT)
        .build()
        .map_err(StoreError::from_display)?;
    let connection = tokio::time::timeout(CLUSTER_CONNECT_TIMEOUT, client.get_async_connection())
        .await
        .map_err(|_| StoreError("timed out connecting to the Redis Cluster".into()))?
        .map_err(StoreError::from_display)?;
    Ok(Connection::Cluster(connection))
}

/// A cheap-to-clone handle on the store's connection: one server (a
/// reconnecting multiplexed connection) or a cluster (which routes each
/// command to the node owning its keys' slot, and follows redirections).
#[derive(Clone)]
pub(crate) enum Connection {
    /// One Redis server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl From<ConnectionManager> for Connection {
    fn from(connection: ConnectionManager) -> Self {
        Connection::Single(connection)
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_url_is_one_server() {
        assert_eq!(
            Target::parse("redis://10.0.0.5:6379/2").unwrap(),
            Target::Single("redis://10.0.0.5:6379/2".into())
        );
    }

    #[test]
    fn a_cluster_url_names_every_seed_with_the_shared_credentials() {
        assert_eq!(
            Target::parse("redis+cluster://user:p%40ss@10.0.0.5:6379, 10.0.0.6:6380,").unwrap(),
            Target::Cluster(vec![
                "redis://user:p%40ss@10.0.0.5:6379".into(),
                "redis://user:p%40ss@10.0.0.6:6380".into(),
            ])
        );
        assert_eq!(
            Target::parse("rediss+cluster://a:1,b:2/?protocol=resp3").unwrap(),
            Target::Cluster(vec![
                "rediss://a:1/?protocol=resp3".into(),
                "rediss://b:2/?protocol=resp3".into(),
            ])
        );
    }

    #[test]
    fn a_cluster_url_without_nodes_is_refused() {
        let err = Target::parse("redis+cluster://").unwrap_err();
        assert!(err.0.contains("names no node"), "{err}");
        assert!(Target::parse("redis+cluster://secret@").is_err());
    }
}
