//! Connections: the accept loop and the per-connection time limits, below
//! HTTP/2, where a client that never speaks would otherwise cost a file
//! descriptor forever.
//!
//! - [`incoming`] accepts at most [`ConnectionLimits::max_connections`] at
//!   once (the next accept waits for one to close) and backs off when
//!   `accept` fails (at the descriptor limit it fails at once, and retrying
//!   at once spins a core).
//! - [`Conn`] closes a connection that has not made its first call within
//!   [`ConnectionLimits::handshake_timeout`] (TCP connects that never send
//!   the HTTP/2 preface, TLS handshakes that stall), and one that has had no
//!   call in progress for [`ConnectionLimits::idle_timeout`].
//!
//! The call guard tells a connection when its calls start and end through
//! [`ConnInfo`], the connect info tonic puts in every request's extensions.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use crate::config::ConnectionLimits;
use crate::listen::{Listener, Socket};

/// What one connection's calls tell it.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// Calls in progress on the connection.
    active: AtomicUsize,
    /// When the connection last had no call in progress (its idle clock).
    idle_since: Mutex<Instant>,
    /// Whether any call has been made (the handshake is over).
    used: std::sync::atomic::AtomicBool,
}

impl ConnState {
    fn new() -> Self {
        Self {
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            used: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A call started; the returned guard ends it.
    pub(crate) fn call_started(self: &Arc<Self>) -> ActiveCall {
        self.used.store(true, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveCall(Arc::clone(self))
    }
}

/// Marks a call in progress on its connection until dropped.
#[derive(Debug)]
pub(crate) struct ActiveCall(Arc<ConnState>);

impl Drop for ActiveCall {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Ok(mut since) = self.0.idle_since.lock() {
                *since = Instant::now();
            }
        }
    }
}

/// The connect info of a [`Conn`]: the peer and the connection's state.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    remote: Option<SocketAddr>,
    pub(crate) state: Arc<ConnState>,
}

impl ConnInfo {
    /// The peer's address (`None` over a Unix socket).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote
    }
}

/// An accepted connection with its time limits and its slot.
#[derive(Debug)]
pub struct Conn {
    stream: Socket,
    info: ConnInfo,
    limits: ConnectionLimits,
    timer: Pin<Box<Sleep>>,
    opened_at: Instant,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    /// When the connection must have shown activity by, or `None` while a
    /// call is in progress.
    fn deadline(&self) -> Option<Instant> {
        let state = &self.info.state;
        if !state.used.load(Ordering::Relaxed) {
            return Some(self.opened_at + self.limits.handshake_timeout);
        }
        if state.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = state
            .idle_since
            .lock()
            .map(|s| *s)
            .unwrap_or_else(|_| Instant::now());
        Some(since + self.limits.idle_timeout)
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // hyper always has a read pending on a live connection, so this is
        // where an idle or silent connection's deadline is noticed.
        if let Some(deadline) = self.deadline() {
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_ready() {
                let why = if self.info.state.used.load(Ordering::Relaxed) {
                    "no call for the connection idle timeout"
                } else {
                    "no call within the handshake timeout"
                };
                tracing::debug!(peer = ?self.info.remote, why, "closing a connection");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
            }
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accept back-off after a failed `accept`: doubles from the first value
/// up to the last while failures continue.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// The connections accepted on `listener`, at most
/// `limits.max_connections` open at once, never an error (a failed accept
/// is logged and retried after a back-off).
pub(crate) fn incoming(
    listener: Listener,
    limits: ConnectionLimits,
) -> impl Stream<Item = Result<Conn, io::Error>> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    futures::stream::unfold(
        (listener, slots, ACCEPT_BACKOFF.0),
        move |(listener, slots, mut backoff)| async move {
            // Wait for a free slot before accepting: over the limit,
            // connections queue in the kernel's backlog instead.
            let slot = Arc::clone(&slots).acquire_owned().await.ok()?;
            loop {
                match listener.accept().await {
                    Ok((stream, remote)) => {
                        let now = Instant::now();
                        let conn = Conn {
                            stream,
                            info: ConnInfo {
                                remote,
                                state: Arc::new(ConnState::new()),
                            },
                            limits,
                            timer: Box::pin(tokio::time::sleep_until(
                                now + limits.handshake_timeout,
                            )),
                            opened_at: now,
                            _slot: slot,
                        };
                        return Some((Ok(conn), (listener, slots, ACCEPT_BACKOFF.0)));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                    }
                }
            }
        },
    )
}
