//! Server-side datasets: directory, Parquet and WebDataset-tar sources give
//! the same rows and tensors as `DoExchange` on the same bytes; K shards
//! cover every row once, in order; two `--peer` servers split a sharded
//! read; uploads; `pixelfeed convert` round trip and resume.
//!
//! Fixtures are built here from the bundled images (tests/data/images).

use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BinaryArray, Int64Array, RecordBatch, UInt32Array};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{Action, FlightClient, FlightDescriptor, FlightInfo};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use pixelfeed_data::{DatasetRegistry, DatasetRoots, ReadOptions};
use pixelfeed_schema::InfoRequest;
use pixelfeed_server::{DatasetsConfig, ServerConfig, ServiceConfig};
use pixelfeed_testkit::spawn_loopback;
use pixelfeed_testkit::{
    assert_same_output, assert_same_pixels, concat, directory_fixture, strings, tempdir,
};
use serde_json::{json, Value};
use tonic::transport::Channel;

/// A small, cheap spec (the tests check plumbing, not pixels).
fn spec_json() -> Value {
    json!({"preset": "imagenet", "resize": {"mode": "shorter_side", "size": 40},
           "crop": {"mode": "center", "height": 32, "width": 32},
           "dtype": "uint8", "normalize": null})
}

/// A Parquet file (row groups of 3) with `id` and the images in `img`.
fn parquet_fixture(path: &Path) -> (Vec<i64>, Vec<Option<Vec<u8>>>) {
    let imgs: Vec<Option<Vec<u8>>> = pixelfeed_testkit::bundled_images()
        .into_iter()
        .map(|(_, b)| Some(b))
        .collect();
    let ids: Vec<i64> = (0..imgs.len() as i64).map(|i| 100 + i).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("img", DataType::Binary, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(BinaryArray::from_iter(imgs.iter().map(|b| b.as_deref()))),
        ],
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(3))
        .build();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    (ids, imgs)
}

/// Two WebDataset tars: samples with an image, `.cls` and `.txt`; one
/// sample with no image.
fn tar_fixture(dir: &Path) -> (Vec<String>, Vec<Option<Vec<u8>>>) {
    let imgs = pixelfeed_testkit::bundled_images();
    let (mut keys, mut bytes) = (Vec::new(), Vec::new());
    let half = imgs.len() / 2;
    for (t, chunk) in [&imgs[..half], &imgs[half..]].iter().enumerate() {
        let mut b =
            tar::Builder::new(std::fs::File::create(dir.join(format!("shard-{t}.tar"))).unwrap());
        let mut add = |name: String, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        };
        for (i, (name, data)) in chunk.iter().enumerate() {
            let key = format!("s{t}/{i:03}");
            let ext = if name.ends_with(".png") { "png" } else { "jpg" };
            add(format!("{key}.cls"), i.to_string().as_bytes());
            add(format!("{key}.{ext}"), data);
            add(format!("{key}.txt"), name.as_bytes());
            keys.push(key);
            bytes.push(Some(data.clone()));
        }
        if t == 1 {
            add("s1/zzz.txt".into(), b"no image here");
            keys.push("s1/zzz".into());
            bytes.push(None);
        }
        b.finish().unwrap();
    }
    (keys, bytes)
}

async fn client(url: &str) -> FlightClient {
    let channel = Channel::from_shared(url.replace("grpc://", "http://"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightClient::new(channel)
}

/// The reference: `DoExchange` on one batch holding `images`.
async fn exchange(c: &mut FlightClient, images: &[Option<Vec<u8>>]) -> RecordBatch {
    let batch = RecordBatch::try_from_iter([(
        "image",
        Arc::new(BinaryArray::from_iter(images.iter().map(|b| b.as_deref()))) as ArrayRef,
    )])
    .unwrap();
    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(spec_json().to_string())))
        .build(futures::stream::once(async { Ok::<_, FlightError>(batch) }));
    let out: Vec<RecordBatch> = c
        .do_exchange(input)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    concat(&out)
}

async fn info(c: &mut FlightClient, dataset: &str, shards: u64) -> FlightInfo {
    let cmd = InfoRequest::command(dataset, Some(&spec_json()), shards);
    c.get_flight_info(FlightDescriptor::new_cmd(cmd))
        .await
        .unwrap()
}

