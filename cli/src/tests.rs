//! The flags parse into the library configuration they name; nonsense is
//! refused at parse time; the deploy manifests use only real flags.

use std::num::NonZeroUsize;
use std::time::Duration;

use clap::{CommandFactory as _, Parser as _};
use pixelfeed_engine::EngineConfig;
use pixelfeed_pool::{PinnedMode, PoolConfig};
use pixelfeed_server::{
    CallLimits, ConnectionLimits, ListenAddr, DEFAULT_LISTEN, DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TARGET_MESSAGE_BYTES,
};

use crate::flags::{Cli, Command, ServeArgs};

fn serve_args(args: &[&str]) -> ServeArgs {
    let cli = Cli::try_parse_from([&["pixelfeed", "serve"], args].concat()).unwrap();
    let Command::Serve(serve) = cli.command else {
        panic!("not serve")
    };
    *serve
}

#[test]
fn cli_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn defaults_match_the_library() {
    let config = serve_args(&[]).server_config();
    assert_eq!(config.listen, ListenAddr::Tcp(DEFAULT_LISTEN));
    assert_eq!(config.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
    assert_eq!(
        config.service.target_message_bytes,
        DEFAULT_TARGET_MESSAGE_BYTES
    );
    assert_eq!(config.service.engine, EngineConfig::default());
    assert_eq!(serve_args(&[]).pool_config(), PoolConfig::default());
    assert_eq!(config.service.limits, CallLimits::default());
    assert_eq!(config.connections, ConnectionLimits::default());
    let ops = serve_args(&[]).ops;
    assert_eq!(ops.drain_timeout, Duration::from_secs(30));
    assert!(ops.tls().unwrap().is_none() && ops.metrics_listen.is_none());
}

#[test]
fn ops_flags_reach_the_config() {
    let dir = std::env::temp_dir().join(format!("pixelfeed-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (token, cert, key) = (dir.join("token"), dir.join("cert"), dir.join("key"));
    std::fs::write(&token, "s3cret\n").unwrap();
    std::fs::write(&cert, "CERT").unwrap();
    std::fs::write(&key, "KEY").unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let args = serve_args(&[
        &format!("--auth-token-file={}", path(&token)),
        &format!("--tls-cert={}", path(&cert)),
        &format!("--tls-key={}", path(&key)),
        &format!("--tls-client-ca={}", path(&cert)),
        "--max-rows-per-batch=7",
        "--max-concurrent-calls=3",
        "--call-timeout=1.5",
        "--metrics-listen=127.0.0.1:0",
        "--drain-timeout=2",
        "--idle-timeout=4",
        "--max-input-bytes-in-flight=6000",
        "--max-message-bytes=5000",
        "--max-connections=9",
        "--max-streams-per-connection=5",
        "--handshake-timeout=0.5",
        "--connection-idle-timeout=60",
        "--keepalive-interval=11",
        "--keepalive-timeout=12",
    ]);
    let auth = args.ops.auth_token().unwrap().unwrap();
    assert!(auth.matches(b"s3cret"));
    let tls = args.ops.tls().unwrap().unwrap();
    assert_eq!(
        (tls.cert_pem.as_slice(), tls.key_pem.as_slice()),
        (&b"CERT"[..], &b"KEY"[..])
    );
    assert_eq!(tls.client_ca_pem.as_deref(), Some(&b"CERT"[..]));
    assert_eq!(
        args.server_config().service.limits,
        CallLimits {
            max_rows_per_batch: 7,
            max_concurrent_calls: 3,
            call_timeout: Some(Duration::from_millis(1500)),
            idle_timeout: Duration::from_secs(4),
            max_batch_image_bytes: 5000,
            max_input_bytes_in_flight: 6000,
        }
    );
    assert_eq!(
        args.server_config().connections,
        ConnectionLimits {
            max_connections: 9,
            max_streams_per_connection: 5,
            handshake_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(11),
            keepalive_timeout: Duration::from_secs(12),
        }
    );
    assert_eq!(args.ops.drain_timeout, Duration::from_secs(2));
    assert!(args.ops.metrics_listen.is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn roles_and_dataset_roots_reach_the_config() {
    let dir = std::env::temp_dir().join(format!("pixelfeed-cli-roles-{}", std::process::id()));
    let (data, spill) = (dir.join("data"), dir.join("spill"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&spill).unwrap();
    let (user, operator) = (dir.join("user"), dir.join("operator"));
    std::fs::write(&user, "u53r\n").unwrap();
    std::fs::write(&operator, "0p3rator\n").unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let args = serve_args(&[
        &format!("--auth-token-file={}", path(&user)),
        &format!("--operator-token-file={}", path(&operator)),
        &format!("--dataset-root={}", path(&data)),
        &format!("--dataset-root={}/../spill", path(&data)),
        &format!("--spill-dir={}", path(&spill)),
        "--upload-cap-bytes=4096",
    ]);
    let config = args.setup().unwrap();
    assert!(config.service.operator_token.unwrap().matches(b"0p3rator"));
    assert!(config.service.auth_token.unwrap().matches(b"u53r"));
    let datasets = config.service.datasets;
    let canonical = |p: &std::path::Path| p.canonicalize().unwrap();
    assert_eq!(
        datasets.roots.unwrap().dirs(),
        [canonical(&data), canonical(&spill)]
    );
    assert_eq!(datasets.spill_dir, Some(canonical(&spill)));
    assert_eq!(datasets.uploads.cap(), 4096);
    // Without --dataset-root, run-time registration is off.
    assert!(serve_args(&[])
        .setup()
        .unwrap()
        .service
        .datasets
        .roots
        .is_none());
    // One secret for both roles, or a root that is not there, is refused.
    let same = serve_args(&[
        &format!("--auth-token-file={}", path(&user)),
        &format!("--operator-token-file={}", path(&user)),
    ]);
    let err = pixelfeed_server::check_config(&same.setup().unwrap()).unwrap_err();
    assert!(format!("{err:#}").contains("differ"), "{err:#}");
    let missing = serve_args(&[&format!("--dataset-root={}", path(&dir.join("nope")))]);
    assert!(missing.setup().is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_flag_reaches_the_config() {
    let args = serve_args(&[
        "--listen=127.0.0.1:0",
        "--max-message-bytes=1000",
        "--target-message-bytes=100",
        "--max-pixels=5000",
        "--max-aspect-ratio=3.5",
        "--max-image-bytes=700",
        "--max-metadata-bytes=900",
        "--threads=3",
        "--pinned-pool-bytes=12345678",
        "--pinned=off",
        "--cuda-device=1",
    ]);
    assert_eq!(args.engine.threads.map(NonZeroUsize::get), Some(3));
    assert_eq!(
        args.pool_config(),
        PoolConfig {
            cap_bytes: 12345678,
            pinned: PinnedMode::Off,
            cuda_device: 1,
            max_wait: None,
        }
    );
    let config = args.server_config();
    assert_eq!(config.listen, "127.0.0.1:0".parse::<ListenAddr>().unwrap());
    assert_eq!(config.max_message_bytes, 1000);
    assert_eq!(config.service.target_message_bytes, 100);
    assert_eq!(
        config.service.engine,
        EngineConfig {
            max_pixels: 5000,
            max_aspect_ratio: 3.5,
            max_encoded_bytes: 700,
            max_metadata_bytes: 900,
            quote_input_bytes: true,
        }
    );
}

#[test]
fn nonsense_limits_are_refused() {
    for bad in [
        "--max-message-bytes=0",
        "--target-message-bytes=0",
        "--max-aspect-ratio=0.5",
        "--max-aspect-ratio=inf",
        "--threads=0",
        "--pinned-pool-bytes=0",
        "--pinned=always",
        "--max-rows-per-batch=0",
        "--max-concurrent-calls=0",
        "--call-timeout=0",
        "--drain-timeout=-1",
        "--tls-cert=x",
        "--tls-client-ca=x",
    ] {
        assert!(
            Cli::try_parse_from(["pixelfeed", "serve", bad]).is_err(),
            "{bad}"
        );
    }
}

/// The `args:` list of the container in `deploy/k8s/deployment.yaml`, with
/// `$(VAR)` references (filled in by Kubernetes) replaced by `1`.
fn deployment_args() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s/deployment.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut lines = text.lines().skip_while(|l| l.trim() != "args:").skip(1);
    let mut args = Vec::new();
    for line in lines.by_ref() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some(arg) = line.strip_prefix("- ") else {
            break;
        };
        let mut arg = arg.to_string();
        while let Some(start) = arg.find("$(") {
            let end = arg[start..].find(')').map_or(arg.len(), |e| start + e + 1);
            arg.replace_range(start..end, "1");
        }
        args.push(arg);
    }
    args
}

#[test]
fn the_kubernetes_manifest_uses_real_flags() {
    let args = deployment_args();
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{args:?}");
    let parsed = Cli::try_parse_from(std::iter::once("pixelfeed".to_string()).chain(args.clone()));
    assert!(
        parsed.is_ok(),
        "deploy/k8s/deployment.yaml: {args:?}: {}",
        parsed.unwrap_err()
    );
}
