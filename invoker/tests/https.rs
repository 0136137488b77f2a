//! https on the invoker's port with client certificates (contract §8), checked with curl (an
//! OpenSSL client, as ansible's `uri` readiness check is):
//!
//! - the files ansible deploys, made as `ansible/files/genssl.sh server` makes them (openssl:
//!   a self-signed v1 certificate, `pkcs12 -export`), served by the invoker's https loop; the
//!   client presents the server's own certificate and key, as ansible does;
//! - the invoker binary with a keystore of certificates generated here (rcgen): a CA, the
//!   server's certificate and a client's from it, and a client of another CA.
//!
//! With a trusted client certificate `/ping` answers 200 `pong`; without one, or with one from
//! another CA, the handshake is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, down, unique};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use openwhisk::settings::{HttpsSettings, KeystoreFlavor};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tokio_util::sync::CancellationToken;

/// What curl got: its exit code, the HTTP status (`000` when there was no response) and body.
#[derive(Debug)]
struct Answer {
    ok: bool,
    status: String,
    body: String,
}

/// `curl -k [--cert --key] https://127.0.0.1:<port>/ping` (`-k`: ansible's `validate_certs: no`).
fn ping(port: u16, client: Option<(&Path, &Path)>) -> Answer {
    let mut c = Command::new("curl");
    c.args(["-sk", "--max-time", "10", "-w", "\n%{http_code}"]);
    if let Some((cert, key)) = client {
        c.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = c
        .arg(format!("https://127.0.0.1:{port}/ping"))
        .stderr(Stdio::null())
        .output()
        .expect("curl (installed by scripts/stack.sh up)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Answer {
        ok: out.status.success(),
        status: status.to_owned(),
        body: body.to_owned(),
    }
}

fn assert_pong(a: &Answer) {
    assert!(a.ok && a.status == "200" && a.body == "pong", "{a:?}");
}

fn assert_refused(a: &Answer) {
    assert!(!a.ok && a.status == "000" && a.body.is_empty(), "{a:?}");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian's openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `genssl.sh <cn> server <dir> openwhisk invoker- generateKey`, command for command; `extra`
/// goes to `pkcs12 -export` (an older OpenSSL's encryption, say).
fn genssl_server(dir: &Path, extra: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let key = "invoker-openwhisk-server-key.pem";
    let csr = "invoker-openwhisk-server-request.csr";
    let cert = "invoker-openwhisk-server-cert.pem";
    let p12 = "invoker-openwhisk-keystore.p12";
    openssl(dir, &["genrsa", "-out", key, "2048"]);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            key,
            "-nodes",
            "-subj",
            "/C=US/ST=NY/L=Yorktown/O=OpenWhisk/CN=openwhisk-invokers",
            "-out",
            csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509", "-req", "-in", csr, "-signkey", key, "-out", cert, "-days", "365",
        ],
    );
    let mut export = vec![
        "pkcs12",
        "-export",
        "-name",
        "openwhisk-invokers",
        "-passout",
        "pass:openwhisk",
        "-in",
        cert,
        "-inkey",
        key,
        "-out",
        p12,
    ];
    export.extend_from_slice(extra);
    openssl(dir, &export);
    (dir.join(p12), dir.join(cert), dir.join(key))
}

/// A CA of the test's own.
fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate from `ca`: its DER and its key's PKCS#8 DER.
fn issue(
    ca: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    (params.signed_by(&key, &**ca).unwrap(), key)
}

/// A client certificate and key as PEM files for curl.
fn client_files(
    dir: &Path,
    name: &str,
    cert: &rcgen::Certificate,
    key: &KeyPair,
) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// The invoker's https loop with the keystore of `https` and a handler answering `pong`.
async fn serve(https: &HttpsSettings) -> (u16, CancellationToken) {
    let config = invoker::tls::server_config(https).expect("the keystore");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cancel = CancellationToken::new();
    tokio::spawn(invoker::server::serve_https(
        listener,
        tokio_rustls::TlsAcceptor::from(config),
        cancel.clone(),
        4,
        |req: hyper::Request<hyper::body::Incoming>| async move {
            let mut r = Response::new(Full::new(Bytes::from_static(b"pong")));
            if req.uri().path() != "/ping" {
                *r.status_mut() = StatusCode::NOT_FOUND;
            }
            r
        },
    ));
    (port, cancel)
}

