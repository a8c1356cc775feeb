//! The launcher core, driven by inputs alone: admission against the sampled machine, the
//! instance table, stops and evacuation, ends until delivered, reports bound to their connection,
//! news that costs what changed and digests that stay small whatever the history.

use drover_model::{Now, Overcommit};
use proptest::prelude::*;
use ssntp::payload::{
    Backend, Delete, Evacuate, ExitReason, FailureReason, InstanceState, LogFetch, Message, NodeReport, NodeState,
    Requirements, Restore, Start, Stop,
};
use ssntp::Uuid;

use super::{Config, Core, Effect, Input, DIGEST_PAGE, NEWS_BATCH};
use crate::admission::Limits;
use crate::executor::InstanceUsage;
use crate::executor::{Adopted, Event, Exit};
use crate::state::NodeFlags;

const NODE: Uuid = Uuid::from_bytes([0xAA; 16]);
const LIMITS: Limits = Limits { mem_reserve_mb: 256, disk_reserve_mb: 1024, max_instances: 50, dwell_ms: 10_000 };

const RETENTION_MS: u64 = 600_000;

fn id(n: u128) -> Uuid {
    Uuid::from_bytes(n.to_be_bytes())
}

fn at(ms: u64) -> Now {
    Now { mono_ms: ms, unix_ms: 1_800_000_000_000 + ms }
}

/// A node of 4 CPUs and 4,096 MiB (3,840 offered after the reserve), connected on session 1.
fn core() -> Core {
    core_with(LIMITS)
}

/// A node that takes thousands of small instances at once.
fn big_core() -> Core {
    let mut c = core_with(Limits { max_instances: 100_000, ..LIMITS });
    c.handle(at(0), Input::Sample(Box::new(NodeReport { cpus_online: 4096, ..sample(1 << 30, 1 << 30) })));
    c
}

fn core_with(limits: Limits) -> Core {
    let config = Config {
        node: NODE,
        limits,
        backends: vec!["process".into(), "sim".into()],
        limits_feature: Some("cgroup-v2".into()),
        ended_retention_ms: RETENTION_MS,
        away_grace_ms: 600_000,
    };
    let mut c = Core::new(config, NodeFlags::default());
    c.handle(at(0), Input::Sample(Box::new(sample(4096, 4000))));
    c.handle(at(0), Input::Connected { session: 1, overcommit: Overcommit { cpu: 4.0, mem: 1.0 } });
    c
}

/// A probe's report: memory figures with the reserve taken off, as the probe gives them.
fn sample(total_mb: u64, available_mb: u64) -> NodeReport {
    NodeReport {
        node_uuid: NODE,
        mem_total_mb: total_mb - LIMITS.mem_reserve_mb,
        mem_available_mb: available_mb.saturating_sub(LIMITS.mem_reserve_mb),
        disk_total_mb: 100_000,
        disk_available_mb: 50_000,
        cpus_online: 4,
        ..NodeReport::default()
    }
}

fn start(n: u128, mem_mb: u64) -> Start {
    let backend = Backend::Process { argv: vec!["/bin/true".into()], env: Default::default() };
    Start::new(id(n), Requirements { vcpus: 1, mem_mb, ..Default::default() }, backend)
}

fn command(c: &mut Core, message: Message) -> Vec<Effect> {
    c.handle(at(1), Input::Command(message))
}

fn sent(effects: &[Effect]) -> Vec<&Message> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(m) | Effect::SendEnd { message: m, .. } | Effect::Report { message: m, .. } => Some(m),
            _ => None,
        })
        .collect()
}

fn failure_reason(effects: &[Effect]) -> Option<FailureReason> {
    sent(effects).into_iter().find_map(|m| match m {
        Message::StartFailure(f) => Some(f.reason),
        _ => None,
    })
}

fn stats_of(effects: &[Effect]) -> Option<&ssntp::payload::Stats> {
    sent(effects).into_iter().find_map(|m| match m {
        Message::Stats(s) => Some(s),
        _ => None,
    })
}

/// The digest pages among `effects`.
fn digest_of(effects: &[Effect]) -> Vec<&ssntp::payload::Stats> {
    sent(effects)
        .into_iter()
        .filter_map(|m| match m {
            Message::Stats(s) if s.digest.is_some() => Some(s),
            _ => None,
        })
        .collect()
}

/// Every instance a digest among `effects` lists, if there is one.
fn digest_listed(effects: &[Effect]) -> Option<std::collections::BTreeSet<Uuid>> {
    let pages = digest_of(effects);
    (!pages.is_empty()).then(|| pages.iter().flat_map(|p| p.instances.iter().map(|s| s.instance_uuid)).collect())
}

