//! Offline conversion: a directory through the engine into Parquet shards
//! equals the engine on the same bytes; a rerun keeps verified shards; a
//! different conversion into the same place is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, RecordBatch};
use arrow_schema::SchemaRef;
use pixelfeed_data::convert::{convert, ignore_progress, ConvertOptions, OutputFormat};
use pixelfeed_data::ReadOptions;
use pixelfeed_engine::{process_batch, EngineConfig, HeapAllocator};
use pixelfeed_testkit::{assert_same_output, concat, directory_fixture, strings, tempdir};

use crate::spec;

fn convert_options(
    source: String,
    dest: PathBuf,
    format: OutputFormat,
    shards: u64,
) -> ConvertOptions {
    ConvertOptions {
        source,
        dest,
        spec: spec(),
        shards,
        format,
        engine: EngineConfig::default(),
        read: ReadOptions {
            batch_rows: 3,
            ..ReadOptions::default()
        },
    }
}

fn read_parquet_dir(dir: &Path) -> (SchemaRef, RecordBatch) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    let mut batches = Vec::new();
    for f in files {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(f).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        batches.extend(reader.map(Result::unwrap));
    }
    let b = concat(&batches);
    (b.schema(), b)
}

#[test]
fn convert_round_trips_through_parquet_with_the_tensor_extension() {
    let root = tempdir("convert");
    let rels = directory_fixture(&root.join("src"));
    let uri = format!("dir:{}", root.join("src").display());
    let summary = convert(
        &convert_options(uri, root.join("out"), OutputFormat::Parquet, 3),
        &ignore_progress,
    )
    .unwrap();
    assert_eq!(summary.rows, rels.len() as u64);
    assert_eq!((summary.shards_written, summary.shards_skipped), (3, 0));
    assert_eq!(summary.errors.values().sum::<u64>(), 1, "{summary}");

    let (schema, got) = read_parquet_dir(&root.join("out"));
    let tensor = schema.field_with_name("tensor").unwrap();
    assert_eq!(
        tensor.metadata()["ARROW:extension:name"],
        "arrow.fixed_shape_tensor"
    );
    assert!(tensor.metadata()["ARROW:extension:metadata"].contains("[3,32,32]"));
    assert_eq!(
        strings(&got, "path"),
        rels.iter().cloned().map(Some).collect::<Vec<_>>()
    );
    // Reference: the engine on one batch of the same files.
    let input = RecordBatch::try_from_iter([(
        "image",
        Arc::new(BinaryArray::from_iter(
            rels.iter()
                .map(|r| Some(std::fs::read(root.join("src").join(r)).unwrap())),
        )) as ArrayRef,
    )])
    .unwrap();
    let reference =
        process_batch(&input, &spec(), &EngineConfig::default(), &HeapAllocator, 0).unwrap();
    assert_same_output(&got, &reference);

    // Rerun: every shard is complete and verified, nothing is rewritten.
    let again = convert(
        &convert_options(
            format!("dir:{}", root.join("src").display()),
            root.join("out"),
            OutputFormat::Parquet,
            3,
        ),
        &ignore_progress,
    )
    .unwrap();
    assert_eq!((again.shards_written, again.shards_skipped), (0, 3));
    assert_eq!(again.errors, summary.errors);
    // A different conversion into the same place is refused.
    let other = convert(
        &convert_options(
            format!("dir:{}", root.join("src").display()),
            root.join("out"),
            OutputFormat::Parquet,
            2,
        ),
        &ignore_progress,
    );
    assert!(other.unwrap_err().to_string().contains("shards"));
    let _ = std::fs::remove_dir_all(&root);
}
