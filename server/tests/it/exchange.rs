//! End-to-end tests: a loopback pixelfeed server and the Rust client.
//!
//! Each test starts its own server on a free port, so they run in parallel
//! and a failure in one cannot leak into another.

use std::future::ready;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightData, FlightDescriptor, Ticket};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::stream::{self, StreamExt, TryStreamExt};
use pixelfeed_client::{Client, ClientError, TensorBatch};
use pixelfeed_engine::{BlockAllocator, HeapAllocator, TensorBlock};
use pixelfeed_schema::columns;
use pixelfeed_server::{ServerConfig, ServiceConfig};
use pixelfeed_testkit::{spawn_loopback, LoopbackServer};
use tonic::Code;

/// A cheap spec: 32×48 RGB uint8, HWC (4608 bytes a row).
const SMALL: &str =
    r#"{"resize":{"mode":"exact","height":32,"width":48},"dtype":"uint8","layout":"hwc"}"#;
const SMALL_SHAPE: [usize; 3] = [32, 48, 3];
const SMALL_ROW_BYTES: usize = 32 * 48 * 3;

async fn start(config: ServerConfig) -> (LoopbackServer, Client) {
    let server = spawn_loopback(config).await.expect("start loopback server");
    let client = Client::connect(&server.url()).await.expect("connect");
    (server, client)
}

async fn start_default() -> (LoopbackServer, Client) {
    start(ServerConfig::default()).await
}

fn hopper() -> Vec<u8> {
    pixelfeed_testkit::image("pillow_hopper.jpg")
}

fn input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("image", DataType::Binary, true),
        Field::new("label", DataType::Utf8, true),
    ]))
}

/// A batch `{id, image, label}` with ids counting from `first_id` and
/// labels `label-<id>`.
fn input_batch(first_id: i64, images: &[Option<&[u8]>]) -> RecordBatch {
    let ids: Vec<i64> = (first_id..).take(images.len()).collect();
    let labels = StringArray::from_iter_values(ids.iter().map(|i| format!("label-{i}")));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(BinaryArray::from_iter(images.iter().copied())),
        Arc::new(labels),
    ];
    RecordBatch::try_new(input_schema(), columns).unwrap()
}

/// Runs one exchange to completion; call-level and stream-level errors
/// alike come back as the `Err`.
async fn run(
    client: &Client,
    spec: &str,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, ClientError> {
    client
        .exchange(spec, stream::iter(batches))
        .await?
        .try_collect()
        .await
}

fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    pixelfeed_testkit::int64s(batches, "id")
}

fn total_rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

#[tokio::test]
async fn several_batches_keep_order_counts_and_passthrough_columns() {
    let (_server, client) = start_default().await;
    let images = pixelfeed_testkit::bundled_images();
    let pick = |n: usize, skip: usize| -> Vec<Option<&[u8]>> {
        images
            .iter()
            .cycle()
            .skip(skip)
            .take(n)
            .map(|(_, b)| Some(b.as_slice()))
            .collect()
    };
    let input = vec![
        input_batch(0, &pick(5, 0)),
        input_batch(5, &pick(1, 5)),
        input_batch(6, &pick(7, 6)),
    ];
    let out = run(&client, SMALL, input).await.unwrap();

    // With the default message target each input batch is one output batch.
    assert_eq!(
        out.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(),
        [5, 1, 7]
    );
    assert_eq!(ids(&out), (0..13).collect::<Vec<_>>());
    for batch in &out {
        let schema = batch.schema();
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            ["id", "label", "tensor", "error", "height", "width", "warning", "geometry"]
        );
        assert_eq!(schema.field(0).data_type(), &DataType::Int64);
        assert_eq!(schema.field(1).data_type(), &DataType::Utf8);
        let ids = batch.column(0).as_primitive::<Int64Type>();
        let labels = batch.column(1).as_string::<i32>();
        for i in 0..batch.num_rows() {
            assert_eq!(labels.value(i), format!("label-{}", ids.value(i)));
        }
        let t = TensorBatch::try_from(batch).unwrap();
        assert_eq!(t.shape(), SMALL_SHAPE);
        assert_eq!(t.as_u8().unwrap().len(), batch.num_rows() * SMALL_ROW_BYTES);
        assert!((0..batch.num_rows()).all(|i| t.is_valid(i)));
    }
}