/// Every shard's batches, in endpoint order (each may be empty).
async fn read_shards(c: &mut FlightClient, info: &FlightInfo) -> Vec<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for ep in &info.endpoint {
        let stream = c.do_get(ep.ticket.clone().unwrap()).await.unwrap();
        out.push(stream.try_collect().await.unwrap());
    }
    out
}

/// The whole dataset read through `k` shards, as one batch.
async fn read_all(c: &mut FlightClient, dataset: &str, k: u64) -> RecordBatch {
    let info = info(c, dataset, k).await;
    concat(&read_shards(c, &info).await.concat())
}

async fn server_with(
    datasets: &[(&str, String)],
) -> (pixelfeed_testkit::LoopbackServer, Arc<DatasetRegistry>) {
    let registry = Arc::new(DatasetRegistry::new());
    for (name, uri) in datasets {
        registry.register(name, uri).unwrap();
    }
    let config = DatasetsConfig {
        registry: Arc::clone(&registry),
        read: ReadOptions {
            batch_rows: 4,
            ..ReadOptions::default()
        },
        roots: Some(DatasetRoots::new([std::env::temp_dir()]).unwrap()),
        ..DatasetsConfig::default()
    };
    let server = spawn_loopback(ServerConfig {
        service: ServiceConfig {
            datasets: config,
            ..ServiceConfig::default()
        },
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    (server, registry)
}

#[tokio::test]
async fn directory_parquet_and_tar_sources_match_exchange_on_the_same_bytes() {
    let root = tempdir("sources");
    let dir = root.join("dir");
    let rels = directory_fixture(&dir);
    let (ids, pq_images) = parquet_fixture(&root.join("t.parquet"));
    std::fs::create_dir_all(root.join("wds")).unwrap();
    let (keys, tar_images) = tar_fixture(&root.join("wds"));
    let (server, _) = server_with(&[
        ("dir", format!("dir:{}", dir.display())),
        (
            "pq",
            format!("{}?column=img", root.join("t.parquet").display()),
        ),
        ("wds", format!("tar:{}", root.join("wds").display())),
    ])
    .await;
    let mut c = client(&server.url()).await;

    // Directory: `path` + the file's bytes; the text file is an error row.
    let dir_images: Vec<Option<Vec<u8>>> = rels
        .iter()
        .map(|r| Some(std::fs::read(dir.join(r)).unwrap()))
        .collect();
    let got = read_all(&mut c, "dir", 3).await;
    assert_eq!(
        strings(&got, "path"),
        rels.iter().cloned().map(Some).collect::<Vec<_>>()
    );
    let reference = exchange(&mut c, &dir_images).await;
    assert_same_pixels(&got, &reference);
    // The same errors, except that a row the server read itself quotes none
    // of the file's bytes (the client sent them in the reference).
    let errors = strings(&got, "error");
    let quoted: Vec<Option<String>> = strings(&reference, "error")
        .into_iter()
        .map(|e| e.map(|e| e.split(" (first bytes").next().unwrap().to_string()))
        .collect();
    assert_eq!(errors, quoted);
    assert_eq!(
        errors.iter().flatten().collect::<Vec<_>>(),
        ["unknown image format"],
        "{errors:?}"
    );

    // Parquet: other columns pass through, row-group boundaries straddled.
    let got = read_all(&mut c, "pq", 4).await;
    let got_ids = got
        .column_by_name("id")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(got_ids.values().to_vec(), ids);
    assert_same_output(&got, &exchange(&mut c, &pq_images).await);
    assert!(strings(&got, "error").iter().all(Option::is_none));

    // Tar: `key`, sidecars as columns, an image-less sample is an error row.
    let got = read_all(&mut c, "wds", 3).await;
    assert_eq!(
        strings(&got, "key"),
        keys.iter().cloned().map(Some).collect::<Vec<_>>()
    );
    let names: Vec<_> = got
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(&names[..3], ["key", "cls", "txt"]);
    assert_eq!(strings(&got, "cls")[1].as_deref(), Some("1"));
    assert_same_output(&got, &exchange(&mut c, &tar_images).await);
    assert_eq!(
        strings(&got, "error").last().unwrap().as_deref(),
        Some("image is null")
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn k_shards_cover_every_row_exactly_once_in_order() {
    let root = tempdir("shards");
    let rels = directory_fixture(&root);
    let (server, _) = server_with(&[("d", format!("dir:{}?glob=*.jpg", root.display()))]).await;
    let jpgs: Vec<String> = rels.into_iter().filter(|r| r.ends_with(".jpg")).collect();
    let mut c = client(&server.url()).await;
    for k in [1, 2, 5, jpgs.len() as u64 + 2] {
        let info = info(&mut c, "d", k).await;
        assert_eq!(info.endpoint.len() as u64, k);
        assert_eq!(info.total_records, jpgs.len() as i64);
        let shards = read_shards(&mut c, &info).await;
        let mut all = Vec::new();
        let mut sizes = Vec::new();
        for shard in &shards {
            let paths: Vec<_> = shard
                .iter()
                .flat_map(|b| strings(b, "path"))
                .flatten()
                .collect();
            sizes.push(paths.len());
            all.extend(paths);
        }
        assert_eq!(
            all, jpgs,
            "k={k}: shards must concatenate to the dataset in order"
        );
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
        // The advertised schema is what DoGet sends.
        let schema = Schema::try_from(info.clone()).unwrap();
        if let Some(b) = shards.iter().flatten().next() {
            assert_eq!(b.schema().fields(), schema.fields());
        }
    }
    // A path descriptor: default spec (imagenet), one shard.
    let info = c
        .get_flight_info(FlightDescriptor::new_path(vec!["d".into()]))
        .await
        .unwrap();
    assert_eq!(info.endpoint.len(), 1);
    let err = c
        .get_flight_info(FlightDescriptor::new_path(vec!["nope".into()]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn register_upload_and_list_datasets() {
    let root = tempdir("register");
    directory_fixture(&root);
    let (server, _) = server_with(&[]).await;
    let mut c = client(&server.url()).await;
    let answer: Vec<_> = c
        .do_action(Action::new(
            "register_dataset",
            json!({"name": "imgs", "uri": format!("dir:{}?glob=*.png", root.display())})
                .to_string(),
        ))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&answer[0]).unwrap();
    let pngs = pixelfeed_testkit::bundled_images()
        .iter()
        .filter(|(n, _)| n.ends_with(".png"))
        .count();
    assert_eq!(answer, json!({"name": "imgs", "rows": pngs}));

    // Upload a table with a passthrough column; read it back sharded.
    let imgs: Vec<Option<Vec<u8>>> = pixelfeed_testkit::bundled_images()
        .into_iter()
        .map(|(_, b)| Some(b))
        .collect();
    let table = RecordBatch::try_from_iter([
        (
            "label",
            Arc::new(UInt32Array::from_iter_values(0..imgs.len() as u32)) as ArrayRef,
        ),
        (
            "image",
            Arc::new(BinaryArray::from_iter(imgs.iter().map(|b| b.as_deref()))) as ArrayRef,
        ),
    ])
    .unwrap();
    let put = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["up".into()])))
        .build(futures::stream::iter([
            Ok(table.slice(0, 5)),
            Ok(table.slice(5, imgs.len() - 5)),
        ]));
    let results: Vec<_> = c.do_put(put).await.unwrap().try_collect().await.unwrap();
    let answer: Value = serde_json::from_slice(&results[0].app_metadata).unwrap();
    assert_eq!(answer, json!({"name": "up", "rows": imgs.len()}));
    let got = read_all(&mut c, "up", 2).await;
    assert_eq!(
        got.column_by_name("label").unwrap().as_ref(),
        table.column(0).as_ref()
    );
    assert_same_output(&got, &exchange(&mut c, &imgs).await);

    let listed: Vec<FlightInfo> = c
        .list_flights("")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let names: Vec<Value> = listed
        .iter()
        .map(|i| serde_json::from_slice::<Value>(&i.app_metadata).unwrap()["name"].clone())
        .collect();
    assert_eq!(names, [json!("imgs"), json!("up")]);
    assert_eq!(listed[1].total_records, imgs.len() as i64);
    let _ = std::fs::remove_dir_all(&root);
}