/// The INSTANCE_NEWS among `effects`, with the ends each delivers.
fn news_of(effects: &[Effect]) -> Vec<(&ssntp::payload::InstanceNews, &Vec<Uuid>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Report { message: Message::InstanceNews(n), ends, .. } => Some((n, ends)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_admitted_start_runs_and_a_second_copy_is_refused() {
    let mut c = core();
    let out = command(&mut c, Message::Start(start(1, 100)));
    assert!(matches!(&out[..], [Effect::Run(s)] if s.instance_uuid == id(1)), "{out:?}");
    let out = command(&mut c, Message::Start(start(1, 100)));
    assert_eq!(failure_reason(&out), Some(FailureReason::AlreadyRunning));
    assert_eq!(c.running(), 1);
}

#[test]
fn admission_counts_what_was_granted_since_the_last_sample() {
    // 3,840 MiB offered: three STARTs of 1,200 fit, the fourth does not, with no new sample.
    let mut c = core();
    for n in 1..=3 {
        assert!(failure_reason(&command(&mut c, Message::Start(start(n, 1200)))).is_none());
    }
    assert_eq!(failure_reason(&command(&mut c, Message::Start(start(4, 1200)))), Some(FailureReason::FullCn));
    // A sample showing the machine short of real memory refuses even small work.
    let mut c = core();
    c.handle(at(2), Input::Sample(Box::new(sample(4096, 300))));
    assert_eq!(failure_reason(&command(&mut c, Message::Start(start(1, 100)))), Some(FailureReason::FullCn));
}

#[test]
fn a_refused_run_frees_its_charge_and_says_why() {
    let mut c = core();
    let mut s = start(1, 3000);
    s.restart = true;
    command(&mut c, Message::Start(s));
    let out = c.handle(
        at(2),
        Input::RunRefused { instance: id(1), reason: FailureReason::LaunchFailure, detail: "no shim".into() },
    );
    let failure = sent(&out).into_iter().find_map(|m| if let Message::StartFailure(f) = m { Some(f) } else { None });
    let failure = failure.expect("a START_FAILURE");
    assert_eq!((failure.reason, failure.restart), (FailureReason::LaunchFailure, true));
    assert_eq!(c.running(), 0);
    assert!(failure_reason(&command(&mut c, Message::Start(start(2, 3000)))).is_none(), "the charge was freed");
}

#[test]
fn evacuation_stops_everything_keeps_the_flag_and_refuses_new_work() {
    let mut c = core();
    command(&mut c, Message::Start(start(1, 100)));
    command(&mut c, Message::Start(start(2, 100)));
    let out = command(
        &mut c,
        Message::Evacuate(Evacuate { workload_agent_uuid: NODE, deadline_ms: Some(2000), drain_ms: None }),
    );
    assert_eq!(
        out[0],
        Effect::SaveFlags(NodeFlags { maintenance: true, drain_until_unix_ms: None }),
        "saved before anything else"
    );
    assert!(sent(&out).iter().any(|m| matches!(m, Message::Maintenance(Some(_)))), "said at once: {out:?}");
    assert_eq!(stats_of(&out).unwrap().status, NodeState::Maintenance);
    let stops: Vec<Uuid> = out
        .iter()
        .filter_map(|e| match e {
            Effect::Stop { instance, grace } if grace.as_millis() == 2000 => Some(*instance),
            _ => None,
        })
        .collect();
    assert_eq!(stops, vec![id(1), id(2)]);
    assert_eq!(failure_reason(&command(&mut c, Message::Start(start(3, 100)))), Some(FailureReason::NodeMaintenance));
    // Each end is a stop, news for the timer; the status did not change, so nothing goes now.
    let out = c.handle(
        at(3),
        Input::Workload(Event::Exited(Exit { instance: id(1), code: None, reason: ExitReason::Killed })),
    );
    assert!(out.is_empty(), "{out:?}");
    let out = c.handle(at(3), Input::NewsDue);
    let news = news_of(&out);
    assert_eq!(news.len(), 1, "{out:?}");
    assert_eq!((news[0].0.instances[0].state, news[0].1), (InstanceState::Stopped, &vec![id(1)]));
    let out = command(&mut c, Message::Restore(Restore { workload_agent_uuid: NODE }));
    assert_eq!(out[0], Effect::SaveFlags(NodeFlags::default()));
    assert!(sent(&out).iter().any(|m| matches!(m, Message::Ready(_))), "READY at once: {out:?}");
    assert!(failure_reason(&command(&mut c, Message::Start(start(3, 100)))).is_none());
}

#[test]
fn a_drain_lets_running_work_finish_and_stops_what_is_left_at_its_deadline() {
    let mut c = core();
    command(&mut c, Message::Start(start(1, 100)));
    command(&mut c, Message::Start(start(2, 100)));
    let drain = Evacuate { workload_agent_uuid: NODE, deadline_ms: None, drain_ms: Some(10_000) };
    let out = command(&mut c, Message::Evacuate(drain));
    let until = at(1).unix_ms + 10_000;
    assert_eq!(out[0], Effect::SaveFlags(NodeFlags { maintenance: true, drain_until_unix_ms: Some(until) }));
    assert!(!out.iter().any(|e| matches!(e, Effect::Stop { .. })), "nothing is stopped yet: {out:?}");
    let report =
        sent(&out).into_iter().find_map(|m| if let Message::Maintenance(Some(r)) = m { Some(r.clone()) } else { None });
    assert_eq!(report.unwrap().draining_until_unix_ms, Some(until), "the node says it drains, and until when");
    assert_eq!(failure_reason(&command(&mut c, Message::Start(start(3, 100)))), Some(FailureReason::NodeMaintenance));
    // One finishes on its own; before the deadline the other runs on.
    c.handle(
        at(2_000),
        Input::Workload(Event::Exited(Exit { instance: id(1), code: Some(0), reason: ExitReason::Completed })),
    );
    let out = c.handle(at(9_000), Input::ReportDue);
    assert!(!out.iter().any(|e| matches!(e, Effect::Stop { .. })), "{out:?}");
    // At the deadline what is left is stopped, and the drain is over (maintenance stays).
    let out = c.handle(at(10_001), Input::ReportDue);
    let stops: Vec<Uuid> =
        out.iter().filter_map(|e| if let Effect::Stop { instance, .. } = e { Some(*instance) } else { None }).collect();
    assert_eq!(stops, vec![id(2)]);
    assert!(out.contains(&Effect::SaveFlags(NodeFlags { maintenance: true, drain_until_unix_ms: None })), "{out:?}");
    // A drain of an idle node is an evacuation: nothing to wait for.
    let mut idle = core();
    let out = command(&mut idle, Message::Evacuate(drain_of(5_000)));
    assert_eq!(out[0], Effect::SaveFlags(NodeFlags { maintenance: true, drain_until_unix_ms: None }));
    // RESTORE ends a drain.
    let mut c = core();
    command(&mut c, Message::Start(start(1, 100)));
    command(&mut c, Message::Evacuate(drain_of(5_000)));
    let out = command(&mut c, Message::Restore(ssntp::payload::Restore { workload_agent_uuid: NODE }));
    assert!(out.contains(&Effect::SaveFlags(NodeFlags::default())), "{out:?}");
    assert!(!c.handle(at(60_000), Input::ReportDue).iter().any(|e| matches!(e, Effect::Stop { .. })));
}

#[test]
fn a_launcher_exiting_with_a_drain_takes_no_work_and_says_until_when_without_keeping_maintenance() {
    let mut c = core();
    command(&mut c, Message::Start(start(1, 100)));
    let out = c.handle(at(5), Input::ExitDraining { drain_ms: 30_000 });
    let report =
        sent(&out).into_iter().find_map(|m| if let Message::Maintenance(Some(r)) = m { Some(r.clone()) } else { None });
    assert_eq!(report.expect("MAINTENANCE at once").draining_until_unix_ms, Some(at(5).unix_ms + 30_000));
    assert!(
        !out.iter().any(|e| matches!(e, Effect::Stop { .. } | Effect::SaveFlags(_))),
        "nothing stopped, nothing kept: {out:?}"
    );
    assert_eq!(failure_reason(&command(&mut c, Message::Start(start(2, 100)))), Some(FailureReason::NodeMaintenance));
    assert!(!c.maintenance(), "the next launcher takes work");
}

#[test]
fn the_measured_anchor_tax_is_reported_and_charged_to_what_is_admitted_after() {
    let mut c = core();
    command(&mut c, Message::Start(start(1, 100)));
    let before = c.node_report().anchor_tax_mb.get("process").copied();
    assert_eq!(before, Some(2), "the default before any measurement");
    let machinery = InstanceUsage { memory_mb: 50, cpu_percent: 1, disk_mb: 0, machinery_kb: 6 * 1024 + 1 };
    c.handle(at(5), Input::Usage(vec![(id(1), machinery)]));
    assert_eq!(c.node_report().anchor_tax_mb.get("process"), Some(&7), "measured: 6 MiB and a bit");
    let allocated = c.node_report().mem_allocated_mb.unwrap();
    command(&mut c, Message::Start(start(2, 100)));
    assert_eq!(c.node_report().mem_allocated_mb.unwrap(), allocated + 100 + 7, "memory plus the tax");
}

fn drain_of(ms: u64) -> Evacuate {
    Evacuate { workload_agent_uuid: NODE, deadline_ms: None, drain_ms: Some(ms) }
}

#[test]
fn ends_are_sent_again_after_a_reconnect_until_delivered_then_leave_the_digests() {
    let mut c = core();
    command(&mut c, Message::Start(start(1, 100)));
    let exit = Exit { instance: id(1), code: Some(3), reason: ExitReason::Failed };
    c.handle(at(2), Input::Workload(Event::Exited(exit)));
    let out = c.handle(at(2), Input::NewsDue);
    let news = news_of(&out);
    let stat = &news[0].0.instances[0];
    assert_eq!((stat.state, stat.exit_code, stat.reason), (InstanceState::Exited, Some(3), Some(ExitReason::Failed)));
    assert_eq!(news[0].1, &vec![id(1)], "the news delivers the end");
    // Not delivered (the connection dropped): the next connection's digest carries it.
    c.handle(at(3), Input::Disconnected);
    let out = c.handle(at(4), Input::Connected { session: 2, overcommit: Overcommit::default() });
    assert!(
        out.iter().any(|e| matches!(e, Effect::Report { message: Message::Stats(s), ends, .. } if s.digest.is_some() && ends == &vec![id(1)])),
        "{out:?}"
    );
    c.handle(at(5), Input::EndDelivered(id(1)));
    let out = c.handle(at(6), Input::Connected { session: 3, overcommit: Overcommit::default() });
    assert!(out.iter().all(|e| !matches!(e, Effect::Report { ends, .. } if !ends.is_empty())), "{out:?}");
    // Delivered, the ended copy stays in the digests for the retention, as exited with its code…
    let stat = &digest_of(&out)[0].instances[0];
    assert_eq!((stat.state, stat.exit_code), (InstanceState::Exited, Some(3)));
    // …and then leaves them (it stays on the node, for its logs, until a DELETE).
    let out = c.handle(at(5 + RETENTION_MS), Input::Command(Message::ReportRequest(Default::default())));
    assert_eq!(digest_listed(&out), Some(Default::default()));
    assert!(command(
        &mut c,
        Message::LogFetch(LogFetch { instance_uuid: id(1), workload_agent_uuid: NODE, max_bytes: 1, request_id: 1 })
    )
    .iter()
    .all(|e| matches!(e, Effect::Tail(_))));
}

#[test]
fn a_burst_of_starts_and_their_events_costs_one_news_on_the_timer() {
    let mut c = core();
    // 16 vCPUs offered (4 CPUs × 4): twelve STARTs of one vCPU fit.
    for n in 1..=12 {
        let out = command(&mut c, Message::Start(start(n, 32)));
        assert!(!out.iter().any(|e| matches!(e, Effect::Report { .. })), "{out:?}");
        let out = c.handle(at(2), Input::Workload(Event::Started { instance: id(n), pid: 1 }));
        assert!(sent(&out).is_empty(), "nothing per event: {out:?}");
    }
    let out = c.handle(at(3), Input::NewsDue);
    let news = news_of(&out);
    assert_eq!((news.len(), news[0].0.instances.len(), news[0].0.seq), (1, 12, 1));
    assert!(news[0].0.instances.iter().all(|s| s.state == InstanceState::Active));
    assert!(c.handle(at(3), Input::NewsDue).is_empty(), "nothing changed since");
    // The heartbeat lists no instances, whatever runs.
    let out = c.handle(at(3), Input::ReportDue);
    let heartbeat = stats_of(&out).unwrap();
    assert!(heartbeat.instances.is_empty() && heartbeat.digest.is_none(), "{heartbeat:?}");
    // A change of status is said at once: 3,840 MiB offered, 408 given (12 chunks of 32 MiB and
    // 12 anchor taxes of 2 MiB), 3,430 more and a tax fill it.
    let out = command(&mut c, Message::Start(start(99, 3430)));
    assert!(sent(&out).iter().any(|m| matches!(m, Message::Full(_))), "FULL at once: {out:?}");
}

#[test]
fn reports_go_only_on_the_connection_they_belong_to() {
    let mut c = core();
    c.handle(at(1), Input::Disconnected);
    assert!(c.handle(at(2), Input::ReportDue).is_empty(), "nothing while disconnected");
    let out = c.handle(at(3), Input::Connected { session: 7, overcommit: Overcommit::default() });
    assert!(out.iter().all(|e| matches!(e, Effect::Report { session: 7, .. })), "{out:?}");
    assert_eq!(out.len(), 3, "status, heartbeat and a one-page digest: {out:?}");
}

#[test]
fn a_restart_replaces_an_ended_copy_and_a_plain_start_does_not() {
    let mut c = core();
    command(&mut c, Message::Start(start(1, 100)));
    c.handle(
        at(2),
        Input::Workload(Event::Exited(Exit { instance: id(1), code: Some(1), reason: ExitReason::Failed })),
    );
    assert_eq!(failure_reason(&command(&mut c, Message::Start(start(1, 100)))), Some(FailureReason::InstanceExists));
    let mut again = start(1, 100);
    again.restart = true;
    let out = command(&mut c, Message::Start(again));
    assert!(matches!(&out[..], [Effect::Delete(d), Effect::Run(_)] if *d == id(1)), "{out:?}");
}

#[test]
fn commands_for_unknown_instances_are_answered_with_no_instance() {
    let mut c = core();
    let out = command(&mut c, Message::Stop(Stop { instance_uuid: id(9), workload_agent_uuid: NODE, grace_ms: None }));
    assert!(matches!(sent(&out)[0], Message::StopFailure(f) if f.reason == FailureReason::NoInstance));
    let out = command(&mut c, Message::Delete(Delete { instance_uuid: id(9), workload_agent_uuid: NODE, stop: false }));
    assert!(matches!(sent(&out)[0], Message::DeleteFailure(f) if f.reason == FailureReason::NoInstance));
    let fetch = LogFetch { instance_uuid: id(9), workload_agent_uuid: NODE, max_bytes: 10, request_id: 4 };
    let out = command(&mut c, Message::LogFetch(fetch.clone()));
    assert!(matches!(sent(&out)[0], Message::CommandFailure(f) if f.reason == FailureReason::NoInstance));
    command(&mut c, Message::Start(start(9, 100)));
    assert_eq!(command(&mut c, Message::LogFetch(fetch.clone())), vec![Effect::Tail(fetch)]);
}

#[test]
fn a_stop_before_the_start_is_known_to_have_run_is_still_carried_out() {
    // The executor holds a stop for a workload whose PID is not known yet; the core only has
    // to ask, and to report the end as a stop.
    let mut c = core();
    command(&mut c, Message::Start(start(1, 100)));
    let out = command(&mut c, Message::Stop(Stop { instance_uuid: id(1), workload_agent_uuid: NODE, grace_ms: None }));
    assert!(matches!(&out[..], [Effect::Stop { instance, .. }] if *instance == id(1)));
    c.handle(at(2), Input::Workload(Event::Started { instance: id(1), pid: 42 }));
    c.handle(at(3), Input::Workload(Event::Exited(Exit { instance: id(1), code: None, reason: ExitReason::Killed })));
    let out = c.handle(at(3), Input::NewsDue);
    assert_eq!(news_of(&out)[0].0.instances[0].state, InstanceState::Stopped);
}

#[test]
fn adopted_instances_count_and_unreadable_ones_are_reported() {
    let config = Config {
        node: NODE,
        limits: LIMITS,
        backends: vec!["process".into()],
        limits_feature: None,
        ended_retention_ms: RETENTION_MS,
        away_grace_ms: 600_000,
    };
    let mut c = Core::new(config, NodeFlags::default());
    let orphan = Exit { instance: id(8), code: None, reason: ExitReason::Unknown };
    c.handle(
        at(0),
        Input::Adopted(vec![
            Adopted::Known { start: Box::new(start(1, 2976)), stop_requested: false, exit: None, exit_reported: false },
            Adopted::Unreadable(orphan),
        ]),
    );
    c.handle(at(0), Input::Sample(Box::new(sample(4096, 4000))));
    assert_eq!(c.running(), 1);
    let out = c.handle(at(1), Input::Connected { session: 1, overcommit: Overcommit::default() });
    assert!(out
        .iter()
        .any(|e| matches!(e, Effect::SendEnd { instance, message: Message::InstanceExited(_) } if *instance == id(8))));
    let ready = sent(&out).into_iter().find_map(|m| if let Message::Ready(r) = m { Some(r) } else { None }).unwrap();
    assert_eq!((ready.mem_allocated_mb, ready.instance_count), (Some(2976 + 2), 1), "its memory and the tax");
    assert_eq!(failure_reason(&command(&mut c, Message::Start(start(2, 1000)))), Some(FailureReason::FullCn));
}

#[derive(Debug, Clone)]
enum Op {
    Start { n: u8, mem_mb: u64 },
    Exit { n: u8 },
    Stop { n: u8 },
    Delete { n: u8 },
    Evacuate,
    Restore,
    Reconnect,
    Sample { available_mb: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..20, 1u64..1500).prop_map(|(n, mem_mb)| Op::Start { n, mem_mb }),
        2 => (0u8..20).prop_map(|n| Op::Exit { n }),
        1 => (0u8..20).prop_map(|n| Op::Stop { n }),
        1 => (0u8..20).prop_map(|n| Op::Delete { n }),
        1 => Just(Op::Evacuate),
        1 => Just(Op::Restore),
        1 => Just(Op::Reconnect),
        1 => (0u64..5000).prop_map(|available_mb| Op::Sample { available_mb }),
    ]
}

proptest! {
    /// Whatever happens, the core never admits beyond the node's bound, reports only on the
    /// connection of the moment, lists in STATS exactly the instances it holds, and reports
    /// every end exactly once per connection until it is delivered.
    #[test]
    fn the_core_never_overcommits_and_reports_what_it_holds(ops in prop::collection::vec(op(), 1..120)) {
        let mut c = core();
        let mut session = 1u64;
        let mut running: std::collections::BTreeMap<Uuid, u64> = Default::default();
        let mut held: std::collections::BTreeSet<Uuid> = Default::default();
        for (t, op) in ops.into_iter().enumerate() {
            let now = at(10 + t as u64);
            let out = match op {
                Op::Start { n, mem_mb } => {
                    let out = c.handle(now, Input::Command(Message::Start(start(u128::from(n), mem_mb))));
                    if out.iter().any(|e| matches!(e, Effect::Run(_))) {
                        running.insert(id(u128::from(n)), mem_mb);
                        held.insert(id(u128::from(n)));
                    }
                    out
                }
                Op::Exit { n } if running.contains_key(&id(u128::from(n))) => {
                    running.remove(&id(u128::from(n)));
                    let exit = Exit { instance: id(u128::from(n)), code: Some(0), reason: ExitReason::Completed };
                    c.handle(now, Input::Workload(Event::Exited(exit)));
                    let out = c.handle(now, Input::NewsDue);
                    let ends: Vec<Uuid> = news_of(&out).iter().flat_map(|(_, ends)| ends.iter().copied()).collect();
                    prop_assert_eq!(ends, vec![id(u128::from(n))]);
                    c.handle(now, Input::EndDelivered(id(u128::from(n))));
                    out
                }
                Op::Exit { .. } => Vec::new(),
                Op::Stop { n } => c.handle(now, Input::Command(Message::Stop(Stop { instance_uuid: id(u128::from(n)), workload_agent_uuid: NODE, grace_ms: None }))),
                Op::Delete { n } => {
                    let out = c.handle(now, Input::Command(Message::Delete(Delete { instance_uuid: id(u128::from(n)), workload_agent_uuid: NODE, stop: false })));
                    running.remove(&id(u128::from(n)));
                    held.remove(&id(u128::from(n)));
                    out
                }
                Op::Evacuate => c.handle(now, Input::Command(Message::Evacuate(Evacuate { workload_agent_uuid: NODE, deadline_ms: None, drain_ms: None }))),
                Op::Restore => c.handle(now, Input::Command(Message::Restore(Restore { workload_agent_uuid: NODE }))),
                Op::Reconnect => {
                    c.handle(now, Input::Disconnected);
                    session += 1;
                    let out = c.handle(now, Input::Connected { session, overcommit: Overcommit { cpu: 4.0, mem: 1.0 } });
                    prop_assert!(!out.iter().any(|e| matches!(e, Effect::SendEnd { .. })), "every end was delivered");
                    out
                }
                Op::Sample { available_mb } => c.handle(now, Input::Sample(Box::new(sample(4096, available_mb)))),
            };
            prop_assert!(running.values().sum::<u64>() <= 4096 - LIMITS.mem_reserve_mb, "over the bound: {:?}", running);
            prop_assert_eq!(c.running(), running.len());
            let charged: u64 = c.table.iter().filter(|(_, e)| e.running()).map(|(_, e)| e.charged_mb).sum();
            prop_assert_eq!(c.table.charged_mb, charged, "the kept total drifted");
            for e in &out {
                if let Effect::Report { session: s, .. } = e {
                    prop_assert_eq!(*s, session);
                }
            }
            if let Some(listed) = digest_listed(&out) {
                prop_assert_eq!(&listed, &held);
            }
        }
    }
}

#[test]
fn news_is_numbered_batched_and_digests_carry_the_last_number() {
    let mut c = big_core();
    let n = u128::try_from(NEWS_BATCH).unwrap() + 10;
    let mut news = Vec::new();
    for i in 1..=n {
        command(&mut c, Message::Start(start(i, 1)));
        let out = c.handle(at(2), Input::Workload(Event::Started { instance: id(i), pid: 1 }));
        news.extend(news_of(&out).into_iter().map(|(n, _)| (n.seq, n.instances.len())));
    }
    assert_eq!(news, vec![(1, NEWS_BATCH)], "a full batch goes at once");
    let out = c.handle(at(3), Input::NewsDue);
    assert_eq!(news_of(&out).iter().map(|(n, _)| (n.seq, n.instances.len())).collect::<Vec<_>>(), vec![(2, 10)]);
    let out = c.handle(at(4), Input::Command(Message::ReportRequest(Default::default())));
    let pages = digest_of(&out);
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0].digest, Some(ssntp::payload::DigestPage { seq: 2, page: 0, pages: 1 }));
    assert_eq!(pages[0].instances.len(), NEWS_BATCH + 10);
    // Usage that moves is news; a wobble is not.
    let usage = |mb| InstanceUsage { memory_mb: mb, cpu_percent: 5, disk_mb: 0, machinery_kb: -1 };
    c.handle(at(5), Input::Usage(vec![(id(1), usage(100)), (id(2), usage(100))]));
    let out = c.handle(at(5), Input::NewsDue);
    assert_eq!(news_of(&out)[0].0.instances.len(), 2, "figures became known");
    c.handle(at(6), Input::Usage(vec![(id(1), usage(104)), (id(2), usage(400))]));
    let out = c.handle(at(6), Input::NewsDue);
    let moved: Vec<Uuid> = news_of(&out)[0].0.instances.iter().map(|s| s.instance_uuid).collect();
    assert_eq!(moved, vec![id(2)]);
}

