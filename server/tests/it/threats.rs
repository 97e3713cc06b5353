//! The threat model (README, "Who can do what"), one test per row: who may
//! register server-side sources and where, who may upload, what the two
//! tokens admit, what error rows about the server's own files reveal, and
//! the small hardening rules (duplicate image columns, oversized uploads,
//! the upload budget, spill files the server did not write).

use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{Action, FlightClient, FlightDescriptor};
use futures::TryStreamExt;
use pixelfeed_client::{Client, ClientOptions};
use pixelfeed_data::upload::UploadLedger;
use pixelfeed_data::DatasetRoots;
use pixelfeed_schema::InfoRequest;
use pixelfeed_server::{AuthToken, DatasetsConfig, ServerConfig, ServiceConfig};
use pixelfeed_testkit::{
    concat, directory_fixture, spawn_loopback, strings, tempdir, LoopbackServer,
};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

use crate::{bundled_images, SMALL};

const USER: &str = "user-s3cret";
const OPERATOR: &str = "operator-s3cret";

/// Bytes of no image format: the start of an ELF executable.
const ELF: &[u8] = b"\x7fELF\x02\x01\x01\x00not an image";

#[derive(Default)]
struct Setup {
    user: bool,
    operator: bool,
    roots: Option<Vec<std::path::PathBuf>>,
    upload_cap: Option<usize>,
    spill_dir: Option<std::path::PathBuf>,
    max_message_bytes: Option<usize>,
}

async fn serve(setup: Setup) -> LoopbackServer {
    let token = |on: bool, t: &str| on.then(|| AuthToken::new(t).unwrap());
    let mut config = ServerConfig {
        service: ServiceConfig {
            auth_token: token(setup.user, USER),
            operator_token: token(setup.operator, OPERATOR),
            datasets: DatasetsConfig {
                roots: setup.roots.map(|r| DatasetRoots::new(r).unwrap()),
                spill_dir: setup.spill_dir,
                uploads: UploadLedger::new(
                    setup
                        .upload_cap
                        .unwrap_or(pixelfeed_server::DEFAULT_UPLOAD_CAP_BYTES),
                ),
                ..DatasetsConfig::default()
            },
            ..ServiceConfig::default()
        },
        ..ServerConfig::default()
    };
    if let Some(bytes) = setup.max_message_bytes {
        config.max_message_bytes = bytes;
        config.service.limits.max_batch_image_bytes = bytes;
    }
    spawn_loopback(config).await.unwrap()
}

