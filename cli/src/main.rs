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
    tune_glibc_malloc();
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

/// glibc's malloc serves blocks of 8 MiB and more with their own `mmap`
/// (returned to the system when freed) and trims an arena's free top only
/// past 32 MiB, unless the operator set `MALLOC_MMAP_THRESHOLD_`,
/// `MALLOC_TRIM_THRESHOLD_` or a `glibc.malloc` tunable in
/// `GLIBC_TUNABLES` (then glibc's own policy applies).
///
/// Left alone, glibc raises its mmap threshold to the size of each mmapped
/// block freed, up to 32 MiB (mallopt(3), "M_MMAP_THRESHOLD"), so after the
/// first 14 MB input message or 16 MB decode buffer is freed every later one
/// comes from the arenas, which keep the freed space: 128 clients of
/// `bench/rss.py` peaked at 1 235–1 347 MiB, against 1 003 with both
/// thresholds fixed and 4 MiB messages. Fixing that threshold also fixes the
/// trim threshold at 128 KiB, and the arenas then gave freed megabytes
/// back and faulted them in again for every message (about 1 000
/// `madvise(MADV_DONTNEED)` calls of 3–13 MiB in 8 s; one client of
/// `bench/run.py`'s flight_f32 lost 25 % of its images/s), hence the trim
/// threshold. 8 MiB keeps output messages (`--target-message-bytes`, 4 MiB)
/// in the arenas, reused without page faults (README, "Server memory").
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
fn tune_glibc_malloc() {
    const MMAP_THRESHOLD_BYTES: libc::c_int = 8 << 20;
    const TRIM_THRESHOLD_BYTES: libc::c_int = 32 << 20;
    let operator_set = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
        .iter()
        .any(|name| std::env::var_os(name).is_some())
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
    if !operator_set {
        // SAFETY: mallopt only changes malloc's tuning parameters; it is
        // called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
        }
    }
}

/// Other allocators and C libraries keep their own policy.
#[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc"))))]
fn tune_glibc_malloc() {}

#[cfg(test)]
mod tests;