#[test]
fn a_node_that_ran_many_instances_keeps_its_reports_small() {
    let mut c = big_core();
    // 20,000 short instances, each started and ended, their ends delivered.
    let mut largest_news = 0;
    for i in 1..=20_000u128 {
        command(&mut c, Message::Start(start(i, 1)));
        let mut out = c.handle(at(2), Input::Workload(Event::Started { instance: id(i), pid: 1 }));
        let exit = Exit { instance: id(i), code: Some(0), reason: ExitReason::Completed };
        out.extend(c.handle(at(2), Input::Workload(Event::Exited(exit))));
        if i % 1000 == 0 {
            out.extend(c.handle(at(2), Input::NewsDue));
        }
        for (news, ends) in news_of(&out) {
            largest_news = largest_news.max(news.instances.len());
            for end in ends {
                c.handle(at(2), Input::EndDelivered(*end));
            }
        }
    }
    assert!(largest_news <= NEWS_BATCH, "{largest_news}");
    // Within the retention, the digest pages them.
    let out = c.handle(at(3), Input::Command(Message::ReportRequest(Default::default())));
    let pages = digest_of(&out);
    assert_eq!(pages.len(), 20_000usize.div_ceil(DIGEST_PAGE));
    assert!(pages.iter().all(|p| p.instances.len() <= DIGEST_PAGE));
    for page in &pages {
        let bytes = Message::Stats((*page).clone()).encode_payload().len();
        assert!(bytes < 512 * 1024, "a page of {bytes} bytes");
    }
    // After it, the heartbeat and the digest carry nothing of that history.
    let out = c.handle(at(3 + RETENTION_MS), Input::Command(Message::ReportRequest(Default::default())));
    assert_eq!(digest_of(&out).len(), 1);
    assert_eq!(digest_listed(&out), Some(Default::default()));
    let out = c.handle(at(4 + RETENTION_MS), Input::ReportDue);
    let bytes: usize = sent(&out).iter().map(|m| m.encode_payload().len()).sum();
    assert!(bytes < 1024, "heartbeat of {bytes} bytes");
}

