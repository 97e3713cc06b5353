//! Async Rust client for the pixelfeed Arrow Flight service.
//!
//! - [`Client`] — connects (`Client::connect("grpc://127.0.0.1:8815")`) and
//!   runs the calls: [`Client::exchange`] streams record batches with an
//!   `image` column through a transform spec and yields tensor batches
//!   ([`ExchangeStream`]); [`Client::preprocess`] does the same for a slice
//!   of encoded images; [`Client::exchange_ordered`] and
//!   [`Client::preprocess_ordered`] run several calls at once (all the
//!   server's cores busy) with outputs in input order ([`OrderedStream`]); [`Client::dataset_shards`] and
//!   [`Client::read_shard`] read datasets the server holds;
//!   [`Client::presets`] and [`Client::health`] are the server's actions.
//! - [`IntoSpecJson`] — what can be passed as a spec: JSON text, a
//!   `serde_json::Value`, or a [`TransformSpec`].
//! - [`TensorBatch`] — typed views of an output batch: [`TensorBatch::shape`],
//!   [`TensorBatch::as_f32`] / [`TensorBatch::as_u8`] over all rows,
//!   per-row [`TensorBatch::row_f32`], [`TensorBatch::is_valid`] and
//!   [`TensorBatch::error`].
//! - [`ClientError`] — every failure; server errors keep their gRPC code
//!   ([`ClientError::code`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), pixelfeed_client::ClientError> {
//! use pixelfeed_client::{Client, TensorBatch};
//!
//! let client = Client::connect("grpc://127.0.0.1:8815").await?;
//! let jpeg: Vec<u8> = std::fs::read("cat.jpg").unwrap();
//! let batches = client
//!     .preprocess(vec![jpeg], r#"{"preset": "imagenet"}"#, 64)
//!     .await?;
//! for batch in &batches {
//!     let tensors = TensorBatch::try_from(batch)?;
//!     assert_eq!(tensors.shape(), [3, 224, 224]);
//!     let pixels: &[f32] = tensors.as_f32().unwrap();
//!     # let _ = pixels;
//! }
//! # Ok(())
//! # }
//! ```

mod client;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
mod input;
mod ordered;
mod spec;
mod tensor;

pub use client::{
    Client, ClientOptions, ExchangeStream, DEFAULT_MAX_DECODING_MESSAGE_SIZE,
    DEFAULT_MAX_ENCODING_MESSAGE_SIZE,
};
pub use error::ClientError;
pub use input::{image_batch, image_batches, image_schema};
pub use ordered::{default_streams, OrderedStream};
pub use pixelfeed_schema::TransformSpec;
pub use spec::IntoSpecJson;
pub use tensor::TensorBatch;
