//! Offline conversion: a dataset source through the engine into Parquet or
//! Arrow IPC files, in process (no server). `pixelfeed convert` is a thin
//! shell over [`convert`].
//!
//! The destination holds `part-IIIII-of-NNNNN.{parquet,arrow}` shards (the
//! source's contiguous row ranges, see [`shard_ranges`]) with the engine's
//! output columns — passthrough columns, `tensor` with its
//! `arrow.fixed_shape_tensor` field metadata, `error` and the rest of
//! [`output_schema`] — and a `_pixelfeed.json` manifest naming the source,
//! spec, format and shard count.
//!
//! Resumable: a shard is written under a hidden temporary name and renamed
//! only once complete, and its footer records its row count and error
//! counts. A rerun over the same destination keeps every shard whose footer
//! opens and reports the expected rows, and rewrites the others (missing,
//! cut short, or corrupt). A destination whose manifest describes a
//! different conversion is refused rather than mixed.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::BufWriter;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Array, RecordBatch, StringArray};
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use pixelfeed_schema::{columns, output_schema, ContractError, TransformSpec};
use serde_json::{json, Value};

use pixelfeed_engine::{self as engine, EngineConfig, EngineError, HeapAllocator};

use crate::parquet_write::{parquet_writer, write_parquet_batch};
use crate::{shard_ranges, DatasetError, DatasetSource, ReadOptions, SourceUri};

/// Name of the manifest file in the destination.
pub const MANIFEST: &str = "_pixelfeed.json";

/// Footer key holding a shard's row count.
const ROWS_KEY: &str = "pixelfeed.rows";
/// Footer key holding a shard's error counts by reason (JSON object).
const ERRORS_KEY: &str = "pixelfeed.errors";

/// File format of the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Parquet, zstd-compressed.
    Parquet,
    /// Arrow IPC file format (uncompressed, memory-mappable).
    Arrow,
}

impl OutputFormat {
    /// The file extension and manifest name of the format.
    pub fn name(self) -> &'static str {
        match self {
            Self::Parquet => "parquet",
            Self::Arrow => "arrow",
        }
    }
}

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The source could not be opened or read.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The source's columns do not fit the wire contract.
    #[error(transparent)]
    Contract(#[from] ContractError),
    /// The engine failed on a whole batch.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Writing an output file failed.
    #[error("{}: {message}", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The destination holds the shards of a different conversion.
    #[error("{} already holds a different conversion ({reason}); use another destination or empty it", dest.display())]
    Mismatch {
        /// The destination directory.
        dest: PathBuf,
        /// What differs.
        reason: String,
    },
}

fn write_err(path: &Path) -> impl FnOnce(String) -> ConvertError + '_ {
    move |message| ConvertError::Write {
        path: path.to_path_buf(),
        message,
    }
}

/// What to convert and how.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Dataset URI of the source (see [`SourceUri`]).
    pub source: String,
    /// Destination directory (created if missing).
    pub dest: PathBuf,
    /// Transform spec.
    pub spec: TransformSpec,
    /// Number of output shards (at least 1).
    pub shards: u64,
    /// Output file format.
    pub format: OutputFormat,
    /// Engine limits.
    pub engine: EngineConfig,
    /// How the source is cut into engine batches.
    pub read: ReadOptions,
}

/// A [`Progress`] that ignores every report.
pub fn ignore_progress(_done: u64, _total: u64) {}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertSummary {
    /// Rows in the destination (all shards).
    pub rows: u64,
    /// Failed rows by reason (see `count_errors`).
    pub errors: BTreeMap<String, u64>,
    /// Shards written by this run.
    pub shards_written: u64,
    /// Shards found complete and kept.
    pub shards_skipped: u64,
    /// Rows processed by this run.
    pub rows_processed: u64,
    /// Wall time of this run.
    pub elapsed: Duration,
}

impl ConvertSummary {
    /// Images per second processed by this run.
    pub fn images_per_second(&self) -> f64 {
        self.rows_processed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for ConvertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed: u64 = self.errors.values().sum();
        writeln!(
            f,
            "{} rows ({} ok, {} errors) in {} shards ({} written, {} already complete)",
            self.rows,
            self.rows - failed,
            failed,
            self.shards_written + self.shards_skipped,
            self.shards_written,
            self.shards_skipped
        )?;
        for (reason, n) in &self.errors {
            writeln!(f, "  {n:>8}  {reason}")?;
        }
        write!(
            f,
            "{} rows processed in {:.2} s ({:.1} images/s)",
            self.rows_processed,
            self.elapsed.as_secs_f64(),
            self.images_per_second()
        )
    }
}