#[test]
fn an_exit_that_leaves_workloads_running_asks_the_scheduler_to_hold_them() {
    let grace = |drain: bool| {
        let mut c = core_with(LIMITS);
        let out = c.handle(at(1), Input::ShuttingDown { drain });
        sent(&out).iter().find_map(|m| match m {
            Message::Maintenance(Some(r)) => Some(r.away_grace_ms),
            _ => None,
        })
    };
    assert_eq!(grace(false), Some(Some(600_000)), "left running: held for the maintenance grace");
    assert_eq!(grace(true), Some(None), "drained: nothing to hold");
}

// === live migration ===

fn vm_core() -> Core {
    let mut c = core();
    c.config.backends.push("vm".into());
    c
}

fn vm_start(n: u128, from: Option<Uuid>) -> Start {
    Start { migrate_from: from, ..testutil::vm::start(id(n), 64) }
}

/// MIGRATE_END to this node as the destination (`to_here`) or as the source.
fn end_as(instance: u128, committed: bool, to_here: bool) -> Message {
    let to_node = if to_here { NODE } else { id(0xD0) };
    Message::MigrateEnd(ssntp::payload::MigrateEnd { instance_uuid: id(instance), committed, to_node })
}

fn listed_now(c: &mut Core) -> Vec<(Uuid, InstanceState)> {
    let out = c.handle(at(50), Input::Command(Message::ReportRequest(Default::default())));
    digest_of(&out).iter().flat_map(|p| p.instances.iter().map(|s| (s.instance_uuid, s.state))).collect()
}

