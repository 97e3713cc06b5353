//! End-to-end tests: a loopback pixelfeed server and the Rust client.
//!
//! Each test starts its own server on a free port, so they run in parallel
//! and a failure in one cannot leak into another.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, BinaryArray, Int64Array, LargeBinaryArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::stream::{self, TryStreamExt};
use pixelfeed_client::{Client, ClientError, TensorBatch, TransformSpec};
use pixelfeed_schema::SPEC_METADATA_KEY;
use pixelfeed_server::ServerConfig;
use pixelfeed_testkit::{spawn_loopback, LoopbackServer};
use tonic::Code;

/// A cheap spec: 32×48 RGB uint8, HWC (4608 bytes a row).
const SMALL: &str =
    r#"{"resize":{"mode":"exact","height":32,"width":48},"dtype":"uint8","layout":"hwc"}"#;
const SMALL_SHAPE: [usize; 3] = [32, 48, 3];

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

fn assert_invalid_argument(result: Result<Vec<RecordBatch>, ClientError>, needle: &str) {
    let err = result.expect_err("the server should reject this exchange");
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    let message = err.status().unwrap().message();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

#[tokio::test]
async fn bundled_images_round_trip() {
    let (_server, client) = start_default().await;
    let images = pixelfeed_testkit::bundled_images();
    let spec = TransformSpec::from_json(br#"{"preset":"imagenet"}"#).unwrap();
    let bytes: Vec<&[u8]> = images.iter().map(|(_, b)| b.as_slice()).collect();
    let out = client.preprocess(bytes, &spec, 4).await.unwrap();

    assert_eq!(total_rows(&out), images.len());
    let mut row = 0;
    for batch in &out {
        // The resolved spec travels in the schema metadata, naming the JPEG
        // decoder that ran.
        let schema = batch.schema();
        let sent = &schema.metadata()[SPEC_METADATA_KEY];
        let resolved = pixelfeed_engine::resolve_spec(&spec).unwrap();
        assert_ne!(resolved.decoder, pixelfeed_schema::JpegDecoder::Auto);
        assert_eq!(TransformSpec::from_json(sent.as_bytes()).unwrap(), resolved);
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

#[tokio::test]
async fn dataset_shards_read_back_every_row_in_order() {
    let root = pixelfeed_testkit::tempdir("client-dataset");
    let jpgs: Vec<String> = pixelfeed_testkit::directory_fixture(&root)
        .into_iter()
        .filter(|r| r.ends_with(".jpg"))
        .collect();
    let datasets = pixelfeed_server::DatasetsConfig::default();
    datasets
        .registry
        .register("d", &format!("dir:{}?glob=*.jpg", root.display()))
        .unwrap();
    let (_server, client) = start(ServerConfig {
        service: pixelfeed_server::ServiceConfig {
            datasets,
            ..Default::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let spec = serde_json::json!({"resize": {"mode": "exact", "height": 8, "width": 8},
                                  "dtype": "uint8", "layout": "hwc"});
    let info = client.dataset_shards("d", Some(&spec), 3).await.unwrap();
    assert_eq!(info.endpoint.len(), 3);
    let mut paths = Vec::new();
    for endpoint in &info.endpoint {
        let batches: Vec<RecordBatch> = client
            .read_shard(endpoint.ticket.clone().unwrap())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for batch in &batches {
            assert_eq!(TensorBatch::try_from(batch).unwrap().shape(), [8, 8, 3]);
            paths.extend(
                pixelfeed_testkit::strings(batch, "path")
                    .into_iter()
                    .flatten(),
            );
        }
    }
    assert_eq!(paths, jpgs);
    let unknown = client.dataset_shards("nope", None, 1).await.unwrap_err();
    assert_eq!(unknown.code(), Some(Code::NotFound), "{unknown}");
    let _ = std::fs::remove_dir_all(&root);
}
