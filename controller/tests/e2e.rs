//! End to end with the real scheduler, controller and launchers (process backend) on loopback:
//! a workload runs to completion and `drover logs` shows its output; a failing workload is
//! restarted per policy; evacuating a node moves its instances; batch submit answers correctly
//! on a cluster too small for all of it.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

mod common;

use common::{create_workload, instance_when, launch_one, wait_for, Cluster, PATIENCE};
use serde_json::{json, Value};

async fn instances(api: &drover_cli::client::ApiClient, workload: &str) -> Vec<Value> {
    api.get(&format!("/v1/instances?workload={workload}")).await.unwrap().as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_runs_and_its_output_shows_and_a_failing_one_is_restarted_per_policy() {
    let cluster = Cluster::start(&[&[]]);
    cluster.wait_ready(1).await;
    let api = cluster.admin();

    std::fs::write(
        cluster.work.path().join("hello.toml"),
        "name = \"hello\"\nsize = \"tiny\"\n[backend]\ntype = \"process\"\nargv = [\"/bin/sh\", \"-c\", \"echo hello from $0; echo line two\"]\n",
    )
    .unwrap();
    let out = cluster.cli(&["workload", "create", cluster.work.path().join("hello.toml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cluster.cli(&["--json", "run", "hello", "--wait"]);
    assert!(
        out.status.success(),
        "run --wait: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let finished: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(finished[0]["state"], "exited", "{finished}");
    assert_eq!(finished[0]["exit_code"], 0);
    let id = finished[0]["uuid"].as_str().unwrap();
    let out = cluster.cli(&["logs", &id[..8]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from /bin/sh\nline two\n");
    let out = cluster.cli(&["--json", "logs", &id[..8]]);
    let log: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(log["data"], "hello from /bin/sh\nline two\n", "{log}");
    let out = cluster.cli(&["--json", "show", "00000000-0000-0000-0000-000000000000"]);
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success() && err["error"]["status"] == 404, "--json covers errors: {err}");
    let out = cluster.cli(&["ps"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().next().unwrap().starts_with("ID") && table.contains("exited(0)"), "{table}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned();
    assert!(table.lines().next().unwrap().contains("TENANT"), "{table}");
    assert!(table.contains("admin"), "{table}");
    assert!(table.contains(&host), "NODE by its host name, as node ls shows it: {table}");
    let out = cluster.cli(&["ps", "--state", "runing"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("one of pending"));

    // on-failure, 2 attempts: three runs in all, then failed, with the reason.
    create_workload(
        &api,
        "name = \"flaky\"\nsize = \"tiny\"\n[backend]\ntype = \"process\"\nargv = [\"/bin/sh\", \"-c\", \"echo try; exit 3\"]\n[restart]\npolicy = \"on-failure\"\nattempts = 2\nbackoff = \"200ms\"\n",
    )
    .await;
    let id = launch_one(&api, "flaky").await;
    let done = instance_when(&api, &id, "the flaky workload to give up", PATIENCE, |v| v["state"] == "failed").await;
    assert_eq!(done["restarts"], 2, "{done}");
    assert!(done["why"].as_str().unwrap().contains("code 3"), "{done}");
    assert_eq!(done["exit_code"], 3, "the failed run's code is shown, as WHY says: {done}");
    let out = cluster.cli(&["ps", "--sort", "created"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().next().unwrap().contains("AGE"), "{table}");
    let order: Vec<&str> = table.lines().skip(1).filter_map(|l| l.split_whitespace().nth(2)).collect();
    assert_eq!(order, ["hello", "flaky"], "oldest first: {table}");
    let out = cluster.cli(&["--json", "show", &id]);
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(shown["created_unix_ms"].as_u64().unwrap() > 1_700_000_000_000, "{shown}");
    let out = cluster.cli(&["show", &id[..8]]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.lines().any(|l| l.contains("exit") && l.trim_end().ends_with('3')), "{shown}");
    let events = api.get("/v1/events?limit=10000").await.unwrap();
    let runs = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["instance"] == id.as_str() && e["what"].as_str().unwrap().contains("starting → running"))
        .count();
    assert_eq!(runs, 3, "started once and restarted twice: {events}");
    // Each event has its time and its facts as fields.
    let ended = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["instance"] == id.as_str() && e["to"] == "failed")
        .unwrap_or_else(|| panic!("no event of the failure: {events}"));
    assert!(ended["at_unix_ms"].as_u64().unwrap() > 1_700_000_000_000, "{ended}");
    // From where it was when the report came: a start and an end may arrive together.
    assert!(ended["from"] == "running" || ended["from"] == "starting", "{ended}");
    assert_eq!((&ended["workload"], &ended["exit_code"]), (&json!("flaky"), &json!(3)), "{ended}");
    assert!(!ended["what"].as_str().unwrap().contains("exited: exited"), "{ended}");

    // `drover events | head -1`: the reader goes away; drover exits quietly, not in a panic.
    let mut events = std::process::Command::new(common::bin("drover"))
        .args(["--api", &cluster.api_addr, "--cacert"])
        .arg(cluster.pki.ca())
        .arg("--cert")
        .arg(cluster.pki.cert("user-admin"))
        .arg("events")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(events.stdout.take());
    let out = events.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("panicked"), "{:?}: {err}", out.status);

    // A successful run under on-failure is not restarted.
    let hello = instances(&api, "hello").await;
    assert_eq!(hello[0]["restarts"], 0);

    // Every call that changed something is in the audit trail, with who made it.
    let log = cluster.controller.log_text();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("drover::audit")).collect();
    assert!(
        audit.iter().any(|l| l.contains("/v1/workloads/flaky/launch")
            && l.contains("subject=\"admin\"")
            && l.contains("status=201")),
        "{audit:#?}"
    );
    assert!(!audit.iter().any(|l| l.contains("method=GET")), "reads are not audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evacuating_a_node_moves_its_instances_and_restore_brings_it_back() {
    let cluster = Cluster::start(&[&[], &[]]);
    cluster.wait_ready(2).await;
    let api = cluster.admin();
    create_workload(&api, "name = \"sleeper\"\nsize = \"tiny\"\n[backend]\ntype = \"process\"\nargv = [\"/bin/sleep\", \"300\"]\n[restart]\npolicy = \"never\"\n").await;
    api.post("/v1/workloads/sleeper/launch", &json!({"count": 4})).await.unwrap();
    let running = wait_for("four running instances", || async {
        let list = instances(&api, "sleeper").await;
        list.iter().all(|i| i["state"] == "running").then_some(list)
    })
    .await;
    let node = running[0]["node"].as_str().unwrap().to_owned();
    let on_node = running.iter().filter(|i| i["node"] == node.as_str()).count();

    // A second controller is a backup: the scheduler refuses its commands, and its API says so.
    let backup_dir = cluster.work.path().join("backup");
    std::fs::create_dir_all(&backup_dir).unwrap();
    let backup_cert = cluster.pki.issue_named(ssntp::Role::CONTROLLER, "backup", &[], &[]);
    let backup_api = format!("127.0.0.1:{}", common::free_port());
    let args = drover_cli::local::controller_args(
        &cluster.sched_addr,
        &backup_dir,
        &backup_api,
        &cluster.pki.cert("server-api"),
        &cluster.pki.paths(&backup_cert, false),
    );
    let mut backup = common::Proc::spawn("backup", "drover-controller", &args, &cluster.work.path().join("logs"));
    let via_backup = common::api_client(&cluster.pki, &backup_api, Some("admin"));
    wait_for("the backup controller to connect", || async {
        (via_backup.get("/v1/status").await.ok()?["scheduler"]["connected"] == true).then_some(())
    })
    .await;
    let out = cluster.cli_at(&backup_api, &["node", "evacuate", &node]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("409") && stderr.contains("refused"), "{stderr}");
    backup.terminate();
    let out = cluster.cli(&["node", "evacuate", &ssntp::Uuid::new_v4().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("404"), "a node the scheduler does not know: {stderr}");
    assert!(instances(&api, "sleeper").await.iter().all(|i| i["state"] == "running"), "nothing moved");

    let out = cluster.cli(&["node", "evacuate", &node[..8]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let moved = wait_for("every instance to run elsewhere", || async {
        let list = instances(&api, "sleeper").await;
        list.iter().all(|i| i["state"] == "running" && i["node"] != node.as_str()).then_some(list)
    })
    .await;
    assert_eq!(moved.len(), 4, "none lost, none added");
    assert!(on_node >= 1);
    common::restore_evacuated(&api, &node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_submit_answers_on_a_cluster_too_small_for_all_of_it() {
    let cluster = Cluster::start(&[&["--max-instances", "2"]]);
    cluster.wait_ready(1).await;
    let api = cluster.admin();
    create_workload(&api, "name = \"render\"\nclass = \"batch\"\nsize = \"tiny\"\n[backend]\ntype = \"process\"\nargv = [\"/bin/sleep\", \"300\"]\n[restart]\npolicy = \"never\"\n").await;
    let answer = api.post("/v1/batch", &json!({"workload": "render", "count": 5, "wait_ms": 10000})).await.unwrap();
    let n = |k: &str| answer[k].as_array().unwrap().len();
    assert_eq!((n("started"), n("queued"), n("rejected"), n("pending")), (2, 3, 0, 0), "{answer}");
    assert!(answer["queued"][0]["why"].as_str().is_some_and(|w| !w.is_empty()), "queued work says why: {answer}");
    assert!(answer["slots_remaining_estimate"].as_u64().is_some(), "{answer}");
    // A batch's instances, by its UUID: from the API, `drover ps --batch` and the dashboard.
    let batch = answer["batch"].as_str().unwrap().to_owned();
    let listed = api.get(&format!("/v1/instances?batch={batch}")).await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 5, "{listed}");
    let out = cluster.cli(&["--json", "ps", "--batch", &batch]);
    let ps: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(ps.as_array().map(Vec::len), Some(5), "{ps}");
    let (_, page) = api.raw(hyper::Method::GET, &format!("/ui/instances?batch={batch}"), None).await.unwrap();
    assert_eq!(page.as_str().unwrap().matches("<tr data-instance=").count(), 5, "{page}");

    // Work larger than any node is rejected at once.
    create_workload(&api, "name = \"huge\"\nclass = \"batch\"\n[resources]\nmem_mb = 1048576\n[backend]\ntype = \"process\"\nargv = [\"/bin/true\"]\n").await;
    let answer = api.post("/v1/batch", &json!({"workload": "huge", "count": 3})).await.unwrap();
    assert_eq!(answer["rejected"].as_array().unwrap().len(), 3, "{answer}");
    assert!(answer["rejected"][0]["why"].as_str().unwrap().contains("largest node"), "{answer}");
    let events = api.get("/v1/events?limit=10000").await.unwrap().to_string();
    assert!(
        events.contains(&format!("batch {} of huge failed", answer["batch"].as_str().unwrap())),
        "batch failure is an event"
    );

    // The batch command line says the same.
    let out = cluster.cli(&["batch", "submit", "render", "-n", "1", "--wait-ms", "3000"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("0 started, 1 queued, 0 rejected"), "{text}");
}

/// The memory a node offers (its reserve taken off), from its STATS as the controller has them.
async fn node_memory(api: &drover_cli::client::ApiClient) -> u64 {
    let nodes = api.get("/v1/nodes").await.unwrap();
    nodes[0]["stats"]["mem_total_mb"].as_u64().unwrap()
}

/// A long-running sim workload requesting `mem_mb` and using `uses_mb`.
fn sim_workload(name: &str, mem_mb: u64, uses_mb: u64) -> String {
    format!(
        "name = \"{name}\"\n[resources]\nmem_mb = {mem_mb}\nvcpus = 1\n[backend]\ntype = \"sim\"\nduration_ms = 600000\nmem_usage_mb = {uses_mb}\n"
    )
}

/// Launches `count` more instances of `workload` and waits until `running` of it run.
async fn launch_and_wait(api: &drover_cli::client::ApiClient, workload: &str, count: usize, running: usize) {
    api.post(&format!("/v1/workloads/{workload}/launch"), &json!({ "count": count })).await.unwrap();
    common::wait_within(&format!("{running} of {workload} to run"), std::time::Duration::from_secs(60), || async {
        let list = instances(api, workload).await;
        (list.iter().filter(|i| i["state"] == "running").count() == running).then_some(())
    })
    .await;
}

/// The scheduler's warnings that a launcher refused work it placed (`full_cn`).
fn refusals(cluster: &Cluster) -> Vec<String> {
    let log = cluster.scheduler.log_text();
    log.lines().filter(|l| l.contains("for want of room")).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_memory_overcommit_twice_a_nodes_memory_runs_and_no_launcher_refuses_it() {
    let cluster = Cluster::start_with(&["--mem-overcommit", "2"], &[&["--backend", "sim"]]);
    cluster.wait_ready(1).await;
    let api = cluster.admin();
    let total = node_memory(&api).await;
    // Eight instances of just under a quarter of the node (in whole 32 MiB chunks, as memory is
    // charged): twice its memory in all.
    let each = (total / 4 - 1) / 32 * 32;
    create_workload(&api, &sim_workload("big", each, 0)).await;
    launch_and_wait(&api, "big", 8, 8).await;
    assert!(8 * each > total, "the test asks for more than the node has");
    assert!(refusals(&cluster).is_empty(), "a launcher refused placed work: {:?}", refusals(&cluster));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_estimates_on_work_requesting_three_times_a_node_runs_once_usage_is_seen() {
    let cluster = Cluster::start_with(&["--estimate", "on", "--heartbeat"], &[&["--backend", "sim"]]);
    cluster.wait_ready(1).await;
    let api = cluster.admin();
    let total = node_memory(&api).await;
    // Each asks for half the node and uses almost nothing.
    let each = total / 2;
    create_workload(&api, &sim_workload("frugal", each, 8)).await;
    launch_and_wait(&api, "frugal", 1, 1).await;
    // Its STATS teach the scheduler what the workload really uses; the next five are charged
    // that estimate, on the scheduler and on the launcher alike.
    // Placed instances keep their charge, so the estimate must have come down before the rest
    // is placed: after 3 samples it closes a quarter of the gap per sample, and the node
    // reports every 500 ms; 10 s of samples bring it well under the tenth of the node that
    // five more need.
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    launch_and_wait(&api, "frugal", 5, 6).await;
    assert!(refusals(&cluster).is_empty(), "a launcher refused placed work: {:?}", refusals(&cluster));
    let reclaimed = common::wait_for("the heartbeat to show reclaimed memory", || async {
        let log = cluster.scheduler.log_text();
        let last = log.lines().rev().find(|l| l.contains("reclaimed"))?;
        let mib: u64 = last.split("reclaimed ").nth(1)?.split(' ').next()?.parse().ok()?;
        (mib > 0).then_some(mib)
    })
    .await;
    assert!(reclaimed >= each, "five instances charged below their {each} MiB request: {reclaimed} MiB reclaimed");
}

/// Runs `script` as a one-off workload of `api`'s tenant and returns its output once it ended.
async fn output_of(api: &drover_cli::client::ApiClient, name: &str, script: &str) -> String {
    let toml = format!(
        "name = \"{name}\"\nsize = \"tiny\"\n[backend]\ntype = \"process\"\nargv = [\"/bin/sh\", \"-c\", {script:?}]\n[restart]\npolicy = \"never\"\n"
    );
    create_workload(api, &toml).await;
    let id = launch_one(api, name).await;
    instance_when(api, &id, "the workload to end", PATIENCE, |i| i["state"] == "exited" || i["state"] == "failed")
        .await;
    api.get(&format!("/v1/instances/{id}/logs")).await.unwrap()["data"].as_str().unwrap().to_owned()
}

/// Through the API and the real daemons (launcher as root, its default `--run-as auto`): each
/// tenant's workloads run as an unprivileged user of the tenant's own, and one tenant cannot
/// read what another's workload left in its results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenants_workloads_run_as_its_own_unprivileged_user() {
    if !testutil::is_root() {
        testutil::skip("root", "each_tenants_workloads_run_as_its_own_unprivileged_user", "needs root to switch users");
        return;
    }
    let cluster = Cluster::start(&[&[]]);
    cluster.wait_ready(1).await;
    let acme = common::api_client(&cluster.pki, &cluster.api_addr, Some("acme"));
    let globex = common::api_client(&cluster.pki, &cluster.api_addr, Some("globex"));
    let mine = output_of(&acme, "keeper", "echo uid=$(id -u); echo acme-secret > secret; echo dir=$PWD").await;
    let uid = |out: &str| -> u32 {
        out.lines()
            .find_map(|l| l.strip_prefix("uid="))
            .and_then(|u| u.trim().parse().ok())
            .unwrap_or_else(|| panic!("{out}"))
    };
    let acme_uid = uid(&mine);
    assert_ne!(acme_uid, 0, "not root: {mine}");
    let acme_dir = mine.lines().find_map(|l| l.strip_prefix("dir=")).unwrap().trim().to_owned();
    let theirs =
        output_of(&globex, "snoop", &format!("echo uid=$(id -u); cat {acme_dir}/secret || echo refused")).await;
    let globex_uid = uid(&theirs);
    assert!(globex_uid != 0 && globex_uid != acme_uid, "a user of its own: {theirs}");
    assert!(theirs.contains("refused") && !theirs.contains("acme-secret"), "{theirs}");
    // The same tenant gets the same user again.
    let again = output_of(&acme, "again", "echo uid=$(id -u)").await;
    assert_eq!(uid(&again), acme_uid);
}

/// Work no node could ever take (more vCPUs than any node has, a backend nobody offers) fails
/// at once with the reason, instead of waiting out the queue timeout; `show` has its exit code
/// when a run failed with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_that_can_never_fit_fails_at_once_and_says_why() {
    let cluster = Cluster::start(&[&[]]);
    cluster.wait_ready(1).await;
    let api = cluster.admin();
    create_workload(&api, "name = \"huge\"\n[resources]\nvcpus = 4096\nmem_mb = 64\n[backend]\ntype = \"process\"\nargv = [\"/bin/true\"]\n")
        .await;
    create_workload(
        &api,
        "name = \"boxed\"\nsize = \"tiny\"\n[backend]\ntype = \"oci\"\nrootfs = \"/nowhere\"\nargs = [\"true\"]\n",
    )
    .await;
    for (name, words) in [("huge", "insufficient vCPUs"), ("boxed", "backend oci not offered")] {
        let id = launch_one(&api, name).await;
        let done = instance_when(&api, &id, "it to fail", PATIENCE, |v| v["state"] == "failed").await;
        let why = done["why"].as_str().unwrap();
        assert!(why.contains("could ever fit") && why.contains(words), "{done}");
        assert_eq!(done["restarts"], 0, "nothing to retry: {done}");
    }
}

/// A node whose load is above the scheduler's threshold is READY by its own account but takes
/// no work: `node ls` says `loaded`, and queued work says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_node_shows_as_loaded_and_queued_work_says_why() {
    let cluster = Cluster::start_with(&["--load-threshold", "0"], &[&[]]);
    cluster.wait_ready(1).await;
    // Some load, so the 1-minute average is above 0 whatever else the machine does.
    struct Busy(std::process::Child);
    impl Drop for Busy {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _busy = Busy(std::process::Command::new("/bin/sh").args(["-c", "while :; do :; done"]).spawn().unwrap());
    let api = cluster.admin();
    common::wait_within("the node to show as loaded", std::time::Duration::from_secs(30), || async {
        let nodes = api.get("/v1/nodes").await.ok()?;
        (nodes[0]["load_blocked"] == true).then_some(())
    })
    .await;
    let table = String::from_utf8_lossy(&cluster.cli(&["node", "ls"]).stdout).into_owned();
    create_workload(
        &api,
        "name = \"patient\"\nsize = \"tiny\"\n[backend]\ntype = \"process\"\nargv = [\"/bin/true\"]\n",
    )
    .await;
    let id = launch_one(&api, "patient").await;
    let queued = instance_when(&api, &id, "it to queue", PATIENCE, |v| v["state"] == "queued").await;
    assert!(table.contains("loaded"), "{table}");
    assert!(queued["why"].as_str().unwrap().contains("load above threshold"), "{queued}");
}

/// `drover events -f` reads the API's event stream; when the controller restarts it connects
/// again and resumes after the last event it printed: nothing missed, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_goes_on_across_a_controller_restart_without_gaps_or_repeats() {
    let mut cluster = Cluster::start(&[&["--backend", "sim"]]);
    cluster.wait_ready(1).await;
    let api = cluster.admin();
    create_workload(&api, common::SIM_WORKLOAD).await;
    let mut follower = std::process::Command::new(common::bin("drover"))
        .args(["--api", &cluster.api_addr, "--cacert"])
        .arg(cluster.pki.ca())
        .arg("--cert")
        .arg(cluster.pki.cert("user-admin"))
        .args(["--json", "events", "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).unwrap_or(Value::String(line)));
        }
    });
    let mut seen: Vec<Value> = Vec::new();
    let mut until =
        async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>, what: &str, done: &dyn Fn(&Value) -> bool| {
            let limit = tokio::time::Instant::now() + PATIENCE;
            loop {
                let e = tokio::time::timeout_at(limit, rx.recv())
                    .await
                    .unwrap_or_else(|_| panic!("{what}: not printed by events -f; printed {seen:#?}"))
                    .expect("events -f ended");
                let hit = done(&e);
                seen.push(e);
                if hit {
                    return;
                }
            }
        };
    let first = launch_one(&api, "sim").await;
    until(&mut rx, "the first instance running", &|e| e["instance"] == first.as_str() && e["to"] == "running").await;

    cluster.controller.terminate();
    cluster.restart_controller();
    cluster.wait_ready(1).await;
    let second = launch_one(&api, "sim").await;
    until(&mut rx, "the second instance running", &|e| e["instance"] == second.as_str() && e["to"] == "running").await;
    let _ = follower.kill();
    let _ = follower.wait();

    let revisions: Vec<u64> = seen.iter().map(|e| e["revision"].as_u64().expect("an event with a revision")).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "in order, none twice: {revisions:?}");
    let all = common::all_events(&api).await;
    let upto: Vec<u64> =
        all.iter().filter_map(|e| e["revision"].as_u64()).filter(|r| *r <= *revisions.last().unwrap()).collect();
    assert_eq!(revisions, upto, "every event up to the last printed, across the restart");
}