#[test]
fn an_incoming_copy_holds_its_room_unreported_until_committed_then_resumes() {
    let source = id(0xB0);
    let mut c = vm_core();
    let out = command(&mut c, Message::Start(vm_start(1, Some(source))));
    assert!(matches!(&out[..], [Effect::Run(s)] if s.migrate_from == Some(source)), "{out:?}");
    assert_eq!(c.running(), 1, "its room is held");
    c.handle(at(2), Input::Workload(Event::Started { instance: id(1), pid: 7 }));
    assert!(news_of(&c.handle(at(3), Input::NewsDue)).is_empty(), "not the instance yet: no news");
    assert!(listed_now(&mut c).is_empty(), "nor in a digest");
    // The shell's word goes on while the copy is incoming, and only then.
    let ready = Message::MigrationReady(ssntp::payload::MigrationReady { instance_uuid: id(1), address: "a:1".into() });
    assert_eq!(sent(&c.handle(at(4), Input::Migration(ready.clone()))), vec![&ready]);

    let out = command(&mut c, end_as(1, true, true));
    assert!(out.contains(&Effect::Resume(id(1))), "{out:?}");
    assert!(sent(&c.handle(at(5), Input::Migration(ready))).is_empty(), "it is the instance now");
    let news = c.handle(at(6), Input::NewsDue);
    assert_eq!(news_of(&news)[0].0.instances[0].state, InstanceState::Active, "reported from now on");
    assert_eq!(listed_now(&mut c), vec![(id(1), InstanceState::Active)]);
}

