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

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;
use tower_service::Service;
use tracing::Instrument as _;

use crate::assemble::{Assembled, AssemblingBody};
use crate::auth::{self, AuthToken};
use crate::budget::{InputBudget, InputMeter, MeteredBody};
use crate::config::CallLimits;
use crate::conn::{ActiveCall, ConnInfo};
use crate::metrics::{GaugeGuard, Metrics};
use crate::outbox::Outbox;
use crate::watch::CallWatch;

/// The gRPC method path of `Handshake`, which authenticates itself.
const HANDSHAKE_METHOD: &str = "Handshake";

/// Shared by every call the guarded service receives.
#[derive(Debug)]
struct GuardState {
    token: Option<AuthToken>,
    operator_token: Option<AuthToken>,
    calls: Arc<Semaphore>,
    limits: CallLimits,
    metrics: Arc<Metrics>,
    input: Arc<InputBudget>,
    /// `--max-message-bytes`, which tonic enforces on each message's prefix.
    max_message_bytes: usize,
}

/// A tower service running `S` behind the call guard.
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    state: Arc<GuardState>,
}

impl<S> Guarded<S> {
    /// Guards `inner` with the user and operator tokens (see
    /// [`crate::auth`]), `limits` and `metrics`, for a server whose largest
    /// message is `max_message_bytes`.
    pub fn new(
        inner: S,
        token: Option<AuthToken>,
        operator_token: Option<AuthToken>,
        limits: CallLimits,
        metrics: Arc<Metrics>,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            inner,
            state: Arc::new(GuardState {
                token,
                operator_token,
                calls: Arc::new(Semaphore::new(limits.max_concurrent_calls.max(1))),
                limits,
                input: InputBudget::new(
                    limits.max_input_bytes_in_flight,
                    metrics.input_bytes_in_flight().clone(),
                ),
                metrics,
                max_message_bytes,
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

/// The streaming calls, whose progress is watched (`--idle-timeout`).
const STREAMING_METHODS: &[&str] = &["DoExchange", "DoPut", "DoGet"];

/// The calls that stream large input messages, assembled outside tonic's
/// decoder so that a waiting call keeps none of them ([`crate::assemble`]).
const ASSEMBLED_METHODS: &[&str] = &["DoExchange", "DoPut"];

/// The calls that stream large output messages, framed outside tonic's
/// encoder for the same reason ([`crate::outbox`]).
const FRAMED_METHODS: &[&str] = &["DoExchange", "DoGet"];

/// The longest `grpc-message` the server sends. Standard clients drop an
/// answer whose metadata passes ~8-16 KiB and report RESOURCE_EXHAUSTED
/// instead of the real status, so no message may quote unbounded input.
pub(crate) const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

/// Lives as long as the call: holds its concurrency slot and gauge, and
/// reports the call when it ends.
struct CallScope {
    span: tracing::Span,
    method: &'static str,
    started: Instant,
    code: tonic::Code,
    metrics: Arc<Metrics>,
    _active: GaugeGuard,
    /// The call's slot; the watchdog takes it early from a call that makes
    /// no progress.
    permit: Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>,
    /// The call's place in its connection's count of calls in progress.
    _on_connection: Option<ActiveCall>,
    watchdog: Option<tokio::task::AbortHandle>,
}

impl Drop for CallScope {
    fn drop(&mut self) {
        if let Some(dog) = &self.watchdog {
            dog.abort();
        }
        if let Ok(mut permit) = self.permit.lock() {
            permit.take();
        }
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
            let mut request = request;
            let method = method_name(request.uri().path());
            let conn = request.extensions().get::<ConnInfo>().cloned().or_else(|| {
                type Tls = tonic::transport::server::TlsConnectInfo<ConnInfo>;
                request
                    .extensions()
                    .get::<Tls>()
                    .map(|info| info.get_ref().clone())
            });
            let peer = conn.as_ref().and_then(ConnInfo::remote_addr);
            let on_connection = conn.map(|c| c.state.call_started());
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
                let role = auth::authorize(
                    state.token.as_ref(),
                    state.operator_token.as_ref(),
                    request.headers(),
                );
                match role {
                    Ok(role) => {
                        request.extensions_mut().insert(role);
                    }
                    Err(status) => return reject(status),
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
            let permit = Arc::new(std::sync::Mutex::new(Some(permit)));
            let meter = InputMeter::new(&state.input);
            let watch = STREAMING_METHODS.contains(&method).then(|| {
                let watch = CallWatch::new(state.limits.idle_timeout, Some(Arc::clone(&meter)));
                request.extensions_mut().insert(Arc::clone(&watch));
                watch
            });
            let assembled = ASSEMBLED_METHODS.contains(&method).then(|| {
                let assembled = Arc::new(Assembled::default());
                request.extensions_mut().insert(Arc::clone(&assembled));
                assembled
            });
            let outbox = FRAMED_METHODS.contains(&method).then(|| {
                let outbox = Outbox::new(state.max_message_bytes);
                request.extensions_mut().insert(Arc::clone(&outbox));
                outbox
            });
            let request = request.map(|body| {
                let body = Body::new(MeteredBody::new(
                    body,
                    meter,
                    watch.clone(),
                    state.limits.idle_timeout,
                    state.max_message_bytes,
                ));
                match assembled {
                    Some(assembled) => Body::new(AssemblingBody::new(
                        body,
                        assembled,
                        state.max_message_bytes,
                    )),
                    None => body,
                }
            });
            // Frees a stuck call's slot even while HTTP/2 flow control keeps
            // its stream open; the data path sees the cancellation too.
            let watchdog = watch.as_ref().map(|watch| {
                let (watch, permit, span) = (Arc::clone(watch), Arc::clone(&permit), span.clone());
                tokio::spawn(async move {
                    watch.watchdog().await;
                    tracing::info!(parent: &span, "no progress for the idle timeout: call ended");
                    if let Ok(mut permit) = permit.lock() {
                        permit.take();
                    }
                })
                .abort_handle()
            });
            let mut scope = CallScope {
                span: span.clone(),
                method,
                started,
                code: tonic::Code::Ok,
                metrics: Arc::clone(&state.metrics),
                _active: state.metrics.active_call(),
                permit,
                _on_connection: on_connection,
                watchdog,
            };
            let call = inner.call(request).instrument(span);
            let cancelled = async {
                match &watch {
                    Some(watch) => watch.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            let bounded = async {
                match deadline {
                    None => Ok(call.await),
                    Some(after) => tokio::time::timeout_at((started + after).into(), call).await,
                }
            };
            let response = tokio::select! {
                response = bounded => response,
                () = cancelled => {
                    scope.code = tonic::Code::Cancelled;
                    let status = watch.as_ref().map_or_else(|| Status::cancelled(""), |w| w.status());
                    return Ok(status.into_http());
                }
            };
            let response = match response {
                Ok(Ok(response)) => response,
                Err(_) => {
                    scope.code = tonic::Code::DeadlineExceeded;
                    let after = deadline.unwrap_or_default();
                    return Ok(deadline_status(after).into_http());
                }
            };
            let mut response = response;
            bound_status_message(response.headers_mut());
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
                    watch,
                    outbox,
                    framed: VecDeque::new(),
                    scope,
                    done: false,
                })
            }))
        })
    }
}

