//! Server-side datasets: directory, Parquet and WebDataset-tar sources give
//! the same rows and tensors as `DoExchange` on the same bytes; K shards
//! cover every row once, in order; two `--peer` servers split a sharded
//! read; uploads; `pixelfeed convert` round trip and resume.
//!
//! Fixtures are built here from the bundled images (tests/data/images).
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, UInt32Array,
};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{Action, FlightClient, FlightDescriptor, FlightInfo};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use pixelfeed_schema::TransformSpec;
use pixelfeed_server::convert::{convert, ConvertOptions, OutputFormat};
use pixelfeed_server::dataset::{DatasetRegistry, ReadOptions};
use pixelfeed_server::engine::{process_batch, EngineConfig, HeapAllocator};
use pixelfeed_server::flight::{spawn_loopback, DatasetsConfig, ServerConfig, ServiceConfig};
use serde_json::{json, Value};
use tonic::transport::Channel;

/// A small, cheap spec (the tests check plumbing, not pixels).
fn spec_json() -> Value {
    json!({"preset": "imagenet", "resize": {"mode": "shorter_side", "size": 40},
           "crop": {"mode": "center", "height": 32, "width": 32},
           "dtype": "uint8", "normalize": null})
}

fn spec() -> TransformSpec {
    TransformSpec::from_value(&spec_json()).unwrap()
}

/// The bundled images (JPEG and PNG files), sorted by name.
fn images() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/images");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "png"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(out.len() >= 10, "bundled images missing");
    out
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pixelfeed-datasets-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A directory of the images, one nested, plus a non-image file.
fn directory_fixture(root: &Path) -> Vec<String> {
    let mut rels = Vec::new();
    for (i, (name, bytes)) in images().iter().enumerate() {
        let rel = if i % 3 == 0 {
            format!("sub/{name}")
        } else {
            name.clone()
        };
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        rels.push(rel);
    }
    std::fs::write(root.join("notes.txt"), "not an image").unwrap();
    rels.push("notes.txt".into());
    rels.sort();
    rels
}

/// A Parquet file (row groups of 3) with `id` and the images in `img`.
fn parquet_fixture(path: &Path) -> (Vec<i64>, Vec<Option<Vec<u8>>>) {
    let imgs: Vec<Option<Vec<u8>>> = images().into_iter().map(|(_, b)| Some(b)).collect();
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
    let imgs = images();
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

fn concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow_select::concat::concat_batches(&batches[0].schema(), batches).unwrap()
}

