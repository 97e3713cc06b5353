//! GPU upload of received tensor batches (cargo feature `cuda`).
//!
//! Key types: [`DeviceUploader`] and [`DeviceBatch`].
//!
//! Bytes received over Flight sit in ordinary (pageable) memory, which the
//! GPU cannot DMA from asynchronously. The uploader copies each batch's tensor
//! values into one of two page-locked staging blocks, then enqueues an async
//! host-to-device copy on its own CUDA stream and returns at once. While the
//! GPU copies batch N from staging block N % 2, the CPU fills the other block
//! with batch N+1; a block is only overwritten after the event recorded behind
//! its previous copy has completed. Blocks only grow, so the varying row
//! counts of the server's messages do not re-pin memory.
//!
//! The staging blocks are allocated write-combined (cudarc's default for
//! pinned memory): the CPU only ever writes them, and write-combined memory
//! makes those writes and the PCIe reads faster. (The server's output pool
//! avoids write-combining because its IPC encoder reads the blocks.)
//!
//! libcuda is loaded at run time; [`DeviceUploader::new`] returns
//! [`UploadError::NoCuda`] instead of panicking where it is missing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::types::{Float16Type, Float32Type, UInt16Type, UInt8Type};
use arrow_array::{cast::AsArray, Array, RecordBatch};
use arrow_schema::DataType;
use cudarc::driver::{
    result as cuda_result, sys as cusys, CudaContext, CudaEvent, CudaSlice, CudaStream,
    DevicePtrMut, DriverError, PinnedHostSlice,
};
use pixelfeed_schema::{columns, FixedShapeTensorMetadata, DTYPE_METADATA_KEY};

/// Why an upload could not happen.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// No usable CUDA driver or device.
    #[error("CUDA unavailable: {0}")]
    NoCuda(String),
    /// A CUDA driver call failed.
    #[error("CUDA error: {0}")]
    Driver(#[from] DriverError),
    /// The batch has no well-formed `tensor` column.
    #[error("batch has no usable tensor column: {0}")]
    NotATensorBatch(String),
}

/// Element type of an uploaded tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceDType {
    /// 32-bit float.
    Float32,
    /// IEEE half precision.
    Float16,
    /// bfloat16 (uint16 bits on the wire, marked `pixelfeed.dtype: bfloat16`).
    BFloat16,
    /// 8-bit unsigned integer.
    UInt8,
}

impl DeviceDType {
    /// Size in bytes of one element.
    pub fn size(self) -> usize {
        match self {
            DeviceDType::Float32 => 4,
            DeviceDType::Float16 | DeviceDType::BFloat16 => 2,
            DeviceDType::UInt8 => 1,
        }
    }
}

/// One tensor batch in GPU memory. The copy may still be in flight: call
/// [`DeviceBatch::wait_on`] with the consumer's stream (or
/// [`DeviceBatch::synchronize`]) before reading `data` elsewhere.
pub struct DeviceBatch {
    /// The tensor bytes, rows back to back (failed rows are zero-filled).
    pub data: CudaSlice<u8>,
    /// `[rows, ...per-row shape]`.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DeviceDType,
    /// Per row: whether the server produced a tensor (false = error row).
    pub valid: Vec<bool>,
    ready: CudaEvent,
}

impl DeviceBatch {
    /// Makes `stream` wait (on the GPU, without blocking the CPU) until this
    /// batch's copy has landed.
    pub fn wait_on(&self, stream: &CudaStream) -> Result<(), UploadError> {
        Ok(stream.wait(&self.ready)?)
    }

    /// Blocks the CPU until the copy has landed.
    pub fn synchronize(&self) -> Result<(), UploadError> {
        Ok(self.ready.synchronize()?)
    }

    /// Size of the tensor data in bytes.
    pub fn num_bytes(&self) -> usize {
        self.data.len()
    }
}

/// Counters of an uploader's work.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UploadStats {
    /// Batches uploaded.
    pub batches: u64,
    /// Rows uploaded.
    pub rows: u64,
    /// Bytes copied host → device.
    pub bytes: u64,
    /// CPU time spent filling staging blocks (includes waiting for a block's
    /// previous copy to finish).
    pub staging_time: Duration,
}

/// One pinned staging block and the event recorded behind the last copy out
/// of it.
struct Staging {
    host: PinnedHostSlice<u8>,
    copied: Option<CudaEvent>,
}

/// Double-buffered, pinned-staging host → device copier.
pub struct DeviceUploader {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    staging: [Option<Staging>; 2],
    next: usize,
    stats: UploadStats,
}

