//! Confinement of server-side sources registered at run time: the
//! directories an operator allows (`--dataset-root`), and the check that a
//! path — after `..`, symlinks and bind mounts are resolved — stays under
//! one of them.
//!
//! The check runs on the source's own path when it is registered, on every
//! file a directory walk or a multi-file source finds (a symlink inside an
//! allowed tree may point anywhere), and again on each file a directory
//! source opens while serving, on the opened file itself (Linux:
//! `/proc/self/fd`), so a symlink swapped in after registration does not
//! escape either.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::DatasetError;

/// The directories run-time registrations must stay under (canonical).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRoots(Vec<PathBuf>);

impl DatasetRoots {
    /// Roots from operator-given directories, resolved now.
    ///
    /// # Errors
    /// [`DatasetError::Io`] for a root that does not exist or cannot be
    /// resolved; [`DatasetError::Invalid`] for one that is not a directory.
    pub fn new<P: AsRef<Path>>(dirs: impl IntoIterator<Item = P>) -> Result<Self, DatasetError> {
        let mut roots = Vec::new();
        for dir in dirs {
            let dir = dir.as_ref();
            let canonical = dir.canonicalize().map_err(|e| DatasetError::io(dir, e))?;
            if !canonical.is_dir() {
                return Err(DatasetError::Invalid(format!(
                    "dataset root {} is not a directory",
                    dir.display()
                )));
            }
            roots.push(canonical);
        }
        Ok(Self(roots))
    }

    /// The roots, canonical.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.0
    }

    /// `path` resolved, when it lies under a root.
    ///
    /// # Errors
    /// [`DatasetError::Forbidden`] when it resolves outside every root, or
    /// does not resolve at all (the answer does not say which, so a client
    /// cannot probe what exists outside the roots).
    pub fn confine(&self, path: &Path) -> Result<PathBuf, DatasetError> {
        match path.canonicalize() {
            Ok(real) if self.contains(&real) => Ok(real),
            _ => Err(self.forbidden(path)),
        }
    }

    /// Checks the file `file`, opened from `path`, by what the kernel says
    /// it is (Linux; elsewhere `path` is resolved again).
    pub(crate) fn check_open(&self, file: &File, path: &Path) -> Result<(), DatasetError> {
        #[cfg(target_os = "linux")]
        let real = {
            use std::os::fd::AsRawFd as _;
            std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        };
        #[cfg(not(target_os = "linux"))]
        let real = {
            let _ = file;
            path.canonicalize()
        };
        match real {
            Ok(real) if self.contains(&real) => Ok(()),
            _ => Err(self.forbidden(path)),
        }
    }

    fn contains(&self, real: &Path) -> bool {
        self.0.iter().any(|root| real.starts_with(root))
    }

    fn forbidden(&self, path: &Path) -> DatasetError {
        DatasetError::Forbidden(format!(
            "{} does not resolve to a path under the server's dataset roots (--dataset-root)",
            pixelfeed_schema::excerpt(&path.to_string_lossy())
        ))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn paths_are_resolved_before_they_are_judged() {
        let base = std::env::temp_dir().join(format!("pixelfeed-roots-{}", std::process::id()));
        let (inside, outside) = (base.join("data"), base.join("secret"));
        std::fs::create_dir_all(inside.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("key"), b"k").unwrap();
        std::os::unix::fs::symlink(&outside, inside.join("escape")).unwrap();
        let roots = DatasetRoots::new([&inside]).unwrap();

        assert!(roots.confine(&inside.join("sub")).is_ok());
        for bad in [
            inside.join("../secret"),
            inside.join("escape"),
            inside.join("escape/key"),
            inside.join("sub/../../secret/key"),
            PathBuf::from("/"),
            inside.join("does-not-exist"),
        ] {
            let err = roots.confine(&bad).unwrap_err();
            assert!(matches!(err, DatasetError::Forbidden(_)), "{bad:?}: {err}");
        }
        let file = File::open(inside.join("escape/key")).unwrap();
        assert!(roots.check_open(&file, &inside.join("escape/key")).is_err());
        std::fs::write(inside.join("sub/ok"), b"o").unwrap();
        let file = File::open(inside.join("sub/ok")).unwrap();
        assert!(roots.check_open(&file, &inside.join("sub/ok")).is_ok());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
