//! `pixelfeed serve` flags: plain values, validated, no I/O (files are
//! read and datasets opened in `setup`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use pixelfeed_server::{
    ListenAddr, DEFAULT_LISTEN, DEFAULT_MAX_CONCURRENT_CALLS, DEFAULT_MAX_INPUT_BYTES_IN_FLIGHT,
    DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_ROWS_PER_BATCH, DEFAULT_TARGET_MESSAGE_BYTES,
    DEFAULT_UPLOAD_CAP_BYTES,
};

use super::engine::EngineArgs;
use super::values::{name_uri, positive_usize, seconds};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on: HOST:PORT, or unix:///PATH for a Unix domain
    /// socket (same-host clients; pyarrow dials it as grpc+unix:///PATH).
    /// Port 0 picks a free port; the address actually bound is printed as
    /// `pixelfeed listening on ADDR`.
    #[arg(long, default_value_t = ListenAddr::Tcp(DEFAULT_LISTEN))]
    pub(crate) listen: ListenAddr,

    /// Largest gRPC message accepted from or sent to a client, in bytes.
    /// pyarrow sends each record batch as one message, so this bounds the
    /// size of one input batch.
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_BYTES, value_parser = positive_usize)]
    pub(crate) max_message_bytes: usize,

    /// Approximate size of one output message, in bytes. Larger output
    /// batches are sent as several consecutive slices of whole rows.
    #[arg(long, default_value_t = DEFAULT_TARGET_MESSAGE_BYTES, value_parser = positive_usize)]
    pub(crate) target_message_bytes: usize,

    #[command(flatten)]
    pub(crate) engine: EngineArgs,

    #[command(flatten)]
    pub(crate) datasets: DatasetArgs,

    /// Cap on the output tensor memory pool, in bytes. Producers wait for a
    /// block to come back instead of allocating past it (backpressure).
    /// Default: 1 GiB, or a quarter of RAM if that is smaller.
    #[arg(long, value_parser = positive_usize)]
    pub(crate) pinned_pool_bytes: Option<usize>,

    /// Page-lock (pin) the output pool through the CUDA driver: `auto` pins
    /// when libcuda and a device are present, `off` never touches CUDA.
    #[arg(long, value_enum, default_value_t = PinnedArg::Auto)]
    pub(crate) pinned: PinnedArg,

    /// CUDA device whose context owns the pinned pool.
    #[arg(long, default_value_t = 0)]
    pub(crate) cuda_device: usize,

    #[command(flatten)]
    pub(crate) ops: OpsArgs,
}

/// Security, limits and observability flags of `serve`.
#[derive(Debug, Args)]
pub(crate) struct OpsArgs {
    /// File holding the bearer token every call must carry (surrounding
    /// whitespace ignored). pyarrow clients may instead call
    /// `authenticate_basic_token(any_user, token)`.
    #[arg(long, conflicts_with = "auth_token")]
    pub(crate) auth_token_file: Option<PathBuf>,

    /// The bearer token itself. Prefer the environment variable or
    /// --auth-token-file: command lines are visible to other local users.
    #[arg(long, env = "PIXELFEED_AUTH_TOKEN", hide_env_values = true)]
    pub(crate) auth_token: Option<String>,

    /// File holding the operator token: the administrative calls
    /// (register_dataset, DoPut) need it, and it also admits everything the
    /// user token does. With a user token but no operator token,
    /// administrative calls are refused (PERMISSION_DENIED).
    #[arg(long, conflicts_with = "operator_token")]
    pub(crate) operator_token_file: Option<PathBuf>,

    /// The operator token itself (see --operator-token-file).
    #[arg(long, env = "PIXELFEED_OPERATOR_TOKEN", hide_env_values = true)]
    pub(crate) operator_token: Option<String>,

    /// TLS certificate chain (PEM); serve TLS with --tls-key.
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that client certificates must chain to:
    /// requires every client to present one (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_client_ca: Option<PathBuf>,

    /// Largest number of rows in one input batch; larger batches fail the
    /// call with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = DEFAULT_MAX_ROWS_PER_BATCH, value_parser = positive_usize)]
    pub(crate) max_rows_per_batch: usize,

    /// Largest number of calls in progress at once; more are refused at
    /// once with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = DEFAULT_MAX_CONCURRENT_CALLS, value_parser = positive_usize)]
    pub(crate) max_concurrent_calls: usize,

    /// Longest a call may run, in seconds, streaming included (a client's
    /// earlier deadline wins). Default: no limit.
    #[arg(long, value_parser = seconds)]
    pub(crate) call_timeout: Option<Duration>,

