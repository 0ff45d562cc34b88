//! TLS with rustls and its ring provider: a listener that serves HTTPS to axum, from a
//! certificate chain and key in PEM files (`http.tls_cert_file`, `http.tls_key_file`).
//!
//! The handshakes run in tasks of their own, at most [`MAX_HANDSHAKES`] at once and each
//! within [`HANDSHAKE_TIMEOUT`], so a client that opens a connection and says nothing
//! holds up no one else's; the connections that complete one are handed to axum in the
//! order they complete.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A handshake not done within this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at most; further connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Makes ring rustls's process-wide provider (once; later calls do nothing).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The server side: the chain of `cert_file` (the server's certificate first) and the
/// private key of `key_file`.
pub fn server_config(
    cert_file: &str,
    key_file: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    install_provider();
    let file_error = |path: &str, e: &dyn std::fmt::Display| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| file_error(cert_file, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert_file, &e))?;
    if certs.is_empty() {
        return Err(file_error(cert_file, &"holds no PEM certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| file_error(key_file, &e))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Root certificates for a client: those of `ca_file` (PEM).
pub fn root_store(ca_file: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| TlsError::File {
        path: ca_file.to_owned(),
        message: e.to_string(),
    })? {
        let cert = cert.map_err(|e| TlsError::File {
            path: ca_file.to_owned(),
            message: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| TlsError::File {
            path: ca_file.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A client's TLS settings: the server must present a certificate that chains to a CA of
/// `ca_file` (PEM) and names the host connected to; without a file, to one of the
/// system's roots.
pub fn client_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig, TlsError> {
    install_provider();
    let roots = match ca_file {
        Some(path) => {
            let roots = root_store(path)?;
            if roots.is_empty() {
                return Err(TlsError::File {
                    path: path.to_owned(),
                    message: "holds no PEM certificate".into(),
                });
            }
            roots
        }
        None => system_roots()?,
    };
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client configuration for a connector that is never asked to shake hands (a
/// connection made without TLS still needs a connector of the same type).
pub fn unused_client_config() -> rustls::ClientConfig {
    install_provider();
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// The system's trusted roots (`/etc/ssl/certs` on Debian, or `SSL_CERT_FILE`), as DER,
/// or why there are none.
fn system_certs() -> Result<Vec<CertificateDer<'static>>, String> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        return Err(format!(
            "no CA file is given and the system has no trusted roots{}",
            found
                .errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    Ok(found.certs)
}

fn system_roots() -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(system_certs().map_err(TlsError::Config)?);
    Ok(roots)
}

/// The system's roots as PEM text, read once per process: what an `amqps://` connection
/// without `amqp.ca_file` trusts (lapin takes roots as PEM only).
pub fn system_roots_pem() -> Result<&'static str, TlsError> {
    use base64::Engine;
    static PEM: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    let pem = PEM.get_or_init(|| {
        let mut pem = String::new();
        for cert in &system_certs()? {
            let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
            pem.push_str("-----BEGIN CERTIFICATE-----\n");
            for line in b64.as_bytes().chunks(64) {
                pem.push_str(&String::from_utf8_lossy(line));
                pem.push('\n');
            }
            pem.push_str("-----END CERTIFICATE-----\n");
        }
        Ok(pem)
    });
    pem.as_deref().map_err(|e| TlsError::Config(e.clone()))
}

/// The PEM text of a CA file, after checking it holds at least one certificate: lapin
/// takes the text and would otherwise fail at the first handshake, not at start.
pub fn ca_pem(ca_file: &str) -> Result<String, TlsError> {
    let roots = root_store(ca_file)?;
    if roots.is_empty() {
        return Err(TlsError::File {
            path: ca_file.to_owned(),
            message: "holds no PEM certificate".into(),
        });
    }
    std::fs::read_to_string(ca_file).map_err(|e| TlsError::File {
        path: ca_file.to_owned(),
        message: e.to_string(),
    })
}

/// Accepts TCP connections and hands axum those that completed a TLS handshake.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let accepting = tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors, say: wait rather than spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let shaken =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    match shaken {
                        Ok(Ok(tls)) => {
                            // Counted until axum takes it: connections waiting to be
                            // served are within the bound too.
                            let _ = tx.send((tls, peer)).await;
                            drop(permit);
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task ended (it does not, but for the type's sake): nothing
            // more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
