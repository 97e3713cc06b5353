//! A loopback server and a throwaway certificate authority (feature
//! `server`): what the server's, the CLI's and the clients' tests need to
//! talk to a real server in-process.

use std::net::{Ipv4Addr, SocketAddr};

use pixelfeed_client::{Client, ClientOptions};
use pixelfeed_server::{bind, check_config, serve_with_shutdown, ServerConfig, ServerError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server running in the background on `127.0.0.1`. Dropping it shuts
/// the server down.
#[derive(Debug)]
pub struct LoopbackServer {
    addr: SocketAddr,
    tls: bool,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl LoopbackServer {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients connect to, `grpc://127.0.0.1:PORT`
    /// (`grpc+tls://localhost:PORT` when serving TLS: certificates name a
    /// host, and test certificates name `localhost`).
    pub fn url(&self) -> String {
        if self.tls {
            format!("grpc+tls://localhost:{}", self.addr.port())
        } else {
            format!("grpc://{}", self.addr)
        }
    }

    /// Stops the server and waits until it has shut down.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            // The server may already have stopped; then there is nothing to do.
            let _ = tx.send(());
        }
    }
}

/// Starts a server on `127.0.0.1:0` (a free port) in a background task, as
/// arrow-rs's own Flight tests do. `config.listen` is ignored. Must be
/// called within a tokio runtime.
pub async fn spawn_loopback(config: ServerConfig) -> Result<LoopbackServer, ServerError> {
    let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let addr = listener.local_addr().map_err(ServerError::LocalAddr)?;
    check_config(&config)?;
    let tls = config.tls.is_some();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_with_shutdown(config, listener, async {
        // A dropped sender also means "stop".
        let _ = rx.await;
    }));
    Ok(LoopbackServer {
        addr,
        tls,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// Starts a loopback server and a Rust client on it with `options`.
pub async fn start(config: ServerConfig, options: ClientOptions) -> (LoopbackServer, Client) {
    let server = spawn_loopback(config).await.expect("start loopback server");
    let client = Client::connect_with(&server.url(), options)
        .await
        .expect("connect");
    (server, client)
}

/// PEM certificate and key.
pub struct Pem {
    /// Certificate, PEM.
    pub cert: String,
    /// Private key, PEM.
    pub key: String,
}

/// A throwaway CA that issues certificates, generated with rcgen.
pub struct TestCa {
    /// The CA's own certificate (what clients and servers trust).
    pub cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names`, signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Pem {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}
