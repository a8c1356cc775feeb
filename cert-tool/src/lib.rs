//! `drover-cert`: a small certificate authority for a Drover cluster, in the manner of ciao-cert.
//!
//! A CA directory holds:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem` | the CA certificate (give it to every process as `--cacert`) |
//! | `ca-key.pem` | the CA key (mode 0600; keep it off the cluster if you can) |
//! | `crl.pem` | the revocation list (give it to the scheduler as `--crl`) |
//! | `revoked.txt` | serials revoked so far, one per line, from which `crl.pem` is rebuilt |
//! | `<role>-<name>.pem`, `<role>-<name>-key.pem` | issued certificates and their keys (0600) |
//!
//! Each issued certificate carries exactly one role OID (`1.3.6.1.4.1.343.8.N`, from
//! [`ssntp::role`]) next to `clientAuth` (controllers, agents) or `serverAuth` (the scheduler),
//! never anyExtendedKeyUsage, which rustls rejects. Keys are ECDSA P-256.
//!
//! # Layout
//! - [`create_ca`], [`issue`], [`revoke`], [`verify`], [`show`]: what the subcommands do.
//! - [`CertSpec`] and [`issue_spec`]: the full set of knobs, for tests that need deliberately
//!   bad certificates (expired, no role, anyEKU …).
//! - [`cli`]: the `drover-cert` command line.

#![forbid(unsafe_code)]

pub mod cli;

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use ssntp::role::{roles_from_cert_der, Role};
use time::{Duration, OffsetDateTime};

/// File name of the CA certificate in a CA directory.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA key.
pub const CA_KEY: &str = "ca-key.pem";
/// File name of the revocation list.
pub const CRL: &str = "crl.pem";
/// File name of the list of revoked serials.
pub const REVOKED: &str = "revoked.txt";

/// What went wrong, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// No CA in the directory.
    #[error("no CA in {0}: run `drover-cert ca --dir {0}` first")]
    NoCa(String),
    /// Refusing to overwrite an existing CA.
    #[error("{0} already exists; refusing to replace a CA (remove the directory to start over)")]
    CaExists(String),
    /// A `--host` value is neither a DNS name nor an IP address.
    #[error("host {0:?} is neither a DNS name nor an IP address")]
    BadHost(String),
    /// A certificate name with characters that do not belong in a file name.
    #[error("name {0:?} must be 1-64 characters of letters, digits, '.', '_' or '-'")]
    BadName(String),
    /// Validity of zero days or more than 100 years.
    #[error("--days must be between 1 and 36500, got {0}")]
    BadDays(u32),
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A file that should hold a certificate does not.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The certificate failed verification.
    #[error("verification failed: {0}")]
    Invalid(String),
}

type Result<T, E = CertError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io { path: path.display().to_string(), source }
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(io_err(path))
}

/// Writes a file readable by its owner only (keys) or by everyone (certificates).
fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mode = if private { 0o600 } else { 0o644 };
    let mut file =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(io_err(&tmp))?;
    file.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

fn check_days(days: u32) -> Result<()> {
    if (1..=36_500).contains(&days) {
        Ok(())
    } else {
        Err(CertError::BadDays(days))
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(CertError::BadName(name.to_owned()))
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand_bytes();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and without a leading zero byte, so the length is stable
    SerialNumber::from_slice(&bytes)
}

fn rand_bytes() -> [u8; 16] {
    // A fresh v4 UUID is 122 random bits from the OS generator: plenty for a serial.
    *ssntp::Uuid::new_v4().as_bytes()
}

/// Creates a CA (self-signed, P-256) in `dir`, with an empty CRL.
///
/// # Errors
/// An existing CA, a bad `days`, or file system errors.
pub fn create_ca(dir: &Path, name: &str, days: u32) -> Result<PathBuf> {
    check_days(days)?;
    let cert_path = dir.join(CA_CERT);
    if cert_path.exists() {
        return Err(CertError::CaExists(cert_path.display().to_string()));
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let key = KeyPair::generate()?;
    let params = ca_params(name, days);
    let cert = params.self_signed(&key)?;
    write_file(&dir.join(CA_KEY), &key.serialize_pem(), true)?;
    write_file(&cert_path, &cert.pem(), false)?;
    write_file(&dir.join(REVOKED), "", false)?;
    write_crl(dir)?;
    Ok(cert_path)
}

fn ca_params(name: &str, days: u32) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationName, "Drover cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(i64::from(days));
    params.serial_number = Some(random_serial());
    params.key_identifier_method = KeyIdMethod::Sha256;
    params
}

/// The CA of a directory, ready to sign.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

fn load_ca(dir: &Path) -> Result<Ca> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    if !cert_path.exists() || !key_path.exists() {
        return Err(CertError::NoCa(dir.display().to_string()));
    }
    let cert_pem = read(&cert_path)?;
    let key = KeyPair::from_pem(&read(&key_path)?)
        .map_err(|e| CertError::Parse { path: key_path.display().to_string(), reason: e.to_string() })?;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| CertError::Parse { path: cert_path.display().to_string(), reason: e.to_string() })?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
        .map_err(|e| CertError::Parse { path: cert_path.display().to_string(), reason: e.to_string() })?;
    Ok(Ca { issuer, der })
}

