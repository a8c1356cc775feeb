//! Kill -9 the controller while 1,000 instances (sim backend) are being launched across two
//! launchers: after a restart every acknowledged instance runs exactly once — none lost, none
//! duplicated, none restarted.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

mod common;

use common::{wait_for, Cluster};
use hyper::Method;
use serde_json::{json, Value};

const COUNT: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_controller_mid_launch_loses_and_duplicates_nothing() {
    let sim: &[&str] = &["--backend", "sim", "--max-instances", "5000"];
    // Room for all of them (2 CPUs × 600), so "every instance runs" can be asserted.
    let mut cluster = Cluster::start_with(&["--cpu-overcommit", "600", "--start-window", "16"], &[sim, sim]);
    cluster.wait_ready(2).await;
    let api = cluster.admin();
    let workload = "name = \"sim\"\n[resources]\nmem_mb = 4\nvcpus = 1\n[backend]\ntype = \"sim\"\nduration_ms = 600000\n[restart]\npolicy = \"never\"\n";
    api.call(Method::POST, "/v1/workloads", Some(("application/toml", workload.as_bytes().to_vec()))).await.unwrap();
    let t0 = std::time::Instant::now();
    let launched = api.post("/v1/workloads/sim/launch", &json!({"count": COUNT})).await.unwrap();
    eprintln!("launch of {COUNT} acknowledged after {:?}", t0.elapsed());
    let acknowledged: Vec<String> =
        launched["instances"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(acknowledged.len(), COUNT);
    // Mid-launch: some STARTs out, some answered, most not yet.
    wait_for("the first instances to run", || async {
        let s = api.get("/v1/status").await.ok()?;
        (s["instances"]["running"].as_u64().unwrap_or(0) >= 1).then_some(())
    })
    .await;
    let before = api.get("/v1/status").await.unwrap();
    assert!(before["instances"]["running"].as_u64().unwrap() < COUNT as u64, "the kill must come mid-launch: {before}");
    eprintln!("killing the controller at {before}");
    cluster.controller.kill9();
    eprintln!("killed after {:?}", t0.elapsed());
    cluster.restart_controller();
    let api = cluster.admin();
    api.wait_ready(common::PATIENCE).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        let s = api.get("/v1/status").await.unwrap();
        if s["instances"]["running"].as_u64() == Some(COUNT as u64) {
            eprintln!("all {COUNT} running after {:?}", t0.elapsed());
            break s;
        }
        if tokio::time::Instant::now() >= deadline {
            let waiting = api.get("/v1/instances?state=starting").await.unwrap();
            panic!("not every instance runs: {s} (before the kill: {before}); one waiting: {}", waiting[0]);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        status["instances"].as_object().unwrap().len(),
        1,
        "all running, nothing else: {status} (before the kill: {before})"
    );

    common::assert_each_runs_exactly_once(&api, &acknowledged).await;
    let _: Value = api.get("/v1/status").await.unwrap();
}

/// Deadlines the controller keeps (a restart's backoff) mean the same to the next process: a
/// controller that was up for a while, killed while an instance waits out its backoff, starts
/// it again about when the backoff ends, not as late as the old process had been up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backoff_survives_kill_9_of_a_controller_that_was_up_for_a_while() {
    const UPTIME: std::time::Duration = std::time::Duration::from_secs(20);
    let sim: &[&str] = &["--backend", "sim"];
    let up = std::time::Instant::now();
    let mut cluster = Cluster::start(&[sim]);
    cluster.wait_ready(1).await;
    let api = cluster.admin();
    let workload = "name = \"flaky\"\n[resources]\nmem_mb = 4\nvcpus = 1\n[backend]\ntype = \"sim\"\nduration_ms = 100\nexit_code = 1\n[restart]\npolicy = \"on-failure\"\nattempts = 5\nbackoff = \"3s\"\n";
    api.call(Method::POST, "/v1/workloads", Some(("application/toml", workload.as_bytes().to_vec()))).await.unwrap();
    tokio::time::sleep(UPTIME.saturating_sub(up.elapsed())).await;
    let launched = api.post("/v1/workloads/flaky/launch", &json!({"count": 1})).await.unwrap();
    let id = launched["instances"][0].as_str().unwrap().to_owned();
    wait_for("the first failure", || async {
        let i = api.get(&format!("/v1/instances/{id}")).await.ok()?;
        (i["restarts"] == 1 && i["state"] == "pending").then_some(())
    })
    .await;
    cluster.controller.kill9();
    let killed = std::time::Instant::now();
    cluster.restart_controller();
    let api = cluster.admin();
    api.wait_ready(common::PATIENCE).await.unwrap();
    let started_again = wait_for("the restart after the backoff", || async {
        let i = api.get(&format!("/v1/instances/{id}")).await.ok()?;
        (i["state"] != "pending" || i["restarts"].as_u64() > Some(1)).then(|| killed.elapsed())
    })
    .await;
    // 3 s of backoff at most remain, plus a restart; the old process had been up for 20 s.
    assert!(
        started_again < std::time::Duration::from_secs(10),
        "the instance waited {started_again:?} after the restart for a 3 s backoff"
    );
}
