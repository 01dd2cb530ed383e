//! TLS for every service: rustls (ring) certificates from PEM files.
//!
//! - A service given `--tls-cert`/`--tls-key` serves TLS; with `--tls-ca` as well its internal
//!   gRPC servers (workers, kvstore) *require* a client certificate signed by that CA (mTLS). The
//!   router's client-facing HTTP and gRPC serve TLS without asking clients for certificates.
//! - A client reaching an `https://` URL verifies the server against `--tls-ca` and presents its
//!   own `--tls-cert` as client certificate, so one certificate per service (valid for both server
//!   and client authentication) is the whole setup.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// TLS flags of a service.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// PEM certificate chain this service presents: as a server, and as a client under mTLS.
    #[arg(long, env = "LCSERVE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "LCSERVE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA: servers require client certificates it signed (mTLS between services), clients
    /// verify `https://` servers with it.
    #[arg(long, env = "LCSERVE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: {source}")]
    Read { flag: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{flag} {path}: no PEM {what} in it")]
    NotPem { flag: &'static str, path: PathBuf, what: &'static str },
    #[error("serving TLS needs --tls-cert and --tls-key")]
    NoIdentity,
    #[error("{url}: an https:// URL needs --tls-ca to verify the server")]
    NoCa { url: String },
    #[error("{url}: {reason}")]
    Url { url: String, reason: String },
    #[error("TLS setup: {0}")]
    Config(String),
}

/// Loaded certificates, shared by a service's servers and clients.
#[derive(Clone)]
pub struct Tls {
    /// Certificate chain and key, PEM.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    ca: Option<Vec<u8>>,
}

/// Makes ring the process's rustls provider (the Redis client and the HTTP server use the
/// process default); idempotent.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Fails only when another provider is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl std::fmt::Debug for Tls {
    /// Never the key: only what is configured.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("identity", &self.identity.is_some()).field("ca", &self.ca.is_some()).finish()
    }
}

impl Tls {
    /// The certificate chain and private key (PEM), when configured: the client certificate of
    /// non-gRPC clients (Redis).
    pub fn identity_pem(&self) -> Option<(&[u8], &[u8])> {
        self.identity.as_ref().map(|(cert, key)| (cert.as_slice(), key.as_slice()))
    }

    /// Whether there is a certificate to serve TLS with: a CA alone only verifies peers (an
    /// `https://` kvstore, a `rediss://` Redis) while the service itself serves in the clear.
    pub fn serves(&self) -> bool {
        self.identity.is_some()
    }

    /// The CA certificate (PEM), when configured.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca.as_deref()
    }

    /// The certificates named by `args`; `None` when no TLS flag is given.
    pub fn load(args: &TlsArgs) -> Result<Option<Arc<Tls>>, TlsError> {
        if args.tls_cert.is_none() && args.tls_key.is_none() && args.tls_ca.is_none() {
            return Ok(None);
        }
        install_crypto_provider();
        let identity = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                Some((read_pem("--tls-cert", cert, "CERTIFICATE")?, read_pem("--tls-key", key, "PRIVATE KEY")?))
            }
            _ => None,
        };
        let ca = args.tls_ca.as_deref().map(|ca| read_pem("--tls-ca", ca, "CERTIFICATE")).transpose()?;
        Ok(Some(Arc::new(Tls { identity, ca })))
    }

    /// A gRPC server's TLS; `require_client_cert` turns on mTLS when a CA is configured.
    pub fn grpc_server(&self, require_client_cert: bool) -> Result<ServerTlsConfig, TlsError> {
        let (cert, key) = self.identity.as_ref().ok_or(TlsError::NoIdentity)?;
        let config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        Ok(match (&self.ca, require_client_cert) {
            (Some(ca), true) => config.client_ca_root(Certificate::from_pem(ca)),
            _ => config,
        })
    }

    /// The HTTP server's TLS (no client certificates asked).
    pub async fn http_server(&self) -> Result<axum_server::tls_rustls::RustlsConfig, TlsError> {
        let (cert, key) = self.identity.as_ref().ok_or(TlsError::NoIdentity)?;
        axum_server::tls_rustls::RustlsConfig::from_pem(cert.clone(), key.clone())
            .await
            .map_err(|err| TlsError::Config(err.to_string()))
    }

    /// A gRPC client's TLS: verify servers with the CA, present the identity.
    fn grpc_client(&self, url: &str) -> Result<ClientTlsConfig, TlsError> {
        let ca = self.ca.as_ref().ok_or_else(|| TlsError::NoCa { url: url.to_owned() })?;
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        Ok(match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        })
    }
}

