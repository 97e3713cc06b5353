//! `Client::exchange_ordered`: several calls, rows in input order, the
//! first failing call ends the stream with its status, and dropping the
//! stream cancels every call and frees the server's blocks.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::stream::{self, StreamExt, TryStreamExt};
use pixelfeed_client::{Client, ClientError, TensorBatch};
use pixelfeed_engine::{BlockAllocator, HeapAllocator, TensorBlock};
use pixelfeed_server::{CallLimits, Metrics, ServerConfig, ServiceConfig};
use pixelfeed_testkit::spawn_loopback;
use tonic::Code;

/// 32×48 RGB uint8, HWC: 4608 bytes a row.
const SMALL: &str =
    r#"{"resize":{"mode":"exact","height":32,"width":48},"dtype":"uint8","layout":"hwc"}"#;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("image", DataType::Binary, true),
    ]))
}

/// Batches of the given sizes with ids counting from 0 over all of them;
/// images cycle through the bundled ones, and every seventh row is not an
/// image (an error row must keep its place too).
fn batches(sizes: &[usize]) -> Vec<RecordBatch> {
    let images = pixelfeed_testkit::bundled_images();
    let mut next = 0i64;
    sizes
        .iter()
        .map(|&n| {
            let ids: Vec<i64> = (next..).take(n).collect();
            next += n as i64;
            let bytes: Vec<&[u8]> = ids
                .iter()
                .map(|&i| match i % 7 {
                    6 => b"not an image".as_slice(),
                    _ => images[i as usize % images.len()].1.as_slice(),
                })
                .collect();
            let columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(BinaryArray::from_iter_values(bytes)),
            ];
            RecordBatch::try_new(schema(), columns).unwrap()
        })
        .collect()
}

fn ids(out: &[RecordBatch]) -> Vec<i64> {
    pixelfeed_testkit::int64s(out, "id")
}

