//! SIGINT and SIGTERM as a stream of names, for the server's drain policy
//! (`pixelfeed_server::serve_until_stopped`).

use anyhow::Context as _;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Yields the name of each SIGINT / SIGTERM received. Installed before the
/// server announces readiness, so a signal sent right after the
/// announcement cannot kill the process uncleanly.
pub(crate) fn stop_signals() -> anyhow::Result<impl Stream<Item = &'static str> + Unpin> {
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
    Ok(UnboundedReceiverStream::new(rx))
}
