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

use super::actions::{self, ACTIONS};
use super::auth;
use super::config::ServiceConfig;
use super::exchange;

/// The pixelfeed Arrow Flight service: `DoExchange` turns batches of
/// encoded images into tensor batches; `ListActions`/`DoAction` answer
/// side questions (`presets`, `health`).
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

    /// The configuration the service runs with.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }
}

fn unsupported(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "pixelfeed does not implement {rpc}; it offers DoExchange (images in, tensors out), \
         ListActions and DoAction"
    ))
}

type RpcStream<T> = BoxStream<'static, Result<T, Status>>;

#[tonic::async_trait]
impl FlightService for PixelfeedService {
    type HandshakeStream = RpcStream<HandshakeResponse>;
    type ListFlightsStream = RpcStream<FlightInfo>;
    type DoGetStream = RpcStream<FlightData>;
    type DoPutStream = RpcStream<PutResult>;
    type DoExchangeStream = exchange::FlightDataStream;
    type DoActionStream = RpcStream<arrow_flight::Result>;
    type ListActionsStream = RpcStream<ActionType>;

    /// Basic credentials (password = the token) or a bearer token in,
    /// `authorization: Bearer <token>` out in the response headers (see
    /// [`super::auth`]); no messages either way.
    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let bearer = auth::handshake(self.config.auth_token.as_ref(), request.metadata())?;
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
        Err(unsupported("ListFlights"))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(unsupported("GetFlightInfo"))
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
        _request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        Err(unsupported("DoGet"))
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(unsupported("DoPut"))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let stream = exchange::start(request.into_inner(), Arc::clone(&self.config)).await?;
        Ok(Response::new(stream))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        let body = actions::run(&self.config, &action.r#type, &action.body)?;
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
