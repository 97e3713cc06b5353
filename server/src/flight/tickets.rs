//! Self-describing shard tickets and the `GetFlightInfo` request.
//!
//! Invariant: a ticket carries everything needed to serve it — dataset
//! name, the fully resolved transform spec, the shard's row range and the
//! dataset's row count when it was cut — and nothing tied to the server
//! that issued it. So any server that has the same dataset registered under
//! the same name can serve any ticket (that is what `--peer` fan-out relies
//! on), and a server whose copy has a different row count refuses it
//! (`FailedPrecondition`) rather than serve different rows.

use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::FlightDescriptor;
use pixelfeed_schema::TransformSpec;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tonic::Status;

/// Version of the ticket JSON.
pub const TICKET_VERSION: u32 = 1;

/// Most shards one `GetFlightInfo` may ask for.
pub const MAX_SHARDS: u64 = 1 << 16;

/// The preset used when a request names no spec (as the clients do).
pub const DEFAULT_PRESET: &str = "imagenet";

/// A `DoGet` ticket for one contiguous shard of a dataset, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardTicket {
    /// Ticket format version ([`TICKET_VERSION`]).
    pub v: u32,
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
    pub fn decode(bytes: &[u8]) -> Result<(Self, TransformSpec), Status> {
        let ticket: Self = serde_json::from_slice(bytes).map_err(|e| {
            Status::invalid_argument(format!(
                "not a pixelfeed shard ticket (get one from GetFlightInfo): {e}"
            ))
        })?;
        if ticket.v != TICKET_VERSION {
            return Err(Status::invalid_argument(format!(
                "ticket version {} is not supported (this server reads version {TICKET_VERSION})",
                ticket.v
            )));
        }
        if ticket.start > ticket.end || ticket.end > ticket.rows {
            return Err(Status::invalid_argument(format!(
                "ticket rows {}..{} do not fit its dataset of {} rows",
                ticket.start, ticket.end, ticket.rows
            )));
        }
        let spec = TransformSpec::from_value(&ticket.spec).map_err(|e| {
            Status::invalid_argument(format!("invalid transform spec in ticket: {e}"))
        })?;
        Ok((ticket, spec))
    }
}

/// What a `GetFlightInfo` descriptor asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct InfoRequest {
    /// Dataset name.
    pub dataset: String,
    /// Validated transform spec.
    pub spec: TransformSpec,
    /// Number of shards (endpoints), at least 1.
    pub shards: u64,
}

impl InfoRequest {
    /// Reads a descriptor: PATH `[NAME]` (default spec, one shard) or CMD
    /// JSON `{"dataset": NAME, "spec": {...} | "preset-name", "shards": K}`
    /// (`spec` and `shards` optional).
    pub fn from_descriptor(d: &FlightDescriptor) -> Result<Self, Status> {
        let default_spec = || json!({ "preset": DEFAULT_PRESET });
        if d.r#type == DescriptorType::Path as i32 {
            let [name] = d.path.as_slice() else {
                return Err(Status::invalid_argument(format!(
                    "a PATH descriptor must hold exactly one element, the dataset name; got {:?}",
                    d.path
                )));
            };
            return Ok(Self {
                dataset: name.clone(),
                spec: parse_spec(&default_spec())?,
                shards: 1,
            });
        }
        let value: Value = serde_json::from_slice(&d.cmd).map_err(|e| {
            Status::invalid_argument(format!("the CMD descriptor is not JSON: {e}"))
        })?;
        let obj = value.as_object().ok_or_else(|| {
            Status::invalid_argument(
                "the CMD descriptor must be a JSON object {\"dataset\", \"spec\", \"shards\"}",
            )
        })?;
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "dataset" | "spec" | "shards"))
        {
            return Err(Status::invalid_argument(format!(
                "unknown field {k:?} in the CMD descriptor (expected dataset, spec, shards)"
            )));
        }
        let dataset = obj
            .get("dataset")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Status::invalid_argument("the CMD descriptor needs a string \"dataset\"")
            })?
            .to_string();
        let spec = match obj.get("spec") {
            None | Some(Value::Null) => default_spec(),
            Some(Value::String(preset)) => json!({ "preset": preset }),
            Some(other) => other.clone(),
        };
        let shards = match obj.get("shards") {
            None | Some(Value::Null) => 1,
            Some(v) => v
                .as_u64()
                .filter(|k| (1..=MAX_SHARDS).contains(k))
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "\"shards\" must be an integer from 1 to {MAX_SHARDS}, got {v}"
                    ))
                })?,
        };
        Ok(Self {
            dataset,
            spec: parse_spec(&spec)?,
            shards,
        })
    }
}

fn parse_spec(value: &Value) -> Result<TransformSpec, Status> {
    TransformSpec::from_value(value)
        .map_err(|e| Status::invalid_argument(format!("invalid transform spec: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_and_are_checked() {
        let spec = TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap();
        let t = ShardTicket {
            v: TICKET_VERSION,
            dataset: "d".into(),
            spec: spec.to_value(),
            start: 2,
            end: 5,
            rows: 9,
        };
        let (back, s) = ShardTicket::decode(&t.encode()).unwrap();
        assert_eq!(back, t);
        assert_eq!(s, spec);
        let mut bad = t.clone();
        bad.end = 10;
        assert!(ShardTicket::decode(&bad.encode()).is_err());
        assert!(ShardTicket::decode(b"garbage").is_err());
    }

    #[test]
    fn descriptors_parse() {
        let r =
            InfoRequest::from_descriptor(&FlightDescriptor::new_path(vec!["d".into()])).unwrap();
        assert_eq!((r.dataset.as_str(), r.shards), ("d", 1));
        assert_eq!(r.spec.shape(), [3, 224, 224]);
        let r = InfoRequest::from_descriptor(&FlightDescriptor::new_cmd(
            r#"{"dataset":"d","spec":"imagenet","shards":4}"#,
        ))
        .unwrap();
        assert_eq!(r.shards, 4);
        for bad in [
            r#"{"spec":{}}"#,
            r#"{"dataset":"d","shards":0}"#,
            r#"{"dataset":"d","extra":1}"#,
            r#"{"dataset":"d","spec":{"preset":"nope"}}"#,
            "[]",
        ] {
            let err = InfoRequest::from_descriptor(&FlightDescriptor::new_cmd(bad.to_string()))
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }
}
