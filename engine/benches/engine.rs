//! Criterion benches of the engine, one group per pipeline stage, so a
//! regression shows where it happened.
//!
//! The engine's stages are crate-private, so every bench goes through
//! `process_batch` with a spec that isolates a stage as far as possible:
//!
//! | group | spec | measures |
//! | --- | --- | --- |
//! | `decode` | exact 8×8, nearest, uint8 HWC | decode (+ sniff, header walk; resize and tensor writes are negligible) |
//! | `resize_u8` | imagenet, uint8 HWC, no normalise | decode + antialiased resize + crop |
//! | `imagenet_f32` | imagenet preset (float32 CHW, normalised) | the whole row |
//! | `draft_f32` | imagenet preset + `"draft": true` (feature `turbojpeg` only) | the whole row, JPEG decoded by libjpeg-turbo at 1/2 |
//!
//! `resize_u8 - decode` approximates the resize cost, `imagenet_f32 -
//! resize_u8` the float conversion / normalisation / CHW transpose.
//! Each group runs one bundled JPEG (`mpl_grace_hopper.jpg`, 512×600) and
//! one PNG (`pillow_hopper.png`, 128×128) at batch sizes 1 (one thread) and
//! 32 (rows in parallel on the global rayon pool). Throughput is in images.
//!
//! ```sh
//! cargo bench -p pixelfeed-server --bench engine -- --quick
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{BinaryArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use criterion::{BenchmarkId, Criterion, Throughput};
use pixelfeed_engine::{process_batch, EngineConfig, HeapAllocator};
use pixelfeed_schema::TransformSpec;

/// (group name, spec JSON) — see the table in the crate docs.
const SPECS: [(&str, &str); 3] = [
    (
        "decode",
        r#"{"resize":{"mode":"exact","height":8,"width":8},"filter":"nearest","dtype":"uint8","layout":"hwc"}"#,
    ),
    (
        "resize_u8",
        r#"{"preset":"imagenet","dtype":"uint8","layout":"hwc","normalize":null}"#,
    ),
    ("imagenet_f32", r#"{"preset":"imagenet"}"#),
];

/// (label, file under tests/data/images).
const IMAGES: [(&str, &str); 2] = [
    ("jpeg_512x600", "mpl_grace_hopper.jpg"),
    ("png_128x128", "pillow_hopper.png"),
];

/// Benched only in builds with draft decoding (the feature `turbojpeg`).
const DRAFT_SPEC: (&str, &str) = ("draft_f32", r#"{"preset":"imagenet","draft":true}"#);

const BATCH_SIZES: [usize; 2] = [1, 32];

fn image(name: &str) -> Vec<u8> {
    let path = format!("{}/../tests/data/images/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A batch with one `image: binary` column holding `rows` copies of `bytes`.
fn batch_of(bytes: &[u8], rows: usize) -> RecordBatch {
    let column = BinaryArray::from_iter_values(std::iter::repeat_n(bytes, rows));
    let schema = Schema::new(vec![Field::new("image", DataType::Binary, true)]);
    RecordBatch::try_new(Arc::new(schema), vec![Arc::new(column)]).expect("valid batch")
}

fn engine(c: &mut Criterion) {
    let config = EngineConfig::default();
    let images: Vec<(&str, Vec<u8>)> = IMAGES
        .iter()
        .map(|(label, file)| (*label, image(file)))
        .collect();
    let draft = cfg!(feature = "turbojpeg").then_some(DRAFT_SPEC);
    for (group_name, json) in SPECS.into_iter().chain(draft) {
        let spec = TransformSpec::from_json(json.as_bytes()).expect("bench spec is valid");
        let mut group = c.benchmark_group(group_name);
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for (label, bytes) in &images {
            for rows in BATCH_SIZES {
                let batch = batch_of(bytes, rows);
                // A failing row would benchmark the error path: refuse.
                let out = process_batch(&batch, &spec, &config, &HeapAllocator, 0).expect("batch");
                let errors = out.column_by_name("error").expect("error column");
                assert_eq!(errors.null_count(), rows, "{label} failed under {json}");

                group.throughput(Throughput::Elements(rows as u64));
                group.bench_with_input(BenchmarkId::new(*label, rows), &batch, |b, batch| {
                    b.iter(|| {
                        black_box(
                            process_batch(black_box(batch), &spec, &config, &HeapAllocator, 0)
                                .expect("batch"),
                        )
                    });
                });
            }
        }
        group.finish();
    }
}

// What `criterion_group!` + `criterion_main!` expand to, written out: the
// macro's generated `pub fn benches` has no doc comment, which the
// workspace's `missing_docs` lint rejects.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    engine(&mut c);
    c.final_summary();
}
