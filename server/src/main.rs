//! `pixelfeed`: the command-line shell over the pixelfeed server library.
//!
//! `pixelfeed serve` runs the Arrow Flight service until SIGINT or SIGTERM.
//! Once listening it prints `pixelfeed listening on ADDR` on stdout (the
//! actual address, so `--listen 127.0.0.1:0` reports the port it got);
//! logs go to stderr, filtered by `RUST_LOG` (default `info`).

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use pixelfeed_schema::TransformSpec;
use pixelfeed_server::convert::{ConvertOptions, OutputFormat};
use pixelfeed_server::dataset::ReadOptions;
use pixelfeed_server::engine::EngineConfig;
use pixelfeed_server::flight::{
    bind, check_config, serve_metrics, serve_with_shutdown, AuthToken, CallLimits, DatasetsConfig,
    ServerConfig, ServiceConfig, TlsConfig, DEFAULT_LISTEN, DEFAULT_MAX_CONCURRENT_CALLS,
    DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_ROWS_PER_BATCH, DEFAULT_TARGET_MESSAGE_BYTES,
    DEFAULT_UPLOAD_CAP_BYTES,
};
use pixelfeed_server::pool::{default_cap_bytes, HostBufferPool, PinnedMode, PoolConfig};
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

/// How long blocking work (an engine call in progress) may delay exit
/// after the server has stopped.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Turns record batches of encoded images into Arrow tensor batches over
/// Arrow Flight.
#[derive(Debug, Parser)]
#[command(name = "pixelfeed", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Arrow Flight server until SIGINT or SIGTERM.
    Serve(Box<ServeArgs>),
    /// Convert a dataset offline (no server) into Parquet or Arrow IPC
    /// shards of tensors; rerun to resume.
    Convert(ConvertArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port; the address actually
    /// bound is printed as `pixelfeed listening on ADDR`.
    #[arg(long, default_value_t = DEFAULT_LISTEN)]
    listen: SocketAddr,

    /// Largest gRPC message accepted from or sent to a client, in bytes.
    /// pyarrow sends each record batch as one message, so this bounds the
    /// size of one input batch.
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_BYTES, value_parser = positive_usize)]
    max_message_bytes: usize,

    /// Approximate size of one output message, in bytes. Larger output
    /// batches are sent as several consecutive slices of whole rows.
    #[arg(long, default_value_t = DEFAULT_TARGET_MESSAGE_BYTES, value_parser = positive_usize)]
    target_message_bytes: usize,

    #[command(flatten)]
    engine: EngineArgs,

    #[command(flatten)]
    datasets: DatasetArgs,

    /// Cap on the output tensor memory pool, in bytes. Producers wait for a
    /// block to come back instead of allocating past it (backpressure).
    /// Default: 1 GiB, or a quarter of RAM if that is smaller.
    #[arg(long, value_parser = positive_usize)]
    pinned_pool_bytes: Option<usize>,

    /// Page-lock (pin) the output pool through the CUDA driver: `auto` pins
    /// when libcuda and a device are present, `off` never touches CUDA.
    #[arg(long, value_enum, default_value_t = PinnedArg::Auto)]
    pinned: PinnedArg,

    /// CUDA device whose context owns the pinned pool.
    #[arg(long, default_value_t = 0)]
    cuda_device: usize,

    #[command(flatten)]
    ops: OpsArgs,
}

/// Security, limits and observability flags of `serve`.
#[derive(Debug, Args)]
struct OpsArgs {
    /// File holding the bearer token every call must carry (surrounding
    /// whitespace ignored). pyarrow clients may instead call
    /// `authenticate_basic_token(any_user, token)`.
    #[arg(long, conflicts_with = "auth_token")]
    auth_token_file: Option<PathBuf>,

    /// The bearer token itself. Prefer the environment variable or
    /// --auth-token-file: command lines are visible to other local users.
    #[arg(long, env = "PIXELFEED_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,

    /// TLS certificate chain (PEM); serve TLS with --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that client certificates must chain to:
    /// requires every client to present one (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// Largest number of rows in one input batch; larger batches fail the
    /// call with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = DEFAULT_MAX_ROWS_PER_BATCH, value_parser = positive_usize)]
    max_rows_per_batch: usize,

