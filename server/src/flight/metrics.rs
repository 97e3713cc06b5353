//! Prometheus metrics: what the service counts, and a tiny HTTP endpoint
//! that serves them (`--metrics-listen`, off by default).
//!
//! Counting is always on (a few atomic adds per batch); the endpoint only
//! decides whether anyone can read them. Pool figures are read from the
//! allocator's `stats()` at scrape time, so they are never stale.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray as _;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::engine::{BatchStages, BlockAllocator};

type Labels = [(&'static str, &'static str); 1];

/// Every metric the service exports, in one registry.
pub struct Metrics {
    registry: Registry,
    images: Family<Labels, Counter>,
    image_errors: Family<Labels, Counter>,
    input_bytes: Counter,
    output_bytes: Counter,
    calls: Family<[(&'static str, &'static str); 2], Counter>,
    batch_seconds: Histogram,
    stage_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    active_calls: Gauge,
    engine_batches: Gauge,
    pool_blocks_in_use: Gauge,
    pool_bytes_in_use: Gauge,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            images: Family::default(),
            image_errors: Family::default(),
            input_bytes: Counter::default(),
            output_bytes: Counter::default(),
            calls: Family::default(),
            // 1 ms .. ~65 s.
            batch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 10 µs .. ~21 s: a row's decode is ~1 ms, a batch's send can
            // wait seconds on a slow reader.
            stage_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1e-5, 2.0, 22))
            }),
            active_calls: Gauge::default(),
            engine_batches: Gauge::default(),
            pool_blocks_in_use: Gauge::default(),
            pool_bytes_in_use: Gauge::default(),
        };
        let r = &mut m.registry;
        // Counters get their `_total` suffix from the encoder.
        r.register(
            "pixelfeed_images",
            "Images processed, by outcome (ok or error)",
            m.images.clone(),
        );
        r.register(
            "pixelfeed_image_errors",
            "Images that became error rows, by reason",
            m.image_errors.clone(),
        );
        r.register(
            "pixelfeed_calls",
            "Finished Flight calls, by method and gRPC status code",
            m.calls.clone(),
        );
        r.register(
            "pixelfeed_batch_duration_seconds",
            "Engine time per input batch (decode, transform, tensor write)",
            m.batch_seconds.clone(),
        );
        r.register(
            "pixelfeed_stage_duration_seconds",
            "Time per stage: decode, resize and convert per image (on a worker \
             thread); send per batch (from leaving the engine until its last \
             message is handed to the transport, so it includes waiting on \
             the client's flow-control window)",
            m.stage_seconds.clone(),
        );
        for (name, help, counter) in [
            (
                "pixelfeed_input_bytes",
                "Encoded image bytes received",
                &m.input_bytes,
            ),
            (
                "pixelfeed_output_bytes",
                "Tensor bytes produced",
                &m.output_bytes,
            ),
        ] {
            r.register(name, help, counter.clone());
        }
        for (name, help, gauge) in [
            (
                "pixelfeed_active_calls",
                "Flight calls in progress",
                &m.active_calls,
            ),
            (
                "pixelfeed_queued_batches",
                "Input batches handed to the engine and not yet done (waiting or running)",
                &m.engine_batches,
            ),
            (
                "pixelfeed_pool_blocks_in_use",
                "Output pool blocks held by batches in flight",
                &m.pool_blocks_in_use,
            ),
            (
                "pixelfeed_pool_bytes_in_use",
                "Output pool bytes held by batches in flight",
                &m.pool_bytes_in_use,
            ),
        ] {
            r.register(name, help, gauge.clone());
        }
        m
    }
}

