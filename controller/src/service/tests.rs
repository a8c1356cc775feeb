//! The service against the in-memory and redb stores.

use super::*;
use crate::lifecycle::State;
use ssntp::payload::{
    ExitReason, FailureReason, InstanceEvent, InstanceExited, InstanceQueued, NodeLost, StartFailure,
};

const WORKLOAD: &str = r#"
name = "job"
size = "tiny"
[backend]
type = "process"
argv = ["/bin/false"]
[restart]
policy = "on-failure"
attempts = 1
backoff = "1s"
"#;

fn node() -> Uuid {
    Uuid::from_bytes([7; 16])
}

fn starts(messages: &[Message]) -> Vec<(Uuid, bool)> {
    messages
        .iter()
        .filter_map(|m| if let Message::Start(s) = m { Some((s.instance_uuid, s.restart)) } else { None })
        .collect()
}

/// A service on a redb file (for tests that reopen it, as a restarted controller would).
fn service(dir: &std::path::Path) -> Service {
    Service::new(Store::open(&dir.join("c.redb")).unwrap()).unwrap()
}

/// A service on the in-memory store: no disk.
fn memory_service() -> Service {
    Service::new(Store::in_memory()).unwrap()
}

#[test]
fn launch_start_fail_restart_and_give_up() {
    let s = memory_service();
    assert_eq!(s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap(), "job");
    let ids = s.launch("acme", "job", 2, 0).unwrap();
    let sent = s.tick(0).unwrap();
    assert_eq!(starts(&sent).len(), 2);
    let Message::Start(first) = &sent[0] else { unreachable!() };
    assert_eq!(first.requirements.mem_mb, 32, "tiny");
    assert!(first.workload_uuid.is_some());
    assert!(s.tick(0).unwrap().is_empty(), "nothing twice");
    let id = ids[0];
    s.report(
        node(),
        &Message::InstanceQueued(InstanceQueued {
            instance_uuid: id,
            reason: "0 of 1 nodes fit: 1 load above threshold".into(),
            position: 0,
        }),
        1,
    )
    .unwrap();
    assert_eq!(
        s.store().instance(id).unwrap().unwrap().why,
        "0 of 1 nodes fit: 1 load above threshold",
        "drover ps says why it waits"
    );
    s.report(node(), &Message::InstanceStarted(InstanceEvent { instance_uuid: id, node_uuid: Some(node()) }), 2)
        .unwrap();
    assert_eq!(s.store().instance(id).unwrap().unwrap().node, Some(node()));
    let exited = |_at: u64| {
        Message::InstanceExited(InstanceExited {
            instance_uuid: id,
            node_uuid: node(),
            exit_code: Some(1),
            reason: ExitReason::Failed,
        })
    };
    s.report(node(), &exited(3), 3).unwrap();
    assert!(s.tick(500).unwrap().is_empty(), "backoff");
    assert_eq!(starts(&s.tick(1003).unwrap()), vec![(id, true)], "restarted once, marked as a restart");
    s.report(node(), &Message::InstanceStarted(InstanceEvent { instance_uuid: id, node_uuid: Some(node()) }), 1004)
        .unwrap();
    s.report(node(), &exited(1005), 1005).unwrap();
    let record = s.store().instance(id).unwrap().unwrap();
    assert!(matches!(record.life.state, State::Failed { .. }), "attempts used up: {:?}", record.life.state);
    assert!(record.why.contains("code 1"), "{}", record.why);
}

#[test]
fn a_crash_after_commit_resends_once_and_a_duplicate_means_running() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let s = service(dir.path());
        s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap();
        let id = s.launch("acme", "job", 1, 0).unwrap()[0];
        let _lost_in_the_crash = s.tick(0).unwrap();
        id
    };
    let s = service(dir.path());
    assert!(s.tick(10).unwrap().is_empty(), "a restarted controller does not start it again by itself");
    s.reconnected(10).unwrap();
    assert_eq!(starts(&s.tick(10).unwrap()), vec![(id, true)], "sent again after reconnecting");
    let dup = StartFailure {
        node_uuid: Some(node()),
        instance_uuid: id,
        reason: FailureReason::AlreadyRunning,
        restart: true,
        detail: String::new(),
    };
    s.report(node(), &Message::StartFailure(dup), 11).unwrap();
    assert_eq!(s.store().instance(id).unwrap().unwrap().life.state, State::Running { node: node() });
    assert!(s.tick(5000).unwrap().is_empty(), "exactly one copy");
}