#[test]
fn an_abandoned_or_failed_incoming_copy_leaves_without_becoming_the_instance() {
    let mut c = vm_core();
    command(&mut c, Message::Start(vm_start(1, Some(id(0xB0)))));
    c.handle(at(2), Input::Workload(Event::Started { instance: id(1), pid: 7 }));
    let out = command(&mut c, end_as(1, false, true));
    assert!(out.contains(&Effect::Stop { instance: id(1), grace: std::time::Duration::ZERO }), "{out:?}");
    // Its end is a stop like any (the instance runs elsewhere; only this copy is gone), and
    // once delivered the copy and its files go.
    let exit = Exit { instance: id(1), code: None, reason: ExitReason::Killed };
    c.handle(at(3), Input::Workload(Event::Exited(exit)));
    let news = c.handle(at(4), Input::NewsDue);
    assert_eq!(news_of(&news)[0].0.instances[0].state, InstanceState::Stopped);
    let out = c.handle(at(5), Input::EndDelivered(id(1)));
    assert!(out.contains(&Effect::Delete(id(1))), "{out:?}");
    assert!(listed_now(&mut c).is_empty());
    assert_eq!(c.running(), 0);

    // A device model that dies while its state comes: the migration failed, nothing else said.
    command(&mut c, Message::Start(vm_start(2, Some(id(0xB0)))));
    let exit = Exit { instance: id(2), code: Some(1), reason: ExitReason::Failed };
    let out = c.handle(at(6), Input::Workload(Event::Exited(exit)));
    assert!(matches!(sent(&out)[..], [Message::MigrationDone(d)] if !d.ok), "{out:?}");
    assert!(out.contains(&Effect::Delete(id(2))));
    assert!(news_of(&c.handle(at(7), Input::NewsDue)).is_empty());
}

