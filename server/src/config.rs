//! Configuration of the Flight service and of the server that hosts it:
//! every config type lives here, so the RPC modules depend on this one and
//! never on each other.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use pixelfeed_data::upload::UploadLedger;
use pixelfeed_data::{DatasetRegistry, DatasetRoots, ReadOptions};
use pixelfeed_engine::{BlockAllocator, EngineConfig, HeapAllocator};

use crate::auth::AuthToken;
use crate::listen::ListenAddr;
use crate::metrics::Metrics;

/// Default address `pixelfeed serve` listens on.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8815);

/// Default largest gRPC message the server accepts or sends (256 MiB).
///
/// tonic's own receive default is 4 MiB, but pyarrow sends every record
/// batch as a single message, so a batch of a few dozen JPEGs already exceeds
/// it.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Default size the server aims for when it splits an output batch into
/// several messages (4 MiB).
///
/// A message waits whole, as an encoded copy, for a reader that is slow to
/// take it, so this bounds the output each call holds beside the pool: at
/// 16 MiB, 32 and 128 clients of `bench/rss.py` held 236–239 MiB of such
/// copies, at 4 MiB 95–100 MiB, at 0.98–1.0 of the images/s.
pub const DEFAULT_TARGET_MESSAGE_BYTES: usize = 4 << 20;

/// Default cap on rows in one input batch.
pub const DEFAULT_MAX_ROWS_PER_BATCH: usize = 8192;

/// Default cap on Flight calls in progress at once.
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 256;

/// Per-call limits enforced by the service (see the README's Operations
/// section for the defaults and why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Largest number of rows in one input batch; a larger batch fails the
    /// call with `RESOURCE_EXHAUSTED` before it reaches the engine (one
    /// batch is one output block, so this bounds a block's size).
    pub max_rows_per_batch: usize,
    /// Largest number of calls in progress at once; one more is refused at
    /// once with `RESOURCE_EXHAUSTED` (never queued).
    pub max_concurrent_calls: usize,
    /// Longest a call may run, streaming included; the client's own
    /// `grpc-timeout`, when earlier, wins. `None`: no server-side limit.
    pub call_timeout: Option<Duration>,
    /// Most bytes of encoded images one input batch may hold, counting a
    /// value each time a row names it (binary views can share data, so a
    /// small message could otherwise ask for unbounded decoding work).
    /// `RESOURCE_EXHAUSTED` past it. The CLI sets it to
    /// `--max-message-bytes`: no more than one plain message could carry.
    pub max_batch_image_bytes: usize,
    /// Longest a streaming call (`DoExchange`, `DoPut`, `DoGet`) may make
    /// no progress — no input message completed, no output message taken
    /// by the client, no batch in the engine — before it is ended
    /// (`CANCELLED`): its call slot, pool blocks and buffers come back even
    /// when the client neither sends nor reads. A first message counts, so
    /// a call that sends only headers ends after this long too.
    pub idle_timeout: Duration,
    /// Most encoded input bytes in flight across all calls: messages being
    /// received (each charged whole when its gRPC length prefix arrives)
    /// and not yet through the engine. A call whose next message does not
    /// fit waits in line, first come first served (its client is held back
    /// by HTTP/2 flow control), and fails with `RESOURCE_EXHAUSTED` when
    /// nothing is given back for [`Self::idle_timeout`]. A call that owes
    /// its client output is admitted over the cap (see the server's
    /// `budget` module). A message larger than the cap (up to
    /// [`ServerConfig::max_message_bytes`]) goes alone.
    pub max_input_bytes_in_flight: usize,
}

