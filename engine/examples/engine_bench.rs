//! In-process engine benchmark, driven by `bench/run.py` (also handy under
//! `perf record`).
//!
//! Reads every image file (`.jpg`/`.jpeg`/`.png`/`.webp`/`.gif`/`.bmp`/`.tif`/`.tiff`) in a folder into memory, cycles them
//! into record batches of `--batch` rows, and runs
//! [`pixelfeed_engine::process_batch`] over those batches back to
//! back (rows in parallel on a rayon pool of `--threads` threads, output in
//! blocks of the server's own [`HostBufferPool`], pageable, so they are
//! reused as in the server rather than allocated and zeroed per batch) until both `--min-seconds` and `--min-batches`
//! are reached, after `--warmup` untimed batches. With `--concurrent N`,
//! N threads each run that loop on the same rayon pool, so N batches are
//! in flight at once and the tail of one overlaps the start of the next
//! (what a server with N calls does); `--concurrent 1` against 2 measures
//! the straggler cost of one batch at a time. Prints one JSON object on
//! stdout:
//!
//! ```json
//! {"images": 3200, "wall_s": 8.1, "images_per_s": 395.1, "cpu_s": 16.0,
//!  "cpu_s_per_1000": 5.0, "latencies_ms": [81.0, ...], "threads": 2,
//!  "batch": 32, "errors": 0, "files": 100}
//! ```
//!
//! `cpu_s` is user + system time of this process (all threads) over the
//! timed loop only, from `getrusage(RUSAGE_SELF)`.
//!
//! ```sh
//! cargo run --release -p pixelfeed-server --example engine_bench -- \
//!     --dir ../shared/corpus/bench/imagenet --threads 2 --min-seconds 5
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The file names read from `--dir`, by extension.
const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

use arrow_array::{Array, BinaryArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use pixelfeed_engine::{process_batch, EngineConfig};
use pixelfeed_pool::{HostBufferPool, PinnedMode, PoolConfig};
use pixelfeed_schema::TransformSpec;

/// Command-line options (parsed by hand: `--name value` pairs).
struct Options {
    dir: PathBuf,
    spec: String,
    batch: usize,
    threads: usize,
    min_seconds: f64,
    min_batches: usize,
    warmup: usize,
    concurrent: usize,
}

const USAGE: &str = "usage: engine_bench --dir DIR [--spec JSON] [--batch 32] [--threads N] \
                     [--min-seconds 3] [--min-batches 10] [--warmup 2] [--concurrent 1]";

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        dir: PathBuf::new(),
        spec: r#"{"preset":"imagenet"}"#.to_owned(),
        batch: 32,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        min_seconds: 3.0,
        min_batches: 10,
        warmup: 2,
        concurrent: 1,
    };
    let mut dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(name) = args.next() {
        if name == "-h" || name == "--help" {
            return Err(USAGE.to_owned());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{name} {value}: {e}");
        match name.as_str() {
            "--dir" => dir = Some(PathBuf::from(&value)),
            "--spec" => o.spec = value,
            "--batch" => o.batch = value.parse().map_err(|e| bad(&e))?,
            "--threads" => o.threads = value.parse().map_err(|e| bad(&e))?,
            "--min-seconds" => o.min_seconds = value.parse().map_err(|e| bad(&e))?,
            "--min-batches" => o.min_batches = value.parse().map_err(|e| bad(&e))?,
            "--warmup" => o.warmup = value.parse().map_err(|e| bad(&e))?,
            "--concurrent" => o.concurrent = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option {name}\n{USAGE}")),
        }
    }
    o.dir = dir.ok_or_else(|| format!("--dir is required\n{USAGE}"))?;
    if o.batch == 0 || o.threads == 0 || o.concurrent == 0 {
        return Err("--batch, --threads and --concurrent must be at least 1".to_owned());
    }
    Ok(o)
}

/// The encoded images of `dir` (sorted by name).
fn read_images(dir: &Path) -> Result<Vec<Vec<u8>>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(format!(
            "{}: no image files (.{})",
            dir.display(),
            IMAGE_EXTENSIONS.join(", .")
        ));
    }
    paths
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())))
        .collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Every distinct batch of `batch` consecutive images from the endless
/// cycle over `images` (lcm(n, batch) / batch of them), as zero-copy slices
/// of one `image: binary` batch.
fn cycled_batches(images: &[Vec<u8>], batch: usize) -> Vec<RecordBatch> {
    let n = images.len();
    let distinct = n / gcd(n, batch);
    let column = BinaryArray::from_iter_values((0..distinct * batch).map(|i| &images[i % n]));
    let schema = Schema::new(vec![Field::new("image", DataType::Binary, true)]);
    let all = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(column)])
        .expect("one binary column matches its schema");
    (0..distinct).map(|i| all.slice(i * batch, batch)).collect()
}

/// User + system CPU seconds of this process, all threads.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct we pass, which is plain data.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn run(o: &Options) -> Result<serde_json::Value, String> {
    let spec = TransformSpec::from_json(o.spec.as_bytes()).map_err(|e| format!("--spec: {e}"))?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(o.threads)
        .build_global()
        .map_err(|e| e.to_string())?;
    let images = read_images(&o.dir)?;
    let batches = cycled_batches(&images, o.batch);
    let config = EngineConfig::default();
    let pool = HostBufferPool::new(PoolConfig {
        pinned: PinnedMode::Off,
        ..PoolConfig::default()
    });
    // The failed rows of batch `i`.
    let step = |i: usize| -> Result<usize, String> {
        let out = process_batch(&batches[i % batches.len()], &spec, &config, &pool, 0)
            .map_err(|e| e.to_string())?;
        let error = out
            .column_by_name("error")
            .expect("output has an error column");
        Ok(error.len() - error.null_count())
    };

    let mut errors = 0usize;
    for i in 0..o.warmup {
        errors += step(i)?;
    }
    let min_wall = Duration::from_secs_f64(o.min_seconds);
    let min_each = o.min_batches.div_ceil(o.concurrent);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    // Each thread's batch latencies and failed rows.
    let per_thread: Vec<Result<(Vec<f64>, usize), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..o.concurrent)
            .map(|first| {
                let step = &step;
                scope.spawn(move || {
                    let (mut latencies, mut errors) = (Vec::new(), 0usize);
                    let mut i = o.warmup + first;
                    while latencies.len() < min_each || t0.elapsed() < min_wall {
                        let t = Instant::now();
                        errors += step(i)?;
                        latencies.push(t.elapsed().as_secs_f64() * 1e3);
                        i += o.concurrent;
                    }
                    Ok((latencies, errors))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a bench thread panicked".into()))
            })
            .collect()
    });
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu0;
    let mut latencies_ms = Vec::new();
    for result in per_thread {
        let (latencies, failed) = result?;
        latencies_ms.extend(latencies);
        errors += failed;
    }
    let count = latencies_ms.len() * o.batch;
    Ok(serde_json::json!({
        "images": count,
        "wall_s": wall_s,
        "images_per_s": count as f64 / wall_s,
        "cpu_s": cpu_s,
        "cpu_s_per_1000": cpu_s * 1000.0 / count as f64,
        "latencies_ms": latencies_ms,
        "threads": o.threads,
        "batch": o.batch,
        "concurrent": o.concurrent,
        "errors": errors,
        "files": images.len(),
    }))
}

fn main() {
    let result = parse_args().and_then(|o| run(&o));
    match result {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("engine_bench: {e}");
            std::process::exit(2);
        }
    }
}
