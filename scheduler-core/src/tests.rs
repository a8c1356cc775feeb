//! Rules of the hub, one test each, and a property test of its safety invariants against a
//! reference model.

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;
use ssntp::payload::{
    Backend, Delete, Evacuate, InstanceEvent, InstanceExited, InstanceStat, Requirements, Restore, Stats, WorkClass,
};
use ssntp::payload::{ExitReason, InstanceState, NodeState};

use drover_model::Overcommit;

use super::*;

const CTL: Role = Role::CONTROLLER;
const AGENT: Role = Role::AGENT;

fn u(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

fn at(sec: u64) -> Now {
    Now { mono_ms: sec * 1000, unix_ms: 1_700_000_000_000 + sec * 1000 }
}

fn report(node: Uuid, cpus: u32, mem: u64, load: f64) -> NodeReport {
    NodeReport {
        node_uuid: node,
        mem_total_mb: mem,
        mem_available_mb: mem,
        cpus_online: cpus,
        hostname: format!("host-{}", node.short()),
        load,
        arch: "x86_64".into(),
        features: vec!["process".into(), "sim".into()],
        ..Default::default()
    }
}

fn start(instance: Uuid, vcpus: u32, mem_mb: u64) -> Start {
    Start::new(
        instance,
        Requirements { vcpus, mem_mb, ..Default::default() },
        Backend::Sim { duration_ms: 1, mem_usage_mb: 1, exit_code: 0 },
    )
}

struct Rig {
    hub: Hub,
    now: Now,
}

impl Rig {
    fn new(cfg: Config) -> Self {
        let now = at(0);
        let mut hub = Hub::new(u(0), cfg, now);
        hub.handle(now, Input::Connected { conn_id: 1, uuid: u(1), role: CTL, term: None });
        Self { hub, now }
    }

    fn node(&mut self, n: u8, cpus: u32, mem: u64) {
        self.hub
            .handle(self.now, Input::Connected { conn_id: u64::from(n) + 100, uuid: u(n), role: AGENT, term: None });
        self.ready(n, report(u(n), cpus, mem, 0.0));
    }

    fn ready(&mut self, n: u8, r: NodeReport) -> Vec<(Option<Uuid>, Message)> {
        self.send(u(n), AGENT, Message::Ready(r))
    }

    fn send(&mut self, from: Uuid, role: Role, message: Message) -> Vec<(Option<Uuid>, Message)> {
        let out = self.hub.handle(self.now, Input::Message { from, role, frame: None, message });
        decode(out)
    }

    fn start(&mut self, s: Start) -> Vec<(Option<Uuid>, Message)> {
        self.send(u(1), CTL, Message::Start(s))
    }

    fn tick(&mut self, sec: u64) -> Vec<(Option<Uuid>, Message)> {
        self.now = at(sec);
        decode(self.hub.tick(self.now))
    }
}

fn decode(out: Vec<Output>) -> Vec<(Option<Uuid>, Message)> {
    out.into_iter()
        .filter_map(|o| match o {
            Output::To { peer, payload } => Some((Some(peer), message_of(payload))),
            Output::ToControllers(payload) => Some((None, message_of(payload))),
            Output::Configure(_) | Output::Warn(_) => None,
        })
        .collect()
}

/// The message of a payload; only a forwarded frame needs decoding.
fn message_of(payload: Payload) -> Message {
    match payload {
        Payload::Message { message, .. } => *message,
        Payload::Forward(frame) => Message::decode(&frame).unwrap(),
    }
}

fn placed_on(out: &[(Option<Uuid>, Message)]) -> Vec<(Uuid, Uuid)> {
    out.iter()
        .filter_map(|(to, m)| match m {
            Message::Start(s) => Some((s.instance_uuid, to.expect("START goes to a node"))),
            _ => None,
        })
        .collect()
}

fn failure(out: &[(Option<Uuid>, Message)]) -> Option<&StartFailure> {
    out.iter().find_map(|(_, m)| if let Message::StartFailure(f) = m { Some(f) } else { None })
}

fn queued(out: &[(Option<Uuid>, Message)]) -> Option<&InstanceQueued> {
    out.iter().find_map(|(_, m)| if let Message::InstanceQueued(q) = m { Some(q) } else { None })
}

#[test]
fn overcommit_bounds_vcpus_and_memory_and_the_queue_says_why() {
    let mut rig = Rig::new(Config { overcommit: Overcommit { cpu: 2.0, mem: 1.0 }, ..Config::default() });
    rig.node(10, 2, 1000);
    for i in 0..4 {
        assert_eq!(placed_on(&rig.start(start(u(50 + i), 1, 10))).len(), 1, "4 vCPUs = 2 CPUs × 2");
    }
    let out = rig.start(start(u(60), 1, 10));
    let q = queued(&out).expect("fifth START waits");
    assert_eq!(q.reason, "0 of 1 nodes fit: 1 insufficient vCPUs");
    let mut rig = Rig::new(Config { overcommit: Overcommit { cpu: 4.0, mem: 1.5 }, ..Config::default() });
    let mut r = report(u(10), 64, 1000, 0.0);
    r.mem_available_mb = 10_000; // real memory is not what limits here
    rig.hub.handle(rig.now, Input::Connected { conn_id: 5, uuid: u(10), role: AGENT, term: None });
    rig.ready(10, r);
    assert_eq!(placed_on(&rig.start(start(u(50), 1, 1400))).len(), 1);
    let q = queued(&rig.start(start(u(51), 1, 200))).cloned().expect("1400 + 200 > 1500");
    assert!(q.reason.contains("insufficient memory"), "{}", q.reason);
}

#[test]
fn a_node_takes_at_most_the_start_window_in_flight_and_more_as_it_confirms() {
    let mut rig = Rig::new(Config { start_window: 2, ..Config::default() });
    rig.node(10, 64, 10_000);
    assert_eq!(placed_on(&rig.start(start(u(50), 1, 10))).len(), 1);
    assert_eq!(placed_on(&rig.start(start(u(51), 1, 10))).len(), 1);
    let out = rig.start(start(u(52), 1, 10));
    assert!(placed_on(&out).is_empty(), "two STARTs in flight fill the window");
    assert_eq!(queued(&out).unwrap().reason, "0 of 1 nodes fit: 1 busy starting earlier work");
    // A node that becomes ready takes the queued work; new work goes where there is room.
    rig.hub.handle(rig.now, Input::Connected { conn_id: 111, uuid: u(11), role: AGENT, term: None });
    assert_eq!(placed_on(&rig.ready(11, report(u(11), 64, 10_000, 0.0))), vec![(u(52), u(11))]);
    assert_eq!(placed_on(&rig.start(start(u(53), 1, 10))), vec![(u(53), u(11))]);
    assert!(queued(&rig.start(start(u(54), 1, 10))).is_some(), "both windows are full");
    // A confirmation frees a slot, and the queued START goes to the node that confirmed.
    let started = Message::InstanceStarted(InstanceEvent { instance_uuid: u(50), node_uuid: Some(u(10)) });
    let out = rig.send(u(10), AGENT, started);
    assert_eq!(placed_on(&out), vec![(u(54), u(10))]);
    assert!(!rig.hub.is_queued(&u(54)));
    assert!(rig.hub.indexes_consistent());
}

#[test]
fn a_burst_between_two_reports_never_over_places() {
    let mut rig = Rig::new(Config::default());
    rig.node(10, 64, 1000);
    rig.node(11, 64, 1000);
    let mut per_node: HashMap<Uuid, u64> = HashMap::new();
    for i in 0..30 {
        for (_, node) in placed_on(&rig.start(start(Uuid::from_bytes([i; 16]), 1, 96))) {
            *per_node.entry(node).or_default() += 96;
        }
    }
    // Each node reported 1000 MiB once; 20 STARTs of 3 chunks fit, 10 wait.
    assert_eq!(per_node.values().sum::<u64>(), 20 * 96);
    assert!(per_node.values().all(|mb| *mb <= 1000));
    assert_eq!(rig.hub.summary(rig.now).queued, 10);
    // Spread: the two equal nodes share the work evenly.
    assert_eq!(per_node.values().collect::<HashSet<_>>().len(), 1);
}

#[test]
fn full_cn_from_a_launcher_is_retried_on_another_node() {
    let mut rig = Rig::new(Config::default());
    rig.node(10, 4, 1000);
    rig.node(11, 4, 900);
    let first = placed_on(&rig.start(start(u(50), 1, 100)));
    assert_eq!(first, vec![(u(50), u(10))], "spread: most free memory first");
    let refusal = StartFailure {
        node_uuid: Some(u(10)),
        instance_uuid: u(50),
        reason: FailureReason::FullCn,
        restart: false,
        detail: "fd limit".into(),
    };
    let out = rig.send(u(10), AGENT, Message::StartFailure(refusal));
    assert_eq!(placed_on(&out), vec![(u(50), u(11))]);
    assert!(failure(&out).is_none(), "full_cn is not passed on to the controller");
    assert_eq!(rig.hub.node(&u(10)).unwrap().status, NodeStatus::Full);
    // Any other refusal is passed on.
    let refusal = StartFailure {
        node_uuid: Some(u(11)),
        instance_uuid: u(50),
        reason: FailureReason::LaunchFailure,
        restart: false,
        detail: String::new(),
    };
    let out = rig.send(u(11), AGENT, Message::StartFailure(refusal));
    assert_eq!(failure(&out).unwrap().reason, FailureReason::LaunchFailure);
    assert_eq!(rig.hub.node_of(&u(50)), None);
}

#[test]
fn load_queue_keeps_class_and_priority_order_and_releases_when_load_drops() {
    let mut rig = Rig::new(Config { load_threshold: 1.0, ..Config::default() });
    rig.hub.handle(rig.now, Input::Connected { conn_id: 5, uuid: u(10), role: AGENT, term: None });
    rig.ready(10, report(u(10), 2, 10_000, 3.0)); // load 1.5 per CPU
    let mut batch_low = start(u(51), 1, 10);
    batch_low.class = WorkClass::Batch;
    let mut batch_high = start(u(52), 1, 10);
    batch_high.class = WorkClass::Batch;
    batch_high.priority = 9;
    let workorder = start(u(53), 1, 10);
    for s in [batch_low, batch_high, workorder] {
        let q = queued(&rig.start(s)).cloned().expect("queued");
        assert_eq!(q.reason, "0 of 1 nodes fit: 1 load above threshold");
    }
    let out = rig.ready(10, report(u(10), 2, 10_000, 0.5));
    let order: Vec<Uuid> = placed_on(&out).into_iter().map(|(i, _)| i).collect();
    assert_eq!(order, vec![u(53), u(52), u(51)], "workorder, then batch by priority");
    assert_eq!(rig.hub.summary(rig.now).queued, 0);
}

#[test]
fn queue_timeout_deadline_and_queue_full_are_refused_with_reasons() {
    let mut rig = Rig::new(Config { queue_timeout_ms: 5_000, queue_max: 2, ..Config::default() });
    let mut with_deadline = start(u(50), 1, 10);
    with_deadline.deadline_unix_ms = Some(at(2).unix_ms);
    assert!(queued(&rig.start(with_deadline)).is_some());
    assert!(queued(&rig.start(start(u(51), 1, 10))).is_some());
    let again = rig.start(start(u(51), 1, 10));
    assert!(queued(&again).is_some_and(|q| q.instance_uuid == u(51)), "a repeated START is told it waits");
    assert_eq!(rig.hub.summary(rig.now).queued, 2, "and is not queued twice");
    let full = rig.start(start(u(52), 1, 10));
    let f = failure(&full).unwrap();
    assert_eq!(f.reason, FailureReason::QueueFull);
    assert!(f.detail.contains("no launcher has connected"), "{}", f.detail);
    assert!(rig.tick(1).is_empty());
    let out = rig.tick(2);
    assert_eq!(
        failure(&out).map(|f| (f.instance_uuid, f.reason)),
        Some((u(50), FailureReason::QueueTimeout)),
        "deadline"
    );
    let out = rig.tick(5);
    let f = failure(&out).unwrap();
    assert_eq!((f.instance_uuid, f.reason), (u(51), FailureReason::QueueTimeout));
    assert!(f.detail.starts_with("waited 5 s in the queue"), "{}", f.detail);
    assert_eq!(rig.hub.summary(rig.now).refused, 3);
}

#[test]
fn requirements_are_honoured() {
    let mut rig = Rig::new(Config::default());
    rig.node(10, 4, 1000);
    let mut labelled = report(u(11), 4, 500, 0.0);
    labelled.labels = BTreeMap::from([("zone".to_owned(), "b".to_owned())]);
    labelled.features.push("oci".into());
    rig.hub.handle(rig.now, Input::Connected { conn_id: 7, uuid: u(11), role: AGENT, term: None });
    rig.ready(11, labelled);
    let mut s = start(u(50), 1, 10);
    s.requirements.labels = BTreeMap::from([("zone".to_owned(), "b".to_owned())]);
    assert_eq!(placed_on(&rig.start(s)), vec![(u(50), u(11))]);
    let mut s = start(u(51), 1, 10);
    s.backend = Backend::Oci {
        rootfs: "/r".into(),
        args: vec![],
        env: BTreeMap::new(),
        writable_root: false,
        volumes: vec![],
        network: Default::default(),
    };
    assert_eq!(placed_on(&rig.start(s)), vec![(u(51), u(11))]);
    let mut s = start(u(52), 1, 10);
    s.requirements.node_id = Some(u(10));
    assert_eq!(placed_on(&rig.start(s)), vec![(u(52), u(10))]);
    let mut s = start(u(53), 1, 10);
    s.requirements.arch = Some("aarch64".into());
    let f = failure(&rig.start(s)).cloned().unwrap();
    assert_eq!(f.reason, FailureReason::FullCloud, "no node could ever take it: refused at once");
    assert!(
        f.detail.starts_with("0 of 2 nodes could ever fit it, even empty: 2 other architecture (needs aarch64)"),
        "{}",
        f.detail
    );
}

#[test]
fn evacuate_closes_a_node_at_once_and_restore_reopens_it() {
    let mut rig = Rig::new(Config::default());
    rig.node(10, 4, 1000);
    let out = rig.send(
        u(1),
        CTL,
        Message::Evacuate(Evacuate { workload_agent_uuid: u(10), deadline_ms: None, drain_ms: None }),
    );
    assert!(matches!(&out[..], [(Some(to), Message::Evacuate(_))] if *to == u(10)), "forwarded");
    let q = queued(&rig.start(start(u(50), 1, 10))).cloned().unwrap();
    assert_eq!(q.reason, "0 of 1 nodes fit: 1 maintenance");
    // Even a stale READY does not reopen it.
    let out = rig.ready(10, report(u(10), 4, 1000, 0.0));
    assert!(placed_on(&out).is_empty());
    let out = rig.send(u(1), CTL, Message::Restore(Restore { workload_agent_uuid: u(10) }));
    assert_eq!(placed_on(&out), vec![(u(50), u(10))], "queued work placed once restored");
}

#[test]
fn commands_for_absent_nodes_backups_and_duplicates_get_answers() {
    let mut rig = Rig::new(Config::default());
    let delete = Message::Delete(Delete { instance_uuid: u(50), workload_agent_uuid: u(9), stop: false });
    let out = rig.send(u(1), CTL, delete.clone());
    assert!(
        matches!(&out[..], [(Some(to), Message::DeleteFailure(f))] if *to == u(1) && f.reason == FailureReason::NoNode)
    );
    rig.hub.handle(rig.now, Input::Connected { conn_id: 2, uuid: u(2), role: CTL, term: None });
    let out = rig.send(u(2), CTL, delete);
    assert!(
        matches!(&out[..], [(Some(to), Message::DeleteFailure(f))] if *to == u(2) && f.reason == FailureReason::NotPermitted)
    );
    rig.hub.handle(rig.now, Input::Disconnected { conn_id: 1, uuid: u(1) });
    assert_eq!(rig.hub.controllers(), vec![u(2)], "backup promoted");
    rig.node(10, 4, 1000);
    let out = rig.send(u(2), CTL, Message::Start(start(u(50), 1, 10)));
    assert_eq!(placed_on(&out).len(), 1);
    let out = rig.send(u(2), CTL, Message::Start(start(u(50), 1, 10)));
    assert_eq!(placed_on(&out), vec![(u(50), u(10))], "unconfirmed: sent again to the same node, never elsewhere");
    assert_eq!(rig.hub.node(&u(10)).unwrap().in_flight(), 1, "one reservation, not two");
}

#[test]
fn a_controller_elected_later_is_the_master_even_while_its_predecessor_is_still_connected() {
    let mut rig = Rig::new(Config::default()); // u(1) connected first, without a term
    let connect = |rig: &mut Rig, n: u8, term: Option<u64>| {
        rig.hub.handle(rig.now, Input::Connected { conn_id: u64::from(n) + 500, uuid: u(n), role: CTL, term });
    };
    connect(&mut rig, 2, Some(7));
    assert_eq!(rig.hub.controllers(), vec![u(2), u(1)], "an elected controller outranks one without a term");
    connect(&mut rig, 3, Some(5));
    assert_eq!(rig.hub.controllers()[0], u(2), "an older term does not take over");
    connect(&mut rig, 4, Some(9));
    assert_eq!(rig.hub.controllers()[0], u(4), "the newest leader commands; its predecessor is a backup");
    let delete = Message::Delete(Delete { instance_uuid: u(50), workload_agent_uuid: u(9), stop: false });
    let out = rig.send(u(2), CTL, delete);
    assert!(
        matches!(&out[..], [(Some(to), Message::DeleteFailure(f))] if *to == u(2) && f.reason == FailureReason::NotPermitted),
        "the deposed leader commands nothing: {out:?}"
    );
    rig.hub.handle(rig.now, Input::Disconnected { conn_id: 504, uuid: u(4) });
    assert_eq!(rig.hub.controllers()[0], u(2), "then the highest term left, not the first connected");
}

#[test]
fn instances_leaving_free_capacity_for_queued_work() {
    let mut rig = Rig::new(Config::default());
    rig.node(10, 1, 10_000);
    let cpu_cap = 4; // 1 CPU × default overcommit 4
    for i in 0..cpu_cap {
        assert_eq!(placed_on(&rig.start(start(u(50 + i), 1, 10))).len(), 1);
    }
    assert!(queued(&rig.start(start(u(60), 1, 10))).is_some());
    let exited =
        InstanceExited { instance_uuid: u(50), node_uuid: u(10), exit_code: Some(0), reason: ExitReason::Completed };
    let out = rig.send(u(10), AGENT, Message::InstanceExited(exited));
    assert!(
        out.iter().any(|(to, m)| to.is_none() && matches!(m, Message::InstanceExited(_))),
        "forwarded to controllers"
    );
    assert_eq!(placed_on(&out), vec![(u(60), u(10))]);
}

#[test]
fn silent_nodes_are_lost_after_ttl_plus_grace_with_their_instances() {
    let cfg = Config { node_ttl_ms: 10_000, node_grace_ms: 5_000, failover_grace_ms: 0, ..Config::default() };
    let mut rig = Rig::new(cfg);
    for n in 10..15 {
        rig.node(n, 4, 1000);
    }
    let placed = placed_on(&rig.start(start(u(50), 1, 10)));
    let victim = placed[0].1;
    // Everyone but the victim keeps reporting.
    for sec in [5u64, 10, 14] {
        rig.now = at(sec);
        for n in 10..15 {
            if u(n) != victim {
                rig.ready(n, report(u(n), 4, 1000, 0.0));
            }
        }
        assert!(rig.tick(sec).iter().all(|(_, m)| !matches!(m, Message::NodeLost(_))), "not yet at {sec}s");
    }
    let out = rig.tick(15);
    let lost: Vec<&NodeLost> =
        out.iter().filter_map(|(_, m)| if let Message::NodeLost(l) = m { Some(l) } else { None }).collect();
    assert_eq!(lost.len(), 1);
    assert_eq!((lost[0].node_uuid, lost[0].instances.clone()), (victim, vec![u(50)]));
    assert_eq!(rig.hub.node_of(&u(50)), None);
    assert_eq!(rig.hub.summary(rig.now).lost, 1);
    assert!(rig.tick(16).iter().all(|(_, m)| !matches!(m, Message::NodeLost(_))), "declared once");
}

#[test]
fn a_lost_node_that_reports_again_on_its_connection_is_back_without_its_old_instances() {
    let mut rig =
        Rig::new(Config { node_ttl_ms: 1000, node_grace_ms: 1000, failover_grace_ms: 0, ..Config::default() });
    for n in 10..13 {
        rig.node(n, 4, 1000);
    }
    let victim = placed_on(&rig.start(start(u(50), 1, 10)))[0].1;
    let victim_n = (10..13).find(|n| u(*n) == victim).unwrap();
    for sec in 1..=3 {
        rig.now = at(sec);
        for n in (10..13).filter(|n| *n != victim_n) {
            rig.ready(n, report(u(n), 4, 1000, 0.0));
        }
        rig.tick(sec);
    }
    assert_eq!(rig.hub.summary(rig.now).lost, 1, "frozen for TTL + grace: lost");
    // SIGCONT: the same connection speaks again, and is asked for its digest (the controller
    // stops the stale copies it lists).
    let out = rig.ready(victim_n, report(victim, 4, 1000, 0.0));
    assert!(
        out.iter().any(|(to, m)| *to == Some(victim) && matches!(m, Message::ReportRequest(r) if r.node_uuid == Some(victim))),
        "{out:?}"
    );
    let s = rig.hub.summary(rig.now);
    assert_eq!((s.lost, s.ready), (0, 3), "it is back and open");
    assert_eq!(rig.hub.node_of(&u(50)), None, "its old instance is the controller's to reconcile");
    assert!(rig.hub.indexes_consistent());
}

#[test]
fn the_brake_holds_back_mass_node_loss_and_failover_grace_protects_a_restart() {
    let cfg = Config { node_ttl_ms: 10_000, node_grace_ms: 5_000, failover_grace_ms: 0, ..Config::default() };
    let mut rig = Rig::new(cfg.clone());
    for n in 10..20 {
        rig.node(n, 4, 1000);
    }
    // 6 of 10 go silent at once; the other 4 keep reporting.
    for sec in 1..=30 {
        rig.now = at(sec);
        for n in 16..20 {
            rig.ready(n, report(u(n), 4, 1000, 0.0));
        }
        let out = rig.tick(sec);
        assert!(out.iter().all(|(_, m)| !matches!(m, Message::NodeLost(_))), "no mass loss at {sec}s");
    }
    assert!(rig.hub.summary(rig.now).brake);

    // A scheduler that just restarted gives reconnecting nodes the failover grace.
    let cfg = Config { failover_grace_ms: 60_000, ..cfg };
    let mut rig = Rig::new(cfg);
    rig.node(10, 4, 1000);
    rig.hub.handle(rig.now, Input::Disconnected { conn_id: 110, uuid: u(10) });
    assert!(rig.tick(30).iter().all(|(_, m)| !matches!(m, Message::NodeLost(_))));
    assert!(rig.tick(61).iter().any(|(_, m)| matches!(m, Message::NodeLost(_))));
}

#[test]
fn disconnect_is_reported_at_once_and_a_quick_reconnect_keeps_instances() {
    let mut rig = Rig::new(Config { failover_grace_ms: 0, ..Config::default() });
    rig.node(10, 4, 1000);
    placed_on(&rig.start(start(u(50), 1, 10)));
    let out = decode(rig.hub.handle(rig.now, Input::Disconnected { conn_id: 110, uuid: u(10) }));
    assert!(matches!(&out[..], [(None, Message::NodeDisconnected(_))]));
    rig.hub.handle(rig.now, Input::Connected { conn_id: 111, uuid: u(10), role: AGENT, term: None });
    assert_eq!(rig.hub.node_of(&u(50)), Some(u(10)));
    // A stale disconnect of the old connection changes nothing.
    assert!(rig.hub.handle(rig.now, Input::Disconnected { conn_id: 110, uuid: u(10) }).is_empty());
}

#[test]
fn memory_estimates_reclaim_unused_memory_within_the_overcommit_bound() {
    let mut rig = Rig::new(Config { estimate: true, ..Config::default() });
    let mut r = report(u(10), 64, 2000, 0.0);
    r.mem_available_mb = 2000;
    rig.hub.handle(rig.now, Input::Connected { conn_id: 5, uuid: u(10), role: AGENT, term: None });
    rig.ready(10, r.clone());
    let workload = u(200);
    let with_workload = |i: u8| {
        let mut s = start(Uuid::from_bytes([i; 16]), 1, 1000);
        s.workload_uuid = Some(workload);
        s
    };
    assert_eq!(placed_on(&rig.start(with_workload(1))).len(), 1);
    // The instance uses 100 MiB of its 1000; after warm-up its workload is charged less, with
    // time (the usage is sent once a second here; a launcher sends it only when it moves).
    for sec in 1..=40 {
        let stats = Stats {
            node_uuid: u(10),
            status: NodeState::Ready,
            mem_total_mb: 2000,
            mem_available_mb: 1900,
            disk_total_mb: 0,
            disk_available_mb: 0,
            load: 0.0,
            cpus_online: 64,
            hostname: String::new(),
            networks: vec![],
            instances: vec![InstanceStat {
                instance_uuid: Uuid::from_bytes([1; 16]),
                state: InstanceState::Active,
                memory_usage_mb: 100,
                disk_usage_mb: 0,
                cpu_usage: 0,
                exit_code: None,
                workload_uuid: Some(workload),
                reason: None,
            }],
            digest: None,
        };
        rig.send(u(10), AGENT, Message::Stats(stats));
        rig.tick(sec);
    }
    r.mem_available_mb = 1900;
    rig.ready(10, r);
    let estimate = rig.hub.estimator().get(workload).unwrap().estimate_mb;
    assert_eq!(estimate, 100 + 10 + estimate::MARGIN_MB);
    // The first instance stays charged at least its usage; new ones at the estimate.
    let mut placed = 1;
    for i in 2..40 {
        placed += placed_on(&rig.start(with_workload(i))).len();
    }
    let node = rig.hub.node(&u(10)).unwrap();
    assert!(node.mem_used() <= node.mem_capacity(rig.hub.config()));
    assert!(placed > 2, "requests alone would fit 2; estimates fit {placed}");
    assert!(rig.hub.summary(rig.now).reclaimed_mb > 0);
}

// === property test against a reference model ===

#[derive(Debug, Clone)]
enum Op {
    Node { n: u8, cpus: u32, mem: u64, load10: u8 },
    Ready { n: u8, load10: u8 },
    Start { id: u8, vcpus: u32, mem: u64, zone: Option<u8>, batch: bool, priority: u8 },
    Exit { id: u8 },
    Evacuate { n: u8 },
    Restore { n: u8 },
    Disconnect { n: u8 },
    Tick { secs: u8 },
}

fn ops() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, 1u32..8, 100u64..4000, 0u8..20).prop_map(|(n, cpus, mem, load10)| Op::Node { n, cpus, mem, load10 }),
        (0u8..6, 0u8..20).prop_map(|(n, load10)| Op::Ready { n, load10 }),
        (0u8..60, 0u32..4, 0u64..1500, prop::option::of(0u8..2), any::<bool>(), 0u8..3)
            .prop_map(|(id, vcpus, mem, zone, batch, priority)| Op::Start { id, vcpus, mem, zone, batch, priority }),
        (0u8..60).prop_map(|id| Op::Exit { id }),
        (0u8..6).prop_map(|n| Op::Evacuate { n }),
        (0u8..6).prop_map(|n| Op::Restore { n }),
        (0u8..6).prop_map(|n| Op::Disconnect { n }),
        (1u8..20).prop_map(|secs| Op::Tick { secs }),
    ]
}

