//! End-to-end tests: a loopback pixelfeed server and the Rust client.
//!
//! Each test starts its own server on a free port, so they run in parallel
//! and a failure in one cannot leak into another.

use std::future::ready;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, BinaryArray, Int64Array, LargeBinaryArray, RecordBatch, StringArray};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightData, FlightDescriptor, Ticket};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::stream::{self, StreamExt, TryStreamExt};
use pixelfeed_client::{Client, ClientError, TensorBatch, TransformSpec};
use pixelfeed_schema::{columns, SPEC_METADATA_KEY};
use pixelfeed_server::engine::{BlockAllocator, HeapAllocator, TensorBlock};
use pixelfeed_server::flight::{spawn_loopback, LoopbackServer, ServerConfig, ServiceConfig};
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

/// The bundled test images (`tests/data/images/*.{jpg,png}`), sorted by name.
fn bundled_images() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/images");
    let mut images: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("jpg" | "png")))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    images.sort();
    assert!(
        images.len() >= 10,
        "expected the bundled corpus in {}",
        dir.display()
    );
    images
}

fn hopper() -> Vec<u8> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/images/pillow_hopper.jpg");
    std::fs::read(path).unwrap()
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
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("id")
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

fn total_rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

fn assert_invalid_argument(result: Result<Vec<RecordBatch>, ClientError>, needle: &str) {
    let err = result.expect_err("the server should reject this exchange");
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    let message = err.status().unwrap().message();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

#[tokio::test]
async fn bundled_images_round_trip() {
    let (_server, client) = start_default().await;
    let images = bundled_images();
    let spec = TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap();
    let bytes: Vec<&[u8]> = images.iter().map(|(_, b)| b.as_slice()).collect();
    let out = client.preprocess(bytes, &spec, 4).await.unwrap();

    assert_eq!(total_rows(&out), images.len());
    let mut row = 0;
    for batch in &out {
        // The resolved spec travels in the schema metadata.
        let schema = batch.schema();
        let sent = &schema.metadata()[SPEC_METADATA_KEY];
        assert_eq!(TransformSpec::from_json(sent.as_bytes()).unwrap(), spec);
        let t = TensorBatch::try_from(batch).unwrap();
        assert_eq!(t.shape(), [3, 224, 224]);
        assert_eq!(t.dim_names().unwrap(), ["C", "H", "W"]);
        let values = t.as_f32().unwrap();
        assert_eq!(values.len(), batch.num_rows() * 3 * 224 * 224);
        assert!(t.as_u8().is_none());
        for i in 0..batch.num_rows() {
            let name = &images[row].0;
            assert!(t.is_valid(i), "{name}: {:?}", t.error(i));
            assert_eq!(t.error(i), None, "{name}");
            let (h, w) = t
                .source_size(i)
                .unwrap_or_else(|| panic!("{name}: no size"));
            assert!(h > 0 && w > 0, "{name}");
            let pixels = t.row_f32(i).unwrap();
            assert!(pixels.iter().all(|v| v.is_finite()), "{name}");
            assert!(pixels.iter().any(|v| *v != 0.0), "{name}: all zero");
            row += 1;
        }
    }
}

#[tokio::test]
async fn several_batches_keep_order_counts_and_passthrough_columns() {
    let (_server, client) = start_default().await;
    let images = bundled_images();
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
async fn input_batch_over_4_mib_is_accepted() {
    let (_server, client) = start_default().await;
    let good = hopper();
    // Four small images plus a 1.5 MiB passthrough payload each: one ~6 MiB
    // message, over tonic's default 4 MiB receive limit.
    let payload: Vec<u8> = (0..3 << 19).map(|i| (i % 251) as u8).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("image", DataType::Binary, true),
        Field::new("payload", DataType::LargeBinary, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(BinaryArray::from_iter_values([&good; 4])) as ArrayRef,
            Arc::new(LargeBinaryArray::from_iter_values([&payload; 4])),
        ],
    )
    .unwrap();
    assert!(batch.get_array_memory_size() > 5 << 20);

    let out = run(&client, SMALL, vec![batch]).await.unwrap();
    assert_eq!(total_rows(&out), 4);
    for batch in &out {
        let payloads = batch.column_by_name("payload").unwrap().as_binary::<i64>();
        assert!(payloads.iter().all(|p| p == Some(payload.as_slice())));
        let t = TensorBatch::try_from(batch).unwrap();
        assert!((0..batch.num_rows()).all(|i| t.is_valid(i)));
    }
}

#[tokio::test]
async fn small_message_target_splits_batches_but_keeps_every_row_in_order() {
    // About two 4608-byte rows per message (plus ~100 bytes a row of the
    // other columns: id, label, error, height/width, warning, geometry).
    let config = ServerConfig::default().with_service(
        ServiceConfig::default().with_target_message_bytes(2 * SMALL_ROW_BYTES + 400),
    );
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
async fn invalid_spec_is_invalid_argument_naming_the_field() {
    let (_server, client) = start_default().await;
    let good = hopper();
    let batch = || vec![input_batch(0, &[Some(&good)])];

    let too_tall = r#"{"preset":"imagenet","crop":{"mode":"center","height":300,"width":224}}"#;
    assert_invalid_argument(run(&client, too_tall, batch()).await, "crop.height");
    let bad_filter = r#"{"preset":"imagenet","filter":"box"}"#;
    assert_invalid_argument(run(&client, bad_filter, batch()).await, "filter");
    assert_invalid_argument(run(&client, "{not json", batch()).await, "spec");
}

#[tokio::test]
async fn missing_or_mistyped_image_column_is_invalid_argument() {
    let (_server, client) = start_default().await;
    let no_image = RecordBatch::try_from_iter([(
        "img",
        Arc::new(BinaryArray::from_iter_values([b"x"])) as ArrayRef,
    )])
    .unwrap();
    assert_invalid_argument(run(&client, SMALL, vec![no_image]).await, "image");

    let text_image = RecordBatch::try_from_iter([(
        "image",
        Arc::new(StringArray::from(vec!["not bytes"])) as ArrayRef,
    )])
    .unwrap();
    assert_invalid_argument(run(&client, SMALL, vec![text_image]).await, "image");
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
    let config = ServerConfig::default()
        .with_service(ServiceConfig::default().with_allocator(Arc::new(Exhausted)));
    let (_server, client) = start(config).await;
    let good = hopper();
    let err = run(&client, SMALL, vec![input_batch(0, &[Some(&good)])])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
}

#[tokio::test]
async fn presets_health_and_action_list() {
    let (_server, client) = start_default().await;
    let presets = client.presets().await.unwrap();
    assert_eq!(
        presets["imagenet"],
        TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap()
    );
    assert_eq!(
        client.health().await.unwrap(),
        serde_json::json!({"status": "ok"})
    );
    let names: Vec<_> = client
        .list_actions()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.r#type)
        .collect();
    assert!(names.contains(&"presets".to_string()), "{names:?}");
    assert!(names.contains(&"health".to_string()), "{names:?}");
    let err = client
        .action_json("no-such-action", bytes::Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unimplemented));
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
    // DoGet serves dataset shard tickets (issue #6); anything else is refused.
    let err = client
        .flight_client()
        .do_get(Ticket::new("anything"))
        .await
        .unwrap_err();
    let err = ClientError::from(err);
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
}

#[tokio::test]
async fn concurrent_exchanges_on_one_connection_do_not_mix() {
    let (_server, client) = start_default().await;
    let good = hopper();
    let a = input_batch(0, &[Some(good.as_slice()); 3]);
    let b = input_batch(100, &[Some(good.as_slice()); 4]);
    let gray = r#"{"resize":{"mode":"exact","height":8,"width":8},"color":"gray","dtype":"uint8"}"#;
    let (out_a, out_b) = tokio::join!(run(&client, SMALL, vec![a]), run(&client, gray, vec![b]));
    let (out_a, out_b) = (out_a.unwrap(), out_b.unwrap());
    assert_eq!(ids(&out_a), [0, 1, 2]);
    assert_eq!(ids(&out_b), [100, 101, 102, 103]);
    assert_eq!(
        TensorBatch::try_from(&out_a[0]).unwrap().shape(),
        SMALL_SHAPE
    );
    assert_eq!(TensorBatch::try_from(&out_b[0]).unwrap().shape(), [1, 8, 8]);
}

#[tokio::test]
async fn connect_rejects_unsupported_urls() {
    let err = Client::connect("grpc+tls://127.0.0.1:1").await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidUrl { .. }), "{err}");
}

