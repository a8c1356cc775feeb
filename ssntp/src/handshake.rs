//! The handshake's rules, without IO: what a client sends first, what a server accepts as the
//! first frame, and what a client accepts as the answer. The server and the client only move
//! bytes around these functions (see `docs/ssntp.md`, "Handshake").
//!
//! Every role is checked against the peer's certificate: a claim the certificate does not
//! carry is refused, whatever the peer says about itself.

use crate::error::Error;
use crate::frame::{Command, Frame, Kind};
use crate::payload::{Connect, Connected, Message};
use crate::role::{CertFacts, Role};
use crate::uuid::Uuid;

/// The CONNECT a client sends: its role and UUID, its host name, this build's version.
pub fn connect(role: Role, uuid: Uuid, hostname: Option<String>, term: Option<u64>) -> Message {
    Message::Connect(Connect { role, uuid, hostname, version: Some(env!("CARGO_PKG_VERSION").to_owned()), term })
}

/// The server's check of a client's first frame against the client's certificate and the roles
/// this server serves (`accepted`).
///
/// # Errors
/// Not a CONNECT, an undecodable payload, a nil UUID or one other than the frame's origin, a
/// role that is empty, not certified or not served here, a UUID other than the one the
/// certificate was issued to, or a controller whose certificate names tenants (an API user's).
pub fn accept(first: &Frame, cert: &CertFacts, accepted: Role) -> Result<Connect, Error> {
    let (certified, identity) = (cert.roles, cert.identity);
    if first.kind != Kind::Command(Command::Connect) {
        return Err(Error::Protocol(format!("expected CONNECT as the first frame, got {}", first.kind)));
    }
    let Message::Connect(connect) = Message::decode(first)? else {
        unreachable!("a CONNECT frame decodes to Message::Connect")
    };
    if connect.uuid.is_nil() || connect.uuid != first.origin {
        return Err(Error::Protocol("CONNECT uuid must be non-nil and equal the frame origin".into()));
    }
    let claimed = connect.role;
    if claimed.is_empty() || !certified.contains(claimed) || !accepted.contains(claimed) {
        return Err(Error::RoleMismatch { claimed, certified });
    }
    if let Some(own) = identity.filter(|own| *own != connect.uuid) {
        return Err(Error::Identity(format!("claimed {}, but the certificate was issued to {own}", connect.uuid)));
    }
    if claimed.contains(Role::CONTROLLER) && cert.names_tenants {
        return Err(Error::Identity(
            "a certificate that names tenants (O=) is an API user's; only the controller daemon's \
             certificate, which names none, may connect as a controller"
                .into(),
        ));
    }
    Ok(connect)
}

/// The client's check of the server's answer. `certified`: the roles in the server's
/// certificate; `expected`: the role the client wants to talk to (the scheduler).
///
/// # Errors
/// The server refused (its ERROR's reason), answered something else, or claims a role its
/// certificate does not carry or that is not the one expected.
pub fn connected(reply: &Frame, certified: Role, expected: Role) -> Result<Connected, Error> {
    match Message::decode(reply)? {
        Message::Connected(c) if certified.contains(c.role) && c.role.contains(expected) => Ok(c),
        Message::Connected(c) => Err(Error::RoleMismatch { claimed: c.role, certified }),
        other => match (reply.kind, error_reason(&other)) {
            (Kind::Error(code), Some(reason)) => Err(Error::Rejected { code, reason }),
            _ => Err(Error::Protocol(format!("expected CONNECTED, got {}", reply.kind))),
        },
    }
}