#[test]
fn node_loss_evacuation_user_stop_and_tenant_isolation() {
    let s = memory_service();
    s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap();
    let ids = s.launch("acme", "job", 2, 0).unwrap();
    s.tick(0).unwrap();
    for id in &ids {
        s.report(node(), &Message::InstanceStarted(InstanceEvent { instance_uuid: *id, node_uuid: Some(node()) }), 1)
            .unwrap();
    }
    // Tenant isolation: another tenant cannot stop it, and learns nothing about it.
    assert!(matches!(s.user("other", ids[0], Input::Stop, 2), Err(ServiceError::NotFound(_))));
    // The user stops one: a STOP goes to its node; its stop is final.
    let out = s.user("acme", ids[0], Input::Stop, 2).unwrap();
    assert!(matches!(&out[..], [Message::Stop(stop)] if stop.workload_agent_uuid == node()));
    s.report(node(), &Message::InstanceStopped(InstanceEvent { instance_uuid: ids[0], node_uuid: Some(node()) }), 3)
        .unwrap();
    assert_eq!(s.store().instance(ids[0]).unwrap().unwrap().life.state, State::Stopped);
    // The other is evacuated (a stop nobody asked for): started again elsewhere.
    s.report(node(), &Message::InstanceStopped(InstanceEvent { instance_uuid: ids[1], node_uuid: Some(node()) }), 4)
        .unwrap();
    assert_eq!(starts(&s.tick(4).unwrap()), vec![(ids[1], true)]);
    s.report(node(), &Message::InstanceStarted(InstanceEvent { instance_uuid: ids[1], node_uuid: Some(node()) }), 5)
        .unwrap();
    // Its node is lost: restarted per policy.
    s.report(node(), &Message::NodeLost(NodeLost { node_uuid: node(), instances: vec![ids[1]] }), 6).unwrap();
    assert!(matches!(s.store().instance(ids[1]).unwrap().unwrap().life.state, State::Pending { .. }));
    assert!(matches!(s.launch("acme", "nope", 1, 0), Err(ServiceError::NotFound(_))));
    assert!(matches!(s.launch("acme", "job", 0, 0), Err(ServiceError::Invalid(_))));
    assert!(matches!(s.put_workload("acme", "name = 1", Format::Toml, false), Err(ServiceError::Spec(_))));
}

fn stats(node: Uuid, instances: &[(Uuid, InstanceState, Option<i32>)]) -> Stats {
    Stats {
        instances: instances
            .iter()
            .map(|(id, state, exit_code)| ssntp::payload::InstanceStat {
                instance_uuid: *id,
                state: *state,
                memory_usage_mb: -1,
                disk_usage_mb: -1,
                cpu_usage: -1,
                exit_code: *exit_code,
                workload_uuid: None,
                reason: None,
            })
            .collect(),
        digest: Some(ssntp::payload::DigestPage { seq: 0, page: 0, pages: 1 }),
        ..testutil::ready_stats(node, 1, 1024)
    }
}

