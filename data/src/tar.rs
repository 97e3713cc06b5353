//! WebDataset-style `.tar` shards: one row per sample.
//!
//! A sample is a run of consecutive members sharing a key (the member path
//! up to the first `.` of its file name; the rest is the extension, as
//! WebDataset defines it). Each sample becomes one row: `key`, one utf8
//! column per sidecar kind present anywhere in the dataset (`cls`, `json`,
//! `txt`, in that order; null where a sample lacks it), and `image` (the
//! first member with an image extension; null when the sample has none, so
//! it becomes an error row rather than vanishing). Other members are
//! ignored.
//!
//! Opening walks every tar's headers (seeking past the data) to count
//! samples and find the sidecar kinds. A read walks the tars its range
//! touches on a helper thread, reading member data only for the samples in
//! range, and hands batches over a one-slot channel, so at most two batches
//! are in memory and a dropped reader stops the thread.

use std::fs::File;
use std::ops::{ControlFlow, Range};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::{
    parts_in_range, read_capped, source_files, BatchIter, DatasetError, DatasetSource, ReadOptions,
    TextImageBatcher,
};

/// Name of the column holding each sample's key.
pub const KEY_COLUMN: &str = "key";

/// Sidecar extensions that become columns, in column order.
pub const SIDECARS: &[&str] = &["cls", "json", "txt"];

/// Member extensions taken as the sample's image.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// Largest sidecar read; a longer one is cut (sidecars are labels and
/// captions, not payloads).
const MAX_SIDECAR_BYTES: usize = 1 << 20;

/// One `.tar` file and how many samples it holds.
#[derive(Debug, Clone)]
struct TarPart {
    path: PathBuf,
    samples: u64,
}

/// WebDataset tar shard(s).
#[derive(Debug)]
pub struct TarSource {
    parts: Arc<[TarPart]>,
    /// Sidecar extensions present, in column order.
    sidecars: Arc<[String]>,
    schema: SchemaRef,
    rows: u64,
}

impl TarSource {
    /// Walks the headers of `path` (a `.tar` file, or the `.tar` files
    /// under a directory matching `glob`, sorted).
    pub fn open(path: &Path, glob: Option<&str>) -> Result<Self, DatasetError> {
        let files = source_files(path, "tar", glob)?;
        let mut present = [false; SIDECARS.len()];
        let mut parts = Vec::with_capacity(files.len());
        for file in files {
            let mut samples = 0;
            walk(&file, 0, u64::MAX, |_, sample| {
                samples += 1;
                for (ext, _) in &sample.members {
                    if let Some(i) = SIDECARS.iter().position(|s| s == ext) {
                        present[i] = true;
                    }
                }
                ControlFlow::Continue(())
            })?;
            parts.push(TarPart {
                path: file,
                samples,
            });
        }
        let sidecars: Vec<String> = SIDECARS
            .iter()
            .zip(present)
            .filter(|(_, p)| *p)
            .map(|(s, _)| s.to_string())
            .collect();
        let mut text_columns = vec![KEY_COLUMN.to_string()];
        text_columns.extend(sidecars.iter().cloned());
        let rows = parts.iter().map(|p| p.samples).sum();
        Ok(Self {
            parts: parts.into(),
            sidecars: sidecars.into(),
            schema: TextImageBatcher::schema(&text_columns),
            rows,
        })
    }
}

impl DatasetSource for TarSource {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn rows(&self) -> u64 {
        self.rows
    }

    fn read(&self, range: Range<u64>, options: &ReadOptions) -> Result<BatchIter, DatasetError> {
        let plan = parts_in_range(
            self.parts.iter().map(|p| (p.path.clone(), p.samples)),
            &range,
        );
        let (tx, rx) = sync_channel(1);
        let batcher = TextImageBatcher::new(Arc::clone(&self.schema), options);
        let sidecars = Arc::clone(&self.sidecars);
        let cap = options.max_image_bytes;
        std::thread::Builder::new()
            .name("pixelfeed-tar".into())
            .spawn(move || produce(plan, sidecars, cap, batcher, tx))
            .map_err(|e| DatasetError::io(Path::new("<tar reader thread>"), e))?;
        Ok(Box::new(ChannelIter(rx)))
    }
}

struct ChannelIter(Receiver<Result<RecordBatch, DatasetError>>);

impl Iterator for ChannelIter {
    type Item = Result<RecordBatch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.recv().ok()
    }
}

