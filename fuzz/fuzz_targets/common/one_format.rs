//! Shared by the per-format targets (`webp`, `gif`, `bmp`, `tiff`): the
//! engine on one row whose bytes always carry the format's magic (prepended
//! when the fuzzer's input lacks it), so every execution reaches that
//! format's header walk and decoder. Whatever the bytes: exactly one row,
//! a tensor or an error text, no panic out of the engine, no failed batch,
//! and no allocation the limits did not allow (libFuzzer's -rss_limit_mb).

use std::sync::{Arc, OnceLock};

use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use pixelfeed_engine::{process_batch, EngineConfig, HeapAllocator};
use pixelfeed_schema::TransformSpec;

fn spec() -> &'static TransformSpec {
    static SPEC: OnceLock<TransformSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        TransformSpec::from_json(
            br#"{"resize":{"mode":"exact","height":16,"width":24},"dtype":"uint8","layout":"hwc"}"#,
        )
        .unwrap()
    })
}

/// Runs one row of `data`, made to start with `magic` (at `offset`).
pub fn run(data: &[u8], magic: &[u8], offset: usize) {
    let mut image;
    let bytes = if data.get(offset..offset + magic.len()) == Some(magic) {
        data
    } else {
        image = data.to_vec();
        if image.len() < offset + magic.len() {
            image.resize(offset + magic.len(), 0);
        }
        image[offset..offset + magic.len()].copy_from_slice(magic);
        &image[..]
    };
    let config = EngineConfig {
        max_pixels: 4_000_000,
        ..EngineConfig::default()
    };
    let schema = Arc::new(Schema::new(vec![Field::new("image", DataType::Binary, true)]));
    let column = Arc::new(BinaryArray::from_vec(vec![bytes])) as ArrayRef;
    let batch = RecordBatch::try_new(schema, vec![column]).unwrap();
    let out = process_batch(&batch, spec(), &config, &HeapAllocator, 0)
        .expect("a valid batch never fails");
    assert_eq!(out.num_rows(), 1);
    let tensor = out.column_by_name("tensor").unwrap();
    let error = out.column_by_name("error").unwrap();
    assert_eq!(tensor.is_valid(0), error.is_null(0));
    if let Some(msg) = error.as_any().downcast_ref::<arrow_array::StringArray>().filter(|e| e.is_valid(0)) {
        // A decoder panic is contained, but it is still a finding.
        assert!(!msg.value(0).contains("(panic)"), "{}", msg.value(0));
    }
}