/// What the reference model knows of a node.
#[derive(Debug, Clone)]
struct ModelNode {
    cpus: u32,
    mem: u64,
    zone: u8,
    open: bool,
    maintenance: bool,
    load10: u8,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn placement_is_safe_and_no_start_is_lost_or_duplicated(ops in prop::collection::vec(ops(), 1..120), policy in prop::sample::select(vec![Policy::Spread, Policy::Binpack, Policy::Firstfit]), reserve_big_mb in prop::option::of(500u64..1500), reserve_big_disk_mb in prop::option::of(300u64..900), reserve_max in 1usize..3) {
        let cfg = Config { policy, overcommit: Overcommit { cpu: 2.0, mem: 1.0 }, queue_timeout_ms: 30_000, queue_max: 20, node_ttl_ms: 10_000, node_grace_ms: 10_000, failover_grace_ms: 0, reserve_big_mb, reserve_big_disk_mb, reserve_max, ..Config::default() };
        let mut hub = Hub::new(u(0), cfg.clone(), at(0));
        let mut now = at(0);
        hub.handle(now, Input::Connected { conn_id: 1, uuid: u(1), role: CTL, term: None });
        let node_id = |n: u8| u(100 + n);
        // Node n gives out 2n cache ways (node 0 none); START i asks for i % 4.
        let cache_of = |id: Uuid| u32::from(id.as_bytes()[0] - 100) * 2;
        // Node n has 200n MiB of disk free (node 0 none); START i asks for 100 × (i % 5).
        let disk_of = |id: Uuid| u64::from(id.as_bytes()[0] - 100) * 200;
        let with_figures = |r: &mut NodeReport, id: Uuid| {
            r.cache_ways = cache_of(id);
            (r.disk_total_mb, r.disk_available_mb) = (disk_of(id), disk_of(id));
        };
        let mut model: HashMap<Uuid, ModelNode> = HashMap::new();
        let mut conn = 1000u64;
        // Every START submitted: its requirements, and how it ended so far.
        let mut submitted: HashMap<Uuid, Start> = HashMap::new();
        let mut placed: HashMap<Uuid, Uuid> = HashMap::new(); // instance → node, while placed
        let mut outcomes: HashMap<Uuid, Vec<&'static str>> = HashMap::new();
        let mut lost_nodes: HashSet<Uuid> = HashSet::new();

        for op in ops {
            // Which node was reserved for which big START before this step.
            let reserved_before: HashMap<Uuid, Uuid> = hub.nodes().filter_map(|n| n.reserved_for.map(|i| (n.uuid, i))).collect();
            let out = match op {
                Op::Node { n, cpus, mem, load10 } => {
                    conn += 1;
                    let id = node_id(n);
                    let mut o = hub.handle(now, Input::Connected { conn_id: conn, uuid: id, role: AGENT, term: None });
                    let zone = n % 2;
                    let mut r = report(id, cpus, mem, f64::from(load10) / 10.0);
                    r.labels = BTreeMap::from([("zone".to_owned(), zone.to_string())]);
                    with_figures(&mut r, id);
                    o.extend(hub.handle(now, Input::Message { from: id, role: AGENT, frame: None, message: Message::Ready(r) }));
                    let maintenance = model.get(&id).is_some_and(|m| m.maintenance) && !lost_nodes.contains(&id);
                    lost_nodes.remove(&id);
                    model.insert(id, ModelNode { cpus, mem, zone, open: true, maintenance, load10 });
                    o
                }
                Op::Ready { n, load10 } => {
                    let id = node_id(n);
                    let Some(m) = model.get_mut(&id).filter(|m| m.open) else { continue };
                    m.load10 = load10;
                    let mut r = report(id, m.cpus, m.mem, f64::from(load10) / 10.0);
                    r.labels = BTreeMap::from([("zone".to_owned(), m.zone.to_string())]);
                    with_figures(&mut r, id);
                    hub.handle(now, Input::Message { from: id, role: AGENT, frame: None, message: Message::Ready(r) })
                }
                Op::Start { id, vcpus, mem, zone, batch, priority } => {
                    let instance = Uuid::from_bytes([id; 16]);
                    let mut s = start(instance, vcpus, mem);
                    s.class = if batch { WorkClass::Batch } else { WorkClass::Workorder };
                    s.priority = u32::from(priority);
                    s.requirements.cache_ways = u32::from(id % 4);
                    s.requirements.disk_mb = u64::from(id % 5) * 100;
                    if let Some(z) = zone {
                        s.requirements.labels = BTreeMap::from([("zone".to_owned(), z.to_string())]);
                    }
                    // A re-submitted instance replaces the old START unless that one is still
                    // placed or queued (then the hub keeps it and refuses or ignores the new one).
                    if !placed.contains_key(&instance) && !hub.is_queued(&instance) {
                        submitted.insert(instance, s.clone());
                    }
                    hub.handle(now, Input::Message { from: u(1), role: CTL, frame: None, message: Message::Start(s) })
                }
                Op::Exit { id } => {
                    let instance = Uuid::from_bytes([id; 16]);
                    let Some(node) = placed.get(&instance).copied() else { continue };
                    if !model.get(&node).is_some_and(|m| m.open) { continue }
                    placed.remove(&instance);
                    let e = InstanceEvent { instance_uuid: instance, node_uuid: Some(node) };
                    hub.handle(now, Input::Message { from: node, role: AGENT, frame: None, message: Message::InstanceStopped(e) })
                }
                Op::Evacuate { n } => {
                    let id = node_id(n);
                    let o = hub.handle(now, Input::Message { from: u(1), role: CTL, frame: None, message: Message::Evacuate(Evacuate { workload_agent_uuid: id, deadline_ms: None, drain_ms: None }) });
                    if let Some(m) = model.get_mut(&id).filter(|m| m.open) { m.maintenance = true; }
                    o
                }
                Op::Restore { n } => {
                    let id = node_id(n);
                    if let Some(m) = model.get_mut(&id).filter(|m| m.open) { m.maintenance = false; }
                    hub.handle(now, Input::Message { from: u(1), role: CTL, frame: None, message: Message::Restore(Restore { workload_agent_uuid: id }) })
                }
                Op::Disconnect { n } => {
                    let id = node_id(n);
                    let Some(m) = model.get_mut(&id).filter(|m| m.open) else { continue };
                    m.open = false;
                    let conn_id = hub.node(&id).and_then(|node| node.conn_id).unwrap();
                    hub.handle(now, Input::Disconnected { conn_id, uuid: id })
                }
                Op::Tick { secs } => {
                    now = Now { mono_ms: now.mono_ms + u64::from(secs) * 1000, unix_ms: now.unix_ms + u64::from(secs) * 1000 };
                    // Open nodes keep reporting, as live launchers do.
                    let mut o = Vec::new();
                    for (id, m) in model.iter().filter(|(_, m)| m.open) {
                        let mut r = report(*id, m.cpus, m.mem, f64::from(m.load10) / 10.0);
                        r.labels = BTreeMap::from([("zone".to_owned(), m.zone.to_string())]);
                        with_figures(&mut r, *id);
                        o.extend(hub.handle(now, Input::Message { from: *id, role: AGENT, frame: None, message: Message::Ready(r) }));
                    }
                    o.extend(hub.tick(now));
                    o
                }
            };
            prop_assert!(hub.indexes_consistent(), "placement indexes drifted from the node table");
            let decoded = decode(out);
            // Reservations: only for queued STARTs, at most reserve_max nodes; a reserved node
            // takes its big START before anything else while that one still waits.
            let reserved: Vec<Uuid> = hub.nodes().filter_map(|n| n.reserved_for).collect();
            prop_assert!(reserved.len() <= reserve_max && (cfg.reserves() || reserved.is_empty()));
            prop_assert!(reserved.iter().all(|i| hub.is_queued(i)), "a reservation outlived its START's wait");
            let mut holder_placed: HashSet<Uuid> = HashSet::new();
            for (to, message) in &decoded {
                if let (Some(node), Message::Start(s)) = (to, message) {
                    if placed.contains_key(&s.instance_uuid) {
                        continue; // a repeat of one placed before, resent where it is
                    }
                    match reserved_before.get(node) {
                        Some(holder) if *holder == s.instance_uuid => { holder_placed.insert(*node); }
                        Some(holder) => prop_assert!(
                            holder_placed.contains(node) || !hub.is_queued(holder),
                            "{} went to {} reserved for {}", s.instance_uuid, node, holder
                        ),
                        None => {}
                    }
                }
            }
            for (to, message) in decoded {
                match message {
                    Message::Start(s) => {
                        let node = to.unwrap();
                        // Never placed twice while placed: a repeat goes to the same node again
                        // (the first may have been lost) and reserves nothing more.
                        if let Some(first) = placed.get(&s.instance_uuid) {
                            prop_assert_eq!(*first, node, "{} placed on a second node", s.instance_uuid);
                            outcomes.entry(s.instance_uuid).or_default().push("resent");
                            continue;
                        }
                        let m = model.get(&node).expect("placed on a known node");
                        // Never on a closed, evacuated, overloaded or lost node.
                        prop_assert!(m.open && !m.maintenance && !lost_nodes.contains(&node), "{node} closed");
                        prop_assert!(f64::from(m.load10) / 10.0 / f64::from(m.cpus) <= cfg.load_threshold);
                        // Requirements honoured.
                        let req = &submitted[&s.instance_uuid].requirements;
                        if let Some(z) = req.labels.get("zone") { prop_assert_eq!(z, &m.zone.to_string()); }
                        placed.insert(s.instance_uuid, node);
                        // Capacity × overcommit is never exceeded when placing, counting every
                        // instance placed there and not yet gone (the reservations).
                        let on_node = placed.iter().filter(|(_, n)| **n == node).map(|(i, _)| &submitted[i].requirements);
                        let (vcpus, mem) = on_node.fold((0u64, 0u64), |(c, m), r| (c + u64::from(r.vcpus), m + r.mem_mb));
                        prop_assert!(vcpus <= u64::from(m.cpus) * 2, "vCPUs {} on {} CPUs", vcpus, m.cpus);
                        prop_assert!(mem <= m.mem, "memory {} of {}", mem, m.mem);
                        let ways: u32 = placed.iter().filter(|(_, n)| **n == node).map(|(i, _)| submitted[i].requirements.cache_ways).sum();
                        prop_assert!(ways <= cache_of(node), "cache ways {} of {}", ways, cache_of(node));
                        // Nothing here confirms an instance, so every one placed still holds
                        // its disk against the node's reported free disk.
                        let disk: u64 = placed.iter().filter(|(_, n)| **n == node).map(|(i, _)| submitted[i].requirements.disk_mb).sum();
                        prop_assert!(disk <= disk_of(node), "disk {} of {}", disk, disk_of(node));
                        outcomes.entry(s.instance_uuid).or_default().push("placed");
                    }
                    Message::StartFailure(f) => {
                        outcomes.entry(f.instance_uuid).or_default().push(match f.reason {
                            FailureReason::InstanceExists => "duplicate",
                            _ => "refused",
                        });
                        if f.reason == FailureReason::InstanceExists {
                            prop_assert!(placed.contains_key(&f.instance_uuid));
                        }
                    }
                    Message::InstanceQueued(q) => outcomes.entry(q.instance_uuid).or_default().push("queued"),
                    Message::NodeLost(l) => {
                        lost_nodes.insert(l.node_uuid);
                        for i in &l.instances {
                            prop_assert_eq!(placed.remove(i), Some(l.node_uuid));
                        }
                    }
                    _ => {}
                }
            }
        }
        // No START lost: each one is placed, queued, or refused — and an instance is placed
        // again only after it left (exit or node loss).
        for instance in submitted.keys() {
            let o = outcomes.get(instance).map(Vec::as_slice).unwrap_or_default();
            let accounted = !o.is_empty() || hub.is_queued(instance) || hub.node_of(instance).is_some();
            prop_assert!(accounted, "START {} vanished", instance);
            if hub.is_queued(instance) {
                prop_assert!(hub.node_of(instance).is_none(), "{} both queued and placed", instance);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Liveness against a reference rule: a node is declared lost exactly when it has been
    /// silent for TTL + grace, the scheduler is past its failover grace, and fewer than the
    /// brake's share of nodes are silent; never twice.
    #[test]
    fn node_loss_follows_ttl_grace_brake_and_failover_rules(
        nodes in 3u8..12,
        // For each node: the second at which it goes silent (None: reports throughout).
        silences in prop::collection::vec(prop::option::of(0u64..40), 12),
        failover in 0u64..30,
    ) {
        let cfg = Config { node_ttl_ms: 5_000, node_grace_ms: 5_000, failover_grace_ms: failover * 1000, ..Config::default() };
        let mut hub = Hub::new(u(0), cfg.clone(), at(0));
        let ids: Vec<Uuid> = (0..nodes).map(|i| u(10 + i)).collect();
        for (i, id) in ids.iter().enumerate() {
            hub.handle(at(0), Input::Connected { conn_id: u64::try_from(i).unwrap() + 1, uuid: *id, role: AGENT, term: None });
        }
        let mut lost: HashSet<Uuid> = HashSet::new();
        let mut last_seen: HashMap<Uuid, u64> = ids.iter().map(|id| (*id, 0)).collect();
        for sec in 1..=60u64 {
            let now = at(sec);
            for (i, id) in ids.iter().enumerate() {
                let silent = silences[i].is_some_and(|s| sec >= s);
                if !silent {
                    hub.handle(now, Input::Message { from: *id, role: AGENT, frame: None, message: Message::Ready(report(*id, 2, 100, 0.0)) });
                    last_seen.insert(*id, sec);
                }
            }
            // Reference: what the rule allows at this tick.
            let active: Vec<&Uuid> = ids.iter().filter(|id| !lost.contains(*id)).collect();
            let silent = active.iter().filter(|id| sec - last_seen[**id] >= 5).count();
            let brake = silent >= cfg.brake_min_nodes && silent as f64 >= cfg.brake_fraction * active.len() as f64;
            let may_lose = !brake && sec * 1000 >= cfg.failover_grace_ms;
            let due: HashSet<Uuid> = active.iter().filter(|id| sec - last_seen[**id] >= 10).map(|id| **id).collect();
            let declared: HashSet<Uuid> = decode(hub.tick(now)).into_iter().filter_map(|(_, m)| if let Message::NodeLost(l) = m { Some(l.node_uuid) } else { None }).collect();
            if may_lose {
                prop_assert_eq!(&declared, &due, "at {}s", sec);
            } else {
                prop_assert!(declared.is_empty(), "declared {:?} at {}s with brake {} failover {}", declared, sec, brake, failover);
            }
            prop_assert!(declared.is_disjoint(&lost), "declared twice");
            lost.extend(declared);
            prop_assert_eq!(hub.summary(now).brake, brake);
        }
    }
}

#[test]
fn a_report_request_reaches_one_node_or_every_connected_node_and_news_confirms_starts() {
    let mut rig = Rig::new(Config { start_window: 1, ..Config::default() });
    rig.node(10, 4, 4096);
    rig.node(11, 4, 4096);
    rig.node(12, 4, 4096);
    rig.hub.handle(rig.now, Input::Disconnected { conn_id: 112, uuid: u(12) });
    let all = rig.send(u(1), CTL, Message::ReportRequest(ssntp::payload::ReportRequest::default()));
    let peers: Vec<Option<Uuid>> = all.iter().map(|(p, _)| *p).collect();
    assert_eq!(peers, vec![Some(u(10)), Some(u(11))], "connected nodes only");
    let one = rig.send(u(1), CTL, Message::ReportRequest(ssntp::payload::ReportRequest { node_uuid: Some(u(11)) }));
    assert!(matches!(&one[..], [(Some(p), Message::ReportRequest(_))] if *p == u(11)));
    // Start windows of one: a third START waits until news says a first one runs.
    let (a, b, c) = (Uuid::from_bytes([1; 16]), Uuid::from_bytes([2; 16]), Uuid::from_bytes([3; 16]));
    let node = placed_on(&rig.start(start(a, 1, 10)))[0].1;
    assert_eq!(placed_on(&rig.start(start(b, 1, 10))).len(), 1);
    assert!(placed_on(&rig.start(start(c, 1, 10))).is_empty(), "both windows full");
    let stat = InstanceStat {
        instance_uuid: a,
        state: InstanceState::Active,
        memory_usage_mb: -1,
        disk_usage_mb: -1,
        cpu_usage: -1,
        exit_code: None,
        workload_uuid: None,
        reason: None,
    };
    let news = ssntp::payload::InstanceNews { node_uuid: node, seq: 1, instances: vec![stat] };
    let out = rig.send(node, AGENT, Message::InstanceNews(news));
    assert!(out.iter().any(|(p, m)| p.is_none() && matches!(m, Message::InstanceNews(_))), "forwarded: {out:?}");
    assert_eq!(placed_on(&out), vec![(c, node)], "the confirmed node takes the queued START");
}

#[test]
fn a_node_lost_and_gone_for_an_hour_is_forgotten() {
    let mut rig =
        Rig::new(Config { node_ttl_ms: 1000, node_grace_ms: 1000, failover_grace_ms: 0, ..Config::default() });
    rig.node(10, 4, 1000);
    rig.node(11, 4, 1000);
    rig.hub.handle(rig.now, Input::Disconnected { conn_id: 110, uuid: u(10) });
    for sec in 1..=3 {
        rig.now = at(sec);
        rig.ready(11, report(u(11), 4, 1000, 0.0));
        rig.tick(sec);
    }
    assert!(rig.hub.node(&u(10)).is_some_and(|n| n.lost), "lost, remembered");
    let hour = FORGET_AFTER_MS / 1000;
    rig.now = at(hour - 1);
    rig.ready(11, report(u(11), 4, 1000, 0.0));
    rig.tick(hour - 1);
    assert!(rig.hub.node(&u(10)).is_some(), "not yet: an hour from when it was last seen");
    rig.now = at(hour);
    rig.ready(11, report(u(11), 4, 1000, 0.0));
    rig.tick(hour);
    assert!(rig.hub.node(&u(10)).is_none(), "forgotten");
    assert!(rig.hub.node(&u(11)).is_some(), "the live node stays");
    assert!(rig.hub.indexes_consistent());
}

#[test]
fn heartbeats_reach_controllers_on_a_change_of_status_and_otherwise_every_few_seconds() {
    let mut rig = Rig::new(Config::default());
    rig.node(10, 4, 4096);
    let heartbeat = |status: NodeState, digest: Option<ssntp::payload::DigestPage>| Stats {
        node_uuid: u(10),
        status,
        mem_total_mb: 4096,
        mem_available_mb: 4096,
        disk_total_mb: 0,
        disk_available_mb: 0,
        load: 0.0,
        cpus_online: 4,
        hostname: String::new(),
        networks: vec![],
        instances: vec![],
        digest,
    };
    let forwarded = |rig: &mut Rig, ms: u64, status: NodeState, digest: Option<ssntp::payload::DigestPage>| {
        rig.now = Now { mono_ms: ms, unix_ms: 1_700_000_000_000 + ms };
        let out = rig.send(u(10), AGENT, Message::Stats(heartbeat(status, digest)));
        out.iter().any(|(p, m)| p.is_none() && matches!(m, Message::Stats(_)))
    };
    assert!(forwarded(&mut rig, 1_000, NodeState::Ready, None), "the first one");
    assert!(!forwarded(&mut rig, 2_000, NodeState::Ready, None), "same status, 1 s later");
    assert!(forwarded(&mut rig, 3_000, NodeState::Full, None), "a new status at once");
    assert!(forwarded(&mut rig, 3_500, NodeState::Ready, None), "and back");
    let page = Some(ssntp::payload::DigestPage { seq: 1, page: 0, pages: 1 });
    assert!(forwarded(&mut rig, 4_000, NodeState::Ready, page), "a digest page always");
    assert!(!forwarded(&mut rig, 8_000, NodeState::Ready, None));
    assert!(forwarded(&mut rig, 3_500 + HEARTBEAT_FORWARD_MS, NodeState::Ready, None), "the figures, now and then");
    // A reconnect sends the next one on whatever it says.
    rig.hub.handle(rig.now, Input::Disconnected { conn_id: 110, uuid: u(10) });
    rig.hub.handle(rig.now, Input::Connected { conn_id: 210, uuid: u(10), role: AGENT, term: None });
    assert!(forwarded(&mut rig, 9_000, NodeState::Ready, None), "first since it connected");
}

#[test]
fn a_stop_takes_queued_work_out_of_the_queue_and_finds_placed_work_without_a_node_named() {
    let mut rig = Rig::new(Config::default());
    // No node: the START waits in the queue.
    assert!(queued(&rig.start(start(u(60), 1, 10))).is_some());
    let withdraw = |instance| {
        Message::Stop(ssntp::payload::Stop {
            instance_uuid: instance,
            workload_agent_uuid: Uuid::nil(),
            grace_ms: None,
        })
    };
    let out = rig.send(u(1), CTL, withdraw(u(60)));
    assert!(
        matches!(&out[..], [(None, Message::InstanceStopped(e))] if e.instance_uuid == u(60) && e.node_uuid.is_none()),
        "{out:?}"
    );
    assert_eq!(rig.hub.summary(rig.now).queued, 0, "out of the queue");
    rig.node(10, 4, 4096);
    assert!(placed_on(&rig.start(start(u(61), 1, 10))).contains(&(u(61), u(10))));
    let out = rig.send(u(1), CTL, withdraw(u(61)));
    assert!(matches!(&out[..], [(Some(p), Message::Stop(s))] if *p == u(10) && s.instance_uuid == u(61)), "{out:?}");
    let out = rig.send(u(1), CTL, withdraw(u(62)));
    assert!(
        matches!(&out[..], [(Some(p), Message::StopFailure(f))] if *p == u(1) && f.reason == FailureReason::NoInstance),
        "{out:?}"
    );
}

#[test]
fn a_repeated_start_goes_again_while_unconfirmed_and_names_its_node_once_confirmed() {
    let mut rig = Rig::new(Config::default());
    rig.node(10, 8, 10_000);
    assert_eq!(placed_on(&rig.start(start(u(50), 1, 100))), vec![(u(50), u(10))]);
    // The first START may have died with a connection: the node gets it again, with its charge.
    let again = rig.start(start(u(50), 1, 100));
    assert_eq!(placed_on(&again), vec![(u(50), u(10))]);
    assert!(
        matches!(&again[0].1, Message::Start(s) if s.charge_mb == Some(100) && s.workload_agent_uuid == Some(u(10)))
    );
    assert!(failure(&again).is_none());
    // The launcher has it already: that confirms it, and the controller hears where it is.
    let refusal = StartFailure {
        node_uuid: Some(u(10)),
        instance_uuid: u(50),
        reason: FailureReason::AlreadyRunning,
        restart: false,
        detail: String::new(),
    };
    let out = rig.send(u(10), AGENT, Message::StartFailure(refusal));
    assert_eq!(failure(&out).map(|f| (f.reason, f.node_uuid)), Some((FailureReason::AlreadyRunning, Some(u(10)))));
    assert_eq!(rig.hub.node_of(&u(50)), Some(u(10)), "still placed there");
    assert_eq!(rig.hub.node(&u(10)).unwrap().in_flight(), 0, "and confirmed");
    // Confirmed: a third START is answered with the node, so the controller knows it runs.
    let out = rig.start(start(u(50), 1, 100));
    assert!(placed_on(&out).is_empty());
    assert_eq!(failure(&out).map(|f| (f.reason, f.node_uuid)), Some((FailureReason::InstanceExists, Some(u(10)))));
    assert!(rig.hub.indexes_consistent());
}

#[test]
fn a_controller_asking_after_a_node_hears_it_lost_or_makes_it_expected() {
    let cfg = Config { node_ttl_ms: 1000, node_grace_ms: 1000, failover_grace_ms: 0, ..Config::default() };
    let mut rig = Rig::new(cfg);
    rig.node(10, 8, 10_000);
    rig.node(11, 8, 10_000);
    rig.node(12, 8, 10_000);
    // Node 10 vanishes and is declared lost (the controller may have missed it).
    rig.hub.handle(rig.now, Input::Disconnected { conn_id: 110, uuid: u(10) });
    for sec in 1..=3 {
        rig.now = at(sec);
        for n in [11, 12] {
            rig.ready(n, report(u(n), 8, 10_000, 0.0));
        }
        rig.tick(sec);
    }
    assert!(rig.hub.node(&u(10)).unwrap().lost);
    let ask = |n: u8| Message::ReportRequest(ReportRequest { node_uuid: Some(u(n)) });
    let out = rig.send(u(1), CTL, ask(10));
    assert!(
        matches!(&out[..], [(Some(to), Message::NodeLost(l))] if *to == u(1) && l.node_uuid == u(10)),
        "told again, to the one who asked: {out:?}"
    );
    // A node this scheduler never saw (it restarted): refused for now, expected from now on, and
    // declared lost when it stays away for TTL + grace.
    let out = rig.send(u(1), CTL, ask(20));
    assert_eq!(failure_reason(&out), Some(FailureReason::NoNode));
    assert!(rig.hub.node(&u(20)).is_some_and(|n| n.expected && n.conn_id.is_none()));
    let mut announced = false;
    for sec in 4..=6 {
        rig.now = at(sec);
        for n in [11, 12] {
            rig.ready(n, report(u(n), 8, 10_000, 0.0));
        }
        announced |= rig.tick(sec).iter().any(|(_, m)| matches!(m, Message::NodeLost(l) if l.node_uuid == u(20)));
    }
    assert!(announced, "the expected node that never came is declared lost");
    // One that does come is a node like any other.
    rig.send(u(1), CTL, ask(21));
    rig.node(21, 8, 10_000);
    assert!(rig.hub.node(&u(21)).is_some_and(|n| !n.expected && n.conn_id.is_some()));
    assert_eq!(placed_on(&rig.start(start(u(60), 1, 100))).len(), 1);
    assert!(rig.hub.indexes_consistent());
}

fn failure_reason(out: &[(Option<Uuid>, Message)]) -> Option<FailureReason> {
    out.iter().find_map(|(_, m)| if let Message::CommandFailure(f) = m { Some(f.reason) } else { None })
}

/// Nodes 10 to 13, lost after 1 s + 1 s of silence, and instance 50 placed: the rig and the
/// instance's node.
fn four_nodes_one_placed() -> (Rig, Uuid) {
    let cfg = Config { node_ttl_ms: 1000, node_grace_ms: 1000, failover_grace_ms: 0, ..Config::default() };
    let mut rig = Rig::new(cfg);
    for n in 10..14 {
        rig.node(n, 8, 10_000);
    }
    assert_eq!(placed_on(&rig.start(start(u(50), 1, 100))).len(), 1);
    let on = rig.hub.node_of(&u(50)).unwrap();
    (rig, on)
}

#[test]
fn under_the_brake_an_operator_forgets_a_node_and_silent_nodes_take_no_work() {
    let (mut rig, on) = four_nodes_one_placed();
    // Three of four go silent (frozen: still connected); only node 13 speaks.
    let speaker = if on == u(13) { u(12) } else { u(13) };
    let mut lost_said = false;
    for sec in 1..=5 {
        rig.now = at(sec);
        let n = speaker.as_bytes()[0];
        rig.ready(n, report(speaker, 8, 10_000, 0.0));
        lost_said |= rig.tick(sec).iter().any(|(_, m)| matches!(m, Message::NodeLost(_)));
    }
    assert!(rig.hub.summary(rig.now).brake && !lost_said, "the brake holds NODE_LOST back");
    // Silent nodes take no new work: it goes to the one that speaks.
    assert_eq!(placed_on(&rig.start(start(u(51), 1, 100))), vec![(u(51), speaker)]);
    let forget = |n: Uuid| Message::NodeForget(ssntp::payload::NodeForget { node_uuid: n });
    // A node that reports is not forgotten.
    let out = rig.send(u(1), CTL, forget(speaker));
    assert_eq!(failure_reason(&out), Some(FailureReason::NotPermitted));
    assert_eq!(failure_reason(&rig.send(u(1), CTL, forget(u(99)))), Some(FailureReason::NoNode));
    // The operator confirms the node with the work is gone: lost now, with its instance.
    let out = rig.send(u(1), CTL, forget(on));
    assert!(
        out.iter().any(|(to, m)| to.is_none()
            && matches!(m, Message::NodeLost(l) if l.node_uuid == on && l.instances == vec![u(50)])),
        "{out:?}"
    );
    assert!(rig.hub.node(&on).unwrap().lost);
    // A silent node that speaks again takes work again.
    let back = (10..14).map(u).find(|n| *n != on && *n != speaker).unwrap();
    rig.ready(back.as_bytes()[0], report(back, 8, 100_000, 0.0));
    assert!(!rig.hub.node(&back).unwrap().suspect);
    assert!(rig.hub.indexes_consistent());
}

#[test]
fn a_launcher_stopping_for_maintenance_has_its_workloads_held_for_the_grace_it_announced() {
    let (mut rig, on) = four_nodes_one_placed();
    let mut leaving = report(on, 8, 10_000, 0.0);
    leaving.away_grace_ms = Some(60_000);
    rig.send(on, AGENT, Message::Maintenance(Some(leaving)));
    let conn = rig.hub.node(&on).unwrap().conn_id.unwrap();
    rig.hub.handle(rig.now, Input::Disconnected { conn_id: conn, uuid: on });
    let others: Vec<u8> = (10..14).filter(|n| u(*n) != on).collect();
    let mut lost_at = None;
    for sec in 1..=70 {
        rig.now = at(sec);
        for n in &others {
            rig.ready(*n, report(u(*n), 8, 10_000, 0.0));
        }
        if rig.tick(sec).iter().any(|(_, m)| matches!(m, Message::NodeLost(l) if l.node_uuid == on)) {
            lost_at.get_or_insert(sec);
        }
    }
    assert_eq!(lost_at, Some(60), "held for the announced minute, then lost as any silent node");
    assert!(!rig.hub.summary(rig.now).brake);
}

#[test]
fn work_no_node_could_ever_take_fails_at_once_unless_the_operator_waits_for_capacity() {
    let mut rig = Rig::new(Config::default());
    // No node has reported: one that can may come.
    assert!(queued(&rig.start(start(u(50), 64, 100))).is_some());
    rig.node(10, 2, 1000);
    rig.node(11, 2, 1000);
    let too_big = rig.start(start(u(51), 64, 100));
    let f = failure(&too_big).expect("refused at once");
    assert_eq!(f.reason, FailureReason::FullCloud);
    assert!(
        f.detail.contains("0 of 2 nodes could ever fit") && f.detail.contains("2 insufficient vCPUs"),
        "{}",
        f.detail
    );
    let mut oci = start(u(52), 1, 10);
    oci.backend = Backend::Oci {
        rootfs: "/r".into(),
        args: vec!["true".into()],
        env: BTreeMap::new(),
        writable_root: false,
        volumes: vec![],
        network: Default::default(),
    };
    assert!(failure(&rig.start(oci)).unwrap().detail.contains("2 backend oci not offered"));
    let mut labelled = start(u(53), 1, 10);
    labelled.requirements.labels = BTreeMap::from([("gpu".to_owned(), "a100".to_owned())]);
    assert!(failure(&rig.start(labelled)).unwrap().detail.contains("2 missing labels (gpu=a100)"));
    // Work that fits an empty node but not now waits as before.
    for i in 0..16 {
        rig.start(start(Uuid::from_bytes([100 + i; 16]), 1, 10));
    }
    let busy = rig.start(start(u(70), 1, 10));
    assert!(queued(&busy).is_some(), "busy now, not never: {busy:?}");
    // An operator who expects bigger nodes to join asks to wait.
    let mut waiting = Rig::new(Config { wait_for_capacity: true, ..Config::default() });
    waiting.node(10, 2, 1000);
    assert!(queued(&waiting.start(start(u(51), 64, 100))).is_some());
}

#[test]
fn a_queued_starts_reason_is_recomputed_when_the_nodes_change() {
    let mut rig = Rig::new(Config { load_threshold: 1.0, ..Config::default() });
    let q = queued(&rig.start(start(u(50), 1, 10))).cloned().unwrap();
    assert_eq!(q.reason, "no launcher has connected");
    // A node arrives, loaded: the reason changes, and the controllers hear it at the tick.
    rig.hub.handle(rig.now, Input::Connected { conn_id: 5, uuid: u(10), role: AGENT, term: None });
    rig.ready(10, report(u(10), 2, 10_000, 3.0));
    let out = rig.tick(1);
    let told = queued(&out).expect("the new reason goes out");
    assert_eq!(told.reason, "0 of 1 nodes fit: 1 load above threshold");
    assert!(queued(&rig.tick(2)).is_none(), "only when it changes");
    // A repeated START is answered with the reason as of now.
    let again = rig.start(start(u(50), 1, 10));
    assert_eq!(queued(&again).unwrap().reason, "0 of 1 nodes fit: 1 load above threshold");
}

fn plan_of(rig: &mut Rig, vcpus: u32, mem_mb: u64, count: u32) -> ssntp::payload::PlanAnswer {
    let plan = ssntp::payload::Plan { request_id: 7, start: start(u(99), vcpus, mem_mb), count };
    let out = rig.send(u(1), CTL, Message::Plan(plan));
    match &out[..] {
        [(Some(to), Message::PlanAnswer(a))] if *to == u(1) => a.clone(),
        other => panic!("one PLAN_ANSWER to the controller that asked: {other:?}"),
    }
}

#[test]
fn a_plan_says_where_instances_would_go_as_placement_would_and_changes_nothing() {
    let mut rig = Rig::new(Config::default());
    rig.node(10, 4, 4096);
    rig.node(11, 4, 2048);
    let before = rig.hub.summary(rig.now);
    let answer = plan_of(&mut rig, 1, 1024, 5);
    assert_eq!(answer.request_id, 7);
    assert_eq!((answer.nodes, answer.fit_now, answer.unplaced), (2, 2, 0));
    let placed: Vec<(Uuid, u32)> = answer.placed.iter().map(|p| (p.node_uuid, p.count)).collect();
    // Spread: 4096 → 3072 → 2048 (a tie with u(11), which the larger UUID wins) …
    assert_eq!(placed, vec![(u(10), 3), (u(11), 2)]);
    assert_eq!(answer.placed[0].hostname, format!("host-{}", u(10).short()));
    assert!(answer.advice.is_empty(), "{:?}", answer.advice);
    assert_eq!(rig.hub.summary(rig.now), before, "nothing placed, queued or reserved");
    // … and real STARTs go the same way.
    let mut real: BTreeMap<Uuid, u32> = BTreeMap::new();
    for i in 0..5 {
        for (_, node) in placed_on(&rig.start(start(u(50 + i), 1, 1024))) {
            *real.entry(node).or_default() += 1;
        }
    }
    assert_eq!(real, placed.into_iter().collect());
    // A backup controller may ask too (it changes nothing); the plan sees the placed work.
    rig.hub.handle(rig.now, Input::Connected { conn_id: 2, uuid: u(2), role: CTL, term: None });
    let plan = ssntp::payload::Plan { request_id: 8, start: start(u(98), 1, 1024), count: 1 };
    let out = rig.send(u(2), CTL, Message::Plan(plan));
    assert!(
        matches!(&out[..], [(Some(to), Message::PlanAnswer(a))] if *to == u(2) && a.placed.len() == 1 && a.placed[0].node_uuid == u(10)),
        "{out:?}"
    );
    let out = rig.send(
        u(2),
        CTL,
        Message::Plan(ssntp::payload::Plan { request_id: 9, start: start(u(98), 1, 1024), count: 2 }),
    );
    assert!(matches!(&out[..], [(_, Message::PlanAnswer(a))] if a.unplaced == 1), "{out:?}");
}

#[test]
fn a_plan_that_does_not_fit_counts_the_reasons_over_the_nodes_and_says_what_would_help() {
    let mut rig = Rig::new(Config { load_threshold: 2.0, ..Config::default() });
    for n in 10..17 {
        rig.node(n, 4, 1024); // 7 too small for 2 GiB
    }
    for n in 20..23 {
        rig.hub.handle(rig.now, Input::Connected { conn_id: u64::from(n) + 100, uuid: u(n), role: AGENT, term: None });
        rig.ready(n, report(u(n), 4, 8192, 12.0)); // 3 loaded
    }
    for n in 30..32 {
        rig.node(n, 4, 8192);
        rig.send(
            u(1),
            CTL,
            Message::Evacuate(Evacuate { workload_agent_uuid: u(n), deadline_ms: None, drain_ms: None }),
        );
    }
    let answer = plan_of(&mut rig, 1, 2048, 3);
    assert_eq!(answer.explanation, "0 of 12 nodes fit: 2 maintenance, 3 load above threshold, 7 insufficient memory");
    assert_eq!((answer.fit_now, answer.unplaced), (0, 3));
    assert!(answer.placed.is_empty());
    assert_eq!(answer.never, None, "the big nodes could take it once free");
    let advice = answer.advice.join("\n");
    assert!(advice.contains("2 nodes are in maintenance: drover node restore"), "{advice}");
    assert!(advice.contains("3 nodes are busy") && advice.contains("--load-threshold 2"), "{advice}");
    assert!(advice.contains("7 nodes lack memory: each instance is charged 2048 MiB"), "{advice}");

    // Some now, the rest would queue.
    let answer = plan_of(&mut rig, 1, 512, 16);
    assert_eq!((answer.fit_now, answer.unplaced), (7, 2), "seven 1 GiB nodes take two each: {answer:?}");
    assert!(answer.advice[0].starts_with("14 would start now; the other 2 would wait"), "{:?}", answer.advice);

    // Nothing could ever take it: the launch would fail at once.
    let answer = plan_of(&mut rig, 1, 65_536, 1);
    assert!(answer.never.as_deref().is_some_and(|n| n.starts_with("0 of 12 nodes could ever fit it")), "{answer:?}");
    let mut gpu = start(u(99), 1, 64);
    gpu.requirements.features = vec!["gpu".into()];
    let out = rig.send(u(1), CTL, Message::Plan(ssntp::payload::Plan { request_id: 1, start: gpu, count: 1 }));
    let Message::PlanAnswer(answer) = &out[0].1 else { panic!("{out:?}") };
    assert!(answer.advice.iter().any(|a| a.contains("lack the features it requires (gpu)")), "{answer:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the nodes and policy: every instance is placed or counted unplaced, no node is
    /// given more than it has room for, and the first goes where a real START would.
    #[test]
    fn a_plan_accounts_for_every_instance_and_starts_where_placement_would(
        nodes in prop::collection::vec((1u32..16, 1u64..64, 0u64..8), 1..10),
        vcpus in 1u32..4,
        chunks in 1u64..8,
        count in 1u32..40,
        policy in prop::sample::select(vec![Policy::Spread, Policy::Binpack]),
    ) {
        let mut rig = Rig::new(Config { policy, ..Config::default() });
        for (i, (cpus, gib, load)) in nodes.iter().enumerate() {
            let n = 10 + u8::try_from(i).unwrap();
            rig.hub.handle(rig.now, Input::Connected { conn_id: u64::from(n) + 100, uuid: u(n), role: AGENT, term: None });
            #[allow(clippy::cast_precision_loss)]
            rig.ready(n, report(u(n), *cpus, gib * 512, *load as f64));
        }
        let mem = chunks * 256;
        let answer = plan_of(&mut rig, vcpus, mem, count);
        let placed: u32 = answer.placed.iter().map(|p| p.count).sum();
        prop_assert_eq!(placed + answer.unplaced, count);
        for p in &answer.placed {
            let node = rig.hub.node(&p.node_uuid).unwrap();
            let s = start(u(99), vcpus, mem);
            let need = rig.hub.need(&s);
            prop_assert!(p.count <= node.room(&need, &rig.hub.cfg, count));
        }
        prop_assert_eq!(answer.unplaced > 0, !answer.advice.is_empty());
        let real = placed_on(&rig.start(start(u(50), vcpus, mem)));
        prop_assert_eq!(real.first().map(|(_, n)| *n), answer.placed.first().map(|p| p.node_uuid));
    }
}

#[test]
fn what_a_node_is_reaches_the_controllers_once_per_change_and_again_for_a_new_controller() {
    let mut rig = Rig::new(Config::default());
    let forwarded = |out: &[(Option<Uuid>, Message)]| {
        out.iter().filter(|(to, m)| to.is_none() && matches!(m, Message::Ready(_))).count()
    };
    rig.hub.handle(rig.now, Input::Connected { conn_id: 110, uuid: u(10), role: AGENT, term: None });
    let mut r = report(u(10), 4, 4096, 0.0);
    r.labels.insert("zone".into(), "b".into());
    assert_eq!(forwarded(&rig.ready(10, r.clone())), 1, "the first report");
    r.load = 3.0;
    r.mem_available_mb = 1000;
    assert_eq!(forwarded(&rig.ready(10, r.clone())), 0, "changing figures travel in heartbeats");
    r.features.push("gpu".into());
    assert_eq!(forwarded(&rig.ready(10, r.clone())), 1, "a new feature");
    rig.hub.handle(rig.now, Input::Connected { conn_id: 2, uuid: u(2), role: CTL, term: None });
    assert_eq!(forwarded(&rig.ready(10, r)), 1, "a controller that just connected learns it");
}

/// A node that connects and reports `r`.
fn join(rig: &mut Rig, n: u8, r: NodeReport) {
    rig.hub.handle(rig.now, Input::Connected { conn_id: u64::from(n) + 100, uuid: u(n), role: AGENT, term: None });
    rig.ready(n, r);
}

fn pci(id: &str, class: &str) -> ssntp::payload::PciDevice {
    ssntp::payload::PciDevice { id: id.into(), class: class.into() }
}

#[test]
fn pci_devices_architectures_and_cpu_scores_are_required_as_the_nodes_report_them() {
    let mut rig = Rig::new(Config::default());
    let mut gpu = report(u(10), 8, 4000, 0.0);
    gpu.pci = vec![pci("8086:15bc", "020000"), pci("10de:2204", "030000")];
    gpu.cpu_score = Some(800);
    let mut fast = report(u(11), 8, 4000, 0.0);
    fast.foreign_arches = vec!["arm".into(), "riscv64".into()];
    fast.cpu_score = Some(2000);
    let mut arm = report(u(12), 8, 4000, 0.0);
    arm.arch = "aarch64".into();
    join(&mut rig, 10, gpu);
    join(&mut rig, 11, fast);
    join(&mut rig, 12, arm);
    let with = |id: u8, f: &dyn Fn(&mut Requirements)| {
        let mut s = start(u(id), 1, 10);
        f(&mut s.requirements);
        s
    };
    type Case<'a> = (u8, &'a dyn Fn(&mut Requirements), u8);
    let cases: [Case<'_>; 6] = [
        (50, &|r| r.pci = vec!["10de:*".into()], 10),
        (51, &|r| r.pci = vec!["class=03".into()], 10),
        (52, &|r| r.arch = Some("armv7".into()), 11),
        (53, &|r| r.arch = Some("aarch64".into()), 12),
        (54, &|r| r.arch = Some("riscv64".into()), 11),
        (55, &|r| r.min_cpu_score = Some(1500), 11),
    ];
    for (id, f, node) in cases {
        let s = with(id, f);
        let requirements = s.requirements.clone();
        assert_eq!(placed_on(&rig.start(s)), vec![(u(id), u(node))], "{requirements:?}");
    }
    let f = failure(&rig.start(with(60, &|r| r.pci = vec!["1af4:*".into()]))).cloned().unwrap();
    assert_eq!(f.reason, FailureReason::FullCloud);
    assert!(f.detail.contains("3 missing PCI devices (1af4:*)"), "the unmet requirement is named: {}", f.detail);
    let f = failure(&rig.start(with(61, &|r| r.min_cpu_score = Some(5000)))).cloned().unwrap();
    assert!(f.detail.contains("3 CPU score below 5000"), "{}", f.detail);
    let f = failure(&rig.start(with(62, &|r| r.arch = Some("mips".into())))).cloned().unwrap();
    assert!(f.detail.contains("3 other architecture (needs mips)"), "{}", f.detail);
}

#[test]
fn preferences_order_the_nodes_that_fit_and_never_exclude_one() {
    let mut rig = Rig::new(Config::default()); // spread: the most free memory first
    let mut big = report(u(10), 8, 8000, 0.0);
    big.labels = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
    let mut small = report(u(11), 8, 1000, 0.0);
    small.labels = BTreeMap::from([("zone".to_owned(), "b".to_owned())]);
    small.images = vec!["/var/lib/drover/images/alpine".into()];
    join(&mut rig, 10, big);
    join(&mut rig, 11, small);
    let preferring = |id: u8, zone: &str| {
        let mut s = start(u(id), 1, 400);
        s.requirements.preferences.labels = BTreeMap::from([("zone".to_owned(), zone.to_owned())]);
        s
    };
    assert_eq!(placed_on(&rig.start(start(u(50), 1, 400))), vec![(u(50), u(10))], "spread without preferences");
    assert_eq!(placed_on(&rig.start(preferring(51, "b"))), vec![(u(51), u(11))], "zone b first, though smaller");
    assert_eq!(placed_on(&rig.start(preferring(52, "b"))), vec![(u(52), u(11))]);
    // Node 11 is full now (1000 MiB, two of 400 and a 32 MiB chunk's rounding): the preference
    // does not hold the work back, it goes where it fits.
    assert_eq!(placed_on(&rig.start(preferring(53, "b"))), vec![(u(53), u(10))], "not excluded, not queued");
    assert_eq!(placed_on(&rig.start(preferring(54, "nowhere"))), vec![(u(54), u(10))], "a wish nobody meets");
    let mut oci = start(u(55), 1, 100);
    oci.requirements.preferences.image = Some("/var/lib/drover/images/alpine/rootfs".into());
    assert_eq!(placed_on(&rig.start(oci)), vec![(u(55), u(11))], "where the image is cached");
}

#[test]
fn strong_workers_take_big_jobs_first_and_the_others_take_them_when_no_fast_one_fits() {
    let mut rig = Rig::new(Config { strong_workers_mb: Some(1024), ..Config::default() });
    let mut slow = report(u(10), 8, 16000, 0.0);
    slow.cpu_score = Some(700);
    let mut quick = report(u(11), 8, 3000, 0.0);
    quick.cpu_score = Some(1900);
    join(&mut rig, 10, slow);
    join(&mut rig, 11, quick);
    assert_eq!(placed_on(&rig.start(start(u(50), 1, 100))), vec![(u(50), u(10))], "small work: spread");
    assert_eq!(placed_on(&rig.start(start(u(51), 1, 2048))), vec![(u(51), u(11))], "big work: the fast node");
    assert_eq!(
        placed_on(&rig.start(start(u(52), 1, 2048))),
        vec![(u(52), u(10))],
        "the fast node is full: the slow one"
    );
    let answer = {
        let mut s = start(u(99), 1, 1024);
        s.requirements.vcpus = 1;
        let plan = ssntp::payload::Plan { request_id: 8, start: s, count: 1 };
        match &rig.send(u(1), CTL, Message::Plan(plan))[..] {
            [(_, Message::PlanAnswer(a))] => a.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(answer.placed.len(), 1);
}

/// Two 2 GiB nodes full of 448 MiB work (256 MiB free each), and a 1 GiB START queued behind
/// it: the nodes each instance went to.
fn full_of_small_work(rig: &mut Rig) -> BTreeMap<Uuid, Vec<Uuid>> {
    rig.node(10, 8, 2048);
    rig.node(11, 8, 2048);
    let mut on: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
    for i in 0..8 {
        for (instance, node) in placed_on(&rig.start(start(u(50 + i), 1, 448))) {
            on.entry(node).or_default().push(instance);
        }
    }
    assert_eq!(on.values().map(Vec::len).collect::<Vec<_>>(), [4, 4]);
    assert!(queued(&rig.start(start(u(70), 1, 1024))).is_some(), "no node has 1 GiB free");
    on
}

fn exit(rig: &mut Rig, node: Uuid, instance: Uuid) -> Vec<(Option<Uuid>, Message)> {
    let exited =
        InstanceExited { instance_uuid: instance, node_uuid: node, exit_code: Some(0), reason: ExitReason::Completed };
    rig.send(node, AGENT, Message::InstanceExited(exited))
}

#[test]
fn without_a_reservation_small_work_takes_every_bit_of_room_and_the_big_job_starves() {
    let mut rig = Rig::new(Config::default());
    let on = full_of_small_work(&mut rig);
    for (i, instance) in on[&u(11)].clone().into_iter().enumerate() {
        assert!(queued(&rig.start(start(u(80 + u8::try_from(i).unwrap()), 1, 448))).is_some());
        let out = exit(&mut rig, u(11), instance);
        assert_eq!(placed_on(&out).len(), 1, "the freed room goes to the small START behind it");
        assert!(placed_on(&out).iter().all(|(id, _)| *id != u(70)), "never the big one");
    }
}

#[test]
fn a_big_job_gets_a_node_reserved_which_takes_nothing_else_until_it_fits() {
    let mut rig = Rig::new(Config { reserve_big_mb: Some(1024), ..Config::default() });
    let on = full_of_small_work(&mut rig);
    // Node 11 (equal room; the higher UUID) is reserved at once: new small work goes to node 10
    // while it has room, then waits, saying why.
    assert_eq!(placed_on(&rig.start(start(u(80), 1, 256))), vec![(u(80), u(10))]);
    let waiting = rig.start(start(u(81), 1, 256));
    let why = &queued(&waiting).expect("node 10 is full, node 11 reserved").reason;
    assert!(why.contains("1 reserved for a big job"), "{why}");
    // Node 11 empties: its first freed room is kept, not given to the small START.
    let mut mine = on[&u(11)].clone().into_iter();
    assert!(placed_on(&exit(&mut rig, u(11), mine.next().unwrap())).is_empty(), "704 MiB free: kept");
    assert_eq!(
        placed_on(&exit(&mut rig, u(11), mine.next().unwrap())),
        vec![(u(70), u(11))],
        "1152 MiB free: the big job starts there"
    );
    // The reservation is over: node 11 takes small work again.
    assert_eq!(placed_on(&exit(&mut rig, u(11), mine.next().unwrap())), vec![(u(81), u(11))]);
    assert!(rig.hub.indexes_consistent());
    let plan = ssntp::payload::Plan { request_id: 1, start: start(u(99), 1, 64), count: 1 };
    match &rig.send(u(1), CTL, Message::Plan(plan))[..] {
        [(_, Message::PlanAnswer(a))] => assert_eq!(a.placed.len(), 1, "a plan sees node 11 open again: {a:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reservation_ends_when_its_start_is_cancelled_or_its_node_goes() {
    let mut rig = Rig::new(Config { reserve_big_mb: Some(1024), ..Config::default() });
    let on = full_of_small_work(&mut rig);
    // Cancelled while it waits: node 11 is open again, and takes what fits.
    let stop = ssntp::payload::Stop { instance_uuid: u(70), workload_agent_uuid: Uuid::nil(), grace_ms: None };
    rig.send(u(1), CTL, Message::Stop(stop));
    assert!(!rig.hub.is_queued(&u(70)));
    let out = rig.start(start(u(80), 1, 256));
    assert_eq!(placed_on(&out).len(), 1, "{out:?}");
    assert!(placed_on(&rig.start(start(u(81), 1, 256))).len() == 1, "both nodes take small work");
    // A second big START reserves a node; that node disconnects: the reservation moves on the
    // next tick to the node left.
    assert!(queued(&rig.start(start(u(71), 1, 1024))).is_some());
    let reserved = [u(10), u(11)].into_iter().find(|n| rig.hub.node(n).unwrap().reserved_for == Some(u(71))).unwrap();
    let other = if reserved == u(10) { u(11) } else { u(10) };
    rig.hub.handle(rig.now, Input::Disconnected { conn_id: u64::from(reserved.as_bytes()[0]) + 100, uuid: reserved });
    rig.tick(1);
    assert_eq!(rig.hub.node(&other).unwrap().reserved_for, Some(u(71)));
    let _ = on;
    assert!(rig.hub.indexes_consistent());
}

#[test]
fn cache_ways_are_a_resource_given_to_one_instance_at_a_time() {
    let mut rig = Rig::new(Config::default());
    let mut cached = report(u(10), 8, 8192, 0.0);
    cached.cache_ways = 12;
    join(&mut rig, 10, cached);
    rig.node(11, 8, 8192); // no cache allocation
    let with_ways = |n: u8, ways: u32| {
        let mut s = start(u(n), 1, 64);
        s.requirements.cache_ways = ways;
        s
    };
    for n in 50..53 {
        assert_eq!(placed_on(&rig.start(with_ways(n, 4))), vec![(u(n), u(10))], "12 ways: three of 4");
    }
    let waiting = rig.start(with_ways(53, 4));
    let why = &queued(&waiting).expect("the ways are given out").reason;
    assert!(why.contains("insufficient cache ways"), "{why}");
    assert_eq!(placed_on(&rig.start(start(u(60), 1, 64))).len(), 1, "work without ways places anywhere");
    let too_many = rig.start(with_ways(54, 13));
    assert!(failure(&too_many).is_some_and(|f| f.detail.contains("insufficient cache ways")), "{too_many:?}");
    // One ends: its ways go to the one waiting.
    assert_eq!(placed_on(&exit(&mut rig, u(10), u(50))), vec![(u(53), u(10))]);
}

fn with_disk(n: u8, total_mb: u64, free_mb: u64) -> NodeReport {
    let mut r = report(u(n), 2, 8192, 0.0);
    (r.disk_total_mb, r.disk_available_mb) = (total_mb, free_mb);
    r
}

fn start_with_disk(n: u8, disk_mb: u64) -> Start {
    let mut s = start(u(n), 1, 64);
    s.requirements.disk_mb = disk_mb;
    s
}

#[test]
fn disk_is_asked_of_the_nodes_free_disk_and_a_burst_cannot_take_it_twice() {
    let mut rig = Rig::new(Config::default());
    join(&mut rig, 10, with_disk(10, 10_000, 1000));
    join(&mut rig, 11, with_disk(11, 10_000, 300));
    assert_eq!(placed_on(&rig.start(start_with_disk(50, 600))), vec![(u(50), u(10))], "only node 10 has 600 MiB");
    // Until node 10 reports it, the first START's 600 MiB are spoken for.
    let waiting = rig.start(start_with_disk(51, 600));
    let why = &queued(&waiting).expect("no node has 600 MiB free now").reason;
    assert_eq!(why, "0 of 2 nodes fit: 2 insufficient disk");
    assert_eq!(placed_on(&rig.start(start_with_disk(52, 0))).len(), 1, "work that asks no disk places anywhere");
    let plan = ssntp::payload::Plan { request_id: 1, start: start_with_disk(99, 600), count: 1 };
    match &rig.send(u(1), CTL, Message::Plan(plan))[..] {
        [(_, Message::PlanAnswer(a))] => {
            let advice = a.advice.join(" | ");
            assert!(
                advice.contains(
                    "2 nodes lack disk: each instance asks for 600 MiB and the most free on a ready node is 400 MiB"
                ),
                "{advice}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Node 10 reports the instance: from then on its own figure counts (here, the files are
    // still to be written), and the waiting START goes there.
    let started = Message::InstanceStarted(InstanceEvent { instance_uuid: u(50), node_uuid: Some(u(10)) });
    assert_eq!(placed_on(&rig.send(u(10), AGENT, started)), vec![(u(51), u(10))]);
    // More than any node has at all is refused at once, naming disk.
    let never = rig.start(start_with_disk(53, 20_000));
    assert!(failure(&never).is_some_and(|f| f.detail.contains("insufficient disk")), "{never:?}");
    assert!(rig.hub.indexes_consistent());
}

#[test]
fn jobs_big_in_disk_or_in_vcpus_get_a_node_reserved_too() {
    // Disk: the node with the most free disk is reserved; it takes nothing else until the job
    // fits there.
    let cfg = Config { reserve_big_disk_mb: Some(5000), reserve_big_vcpus: Some(6), ..Config::default() };
    let mut rig = Rig::new(cfg.clone());
    join(&mut rig, 10, with_disk(10, 10_000, 2000));
    join(&mut rig, 11, with_disk(11, 10_000, 4000));
    assert!(queued(&rig.start(start_with_disk(70, 6000))).is_some());
    assert_eq!(rig.hub.node(&u(11)).unwrap().reserved_for, Some(u(70)), "the most free disk");
    assert_eq!(placed_on(&rig.start(start_with_disk(80, 100))), vec![(u(80), u(10))], "small work goes elsewhere");
    assert_eq!(placed_on(&rig.ready(11, with_disk(11, 10_000, 7000))), vec![(u(70), u(11))]);
    assert_eq!(rig.hub.node(&u(11)).unwrap().reserved_for, None);

    // vCPUs: 2 CPUs × 4 are 8 vCPUs a node; each runs four of one vCPU, so six fit nowhere.
    let mut rig = Rig::new(cfg);
    rig.node(10, 2, 8192);
    rig.node(11, 2, 8192);
    let mut on: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
    for i in 0..8 {
        for (instance, node) in placed_on(&rig.start(start(u(50 + i), 1, 64))) {
            on.entry(node).or_default().push(instance);
        }
    }
    assert!(queued(&rig.start(start(u(70), 6, 64))).is_some());
    let reserved = [u(10), u(11)].into_iter().find(|n| rig.hub.node(n).unwrap().reserved_for == Some(u(70)));
    let reserved = reserved.expect("a node is reserved for six vCPUs");
    let mut mine = on[&reserved].clone().into_iter();
    assert!(placed_on(&exit(&mut rig, reserved, mine.next().unwrap())).is_empty(), "5 vCPUs free: kept");
    assert_eq!(placed_on(&exit(&mut rig, reserved, mine.next().unwrap())), vec![(u(70), reserved)]);
    assert!(rig.hub.indexes_consistent());
}

fn arbitrary_node() -> impl Strategy<Value = (u32, u64, u8, Option<u32>, bool)> {
    (1u32..16, 1u64..32, 0u8..3, prop::option::of(100u32..3000), any::<bool>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A preference only orders: with or without it a START is placed exactly when some node
    /// fits, on a node that fits; the plan's first node is the real START's.
    #[test]
    fn a_preference_never_makes_a_fitting_node_unusable(
        nodes in prop::collection::vec(arbitrary_node(), 1..8),
        zone in 0u8..4,
        image in any::<bool>(),
        strong in prop::option::of(64u64..2048),
        chunks in 1u64..64,
        policy in prop::sample::select(vec![Policy::Spread, Policy::Binpack, Policy::Firstfit]),
    ) {
        let cfg = Config { policy, strong_workers_mb: strong, ..Config::default() };
        let mut rig = Rig::new(cfg.clone());
        for (i, (cpus, gib, z, score, cached)) in nodes.iter().enumerate() {
            let n = 10 + u8::try_from(i).unwrap();
            let mut r = report(u(n), *cpus, gib * 256, 0.0);
            r.labels = BTreeMap::from([("zone".to_owned(), format!("z{z}"))]);
            r.cpu_score = *score;
            if *cached {
                r.images = vec!["/images/alpine".into()];
            }
            join(&mut rig, n, r);
        }
        let plain = start(u(50), 1, chunks * 32);
        let mut preferring = plain.clone();
        preferring.requirements.preferences.labels = BTreeMap::from([("zone".to_owned(), format!("z{zone}"))]);
        if image {
            preferring.requirements.preferences.image = Some("/images/alpine/rootfs".into());
        }
        let need_plain = rig.hub.need(&plain);
        let need_preferring = rig.hub.need(&preferring);
        let without = placement::choose(&rig.hub.nodes, &need_plain, &cfg, None, None);
        let with = placement::choose(&rig.hub.nodes, &need_preferring, &cfg, None, None);
        prop_assert_eq!(without.is_some(), with.is_some());
        if let Some(id) = with {
            prop_assert!(rig.hub.nodes.get(&id).unwrap().check(&need_preferring, &cfg).is_ok());
            let best = rig.hub.nodes.iter().filter(|n| n.check(&need_preferring, &cfg).is_ok())
                .map(|n| placement::rank(n, &need_preferring, &cfg)).max().unwrap();
            prop_assert_eq!(placement::rank(rig.hub.nodes.get(&id).unwrap(), &need_preferring, &cfg), best, "the best-ranked node that fits");
        }
        let plan = placement::plan(&rig.hub.nodes, &need_preferring, &cfg, 1);
        prop_assert_eq!(plan.placed.first().map(|p| p.0), with);
    }
}

#[test]
fn placement_charges_each_instance_its_backends_anchor_tax_on_that_node() {
    let mut rig = Rig::new(Config::default());
    let mut taxed = report(u(10), 8, 1024, 0.0);
    taxed.anchor_tax_mb = BTreeMap::from([("sim".to_owned(), 100)]);
    join(&mut rig, 10, taxed);
    // 300 MiB each: three would fit 1024 MiB, but with 100 MiB of machinery each only two do.
    assert_eq!(placed_on(&rig.start(start(u(50), 1, 288))), vec![(u(50), u(10))]);
    assert_eq!(placed_on(&rig.start(start(u(51), 1, 288))), vec![(u(51), u(10))]);
    let out = rig.start(start(u(52), 1, 288));
    assert!(placed_on(&out).is_empty(), "the third is not placed: {out:?}");
    let why = &queued(&out).expect("queued").reason;
    assert!(why.contains("insufficient memory"), "{why}");
    assert_eq!(rig.hub.nodes.get(&u(10)).unwrap().mem_used(), 2 * (288 + 100), "the taxes count as used");
    // The same node without a tax takes the third.
    let mut rig = Rig::new(Config::default());
    join(&mut rig, 10, report(u(10), 8, 1024, 0.0));
    for n in 50..53 {
        assert_eq!(placed_on(&rig.start(start(u(n), 1, 288))).len(), 1);
    }
}

// === live migration ===

fn vm(instance: Uuid, mem_mb: u64) -> Start {
    testutil::vm::start(instance, mem_mb)
}

fn vm_node(rig: &mut Rig, n: u8) {
    rig.hub.handle(rig.now, Input::Connected { conn_id: u64::from(n) + 100, uuid: u(n), role: AGENT, term: None });
    vm_ready(rig, n);
}

fn vm_ready(rig: &mut Rig, n: u8) {
    let mut r = report(u(n), 4, 1000, 0.0);
    r.features.extend(["vm".to_owned(), "vm:x86_64".to_owned(), "migrate".to_owned()]);
    rig.ready(n, r);
}

/// A rig with a vm instance of 400 MiB running, confirmed, on node 10, and node 11 empty.
fn migration_rig() -> (Rig, Start) {
    migration_rig_with(Config::default())
}

fn migration_rig_with(cfg: Config) -> (Rig, Start) {
    let mut rig = Rig::new(cfg);
    vm_node(&mut rig, 10);
    let s = vm(u(50), 400);
    assert_eq!(placed_on(&rig.start(s.clone())), vec![(u(50), u(10))]);
    rig.send(u(10), AGENT, Message::InstanceStarted(InstanceEvent { instance_uuid: u(50), node_uuid: Some(u(10)) }));
    vm_node(&mut rig, 11);
    (rig, s)
}

fn migrate(rig: &mut Rig, s: &Start, from: u8, to: Option<u8>) -> Vec<(Option<Uuid>, Message)> {
    let m = ssntp::payload::Migrate { start: s.clone(), from_node: u(from), to_node: to.map(u) };
    rig.send(u(1), CTL, Message::Migrate(m))
}

fn migrated(out: &[(Option<Uuid>, Message)]) -> Option<&ssntp::payload::InstanceMigrated> {
    out.iter().find_map(|(to, m)| match m {
        Message::InstanceMigrated(e) if to.is_none() => Some(e),
        _ => None,
    })
}

fn ends(out: &[(Option<Uuid>, Message)]) -> Vec<(Uuid, bool)> {
    let mut ends: Vec<(Uuid, bool)> = out
        .iter()
        .filter_map(|(to, m)| match m {
            Message::MigrateEnd(e) => Some((to.expect("to a node"), e.committed)),
            _ => None,
        })
        .collect();
    ends.sort_unstable();
    ends
}

#[test]
fn a_migration_charges_the_destination_while_the_state_is_copied_then_moves_the_instance() {
    let (mut rig, s) = migration_rig();
    let out = migrate(&mut rig, &s, 10, None);
    let Some((Some(to), Message::Start(incoming))) = out.first() else { panic!("{out:?}") };
    assert_eq!((*to, incoming.migrate_from, incoming.charge_mb), (u(11), Some(u(10)), Some(400)));
    assert_eq!(rig.hub.node_of(&u(50)), Some(u(10)), "it runs at the source meanwhile");
    assert!(rig.hub.indexes_consistent());
    // The destination's room is held: 700 MiB no longer fits there.
    let q = rig.start(start(u(60), 1, 700));
    assert!(queued(&q).is_some(), "{q:?}");

    let ready = ssntp::payload::MigrationReady { instance_uuid: u(50), address: "127.0.0.1:4000".into() };
    let out = rig.send(u(11), AGENT, Message::MigrationReady(ready.clone()));
    let Some((Some(peer), Message::MigrateOut(o))) = out.first() else { panic!("{out:?}") };
    assert_eq!((*peer, o.to_node, o.address.as_str()), (u(10), u(11), "127.0.0.1:4000"));
    assert!(rig.send(u(11), AGENT, Message::MigrationReady(ready)).is_empty(), "said once");

    let done = ssntp::payload::MigrationDone { instance_uuid: u(50), ok: true, detail: String::new() };
    let out = rig.send(u(10), AGENT, Message::MigrationDone(done));
    let e = migrated(&out).expect("the controllers hear it");
    assert!(e.ok && e.from_node == u(10) && e.to_node == Some(u(11)), "{e:?}");
    assert_eq!(ends(&out), vec![(u(10), true), (u(11), true)]);
    assert_eq!(rig.hub.node_of(&u(50)), Some(u(11)));
    assert!(rig.hub.node(&u(10)).unwrap().instances.get(&u(50)).is_none(), "the source's charge is gone");
    assert_eq!(placed_on(&out), vec![(u(60), u(10))], "and its room goes to the queue");
    assert!(rig.hub.indexes_consistent());
    // The source's copy ending now concerns nobody.
    let exited =
        InstanceExited { instance_uuid: u(50), node_uuid: u(10), exit_code: Some(0), reason: ExitReason::Completed };
    rig.send(u(10), AGENT, Message::InstanceExited(exited));
    assert_eq!(rig.hub.node_of(&u(50)), Some(u(11)));
    assert!(rig.hub.indexes_consistent());
}

#[test]
fn a_destination_that_refuses_abandons_the_migration_and_the_instance_runs_on() {
    let (mut rig, s) = migration_rig();
    migrate(&mut rig, &s, 10, Some(11));
    let refusal = StartFailure {
        node_uuid: Some(u(11)),
        instance_uuid: u(50),
        reason: FailureReason::LaunchFailure,
        restart: false,
        detail: "no device model".into(),
    };
    let out = rig.send(u(11), AGENT, Message::StartFailure(refusal));
    assert!(failure(&out).is_none(), "the controllers must not see the running instance fail: {out:?}");
    let e = migrated(&out).expect("told");
    assert!(!e.ok && e.detail.contains("no device model"), "{e:?}");
    assert_eq!(ends(&out), vec![(u(10), false), (u(11), false)]);
    assert_eq!(rig.hub.node_of(&u(50)), Some(u(10)));
    assert!(rig.hub.node(&u(11)).unwrap().instances.is_empty());
    assert!(rig.hub.indexes_consistent());
    // A failed copy from the source abandons it the same way, and a new migration may start.
    let out = migrate(&mut rig, &s, 10, None);
    assert!(matches!(out.first(), Some((Some(_), Message::Start(_)))), "{out:?}");
    let failed = ssntp::payload::MigrationDone { instance_uuid: u(50), ok: false, detail: "connection reset".into() };
    let out = rig.send(u(10), AGENT, Message::MigrationDone(failed));
    assert_eq!(migrated(&out).map(|e| (e.ok, e.detail.as_str())), Some((false, "connection reset")));
    assert_eq!(rig.hub.node_of(&u(50)), Some(u(10)));
}

#[test]
fn a_migration_is_refused_with_the_reason_when_it_cannot_start() {
    let (mut rig, s) = migration_rig();
    let reason = |out: Vec<(Option<Uuid>, Message)>| {
        assert!(placed_on(&out).is_empty() && migrated(&out).is_none(), "{out:?}");
        match &out[..] {
            [(Some(to), Message::CommandFailure(f))] if *to == u(1) && f.command == "MIGRATE" => {
                assert_eq!(f.instance_uuid, Some(u(50)));
                f.detail.clone()
            }
            _ => panic!("not refused to the controller: {out:?}"),
        }
    };
    let not_vm = Start { backend: start(u(50), 1, 1).backend, ..s.clone() };
    assert!(reason(migrate(&mut rig, &not_vm, 10, None)).contains("only vm instances"));
    let with_disk = match s.backend.clone() {
        Backend::Vm { kernel, initrd, append, arch, accel, .. } => {
            Backend::Vm { kernel, initrd, append, disks: vec!["/d.img".into()], arch, accel }
        }
        _ => unreachable!(),
    };
    assert!(reason(migrate(&mut rig, &Start { backend: with_disk, ..s.clone() }, 10, None)).contains("disks"));
    assert!(reason(migrate(&mut rig, &s, 11, None)).contains("runs on node"));
    assert!(reason(migrate(&mut rig, &s, 10, Some(10))).contains("already runs"));
    assert!(reason(migrate(&mut rig, &s, 10, Some(99))).contains("not known"));
    // One at a time: a second MIGRATE is refused and the first goes on.
    assert!(matches!(migrate(&mut rig, &s, 10, Some(11)).first(), Some((Some(_), Message::Start(_)))));
    assert!(reason(migrate(&mut rig, &s, 10, None)).contains("under way"));
    assert_eq!(rig.hub.summary(rig.now).migrating, 1);
    let failed = ssntp::payload::MigrationDone { instance_uuid: u(50), ok: false, detail: "x".into() };
    rig.send(u(10), AGENT, Message::MigrationDone(failed));
    let filler = Requirements { vcpus: 1, mem_mb: 800, node_id: Some(u(11)), ..Requirements::default() };
    assert_eq!(placed_on(&rig.start(Start { requirements: filler, ..vm(u(61), 800) })), vec![(u(61), u(11))]);
    assert!(reason(migrate(&mut rig, &s, 10, None)).contains("no other node"));
    assert!(rig.hub.indexes_consistent());
}

#[test]
fn losing_either_node_abandons_the_migration_and_only_the_source_loses_the_instance() {
    let cfg = Config { failover_grace_ms: 0, ..Config::default() };
    for lose_source in [true, false] {
        let mut rig = Rig::new(cfg.clone());
        vm_node(&mut rig, 10);
        let s = vm(u(50), 400);
        rig.start(s.clone());
        rig.send(
            u(10),
            AGENT,
            Message::InstanceStarted(InstanceEvent { instance_uuid: u(50), node_uuid: Some(u(10)) }),
        );
        vm_node(&mut rig, 11);
        vm_node(&mut rig, 12);
        migrate(&mut rig, &s, 10, Some(11));
        let (lost, kept) = if lose_source { (10, 11) } else { (11, 10) };
        // The others keep reporting; the lost one is silent past TTL and grace.
        let mut out = Vec::new();
        for sec in 1..=25 {
            rig.now = at(sec);
            vm_ready(&mut rig, kept);
            vm_ready(&mut rig, 12);
            out.extend(rig.tick(sec));
        }
        let lost_instances = out.iter().find_map(|(_, m)| match m {
            Message::NodeLost(l) if l.node_uuid == u(lost) => Some(l.instances.clone()),
            _ => None,
        });
        let expected = if lose_source { vec![u(50)] } else { Vec::new() };
        assert_eq!(lost_instances, Some(expected), "lose source: {lose_source}");
        let e = migrated(&out).expect("abandoned");
        assert!(!e.ok, "{e:?}");
        assert!(ends(&out).contains(&(u(kept), false)), "{out:?}");
        assert_eq!(rig.hub.node_of(&u(50)), (!lose_source).then_some(u(10)));
        assert!(rig.hub.node(&u(11)).unwrap().instances.is_empty());
        assert!(rig.hub.indexes_consistent());
    }
}

#[test]
fn a_migration_not_done_in_time_is_abandoned() {
    // Nodes are trusted for longer than the migration may take: only its own clock runs out.
    let day = 86_400_000;
    let (mut rig, s) = migration_rig_with(Config { node_ttl_ms: day, node_grace_ms: day, ..Config::default() });
    migrate(&mut rig, &s, 10, None);
    let limit = MIGRATION_TIMEOUT_MS / 1000;
    assert!(migrated(&rig.tick(limit - 1)).is_none());
    let out = rig.tick(limit);
    assert!(migrated(&out).is_some_and(|e| !e.ok && e.detail.contains("not done")), "{out:?}");
    assert_eq!(rig.hub.node_of(&u(50)), Some(u(10)));
}

#[derive(Debug, Clone)]
enum MigrationOp {
    Start {
        id: u8,
    },
    Migrate {
        id: u8,
        to: Option<u8>,
    },
    /// The destination of `id`'s migration says it is ready.
    Ready {
        id: u8,
    },
    /// The source (or, when `!from_source`, the destination) reports the copy's outcome.
    Done {
        id: u8,
        ok: bool,
        from_source: bool,
    },
    /// The destination refuses or loses its copy.
    DestinationEnds {
        id: u8,
    },
    /// The instance ends at its source.
    Exit {
        id: u8,
    },
    /// A node falls silent for good (it will be declared lost).
    Silence {
        n: u8,
    },
    Tick {
        secs: u16,
    },
}

fn migration_ops() -> impl Strategy<Value = MigrationOp> {
    prop_oneof![
        1 => (0u8..8).prop_map(|id| MigrationOp::Start { id }),
        3 => (0u8..8, prop::option::of(0u8..4)).prop_map(|(id, to)| MigrationOp::Migrate { id, to }),
        3 => (0u8..8).prop_map(|id| MigrationOp::Ready { id }),
        3 => (0u8..8, any::<bool>(), any::<bool>()).prop_map(|(id, ok, from_source)| MigrationOp::Done { id, ok, from_source }),
        1 => (0u8..8).prop_map(|id| MigrationOp::DestinationEnds { id }),
        1 => (0u8..8).prop_map(|id| MigrationOp::Exit { id }),
        1 => (0u8..4).prop_map(|n| MigrationOp::Silence { n }),
        1 => (1u16..700).prop_map(|secs| MigrationOp::Tick { secs }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Live migrations against the rules: an instance is located on one node and charged on at
    /// most two (a second only while it migrates there); no node is charged past its capacity;
    /// a migration ends once, with one INSTANCE_MIGRATED, committed only after its source said
    /// the state was copied; and a lost node's NODE_LOST names only what ran there.
    #[test]
    fn migrations_keep_one_location_bounded_charges_and_one_outcome(
        mems in prop::collection::vec(300u64..1500, 4),
        ops in prop::collection::vec(migration_ops(), 1..80),
    ) {
        let cfg = Config { node_ttl_ms: 10_000, node_grace_ms: 10_000, failover_grace_ms: 0, ..Config::default() };
        let mut hub = Hub::new(u(0), cfg.clone(), at(0));
        hub.handle(at(0), Input::Connected { conn_id: 1, uuid: u(1), role: CTL, term: None });
        let node = |n: u8| u(100 + n);
        let vm_report = |n: u8| {
            let mut r = report(node(n), 4, mems[usize::from(n)], 0.0);
            r.features.extend(["vm".to_owned(), "vm:x86_64".to_owned(), "migrate".to_owned()]);
            r
        };
        let mut now = at(0);
        let mut silent: HashSet<Uuid> = HashSet::new();
        for n in 0..4u8 {
            hub.handle(now, Input::Connected { conn_id: 100 + u64::from(n), uuid: node(n), role: AGENT, term: None });
            hub.handle(now, Input::Message { from: node(n), role: AGENT, frame: None, message: Message::Ready(vm_report(n)) });
        }
        let instance = |id: u8| Uuid::from_bytes([id + 1; 16]);
        let mut starts: HashMap<Uuid, Start> = HashMap::new();
        // Migrations the model knows are under way: instance → (from, to, source told to send).
        let mut migrating: HashMap<Uuid, (Uuid, Uuid, bool)> = HashMap::new();
        let mut copied: HashSet<Uuid> = HashSet::new(); // the source said ok while sending
        for op in ops {
            let send = |hub: &mut Hub, now: Now, from: Uuid, role: Role, message: Message| {
                hub.handle(now, Input::Message { from, role, frame: None, message })
            };
            let out = match op {
                MigrationOp::Start { id } => {
                    let s = vm(instance(id), 200);
                    starts.insert(s.instance_uuid, s.clone());
                    let i = s.instance_uuid;
                    let o = send(&mut hub, now, u(1), CTL, Message::Start(s));
                    // Confirmed at once where it went.
                    if let Some(to) = hub.node_of(&i) {
                        let e = InstanceEvent { instance_uuid: i, node_uuid: Some(to) };
                        send(&mut hub, now, to, AGENT, Message::InstanceStarted(e));
                    }
                    o
                }
                MigrationOp::Migrate { id, to } => {
                    let i = instance(id);
                    let (Some(s), Some(from)) = (starts.get(&i).cloned(), hub.node_of(&i)) else { continue };
                    let m = ssntp::payload::Migrate { start: s, from_node: from, to_node: to.map(node) };
                    send(&mut hub, now, u(1), CTL, Message::Migrate(m))
                }
                MigrationOp::Ready { id } => {
                    let i = instance(id);
                    let Some((_, to, _)) = migrating.get(&i).copied() else { continue };
                    let r = ssntp::payload::MigrationReady { instance_uuid: i, address: "x:1".into() };
                    send(&mut hub, now, to, AGENT, Message::MigrationReady(r))
                }
                MigrationOp::Done { id, ok, from_source } => {
                    let i = instance(id);
                    let Some((from, to, sending)) = migrating.get(&i).copied() else { continue };
                    let who = if from_source { from } else { to };
                    if ok && from_source && sending {
                        copied.insert(i);
                    }
                    let d = ssntp::payload::MigrationDone { instance_uuid: i, ok, detail: String::new() };
                    send(&mut hub, now, who, AGENT, Message::MigrationDone(d))
                }
                MigrationOp::DestinationEnds { id } => {
                    let i = instance(id);
                    let Some((_, to, _)) = migrating.get(&i).copied() else { continue };
                    let e = InstanceEvent { instance_uuid: i, node_uuid: Some(to) };
                    send(&mut hub, now, to, AGENT, Message::InstanceStopped(e))
                }
                MigrationOp::Exit { id } => {
                    let i = instance(id);
                    let Some(at_node) = hub.node_of(&i) else { continue };
                    starts.remove(&i);
                    let e = InstanceEvent { instance_uuid: i, node_uuid: Some(at_node) };
                    send(&mut hub, now, at_node, AGENT, Message::InstanceStopped(e))
                }
                MigrationOp::Silence { n } => {
                    silent.insert(node(n));
                    continue;
                }
                MigrationOp::Tick { secs } => {
                    now = Now { mono_ms: now.mono_ms + u64::from(secs) * 1000, unix_ms: now.unix_ms + u64::from(secs) * 1000 };
                    let mut o = Vec::new();
                    for n in 0..4u8 {
                        if !silent.contains(&node(n)) {
                            o.extend(send(&mut hub, now, node(n), AGENT, Message::Ready(vm_report(n))));
                        }
                    }
                    o.extend(hub.tick(now));
                    o
                }
            };
            prop_assert!(hub.indexes_consistent(), "indexes drifted");
            for (to, message) in decode(out) {
                match message {
                    Message::Start(s) if s.migrate_from.is_some() => {
                        let i = s.instance_uuid;
                        prop_assert!(!migrating.contains_key(&i), "a second migration of {} at once", i);
                        prop_assert_eq!(s.migrate_from, hub.nodes().find(|n| n.uuid != to.unwrap() && n.instances.get(&i).is_some()).map(|n| n.uuid));
                        migrating.insert(i, (s.migrate_from.unwrap(), to.unwrap(), false));
                        copied.remove(&i);
                    }
                    Message::MigrateOut(o) => {
                        let m = migrating.get_mut(&o.instance_uuid).expect("MIGRATE_OUT of a migration under way");
                        prop_assert_eq!((to, o.to_node, m.2), (Some(m.0), m.1, false), "sent to the source, once");
                        m.2 = true;
                    }
                    Message::MigrateEnd(e) if e.committed => {
                        prop_assert!(copied.contains(&e.instance_uuid), "committed before the state was copied");
                    }
                    Message::InstanceMigrated(e) => {
                        let (from, to, _) = migrating.remove(&e.instance_uuid).expect("the outcome of a migration under way, once");
                        prop_assert_eq!((e.from_node, e.to_node), (from, Some(to)));
                        if e.ok {
                            prop_assert_eq!(hub.node_of(&e.instance_uuid), Some(to));
                        }
                    }
                    Message::NodeLost(l) => {
                        for i in &l.instances {
                            let incoming = migrating.get(i).is_some_and(|m| m.1 == l.node_uuid);
                            prop_assert!(!incoming, "{} listed lost with a node it was only moving to", i);
                            starts.remove(i);
                        }
                    }
                    _ => {}
                }
            }
            // One location; charged on a second node only while migrating there; no node over
            // its capacity.
            prop_assert_eq!(hub.summary(now).migrating, migrating.len());
            for n in hub.nodes() {
                prop_assert!(n.mem_used() <= n.mem_capacity(&cfg), "{} over its memory", n.uuid);
                for i in n.instances.ids() {
                    let here = hub.node_of(i) == Some(n.uuid);
                    let incoming = migrating.get(i).is_some_and(|m| m.1 == n.uuid);
                    prop_assert!(here != incoming, "{} on {}: located {}, incoming {}", i, n.uuid, here, incoming);
                }
            }
        }
    }
}
