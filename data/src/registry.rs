//! Named, opened datasets: what a server offers.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use arrow_schema::SchemaRef;
use pixelfeed_schema::excerpt;

use crate::{BatchIter, DatasetError, DatasetRoots, DatasetSource, ReadOptions, SourceUri};

/// A named, opened source.
#[derive(Debug)]
pub struct Dataset {
    name: String,
    uri: String,
    source: Arc<dyn DatasetSource>,
}

impl Dataset {
    /// Opens `uri` (see [`SourceUri`]) as dataset `name`. Blocking.
    pub fn open(name: &str, uri: &str) -> Result<Self, DatasetError> {
        check_name(name)?;
        let source = SourceUri::parse(uri)?.open()?;
        Ok(Self::from_source(name, uri, source))
    }

    /// Wraps an already opened source.
    pub fn from_source(name: &str, uri: &str, source: Arc<dyn DatasetSource>) -> Self {
        Self {
            name: name.to_string(),
            uri: uri.to_string(),
            source,
        }
    }

    /// The dataset's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it was opened from.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Total rows.
    pub fn rows(&self) -> u64 {
        self.source.rows()
    }

    /// Columns of every batch (`image` plus passthrough columns).
    pub fn schema(&self) -> SchemaRef {
        self.source.schema()
    }

    /// Streams rows `range` in order. Blocking (call from a blocking thread).
    pub fn read(
        &self,
        range: Range<u64>,
        options: &ReadOptions,
    ) -> Result<BatchIter, DatasetError> {
        let rows = self.rows();
        if range.start > range.end || range.end > rows {
            return Err(DatasetError::OutOfRange {
                start: range.start,
                end: range.end,
                rows,
            });
        }
        self.source.read(range, options)
    }
}

/// Dataset names: 1 to 128 of `A-Z a-z 0-9 _ - .`, so they are safe as
/// file names (spilled uploads) and in tickets.
pub fn check_name(name: &str) -> Result<(), DatasetError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(DatasetError::Invalid(format!(
            "dataset name {} must be 1-128 characters of A-Z a-z 0-9 _ - . not starting with .",
            excerpt(name)
        )))
    }
}

/// The named datasets a server offers. Cheap to share (`Arc`), safe to
/// register into while serving.
#[derive(Debug, Default)]
pub struct DatasetRegistry {
    datasets: RwLock<BTreeMap<String, Arc<Dataset>>>,
}

impl DatasetRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens `uri` and registers it as `name`. Registering the same name
    /// and URI again re-opens it (picking up new files); a different URI
    /// under a taken name is a [`DatasetError::Conflict`]. Blocking.
    pub fn register(&self, name: &str, uri: &str) -> Result<Arc<Dataset>, DatasetError> {
        self.check_free(name, uri)?;
        self.insert(Dataset::open(name, uri)?)
    }

    /// Like [`register`](Self::register), for a registration a client asks
    /// for: the URI's path and every file it reads must resolve under
    /// `roots` ([`SourceUri::open_within`]).
    ///
    /// # Errors
    /// [`DatasetError::Forbidden`] when something leaves the roots; else as
    /// [`register`](Self::register).
    pub fn register_within(
        &self,
        name: &str,
        uri: &str,
        roots: &DatasetRoots,
    ) -> Result<Arc<Dataset>, DatasetError> {
        check_name(name)?;
        self.check_free(name, uri)?;
        let source = SourceUri::parse(uri)?.open_within(roots)?;
        self.insert(Dataset::from_source(name, uri, source))
    }

    /// Registers an opened dataset, with the same conflict rule as
    /// [`register`](Self::register).
    pub fn insert(&self, dataset: Dataset) -> Result<Arc<Dataset>, DatasetError> {
        let mut map = self.datasets.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = map.get(dataset.name()) {
            if old.uri() != dataset.uri() {
                return Err(DatasetError::Conflict {
                    name: dataset.name().to_string(),
                    uri: old.uri().to_string(),
                });
            }
        }
        let dataset = Arc::new(dataset);
        map.insert(dataset.name().to_string(), Arc::clone(&dataset));
        Ok(dataset)
    }

    /// Fails early (before an expensive open) when `name` is taken by
    /// another URI.
    pub fn check_free(&self, name: &str, uri: &str) -> Result<(), DatasetError> {
        match self.get(name) {
            Ok(old) if old.uri() != uri => Err(DatasetError::Conflict {
                name: name.to_string(),
                uri: old.uri().to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// The dataset called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Dataset>, DatasetError> {
        let map = self.datasets.read().unwrap_or_else(|p| p.into_inner());
        map.get(name)
            .cloned()
            .ok_or_else(|| DatasetError::Unknown(name.to_string()))
    }

    /// Every dataset, sorted by name.
    pub fn list(&self) -> Vec<Arc<Dataset>> {
        let map = self.datasets.read().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }
}