    /// Largest number of calls in progress at once; more are refused at
    /// once with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = DEFAULT_MAX_CONCURRENT_CALLS, value_parser = positive_usize)]
    max_concurrent_calls: usize,

    /// Longest a call may run, in seconds, streaming included (a client's
    /// earlier deadline wins). Default: no limit.
    #[arg(long, value_parser = seconds)]
    call_timeout: Option<Duration>,

    /// Serve Prometheus metrics at http://ADDR/metrics (off by default;
    /// port 0 picks a free port, announced as `pixelfeed metrics on ADDR`).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,

    /// How long in-flight calls may take to finish after SIGINT / SIGTERM,
    /// in seconds.
    #[arg(long, default_value = "30", value_parser = seconds)]
    drain_timeout: Duration,
}

impl OpsArgs {
    /// The token from the file or the flag / environment, if any.
    fn auth_token(&self) -> anyhow::Result<Option<AuthToken>> {
        let text = match (&self.auth_token_file, &self.auth_token) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("could not read --auth-token-file {}", path.display()))?,
            (None, Some(token)) => token.clone(),
            (None, None) => return Ok(None),
        };
        Ok(Some(AuthToken::new(&text).context("unusable auth token")?))
    }

    /// The TLS files, read.
    fn tls(&self) -> anyhow::Result<Option<TlsConfig>> {
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

    fn limits(&self) -> CallLimits {
        CallLimits {
            max_rows_per_batch: self.max_rows_per_batch,
            max_concurrent_calls: self.max_concurrent_calls,
            call_timeout: self.call_timeout,
        }
    }
}

fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|e: std::num::ParseFloatError| e.to_string())?;
    if secs.is_finite() && secs > 0.0 {
        Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
    } else {
        Err("must be a positive number of seconds".into())
    }
}

/// Engine limits and threads, shared by `serve` and `convert`.
#[derive(Debug, Args)]
struct EngineArgs {
    /// Largest accepted image area (width × height, read from the header
    /// before decoding); larger images become error rows.
    #[arg(long, default_value_t = EngineConfig::default().max_pixels)]
    max_pixels: u64,

    /// Largest accepted ratio of an image's longer side to its shorter side;
    /// more elongated images become error rows.
    #[arg(long, default_value_t = EngineConfig::default().max_aspect_ratio, value_parser = aspect_ratio)]
    max_aspect_ratio: f64,

    /// Largest accepted encoded size of one image, in bytes; larger images
    /// become error rows.
    #[arg(long, default_value_t = EngineConfig::default().max_encoded_bytes)]
    max_image_bytes: usize,

    /// Largest EXIF or XMP block read to find an image's orientation, in
    /// bytes (compressed PNG text counts inflated); images whose needed
    /// metadata is larger become error rows.
    #[arg(long, default_value_t = EngineConfig::default().max_metadata_bytes)]
    max_metadata_bytes: usize,

    /// Worker threads for image processing (the rayon global pool).
    /// Default: one per CPU core.
    #[arg(long)]
    threads: Option<NonZeroUsize>,
}

impl EngineArgs {
    fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            max_pixels: self.max_pixels,
            max_aspect_ratio: self.max_aspect_ratio,
            max_encoded_bytes: self.max_image_bytes,
            max_metadata_bytes: self.max_metadata_bytes,
        }
    }

    /// Starts the global rayon pool the engine parallelises over (0 lets
    /// rayon pick: one thread per core, or RAYON_NUM_THREADS).
    fn start_pool(&self) -> anyhow::Result<()> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads.map_or(0, NonZeroUsize::get))
            .thread_name(|i| format!("pixelfeed-engine-{i}"))
            .build_global()
            .context("could not start the image worker pool")
    }
}

/// `serve` flags for server-side datasets (issue #6).
#[derive(Debug, Args)]
struct DatasetArgs {
    /// Register a dataset: NAME=URI, URI being [dir:|parquet:|tar:]PATH with
    /// optional ?glob=PATTERN (dir, tar) or ?column=NAME (parquet).
    /// Repeatable.
    #[arg(long = "dataset", value_name = "NAME=URI", value_parser = name_uri)]
    datasets: Vec<(String, String)>,

