//! A hostile client one level below the images: hand-built IPC messages,
//! raw HTTP/2 stalls and oversized names, over loopback with small limits
//! so each attack resolves in about a second. Each test names the kind of
//! attack it replays (`../shared/wire/` holds the original reproducers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, BinaryArray, DictionaryArray, RecordBatch, StringArray};
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::{Action, FlightData, FlightDescriptor};
use futures::{stream, StreamExt, TryStreamExt};
use pixelfeed_client::{image_batches, image_schema, Client, ClientOptions};
use pixelfeed_server::{CallLimits, ConnectionLimits, ServerConfig, ServiceConfig};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::Code;

use crate::{bundled_images, start, SMALL};

/// A server whose streaming calls end after `idle` without progress and
/// that takes `max_calls` calls at once.
fn config(idle: Duration, max_calls: usize) -> ServerConfig {
    ServerConfig {
        service: ServiceConfig {
            limits: CallLimits {
                idle_timeout: idle,
                max_concurrent_calls: max_calls,
                ..CallLimits::default()
            },
            ..ServiceConfig::default()
        },
        ..ServerConfig::default()
    }
}

/// The input messages of one exchange carrying `batch` with spec SMALL.
async fn encode(batch: RecordBatch, dictionaries: DictionaryHandling) -> Vec<FlightData> {
    FlightDataEncoderBuilder::new()
        .with_dictionary_handling(dictionaries)
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(SMALL)))
        .build(stream::iter([Ok::<_, FlightError>(batch)]))
        .try_collect()
        .await
        .unwrap()
}

fn images_batch(n: usize) -> RecordBatch {
    let images = bundled_images();
    let column = BinaryArray::from_iter_values(images.iter().cycle().take(n));
    RecordBatch::try_from_iter([("image", Arc::new(column) as ArrayRef)]).unwrap()
}

/// Sends `messages` as one exchange and returns its outcome.
async fn exchange_raw(
    client: &Client,
    messages: Vec<FlightData>,
) -> Result<Vec<RecordBatch>, FlightError> {
    client
        .flight_client()
        .do_exchange(stream::iter(messages.into_iter().map(Ok)))
        .await?
        .try_collect()
        .await
}

