//! The `pixelfeed` binary: starts with no flags but a free port, announces
//! the address it actually bound, serves, and exits 0 on SIGINT / SIGTERM.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_flight::{Action, FlightClient};
use futures::TryStreamExt;
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