#[test]
fn a_source_sends_only_a_running_vm_and_drops_its_copy_once_committed() {
    let mut c = vm_core();
    command(&mut c, Message::Start(start(1, 100)));
    command(&mut c, Message::Start(vm_start(2, None)));
    let out_to = |n| {
        Message::MigrateOut(ssntp::payload::MigrateOut {
            instance_uuid: id(n),
            to_node: id(0xD0),
            address: "a:1".into(),
        })
    };
    let refused = |out: Vec<Effect>| match sent(&out)[..] {
        [Message::MigrationDone(d)] if !d.ok => d.detail.clone(),
        _ => panic!("not refused: {out:?}"),
    };
    assert!(refused(command(&mut c, out_to(1))).contains("not a vm"));
    assert!(refused(command(&mut c, out_to(2))).contains("not running"), "not started yet");
    assert!(refused(command(&mut c, out_to(9))).contains("no instance"));
    c.handle(at(2), Input::Workload(Event::Started { instance: id(2), pid: 8 }));
    let out = command(&mut c, out_to(2));
    assert!(matches!(&out[..], [Effect::MigrateOut(o)] if o.instance_uuid == id(2)), "{out:?}");
    assert!(refused(command(&mut c, out_to(2))).contains("migrating already"));
    // While it sends, it is still the instance here.
    assert!(listed_now(&mut c).contains(&(id(2), InstanceState::Active)));
    let done =
        Message::MigrationDone(ssntp::payload::MigrationDone { instance_uuid: id(2), ok: true, detail: String::new() });
    assert_eq!(sent(&c.handle(at(3), Input::Migration(done))).len(), 1);

    // Abandoned: cancelled, and it runs on as before.
    assert_eq!(command(&mut c, end_as(2, false, false)), vec![Effect::CancelMigration(id(2))]);
    assert!(matches!(&command(&mut c, out_to(2))[..], [Effect::MigrateOut(_)]), "it may be sent again");
    // Committed: stopped, its end reported as a stop, then gone with its files.
    let out = command(&mut c, end_as(2, true, false));
    assert!(out.contains(&Effect::Stop { instance: id(2), grace: std::time::Duration::ZERO }), "{out:?}");
    c.handle(at(4), Input::Workload(Event::Exited(Exit { instance: id(2), code: None, reason: ExitReason::Killed })));
    let news = c.handle(at(5), Input::NewsDue);
    assert_eq!(news_of(&news)[0].0.instances[0].state, InstanceState::Stopped);
    assert!(c.handle(at(6), Input::EndDelivered(id(2))).contains(&Effect::Delete(id(2))));
    assert_eq!(listed_now(&mut c), vec![(id(1), InstanceState::Pending)]);
}

