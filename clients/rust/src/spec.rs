//! What the client accepts as a transform spec.

use pixelfeed_schema::TransformSpec;
use serde_json::Value;

/// Anything that can be sent as the `DoExchange` spec: JSON text, a JSON
/// value, or a validated [`TransformSpec`].
///
/// JSON is sent as given and validated by the server, which is the
/// authority on the contract (its `InvalidArgument` names the bad field).
pub trait IntoSpecJson {
    /// The spec as JSON text.
    fn into_spec_json(self) -> String;
}

impl IntoSpecJson for &str {
    fn into_spec_json(self) -> String {
        self.to_owned()
    }
}

impl IntoSpecJson for String {
    fn into_spec_json(self) -> String {
        self
    }
}

impl IntoSpecJson for &String {
    fn into_spec_json(self) -> String {
        self.clone()
    }
}

impl IntoSpecJson for &Value {
    fn into_spec_json(self) -> String {
        self.to_string()
    }
}

impl IntoSpecJson for Value {
    fn into_spec_json(self) -> String {
        self.to_string()
    }
}

impl IntoSpecJson for &TransformSpec {
    fn into_spec_json(self) -> String {
        self.to_json()
    }
}

impl IntoSpecJson for TransformSpec {
    fn into_spec_json(self) -> String {
        self.to_json()
    }
}
