//! Real Redis servers started by the tests themselves: a 3-master Redis
//! Cluster shared by every test of this binary (each test in its own
//! namespace), and dedicated servers or clusters a test may stop and
//! restart. They run from a temporary directory on free ports and are shut
//! down when the test binary ends (a watchdog process waits for it), or when
//! a dedicated one is dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server or a cluster may take to come up on a loaded machine.
const STARTUP: Duration = Duration::from_secs(60);

/// Local Redis: one server, or the masters of a cluster.
pub struct LocalRedis {
    ports: Vec<u16>,
    cluster: bool,
    dir: PathBuf,
}

/// The Redis Cluster every test of this binary shares.
pub fn shared_cluster() -> &'static LocalRedis {
    static CLUSTER: OnceLock<LocalRedis> = OnceLock::new();
    CLUSTER.get_or_init(|| LocalRedis::cluster(3))
}

/// The store URL of the shared cluster.
pub fn cluster_url() -> String {
    shared_cluster().url()
}

impl LocalRedis {
    /// A cluster of `masters` masters (no replicas) on free ports.
    pub fn cluster(masters: usize) -> Self {
        require_redis_binaries();
        let ports = free_ports(masters);
        let redis = Self::new(ports, true);
        for &port in &redis.ports {
            redis.start_node(port);
        }
        let nodes: Vec<String> = redis
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        redis.wait_until_cluster_ok();
        redis
    }

    /// One server on a free port.
    pub fn single() -> Self {
        require_redis_binaries();
        let redis = Self::new(free_ports(1), false);
        redis.start_node(redis.ports[0]);
        redis
    }

    fn new(ports: Vec<u16>, cluster: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bff-redis-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let redis = Self {
            ports,
            cluster,
            dir,
        };
        redis.watch_this_process();
        redis
    }

    /// The store URL (`redis+cluster://…` for a cluster).
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        if self.cluster {
            format!("redis+cluster://{}", nodes.join(","))
        } else {
            format!("redis://{}", nodes[0])
        }
    }

    /// Stops every node, saving its data first, as an orderly restart of
    /// Redis would.
    pub fn stop(&self) {
        for &port in &self.ports {
            let _ = cli(port, &["shutdown", "save"]);
        }
        let started = Instant::now();
        while self.ports.iter().any(|&p| cli(p, &["ping"]).is_some()) {
            assert!(started.elapsed() < STARTUP, "Redis did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts every node again (same ports, same data) and waits until
    /// they serve.
    pub fn restart(&self) {
        for &port in &self.ports {
            self.start_node(port);
        }
        if self.cluster {
            self.wait_until_cluster_ok();
        }
    }

    fn start_node(&self, port: u16) {
        let dir = self.dir.display().to_string();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", &dir])
            .args(["--dbfilename", &format!("dump-{port}.rdb")])
            .args(["--logfile", &format!("{dir}/redis-{port}.log")])
            .args(["--pidfile", &format!("{dir}/redis-{port}.pid")])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"]);
        if self.cluster {
            command
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("{dir}/nodes-{port}.conf")]);
        }
        let status = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-server runs");
        assert!(status.success(), "redis-server on port {port} failed");
        let started = Instant::now();
        while cli(port, &["ping"]).as_deref() != Some("PONG") {
            assert!(
                started.elapsed() < STARTUP,
                "redis-server on port {port} did not answer; see {dir}/redis-{port}.log"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_until_cluster_ok(&self) {
        let started = Instant::now();
        loop {
            let ok = self.ports.iter().all(|&port| {
                cli(port, &["cluster", "info"]).is_some_and(|info| {
                    info.lines().any(|l| l.trim() == "cluster_state:ok")
                        && info.lines().any(|l| l.trim() == "cluster_slots_ok:16384")
                })
            });
            if ok {
                return;
            }
            assert!(
                started.elapsed() < STARTUP,
                "the Redis Cluster did not reach cluster_state:ok; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A process that outlives nothing: it waits for this test binary to
    /// end (however it ends) and then shuts the nodes down and removes
    /// their directory.
    fn watch_this_process(&self) {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             for p in {ports}; do redis-cli -p $p shutdown nosave >/dev/null 2>&1; done; \
             rm -rf '{dir}'",
            pid = std::process::id(),
            ports = ports.join(" "),
            dir = self.dir.display(),
        );
        // Never waited for: it must outlive this process, and it ends only
        // after this process has.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh runs");
    }

    /// The directory holding the nodes' files and logs.
    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        for &port in &self.ports {
            let _ = cli(port, &["shutdown", "nosave"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `redis-cli -p port args…`; its trimmed output when it succeeded.
fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.starts_with("Could not connect") && !text.is_empty())
        .then_some(text)
}

/// Fails the test with a clear message when the Redis binaries are missing.
fn require_redis_binaries() {
    for (binary, package) in [
        ("redis-server", "redis-server"),
        ("redis-cli", "redis-tools"),
    ] {
        let found = Command::new(binary)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "`{binary}` was not found on PATH: the Redis Cluster tests start their own \
             servers; install the `{package}` package (bff/scripts/test does)"
        );
    }
}

/// `n` free ports whose cluster bus ports (port + 10000) are free too, both
/// below Linux's ephemeral range (32768 and up), so no outgoing connection
/// can take one between this check and the server's start.
fn free_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    let mut held = Vec::new();
    for _ in 0..10_000 {
        if ports.len() == n {
            break;
        }
        let port = rand::random_range(16_000..22_700);
        if ports.contains(&port) {
            continue;
        }
        let (Ok(client), Ok(bus)) = (
            TcpListener::bind(("127.0.0.1", port)),
            TcpListener::bind(("127.0.0.1", port + 10_000)),
        ) else {
            continue;
        };
        held.extend([client, bus]);
        ports.push(port);
    }
    assert_eq!(ports.len(), n, "no free ports for local Redis servers");
    ports
}

/// The keys matching `pattern` on the Redis behind `conn`, read with SCAN
/// (a shared server may hold millions of keys: `KEYS` would block it for
/// longer than a client waits).
pub async fn keys_matching(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(conn)
            .await
            .expect("SCAN");
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    // SCAN may return a key more than once.
    keys.sort();
    keys.dedup();
    keys
}
