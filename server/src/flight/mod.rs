//! The Arrow Flight service: streams record batches through the engine.
//!
//! Wire contract v1 (`DoExchange`):
//! 1. the first message's flight descriptor is a CMD holding the transform
//!    spec JSON ([`pixelfeed_schema::TransformSpec::from_json`]); a bad or
//!    missing spec fails the call with `InvalidArgument` naming the field;
//! 2. the client streams an IPC schema, then record batches with an `image`
//!    column; messages with neither header nor body (pyarrow's
//!    descriptor-only opener) are skipped;
//! 3. the server answers with
//!    [`output_schema`](pixelfeed_schema::output_schema) (sent even when no
//!    rows follow), then, per input batch in input order, the output rows,
//!    possibly cut into several consecutive messages of whole rows of about
//!    [`ServiceConfig::target_message_bytes`] each.
//!
//! Key items: [`PixelfeedService`] (the tonic service), [`ServiceConfig`] /
//! [`ServerConfig`] (how it runs), [`serve_with_shutdown`] (run it on a
//! listener), [`spawn_loopback`] (a background server for tests and
//! benches), [`ACTIONS`] (the `DoAction` table).
//!
//! Security and limits: [`Guarded`] wraps every Flight call (bearer token
//! from [`auth`], [`CallLimits`], per-call span and [`metrics`]); TLS comes
//! from [`TlsConfig`]; the gRPC health service shares the port.
//!
//! Status codes: contract violations (bad spec, no `image` column, wrong
//! type, schema change) are `InvalidArgument`; an output block the
//! allocator cannot provide, a batch over `max_rows_per_batch` and a call
//! over `max_concurrent_calls` are `ResourceExhausted`; missing or wrong
//! credentials are `Unauthenticated`; a call past its deadline is
//! `DeadlineExceeded`; other RPCs are
//! `Unimplemented`. Client input never panics the server: engine panics are
//! caught on the blocking thread and become `Internal`.

mod actions;
pub mod auth;
mod config;
mod datasets;
mod exchange;
mod guard;
pub mod metrics;
mod server;
mod service;
mod split;
mod tickets;

pub use actions::{ActionDef, ACTIONS};
pub use auth::{AuthError, AuthToken};
pub use config::{
    CallLimits, ServerConfig, ServiceConfig, TlsConfig, DEFAULT_LISTEN,
    DEFAULT_MAX_CONCURRENT_CALLS, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_ROWS_PER_BATCH,
    DEFAULT_TARGET_MESSAGE_BYTES,
};
pub use datasets::{dataset_status, DatasetsConfig, DEFAULT_UPLOAD_CAP_BYTES};
pub use exchange::{engine_status, FlightDataStream, PIPELINE_DEPTH};
pub use guard::{grpc_timeout, Guarded};
pub use metrics::{serve_metrics, Metrics};
pub use server::{
    bind, check_config, flight_service, serve_with_shutdown, spawn_loopback, LoopbackServer,
    ServerError,
};
pub use service::PixelfeedService;
pub use split::{batch_data_bytes, split_rows};
pub use tickets::{InfoRequest, ShardTicket, MAX_SHARDS, TICKET_VERSION};
