//! TLS as the services set it up, over real sockets: gRPC with mTLS (the internal services),
//! and HTTPS (the router's OpenAI front), each with certificates made by a test CA.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use lcserve_svc_kit::tls::test_pki::TestCa;
use lcserve_svc_kit::tls::{self, Tls, TlsArgs};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn load(args: &TlsArgs) -> Arc<Tls> {
    Tls::load(args).expect("load").expect("flags given")
}

/// A gRPC health server with the internal services' TLS (mTLS when `tls` has a CA).
async fn grpc_server(tls: &Tls) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_, health) = tonic_health::server::health_reporter();
    let server = tonic::transport::Server::builder()
        .tls_config(tls.grpc_server(true).expect("server TLS"))
        .expect("TLS config")
        .add_service(health);
    tokio::spawn(server.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    addr
}

/// One health check against `url` with `tls`'s client side; the error text on failure.
async fn check(url: &str, tls: Option<&Tls>) -> Result<(), String> {
    let endpoint = tls::endpoint(url, tls).map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map(drop)
        .map_err(|status| format!("call: {status:?}"))
}

#[tokio::test]
async fn grpc_mtls_admits_only_clients_with_a_certificate_from_the_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "cluster");
    let server = grpc_server(&load(&ca.issue("kvstore"))).await;
    let url = format!("https://localhost:{}", server.port());

    // A worker with its certificate from the CA is served.
    check(&url, Some(&load(&ca.issue("worker")))).await.expect("a client with the CA's certificate is served");

    // A worker without a client certificate is refused by mTLS (and, having none, would serve in
    // the clear itself).
    let no_identity = TlsArgs { tls_ca: Some(ca.ca_path()), ..TlsArgs::default() };
    assert!(!load(&no_identity).serves());
    let refused = check(&url, Some(&load(&no_identity))).await;
    assert!(refused.is_err(), "mTLS must refuse a client without a certificate");

    // A client trusting another CA refuses the server (and is refused).
    let other = TestCa::new(dir.path(), "other");
    assert!(check(&url, Some(&load(&other.issue("intruder")))).await.is_err(), "a foreign CA must not connect");

    // Plain text to a TLS port fails; an https:// URL without a CA is a configuration error.
    assert!(check(&format!("http://127.0.0.1:{}", server.port()), None).await.is_err());
    let error = check(&url, None).await.expect_err("no CA");
    assert!(error.contains("--tls-ca"), "{error}");
}

/// GET `/health` over HTTPS trusting `ca_pem`; the status code.
async fn https_get(addr: SocketAddr, ca_pem: &std::path::Path) -> Result<u16, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("add root");
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("server name");
    let stream =
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request =
        http::Request::get("/health").header("host", "localhost").body(Empty::<Bytes>::new()).expect("request");
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

#[tokio::test]
async fn https_front_serves_clients_that_trust_the_ca_and_no_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "public");
    let tls = load(&ca.issue("router"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tls::serve_https(listener, app, tls.http_server().await.expect("HTTPS config"), async {
        let _ = stopped.await;
    }));

    assert_eq!(https_get(addr, &ca.ca_path()).await, Ok(200));
    let stranger = TestCa::new(dir.path(), "stranger");
    let refused = https_get(addr, &stranger.ca_path()).await;
    assert!(refused.is_err(), "a client that does not trust the CA must refuse the server: {refused:?}");

    stop.send(()).expect("server running");
    server.await.expect("join").expect("clean shutdown");
}