    /// Another server with the same datasets (grpc://HOST:PORT).
    /// GetFlightInfo spreads shard endpoints round-robin over this server
    /// and its peers. Repeatable.
    #[arg(long = "peer", value_name = "URL")]
    peers: Vec<String>,

    /// The URL peers and clients reach this server at, put in endpoint
    /// locations. Default: grpc://ADDR of the bound address (none when
    /// listening on an unspecified address such as 0.0.0.0).
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,

    /// Largest table a client may upload with DoPut to keep in memory.
    #[arg(long, default_value_t = DEFAULT_UPLOAD_CAP_BYTES, value_parser = positive_usize)]
    upload_cap_bytes: usize,

    /// Write DoPut uploads here as Parquet instead of keeping them in memory.
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,
}

impl DatasetArgs {
    /// Opens every `--dataset` (blocking) into the dataset configuration.
    fn datasets_config(&self) -> anyhow::Result<DatasetsConfig> {
        let config = DatasetsConfig {
            location: self.advertise.clone(),
            peers: self.peers.clone(),
            upload_cap_bytes: self.upload_cap_bytes,
            spill_dir: self.spill_dir.clone(),
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

fn name_uri(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, uri)) if !name.is_empty() && !uri.is_empty() => {
            Ok((name.to_string(), uri.to_string()))
        }
        _ => Err("expected NAME=URI".into()),
    }
}

/// `pixelfeed convert` arguments.
#[derive(Debug, Args)]
struct ConvertArgs {
    /// Source dataset URI: [dir:|parquet:|tar:]PATH[?glob=...|?column=...].
    source: String,

    /// Destination directory (created if missing; rerunning resumes).
    dest: PathBuf,

    /// Transform spec JSON file.
    #[arg(long, value_name = "FILE", conflicts_with = "preset")]
    spec: Option<PathBuf>,

    /// Built-in preset name (default: imagenet).
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,

    /// Number of output shards (files).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65536))]
    shards: u64,

    /// Output file format.
    #[arg(long, value_enum, default_value_t = FormatArg::Parquet)]
    format: FormatArg,

    /// Rows per engine batch.
    #[arg(long, default_value_t = ReadOptions::default().batch_rows, value_parser = positive_usize)]
    batch_rows: usize,

    #[command(flatten)]
    engine: EngineArgs,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FormatArg {
    Parquet,
    Arrow,
}

impl ConvertArgs {
    fn options(&self, progress: bool) -> anyhow::Result<ConvertOptions> {
        let spec = match &self.spec {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("could not read {}", path.display()))?;
                TransformSpec::from_json(&bytes)
                    .with_context(|| format!("invalid spec in {}", path.display()))?
            }
            None => {
                let preset = self.preset.as_deref().unwrap_or("imagenet");
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
            progress,
        })
    }
}

/// `--pinned` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PinnedArg {
    Auto,
    Off,
}

fn positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn aspect_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .parse()
        .map_err(|e: std::num::ParseFloatError| e.to_string())?;
    if r.is_finite() && r >= 1.0 {
        Ok(r)
    } else {
        Err("must be a finite number of at least 1".into())
    }
}

impl ServeArgs {
    fn server_config(&self) -> ServerConfig {
        let engine = self.engine.engine_config();
        ServerConfig::default()
            .with_listen(self.listen)
            .with_max_message_bytes(self.max_message_bytes)
            .with_service(
                ServiceConfig::default()
                    .with_engine(engine)
                    .with_target_message_bytes(self.target_message_bytes)
                    .with_limits(self.ops.limits()),
            )
    }

    fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            cap_bytes: self.pinned_pool_bytes.unwrap_or_else(default_cap_bytes),
            pinned: match self.pinned {
                PinnedArg::Auto => PinnedMode::Auto,
                PinnedArg::Off => PinnedMode::Off,
            },
            cuda_device: self.cuda_device,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Convert(args) => convert(&args),
    }
}