/// What `drover-cert issue` asks for.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The role (exactly one).
    pub role: Role,
    /// Name of the holder; the Common Name and part of the file names.
    pub name: String,
    /// DNS names and IP addresses clients may dial this holder by (the scheduler needs them).
    pub hosts: Vec<String>,
    /// IP addresses (as ciao-cert's `-ip`).
    pub ips: Vec<IpAddr>,
    /// Organizations: tenants an API user may act for, or `admin`.
    pub orgs: Vec<String>,
    /// Validity in days.
    pub days: u32,
    /// The UUID a client certificate is issued to (a new one when `None`); a server's
    /// certificate names none.
    pub uuid: Option<ssntp::Uuid>,
}

/// Every knob of an issued certificate, including ones the CLI never turns (for tests).
#[derive(Debug, Clone)]
pub struct CertSpec {
    /// Common Name.
    pub name: String,
    /// Role OIDs to include (empty: none, a certificate every server must refuse).
    pub roles: Vec<Role>,
    /// Include `clientAuth`.
    pub client_auth: bool,
    /// Include `serverAuth`.
    pub server_auth: bool,
    /// Include anyExtendedKeyUsage (ciao's recipe; rustls refuses it).
    pub any_eku: bool,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// Organizations.
    pub orgs: Vec<String>,
    /// The identity (a `urn:uuid:` URI SAN) the holder must claim.
    pub identity: Option<ssntp::Uuid>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl CertSpec {
    /// The spec `drover-cert issue` uses for a request.
    ///
    /// # Errors
    /// A bad name, host, days value, or a role set that is not exactly one role.
    pub fn from_request(req: &IssueRequest) -> Result<Self> {
        check_name(&req.name)?;
        for org in &req.orgs {
            check_name(org)?;
        }
        check_days(req.days)?;
        let mut dns = Vec::new();
        let mut ips = req.ips.clone();
        for host in &req.hosts {
            if let Ok(ip) = host.parse::<IpAddr>() {
                ips.push(ip);
            } else if matches!(ServerName::try_from(host.as_str()), Ok(ServerName::DnsName(_))) {
                dns.push(host.clone());
            } else {
                return Err(CertError::BadHost(host.clone()));
            }
        }
        let server = req.role.intersects(Role::SCHEDULER | Role::SERVER);
        if req.role.contains(Role::CONTROLLER) && !req.orgs.is_empty() {
            return Err(CertError::Invalid(
                "a controller certificate is the controller daemon's and names no tenants; \
                 API users get --role user (with --org for their tenants, or --org admin)"
                    .into(),
            ));
        }
        if server && req.uuid.is_some() {
            return Err(CertError::Invalid("--uuid names a client's identity; servers have none".into()));
        }
        let identity = (!server).then(|| req.uuid.unwrap_or_else(ssntp::Uuid::new_v4));
        let now = OffsetDateTime::now_utc();
        Ok(Self {
            name: req.name.clone(),
            roles: vec![req.role],
            client_auth: !server,
            server_auth: server,
            any_eku: false,
            dns,
            ips,
            orgs: req.orgs.clone(),
            identity,
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(i64::from(req.days)),
        })
    }

    fn params(&self) -> Result<CertificateParams> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, self.name.as_str());
        // rcgen keeps one value per attribute type, so several tenants share one O value,
        // comma-separated; readers split it (and also accept several O attributes).
        if !self.orgs.is_empty() {
            params.distinguished_name.push(DnType::OrganizationName, self.orgs.join(","));
        }
        for dns in &self.dns {
            let name = dns.clone().try_into().map_err(|_| CertError::BadHost(dns.clone()))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params.subject_alt_names.extend(self.ips.iter().copied().map(SanType::IpAddress));
        if let Some(uuid) = self.identity {
            let uri = format!("{}{uuid}", ssntp::role::IDENTITY_URI_PREFIX);
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().map_err(|_| CertError::Invalid("identity URI".into()))?));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if self.client_auth {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        if self.server_auth {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if self.any_eku {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::Any);
        }
        for role in &self.roles {
            for single in role.iter() {
                let oid = single.oid().expect("single roles have an OID");
                params.extended_key_usages.push(ExtendedKeyUsagePurpose::Other(oid));
            }
        }
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

/// Paths of an issued certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The key (PEM, mode 0600).
    pub key: PathBuf,
}

/// Issues a role certificate signed by the CA in `dir`; files `<role>-<name>.pem` and
/// `<role>-<name>-key.pem`.
///
/// # Errors
/// No CA, a bad request, or file system errors.
pub fn issue(dir: &Path, req: &IssueRequest) -> Result<Issued> {
    if req.role.iter().count() != 1 || req.role.bits() & !0x7f != 0 {
        return Err(CertError::Invalid(format!("a certificate carries exactly one role, got {}", req.role)));
    }
    let spec = CertSpec::from_request(req)?;
    issue_spec(dir, &spec, &format!("{}-{}", req.role, req.name))
}

/// Issues a certificate from a full spec into `<dir>/<stem>.pem` and `<stem>-key.pem`.
///
/// # Errors
/// No CA, a bad spec, or file system errors.
pub fn issue_spec(dir: &Path, spec: &CertSpec, stem: &str) -> Result<Issued> {
    check_name(stem)?;
    let ca = load_ca(dir)?;
    let key = KeyPair::generate()?;
    let cert = spec.params()?.signed_by(&key, &ca.issuer)?;
    let issued = Issued { cert: dir.join(format!("{stem}.pem")), key: dir.join(format!("{stem}-key.pem")) };
    write_file(&issued.key, &key.serialize_pem(), true)?;
    write_file(&issued.cert, &cert.pem(), false)?;
    Ok(issued)
}

/// What `show` prints about a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial, hex.
    pub serial: String,
    /// Roles from the role OIDs (none when it carries none).
    pub roles: Role,
    /// Standard extended key usages present (`clientAuth`, `serverAuth`, `any`).
    pub usages: Vec<&'static str>,
    /// Subject alternative names.
    pub sans: Vec<String>,
    /// Organizations (tenants).
    pub orgs: Vec<String>,
    /// The UUID it was issued to, if it names one.
    pub identity: Option<ssntp::Uuid>,
    /// Start of validity.
    pub not_before: String,
    /// End of validity.
    pub not_after: String,
    /// Whether it is a CA.
    pub is_ca: bool,
    /// SHA-256 of the SubjectPublicKeyInfo, colon-separated hex (ciao's `FingerPrint`).
    pub spki_sha256: String,
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "subject:     {}", self.subject)?;
        writeln!(f, "issuer:      {}", self.issuer)?;
        writeln!(f, "serial:      {}", self.serial)?;
        writeln!(f, "is CA:       {}", self.is_ca)?;
        writeln!(f, "role:        {}", self.roles)?;
        writeln!(f, "usages:      {}", self.usages.join(", "))?;
        writeln!(
            f,
            "organization:{}",
            if self.orgs.is_empty() { String::new() } else { format!(" {}", self.orgs.join(", ")) }
        )?;
        writeln!(f, "SANs:        {}", self.sans.join(", "))?;
        writeln!(
            f,
            "identity:    {}",
            self.identity
                .map_or_else(|| "none (minted before identities; issue it again)".to_owned(), |u| u.to_string())
        )?;
        writeln!(f, "not before:  {}", self.not_before)?;
        writeln!(f, "not after:   {}", self.not_after)?;
        write!(f, "SPKI SHA256: {}", self.spki_sha256)
    }
}

