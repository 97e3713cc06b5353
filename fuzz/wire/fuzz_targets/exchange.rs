//! Wire: arbitrary FlightData messages through `DoExchange`'s data path
//! (`PixelfeedService::exchange`: descriptor and spec, IPC decoding, limits,
//! the engine, output encoding), with no transport.
//!
//! Input: frames of `u32 LE length` + a protobuf `FlightData` (the last
//! frame takes what is left); a frame that is not valid protobuf becomes the
//! transport error tonic would report for it. Seeds: `make_seeds.py`.
//!
//! Invariants, besides never panicking out of the call or hanging:
//! - a call that ends OK answered exactly one row per input row, where the
//!   input rows are counted by an independent decode of the same messages
//!   (arrow-flight's decoder, panics caught): never a silently short answer;
//! - a call that fails says why with a client-error status, never
//!   `INTERNAL` or `UNKNOWN`: every input here is the client's doing.
#![no_main]

use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;

use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::FlightData;
use futures::{stream, FutureExt, StreamExt, TryStreamExt};
use libfuzzer_sys::fuzz_target;
use pixelfeed_server::{CallLimits, PixelfeedService, ServiceConfig};
use prost::Message;
use tonic::{Code, Status};

fn service() -> &'static PixelfeedService {
    static SERVICE: OnceLock<PixelfeedService> = OnceLock::new();
    SERVICE.get_or_init(|| {
        // libfuzzer-sys aborts on any panic, even one the server contains
        // (arrow-ipc panics on some malformed messages; the server turns
        // them into INVALID_ARGUMENT). Let panics unwind quietly instead:
        // one that escapes the target still aborts (libfuzzer-sys catches
        // it), and one the server swallows wrongly breaks an invariant below.
        std::panic::set_hook(Box::new(|_| {}));
        let mut config = ServiceConfig {
            limits: CallLimits {
                max_rows_per_batch: 64,
                max_batch_image_bytes: 1 << 20,
                ..CallLimits::default()
            },
            ..ServiceConfig::default()
        };
        // Small images keep each execution fast.
        config.engine.max_pixels = 1 << 20;
        PixelfeedService::new(config)
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// The input split into messages; a frame prost cannot decode becomes the
/// error tonic gives for an undecodable message.
fn messages(mut data: &[u8]) -> Vec<Result<FlightData, Status>> {
    let mut out = Vec::new();
    while !data.is_empty() && out.len() < 64 {
        let len = data
            .get(..4)
            .map_or(data.len(), |b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
        let body = data.get(4..).unwrap_or_default();
        let len = len.min(body.len());
        out.push(FlightData::decode(&body[..len]).map_err(|e| Status::internal(e.to_string())));
        data = &body[len..];
    }
    out
}

/// Input rows by an independent decode, or `None` when the messages do not
/// decode cleanly (so the call may fail).
async fn input_rows(messages: &[Result<FlightData, Status>]) -> Option<usize> {
    let mut ok = Vec::new();
    for m in messages {
        let m = m.as_ref().ok()?.clone();
        if !(m.data_header.is_empty() && m.data_body.is_empty()) {
            ok.push(Ok::<_, FlightError>(m));
        }
    }
    let decoded = AssertUnwindSafe(async {
        let mut decoder = FlightDataDecoder::new(stream::iter(ok));
        let mut rows = 0;
        while let Some(m) = decoder.next().await {
            if let DecodedPayload::RecordBatch(b) = m.ok()?.payload {
                rows += b.num_rows();
            }
        }
        Some(rows)
    })
    .catch_unwind()
    .await;
    decoded.ok().flatten()
}

fuzz_target!(|data: &[u8]| {
    let service = service(); // first: it sets the panic hook
    let input = messages(data);
    runtime().block_on(async {
        let expected = input_rows(&input).await;
        let answer = match service.exchange(stream::iter(input)).await {
            Ok(out) => out.try_collect::<Vec<_>>().await,
            Err(status) => Err(status),
        };
        match answer {
            Ok(out) => {
                let decoder = FlightDataDecoder::new(stream::iter(out.into_iter().map(Ok)));
                let batches: Vec<_> = decoder
                    .try_collect()
                    .await
                    .expect("the server's answer decodes");
                let rows: usize = batches
                    .iter()
                    .filter_map(|m| match &m.payload {
                        DecodedPayload::RecordBatch(b) => Some(b.num_rows()),
                        _ => None,
                    })
                    .sum();
                let expected =
                    expected.expect("a call whose input does not decode cleanly ended OK");
                assert_eq!(rows, expected, "rows out != rows in on a call that ended OK");
            }
            Err(status) => assert!(
                !matches!(status.code(), Code::Internal | Code::Unknown | Code::Ok),
                "client input answered with {:?}: {}",
                status.code(),
                status.message()
            ),
        }
    });
});
