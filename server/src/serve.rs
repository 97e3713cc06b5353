//! Hosting the service: binding, TLS, the gRPC health service, serving
//! until shutdown, the two-phase drain, and the URL the server advertises
//! in dataset endpoints. Embedders get the same policy as the CLI.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::config::ServerConfig;
use crate::guard::Guarded;
use crate::listen::{ListenAddr, Listener};
use crate::service::PixelfeedService;

/// HTTP/2 flow-control window per stream for what clients send us (our
/// output is paced by the *client's* windows). hyper's default (64 KiB)
/// makes a multi-megabyte upload take many round trips; 512 KiB keeps
/// uploads at loopback/LAN speed (0.5 GB/s per stream at 1 ms round trip)
/// while bounding what each call, waiting on the input budget, parks in
/// server memory: `bench/rss.py --clients 128` peaked at 1 578 MiB with
/// 2 MiB windows and 1 299 MiB with 512 KiB, at the same images/s (8
/// clients: 692 MiB both).
const STREAM_WINDOW_BYTES: u32 = 512 << 10;

/// The connection's window: room for every stream's window at once. A call
/// waiting on the input budget leaves its window's worth unread; with a
/// smaller connection window a few such calls would stop the data of the
/// others on the same connection (the Python client's K streams, or
/// gRPC's shared channels), including calls whose charge is already taken
/// and that only need their bytes to finish. Memory is still bounded by
/// the stream windows.
fn connection_window_bytes(max_streams_per_connection: u32) -> u32 {
    let all = u64::from(STREAM_WINDOW_BYTES) * u64::from(max_streams_per_connection.max(1));
    // HTTP/2's largest window is 2^31 - 1.
    all.min((1 << 31) - 1) as u32
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
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
    /// Two settings contradict each other.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The background server task panicked or was cancelled.
    #[error("the server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The tonic service for `config`, with the message size limits applied in
/// both directions (tonic's default receive limit of 4 MiB is far below one
/// pyarrow batch of images).
fn flight_service(config: &ServerConfig) -> FlightServiceServer<PixelfeedService> {
    FlightServiceServer::new(PixelfeedService::new(config.service.clone()))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes)
}

/// Binds the TCP address `addr` (port 0 picks a free port; read it back
/// with `listener.local_addr()`); [`Listener::bind`] also binds Unix
/// sockets.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// A server builder with the transport settings and TLS of `config`
/// (fails on an unusable certificate or key).
fn transport(config: &ServerConfig) -> Result<Server, ServerError> {
    let limits = &config.connections;
    let builder = Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(connection_window_bytes(limits.max_streams_per_connection))
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        // Requests that reset streams as fast as they open them (the
        // HTTP/2 "rapid reset" attack) are refused past this.
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_header_list_size(64 << 10);
    match &config.tls {
        Some(tls) => builder
            .tls_config(tls.server_tls_config())
            .map_err(ServerError::Tls),
        None => Ok(builder),
    }
}

/// Checks that `config` can be served (its limits agree, its TLS
/// certificate and key load), so a CLI can fail before it announces
/// readiness.
pub fn check_config(config: &ServerConfig) -> Result<(), ServerError> {
    if let (Some(user), Some(operator)) =
        (&config.service.auth_token, &config.service.operator_token)
    {
        if user.same_secret(operator) {
            // One secret for both roles would make every user an operator.
            return Err(ServerError::Config(
                "the operator token (--operator-token-file) must differ from the user token \
                 (--auth-token-file)"
                    .into(),
            ));
        }
    }
    transport(config).map(drop)
}

/// Serves the pixelfeed Flight service on `listener` (TCP or a Unix
/// socket) until `shutdown`
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
    listener: impl Into<Listener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    check_config(&config)?;
    let incoming = crate::conn::incoming(listener.into(), config.connections);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<FlightServiceServer<PixelfeedService>>()
        .await;
    let service = &config.service;
    let flight = Guarded::new(
        flight_service(&config),
        service.auth_token.clone(),
        service.operator_token.clone(),
        service.limits,
        service.metrics.clone(),
        config.max_message_bytes,
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

/// How [`serve_until_stopped`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every in-flight call finished after the first stop request.
    Drained,
    /// A second stop request came while calls were still running.
    Forced,
    /// The drain timeout passed with calls still running.
    TimedOut,
}

/// Serves on `listener` until `stops` yields, then drains: accepting
/// stops, health turns `NOT_SERVING`, and running calls get up to
/// `drain_timeout` to finish, unless `stops` yields again (stop at once).
/// An unresponsive client would otherwise hold the process up forever
/// (HTTP/2 shutdown waits for its acknowledgement). `stops` yields a name
/// for each request (e.g. a signal's) for the log.
pub async fn serve_until_stopped(
    config: ServerConfig,
    listener: impl Into<Listener>,
    mut stops: impl Stream<Item = &'static str> + Unpin,
    drain_timeout: Duration,
) -> Result<Stopped, ServerError> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = serve_with_shutdown(config, listener, async {
        let _ = stop_rx.await;
    });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map(|()| Stopped::Drained),
        name = stops.next() => {
            tracing::info!(signal = name.unwrap_or("?"), "shutting down; send it again to stop at once");
            let _ = stop_tx.send(());
        }
    }
    tokio::select! {
        result = &mut server => result.map(|()| Stopped::Drained),
        name = stops.next() => {
            tracing::warn!(signal = name.unwrap_or("?"), "stopping without waiting for in-flight calls");
            Ok(Stopped::Forced)
        }
        () = tokio::time::sleep(drain_timeout) => {
            tracing::warn!(?drain_timeout, "in-flight calls did not finish in time; stopping");
            Ok(Stopped::TimedOut)
        }
    }
}

/// The URL this server puts in dataset endpoint locations when none was
/// configured: `grpc://ADDR` (`grpc+tls://` with TLS) of the bound
/// address, `grpc+unix:///PATH` for a Unix socket (pyarrow's scheme), or
/// `None` when no client could dial it: an unspecified address such as
/// `0.0.0.0`, or TLS over a Unix socket (Flight has no scheme for it).
pub fn advertised_location(bound: &ListenAddr, tls: bool) -> Option<String> {
    match bound {
        ListenAddr::Tcp(addr) if addr.ip().is_unspecified() => None,
        ListenAddr::Tcp(addr) => {
            let scheme = if tls { "grpc+tls" } else { "grpc" };
            Some(format!("{scheme}://{addr}"))
        }
        ListenAddr::Unix(path) if path.is_absolute() && !tls => {
            Some(format!("grpc+unix://{}", path.display()))
        }
        ListenAddr::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_location_is_dialable() {
        let at = |s: &str| s.parse::<ListenAddr>().unwrap();
        assert_eq!(
            advertised_location(&at("127.0.0.1:8815"), false).as_deref(),
            Some("grpc://127.0.0.1:8815")
        );
        assert_eq!(
            advertised_location(&at("10.0.0.5:1"), true).as_deref(),
            Some("grpc+tls://10.0.0.5:1")
        );
        assert_eq!(advertised_location(&at("0.0.0.0:8815"), false), None);
        assert_eq!(advertised_location(&at("[::]:8815"), false), None);
        assert_eq!(
            advertised_location(&at("unix:///run/pf.sock"), false).as_deref(),
            Some("grpc+unix:///run/pf.sock")
        );
        assert_eq!(advertised_location(&at("unix:///run/pf.sock"), true), None);
    }
}
