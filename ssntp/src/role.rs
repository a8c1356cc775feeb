//! Roles: the u32 bitmask on the wire, the extended-key-usage OIDs in certificates, and reading
//! a peer's roles from its certificate.
//!
//! The mapping lives here and only here; `drover-cert` uses it to mint certificates and the
//! server and client use it to check peers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A set of SSNTP roles (ciao's bitmask values).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Role(u32);

/// OID arc under which role OIDs live: `1.3.6.1.4.1.343.8.N` (ciao's, kept for recognition).
pub const ROLE_OID_ARC: [u64; 8] = [1, 3, 6, 1, 4, 1, 343, 8];

impl Role {
    /// No role at all.
    pub const NONE: Self = Self(0);
    /// Generic SSNTP server (ciao's; unused by Drover's binaries).
    pub const SERVER: Self = Self(0x01);
    /// `drover-controller`.
    pub const CONTROLLER: Self = Self(0x02);
    /// `drover-launcher`: a compute node agent.
    pub const AGENT: Self = Self(0x04);
    /// `drover-scheduler`: the only server in a Drover cluster.
    pub const SCHEDULER: Self = Self(0x08);
    /// Networking agent (ciao's; reserved).
    pub const NETAGENT: Self = Self(0x10);
    /// CNCI agent (ciao's; reserved).
    pub const CNCIAGENT: Self = Self(0x20);
    /// A person using the API (`drover`): accepted by the controller's API, never by the
    /// scheduler. Drover's own; not a ciao role.
    pub const USER: Self = Self(0x40);

    /// Every single role with its name, its bit and the last arc of its OID.
    pub const TABLE: [(Self, &'static str, u64); 7] = [
        (Self::AGENT, "agent", 1),
        (Self::SCHEDULER, "scheduler", 2),
        (Self::CONTROLLER, "controller", 3),
        (Self::NETAGENT, "netagent", 4),
        (Self::SERVER, "server", 5),
        (Self::CNCIAGENT, "cnciagent", 6),
        (Self::USER, "user", 7),
    ];

    /// From the wire bitmask; unknown bits are kept (a newer peer may define more roles).
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    /// The wire bitmask.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every role in `other` is also in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether `self` and `other` share any role.
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether no role is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The union of two sets.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The full OID of a single role, e.g. `[1,3,6,1,4,1,343,8,1]` for AGENT.
    /// `None` for an empty set or several roles.
    pub fn oid(self) -> Option<Vec<u64>> {
        let (_, _, arc) = Self::TABLE.iter().find(|(role, _, _)| *role == self)?;
        let mut oid = ROLE_OID_ARC.to_vec();
        oid.push(*arc);
        Some(oid)
    }

    /// The role a dotted OID names, if it is a role OID.
    pub fn from_oid_str(oid: &str) -> Option<Self> {
        let arc = oid.strip_prefix("1.3.6.1.4.1.343.8.")?;
        let arc: u64 = arc.parse().ok()?;
        Self::TABLE.iter().find(|(_, _, a)| *a == arc).map(|(role, _, _)| *role)
    }

    /// The single roles in this set.
    pub fn iter(self) -> impl Iterator<Item = Self> {
        Self::TABLE.into_iter().map(|(role, _, _)| role).filter(move |role| self.contains(*role))
    }
}

impl std::ops::BitOr for Role {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        let mut known = 0;
        for (role, name, _) in Self::TABLE {
            if self.contains(role) {
                known |= role.0;
                if !first {
                    f.write_str("+")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        let unknown = self.0 & !known;
        if unknown != 0 {
            if !first {
                f.write_str("+")?;
            }
            write!(f, "{unknown:#x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Role({self}={:#x})", self.0)
    }
}

/// A role name that `drover-cert` and the CLIs do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; known roles: agent, scheduler, controller, user, netagent, server, cnciagent")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let want = s.trim().to_ascii_lowercase();
        Self::TABLE
            .iter()
            .find(|(_, name, _)| *name == want)
            .map(|(role, _, _)| *role)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// Why roles could not be read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertRoleError {
    /// The DER could not be parsed as an X.509 certificate.
    #[error("certificate could not be parsed: {0}")]
    Unparsable(String),
    /// The certificate carries no role OID (`1.3.6.1.4.1.343.8.N`) in its extended key usage.
    #[error("certificate carries no SSNTP role OID in its extended key usage")]
    NoRole,
    /// The certificate names more than one identity, or one that is not a UUID.
    #[error("certificate identity: {0}")]
    BadIdentity(String),
}

/// What the server needs to know about a client's certificate, read once at the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// The roles it was issued for.
    pub roles: Role,
    /// The UUID it was issued to (see [`identity_from_cert_der`]).
    pub identity: Option<crate::Uuid>,
    /// Whether its subject names organizations (tenants): an API user's certificate.
    pub names_tenants: bool,
}

/// Reads a DER certificate's roles, identity and whether it names tenants.
///
/// # Errors
/// An unparsable certificate, one without any role OID, or a bad identity.
pub fn cert_facts(der: &[u8]) -> Result<CertFacts, CertRoleError> {
    let roles = roles_from_cert_der(der)?;
    let identity = identity_from_cert_der(der)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CertRoleError::Unparsable(e.to_string()))?;
    let names_tenants = cert.subject().iter_organization().next().is_some();
    Ok(CertFacts { roles, identity, names_tenants })
}

/// The URI prefix of the subject alternative name that carries a certificate's identity.
pub const IDENTITY_URI_PREFIX: &str = "urn:uuid:";

/// The identity a DER certificate was issued to: the UUID of its one `urn:uuid:` URI subject
/// alternative name, which `drover-cert issue` writes. `None` for a certificate minted before
/// identities were (its holder's UUID is then whatever it claims; see `docs/ssntp.md` § 3).
///
/// # Errors
/// An unparsable certificate, several identities, or one that is not a UUID.
pub fn identity_from_cert_der(der: &[u8]) -> Result<Option<crate::Uuid>, CertRoleError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CertRoleError::Unparsable(e.to_string()))?;
    let Some(san) = cert.subject_alternative_name().map_err(|e| CertRoleError::Unparsable(e.to_string()))? else {
        return Ok(None);
    };
    let mut found = None;
    for name in &san.value.general_names {
        let x509_parser::extensions::GeneralName::URI(uri) = name else { continue };
        let Some(text) = uri.strip_prefix(IDENTITY_URI_PREFIX) else { continue };
        let uuid: crate::Uuid =
            text.parse().map_err(|_| CertRoleError::BadIdentity(format!("{uri:?} does not name a UUID")))?;
        if found.replace(uuid).is_some_and(|other| other != uuid) {
            return Err(CertRoleError::BadIdentity("the certificate names more than one UUID".into()));
        }
    }
    Ok(found)
}

