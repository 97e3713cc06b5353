//! What every Flight call passes through before and while it runs: the
//! bearer-token check, the concurrent-call limit, the per-call deadline,
//! the `active calls` gauge and one tracing span per call.
//!
//! It wraps the whole tonic `FlightServiceServer` as a tower service, so
//! these checks happen before tonic decodes a single message, and it wraps
//! the response *body*: a streaming call (`DoExchange`) is only over when
//! its body is, so the call slot, the deadline and the span live as long
//! as the body does. Dropping the body (the call ended, the client reset
//! it, or the deadline cut it) drops the service's stream, whose producer
//! then stops and releases its pool blocks.

use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;
use tower_service::Service;
use tracing::Instrument as _;

use crate::auth::{self, AuthToken};
use crate::config::CallLimits;
use crate::metrics::{GaugeGuard, Metrics};

/// The gRPC method path of `Handshake`, which authenticates itself.
const HANDSHAKE_METHOD: &str = "Handshake";

/// Shared by every call the guarded service receives.
#[derive(Debug)]
struct GuardState {
    token: Option<AuthToken>,
    calls: Arc<Semaphore>,
    limits: CallLimits,
    metrics: Arc<Metrics>,
}

/// A tower service running `S` behind the call guard.
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    state: Arc<GuardState>,
}

impl<S> Guarded<S> {
    /// Guards `inner` with `token` (none: no authentication), `limits` and
    /// `metrics`.
    pub fn new(
        inner: S,
        token: Option<AuthToken>,
        limits: CallLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner,
            state: Arc::new(GuardState {
                token,
                calls: Arc::new(Semaphore::new(limits.max_concurrent_calls.max(1))),
                limits,
                metrics,
            }),
        }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

/// The method name (last path segment) as a static string, so it can be a
/// metric label without allocation; unknown methods are `other`.
fn method_name(path: &str) -> &'static str {
    const METHODS: &[&str] = &[
        "Handshake",
        "ListFlights",
        "GetFlightInfo",
        "PollFlightInfo",
        "GetSchema",
        "DoGet",
        "DoPut",
        "DoExchange",
        "DoAction",
        "ListActions",
    ];
    let last = path.rsplit('/').next().unwrap_or_default();
    METHODS
        .iter()
        .find(|m| **m == last)
        .copied()
        .unwrap_or("other")
}

/// The client's deadline from the `grpc-timeout` header (gRPC spec:
/// at most 8 digits and a unit H, M, S, m, u or n).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The earlier of the server's limit and the client's deadline.
fn call_deadline(limit: Option<Duration>, headers: &http::HeaderMap) -> Option<Duration> {
    match (limit, grpc_timeout(headers)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn deadline_status(after: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "the call ran past its deadline of {:.3} s (--call-timeout or the client's)",
        after.as_secs_f64()
    ))
}

/// Lives as long as the call: holds its concurrency slot and gauge, and
/// reports the call when it ends.
struct CallScope {
    span: tracing::Span,
    method: &'static str,
    started: Instant,
    code: tonic::Code,
    metrics: Arc<Metrics>,
    _active: GaugeGuard,
    _permit: OwnedSemaphorePermit,
}

impl Drop for CallScope {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        self.metrics.record_call(self.method, self.code);
        self.span.record("code", tracing::field::debug(self.code));
        tracing::info!(
            parent: &self.span,
            duration_ms = elapsed.as_secs_f64() * 1e3,
            "call finished"
        );
    }
}

/// Reads `grpc-status` from a header map (trailers, or a trailers-only
/// response's headers).
fn status_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(tonic::Code::from_i32(value.parse().ok()?))
}

