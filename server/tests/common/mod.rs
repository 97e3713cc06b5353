//! Helpers shared by the service integration tests (security, limits,
//! observability): bundled images, a test CA, a small spec.
#![allow(dead_code)] // each test crate uses a different subset

use std::path::Path;

use pixelfeed_client::{Client, ClientOptions};
use pixelfeed_server::flight::{spawn_loopback, LoopbackServer, ServerConfig};

/// A cheap spec: 32×48 RGB uint8, HWC.
pub const SMALL: &str =
    r#"{"resize":{"mode":"exact","height":32,"width":48},"dtype":"uint8","layout":"hwc"}"#;

/// The bundled test images (`tests/data/images/*.{jpg,png}`), sorted by name.
pub fn bundled_images() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/images");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("jpg" | "png")))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 10,
        "expected the bundled images in {}",
        dir.display()
    );
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// A starts a loopback server and a client with `options`.
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