/// The endpoint of a gRPC server at `url`: `http://` in the clear, `https://` verified with
/// `tls`'s CA (and presenting its certificate).
pub fn endpoint(url: &str, tls: Option<&Tls>) -> Result<Endpoint, TlsError> {
    let bad = |reason: String| TlsError::Url { url: url.to_owned(), reason };
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|err| bad(err.to_string()))?;
    match endpoint.uri().scheme_str() {
        Some("http") => Ok(endpoint),
        Some("https") => {
            let tls = tls.ok_or_else(|| TlsError::NoCa { url: url.to_owned() })?;
            endpoint.tls_config(tls.grpc_client(url)?).map_err(|err| bad(err.to_string()))
        }
        _ => Err(bad("the scheme must be http:// or https://".to_owned())),
    }
}

fn read_pem(flag: &'static str, path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read { flag, path: path.to_owned(), source })?;
    let text = String::from_utf8_lossy(&bytes);
    let marker = format!("-----BEGIN {what}-----");
    // "PRIVATE KEY" also matches "RSA PRIVATE KEY" / "EC PRIVATE KEY" headers.
    let found = if what == "PRIVATE KEY" { text.contains("PRIVATE KEY-----") } else { text.contains(&marker) };
    if !found {
        return Err(TlsError::NotPem { flag, path: path.to_owned(), what });
    }
    Ok(bytes)
}

/// Test certificates: a CA and service certificates it signs for `localhost`, written as PEM
/// files, to run TLS and mTLS for real in tests.
#[cfg(feature = "test-pki")]
pub mod test_pki {
    use std::path::{Path, PathBuf};

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    use super::TlsArgs;

    /// A certificate authority writing its files under one directory.
    #[allow(missing_debug_implementations)]
    pub struct TestCa {
        dir: PathBuf,
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    impl TestCa {
        /// A new CA named `name`; its certificate is `<dir>/<name>.ca.pem`.
        pub fn new(dir: &Path, name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            let key = KeyPair::generate().expect("CA key");
            let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
            std::fs::write(dir.join(format!("{name}.ca.pem")), issuer.pem()).expect("write CA");
            TestCa { dir: dir.join(name), issuer }
        }

        /// The CA certificate's path.
        pub fn ca_path(&self) -> PathBuf {
            self.dir.with_extension("ca.pem")
        }

        /// A certificate for `localhost`/127.0.0.1 named `service`, and TLS flags using it with
        /// this CA.
        pub fn issue(&self, service: &str) -> TlsArgs {
            let params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("leaf params");
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
            let (cert_path, key_path) =
                (self.dir.with_extension(format!("{service}.pem")), self.dir.with_extension(format!("{service}.key")));
            std::fs::write(&cert_path, cert.pem()).expect("write certificate");
            std::fs::write(&key_path, key.serialize_pem()).expect("write key");
            TlsArgs { tls_cert: Some(cert_path), tls_key: Some(key_path), tls_ca: Some(self.ca_path()) }
        }
    }
}

/// Serves `app` over HTTPS on `listener` until `shutdown`, then drains open connections.
pub async fn serve_https(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: axum_server::tls_rustls::RustlsConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let draining = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        draining.graceful_shutdown(None);
    });
    // TCP_NODELAY: SSE chunks are small writes that Nagle's algorithm would delay.
    let acceptor =
        axum_server::tls_rustls::RustlsAcceptor::new(config).acceptor(axum_server::accept::NoDelayAcceptor::new());
    axum_server::from_tcp(listener.into_std()?)?.acceptor(acceptor).handle(handle).serve(app.into_make_service()).await
}
