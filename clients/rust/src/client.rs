//! The Flight connection and its calls.

use std::collections::BTreeMap;
use std::future::ready;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{
    Action, ActionType, FlightClient, FlightData, FlightDescriptor, FlightInfo, Ticket,
};
use arrow_schema::SchemaRef;
use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, Stream, StreamExt, TryStreamExt};
use pixelfeed_schema::{InfoRequest, TransformSpec};
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::input::{image_batches, image_schema};
use crate::{ClientError, IntoSpecJson};

/// Default largest message the client accepts (256 MiB, as the server).
/// tonic's own default, 4 MiB, is what the server aims output messages at
/// (`--target-message-bytes`), and a message holds at least one row, which
/// can be larger.
pub const DEFAULT_MAX_DECODING_MESSAGE_SIZE: usize = 256 << 20;

/// Default largest message the client sends (256 MiB, the server's default
/// receive limit). Each input batch travels as one message.
pub const DEFAULT_MAX_ENCODING_MESSAGE_SIZE: usize = 256 << 20;

/// How a [`Client`] connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Largest message accepted from the server, in bytes.
    pub max_decoding_message_size: usize,
    /// Largest message sent to the server, in bytes.
    pub max_encoding_message_size: usize,
    /// How long to wait for the connection; `None` waits as long as the OS does.
    pub connect_timeout: Option<Duration>,
    /// Bearer token sent as `authorization: Bearer <token>` on every call
    /// (the server's `--auth-token-file`).
    pub token: Option<String>,
    /// CA certificates (PEM) that the server's certificate must chain to;
    /// required for `grpc+tls://` URLs (this build trusts no system roots).
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and key (PEM), for servers that require
    /// mutual TLS (`--tls-client-ca`).
    pub tls_identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to check the server's certificate against, when it differs
    /// from the URL's host.
    pub tls_domain: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            max_decoding_message_size: DEFAULT_MAX_DECODING_MESSAGE_SIZE,
            max_encoding_message_size: DEFAULT_MAX_ENCODING_MESSAGE_SIZE,
            connect_timeout: Some(Duration::from_secs(10)),
            token: None,
            tls_ca_pem: None,
            tls_identity: None,
            tls_domain: None,
        }
    }
}

impl ClientOptions {
    /// Sends `token` as a bearer token on every call.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts the CA certificates in `pem` for `grpc+tls://` servers.
    pub fn with_tls_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// Presents this certificate chain and key (PEM) to the server.
    pub fn with_tls_identity(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.tls_identity = Some((cert.into(), key.into()));
        self
    }

    /// The tonic TLS settings for these options.
    fn tls_config(&self, url: &str) -> Result<ClientTlsConfig, ClientError> {
        let ca = self
            .tls_ca_pem
            .as_ref()
            .ok_or_else(|| ClientError::InvalidUrl {
                url: url.to_string(),
                reason: "a grpc+tls:// server needs a CA certificate (ClientOptions::with_tls_ca)"
                    .into(),
            })?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = &self.tls_identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        Ok(tls)
    }
}

/// HTTP/2 flow-control windows: large enough that a multi-megabyte output
/// message does not take many round trips.
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// A connection to a pixelfeed server. Cheap to clone; clones share the
/// connection, and calls on one client may run concurrently.
#[derive(Debug, Clone)]
pub struct Client {
    inner: FlightServiceClient<Channel>,
    /// `Bearer <token>`, added to every call.
    authorization: Option<String>,
}

impl Client {
    /// Connects to `url` (`grpc://host:port`, `grpc+tcp://host:port`,
    /// `http://host:port`, or a Unix socket as `grpc+unix:///path` or
    /// `unix:///path`; `grpc+tls://` needs [`Client::connect_with`] and a
    /// CA) with [`ClientOptions::default`].
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects to `url` with explicit options.
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let target = parse_url(url)?;
        let (http, tls) = match &target {
            Target::Http { url, tls } => (url.clone(), *tls),
            // The authority is never dialled: the connector opens the socket.
            Target::Unix(_) => ("http://localhost".to_string(), false),
        };
        let mut endpoint = Endpoint::from_shared(http).map_err(|e| ClientError::InvalidUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        endpoint = endpoint
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
        if let Some(timeout) = options.connect_timeout {
            endpoint = endpoint.connect_timeout(timeout);
        }
        if tls {
            endpoint = endpoint.tls_config(options.tls_config(url)?)?;
        }
        let channel = match target {
            Target::Http { .. } => endpoint.connect().await?,
            Target::Unix(path) => endpoint.connect_with_connector(UnixConnector(path)).await?,
        };
        Ok(Self::from_channel(channel, &options))
    }

    /// Wraps an existing channel (custom TLS, interceptors, ...).
    pub fn from_channel(channel: Channel, options: &ClientOptions) -> Self {
        Self {
            inner: FlightServiceClient::new(channel)
                .max_decoding_message_size(options.max_decoding_message_size)
                .max_encoding_message_size(options.max_encoding_message_size),
            authorization: options.token.as_ref().map(|t| format!("Bearer {t}")),
        }
    }