async fn ping_async(port: u16, client: Option<(PathBuf, PathBuf)>) -> Answer {
    tokio::task::spawn_blocking(move || {
        ping(
            port,
            client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
    })
    .await
    .unwrap()
}

/// ansible's files: the keystore as `genssl.sh` makes it, the server's own certificate as the
/// client's (OpenSSL 3's default PKCS#12 encryption, AES-256 with PBKDF2, and the 3DES/SHA-1
/// one of older OpenSSL releases).
#[tokio::test]
async fn ansible_keystore_and_its_own_certificate_as_the_client() {
    for extra in [
        &[][..],
        &[
            "-keypbe",
            "PBE-SHA1-3DES",
            "-certpbe",
            "PBE-SHA1-3DES",
            "-macalg",
            "sha1",
        ],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (p12, cert, key) = genssl_server(dir.path(), extra);
        let https = HttpsSettings {
            keystore_path: p12,
            keystore_password: "openwhisk".into(),
            keystore_flavor: KeystoreFlavor::Pkcs12,
            client_auth: true,
        };
        let (port, cancel) = serve(&https).await;
        assert_pong(&ping_async(port, Some((cert.clone(), key.clone()))).await);
        assert_refused(&ping_async(port, None).await);
        let other = ca("another CA");
        let (c, k) = issue(&other, "guest", ExtendedKeyUsagePurpose::ClientAuth);
        let (c, k) = client_files(dir.path(), "other", &c, &k);
        assert_refused(&ping_async(port, Some((c, k))).await);
        cancel.cancel();

        // client-auth = false: no certificate asked for.
        let (port, cancel) = serve(&HttpsSettings {
            client_auth: false,
            ..https.clone()
        })
        .await;
        assert_pong(&ping_async(port, None).await);
        cancel.cancel();

        // The wrong password is named as such.
        let e = invoker::tls::server_config(&HttpsSettings {
            keystore_password: "not-it".into(),
            ..https
        })
        .unwrap_err();
        assert!(matches!(e, invoker::tls::TlsError::Pkcs12 { .. }), "{e}");
    }
}

/// A keystore with a CA's certificate as a trusted entry (`keytool -importcert`), the server's
/// key and chain from that CA, and a PEM file with the same key and chain.
fn rcgen_keystore(dir: &Path) -> (PathBuf, PathBuf, CertifiedIssuer<'static, KeyPair>) {
    let ca = ca("invoker test CA");
    let (server, server_key) = issue(
        &ca,
        "openwhisk-invokers",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let p12 = |der: &[u8]| p12_keystore::Certificate::from_der(der).unwrap();
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        "openwhisk-invokers",
        p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
            b"invoker".to_vec(),
            p12_keystore::PrivateKey::from_der(&server_key.serialize_der()).unwrap(),
            [p12(server.der()), p12(ca.der())],
        )),
    );
    store.add_entry(
        "caroot",
        p12_keystore::KeyStoreEntry::Certificate(p12(ca.der())),
    );
    let path = dir.join("invoker-openwhisk-keystore.p12");
    std::fs::write(&path, store.writer("openwhisk").write().unwrap()).unwrap();
    let pem = dir.join("invoker.pem");
    std::fs::write(
        &pem,
        format!("{}{}{}", server_key.serialize_pem(), server.pem(), ca.pem()),
    )
    .unwrap();
    (path, pem, ca)
}

