//! Differential: a (mutated) JPEG through both decoders. When libjpeg-turbo
//! (the reference: Pillow's decoder) and zune-jpeg (the pure-Rust fallback)
//! both accept a file in strict mode, their pixels must agree within the
//! tolerance the layout matrix holds them to; a disagreement is a finding
//! (a file zune-jpeg decodes silently wrong), reported as a crash.
//! Lenient (recovered) decodes are not compared: each decoder pads damage
//! its own way, and both flag it with a warning.
#![no_main]

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{UInt32Type, UInt8Type};
use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use libfuzzer_sys::fuzz_target;
use pixelfeed_engine::{process_batch, EngineConfig, HeapAllocator};
use pixelfeed_schema::TransformSpec;

/// Mean |diff| (0–255 scale) allowed between the two decoders, as in
/// `engine/tests/it/jpeg_matrix.rs`.
const TOLERANCE: f64 = 1.0;

fn run(image: &[u8], spec: &str) -> RecordBatch {
    // Small limits keep each execution fast.
    let config = EngineConfig {
        max_pixels: 1 << 20,
        ..EngineConfig::default()
    };
    let schema = Arc::new(Schema::new(vec![Field::new("image", DataType::Binary, true)]));
    let column = Arc::new(BinaryArray::from_vec(vec![image])) as ArrayRef;
    let batch = RecordBatch::try_new(schema, vec![column]).unwrap();
    let spec = TransformSpec::from_json(spec.as_bytes()).unwrap();
    process_batch(&batch, &spec, &config, &HeapAllocator, 0).expect("a valid batch never fails")
}

/// The row's pixels, when it decoded cleanly (no error, no warning).
fn clean_pixels(out: &RecordBatch) -> Option<Vec<u8>> {
    let error = out.column_by_name("error").unwrap();
    let warning = out.column_by_name("warning").unwrap();
    if error.is_valid(0) || warning.is_valid(0) {
        return None;
    }
    let tensor = out.column_by_name("tensor").unwrap().as_fixed_size_list();
    Some(tensor.value(0).as_primitive::<UInt8Type>().values().to_vec())
}

fuzz_target!(|data: &[u8]| {
    if !data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return;
    }
    // The frame size, from the header walk (reported even for error rows).
    let probe = run(
        data,
        r#"{"resize":{"mode":"exact","height":1,"width":1},"dtype":"uint8","layout":"hwc","exif_orientation":false}"#,
    );
    let height = probe.column_by_name("height").unwrap().as_primitive::<UInt32Type>();
    let width = probe.column_by_name("width").unwrap().as_primitive::<UInt32Type>();
    if height.is_null(0) || width.is_null(0) {
        return;
    }
    let (h, w) = (height.value(0), width.value(0));
    if h == 0 || w == 0 || h > 16384 || w > 16384 {
        return;
    }
    let spec = |decoder: &str| {
        format!(
            r#"{{"resize":{{"mode":"none"}},"crop":{{"mode":"box","top":0,"left":0,"height":{h},"width":{w}}},
                "dtype":"uint8","layout":"hwc","exif_orientation":false,"strict":true,"decoder":"{decoder}"}}"#
        )
    };
    let (Some(reference), Some(zune)) = (
        clean_pixels(&run(data, &spec("libjpeg-turbo"))),
        clean_pixels(&run(data, &spec("zune-jpeg"))),
    ) else {
        return;
    };
    assert_eq!(reference.len(), zune.len());
    let diff = reference
        .iter()
        .zip(&zune)
        .map(|(a, b)| f64::from(a.abs_diff(*b)))
        .sum::<f64>()
        / reference.len().max(1) as f64;
    assert!(
        diff <= TOLERANCE,
        "zune-jpeg and libjpeg-turbo disagree on a {w}x{h} JPEG both accept: mean |diff| {diff:.2}"
    );
});
