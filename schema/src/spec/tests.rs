use serde_json::{json, Value};

use super::*;

fn err(v: Value) -> SpecError {
    TransformSpec::from_value(&v).unwrap_err()
}

#[test]
fn imagenet_preset_expands_to_the_documented_spec() {
    let spec = TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap();
    assert_eq!(spec.resize, Resize::ShorterSide { size: 256 });
    assert_eq!(
        spec.crop,
        Some(Crop::Center {
            height: 224,
            width: 224
        })
    );
    assert_eq!(spec.filter, Filter::Bilinear);
    assert_eq!(spec.dtype, DType::Float32);
    assert_eq!(spec.layout, Layout::Chw);
    assert_eq!(
        spec.normalize.as_ref().unwrap().std,
        vec![0.229, 0.224, 0.225]
    );
    assert!(spec.exif_orientation);
    assert_eq!(spec.shape(), [3, 224, 224]);
    assert_eq!(spec.row_bytes(), 3 * 224 * 224 * 4);
}

#[test]
fn explicit_fields_override_the_preset() {
    let spec = TransformSpec::from_value(&json!({
        "preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": null
    }))
    .unwrap();
    assert_eq!(spec.dtype, DType::UInt8);
    assert_eq!(spec.normalize, None);
    assert_eq!(spec.shape(), [224, 224, 3]);
    assert_eq!(spec.dim_names(), ["H", "W", "C"]);
}