/// A client certificate from the keystore's CA is trusted; the same checks with the PEM
/// flavour of the same key and chain.
#[tokio::test]
async fn a_client_certificate_from_the_keystores_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (p12, pem, ca) = rcgen_keystore(dir.path());
    let (c, k) = issue(&ca, "guest", ExtendedKeyUsagePurpose::ClientAuth);
    let good = client_files(dir.path(), "good", &c, &k);
    let (c, k) = issue(
        &self::ca("another CA"),
        "guest",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let other = client_files(dir.path(), "other", &c, &k);
    for (path, password, flavor) in [
        (p12, "openwhisk", KeystoreFlavor::Pkcs12),
        (pem, "unused", KeystoreFlavor::Pem),
    ] {
        let (port, cancel) = serve(&HttpsSettings {
            keystore_path: path,
            keystore_password: password.into(),
            keystore_flavor: flavor,
            client_auth: true,
        })
        .await;
        assert_pong(&ping_async(port, Some(good.clone())).await);
        assert_refused(&ping_async(port, None).await);
        assert_refused(&ping_async(port, Some(other.clone())).await);
        cancel.cancel();
    }
}

/// A keystore whose key is not the certificate's is refused at start, not at the first client.
#[test]
fn a_key_of_another_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("invoker test CA");
    let (server, _) = issue(
        &ca,
        "openwhisk-invokers",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let pem = dir.path().join("invoker.pem");
    let other_key = KeyPair::generate().unwrap();
    std::fs::write(
        &pem,
        format!("{}{}", other_key.serialize_pem(), server.pem()),
    )
    .unwrap();
    let e = invoker::tls::server_config(&HttpsSettings {
        keystore_path: pem,
        keystore_password: "unused".into(),
        keystore_flavor: KeystoreFlavor::Pem,
        client_auth: true,
    })
    .unwrap_err();
    assert!(
        matches!(e, invoker::tls::TlsError::KeyMismatch { .. }),
        "{e}"
    );
}

/// The invoker binary with `CONFIG_whisk_invoker_protocol=https` and the keystore keys as
/// ansible passes them: `/ping` over https with a client certificate, refused without one and
/// with one of another CA, and no plain http on the port.
#[test]
fn the_invoker_binary_serves_ping_over_https_with_client_certificates() {
    let stack = Stack::from_env();
    std::net::TcpStream::connect(stack.kafka_hosts.split(',').next().unwrap())
        .unwrap_or_else(|e| panic!("{}", down("kafka", e)));
    let dir = tempfile::tempdir().unwrap();
    let (p12, _, ca) = rcgen_keystore(dir.path());
    let (c, k) = issue(&ca, "guest", ExtendedKeyUsagePurpose::ClientAuth);
    let (good_cert, good_key) = client_files(dir.path(), "good", &c, &k);
    let (c, k) = issue(
        &self::ca("another CA"),
        "guest",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (other_cert, other_key) = client_files(dir.path(), "other", &c, &k);

    let port = testkit::invoker::free_port();
    let prefix = format!("{}-", unique("https"));
    let mut invoker =
        testkit::invoker::InvokerCommand::new(env!("CARGO_BIN_EXE_invoker"), &stack, 0, "https0")
            .topics_prefix(&prefix)
            .port(port)
            .env(
                "RUNTIMES_MANIFEST",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../runtimes/runtimes.json"),
            )
            .env("CONFIG_whisk_invoker_vm_allowAnnotation", "false")
            .env("CONFIG_whisk_invoker_protocol", "https")
            .env("CONFIG_whisk_invoker_https_keystorePath", &p12)
            .env("CONFIG_whisk_invoker_https_keystorePassword", "openwhisk")
            .env("CONFIG_whisk_invoker_https_keystoreFlavor", "PKCS12")
            .env("CONFIG_whisk_invoker_https_clientAuth", "true")
            .grace(Duration::from_secs(30))
            .spawn()
            .expect("start the invoker binary");

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(status)) = invoker.try_wait() {
            panic!("the invoker exited ({status}) before it served its port");
        }
        let a = ping(port, Some((&good_cert, &good_key)));
        if a.status == "200" {
            assert_pong(&a);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no https /ping within 90 s: {a:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_refused(&ping(port, None));
    assert_refused(&ping(port, Some((&other_cert, &other_key))));
    let plain = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://127.0.0.1:{port}/ping"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        "000",
        "plain http answered"
    );
    invoker.stop();
}
