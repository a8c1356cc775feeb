//! The scheduler's pure core: who is connected, where frames go, where a START is placed.
//!
//! [`Hub::handle`] takes one [`Input`] and returns the [`Output`]s it causes. No IO, no clock,
//! no randomness, so every routing rule is a unit test.
//!
//! Placement here is ciao's first fit on available memory, skipping the most recently used node
//! when another fits; the scheduler issue replaces it with overcommit-aware placement,
//! reservations and queueing.

use std::collections::BTreeMap;

use ssntp::payload::{
    CommandFailure, FailureReason, InstanceFailure, Message, NodeEvent, NodeReport, NodeType, StartFailure,
};
use ssntp::{Frame, Role, Status, Uuid};

/// Something that happened at the shell.
#[derive(Debug)]
// A decoded message is ~320 bytes and moved once; boxing it would allocate per frame.
#[allow(clippy::large_enum_variant)]
pub enum Input {
    /// A peer finished the handshake.
    Connected {
        /// Its connection.
        conn_id: u64,
        /// Its UUID.
        uuid: Uuid,
        /// Its role.
        role: Role,
    },
    /// A peer's connection ended.
    Disconnected {
        /// The connection that ended (a stale one is ignored if the peer already reconnected).
        conn_id: u64,
        /// The peer.
        uuid: Uuid,
    },
    /// A peer sent a checked frame.
    Message {
        /// The peer.
        from: Uuid,
        /// Its role.
        role: Role,
        /// The raw frame, forwarded unchanged where possible (`None` in tests that only care
        /// about decisions).
        frame: Option<Frame>,
        /// The decoded payload.
        message: Message,
    },
}

/// What the shell must do.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Send a frame to one peer.
    To {
        /// The peer.
        peer: Uuid,
        /// The frame.
        frame: Frame,
    },
    /// Send a frame to every connected controller.
    ToControllers(Frame),
    /// Replace the cluster configuration (CONFIGURE).
    Configure(ssntp::payload::ClusterConfig),
}

/// A connected launcher as the hub sees it.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its UUID.
    pub uuid: Uuid,
    /// Its current connection.
    pub conn_id: u64,
    /// Its last reported status (CONNECTED until the first report).
    pub status: Status,
    /// Its last capacity report.
    pub report: Option<NodeReport>,
}

/// The core state.
#[derive(Debug)]
pub struct Hub {
    uuid: Uuid,
    /// Controllers in connection order: the first is the master, the others backups.
    controllers: Vec<(Uuid, u64)>,
    nodes: BTreeMap<Uuid, Node>,
    mru: Option<Uuid>,
}

impl Hub {
    /// An empty hub for the scheduler with this UUID.
    pub fn new(uuid: Uuid) -> Self {
        Self { uuid, controllers: Vec::new(), nodes: BTreeMap::new(), mru: None }
    }

    /// Controllers, master first.
    pub fn controllers(&self) -> Vec<Uuid> {
        self.controllers.iter().map(|(u, _)| *u).collect()
    }

    /// Connected launchers in UUID order.
    pub fn nodes(&self) -> Vec<&Node> {
        self.nodes.values().collect()
    }

    /// The node that got the last START.
    pub fn most_recently_used(&self) -> Option<Uuid> {
        self.mru
    }

    fn own(&self, message: &Message) -> Frame {
        message.to_frame(self.uuid)
    }