async fn flight(server: &LoopbackServer, token: Option<&str>) -> FlightClient {
    let channel = Channel::from_shared(server.url().replace("grpc://", "http://"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = FlightClient::new(channel);
    if let Some(token) = token {
        c.add_header("authorization", &format!("Bearer {token}"))
            .unwrap();
    }
    c
}

fn code(e: FlightError) -> (Code, String) {
    match e {
        FlightError::Tonic(status) => (status.code(), status.message().to_string()),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

async fn register(c: &mut FlightClient, name: &str, uri: &str) -> Result<Value, (Code, String)> {
    let body = json!({"name": name, "uri": uri}).to_string();
    let answer: Vec<_> = c
        .do_action(Action::new("register_dataset", body))
        .await
        .map_err(code)?
        .try_collect()
        .await
        .map_err(code)?;
    Ok(serde_json::from_slice(&answer[0]).unwrap())
}

fn images_table(images: &[Vec<u8>]) -> RecordBatch {
    RecordBatch::try_from_iter([(
        "image",
        Arc::new(BinaryArray::from_iter_values(images)) as ArrayRef,
    )])
    .unwrap()
}

async fn put(
    c: &mut FlightClient,
    name: &str,
    table: RecordBatch,
) -> Result<Value, (Code, String)> {
    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![name.into()])))
        .build(futures::stream::once(async { Ok(table) }));
    let results: Vec<_> = c
        .do_put(input)
        .await
        .map_err(code)?
        .try_collect()
        .await
        .map_err(code)?;
    Ok(serde_json::from_slice(&results[0].app_metadata).unwrap())
}

/// Whether `DoExchange` with `token` serves the bundled images.
async fn exchange_code(server: &LoopbackServer, token: Option<&str>) -> Code {
    let mut options = ClientOptions::default();
    if let Some(token) = token {
        options = options.with_token(token);
    }
    let client = Client::connect_with(&server.url(), options).await.unwrap();
    match client.preprocess(&bundled_images(), SMALL, 4).await {
        Ok(batches) => {
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            assert_eq!(rows, bundled_images().len());
            Code::Ok
        }
        Err(e) => e.code().expect("a gRPC status"),
    }
}

/// Every row of dataset `name`, read through GetFlightInfo + DoGet.
async fn read(c: &mut FlightClient, name: &str) -> RecordBatch {
    let cmd = InfoRequest::command(name, Some(&serde_json::from_str(SMALL).unwrap()), 1);
    let info = c
        .get_flight_info(FlightDescriptor::new_cmd(cmd))
        .await
        .unwrap();
    let mut out = Vec::new();
    for ep in info.endpoint {
        let batches: Vec<RecordBatch> = c
            .do_get(ep.ticket.unwrap())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        out.extend(batches);
    }
    concat(&out)
}

fn uri(dir: &Path) -> String {
    format!("dir:{}", dir.display())
}

#[tokio::test]
async fn by_default_no_client_registers_server_side_sources() {
    let data = tempdir("threat-default");
    directory_fixture(&data);
    let server = serve(Setup::default()).await;
    let mut c = flight(&server, None).await;
    let (code, message) = register(&mut c, "x", &uri(&data)).await.unwrap_err();
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(message.contains("--dataset-root"), "{message}");
    assert_eq!(exchange_code(&server, None).await, Code::Ok);
    let _ = std::fs::remove_dir_all(&data);
}

#[cfg(unix)]
#[tokio::test]
async fn registration_is_confined_to_the_dataset_roots() {
    let base = tempdir("threat-roots");
    let (root, secret) = (base.join("data"), base.join("secret"));
    let allowed = root.join("imgs");
    let files = directory_fixture(&allowed).len();
    directory_fixture(&secret);
    std::os::unix::fs::symlink(&secret, root.join("escape")).unwrap();
    // A tree inside the root holding one symlink to a file outside it.
    let mixed = root.join("mixed");
    directory_fixture(&mixed);
    std::os::unix::fs::symlink(secret.join("notes.txt"), mixed.join("z-link.txt")).unwrap();
    let server = serve(Setup {
        roots: Some(vec![root.clone()]),
        ..Setup::default()
    })
    .await;
    let mut c = flight(&server, None).await;

    let answer = register(&mut c, "ok", &uri(&allowed)).await.unwrap();
    assert_eq!(answer["rows"], json!(files));
    for (name, bad) in [
        ("outside", uri(&secret)),
        ("dotdot", uri(&root.join("../secret"))),
        ("symlinked-dir", uri(&root.join("escape"))),
        ("symlinked-file", uri(&mixed)),
        ("root-fs", "dir:/".to_string()),
        ("parquet", format!("parquet:{}", secret.display())),
        ("tar", format!("tar:{}", secret.display())),
        ("missing", uri(&root.join("nope/../../secret"))),
    ] {
        let (code, message) = register(&mut c, name, &bad).await.unwrap_err();
        assert_eq!(code, Code::PermissionDenied, "{name}: {message}");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn a_user_token_admits_the_data_plane_only() {
    let data = tempdir("threat-user");
    directory_fixture(&data);
    let server = serve(Setup {
        user: true,
        roots: Some(vec![data.clone()]),
        ..Setup::default()
    })
    .await;
    assert_eq!(exchange_code(&server, Some(USER)).await, Code::Ok);
    assert_eq!(exchange_code(&server, None).await, Code::Unauthenticated);
    assert_eq!(
        exchange_code(&server, Some("guess")).await,
        Code::Unauthenticated
    );
    let mut c = flight(&server, Some(USER)).await;
    let (code, message) = register(&mut c, "x", &uri(&data)).await.unwrap_err();
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(message.contains("operator"), "{message}");
    let (code, _) = put(&mut c, "up", images_table(&bundled_images()))
        .await
        .unwrap_err();
    assert_eq!(code, Code::PermissionDenied);
    let mut anonymous = flight(&server, None).await;
    let (code, _) = register(&mut anonymous, "x", &uri(&data))
        .await
        .unwrap_err();
    assert_eq!(code, Code::Unauthenticated);
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test]
async fn the_operator_token_admits_administration_too() {
    let data = tempdir("threat-operator");
    let files = directory_fixture(&data).len();
    let server = serve(Setup {
        user: true,
        operator: true,
        roots: Some(vec![data.clone()]),
        ..Setup::default()
    })
    .await;
    assert_eq!(exchange_code(&server, Some(OPERATOR)).await, Code::Ok);
    assert_eq!(exchange_code(&server, Some(USER)).await, Code::Ok);
    let mut op = flight(&server, Some(OPERATOR)).await;
    register(&mut op, "imgs", &uri(&data)).await.unwrap();
    let answer = put(&mut op, "up", images_table(&bundled_images()))
        .await
        .unwrap();
    assert_eq!(answer["rows"], json!(bundled_images().len()));
    // A user reads what the operator registered, and registers nothing.
    let mut user = flight(&server, Some(USER)).await;
    assert_eq!(read(&mut user, "imgs").await.num_rows(), files);
    assert_eq!(
        read(&mut user, "up").await.num_rows(),
        bundled_images().len()
    );
    let (code, _) = register(&mut user, "again", &uri(&data)).await.unwrap_err();
    assert_eq!(code, Code::PermissionDenied);
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test]
async fn an_operator_token_alone_leaves_the_data_plane_open_and_administration_closed() {
    let data = tempdir("threat-operator-only");
    directory_fixture(&data);
    let server = serve(Setup {
        operator: true,
        roots: Some(vec![data.clone()]),
        ..Setup::default()
    })
    .await;
    assert_eq!(exchange_code(&server, None).await, Code::Ok);
    let mut anonymous = flight(&server, None).await;
    let (code, _) = register(&mut anonymous, "x", &uri(&data))
        .await
        .unwrap_err();
    assert_eq!(code, Code::PermissionDenied);
    let (code, _) = put(&mut anonymous, "up", images_table(&bundled_images()))
        .await
        .unwrap_err();
    assert_eq!(code, Code::PermissionDenied);
    let mut op = flight(&server, Some(OPERATOR)).await;
    register(&mut op, "x", &uri(&data)).await.unwrap();
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test]
async fn error_rows_about_server_files_quote_none_of_their_bytes() {
    let data = tempdir("threat-quote");
    directory_fixture(&data);
    std::fs::write(data.join("program.bin"), ELF).unwrap();
    let server = serve(Setup {
        roots: Some(vec![data.clone()]),
        ..Setup::default()
    })
    .await;
    let mut c = flight(&server, None).await;
    register(&mut c, "d", &uri(&data)).await.unwrap();
    let got = read(&mut c, "d").await;
    let paths = strings(&got, "path");
    let errors = strings(&got, "error");
    let row = paths
        .iter()
        .position(|p| p.as_deref() == Some("program.bin"))
        .expect("the non-image file is a row");
    let message = errors[row].clone().expect("an error row");
    assert!(message.starts_with("unknown image format"), "{message}");
    assert!(
        !message.contains("7f") && !message.contains("45 4c"),
        "{message}"
    );

    // The client's own bytes may be quoted back to it.
    let client = Client::connect(&server.url()).await.unwrap();
    let out = concat(&client.preprocess(&[ELF.to_vec()], SMALL, 4).await.unwrap());
    let error = out
        .column_by_name("error")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .value(0)
        .to_string();
    assert!(error.contains("first bytes: 7f 45 4c 46"), "{error}");
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test]
async fn two_image_columns_are_ambiguous() {
    let server = serve(Setup::default()).await;
    let images = bundled_images();
    let column = Arc::new(BinaryArray::from_iter_values(&images)) as ArrayRef;
    let table =
        RecordBatch::try_from_iter([("image", Arc::clone(&column)), ("image", column)]).unwrap();
    let mut c = flight(&server, None).await;
    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(SMALL.to_string())))
        .build(futures::stream::once({
            let table = table.clone();
            async { Ok(table) }
        }));
    let result: Result<Vec<RecordBatch>, _> = match c.do_exchange(input).await {
        Ok(stream) => stream.try_collect().await,
        Err(e) => Err(e),
    };
    let (code, message) = code(result.unwrap_err());
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("image"), "{message}");
    let (code, message) = put(&mut c, "dup", table).await.unwrap_err();
    assert_eq!(code, Code::InvalidArgument, "{message}");
}

