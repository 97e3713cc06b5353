//! Hosting the service: serving on a listener until a shutdown signal, and
//! a loopback fixture for tests and benchmarks.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};

use arrow_flight::flight_service_server::FlightServiceServer;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use super::config::ServerConfig;
use super::guard::Guarded;
use super::service::PixelfeedService;

/// HTTP/2 flow-control windows for what clients send us (our output is
/// paced by the *client's* windows). hyper's defaults (64 KiB per stream)
/// make a multi-megabyte upload take many round trips; 2 MiB keeps uploads
/// at loopback/LAN speed while bounding what each call can park in server
/// memory before the engine takes it (8 MiB per stream made 8 clients
/// streaming 4 Mpx JPEGs cost ~100 MiB more; `bench/rss.py`).
const STREAM_WINDOW_BYTES: u32 = 2 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 4 << 20;

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bound listener's address could not be read.
    #[error("could not read the listener's local address: {0}")]
    LocalAddr(std::io::Error),
    /// The TLS certificate, key or client CA could not be used.
    #[error("invalid TLS configuration: {0}")]
    Tls(tonic::transport::Error),
    /// The gRPC transport failed while serving.
    #[error("the gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The background server task panicked or was cancelled.
    #[error("the server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The tonic service for `config`, with the message size limits applied in
/// both directions (tonic's default receive limit of 4 MiB is far below one
/// pyarrow batch of images).
pub fn flight_service(config: &ServerConfig) -> FlightServiceServer<PixelfeedService> {
    FlightServiceServer::new(PixelfeedService::new(config.service.clone()))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes)
}

/// Binds `addr` (port 0 picks a free port; read it back with
/// `listener.local_addr()`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// A server builder with the transport settings and TLS of `config`
/// (fails on an unusable certificate or key).
fn transport(config: &ServerConfig) -> Result<Server, ServerError> {
    let builder = Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
    match &config.tls {
        Some(tls) => builder
            .tls_config(tls.server_tls_config())
            .map_err(ServerError::Tls),
        None => Ok(builder),
    }
}

/// Checks that `config` can be served (today: that its TLS certificate and
/// key load), so a CLI can fail before it announces readiness.
pub fn check_config(config: &ServerConfig) -> Result<(), ServerError> {
    transport(config).map(drop)
}

/// Serves the pixelfeed Flight service on `listener` until `shutdown`
/// completes, then stops accepting and lets in-flight calls finish.
///
/// Every Flight call goes through the call guard (token, concurrency,
/// deadline, span); the standard gRPC health service
/// (`grpc.health.v1.Health`) answers on the same port without a token, so
/// that load balancers and orchestrators can probe it, and reports
/// `NOT_SERVING` once shutdown has begun.
///
/// `config.listen` is not used: the listener is already bound.
pub async fn serve_with_shutdown(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    // Small messages (schemas, action answers, short batches) should not
    // wait for Nagle's algorithm; tonic only sets this on listeners it binds.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.and_then(|stream| {
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    });
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<FlightServiceServer<PixelfeedService>>()
        .await;
    let service = &config.service;
    let flight = Guarded::new(
        flight_service(&config),
        service.auth_token.clone(),
        service.limits,
        service.metrics.clone(),
    );
    let shutdown = async move {
        shutdown.await;
        health
            .set_not_serving::<FlightServiceServer<PixelfeedService>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    };
    transport(&config)?
        .add_service(health_service)
        .add_service(flight)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// A server running in the background on `127.0.0.1`, for tests and
/// benchmarks. Dropping it shuts the server down.
#[derive(Debug)]
pub struct LoopbackServer {
    addr: SocketAddr,
    tls: bool,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl LoopbackServer {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients connect to, `grpc://127.0.0.1:PORT`
    /// (`grpc+tls://localhost:PORT` when serving TLS: certificates name a
    /// host, and test certificates usually name `localhost`).
    pub fn url(&self) -> String {
        if self.tls {
            format!("grpc+tls://localhost:{}", self.addr.port())
        } else {
            format!("grpc://{}", self.addr)
        }
    }

    /// Stops the server and waits until it has shut down.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            // The server may already have stopped; then there is nothing to do.
            let _ = tx.send(());
        }
    }
}

/// Starts a server on `127.0.0.1:0` (a free port) in a background task, as
/// arrow-rs's own Flight tests do. `config.listen` is ignored.
///
/// Must be called within a tokio runtime.
pub async fn spawn_loopback(config: ServerConfig) -> Result<LoopbackServer, ServerError> {
    let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let addr = listener.local_addr().map_err(ServerError::LocalAddr)?;
    check_config(&config)?;
    let tls = config.tls.is_some();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_with_shutdown(config, listener, async {
        // A dropped sender also means "stop".
        let _ = rx.await;
    }));
    Ok(LoopbackServer {
        addr,
        tls,
        shutdown: Some(tx),
        task: Some(task),
    })
}
