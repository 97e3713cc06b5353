//! Dataset reads over Flight: the `GetFlightInfo` command and the
//! self-describing `DoGet` shard ticket.
//!
//! Architecture invariant: a ticket carries everything needed to serve it —
//! dataset name, the fully resolved transform spec, the shard's row range
//! and the dataset's row count when it was cut — and nothing tied to the
//! server that issued it. So any server that has the same dataset
//! registered under the same name can serve any ticket (what `--peer`
//! fan-out relies on), and a server whose copy has a different row count
//! refuses it rather than serve different rows.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::excerpt;
use crate::spec::TransformSpec;
use crate::DEFAULT_PRESET;

/// Version of the ticket JSON (its `v` field).
pub const TICKET_VERSION: u32 = 1;

/// Most shards one `GetFlightInfo` may ask for.
pub const MAX_SHARDS: u64 = 1 << 16;

/// A ticket or command that does not parse; the message says why, in
/// words for the client (the server answers `INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TicketError(pub String);

/// A `DoGet` ticket for one contiguous shard of a dataset, as JSON
/// `{"v", "dataset", "spec", "start", "end", "rows"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardTicket {
    /// Ticket format version ([`TICKET_VERSION`]); `v` on the wire.
    #[serde(rename = "v")]
    pub version: u32,
    /// Registered dataset name.
    pub dataset: String,
    /// The resolved transform spec (every field explicit).
    pub spec: Value,
    /// First row of the shard.
    pub start: u64,
    /// One past the last row.
    pub end: u64,
    /// The dataset's row count when the ticket was cut.
    pub rows: u64,
}

impl ShardTicket {
    /// The ticket bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data to JSON cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses ticket bytes and validates the spec they carry.
    ///
    /// # Errors
    /// [`TicketError`] when the bytes are not a ticket of this version, the
    /// row range does not fit the row count, or the spec is invalid.
    pub fn decode(bytes: &[u8]) -> Result<(Self, TransformSpec), TicketError> {
        let ticket: Self = serde_json::from_slice(bytes).map_err(|e| {
            TicketError(format!(
                "not a pixelfeed shard ticket (get one from GetFlightInfo): {e}"
            ))
        })?;
        if ticket.version != TICKET_VERSION {
            return Err(TicketError(format!(
                "ticket version {} is not supported (this server reads version {TICKET_VERSION})",
                ticket.version
            )));
        }
        if ticket.start > ticket.end || ticket.end > ticket.rows {
            return Err(TicketError(format!(
                "ticket rows {}..{} do not fit its dataset of {} rows",
                ticket.start, ticket.end, ticket.rows
            )));
        }
        let spec = TransformSpec::from_value(&ticket.spec)
            .map_err(|e| TicketError(format!("invalid transform spec in ticket: {e}")))?;
        Ok((ticket, spec))
    }
}

/// What a `GetFlightInfo` descriptor asks for: PATH `[NAME]` (the default
/// spec, one shard) or a CMD holding [`InfoRequest::command`]'s JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct InfoRequest {
    /// Dataset name.
    pub dataset: String,
    /// Validated transform spec.
    pub spec: TransformSpec,
    /// Number of shards (endpoints), 1 to [`MAX_SHARDS`].
    pub shards: u64,
}

/// The spec JSON a request stands for: `None`/null is the default preset,
/// a string names a preset, an object is a spec.
fn spec_value(spec: Option<&Value>) -> Value {
    match spec {
        None | Some(Value::Null) => json!({ "preset": DEFAULT_PRESET }),
        Some(Value::String(preset)) => json!({ "preset": preset }),
        Some(other) => other.clone(),
    }
}

impl InfoRequest {
    /// The CMD descriptor bytes asking for `shards` shards of `dataset`
    /// through `spec` (`None`: the default preset; a JSON string: a preset
    /// name; an object: a spec). The one builder of this command: clients
    /// use it (the Python client's copy is checked against
    /// `fixtures/contract.json`).
    pub fn command(dataset: &str, spec: Option<&Value>, shards: u64) -> Vec<u8> {
        json!({"dataset": dataset, "spec": spec_value(spec), "shards": shards})
            .to_string()
            .into_bytes()
    }