#[tokio::test]
async fn uploads_are_bounded_per_message_and_in_total() {
    let images = bundled_images();
    let table = images_table(&images);
    let bytes: usize = images.iter().map(Vec::len).sum();

    // One message over the cap: RESOURCE_EXHAUSTED, as DoExchange answers.
    let server = serve(Setup {
        max_message_bytes: Some(bytes / 4),
        ..Setup::default()
    })
    .await;
    let mut c = flight(&server, None).await;
    let (code, message) = put(&mut c, "big", table.clone()).await.unwrap_err();
    assert_eq!(code, Code::ResourceExhausted, "{message}");

    // All uploads together over the budget: the one that would pass it is
    // refused, and the earlier one stays.
    let server = serve(Setup {
        upload_cap: Some(bytes + bytes / 2),
        ..Setup::default()
    })
    .await;
    let mut c = flight(&server, None).await;
    put(&mut c, "first", table.clone()).await.unwrap();
    let (code, message) = put(&mut c, "second", table.clone()).await.unwrap_err();
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("--upload-cap-bytes"), "{message}");
    assert_eq!(read(&mut c, "first").await.num_rows(), images.len());
    // Replacing an upload is counted against the budget once it finishes.
    put(&mut c, "first", table.slice(0, 1)).await.unwrap();
}

