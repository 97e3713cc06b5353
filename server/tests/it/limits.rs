//! Per-call limits, end to end over loopback: rows per batch, concurrent
//! calls (refused at once, never queued) and the call deadline (a stalled
//! call ends with DEADLINE_EXCEEDED and gives back its slot and blocks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{bundled_images, start, SMALL};
use futures::StreamExt;
use pixelfeed_client::{image_batches, image_schema, ClientOptions};
use pixelfeed_engine::BlockAllocator;
use pixelfeed_pool::{HostBufferPool, PinnedMode, PoolConfig};
use pixelfeed_server::{CallLimits, ServerConfig, ServiceConfig};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn limited(limits: CallLimits) -> ServiceConfig {
    ServiceConfig {
        limits,
        ..ServiceConfig::default()
    }
}

#[tokio::test]
async fn a_batch_over_max_rows_is_resource_exhausted() {
    let limits = CallLimits {
        max_rows_per_batch: 4,
        ..CallLimits::default()
    };
    let config = ServerConfig {
        service: limited(limits),
        ..ServerConfig::default()
    };
    let (_server, client) = start(config, ClientOptions::default()).await;
    let images = bundled_images();
    let ok = client.preprocess(&images[..8], SMALL, 4).await.unwrap();
    assert_eq!(ok.iter().map(|b| b.num_rows()).sum::<usize>(), 8);
    let err = client.preprocess(&images[..8], SMALL, 5).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert!(err.to_string().contains("max-rows-per-batch"), "{err}");
}

#[tokio::test]
async fn calls_over_the_concurrency_limit_are_refused_at_once() {
    let limits = CallLimits {
        max_concurrent_calls: 1,
        ..CallLimits::default()
    };
    let config = ServerConfig {
        service: limited(limits),
        ..ServerConfig::default()
    };
    let metrics = config.service.metrics.clone();
    let (_server, client) = start(config, ClientOptions::default()).await;

    // An exchange whose input never ends holds the only slot.
    let (tx, rx) = mpsc::channel(1);
    let held = client
        .exchange_with_schema(SMALL, image_schema(), ReceiverStream::new(rx))
        .await
        .unwrap();
    let started = Instant::now();
    let err = client.health().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert!(err.to_string().contains("max-concurrent-calls"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused promptly"
    );

    // Dropping the held call frees the slot.
    drop(held);
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.health().await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Some(Code::ResourceExhausted));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the slot never came back: {e}"),
        }
    }
    let text = metrics.render(&pixelfeed_engine::HeapAllocator);
    assert!(
        text.contains(r#"pixelfeed_calls_total{method="DoAction",code="RESOURCE_EXHAUSTED"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_stalled_call_hits_its_deadline_and_releases_everything() {
    let pool = Arc::new(HostBufferPool::new(PoolConfig {
        cap_bytes: 64 << 20,
        pinned: PinnedMode::Off,
        cuda_device: 0,
        max_wait: None,
    }));
    let limits = CallLimits {
        call_timeout: Some(Duration::from_millis(400)),
        ..CallLimits::default()
    };
    let config = ServerConfig {
        service: ServiceConfig {
            allocator: pool.clone() as Arc<dyn BlockAllocator>,
            ..limited(limits)
        },
        ..ServerConfig::default()
    };
    let metrics = config.service.metrics.clone();
    let (_server, client) = start(config, ClientOptions::default()).await;

    // One batch goes through, then the client neither sends nor closes.
    let images = bundled_images();
    let (tx, rx) = mpsc::channel(4);
    for batch in image_batches(&images[..3], 3).unwrap() {
        tx.send(batch).await.unwrap();
    }
    let started = Instant::now();
    let mut stream = client
        .exchange_with_schema(SMALL, image_schema(), ReceiverStream::new(rx))
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.num_rows(), 3);
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(Code::DeadlineExceeded), "{err}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    drop(first);
    drop(stream);
    drop(tx);

    // The call is over on the server: no active call, no block held.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics.render(pool.as_ref());
        let idle = text.contains("pixelfeed_active_calls 0")
            && text.contains("pixelfeed_pool_blocks_in_use 0");
        if idle {
            assert!(
                text.contains(
                    r#"pixelfeed_calls_total{method="DoExchange",code="DEADLINE_EXCEEDED"} 1"#
                ),
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never went idle:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_message_over_max_message_bytes_is_resource_exhausted() {
    let config = ServerConfig {
        max_message_bytes: 64 << 10,
        ..ServerConfig::default()
    };
    let (_server, client) = start(config, ClientOptions::default()).await;
    let images = bundled_images();
    let big = images
        .iter()
        .find(|i| i.len() > 64 << 10)
        .expect("a bundled image over 64 KiB");
    let small = images
        .iter()
        .find(|i| i.len() < 16 << 10)
        .expect("a bundled image under 16 KiB");
    let ok = client.preprocess([small], SMALL, 1).await.unwrap();
    assert_eq!(ok[0].num_rows(), 1);
    let err = client.preprocess([big], SMALL, 1).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert!(err.to_string().contains("max-message-bytes"), "{err}");
}

#[tokio::test]
async fn engine_limits_turn_rows_into_errors_not_failed_calls() {
    use pixelfeed_engine::EngineConfig;
    let images = bundled_images();
    let base = EngineConfig::default();
    for (engine, needle) in [
        (
            EngineConfig {
                max_encoded_bytes: 16 << 10,
                ..base
            },
            "byte limit",
        ),
        (
            EngineConfig {
                max_pixels: 40_000,
                ..base
            },
            "Mpx limit",
        ),
        (
            EngineConfig {
                max_aspect_ratio: 1.05,
                ..base
            },
            "aspect ratio",
        ),
        (
            // The bundled orientation test images carry small EXIF blocks.
            EngineConfig {
                max_metadata_bytes: 16,
                ..base
            },
            "metadata limit",
        ),
    ] {
        let service = ServiceConfig {
            engine,
            ..ServiceConfig::default()
        };
        let (_server, client) = start(
            ServerConfig {
                service,
                ..ServerConfig::default()
            },
            ClientOptions::default(),
        )
        .await;
        let batches = client.preprocess(&images, SMALL, 8).await.unwrap();
        let mut errors = Vec::new();
        for batch in &batches {
            let column = batch.column_by_name("error").unwrap();
            let column = arrow_array::cast::AsArray::as_string::<i32>(column);
            errors.extend(column.iter().map(|e| e.map(str::to_string)));
        }
        assert_eq!(errors.len(), images.len());
        assert!(
            errors.iter().flatten().any(|e| e.contains(needle)),
            "{needle}: {errors:?}"
        );
        assert!(
            errors.iter().any(Option::is_none),
            "small images still pass: {errors:?}"
        );
    }
}