#[test]
fn digests_reconcile_stale_copies_missed_exits_and_instances_the_node_no_longer_holds() {
    let s = memory_service();
    s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap();
    let ids = s.launch("acme", "job", 3, 0).unwrap();
    s.tick(0).unwrap();
    let other = Uuid::from_bytes([8; 16]);
    for id in &ids {
        s.report(node(), &Message::InstanceStarted(InstanceEvent { instance_uuid: *id, node_uuid: Some(node()) }), 1)
            .unwrap();
    }
    // A node that came back runs a copy of ids[0] (which runs on node()) and something unknown.
    let stranger = Uuid::new_v4();
    let out = s
        .reconcile(&stats(other, &[(ids[0], InstanceState::Active, None), (stranger, InstanceState::Active, None)]), 2)
        .unwrap();
    let stopped: Vec<(Uuid, Uuid)> = out
        .iter()
        .filter_map(|m| if let Message::Stop(s) = m { Some((s.instance_uuid, s.workload_agent_uuid)) } else { None })
        .collect();
    assert_eq!(stopped, vec![(ids[0], other), (stranger, other)]);
    // Its stale copy's stop report does not touch the real one.
    s.report(other, &Message::InstanceStopped(InstanceEvent { instance_uuid: ids[0], node_uuid: Some(other) }), 3)
        .unwrap();
    assert_eq!(s.store().instance(ids[0]).unwrap().unwrap().life.state, State::Running { node: node() });
    // node()'s digest, in two pages: ids[0] running, ids[1] exited (the event was missed), ids[2]
    // not at all.
    let mut first = stats(node(), &[(ids[0], InstanceState::Active, None)]);
    first.digest = Some(ssntp::payload::DigestPage { seq: 0, page: 0, pages: 2 });
    let mut second = stats(node(), &[(ids[1], InstanceState::Exited, Some(0))]);
    second.digest = Some(ssntp::payload::DigestPage { seq: 0, page: 1, pages: 2 });
    assert!(s.reconcile(&first, 4).unwrap().is_empty());
    assert_eq!(s.store().instance(ids[2]).unwrap().unwrap().life.state, State::Running { node: node() }, "partial");
    assert!(s.reconcile(&second, 4).unwrap().is_empty());
    assert_eq!(s.store().instance(ids[1]).unwrap().unwrap().life.state, State::Exited { code: Some(0) });
    let lost = s.store().instance(ids[2]).unwrap().unwrap();
    assert!(matches!(lost.life.state, State::Pending { .. }), "restarted per policy: {:?}", lost.life.state);
    assert!(lost.why.contains("did not list it"), "{}", lost.why);
    // A heartbeat (no digest) says nothing about instances.
    let mut heartbeat = stats(node(), &[]);
    heartbeat.digest = None;
    assert!(s.reconcile(&heartbeat, 5).unwrap().is_empty());
    assert_eq!(s.store().instance(ids[0]).unwrap().unwrap().life.state, State::Running { node: node() });
}

#[test]
fn a_batch_larger_than_any_node_is_created_failed_and_never_sent() {
    let s = memory_service();
    let batch = WORKLOAD.replace("size = \"tiny\"", "class = \"batch\"\n[resources]\nmem_mb = 4096");
    s.put_workload("acme", &batch, Format::Toml, false).unwrap();
    let (id, ids, _) = s.submit_batch("acme", "job", 3, Some(1024), 0, &BTreeMap::new()).unwrap();
    assert!(s.tick(0).unwrap().is_empty(), "no START for refused work");
    for i in &ids {
        let r = s.store().instance(*i).unwrap().unwrap();
        assert!(matches!(r.life.state, State::Failed { .. }), "{:?}", r.life.state);
        assert!(r.why.contains("the largest node offers 1024 MiB"), "{}", r.why);
    }
    let events = s.store().events_after(0, 1000).unwrap();
    assert!(events.iter().any(|e| e.what.contains(&format!("batch {id} of job failed"))));
    // Work that fits is created pending.
    let (_, ids, _) = s.submit_batch("acme", "job", 1, Some(8192), 0, &BTreeMap::new()).unwrap();
    assert_eq!(s.tick(0).unwrap().len(), 1);
    assert!(!s.store().instance(ids[0]).unwrap().unwrap().life.state.is_final());
}