#[tokio::test]
async fn null_and_garbage_images_become_error_rows() {
    let (_server, client) = start_default().await;
    let good = hopper();
    let garbage = b"this is not an image at all".as_slice();
    let batch = input_batch(0, &[Some(&good), None, Some(garbage), Some(&good)]);
    let out = run(&client, SMALL, vec![batch]).await.unwrap();

    assert_eq!(total_rows(&out), 4);
    assert_eq!(ids(&out), [0, 1, 2, 3]);
    let batch = only(&out);
    let t = TensorBatch::try_from(&batch).unwrap();
    for good_row in [0, 3] {
        assert!(t.is_valid(good_row));
        assert_eq!(t.error(good_row), None);
        assert!(t.row_u8(good_row).unwrap().iter().any(|v| *v != 0));
    }
    for bad_row in [1, 2] {
        assert!(!t.is_valid(bad_row));
        let why = t.error(bad_row).expect("a failed row carries an error");
        assert!(!why.is_empty());
        assert!(t.row_u8(bad_row).is_none());
        // The failed row's slot in the values buffer is zero-filled.
        let slot = &t.as_u8().unwrap()[bad_row * SMALL_ROW_BYTES..(bad_row + 1) * SMALL_ROW_BYTES];
        assert!(slot.iter().all(|v| *v == 0));
    }
}

/// The one output batch of a small exchange.
fn only(batches: &[RecordBatch]) -> RecordBatch {
    assert_eq!(batches.len(), 1, "expected one output batch");
    batches[0].clone()
}

#[tokio::test]
async fn small_message_target_splits_batches_but_keeps_every_row_in_order() {
    // About two 4608-byte rows per message (plus ~100 bytes a row of the
    // other columns: id, label, error, height/width, warning, geometry).
    let config = ServerConfig {
        service: ServiceConfig {
            target_message_bytes: 2 * SMALL_ROW_BYTES + 400,
            ..ServiceConfig::default()
        },
        ..ServerConfig::default()
    };
    let (_server, client) = start(config).await;
    let good = hopper();
    let first: Vec<Option<&[u8]>> = vec![Some(&good); 9];
    let second: Vec<Option<&[u8]>> = vec![Some(&good); 3];
    let out = run(
        &client,
        SMALL,
        vec![input_batch(0, &first), input_batch(9, &second)],
    )
    .await
    .unwrap();

    let sizes: Vec<_> = out.iter().map(RecordBatch::num_rows).collect();
    // 9 rows → 2+2+2+2+1, then 3 → 2+1: whole rows, never empty, and the
    // first input batch is complete before the second starts.
    assert_eq!(sizes, [2, 2, 2, 2, 1, 2, 1]);
    assert_eq!(ids(&out), (0..12).collect::<Vec<_>>());
    for batch in &out {
        let t = TensorBatch::try_from(batch).unwrap();
        assert_eq!(t.as_u8().unwrap().len(), batch.num_rows() * SMALL_ROW_BYTES);
        assert!((0..batch.num_rows()).all(|i| t.is_valid(i)));
    }
}

#[tokio::test]
async fn descriptor_only_first_message_is_accepted() {
    let (_server, client) = start_default().await;
    let good = hopper();
    // What pyarrow sends first: the descriptor and nothing else.
    let opener = FlightData {
        flight_descriptor: Some(FlightDescriptor::new_cmd(SMALL)),
        ..FlightData::default()
    };
    assert!(opener.data_header.is_empty() && opener.data_body.is_empty());
    let data = FlightDataEncoderBuilder::new().build(stream::iter([Ok(input_batch(
        0,
        &[Some(&good), Some(&good)],
    ))]));
    let request = stream::once(ready(Ok(opener))).chain(data);

    let out: Vec<RecordBatch> = client
        .flight_client()
        .do_exchange(request)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids(&out), [0, 1]);
    let t = TensorBatch::try_from(&out[0]).unwrap();
    assert_eq!(t.shape(), SMALL_SHAPE);
    assert!(t.is_valid(0) && t.is_valid(1));
}