/// Reports progress: called with the number of rows just completed
/// (converted, or found in a complete shard) and the total row count.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Runs a conversion (blocking; the engine uses the global rayon pool),
/// telling `progress` about every batch. [`ignore_progress`] when nobody
/// watches.
pub fn convert(
    options: &ConvertOptions,
    progress: Progress<'_>,
) -> Result<ConvertSummary, ConvertError> {
    let started = Instant::now();
    // The decoder resolved once, so the manifest and every shard's schema
    // name the decoder that ran.
    let options = &ConvertOptions {
        spec: engine::resolve_spec(&options.spec)?,
        ..options.clone()
    };
    let source = SourceUri::parse(&options.source)?.open()?;
    let schema: SchemaRef = Arc::new(output_schema(&source.schema(), &options.spec)?);
    let rows = source.rows();
    let shards = options.shards.max(1);
    let dest = &options.dest;
    std::fs::create_dir_all(dest).map_err(|e| write_err(dest)(e.to_string()))?;
    check_manifest(options, rows)?;
    remove_stale_temporaries(dest)?;

    let mut summary = ConvertSummary {
        rows,
        errors: BTreeMap::new(),
        shards_written: 0,
        shards_skipped: 0,
        rows_processed: 0,
        elapsed: Duration::ZERO,
    };
    let advance = |done: u64| progress(done, rows);
    let digits = shards.to_string().len().max(5);
    for (i, range) in shard_ranges(rows, shards).into_iter().enumerate() {
        let name = format!(
            "part-{i:0digits$}-of-{shards:0digits$}.{}",
            options.format.name()
        );
        let path = dest.join(&name);
        let expected = range.end - range.start;
        let errors = match verify(&path, options.format, expected) {
            Some(errors) => {
                summary.shards_skipped += 1;
                advance(expected);
                errors
            }
            None => {
                let tmp = dest.join(format!(".{name}.tmp"));
                let errors = write_shard(options, &source, range, &schema, &tmp, &advance)?;
                std::fs::rename(&tmp, &path).map_err(|e| write_err(&path)(e.to_string()))?;
                summary.shards_written += 1;
                summary.rows_processed += expected;
                errors
            }
        };
        for (reason, n) in errors {
            *summary.errors.entry(reason).or_default() += n;
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Removes shard temporaries an interrupted run left (`.part-*.tmp`):
/// a temporary is never complete, and one writer owns a destination.
fn remove_stale_temporaries(dest: &Path) -> Result<(), ConvertError> {
    let entries = std::fs::read_dir(dest).map_err(|e| write_err(dest)(e.to_string()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".part-") && name.ends_with(".tmp") {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| write_err(&path)(e.to_string()))?;
        }
    }
    Ok(())
}

/// Writes the manifest, or checks that an existing one describes this
/// conversion.
fn check_manifest(options: &ConvertOptions, rows: u64) -> Result<(), ConvertError> {
    let manifest = json!({
        "source": options.source,
        "spec": options.spec.to_value(),
        "format": options.format.name(),
        "shards": options.shards.max(1),
        "rows": rows,
    });
    let path = options.dest.join(MANIFEST);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let old: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let differing: Vec<&str> = ["source", "spec", "format", "shards", "rows"]
                .into_iter()
                .filter(|k| old.get(k) != manifest.get(k))
                .collect();
            if differing.is_empty() {
                Ok(())
            } else {
                Err(ConvertError::Mismatch {
                    dest: options.dest.clone(),
                    reason: format!("its {MANIFEST} differs in {}", differing.join(", ")),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = options.dest.join(format!(".{MANIFEST}.tmp"));
            std::fs::write(&tmp, format!("{manifest:#}\n"))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| write_err(&path)(e.to_string()))
        }
        Err(e) => Err(write_err(&path)(e.to_string())),
    }
}

/// The error counts of a complete shard, or `None` when the file is
/// missing, unreadable, or does not hold `rows` rows.
fn verify(path: &Path, format: OutputFormat, rows: u64) -> Option<BTreeMap<String, u64>> {
    let file = File::open(path).ok()?;
    let (stored_rows, meta): (u64, BTreeMap<String, String>) = match format {
        OutputFormat::Parquet => {
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).ok()?;
            let fm = builder.metadata().file_metadata();
            let kv = fm
                .key_value_metadata()
                .map(|kv| {
                    kv.iter()
                        .filter_map(|k| Some((k.key.clone(), k.value.clone()?)))
                        .collect()
                })
                .unwrap_or_default();
            (u64::try_from(fm.num_rows()).ok()?, kv)
        }
        OutputFormat::Arrow => {
            let reader = arrow_ipc::reader::FileReader::try_new(file, None).ok()?;
            let meta: BTreeMap<_, _> = reader
                .custom_metadata()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (meta.get(ROWS_KEY)?.parse().ok()?, meta)
        }
    };
    if stored_rows != rows || meta.get(ROWS_KEY)?.parse::<u64>().ok()? != rows {
        return None;
    }
    serde_json::from_str(meta.get(ERRORS_KEY)?).ok()
}

/// A shard writer of either format.
enum ShardWriter {
    Parquet(Box<ArrowWriter<File>>),
    Arrow(Box<arrow_ipc::writer::FileWriter<BufWriter<File>>>),
}

/// Converts rows `range` into the file `tmp`, returning its error counts.
/// The source is read one batch ahead on a helper thread.
fn write_shard(
    options: &ConvertOptions,
    source: &Arc<dyn DatasetSource>,
    range: Range<u64>,
    schema: &SchemaRef,
    tmp: &Path,
    advance: &(dyn Fn(u64) + Sync),
) -> Result<BTreeMap<String, u64>, ConvertError> {
    let mut writer = match options.format {
        OutputFormat::Parquet => {
            ShardWriter::Parquet(Box::new(parquet_writer(tmp, Arc::clone(schema))?))
        }
        OutputFormat::Arrow => {
            let file = File::create(tmp).map_err(|e| write_err(tmp)(e.to_string()))?;
            ShardWriter::Arrow(Box::new(
                arrow_ipc::writer::FileWriter::try_new(BufWriter::new(file), schema)
                    .map_err(|e| write_err(tmp)(e.to_string()))?,
            ))
        }
    };
    let mut errors = BTreeMap::new();
    let mut rows = 0u64;
    let first_row = range.start;
    let batches = source.read(range, &options.read)?;
    std::thread::scope(|scope| -> Result<(), ConvertError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for batch in batches {
                if tx.send(batch).is_err() {
                    return;
                }
            }
        });
        for batch in rx {
            // Rows are keyed by their index in the source, so random draws
            // do not depend on the shard layout.
            let out = engine::process_batch(
                &batch?,
                &options.spec,
                &options.engine,
                &HeapAllocator,
                first_row + rows,
            )?;
            let out = out
                .with_schema(Arc::clone(schema))
                .map_err(EngineError::from)?;
            count_errors(&out, &mut errors);
            rows += out.num_rows() as u64;
            match &mut writer {
                ShardWriter::Parquet(w) => write_parquet_batch(w, &out, tmp)?,
                ShardWriter::Arrow(w) => {
                    w.write(&out).map_err(|e| write_err(tmp)(e.to_string()))?
                }
            }
            advance(out.num_rows() as u64);
        }
        Ok(())
    })?;
    let errors_json = serde_json::to_string(&errors).unwrap_or_default();
    match writer {
        ShardWriter::Parquet(mut w) => {
            w.append_key_value_metadata(KeyValue::new(ROWS_KEY.into(), rows.to_string()));
            w.append_key_value_metadata(KeyValue::new(ERRORS_KEY.into(), errors_json));
            w.close().map_err(|e| write_err(tmp)(e.to_string()))?;
        }
        ShardWriter::Arrow(mut w) => {
            w.write_metadata(ROWS_KEY, rows.to_string());
            w.write_metadata(ERRORS_KEY, errors_json);
            w.finish().map_err(|e| write_err(tmp)(e.to_string()))?;
            w.into_inner()
                .map_err(|e| write_err(tmp)(e.to_string()))?
                .into_inner()
                .map_err(|e| write_err(tmp)(e.to_string()))?
                .sync_all()
                .map_err(|e| write_err(tmp)(e.to_string()))?;
        }
    }
    Ok(errors)
}

/// Adds the batch's failed rows to `errors`, keyed by reason: the error
/// text up to its first `:` or `(`, numbers replaced by `N` (so "image is
/// 9000x9000 = 81 Mpx, over the 64 Mpx limit" counts with its kind).
fn count_errors(batch: &RecordBatch, errors: &mut BTreeMap<String, u64>) {
    let Some(col) = batch
        .column_by_name(columns::ERROR)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
    else {
        return;
    };
    for i in 0..col.len() {
        if col.is_valid(i) {
            let text = col.value(i);
            let head = text.split([':', '(']).next().unwrap_or(text).trim();
            let mut reason = String::with_capacity(head.len());
            for c in head.chars() {
                if !c.is_ascii_digit() {
                    reason.push(c);
                } else if !reason.ends_with('N') {
                    reason.push('N');
                }
            }
            *errors.entry(reason).or_default() += 1;
        }
    }
}
