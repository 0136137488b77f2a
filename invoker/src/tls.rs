//! https on the invoker's port (`whisk.invoker.protocol = https`, contract §8), as the Scala
//! invoker sets it up (`org.apache.openwhisk.common.Https`): the keystore holds the server's key
//! and certificate chain and is the trust store too, and with `client-auth = true` every client
//! must present a certificate it trusts.
//!
//! What a Java trust store made from a keystore trusts, and so what is trusted here: the first
//! certificate of each key entry (the server's own) and the keystore's trusted-certificate
//! entries (PKCS#12 certificates carrying Java's trust attribute, as `keytool -importcert`
//! writes them). A client is accepted when it presents one of those certificates itself
//! (ansible's readiness check presents the server's own, `invoker-openwhisk-server-cert.pem`),
//! or one that chains to one of them.
//!
//! ansible's `genssl.sh` makes the server certificate with `openssl x509 -req -signkey`, which
//! OpenSSL 3 writes as an X.509 **v1** certificate. webpki (rustls's verifier) takes v1
//! certificates as trust anchors but not as a client's certificate, while Java's accepts a
//! client certificate that is itself a trust anchor. So a presented certificate equal, byte for
//! byte, to a trusted one is accepted as such, and its handshake signature is checked with the
//! public key read from it; any other goes through webpki.
//!
//! Formats (`keystore-flavor`): PKCS12 (what ansible deploys: `openssl pkcs12 -export`, the
//! OpenSSL 3 AES/PBKDF2 encryption and the legacy 3DES/RC2 one); JKS only when the file is in
//! fact PKCS#12 (Java 9 and later read such a file under either flavor), a real JKS file is
//! refused with the `keytool` command that converts it; PEM (ours): the key and the chain in
//! one file, every certificate in it trusted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openwhisk::settings::{HttpsSettings, KeystoreFlavor};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("keystore {path}: cannot read")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("keystore {path}: not a PKCS#12 keystore this password opens")]
    Pkcs12 {
        path: PathBuf,
        #[source]
        source: p12_keystore::error::Error,
    },
    #[error(
        "keystore {path}: a JKS keystore cannot be read; convert it with `keytool -importkeystore -srckeystore {path} -destkeystore invoker.p12 -deststoretype PKCS12` and set keystore-flavor = PKCS12"
    )]
    Jks { path: PathBuf },
    #[error("keystore {path}: PEM")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("keystore {path}: no private key with a certificate")]
    NoKey { path: PathBuf },
    #[error("keystore {path}: the private key does not belong to the first certificate")]
    KeyMismatch { path: PathBuf },
    #[error("keystore {path}: the key or a certificate cannot be used")]
    Unusable {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("keystore {path}: no certificate to check client certificates against")]
    NoTrusted {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// What a keystore holds for the server.
#[derive(Debug)]
pub struct Keystore {
    /// The server's certificate first, then its issuers.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The certificates client certificates are checked against.
    pub trusted: Vec<CertificateDer<'static>>,
}

/// Reads the keystore of `https` (blocking: file reads and the key derivation of PKCS#12).
pub fn load(https: &HttpsSettings) -> Result<Keystore, TlsError> {
    let path = https.keystore_path.as_path();
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    match https.keystore_flavor {
        KeystoreFlavor::Pkcs12 => pkcs12(path, &data, https.keystore_password.expose()),
        // JKS and JCEKS magic numbers.
        KeystoreFlavor::Jks
            if data.starts_with(&[0xfe, 0xed, 0xfe, 0xed])
                || data.starts_with(&[0xce, 0xce, 0xce, 0xce]) =>
        {
            Err(TlsError::Jks {
                path: path.to_owned(),
            })
        }
        KeystoreFlavor::Jks => pkcs12(path, &data, https.keystore_password.expose()),
        KeystoreFlavor::Pem => pem(path, &data),
    }
}

fn pkcs12(path: &Path, data: &[u8], password: &str) -> Result<Keystore, TlsError> {
    use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};
    // Strict: key entries with their chains, and only the certificates Java takes as trusted
    // entries.
    let store =
        KeyStore::from_pkcs12(data, password, Pkcs12ImportPolicy::Strict).map_err(|source| {
            TlsError::Pkcs12 {
                path: path.to_owned(),
                source,
            }
        })?;
    let der = |c: &p12_keystore::Certificate| CertificateDer::from(c.as_der().to_vec());
    let mut server = None;
    let mut trusted = Vec::new();
    // In alias order, as Java lists them; the first key entry serves.
    for (_, entry) in store.entries() {
        match entry {
            KeyStoreEntry::PrivateKeyChain(chain) if !chain.certs().is_empty() => {
                trusted.push(der(&chain.certs()[0]));
                if server.is_none() {
                    server = Some((
                        chain.certs().iter().map(der).collect::<Vec<_>>(),
                        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                            chain.key().as_der().to_vec(),
                        )),
                    ));
                }
            }
            KeyStoreEntry::Certificate(c) => trusted.push(der(c)),
            _ => {}
        }
    }
    let (chain, key) = server.ok_or_else(|| TlsError::NoKey {
        path: path.to_owned(),
    })?;
    Ok(Keystore {
        chain,
        key,
        trusted,
    })
}

