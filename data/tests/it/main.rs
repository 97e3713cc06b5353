//! pixelfeed-data's tests, one binary with a module per feature.

mod convert;

use pixelfeed_schema::TransformSpec;
use serde_json::json;

/// A small, cheap spec (the tests check plumbing, not pixels).
pub fn spec() -> TransformSpec {
    TransformSpec::from_value(&json!({
        "preset": "imagenet", "resize": {"mode": "shorter_side", "size": 40},
        "crop": {"mode": "center", "height": 32, "width": 32},
        "dtype": "uint8", "normalize": null
    }))
    .unwrap()
}
