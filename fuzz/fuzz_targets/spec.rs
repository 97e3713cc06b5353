//! The spec parser on arbitrary bytes: never panics, and every accepted
//! spec survives its canonical form (`to_json` parses back to itself).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pixelfeed_schema::TransformSpec;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = TransformSpec::from_json(data) {
        let canonical = spec.to_json();
        let again = TransformSpec::from_json(canonical.as_bytes())
            .unwrap_or_else(|e| panic!("canonical form {canonical} rejected: {e}"));
        assert_eq!(again, spec, "{canonical}");
        let _ = spec.shape();
    }
});
