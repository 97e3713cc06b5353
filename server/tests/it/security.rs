//! Authentication and TLS, end to end over loopback: bearer tokens on
//! every call (refused before any work), the Flight basic → bearer
//! handshake, TLS with a CA generated here (rcgen), mutual TLS, and the
//! gRPC health service that probes use without credentials.

use std::time::Duration;

use crate::{bundled_images, start, SMALL};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::HandshakeRequest;
use base64::Engine as _;
use futures::stream;
use pixelfeed_client::{Client, ClientOptions};
use pixelfeed_server::{AuthToken, ListenAddr, ServerConfig, ServiceConfig, TlsConfig};
use pixelfeed_testkit::spawn_loopback;
use pixelfeed_testkit::TestCa;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const TOKEN: &str = "s3cret-token";

fn with_token() -> ServerConfig {
    ServerConfig {
        service: ServiceConfig {
            auth_token: Some(AuthToken::new(TOKEN).unwrap()),
            ..ServiceConfig::default()
        },
        ..ServerConfig::default()
    }
}

#[tokio::test]
async fn calls_without_the_right_token_are_refused_before_any_work() {
    let config = with_token();
    let metrics = config.service.metrics.clone();
    let (server, anonymous) = start(config, ClientOptions::default()).await;
    let images = bundled_images();

    for client in [
        anonymous,
        Client::connect_with(&server.url(), ClientOptions::default().with_token("wrong"))
            .await
            .unwrap(),
    ] {
        let err = client.preprocess(&images, SMALL, 4).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
        let err = client.health().await.unwrap_err();
        assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
        let err = client.list_actions().await.unwrap_err();
        assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
    }
    // Nothing reached the engine.
    let text = metrics.render(&pixelfeed_engine::HeapAllocator);
    assert!(!text.contains("pixelfeed_images_total{"), "{text}");
    assert!(
        text.contains(r#"pixelfeed_calls_total{method="DoExchange",code="UNAUTHENTICATED"} 2"#),
        "{text}"
    );

    let good = Client::connect_with(&server.url(), ClientOptions::default().with_token(TOKEN))
        .await
        .unwrap();
    let batches = good.preprocess(&images, SMALL, 4).await.unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, images.len());
    assert_eq!(good.health().await.unwrap()["status"], "ok");
}