/// A response body that ends the call with `DEADLINE_EXCEEDED` when its
/// deadline passes (`CANCELLED` when its watch gives up on it), bounds the
/// status message of its trailers, and reports the call when dropped.
struct GuardedBody {
    inner: Body,
    deadline: Option<(Duration, Pin<Box<Sleep>>)>,
    watch: Option<Arc<CallWatch>>,
    /// Where the call's output messages wait, framed (see [`crate::outbox`]).
    outbox: Option<Arc<Outbox>>,
    /// Chunks of framed messages swapped in and not yet handed on.
    framed: VecDeque<bytes::Bytes>,
    scope: CallScope,
    done: bool,
}

impl GuardedBody {
    /// `chunk` (already counted in the output bytes in flight), handed to
    /// the transport: progress, as the client's window took the one before.
    fn handed_on(&self, chunk: bytes::Bytes) -> bytes::Bytes {
        if let Some(watch) = &self.watch {
            watch.touch();
        }
        chunk
    }

    /// Ends the body with `status` in its trailers and drops the service's
    /// stream now, so its producer stops and returns its pool blocks.
    fn end_with(&mut self, status: Status) -> Poll<Option<Result<Frame<bytes::Bytes>, Status>>> {
        self.done = true;
        self.scope.code = status.code();
        self.inner = Body::empty();
        let mut trailers = http::HeaderMap::new();
        Poll::Ready(Some(match status.add_header(&mut trailers) {
            Ok(()) => Ok(Frame::trailers(trailers)),
            Err(e) => Err(e),
        }))
    }
}

