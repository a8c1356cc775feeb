//! Controllers sharing an etcd store: one leads, the other stands by and redirects; when the
//! leader is killed or stalls past its lease, the standby leads with everything the leader
//! acknowledged, and nothing runs twice, is lost, or is stopped.

#![allow(clippy::disallowed_methods)] // tests measure and wait with the real clock

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{all_events, api_client, free_port, runs, wait_for, wait_within, Cluster, Proc};
use drover_cli::client::ApiClient;
use hyper::Method;
use serde_json::{json, Value};
use testutil::etcd::EtcdCluster;
use testutil::Pki;

const COUNT: usize = 1000;
/// The issue's bound: a standby leads within 20 s of the leader's death (a 15 s lease, 2 s retry).
const TAKEOVER: Duration = Duration::from_secs(20);

fn ha_controller(work: &Path, pki: &Pki, sched: &str, api: &str, name: &str, etcd: &[String]) -> Proc {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let cert = pki.issue_named(ssntp::Role::CONTROLLER, name, &[], &[]);
    let mut args =
        drover_cli::local::controller_args(sched, &dir, api, &pki.cert("server-api"), &pki.paths(&cert, false));
    args.extend([
        "--store".into(),
        "etcd".into(),
        "--etcd-endpoints".into(),
        etcd.join(","),
        "--etcd-prefix".into(),
        "/ha".into(),
    ]);
    Proc::spawn(name, "drover-controller", &args, &work.join("logs"))
}