#[test]
fn batches_end_with_an_event_and_conflicts_are_refused() {
    let s = memory_service();
    s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap();
    assert!(
        matches!(s.submit_batch("acme", "job", 2, None, 0, &BTreeMap::new()), Err(ServiceError::Invalid(_))),
        "workorder class"
    );
    assert!(matches!(s.put_workload("acme", WORKLOAD, Format::Toml, true), Err(ServiceError::Conflict(_))));
    let batch =
        WORKLOAD.replace("size = \"tiny\"", "size = \"tiny\"\nclass = \"batch\"").replace("on-failure", "never");
    s.put_workload("acme", &batch, Format::Toml, false).unwrap();
    let (id, ids, _) = s.submit_batch("acme", "job", 2, None, 0, &BTreeMap::new()).unwrap();
    assert!(matches!(s.delete_workload("acme", "job"), Err(ServiceError::Conflict(_))), "live instances");
    assert!(matches!(s.delete("acme", ids[0]), Err(ServiceError::Conflict(_))), "live instance");
    s.tick(0).unwrap();
    for (i, instance) in ids.iter().enumerate() {
        s.report(
            node(),
            &Message::InstanceStarted(InstanceEvent { instance_uuid: *instance, node_uuid: Some(node()) }),
            1,
        )
        .unwrap();
        let exited = InstanceExited {
            instance_uuid: *instance,
            node_uuid: node(),
            exit_code: Some(i32::try_from(i).unwrap()),
            reason: if i == 0 { ExitReason::Completed } else { ExitReason::Failed },
        };
        s.report(node(), &Message::InstanceExited(exited), 2).unwrap();
    }
    let events = s.store().events_after(0, 1000).unwrap();
    let last = &events.last().unwrap().what;
    assert!(last.contains(&format!("batch {id}")) && last.contains("1 exited, 1 failed"), "{last}");
    assert!(matches!(s.user("acme", ids[0], Input::Stop, 3), Err(ServiceError::Conflict(_))));
    assert!(matches!(&s.delete("acme", ids[0]).unwrap()[..], [Message::Delete(_)]));
    assert!(s.store().instance(ids[0]).unwrap().is_none());
}

#[test]
fn an_instance_whose_start_report_was_lost_is_found_running_by_stats() {
    let s = memory_service();
    s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap();
    let id = s.launch("acme", "job", 1, 0).unwrap()[0];
    s.tick(0).unwrap();
    assert!(s.reconcile(&stats(node(), &[(id, InstanceState::Active, None)]), 1).unwrap().is_empty());
    assert_eq!(s.store().instance(id).unwrap().unwrap().life.state, State::Running { node: node() });
    assert_eq!(s.store().running_on(node()), [id].into());
}

#[test]
fn a_start_and_an_end_applied_together_still_show_every_step_in_the_event() {
    let s = memory_service();
    s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap();
    let id = s.launch("acme", "job", 1, 0).unwrap()[0];
    s.tick(0).unwrap();
    let started = Message::InstanceStarted(InstanceEvent { instance_uuid: id, node_uuid: Some(node()) });
    let exited = Message::InstanceExited(InstanceExited {
        instance_uuid: id,
        node_uuid: node(),
        exit_code: Some(0),
        reason: ExitReason::Completed,
    });
    s.report_many(&[(node(), started), (node(), exited)], 1).unwrap();
    let events = s.store().events_after(0, 100).unwrap();
    let last = events.last().unwrap();
    assert!(last.what.starts_with("instance starting → running → exited"), "{}", last.what);
}

/// What a node really holds of one instance, in the order it can only move forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Truth {
    NotYet,
    Runs,
    Ended(i32),
}

fn truth_stat(id: Uuid, truth: Truth) -> Option<ssntp::payload::InstanceStat> {
    let (state, exit_code, reason) = match truth {
        Truth::NotYet => return None,
        Truth::Runs => (InstanceState::Active, None, None),
        Truth::Ended(0) => (InstanceState::Exited, Some(0), Some(ExitReason::Completed)),
        Truth::Ended(code) => (InstanceState::Exited, Some(code), Some(ExitReason::Failed)),
    };
    Some(ssntp::payload::InstanceStat {
        instance_uuid: id,
        state,
        memory_usage_mb: -1,
        disk_usage_mb: -1,
        cpu_usage: -1,
        exit_code,
        workload_uuid: None,
        reason,
    })
}

/// The store's state, on the same scale.
fn seen(s: &Service, id: Uuid) -> Truth {
    match s.store().instance(id).unwrap().unwrap().life.state {
        State::Running { .. } => Truth::Runs,
        State::Exited { code } => Truth::Ended(code.unwrap_or(0)),
        State::Failed { .. } => Truth::Ended(3),
        _ => Truth::NotYet,
    }
}

/// How one INSTANCE_NEWS fares on its way.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Delivered,
    Dropped,
    Duplicated,
    /// Overtaken by the next one.
    Late,
}