fn pem(path: &Path, data: &[u8]) -> Result<Keystore, TlsError> {
    let pem_error = |source| TlsError::Pem {
        path: path.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_slice_iter(data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    let key = match PrivateKeyDer::from_pem_slice(data) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(pem_error(e)),
    };
    if chain.is_empty() {
        return Err(TlsError::NoKey {
            path: path.to_owned(),
        });
    }
    Ok(Keystore {
        trusted: chain.clone(),
        chain,
        key,
    })
}

/// The rustls configuration of the invoker's port from the keystore of `https`.
pub fn server_config(https: &HttpsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let keystore = load(https)?;
    config(&https.keystore_path, keystore, https.client_auth)
}

fn config(
    path: &Path,
    keystore: Keystore,
    client_auth: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let unusable = |source| TlsError::Unusable {
        path: path.to_owned(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(unusable)?;
    let builder = if client_auth {
        let verifier = KeystoreClientVerifier::new(path, keystore.trusted, &provider)?;
        builder.with_client_cert_verifier(Arc::new(verifier))
    } else {
        builder.with_no_client_auth()
    };
    let key = provider
        .key_provider
        .load_private_key(keystore.key)
        .map_err(unusable)?;
    let certified = CertifiedKey::new(keystore.chain, key);
    // Any other outcome passes: a v1 certificate cannot be compared (webpki does not parse it
    // as an end entity), and a mismatch would show in the first handshake.
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        return Err(TlsError::KeyMismatch {
            path: path.to_owned(),
        });
    }
    let mut config = builder.with_cert_resolver(Arc::new(OneCertificate(Arc::new(certified))));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The keystore's key and chain for every client (`with_single_cert` would refuse a v1
/// certificate, which it cannot compare with the key).
#[derive(Debug)]
struct OneCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Client certificates as Java's trust manager over the keystore checks them: a trusted
/// certificate itself, or one webpki chains to a trusted certificate.
#[derive(Debug)]
struct KeystoreClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    trusted: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl KeystoreClientVerifier {
    fn new(
        path: &Path,
        trusted: Vec<CertificateDer<'static>>,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in &trusted {
            roots
                .add(cert.clone())
                .map_err(|source| TlsError::Unusable {
                    path: path.to_owned(),
                    source,
                })?;
        }
        let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|source| TlsError::NoTrusted {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            webpki,
            trusted,
            algorithms: provider.signature_verification_algorithms,
        })
    }

    fn is_trusted(&self, cert: &CertificateDer<'_>) -> bool {
        self.trusted.iter().any(|t| t.as_ref() == cert.as_ref())
    }
}

impl ClientCertVerifier for KeystoreClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.is_trusted(end_entity) {
            return Ok(ClientCertVerified::assertion());
        }
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if self.is_trusted(cert) {
            return verify_with_key_of(message, cert, dss, &self.algorithms);
        }
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if self.is_trusted(cert) {
            if !tls13_scheme(dss.scheme) {
                return Err(
                    rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into(),
                );
            }
            return verify_with_key_of(message, cert, dss, &self.algorithms);
        }
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The schemes TLS 1.3 allows for a CertificateVerify (RFC 8446 §4.2.3: no PKCS#1 v1.5, no
/// SHA-1).
fn tls13_scheme(scheme: SignatureScheme) -> bool {
    use SignatureScheme as S;
    matches!(
        scheme,
        S::ECDSA_NISTP256_SHA256
            | S::ECDSA_NISTP384_SHA384
            | S::ECDSA_NISTP521_SHA512
            | S::RSA_PSS_SHA256
            | S::RSA_PSS_SHA384
            | S::RSA_PSS_SHA512
            | S::ED25519
            | S::ED448
    )
}

/// A handshake signature checked with the public key of `cert`, which may be a v1 certificate
/// (read as a trust anchor is, which takes v1).
fn verify_with_key_of(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let bad = || rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature);
    let anchor = webpki::anchor_from_trusted_cert(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    // subjectPublicKeyInfo's contents: AlgorithmIdentifier, then the key as a BIT STRING.
    let spki = anchor.subject_public_key_info.as_ref();
    let (algorithm, rest) = der_item(spki, 0x30).ok_or_else(bad)?;
    let (bits, _) = der_item(rest, 0x03).ok_or_else(bad)?;
    let key = match bits.split_first() {
        Some((0, key)) => key,
        _ => return Err(bad()),
    };
    let candidates = algorithms
        .mapping
        .iter()
        .filter(|(scheme, _)| *scheme == dss.scheme)
        .flat_map(|(_, algs)| algs.iter());
    for alg in candidates {
        if alg.public_key_alg_id().as_ref() == algorithm
            && alg.verify_signature(key, message, dss.signature()).is_ok()
        {
            return Ok(HandshakeSignatureValid::assertion());
        }
    }
    Err(bad())
}

/// The contents of the DER item with `tag` at the start of `input`, and what follows it.
fn der_item(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_items_short_and_long_lengths() {
        assert_eq!(
            der_item(&[0x30, 0x01, 0xaa, 0xbb], 0x30),
            Some((&[0xaa][..], &[0xbb][..]))
        );
        let long = [&[0x03, 0x81, 0x02][..], &[0x00, 0x01]].concat();
        assert_eq!(der_item(&long, 0x03), Some((&[0x00, 0x01][..], &[][..])));
        assert_eq!(
            der_item(&[0x30, 0x05, 0x00], 0x30),
            None,
            "shorter than its length"
        );
        assert_eq!(der_item(&[0x31, 0x00], 0x30), None, "another tag");
    }

    #[test]
    fn a_missing_keystore_is_named() {
        let https = HttpsSettings {
            keystore_path: "/nonexistent/invoker-openwhisk-keystore.p12".into(),
            keystore_password: "openwhisk".into(),
            keystore_flavor: KeystoreFlavor::Pkcs12,
            client_auth: true,
        };
        let e = server_config(&https).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
        assert!(
            e.to_string().contains("invoker-openwhisk-keystore.p12"),
            "{e}"
        );
    }

    #[test]
    fn a_jks_file_is_refused_with_the_conversion() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore.jks");
        std::fs::write(&path, [0xfe, 0xed, 0xfe, 0xed, 0, 0, 0, 2]).unwrap();
        let https = HttpsSettings {
            keystore_path: path,
            keystore_password: "openwhisk".into(),
            keystore_flavor: KeystoreFlavor::Jks,
            client_auth: true,
        };
        let e = load(&https).unwrap_err();
        assert!(matches!(e, TlsError::Jks { .. }), "{e}");
        assert!(e.to_string().contains("keytool -importkeystore"), "{e}");
    }
}
