//! TLS for the NBD server (`NBD_OPT_STARTTLS`), with rustls and its `ring` provider.
//!
//! The credentials directory is laid out as QEMU's `tls-creds-x509` object expects, so one directory
//! serves qemu-nbd and nbd-server: `ca-cert.pem` (the CA that signs client certificates), and
//! `server-cert.pem` / `server-key.pem` (the server's chain and key). With `verify_peer` (the default,
//! as QEMU's), a client must present a certificate that `ca-cert.pem` signed; without it, any client
//! that completes the TLS handshake may negotiate.
//!
//! With TLS configured, the handshake answers every option before `STARTTLS` with
//! `NBD_REP_ERR_TLS_REQD` (and closes a connection that asks for `EXPORT_NAME`, which has no error
//! reply), upgrades the connection on `STARTTLS`, and negotiates the rest over TLS.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_rustls::rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// Where the TLS credentials are and whether clients must present a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// A directory with `ca-cert.pem`, `server-cert.pem` and `server-key.pem`.
    pub creds_dir: PathBuf,
    /// Require a client certificate signed by `ca-cert.pem` (QEMU's default `verify-peer=on`).
    pub verify_peer: bool,
}

/// A loaded TLS configuration, shared by every connection.
#[derive(Clone)]
pub(crate) struct Tls {
    acceptor: futures_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

fn bad_creds(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("TLS credentials {}: {what}", path.display()),
    )
}

fn read_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let pem =
        fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_creds(path, e))?;
    if certs.is_empty() {
        return Err(bad_creds(path, "no certificate in it"));
    }
    Ok(certs)
}

impl Tls {
    /// Loads and checks the credentials (fails at startup, not at the first client).
    pub(crate) fn load(config: &TlsConfig) -> io::Result<Tls> {
        let dir = &config.creds_dir;
        let cert_path = dir.join("server-cert.pem");
        let key_path = dir.join("server-key.pem");
        let certs = read_certs(&cert_path)?;
        let key_pem = fs::read(&key_path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", key_path.display())))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad_creds(&key_path, e))?;
        // The `ring` provider builds with the C compiler the machines have (aws-lc wants more tools);
        // rustls deprecates it only for lacking post-quantum key exchange, which QEMU's GnuTLS
        // clients do not offer either.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad_creds(dir, e))?;
        let builder = if config.verify_peer {
            let ca_path = dir.join("ca-cert.pem");
            let mut roots = rustls::RootCertStore::empty();
            for ca in read_certs(&ca_path)? {
                roots.add(ca).map_err(|e| bad_creds(&ca_path, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad_creds(&ca_path, e))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let server = builder
            .with_single_cert(certs, key)
            .map_err(|e| bad_creds(&cert_path, e))?;
        Ok(Tls {
            acceptor: futures_rustls::TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// Runs the TLS handshake on `stream` (after `STARTTLS` was acknowledged).
    pub(crate) async fn accept<S>(
        &self,
        stream: S,
    ) -> io::Result<futures_rustls::server::TlsStream<S>>
    where
        S: futures::AsyncRead + futures::AsyncWrite + Unpin,
    {
        self.acceptor.accept(stream).await
    }
}
