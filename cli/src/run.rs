//! The two commands: `serve` (the Flight server until a signal) and
//! `convert` (a dataset into tensor shards, with a progress bar).

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::Context as _;
use pixelfeed_server::{
    advertised_location, bind, check_config, serve_metrics, serve_until_stopped, Listener,
    ServerConfig,
};

use crate::flags::{ConvertArgs, OpsArgs, ServeArgs};
use crate::signals::stop_signals;

/// How long blocking work (an engine call in progress) may delay exit
/// after the server has stopped.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// `pixelfeed serve`.
pub(crate) fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    args.engine.start_pool()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let config = args.setup()?;
    check_config(&config)?;
    let result = runtime.block_on(serve_on_runtime(config, &args.ops));
    // An engine call still running on a blocking thread must not hold the
    // process up indefinitely.
    runtime.shutdown_timeout(EXIT_GRACE);
    result
}

async fn serve_on_runtime(mut config: ServerConfig, ops: &OpsArgs) -> anyhow::Result<()> {
    let signals = stop_signals()?;
    let listener = Listener::bind(&config.listen).await?;
    let addr = listener
        .local_addr()
        .context("could not read the bound address")?;
    if let Some(warning) = config.exposure_warning(&addr) {
        tracing::warn!("SECURITY: {warning}; anyone who can reach it can use it");
    }
    let metrics = match ops.metrics_listen {
        Some(at) => Some(bind(at).await.context("could not bind --metrics-listen")?),
        None => None,
    };
    if config.service.datasets.location.is_none() {
        config.service.datasets.location = advertised_location(&addr, config.tls.is_some());
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
    serve_until_stopped(config, listener, signals, ops.drain_timeout)
        .await
        .context("the server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// `pixelfeed convert`.
pub(crate) fn convert(args: &ConvertArgs) -> anyhow::Result<()> {
    args.engine.start_pool()?;
    let options = args.options()?;
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} images  {per_sec}  ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let summary = pixelfeed_data::convert::convert(&options, &|done, total| {
        bar.set_length(total);
        bar.inc(done);
    });
    bar.finish_and_clear();
    let summary = summary.with_context(|| format!("converting {} failed", args.source))?;
    println!("{summary}");
    Ok(())
}