impl<S> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The ready clone stays here; the one polled ready goes with the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            let method = method_name(request.uri().path());
            let peer = request
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|info| info.remote_addr())
                .or_else(|| {
                    type Tls = tonic::transport::server::TlsConnectInfo<
                        tonic::transport::server::TcpConnectInfo,
                    >;
                    request
                        .extensions()
                        .get::<Tls>()
                        .and_then(|info| info.get_ref().remote_addr())
                });
            let span = tracing::info_span!(
                "call",
                method,
                peer = tracing::field::display(peer.map_or("?".into(), |p| p.to_string())),
                spec_hash = tracing::field::Empty,
                rows = tracing::field::Empty,
                errors = tracing::field::Empty,
                code = tracing::field::Empty,
            );
            let reject = |status: Status| {
                tracing::info!(parent: &span, code = ?status.code(), message = status.message(), "call refused");
                state.metrics.record_call(method, status.code());
                Ok(status.into_http())
            };
            if method != HANDSHAKE_METHOD {
                if let Err(status) = auth::check_bearer(state.token.as_ref(), request.headers()) {
                    return reject(status);
                }
            }
            let Ok(permit) = Arc::clone(&state.calls).try_acquire_owned() else {
                return reject(Status::resource_exhausted(format!(
                    "the server is at its limit of {} concurrent calls \
                     (--max-concurrent-calls); retry later",
                    state.limits.max_concurrent_calls
                )));
            };
            let started = Instant::now();
            let deadline = call_deadline(state.limits.call_timeout, request.headers());
            let mut scope = CallScope {
                span: span.clone(),
                method,
                started,
                code: tonic::Code::Ok,
                metrics: Arc::clone(&state.metrics),
                _active: state.metrics.active_call(),
                _permit: permit,
            };
            let call = inner.call(request).instrument(span);
            let response = match deadline {
                None => call.await,
                Some(after) => {
                    match tokio::time::timeout_at((started + after).into(), call).await {
                        Ok(response) => response,
                        Err(_) => {
                            scope.code = tonic::Code::DeadlineExceeded;
                            return Ok(deadline_status(after).into_http());
                        }
                    }
                }
            };
            let Ok(response) = response;
            if let Some(code) = status_code(response.headers()) {
                scope.code = code;
            }
            Ok(response.map(|body| {
                Body::new(GuardedBody {
                    inner: body,
                    deadline: deadline.map(|after| {
                        (
                            after,
                            Box::pin(tokio::time::sleep_until((started + after).into())),
                        )
                    }),
                    scope,
                    done: false,
                })
            }))
        })
    }
}

/// A response body that ends the call with `DEADLINE_EXCEEDED` when its
/// deadline passes, and reports the call when dropped.
struct GuardedBody {
    inner: Body,
    deadline: Option<(Duration, Pin<Box<Sleep>>)>,
    scope: CallScope,
    done: bool,
}

impl HttpBody for GuardedBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some((after, sleep)) = &mut self.deadline {
            if sleep.as_mut().poll(cx).is_ready() {
                let after = *after;
                self.done = true;
                self.scope.code = tonic::Code::DeadlineExceeded;
                // Drop the service's stream now: its producer stops and
                // returns its pool blocks.
                self.inner = Body::empty();
                let mut trailers = http::HeaderMap::new();
                let status = deadline_status(after);
                return Poll::Ready(Some(match status.add_header(&mut trailers) {
                    Ok(()) => Ok(Frame::trailers(trailers)),
                    Err(e) => Err(e),
                }));
            }
        }
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame {
            if let Some(code) = frame.trailers_ref().and_then(status_code) {
                self.scope.code = code;
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(timeout: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", timeout.parse().unwrap());
        h
    }

    #[test]
    fn grpc_timeout_header_units() {
        assert_eq!(grpc_timeout(&headers("5S")), Some(Duration::from_secs(5)));
        assert_eq!(
            grpc_timeout(&headers("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(grpc_timeout(&headers("2M")), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout(&headers("7u")), Some(Duration::from_micros(7)));
        for bad in ["S", "5", "5x", "123456789S", "-1S"] {
            assert_eq!(grpc_timeout(&headers(bad)), None, "{bad}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn the_earlier_deadline_wins() {
        let server = Some(Duration::from_secs(10));
        assert_eq!(
            call_deadline(server, &headers("3S")),
            Some(Duration::from_secs(3))
        );
        assert_eq!(call_deadline(server, &headers("30S")), server);
        assert_eq!(
            call_deadline(None, &headers("3S")),
            Some(Duration::from_secs(3))
        );
        assert_eq!(call_deadline(None, &http::HeaderMap::new()), None);
    }

    #[test]
    fn method_names_are_static_labels() {
        assert_eq!(
            method_name("/arrow.flight.protocol.FlightService/DoExchange"),
            "DoExchange"
        );
        assert_eq!(
            method_name("/arrow.flight.protocol.FlightService/Nope"),
            "other"
        );
    }
}