#[tokio::test]
async fn schema_without_rows_still_returns_the_output_schema() {
    let (_server, client) = start_default().await;
    let mut out = client
        .exchange_with_schema(SMALL, input_schema(), stream::empty())
        .await
        .unwrap();
    assert!(out.next().await.is_none());
    let schema = out
        .schema()
        .expect("the output schema is sent without rows");
    let tensor = schema.field_with_name(columns::TENSOR).unwrap();
    let meta = pixelfeed_schema::FixedShapeTensorMetadata::from_field(tensor)
        .expect("extension metadata survives the wire")
        .unwrap();
    assert_eq!(meta.shape, SMALL_SHAPE);

    // With no batch and no schema at all, only the descriptor is sent.
    let empty = run(&client, SMALL, Vec::new()).await.unwrap();
    assert!(empty.is_empty());
}

#[tokio::test]
async fn allocation_failure_is_resource_exhausted() {
    struct Exhausted;
    impl BlockAllocator for Exhausted {
        fn allocate(&self, len: usize) -> Result<TensorBlock, String> {
            Err(format!("no block of {len} bytes left"))
        }
    }
    let config = ServerConfig {
        service: ServiceConfig {
            allocator: Arc::new(Exhausted),
            ..ServiceConfig::default()
        },
        ..ServerConfig::default()
    };
    let (_server, client) = start(config).await;
    let good = hopper();
    let err = run(&client, SMALL, vec![input_batch(0, &[Some(&good)])])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
}

#[tokio::test]
async fn other_rpcs_are_unimplemented() {
    let (_server, client) = start_default().await;
    let err = client
        .flight_client()
        .get_schema(arrow_flight::FlightDescriptor::new_path(vec!["x".into()]))
        .await
        .unwrap_err();
    let err = ClientError::from(err);
    assert_eq!(err.code(), Some(Code::Unimplemented), "{err}");
    // DoGet serves dataset shard tickets; anything else is refused.
    let err = client
        .flight_client()
        .do_get(Ticket::new("anything"))
        .await
        .unwrap_err();
    let err = ClientError::from(err);
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
}

#[tokio::test]
async fn message_size_limit_is_enforced_as_configured() {
    // The limit is plumbed into the server: with 1 MiB, a 2 MiB batch is
    // refused by the transport before it reaches the engine.
    let config = ServerConfig {
        max_message_bytes: 1 << 20,
        ..ServerConfig::default()
    };
    let (_server, client) = start(config).await;
    let big = vec![7u8; 2 << 20];
    let batch = RecordBatch::try_from_iter([(
        "image",
        Arc::new(BinaryArray::from_iter_values([&big])) as ArrayRef,
    )])
    .unwrap();
    let err = run(&client, SMALL, vec![batch]).await.unwrap_err();
    // tonic's OUT_OF_RANGE is reported as the server limit it is.
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_stalls_its_own_producer() {
    /// Heap blocks, counted: one allocation per processed batch.
    struct Counting(AtomicUsize);
    impl BlockAllocator for Counting {
        fn allocate(&self, len: usize) -> Result<TensorBlock, String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            HeapAllocator.allocate(len)
        }
    }
    let counter = Arc::new(Counting(AtomicUsize::new(0)));
    let config = ServerConfig {
        service: ServiceConfig {
            allocator: counter.clone(),
            ..ServiceConfig::default()
        },
        ..ServerConfig::default()
    };
    let (_server, client) = start(config).await;
    let good = hopper();
    // 3 MiB a row, one row a batch: a few batches fill the HTTP/2 windows.
    let spec = r#"{"resize":{"mode":"exact","height":1024,"width":1024},"dtype":"uint8"}"#;
    const BATCHES: i64 = 40;
    let input: Vec<_> = (0..BATCHES)
        .map(|i| input_batch(i, &[Some(good.as_slice())]))
        .collect();
    let mut out = client.exchange(spec, stream::iter(input)).await.unwrap();
    let first = out.next().await.unwrap().unwrap();

    // Stop reading and wait until the server stops producing.
    let mut last = counter.0.load(Ordering::SeqCst);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = counter.0.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    eprintln!("{last} of {BATCHES} batches processed while the reader was stalled");
    assert!(
        last < 20,
        "{last} of {BATCHES} batches processed while the client read one: no backpressure"
    );

    // Reading again resumes the exchange; nothing was lost or reordered.
    let mut all = vec![first];
    all.extend(out.try_collect::<Vec<_>>().await.unwrap());
    assert_eq!(ids(&all), (0..BATCHES).collect::<Vec<_>>());
    assert_eq!(counter.0.load(Ordering::SeqCst), BATCHES as usize);
}
