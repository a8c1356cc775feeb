//! A node's instance reports against the store: INSTANCE_NEWS and digest pages (STATS) carry
//! each instance's whole state on that node, so one rule reads both ([`Service::stat_changes`]):
//! lost start reports, stale copies and missed ends. A complete digest also finds the instances
//! the store believes run there that the node no longer holds: they are lost. The order of a
//! node's reports (gaps, duplicates, pages) is judged by [`crate::feeds::Feeds`].

use drover_model::InstanceStatus;
use ssntp::payload::{InstanceNews, InstanceStat, ReportRequest};

use super::*;
use crate::feeds::{NewsVerdict, PageVerdict};

impl Service {
    /// What one instance's stat from `node` calls for: changes, and STOPs for copies that
    /// should not run there.
    ///
    /// # Errors
    /// The store.
    pub(super) fn stat_changes(
        &self,
        node: Uuid,
        stat: &InstanceStat,
        changes: &mut Vec<Change>,
        out: &mut Vec<Message>,
    ) -> Result<(), ServiceError> {
        let id = stat.instance_uuid;
        // The indexes answer the common cases (a start reported, a running instance reported
        // where the store has it, an end) without reading the record.
        let running_on = self.store.node_of(id);
        let here = running_on == Some(node);
        let ended = matches!(stat.state, InstanceState::Exited | InstanceState::Stopped);
        if here && !ended {
            return Ok(());
        }
        let state = self.store.state_of(id);
        let waiting = matches!(state, Some(InstanceStatus::Starting | InstanceStatus::Queued));
        match stat.state {
            InstanceState::Active | InstanceState::Pending => {
                let unwanted =
                    state.is_none_or(|status| status.is_final() || running_on.is_some_and(|other| other != node));
                if waiting {
                    // It runs there, and its start report was lost or is this: this is the copy.
                    changes.push((id, Input::Started { node }, String::new()));
                } else if unwanted {
                    out.push(stop(id, node));
                }
            }
            InstanceState::Exited | InstanceState::Stopped if here || waiting => {
                if waiting {
                    // Started and ended between two reports.
                    changes.push((id, Input::Started { node }, String::new()));
                }
                if stat.state == InstanceState::Exited {
                    let code = stat.exit_code;
                    let reason = stat.reason.filter(|r| *r != ExitReason::Unknown).unwrap_or(if code == Some(0) {
                        ExitReason::Completed
                    } else {
                        ExitReason::Failed
                    });
                    let why = format!("exited: {reason:?}{}", code.map_or(String::new(), |c| format!(", code {c}")));
                    changes.push((id, Input::Exited { code, reason }, why));
                } else {
                    // A stop the user did not ask for was the node's: an evacuation.
                    let user = self.store.instance(id)?.is_some_and(|r| r.life.stop_requested);
                    let why = if user { "stopped" } else { "evacuated" };
                    changes.push((id, Input::Stopped { evacuated: !user }, why.into()));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// An INSTANCE_NEWS from `node`: its changes, and a REPORT_REQUEST when news was lost.
    ///
    /// # Errors
    /// The store.
    pub(super) fn news_changes(
        &self,
        node: Uuid,
        news: &InstanceNews,
        changes: &mut Vec<Change>,
        out: &mut Vec<Message>,
    ) -> Result<(), ServiceError> {
        // A gap makes the node want a digest; [`Service::digests_due`] asks for it.
        if self.feeds.lock().expect("feeds lock").news(node, news.seq, &news.instances) == NewsVerdict::Stale {
            return Ok(());
        }
        for stat in &news.instances {
            self.stat_changes(node, stat, changes, out)?;
        }
        Ok(())
    }

    /// One STATS from `node`. A heartbeat (no digest) changes nothing here. A digest page's
    /// entries are read as news; once its last page is in, `changes` so far are applied and the
    /// instances the store believes run there that the digest did not list are lost.
    ///
    /// # Errors
    /// The store.
    pub(super) fn digest_changes(
        &self,
        node: Uuid,
        stats: &Stats,
        now_ms: u64,
        changes: &mut Vec<Change>,
        out: &mut Vec<Message>,
    ) -> Result<(), ServiceError> {
        let Some(page) = stats.digest else { return Ok(()) };
        for stat in &stats.instances {
            self.stat_changes(node, stat, changes, out)?;
        }
        let verdict = self.feeds.lock().expect("feeds lock").page(node, page, &stats.instances);
        match verdict {
            PageVerdict::Partial | PageVerdict::Broken => {}
            PageVerdict::Complete(listed) => {
                out.extend(self.apply_changes(std::mem::take(changes), now_ms)?);
                let mut lost: Vec<Uuid> =
                    self.store.running_on(node).into_iter().filter(|id| !listed.contains(id)).collect();
                lost.sort_unstable();
                let why = format!("not held by node {} any more (its digest did not list it)", node.short());
                out.extend(self.apply(lost.into_iter().map(|id| (id, Input::NodeLost)).collect(), &why, now_ms)?);
            }
        }
        Ok(())
    }

    /// Applies one STATS from `node` at once (see [`Service::report_many`] for frames in bulk);
    /// returns the commands it calls for.
    ///
    /// # Errors
    /// The store.
    pub fn reconcile(&self, stats: &Stats, now_ms: u64) -> Result<Vec<Message>, ServiceError> {
        let (mut changes, mut out) = (Vec::new(), Vec::new());
        self.digest_changes(stats.node_uuid, stats, now_ms, &mut changes, &mut out)?;
        out.extend(self.apply_changes(changes, now_ms)?);
        Ok(out)
    }

    /// The link came up: every node needs a digest (what was missed while it was down is in
    /// them), the nodes the store believes run instances included; [`Service::digests_due`]
    /// asks for them a few at a time.
    pub fn link_up(&self) {
        // Unanswered STARTs go again through the reconnect's gate, not the start timeout.
        self.watch.lock().expect("watch lock").clear();
        let mut feeds = self.feeds.lock().expect("feeds lock");
        feeds.want_all();
        // Nodes it has not heard from since it started but believes run its instances: a
        // scheduler that lost them answers NODE_LOST, one that never saw them (it restarted)
        // expects them and declares them lost if they stay away.
        for node in self.store.nodes_running() {
            feeds.heard(node);
        }
    }

    /// A node was heard from: one new to this controller needs a digest.
    pub fn heard(&self, node: Uuid) {
        self.feeds.lock().expect("feeds lock").heard(node);
    }

    /// The instances `node` itself says run there (from its news and digests), sorted.
    pub fn reported_running(&self, node: Uuid) -> Vec<Uuid> {
        self.feeds.lock().expect("feeds lock").running(node)
    }

    /// The REPORT_REQUESTs to send at `now_ms` (see [`crate::feeds`]).
    pub fn digests_due(&self, now_ms: u64) -> Vec<Message> {
        let due = self.feeds.lock().expect("feeds lock").due(now_ms);
        due.into_iter().map(|node| Message::ReportRequest(ReportRequest { node_uuid: Some(node) })).collect()
    }
}
