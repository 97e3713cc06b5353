//! The output memory pool seen through the service: blocks are reused across
//! batches, the cap holds, and blocks come back when a client walks away.

use std::time::{Duration, Instant};

use futures::{stream, StreamExt, TryStreamExt};
use pixelfeed_client::{image_batches, image_schema, Client, TensorBatch};
use pixelfeed_pool::{HostBufferPool, PinnedMode, PoolConfig};
use pixelfeed_server::{ServerConfig, ServiceConfig};
use pixelfeed_testkit::{spawn_loopback, LoopbackServer};
use serde_json::Value;

/// 64×64 RGB float32 CHW: 48 KiB a row.
const SPEC: &str =
    r#"{"resize":{"mode":"exact","height":64,"width":64},"dtype":"float32","layout":"chw"}"#;
const ROW_BYTES: usize = 64 * 64 * 3 * 4;

async fn start(cap_bytes: usize) -> (LoopbackServer, Client, HostBufferPool) {
    let pool = HostBufferPool::new(PoolConfig {
        cap_bytes,
        pinned: PinnedMode::Off,
        cuda_device: 0,
        max_wait: None,
    });
    let config = ServerConfig {
        service: ServiceConfig {
            allocator: std::sync::Arc::new(pool.clone()),
            ..ServiceConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = spawn_loopback(config).await.expect("start loopback server");
    let client = Client::connect(&server.url()).await.expect("connect");
    (server, client, pool)
}

fn hopper() -> Vec<u8> {
    pixelfeed_testkit::image("pillow_hopper.jpg")
}

async fn stats(client: &Client) -> Value {
    client
        .action_json("stats", Default::default())
        .await
        .expect("stats action")["pool"]
        .clone()
}

/// Polls the stats action until no block is lent out (blocks return when the
/// last Arrow reference on the server drops, just after encoding).
async fn all_blocks_returned(client: &Client) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = stats(client).await;
        if s["blocks_in_use"] == 0 || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn many_batches_reuse_the_same_blocks() {
    let (_server, client, _pool) = start(64 << 20).await;
    let images = vec![hopper(); 16 * 40];
    let batches = client.preprocess(&images, SPEC, 16).await.unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, images.len());
    let first = TensorBatch::try_from(&batches[0]).unwrap();
    assert_eq!(first.shape(), [3, 64, 64]);
    drop(batches);

    let s = all_blocks_returned(&client).await;
    assert_eq!(s["mode"], "pageable");
    assert_eq!(s["blocks_in_use"], 0, "{s}");
    let allocations = s["allocations"].as_u64().unwrap();
    let blocks = s["blocks_total"].as_u64().unwrap();
    assert_eq!(
        allocations, blocks,
        "every allocation is still a live pool block: {s}"
    );
    assert!(
        allocations <= 6,
        "40 batches must reuse a handful of blocks, got {allocations}: {s}"
    );
    assert_eq!(s["reuses"].as_u64().unwrap() + allocations, 40, "{s}");
}

#[tokio::test]
async fn producers_wait_at_the_cap_and_memory_stays_bounded() {
    // Room for exactly one 16-row block (768 KiB): every batch must wait for
    // the previous one to be encoded and released.
    let cap = 16 * ROW_BYTES;
    let (_server, client, pool) = start(cap).await;
    let images = vec![hopper(); 16 * 12];
    let batches = client.preprocess(&images, SPEC, 16).await.unwrap();
    assert_eq!(
        batches.iter().map(|b| b.num_rows()).sum::<usize>(),
        images.len()
    );
    drop(batches);
    let s = all_blocks_returned(&client).await;
    assert_eq!(s["allocations"], 1, "{s}");
    assert!(s["bytes_total"].as_u64().unwrap() <= cap as u64);
    assert!(
        pool.stats().waits > 0,
        "with a one-block cap, producers must have waited: {s}"
    );
}

#[tokio::test]
async fn a_batch_bigger_than_the_pool_is_resource_exhausted() {
    let (_server, client, _pool) = start(4 * ROW_BYTES).await;
    let err = client
        .preprocess(vec![hopper(); 64], SPEC, 64)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::ResourceExhausted), "{err}");
    assert!(
        err.to_string().contains("more than the whole pool"),
        "{err}"
    );
}

#[tokio::test]
async fn blocks_return_when_the_client_disconnects_mid_stream() {
    let (_server, client, _pool) = start(64 << 20).await;
    let images = vec![hopper(); 16 * 200];
    let input = image_batches(&images, 16).unwrap();
    let mut output = client
        .exchange_with_schema(SPEC, image_schema(), stream::iter(input))
        .await
        .unwrap();
    let first = output.next().await.unwrap().unwrap();
    assert_eq!(first.num_rows(), 16);
    drop(first);
    drop(output); // walk away with ~199 batches unread

    let s = all_blocks_returned(&client).await;
    assert_eq!(
        s["blocks_in_use"], 0,
        "blocks leaked after a disconnect: {s}"
    );
    let produced = s["allocations"].as_u64().unwrap() + s["reuses"].as_u64().unwrap();
    assert!(
        produced < 200,
        "the server must stop producing for a gone client: {produced} batches made"
    );

    // The server still serves.
    let again: Vec<_> = client
        .exchange_with_schema(
            SPEC,
            image_schema(),
            stream::iter(image_batches(&images[..4], 4).unwrap()),
        )
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(again.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
}
