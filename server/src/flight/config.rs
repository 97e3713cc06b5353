//! Configuration of the Flight service and of the server that hosts it.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use super::datasets::DatasetsConfig;
use crate::engine::{BlockAllocator, EngineConfig, HeapAllocator};

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
/// several messages (16 MiB).
pub const DEFAULT_TARGET_MESSAGE_BYTES: usize = 16 << 20;

/// How one `PixelfeedService` processes requests: engine limits, where
/// tensor bytes are allocated, and how output is cut into messages.
///
/// Build it with [`ServiceConfig::default`] and the `with_*` methods.
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
    /// Server-side datasets (`GetFlightInfo` / `DoGet` / `DoPut`).
    pub datasets: DatasetsConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            target_message_bytes: DEFAULT_TARGET_MESSAGE_BYTES,
            allocator: Arc::new(HeapAllocator),
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
            .field("datasets", &self.datasets)
            .finish()
    }
}

impl ServiceConfig {
    /// Replaces the engine limits.
    pub fn with_engine(mut self, engine: EngineConfig) -> Self {
        self.engine = engine;
        self
    }

    /// Replaces the target output message size.
    pub fn with_target_message_bytes(mut self, bytes: usize) -> Self {
        self.target_message_bytes = bytes;
        self
    }

    /// Replaces the dataset configuration.
    pub fn with_datasets(mut self, datasets: DatasetsConfig) -> Self {
        self.datasets = datasets;
        self
    }

    /// Replaces the tensor block allocator.
    pub fn with_allocator(mut self, allocator: Arc<dyn BlockAllocator>) -> Self {
        self.allocator = allocator;
        self
    }
}

/// Everything needed to run a pixelfeed Flight server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind. Used by callers that bind their own listener (the
    /// CLI); [`serve_with_shutdown`](super::serve_with_shutdown) takes an
    /// already-bound listener and [`spawn_loopback`](super::spawn_loopback)
    /// always binds `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// Largest gRPC message accepted from or sent to a client, in bytes.
    pub max_message_bytes: usize,
    /// How requests are processed.
    pub service: ServiceConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            service: ServiceConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Replaces the listen address.
    pub fn with_listen(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }

    /// Replaces the gRPC message size limit.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Replaces the service configuration.
    pub fn with_service(mut self, service: ServiceConfig) -> Self {
        self.service = service;
        self
    }
}
