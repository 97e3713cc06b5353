//! Metrics, end to end: a batch of good and hostile images through a
//! loopback server, then a scrape of the `/metrics` endpoint.

use std::net::{Ipv4Addr, SocketAddr};

use crate::{bundled_images, start, SMALL};
use pixelfeed_client::ClientOptions;
use pixelfeed_engine::{BlockAllocator, HeapAllocator};
use pixelfeed_server::{bind, serve_metrics, ServerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

/// The value of the sample line starting with `series ` (0 if absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn metrics_count_images_bytes_errors_and_calls() {
    let config = ServerConfig::default();
    let metrics = config.service.metrics.clone();
    let (_server, client) = start(config, ClientOptions::default()).await;
    let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    let allocator: std::sync::Arc<dyn BlockAllocator> = std::sync::Arc::new(HeapAllocator);
    tokio::spawn(serve_metrics(
        listener,
        metrics.clone(),
        allocator,
        std::future::pending(),
    ));

    let good = bundled_images();
    let mut images = good.clone();
    images.push(Vec::new()); // empty
    images.push(b"\0\0\0\x0cjP  \r\n\x87\n\0\0".to_vec()); // unsupported format (JPEG 2000)
    images.push(b"<!DOCTYPE html>".to_vec()); // unknown format
    let batches = client.preprocess(&images, SMALL, 4).await.unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, images.len());

    let answer = http_get(metrics_addr, "/metrics").await;
    let (head, text) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("openmetrics-text"), "{head}");
    let n = good.len() as f64;
    assert_eq!(
        sample(text, r#"pixelfeed_images_total{outcome="ok"}"#),
        n,
        "{text}"
    );
    assert_eq!(
        sample(text, r#"pixelfeed_images_total{outcome="error"}"#),
        3.0
    );
    for reason in ["empty", "unsupported_format", "unknown_format"] {
        let series = format!(r#"pixelfeed_image_errors_total{{reason="{reason}"}}"#);
        assert_eq!(sample(text, &series), 1.0, "{series}\n{text}");
    }
    let input: usize = images.iter().map(Vec::len).sum();
    assert_eq!(sample(text, "pixelfeed_input_bytes_total"), input as f64);
    // 32×48×3 uint8 per row, every row (error rows are zero-filled).
    assert!(sample(text, "pixelfeed_output_bytes_total") >= (rows * 32 * 48 * 3) as f64);
    let batches_in = images.len().div_ceil(4) as f64;
    assert_eq!(
        sample(text, "pixelfeed_batch_duration_seconds_count"),
        batches_in
    );
    // Every good image went through each engine stage once; the hostile
    // ones failed before decoding finished. Every batch was sent once.
    for stage in ["decode", "resize", "convert"] {
        let series = format!(r#"pixelfeed_stage_duration_seconds_count{{stage="{stage}"}}"#);
        assert_eq!(sample(text, &series), n, "{series}\n{text}");
        let sum = format!(r#"pixelfeed_stage_duration_seconds_sum{{stage="{stage}"}}"#);
        assert!(sample(text, &sum) > 0.0, "{sum}\n{text}");
    }
    assert_eq!(
        sample(
            text,
            r#"pixelfeed_stage_duration_seconds_count{stage="send"}"#
        ),
        batches_in,
        "{text}"
    );
    assert_eq!(
        sample(
            text,
            r#"pixelfeed_calls_total{method="DoExchange",code="OK"}"#
        ),
        1.0,
        "{text}"
    );
    assert_eq!(sample(text, "pixelfeed_active_calls"), 0.0);
    assert_eq!(sample(text, "pixelfeed_queued_batches"), 0.0);
    assert!(text.contains("pixelfeed_pool_blocks_in_use"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    let missing = http_get(metrics_addr, "/nope").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}
