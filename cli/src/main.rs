//! `pixelfeed`: the command-line shell over the pixelfeed libraries.
//!
//! `pixelfeed serve` runs the Arrow Flight service until SIGINT or SIGTERM.
//! Once listening it prints `pixelfeed listening on ADDR` on stdout (the
//! actual address, so `--listen 127.0.0.1:0` reports the port it got);
//! logs go to stderr, filtered by `RUST_LOG` (default `info`).
//! `pixelfeed convert` converts a dataset offline.
//!
//! Code map: `flags` (clap definitions: validated values, no I/O), `setup`
//! (flags → library configuration: reads files, opens datasets), `run`
//! (the two commands), `signals`. Policy (the drain, the advertised URL)
//! lives in `pixelfeed-server`, so embedders get it too.

mod flags;
mod run;
mod setup;
mod signals;

use std::io::IsTerminal as _;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use flags::{Cli, Command};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        Command::Serve(args) => run::serve(&args),
        Command::Convert(args) => run::convert(&args),
    }
}

#[cfg(test)]
mod tests;