#[test]
fn resolved_json_round_trips() {
    let spec = TransformSpec::from_json(
        br#"{"preset":"imagenet","color":"gray","normalize":{"mean":[0.5],"std":[0.5]}}"#,
    )
    .unwrap();
    let again = TransformSpec::from_value(&spec.to_value()).unwrap();
    assert_eq!(spec, again);
    let imagenet = TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap();
    assert!(
        imagenet.to_json().contains(r#""mean":[0.485,0.456,0.406]"#),
        "{}",
        imagenet.to_json()
    );
}

#[test]
fn errors_name_the_field() {
    assert_eq!(
        err(json!({"preset": "imagenet", "crop": {"mode": "center", "height": 0, "width": 3}}))
            .field,
        "crop.height"
    );
    assert_eq!(
        err(json!({"preset": "imagenet", "filter": "box"})).field,
        "filter"
    );
    assert_eq!(err(json!({"preset": "nope"})).field, "preset");
    assert_eq!(
        err(json!({"preset": "imagenet", "colour": "rgb"})).field,
        "colour"
    );
    assert_eq!(
        err(json!({"resize": {"mode": "shorter_side", "size": 256}})).field,
        "crop"
    );
    assert_eq!(
        err(json!({"preset": "imagenet", "dtype": "uint8"})).field,
        "normalize"
    );
    assert_eq!(
        err(json!({"preset": "imagenet", "color": "gray"})).field,
        "normalize.mean"
    );
    assert_eq!(
        err(json!({"preset": "imagenet", "crop": {"mode": "center", "height": 300, "width": 224}}))
            .field,
        "crop.height"
    );
    assert_eq!(
        err(
            json!({"preset": "imagenet", "resize": {"mode": "exact", "height": 99999, "width": 3}})
        )
        .field,
        "resize.height"
    );
    assert_eq!(
        err(json!({"preset": "imagenet", "normalize": {"mean": [0, 0, 0], "std": [1, 0, 1]}}))
            .field,
        "normalize.std"
    );
    // Found by the `spec` fuzz target: 7.7e120 is a finite f64 but an
    // infinite f32, so the spec was accepted and its canonical form
    // (`"mean":[null]`) was not.
    let huge =
        br#"{"preset":"imagenet","color":"gray","normalize":{"mean":[7.7e120],"std":[0.25]}}"#;
    assert_eq!(
        TransformSpec::from_json(huge).unwrap_err().field,
        "normalize.mean"
    );
    // Finite values whose outputs overflow float32.
    let tiny_std = json!({"preset": "imagenet", "color": "gray", "normalize": {"mean": [0.5], "std": [1e-39]}});
    assert_eq!(err(tiny_std).field, "normalize");
    let far_mean =
        json!({"preset": "imagenet", "color": "gray", "normalize": {"mean": [3e38], "std": [0.1]}});
    assert_eq!(err(far_mean).field, "normalize");
    assert_eq!(err(json!([1, 2])).field, "spec");
    let e = TransformSpec::from_json(b"{not json").unwrap_err();
    assert_eq!(e.field, "spec");
    assert!(e.to_string().starts_with("spec: not valid JSON"));
}

#[test]
fn every_preset_parses_and_round_trips() {
    for name in PRESET_NAMES {
        let spec = TransformSpec::from_value(&json!({ "preset": name }))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            TransformSpec::from_value(&spec.to_value()).unwrap(),
            spec,
            "{name}"
        );
    }
    let clip = TransformSpec::from_json(br#"{"preset":"clip"}"#).unwrap();
    assert_eq!(clip.filter, Filter::Bicubic);
    assert_eq!(clip.normalize.unwrap().mean[0], 0.481_454_66);
    let raw = TransformSpec::from_json(br#"{"preset":"raw_u8"}"#).unwrap();
    assert_eq!(
        (raw.dtype, raw.layout, raw.normalize),
        (DType::UInt8, Layout::Hwc, None)
    );
    let train = TransformSpec::from_json(br#"{"preset":"imagenet_train"}"#).unwrap();
    assert!(train.is_random());
    assert_eq!(train.output_size(), (224, 224));
}

#[test]
fn every_resize_and_crop_mode_parses_and_round_trips() {
    let cases = [
        json!({"resize": {"mode": "longer_side", "size": 300}, "crop": {"mode": "center", "height": 200, "width": 300}}),
        json!({"resize": {"mode": "fit", "height": 64, "width": 80, "pad_value": [114, 114, 114]}, "dtype": "float16"}),
        json!({"resize": {"mode": "fit", "height": 64, "width": 80, "pad_value": 3}, "color": "gray", "normalize": null}),
        json!({"resize": {"mode": "fit", "height": 64, "width": 80, "pad_value": [1, 2, 3]}, "color": "gray"}),
        json!({"resize": {"mode": "none"}, "crop": {"mode": "box", "top": -4, "left": 10, "height": 32, "width": 16}, "color": "bgr", "dtype": "bfloat16"}),
        json!({"crop": {"mode": "center", "height": 10, "width": 10}, "flip": {"vertical_p": 0.25}, "seed": 18446744073709551615u64, "strict": true}),
        json!({"preset": "imagenet", "draft": true}),
        json!({"crop": {"mode": "random_resized_crop", "height": 8, "width": 8, "scale": [0.5, 1], "ratio": [1, 2]}}),
    ];
    for v in cases {
        let spec = TransformSpec::from_value(&v).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(
            TransformSpec::from_value(&spec.to_value()).unwrap(),
            spec,
            "{v}"
        );
    }
    let fit = TransformSpec::from_value(
        &json!({"resize": {"mode": "fit", "height": 64, "width": 80, "pad_value": 3}}),
    )
    .unwrap();
    assert_eq!(
        fit.resize,
        Resize::Fit {
            height: 64,
            width: 80,
            pad_value: [3, 3, 3]
        }
    );
    assert_eq!(fit.shape(), [3, 64, 80]);
    let half =
        TransformSpec::from_value(&json!({"preset": "imagenet", "dtype": "bfloat16"})).unwrap();
    assert_eq!(half.row_bytes(), 3 * 224 * 224 * 2);
    assert!(!half.strict);
}

#[test]
fn bad_mode_fields_name_their_errors() {
    let field = |v: Value| err(v).field;
    assert_eq!(field(json!({})), "crop");
    assert_eq!(
        field(json!({"resize": {"mode": "longer_side", "size": 10}})),
        "crop"
    );
    assert_eq!(field(json!({"resize": {"mode": "huge"}})), "resize.mode");
    assert_eq!(
        field(json!({"resize": {"mode": "fit", "height": 4, "width": 4, "pad_value": 256}})),
        "resize.pad_value"
    );
    assert_eq!(
        field(json!({"resize": {"mode": "fit", "height": 4, "width": 4, "pad_value": [1, 2]}})),
        "resize.pad_value"
    );
    assert_eq!(
        field(
            json!({"preset": "imagenet", "crop": {"mode": "random_resized_crop", "height": 4, "width": 4}})
        ),
        "resize.mode"
    );
    assert_eq!(
        field(
            json!({"crop": {"mode": "random_resized_crop", "height": 4, "width": 4, "scale": [0, 1]}})
        ),
        "crop.scale"
    );
    assert_eq!(
        field(
            json!({"crop": {"mode": "random_resized_crop", "height": 4, "width": 4, "scale": [0.9, 0.5]}})
        ),
        "crop.scale"
    );
    assert_eq!(
        field(
            json!({"crop": {"mode": "random_resized_crop", "height": 4, "width": 4, "ratio": [-1, 1]}})
        ),
        "crop.ratio"
    );
    assert_eq!(
        field(json!({"crop": {"mode": "box", "top": 0, "height": 4, "width": 4}})),
        "crop.left"
    );
    assert_eq!(
        field(json!({"preset": "imagenet", "flip": {"horizontal_p": 1.5}})),
        "flip.horizontal_p"
    );
    assert_eq!(
        field(json!({"preset": "imagenet", "flip": {"diagonal_p": 0.5}})),
        "flip.diagonal_p"
    );
    assert_eq!(field(json!({"preset": "imagenet", "seed": -1})), "seed");
    assert_eq!(
        field(json!({"preset": "imagenet", "strict": "yes"})),
        "strict"
    );
    assert_eq!(field(json!({"preset": "imagenet", "draft": 1})), "draft");
    assert_eq!(
        field(json!({"preset": "imagenet", "decoder": "libjpeg"})),
        "decoder"
    );
    assert_eq!(
        field(json!({"preset": "imagenet", "draft": true, "decoder": "zune-jpeg"})),
        "draft"
    );
    assert_eq!(
        field(json!({"preset": "imagenet", "dtype": "float64"})),
        "dtype"
    );
    assert_eq!(
        field(json!({"preset": "imagenet", "color": "rgba"})),
        "color"
    );
}

#[test]
fn exact_resize_needs_no_crop() {
    let spec = TransformSpec::from_value(&json!({
        "resize": {"mode": "exact", "height": 32, "width": 48}, "dtype": "uint8"
    }))
    .unwrap();
    assert_eq!(spec.output_size(), (32, 48));
    assert_eq!(spec.shape(), [3, 32, 48]);
    assert_eq!(spec.row_bytes(), 3 * 32 * 48);
}

#[test]
fn the_decoder_is_named_and_round_trips() {
    let auto = TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap();
    assert_eq!(auto.decoder, JpegDecoder::Auto);
    assert_eq!(auto.to_value()["decoder"], "auto");
    for (name, decoder) in [
        ("libjpeg-turbo", JpegDecoder::LibjpegTurbo),
        ("zune-jpeg", JpegDecoder::ZuneJpeg),
    ] {
        let spec =
            TransformSpec::from_value(&json!({"preset": "imagenet", "decoder": name})).unwrap();
        assert_eq!(spec.decoder, decoder);
        assert_eq!(TransformSpec::from_value(&spec.to_value()).unwrap(), spec);
    }
}