    /// An arrow-flight client on the same connection (carrying the bearer
    /// token, if any), for calls this crate does not wrap.
    pub fn flight_client(&self) -> FlightClient {
        let mut client = FlightClient::new_from_inner(self.inner.clone());
        if let Some(value) = &self.authorization {
            // Checked to be a valid header value when the call is made.
            let _ = client.add_header("authorization", value);
        }
        client
    }

    /// Streams `input` through the server's transform and returns the
    /// output batches, in input order.
    ///
    /// The first input batch's schema is the exchange's schema (every batch
    /// must share it); this call waits for that first batch before opening
    /// the exchange. Each input batch travels as one message. The spec is
    /// validated by the server: an invalid one fails this call with
    /// [`ClientError::Server`] `InvalidArgument`.
    pub async fn exchange<S>(
        &self,
        spec: impl IntoSpecJson,
        input: S,
    ) -> Result<ExchangeStream, ClientError>
    where
        S: Stream<Item = RecordBatch> + Send + 'static,
    {
        let mut input = input.boxed();
        let first = input.next().await;
        let schema = first.as_ref().map(RecordBatch::schema);
        let batches = stream::iter(first).chain(input).boxed();
        self.start_exchange(spec.into_spec_json(), schema, batches)
            .await
    }

    /// Like [`Self::exchange`], with the input schema given up front, so
    /// the exchange opens at once and the server answers with the output
    /// schema even if `input` yields nothing.
    pub async fn exchange_with_schema<S>(
        &self,
        spec: impl IntoSpecJson,
        schema: SchemaRef,
        input: S,
    ) -> Result<ExchangeStream, ClientError>
    where
        S: Stream<Item = RecordBatch> + Send + 'static,
    {
        self.start_exchange(spec.into_spec_json(), Some(schema), input.boxed())
            .await
    }

    async fn start_exchange(
        &self,
        spec: String,
        schema: Option<SchemaRef>,
        batches: BoxStream<'static, RecordBatch>,
    ) -> Result<ExchangeStream, ClientError> {
        let descriptor = FlightDescriptor::new_cmd(spec);
        // Dropping the ExchangeStream drops `cancel`, which ends the upload.
        // HTTP/2 resets a stream only once neither half is in use, so
        // without this a reader that walks away would leave the server
        // holding its pipeline (and output blocks) until the whole input
        // had been sent.
        let (cancel, cancelled) = oneshot::channel::<()>();
        let batches = batches.take_until(cancelled).boxed();
        let request: BoxStream<'static, Result<FlightData, FlightError>> = match schema {
            // The encoder's own splitting is off (`usize::MAX`): the server
            // processes each message as one batch, so batches stay whole.
            Some(schema) => FlightDataEncoderBuilder::new()
                .with_schema(schema)
                .with_flight_descriptor(Some(descriptor))
                .with_max_flight_data_size(usize::MAX)
                .build(batches.map(Ok))
                .boxed(),
            // No schema to send: open with the descriptor alone, as pyarrow
            // does; the server then answers with an empty stream.
            None => stream::once(ready(Ok(FlightData {
                flight_descriptor: Some(descriptor),
                ..FlightData::default()
            })))
            .boxed(),
        };
        let inner = self.flight_client().do_exchange(request).await?;
        Ok(ExchangeStream {
            inner,
            _cancel: cancel,
        })
    }

    /// Preprocesses encoded images (`Vec<Vec<u8>>`, `&[Bytes]`, ...): sends
    /// them in batches of `batch_size` and collects the output batches (one
    /// or more per input batch; rows in the order of `images`).
    pub async fn preprocess<I>(
        &self,
        images: I,
        spec: impl IntoSpecJson,
        batch_size: usize,
    ) -> Result<Vec<RecordBatch>, ClientError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let batches = image_batches(images, batch_size)?;
        self.exchange_with_schema(spec, image_schema(), stream::iter(batches))
            .await?
            .try_collect()
            .await
    }

    /// A dataset the server holds, cut into `shards` shard endpoints
    /// through `spec` (`None`: the default preset; a JSON string names a
    /// preset; an object is a spec): `GetFlightInfo` with the contract's
    /// command ([`InfoRequest::command`]). Each endpoint's ticket is read
    /// with [`Self::read_shard`], from this server or one of the endpoint's
    /// locations.
    pub async fn dataset_shards(
        &self,
        dataset: &str,
        spec: Option<&Value>,
        shards: u64,
    ) -> Result<FlightInfo, ClientError> {
        let command = InfoRequest::command(dataset, spec, shards);
        Ok(self
            .flight_client()
            .get_flight_info(FlightDescriptor::new_cmd(command))
            .await?)
    }

    /// Streams the output batches of one shard (`DoGet` on its ticket), in
    /// row order.
    pub async fn read_shard(
        &self,
        ticket: Ticket,
    ) -> Result<BoxStream<'static, Result<RecordBatch, ClientError>>, ClientError> {
        let stream = self.flight_client().do_get(ticket).await?;
        Ok(stream.map_err(ClientError::from).boxed())
    }

    /// The server's built-in presets, each resolved to a full spec.
    pub async fn presets(&self) -> Result<BTreeMap<String, TransformSpec>, ClientError> {
        let value = self.action_json("presets", Bytes::new()).await?;
        let Value::Object(map) = value else {
            return Err(ClientError::Protocol(format!(
                "presets: expected a JSON object, got {value}"
            )));
        };
        map.into_iter()
            .map(|(name, spec)| {
                let spec = TransformSpec::from_value(&spec).map_err(|e| {
                    ClientError::Protocol(format!("preset {name:?} is not a valid spec: {e}"))
                })?;
                Ok((name, spec))
            })
            .collect()
    }

    /// The server's health report, `{"status": "ok"}` when serving.
    pub async fn health(&self) -> Result<Value, ClientError> {
        self.action_json("health", Bytes::new()).await
    }

    /// The actions the server offers, with their descriptions.
    pub async fn list_actions(&self) -> Result<Vec<ActionType>, ClientError> {
        Ok(self
            .flight_client()
            .list_actions()
            .await?
            .try_collect()
            .await?)
    }

    /// Runs action `name` and parses its single JSON answer.
    pub async fn action_json(&self, name: &str, body: Bytes) -> Result<Value, ClientError> {
        let answers: Vec<Bytes> = self
            .flight_client()
            .do_action(Action::new(name, body))
            .await?
            .try_collect()
            .await?;
        let [answer] = answers.as_slice() else {
            return Err(ClientError::Protocol(format!(
                "{name}: expected one result, got {}",
                answers.len()
            )));
        };
        serde_json::from_slice(answer)
            .map_err(|e| ClientError::Protocol(format!("{name}: answer is not JSON: {e}")))
    }
}