/// Decrements a gauge when dropped.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Counts one processed batch: `input_bytes` encoded bytes in, the
    /// engine's output `out`, and the engine time it took.
    pub fn record_batch(&self, input_bytes: u64, out: &RecordBatch, elapsed: Duration) {
        self.batch_seconds.observe(elapsed.as_secs_f64());
        self.input_bytes.inc_by(input_bytes);
        let errors = out
            .column_by_name(pixelfeed_schema::columns::ERROR)
            .and_then(|c| c.as_string_opt::<i32>());
        let mut failed = 0;
        if let Some(errors) = errors {
            for message in errors.iter().flatten() {
                failed += 1;
                self.image_errors
                    .get_or_create(&[("reason", error_reason(message))])
                    .inc();
            }
        }
        let rows = out.num_rows() as u64;
        self.images
            .get_or_create(&[("outcome", "ok")])
            .inc_by(rows - failed.min(rows));
        self.images
            .get_or_create(&[("outcome", "error")])
            .inc_by(failed);
        if let Some(tensor) = out.column_by_name(pixelfeed_schema::columns::TENSOR) {
            self.output_bytes
                .inc_by(tensor.get_buffer_memory_size() as u64);
        }
    }

    /// Records each row's time in the engine stages it completed.
    pub fn record_stages(&self, stages: &BatchStages) {
        let [decode, resize, convert] = ["decode", "resize", "convert"].map(|stage| {
            self.stage_seconds
                .get_or_create(&[("stage", stage)])
                .clone()
        });
        for row in &stages.rows {
            for (histogram, took) in [
                (&decode, row.decode),
                (&resize, row.resize),
                (&convert, row.convert),
            ] {
                if let Some(took) = took {
                    histogram.observe(took.as_secs_f64());
                }
            }
        }
    }

    /// Records how long one output batch took to be handed to the transport.
    pub fn record_send(&self, took: Duration) {
        self.stage_seconds
            .get_or_create(&[("stage", "send")])
            .observe(took.as_secs_f64());
    }

    /// Counts a finished call.
    pub fn record_call(&self, method: &'static str, code: tonic::Code) {
        self.calls
            .get_or_create(&[("method", method), ("code", code_name(code))])
            .inc();
    }

    /// Marks a call active until the guard drops.
    pub fn active_call(&self) -> GaugeGuard {
        self.active_calls.inc();
        GaugeGuard(self.active_calls.clone())
    }

    /// Marks a batch queued for (or running in) the engine until the guard
    /// drops.
    pub fn engine_batch(&self) -> GaugeGuard {
        self.engine_batches.inc();
        GaugeGuard(self.engine_batches.clone())
    }

    /// The metrics in the Prometheus / OpenMetrics text format, with the
    /// pool figures read from `allocator` now.
    pub fn render(&self, allocator: &dyn BlockAllocator) -> String {
        let stats = allocator.stats();
        let pool = |key: &str| stats.get(key).and_then(serde_json::Value::as_i64);
        self.pool_blocks_in_use
            .set(pool("blocks_in_use").unwrap_or(0));
        self.pool_bytes_in_use
            .set(pool("bytes_in_use").unwrap_or(0));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// The encoded bytes in a batch's `image` column (0 if it has none).
pub fn encoded_bytes(batch: &RecordBatch) -> u64 {
    let Some(column) = batch.column_by_name(pixelfeed_schema::columns::IMAGE) else {
        return 0;
    };
    let sum = |lens: &mut dyn Iterator<Item = usize>| lens.sum::<usize>() as u64;
    match column.data_type() {
        DataType::Binary => sum(&mut column.as_binary::<i32>().iter().flatten().map(<[u8]>::len)),
        DataType::LargeBinary => {
            sum(&mut column.as_binary::<i64>().iter().flatten().map(<[u8]>::len))
        }
        DataType::BinaryView => sum(&mut column.as_binary_view().iter().flatten().map(<[u8]>::len)),
        _ => 0,
    }
}

/// A low-cardinality label for a per-row error message (the engine's
/// `RowError` texts; see engine/error.rs). Unknown texts are `other`.
pub fn error_reason(message: &str) -> &'static str {
    const PREFIXES: &[(&str, &str)] = &[
        ("image is null", "null"),
        ("empty image", "empty"),
        ("unsupported format", "unsupported_format"),
        ("unknown image format", "unknown_format"),
        ("resizing ", "resized_too_large"),
        ("corrupt JPEG", "corrupt"),
        ("corrupt PNG", "corrupt"),
        ("truncated ", "truncated"),
        ("unsupported JPEG", "unsupported_variant"),
        ("unsupported PNG", "unsupported_variant"),
        ("JPEG decode failed", "decode_failed"),
        ("PNG decode failed", "decode_failed"),
        ("resize failed", "internal"),
        ("internal", "internal"),
    ];
    if let Some((_, reason)) = PREFIXES.iter().find(|(p, _)| message.starts_with(p)) {
        return reason;
    }
    if message.ends_with(" byte metadata limit") {
        return "metadata_too_large";
    }
    if message.starts_with("image is ") {
        if message.contains(" byte limit") {
            return "too_many_bytes";
        }
        if message.contains(" Mpx limit") {
            return "too_many_pixels";
        }
        if message.contains("aspect ratio") {
            return "aspect_ratio";
        }
    }
    "other"
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Largest HTTP request head the metrics endpoint reads.
const MAX_REQUEST_BYTES: usize = 8 << 10;
/// How long one scrape connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` until `shutdown` completes: a
/// minimal HTTP/1.1 responder (one request per connection), enough for a
/// Prometheus scraper or `curl`.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    allocator: Arc<dyn BlockAllocator>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (metrics, allocator) = (Arc::clone(&metrics), Arc::clone(&allocator));
                    tokio::spawn(async move {
                        let answer = tokio::time::timeout(
                            REQUEST_TIMEOUT,
                            answer_scrape(stream, &metrics, allocator.as_ref()),
                        );
                        if let Ok(Err(e)) = answer.await {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn answer_scrape(
    mut stream: TcpStream,
    metrics: &Metrics,
    allocator: &dyn BlockAllocator,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let (status, kind, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(allocator),
        ),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "pixelfeed serves GET /metrics here\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_error_text_has_a_reason() {
        for (message, reason) in [
            ("image is null", "null"),
            ("empty image", "empty"),
            (
                "image is 900 bytes, over the 700 byte limit",
                "too_many_bytes",
            ),
            (
                "image is 65500x65500 = 4290 Mpx, over the 64 Mpx limit",
                "too_many_pixels",
            ),
            (
                "image is 6500x1, aspect ratio 6500 over the limit 100",
                "aspect_ratio",
            ),
            ("unsupported format: GIF", "unsupported_format"),
            (
                "unknown image format (first bytes: 3c 21)",
                "unknown_format",
            ),
            ("truncated JPEG: no EOI", "truncated"),
            ("corrupt PNG: bad CRC", "corrupt"),
            ("unsupported JPEG: arithmetic coding", "unsupported_variant"),
            ("internal decoder error (panic): x", "internal"),
            (
                "EXIF metadata of 70000 bytes is over the 65536 byte metadata limit",
                "metadata_too_large",
            ),
            (
                "compressed XMP metadata inflating past 1048576 bytes is over the 1048576 \
                 byte metadata limit",
                "metadata_too_large",
            ),
            ("something new", "other"),
        ] {
            assert_eq!(error_reason(message), reason, "{message}");
        }
    }
}