proptest::proptest! {
    /// Whatever happens to a node's news (dropped, duplicated, reordered), the store never runs
    /// ahead of what the node holds, and once the digests the controller asks for (and the one a
    /// reconnect brings) are in, it agrees with the node exactly.
    #[test]
    fn the_view_converges_to_the_nodes_truth_whatever_happens_to_the_news(
        steps in proptest::collection::vec((0usize..6, proptest::prelude::any::<bool>()), 1..40),
        fates in proptest::collection::vec(proptest::sample::select(vec![Fate::Delivered, Fate::Delivered, Fate::Dropped, Fate::Duplicated, Fate::Late]), 40),
    ) {
        let s = memory_service();
        s.put_workload("acme", &WORKLOAD.replace("on-failure", "never"), Format::Toml, false).unwrap();
        let ids = s.launch("acme", "job", 6, 0).unwrap();
        s.tick(0).unwrap();
        let mut truth = vec![Truth::NotYet; ids.len()];
        let mut seq = 0u64;
        let mut now = 1u64;
        let mut late: Option<Message> = None;
        let digest = |truth: &[Truth], seq: u64| {
            let mut d = stats(node(), &[]);
            d.instances = ids.iter().zip(truth).filter_map(|(id, t)| truth_stat(*id, *t)).collect();
            d.digest = Some(ssntp::payload::DigestPage { seq, page: 0, pages: 1 });
            Message::Stats(d)
        };
        for (n, ((i, fails), fate)) in steps.into_iter().zip(fates).enumerate() {
            truth[i] = match truth[i] {
                Truth::NotYet => Truth::Runs,
                Truth::Runs => Truth::Ended(if fails { 3 } else { 0 }),
                ended => ended,
            };
            seq += 1;
            let news = Message::InstanceNews(ssntp::payload::InstanceNews {
                node_uuid: node(),
                seq,
                instances: truth_stat(ids[i], truth[i]).into_iter().collect(),
            });
            let mut arriving = match fate {
                Fate::Delivered => vec![news],
                Fate::Dropped => vec![],
                Fate::Duplicated => vec![news.clone(), news],
                Fate::Late => {
                    late = Some(news);
                    vec![]
                }
            };
            if !matches!(fate, Fate::Late) {
                arriving.extend(late.take());
            }
            for frame in arriving {
                now += 1;
                let out = s.report(node(), &frame, now).unwrap();
                // Every copy on the node is the one wanted: an old report read as new would stop it.
                proptest::prop_assert!(!out.iter().any(|m| matches!(m, Message::Stop(_))), "step {}: {:?}", n, out);
                for (id, t) in ids.iter().zip(&truth) {
                    proptest::prop_assert!(seen(&s, *id) <= *t, "step {}: the store ran ahead of the node", n);
                }
            }
            let asked = s.digests_due(now).iter().any(|m| matches!(m, Message::ReportRequest(r) if r.node_uuid == Some(node())));
            if asked {
                // The launcher answers with a digest as of its latest news.
                now += 1;
                s.report(node(), &digest(&truth, seq), now).unwrap();
            }
        }
        // A reconnect: every node is asked for a digest.
        now += 1;
        s.report(node(), &digest(&truth, seq), now).unwrap();
        for (id, t) in ids.iter().zip(&truth) {
            proptest::prop_assert_eq!(seen(&s, *id), *t);
        }
    }
}

#[test]
fn a_gap_in_a_nodes_news_asks_it_for_a_digest_once() {
    let s = memory_service();
    s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap();
    let id = s.launch("acme", "job", 1, 0).unwrap()[0];
    s.tick(0).unwrap();
    let news = |seq| {
        Message::InstanceNews(ssntp::payload::InstanceNews {
            node_uuid: node(),
            seq,
            instances: truth_stat(id, Truth::Runs).into_iter().collect(),
        })
    };
    let asked = |out: Vec<Message>| {
        out.iter().filter(|m| matches!(m, Message::ReportRequest(r) if r.node_uuid == Some(node()))).count()
    };
    s.report(node(), &news(1), 1).unwrap();
    assert_eq!(seen(&s, id), Truth::Runs);
    assert_eq!(asked(s.digests_due(1)), 1, "a node new to this controller");
    let mut digest = stats(node(), &[(id, InstanceState::Active, None)]);
    digest.digest = Some(ssntp::payload::DigestPage { seq: 1, page: 0, pages: 1 });
    s.report(node(), &Message::Stats(digest), 2).unwrap();
    assert_eq!(asked(s.digests_due(2)), 0, "in step");
    s.report(node(), &news(3), 3).unwrap();
    s.report(node(), &news(5), 3).unwrap();
    assert_eq!(asked(s.digests_due(3)), 1, "news 2 and 4 were lost: one digest");
    assert_eq!(asked(s.digests_due(4)), 0, "asked already");
    s.link_up();
    assert_eq!(asked(s.digests_due(5)), 1, "a new link wants every digest again");
}

