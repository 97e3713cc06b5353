//! Dataset URIs: `[dir:|parquet:|tar:]PATH[?key=value&...]`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use pixelfeed_schema::excerpt;

use crate::{directory, parquet, source_files, tar, DatasetError, DatasetRoots, DatasetSource};

/// Where a dataset comes from, parsed from its URI:
/// `[dir:|parquet:|tar:]PATH[?key=value&...]`.
///
/// Without a scheme, a path ending in `.parquet` is Parquet, one ending in
/// `.tar` is WebDataset, and a directory is a directory of images.
/// Options: `glob=PATTERN` (dir: which files, matched against the path
/// relative to the root; tar: which `.tar` files of a directory),
/// `column=NAME` (parquet: the image column, default `image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceUri {
    /// Image files under a directory.
    Directory {
        /// The root directory.
        root: PathBuf,
        /// Optional glob the relative paths must match.
        glob: Option<String>,
    },
    /// A Parquet file or directory of `.parquet` files.
    Parquet {
        /// The file or directory.
        path: PathBuf,
        /// Name of the binary image column.
        column: String,
    },
    /// A WebDataset `.tar` file or a directory of them.
    Tar {
        /// The file or directory.
        path: PathBuf,
        /// Optional glob over the directory's `.tar` files.
        glob: Option<String>,
    },
}

impl SourceUri {
    /// Parses a dataset URI.
    pub fn parse(uri: &str) -> Result<Self, DatasetError> {
        let bad = |reason: String| DatasetError::Uri {
            uri: uri.to_string(),
            reason,
        };
        let (scheme, rest) = match uri.split_once(':') {
            Some((s @ ("dir" | "parquet" | "tar" | "file"), rest)) => (Some(s), rest),
            _ => (None, uri),
        };
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(bad("no path".into()));
        }
        let mut options = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("option {} is not key=value", excerpt(pair))))?;
            options.insert(k.to_string(), v.to_string());
        }
        let path = PathBuf::from(path);
        let kind = match scheme {
            Some(s @ ("dir" | "parquet" | "tar")) => s,
            _ if path.extension().is_some_and(|e| e == "parquet") => "parquet",
            _ if path.extension().is_some_and(|e| e == "tar") => "tar",
            _ => "dir",
        };
        let allowed: &[&str] = match kind {
            "parquet" => &["column"],
            _ => &["glob"],
        };
        if let Some(k) = options.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(format!(
                "unknown option {} for a {kind} source (allowed: {})",
                excerpt(k),
                allowed.join(", ")
            )));
        }
        let glob = options.remove("glob");
        if let Some(g) = &glob {
            ::glob::Pattern::new(g).map_err(|e| bad(format!("bad glob {}: {e}", excerpt(g))))?;
        }
        Ok(match kind {
            "parquet" => Self::Parquet {
                path,
                column: options
                    .remove("column")
                    .unwrap_or_else(|| pixelfeed_schema::columns::IMAGE.to_string()),
            },
            "tar" => Self::Tar { path, glob },
            _ => Self::Directory { root: path, glob },
        })
    }

    /// Opens the source like [`SourceUri::open`], confined to `roots`: the
    /// path and every file the source would read must resolve under one of
    /// them, now and (directory sources) whenever a file is opened.
    ///
    /// # Errors
    /// [`DatasetError::Forbidden`] naming the first path that leaves the
    /// roots; otherwise as [`SourceUri::open`].
    pub fn open_within(
        &self,
        roots: &DatasetRoots,
    ) -> Result<Arc<dyn DatasetSource>, DatasetError> {
        Ok(match self {
            Self::Directory { root, glob } => Arc::new(directory::DirectorySource::open_within(
                &roots.confine(root)?,
                glob.as_deref(),
                roots,
            )?),
            Self::Parquet { path, column } => {
                let path = roots.confine(path)?;
                for file in source_files(&path, "parquet", None)? {
                    roots.confine(&file)?;
                }
                Arc::new(parquet::ParquetSource::open(&path, column)?)
            }
            Self::Tar { path, glob } => {
                let path = roots.confine(path)?;
                for file in source_files(&path, "tar", glob.as_deref())? {
                    roots.confine(&file)?;
                }
                Arc::new(tar::TarSource::open(&path, glob.as_deref())?)
            }
        })
    }

    /// Opens the source (lists the files, reads footers or tar headers to
    /// count rows). Blocking.
    pub fn open(&self) -> Result<Arc<dyn DatasetSource>, DatasetError> {
        Ok(match self {
            Self::Directory { root, glob } => {
                Arc::new(directory::DirectorySource::open(root, glob.as_deref())?)
            }
            Self::Parquet { path, column } => Arc::new(parquet::ParquetSource::open(path, column)?),
            Self::Tar { path, glob } => Arc::new(tar::TarSource::open(path, glob.as_deref())?),
        })
    }
}