fn load_cert_der(path: &Path) -> Result<CertificateDer<'static>> {
    let pem = read(path)?;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| CertError::Parse { path: path.display().to_string(), reason: format!("no certificate: {e}") })
}

/// Reads a certificate file.
///
/// # Errors
/// Unreadable or unparsable file.
pub fn show(path: &Path) -> Result<CertInfo> {
    let der = load_cert_der(path)?;
    info(&der).map_err(|reason| CertError::Parse { path: path.display().to_string(), reason })
}

/// Reads a DER certificate (as a TLS peer presented it).
///
/// # Errors
/// Not a certificate.
pub fn inspect(der: &[u8]) -> Result<CertInfo, String> {
    info(der)
}

fn info(der: &[u8]) -> Result<CertInfo, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut usages = Vec::new();
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        if eku.value.client_auth {
            usages.push("clientAuth");
        }
        if eku.value.server_auth {
            usages.push("serverAuth");
        }
        if eku.value.any {
            usages.push("anyExtendedKeyUsage");
        }
    }
    let mut sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).map(IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*bytes).map(IpAddr::from).ok(),
                        _ => None,
                    };
                    sans.push(ip.map_or_else(|| "IP:?".into(), |ip| format!("IP:{ip}")));
                }
                GeneralName::URI(uri) => sans.push(format!("URI:{uri}")),
                other => sans.push(format!("{other:?}")),
            }
        }
    }
    let orgs = cert
        .subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .flat_map(|o| o.split(','))
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    let digest = Sha256::digest(cert.public_key().raw);
    let spki_sha256 = digest.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        roles: roles_from_cert_der(der).unwrap_or(Role::NONE),
        usages,
        sans,
        orgs,
        identity: ssntp::role::identity_from_cert_der(der).ok().flatten(),
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
        is_ca: cert.is_ca(),
        spki_sha256,
    })
}

