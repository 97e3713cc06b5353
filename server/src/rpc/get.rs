//! `DoGet`: one shard of a dataset through the shared data path
//! ([`crate::stream`]): a blocking reader thread feeds the engine one
//! batch ahead; output is cut by `split_rows`.

use std::sync::Arc;

use arrow_schema::SchemaRef;
use pixelfeed_data::Dataset;
use pixelfeed_engine::EngineConfig;
use pixelfeed_schema::{excerpt, output_schema, ShardTicket, TransformSpec};
use tokio::sync::mpsc;
use tonic::Status;

use super::dataset_status;
use crate::budget::Charge;
use crate::config::ServiceConfig;
use crate::stream::{
    process_and_send, record_spec, servable, spawn_pipeline, FlightDataStream, Output,
    OutputResult, Tally,
};
use crate::watch::CallWatch;

/// `DoGet`: streams one shard's output batches.
pub(crate) fn do_get(
    config: &Arc<ServiceConfig>,
    ticket: &[u8],
    watch: Arc<CallWatch>,
) -> Result<FlightDataStream, Status> {
    // The ticket is read whole: its bytes leave the input budget now, not
    // when the stream ends.
    watch.message_decoded();
    drop(watch.input_charge());
    let (ticket, spec) = ShardTicket::decode(ticket).map_err(|e| Status::invalid_argument(e.0))?;
    let spec = servable(&spec)?;
    record_spec(&spec);
    let dataset = config
        .datasets
        .registry
        .get(&ticket.dataset)
        .map_err(dataset_status)?;
    if dataset.rows() != ticket.rows {
        return Err(Status::failed_precondition(format!(
            "dataset {} has {} rows here, but the ticket was cut from one of {} rows",
            excerpt(&ticket.dataset),
            dataset.rows(),
            ticket.rows
        )));
    }
    let schema: SchemaRef = Arc::new(
        output_schema(&dataset.schema(), &spec)
            .map_err(|e| Status::invalid_argument(e.to_string()))?,
    );
    // The server read these files itself: their bytes never go into an
    // error message (a client could otherwise read any file's first bytes).
    let config = Arc::new(ServiceConfig {
        engine: EngineConfig {
            quote_input_bytes: false,
            ..config.engine
        },
        ..ServiceConfig::clone(config)
    });
    let spec = Arc::new(spec);
    let range = ticket.start..ticket.end;
    Ok(spawn_pipeline(
        &Arc::clone(&config),
        "DoGet",
        Arc::clone(&watch),
        move |tx| pump_shard(dataset, range, spec, schema, config, watch, tx),
    ))
}

/// Reads the shard on a blocking thread (one batch ahead) and runs each
/// batch through the engine into `tx`.
async fn pump_shard(
    dataset: Arc<Dataset>,
    range: std::ops::Range<u64>,
    spec: Arc<TransformSpec>,
    schema: SchemaRef,
    config: Arc<ServiceConfig>,
    watch: Arc<CallWatch>,
    tx: mpsc::Sender<OutputResult>,
) -> Result<(), Status> {
    if tx
        .send(Ok(Output::Schema(Arc::clone(&schema))))
        .await
        .is_err()
    {
        return Ok(());
    }
    let (in_tx, mut in_rx) = mpsc::channel(1);
    let options = config.datasets.read.clone();
    // Rows are keyed by their index in the dataset, so a shard's random
    // draws are the same as in a read of the whole dataset.
    let mut tally = Tally::starting_at(range.start);
    tokio::task::spawn_blocking(move || match dataset.read(range, &options) {
        Ok(batches) => {
            for batch in batches {
                // A closed channel: the response is gone; stop reading.
                if in_tx.blocking_send(batch).is_err() {
                    return;
                }
            }
        }
        Err(e) => {
            let _ = in_tx.blocking_send(Err(e));
        }
    });
    loop {
        // Reading the dataset is the server's work, not a stalled client.
        let busy = watch.busy();
        let Some(batch) = in_rx.recv().await else {
            break;
        };
        drop(busy);
        let batch = batch.map_err(dataset_status)?;
        if !process_and_send(
            batch,
            Charge::default(),
            &mut tally,
            &spec,
            &config,
            &schema,
            &watch,
            &tx,
        )
        .await?
        {
            return Ok(());
        }
    }
    Ok(())
}