async fn info(c: &mut FlightClient, dataset: &str, shards: u64) -> FlightInfo {
    let cmd = json!({"dataset": dataset, "spec": spec_json(), "shards": shards});
    c.get_flight_info(FlightDescriptor::new_cmd(cmd.to_string()))
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

fn strings(batch: &RecordBatch, col: &str) -> Vec<Option<String>> {
    let a = batch.column_by_name(col).unwrap();
    let a = a.as_any().downcast_ref::<StringArray>().unwrap();
    a.iter().map(|s| s.map(str::to_string)).collect()
}

/// The engine output columns of `got` equal the reference's.
fn assert_same_output(got: &RecordBatch, reference: &RecordBatch) {
    for col in ["tensor", "error", "height", "width"] {
        assert_eq!(
            got.column_by_name(col).unwrap().as_ref(),
            reference.column_by_name(col).unwrap().as_ref(),
            "column {col}"
        );
    }
}

async fn server_with(
    datasets: &[(&str, String)],
) -> (
    pixelfeed_server::flight::LoopbackServer,
    Arc<DatasetRegistry>,
) {
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
        ..DatasetsConfig::default()
    };
    let server = spawn_loopback(
        ServerConfig::default().with_service(ServiceConfig::default().with_datasets(config)),
    )
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
    assert_same_output(&got, &exchange(&mut c, &dir_images).await);
    let errors = strings(&got, "error");
    assert_eq!(
        errors.iter().filter(|e| e.is_some()).count(),
        1,
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
    let pngs = images().iter().filter(|(n, _)| n.ends_with(".png")).count();
    assert_eq!(answer, json!({"name": "imgs", "rows": pngs}));

    // Upload a table with a passthrough column; read it back sharded.
    let imgs: Vec<Option<Vec<u8>>> = images().into_iter().map(|(_, b)| Some(b)).collect();
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `pixelfeed serve` on `port` with dataset `d` and one peer.
fn serve(port: u16, peer: u16, root: &Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pixelfeed"))
        .args(["serve", "--threads", "1", "--pinned", "off"])
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--peer=grpc://127.0.0.1:{peer}"))
        .arg(format!("--dataset=d=dir:{}?glob=*.jpg", root.display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("pixelfeed listening on"), "{line:?}");
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peered_servers_serve_a_two_way_sharded_read() {
    let root = tempdir("peers");
    let rels = directory_fixture(&root);
    let jpgs: Vec<String> = rels.into_iter().filter(|r| r.ends_with(".jpg")).collect();
    let (pa, pb) = (free_port(), free_port());
    let mut a = serve(pa, pb, &root);
    let mut b = serve(pb, pa, &root);
    let mut ca = client(&format!("grpc://127.0.0.1:{pa}")).await;
    let info = info(&mut ca, "d", 2).await;
    let firsts: Vec<&str> = info
        .endpoint
        .iter()
        .map(|e| e.location[0].uri.as_str())
        .collect();
    assert_eq!(
        firsts,
        [
            format!("grpc://127.0.0.1:{pa}"),
            format!("grpc://127.0.0.1:{pb}")
        ]
    );
    let mut all = Vec::new();
    for ep in &info.endpoint {
        // Each shard from the server its endpoint names first.
        let mut c = client(&ep.location[0].uri).await;
        let batches: Vec<RecordBatch> = c
            .do_get(ep.ticket.clone().unwrap())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        all.extend(batches.iter().flat_map(|b| strings(b, "path")).flatten());
    }
    assert_eq!(all, jpgs);
    let _ = a.kill();
    let _ = b.kill();
    let _ = a.wait();
    let _ = b.wait();
    let _ = std::fs::remove_dir_all(&root);
}

fn convert_options(
    source: String,
    dest: PathBuf,
    format: OutputFormat,
    shards: u64,
) -> ConvertOptions {
    ConvertOptions {
        source,
        dest,
        spec: spec(),
        shards,
        format,
        engine: EngineConfig::default(),
        read: ReadOptions {
            batch_rows: 3,
            ..ReadOptions::default()
        },
        progress: false,
    }
}

fn read_parquet_dir(dir: &Path) -> (SchemaRef, RecordBatch) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    let mut batches = Vec::new();
    for f in files {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(f).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        batches.extend(reader.map(Result::unwrap));
    }
    let b = concat(&batches);
    (b.schema(), b)
}

#[test]
fn convert_round_trips_through_parquet_with_the_tensor_extension() {
    let root = tempdir("convert");
    let rels = directory_fixture(&root.join("src"));
    let uri = format!("dir:{}", root.join("src").display());
    let summary = convert(&convert_options(
        uri,
        root.join("out"),
        OutputFormat::Parquet,
        3,
    ))
    .unwrap();
    assert_eq!(summary.rows, rels.len() as u64);
    assert_eq!((summary.shards_written, summary.shards_skipped), (3, 0));
    assert_eq!(summary.errors.values().sum::<u64>(), 1, "{summary}");

    let (schema, got) = read_parquet_dir(&root.join("out"));
    let tensor = schema.field_with_name("tensor").unwrap();
    assert_eq!(
        tensor.metadata()["ARROW:extension:name"],
        "arrow.fixed_shape_tensor"
    );
    assert!(tensor.metadata()["ARROW:extension:metadata"].contains("[3,32,32]"));
    assert_eq!(
        strings(&got, "path"),
        rels.iter().cloned().map(Some).collect::<Vec<_>>()
    );
    // Reference: the engine on one batch of the same files.
    let input = RecordBatch::try_from_iter([(
        "image",
        Arc::new(BinaryArray::from_iter(
            rels.iter()
                .map(|r| Some(std::fs::read(root.join("src").join(r)).unwrap())),
        )) as ArrayRef,
    )])
    .unwrap();
    let reference =
        process_batch(&input, &spec(), &EngineConfig::default(), &HeapAllocator, 0).unwrap();
    assert_same_output(&got, &reference);

    // Rerun: every shard is complete and verified, nothing is rewritten.
    let again = convert(&convert_options(
        format!("dir:{}", root.join("src").display()),
        root.join("out"),
        OutputFormat::Parquet,
        3,
    ))
    .unwrap();
    assert_eq!((again.shards_written, again.shards_skipped), (0, 3));
    assert_eq!(again.errors, summary.errors);
    // A different conversion into the same place is refused.
    let other = convert(&convert_options(
        format!("dir:{}", root.join("src").display()),
        root.join("out"),
        OutputFormat::Parquet,
        2,
    ));
    assert!(other.unwrap_err().to_string().contains("shards"));
    let _ = std::fs::remove_dir_all(&root);
}

/// The shard files of a destination, by name.
fn shard_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn convert_resumes_after_a_kill_and_after_damage_to_equal_an_uninterrupted_run() {
    let root = tempdir("resume");
    directory_fixture(&root.join("src"));
    let uri = format!("dir:{}", root.join("src").display());
    let run = |dest: &Path, format: &str| {
        Command::new(env!("CARGO_BIN_EXE_pixelfeed"))
            .args(["convert", &uri])
            .arg(dest)
            .args([
                "--preset",
                "imagenet",
                "--shards",
                "6",
                "--batch-rows",
                "1",
                "--threads",
                "1",
                "--format",
                format,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    for format in ["parquet", "arrow"] {
        let full = root.join(format!("full-{format}"));
        assert!(run(&full, format).wait().unwrap().success());
        let expected = shard_files(&full);
        assert_eq!(expected.len(), 7, "6 shards and the manifest");

        // Killed midway (wherever the kill lands), then resumed.
        let resumed = root.join(format!("resumed-{format}"));
        let mut child = run(&resumed, format);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let _ = child.kill();
        let _ = child.wait();
        // Damage on top: a partial temp file, a shard cut short, one gone.
        let names: Vec<String> = expected
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| n.starts_with("part-"))
            .collect();
        std::fs::create_dir_all(&resumed).unwrap();
        std::fs::write(resumed.join(format!(".{}.tmp", names[0])), b"PAR1 partial").unwrap();
        let cut = &expected.iter().find(|(n, _)| n == &names[1]).unwrap().1;
        std::fs::write(resumed.join(&names[1]), &cut[..cut.len() / 2]).unwrap();
        let _ = std::fs::remove_file(resumed.join(&names[2]));
        let out = run(&resumed, format).wait_with_output().unwrap();
        assert!(out.status.success());
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(summary.contains(" in 6 shards ("), "{summary}");
        // Stale temporary files are cleared, so the listings compare whole.
        let got = shard_files(&resumed);
        assert_eq!(got.len(), expected.len());
        for ((gn, gb), (en, eb)) in got.iter().zip(&expected) {
            assert_eq!(gn, en);
            assert!(
                gb == eb,
                "{format}: {gn} differs from the uninterrupted run"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