/// The helper thread: walks the planned tars, sending full batches. Stops
/// when the reader is dropped (a send fails).
fn produce(
    plan: Vec<(PathBuf, Range<u64>)>,
    sidecars: Arc<[String]>,
    cap: usize,
    mut batcher: TextImageBatcher,
    tx: SyncSender<Result<RecordBatch, DatasetError>>,
) {
    let mut gone = false;
    for (path, local) in plan {
        let walked = walk(&path, cap, local.start, |i, sample| {
            if i < local.start {
                return ControlFlow::Continue(());
            }
            if i >= local.end {
                return ControlFlow::Break(());
            }
            push_sample(&mut batcher, &sidecars, &sample);
            if batcher.full() {
                if let Some(batch) = batcher.finish() {
                    if tx.send(batch).is_err() {
                        gone = true;
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        });
        if gone {
            return;
        }
        if let Err(e) = walked {
            let _ = tx.send(Err(e));
            return;
        }
    }
    if let Some(batch) = batcher.finish() {
        let _ = tx.send(batch);
    }
}

fn push_sample(batcher: &mut TextImageBatcher, sidecars: &[String], sample: &Sample) {
    let find = |want: &dyn Fn(&str) -> bool| {
        sample
            .members
            .iter()
            .find(|(ext, data)| want(ext) && data.is_some())
            .and_then(|(_, data)| data.as_deref())
    };
    let texts: Vec<Option<String>> = sidecars
        .iter()
        .map(|s| find(&|ext| ext == s).map(|d| String::from_utf8_lossy(d).trim_end().to_string()))
        .collect();
    let mut row: Vec<Option<&str>> = vec![Some(&sample.key)];
    row.extend(texts.iter().map(Option::as_deref));
    batcher.push(&row, find(&|ext| IMAGE_EXTENSIONS.contains(&ext)));
}

/// One sample: its key and its members' extensions, with data for the
/// members that were read.
struct Sample {
    key: String,
    members: Vec<(String, Option<Vec<u8>>)>,
}

/// Splits a member path into WebDataset key and lower-cased extension;
/// `None` for members that belong to no sample (no extension, hidden).
fn split_member(path: &str) -> Option<(String, String)> {
    let path = path.strip_prefix("./").unwrap_or(path);
    let (dir, base) = path.rsplit_once('/').map_or(("", path), |(d, b)| (d, b));
    if base.starts_with('.') {
        return None;
    }
    let (stem, ext) = base.split_once('.')?;
    let key = if dir.is_empty() {
        stem.to_string()
    } else {
        format!("{dir}/{stem}")
    };
    Some((key, ext.to_ascii_lowercase()))
}

/// Walks the samples of one tar in order, calling `on_sample(index,
/// sample)` until it breaks. Member data (images and sidecars, capped) is
/// read only for samples from index `read_from` on; the rest is seeked
/// past.
fn walk(
    path: &Path,
    cap: usize,
    read_from: u64,
    mut on_sample: impl FnMut(u64, Sample) -> ControlFlow<()>,
) -> Result<(), DatasetError> {
    let io = |e| DatasetError::io(path, e);
    let file = File::open(path).map_err(io)?;
    let mut archive = ::tar::Archive::new(file);
    let mut current: Option<(u64, Sample)> = None;
    let mut next_index = 0;
    for entry in archive.entries_with_seek().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
        let Some((key, ext)) = split_member(&name) else {
            continue;
        };
        if current.as_ref().is_none_or(|(_, s)| s.key != key) {
            if let Some((i, sample)) = current.take() {
                if on_sample(i, sample).is_break() {
                    return Ok(());
                }
            }
            current = Some((
                next_index,
                Sample {
                    key,
                    members: Vec::new(),
                },
            ));
            next_index += 1;
        }
        let Some((index, sample)) = current.as_mut() else {
            continue;
        };
        let limit = if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            Some(cap)
        } else if SIDECARS.contains(&ext.as_str()) {
            Some(MAX_SIDECAR_BYTES)
        } else {
            None
        };
        let data = match limit {
            Some(limit) if *index >= read_from => Some(read_capped(&mut entry, limit).map_err(io)?),
            _ => None,
        };
        sample.members.push((ext, data));
    }
    if let Some((i, sample)) = current {
        let _ = on_sample(i, sample);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_split_into_key_and_extension() {
        assert_eq!(
            split_member("./a/b/0001.seg.PNG"),
            Some(("a/b/0001".into(), "seg.png".into()))
        );
        assert_eq!(split_member("x.jpg"), Some(("x".into(), "jpg".into())));
        assert_eq!(split_member("dir/README"), None);
        assert_eq!(split_member("dir/.hidden.txt"), None);
    }
}