#[test]
fn frames_the_link_keeps_from_the_store_change_nothing_there() {
    let s = memory_service();
    s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap();
    let ids = s.launch("acme", "job", 2, 0).unwrap();
    s.tick(0).unwrap();
    s.report(node(), &Message::InstanceStarted(InstanceEvent { instance_uuid: ids[0], node_uuid: Some(node()) }), 1)
        .unwrap();
    let mut heartbeat = stats(node(), &[(ids[1], InstanceState::Active, None)]);
    heartbeat.digest = None;
    let skipped = [
        Message::Stats(heartbeat),
        Message::NodeConnected(ssntp::payload::NodeEvent {
            node_uuid: node(),
            node_type: ssntp::payload::NodeType::ComputeNode,
        }),
        Message::NodeDisconnected(ssntp::payload::NodeEvent {
            node_uuid: node(),
            node_type: ssntp::payload::NodeType::ComputeNode,
        }),
        Message::InstanceDeleted(InstanceEvent { instance_uuid: ids[0], node_uuid: Some(node()) }),
    ];
    let revision = s.store().revision().unwrap();
    for message in &skipped {
        assert!(!Service::reads_store(message), "{}", message.kind());
        assert!(s.report(node(), message, 2).unwrap().is_empty(), "{}", message.kind());
    }
    assert_eq!(s.store().revision().unwrap(), revision, "nothing written");
    assert_eq!(s.counts(None).unwrap().get("running"), Some(&1));
    assert_eq!(s.counts(None).unwrap().get("starting"), Some(&1), "a heartbeat's list is not a digest");
    // What the store must see is not skipped.
    let mut digest = stats(node(), &[(ids[1], InstanceState::Active, None)]);
    assert!(Service::reads_store(&Message::Stats(digest.clone())));
    digest.digest = Some(ssntp::payload::DigestPage { seq: 1, page: 0, pages: 1 });
    s.report(node(), &Message::Stats(digest), 3).unwrap();
    assert!(matches!(s.store().instance(ids[1]).unwrap().unwrap().life.state, State::Running { .. }));
    let first = s.store().instance(ids[0]).unwrap().unwrap().life.state;
    assert!(!matches!(first, State::Running { .. }), "not listed in the digest: no longer running ({first:?})");
}

#[test]
fn cancelling_queued_work_withdraws_it_from_the_scheduler_and_ends_when_it_is_out() {
    let s = memory_service();
    s.put_workload("acme", WORKLOAD, Format::Toml, false).unwrap();
    let id = s.launch("acme", "job", 1, 0).unwrap()[0];
    s.tick(0).unwrap();
    let queued = InstanceQueued { instance_uuid: id, reason: "0 of 1 nodes fit".into(), position: 0 };
    s.report(node(), &Message::InstanceQueued(queued), 1).unwrap();
    let out = s.user("acme", id, Input::Cancel, 2).unwrap();
    assert!(
        matches!(&out[..], [Message::Stop(stop)] if stop.instance_uuid == id && stop.workload_agent_uuid.is_nil()),
        "{out:?}"
    );
    let scheduler = Uuid::from_bytes([9; 16]);
    s.report(scheduler, &Message::InstanceStopped(InstanceEvent { instance_uuid: id, node_uuid: None }), 3).unwrap();
    assert_eq!(s.store().instance(id).unwrap().unwrap().life.state, State::Canceled);
}

const LONG_RUNNING: &str = r#"
name = "server"
size = "tiny"
[backend]
type = "process"
argv = ["/bin/sleep", "infinity"]
[restart]
policy = "never"
"#;

