//! Test TLS credentials, made with the `openssl` command in a temporary directory, laid out as QEMU's
//! `tls-creds-x509` object (and libnbd's `tls-certificates=DIR`) expect.
//!
//! - `server/`: `ca-cert.pem`, `server-cert.pem`, `server-key.pem` (for qemu-nbd and nbd-server);
//! - `client/`: `ca-cert.pem`, `client-cert.pem`, `client-key.pem` (a client the server accepts);
//! - `client-no-cert/`: `ca-cert.pem` only (trusts the server, presents no certificate);
//! - `client-other-ca/`: a CA that did not sign the server's certificate (refuses the server), with a
//!   client certificate from that CA (which the server refuses).
//!
//! The server certificate names `localhost` and `127.0.0.1`. Keys are RSA 2048 (what every client
//! here accepts); certificates carry the extensions QEMU checks (CA constraints and key usage, server
//! and client purposes).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory of generated credentials, removed on drop.
pub struct TlsCreds {
    root: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect(
            "openssl must be installed (scripts/test installs it): the TLS tests make certificates",
        );
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes an openssl extension file and returns its name.
fn extensions(dir: &Path, name: &str, text: &str) -> String {
    let file = format!("{name}.ext");
    std::fs::write(dir.join(&file), text).unwrap();
    file
}

/// A CA: `NAME-key.pem`, `NAME-cert.pem`.
fn make_ca(dir: &Path, name: &str) {
    let ext = extensions(
        dir,
        name,
        "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
         subjectKeyIdentifier = hash\n",
    );
    let key = format!("{name}-key.pem");
    let cert = format!("{name}-cert.pem");
    openssl(dir, &["genrsa", "-out", &key, "2048"]);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            &format!("/CN=aioctx test {name}"),
            "-extensions",
            "v3",
            "-config",
            &config(dir, name, &ext),
        ],
    );
}

/// A minimal openssl config whose `v3` section is the extension file's contents.
fn config(dir: &Path, name: &str, ext: &str) -> String {
    let body = std::fs::read_to_string(dir.join(ext)).unwrap();
    let file = format!("{name}.cnf");
    std::fs::write(
        dir.join(&file),
        format!("[req]\ndistinguished_name = dn\n[dn]\n[v3]\n{body}"),
    )
    .unwrap();
    file
}

/// A leaf certificate signed by CA `ca`: `NAME-key.pem`, `NAME-cert.pem`.
fn make_leaf(dir: &Path, name: &str, ca: &str, purpose: &str, san: Option<&str>) {
    let mut text = format!(
        "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\n\
         extendedKeyUsage = {purpose}\n"
    );
    if let Some(san) = san {
        text.push_str(&format!("subjectAltName = {san}\n"));
    }
    let ext = extensions(dir, name, &text);
    let key = format!("{name}-key.pem");
    let csr = format!("{name}.csr");
    openssl(dir, &["genrsa", "-out", &key, "2048"]);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}-cert.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-CAcreateserial",
            "-out",
            &format!("{name}-cert.pem"),
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

fn copy(dir: &Path, from: &str, to_dir: &Path, to: &str) {
    std::fs::copy(dir.join(from), to_dir.join(to)).unwrap();
}

impl TlsCreds {
    /// Generates every credential (a few RSA keys: about a second).
    pub fn generate(tag: &str) -> TlsCreds {
        let root = std::env::temp_dir().join(format!("aioctx-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let work = root.join("work");
        std::fs::create_dir_all(&work).unwrap();
        make_ca(&work, "ca");
        make_ca(&work, "other-ca");
        make_leaf(
            &work,
            "server",
            "ca",
            "serverAuth",
            Some("DNS:localhost, IP:127.0.0.1"),
        );
        make_leaf(&work, "client", "ca", "clientAuth", None);
        make_leaf(&work, "stranger", "other-ca", "clientAuth", None);
        let creds = TlsCreds { root };
        for (dir, files) in [
            (
                creds.server(),
                &[
                    ("ca-cert.pem", "ca-cert.pem"),
                    ("server-cert.pem", "server-cert.pem"),
                    ("server-key.pem", "server-key.pem"),
                ][..],
            ),
            (
                creds.client(),
                &[
                    ("ca-cert.pem", "ca-cert.pem"),
                    ("client-cert.pem", "client-cert.pem"),
                    ("client-key.pem", "client-key.pem"),
                ][..],
            ),
            (
                creds.client_no_cert(),
                &[("ca-cert.pem", "ca-cert.pem")][..],
            ),
            (
                creds.client_other_ca(),
                &[
                    ("other-ca-cert.pem", "ca-cert.pem"),
                    ("stranger-cert.pem", "client-cert.pem"),
                    ("stranger-key.pem", "client-key.pem"),
                ][..],
            ),
            (
                creds.client_stranger(),
                &[
                    ("ca-cert.pem", "ca-cert.pem"),
                    ("stranger-cert.pem", "client-cert.pem"),
                    ("stranger-key.pem", "client-key.pem"),
                ][..],
            ),
        ] {
            std::fs::create_dir_all(&dir).unwrap();
            for (from, to) in files {
                copy(&work, from, &dir, to);
            }
        }
        creds
    }

    /// `ca-cert.pem`, `server-cert.pem`, `server-key.pem`.
    pub fn server(&self) -> PathBuf {
        self.root.join("server")
    }

    /// A client the server accepts: it trusts the server and presents a certificate the CA signed.
    pub fn client(&self) -> PathBuf {
        self.root.join("client")
    }

    /// A client that trusts the server but presents no certificate.
    pub fn client_no_cert(&self) -> PathBuf {
        self.root.join("client-no-cert")
    }

    /// A client that trusts another CA (so it refuses the server).
    pub fn client_other_ca(&self) -> PathBuf {
        self.root.join("client-other-ca")
    }

    /// A client that trusts the server but presents a certificate another CA signed (so the server
    /// refuses it when it verifies peers).
    pub fn client_stranger(&self) -> PathBuf {
        self.root.join("client-stranger")
    }
}

impl Drop for TlsCreds {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
