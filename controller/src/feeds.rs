//! Per node, the order of its instance reports (see `docs/ssntp.md`, "Reports"): which
//! INSTANCE_NEWS to apply, when a gap calls for a digest, and when a digest's STATS pages add
//! up to everything the node holds; and which nodes to ask for a digest now. Pure: frames'
//! numbers and the time in, verdicts out. It also keeps what each node itself says runs there
//! (news in order, and each complete digest): the nodes' own view, beside the store's.
//!
//! A node needs a digest when it is first heard of after the link came up, after a gap in its
//! news, or after a digest page went missing. Digests are asked for [`MAX_ASKED`] nodes at a
//! time, and again after [`ASK_TIMEOUT_MS`] without one: a controller that reconnects to a
//! thousand busy nodes does not have a thousand digests thrown at it at once (its link would
//! overflow and drop, and the storm start over).
//!
//! News entries carry an instance's whole current state, so applying a news after a gap is
//! safe; what the missing news said about other instances is what the digest restores. Older
//! news than the last applied (a duplicate, or one overtaken) is dropped: it could only move
//! instances backwards.

use std::collections::{HashMap, HashSet};

/// Most digests asked for and not yet complete.
pub const MAX_ASKED: usize = 32;

/// A digest asked for and not complete after this long is asked for again, ms.
pub const ASK_TIMEOUT_MS: u64 = 30_000;

use ssntp::payload::{DigestPage, InstanceStat, InstanceState};
use ssntp::Uuid;

/// What to do with one INSTANCE_NEWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewsVerdict {
    /// The next one, or the first heard: apply it.
    Apply,
    /// Later than the next: apply it; news was lost, so the node needs a digest.
    ApplyAndAsk,
    /// A duplicate or overtaken: drop it.
    Stale,
}

/// What one digest page adds up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageVerdict {
    /// More pages follow.
    Partial,
    /// The last page: every instance the digest listed.
    Complete(HashSet<Uuid>),
    /// A page out of order (an earlier one was lost): apply its entries; the node needs a new
    /// digest.
    Broken,
}

#[derive(Debug, Default)]
struct Feed {
    /// The number of the last news applied, or of the last complete digest.
    last_seq: Option<u64>,
    /// It needs a digest.
    wanted: bool,
    /// When one was last asked for (monotonic ms), while it is wanted.
    asked_ms: Option<u64>,
    assembling: Option<Assembly>,
    /// What the node says runs there.
    running: HashSet<Uuid>,
}

#[derive(Debug)]
struct Assembly {
    seq: u64,
    next_page: u32,
    pages: u32,
    seen: HashSet<Uuid>,
    running: HashSet<Uuid>,
}

fn runs(stat: &InstanceStat) -> bool {
    matches!(stat.state, InstanceState::Active | InstanceState::Pending)
}

/// Every node's feed.
#[derive(Debug, Default)]
pub struct Feeds {
    feeds: HashMap<Uuid, Feed>,
}

impl Feeds {
    /// Judges INSTANCE_NEWS number `seq` from `node` carrying `stats`, and takes in what it says
    /// unless it is stale.
    pub fn news(&mut self, node: Uuid, seq: u64, stats: &[InstanceStat]) -> NewsVerdict {
        let feed = self.feed(node);
        let verdict = Self::order(feed, seq);
        if verdict != NewsVerdict::Stale {
            for stat in stats {
                if runs(stat) {
                    feed.running.insert(stat.instance_uuid);
                } else {
                    feed.running.remove(&stat.instance_uuid);
                }
            }
        }
        verdict
    }

    fn order(feed: &mut Feed, seq: u64) -> NewsVerdict {
        match feed.last_seq {
            // The first word from this node since this controller started: it needs a digest
            // anyway.
            None => {
                feed.last_seq = Some(seq);
                NewsVerdict::Apply
            }
            Some(last) if seq <= last => NewsVerdict::Stale,
            Some(last) => {
                feed.last_seq = Some(seq);
                if seq == last + 1 {
                    NewsVerdict::Apply
                } else {
                    feed.wanted = true;
                    NewsVerdict::ApplyAndAsk
                }
            }
        }
    }

    /// A node is heard from (any report): a node new to this controller needs a digest.
    pub fn heard(&mut self, node: Uuid) {
        self.feed(node);
    }

