//! Which certificate holds which UUID on a server: the rule that keeps one peer from taking
//! another's place. Pure: the server keeps one [`Bindings`] and asks it at every CONNECT.
//!
//! A certificate that `drover-cert` issued to a UUID (see [`crate::role::identity_from_cert_der`])
//! may only claim that UUID; the handshake checks it. A certificate minted before identities
//! existed may claim any UUID, so the first certificate seen with a UUID keeps it: a later
//! connection with that UUID replaces the live one (a reconnect) only when it presents the same
//! certificate, or a certificate issued to that very UUID (its rightful owner, who also takes a
//! UUID back from an older certificate). A binding outlives its connection, so an impostor cannot
//! wait for a node to drop off; a server may refuse such certificates altogether
//! ([`IdentityPolicy::Require`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::uuid::Uuid;

/// What stands for a certificate's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertKey {
    /// Issued to this UUID.
    Identity(Uuid),
    /// No identity in it: the certificate itself (its DER bytes).
    Certificate(Arc<[u8]>),
}

/// Whether certificates without an identity are taken at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentityPolicy {
    /// Only certificates issued to a UUID.
    Require,
    /// Certificates without one too, each UUID bound to the first certificate seen with it.
    #[default]
    Bind,
}

/// Why a claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimRefused {
    /// The server takes only certificates issued to a UUID.
    #[error(
        "the certificate names no identity (a urn:uuid subject alternative name); this server \
         requires one: issue it again with drover-cert issue (--uuid keeps a node's UUID)"
    )]
    NoIdentity,
    /// Another certificate holds the UUID.
    #[error("{0} belongs to another certificate")]
    Taken(Uuid),
    /// Every binding is live and the table is full.
    #[error("too many identities")]
    Full,
}

#[derive(Debug)]
struct Binding<C> {
    key: CertKey,
    /// The live connection holding it, if any.
    live: Option<(u64, C)>,
}

/// The UUID → certificate bindings of one server, at most `capacity` of them (overflow policy:
/// the oldest binding without a live connection is forgotten; with none, the claim is refused).
#[derive(Debug)]
pub struct Bindings<C> {
    policy: IdentityPolicy,
    capacity: usize,
    by_uuid: HashMap<Uuid, Binding<C>>,
    /// UUIDs in the order they were first bound (may hold UUIDs since forgotten).
    order: VecDeque<Uuid>,
}

impl<C> Bindings<C> {
    /// An empty table.
    pub fn new(policy: IdentityPolicy, capacity: usize) -> Self {
        Self { policy, capacity: capacity.max(1), by_uuid: HashMap::new(), order: VecDeque::new() }
    }

    /// Connection `conn_id` (handle `conn`) with certificate `key` claims `uuid`. On success,
    /// returns the live connection it replaces, for the caller to close.
    ///
    /// # Errors
    /// The policy refuses the certificate, or another certificate holds the UUID.
    pub fn claim(&mut self, uuid: Uuid, key: CertKey, conn_id: u64, conn: C) -> Result<Option<C>, ClaimRefused> {
        if self.policy == IdentityPolicy::Require && !matches!(key, CertKey::Identity(_)) {
            return Err(ClaimRefused::NoIdentity);
        }
        let owner = key == CertKey::Identity(uuid);
        if let Some(binding) = self.by_uuid.get_mut(&uuid) {
            if binding.key != key && !owner {
                return Err(ClaimRefused::Taken(uuid));
            }
            binding.key = key;
            return Ok(binding.live.replace((conn_id, conn)).map(|(_, c)| c));
        }
        if self.by_uuid.len() >= self.capacity && !self.forget_one() {
            return Err(ClaimRefused::Full);
        }
        self.by_uuid.insert(uuid, Binding { key, live: Some((conn_id, conn)) });
        self.order.push_back(uuid);
        Ok(None)
    }