    /// Applies one input.
    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        match input {
            Input::Connected { conn_id, uuid, role } => self.connected(conn_id, uuid, role),
            Input::Disconnected { conn_id, uuid } => self.disconnected(conn_id, uuid),
            Input::Message { from, role, frame, message } => {
                let frame = frame.unwrap_or_else(|| message.to_frame(from));
                self.message(from, role, frame, message)
            }
        }
    }

    fn connected(&mut self, conn_id: u64, uuid: Uuid, role: Role) -> Vec<Output> {
        if role.contains(Role::CONTROLLER) {
            match self.controllers.iter_mut().find(|(u, _)| *u == uuid) {
                Some(entry) => entry.1 = conn_id,
                None => self.controllers.push((uuid, conn_id)),
            }
            return Vec::new();
        }
        if role.intersects(Role::AGENT | Role::NETAGENT | Role::CNCIAGENT) {
            self.nodes.insert(uuid, Node { uuid, conn_id, status: Status::Connected, report: None });
            let node_type = if role.contains(Role::AGENT) { NodeType::ComputeNode } else { NodeType::NetworkNode };
            let event = Message::NodeConnected(NodeEvent { node_uuid: uuid, node_type });
            return vec![Output::ToControllers(self.own(&event))];
        }
        Vec::new()
    }

    fn disconnected(&mut self, conn_id: u64, uuid: Uuid) -> Vec<Output> {
        // Master promotion: removing the first entry makes the next one master.
        self.controllers.retain(|(u, c)| !(*u == uuid && *c == conn_id));
        match self.nodes.get(&uuid) {
            Some(node) if node.conn_id == conn_id => {
                self.nodes.remove(&uuid);
                if self.mru == Some(uuid) {
                    self.mru = None;
                }
                let event = Message::NodeDisconnected(NodeEvent { node_uuid: uuid, node_type: NodeType::ComputeNode });
                vec![Output::ToControllers(self.own(&event))]
            }
            _ => Vec::new(),
        }
    }

    fn is_master(&self, uuid: Uuid) -> bool {
        self.controllers.first().is_some_and(|(u, _)| *u == uuid)
    }

    fn message(&mut self, from: Uuid, role: Role, frame: Frame, message: Message) -> Vec<Output> {
        if role.contains(Role::CONTROLLER) {
            return self.command(from, frame, message);
        }
        match message {
            Message::Ready(report) => self.status(from, Status::Ready, Some(report)),
            Message::Full(report) => self.status(from, Status::Full, report),
            Message::Maintenance(report) => self.status(from, Status::Maintenance, report),
            Message::Offline => self.status(from, Status::Offline, None),
            // STATS, launcher events and launcher errors: every controller (ciao's role rule).
            _ => vec![Output::ToControllers(frame)],
        }
    }

    fn status(&mut self, from: Uuid, status: Status, report: Option<NodeReport>) -> Vec<Output> {
        if let Some(node) = self.nodes.get_mut(&from) {
            node.status = status;
            if report.is_some() {
                node.report = report;
            }
        }
        Vec::new()
    }

    fn command(&mut self, from: Uuid, frame: Frame, message: Message) -> Vec<Output> {
        if !self.is_master(from) && !matches!(message, Message::TraceReport(_)) {
            let detail = "only the master controller may command; this controller is a backup".to_owned();
            return self.refuse(from, &message, FailureReason::NotPermitted, detail);
        }
        let target = match &message {
            Message::Start(start) => return self.place(from, frame, start.clone()),
            Message::Configure(c) => return vec![Output::Configure(c.config.clone())],
            Message::TraceReport(_) => return vec![Output::ToControllers(frame)],
            Message::Stop(m) => m.workload_agent_uuid,
            Message::Delete(m) => m.workload_agent_uuid,
            Message::Restart(m) => m.workload_agent_uuid,
            Message::Evacuate(m) => m.workload_agent_uuid,
            Message::Restore(m) => m.workload_agent_uuid,
            Message::LogFetch(m) => m.workload_agent_uuid,
            // Errors a controller reports (rare) go to the other controllers.
            _ => return vec![Output::ToControllers(frame)],
        };
        if self.nodes.contains_key(&target) {
            if let Message::Evacuate(_) = message {
                if let Some(node) = self.nodes.get_mut(&target) {
                    node.status = Status::Maintenance; // no new work from now on
                }
            }
            vec![Output::To { peer: target, frame }]
        } else {
            self.refuse(from, &message, FailureReason::NoNode, format!("node {target} is not connected"))
        }
    }

    /// ciao's first fit: the first READY node with enough available memory, skipping the most
    /// recently used one when another fits.
    fn place(&mut self, from: Uuid, frame: Frame, mut start: ssntp::payload::Start) -> Vec<Output> {
        if self.nodes.is_empty() {
            let message = Message::Start(start);
            return self.refuse(from, &message, FailureReason::NoCn, "no launcher is connected".into());
        }
        let need = start.requirements.mem_mb;
        let fits = |n: &&Node| {
            n.status == Status::Ready
                && n.report.as_ref().is_some_and(|r| r.mem_available_mb >= need)
                && start.requirements.node_id.is_none_or(|id| id == n.uuid)
        };
        let candidates: Vec<Uuid> = self.nodes.values().filter(fits).map(|n| n.uuid).collect();
        let chosen = candidates.iter().copied().find(|u| Some(*u) != self.mru).or(candidates.first().copied());
        let Some(node) = chosen else {
            let ready = self.nodes.values().filter(|n| n.status == Status::Ready).count();
            let detail = format!(
                "0 of {} nodes fit: {} not READY, {} with less than {need} MiB available",
                self.nodes.len(),
                self.nodes.len() - ready,
                ready
            );
            return self.refuse(from, &Message::Start(start), FailureReason::FullCloud, detail);
        };
        self.mru = Some(node);
        start.workload_agent_uuid = Some(node);
        let forwarded = Frame { payload: Message::Start(start).encode_payload(), ..frame };
        vec![Output::To { peer: node, frame: forwarded }]
    }

    /// The failure matching a refused command, sent back to its sender.
    fn refuse(&self, to: Uuid, message: &Message, reason: FailureReason, detail: String) -> Vec<Output> {
        let instance_failure =
            |instance_uuid, node_uuid| InstanceFailure { node_uuid, instance_uuid, reason, detail: detail.clone() };
        let command_failure = |node_uuid, instance_uuid| CommandFailure {
            command: message.kind().to_string(),
            node_uuid,
            instance_uuid,
            reason,
            detail: detail.clone(),
        };
        let failure = match message {
            Message::Start(s) => Message::StartFailure(StartFailure {
                node_uuid: None,
                instance_uuid: s.instance_uuid,
                reason,
                restart: s.restart,
                detail: detail.clone(),
            }),
            Message::Stop(m) => Message::StopFailure(instance_failure(m.instance_uuid, Some(m.workload_agent_uuid))),
            Message::Delete(m) => {
                Message::DeleteFailure(instance_failure(m.instance_uuid, Some(m.workload_agent_uuid)))
            }
            Message::Restart(m) => {
                Message::RestartFailure(instance_failure(m.instance_uuid, Some(m.workload_agent_uuid)))
            }
            Message::Evacuate(m) => Message::CommandFailure(command_failure(Some(m.workload_agent_uuid), None)),
            Message::Restore(m) => Message::CommandFailure(command_failure(Some(m.workload_agent_uuid), None)),
            Message::LogFetch(m) => {
                Message::CommandFailure(command_failure(Some(m.workload_agent_uuid), Some(m.instance_uuid)))
            }
            _ => Message::CommandFailure(command_failure(None, None)),
        };
        vec![Output::To { peer: to, frame: self.own(&failure) }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssntp::payload::{Backend, Delete, Requirements, Start, WorkClass};

    fn u(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn ready(node: Uuid, avail: u64) -> Message {
        Message::Ready(NodeReport {
            node_uuid: node,
            mem_total_mb: 4096,
            mem_available_mb: avail,
            ..Default::default()
        })
    }

    fn start(instance: u8, mem_mb: u64) -> Message {
        Message::Start(Start {
            instance_uuid: u(instance),
            tenant_uuid: None,
            workload_uuid: None,
            class: WorkClass::Workorder,
            priority: 0,
            deadline_unix_ms: None,
            requirements: Requirements { vcpus: 1, mem_mb, ..Default::default() },
            backend: Backend::Sim { duration_ms: 1, mem_usage_mb: 1, exit_code: 0 },
            restart: false,
            max_run_time_s: None,
            workload_agent_uuid: None,
        })
    }

    fn msg(hub: &mut Hub, from: Uuid, role: Role, message: Message) -> Vec<Output> {
        hub.handle(Input::Message { from, role, frame: None, message })
    }

    fn decoded(out: &Output) -> (Option<Uuid>, Message) {
        match out {
            Output::To { peer, frame } => (Some(*peer), Message::decode(frame).unwrap()),
            Output::ToControllers(frame) => (None, Message::decode(frame).unwrap()),
            Output::Configure(_) => panic!("configure"),
        }
    }

    const CTL: Role = Role::CONTROLLER;
    const AGENT: Role = Role::AGENT;

    #[test]
    fn first_fit_skips_the_most_recently_used_node_and_refuses_with_a_reason() {
        let mut hub = Hub::new(u(0));
        hub.handle(Input::Connected { conn_id: 1, uuid: u(1), role: CTL });
        let out = msg(&mut hub, u(1), CTL, start(50, 10));
        assert!(matches!(decoded(&out[0]).1, Message::StartFailure(StartFailure { reason: FailureReason::NoCn, .. })));
        for n in [10, 11] {
            let connected = hub.handle(Input::Connected { conn_id: u64::from(n), uuid: u(n), role: AGENT });
            assert!(matches!(decoded(&connected[0]), (None, Message::NodeConnected(_))));
            msg(&mut hub, u(n), AGENT, ready(u(n), 1000));
        }
        let first = decoded(&msg(&mut hub, u(1), CTL, start(51, 100))[0]);
        let second = decoded(&msg(&mut hub, u(1), CTL, start(52, 100))[0]);
        assert_eq!(first.0, Some(u(10)));
        assert_eq!(second.0, Some(u(11)), "the most recently used node is skipped");
        let Message::Start(s) = second.1 else { panic!() };
        assert_eq!(s.workload_agent_uuid, Some(u(11)));
        let out = msg(&mut hub, u(1), CTL, start(53, 5000));
        let (to, Message::StartFailure(f)) = decoded(&out[0]) else { panic!() };
        assert_eq!(to, Some(u(1)));
        assert_eq!(f.reason, FailureReason::FullCloud);
        assert!(f.detail.contains("0 of 2 nodes fit"), "{}", f.detail);
    }

    #[test]
    fn backups_are_refused_and_promoted_when_the_master_leaves() {
        let mut hub = Hub::new(u(0));
        hub.handle(Input::Connected { conn_id: 1, uuid: u(1), role: CTL });
        hub.handle(Input::Connected { conn_id: 2, uuid: u(2), role: CTL });
        let out = msg(&mut hub, u(2), CTL, start(50, 10));
        let (to, Message::StartFailure(f)) = decoded(&out[0]) else { panic!() };
        assert_eq!((to, f.reason), (Some(u(2)), FailureReason::NotPermitted));
        hub.handle(Input::Disconnected { conn_id: 1, uuid: u(1) });
        assert_eq!(hub.controllers(), vec![u(2)]);
        let out = msg(&mut hub, u(2), CTL, start(50, 10));
        assert!(matches!(decoded(&out[0]).1, Message::StartFailure(StartFailure { reason: FailureReason::NoCn, .. })));
    }

    #[test]
    fn commands_for_absent_nodes_get_an_error_and_reports_reach_controllers() {
        let mut hub = Hub::new(u(0));
        hub.handle(Input::Connected { conn_id: 1, uuid: u(1), role: CTL });
        let delete = Message::Delete(Delete { instance_uuid: u(50), workload_agent_uuid: u(9), stop: false });
        let (to, Message::DeleteFailure(f)) = decoded(&msg(&mut hub, u(1), CTL, delete.clone())[0]) else { panic!() };
        assert_eq!((to, f.reason), (Some(u(1)), FailureReason::NoNode));
        hub.handle(Input::Connected { conn_id: 9, uuid: u(9), role: AGENT });
        assert_eq!(decoded(&msg(&mut hub, u(1), CTL, delete.clone())[0]), (Some(u(9)), delete));
        let stopped =
            Message::InstanceStopped(ssntp::payload::InstanceEvent { instance_uuid: u(50), node_uuid: Some(u(9)) });
        assert_eq!(decoded(&msg(&mut hub, u(9), AGENT, stopped.clone())[0]), (None, stopped));
        // A stale disconnect (old connection of a peer that reconnected) changes nothing.
        hub.handle(Input::Connected { conn_id: 19, uuid: u(9), role: AGENT });
        assert!(hub.handle(Input::Disconnected { conn_id: 9, uuid: u(9) }).is_empty());
        assert_eq!(hub.nodes().len(), 1);
        assert_eq!(hub.handle(Input::Disconnected { conn_id: 19, uuid: u(9) }).len(), 1);
        assert!(hub.nodes().is_empty());
    }
}