/// Default [`CallLimits::idle_timeout`]: long enough for a slow reader or
/// a large upload on a slow link, short enough that stuck calls free their
/// slots within a minute.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default [`CallLimits::max_input_bytes_in_flight`]: 64 MiB, four 15 MB
/// messages of 32 four-megapixel JPEGs, about 18 of 32 ImageNet-sized
/// ones. The engine runs one batch at a time on all its threads, so a few
/// queued messages keep it busy; more only queue. With clients that keep
/// one batch in flight per call (the Python client), `bench/rss.py
/// --clients N --pool-mib 256` gave the same images/s with 64 MiB as with
/// 256 MiB and clients two batches ahead (1.0–1.04), every client its
/// first rows within one round, and 270 / 386 / 558 MiB of peak RSS at 8 /
/// 32 / 128 clients against 478 / 722 / 815 (where 13 of 32 clients got no
/// rows until the others stopped); 256 / 300 / 334 MiB once output was
/// framed outside tonic's encoder (`outbox`). Clients that write ahead of their reads
/// keep their place under a full budget ([`crate::budget`]); for them a
/// larger budget only moves the point where late calls wait.
pub const DEFAULT_MAX_INPUT_BYTES_IN_FLIGHT: usize = 64 << 20;

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            max_rows_per_batch: DEFAULT_MAX_ROWS_PER_BATCH,
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            call_timeout: None,
            max_batch_image_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_input_bytes_in_flight: DEFAULT_MAX_INPUT_BYTES_IN_FLIGHT,
        }
    }
}

/// Limits on connections, below the calls they carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once; more wait in the kernel's accept
    /// backlog until one closes.
    pub max_connections: usize,
    /// Most calls (HTTP/2 streams) in progress on one connection, the gRPC
    /// health service's `Watch` included.
    pub max_streams_per_connection: u32,
    /// A connection that has made no call this long after it was accepted
    /// (no HTTP/2 preface, a stalled TLS handshake) is closed.
    pub handshake_timeout: Duration,
    /// A connection with no call in progress for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 keepalive: the server pings a connection this often and
    /// closes it when a ping goes unanswered for [`Self::keepalive_timeout`]
    /// (a peer that vanished without closing its socket).
    pub keepalive_interval: Duration,
    /// See [`Self::keepalive_interval`].
    pub keepalive_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_streams_per_connection: 64,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// How one `PixelfeedService` processes requests: engine limits, where
/// tensor bytes are allocated, and how output is cut into messages.
///
/// Start from [`ServiceConfig::default`] and set the fields that differ
/// (`ServiceConfig { limits, ..Default::default() }`).
#[derive(Clone)]
pub struct ServiceConfig {
    /// Limits applied to every image.
    pub engine: EngineConfig,
    /// Approximate upper bound on the Arrow data in one output message.
    /// Output batches larger than this are sent as several consecutive
    /// slices of whole rows; a single row larger than this is still sent
    /// (alone). Values below 1 are treated as 1.
    pub target_message_bytes: usize,
    /// Where output tensor blocks come from (heap by default; a pinned host
    /// pool plugs in here).
    pub allocator: Arc<dyn BlockAllocator>,
    /// The user token: every call must carry it (or the operator token);
    /// `None`: the data plane is open (see [`crate::auth`]).
    pub auth_token: Option<AuthToken>,
    /// The operator token, needed for administrative calls
    /// (`register_dataset`, `DoPut`); `None`: those need no token when
    /// `auth_token` is also `None`, and are refused otherwise.
    pub operator_token: Option<AuthToken>,
    /// Row, concurrency and time limits per call.
    pub limits: CallLimits,
    /// Where the service counts what it does (served by
    /// [`serve_metrics`](crate::serve_metrics) when enabled).
    pub metrics: Arc<Metrics>,
    /// Server-side datasets (`GetFlightInfo` / `DoGet` / `DoPut`).
    pub datasets: DatasetsConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            target_message_bytes: DEFAULT_TARGET_MESSAGE_BYTES,
            allocator: Arc::new(HeapAllocator),
            auth_token: None,
            operator_token: None,
            limits: CallLimits::default(),
            metrics: Arc::default(),
            datasets: DatasetsConfig::default(),
        }
    }
}

impl fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The allocator is a trait object without Debug; name it only.
        f.debug_struct("ServiceConfig")
            .field("engine", &self.engine)
            .field("target_message_bytes", &self.target_message_bytes)
            .field("allocator", &"dyn BlockAllocator")
            .field("auth_token", &self.auth_token)
            .field("operator_token", &self.operator_token)
            .field("limits", &self.limits)
            .field("datasets", &self.datasets)
            .finish_non_exhaustive()
    }
}

