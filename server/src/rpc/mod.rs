//! One module per RPC (family), each on the shared data path
//! ([`crate::stream`]) and the config types ([`crate::config`]); none
//! depends on another.

pub(crate) mod actions;
pub(crate) mod exchange;
pub(crate) mod get;
pub(crate) mod info;
pub(crate) mod put;

use pixelfeed_data::{Dataset, DatasetError};
use serde_json::{json, Value};
use tonic::Status;

/// Maps a dataset failure to the status a client sees.
pub(crate) fn dataset_status(e: DatasetError) -> Status {
    match &e {
        DatasetError::Unknown(_) => Status::not_found(e.to_string()),
        DatasetError::Conflict { .. } => Status::already_exists(e.to_string()),
        DatasetError::Uri { .. } | DatasetError::Invalid(_) | DatasetError::Parquet { .. } => {
            Status::invalid_argument(e.to_string())
        }
        DatasetError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Status::not_found(e.to_string())
        }
        DatasetError::OutOfRange { .. } => Status::failed_precondition(e.to_string()),
        DatasetError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        DatasetError::Forbidden(_) => Status::permission_denied(e.to_string()),
        DatasetError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Status::permission_denied(e.to_string())
        }
        DatasetError::Io { .. } | DatasetError::Arrow(_) => Status::internal(e.to_string()),
    }
}

/// `{"name", "uri", "rows"}` of a dataset (`ListFlights` metadata, the
/// `datasets` action).
pub(crate) fn summary(d: &Dataset) -> Value {
    json!({"name": d.name(), "uri": d.uri(), "rows": d.rows()})
}
