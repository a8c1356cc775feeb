//! TLS: PEM loading and rustls configurations. TLS 1.3 only, mutual authentication, the `ring`
//! provider chosen explicitly (so no process-wide default has to be installed), optional CRLs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::role::{roles_from_cert_der, CertRoleError, Role};

/// Why TLS material could not be loaded or assembled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing of the wanted kind.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the material (key does not match certificate, bad CA …).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built (bad CA or CRL).
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The own certificate carries no role or not the one this process needs.
    #[error("own certificate {path}: {reason}")]
    OwnRole {
        /// The certificate file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A revocation list does not parse.
    #[error("certificate revocation list: {0}")]
    Crl(String),
}

fn pem_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Pem { path: path.to_owned(), reason: reason.to_string() }
}

/// All certificates in a PEM file (a private key in the same file is skipped).
///
/// # Errors
/// Unreadable file or no certificate in it.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, SEC1 or PKCS#1; the file may also hold certificates).
///
/// # Errors
/// Unreadable file or no key in it.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_err(path, format!("no usable private key: {e}")))
}

/// All CRLs in a PEM file.
///
/// # Errors
/// Unreadable file or no CRL in it.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if crls.is_empty() {
        return Err(pem_err(path, "no X509 CRL block found"));
    }
    Ok(crls)
}

/// Paths of the TLS material a process uses, as given on its command line.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    /// CA certificate(s) that sign every peer.
    pub ca: PathBuf,
    /// Own certificate (may also hold the key).
    pub cert: PathBuf,
    /// Own key; `None` means "in the certificate file".
    pub key: Option<PathBuf>,
    /// Revocation list, for the server.
    pub crl: Option<PathBuf>,
}

/// The TLS flags every Drover daemon takes (`--cacert`, `--cert`, `--key`).
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// CA certificate that signed every peer (`drover-cert ca` writes it as ca.pem).
    #[arg(long, value_name = "PEM")]
    pub cacert: PathBuf,
    /// This process's certificate (may also hold the key).
    #[arg(long, value_name = "PEM")]
    pub cert: PathBuf,
    /// This process's key; defaults to `<cert stem>-key.pem` beside the certificate, as
    /// drover-cert writes it (or the certificate file itself when no such file exists).
    #[arg(long, value_name = "PEM")]
    pub key: Option<PathBuf>,
}

#[cfg(feature = "cli")]
impl TlsArgs {
    /// The paths, with an optional CRL.
    pub fn paths(&self, crl: Option<PathBuf>) -> TlsPaths {
        TlsPaths { ca: self.cacert.clone(), cert: self.cert.clone(), key: self.key.clone(), crl }
    }
}

/// Where the key of `cert` is when no `--key` is given: `<stem>-key.pem` beside it (what
/// drover-cert writes for `<stem>.pem`) if that exists, else the certificate file itself (one
/// PEM holding both). One convention for the daemons and the CLI.
pub fn default_key_for(cert: &std::path::Path) -> PathBuf {
    let stem = cert.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let beside = cert.with_file_name(format!("{stem}-key.pem"));
    if beside.exists() {
        beside
    } else {
        cert.to_owned()
    }
}

/// Loaded TLS material.
#[derive(Debug)]
pub struct Identity {
    /// Trust anchors.
    pub ca: Vec<CertificateDer<'static>>,
    /// Own certificate chain (leaf first).
    pub chain: Vec<CertificateDer<'static>>,
    /// Own private key.
    pub key: PrivateKeyDer<'static>,
    /// Revocation lists.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Roles of the own certificate.
    pub roles: Role,
}

impl Identity {
    /// Loads everything `paths` names and reads the own certificate's roles.
    ///
    /// # Errors
    /// Any file unreadable or empty, or an own certificate without a role OID.
    pub fn load(paths: &TlsPaths) -> Result<Self, TlsError> {
        let ca = load_certs(&paths.ca)?;
        let chain = load_certs(&paths.cert)?;
        let key = match &paths.key {
            Some(key) => load_key(key)?,
            None => load_key(&default_key_for(&paths.cert))?,
        };
        let crls = match &paths.crl {
            Some(path) => load_crls(path)?,
            None => Vec::new(),
        };
        let roles = roles_from_cert_der(&chain[0])
            .map_err(|e: CertRoleError| TlsError::OwnRole { path: paths.cert.clone(), reason: e.to_string() })?;
        Ok(Self { ca, chain, key, crls, roles })
    }

    /// The UUID the own certificate was issued to, if it names one.
    ///
    /// # Errors
    /// The certificate names several identities, or one that is not a UUID.
    pub fn certified_uuid(&self) -> Result<Option<crate::Uuid>, CertRoleError> {
        self.chain.first().map_or(Ok(None), |leaf| crate::role::identity_from_cert_der(leaf))
    }