#[test]
fn after_a_restart_mid_migration_migrate_end_says_which_copy_this_is() {
    // The destination's copy, adopted: reported as this node's, resumed if committed, stopped
    // if abandoned.
    for committed in [true, false] {
        let mut c = vm_core();
        let adopted = Adopted::Known {
            start: Box::new(vm_start(1, Some(id(0xB0)))),
            stop_requested: false,
            exit: None,
            exit_reported: false,
        };
        c.handle(at(0), Input::Adopted(vec![adopted]));
        assert_eq!(listed_now(&mut c), vec![(id(1), InstanceState::Active)]);
        let out = command(&mut c, end_as(1, committed, true));
        if committed {
            assert_eq!(out, vec![Effect::Resume(id(1))]);
        } else {
            assert!(out.contains(&Effect::Stop { instance: id(1), grace: std::time::Duration::ZERO }), "{out:?}");
        }
    }
    // The source's, adopted: its paused guest resumed if abandoned, stopped if committed.
    let mut c = vm_core();
    let adopted =
        Adopted::Known { start: Box::new(vm_start(2, None)), stop_requested: false, exit: None, exit_reported: false };
    c.handle(at(0), Input::Adopted(vec![adopted]));
    assert_eq!(command(&mut c, end_as(2, false, false)), vec![Effect::CancelMigration(id(2))]);
    assert!(command(&mut c, end_as(2, true, false))
        .contains(&Effect::Stop { instance: id(2), grace: std::time::Duration::ZERO }));
}

#[test]
fn a_source_copy_already_ended_and_reported_when_the_commit_comes_is_removed() {
    let mut c = vm_core();
    command(&mut c, Message::Start(vm_start(2, None)));
    c.handle(at(2), Input::Workload(Event::Started { instance: id(2), pid: 8 }));
    let out_to = Message::MigrateOut(ssntp::payload::MigrateOut {
        instance_uuid: id(2),
        to_node: id(0xD0),
        address: "a:1".into(),
    });
    command(&mut c, out_to);
    // A controller's STOP of the stale copy raced the commit: it ended and its end went.
    command(&mut c, Message::Stop(Stop { instance_uuid: id(2), workload_agent_uuid: NODE, grace_ms: None }));
    c.handle(at(3), Input::Workload(Event::Exited(Exit { instance: id(2), code: None, reason: ExitReason::Killed })));
    c.handle(at(4), Input::NewsDue);
    c.handle(at(5), Input::EndDelivered(id(2)));
    let out = command(&mut c, end_as(2, true, false));
    assert_eq!(out, vec![Effect::Delete(id(2))]);
    assert!(listed_now(&mut c).is_empty());
}

#[test]
fn only_the_copy_a_migration_concerns_leaves() {
    // An instance that came here by a migration, committed, then a second migration away
    // that the other node refused: this node, now its source, hears MIGRATE_END abandoned and
    // must keep it running.
    let mut c = vm_core();
    command(&mut c, Message::Start(vm_start(1, Some(id(0xB0)))));
    c.handle(at(2), Input::Workload(Event::Started { instance: id(1), pid: 7 }));
    command(&mut c, end_as(1, true, true));
    assert_eq!(command(&mut c, end_as(1, false, false)), vec![Effect::CancelMigration(id(1))]);
    assert_eq!(c.running(), 1);
    assert_eq!(listed_now(&mut c), vec![(id(1), InstanceState::Active)]);

    // A copy that left not long ago is still here: a migration back is refused saying so.
    let mut c = vm_core();
    command(&mut c, Message::Start(vm_start(2, None)));
    c.handle(at(2), Input::Workload(Event::Started { instance: id(2), pid: 8 }));
    command(&mut c, end_as(2, true, false));
    let out = command(&mut c, Message::Start(vm_start(2, Some(id(0xB0)))));
    let refusal =
        sent(&out)
            .into_iter()
            .find_map(|m| if let Message::StartFailure(f) = m { Some(f.detail.clone()) } else { None });
    assert!(refusal.is_some_and(|d| d.contains("still being removed")), "{out:?}");
}

#[test]
fn a_migration_the_scheduler_never_ends_is_ended_here() {
    use super::MIGRATION_GIVE_UP_MS;
    let mut c = vm_core();
    // An incoming copy and an outgoing one, both left without MIGRATE_END (the scheduler
    // restarted and forgot them).
    command(&mut c, Message::Start(vm_start(1, Some(id(0xB0)))));
    command(&mut c, Message::Start(vm_start(2, None)));
    c.handle(at(1), Input::Workload(Event::Started { instance: id(2), pid: 8 }));
    let out_to = Message::MigrateOut(ssntp::payload::MigrateOut {
        instance_uuid: id(2),
        to_node: id(0xD0),
        address: "a:1".into(),
    });
    command(&mut c, out_to);
    assert!(c
        .handle(at(MIGRATION_GIVE_UP_MS), Input::ReportDue)
        .iter()
        .all(|e| !matches!(e, Effect::Stop { .. } | Effect::CancelMigration(_))));
    let out = c.handle(at(MIGRATION_GIVE_UP_MS + 2), Input::ReportDue);
    assert!(out.contains(&Effect::Stop { instance: id(1), grace: std::time::Duration::ZERO }), "{out:?}");
    assert!(out.contains(&Effect::CancelMigration(id(2))), "{out:?}");
    // Once only.
    let out = c.handle(at(MIGRATION_GIVE_UP_MS + 3000), Input::ReportDue);
    assert!(out.iter().all(|e| !matches!(e, Effect::Stop { .. } | Effect::CancelMigration(_))), "{out:?}");
}
