//! The batch level: contract checks, one output block, rows in parallel,
//! and the zero-copy assembly of the output record batch.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float16Array, Float32Array, Float64Array,
    RecordBatch, RecordBatchOptions, StringArray, StructArray, UInt16Array, UInt32Array,
    UInt8Array,
};
use arrow_buffer::{NullBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType};
use pixelfeed_schema::{
    columns, geometry_fields, image_column_index, output_schema, tensor_field, DType, JpegDecoder,
    TransformSpec,
};
use rayon::prelude::*;

use crate::error::RowError;
use crate::row::{process_row, Geometry, RowContext, RowOutcome};
use crate::BatchReport;
use crate::{jpeg, BlockAllocator, EngineConfig, EngineError};

/// The `image` column, whichever binary layout it uses.
enum Images<'a> {
    Binary(&'a arrow_array::BinaryArray),
    LargeBinary(&'a arrow_array::LargeBinaryArray),
    BinaryView(&'a arrow_array::BinaryViewArray),
}

impl<'a> Images<'a> {
    fn new(column: &'a ArrayRef) -> Result<Self, EngineError> {
        let wrong = || {
            EngineError::Contract(pixelfeed_schema::ContractError::ImageColumnType(
                column.data_type().to_string(),
            ))
        };
        Ok(match column.data_type() {
            DataType::Binary => Self::Binary(column.as_binary_opt().ok_or_else(wrong)?),
            DataType::LargeBinary => Self::LargeBinary(column.as_binary_opt().ok_or_else(wrong)?),
            DataType::BinaryView => {
                Self::BinaryView(column.as_binary_view_opt().ok_or_else(wrong)?)
            }
            _ => return Err(wrong()),
        })
    }

    /// The bytes of row `i`, `None` when the cell is null.
    fn get(&self, i: usize) -> Option<&'a [u8]> {
        match self {
            Self::Binary(a) => a.is_valid(i).then(|| a.value(i)),
            Self::LargeBinary(a) => a.is_valid(i).then(|| a.value(i)),
            Self::BinaryView(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

/// The key of each row's random draws: its `seed` column value when the
/// input has an integer `seed` column (null cells fall back to the
/// position), else its position in the stream.
fn row_keys(batch: &RecordBatch, first_row: u64) -> Vec<u64> {
    let position = |i: usize| first_row.wrapping_add(i as u64);
    let Some(column) = batch.column_by_name(columns::SEED) else {
        return (0..batch.num_rows()).map(position).collect();
    };
    let keys = arrow_cast_to_u64(column);
    (0..batch.num_rows())
        .map(|i| {
            keys.as_ref()
                .and_then(|k| k(i))
                .unwrap_or_else(|| position(i))
        })
        .collect()
}

/// A reader of an integer column's values as u64 (two's complement for
/// signed types); `None` for non-integer columns.
#[allow(clippy::type_complexity)]
fn arrow_cast_to_u64(column: &ArrayRef) -> Option<Box<dyn Fn(usize) -> Option<u64> + '_>> {
    use arrow_array::types::*;
    macro_rules! reader {
        ($t:ty) => {{
            let a = column.as_primitive::<$t>();
            Some(Box::new(move |i| a.is_valid(i).then(|| a.value(i) as u64)))
        }};
    }
    match column.data_type() {
        DataType::Int64 => reader!(Int64Type),
        DataType::UInt64 => reader!(UInt64Type),
        DataType::Int32 => reader!(Int32Type),
        DataType::UInt32 => reader!(UInt32Type),
        _ => None,
    }
}

/// The `geometry` struct column of `outcomes`.
fn geometry_column(outcomes: &[RowOutcome]) -> Result<StructArray, ArrowError> {
    let geo: Vec<Option<Geometry>> = outcomes.iter().map(|o| o.geometry).collect();
    let get = |f: fn(&Geometry) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(
            geo.iter().map(|g| g.as_ref().map_or(0.0, f)),
        ))
    };
    let flag = |f: fn(&Geometry) -> bool| -> ArrayRef {
        Arc::new(BooleanArray::from_iter(
            geo.iter().map(|g| Some(g.as_ref().is_some_and(f))),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt8Array::from_iter_values(
            geo.iter().map(|g| g.map_or(1, |g| g.orientation)),
        )),
        flag(|g| g.flipped_horizontal),
        flag(|g| g.flipped_vertical),
        get(|g| g.mapping.scale_y),
        get(|g| g.mapping.scale_x),
        get(|g| g.mapping.box_top),
        get(|g| g.mapping.box_left),
        get(|g| g.mapping.box_height),
        get(|g| g.mapping.box_width),
    ];
    let nulls = geo
        .iter()
        .any(Option::is_none)
        .then(|| NullBuffer::from_iter(geo.iter().map(Option::is_some)));
    StructArray::try_new(geometry_fields(), columns, nulls)
}

/// The spec this build runs for `spec`: its `decoder` resolved (`auto` is
/// libjpeg-turbo when built in, else zune-jpeg), so the spec stored in an
/// output schema or a ticket names the decoder that ran. Refuses what this
/// build cannot run rather than giving other pixels: a pinned decoder it
/// lacks, or `draft` without libjpeg-turbo.
///
/// # Errors
/// [`EngineError::Unsupported`] naming the field and what is missing.
pub fn resolve_spec(spec: &TransformSpec) -> Result<TransformSpec, EngineError> {
    let missing = |field: &str| {
        EngineError::Unsupported(format!(
            "spec field {field}: this server was built without libjpeg-turbo (cargo feature \
             `turbojpeg`, which needs cmake and nasm to build); its JPEG decoder is zune-jpeg"
        ))
    };
    let decoder = match spec.decoder {
        JpegDecoder::Auto if jpeg::turbo::AVAILABLE => JpegDecoder::LibjpegTurbo,
        JpegDecoder::Auto => JpegDecoder::ZuneJpeg,
        JpegDecoder::LibjpegTurbo if !jpeg::turbo::AVAILABLE => return Err(missing("decoder")),
        pinned => pinned,
    };
    if spec.draft && decoder != JpegDecoder::LibjpegTurbo {
        return Err(missing("draft"));
    }
    Ok(TransformSpec {
        decoder,
        ..spec.clone()
    })
}

/// The JPEG decoders this build has, the default (what `auto` resolves to)
/// first, with versions: what `DoAction("stats")` reports.
pub fn jpeg_decoders() -> Vec<&'static str> {
    let mut decoders = Vec::with_capacity(2);
    if jpeg::turbo::AVAILABLE {
        decoders.push(jpeg::turbo::NAME);
    }
    decoders.push(jpeg::zune::NAME);
    decoders
}

/// The `decoders` object of `DoAction("stats")` (and of the in-process
/// module's `stats()`): `{"jpeg": [...], "jpeg_default": ...}`.
pub fn decoders_json() -> serde_json::Value {
    let jpeg = jpeg_decoders();
    serde_json::json!({"jpeg_default": jpeg[0], "jpeg": jpeg})
}

/// [`process_batch`](super::process_batch), also returning how long each row
/// spent in each stage (for latency metrics; the engine itself records
/// nothing).
///
/// # Errors
/// As [`process_batch`](super::process_batch).
pub fn process_batch_timed(
    batch: &RecordBatch,
    spec: &TransformSpec,
    config: &EngineConfig,
    alloc: &dyn BlockAllocator,
    first_row: u64,
) -> Result<(RecordBatch, BatchReport), EngineError> {
    let spec = &resolve_spec(spec)?;
    let input_schema = batch.schema();
    let schema = Arc::new(output_schema(&input_schema, spec)?);
    let image_index = image_column_index(&input_schema)?;
    let images = Images::new(batch.column(image_index))?;
    let rows = batch.num_rows();
    let row_bytes = spec.row_bytes();
    let total = rows.checked_mul(row_bytes).ok_or_else(|| {
        EngineError::Allocation(format!("{rows} rows of {row_bytes} bytes overflow usize"))
    })?;

    let mut block = alloc.allocate(total).map_err(EngineError::Allocation)?;
    if block.len() != total {
        return Err(EngineError::Allocation(format!(
            "allocator returned {} bytes, {total} were asked for",
            block.len()
        )));
    }

    let ctx = RowContext::new(spec, config);
    let keys = row_keys(batch, first_row);
    let mut outcomes = vec![RowOutcome::default(); rows];
    if row_bytes > 0 {
        block
            .as_mut_slice()
            .par_chunks_mut(row_bytes)
            .zip(outcomes.par_iter_mut())
            .enumerate()
            .for_each(|(i, (slot, outcome))| {
                *outcome = process_row(images.get(i), keys[i], &ctx, slot);
            });
    }

    let buffer = block.into_buffer();
    if buffer.as_ptr().align_offset(std::mem::align_of::<f32>()) != 0 {
        return Err(EngineError::Allocation(
            "allocator returned a block that is not 4-byte aligned".into(),
        ));
    }
    let elements = rows * spec.elements_per_row();
    let values: ArrayRef = match spec.dtype {
        DType::Float32 => Arc::new(Float32Array::new(
            ScalarBuffer::new(buffer, 0, elements),
            None,
        )),
        DType::Float16 => Arc::new(Float16Array::new(
            ScalarBuffer::new(buffer, 0, elements),
            None,
        )),
        DType::BFloat16 => Arc::new(UInt16Array::new(
            ScalarBuffer::new(buffer, 0, elements),
            None,
        )),
        DType::UInt8 => Arc::new(UInt8Array::new(
            ScalarBuffer::new(buffer, 0, elements),
            None,
        )),
    };
    let nulls = outcomes
        .iter()
        .any(|o| o.error.is_some())
        .then(|| NullBuffer::from_iter(outcomes.iter().map(|o| o.error.is_none())));
    let field = tensor_field(spec);
    let DataType::FixedSizeList(item, size) = field.data_type() else {
        return Err(ArrowError::SchemaError("tensor field is not a fixed-size list".into()).into());
    };
    let tensor = FixedSizeListArray::try_new_with_length(item.clone(), *size, values, nulls, rows)?;

    let error: StringArray = outcomes
        .iter()
        .map(|o| o.error.as_ref().map(ToString::to_string))
        .collect();
    let height: UInt32Array = outcomes.iter().map(|o| o.dims.map(|d| d.0)).collect();
    let width: UInt32Array = outcomes.iter().map(|o| o.dims.map(|d| d.1)).collect();
    let warning: StringArray = outcomes.iter().map(|o| o.warning.as_deref()).collect();
    let geometry = geometry_column(&outcomes)?;

    let mut columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != image_index)
        .map(|(_, c)| c.clone())
        .collect();
    columns.push(Arc::new(tensor));
    columns.push(Arc::new(error));
    columns.push(Arc::new(height));
    columns.push(Arc::new(width));
    columns.push(Arc::new(warning));
    columns.push(Arc::new(geometry));
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    let out = RecordBatch::try_new_with_options(schema, columns, &options)?;
    let report = BatchReport {
        stages: outcomes.iter().map(|o| o.stages).collect(),
        errors: outcomes
            .iter()
            .map(|o| o.error.as_ref().map(RowError::kind))
            .collect(),
    };
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process_batch;
    use crate::{HeapAllocator, TensorBlock};
    use arrow_array::{BinaryViewArray, Int64Array, LargeBinaryArray, StringViewArray};
    use arrow_buffer::Buffer;
    use arrow_schema::{Field, Schema};
    use pixelfeed_schema::ContractError;
    use serde_json::json;

    use pixelfeed_testkit::image;

    fn uint8_hwc() -> TransformSpec {
        TransformSpec::from_value(&json!({
            "preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": null
        }))
        .unwrap()
    }

    fn imagenet() -> TransformSpec {
        TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap()
    }

    /// A batch `id: int64, image: binary, label: utf8view` (image in the
    /// middle so passthrough order is exercised).
    fn batch_of(images: &[Option<Vec<u8>>]) -> RecordBatch {
        let ids = Int64Array::from_iter_values(0..images.len() as i64);
        let bin = arrow_array::BinaryArray::from_iter(images.iter().map(|i| i.as_deref()));
        let labels =
            StringViewArray::from_iter_values((0..images.len()).map(|i| format!("row{i}")));
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("image", DataType::Binary, true),
            Field::new("label", DataType::Utf8View, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(ids), Arc::new(bin), Arc::new(labels)],
        )
        .unwrap()
    }

    fn run(batch: &RecordBatch, spec: &TransformSpec) -> RecordBatch {
        process_batch(batch, spec, &EngineConfig::default(), &HeapAllocator, 0).unwrap()
    }

    fn errors(out: &RecordBatch) -> Vec<Option<String>> {
        out.column_by_name("error")
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(|e| e.map(str::to_owned))
            .collect()
    }

    fn dims(out: &RecordBatch) -> Vec<Option<(u32, u32)>> {
        let h = out
            .column_by_name("height")
            .unwrap()
            .as_primitive::<arrow_array::types::UInt32Type>();
        let w = out
            .column_by_name("width")
            .unwrap()
            .as_primitive::<arrow_array::types::UInt32Type>();
        h.iter().zip(w.iter()).map(|(h, w)| h.zip(w)).collect()
    }

    /// Row `i`'s tensor bytes (uint8 specs).
    fn row_u8(out: &RecordBatch, i: usize) -> Vec<u8> {
        let t = out.column_by_name("tensor").unwrap().as_fixed_size_list();
        t.value(i)
            .as_primitive::<arrow_array::types::UInt8Type>()
            .values()
            .to_vec()
    }

    /// The SOF0 of `jpeg` patched to claim `w`×`h`.
    fn patch_sof(mut jpeg: Vec<u8>, w: u16, h: u16) -> Vec<u8> {
        let at = jpeg
            .windows(2)
            .position(|m| m == [0xFF, 0xC0])
            .expect("baseline JPEG");
        jpeg[at + 5..at + 7].copy_from_slice(&h.to_be_bytes());
        jpeg[at + 7..at + 9].copy_from_slice(&w.to_be_bytes());
        jpeg
    }

    #[test]
    fn stage_times_cover_the_stages_each_row_completed() {
        let batch = batch_of(&[
            Some(image("pillow_hopper.jpg")),
            Some(b"junk".to_vec()),
            None,
        ]);
        let (out, stages) = crate::process_batch_timed(
            &batch,
            &imagenet(),
            &EngineConfig::default(),
            &HeapAllocator,
            0,
        )
        .unwrap();
        assert_eq!(stages.stages.len(), out.num_rows());
        let good = stages.stages[0];
        assert!(good.decode.is_some_and(|d| !d.is_zero()), "{good:?}");
        assert!(good.resize.is_some() && good.convert.is_some(), "{good:?}");
        for failed in &stages.stages[1..] {
            assert_eq!(*failed, crate::RowStages::default());
        }
        assert_eq!(
            stages.errors,
            [
                None,
                Some(crate::RowErrorKind::UnknownFormat),
                Some(crate::RowErrorKind::Null)
            ]
        );
    }

    #[test]
    fn rows_stay_in_order_with_passthrough_and_row_errors() {
        let bomb = patch_sof(image("pillow_hopper.jpg"), 65500, 65500);
        let batch = batch_of(&[
            Some(image("pillow_hopper.jpg")),
            None,
            Some(b"definitely not an image".to_vec()),
            Some(image("pillow_hopper.png")),
            Some(bomb),
            Some(Vec::new()),
            Some(image("mpl_grace_hopper.jpg")),
        ]);
        let spec = imagenet();
        let out = run(&batch, &spec);
        let expected_schema =
            output_schema(&batch.schema(), &resolve_spec(&spec).unwrap()).unwrap();
        assert_eq!(out.schema().as_ref(), &expected_schema);
        assert_eq!(out.num_rows(), 7);
        // Passthrough columns are the input arrays themselves.
        assert_eq!(out.column(0).as_ref(), batch.column(0).as_ref());
        assert_eq!(out.column(1).as_ref(), batch.column(2).as_ref());
        let errs = errors(&out);
        assert_eq!(errs[0], None);
        assert_eq!(errs[1].as_deref(), Some("image is null"));
        assert_eq!(
            errs[2].as_deref(),
            Some("unknown image format (first bytes: 64 65 66 69 6e 69 74 65 ...)")
        );
        assert_eq!(errs[3], None);
        assert_eq!(
            errs[4].as_deref(),
            Some("image is 65500x65500 = 4290 Mpx, over the 64 Mpx limit")
        );
        assert_eq!(errs[5].as_deref(), Some("empty image"));
        assert_eq!(errs[6], None);
        assert_eq!(
            dims(&out),
            [
                Some((128, 128)),
                None,
                None,
                Some((128, 128)),
                Some((65500, 65500)),
                None,
                Some((600, 512)),
            ]
        );
        let tensor = out.column_by_name("tensor").unwrap();
        let valid: Vec<bool> = (0..7).map(|i| tensor.is_valid(i)).collect();
        assert_eq!(valid, [true, false, false, true, false, false, true]);
        // Failed rows' slots are zeroed, good rows are not.
        let values = tensor
            .as_fixed_size_list()
            .values()
            .as_primitive::<arrow_array::types::Float32Type>();
        let n = spec.elements_per_row();
        assert!(values.values()[n..3 * n].iter().all(|&v| v == 0.0));
        assert!(values.values()[..n].iter().any(|&v| v != 0.0));
    }

    #[test]
    fn binary_layouts_give_identical_results() {
        let imgs = [
            image("pillow_hopper.jpg"),
            image("coffee_palette16_trns.png"),
        ];
        let spec = uint8_hwc();
        let schema = |t: DataType| Arc::new(Schema::new(vec![Field::new("image", t, true)]));
        let plain = RecordBatch::try_new(
            schema(DataType::Binary),
            vec![Arc::new(arrow_array::BinaryArray::from_iter_values(&imgs))],
        )
        .unwrap();
        let large = RecordBatch::try_new(
            schema(DataType::LargeBinary),
            vec![Arc::new(LargeBinaryArray::from_iter_values(&imgs))],
        )
        .unwrap();
        let view = RecordBatch::try_new(
            schema(DataType::BinaryView),
            vec![Arc::new(BinaryViewArray::from_iter_values(&imgs))],
        )
        .unwrap();
        let a = run(&plain, &spec);
        for other in [run(&large, &spec), run(&view, &spec)] {
            assert_eq!(errors(&other), [None, None]);
            for i in 0..2 {
                assert_eq!(row_u8(&a, i), row_u8(&other, i));
            }
        }
    }

    #[test]
    fn specs_resolve_to_a_decoder_this_build_has() {
        let spec = |v: serde_json::Value| TransformSpec::from_value(&v).unwrap();
        let turbo = cfg!(feature = "turbojpeg");
        let auto = resolve_spec(&imagenet()).unwrap();
        let default = if turbo {
            JpegDecoder::LibjpegTurbo
        } else {
            JpegDecoder::ZuneJpeg
        };
        assert_eq!(auto.decoder, default);
        assert_eq!(
            TransformSpec {
                decoder: JpegDecoder::Auto,
                ..auto
            },
            imagenet()
        );
        let zune = spec(json!({"preset": "imagenet", "decoder": "zune-jpeg"}));
        assert_eq!(resolve_spec(&zune).unwrap(), zune);
        let pinned = spec(json!({"preset": "imagenet", "decoder": "libjpeg-turbo"}));
        let draft = spec(json!({"preset": "imagenet", "draft": true}));
        if turbo {
            assert_eq!(resolve_spec(&pinned).unwrap(), pinned);
            assert_eq!(
                resolve_spec(&draft).unwrap().decoder,
                JpegDecoder::LibjpegTurbo
            );
        } else {
            for (spec, field) in [(pinned, "spec field decoder"), (draft, "spec field draft")] {
                let err = resolve_spec(&spec).unwrap_err();
                assert!(matches!(err, EngineError::Unsupported(_)), "{err}");
                assert!(err.to_string().starts_with(field), "{err}");
            }
        }
        assert_eq!(jpeg_decoders()[0].starts_with("libjpeg-turbo"), turbo);
    }

    #[test]
    fn empty_batch_is_a_valid_empty_batch() {
        let batch = batch_of(&[]);
        let spec = imagenet();
        let out = run(&batch, &spec);
        assert_eq!(out.num_rows(), 0);
        assert_eq!(
            out.schema().as_ref(),
            &output_schema(&batch.schema(), &resolve_spec(&spec).unwrap()).unwrap()
        );
    }

    fn train_spec() -> TransformSpec {
        TransformSpec::from_value(&json!({
            "preset": "imagenet_train", "seed": 42, "dtype": "uint8", "layout": "hwc",
            "normalize": null,
            "crop": {"mode": "random_resized_crop", "height": 32, "width": 32}
        }))
        .unwrap()
    }

    fn tensors(out: &RecordBatch) -> Vec<Vec<u8>> {
        (0..out.num_rows()).map(|i| row_u8(out, i)).collect()
    }

    #[test]
    fn random_draws_do_not_depend_on_batching() {
        let names = [
            "pillow_hopper.jpg",
            "mpl_grace_hopper.jpg",
            "pillow_hopper.png",
            "pillow_hopper.jpg",
            "mpl_grace_hopper.jpg",
        ];
        let imgs: Vec<Option<Vec<u8>>> = names.iter().map(|n| Some(image(n))).collect();
        let spec = train_spec();
        let config = EngineConfig::default();
        let whole =
            tensors(&process_batch(&batch_of(&imgs), &spec, &config, &HeapAllocator, 0).unwrap());
        let head = process_batch(&batch_of(&imgs[..2]), &spec, &config, &HeapAllocator, 0).unwrap();
        let tail = process_batch(&batch_of(&imgs[2..]), &spec, &config, &HeapAllocator, 2).unwrap();
        let mut split = tensors(&head);
        split.extend(tensors(&tail));
        assert_eq!(whole, split);
        // The same image at positions 0 and 3 gets different draws.
        assert_ne!(whole[0], whole[3]);
        // Another seed, other draws.
        let other = TransformSpec {
            seed: 43,
            ..spec.clone()
        };
        let reseeded =
            tensors(&process_batch(&batch_of(&imgs), &other, &config, &HeapAllocator, 0).unwrap());
        assert_ne!(whole, reseeded);
    }

    #[test]
    fn a_seed_column_keys_the_draws() {
        let img = image("mpl_grace_hopper.jpg");
        let schema = Arc::new(Schema::new(vec![
            Field::new("image", DataType::Binary, true),
            Field::new("seed", DataType::Int64, true),
        ]));
        let make = |seeds: Vec<Option<i64>>| {
            let n = seeds.len();
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(arrow_array::BinaryArray::from_iter_values(vec![&img; n])),
                    Arc::new(Int64Array::from(seeds)),
                ],
            )
            .unwrap()
        };
        let spec = train_spec();
        let a = tensors(&run(&make(vec![Some(5), Some(9), None]), &spec));
        let b = tensors(
            &process_batch(
                &make(vec![Some(9), Some(5)]),
                &spec,
                &EngineConfig::default(),
                &HeapAllocator,
                1000,
            )
            .unwrap(),
        );
        assert_eq!(a[0], b[1]);
        assert_eq!(a[1], b[0]);
        assert_ne!(a[0], a[1]);
        // A null seed falls back to the position: row 2 == key 2.
        let c = tensors(&run(&make(vec![Some(0), Some(1), Some(2)]), &spec));
        assert_eq!(a[2], c[2]);
    }

    #[test]
    fn geometry_reports_scale_box_and_orientation() {
        let batch = batch_of(&[Some(image("mpl_grace_hopper.jpg")), None]);
        let out = run(&batch, &imagenet());
        let geo = out.column_by_name("geometry").unwrap().as_struct();
        assert!(geo.is_valid(0) && geo.is_null(1));
        let f = |name: &str| {
            geo.column_by_name(name)
                .unwrap()
                .as_primitive::<arrow_array::types::Float64Type>()
                .value(0)
        };
        // 600x512 (h x w) -> shorter side 256: 300x256, centre crop 224.
        assert_eq!(f("scale_x"), 0.5);
        assert_eq!(f("scale_y"), 0.5);
        assert_eq!((f("box_top"), f("box_left")), (76.0, 32.0));
        assert_eq!((f("box_height"), f("box_width")), (448.0, 448.0));
        let orientation = geo
            .column_by_name("orientation")
            .unwrap()
            .as_primitive::<arrow_array::types::UInt8Type>();
        assert_eq!(orientation.value(0), 1);
        let warning = out.column_by_name("warning").unwrap();
        assert_eq!(warning.null_count(), 2);
    }

    #[test]
    fn contract_violations_fail_the_batch() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap();
        let err = process_batch(
            &batch,
            &imagenet(),
            &EngineConfig::default(),
            &HeapAllocator,
            0,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            EngineError::Contract(ContractError::MissingImageColumn(_))
        ));
    }

    #[test]
    fn allocator_failure_is_a_batch_error() {
        struct Broke;
        impl BlockAllocator for Broke {
            fn allocate(&self, _: usize) -> Result<TensorBlock, String> {
                Err("pool closed".into())
            }
        }
        let batch = batch_of(&[Some(image("pillow_hopper.jpg"))]);
        let err =
            process_batch(&batch, &imagenet(), &EngineConfig::default(), &Broke, 0).unwrap_err();
        assert!(matches!(err, EngineError::Allocation(m) if m == "pool closed"));
    }

    #[test]
    fn output_values_are_the_allocated_block() {
        let batch = batch_of(&vec![Some(image("pillow_hopper.jpg")); 3]);
        let spec = uint8_hwc();
        let out = run(&batch, &spec);
        let values = out
            .column_by_name("tensor")
            .unwrap()
            .as_fixed_size_list()
            .values()
            .to_data();
        // One buffer holding exactly all rows: no copy into a new allocation.
        assert_eq!(values.buffers().len(), 1);
        assert_eq!(values.buffers()[0].len(), 3 * spec.row_bytes());
        let _: &Buffer = &values.buffers()[0];
    }

    #[test]
    fn all_eight_orientations_come_out_upright() {
        let spec = uint8_hwc();
        let names: Vec<String> = (2..=8)
            .map(|o| format!("pillow_hopper_orientation_{o}.jpg"))
            .collect();
        let mut rows: Vec<Option<Vec<u8>>> = vec![Some(image("pillow_hopper.jpg"))];
        rows.extend(names.iter().map(|n| Some(image(n))));
        let out = run(&batch_of(&rows), &spec);
        assert!(errors(&out).iter().all(Option::is_none));
        let upright = row_u8(&out, 0);
        for (i, name) in names.iter().enumerate() {
            let t = row_u8(&out, i + 1);
            let mean_diff = t
                .iter()
                .zip(&upright)
                .map(|(a, b)| f64::from(a.abs_diff(*b)))
                .sum::<f64>()
                / t.len() as f64;
            // Each file is a separate lossy encoding of the same picture;
            // a wrong orientation gives a mean difference of 30+.
            assert!(mean_diff < 6.0, "{name}: mean |diff| {mean_diff}");
        }
        // With orientation off, orientation 6 stays sideways.
        let off = TransformSpec::from_value(&json!({
            "preset": "imagenet", "dtype": "uint8", "layout": "hwc",
            "normalize": null, "exif_orientation": false
        }))
        .unwrap();
        let out = run(
            &batch_of(&[Some(image("pillow_hopper_orientation_6.jpg"))]),
            &off,
        );
        let t = row_u8(&out, 0);
        let mean_diff = t
            .iter()
            .zip(&upright)
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / t.len() as f64;
        assert!(mean_diff > 20.0, "orientation ignored: {mean_diff}");
    }

    #[test]
    fn colour_models_and_png_variants() {
        let batch = batch_of(&[
            Some(image("pillow_hopper_gray.jpg")),
            Some(image("pillow_pil_sample_cmyk.jpg")),
            Some(image("coffee_palette16_trns.png")),
            Some(image("coffee_gray16.png")),
            Some(image("pillow_pil123rgba.png")),
            Some(image("pillow_hopper_wal.png")),
            Some(image("china_progressive_420_q90.jpg")),
        ]);
        let out = run(&batch, &uint8_hwc());
        assert_eq!(errors(&out), vec![None; 7]);
        // Gray JPEG broadcast to RGB: all three channels equal.
        let gray = row_u8(&out, 0);
        assert!(gray.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        // 16-bit gray keeps the high byte: a normal photo, not clipped white.
        let g16 = row_u8(&out, 3);
        let mean = g16.iter().map(|&v| f64::from(v)).sum::<f64>() / g16.len() as f64;
        assert!((20.0..230.0).contains(&mean), "mean {mean}");
        // Gray output of a colour image is one channel.
        let gray_spec = TransformSpec::from_value(&json!({
            "preset": "imagenet", "color": "gray", "dtype": "uint8", "normalize": null
        }))
        .unwrap();
        let out = run(&batch, &gray_spec);
        assert_eq!(errors(&out), vec![None; 7]);
        assert_eq!(row_u8(&out, 1).len(), 224 * 224);
    }

    #[test]
    fn decoding_only_the_needed_region_changes_no_output() {
        let names: Vec<String> = std::fs::read_dir(pixelfeed_testkit::images_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".jpg"))
            .collect();
        let rows: Vec<Option<Vec<u8>>> = names.iter().map(|n| Some(image(n))).collect();
        let specs = [
            json!({"preset": "imagenet"}),
            json!({"preset": "imagenet", "draft": true}),
            json!({"preset": "imagenet_train", "seed": 3}),
            json!({"resize": {"mode": "exact", "height": 50, "width": 70}, "filter": "bicubic"}),
            json!({"resize": {"mode": "fit", "height": 64, "width": 64}, "filter": "lanczos3"}),
            json!({"resize": {"mode": "shorter_side", "size": 96}, "filter": "nearest",
                   "crop": {"mode": "box", "top": -7, "left": 30, "height": 40, "width": 50}}),
            json!({"resize": {"mode": "none"}, "crop": {"mode": "box", "top": 20, "left": 33,
                   "height": 64, "width": 48}, "dtype": "uint8", "layout": "hwc"}),
            json!({"resize": {"mode": "longer_side", "size": 300}, "color": "gray",
                   "crop": {"mode": "center", "height": 200, "width": 120}, "draft": true}),
        ];
        for value in specs {
            if value.get("draft").is_some() && !cfg!(feature = "turbojpeg") {
                // Draft needs libjpeg-turbo; its refusal is tested above.
                continue;
            }
            let spec = TransformSpec::from_value(&value).unwrap();
            let cropped = run(&batch_of(&rows), &spec);
            crate::row::DECODE_WHOLE.store(true, std::sync::atomic::Ordering::Relaxed);
            let whole = run(&batch_of(&rows), &spec);
            crate::row::DECODE_WHOLE.store(false, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(errors(&cropped), vec![None; rows.len()], "{value}");
            let (a, b) = (
                cropped.column_by_name("tensor").unwrap(),
                whole.column_by_name("tensor").unwrap(),
            );
            for (i, name) in names.iter().enumerate() {
                assert!(
                    a.as_fixed_size_list().value(i) == b.as_fixed_size_list().value(i),
                    "{name}: {value}"
                );
            }
        }
    }

    mod properties {
        use super::*;
        use pixelfeed_testkit::any_spec;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            /// Whatever a valid spec asks, real images come out as good rows
            /// of the declared size (no panic, no error, no short slot).
            #[test]
            fn any_valid_spec_processes_real_images(value in any_spec(), seed in any::<u64>()) {
                // Specs the validator refuses are out of scope (proptest
                // fails the test if it has to reject too many).
                let parsed = TransformSpec::from_value(&value);
                prop_assume!(parsed.is_ok());
                let mut spec = parsed.unwrap();
                spec.seed = seed;
                spec.dtype = DType::UInt8;
                let batch = batch_of(&[
                    Some(image("pillow_hopper.jpg")),
                    Some(image("pillow_hopper_orientation_6.jpg")),
                    Some(image("coffee_palette16_trns.png")),
                ]);
                let out = run(&batch, &spec);
                prop_assert_eq!(out.num_rows(), 3);
                prop_assert_eq!(errors(&out), vec![None, None, None]);
                for i in 0..3 {
                    prop_assert_eq!(row_u8(&out, i).len(), spec.row_bytes());
                }
            }
        }
    }
}
