//! `DoExchange`: the spec in the first message's descriptor, input batches
//! in, tensor batches out, through the shared data path ([`crate::stream`]).

use std::sync::Arc;

use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::{FlightData, FlightDescriptor};
use arrow_schema::SchemaRef;
use futures::{Stream, StreamExt};
use pixelfeed_schema::{output_schema, TransformSpec};
use tokio::sync::mpsc;
use tonic::Status;

use crate::config::ServiceConfig;
use crate::stream::{
    input_decoder, input_status, next_input, process_and_send, record_spec, servable,
    spawn_pipeline, FlightDataStream, Output, OutputResult, Tally,
};
use crate::watch::CallWatch;

/// Starts an exchange: reads the first message, validates the spec its
/// descriptor carries, and returns the response stream.
///
/// Errors in the descriptor or spec are returned here, so the client's call
/// itself fails; errors later in the stream (bad schema, engine failures)
/// end the response stream with that status.
pub(crate) async fn start<S>(
    mut input: S,
    config: Arc<ServiceConfig>,
    watch: Arc<CallWatch>,
) -> Result<FlightDataStream, Status>
where
    S: Stream<Item = Result<FlightData, Status>> + Send + Unpin + 'static,
{
    let first = input
        .next()
        .await
        .transpose()
        .map_err(input_status_of)?
        .ok_or_else(|| {
            Status::invalid_argument(
                "DoExchange: the client sent no message; the first must carry a CMD \
             flight descriptor holding the transform spec JSON",
            )
        })?;
    let spec = servable(&spec_from_descriptor(first.flight_descriptor.as_ref())?)?;
    record_spec(&spec);
    let spec = Arc::new(spec);
    watch.touch();
    let decoder = input_decoder(first, input, &watch);
    Ok(spawn_pipeline(
        &Arc::clone(&config),
        "exchange",
        Arc::clone(&watch),
        |tx| pump(decoder, spec, config, watch, tx),
    ))
}

/// The first message is read by tonic directly: its errors get the same
/// mapping as the rest of the input.
fn input_status_of(status: Status) -> Status {
    input_status(arrow_flight::error::FlightError::from(status))
}

/// Parses the transform spec out of the first message's descriptor.
fn spec_from_descriptor(descriptor: Option<&FlightDescriptor>) -> Result<TransformSpec, Status> {
    let descriptor = descriptor.ok_or_else(|| {
        Status::invalid_argument(
            "the first DoExchange message must carry a flight descriptor of type CMD \
             holding the transform spec JSON; it had none",
        )
    })?;
    if descriptor.r#type != DescriptorType::Cmd as i32 {
        let kind = DescriptorType::try_from(descriptor.r#type)
            .map(|t| t.as_str_name())
            .unwrap_or("an unknown type");
        return Err(Status::invalid_argument(format!(
            "the DoExchange flight descriptor must be of type CMD holding the transform \
             spec JSON, got {kind}"
        )));
    }
    TransformSpec::from_json(&descriptor.cmd)
        .map_err(|e| Status::invalid_argument(format!("invalid transform spec: {e}")))
}

/// Decodes the input and processes it batch by batch into `tx`. Returns
/// `Ok` early when the response stream is gone (client disconnected).
async fn pump(
    mut decoder: FlightDataDecoder,
    spec: Arc<TransformSpec>,
    config: Arc<ServiceConfig>,
    watch: Arc<CallWatch>,
    tx: mpsc::Sender<OutputResult>,
) -> Result<(), Status> {
    let mut schema: Option<SchemaRef> = None;
    let mut tally = Tally::starting_at(0);
    while let Some(payload) = next_input(&mut decoder, &watch).await {
        let (payload, charge) = payload?;
        match payload {
            // A message with only app_metadata: nothing to process.
            DecodedPayload::None => {}
            DecodedPayload::Schema(input) => {
                let out = Arc::new(
                    output_schema(&input, &spec)
                        .map_err(|e| Status::invalid_argument(e.to_string()))?,
                );
                match &schema {
                    None => {
                        schema = Some(Arc::clone(&out));
                        if tx.send(Ok(Output::Schema(out))).await.is_err() {
                            return Ok(());
                        }
                    }
                    // A repeated, identical schema is harmless.
                    Some(current) if current == &out => {}
                    Some(_) => {
                        return Err(Status::invalid_argument(
                            "the input schema changed mid-exchange; one exchange carries \
                             one schema, open another for a different one",
                        ))
                    }
                }
            }
            DecodedPayload::RecordBatch(batch) => {
                // The decoder rejects a batch before any schema, so this
                // only guards against that changing.
                let Some(schema) = &schema else {
                    return Err(Status::invalid_argument(
                        "received a record batch before the schema",
                    ));
                };
                if batch.num_rows() == 0 {
                    continue;
                }
                let max_rows = config.limits.max_rows_per_batch;
                if batch.num_rows() > max_rows {
                    return Err(Status::resource_exhausted(format!(
                        "an input batch of {} rows is over the server's limit of {max_rows} \
                         rows per batch (--max-rows-per-batch); send smaller batches",
                        batch.num_rows()
                    )));
                }
                if !process_and_send(
                    batch, charge, &mut tally, &spec, &config, schema, &watch, &tx,
                )
                .await?
                {
                    return Ok(());
                }
            }
        }
    }
    tracing::debug!(?tally, "exchange input complete");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_must_be_a_cmd_with_a_valid_spec() {
        let missing = spec_from_descriptor(None).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::InvalidArgument);

        let path = FlightDescriptor::new_path(vec!["x".into()]);
        let err = spec_from_descriptor(Some(&path)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("PATH"), "{}", err.message());

        let bad = FlightDescriptor::new_cmd(
            r#"{"preset":"imagenet","crop":{"mode":"center","height":300,"width":224}}"#,
        );
        let err = spec_from_descriptor(Some(&bad)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("crop.height"), "{}", err.message());

        let good = FlightDescriptor::new_cmd(r#"{"preset":"imagenet"}"#);
        assert_eq!(
            spec_from_descriptor(Some(&good)).unwrap().shape(),
            [3, 224, 224]
        );
    }
}