/// Reads the roles a DER certificate was issued for: the OR of its role OIDs (as ciao's
/// `GetRoleFromOIDs`).
///
/// # Errors
/// An unparsable certificate, or one without any role OID.
pub fn roles_from_cert_der(der: &[u8]) -> Result<Role, CertRoleError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CertRoleError::Unparsable(e.to_string()))?;
    let eku = cert
        .extended_key_usage()
        .map_err(|e| CertRoleError::Unparsable(e.to_string()))?
        .ok_or(CertRoleError::NoRole)?;
    let role =
        eku.value.other.iter().filter_map(|oid| Role::from_oid_str(&oid.to_id_string())).fold(Role::NONE, Role::union);
    if role.is_empty() {
        Err(CertRoleError::NoRole)
    } else {
        Ok(role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_and_oids_match_the_brief() {
        let expect = [
            ("agent", 0x04, "1.3.6.1.4.1.343.8.1"),
            ("scheduler", 0x08, "1.3.6.1.4.1.343.8.2"),
            ("controller", 0x02, "1.3.6.1.4.1.343.8.3"),
            ("netagent", 0x10, "1.3.6.1.4.1.343.8.4"),
            ("server", 0x01, "1.3.6.1.4.1.343.8.5"),
            ("cnciagent", 0x20, "1.3.6.1.4.1.343.8.6"),
            ("user", 0x40, "1.3.6.1.4.1.343.8.7"),
        ];
        for (name, bits, oid) in expect {
            let role: Role = name.parse().unwrap();
            assert_eq!(role.bits(), bits, "{name}");
            let dotted: Vec<String> = role.oid().unwrap().iter().map(u64::to_string).collect();
            assert_eq!(dotted.join("."), oid);
            assert_eq!(Role::from_oid_str(oid), Some(role));
            assert_eq!(role.to_string(), name);
        }
        assert_eq!(Role::from_oid_str("1.3.6.1.4.1.343.8.8"), None);
        assert_eq!(Role::from_oid_str("1.3.6.1.5.5.7.3.2"), None);
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn set_operations_and_display() {
        let both = Role::AGENT | Role::NETAGENT;
        assert!(both.contains(Role::AGENT));
        assert!(!Role::AGENT.contains(both));
        assert_eq!(both.to_string(), "agent+netagent");
        assert_eq!(Role::from_bits(0x104).to_string(), "agent+0x100");
        assert_eq!(both.iter().count(), 2);
        assert_eq!(both.oid(), None);
    }
}
