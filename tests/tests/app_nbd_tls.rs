//! nbd-server with TLS (`--tls-creds`), against QEMU's client (qemu-io and qemu-img with a
//! `tls-creds-x509` object) and libnbd's (nbdinfo, nbdcopy with `tls-certificates=DIR`): reads and
//! writes verified over TLS on TCP and on a Unix socket; a plain client refused (every option before
//! STARTTLS gets NBD_REP_ERR_TLS_REQD, EXPORT_NAME closes the connection); a client that trusts another
//! CA refused; a client without a certificate, or with one another CA signed, refused unless
//! verify-peer is off. The credentials are made with openssl (`tests::tls`). A missing tool fails the
//! test; every tool runs under `timeout`.

#[allow(dead_code)]
#[path = "app_nbd_server/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "app_nbd_server/structured.rs"]
mod structured;

use std::path::Path;
use std::process::Output;

use client::{Client, Kind, Setup, TestServer};
use examples::nbd::proto::{opt, rep};
use examples::nbd::TlsConfig;
use tests::tls::TlsCreds;

const MIB: usize = 1 << 20;

/// Runs `tool` under `timeout 60` and returns what happened (it must be installed).
fn run(tool: &str, args: &[&str]) -> Output {
    tests::tools::run(tool, args, 60)
}