    fn feed(&mut self, node: Uuid) -> &mut Feed {
        self.feeds.entry(node).or_insert_with(|| Feed { wanted: true, ..Feed::default() })
    }

    /// The nodes to ask for a digest at `now_ms`: those that need one and were not asked in the
    /// last [`ASK_TIMEOUT_MS`], as long as fewer than [`MAX_ASKED`] are outstanding. Each is
    /// counted as asked.
    pub fn due(&mut self, now_ms: u64) -> Vec<Uuid> {
        let pending = |f: &Feed| f.asked_ms.is_some_and(|at| now_ms.saturating_sub(at) < ASK_TIMEOUT_MS);
        let outstanding = self.feeds.values().filter(|f| f.wanted && pending(f)).count();
        let mut due: Vec<Uuid> =
            self.feeds.iter().filter(|(_, f)| f.wanted && !pending(f)).map(|(node, _)| *node).collect();
        due.sort_unstable();
        due.truncate(MAX_ASKED.saturating_sub(outstanding));
        for node in &due {
            if let Some(f) = self.feeds.get_mut(node) {
                f.asked_ms = Some(now_ms);
            }
        }
        due
    }

    /// Whether any node still needs a digest.
    pub fn wanting(&self) -> usize {
        self.feeds.values().filter(|f| f.wanted).count()
    }

    /// The instances `node` says run there, sorted.
    pub fn running(&self, node: Uuid) -> Vec<Uuid> {
        let mut running: Vec<Uuid> =
            self.feeds.get(&node).map(|f| f.running.iter().copied().collect()).unwrap_or_default();
        running.sort_unstable();
        running
    }

    /// Takes in one digest page from `node` listing `stats`. A complete digest sets the node's
    /// news number to the digest's (a launcher that restarted counts from 0 again), and what it
    /// says runs there.
    pub fn page(&mut self, node: Uuid, page: DigestPage, stats: &[InstanceStat]) -> PageVerdict {
        let feed = self.feed(node);
        if page.page == 0 {
            feed.assembling = Some(Assembly {
                seq: page.seq,
                next_page: 0,
                pages: page.pages,
                seen: HashSet::new(),
                running: HashSet::new(),
            });
        }
        let in_order = feed
            .assembling
            .as_ref()
            .is_some_and(|a| a.seq == page.seq && a.next_page == page.page && a.pages == page.pages);
        if !in_order {
            feed.assembling = None;
            feed.wanted = true;
            return PageVerdict::Broken;
        }
        let Some(assembly) = feed.assembling.as_mut() else { return PageVerdict::Broken };
        assembly.seen.extend(stats.iter().map(|s| s.instance_uuid));
        assembly.running.extend(stats.iter().filter(|s| runs(s)).map(|s| s.instance_uuid));
        assembly.next_page += 1;
        if assembly.next_page < assembly.pages {
            return PageVerdict::Partial;
        }
        let seen = std::mem::take(&mut assembly.seen);
        feed.running = std::mem::take(&mut assembly.running);
        feed.assembling = None;
        feed.last_seq = Some(page.seq);
        feed.wanted = false;
        feed.asked_ms = None;
        PageVerdict::Complete(seen)
    }

    /// A node was declared lost: nothing more to ask it until it is heard from again.
    pub fn lost(&mut self, node: Uuid) {
        self.feeds.remove(&node);
    }

