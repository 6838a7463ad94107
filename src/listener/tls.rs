//! TLS on the listener with rustls: TLS 1.3 and 1.2 only, HTTP/2 and HTTP/1.1 by ALPN, optional
//! client certificates (mutual TLS) from one CA, and the certificate reloaded on `SIGHUP`
//! without dropping open connections (PCI DSS v4.0 4.2.1; OWASP ASVS 12.x).
//!
//! Invariant: an open connection keeps the configuration it was accepted with; a reload only
//! changes what new handshakes get, and a failed reload keeps the old configuration serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto, version};

/// Where the certificate, its key and the client CA are read from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first (`CUSTODIA_TLS_CERT`).
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 or SEC1 (`CUSTODIA_TLS_KEY`).
    pub key: PathBuf,
    /// PEM CA certificates whose client certificates are accepted; with it, a client without
    /// one is refused during the handshake (`CUSTODIA_TLS_CLIENT_CA`).
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (RFC 5280 §5) of the client CA, each file PEM (one or more
    /// `X509 CRL` blocks) or DER; a client whose certificate one of them lists is refused
    /// during the handshake (`CUSTODIA_TLS_CLIENT_CRL`, comma-separated). Only with `client_ca`.
    pub client_crls: Vec<PathBuf>,
}

/// A TLS set-up problem. Messages name the file and never quote key material.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// The listener's TLS configuration, swappable on reload.
pub struct Tls {
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads and checks the files: the chain parses, every certificate in it is within its
    /// validity period, the key matches the leaf, the client CA and its CRLs parse.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let config = server_config(&files)?;
        Ok(Tls { files, config: RwLock::new(Arc::new(config)) })
    }

    /// Reads the files again; new handshakes use the new certificate, open connections keep
    /// theirs. On an error the old configuration stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files)?;
        *self.config.write().map_err(|_| TlsError("TLS configuration lock poisoned".into()))? =
            Arc::new(config);
        Ok(())
    }

    /// An acceptor for the next handshake, with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config =
            self.config.read().map(|c| Arc::clone(&c)).unwrap_or_else(|p| Arc::clone(&p.into_inner()));
        TlsAcceptor::from(config)
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = certificates(&files.cert)?;
    for (position, cert) in chain.iter().enumerate() {
        check_validity(&files.cert, position, cert)?;
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        TlsError(format!(
            "CUSTODIA_TLS_KEY {}: no usable PEM private key ({})",
            files.key.display(),
            pem_reason(&e)
        ))
    })?;
    let provider = Arc::new(crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| TlsError(format!("TLS protocol versions: {e}")))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert).map_err(|e| {
                    TlsError(format!(
                        "CUSTODIA_TLS_CLIENT_CA {}: not a usable CA certificate: {e}",
                        ca.display()
                    ))
                })?;
            }
            let mut crls = Vec::new();
            for path in &files.client_crls {
                crls.extend(revocation_lists(path)?);
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(crls)
                .build()
                .map_err(|e| {
                    let crl_files: Vec<String> =
                        files.client_crls.iter().map(|p| p.display().to_string()).collect();
                    TlsError(format!(
                        "CUSTODIA_TLS_CLIENT_CA {} with CUSTODIA_TLS_CLIENT_CRL {}: {e}",
                        ca.display(),
                        crl_files.join(",")
                    ))
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None if !files.client_crls.is_empty() => {
            return Err(TlsError("CUSTODIA_TLS_CLIENT_CRL needs CUSTODIA_TLS_CLIENT_CA".into()));
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError(format!(
            "CUSTODIA_TLS_KEY {} does not fit the certificate in {} ({e})",
            files.key.display(),
            files.cert.display()
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unusable = |why: String| TlsError(format!("{}: no usable PEM certificate ({why})", path.display()));
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| unusable(pem_reason(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(pem_reason(&e)))?;
    if chain.is_empty() {
        return Err(unusable("the file holds no CERTIFICATE block".into()));
    }
    Ok(chain)
}

/// The CRLs in `path`: PEM `X509 CRL` blocks, or, when the file holds none, one DER CRL.
/// Their signatures and contents are checked by the verifier built from them.
fn revocation_lists(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let fail = |why: String| TlsError(format!("CUSTODIA_TLS_CLIENT_CRL {}: {why}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let pem = CertificateRevocationListDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>();
    match pem {
        Ok(crls) if !crls.is_empty() => Ok(crls),
        // Not PEM: DER is a SEQUENCE (0x30).
        Ok(_) | Err(_) if bytes.first() == Some(&0x30) => Ok(vec![CertificateRevocationListDer::from(bytes)]),
        Ok(_) => Err(fail("no X509 CRL block, and not a DER CRL".into())),
        Err(e) => Err(fail(format!("no usable PEM CRL ({})", pem_reason(&e)))),
    }
}

/// Refuses a certificate of the chain (`position` 0 is the leaf) outside its validity period
/// (RFC 5280 §4.1.2.5): an expired intermediate fails every client as surely as an expired
/// leaf. The message names the file, the position and the subject, never key material.
fn check_validity(path: &Path, position: usize, der: &CertificateDer<'_>) -> Result<(), TlsError> {
    let which = |subject: &str| {
        let role = if position == 0 { "leaf" } else { "chain" };
        format!("certificate {} ({role}, subject \"{subject}\")", position + 1)
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| TlsError(format!("{}: {} does not parse: {e}", path.display(), which("unknown"))))?;
    let subject = cert.subject().to_string();
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    if validity.not_after < now {
        return Err(TlsError(format!(
            "{}: {} expired on {}",
            path.display(),
            which(&subject),
            validity.not_after
        )));
    }
    if validity.not_before > now {
        return Err(TlsError(format!(
            "{}: {} is not valid before {}",
            path.display(),
            which(&subject),
            validity.not_before
        )));
    }
    Ok(())
}

/// The reason of a PEM error without file contents.
fn pem_reason(e: &tokio_rustls::rustls::pki_types::pem::Error) -> String {
    use tokio_rustls::rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no matching PEM block".into(),
        _ => "malformed PEM".into(),
    }
}