/// The `reason` of an error message, if it is one.
pub fn error_reason(message: &Message) -> Option<String> {
    Some(match message {
        Message::InvalidFrameType(r)
        | Message::ConnectionFailure(r)
        | Message::ConnectionAborted(r)
        | Message::InvalidConfiguration(r)
        | Message::InvalidPayload(r) => r.reason.clone(),
        Message::StartFailure(f) => format!("{:?}: {}", f.reason, f.detail),
        Message::StopFailure(f) | Message::RestartFailure(f) | Message::DeleteFailure(f) => {
            format!("{:?}: {}", f.reason, f.detail)
        }
        Message::CommandFailure(f) => format!("{} {:?}: {}", f.command, f.reason, f.detail),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{ClusterConfig, ErrorReport};

    fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn facts(roles: Role, identity: Option<Uuid>) -> CertFacts {
        CertFacts { roles, identity, names_tenants: false }
    }

    #[test]
    fn a_server_accepts_only_a_certified_connect_from_its_origin() {
        let agent = connect(Role::AGENT, id(1), None, None).to_frame(id(1));
        assert_eq!(accept(&agent, &facts(Role::AGENT, None), Role::AGENT | Role::CONTROLLER).unwrap().uuid, id(1));
        let err = accept(&agent, &facts(Role::CONTROLLER, None), Role::AGENT | Role::CONTROLLER).unwrap_err();
        assert!(matches!(err, Error::RoleMismatch { .. }), "not in the certificate: {err}");
        assert!(
            matches!(accept(&agent, &facts(Role::AGENT, None), Role::CONTROLLER), Err(Error::RoleMismatch { .. })),
            "not served"
        );
        let spoofed = connect(Role::AGENT, id(1), None, None).to_frame(id(2));
        assert!(matches!(accept(&spoofed, &facts(Role::AGENT, None), Role::AGENT), Err(Error::Protocol(_))));
        let nil = connect(Role::AGENT, Uuid::nil(), None, None).to_frame(Uuid::nil());
        assert!(matches!(accept(&nil, &facts(Role::AGENT, None), Role::AGENT), Err(Error::Protocol(_))));
        let not_first = Message::Offline.to_frame(id(1));
        assert!(matches!(accept(&not_first, &facts(Role::AGENT, None), Role::AGENT), Err(Error::Protocol(_))));
        let nothing = connect(Role::NONE, id(1), None, None).to_frame(id(1));
        assert!(matches!(accept(&nothing, &facts(Role::AGENT, None), Role::AGENT), Err(Error::RoleMismatch { .. })));
    }

    #[test]
    fn a_certificate_with_an_identity_may_claim_only_that_identity() {
        let agent = connect(Role::AGENT, id(1), None, None).to_frame(id(1));
        assert_eq!(accept(&agent, &facts(Role::AGENT, Some(id(1))), Role::AGENT).unwrap().uuid, id(1));
        let err = accept(&agent, &facts(Role::AGENT, Some(id(2))), Role::AGENT).unwrap_err();
        assert!(matches!(err, Error::Identity(_)), "{err}");
        assert!(err.is_permanent());
        assert!(matches!(err.to_peer_message(), Some(Message::ConnectionAborted(_))));
    }

    #[test]
    fn a_users_certificate_is_not_a_controller() {
        let controller = connect(Role::CONTROLLER, id(1), None, None).to_frame(id(1));
        let user = CertFacts { roles: Role::CONTROLLER, identity: None, names_tenants: true };
        let err = accept(&controller, &user, Role::CONTROLLER | Role::AGENT).unwrap_err();
        assert!(matches!(err, Error::Identity(_)), "{err}");
        assert!(accept(&controller, &facts(Role::CONTROLLER, None), Role::CONTROLLER).is_ok(), "the daemon's");
        let as_user = connect(Role::USER, id(1), None, None).to_frame(id(1));
        let refused = accept(&as_user, &facts(Role::USER, Some(id(1))), Role::CONTROLLER | Role::AGENT);
        assert!(matches!(refused, Err(Error::RoleMismatch { .. })), "the scheduler serves no users");
    }

    #[test]
    fn a_client_accepts_only_the_certified_scheduler() {
        let answer = |role| {
            Message::Connected(Connected { role, uuid: id(9), config: ClusterConfig::default() }).to_frame(id(9))
        };
        assert_eq!(connected(&answer(Role::SCHEDULER), Role::SCHEDULER, Role::SCHEDULER).unwrap().uuid, id(9));
        assert!(matches!(
            connected(&answer(Role::SCHEDULER), Role::AGENT, Role::SCHEDULER),
            Err(Error::RoleMismatch { .. })
        ));
        assert!(matches!(
            connected(&answer(Role::AGENT), Role::AGENT, Role::SCHEDULER),
            Err(Error::RoleMismatch { .. })
        ));
        let refusal = Message::ConnectionAborted(ErrorReport { reason: "role mismatch".into() }).to_frame(id(9));
        let err = connected(&refusal, Role::SCHEDULER, Role::SCHEDULER).unwrap_err();
        assert!(matches!(&err, Error::Rejected { reason, .. } if reason == "role mismatch"), "{err}");
        let odd = Message::Offline.to_frame(id(9));
        assert!(matches!(connected(&odd, Role::SCHEDULER, Role::SCHEDULER), Err(Error::Protocol(_))));
    }
}
