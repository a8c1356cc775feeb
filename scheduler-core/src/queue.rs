//! The load queue: STARTs that could not be placed yet, in the order they should be retried.
//!
//! Order: work class (workorder before batch), then priority (higher first), then deadline
//! (earlier first, none last), then arrival. Bounded: a START that finds the queue full is
//! refused (`queue_full`), never silently dropped.

use std::collections::BTreeMap;

use ssntp::payload::{Start, WorkClass};
use ssntp::Uuid;

/// Sort key of a queued START.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueKey {
    class: WorkClass,
    neg_priority: std::cmp::Reverse<u32>,
    deadline: u64,
    seq: u64,
}

/// A START waiting for room.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The command, as received.
    pub start: Start,
    /// The controller that sent it.
    pub from: Uuid,
    /// When it was queued (monotonic ms).
    pub since_ms: u64,
    /// When it gives up (monotonic ms).
    pub expires_ms: u64,
    /// Why it waits, in the scheduler's words.
    pub reason: String,
}

/// The queue.
#[derive(Debug)]
pub struct Queue {
    items: BTreeMap<QueueKey, Queued>,
    by_instance: std::collections::HashMap<Uuid, QueueKey>,
    max: usize,
    seq: u64,
}

impl Queue {
    /// An empty queue holding at most `max` STARTs.
    pub fn new(max: usize) -> Self {
        Self { items: BTreeMap::new(), by_instance: std::collections::HashMap::new(), max, seq: 0 }
    }

    /// Number of queued STARTs.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether an instance is queued.
    pub fn contains(&self, instance: Uuid) -> bool {
        self.by_instance.contains_key(&instance)
    }

    /// A queued instance's entry.
    pub fn get(&self, instance: Uuid) -> Option<&Queued> {
        self.by_instance.get(&instance).and_then(|key| self.items.get(key))
    }

    /// The key of a queued instance.
    pub fn key_of(&self, instance: Uuid) -> Option<QueueKey> {
        self.by_instance.get(&instance).copied()
    }

    /// A queued START by its key.
    pub fn get_by_key(&self, key: &QueueKey) -> Option<&Queued> {
        self.items.get(key)
    }

    /// Replaces the reason a START waits; whether it changed.
    pub fn set_reason(&mut self, key: &QueueKey, reason: &str) -> bool {
        match self.items.get_mut(key) {
            Some(item) if item.reason != reason => {
                reason.clone_into(&mut item.reason);
                true
            }
            _ => false,
        }
    }

    /// Whether another START would exceed the bound.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.max
    }

    /// Queues a START and returns its position (0 = next). The caller checks
    /// [`Queue::is_full`] first; a START pushed onto a full queue is refused here by returning
    /// `None`, and the caller still holds the reason to tell its sender.
    pub fn push(&mut self, item: Queued) -> Option<usize> {
        if self.is_full() {
            return None;
        }
        self.seq += 1;
        let key = QueueKey {
            class: item.start.class,
            neg_priority: std::cmp::Reverse(item.start.priority),
            deadline: item.start.deadline_unix_ms.unwrap_or(u64::MAX),
            seq: self.seq,
        };
        self.by_instance.insert(item.start.instance_uuid, key);
        self.items.insert(key, item);
        Some(self.items.range(..key).count())
    }

    /// The queued STARTs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&QueueKey, &Queued)> {
        self.items.iter()
    }

    /// Removes one START.
    pub fn remove(&mut self, key: &QueueKey) -> Option<Queued> {
        let item = self.items.remove(key)?;
        self.by_instance.remove(&item.start.instance_uuid);
        Some(item)
    }

    /// Removes the START of `instance`, if it waits here.
    pub fn remove_instance(&mut self, instance: Uuid) -> Option<Queued> {
        let key = *self.by_instance.get(&instance)?;
        self.remove(&key)
    }

    /// Removes and returns every START whose time is up at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Queued> {
        let expired: Vec<QueueKey> =
            self.items.iter().filter(|(_, q)| q.expires_ms <= now_ms).map(|(k, _)| *k).collect();
        expired.iter().filter_map(|k| self.remove(k)).collect()
    }

    /// Milliseconds the oldest START has waited.
    pub fn oldest_wait_ms(&self, now_ms: u64) -> u64 {
        self.items.values().map(|q| now_ms.saturating_sub(q.since_ms)).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ssntp::payload::{Backend, Requirements};

    fn start(id: u16, class: WorkClass, priority: u32, deadline: Option<u64>) -> Start {
        let mut b = [0u8; 16];
        b[..2].copy_from_slice(&id.to_be_bytes());
        let backend = Backend::Sim { duration_ms: 1, mem_usage_mb: 0, exit_code: 0 };
        Start {
            class,
            priority,
            deadline_unix_ms: deadline,
            ..Start::new(Uuid::from_bytes(b), Requirements::default(), backend)
        }
    }

    proptest! {
        #[test]
        fn order_is_class_priority_deadline_arrival_and_the_bound_holds(
            items in prop::collection::vec((any::<bool>(), 0u32..4, prop::option::of(0u64..5), 0u64..100), 0..60),
            max in 1usize..40,
        ) {
            let mut q = Queue::new(max);
            let mut accepted = Vec::new();
            for (i, (batch, priority, deadline, expires)) in items.iter().enumerate() {
                let class = if *batch { WorkClass::Batch } else { WorkClass::Workorder };
                let item = Queued { start: start(u16::try_from(i).unwrap(), class, *priority, *deadline), from: Uuid::nil(), since_ms: 0, expires_ms: *expires, reason: String::new() };
                match q.push(item) {
                    Some(_) => accepted.push((class, std::cmp::Reverse(*priority), deadline.unwrap_or(u64::MAX), i, *expires)),
                    None => prop_assert_eq!(accepted.len(), max, "refused only when full"),
                }
            }
            prop_assert!(q.len() <= max);
            let order: Vec<usize> = q.iter().map(|(_, item)| {
                let b = item.start.instance_uuid.as_bytes();
                usize::from(u16::from_be_bytes([b[0], b[1]]))
            }).collect();
            let mut expected = accepted.clone();
            expected.sort();
            prop_assert_eq!(order, expected.iter().map(|e| e.3).collect::<Vec<_>>());
            // Expiry removes exactly the items whose time is up, and keeps the rest in order.
            let expired = q.expire(50);
            prop_assert!(expired.iter().all(|e| e.expires_ms <= 50));
            prop_assert!(q.iter().all(|(_, e)| e.expires_ms > 50));
            prop_assert_eq!(expired.len() + q.len(), accepted.len());
        }
    }
}