fn crls_of(dir: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let path = dir.join(CRL);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let pem = read(&path)?;
    let crl = CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| CertError::Parse { path: path.display().to_string(), reason: e.to_string() })?;
    Ok(vec![crl])
}

/// Verifies a certificate against the CA in `dir`: signature, validity now, revocation (when
/// the directory has a CRL), the extended key usage its role needs, and a role OID — the same
/// checks the scheduler and clients make.
///
/// # Errors
/// [`CertError::Invalid`] with the reason, or file errors.
pub fn verify(dir: &Path, path: &Path) -> Result<CertInfo> {
    let ca = load_ca(dir)?;
    let der = load_cert_der(path)?;
    let info = info(&der).map_err(|reason| CertError::Parse { path: path.display().to_string(), reason })?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).map_err(|e| CertError::Invalid(e.to_string()))?;
    let roots = Arc::new(roots);
    let crls = crls_of(dir)?;
    let now = UnixTime::now();
    if info.usages.contains(&"serverAuth") {
        let name = info
            .sans
            .iter()
            .find_map(|s| s.strip_prefix("DNS:").or_else(|| s.strip_prefix("IP:")))
            .ok_or_else(|| CertError::Invalid("a serverAuth certificate needs a DNS or IP SAN".into()))?;
        let name = ServerName::try_from(name.to_owned()).map_err(|e| CertError::Invalid(e.to_string()))?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), ssntp::tls::provider())
                .with_crls(crls.clone())
                .build()
                .map_err(|e| CertError::Invalid(e.to_string()))?;
        verifier.verify_server_cert(&der, &[], &name, &[], now).map_err(|e| CertError::Invalid(e.to_string()))?;
    } else {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, ssntp::tls::provider())
            .with_crls(crls)
            .build()
            .map_err(|e| CertError::Invalid(e.to_string()))?;
        verifier.verify_client_cert(&der, &[], now).map_err(|e| CertError::Invalid(e.to_string()))?;
    }
    roles_from_cert_der(&der).map_err(|e| CertError::Invalid(e.to_string()))?;
    Ok(info)
}

/// Revokes a certificate issued by the CA in `dir` and rewrites `crl.pem`. Revoking twice is
/// harmless. Returns the CRL path.
///
/// # Errors
/// No CA, a certificate from another CA, or file errors.
pub fn revoke(dir: &Path, path: &Path) -> Result<PathBuf> {
    let ca = load_ca(dir)?;
    let der = load_cert_der(path)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| CertError::Parse { path: path.display().to_string(), reason: e.to_string() })?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca.der)
        .map_err(|e| CertError::Parse { path: CA_CERT.into(), reason: e.to_string() })?;
    if cert.issuer() != ca_cert.subject() {
        return Err(CertError::Invalid(format!(
            "{} was issued by {}, not by this CA ({})",
            path.display(),
            cert.issuer(),
            ca_cert.subject()
        )));
    }
    let serial = hex(cert.raw_serial());
    let revoked_path = dir.join(REVOKED);
    let mut revoked = if revoked_path.exists() { read(&revoked_path)? } else { String::new() };
    if !revoked.lines().any(|line| line.split_whitespace().next() == Some(serial.as_str())) {
        revoked.push_str(&format!("{serial} {}\n", cert.subject()));
        write_file(&revoked_path, &revoked, false)?;
    }
    write_crl(dir)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

/// Rebuilds `crl.pem` from `revoked.txt`.
fn write_crl(dir: &Path) -> Result<PathBuf> {
    let ca = load_ca(dir)?;
    let revoked_path = dir.join(REVOKED);
    let listed = if revoked_path.exists() { read(&revoked_path)? } else { String::new() };
    let now = OffsetDateTime::now_utc();
    let mut revoked_certs = Vec::new();
    for line in listed.lines() {
        let Some(serial) = line.split_whitespace().next().and_then(unhex) else { continue };
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
    }
    // The CRL number must grow with every new list; seconds since the epoch do.
    let number = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(365),
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&ca.issuer)?;
    let path = dir.join(CRL);
    write_file(&path, &crl.pem()?, false)?;
    Ok(path)
}