#[tokio::test]
async fn spilled_uploads_never_overwrite_files_the_server_did_not_write() {
    let spill = tempdir("threat-spill");
    std::fs::write(spill.join("precious.parquet"), b"the operator's file").unwrap();
    let server = serve(Setup {
        spill_dir: Some(spill.clone()),
        ..Setup::default()
    })
    .await;
    let mut c = flight(&server, None).await;
    let table = images_table(&bundled_images());
    let (code, message) = put(&mut c, "precious", table.clone()).await.unwrap_err();
    assert_ne!(code, Code::Ok);
    assert!(message.contains("precious.parquet"), "{message}");
    assert_eq!(
        std::fs::read(spill.join("precious.parquet")).unwrap(),
        b"the operator's file"
    );
    for bad in ["../outside", ".hidden", "a/b"] {
        assert!(put(&mut c, bad, table.clone()).await.is_err(), "{bad}");
    }
    assert!(!spill.join("../outside.parquet").exists());
    // Its own upload it may replace.
    put(&mut c, "mine", table.clone()).await.unwrap();
    put(&mut c, "mine", table.slice(0, 2)).await.unwrap();
    assert_eq!(read(&mut c, "mine").await.num_rows(), 2);
    let _ = std::fs::remove_dir_all(&spill);
}
