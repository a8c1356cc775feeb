//! Per node, the order of its instance reports (see `docs/ssntp.md`, "Reports"): which
//! INSTANCE_NEWS to apply, when a gap calls for a digest, and when a digest's STATS pages add
//! up to everything the node holds. Pure: frames' numbers in, verdicts out.
//!
//! News entries carry an instance's whole current state, so applying a news after a gap is
//! safe; what the missing news said about other instances is what the digest restores. Older
//! news than the last applied (a duplicate, or one overtaken) is dropped: it could only move
//! instances backwards.

use std::collections::{HashMap, HashSet};

use ssntp::payload::DigestPage;
use ssntp::Uuid;

/// What to do with one INSTANCE_NEWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewsVerdict {
    /// The next one, or the first heard: apply it.
    Apply,
    /// Later than the next: apply it and ask the node for a digest (news was lost).
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
    /// A page out of order (an earlier one was lost): apply its entries, and ask for a new
    /// digest when `ask`.
    Broken {
        /// No digest has been asked for since.
        ask: bool,
    },
}

#[derive(Debug, Default)]
struct Feed {
    /// The number of the last news applied, or of the last complete digest.
    last_seq: Option<u64>,
    /// A digest was asked for and has not completed yet.
    asked: bool,
    assembling: Option<Assembly>,
}

#[derive(Debug)]
struct Assembly {
    seq: u64,
    next_page: u32,
    pages: u32,
    seen: HashSet<Uuid>,
}

/// Every node's feed.
#[derive(Debug, Default)]
pub struct Feeds {
    feeds: HashMap<Uuid, Feed>,
}

impl Feeds {
    /// Judges INSTANCE_NEWS number `seq` from `node`.
    pub fn news(&mut self, node: Uuid, seq: u64) -> NewsVerdict {
        let feed = self.feeds.entry(node).or_default();
        match feed.last_seq {
            // The first word from this node since this controller started: its digest was asked
            // for when the link came up.
            None => {
                feed.last_seq = Some(seq);
                NewsVerdict::Apply
            }
            Some(last) if seq <= last => NewsVerdict::Stale,
            Some(last) => {
                feed.last_seq = Some(seq);
                if seq == last + 1 || feed.asked {
                    NewsVerdict::Apply
                } else {
                    feed.asked = true;
                    NewsVerdict::ApplyAndAsk
                }
            }
        }
    }

    /// Takes in one digest page from `node` listing `ids`. A complete digest sets the node's
    /// news number to the digest's (a launcher that restarted counts from 0 again).
    pub fn page(&mut self, node: Uuid, page: DigestPage, ids: impl IntoIterator<Item = Uuid>) -> PageVerdict {
        let feed = self.feeds.entry(node).or_default();
        if page.page == 0 {
            feed.assembling = Some(Assembly { seq: page.seq, next_page: 0, pages: page.pages, seen: HashSet::new() });
        }
        let in_order = feed
            .assembling
            .as_ref()
            .is_some_and(|a| a.seq == page.seq && a.next_page == page.page && a.pages == page.pages);
        if !in_order {
            feed.assembling = None;
            let ask = !feed.asked;
            feed.asked = true;
            return PageVerdict::Broken { ask };
        }
        let Some(assembly) = feed.assembling.as_mut() else { return PageVerdict::Broken { ask: false } };
        assembly.seen.extend(ids);
        assembly.next_page += 1;
        if assembly.next_page < assembly.pages {
            return PageVerdict::Partial;
        }
        let seen = std::mem::take(&mut assembly.seen);
        feed.assembling = None;
        feed.last_seq = Some(page.seq);
        feed.asked = false;
        PageVerdict::Complete(seen)
    }

    /// Every known node was just asked for a digest (the link came up): gaps seen before it
    /// completes ask for nothing more.
    pub fn asked_all(&mut self) {
        for feed in self.feeds.values_mut() {
            feed.asked = true;
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

    #[test]
    fn news_in_order_applies_duplicates_drop_and_a_gap_asks_once() {
        let mut f = Feeds::default();
        assert_eq!(f.news(node(), 5), NewsVerdict::Apply, "first heard");
        assert_eq!(f.news(node(), 6), NewsVerdict::Apply);
        assert_eq!(f.news(node(), 6), NewsVerdict::Stale);
        assert_eq!(f.news(node(), 4), NewsVerdict::Stale);
        assert_eq!(f.news(node(), 9), NewsVerdict::ApplyAndAsk);
        assert_eq!(f.news(node(), 12), NewsVerdict::Apply, "already asked");
        assert_eq!(f.page(node(), page(12, 0, 1), []), PageVerdict::Complete(HashSet::new()));
        assert_eq!(f.news(node(), 14), NewsVerdict::ApplyAndAsk, "asks again after the digest");
    }

    #[test]
    fn pages_add_up_and_a_lost_page_asks_for_a_new_digest() {
        let mut f = Feeds::default();
        let (a, b) = (Uuid::from_bytes([1; 16]), Uuid::from_bytes([2; 16]));
        assert_eq!(f.page(node(), page(3, 0, 2), [a]), PageVerdict::Partial);
        assert_eq!(f.page(node(), page(3, 1, 2), [b]), PageVerdict::Complete([a, b].into()));
        assert_eq!(f.news(node(), 4), NewsVerdict::Apply, "the digest set the number");
        assert_eq!(f.page(node(), page(4, 1, 3), [a]), PageVerdict::Broken { ask: true }, "page 0 lost");
        assert_eq!(f.page(node(), page(4, 2, 3), [b]), PageVerdict::Broken { ask: false });
        assert_eq!(f.page(node(), page(0, 0, 1), [a]), PageVerdict::Complete([a].into()), "a restarted launcher");
        assert_eq!(f.news(node(), 1), NewsVerdict::Apply);
    }
}