    /// Checks that the own certificate carries `role` (before anything is bound or dialled,
    /// so the operator learns of a wrong file at once).
    ///
    /// # Errors
    /// [`TlsError::OwnRole`].
    pub fn require_role(&self, role: Role, cert_path: &Path) -> Result<(), TlsError> {
        if self.roles.contains(role) {
            Ok(())
        } else {
            Err(TlsError::OwnRole {
                path: cert_path.to_owned(),
                reason: format!("carries role {} but this process needs {role}", self.roles),
            })
        }
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in &self.ca {
            roots.add(ca.clone())?;
        }
        Ok(Arc::new(roots))
    }
}

/// The crypto provider every Drover TLS configuration uses (ring, chosen explicitly so no
/// process-wide default has to be installed).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: TLS 1.3 only, a client certificate from the CA required, CRLs checked.
///
/// # Errors
/// Bad CA, CRL, certificate or key.
pub fn server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut verifier = WebPkiClientVerifier::builder_with_provider(identity.roots()?, provider());
    if !identity.crls.is_empty() {
        verifier = verifier.with_crls(identity.crls.iter().cloned());
    }
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier.build()?)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    Ok(Arc::new(config))
}

/// The certificates revocation lists name, as (issuer DN DER, serial) pairs, to check peers
/// that connected before a revocation (the TLS handshake checks new ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked(std::collections::HashSet<(Vec<u8>, Vec<u8>)>);

impl Revoked {
    /// Reads the revoked serials of `crls`.
    ///
    /// # Errors
    /// A list that does not parse.
    pub fn from_crls(crls: &[CertificateRevocationListDer<'_>]) -> Result<Self, TlsError> {
        let mut set = std::collections::HashSet::new();
        for crl in crls {
            let (_, parsed) = x509_parser::parse_x509_crl(crl).map_err(|e| TlsError::Crl(e.to_string()))?;
            let issuer = parsed.issuer().as_raw().to_vec();
            for revoked in parsed.iter_revoked_certificates() {
                set.insert((issuer.clone(), revoked.raw_serial().to_vec()));
            }
        }
        Ok(Self(set))
    }

    /// Whether the DER certificate `leaf` is revoked (an unparsable one counts as revoked).
    pub fn contains(&self, leaf: &[u8]) -> bool {
        match x509_parser::parse_x509_certificate(leaf) {
            Ok((_, cert)) => self.0.contains(&(cert.issuer().as_raw().to_vec(), cert.raw_serial().to_vec())),
            Err(_) => true,
        }
    }

    /// How many certificates are revoked.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The client side: TLS 1.3 only, the server verified against the CA, own certificate sent.
///
/// # Errors
/// Bad CA, certificate or key.
pub fn client_config(identity: &Identity) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(identity.roots()?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    Ok(Arc::new(config))
}

/// The client side for a connection to a peer known by its certificate's identity rather
/// than its address (one launcher to another, for a live migration). Launcher certificates
/// are client certificates, so the server's is verified as one: its chain against the CA and
/// CRLs, for client authentication, with no name; the caller checks its identity and role
/// ([`crate::role::cert_facts`]) once the handshake is done.
///
/// # Errors
/// Bad CA, CRL, certificate or key.
pub fn peer_client_config(identity: &Identity) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut verifier = WebPkiClientVerifier::builder_with_provider(identity.roots()?, provider());
    if !identity.crls.is_empty() {
        verifier = verifier.with_crls(identity.crls.iter().cloned());
    }
    let verifier = Arc::new(PeerAsClient(verifier.build()?));
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    Ok(Arc::new(config))
}

/// Verifies a server's certificate as the client certificate of a peer of the same cluster.
#[derive(Debug)]
struct PeerAsClient(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::client::danger::ServerCertVerifier for PeerAsClient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The name to verify the server's certificate against, from a `host:port` target: an IP
/// address SAN for a literal address, a DNS SAN otherwise.
///
/// # Errors
/// A host that is neither a valid DNS name nor an IP address.
pub fn server_name_for(target: &str) -> Result<ServerName<'static>, String> {
    let host = host_of(target);
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?} is not a DNS name or IP address: {e}"))
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
pub fn host_of(target: &str) -> &str {
    if let Some(rest) = target.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match target.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_found_beside_the_certificate_as_drover_cert_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("agent-node1.pem");
        assert_eq!(default_key_for(&cert), cert, "no key file: the certificate holds both");
        std::fs::write(dir.path().join("agent-node1-key.pem"), "").unwrap();
        assert_eq!(default_key_for(&cert), dir.path().join("agent-node1-key.pem"));
    }

    #[test]
    fn host_parsing() {
        assert_eq!(host_of("127.0.0.1:8888"), "127.0.0.1");
        assert_eq!(host_of("sched.example:8888"), "sched.example");
        assert_eq!(host_of("[::1]:8888"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
        assert!(matches!(server_name_for("127.0.0.1:1").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name_for("a.b:1").unwrap(), ServerName::DnsName(_)));
        assert!(server_name_for("bad host:1").is_err());
    }
}