    /// The link came up: what it missed while down is in digests, so every known node needs
    /// one (nodes not known yet need one when first heard).
    pub fn want_all(&mut self) {
        for feed in self.feeds.values_mut() {
            feed.wanted = true;
            feed.asked_ms = None;
            feed.assembling = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Uuid {
        Uuid::from_bytes([7; 16])
    }

    fn page(seq: u64, page: u32, pages: u32) -> DigestPage {
        DigestPage { seq, page, pages }
    }

    fn stat(instance_uuid: Uuid, state: InstanceState) -> InstanceStat {
        InstanceStat {
            instance_uuid,
            state,
            memory_usage_mb: -1,
            disk_usage_mb: -1,
            cpu_usage: -1,
            exit_code: None,
            workload_uuid: None,
            reason: None,
        }
    }

    #[test]
    fn news_in_order_applies_duplicates_drop_and_a_gap_wants_a_digest() {
        let mut f = Feeds::default();
        assert_eq!(f.news(node(), 5, &[]), NewsVerdict::Apply, "first heard");
        assert_eq!(f.due(0), vec![node()], "a node new to this controller needs a digest");
        assert!(f.due(1).is_empty(), "asked already");
        assert_eq!(f.page(node(), page(5, 0, 1), &[]), PageVerdict::Complete(HashSet::new()));
        assert_eq!(f.news(node(), 6, &[]), NewsVerdict::Apply);
        assert_eq!(f.news(node(), 6, &[]), NewsVerdict::Stale);
        assert_eq!(f.news(node(), 4, &[]), NewsVerdict::Stale);
        assert!(f.due(2).is_empty());
        assert_eq!(f.news(node(), 9, &[]), NewsVerdict::ApplyAndAsk);
        assert_eq!(f.news(node(), 12, &[]), NewsVerdict::ApplyAndAsk);
        assert_eq!(f.due(3), vec![node()], "asked once for both gaps");
        assert!(f.due(4).is_empty());
        assert_eq!(f.due(3 + ASK_TIMEOUT_MS), vec![node()], "asked again when no digest came");
        assert_eq!(f.page(node(), page(12, 0, 1), &[]), PageVerdict::Complete(HashSet::new()));
        assert_eq!(f.wanting(), 0);
    }

    #[test]
    fn digests_are_asked_for_a_few_nodes_at_a_time() {
        let mut f = Feeds::default();
        for n in 0..100u8 {
            f.heard(Uuid::from_bytes([n; 16]));
        }
        let first = f.due(0);
        assert_eq!(first.len(), MAX_ASKED);
        assert!(f.due(1).is_empty(), "the first ones are outstanding");
        f.page(first[0], page(0, 0, 1), &[]);
        assert_eq!(f.due(2).len(), 1, "one completed, one more asked");
        f.want_all();
        assert_eq!(f.wanting(), 100, "a new link wants every digest again");
    }

    #[test]
    fn pages_add_up_and_a_lost_page_asks_for_a_new_digest() {
        let mut f = Feeds::default();
        let (a, b) = (Uuid::from_bytes([1; 16]), Uuid::from_bytes([2; 16]));
        assert_eq!(f.page(node(), page(3, 0, 2), &[stat(a, InstanceState::Active)]), PageVerdict::Partial);
        assert_eq!(
            f.page(node(), page(3, 1, 2), &[stat(b, InstanceState::Exited)]),
            PageVerdict::Complete([a, b].into())
        );
        assert_eq!(f.news(node(), 4, &[]), NewsVerdict::Apply, "the digest set the number");
        assert_eq!(
            f.page(node(), page(4, 1, 3), &[stat(a, InstanceState::Active)]),
            PageVerdict::Broken,
            "page 0 lost"
        );
        assert_eq!(f.page(node(), page(4, 2, 3), &[stat(b, InstanceState::Exited)]), PageVerdict::Broken);
        assert_eq!(f.due(0), vec![node()], "a new digest is wanted");
        assert_eq!(
            f.page(node(), page(0, 0, 1), &[stat(a, InstanceState::Active)]),
            PageVerdict::Complete([a].into()),
            "a restarted launcher"
        );
        assert_eq!(f.news(node(), 1, &[]), NewsVerdict::Apply);
    }

    #[test]
    fn the_nodes_own_view_follows_digests_and_news_in_order() {
        let mut f = Feeds::default();
        let (a, b) = (Uuid::from_bytes([1; 16]), Uuid::from_bytes([2; 16]));
        f.page(node(), page(3, 0, 2), &[stat(a, InstanceState::Active)]);
        assert!(f.running(node()).is_empty(), "a digest counts once complete");
        f.page(node(), page(3, 1, 2), &[stat(b, InstanceState::Exited)]);
        assert_eq!(f.running(node()), vec![a], "ended instances do not run");
        f.news(node(), 4, &[stat(b, InstanceState::Active)]);
        f.news(node(), 5, &[stat(a, InstanceState::Stopped)]);
        assert_eq!(f.running(node()), vec![b]);
        f.news(node(), 4, &[stat(a, InstanceState::Active)]);
        assert_eq!(f.running(node()), vec![b], "a stale news changes nothing");
    }
}
