//! The `pixelfeed` binary: starts with no flags but a free port, announces
//! the address it actually bound, serves, and exits 0 on SIGINT / SIGTERM;
//! two `--peer` servers split a sharded read; `pixelfeed convert` resumes
//! after a kill to equal an uninterrupted run.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_flight::{Action, FlightClient, FlightDescriptor};
use futures::TryStreamExt;
use pixelfeed_schema::InfoRequest;
use pixelfeed_testkit::{directory_fixture, free_port, strings, tempdir};
use tonic::transport::Channel;

/// Starts `pixelfeed serve --listen 127.0.0.1:0` and returns the child and
/// the address from its `pixelfeed listening on ADDR` line.
fn start_server() -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pixelfeed"))
        .args(["serve", "--listen", "127.0.0.1:0", "--threads", "1"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn pixelfeed");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the announcement");
    let addr = line
        .trim()
        .strip_prefix("pixelfeed listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    assert!(!addr.ends_with(":0"), "must print the actual port: {addr}");
    (child, addr)
}

async fn health(addr: &str) -> String {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the announced address");
    let answers: Vec<_> = FlightClient::new(channel)
        .do_action(Action::new("health", ""))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    String::from_utf8(answers[0].to_vec()).unwrap()
}

async fn signal_and_wait(child: &mut Child, signal: &str) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    // Well under the server's 30 s grace period: a clean exit is prompt.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pixelfeed did not exit after {signal}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Multi-threaded so the client side of the connection keeps answering
// HTTP/2 (the shutdown handshake) while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn serves_on_the_announced_port_and_exits_0_on_sigterm() {
    let (mut child, addr) = start_server();
    let answer = health(&addr).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&answer).unwrap(),
        serde_json::json!({"status": "ok"})
    );
    let status = signal_and_wait(&mut child, "-TERM").await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

// Multi-threaded so the client side of the connection keeps answering
// HTTP/2 (the shutdown handshake) while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn exits_0_on_sigint() {
    let (mut child, addr) = start_server();
    health(&addr).await;
    let status = signal_and_wait(&mut child, "-INT").await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn rejects_a_zero_message_target() {
    let out = Command::new(env!("CARGO_BIN_EXE_pixelfeed"))
        .args(["serve", "--target-message-bytes", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--target-message-bytes"), "{stderr}");
}

async fn client(url: &str) -> FlightClient {
    let channel = Channel::from_shared(url.replace("grpc://", "http://"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightClient::new(channel)
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
    let info = ca
        .get_flight_info(FlightDescriptor::new_cmd(InfoRequest::command(
            "d", None, 2,
        )))
        .await
        .unwrap();
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