/// What `GET /v1/leader` says at `api`: its role and the leader's UUID.
async fn role(api: &ApiClient) -> Option<(String, Option<String>)> {
    let v = api.get("/v1/leader").await.ok()?;
    Some((v["role"].as_str()?.to_owned(), v["leader"]["uuid"].as_str().map(str::to_owned)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leading_controller_mid_launch_hands_over_within_20s_and_nothing_runs_twice_or_stops() {
    let Some(etcd) = EtcdCluster::start("killing_the_leading_controller_mid_launch", 1, &[]) else { return };
    let endpoints = etcd.endpoints();
    let sim: &[&str] = &["--backend", "sim", "--max-instances", "5000"];
    let mut cluster =
        Cluster::start_custom(&["--cpu-overcommit", "600", "--start-window", "16"], &[sim, sim], |work, pki, s, a| {
            ha_controller(work, pki, s, a, "ctl-a", &endpoints)
        });
    let leader_api = cluster.admin();
    wait_for("controller a to lead", || async { (role(&leader_api).await?.0 == "leader").then_some(()) }).await;
    let standby_addr = format!("127.0.0.1:{}", free_port());
    let _standby =
        ha_controller(cluster.work.path(), &cluster.pki, &cluster.sched_addr, &standby_addr, "ctl-b", &endpoints);
    let standby_api = api_client(&cluster.pki, &standby_addr, Some("admin"));
    let (standby_role, leader) =
        wait_for("controller b to stand by", || async { role(&standby_api).await.filter(|r| r.0 == "standby") }).await;
    assert_eq!((standby_role.as_str(), leader.is_some()), ("standby", true), "b knows who leads");
    cluster.wait_ready(2).await;

    // Through the standby: every call is redirected to the leader, and the CLI follows.
    let workload = "name = \"sim\"\n[resources]\nmem_mb = 4\nvcpus = 1\n[backend]\ntype = \"sim\"\nduration_ms = 600000\n[restart]\npolicy = \"never\"\n";
    standby_api
        .call(Method::POST, "/v1/workloads", Some(("application/toml", workload.as_bytes().to_vec())))
        .await
        .unwrap();
    let out = cluster.cli_at(&standby_addr, &["workload", "ls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("sim"), "{}", String::from_utf8_lossy(&out.stderr));
    let launched = leader_api.post("/v1/workloads/sim/launch", &json!({"count": COUNT})).await.unwrap();
    let acknowledged: Vec<String> =
        launched["instances"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(acknowledged.len(), COUNT);
    wait_for("the first instances to run", || async {
        let s = leader_api.get("/v1/status").await.ok()?;
        (s["instances"]["running"].as_u64().unwrap_or(0) >= 1).then_some(())
    })
    .await;
    let before = leader_api.get("/v1/status").await.unwrap();
    eprintln!("killing the leader at {before}");
    cluster.controller.kill9();
    let killed = Instant::now();
    wait_within("controller b to lead", TAKEOVER, || async { (role(&standby_api).await?.0 == "leader").then_some(()) })
        .await;
    eprintln!("b leads {:?} after the kill", killed.elapsed());

    let api = standby_api;
    let status = wait_within("every acknowledged instance to run", Duration::from_secs(90), || async {
        let s = api.get("/v1/status").await.ok()?;
        (s["instances"]["running"].as_u64() == Some(COUNT as u64)).then_some(s)
    })
    .await;
    assert_eq!(status["instances"].as_object().unwrap().len(), 1, "all running, nothing else: {status}");
    let events = common::assert_each_runs_exactly_once(&api, &acknowledged).await;
    let stopped: Vec<&Value> = events.iter().filter(|e| e["to"] == "stopped").collect();
    assert!(stopped.is_empty(), "nothing running is stopped: {stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stalled_past_its_lease_is_replaced_refused_by_the_fence_and_comes_back_as_a_standby() {
    let Some(etcd) = EtcdCluster::start("a_leader_stalled_past_its_lease", 1, &[]) else { return };
    let endpoints = etcd.endpoints();
    let cluster = Cluster::start_custom(&[], &[&["--backend", "sim"]], |work, pki, s, a| {
        ha_controller(work, pki, s, a, "ctl-a", &endpoints)
    });
    let a_api = cluster.admin();
    wait_for("controller a to lead", || async { (role(&a_api).await?.0 == "leader").then_some(()) }).await;
    let b_addr = format!("127.0.0.1:{}", free_port());
    let _b = ha_controller(cluster.work.path(), &cluster.pki, &cluster.sched_addr, &b_addr, "ctl-b", &endpoints);
    let b_api = api_client(&cluster.pki, &b_addr, Some("admin"));
    wait_for("controller b to stand by", || async { (role(&b_api).await?.0 == "standby").then_some(()) }).await;
    cluster.wait_ready(1).await;
    let workload = common::SIM_WORKLOAD;
    a_api.call(Method::POST, "/v1/workloads", Some(("application/toml", workload.as_bytes().to_vec()))).await.unwrap();
    let first = a_api.post("/v1/workloads/sim/launch", &json!({"count": 5})).await.unwrap();
    let first: Vec<String> =
        first["instances"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    wait_for("five running", || async {
        let s = a_api.get("/v1/status").await.ok()?;
        (s["instances"]["running"].as_u64() == Some(5)).then_some(())
    })
    .await;

    // A stalls (a long GC pause, a frozen VM) past its lease: B takes over.
    cluster.controller.signal(nix::sys::signal::Signal::SIGSTOP);
    wait_within("b to lead", TAKEOVER + Duration::from_secs(5), || async {
        (role(&b_api).await?.0 == "leader").then_some(())
    })
    .await;
    let second = b_api.post("/v1/workloads/sim/launch", &json!({"count": 3})).await.unwrap();
    assert_eq!(second["instances"].as_array().unwrap().len(), 3);
    // A wakes: it finds its term over, acts no more, and starts again as a standby that sends
    // users to B.
    cluster.controller.signal(nix::sys::signal::Signal::SIGCONT);
    wait_for("a to stand by again", || async { (role(&a_api).await?.0 == "standby").then_some(()) }).await;
    assert!(cluster.controller.log_text().contains("leadership lost"), "a says why it stepped down");
    let via_a = a_api.get("/v1/status").await.unwrap();
    assert_eq!(via_a["instances"]["running"].as_u64().map(|n| n <= 8), Some(true), "a redirects to b: {via_a}");
    let status = wait_for("all eight running", || async {
        let s = b_api.get("/v1/status").await.ok()?;
        (s["instances"]["running"].as_u64() == Some(8)).then_some(s)
    })
    .await;
    assert_eq!(status["instances"].as_object().unwrap().len(), 1, "{status}");
    let events = all_events(&b_api).await;
    assert!(events.windows(2).all(|w| w[1]["revision"].as_u64() == w[0]["revision"].as_u64().map(|r| r + 1)));
    let runs = runs(&events);
    assert!(runs.values().all(|n| *n == 1), "started more than once: {runs:?}");
    for id in &first {
        assert_eq!(runs.get(id), Some(&1), "{id} ran once, across the handover");
    }
}

/// Two schedulers on one etcd, one active; launchers and a controller given both addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_active_scheduler_moves_everyone_to_the_standby_and_nothing_is_lost_or_restarted() {
    let Some(etcd) = EtcdCluster::start("losing_the_active_scheduler", 1, &[]) else { return };
    let work = tempfile::tempdir().unwrap();
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pki = common::cluster_pki();
    let (a_addr, b_addr) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let scheduler = |name: &str, addr: &str| {
        let mut args = drover_cli::local::scheduler_args(addr, &pki.paths("scheduler-local", false));
        args.extend(
            [
                "--load-threshold",
                "1000",
                "--cpu-overcommit",
                "600",
                "--etcd-endpoints",
                &etcd.endpoints().join(","),
                "--etcd-prefix",
                "/s",
            ]
            .map(String::from),
        );
        Proc::spawn(name, "drover-scheduler", &args, &logs)
    };
    let listening = |addr: &str| std::net::TcpStream::connect(addr).is_ok();
    let mut sched_a = scheduler("scheduler-a", &a_addr);
    wait_for("scheduler a to be active", || async { listening(&a_addr).then_some(()) }).await;
    let _sched_b = scheduler("scheduler-b", &b_addr);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!listening(&b_addr), "a standby scheduler does not listen");

    let both = ["--server".to_owned(), b_addr.clone()];
    let mut launchers = Vec::new();
    for i in 0..2 {
        let cert = pki.issue_named(ssntp::Role::AGENT, &format!("local{i}"), &[], &[]);
        let state = work.path().join(format!("launcher{i}"));
        let mut args = drover_cli::local::launcher_args(&a_addr, &state, &pki.paths(&cert, false));
        args.extend(both.iter().cloned());
        args.extend(["--backend", "sim", "--report-interval", "500ms", "--drain-on-exit"].map(String::from));
        launchers.push(Proc::spawn(&format!("launcher{i}"), "drover-launcher", &args, &logs));
    }
    let api_addr = format!("127.0.0.1:{}", free_port());
    let mut args = drover_cli::local::controller_args(
        &a_addr,
        work.path(),
        &api_addr,
        &pki.cert("server-api"),
        &pki.paths("controller-local", false),
    );
    args.extend(both.iter().cloned());
    let _controller = Proc::spawn("controller", "drover-controller", &args, &logs);
    let api = api_client(&pki, &api_addr, Some("admin"));
    wait_for("both nodes ready through scheduler a", || async {
        let s = api.get("/v1/status").await.ok()?;
        (s["scheduler"]["target"] == a_addr.as_str() && s["nodes"]["ready"].as_u64() == Some(2)).then_some(())
    })
    .await;
    let workload = common::SIM_WORKLOAD;
    api.call(Method::POST, "/v1/workloads", Some(("application/toml", workload.as_bytes().to_vec()))).await.unwrap();
    api.post("/v1/workloads/sim/launch", &json!({"count": 20})).await.unwrap();
    wait_for("twenty running", || async {
        let s = api.get("/v1/status").await.ok()?;
        (s["instances"]["running"].as_u64() == Some(20)).then_some(())
    })
    .await;

    sched_a.kill9();
    let killed = Instant::now();
    wait_within("everyone to move to scheduler b", Duration::from_secs(60), || async {
        let s = api.get("/v1/status").await.ok()?;
        (s["scheduler"]["target"] == b_addr.as_str()
            && s["scheduler"]["connected"] == true
            && s["nodes"]["ready"].as_u64() == Some(2))
        .then_some(())
    })
    .await;
    eprintln!("everyone on scheduler b {:?} after the kill", killed.elapsed());
    // Work goes on through b, and what ran before runs on, untouched.
    api.post("/v1/workloads/sim/launch", &json!({"count": 5})).await.unwrap();
    let status = wait_for("twenty-five running", || async {
        let s = api.get("/v1/status").await.ok()?;
        (s["instances"]["running"].as_u64() == Some(25)).then_some(s)
    })
    .await;
    assert_eq!(status["instances"].as_object().unwrap().len(), 1, "{status}");
    let events = all_events(&api).await;
    let runs = runs(&events);
    assert_eq!(runs.len(), 25);
    assert!(runs.values().all(|n| *n == 1), "restarted or duplicated: {runs:?}");
    let lost: Vec<&Value> =
        events.iter().filter(|e| e["to"] == "lost" || e["what"].as_str().is_some_and(|w| w.contains("lost"))).collect();
    assert!(lost.is_empty(), "nothing declared lost: {lost:?}");
    let nodes = api.get("/v1/nodes").await.unwrap();
    assert!(nodes.as_array().unwrap().iter().all(|n| n["status"] == "ready"), "{nodes}");
}

/// Three etcd members: one lost changes nothing; two lost stop writes (503, saying why) while
/// reads go on; with them back, work resumes and nothing was lost or run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_etcd_member_changes_nothing_losing_two_refuses_writes_but_not_reads_and_all_resumes() {
    let Some(mut etcd) = EtcdCluster::start("losing_etcd_members", 3, &[]) else { return };
    let endpoints = etcd.endpoints();
    let cluster = Cluster::start_custom(&[], &[&["--backend", "sim"]], |work, pki, s, a| {
        ha_controller(work, pki, s, a, "ctl-a", &endpoints)
    });
    let api = cluster.admin();
    wait_for("the controller to lead", || async { (role(&api).await?.0 == "leader").then_some(()) }).await;
    cluster.wait_ready(1).await;
    let workload = common::SIM_WORKLOAD;
    api.call(Method::POST, "/v1/workloads", Some(("application/toml", workload.as_bytes().to_vec()))).await.unwrap();
    let running = |n: u64| {
        let api = &api;
        move || async move {
            let s = api.get("/v1/status").await.ok()?;
            (s["instances"]["running"].as_u64() == Some(n)).then_some(())
        }
    };
    api.post("/v1/workloads/sim/launch", &json!({"count": 3})).await.unwrap();
    wait_for("three running", running(3)).await;

    // The member lost is raft's leader: the hard case (etcd elects another; a write in flight
    // may have been applied or not).
    let raft_leader = etcd.leader().expect("etcd has a leader");
    etcd.kill(raft_leader);
    api.post("/v1/workloads/sim/launch", &json!({"count": 2})).await.expect("one member of three lost: no effect");
    wait_for("five running", running(5)).await;

    let second = (0..3).find(|i| *i != raft_leader).unwrap();
    etcd.kill(second);
    let refusal = wait_within("writes to be refused with a reason", Duration::from_secs(40), || async {
        let (status, body) = api
            .raw(Method::POST, "/v1/workloads/sim/launch", Some(("application/json", b"{\"count\": 1}".to_vec())))
            .await
            .ok()?;
        (status == hyper::StatusCode::SERVICE_UNAVAILABLE).then_some(body)
    })
    .await;
    assert!(refusal.to_string().contains("etcd"), "the refusal says why: {refusal}");
    let list = api.get("/v1/instances").await.expect("reads are still answered");
    assert!(list.as_array().unwrap().len() >= 5, "{list}");

    etcd.restart(second);
    etcd.restart(raft_leader);
    let resumed = wait_within("writes to be taken again", Duration::from_secs(60), || async {
        api.post("/v1/workloads/sim/launch", &json!({"count": 1})).await.ok()
    })
    .await;
    assert_eq!(resumed["instances"].as_array().unwrap().len(), 1);
    let status = wait_for("every instance to run", || async {
        let s = api.get("/v1/status").await.ok()?;
        let total: u64 = s["instances"].as_object()?.values().filter_map(Value::as_u64).sum();
        (s["instances"]["running"].as_u64() == Some(total)).then_some(s)
    })
    .await;
    let events = all_events(&api).await;
    assert!(events.windows(2).all(|w| w[1]["revision"].as_u64() == w[0]["revision"].as_u64().map(|r| r + 1)));
    let runs = runs(&events);
    assert!(runs.values().all(|n| *n == 1), "started more than once: {runs:?} ({status})");
    assert!(runs.len() >= 6, "{runs:?}");
}
