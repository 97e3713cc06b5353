//! Streams a folder of images through a pixelfeed server into GPU memory and
//! reports images/s and host→device GB/s.
//!
//! ```sh
//! cargo run --release -p pixelfeed-client --features cuda --example rust_gpu_upload -- \
//!     --server grpc://127.0.0.1:8815 --images ../shared/corpus/bench/imagenet --repeat 10 \
//!     --streams 4
//! ```
//!
//! The batches travel over `--streams` concurrent calls
//! ([`Client::exchange_ordered`]; default: the server's choice,
//! [`Client::default_streams`]) and come back in input order. Each output
//! batch is handed to [`DeviceUploader::upload`], which copies it
//! into pinned staging and enqueues an async copy; the previous batch is
//! "consumed" (dropped) only after the next copy is enqueued, the pattern a
//! training loop follows.

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use futures::{stream, StreamExt};
use pixelfeed_client::cuda::{DeviceBatch, DeviceUploader};
use pixelfeed_client::{image_batches, image_schema, Client};

struct Args {
    server: String,
    images: PathBuf,
    repeat: usize,
    batch_size: usize,
    spec: String,
    /// `None`: [`Client::default_streams`].
    streams: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        server: "grpc://127.0.0.1:8815".into(),
        images: PathBuf::from("tests/data/images"),
        repeat: 1,
        batch_size: 128,
        spec: r#"{"preset":"imagenet"}"#.into(),
        streams: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => args.server = value()?,
            "--images" => args.images = value()?.into(),
            "--repeat" => args.repeat = value()?.parse().map_err(|e| format!("--repeat: {e}"))?,
            "--batch-size" => {
                args.batch_size = value()?.parse().map_err(|e| format!("--batch-size: {e}"))?
            }
            "--spec" => args.spec = value()?,
            "--streams" => {
                args.streams = Some(value()?.parse().map_err(|e| format!("--streams: {e}"))?)
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.images)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
                Some("jpg" | "jpeg" | "png")
            )
        })
        .collect();
    files.sort();
    let one_pass: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let images: Vec<&Vec<u8>> = one_pass
        .iter()
        .cycle()
        .take(one_pass.len() * args.repeat)
        .collect();
    println!(
        "{} images ({} files x {})",
        images.len(),
        files.len(),
        args.repeat
    );

    let client = Client::connect(&args.server).await?;
    let mut uploader = DeviceUploader::new(0)?;
    let batches = image_batches(images, args.batch_size)?;

    let streams = match args.streams {
        Some(k) => k,
        None => client.default_streams().await,
    };
    println!("{streams} streams");

    let started = Instant::now();
    let mut output = client
        .exchange_ordered(
            args.spec.as_str(),
            image_schema(),
            stream::iter(batches),
            streams,
            streams,
        )
        .await?;
    let mut in_use: Option<DeviceBatch> = None;
    let (mut rows, mut failed) = (0usize, 0usize);
    let mut last_host = None;
    while let Some(batch) = output.next().await {
        let batch = batch?;
        let on_device = uploader.upload(&batch)?;
        rows += on_device.valid.len();
        failed += on_device.valid.iter().filter(|v| !**v).count();
        // The consumer is done with the previous batch only now.
        in_use = Some(on_device);
        last_host = Some(batch);
    }
    uploader.stream().synchronize()?;
    let wall = started.elapsed().as_secs_f64();
    let stats = uploader.stats();
    println!(
        "end to end: {rows} rows ({failed} failed) in {wall:.2} s = {:.0} images/s; {:.2} GB to the GPU ({:.2} GB/s average over the run)",
        rows as f64 / wall,
        stats.bytes as f64 / 1e9,
        stats.bytes as f64 / 1e9 / wall,
    );
    if let Some(batch) = in_use {
        println!(
            "last device batch: shape {:?} {:?}",
            batch.shape, batch.dtype
        );
    }

    // The copy path alone: re-upload the last batch back to back.
    if let Some(batch) = last_host {
        let before = uploader.stats();
        let t = Instant::now();
        for _ in 0..20 {
            drop(uploader.upload(&batch)?);
        }
        uploader.stream().synchronize()?;
        let secs = t.elapsed().as_secs_f64();
        let bytes = (uploader.stats().bytes - before.bytes) as f64;
        println!(
            "copy path alone (staging memcpy + async H2D, double-buffered): {:.2} GB/s",
            bytes / 1e9 / secs
        );
    }
    Ok(())
}