#[test]
fn a_node_lost_while_the_controller_was_away_is_learnt_at_the_reconnect() {
    let s = memory_service();
    s.put_workload("acme", LONG_RUNNING, Format::Toml, false).unwrap();
    let ids = s.launch("acme", "server", 2, 0).unwrap();
    s.tick(0).unwrap();
    for id in &ids {
        s.report(node(), &Message::InstanceStarted(InstanceEvent { instance_uuid: *id, node_uuid: Some(node()) }), 1)
            .unwrap();
    }
    // The controller restarts (a new service on the same store) and connects: it asks the node
    // it believes runs its instances for a digest, although it has not heard from it.
    let s = Service { feeds: Mutex::new(crate::feeds::Feeds::default()), ..s };
    s.link_up();
    let asked = s.digests_due(2);
    assert!(asked.iter().any(|m| matches!(m, Message::ReportRequest(r) if r.node_uuid == Some(node()))), "{asked:?}");
    // The scheduler answers NODE_LOST naming no instances (it restarted, or announced them
    // before): what the store believes runs there is lost.
    s.report(Uuid::nil(), &Message::NodeLost(NodeLost { node_uuid: node(), instances: Vec::new() }), 3).unwrap();
    for id in &ids {
        assert_eq!(s.store().instance(*id).unwrap().unwrap().life.state, State::Lost);
    }
    assert!(s.digests_due(40_000).is_empty(), "a lost node is not asked again");
}

#[test]
fn a_start_without_an_answer_goes_again_after_the_start_timeout() {
    let s = memory_service().with_start_timeout(std::time::Duration::from_secs(60));
    s.put_workload("acme", LONG_RUNNING, Format::Toml, false).unwrap();
    let ids = s.launch("acme", "server", 3, 0).unwrap();
    assert_eq!(starts(&s.tick(0).unwrap()).len(), 3);
    // One is answered (queued), one runs, one is never answered.
    s.report(
        node(),
        &Message::InstanceQueued(InstanceQueued { instance_uuid: ids[0], reason: "busy".into(), position: 0 }),
        1,
    )
    .unwrap();
    s.report(node(), &Message::InstanceStarted(InstanceEvent { instance_uuid: ids[1], node_uuid: Some(node()) }), 1)
        .unwrap();
    assert!(s.tick(59_999).unwrap().is_empty());
    assert_eq!(starts(&s.tick(60_000).unwrap()), vec![(ids[2], true)], "only the unanswered one, once");
    assert!(s.tick(61_000).unwrap().is_empty());
    // Sent again, it is watched again.
    assert_eq!(starts(&s.tick(120_000).unwrap()), vec![(ids[2], true)]);
    // A reconnect takes over: nothing is timed from before it.
    s.link_up();
    assert!(s.tick(500_000).unwrap().is_empty());
}

#[test]
fn why_speaks_of_the_change_that_led_to_the_current_state_only() {
    let s = memory_service();
    s.put_workload("acme", LONG_RUNNING, Format::Toml, false).unwrap();
    let ids = s.launch("acme", "server", 2, 0).unwrap();
    s.tick(0).unwrap();
    let why = |id: Uuid| s.store().instance(id).unwrap().unwrap().why;
    let queued = InstanceQueued { instance_uuid: ids[0], reason: "0 of 1 nodes fit: 1 full".into(), position: 0 };
    s.report(node(), &Message::InstanceQueued(queued), 1).unwrap();
    assert_eq!(why(ids[0]), "0 of 1 nodes fit: 1 full");
    s.report(node(), &Message::InstanceStarted(InstanceEvent { instance_uuid: ids[0], node_uuid: Some(node()) }), 2)
        .unwrap();
    assert_eq!(why(ids[0]), "", "running: the queue's reason is gone");
    // Canceled while it waited; the scheduler's answer (a queue timeout) completes the cancel.
    s.user("acme", ids[1], Input::Cancel, 3).unwrap();
    let timeout = StartFailure {
        node_uuid: None,
        instance_uuid: ids[1],
        reason: FailureReason::QueueTimeout,
        restart: false,
        detail: "waited 300 s".into(),
    };
    s.report(node(), &Message::StartFailure(timeout), 4).unwrap();
    let r = s.store().instance(ids[1]).unwrap().unwrap();
    assert_eq!((r.life.state, r.why.as_str()), (State::Canceled, "canceled at the user's request"));
}
