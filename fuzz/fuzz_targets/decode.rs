//! The engine's entry point on one row of arbitrary bytes: whatever the
//! bytes, `process_batch` returns exactly one row (a tensor or an error
//! text), never panics out, never fails the batch.
#![no_main]

use std::sync::{Arc, OnceLock};

use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use libfuzzer_sys::fuzz_target;
use pixelfeed_schema::TransformSpec;
use pixelfeed_engine::{process_batch, EngineConfig, HeapAllocator};

/// Two specs so both the uint8 and the normalised float path run; the
/// input's length picks one (so seed images keep their magic bytes).
fn specs() -> &'static [TransformSpec; 2] {
    static SPECS: OnceLock<[TransformSpec; 2]> = OnceLock::new();
    SPECS.get_or_init(|| {
        let parse = |s: &str| TransformSpec::from_json(s.as_bytes()).unwrap();
        [
            parse(r#"{"resize":{"mode":"exact","height":16,"width":24},"dtype":"uint8","layout":"hwc"}"#),
            parse(r#"{"preset":"imagenet","resize":{"mode":"shorter_side","size":20},"crop":{"mode":"center","height":16,"width":16}}"#),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let (image, spec) = (data, &specs()[data.len() % 2]);
    // Lower limits than the server's defaults keep each execution fast;
    // the checks before allocation are what is being exercised.
    let config = EngineConfig {
        max_pixels: 4_000_000,
        ..EngineConfig::default()
    };
    let schema = Arc::new(Schema::new(vec![Field::new(
        "image",
        DataType::Binary,
        true,
    )]));
    let column = Arc::new(BinaryArray::from_vec(vec![image])) as ArrayRef;
    let batch = RecordBatch::try_new(schema, vec![column]).unwrap();
    let out =
        process_batch(&batch, spec, &config, &HeapAllocator, 0).expect("a valid batch never fails");
    assert_eq!(out.num_rows(), 1);
    let tensor = out.column_by_name("tensor").unwrap();
    let error = out.column_by_name("error").unwrap();
    // Exactly one of tensor / error per row.
    assert_eq!(tensor.is_valid(0), error.is_null(0));
});
