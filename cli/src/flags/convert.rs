//! `pixelfeed convert` flags.

use std::path::PathBuf;

use clap::Args;
use pixelfeed_data::ReadOptions;

use super::engine::EngineArgs;
use super::values::positive_usize;

/// `pixelfeed convert` arguments.
#[derive(Debug, Args)]
pub(crate) struct ConvertArgs {
    /// Source dataset URI: [dir:|parquet:|tar:]PATH[?glob=...|?column=...].
    pub(crate) source: String,

    /// Destination directory (created if missing; rerunning resumes).
    pub(crate) dest: PathBuf,

    /// Transform spec JSON file.
    #[arg(long, value_name = "FILE", conflicts_with = "preset")]
    pub(crate) spec: Option<PathBuf>,

    /// Built-in preset name (default: imagenet).
    #[arg(long, value_name = "NAME")]
    pub(crate) preset: Option<String>,

    /// Number of output shards (files).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub(crate) shards: u64,

    /// Output file format.
    #[arg(long, value_enum, default_value_t = FormatArg::Parquet)]
    pub(crate) format: FormatArg,

    /// Rows per engine batch.
    #[arg(long, default_value_t = ReadOptions::default().batch_rows, value_parser = positive_usize)]
    pub(crate) batch_rows: usize,

    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FormatArg {
    Parquet,
    Arrow,
}
