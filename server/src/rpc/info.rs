//! `ListFlights` and `GetFlightInfo`: the datasets a server offers, and a
//! dataset cut into K shard endpoints with self-describing tickets
//! (`pixelfeed_schema::ticket`).
//!
//! With peers configured the endpoints' locations rotate over this server
//! and its peers (endpoint i lists location i mod n first, the others
//! after it as alternatives).

use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use pixelfeed_data::shard_ranges;
use pixelfeed_schema::{excerpt, output_schema, InfoRequest, ShardTicket, TICKET_VERSION};
use tonic::Status;

use super::{dataset_status, summary};
use crate::config::DatasetsConfig;
use crate::stream::servable;

/// Reads a `GetFlightInfo` descriptor: PATH `[NAME]` or CMD JSON.
fn info_request(d: &FlightDescriptor) -> Result<InfoRequest, Status> {
    let request = if d.r#type == DescriptorType::Path as i32 {
        InfoRequest::from_path(&d.path)
    } else {
        InfoRequest::from_command(&d.cmd)
    };
    request.map_err(|e| Status::invalid_argument(e.0))
}

/// `ListFlights`: one FlightInfo per dataset — PATH `[NAME]` descriptor,
/// the source's columns as schema, the row count, and app_metadata JSON
/// `{"name", "uri", "rows"}`; no endpoints (ask `GetFlightInfo`).
pub(crate) fn list(config: &DatasetsConfig) -> Result<Vec<FlightInfo>, Status> {
    config
        .registry
        .list()
        .iter()
        .map(|d| {
            Ok(FlightInfo::new()
                .try_with_schema(&d.schema())
                .map_err(|e| Status::internal(e.to_string()))?
                .with_descriptor(FlightDescriptor::new_path(vec![d.name().to_string()]))
                .with_total_records(d.rows() as i64)
                .with_app_metadata(summary(d).to_string()))
        })
        .collect()
}

/// `GetFlightInfo`: the output schema and one endpoint per shard.
pub(crate) fn flight_info(
    config: &DatasetsConfig,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    let mut request = info_request(&descriptor)?;
    request.spec = servable(&request.spec)?;
    let dataset = config
        .registry
        .get(&request.dataset)
        .map_err(dataset_status)?;
    let schema = output_schema(&dataset.schema(), &request.spec).map_err(|e| {
        Status::invalid_argument(format!("dataset {}: {e}", excerpt(&request.dataset)))
    })?;
    let rows = dataset.rows();
    let spec = request.spec.to_value();
    let endpoints = shard_ranges(rows, request.shards)
        .into_iter()
        .enumerate()
        .map(|(i, range)| {
            let ticket = ShardTicket {
                version: TICKET_VERSION,
                dataset: request.dataset.clone(),
                spec: spec.clone(),
                start: range.start,
                end: range.end,
                rows,
            };
            config.locations(i).into_iter().fold(
                FlightEndpoint::new().with_ticket(Ticket::new(ticket.encode())),
                FlightEndpoint::with_location,
            )
        })
        .collect();
    Ok(FlightInfo::new()
        .try_with_schema(&schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_descriptor(descriptor)
        .with_endpoints(endpoints)
        .with_total_records(rows as i64)
        .with_ordered(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_rotate_over_self_and_peers() {
        let config = DatasetsConfig {
            location: Some("grpc://a".into()),
            peers: vec!["grpc://b".into(), "grpc://c".into()],
            ..DatasetsConfig::default()
        };
        assert_eq!(config.locations(0), ["grpc://a", "grpc://b", "grpc://c"]);
        assert_eq!(config.locations(1), ["grpc://b", "grpc://c", "grpc://a"]);
        assert_eq!(config.locations(5), ["grpc://c", "grpc://a", "grpc://b"]);
        assert!(DatasetsConfig::default().locations(3).is_empty());
    }
}