/// Polls `health` until the server takes calls again.
async fn wait_until_served(client: &Client, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match client.health().await {
            Ok(_) => return started.elapsed(),
            Err(e) => {
                assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
                assert!(started.elapsed() < within, "the slot never came back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Silent row loss: a record batch whose buffers point past its body made
/// arrow-ipc panic, and the exchange ended OK with zero rows. Now the
/// panic is contained and fails the call.
#[tokio::test]
async fn a_batch_whose_buffers_point_past_its_body_fails_the_call() {
    let (_server, client) = start(ServerConfig::default(), ClientOptions::default()).await;
    let mut messages = encode(images_batch(2), DictionaryHandling::Hydrate).await;
    let batch = messages.last_mut().unwrap();
    assert!(batch.data_body.len() > 64);
    batch.data_body = batch.data_body.slice(..8);
    let err = exchange_raw(&client, messages).await.unwrap_err();
    let FlightError::Tonic(status) = err else {
        panic!("expected a gRPC status, got {err}")
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(status.message().contains("input stream"), "{status}");
}

/// Amplification: a dictionary column (one large value named by every
/// row) would be expanded row by row on the way out. It is refused.
#[tokio::test]
async fn a_dictionary_encoded_column_is_refused() {
    let (_server, client) = start(ServerConfig::default(), ClientOptions::default()).await;
    let images = images_batch(4);
    let keys: DictionaryArray<Int32Type> = vec!["big"; 4].into_iter().collect();
    let batch = RecordBatch::try_from_iter([
        ("image", Arc::clone(images.column(0))),
        ("tag", Arc::new(keys) as ArrayRef),
    ])
    .unwrap();
    let messages = encode(batch, DictionaryHandling::Resend).await;
    let err = exchange_raw(&client, messages).await.unwrap_err();
    let FlightError::Tonic(status) = err else {
        panic!("expected a gRPC status, got {err}")
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(status.message().contains("dictionary"), "{status}");

    // The same column decoded passes through.
    let plain = StringArray::from(vec!["big"; 4]);
    let batch = RecordBatch::try_from_iter([
        ("image", Arc::clone(images.column(0))),
        ("tag", Arc::new(plain) as ArrayRef),
    ])
    .unwrap();
    let out = exchange_raw(&client, encode(batch, DictionaryHandling::Hydrate).await)
        .await
        .unwrap();
    assert_eq!(out.iter().map(RecordBatch::num_rows).sum::<usize>(), 4);
}

/// Lock-out: a call that sends only its headers held a slot forever. It is
/// ended after the idle timeout, and the slot comes back.
#[tokio::test]
async fn a_call_that_sends_only_headers_gives_its_slot_back() {
    let config = config(Duration::from_millis(800), 1);
    let (_server, client) = start(config, ClientOptions::default()).await;
    let mut raw = client.flight_client();
    let stalled = tokio::spawn(async move {
        raw.do_exchange(stream::pending::<Result<FlightData, FlightError>>())
            .await
            .map(drop)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = wait_until_served(&client, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(400),
        "the slot was held: {took:?}"
    );
    let err = stalled.await.unwrap().unwrap_err();
    let FlightError::Tonic(status) = err else {
        panic!("expected a gRPC status, got {err}")
    };
    assert_eq!(status.code(), Code::Cancelled, "{status}");
    assert!(status.message().contains("idle-timeout"), "{status}");
}

/// Lock-out: a client that uploads and never reads its output held its
/// slot (and pool blocks) forever. The call ends after the idle timeout.
#[tokio::test]
async fn a_client_that_never_reads_gives_its_slot_back() {
    let config = config(Duration::from_millis(800), 1);
    let (_server, client) = start(config, ClientOptions::default()).await;
    // 256×256 float32 CHW: 768 KiB a row, far past the flow-control windows.
    let big = r#"{"resize":{"mode":"exact","height":256,"width":256},"dtype":"float32"}"#;
    let images = bundled_images();
    let many: Vec<Vec<u8>> = images.iter().cycle().take(64).cloned().collect();
    let input = image_batches(&many, 8).unwrap();
    let unread = client
        .exchange_with_schema(big, image_schema(), stream::iter(input))
        .await
        .unwrap();
    let took = wait_until_served(&client, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(400),
        "the slot was held: {took:?}"
    );
    drop(unread);
}

/// A slow but honest reader (two seconds per output message against an
/// idle timeout of three) is never cut off: taking output is progress.
#[tokio::test]
async fn a_slow_reader_within_the_idle_timeout_completes() {
    let config = config(Duration::from_secs(3), 4);
    let (_server, client) = start(config, ClientOptions::default()).await;
    let big = r#"{"resize":{"mode":"exact","height":256,"width":256},"dtype":"float32"}"#;
    let images = bundled_images();
    let many: Vec<Vec<u8>> = images.iter().cycle().take(32).cloned().collect();
    let input = image_batches(&many, 8).unwrap();
    let mut out = client
        .exchange_with_schema(big, image_schema(), stream::iter(input))
        .await
        .unwrap();
    let mut rows = 0;
    while let Some(batch) = out.next().await {
        rows += batch.unwrap().num_rows();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(rows, 32);
}

/// Descriptor exhaustion: a connection that never sends the HTTP/2
/// preface was kept forever. It is closed after the handshake timeout.
#[tokio::test]
async fn a_connection_without_a_preface_is_closed() {
    let config = ServerConfig {
        connections: ConnectionLimits {
            handshake_timeout: Duration::from_millis(300),
            ..ConnectionLimits::default()
        },
        ..ServerConfig::default()
    };
    let (server, _client) = start(config, ClientOptions::default()).await;
    let mut socket = TcpStream::connect(server.addr()).await.unwrap();
    let started = Instant::now();
    // The server speaks first (its SETTINGS frame), then hangs up.
    let mut sent = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut sent))
        .await
        .expect("the server never closed the connection");
    assert!(sent.len() < 1024, "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));
}

/// Wrong status: an error echoing a 100 KB action name was dropped by the
/// client (metadata too large) and reported as RESOURCE_EXHAUSTED. Now the
/// real status arrives with a short excerpt.
#[tokio::test]
async fn errors_quote_only_an_excerpt_of_client_input() {
    let (_server, client) = start(ServerConfig::default(), ClientOptions::default()).await;
    let name = "x".repeat(100_000);
    let err = client
        .flight_client()
        .do_action(Action::new(name, ""))
        .await
        .map(drop)
        .unwrap_err();
    let FlightError::Tonic(status) = err else {
        panic!("expected a gRPC status, got {err}")
    };
    assert_eq!(status.code(), Code::Unimplemented, "{status}");
    assert!(status.message().len() < 512, "{}", status.message().len());
    assert!(status.message().contains("100000 bytes"), "{status}");
}

/// Memory pinned by calls: input bytes are counted from arrival until
/// their batch is through the engine, and every byte comes back.
#[tokio::test]
async fn input_bytes_in_flight_are_counted_and_given_back() {
    let config = ServerConfig::default();
    let metrics = Arc::clone(&config.service.metrics);
    let (_server, client) = start(config, ClientOptions::default()).await;
    let images = bundled_images();
    let many: Vec<Vec<u8>> = images.iter().cycle().take(32).cloned().collect();
    let out = client.preprocess(&many, SMALL, 8).await.unwrap();
    assert_eq!(out.iter().map(RecordBatch::num_rows).sum::<usize>(), 32);
    let rendered = metrics.render(&pixelfeed_engine::HeapAllocator);
    assert!(
        rendered.contains("pixelfeed_input_bytes_in_flight 0"),
        "{rendered}"
    );
}

/// A message larger than the whole input budget is received alone, once
/// nothing else is charged, rather than never.
#[tokio::test]
async fn a_message_larger_than_the_input_budget_goes_alone() {
    let mut config = ServerConfig::default();
    config.service.limits.max_input_bytes_in_flight = 16 << 10;
    let metrics = Arc::clone(&config.service.metrics);
    pixelfeed_server::check_config(&config).unwrap();
    let (_server, client) = start(config, ClientOptions::default()).await;
    let images = bundled_images();
    let many: Vec<Vec<u8>> = images.iter().cycle().take(32).cloned().collect();
    assert!(many.iter().map(Vec::len).sum::<usize>() > 4 * (16 << 10));
    let out = client.preprocess(&many, SMALL, 32).await.unwrap();
    assert_eq!(out.iter().map(RecordBatch::num_rows).sum::<usize>(), 32);
    let rendered = metrics.render(&pixelfeed_engine::HeapAllocator);
    assert!(
        rendered.contains("pixelfeed_input_bytes_in_flight 0"),
        "{rendered}"
    );
}