    /// Reads a PATH descriptor: exactly one element, the dataset name.
    ///
    /// # Errors
    /// [`TicketError`] for any other number of elements.
    pub fn from_path(path: &[String]) -> Result<Self, TicketError> {
        let [name] = path else {
            return Err(TicketError(format!(
                "a PATH descriptor must hold exactly one element, the dataset name; got {} elements",
                path.len()
            )));
        };
        Ok(Self {
            dataset: name.clone(),
            spec: parse_spec(&spec_value(None))?,
            shards: 1,
        })
    }

    /// Reads a CMD descriptor: JSON `{"dataset": NAME, "spec": {...} |
    /// "preset-name", "shards": K}` (`spec` and `shards` optional).
    ///
    /// # Errors
    /// [`TicketError`] naming the field that is wrong.
    pub fn from_command(cmd: &[u8]) -> Result<Self, TicketError> {
        let value: Value = serde_json::from_slice(cmd)
            .map_err(|e| TicketError(format!("the CMD descriptor is not JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| {
            TicketError(
                "the CMD descriptor must be a JSON object {\"dataset\", \"spec\", \"shards\"}"
                    .into(),
            )
        })?;
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "dataset" | "spec" | "shards"))
        {
            return Err(TicketError(format!(
                "unknown field {} in the CMD descriptor (expected dataset, spec, shards)",
                excerpt(k)
            )));
        }
        let dataset = obj
            .get("dataset")
            .and_then(Value::as_str)
            .ok_or_else(|| TicketError("the CMD descriptor needs a string \"dataset\"".into()))?
            .to_string();
        let shards = match obj.get("shards") {
            None | Some(Value::Null) => 1,
            Some(v) => v
                .as_u64()
                .filter(|k| (1..=MAX_SHARDS).contains(k))
                .ok_or_else(|| {
                    TicketError(format!(
                        "\"shards\" must be an integer from 1 to {MAX_SHARDS}, got {v}"
                    ))
                })?,
        };
        Ok(Self {
            dataset,
            spec: parse_spec(&spec_value(obj.get("spec")))?,
            shards,
        })
    }
}

fn parse_spec(value: &Value) -> Result<TransformSpec, TicketError> {
    TransformSpec::from_value(value)
        .map_err(|e| TicketError(format!("invalid transform spec: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_and_are_checked() {
        let spec = TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap();
        let t = ShardTicket {
            version: TICKET_VERSION,
            dataset: "d".into(),
            spec: spec.to_value(),
            start: 2,
            end: 5,
            rows: 9,
        };
        let bytes = t.encode();
        assert!(std::str::from_utf8(&bytes)
            .unwrap()
            .starts_with(r#"{"v":1,"#));
        let (back, s) = ShardTicket::decode(&bytes).unwrap();
        assert_eq!(back, t);
        assert_eq!(s, spec);
        let mut bad = t.clone();
        bad.end = 10;
        assert!(ShardTicket::decode(&bad.encode()).is_err());
        assert!(ShardTicket::decode(b"garbage").is_err());
    }

    #[test]
    fn descriptors_parse() {
        let r = InfoRequest::from_path(&["d".into()]).unwrap();
        assert_eq!((r.dataset.as_str(), r.shards), ("d", 1));
        assert_eq!(r.spec.shape(), [3, 224, 224]);
        assert!(InfoRequest::from_path(&["a".into(), "b".into()]).is_err());
        let r =
            InfoRequest::from_command(br#"{"dataset":"d","spec":"imagenet","shards":4}"#).unwrap();
        assert_eq!(r.shards, 4);
        for bad in [
            r#"{"spec":{}}"#,
            r#"{"dataset":"d","shards":0}"#,
            r#"{"dataset":"d","extra":1}"#,
            r#"{"dataset":"d","spec":{"preset":"nope"}}"#,
            "[]",
        ] {
            assert!(InfoRequest::from_command(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_builder_reads_back() {
        let spec = json!({"preset": "imagenet", "dtype": "uint8", "normalize": null});
        for (spec, shards) in [(None, 1), (Some(json!("clip")), 3), (Some(spec), 2)] {
            let cmd = InfoRequest::command("d", spec.as_ref(), shards);
            let r = InfoRequest::from_command(&cmd).unwrap();
            assert_eq!((r.dataset.as_str(), r.shards), ("d", shards));
        }
    }
}
