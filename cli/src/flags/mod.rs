//! The command line, as clap definitions: one struct per command, one
//! field per flag, validated values only. Turning them into library
//! configuration (reading files, opening datasets) is `setup`'s job.

mod convert;
mod engine;
mod serve;
mod values;

use clap::{Parser, Subcommand};

pub(crate) use convert::{ConvertArgs, FormatArg};
pub(crate) use engine::EngineArgs;
pub(crate) use serve::{ConnectionArgs, DatasetArgs, OpsArgs, PinnedArg, ServeArgs};

/// Turns record batches of encoded images into Arrow tensor batches over
/// Arrow Flight.
#[derive(Debug, Parser)]
#[command(name = "pixelfeed", version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the Arrow Flight server until SIGINT or SIGTERM.
    Serve(Box<ServeArgs>),
    /// Convert a dataset offline (no server) into Parquet or Arrow IPC
    /// shards of tensors; rerun to resume.
    Convert(ConvertArgs),
}
