//! Prometheus metrics: what the service counts ([`Metrics`]); [`http`]
//! serves them (`--metrics-listen`, off by default).
//!
//! Counting is always on (a few atomic adds per batch); the endpoint only
//! decides whether anyone can read them. Pool figures are read from the
//! allocator's `stats()` at scrape time, so they are never stale.

mod http;

use std::fmt;
use std::time::Duration;

use arrow_array::cast::AsArray as _;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use pixelfeed_engine::{BatchReport, BlockAllocator};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use http::serve_metrics;

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
    input_bytes_in_flight: Gauge,
    output_bytes_in_flight: Gauge,
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
            input_bytes_in_flight: Gauge::default(),
            output_bytes_in_flight: Gauge::default(),
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
            (
                "pixelfeed_input_bytes_in_flight",
                "Encoded input bytes received and not yet through the engine \
                 (--max-input-bytes-in-flight)",
                &m.input_bytes_in_flight,
            ),
            (
                "pixelfeed_output_bytes_in_flight",
                "Encoded output bytes handed to the transport and not yet written \
                 to the socket",
                &m.output_bytes_in_flight,
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
    /// engine's output `out` with its per-row `report` (error kinds, stage
    /// times), and the engine time it took.
    pub fn record_batch(
        &self,
        input_bytes: u64,
        out: &RecordBatch,
        report: &BatchReport,
        elapsed: Duration,
    ) {
        self.batch_seconds.observe(elapsed.as_secs_f64());
        self.input_bytes.inc_by(input_bytes);
        let mut failed = 0;
        for kind in report.errors.iter().flatten() {
            failed += 1;
            self.image_errors
                .get_or_create(&[("reason", kind.as_str())])
                .inc();
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
        let [decode, resize, convert] = ["decode", "resize", "convert"].map(|stage| {
            self.stage_seconds
                .get_or_create(&[("stage", stage)])
                .clone()
        });
        for row in &report.stages {
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

    /// The gauge of input bytes in flight, which the input budget keeps.
    pub(crate) fn input_bytes_in_flight(&self) -> &Gauge {
        &self.input_bytes_in_flight
    }

    /// The gauge of encoded output bytes handed to the transport and not
    /// yet written.
    pub(crate) fn output_bytes_in_flight(&self) -> &Gauge {
        &self.output_bytes_in_flight
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