fn convert(args: &ConvertArgs) -> anyhow::Result<()> {
    args.engine.start_pool()?;
    let options = args.options(std::io::stderr().is_terminal())?;
    let summary = pixelfeed_server::convert::convert(&options)
        .with_context(|| format!("converting {} failed", args.source))?;
    println!("{summary}");
    Ok(())
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    args.engine.start_pool()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let pool = HostBufferPool::new(args.pool_config());
    let mut config = args.server_config();
    config.service = config
        .service
        .with_allocator(std::sync::Arc::new(pool))
        .with_datasets(args.datasets.datasets_config()?)
        .with_auth_token(args.ops.auth_token()?);
    config.tls = args.ops.tls()?;
    check_config(&config)?;
    let result = runtime.block_on(run(config, &args.ops));
    // An engine call still running on a blocking thread must not hold the
    // process up indefinitely.
    runtime.shutdown_timeout(EXIT_GRACE);
    result
}

async fn run(mut config: ServerConfig, ops: &OpsArgs) -> anyhow::Result<()> {
    // Install the signal handlers before announcing readiness, so a signal
    // sent right after the announcement cannot kill the process uncleanly.
    let mut signals = listen_for_signals()?;
    let listener = bind(config.listen).await?;
    let addr = listener
        .local_addr()
        .context("could not read the bound address")?;
    if let Some(warning) = config.exposure_warning(addr) {
        tracing::warn!("SECURITY: {warning}; anyone who can reach it can use it");
    }
    let metrics = match ops.metrics_listen {
        Some(at) => Some(bind(at).await.context("could not bind --metrics-listen")?),
        None => None,
    };
    if config.service.datasets.location.is_none() && !addr.ip().is_unspecified() {
        let scheme = if config.tls.is_some() {
            "grpc+tls"
        } else {
            "grpc"
        };
        config.service.datasets.location = Some(format!("{scheme}://{addr}"));
    }
    tracing::info!(
        %addr,
        tls = config.tls.is_some(),
        auth = config.service.auth_token.is_some(),
        limits = ?config.service.limits,
        threads = rayon::current_num_threads(),
        max_message_bytes = config.max_message_bytes,
        target_message_bytes = config.service.target_message_bytes,
        "serving"
    );
    // Scripts wait for this exact line on stdout.
    println!("pixelfeed listening on {addr}");
    if let Some(listener) = metrics {
        let at = listener
            .local_addr()
            .context("could not read the metrics address")?;
        println!("pixelfeed metrics on {at}");
        // Runs until the runtime shuts down.
        tokio::spawn(serve_metrics(
            listener,
            config.service.metrics.clone(),
            config.service.allocator.clone(),
            std::future::pending(),
        ));
    }
    std::io::stdout()
        .flush()
        .context("could not write to stdout")?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = serve_with_shutdown(config, listener, async {
        let _ = stop_rx.await;
    });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.context("the server failed"),
        name = signals.recv() => {
            tracing::info!(signal = name.unwrap_or("?"), "shutting down; send it again to stop at once");
            let _ = stop_tx.send(());
        }
    }
    // Graceful: in-flight exchanges finish, unless a second signal or the
    // grace period cuts them off (an unresponsive client would otherwise
    // hold the process up forever: HTTP/2 shutdown waits for its ack).
    tokio::select! {
        result = &mut server => result.context("the server failed")?,
        name = signals.recv() => {
            tracing::warn!(signal = name.unwrap_or("?"), "stopping without waiting for in-flight calls");
        }
        () = tokio::time::sleep(ops.drain_timeout) => {
            tracing::warn!(drain_timeout = ?ops.drain_timeout, "in-flight calls did not finish in time; stopping");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// A channel that yields the name of each SIGINT / SIGTERM received.
fn listen_for_signals() -> anyhow::Result<mpsc::UnboundedReceiver<&'static str>> {
    let (tx, rx) = mpsc::unbounded_channel();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        for (kind, name) in [
            (SignalKind::interrupt(), "SIGINT"),
            (SignalKind::terminate(), "SIGTERM"),
        ] {
            let mut stream =
                signal(kind).with_context(|| format!("could not install a {name} handler"))?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(name).is_err() {
                        break;
                    }
                }
            });
        }
    }
    #[cfg(not(unix))]
    {
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if tx.send("Ctrl-C").is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from([&["pixelfeed", "serve"], args].concat()).unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("not serve")
        };
        *serve
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_library() {
        let config = serve_args(&[]).server_config();
        assert_eq!(config.listen, DEFAULT_LISTEN);
        assert_eq!(config.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
        assert_eq!(
            config.service.target_message_bytes,
            DEFAULT_TARGET_MESSAGE_BYTES
        );
        assert_eq!(config.service.engine, EngineConfig::default());
        assert_eq!(serve_args(&[]).pool_config(), PoolConfig::default());
        assert_eq!(config.service.limits, CallLimits::default());
        let ops = serve_args(&[]).ops;
        assert_eq!(ops.drain_timeout, Duration::from_secs(30));
        assert!(ops.tls().unwrap().is_none() && ops.metrics_listen.is_none());
    }

    #[test]
    fn ops_flags_reach_the_config() {
        let dir = std::env::temp_dir().join(format!("pixelfeed-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (token, cert, key) = (dir.join("token"), dir.join("cert"), dir.join("key"));
        std::fs::write(&token, "s3cret\n").unwrap();
        std::fs::write(&cert, "CERT").unwrap();
        std::fs::write(&key, "KEY").unwrap();
        let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
        let args = serve_args(&[
            &format!("--auth-token-file={}", path(&token)),
            &format!("--tls-cert={}", path(&cert)),
            &format!("--tls-key={}", path(&key)),
            &format!("--tls-client-ca={}", path(&cert)),
            "--max-rows-per-batch=7",
            "--max-concurrent-calls=3",
            "--call-timeout=1.5",
            "--metrics-listen=127.0.0.1:0",
            "--drain-timeout=2",
        ]);
        let auth = args.ops.auth_token().unwrap().unwrap();
        assert!(auth.matches(b"s3cret"));
        let tls = args.ops.tls().unwrap().unwrap();
        assert_eq!(
            (tls.cert_pem.as_slice(), tls.key_pem.as_slice()),
            (&b"CERT"[..], &b"KEY"[..])
        );
        assert_eq!(tls.client_ca_pem.as_deref(), Some(&b"CERT"[..]));
        assert_eq!(
            args.server_config().service.limits,
            CallLimits {
                max_rows_per_batch: 7,
                max_concurrent_calls: 3,
                call_timeout: Some(Duration::from_millis(1500)),
            }
        );
        assert_eq!(args.ops.drain_timeout, Duration::from_secs(2));
        assert!(args.ops.metrics_listen.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let args = serve_args(&[
            "--listen=127.0.0.1:0",
            "--max-message-bytes=1000",
            "--target-message-bytes=100",
            "--max-pixels=5000",
            "--max-aspect-ratio=3.5",
            "--max-image-bytes=700",
            "--max-metadata-bytes=900",
            "--threads=3",
            "--pinned-pool-bytes=12345678",
            "--pinned=off",
            "--cuda-device=1",
        ]);
        assert_eq!(args.engine.threads.map(NonZeroUsize::get), Some(3));
        assert_eq!(
            args.pool_config(),
            PoolConfig {
                cap_bytes: 12345678,
                pinned: PinnedMode::Off,
                cuda_device: 1
            }
        );
        let config = args.server_config();
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.max_message_bytes, 1000);
        assert_eq!(config.service.target_message_bytes, 100);
        assert_eq!(
            config.service.engine,
            EngineConfig {
                max_pixels: 5000,
                max_aspect_ratio: 3.5,
                max_encoded_bytes: 700,
                max_metadata_bytes: 900,
            }
        );
    }

    #[test]
    fn nonsense_limits_are_refused() {
        for bad in [
            "--max-message-bytes=0",
            "--target-message-bytes=0",
            "--max-aspect-ratio=0.5",
            "--max-aspect-ratio=inf",
            "--threads=0",
            "--pinned-pool-bytes=0",
            "--pinned=always",
            "--max-rows-per-batch=0",
            "--max-concurrent-calls=0",
            "--call-timeout=0",
            "--drain-timeout=-1",
            "--tls-cert=x",
            "--tls-client-ca=x",
        ] {
            assert!(
                Cli::try_parse_from(["pixelfeed", "serve", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