/// Cuts a `grpc-message` header longer than [`MAX_STATUS_MESSAGE_BYTES`]
/// (percent-encoded, as gRPC sends it) at a character boundary, marking
/// the cut.
fn bound_status_message(headers: &mut http::HeaderMap) {
    let Some(value) = headers.get("grpc-message") else {
        return;
    };
    if value.len() <= MAX_STATUS_MESSAGE_BYTES {
        return;
    }
    let bytes = value.as_bytes();
    let mut end = MAX_STATUS_MESSAGE_BYTES;
    // Never split a %XX escape.
    while end > 0 && bytes[..end].iter().rev().take(2).any(|&b| b == b'%') {
        end -= 1;
    }
    let mut cut = bytes[..end].to_vec();
    cut.extend_from_slice(b"...%20(cut)");
    if let Ok(value) = http::HeaderValue::from_bytes(&cut) {
        headers.insert("grpc-message", value);
    }
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
        // The rest of a message already begun goes before any ending: the
        // client would read a length prefix without its bytes.
        if let Some(chunk) = self.framed.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(self.handed_on(chunk)))));
        }
        if let Some((after, sleep)) = &mut self.deadline {
            if sleep.as_mut().poll(cx).is_ready() {
                let status = deadline_status(*after);
                return self.end_with(status);
            }
        }
        if let Some(watch) = &self.watch {
            if watch.is_cancelled() {
                let status = watch.status();
                return self.end_with(status);
            }
        }
        let mut frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &mut frame {
            if let Some(trailers) = frame.trailers_mut() {
                bound_status_message(trailers);
                if let Some(code) = status_code(trailers) {
                    self.scope.code = code;
                }
            } else if let Some(data) = frame.data_mut() {
                let in_flight = self.scope.metrics.output_bytes_in_flight().clone();
                let mut chunk = counted_until_written(std::mem::take(data), &in_flight);
                if let Some(outbox) = self.outbox.clone() {
                    // Counted from here: a body waiting behind its head is
                    // output on its way to the socket too.
                    match outbox.swap(&chunk) {
                        Ok(framed) => self.framed.extend(
                            framed
                                .into_iter()
                                .map(|c| counted_until_written(c, &in_flight)),
                        ),
                        Err(status) => return self.end_with(status),
                    }
                    chunk = self.framed.pop_front().unwrap_or_default();
                }
                *data = self.handed_on(chunk);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.framed.is_empty() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `chunk` (encoded output handed to the transport) counted in `in_flight`
/// until the transport drops it, which the HTTP/2 layer does once it has
/// written it.
fn counted_until_written(chunk: bytes::Bytes, in_flight: &Gauge) -> bytes::Bytes {
    in_flight.inc_by(chunk.len() as i64);
    bytes::Bytes::from_owner(Outgoing {
        chunk,
        in_flight: in_flight.clone(),
    })
}

/// An output chunk on its way to the socket (see [`counted_until_written`]).
struct Outgoing {
    chunk: bytes::Bytes,
    in_flight: Gauge,
}

impl AsRef<[u8]> for Outgoing {
    fn as_ref(&self) -> &[u8] {
        &self.chunk
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.in_flight.dec_by(self.chunk.len() as i64);
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

    #[test]
    fn an_output_chunk_is_counted_until_the_transport_drops_it() {
        let in_flight = Gauge::default();
        let chunk = counted_until_written(bytes::Bytes::from_static(b"last message"), &in_flight);
        assert_eq!(in_flight.get(), 12);
        // The HTTP/2 layer writes a chunk in pieces and then drops them.
        let (head, tail) = (chunk.slice(..4), chunk.slice(4..));
        drop(chunk);
        drop(head);
        assert_eq!(in_flight.get(), 12);
        drop(tail);
        assert_eq!(in_flight.get(), 0);
    }
}
