//! `fixtures/contract.json` is the contract as data, for clients in other
//! languages to check their copies against. This test holds it to the
//! constants of this crate: change one, and the fixture must change too.

use pixelfeed_schema::spec::PRESET_NAMES;
use pixelfeed_schema::*;
use serde_json::{json, Value};

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/contract.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_fixture_states_this_crates_constants() {
    let f = fixture();
    let expected = json!({
        "wire_version": WIRE_VERSION,
        "columns": {
            "image": columns::IMAGE, "tensor": columns::TENSOR, "error": columns::ERROR,
            "height": columns::HEIGHT, "width": columns::WIDTH, "warning": columns::WARNING,
            "geometry": columns::GEOMETRY, "seed": columns::SEED,
        },
        "output_columns": columns::OUTPUT,
        "geometry_fields": geometry_fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>(),
        "metadata_keys": {
            "spec": SPEC_METADATA_KEY, "version": VERSION_METADATA_KEY,
            "dtype": DTYPE_METADATA_KEY, "extension_name": EXTENSION_NAME_KEY,
            "extension_metadata": EXTENSION_METADATA_KEY,
        },
        "tensor_extension": FIXED_SHAPE_TENSOR,
        "default_preset": DEFAULT_PRESET,
        "preset_names": PRESET_NAMES,
        "ticket_version": TICKET_VERSION,
        "max_shards": MAX_SHARDS,
        "row_error_kinds": RowErrorKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
    });
    for (key, want) in expected.as_object().unwrap() {
        assert_eq!(&f[key], want, "fixtures/contract.json: {key}");
    }
}

#[test]
fn the_fixture_commands_are_what_the_builder_writes() {
    let f = fixture();
    let examples = f["info_command_examples"].as_array().unwrap();
    assert!(!examples.is_empty());
    for example in examples {
        let args = &example["args"];
        let spec = match &args["spec"] {
            Value::Null => None,
            other => Some(other),
        };
        let cmd = InfoRequest::command(
            args["dataset"].as_str().unwrap(),
            spec,
            args["shards"].as_u64().unwrap(),
        );
        let written: Value = serde_json::from_slice(&cmd).unwrap();
        assert_eq!(written, example["command"], "{args}");
        InfoRequest::from_command(&cmd).unwrap();
    }
}
