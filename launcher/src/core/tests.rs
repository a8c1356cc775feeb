//! The launcher core, driven by inputs alone: admission against the sampled machine, the
//! instance table, stops and evacuation, ends until delivered, reports bound to their connection.

use drover_model::{Now, Overcommit};
use proptest::prelude::*;
use ssntp::payload::{
    Backend, Delete, Evacuate, ExitReason, FailureReason, InstanceState, LogFetch, Message, NodeReport, NodeState,
    Requirements, Restore, Start, Stop,
};
use ssntp::Uuid;

use super::{Config, Core, Effect, Input};
use crate::admission::Limits;
use crate::executor::{Adopted, Event, Exit};
use crate::state::NodeFlags;

const NODE: Uuid = Uuid::from_bytes([0xAA; 16]);
const LIMITS: Limits = Limits { mem_reserve_mb: 256, disk_reserve_mb: 1024, max_instances: 50, dwell_ms: 10_000 };

fn id(n: u128) -> Uuid {
    Uuid::from_bytes(n.to_be_bytes())
}

fn at(ms: u64) -> Now {
    Now { mono_ms: ms, unix_ms: 1_800_000_000_000 + ms }
}

/// A node of 4 CPUs and 4,096 MiB (3,840 offered after the reserve), connected on session 1.
fn core() -> Core {
    let config = Config {
        node: NODE,
        limits: LIMITS,
        backends: vec!["process".into(), "sim".into()],
        limits_feature: Some("cgroup-v2".into()),
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
    let out = command(&mut c, Message::Evacuate(Evacuate { workload_agent_uuid: NODE, deadline_ms: Some(2000) }));
    assert_eq!(out[0], Effect::SaveFlags(NodeFlags { maintenance: true }), "saved before anything else");
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
    // Each end is a stop; the status did not change, so no report comes with it.
    let out = c.handle(
        at(3),
        Input::Workload(Event::Exited(Exit { instance: id(1), code: None, reason: ExitReason::Killed })),
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(matches!(&out[0], Effect::SendEnd { message: Message::InstanceStopped(_), .. }), "{out:?}");
    let out = command(&mut c, Message::Restore(Restore { workload_agent_uuid: NODE }));
    assert_eq!(out[0], Effect::SaveFlags(NodeFlags { maintenance: false }));
    assert!(sent(&out).iter().any(|m| matches!(m, Message::Ready(_))), "READY at once: {out:?}");
    assert!(failure_reason(&command(&mut c, Message::Start(start(3, 100)))).is_none());
}

#[test]
fn ends_are_sent_again_after_a_reconnect_until_delivered() {
    let mut c = core();
    command(&mut c, Message::Start(start(1, 100)));
    let exit = Exit { instance: id(1), code: Some(3), reason: ExitReason::Failed };
    let out = c.handle(at(2), Input::Workload(Event::Exited(exit)));
    assert!(
        matches!(&out[0], Effect::SendEnd { instance, message: Message::InstanceExited(e) } if *instance == id(1) && e.exit_code == Some(3))
    );
    c.handle(at(3), Input::Disconnected);
    let out = c.handle(at(4), Input::Connected { session: 2, overcommit: Overcommit::default() });
    assert!(out.iter().any(|e| matches!(e, Effect::SendEnd { instance, .. } if *instance == id(1))), "{out:?}");
    c.handle(at(5), Input::EndDelivered(id(1)));
    let out = c.handle(at(6), Input::Connected { session: 3, overcommit: Overcommit::default() });
    assert!(!out.iter().any(|e| matches!(e, Effect::SendEnd { .. })), "{out:?}");
    // The ended copy stays in STATS (until a DELETE), as exited with its code.
    let stat = &stats_of(&out).unwrap().instances[0];
    assert_eq!((stat.state, stat.exit_code), (InstanceState::Exited, Some(3)));
}

#[test]
fn a_burst_of_starts_and_their_events_costs_no_report_until_the_timer() {
    let mut c = core();
    // 16 vCPUs offered (4 CPUs × 4): twelve STARTs of one vCPU fit.
    for n in 1..=12 {
        let out = command(&mut c, Message::Start(start(n, 10)));
        assert!(!out.iter().any(|e| matches!(e, Effect::Report { .. })), "{out:?}");
        let out = c.handle(at(2), Input::Workload(Event::Started { instance: id(n), pid: 1 }));
        assert_eq!(sent(&out).len(), 1, "only INSTANCE_STARTED: {out:?}");
    }
    let out = c.handle(at(3), Input::ReportDue);
    assert_eq!(stats_of(&out).unwrap().instances.len(), 12);
    // A change of status is said at once: 3,840 MiB offered, 120 given, 3,720 more fill it.
    let out = command(&mut c, Message::Start(start(99, 3720)));
    assert!(sent(&out).iter().any(|m| matches!(m, Message::Full(_))), "FULL at once: {out:?}");
}

#[test]
fn reports_go_only_on_the_connection_they_belong_to() {
    let mut c = core();
    c.handle(at(1), Input::Disconnected);
    assert!(c.handle(at(2), Input::ReportDue).is_empty(), "nothing while disconnected");
    let out = c.handle(at(3), Input::Connected { session: 7, overcommit: Overcommit::default() });
    assert!(out.iter().all(|e| matches!(e, Effect::Report { session: 7, .. })), "{out:?}");
    assert_eq!(out.len(), 2, "status and STATS: {out:?}");
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
    let out = c.handle(
        at(3),
        Input::Workload(Event::Exited(Exit { instance: id(1), code: None, reason: ExitReason::Killed })),
    );
    assert!(matches!(&out[0], Effect::SendEnd { message: Message::InstanceStopped(_), .. }));
}

#[test]
fn adopted_instances_count_and_unreadable_ones_are_reported() {
    let config = Config { node: NODE, limits: LIMITS, backends: vec!["process".into()], limits_feature: None };
    let mut c = Core::new(config, NodeFlags::default());
    let orphan = Exit { instance: id(8), code: None, reason: ExitReason::Unknown };
    c.handle(
        at(0),
        Input::Adopted(vec![
            Adopted::Known { start: Box::new(start(1, 3000)), stop_requested: false, exit: None, exit_reported: false },
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
    assert_eq!((ready.mem_allocated_mb, ready.instance_count), (Some(3000), 1));
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
                    let out = c.handle(now, Input::Workload(Event::Exited(exit)));
                    let ends = out.iter().filter(|e| matches!(e, Effect::SendEnd { .. })).count();
                    prop_assert_eq!(ends, 1);
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
                Op::Evacuate => c.handle(now, Input::Command(Message::Evacuate(Evacuate { workload_agent_uuid: NODE, deadline_ms: None }))),
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
            if let Some(stats) = stats_of(&out) {
                let listed: std::collections::BTreeSet<Uuid> = stats.instances.iter().map(|s| s.instance_uuid).collect();
                prop_assert_eq!(&listed, &held);
            }
        }
    }
}