/// Where a Flight URL leads.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// The URL tonic connects to, and whether it is TLS.
    Http { url: String, tls: bool },
    /// A Unix domain socket.
    Unix(PathBuf),
}

/// Maps the Flight URL schemes onto what tonic connects to.
fn parse_url(url: &str) -> Result<Target, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("expected grpc://host:port"))?;
    let http = |prefix: &str, tls| Target::Http {
        url: format!("{prefix}://{rest}"),
        tls,
    };
    match scheme {
        "grpc" | "grpc+tcp" | "http" => Ok(http("http", false)),
        "grpc+tls" | "https" => Ok(http("https", true)),
        "grpc+unix" | "unix" if rest.starts_with('/') => Ok(Target::Unix(PathBuf::from(rest))),
        "grpc+unix" | "unix" => Err(invalid("expected an absolute socket path: unix:///path")),
        _ => Err(invalid(
            "unknown scheme (use grpc://, grpc+tcp://, grpc+tls://, grpc+unix://, http:// or \
             https://)",
        )),
    }
}

/// Opens the Unix socket for tonic (its own connector only dials TCP).
#[derive(Debug, Clone)]
struct UnixConnector(PathBuf);

impl tower_service::Service<tonic::transport::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::transport::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            tokio::net::UnixStream::connect(path)
                .await
                .map(hyper_util::rt::TokioIo::new)
        })
    }
}

/// The output of [`Client::exchange`]: tensor batches in input order.
///
/// Ends with an error item if the server fails part-way (a later batch
/// breaking the contract, say); batches before it are valid.
pub struct ExchangeStream {
    inner: FlightRecordBatchStream,
    /// Dropped with the stream: stops the upload of the remaining input.
    _cancel: oneshot::Sender<()>,
}

impl std::fmt::Debug for ExchangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeStream")
            .field("schema", &self.schema())
            .finish_non_exhaustive()
    }
}

impl ExchangeStream {
    /// The output schema, once the server has sent it (after the first
    /// item, or at the end of an empty result).
    pub fn schema(&self) -> Option<&SchemaRef> {
        self.inner.schema()
    }
}

impl Stream for ExchangeStream {
    type Item = Result<RecordBatch, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner
            .poll_next_unpin(cx)
            .map(|item| item.map(|r| r.map_err(ClientError::from)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flight_schemes_map_to_their_targets() {
        let http = |url: &str, tls| Target::Http {
            url: url.to_string(),
            tls,
        };
        for (given, want) in [
            (
                "grpc://127.0.0.1:8815",
                http("http://127.0.0.1:8815", false),
            ),
            ("grpc+tcp://h:1", http("http://h:1", false)),
            ("http://h:1", http("http://h:1", false)),
            ("grpc+tls://h:1", http("https://h:1", true)),
            ("https://h:1", http("https://h:1", true)),
            (
                "grpc+unix:///run/pf.sock",
                Target::Unix("/run/pf.sock".into()),
            ),
            ("unix:///run/pf.sock", Target::Unix("/run/pf.sock".into())),
        ] {
            assert_eq!(parse_url(given).unwrap(), want, "{given}");
        }
        for bad in ["h:1", "unix://relative.sock", "ftp://h:1"] {
            assert!(
                matches!(parse_url(bad), Err(ClientError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }
}