fn row_bytes(out: &[RecordBatch]) -> Vec<Option<Vec<u8>>> {
    out.iter()
        .flat_map(|b| {
            let t = TensorBatch::try_from(b).unwrap();
            (0..t.num_rows())
                .map(|i| t.is_valid(i).then(|| t.row_u8(i).unwrap().to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn ordered(
    client: &Client,
    input: Vec<RecordBatch>,
    streams: usize,
) -> Result<Vec<RecordBatch>, ClientError> {
    client
        .exchange_ordered(SMALL, schema(), stream::iter(input), streams, 2)
        .await?
        .try_collect()
        .await
}

#[tokio::test]
async fn rows_come_back_in_input_order_for_any_number_of_calls() {
    // Output messages of about one row each: every input batch's rows come
    // back as several messages, which the reader must count across.
    let config = ServerConfig {
        service: ServiceConfig {
            target_message_bytes: 5000,
            ..ServiceConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = spawn_loopback(config).await.unwrap();
    let client = Client::connect(&server.url()).await.unwrap();
    let sizes = [3, 1, 0, 7, 2, 5, 1, 4, 6, 2, 3];
    let total: usize = sizes.iter().sum();
    let one = client
        .exchange(SMALL, stream::iter(batches(&sizes)))
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(ids(&one), (0..total as i64).collect::<Vec<_>>());
    for streams in [1, 2, 3, 5, 16] {
        let out = ordered(&client, batches(&sizes), streams).await.unwrap();
        assert_eq!(ids(&out), ids(&one), "streams={streams}");
        assert_eq!(row_bytes(&out), row_bytes(&one), "streams={streams}");
    }
    let empty = ordered(&client, Vec::new(), 3).await.unwrap();
    assert!(empty.is_empty());
}

#[tokio::test]
async fn preprocess_ordered_equals_preprocess() {
    let server = spawn_loopback(ServerConfig::default()).await.unwrap();
    let client = Client::connect(&server.url()).await.unwrap();
    let images: Vec<Vec<u8>> = pixelfeed_testkit::bundled_images()
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let one = client.preprocess(&images, SMALL, 3).await.unwrap();
    let streams = client.default_streams().await;
    assert!((1..=4).contains(&streams), "{streams}");
    let many = client
        .preprocess_ordered(&images, SMALL, 3, 3)
        .await
        .unwrap();
    assert_eq!(row_bytes(&many), row_bytes(&one));
}

#[tokio::test]
async fn a_failing_call_ends_the_stream_with_its_status() {
    let config = ServerConfig {
        service: ServiceConfig {
            limits: CallLimits {
                max_rows_per_batch: 4,
                ..CallLimits::default()
            },
            ..ServiceConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = spawn_loopback(config).await.unwrap();
    let client = Client::connect(&server.url()).await.unwrap();
    // The third batch (call 0 of 2) is over the limit.
    let mut stream = client
        .exchange_ordered(SMALL, schema(), stream::iter(batches(&[2, 3, 6, 1])), 2, 2)
        .await
        .unwrap();
    let mut rows = 0;
    let err = loop {
        match stream.next().await {
            Some(Ok(batch)) => rows += batch.num_rows(),
            Some(Err(e)) => break e,
            None => panic!("the stream ended without the call's error"),
        }
    };
    assert_eq!(rows, 5, "the rows before the failing batch");
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert!(stream.next().await.is_none(), "nothing after the error");
}

/// Heap blocks, counted while alive.
struct Live(Arc<AtomicUsize>);

/// One live block: its memory and the counter it decrements when freed.
struct Tracked(#[allow(dead_code)] Mutex<TensorBlock>, Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::SeqCst);
    }
}

impl BlockAllocator for Live {
    fn allocate(&self, len: usize) -> Result<TensorBlock, String> {
        let mut block = HeapAllocator.allocate(len)?;
        let ptr = NonNull::new(block.as_mut_slice().as_mut_ptr()).expect("a heap block");
        self.0.fetch_add(1, Ordering::SeqCst);
        let owner = Arc::new(Tracked(Mutex::new(block), Arc::clone(&self.0)));
        // SAFETY: `ptr` is the heap block's own memory, `len` bytes, 64-byte
        // aligned; `owner` keeps that block alive and nobody else uses it.
        Ok(unsafe { TensorBlock::from_raw(ptr, len, owner) })
    }
}

fn active_calls(metrics: &Metrics) -> f64 {
    let text = metrics.render(&HeapAllocator);
    text.lines()
        .find_map(|l| l.strip_prefix("pixelfeed_active_calls "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the active calls gauge")
}

#[tokio::test]
async fn dropping_the_stream_cancels_every_call_and_frees_the_blocks() {
    let live = Arc::new(AtomicUsize::new(0));
    let metrics = Arc::new(Metrics::default());
    let config = ServerConfig {
        service: ServiceConfig {
            allocator: Arc::new(Live(Arc::clone(&live))),
            metrics: Arc::clone(&metrics),
            ..ServiceConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = spawn_loopback(config).await.unwrap();
    let client = Client::connect(&server.url()).await.unwrap();
    let endless = stream::iter(batches(&[8])).cycle();
    let mut stream = client
        .exchange_ordered(SMALL, schema(), endless, 3, 2)
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.num_rows(), 8);
    drop(first);
    assert!(active_calls(&metrics) >= 3.0);
    drop(stream);

    let deadline = Instant::now() + Duration::from_secs(20);
    while (live.load(Ordering::SeqCst) > 0 || active_calls(&metrics) > 0.0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(live.load(Ordering::SeqCst), 0, "blocks still held");
    assert_eq!(active_calls(&metrics), 0.0, "calls still running");
    // The connection still works.
    let out = ordered(&client, batches(&[3, 3, 3]), 3).await.unwrap();
    assert_eq!(ids(&out), (0..9).collect::<Vec<_>>());
}

/// imagenet_train's random resized crop and flips, small uint8 output.
const RANDOM: &str = r#"{"preset":"imagenet_train","seed":7,"crop":{"mode":"random_resized_crop","height":24,"width":24},"dtype":"uint8","layout":"hwc","normalize":null}"#;

async fn ordered_with(
    client: &Client,
    spec: &str,
    schema: SchemaRef,
    input: Vec<RecordBatch>,
    streams: usize,
) -> Result<Vec<RecordBatch>, ClientError> {
    client
        .exchange_ordered(spec, schema, stream::iter(input), streams, 2)
        .await?
        .try_collect()
        .await
}

#[tokio::test]
async fn random_draws_do_not_depend_on_the_number_of_calls() {
    let server = spawn_loopback(ServerConfig::default()).await.unwrap();
    let client = Client::connect(&server.url()).await.unwrap();
    let sizes = [4, 3, 5, 2, 6];
    let one = ordered_with(&client, RANDOM, schema(), batches(&sizes), 1)
        .await
        .unwrap();
    for streams in [2, 3] {
        let many = ordered_with(&client, RANDOM, schema(), batches(&sizes), streams)
            .await
            .unwrap();
        assert_eq!(many[0].schema(), one[0].schema(), "no seed column left");
        assert_eq!(row_bytes(&many), row_bytes(&one), "streams={streams}");
    }

    // The caller's own seed column, with nulls (keyed by position) and
    // int32 values: same bytes as one call, and the column comes back.
    let seeded_schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("image", DataType::Binary, true),
        Field::new("seed", DataType::Int32, true),
    ]));
    let seeded: Vec<RecordBatch> = batches(&sizes)
        .into_iter()
        .map(|b| {
            let ids = b.column(0).as_primitive::<Int64Type>();
            let seeds: arrow_array::Int32Array = ids
                .values()
                .iter()
                .map(|&i| (i % 3 != 0).then_some(-(i as i32) * 1000))
                .collect();
            RecordBatch::try_new(
                Arc::clone(&seeded_schema),
                vec![
                    Arc::clone(b.column(0)),
                    Arc::clone(b.column(1)),
                    Arc::new(seeds),
                ],
            )
            .unwrap()
        })
        .collect();
    let want_seeds: Vec<ArrayRef> = seeded.iter().map(|b| Arc::clone(b.column(2))).collect();
    let one = ordered_with(
        &client,
        RANDOM,
        Arc::clone(&seeded_schema),
        seeded.clone(),
        1,
    )
    .await
    .unwrap();
    let many = ordered_with(&client, RANDOM, Arc::clone(&seeded_schema), seeded, 3)
        .await
        .unwrap();
    assert_eq!(row_bytes(&many), row_bytes(&one));
    let seeds = |out: &[RecordBatch]| -> Vec<Option<i32>> {
        out.iter()
            .flat_map(|b| {
                b.column_by_name("seed")
                    .unwrap()
                    .as_primitive::<arrow_array::types::Int32Type>()
                    .iter()
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let sent: Vec<Option<i32>> = want_seeds
        .iter()
        .flat_map(|c| {
            c.as_primitive::<arrow_array::types::Int32Type>()
                .iter()
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        seeds(&many),
        sent,
        "the caller's seed column, nulls included"
    );
    assert_eq!(seeds(&one), sent);
}

#[tokio::test]
async fn a_seed_column_the_server_cannot_read_needs_one_call() {
    let server = spawn_loopback(ServerConfig::default()).await.unwrap();
    let client = Client::connect(&server.url()).await.unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("image", DataType::Binary, true),
        Field::new("seed", DataType::Utf8, true),
    ]));
    let err = client
        .exchange_ordered(SMALL, schema, stream::empty(), 2, 2)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::InvalidArgument(m) if m.contains("seed")),
        "{err}"
    );
}

#[tokio::test]
async fn an_input_stream_that_panics_is_an_error_not_a_short_end() {
    let server = spawn_loopback(ServerConfig::default()).await.unwrap();
    let client = Client::connect(&server.url()).await.unwrap();
    let mut given = 0;
    let input = stream::iter(batches(&[3, 3, 3])).map(move |b| {
        given += 1;
        assert!(given < 3, "the caller's input stream broke");
        b
    });
    let result: Result<Vec<RecordBatch>, ClientError> = client
        .exchange_ordered(SMALL, schema(), input, 2, 2)
        .await
        .unwrap()
        .try_collect()
        .await;
    let err = result.unwrap_err();
    assert!(err.to_string().contains("panicked"), "{err}");
}
