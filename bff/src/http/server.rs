//! The HTTP/1.1 server: the accept loop, the connection cap and the
//! timeouts that keep one client from holding the server's sockets,
//! file descriptors or memory.
//!
//! `axum::serve` has no limits at all: a socket that sends nothing, a
//! request head trickled a byte at a time or a half-sent body stays open
//! for ever, and every such socket holds a file descriptor and up to
//! hyper's 400 kB read buffer. Here each connection runs on hyper directly
//! with
//!
//! * a **connection cap** (a semaphore permit per connection): past it, a
//!   new connection is answered `503` and closed at once, so the sockets
//!   already open — a load balancer's `/healthz` probe among them — keep
//!   being served;
//! * a bounded **request head** (`max_header_bytes`, hyper answers `431`);
//! * a **header read timeout** from the first byte of a request head to its
//!   end, an **idle timeout** while no request is in flight and none has
//!   started, both enforced by a per-connection watchdog; and
//! * a **body read timeout** from the end of the head to the end of the
//!   body (a deadline on the body stream, so trickling does not reset it).
//!
//! Shutdown stops accepting, asks every connection to finish its request
//! in flight and close, and waits for all of them.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::config::ServerSettings;
use crate::error::BodyTimeout;

/// File descriptors kept free for everything that is not a client
/// connection or an idle upstream connection: upstream calls in flight,
/// Redis connections, the store's file, logs.
const RESERVED_FDS: u64 = 256;

/// What a connection past the cap is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 44\r\n\r\n\
the server is at its connection limit; retry\n";

/// The limits the server enforces, as resolved at start.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read: Duration,
    body_read: Duration,
    idle: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for every open connection to finish its request in
/// flight.
///
/// `upstream_fds` is how many idle upstream connections the process may
/// keep open: the connection cap leaves them their descriptors.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &ServerSettings,
    upstream_fds: u64,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let max_connections = fitting_max_connections(settings.max_connections, upstream_fds);
    let permits = Arc::new(Semaphore::new(max_connections));
    let limits = Limits {
        header_read: settings.header_read_timeout(),
        body_read: settings.body_read_timeout(),
        idle: settings.idle_timeout(),
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(settings.max_header_bytes)
        // The watchdog below times request heads (hyper's own timer would
        // also cut off connections idling between requests at the same,
        // shorter, deadline).
        .header_read_timeout(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    let (mut refused, mut last_warned) = (0u64, None);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    // Out of file descriptors, or a connection that died
                    // in the backlog: back off a little and go on; never
                    // stop serving over it.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(serve_connection(
                    stream,
                    permit,
                    router.clone(),
                    http.clone(),
                    limits,
                    stop_rx.clone(),
                ));
            }
            Err(_) => {
                refuse(stream);
                // Logged at most once a second, so an attack does not
                // flood the logs too.
                refused += 1;
                if last_warned.is_none_or(|at: Instant| at.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(
                        refused,
                        max_connections,
                        "connections refused: at the connection limit"
                    );
                    refused = 0;
                    last_warned = Some(Instant::now());
                }
            }
        }
    }
    drop(listener);
    // Every connection holds a permit until it is closed.
    let _ = stop_tx.send(true);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    Ok(())
}

/// Turns away a connection past the cap: a best-effort `503` (without
/// waiting: a client that does not read gets nothing) and close.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(BUSY);
}

/// The configured connection cap, lowered to what the process's file
/// descriptor limit allows (after raising the soft limit to the hard one)
/// once `upstream_fds` idle upstream connections and [`RESERVED_FDS`] are
/// set aside, so that the cap, not descriptor exhaustion, is what turns
/// clients away.
fn fitting_max_connections(configured: usize, upstream_fds: u64) -> usize {
    let Some(fds) = descriptor_limit() else {
        return configured;
    };
    let fitting = usize::try_from(
        fds.saturating_sub(RESERVED_FDS)
            .saturating_sub(upstream_fds)
            .max(1),
    )
    .unwrap_or(usize::MAX);
    if fitting < configured {
        tracing::warn!(
            configured,
            fitting,
            file_descriptors = fds,
            idle_upstream_connections = upstream_fds,
            "server.max_connections lowered to fit the file descriptor limit \
             (raise the open-file limit, or lower upstreams.pool_max_idle_per_host)"
        );
        fitting
    } else {
        configured
    }
}

