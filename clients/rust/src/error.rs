//! The client's error type.

use arrow_flight::error::FlightError;
use arrow_schema::ArrowError;

/// Everything that can go wrong talking to a pixelfeed server or reading
/// its output.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL could not be used.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The connection could not be made or broke.
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The server answered with an error status. `InvalidArgument` means
    /// the request broke the contract (the message names the field or
    /// column); `ResourceExhausted` that the server ran out of output memory.
    #[error("server returned {code:?}: {message}", code = .0.code(), message = .0.message())]
    Server(Box<tonic::Status>),
    /// A Flight message could not be encoded or decoded.
    #[error("flight protocol error: {0}")]
    Flight(FlightError),
    /// Building or reading Arrow data failed.
    #[error("arrow error: {0}")]
    Arrow(#[from] ArrowError),
    /// The server's answer does not follow the pixelfeed contract.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// A record batch is not a pixelfeed output batch (no `tensor` column,
    /// wrong type, missing extension metadata).
    #[error("not a pixelfeed tensor batch: {0}")]
    NotTensorBatch(String),
    /// An argument to a client method was unusable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// The server's status, when the server answered with an error.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::Server(status) => Some(status),
            _ => None,
        }
    }

    /// The gRPC status code, when the server answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        self.status().map(tonic::Status::code)
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        Self::Server(Box::new(status))
    }
}

impl From<FlightError> for ClientError {
    fn from(e: FlightError) -> Self {
        match e {
            // Unwrap statuses so callers can match on the code.
            FlightError::Tonic(status) => Self::Server(status),
            FlightError::Arrow(e) => Self::Arrow(e),
            other => Self::Flight(other),
        }
    }
}