fn ok(tool: &str, args: &[&str]) -> String {
    let out = run(tool, args);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(tool: &str, args: &[&str]) -> String {
    let out = run(tool, args);
    assert!(
        !out.status.success() && out.status.code() != Some(124),
        "{tool} {args:?} should have been refused (and not timed out): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn tls_server(creds: &TlsCreds, kind: Kind, verify_peer: bool) -> TestServer {
    TestServer::start(Setup {
        kind,
        contents: vec![0; 8 * MIB],
        tls: Some(TlsConfig {
            creds_dir: creds.server(),
            verify_peer,
        }),
        ..Setup::default()
    })
}

/// qemu-io's image options for `server` with client credentials `dir` (no TLS object when `None`).
fn qemu_args(server: &TestServer, dir: Option<&Path>) -> Vec<String> {
    let mut args = Vec::new();
    let mut image = String::from("driver=nbd,export=disk,");
    match server.uri.strip_prefix("nbds://") {
        Some(rest) => {
            let hostport = rest.split('/').next().unwrap();
            let (host, port) = hostport.rsplit_once(':').unwrap();
            image += &format!("server.type=inet,server.host={host},server.port={port}");
        }
        None => {
            image += &format!(
                "server.type=unix,server.path={}",
                server.socket_path().display()
            )
        }
    }
    if let Some(dir) = dir {
        args.push("--object".into());
        args.push(format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            dir.display()
        ));
        image += ",tls-creds=tls0,tls-hostname=localhost";
    }
    args.push("--image-opts".into());
    args.push(image);
    args
}

fn qemu_io(server: &TestServer, dir: Option<&Path>, commands: &[&str]) -> Output {
    let mut args = qemu_args(server, dir);
    for c in commands {
        args.push("-c".into());
        args.push((*c).into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("qemu-io", &args)
}

/// libnbd's URI for `server` with client credentials `dir`.
fn libnbd_uri(server: &TestServer, dir: &Path) -> String {
    let sep = if server.uri.contains('?') { '&' } else { '?' };
    format!("{}{sep}tls-certificates={}", server.uri, dir.display())
}

#[test]
fn qemu_io_reads_and_writes_over_tls_on_tcp_and_unix() {
    let creds = TlsCreds::generate("qemu-io");
    for kind in [Kind::Tcp, Kind::Unix] {
        let server = tls_server(&creds, kind, true);
        assert!(server.uri.starts_with("nbds"), "{}", server.uri);
        let out = qemu_io(
            &server,
            Some(&creds.client()),
            &[
                "write -P 0xa5 0 1M",
                "write -P 0x5a 7M 1M",
                "read -P 0xa5 0 1M",
                "read -P 0x5a 7M 1M",
                "read -P 0 1M 1M",
            ],
        );
        assert!(
            out.status.success(),
            "{kind:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let image = std::fs::read(&server.image).unwrap();
        assert!(image[..MIB].iter().all(|&b| b == 0xa5), "{kind:?}: written");
        assert!(
            image[7 * MIB..].iter().all(|&b| b == 0x5a),
            "{kind:?}: written"
        );
    }
}

#[test]
fn libnbd_copies_in_and_out_over_tls() {
    let creds = TlsCreds::generate("libnbd");
    let server = tls_server(&creds, Kind::Tcp, true);
    let uri = libnbd_uri(&server, &creds.client());
    let info = ok("nbdinfo", &[&uri]);
    assert!(
        info.contains("8388608"),
        "nbdinfo sees the export size: {info}"
    );
    let dir = client::TempDir::new("tls-copy");
    let src = dir.path("src.img");
    let back = dir.path("back.img");
    let data: Vec<u8> = (0..8 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    ok("nbdcopy", &[src.to_str().unwrap(), &uri]);
    ok("nbdcopy", &[&uri, back.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&back).unwrap(),
        data,
        "copied out what was copied in"
    );
    assert_eq!(
        std::fs::read(&server.image).unwrap(),
        data,
        "the image holds it"
    );
}

#[test]
fn a_plain_client_is_refused() {
    let creds = TlsCreds::generate("plain");
    let server = tls_server(&creds, Kind::Tcp, true);
    let err = String::from_utf8_lossy(&qemu_io(&server, None, &["read 0 4k"]).stderr).into_owned();
    assert!(
        err.to_lowercase().contains("tls"),
        "qemu-io says why: {err}"
    );
    let plain = server.uri.replacen("nbds://", "nbd://", 1);
    fails("nbdinfo", &[&plain]);

    // By hand: every option before STARTTLS gets ERR_TLS_REQD; EXPORT_NAME closes the connection.
    let mut c = Client::new(server.connect());
    c.greeting(true);
    for option in [opt::LIST, opt::STRUCTURED_REPLY, opt::GO, 99] {
        let data = if option == opt::GO {
            Client::info_data("disk", &[])
        } else {
            Vec::new()
        };
        c.send_option(option, &data).unwrap();
        let reply = c.opt_reply().unwrap();
        assert_eq!(reply.kind, rep::ERR_TLS_REQD, "option {option}");
    }
    c.send_option(opt::EXPORT_NAME, b"disk").unwrap();
    assert!(
        c.opt_reply().is_err(),
        "EXPORT_NAME before TLS ends the connection"
    );
    // ABORT before TLS: refused too, and the connection ends.
    let mut c = Client::new(server.connect());
    c.greeting(true);
    c.send_option(opt::ABORT, &[]).unwrap();
    assert_eq!(c.opt_reply().unwrap().kind, rep::ERR_TLS_REQD);
    assert!(c.opt_reply().is_err(), "closed after ABORT");
}

#[test]
fn a_client_trusting_another_ca_refuses_the_server() {
    let creds = TlsCreds::generate("other-ca");
    let server = tls_server(&creds, Kind::Tcp, true);
    let out = qemu_io(&server, Some(&creds.client_other_ca()), &["read 0 4k"]);
    assert!(
        !out.status.success(),
        "qemu-io accepted a server it does not trust"
    );
    fails("nbdinfo", &[&libnbd_uri(&server, &creds.client_other_ca())]);
    // The server still serves a client that trusts it.
    ok("nbdinfo", &[&libnbd_uri(&server, &creds.client())]);
}

#[test]
fn clients_without_a_good_certificate_are_refused_unless_verify_peer_is_off() {
    let creds = TlsCreds::generate("verify");
    let strict = tls_server(&creds, Kind::Tcp, true);
    for dir in [creds.client_no_cert(), creds.client_stranger()] {
        fails("nbdinfo", &[&libnbd_uri(&strict, &dir)]);
    }
    // (qemu-io checks its own certificate against its CA file before connecting, so it cannot even
    // try with the stranger's: only the certificate-less client is QEMU's here.)
    let out = qemu_io(&strict, Some(&creds.client_no_cert()), &["read 0 4k"]);
    assert!(
        !out.status.success(),
        "a client without a certificate was accepted"
    );
    ok("nbdinfo", &[&libnbd_uri(&strict, &creds.client())]);

    let lax = tls_server(&creds, Kind::Tcp, false);
    for dir in [creds.client_no_cert(), creds.client_stranger()] {
        ok("nbdinfo", &[&libnbd_uri(&lax, &dir)]);
    }
    let out = qemu_io(
        &lax,
        Some(&creds.client_no_cert()),
        &["write -P 0x11 0 64k", "read -P 0x11 0 64k"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_credentials_fail_at_startup_not_at_the_first_client() {
    let dir = client::TempDir::new("no-creds");
    let result = examples::nbd::Server::bind(examples::nbd::Config {
        listen: examples::nbd::Listen::Tcp("127.0.0.1:0".parse().unwrap()),
        tls: Some(TlsConfig {
            creds_dir: dir.path("missing"),
            verify_peer: true,
        }),
        ..examples::nbd::Config::default()
    });
    let err = result.err().expect("bind refused");
    assert!(err.to_string().contains("server-cert.pem"), "{err}");
}