/// The soft limit of open files, raised to the hard limit first.
#[cfg(unix)]
fn descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %err, "cannot raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(not(unix))]
fn descriptor_limit() -> Option<u64> {
    None
}

/// Serves one connection until it closes, times out or the server stops.
async fn serve_connection(
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    router: Router,
    http: hyper::server::conn::http1::Builder,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let state = Arc::new(ConnectionState::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        state: Arc::clone(&state),
    });
    let service = hyper::service::service_fn({
        let state = Arc::clone(&state);
        move |request: hyper::Request<Incoming>| {
            let in_flight = state.request_started();
            let deadline = Instant::now() + limits.body_read;
            let request = request.map(|body| Body::new(DeadlineBody::new(body, deadline)));
            let router = router.clone();
            async move {
                let response = router.oneshot(request).await;
                drop(in_flight);
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        }
    });
    let mut connection = pin!(http.serve_connection(io, service));
    let mut stopping = false;
    loop {
        let deadline = state.deadline(&limits);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                break;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(deadline) => {
                if let Some(reason) = state.expired(&limits) {
                    tracing::debug!(reason, "closing connection");
                    break;
                }
            }
            () = state.head_started.notified() => {}
        }
    }
}

/// Marks "no request head being received".
const NO_HEAD: u64 = u64::MAX;

/// What the watchdog of one connection needs to know. Times are
/// milliseconds since the connection was accepted.
struct ConnectionState {
    accepted: Instant,
    /// Requests whose response is not produced yet.
    in_flight: AtomicU32,
    /// When the connection last became idle (accepted, or a response
    /// produced).
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived, or `NO_HEAD`.
    head_since: AtomicU64,
    /// Wakes the watchdog when a head starts (its deadline moves earlier).
    head_started: Notify,
}

impl ConnectionState {
    fn new() -> Self {
        Self {
            accepted: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NO_HEAD),
            head_started: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.accepted + Duration::from_millis(millis)
    }

    /// Bytes arrived: if no request is in flight they begin a request head.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == NO_HEAD
        {
            self.head_since.store(self.now(), Ordering::Release);
            self.head_started.notify_one();
        }
    }

    /// A whole head arrived and the request is being handled.
    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NO_HEAD, Ordering::Release);
        InFlight(Arc::clone(self))
    }

    /// When the watchdog should look again.
    fn deadline(&self, limits: &Limits) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // Handlers have their own deadlines; look again later.
            return Instant::now() + limits.idle;
        }
        match self.head_since.load(Ordering::Acquire) {
            NO_HEAD => self.at(self.idle_since.load(Ordering::Acquire)) + limits.idle,
            since => self.at(since) + limits.header_read,
        }
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Acquire) > 0 || Instant::now() < self.deadline(limits) {
            return None;
        }
        Some(match self.head_since.load(Ordering::Acquire) {
            NO_HEAD => "idle timeout",
            _ => "header read timeout",
        })
    }
}

/// A request in flight on a connection; dropped when its response is
/// produced.
struct InFlight(Arc<ConnectionState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A socket that tells its connection's watchdog when bytes arrive.
struct Watched {
    inner: TcpStream,
    state: Arc<ConnectionState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A request body that fails once its deadline passes, however steadily
/// bytes trickle in.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    /// Armed only once the body has to be waited for, so a body that is
    /// already buffered (most are) costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
}

impl DeadlineBody {
    fn new(inner: Incoming, deadline: Instant) -> Self {
        Self {
            inner,
            deadline,
            sleep: None,
            timed_out: false,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = hyper::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.timed_out = true;
                Poll::Ready(Some(Err(BodyTimeout.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_descriptors_to_idle_upstream_connections() {
        let Some(fds) = descriptor_limit() else {
            return; // No limit to fit: nothing to check on this platform.
        };
        let all = usize::try_from(fds.saturating_sub(RESERVED_FDS)).unwrap();
        assert_eq!(fitting_max_connections(usize::MAX, 0), all.max(1));
        let upstream = fds / 2;
        assert_eq!(
            fitting_max_connections(usize::MAX, upstream),
            all.saturating_sub(upstream as usize).max(1)
        );
        // Below the limit the configured cap stands.
        assert_eq!(fitting_max_connections(1, upstream), 1);
    }
}