    /// Connection `conn_id` of `uuid` ended; the binding stays.
    pub fn release(&mut self, uuid: Uuid, conn_id: u64) {
        if let Some(binding) = self.by_uuid.get_mut(&uuid) {
            if binding.live.as_ref().is_some_and(|(id, _)| *id == conn_id) {
                binding.live = None;
            }
        }
    }

    /// Connection `conn_id` ended before it could say which UUID it held (a handshake that
    /// timed out after its claim); a scan, for that rare case.
    pub fn release_connection(&mut self, conn_id: u64) {
        for binding in self.by_uuid.values_mut() {
            if binding.live.as_ref().is_some_and(|(id, _)| *id == conn_id) {
                binding.live = None;
            }
        }
    }

    /// The UUIDs held by a live connection, with it.
    pub fn live(&self) -> impl Iterator<Item = (&Uuid, &C)> {
        self.by_uuid.iter().filter_map(|(uuid, b)| b.live.as_ref().map(|(_, c)| (uuid, c)))
    }

    /// How many UUIDs are bound.
    pub fn len(&self) -> usize {
        self.by_uuid.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_uuid.is_empty()
    }

    /// Forgets the oldest binding without a live connection; whether there was one.
    fn forget_one(&mut self) -> bool {
        for _ in 0..self.order.len() {
            let Some(uuid) = self.order.pop_front() else { return false };
            match self.by_uuid.get(&uuid) {
                Some(b) if b.live.is_none() => {
                    self.by_uuid.remove(&uuid);
                    return true;
                }
                Some(_) => self.order.push_back(uuid),
                None => {}
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn cert(n: u8) -> CertKey {
        CertKey::Certificate(Arc::from(vec![n; 8]))
    }

    #[test]
    fn a_uuid_stays_with_its_certificate_unless_its_owner_comes() {
        let mut b = Bindings::new(IdentityPolicy::Bind, 16);
        assert_eq!(b.claim(u(1), cert(1), 1, "first"), Ok(None));
        assert_eq!(b.claim(u(1), cert(2), 2, "impostor"), Err(ClaimRefused::Taken(u(1))), "while live");
        assert_eq!(b.claim(u(1), cert(1), 3, "reconnect"), Ok(Some("first")), "same certificate replaces");
        b.release(u(1), 3);
        assert_eq!(b.claim(u(1), cert(2), 4, "impostor"), Err(ClaimRefused::Taken(u(1))), "nor once it is gone");
        assert_eq!(b.claim(u(1), CertKey::Identity(u(1)), 5, "owner"), Ok(None), "the owner takes it back");
        assert_eq!(b.claim(u(1), cert(1), 6, "old"), Err(ClaimRefused::Taken(u(1))), "and keeps it");
        assert_eq!(b.claim(u(1), CertKey::Identity(u(1)), 7, "rotated"), Ok(Some("owner")));
        // Releasing an old connection does not free the new one's hold.
        b.release(u(1), 5);
        assert_eq!(b.claim(u(1), cert(3), 8, "x"), Err(ClaimRefused::Taken(u(1))));
    }

    #[test]
    fn require_refuses_certificates_without_identity_and_the_table_is_bounded() {
        let mut strict = Bindings::new(IdentityPolicy::Require, 4);
        assert_eq!(strict.claim(u(1), cert(1), 1, ()), Err(ClaimRefused::NoIdentity));
        assert_eq!(strict.claim(u(1), CertKey::Identity(u(1)), 1, ()), Ok(None));
        let mut b = Bindings::new(IdentityPolicy::Bind, 2);
        b.claim(u(1), cert(1), 1, ()).unwrap();
        b.claim(u(2), cert(2), 2, ()).unwrap();
        assert_eq!(b.claim(u(3), cert(3), 3, ()), Err(ClaimRefused::Full), "both live");
        b.release(u(1), 1);
        assert_eq!(b.claim(u(3), cert(3), 3, ()), Ok(None), "the oldest idle one is forgotten");
        assert_eq!(b.len(), 2);
        assert_eq!(b.claim(u(1), cert(9), 4, ()), Err(ClaimRefused::Full), "u(1) forgotten, but no room");
    }
}
