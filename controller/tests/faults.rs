//! The fault suite: real scheduler, controller and launchers (sim backend) on loopback, and a
//! fault injected into one of them. Each test asserts what must hold afterwards: nothing lost,
//! nothing run twice, nothing restarted that should not be.
//!
//! The other faults of the suite live beside the code they exercise: ten kill -9 of a launcher
//! in `launcher/tests/survival.rs`, kill -9 of the controller mid-launch in `crash.rs`, a
//! network partition in `partition.rs`.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

mod common;

use std::time::Duration;

use common::{
    active_copies, all_events, all_instances, create_workload, instance_when, launch_one, node_status, running, runs,
    wait_for, wait_within, Cluster, PATIENCE,
};
use nix::sys::signal::Signal;
use serde_json::json;

/// Scheduler flags that make node loss quick to observe: silent 1 s is suspect, 1 s more is lost.
const FAST_LOSS: &[&str] =
    &["--node-ttl", "1s", "--node-grace", "1s", "--failover-grace", "0s", "--cpu-overcommit", "600"];
const SIM: &[&str] = &["--backend", "sim", "--max-instances", "10000"];

fn workload(name: &str, policy: &str) -> String {
    format!(
        "name = \"{name}\"\n[resources]\nmem_mb = 4\nvcpus = 1\n[backend]\ntype = \"sim\"\nduration_ms = 600000\n\
         [restart]\npolicy = \"{policy}\"\nattempts = 5\nbackoff = \"100ms\"\n"
    )
}

/// The node UUID a launcher of the cluster stored in its state directory.
fn node_of_launcher(cluster: &Cluster, i: usize) -> String {
    let dir = cluster.work.path().join(format!("launcher{i}"));
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("uuid-") {
            return std::fs::read_to_string(entry.path()).unwrap().trim().to_owned();
        }
    }
    panic!("no identity in {}", dir.display());
}

