//! From flags to library configuration: the only place that reads the
//! token and TLS files, opens `--dataset`s and starts the worker pool.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use pixelfeed_data::convert::{ConvertOptions, OutputFormat};
use pixelfeed_data::upload::UploadLedger;
use pixelfeed_data::{DatasetRoots, ReadOptions};
use pixelfeed_engine::EngineConfig;
use pixelfeed_pool::{default_cap_bytes, HostBufferPool, PinnedMode, PoolConfig};
use pixelfeed_schema::{TransformSpec, DEFAULT_PRESET};
use pixelfeed_server::{
    AuthToken, CallLimits, ConnectionLimits, DatasetsConfig, ServerConfig, ServiceConfig, TlsConfig,
};

use crate::flags::{
    ConnectionArgs, ConvertArgs, DatasetArgs, EngineArgs, FormatArg, OpsArgs, PinnedArg, ServeArgs,
};

impl EngineArgs {
    pub(crate) fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            max_pixels: self.max_pixels,
            max_aspect_ratio: self.max_aspect_ratio,
            max_encoded_bytes: self.max_image_bytes,
            max_metadata_bytes: self.max_metadata_bytes,
            ..EngineConfig::default()
        }
    }

    /// Starts the global rayon pool the engine parallelises over (0 lets
    /// rayon pick: one thread per core, or RAYON_NUM_THREADS).
    pub(crate) fn start_pool(&self) -> anyhow::Result<()> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads.map_or(0, NonZeroUsize::get))
            .thread_name(|i| format!("pixelfeed-engine-{i}"))
            .build_global()
            .context("could not start the image worker pool")
    }
}

/// A token from its file (preferred) or its value.
fn token(
    file: &Option<PathBuf>,
    value: &Option<String>,
    flag: &str,
) -> anyhow::Result<Option<AuthToken>> {
    let text = match (file, value) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("could not read {flag} {}", path.display()))?,
        (None, Some(token)) => token.clone(),
        (None, None) => return Ok(None),
    };
    Ok(Some(
        AuthToken::new(&text).with_context(|| format!("unusable token ({flag})"))?,
    ))
}

impl OpsArgs {
    /// The user token from the file or the flag / environment, if any.
    pub(crate) fn auth_token(&self) -> anyhow::Result<Option<AuthToken>> {
        token(&self.auth_token_file, &self.auth_token, "--auth-token-file")
    }

    /// The operator token from the file or the flag / environment, if any.
    pub(crate) fn operator_token(&self) -> anyhow::Result<Option<AuthToken>> {
        token(
            &self.operator_token_file,
            &self.operator_token,
            "--operator-token-file",
        )
    }

    /// The TLS files, read.
    pub(crate) fn tls(&self) -> anyhow::Result<Option<TlsConfig>> {
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("could not read {}", path.display()))
        };
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        Ok(Some(TlsConfig {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            client_ca_pem: self.tls_client_ca.as_ref().map(read).transpose()?,
        }))
    }

    pub(crate) fn limits(&self, max_message_bytes: usize) -> CallLimits {
        CallLimits {
            max_rows_per_batch: self.max_rows_per_batch,
            max_concurrent_calls: self.max_concurrent_calls,
            call_timeout: self.call_timeout,
            idle_timeout: self.idle_timeout,
            max_input_bytes_in_flight: self.max_input_bytes_in_flight,
            // No more than one plain message could carry: binary views
            // can name shared bytes many times over.
            max_batch_image_bytes: max_message_bytes,
        }
    }
}

impl ConnectionArgs {
    pub(crate) fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            max_streams_per_connection: self.max_streams_per_connection,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.connection_idle_timeout,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
        }
    }
}

impl DatasetArgs {
    /// Opens every `--dataset` (blocking) into the dataset configuration.
    pub(crate) fn datasets_config(&self) -> anyhow::Result<DatasetsConfig> {
        let spill_dir = self
            .spill_dir
            .as_ref()
            .map(|dir| {
                dir.canonicalize()
                    .with_context(|| format!("unusable --spill-dir {}", dir.display()))
            })
            .transpose()?;
        let roots = (!self.dataset_roots.is_empty())
            .then(|| DatasetRoots::new(&self.dataset_roots))
            .transpose()
            .context("unusable --dataset-root")?;
        let config = DatasetsConfig {
            location: self.advertise.clone(),
            peers: self.peers.clone(),
            uploads: UploadLedger::new(self.upload_cap_bytes),
            spill_dir,
            roots,
            ..DatasetsConfig::default()
        };
        for (name, uri) in &self.datasets {
            let d = config
                .registry
                .register(name, uri)
                .with_context(|| format!("could not open dataset {name}={uri}"))?;
            tracing::info!(name, uri, rows = d.rows(), "dataset registered");
        }
        Ok(config)
    }
}

impl ServeArgs {
    /// The server configuration the flags ask for, without the parts that
    /// need I/O (token, TLS, datasets, pool): see [`ServeArgs::setup`].
    pub(crate) fn server_config(&self) -> ServerConfig {
        ServerConfig {
            listen: self.listen.clone(),
            max_message_bytes: self.max_message_bytes,
            service: ServiceConfig {
                engine: self.engine.engine_config(),
                target_message_bytes: self.target_message_bytes,
                limits: self.ops.limits(self.max_message_bytes),
                ..ServiceConfig::default()
            },
            tls: None,
            connections: self.ops.connections.limits(),
        }
    }

    pub(crate) fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            cap_bytes: self.pinned_pool_bytes.unwrap_or_else(default_cap_bytes),
            pinned: match self.pinned {
                PinnedArg::Auto => PinnedMode::Auto,
                PinnedArg::Off => PinnedMode::Off,
            },
            cuda_device: self.cuda_device,
            max_wait: None,
        }
    }

    /// Everything `serve` runs with: reads the token and TLS files, opens
    /// the datasets and creates the output pool.
    pub(crate) fn setup(&self) -> anyhow::Result<ServerConfig> {
        let mut config = self.server_config();
        config.service.allocator = Arc::new(HostBufferPool::new(self.pool_config()));
        config.service.datasets = self.datasets.datasets_config()?;
        config.service.auth_token = self.ops.auth_token()?;
        config.service.operator_token = self.ops.operator_token()?;
        config.tls = self.ops.tls()?;
        Ok(config)
    }
}

impl ConvertArgs {
    pub(crate) fn options(&self) -> anyhow::Result<ConvertOptions> {
        let spec = match &self.spec {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("could not read {}", path.display()))?;
                TransformSpec::from_json(&bytes)
                    .with_context(|| format!("invalid spec in {}", path.display()))?
            }
            None => {
                let preset = self.preset.as_deref().unwrap_or(DEFAULT_PRESET);
                TransformSpec::from_value(&serde_json::json!({ "preset": preset }))
                    .context("invalid --preset")?
            }
        };
        Ok(ConvertOptions {
            source: self.source.clone(),
            dest: self.dest.clone(),
            spec,
            shards: self.shards,
            format: match self.format {
                FormatArg::Parquet => OutputFormat::Parquet,
                FormatArg::Arrow => OutputFormat::Arrow,
            },
            engine: self.engine.engine_config(),
            read: ReadOptions {
                batch_rows: self.batch_rows,
                max_image_bytes: self.engine.max_image_bytes,
                ..ReadOptions::default()
            },
        })
    }
}