/// The server's TLS identity (PEM), and the CA that client certificates
/// must chain to for mutual TLS. `Debug` does not show the key.
#[derive(Clone)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
    /// CA certificates (PEM) for client certificates; `Some` requires every
    /// client to present one (mutual TLS).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish()
    }
}

impl TlsConfig {
    /// tonic's server TLS settings.
    pub fn server_tls_config(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca_pem {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        tls
    }
}

/// Everything needed to run a pixelfeed Flight server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind (TCP or a Unix socket). Used by callers that bind
    /// their own listener (the CLI);
    /// [`serve_with_shutdown`](crate::serve_with_shutdown) takes an
    /// already-bound listener.
    pub listen: ListenAddr,
    /// Largest gRPC message accepted from or sent to a client, in bytes.
    pub max_message_bytes: usize,
    /// How requests are processed.
    pub service: ServiceConfig,
    /// Serve over TLS (`None`: plaintext h2c).
    pub tls: Option<TlsConfig>,
    /// Connection counts and time limits.
    pub connections: ConnectionLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: ListenAddr::Tcp(DEFAULT_LISTEN),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            service: ServiceConfig::default(),
            tls: None,
            connections: ConnectionLimits::default(),
        }
    }
}

impl ServerConfig {
    /// A warning to print when `addr` is reachable from other hosts while
    /// the server has no token or no TLS (anyone on the network could use
    /// it, or read the images and the token). Loopback and Unix sockets are
    /// local.
    pub fn exposure_warning(&self, addr: &ListenAddr) -> Option<String> {
        if addr.is_local() {
            return None;
        }
        let missing: Vec<&str> = [
            self.service
                .auth_token
                .is_none()
                .then_some("authentication (--auth-token-file)"),
            self.tls.is_none().then_some("TLS (--tls-cert/--tls-key)"),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "listening on {addr}, which other hosts can reach, WITHOUT {}",
                missing.join(" and WITHOUT ")
            )
        })
    }
}

/// Default [`DatasetsConfig::uploads`] cap: all uploads together.
pub const DEFAULT_UPLOAD_CAP_BYTES: usize = 1 << 30;

/// How the service offers datasets.
#[derive(Debug, Clone)]
pub struct DatasetsConfig {
    /// The named datasets (shared, registrable while serving).
    pub registry: Arc<DatasetRegistry>,
    /// This server's own URL (`grpc://host:port`) for endpoint locations;
    /// `None` leaves it out (endpoints then name only the peers, or no
    /// location at all, which Flight reads as "this server").
    pub location: Option<String>,
    /// Other servers with the same datasets; endpoints rotate over this
    /// server and them.
    pub peers: Vec<String>,
    /// How dataset reads are cut into engine batches.
    pub read: ReadOptions,
    /// What all uploaded datasets together may hold (Arrow data bytes, in
    /// memory or spilled).
    pub uploads: Arc<UploadLedger>,
    /// Where uploads are written as Parquet instead of kept in memory.
    pub spill_dir: Option<PathBuf>,
    /// The directories `register_dataset` may open sources under; `None`:
    /// run-time registration is off (`PERMISSION_DENIED`). Datasets the
    /// operator registers at start-up are not confined.
    pub roots: Option<DatasetRoots>,
}

impl Default for DatasetsConfig {
    fn default() -> Self {
        Self {
            registry: Arc::new(DatasetRegistry::new()),
            location: None,
            peers: Vec::new(),
            read: ReadOptions::default(),
            uploads: UploadLedger::new(DEFAULT_UPLOAD_CAP_BYTES),
            spill_dir: None,
            roots: None,
        }
    }
}

impl DatasetsConfig {
    /// The locations of endpoint `i`: this server and the peers, rotated so
    /// that consecutive endpoints start on consecutive servers.
    pub(crate) fn locations(&self, i: usize) -> Vec<String> {
        let all: Vec<&String> = self.location.iter().chain(&self.peers).collect();
        if all.is_empty() {
            return Vec::new();
        }
        let first = i % all.len();
        all[first..]
            .iter()
            .chain(&all[..first])
            .map(|s| (*s).clone())
            .collect()
    }
}
