//! pixelfeed server library.
//!
//! - [`engine`] — decode → orient → resize/crop → dtype/layout/normalise,
//!   from a record batch of encoded images to a record batch of tensors.
//!   Knows nothing of Flight. Entry point: [`engine::process_batch`].
//! - [`flight`] — the Arrow Flight service ([`flight::PixelfeedService`])
//!   that streams batches through the engine. Knows nothing of pixel math.
//! - [`dataset`] — server-side dataset sources (directory, Parquet,
//!   WebDataset tar, uploads) read in bounded batches; knows nothing of
//!   Flight.
//! - [`convert`] — offline conversion of a dataset into Parquet / Arrow IPC
//!   tensor shards (`pixelfeed convert`).
//! - [`pool`] — [`pool::HostBufferPool`], the bounded, recycling (CUDA-pinned
//!   when possible) host memory the engine writes output tensors into.
//!
//! The `pixelfeed` binary (`src/main.rs`) is a thin CLI shell over these.

pub mod convert;
pub mod dataset;
pub mod engine;
pub mod flight;
pub mod pool;