    /// Longest a streaming call (DoExchange, DoPut, DoGet) may make no
    /// progress, in seconds: no input message arrives, the client takes no
    /// output, no batch is being processed. It then ends with CANCELLED and
    /// its slot and buffers come back.
    #[arg(long, default_value = "30", value_parser = seconds)]
    pub(crate) idle_timeout: Duration,

    /// Most encoded input bytes in flight across all calls: messages
    /// received (charged whole from their first bytes) and not yet through
    /// the engine. Calls whose next message does not fit wait in line, and
    /// fail with RESOURCE_EXHAUSTED when nothing is given back for
    /// --idle-timeout. A larger message goes alone.
    #[arg(long, default_value_t = DEFAULT_MAX_INPUT_BYTES_IN_FLIGHT, value_parser = positive_usize)]
    pub(crate) max_input_bytes_in_flight: usize,

    #[command(flatten)]
    pub(crate) connections: ConnectionArgs,

    /// Serve Prometheus metrics at http://ADDR/metrics (off by default;
    /// port 0 picks a free port, announced as `pixelfeed metrics on ADDR`).
    #[arg(long)]
    pub(crate) metrics_listen: Option<SocketAddr>,

    /// How long in-flight calls may take to finish after SIGINT / SIGTERM,
    /// in seconds.
    #[arg(long, default_value = "30", value_parser = seconds)]
    pub(crate) drain_timeout: Duration,
}

/// `serve` flags bounding connections (HTTP/2 level, before any call).
#[derive(Debug, Args)]
pub(crate) struct ConnectionArgs {
    /// Most client connections open at once; more wait in the kernel's
    /// accept backlog.
    #[arg(long, default_value = "1024", value_parser = positive_usize)]
    pub(crate) max_connections: usize,

    /// Most calls in progress on one connection (HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, default_value = "64", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_streams_per_connection: u32,

    /// Seconds a new connection has to start its first call (TLS handshake
    /// and HTTP/2 preface included) before it is closed.
    #[arg(long, default_value = "10", value_parser = seconds)]
    pub(crate) handshake_timeout: Duration,

    /// Seconds a connection may stay open with no call in progress.
    #[arg(long, default_value = "300", value_parser = seconds)]
    pub(crate) connection_idle_timeout: Duration,

    /// Seconds between HTTP/2 keepalive pings to each client; a client
    /// that does not answer one within --keepalive-timeout is dropped.
    #[arg(long, default_value = "30", value_parser = seconds)]
    pub(crate) keepalive_interval: Duration,

    /// Seconds to wait for a keepalive ping's answer.
    #[arg(long, default_value = "20", value_parser = seconds)]
    pub(crate) keepalive_timeout: Duration,
}

/// `serve` flags for server-side datasets.
#[derive(Debug, Args)]
pub(crate) struct DatasetArgs {
    /// Register a dataset: NAME=URI, URI being [dir:|parquet:|tar:]PATH with
    /// optional ?glob=PATTERN (dir, tar) or ?column=NAME (parquet).
    /// Repeatable.
    #[arg(long = "dataset", value_name = "NAME=URI", value_parser = name_uri)]
    pub(crate) datasets: Vec<(String, String)>,

    /// Another server with the same datasets (grpc://HOST:PORT).
    /// GetFlightInfo spreads shard endpoints round-robin over this server
    /// and its peers. Repeatable.
    #[arg(long = "peer", value_name = "URL")]
    pub(crate) peers: Vec<String>,

    /// The URL peers and clients reach this server at, put in endpoint
    /// locations. Default: grpc://ADDR of the bound address (none when
    /// listening on an unspecified address such as 0.0.0.0).
    #[arg(long, value_name = "URL")]
    pub(crate) advertise: Option<String>,

    /// Most bytes all DoPut uploads together may hold (Arrow data size, in
    /// memory or in --spill-dir); past it an upload fails with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = DEFAULT_UPLOAD_CAP_BYTES, value_parser = positive_usize)]
    pub(crate) upload_cap_bytes: usize,

    /// Write DoPut uploads here as Parquet (NAME.parquet) instead of keeping
    /// them in memory. Files the server did not write are never
    /// overwritten.
    #[arg(long, value_name = "DIR")]
    pub(crate) spill_dir: Option<PathBuf>,

    /// Allow the register_dataset action (operator token) to open sources
    /// under DIR: paths are resolved (.., symlinks, also of files inside a
    /// directory) and refused with PERMISSION_DENIED outside every root.
    /// Repeatable. Without it, run-time registration is off; --dataset
    /// sources are not confined.
    #[arg(long = "dataset-root", value_name = "DIR")]
    pub(crate) dataset_roots: Vec<PathBuf>,
}

/// `--pinned` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PinnedArg {
    Auto,
    Off,
}
