//! The `FlightService` implementation: routes each RPC to its module and
//! answers the RPCs pixelfeed does not offer with `Unimplemented`.

use std::sync::Arc;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::stream::{self, BoxStream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::assemble::{input_messages, Assembled};
use crate::auth;
use crate::config::ServiceConfig;
use crate::outbox::{framed_output, Outbox};
use crate::rpc::actions::{self, ACTIONS};
use crate::rpc::{exchange, get, info, put};
use crate::stream::FlightDataStream;
use crate::watch::CallWatch;

/// The pixelfeed Arrow Flight service: `DoExchange` turns batches of
/// encoded images into tensor batches; `ListFlights` / `GetFlightInfo` /
/// `DoGet` / `DoPut` serve server-side datasets as sharded tensor streams;
/// `ListActions`/`DoAction` answer side questions (`presets`, `health`,
/// `register_dataset`).
///
/// Cheap to clone (the configuration is shared).
#[derive(Debug, Clone, Default)]
pub struct PixelfeedService {
    config: Arc<ServiceConfig>,
}

impl PixelfeedService {
    /// A service processing requests as `config` says.
    pub fn new(config: ServiceConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    /// `DoExchange` without a transport: `input` is what a client would
    /// send (the first message carrying the spec in a CMD descriptor), the
    /// answer what it would receive, or the status its call would fail
    /// with. The data path's limits apply (message decoding, rows and image
    /// bytes per batch, the engine's per-image limits); the call guard's do
    /// not (token, call slots, idle timeout, input budget). For fuzzing the
    /// data path (`fuzz/fuzz_targets/exchange.rs`) and for embedding.
    ///
    /// # Errors
    /// The status of a call that fails before its first answer (bad
    /// descriptor or spec); later failures end the returned stream.
    pub async fn exchange<S>(&self, input: S) -> Result<FlightDataStream, Status>
    where
        S: futures::Stream<Item = Result<FlightData, Status>> + Send + Unpin + 'static,
    {
        exchange::start(input, Arc::clone(&self.config), CallWatch::unwatched()).await
    }

    /// The configuration the service runs with.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }
}

/// The progress watch the call guard put on a streaming call (one that
/// never gives up when the service runs without the guard).
fn call_watch<T>(request: &Request<T>) -> Arc<CallWatch> {
    request
        .extensions()
        .get::<Arc<CallWatch>>()
        .cloned()
        .unwrap_or_else(CallWatch::unwatched)
}

/// The call's input messages, taken from where the call guard assembled
/// them ([`crate::assemble`]) or, without the guard, as tonic decoded them.
fn assembled_input(
    request: Request<Streaming<FlightData>>,
) -> BoxStream<'static, Result<FlightData, Status>> {
    let assembled = request.extensions().get::<Arc<Assembled>>().cloned();
    input_messages(request.into_inner(), assembled)
}

/// The role the call guard gave the call; a service driven without the
/// guard (embedded, unit tests) has no authentication at all.
fn call_role<T>(request: &Request<T>) -> auth::Role {
    request
        .extensions()
        .get::<auth::Role>()
        .copied()
        .unwrap_or(auth::Role::Operator)
}

fn unsupported(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "pixelfeed does not implement {rpc}; it offers DoExchange (images in, tensors out), \
         ListFlights, GetFlightInfo, DoGet and DoPut (datasets), ListActions and DoAction"
    ))
}

type RpcStream<T> = BoxStream<'static, Result<T, Status>>;

#[tonic::async_trait]
impl FlightService for PixelfeedService {
    type HandshakeStream = RpcStream<HandshakeResponse>;
    type ListFlightsStream = RpcStream<FlightInfo>;
    type DoGetStream = FlightDataStream;
    type DoPutStream = RpcStream<PutResult>;
    type DoExchangeStream = FlightDataStream;
    type DoActionStream = RpcStream<arrow_flight::Result>;
    type ListActionsStream = RpcStream<ActionType>;

    /// Basic credentials (password = the token) or a bearer token in,
    /// `authorization: Bearer <token>` out in the response headers (see
    /// [`crate::auth`]); no messages either way.
    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let bearer = auth::handshake(
            self.config.auth_token.as_ref(),
            self.config.operator_token.as_ref(),
            request.metadata(),
        )?;
        let mut response = Response::new(stream::empty().boxed());
        if let Some(bearer) = bearer {
            response.metadata_mut().insert(auth::AUTHORIZATION, bearer);
        }
        Ok(response)
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let infos = info::list(&self.config.datasets)?;
        Ok(Response::new(
            stream::iter(infos.into_iter().map(Ok)).boxed(),
        ))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = info::flight_info(&self.config.datasets, request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(unsupported("PollFlightInfo"))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(unsupported("GetSchema"))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let watch = call_watch(&request);
        let outbox = request.extensions().get::<Arc<Outbox>>().cloned();
        let stream = get::do_get(&self.config, &request.into_inner().ticket, watch)?;
        Ok(Response::new(framed_output(stream, outbox)))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        auth::require_operator(call_role(&request), "DoPut")?;
        let watch = call_watch(&request);
        let input = assembled_input(request);
        let answer = put::do_put(&self.config, input, watch).await?;
        let result = PutResult {
            app_metadata: answer.to_string().into(),
        };
        Ok(Response::new(stream::once(async { Ok(result) }).boxed()))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let watch = call_watch(&request);
        let outbox = request.extensions().get::<Arc<Outbox>>().cloned();
        let stream =
            exchange::start(assembled_input(request), Arc::clone(&self.config), watch).await?;
        Ok(Response::new(framed_output(stream, outbox)))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let role = call_role(&request);
        let action = request.into_inner();
        // Some actions block (register_dataset lists or scans files), so
        // every action runs on a blocking thread; the others are cheap.
        let config = Arc::clone(&self.config);
        let body = tokio::task::spawn_blocking(move || {
            actions::run(&config, role, &action.r#type, &action.body)
        })
        .await
        .map_err(|e| Status::internal(format!("the action failed: {e}")))??;
        let result = arrow_flight::Result { body };
        Ok(Response::new(stream::once(async { Ok(result) }).boxed()))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let types: Vec<_> = ACTIONS
            .iter()
            .map(|a| {
                Ok(ActionType {
                    r#type: a.name.to_string(),
                    description: a.description.to_string(),
                })
            })
            .collect();
        Ok(Response::new(stream::iter(types).boxed()))
    }
}