impl DeviceUploader {
    /// Opens device `ordinal` with its own copy stream. Checks for libcuda and
    /// the device count first (cudarc panics if libcuda is absent).
    pub fn new(ordinal: usize) -> Result<Self, UploadError> {
        // SAFETY: only tries to dlopen libcuda.
        if !unsafe { cusys::is_culib_present() } {
            return Err(UploadError::NoCuda("no CUDA driver (libcuda) found".into()));
        }
        let count = CudaContext::device_count()?;
        if ordinal >= count.max(0) as usize {
            return Err(UploadError::NoCuda(format!(
                "device {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal)?;
        let stream = ctx.new_stream()?;
        Ok(Self {
            ctx,
            stream,
            staging: [None, None],
            next: 0,
            stats: UploadStats::default(),
        })
    }

    /// The CUDA context the uploads live in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream the copies are enqueued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Counters so far.
    pub fn stats(&self) -> UploadStats {
        self.stats
    }

    /// Copies `batch`'s tensor column into pinned staging and enqueues the
    /// host → device copy; returns without waiting for the copy.
    pub fn upload(&mut self, batch: &RecordBatch) -> Result<DeviceBatch, UploadError> {
        let host = HostTensor::from_batch(batch)?;
        let n = host.bytes.len();
        let started = Instant::now();
        let slot = &mut self.staging[self.next];
        if let Some(previous) = slot.as_mut().and_then(|s| s.copied.take()) {
            // The copy out of this block (two uploads ago) must have finished
            // before the CPU overwrites it.
            previous.synchronize()?;
        }
        // Blocks only grow: the server splits batches into messages of
        // varying row counts, and re-pinning memory per size is slow.
        if slot.as_ref().is_none_or(|s| s.host.len() < n) {
            *slot = None;
            // SAFETY: bytes are written below before the copy reads them.
            let host = unsafe { self.ctx.alloc_pinned::<u8>(n.max(1)) }?;
            *slot = Some(Staging { host, copied: None });
        }
        let staging = slot.as_mut().expect("slot filled above");
        let pinned = &mut staging.host.as_mut_slice()?[..n];
        pinned.copy_from_slice(host.bytes);
        self.stats.staging_time += started.elapsed();
        // SAFETY: the device buffer is fully written by the copy below before
        // anyone can observe it (readers wait on `ready`).
        let mut data = unsafe { self.stream.alloc::<u8>(n.max(1)) }?;
        {
            let (device_ptr, _record) = data.device_ptr_mut(&self.stream);
            // SAFETY: `pinned` is page-locked, lives in `self.staging` until
            // `copied` has completed (checked before reuse or on drop), and
            // `data` was allocated on this stream with at least `n` bytes.
            // cudarc's safe `memcpy_htod` would copy the whole staging block.
            unsafe { cuda_result::memcpy_htod_async(device_ptr, pinned, self.stream.cu_stream()) }?;
        }
        let ready = self.stream.record_event(None)?;
        staging.copied = Some(self.stream.record_event(None)?);
        self.next ^= 1;
        self.stats.batches += 1;
        self.stats.rows += host.valid.len() as u64;
        self.stats.bytes += n as u64;
        Ok(DeviceBatch {
            data,
            shape: host.shape,
            dtype: host.dtype,
            valid: host.valid,
            ready,
        })
    }
}

impl Drop for DeviceUploader {
    fn drop(&mut self) {
        // Staging memory must outlive the copies reading it.
        let _ = self.stream.synchronize();
    }
}

/// The tensor column of a batch as raw bytes plus shape.
struct HostTensor<'a> {
    bytes: &'a [u8],
    shape: Vec<usize>,
    dtype: DeviceDType,
    valid: Vec<bool>,
}

impl<'a> HostTensor<'a> {
    fn from_batch(batch: &'a RecordBatch) -> Result<Self, UploadError> {
        let bad = |m: String| UploadError::NotATensorBatch(m);
        let schema = batch.schema_ref();
        let field = schema
            .field_with_name(columns::TENSOR)
            .map_err(|_| bad("no column named \"tensor\"".into()))?;
        let meta = FixedShapeTensorMetadata::from_field(field)
            .ok_or_else(|| bad("not tagged arrow.fixed_shape_tensor".into()))?
            .map_err(|e| bad(e.to_string()))?;
        let column = batch
            .column_by_name(columns::TENSOR)
            .ok_or_else(|| bad("no column named \"tensor\"".into()))?;
        let list = column.as_fixed_size_list_opt().ok_or_else(|| {
            bad(format!(
                "tensor column is {}, not a fixed-size list",
                column.data_type()
            ))
        })?;
        let per_row = list.value_length() as usize;
        let dtype = match list.value_type() {
            DataType::Float32 => DeviceDType::Float32,
            DataType::Float16 => DeviceDType::Float16,
            DataType::UInt16
                if field.metadata().get(DTYPE_METADATA_KEY).map(String::as_str)
                    == Some("bfloat16") =>
            {
                DeviceDType::BFloat16
            }
            DataType::UInt8 => DeviceDType::UInt8,
            other => return Err(bad(format!("unsupported element type {other}"))),
        };
        let rows = list.len();
        // A sliced list shares its parent's values; `values()` is already
        // narrowed to this slice's rows, and its scalar buffer to its bytes.
        let values = list.values();
        let buffer = match dtype {
            DeviceDType::Float32 => values.as_primitive::<Float32Type>().values().inner(),
            DeviceDType::Float16 => values.as_primitive::<Float16Type>().values().inner(),
            DeviceDType::BFloat16 => values.as_primitive::<UInt16Type>().values().inner(),
            DeviceDType::UInt8 => values.as_primitive::<UInt8Type>().values().inner(),
        };
        let len = rows * per_row * dtype.size();
        let bytes = buffer
            .as_slice()
            .get(..len)
            .ok_or_else(|| bad("values buffer shorter than the rows it claims".into()))?;
        let mut shape = Vec::with_capacity(meta.shape.len() + 1);
        shape.push(rows);
        shape.extend_from_slice(&meta.shape);
        let valid = (0..rows).map(|i| list.is_valid(i)).collect();
        Ok(Self {
            bytes,
            shape,
            dtype,
            valid,
        })
    }
}
