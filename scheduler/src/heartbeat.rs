//! The `--heartbeat` status line, in ciao's format so its users can read it at a glance:
//!
//! ```text
//! controller-7d6a2bfd:MASTER, controller-9d8a2801:BACKUP\t\tnode-248ab133:READY*:13756/16038,0.12
//! ```
//!
//! At most two controllers (master first) and four connected nodes are shown, as ciao did; `*`
//! marks the node that got the last START. Drover prints the load with two decimals (ciao's was
//! an int) and follows ciao's part with its own summary, after ` | `:
//!
//! ```text
//! … | nodes: 3 ready, 1 full, 0 maintenance, 0 down, 0 lost | queued 2 (oldest 4s) | 1250 starts/s | reclaimed 512 MiB
//! ```
//!
//! `BRAKE: …` is appended while the node-loss brake holds back NODE_LOST, with the way out
//! (`drover node forget NODE` for a node that is gone for good).

use std::fmt::Write as _;

use crate::hub::{Hub, Now, Summary};

/// Produces the heartbeat lines; remembers the placement count to print a rate.
#[derive(Debug, Default)]
pub struct Heartbeat {
    last: Option<(u64, u64)>,
}

impl Heartbeat {
    /// The full line (ciao's part and Drover's `summary`, taken at `now`).
    pub fn line(&mut self, hub: &Hub, s: &Summary, now: Now) -> String {
        let rate = match self.last {
            Some((at, count)) if now.mono_ms > at => (s.placements - count) * 1000 / (now.mono_ms - at),
            _ => 0,
        };
        self.last = Some((now.mono_ms, s.placements));
        let mut out = ciao_line(hub);
        let down = s.disconnected + s.not_ready;
        let _ = write!(
            out,
            " | nodes: {} ready, {} full, {} maintenance, {down} down, {} lost | queued {} (oldest {}s) | {rate} starts/s | reclaimed {} MiB",
            s.ready,
            s.full,
            s.maintenance,
            s.lost,
            s.queued,
            s.oldest_wait_ms / 1000,
            s.reclaimed_mb
        );
        if s.reserved > 0 {
            let _ = write!(out, " | {} reserved for big jobs", s.reserved);
        }
        if s.migrating > 0 {
            let _ = write!(out, " | {} migrating", s.migrating);
        }
        if s.brake {
            out.push_str(" | BRAKE: NODE_LOST held back (nodes gone for good: drover node forget NODE)");
        }
        out
    }
}

/// ciao's part of the line.
pub fn ciao_line(hub: &Hub) -> String {
    let controllers = hub.controllers();
    let nodes: Vec<_> = hub.nodes().filter(|n| n.conn_id.is_some()).collect();
    if controllers.is_empty() && nodes.is_empty() {
        return "** idle / disconnected **".to_owned();
    }
    let mut out = String::new();
    if controllers.is_empty() {
        out.push_str(" -no Controller- \t\t\t\t\t");
    } else {
        let shown: Vec<String> = controllers
            .iter()
            .take(2)
            .enumerate()
            .map(|(i, uuid)| format!("controller-{}:{}", uuid.short(), if i == 0 { "MASTER" } else { "BACKUP" }))
            .collect();
        out.push_str(&shown.join(", "));
        out.push_str(if shown.len() < 2 { "\t\t\t\t" } else { "\t\t" });
    }
    if nodes.is_empty() {
        out.push_str(" -no Compute Nodes-");
        return out;
    }
    let shown: Vec<String> = nodes
        .iter()
        .take(4)
        .map(|node| {
            let mut s = format!("node-{}:{}", node.uuid.short(), node.status.ciao_name());
            if hub.most_recently_used() == Some(node.uuid) {
                s.push('*');
            }
            let r = &node.report;
            let _ = write!(s, ":{}/{},{:.2}", r.mem_available_mb, r.mem_total_mb, r.load);
            s
        })
        .collect();
    out.push_str(&shown.join(", "));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Config, Input};
    use ssntp::payload::{Message, NodeReport};
    use ssntp::{Role, Uuid};

    fn uuid(n: u8) -> Uuid {
        let mut b = [0u8; 16];
        b[0] = 0;
        b[3] = n;
        Uuid::from_bytes(b)
    }

    fn report(node: Uuid, avail: u64, total: u64) -> NodeReport {
        NodeReport { node_uuid: node, mem_total_mb: total, mem_available_mb: avail, ..Default::default() }
    }

    #[test]
    fn matches_ciao_layout() {
        let now = Now { mono_ms: 0, unix_ms: 0 };
        let mut hub = Hub::new(uuid(99), Config::default(), now);
        assert_eq!(ciao_line(&hub), "** idle / disconnected **");
        hub.handle(now, Input::Connected { conn_id: 1, uuid: uuid(1), role: Role::CONTROLLER, term: None });
        hub.handle(now, Input::Connected { conn_id: 2, uuid: uuid(2), role: Role::CONTROLLER, term: None });
        assert_eq!(ciao_line(&hub), "controller-00000001:MASTER, controller-00000002:BACKUP\t\t -no Compute Nodes-");
        for (i, (a, t)) in [(1u8, (16138, 16138)), (2, (256, 256))] {
            let n = uuid(i);
            hub.handle(now, Input::Connected { conn_id: 10 + u64::from(i), uuid: n, role: Role::AGENT, term: None });
            hub.handle(
                now,
                Input::Message { from: n, role: Role::AGENT, frame: None, message: Message::Ready(report(n, a, t)) },
            );
        }
        assert_eq!(
            ciao_line(&hub),
            "controller-00000001:MASTER, controller-00000002:BACKUP\t\tnode-00000001:READY:16138/16138,0.00, node-00000002:READY:256/256,0.00"
        );
        let mut heartbeat = Heartbeat::default();
        assert!(heartbeat.line(&hub, &hub.summary(now), now).ends_with(
            " | nodes: 2 ready, 0 full, 0 maintenance, 0 down, 0 lost | queued 0 (oldest 0s) | 0 starts/s | reclaimed 0 MiB"
        ));
        let reserving = Summary { reserved: 1, ..hub.summary(now) };
        assert!(heartbeat.line(&hub, &reserving, now).ends_with(" | 1 reserved for big jobs"));
        let moving = Summary { migrating: 2, ..hub.summary(now) };
        assert!(heartbeat.line(&hub, &moving, now).ends_with(" | 2 migrating"));
    }
}