/// Two sim launchers with room for everything; `count` instances launched; returns once the
/// first runs (mid-placement), with the acknowledged instance UUIDs. Sims start at once, so
/// placement is paced by a small start window (STARTs in flight per node) to leave a moment in
/// the middle of it.
async fn launch_on_two_nodes(count: usize) -> (Cluster, Vec<String>) {
    let cluster = Cluster::start_with(&["--cpu-overcommit", "6000", "--start-window", "16"], &[SIM, SIM]);
    cluster.wait_ready(2).await;
    let api = cluster.admin();
    create_workload(&api, &workload("sim", "never")).await;
    let launched = api.post("/v1/workloads/sim/launch", &json!({"count": count})).await.unwrap();
    let acknowledged =
        launched["instances"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    wait_for("the first instances to run", || async {
        let s = api.get("/v1/status").await.ok()?;
        (s["instances"]["running"].as_u64().unwrap_or(0) >= 1).then_some(())
    })
    .await;
    (cluster, acknowledged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_scheduler_mid_placement_loses_duplicates_and_evacuates_nothing() {
    const COUNT: usize = 4000;
    let (mut cluster, acknowledged) = launch_on_two_nodes(COUNT).await;
    let api = cluster.admin();
    let before = api.get("/v1/status").await.unwrap();
    assert!(
        before["instances"]["running"].as_u64().unwrap() < COUNT as u64,
        "the kill must come mid-placement: {before}"
    );
    cluster.scheduler.kill9();
    cluster.restart_scheduler();

    let list = wait_within("every instance to run", Duration::from_secs(90), || async {
        let list = all_instances(&api).await;
        (running(&list) == COUNT).then_some(list)
    })
    .await;
    assert_eq!(list.len(), COUNT, "nothing added");
    for i in &list {
        assert!(acknowledged.iter().any(|a| a == i["uuid"].as_str().unwrap()));
        assert_eq!(i["restarts"], 0, "nothing restarted: {i}");
    }
    let copies = wait_within("the nodes to report every instance once", Duration::from_secs(30), || async {
        let c = active_copies(&api).await?;
        (c.len() == COUNT && c.values().all(|n| n.len() == 1)).then_some(c)
    })
    .await;
    assert!(acknowledged.iter().all(|a| copies.contains_key(a)));
    let events = all_events(&api).await;
    let runs = runs(&events);
    assert_eq!(runs.len(), COUNT);
    assert!(runs.values().all(|n| *n == 1), "an instance entered running twice");
    for e in &events {
        let what = e["what"].as_str().unwrap_or_default();
        assert!(!what.contains("lost") && !what.contains("evacuat"), "no node lost, no evacuation: {e}");
    }
    let log = cluster.scheduler.log_text();
    assert!(!log.contains("declared lost"), "the restarted scheduler declared a node lost");
}

/// The most nodes any instance is active on, in the nodes' own STATS as the controller has them.
async fn most_copies(api: &drover_cli::client::ApiClient) -> (usize, Option<(String, Vec<String>)>) {
    let Some(copies) = active_copies(api).await else { return (0, None) };
    let worst = copies.into_iter().max_by_key(|(_, nodes)| nodes.len());
    (worst.as_ref().map_or(0, |(_, n)| n.len()), worst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_scheduler_never_runs_an_unanswered_start_on_a_second_node() {
    const COUNT: usize = 4000;
    let (mut cluster, _) = launch_on_two_nodes(COUNT).await;
    let api = cluster.admin();
    // Freeze the scheduler mid-placement: the launchers go on starting what they received, and
    // their INSTANCE_STARTED answers die with the scheduler. Those instances run, but the
    // controller still waits for their answer.
    cluster.scheduler.signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let unanswered = all_instances(&api).await.iter().filter(|i| i["state"] != "running").count();
    assert!(unanswered > 0, "the freeze must come mid-placement");
    // One launcher comes back late: until it reports, a re-sent START of what it runs could be
    // placed on the other node.
    cluster.launchers[1].signal(Signal::SIGSTOP);
    cluster.scheduler.kill9();
    cluster.restart_scheduler();
    let late_until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut thawed = false;
    let mut checks = 0;
    let limit = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if !thawed && tokio::time::Instant::now() >= late_until {
            cluster.launchers[1].signal(Signal::SIGCONT);
            thawed = true;
        }
        let (most, worst) = most_copies(&api).await;
        checks += 1;
        if most > 1 {
            cluster.launchers[1].signal(Signal::SIGCONT);
            panic!("an instance runs on two nodes at once (check {checks}): {worst:?}");
        }
        if thawed {
            let list = all_instances(&api).await;
            let copies = active_copies(&api).await.unwrap_or_default();
            if running(&list) == COUNT && copies.len() == COUNT {
                break;
            }
        }
        if tokio::time::Instant::now() >= limit {
            cluster.launchers[1].signal(Signal::SIGCONT);
            panic!("not every instance ran within 120 s: {} running", running(&all_instances(&api).await));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = all_instances(&api).await;
    assert_eq!(list.len(), COUNT, "nothing added");
    assert!(list.iter().all(|i| i["restarts"] == 0), "nothing restarted");
    let runs = runs(&all_events(&api).await);
    assert!(runs.values().all(|n| *n == 1), "an instance entered running twice");
    // A few more reports from both nodes, still one copy each.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(most_copies(&api).await.0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_launcher_is_lost_its_work_runs_elsewhere_and_after_sigcont_stale_copies_stop() {
    const COUNT: usize = 8;
    let cluster = Cluster::start_with(FAST_LOSS, &[SIM, SIM, SIM]);
    cluster.wait_ready(3).await;
    let api = cluster.admin();
    create_workload(&api, &workload("web", "on-failure")).await;
    api.post("/v1/workloads/web/launch", &json!({"count": COUNT})).await.unwrap();
    wait_for("all running", || async { (running(&all_instances(&api).await) == COUNT).then_some(()) }).await;
    let frozen = node_of_launcher(&cluster, 0);
    let on_frozen: Vec<String> = all_instances(&api)
        .await
        .iter()
        .filter(|i| i["node"] == frozen.as_str())
        .map(|i| i["uuid"].as_str().unwrap().to_owned())
        .collect();
    assert!(!on_frozen.is_empty(), "spread put work on every node");

    cluster.launchers[0].signal(Signal::SIGSTOP);
    let moved = wait_within("the frozen node's work to run elsewhere", Duration::from_secs(30), || async {
        let list = all_instances(&api).await;
        let ok = running(&list) == COUNT && list.iter().all(|i| i["node"] != frozen.as_str());
        ok.then_some(list)
    })
    .await;
    for i in &moved {
        let was_there = on_frozen.iter().any(|u| u == i["uuid"].as_str().unwrap());
        assert_eq!(i["restarts"], u64::from(was_there), "only the frozen node's instances restart: {i}");
    }
    assert!(cluster.scheduler.log_text().contains("declared lost"), "lost after TTL + grace");

    cluster.launchers[0].signal(Signal::SIGCONT);
    // The thawed node still runs its old copies; the controller stops them from its STATS. The
    // nodes' reports are periodic, so a view may lag a start by a report interval: the wait is
    // for the right end state (if the controller stopped the wrong copies, it never comes).
    let copies =
        wait_within("exactly one copy of each instance, none on the thawed node", Duration::from_secs(30), || async {
            if node_status(&api, &frozen).await? != "ready" {
                return None; // not heard from since SIGCONT yet
            }
            let c = active_copies(&api).await?;
            (c.len() == COUNT && c.values().all(|n| n.len() == 1 && n[0] != frozen)).then_some(c)
        })
        .await;
    assert_eq!(copies.len(), COUNT, "the stale copies are the ones stopped");
    let list = all_instances(&api).await;
    assert_eq!((list.len(), running(&list)), (COUNT, COUNT), "exactly the desired count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_of_ten_launchers_vanishing_at_once_engages_the_brake_and_only_a_forgotten_node_restarts() {
    const COUNT: usize = 20;
    let cluster = Cluster::start_with(FAST_LOSS, &[SIM; 10]);
    cluster.wait_ready(10).await;
    let api = cluster.admin();
    create_workload(&api, &workload("svc", "on-failure")).await;
    api.post("/v1/workloads/svc/launch", &json!({"count": COUNT})).await.unwrap();
    wait_for("all running", || async { (running(&all_instances(&api).await) == COUNT).then_some(()) }).await;

    for l in &cluster.launchers[..6] {
        l.signal(Signal::SIGSTOP);
    }
    // Several times TTL + grace.
    wait_within("the brake", Duration::from_secs(30), || async {
        cluster.scheduler.log_text().contains("holding back NODE_LOST").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let list = all_instances(&api).await;
    assert!(list.iter().all(|i| i["restarts"] == 0 && i["state"] == "running"), "no mass restart: {list:?}");
    assert!(!cluster.scheduler.log_text().contains("declared lost"), "no node declared lost under the brake");

    // The operator's way out, for a node known to be gone for good: forget it. Its work starts
    // elsewhere; the others stay held by the brake.
    let gone = node_of_launcher(&cluster, 0);
    let on_gone: Vec<String> =
        list.iter().filter(|i| i["node"] == gone.as_str()).map(|i| i["uuid"].as_str().unwrap().to_owned()).collect();
    assert!(!on_gone.is_empty(), "spread put work on every node");
    let out = cluster.cli(&["node", "forget", &gone[..8]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let up = node_of_launcher(&cluster, 9);
    let out = cluster.cli(&["node", "forget", &up]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("refused to forget"),
        "the scheduler's refusal reaches the user: {err}"
    );
    wait_within("the forgotten node's work to run elsewhere", Duration::from_secs(30), || async {
        let list = all_instances(&api).await;
        let moved = list
            .iter()
            .filter(|i| on_gone.iter().any(|u| u == i["uuid"].as_str().unwrap()))
            .all(|i| i["state"] == "running" && i["node"] != gone.as_str() && i["restarts"] == 1);
        moved.then_some(())
    })
    .await;
    let log = cluster.scheduler.log_text();
    assert!(log.contains("forgotten by the operator"), "{log}");
    assert!(!log.contains(&format!("node {up} forgotten")), "a node that reports is not forgotten");
    assert_eq!(node_status(&api, &up).await.as_deref(), Some("ready"));
    let list = all_instances(&api).await;
    let others = list.iter().filter(|i| !on_gone.iter().any(|u| u == i["uuid"].as_str().unwrap()));
    assert!(others.into_iter().all(|i| i["restarts"] == 0), "the rest stay held: {list:?}");

    for l in &cluster.launchers[..6] {
        l.signal(Signal::SIGCONT);
    }
    wait_within("the brake to release", Duration::from_secs(30), || async {
        cluster.scheduler.log_text().contains("node-loss brake released").then_some(())
    })
    .await;
    cluster.wait_ready(10).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c =
        wait_within("one copy each (the forgotten node's stale copies stopped)", Duration::from_secs(30), || async {
            let c = active_copies(&api).await?;
            (c.len() == COUNT && c.values().all(|n| n.len() == 1)).then_some(c)
        })
        .await;
    assert_eq!(c.len(), COUNT);
    let list = all_instances(&api).await;
    for i in &list {
        let forgotten = on_gone.iter().any(|u| u == i["uuid"].as_str().unwrap());
        assert_eq!(i["restarts"], u64::from(forgotten), "only the forgotten node's work restarted: {i}");
        assert_eq!(i["state"], "running");
    }
    let log = cluster.scheduler.log_text();
    assert_eq!(log.matches(": declared lost with").count(), 1, "nothing declared lost but the forgotten node: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evacuating_a_node_running_fifty_moves_them_all_and_restore_reopens_it() {
    const COUNT: usize = 100;
    let cluster = Cluster::start_with(&["--cpu-overcommit", "600"], &[SIM, SIM]);
    cluster.wait_ready(2).await;
    let api = cluster.admin();
    create_workload(&api, &workload("batch", "never")).await;
    api.post("/v1/workloads/batch/launch", &json!({"count": COUNT})).await.unwrap();
    let list = wait_for("all running", || async {
        let list = all_instances(&api).await;
        (running(&list) == COUNT).then_some(list)
    })
    .await;
    let node = node_of_launcher(&cluster, 0);
    let on_node = list.iter().filter(|i| i["node"] == node.as_str()).count();
    assert!(on_node >= 50, "spread put {on_node} on the node; the test wants 50");

    api.post(&format!("/v1/nodes/{node}/evacuate"), &json!({})).await.unwrap();
    let moved = wait_within("every instance to run on the other node", Duration::from_secs(60), || async {
        let list = all_instances(&api).await;
        (running(&list) == COUNT && list.iter().all(|i| i["node"] != node.as_str())).then_some(list)
    })
    .await;
    assert_eq!(moved.len(), COUNT, "none lost, none added");
    let c = wait_within("the nodes to agree", Duration::from_secs(30), || async {
        let c = active_copies(&api).await?;
        (c.len() == COUNT && c.values().all(|n| n.len() == 1 && n[0] != node)).then_some(c)
    })
    .await;
    assert_eq!(c.len(), COUNT);
    common::restore_evacuated(&api, &node).await;
}

/// The one instance of workload `name` (restart `policy`), once it runs: its UUID and node.
async fn one_running(api: &drover_cli::client::ApiClient, name: &str, policy: &str) -> (String, String) {
    create_workload(api, &workload(name, policy)).await;
    let id = launch_one(api, name).await;
    let node = instance_when(api, &id, "it to run", PATIENCE, |i| i["state"] == "running").await;
    let node = node["node"].as_str().unwrap().to_owned();
    (id, node)
}

async fn wait_lost(api: &drover_cli::client::ApiClient, id: &str, what: &str) -> serde_json::Value {
    instance_when(api, id, what, Duration::from_secs(30), |i| i["state"] == "lost").await
}

/// A node lost while the controller is down: the scheduler's NODE_LOST went to nobody. The
/// restarted controller asks after the node it believes runs the instance, and the scheduler
/// tells it again: the instance is lost (policy `never`), not `running` forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lost_while_the_controller_is_down_is_learnt_when_it_returns() {
    let mut cluster = Cluster::start_with(FAST_LOSS, &[SIM, SIM]);
    cluster.wait_ready(2).await;
    let api = cluster.admin();
    let (id, node) = one_running(&api, "lonely", "never").await;
    let index = (0..2).find(|i| node_of_launcher(&cluster, *i) == node).unwrap();
    cluster.controller.kill9();
    cluster.launchers[index].kill9();
    wait_within("the scheduler to declare the node lost", Duration::from_secs(20), || async {
        cluster.scheduler.log_text().contains("declared lost").then_some(())
    })
    .await;
    cluster.restart_controller();
    let i = wait_lost(&api, &id, "the instance to be lost after the controller returns").await;
    assert!(i["why"].as_str().unwrap_or_default().contains("lost"), "{i}");
}

/// A node that dies while the scheduler is down is one the restarted scheduler never sees. The
/// controller asks after it; the scheduler expects it from then on and declares it lost when it
/// stays away for TTL + grace; the instance is lost, not `running` forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_while_the_scheduler_is_down_is_declared_lost_by_the_new_one() {
    let mut cluster = Cluster::start_with(FAST_LOSS, &[SIM, SIM]);
    cluster.wait_ready(2).await;
    let api = cluster.admin();
    let (id, node) = one_running(&api, "orphan", "never").await;
    let index = (0..2).find(|i| node_of_launcher(&cluster, *i) == node).unwrap();
    cluster.scheduler.kill9();
    cluster.launchers[index].kill9();
    cluster.restart_scheduler();
    wait_lost(&api, &id, "the instance to be lost after the scheduler restarts").await;
    assert!(cluster.scheduler.log_text().contains("declared lost"), "the new scheduler declared it");
    // The node that stayed is still a node: new work runs there.
    let (_, elsewhere) = one_running(&api, "after", "never").await;
    assert_ne!(elsewhere, node);
}

/// A launcher stopped for maintenance (SIGTERM, workloads left running) announces a grace:
/// its work is not started elsewhere while it is away for less than that, and is once the
/// grace is over (the node never came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_stopped_for_maintenance_has_its_work_held_for_its_grace() {
    let held: &[&str] = &["--backend", "sim", "--maintenance-grace", "8s"];
    let mut cluster = Cluster::start_with(FAST_LOSS, &[held, held]);
    cluster.wait_ready(2).await;
    let api = cluster.admin();
    let (id, node) = one_running(&api, "steady", "on-failure").await;
    let index = (0..2).find(|i| node_of_launcher(&cluster, *i) == node).unwrap();
    #[allow(clippy::disallowed_methods)] // the real clock: how long the hold lasts
    let stopped = std::time::Instant::now();
    cluster.launchers[index].terminate();
    // Four TTL + grace periods: without the hold it would have moved by now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let i = api.get(&format!("/v1/instances/{id}")).await.unwrap();
    assert_eq!(
        (i["state"].as_str(), i["node"].as_str(), &i["restarts"]),
        (Some("running"), Some(node.as_str()), &json!(0)),
        "{i}"
    );
    let moved = wait_within("the work to move once the grace is over", Duration::from_secs(30), || async {
        let i = api.get(&format!("/v1/instances/{id}")).await.ok()?;
        (i["state"] == "running" && i["node"] != node.as_str()).then_some(i)
    })
    .await;
    assert!(stopped.elapsed() >= Duration::from_secs(8), "not before the grace");
    assert_eq!(moved["restarts"], 1);
    assert!(cluster.scheduler.log_text().contains("held 8 s"));
}
