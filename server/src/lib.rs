//! pixelfeed's Arrow Flight server: streams record batches through the
//! engine (`pixelfeed-engine`) and serves datasets (`pixelfeed-data`).
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
//! Key items: [`PixelfeedService`] (the tonic service, to mount in a tonic
//! server of your own), [`ServiceConfig`] / [`ServerConfig`] (how it
//! runs), [`serve_with_shutdown`] / [`serve_until_stopped`] (run it on a
//! [`Listener`], TCP or a Unix socket, with the health service, TLS and
//! the drain policy).
//!
//! Code map: `service` routes each RPC to its module under `rpc/`
//! (`exchange`, `get`, `put`, `info`, `actions`); all streaming RPCs share
//! `stream` (engine on the blocking pool, output split by `split`, status
//! mapping); `guard` wraps every call (`auth`, limits, span, `metrics`,
//! the input budget in `budget`, input messages assembled by `assemble`,
//! output messages framed by `outbox`);
//! `config` holds every config type; `serve` hosts it on a `listen`
//! address, accepting through `conn`.
//!
//! API boundary: no pixel math here (the engine crate has it), and no
//! CLI: flags, signals and logging set-up live in `pixelfeed-cli`.
//!
//! Security and limits: the call guard wraps every Flight call (bearer
//! token, [`CallLimits`], per-call span and [`Metrics`]); TLS comes from
//! [`TlsConfig`]; the gRPC health service shares the port.
//!
//! Status codes: contract violations (bad spec, no `image` column, wrong
//! type, schema change) are `InvalidArgument`; an output block the
//! allocator cannot provide, a batch over `max_rows_per_batch` and a call
//! over `max_concurrent_calls` are `ResourceExhausted`; missing or wrong
//! credentials are `Unauthenticated`; a call past its deadline is
//! `DeadlineExceeded`; other RPCs are
//! `Unimplemented`. Client input never panics the server: engine panics are
//! caught on the blocking thread and become `Internal`.

mod assemble;
mod auth;
mod budget;
mod config;
mod conn;
mod guard;
mod listen;
mod metrics;
mod outbox;
mod rpc;
mod serve;
mod service;
mod split;
mod stream;
mod watch;

pub use auth::{AuthError, AuthToken, Role};
pub use config::{
    CallLimits, ConnectionLimits, DatasetsConfig, ServerConfig, ServiceConfig, TlsConfig,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_CONCURRENT_CALLS,
    DEFAULT_MAX_INPUT_BYTES_IN_FLIGHT, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_ROWS_PER_BATCH,
    DEFAULT_TARGET_MESSAGE_BYTES, DEFAULT_UPLOAD_CAP_BYTES,
};
pub use listen::{InvalidListenAddr, ListenAddr, Listener, SocketFile};
pub use metrics::{serve_metrics, Metrics};
pub use serve::{
    advertised_location, bind, check_config, serve_until_stopped, serve_with_shutdown, ServerError,
    Stopped,
};
pub use service::PixelfeedService;
pub use stream::{FlightDataStream, PIPELINE_DEPTH};
