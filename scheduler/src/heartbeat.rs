//! The `--heartbeat` status line, in ciao's format so its users can read it at a glance:
//!
//! ```text
//! controller-7d6a2bfd:MASTER, controller-9d8a2801:BACKUP\t\tnode-248ab133:READY*:13756/16038,0.12
//! ```
//!
//! At most two controllers (master first) and four nodes are shown, as ciao did; `*` marks the
//! node that got the last START. Drover prints the load with two decimals (ciao's was an int).

use std::fmt::Write as _;

use crate::hub::Hub;

/// The line for the hub's current state.
pub fn line(hub: &Hub) -> String {
    let controllers = hub.controllers();
    let nodes = hub.nodes();
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
            let mut s = format!("node-{}:{}", node.uuid.short(), node.status);
            if hub.most_recently_used() == Some(node.uuid) {
                s.push('*');
            }
            let (avail, total, load) =
                node.report.as_ref().map_or((0, 0, 0.0), |r| (r.mem_available_mb, r.mem_total_mb, r.load));
            let _ = write!(s, ":{avail}/{total},{load:.2}");
            s
        })
        .collect();
    out.push_str(&shown.join(", "));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Input;
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
        let mut hub = Hub::new(uuid(99));
        assert_eq!(line(&hub), "** idle / disconnected **");
        hub.handle(Input::Connected { conn_id: 1, uuid: uuid(1), role: Role::CONTROLLER });
        hub.handle(Input::Connected { conn_id: 2, uuid: uuid(2), role: Role::CONTROLLER });
        assert_eq!(line(&hub), "controller-00000001:MASTER, controller-00000002:BACKUP\t\t -no Compute Nodes-");
        for (i, (a, t)) in [(1u8, (16138, 16138)), (2, (256, 256))] {
            let n = uuid(i);
            hub.handle(Input::Connected { conn_id: 10 + u64::from(i), uuid: n, role: Role::AGENT });
            hub.handle(Input::Message {
                from: n,
                role: Role::AGENT,
                frame: None,
                message: Message::Ready(report(n, a, t)),
            });
        }
        assert_eq!(
            line(&hub),
            "controller-00000001:MASTER, controller-00000002:BACKUP\t\tnode-00000001:READY:16138/16138,0.00, node-00000002:READY:256/256,0.00"
        );
    }
}