async fn handshake(
    url: &str,
    authorization: Option<String>,
) -> Result<Option<String>, tonic::Status> {
    let channel = Channel::from_shared(url.replace("grpc://", "http://"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(stream::empty::<HandshakeRequest>());
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    let response = FlightServiceClient::new(channel).handshake(request).await?;
    Ok(response
        .metadata()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string()))
}

fn basic(user: &str, password: &str) -> String {
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {pair}")
}

#[tokio::test]
async fn handshake_trades_basic_credentials_for_the_bearer_token() {
    let server = spawn_loopback(with_token()).await.unwrap();
    let url = server.url();
    // Password = token; any user name.
    let bearer = handshake(&url, Some(basic("alice", TOKEN))).await.unwrap();
    assert_eq!(bearer.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
    // The answer is usable as is.
    let client = Client::connect_with(&url, ClientOptions::default().with_token(TOKEN))
        .await
        .unwrap();
    assert!(client.health().await.is_ok());

    for bad in [Some(basic("alice", "nope")), Some(basic(TOKEN, "")), None] {
        let err = handshake(&url, bad.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{bad:?}");
    }
    // Without a token configured the handshake is a harmless no-op.
    let open = spawn_loopback(ServerConfig::default()).await.unwrap();
    assert_eq!(handshake(&open.url(), None).await.unwrap(), None);
}

#[tokio::test]
async fn grpc_health_answers_without_a_token() {
    let server = spawn_loopback(with_token()).await.unwrap();
    let channel = Channel::from_shared(server.url().replace("grpc://", "http://"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "arrow.flight.protocol.FlightService"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
    }
    let err = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

fn tls_server(ca: &TestCa, client_ca: Option<&TestCa>) -> ServerConfig {
    let leaf = ca.issue(&["localhost"]);
    ServerConfig {
        tls: Some(TlsConfig {
            cert_pem: leaf.cert.into_bytes(),
            key_pem: leaf.key.into_bytes(),
            client_ca_pem: client_ca.map(|c| c.cert_pem.clone().into_bytes()),
        }),
        ..ServerConfig::default()
    }
}

fn short_connect() -> ClientOptions {
    ClientOptions {
        connect_timeout: Some(Duration::from_secs(5)),
        ..ClientOptions::default()
    }
}

/// Whether a client built with `options` can complete a call on `url`
/// (a failed TLS handshake surfaces at connect or at the first call).
async fn works(url: &str, options: ClientOptions) -> bool {
    match Client::connect_with(url, options).await {
        Ok(client) => client.health().await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn tls_serves_clients_that_trust_its_ca_only() {
    let ca = TestCa::new("pixelfeed test CA");
    let server = spawn_loopback(tls_server(&ca, None)).await.unwrap();
    let url = server.url();
    assert!(url.starts_with("grpc+tls://localhost:"), "{url}");

    let client = Client::connect_with(&url, short_connect().with_tls_ca(ca.cert_pem.clone()))
        .await
        .unwrap();
    let images = bundled_images();
    let rows: usize = client
        .preprocess(&images, SMALL, 5)
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, images.len());

    // Plaintext to a TLS port, a CA that did not sign it, and no CA at all.
    let plain = format!("grpc://{}", server.addr());
    assert!(!works(&plain, short_connect()).await);
    let other = TestCa::new("some other CA");
    assert!(!works(&url, short_connect().with_tls_ca(other.cert_pem.clone())).await);
    let err = Client::connect_with(&url, short_connect())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CA certificate"), "{err}");
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_client_ca() {
    let ca = TestCa::new("pixelfeed server CA");
    let client_ca = TestCa::new("pixelfeed client CA");
    let server = spawn_loopback(tls_server(&ca, Some(&client_ca)))
        .await
        .unwrap();
    let url = server.url();
    let trusting = || short_connect().with_tls_ca(ca.cert_pem.clone());

    let good = client_ca.issue(&["trainer-1"]);
    assert!(works(&url, trusting().with_tls_identity(good.cert, good.key)).await);
    assert!(!works(&url, trusting()).await, "no client certificate");
    let stranger = ca.issue(&["trainer-2"]);
    assert!(
        !works(
            &url,
            trusting().with_tls_identity(stranger.cert, stranger.key)
        )
        .await,
        "a client certificate from another CA"
    );
}

#[tokio::test]
async fn a_bad_certificate_fails_at_start() {
    let config = ServerConfig {
        tls: Some(TlsConfig {
            cert_pem: b"not a certificate".to_vec(),
            key_pem: b"not a key".to_vec(),
            client_ca_pem: None,
        }),
        ..ServerConfig::default()
    };
    let err = spawn_loopback(config).await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[test]
fn exposure_warning_only_for_reachable_addresses_missing_auth_or_tls() {
    let open: ListenAddr = "0.0.0.0:8815".parse().unwrap();
    let local: ListenAddr = "127.0.0.1:8815".parse().unwrap();
    let socket: ListenAddr = "unix:///run/pixelfeed.sock".parse().unwrap();
    let plain = ServerConfig::default();
    assert!(plain.exposure_warning(&local).is_none());
    assert!(plain.exposure_warning(&socket).is_none());
    let warning = plain.exposure_warning(&open).unwrap();
    assert!(
        warning.contains("authentication") && warning.contains("TLS"),
        "{warning}"
    );
    let ca = TestCa::new("ca");
    let secured = ServerConfig {
        service: with_token().service,
        ..tls_server(&ca, None)
    };
    assert!(secured.exposure_warning(&open).is_none());
    let token_only = with_token().exposure_warning(&open).unwrap();
    assert!(token_only.contains("TLS") && !token_only.contains("authentication"));
}
