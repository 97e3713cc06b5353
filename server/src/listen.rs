//! Where the server listens: a TCP address, or a Unix domain socket for
//! clients on the same host (no TCP/IP stack, no loopback checksums; the
//! socket file's permissions say who may connect).
//!
//! Address forms follow gRPC's naming (`doc/naming.md` in grpc/grpc):
//! `unix:///abs/path.sock` or `unix:path.sock`; pyarrow dials the same
//! socket as `grpc+unix:///abs/path.sock`, which is accepted too.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::either::Either;

use crate::serve::ServerError;

/// A listen address: `HOST:PORT` or a Unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address (port 0 picks a free port).
    Tcp(SocketAddr),
    /// A Unix domain socket at this path.
    Unix(PathBuf),
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        Self::Tcp(addr)
    }
}

/// Why a listen address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid listen address {given:?}: expected HOST:PORT (e.g. 127.0.0.1:8815) or \
     unix:///absolute/path.sock"
)]
pub struct InvalidListenAddr {
    given: String,
}

impl FromStr for ListenAddr {
    type Err = InvalidListenAddr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidListenAddr {
            given: s.to_string(),
        };
        // `unix://` + an absolute path (so `unix:///x`), or `unix:/x`, as
        // gRPC names them. Relative paths are refused: no client could dial
        // them (pyarrow's `grpc+unix://` takes absolute paths only).
        let path = s
            .strip_prefix("grpc+unix://")
            .or_else(|| s.strip_prefix("unix://"))
            .or_else(|| s.strip_prefix("unix:").filter(|p| !p.starts_with("//")));
        match path {
            Some(path) if path.starts_with('/') && path.len() > 1 => {
                Ok(Self::Unix(PathBuf::from(path)))
            }
            Some(_) => Err(invalid()),
            None => s.parse().map(Self::Tcp).map_err(|_| invalid()),
        }
    }
}

impl fmt::Display for ListenAddr {
    /// `HOST:PORT` or `unix:///abs/path`: forms [`FromStr`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => addr.fmt(f),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

impl ListenAddr {
    /// Whether only this host can connect (loopback TCP or a Unix socket).
    pub fn is_local(&self) -> bool {
        match self {
            Self::Tcp(addr) => addr.ip().is_loopback(),
            Self::Unix(_) => true,
        }
    }
}

/// A bound listener: TCP, or a Unix socket whose file is removed when the
/// listener is dropped.
#[derive(Debug)]
pub enum Listener {
    /// Listening on TCP.
    Tcp(TcpListener),
    /// Listening on a Unix domain socket.
    Unix(UnixListener, SocketFile),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Self::Tcp(listener)
    }
}

/// An accepted connection's byte stream.
pub(crate) type Socket = Either<TcpStream, UnixStream>;

impl Listener {
    /// Binds `addr`. For a Unix socket, a file left at the path by a server
    /// that is gone (nothing accepts on it) is replaced; a live socket, or
    /// a path that is not a socket, is an error, never removed.
    pub async fn bind(addr: &ListenAddr) -> Result<Self, ServerError> {
        let failed = |source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        };
        match addr {
            ListenAddr::Tcp(at) => crate::serve::bind(*at).await.map(Self::Tcp),
            ListenAddr::Unix(path) => {
                remove_stale_socket(path).await.map_err(failed)?;
                let listener = UnixListener::bind(path).map_err(failed)?;
                let file = SocketFile::new(path).map_err(failed)?;
                Ok(Self::Unix(listener, file))
            }
        }
    }

    /// The address actually bound (with the port the OS picked for port 0).
    pub fn local_addr(&self) -> Result<ListenAddr, ServerError> {
        match self {
            Self::Tcp(listener) => listener
                .local_addr()
                .map(ListenAddr::Tcp)
                .map_err(ServerError::LocalAddr),
            Self::Unix(_, file) => Ok(ListenAddr::Unix(file.path.clone())),
        }
    }

    /// The next connection and, over TCP, its peer.
    pub(crate) async fn accept(&self) -> io::Result<(Socket, Option<SocketAddr>)> {
        match self {
            Self::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                // Small messages should not wait for Nagle's algorithm.
                let _ = stream.set_nodelay(true);
                Ok((Either::Left(stream), Some(peer)))
            }
            Self::Unix(listener, _) => {
                let (stream, _) = listener.accept().await?;
                Ok((Either::Right(stream), None))
            }
        }
    }
}

/// Removes a socket file at `path` that no server accepts on.
async fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket; not replacing it",
        ));
    }
    match UnixStream::connect(path).await {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another server is listening on this socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// The socket file a [`Listener`] created, removed on drop unless another
/// file has replaced it since.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode of the file bound, to recognise it at drop.
    id: (u64, u64),
}

impl SocketFile {
    fn new(path: &Path) -> io::Result<Self> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_in_grpc_forms_and_print_back() {
        let unix = |p: &str| ListenAddr::Unix(PathBuf::from(p));
        for (given, want, shown) in [
            (
                "127.0.0.1:8815",
                "127.0.0.1:8815".parse().map(ListenAddr::Tcp).unwrap(),
                "127.0.0.1:8815",
            ),
            (
                "[::1]:0",
                "[::1]:0".parse().map(ListenAddr::Tcp).unwrap(),
                "[::1]:0",
            ),
            (
                "unix:///run/pf.sock",
                unix("/run/pf.sock"),
                "unix:///run/pf.sock",
            ),
            (
                "unix:/run/pf.sock",
                unix("/run/pf.sock"),
                "unix:///run/pf.sock",
            ),
            (
                "grpc+unix:///run/pf.sock",
                unix("/run/pf.sock"),
                "unix:///run/pf.sock",
            ),
        ] {
            let parsed: ListenAddr = given.parse().unwrap();
            assert_eq!(parsed, want, "{given}");
            assert_eq!(parsed.to_string(), shown, "{given}");
            assert_eq!(shown.parse::<ListenAddr>().unwrap(), want, "{shown}");
        }
        for bad in [
            "",
            "unix:",
            "unix://",
            "unix:///",
            "unix://relative",
            "unix:relative.sock",
            "localhost",
            "tcp://1.2.3.4:5",
            "1.2.3.4",
        ] {
            let err = bad.parse::<ListenAddr>().unwrap_err();
            assert!(err.to_string().contains("unix:///"), "{bad}: {err}");
        }
        assert!(unix("/x").is_local());
        assert!(!ListenAddr::Tcp("0.0.0.0:1".parse().unwrap()).is_local());
    }

    #[tokio::test]
    async fn a_socket_file_is_replaced_only_when_stale_and_removed_on_drop() {
        let dir = std::env::temp_dir().join(format!("pixelfeed-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let addr = ListenAddr::Unix(path.clone());

        let first = Listener::bind(&addr).await.unwrap();
        assert_eq!(first.local_addr().unwrap(), addr);
        let busy = Listener::bind(&addr).await.unwrap_err();
        assert!(busy.to_string().contains("another server"), "{busy}");

        // A socket file whose server died without removing it.
        let (std_listener, file) = match first {
            Listener::Unix(listener, file) => (listener.into_std().unwrap(), file),
            Listener::Tcp(_) => unreachable!(),
        };
        std::mem::forget(file);
        drop(std_listener);
        assert!(path.exists());
        let second = Listener::bind(&addr).await.unwrap();
        drop(second);
        assert!(!path.exists(), "the socket file outlived its listener");

        std::fs::write(&path, b"not a socket").unwrap();
        let err = Listener::bind(&addr).await.unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