#[tokio::test]
async fn message_size_limit_is_enforced_as_configured() {
    // The limit is plumbed into the server: with 1 MiB, a 2 MiB batch is
    // refused by the transport before it reaches the engine.
    let config = ServerConfig::default().with_max_message_bytes(1 << 20);
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
    let config = ServerConfig::default()
        .with_service(ServiceConfig::default().with_allocator(counter.clone()));
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

#[tokio::test]
async fn half_precision_tensors_are_the_rounded_float32_values() {
    let (_server, client) = start_default().await;
    let image = hopper();
    let images = [Some(image.as_slice())];
    let spec = |dtype: &str| format!(r#"{{"preset":"imagenet","dtype":"{dtype}"}}"#);
    let full = run(&client, &spec("float32"), vec![input_batch(0, &images)])
        .await
        .unwrap();
    let full = TensorBatch::try_from(&only(&full)).unwrap();
    let reference = full.as_f32().unwrap();
    assert_eq!(full.dtype(), Some("float32"));

    let half = run(&client, &spec("float16"), vec![input_batch(0, &images)])
        .await
        .unwrap();
    let half = TensorBatch::try_from(&only(&half)).unwrap();
    assert_eq!(half.dtype(), Some("float16"));
    let values = half.as_f16().expect("float16 values");
    assert!(half.as_bf16().is_none());
    assert_eq!(values.len(), reference.len());
    assert!(values
        .iter()
        .zip(reference)
        .all(|(h, f)| *h == half::f16::from_f32(*f)));

    let brain = run(&client, &spec("bfloat16"), vec![input_batch(0, &images)])
        .await
        .unwrap();
    let brain = TensorBatch::try_from(&only(&brain)).unwrap();
    assert_eq!(brain.dtype(), Some("bfloat16"));
    let values = brain.as_bf16().expect("bfloat16 values");
    assert!(values
        .iter()
        .zip(reference)
        .all(|(b, f)| *b == half::bf16::from_f32(*f)));
    assert!(brain.warning(0).is_none());
}
