//! `pixelfeed_native`: the pixelfeed engine inside the Python process.
//!
//! One class, [`Engine`]: a parsed transform spec, the engine's limits, a
//! pool of output blocks and a rayon pool of its own. `Engine.process`
//! takes a `pyarrow.RecordBatch` with an `image` column (any object with
//! `__arrow_c_array__`), runs [`pixelfeed_engine::process_batch`] with the
//! GIL released, and returns the server's exact output batch (tensor,
//! error, warning, height, width, geometry, passthrough columns) through
//! the Arrow C data interface: the tensor buffer is the pool block itself,
//! handed to pyarrow without a copy and given back to the pool when Python
//! drops the last reference to it.
//!
//! The public API is pure Python (`pixelfeed.Engine`, `pixelfeed.native`),
//! which turns lists of bytes into batches, specs into JSON, and adds
//! `stream(...)` on top of this class.

use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_pyarrow::PyArrowType;
use pixelfeed_engine::{process_batch, EngineConfig, EngineError};
use pixelfeed_pool::{default_cap_bytes, HostBufferPool, PinnedMode, PoolConfig};
use pixelfeed_schema::TransformSpec;
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

/// How long `process` waits at the pool's cap for a block to come back
/// before it raises `MemoryError` (see [`PoolConfig::max_wait`]).
const DEFAULT_POOL_WAIT_SECONDS: f64 = 10.0;

/// The engine, its limits, its output pool and its threads.
#[pyclass(module = "pixelfeed_native", frozen)]
struct Engine {
    spec: TransformSpec,
    config: EngineConfig,
    pool: HostBufferPool,
    workers: rayon::ThreadPool,
}

#[pymethods]
impl Engine {
    /// `spec_json`: a transform spec as JSON (the server's `DoExchange`
    /// command; a `ValueError` names the bad field). `threads`: engine
    /// threads (default: one per core). The limits are the server's flags
    /// (`--max-pixels`, `--max-aspect-ratio`, `--max-image-bytes`,
    /// `--max-metadata-bytes`), with the same defaults. `pool_bytes`: cap on
    /// output tensor memory held at once (default as `--pinned-pool-bytes`);
    /// `pinned`: page-lock it through CUDA when a device is present;
    /// `pool_wait_seconds`: how long a batch waits at the cap for memory
    /// still held by earlier batches before `MemoryError`.
    #[new]
    #[pyo3(signature = (spec_json, *, threads=None, max_pixels=None, max_aspect_ratio=None,
        max_image_bytes=None, max_metadata_bytes=None, pool_bytes=None, pinned=true,
        cuda_device=0, pool_wait_seconds=DEFAULT_POOL_WAIT_SECONDS))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        spec_json: &str,
        threads: Option<usize>,
        max_pixels: Option<u64>,
        max_aspect_ratio: Option<f64>,
        max_image_bytes: Option<usize>,
        max_metadata_bytes: Option<usize>,
        pool_bytes: Option<usize>,
        pinned: bool,
        cuda_device: usize,
        pool_wait_seconds: f64,
    ) -> PyResult<Self> {
        let spec = TransformSpec::from_json(spec_json.as_bytes())
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        // A spec this build cannot serve (draft without libjpeg-turbo) fails
        // here, not at the first batch.
        pixelfeed_engine::resolve_spec(&spec).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let defaults = EngineConfig::default();
        let config = EngineConfig {
            max_pixels: max_pixels.unwrap_or(defaults.max_pixels),
            max_aspect_ratio: max_aspect_ratio.unwrap_or(defaults.max_aspect_ratio),
            max_encoded_bytes: max_image_bytes.unwrap_or(defaults.max_encoded_bytes),
            max_metadata_bytes: max_metadata_bytes.unwrap_or(defaults.max_metadata_bytes),
            // The caller's own bytes: an error may quote their first bytes.
            quote_input_bytes: true,
        };
        if config.max_pixels == 0
            || !config.max_aspect_ratio.is_finite()
            || config.max_aspect_ratio < 1.0
        {
            return Err(PyValueError::new_err(
                "max_pixels must be positive and max_aspect_ratio a finite number >= 1",
            ));
        }
        if pool_bytes == Some(0) {
            return Err(PyValueError::new_err("pool_bytes must be positive"));
        }
        let max_wait = Duration::try_from_secs_f64(pool_wait_seconds)
            .map_err(|_| PyValueError::new_err("pool_wait_seconds must be a finite number >= 0"))?;
        let workers = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.unwrap_or(0))
            .thread_name(|i| format!("pixelfeed-engine-{i}"))
            .build()
            .map_err(|e| PyRuntimeError::new_err(format!("could not start the threads: {e}")))?;
        let pool = HostBufferPool::new(PoolConfig {
            cap_bytes: pool_bytes.unwrap_or_else(default_cap_bytes),
            pinned: if pinned {
                PinnedMode::Auto
            } else {
                PinnedMode::Off
            },
            cuda_device,
            max_wait: Some(max_wait),
        });
        Ok(Self {
            spec,
            config,
            pool,
            workers,
        })
    }

    /// The output batch of `batch` (`pyarrow.RecordBatch` with an `image`
    /// binary column): one row per input row, in order. `first_row` is the
    /// position of the batch's first row in its stream; it keys the random
    /// transforms of rows without a `seed` column, as the server keys a
    /// call's rows. Bad images are error rows; a batch that breaks the
    /// contract (no `image` column, a passthrough column named like an
    /// output column) raises `ValueError`, no memory `MemoryError`.
    #[pyo3(signature = (batch, first_row=0))]
    fn process(
        &self,
        py: Python<'_>,
        batch: PyArrowType<RecordBatch>,
        first_row: u64,
    ) -> PyResult<PyArrowType<RecordBatch>> {
        let input = batch.0;
        let out = py.detach(|| {
            self.workers
                .install(|| process_batch(&input, &self.spec, &self.config, &self.pool, first_row))
        });
        match out {
            Ok(out) if out.num_rows() == input.num_rows() => Ok(PyArrowType(out)),
            Ok(out) => Err(PyRuntimeError::new_err(format!(
                "the engine returned {} rows for an input of {}",
                out.num_rows(),
                input.num_rows()
            ))),
            Err(e @ (EngineError::Contract(_) | EngineError::Unsupported(_))) => {
                Err(PyValueError::new_err(e.to_string()))
            }
            Err(e @ EngineError::Allocation(_)) => Err(PyMemoryError::new_err(e.to_string())),
            Err(e) => Err(PyRuntimeError::new_err(e.to_string())),
        }
    }

    /// Engine threads.
    #[getter]
    fn threads(&self) -> usize {
        self.workers.current_num_threads()
    }

    /// The spec, validated and with its preset expanded (canonical JSON).
    #[getter]
    fn spec_json(&self) -> String {
        self.spec.to_json()
    }

    /// Counters as JSON, as the server's `DoAction("stats")`: `pool`
    /// (blocks, bytes, pinned or pageable), `threads`, `decoders`.
    fn stats_json(&self) -> String {
        serde_json::json!({
            "pool": self.pool.stats().to_json(),
            "threads": self.threads(),
            "decoders": pixelfeed_engine::decoders_json(),
        })
        .to_string()
    }
}

/// The module: [`Engine`].
#[pymodule]
fn pixelfeed_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
