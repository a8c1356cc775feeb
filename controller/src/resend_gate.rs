//! When STARTs that got no answer may be sent again after the scheduler connection comes back.
//!
//! A START the controller sent may have been placed and run by a node even though its answer
//! never arrived (the scheduler died between forwarding the START and forwarding the node's
//! INSTANCE_STARTED). A restarted scheduler knows nothing of it until that node reconnects and
//! reports STATS; a START sent again before then would be placed on another node, and the
//! instance would run twice. So after a reconnect the gate stays shut until every node the
//! controller knew to be up has reported STATS through the new connection (the controller then
//! adopts what runs there), or until the hold expires (a node that does not come back within it
//! is presumed gone, and its work may start elsewhere).
//!
//! Pure: node UUIDs and the caller's clock in, a yes or no out.

use std::collections::HashSet;

use ssntp::Uuid;

/// How long, by default, re-sending waits for the nodes known before a reconnect.
pub const DEFAULT_HOLD_MS: u64 = 15_000;

/// The nodes still to be heard from after a reconnect, and until when to wait for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResendGate {
    waiting_for: HashSet<Uuid>,
    deadline_ms: u64,
}

impl ResendGate {
    /// A gate opened at `now_ms` that waits for `expected` nodes for at most `hold_ms`.
    pub fn new(expected: impl IntoIterator<Item = Uuid>, now_ms: u64, hold_ms: u64) -> Self {
        Self { waiting_for: expected.into_iter().collect(), deadline_ms: now_ms.saturating_add(hold_ms) }
    }

    /// A node reported STATS (it is back, and what it runs is known).
    pub fn reported(&mut self, node: Uuid) {
        self.waiting_for.remove(&node);
    }

    /// A node went away (disconnected or lost): its instances are for node loss to handle.
    pub fn gone(&mut self, node: Uuid) {
        self.waiting_for.remove(&node);
    }

    /// Whether unanswered STARTs may be sent again now.
    pub fn is_open(&self, now_ms: u64) -> bool {
        self.waiting_for.is_empty() || now_ms >= self.deadline_ms
    }

    /// The nodes not heard from yet.
    pub fn waiting_for(&self) -> impl Iterator<Item = &Uuid> {
        self.waiting_for.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    #[test]
    fn with_no_node_to_wait_for_it_is_open_at_once() {
        assert!(ResendGate::new([], 0, DEFAULT_HOLD_MS).is_open(0));
    }

    #[test]
    fn it_opens_when_every_expected_node_reported_or_went_away() {
        let mut gate = ResendGate::new([node(1), node(2), node(3)], 1_000, 15_000);
        gate.reported(node(1));
        assert!(!gate.is_open(2_000));
        gate.reported(node(9)); // a node nobody waited for changes nothing
        gate.gone(node(2));
        assert!(!gate.is_open(2_000));
        assert_eq!(gate.waiting_for().collect::<Vec<_>>(), vec![&node(3)]);
        gate.reported(node(3));
        assert!(gate.is_open(2_000));
    }

    #[test]
    fn it_opens_at_the_deadline_whoever_is_missing() {
        let gate = ResendGate::new([node(1)], 1_000, 15_000);
        assert!(!gate.is_open(15_999));
        assert!(gate.is_open(16_000));
    }
}
