//! STARTs that got no answer: each START sent is noted with its time, and one still without an
//! answer (the instance still `starting`) after the timeout goes again. Pure: times in, instance
//! IDs out; the service checks which of them still wait.
//!
//! A START can go unanswered without the connection dropping: the scheduler placed it and its
//! copy to the launcher went with that launcher's connection, or an answer was lost with a
//! launcher's. Sent again, it is harmless: the scheduler sends a START it placed and has not
//! seen confirmed to the same node again, answers one it knows runs with its node, and places
//! one it no longer knows.
//!
//! Bounded: at most [`MAX_WATCHED`] STARTs are watched; past that the oldest are dropped (a
//! reconnect still re-sends everything that waits).

use std::collections::VecDeque;

use ssntp::Uuid;

/// Most STARTs watched at once (24 bytes each).
pub const MAX_WATCHED: usize = 1 << 20;

/// The STARTs sent in the last timeout, oldest first.
#[derive(Debug)]
pub struct AnswerWatch {
    timeout_ms: u64,
    sent: VecDeque<(u64, Uuid)>,
    dropped: u64,
}

impl AnswerWatch {
    /// Watches STARTs for `timeout_ms`.
    pub fn new(timeout_ms: u64) -> Self {
        Self { timeout_ms, sent: VecDeque::new(), dropped: 0 }
    }

    /// STARTs for `instances` went out at `now_ms`.
    pub fn sent(&mut self, now_ms: u64, instances: impl IntoIterator<Item = Uuid>) {
        for id in instances {
            if self.sent.len() >= MAX_WATCHED {
                self.sent.pop_front();
                self.dropped += 1;
            }
            self.sent.push_back((now_ms, id));
        }
    }

    /// The instances whose START went out at least the timeout before `now_ms`, no longer
    /// watched; the caller re-sends those still waiting for an answer.
    pub fn expired(&mut self, now_ms: u64) -> Vec<Uuid> {
        let mut out = Vec::new();
        while let Some((at, id)) = self.sent.front().copied() {
            if now_ms.saturating_sub(at) < self.timeout_ms {
                break;
            }
            self.sent.pop_front();
            out.push(id);
        }
        out
    }

    /// The connection went down or came back: a reconnect re-sends whatever still waits (once
    /// the nodes have reported), so nothing sent before is watched any more.
    pub fn clear(&mut self) {
        self.sent.clear();
    }

    /// How many STARTs are watched, and how many were dropped for want of room.
    pub fn counts(&self) -> (usize, u64) {
        (self.sent.len(), self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    #[test]
    fn starts_expire_after_the_timeout_in_the_order_sent() {
        let mut w = AnswerWatch::new(1000);
        w.sent(0, [id(1), id(2)]);
        w.sent(500, [id(3)]);
        assert!(w.expired(999).is_empty());
        assert_eq!(w.expired(1000), vec![id(1), id(2)]);
        assert!(w.expired(1200).is_empty(), "each once");
        assert_eq!(w.expired(5000), vec![id(3)]);
        w.sent(6000, [id(4)]);
        w.clear();
        assert!(w.expired(60_000).is_empty(), "a reconnect takes over");
        assert_eq!(w.counts(), (0, 0));
    }
}
