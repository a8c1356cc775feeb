//! sd-taskpacker's task model end to end (real scheduler, controller and launcher; process
//! backend): task files loaded from `--units`, a root task started with the controller that
//! asks for two children with the credential in its environment (listed as `build/graph`),
//! parameters checked against the schema and passed as arguments or `parameters.json`, a
//! root's state directory, decommissioning, and batch answers and events with the slots left
//! per size class.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

mod common;

use common::{bin, instance_when, wait_for, Cluster, PATIENCE};
use serde_json::{json, Value};

/// The root's credential as its node was given it (in its START's environment).
fn root_token(launcher_state: &std::path::Path, root: &str) -> String {
    let dir = launcher_state.join("instances").join(format!("build@1.0.{root}"));
    let state: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    state["start"]["backend"]["env"]["DROVER_TASK_TOKEN"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_task_asks_for_children_and_is_decommissioned() {
    let drover = bin("drover");
    let cluster = Cluster::start_custom(&[], &[&["--max-instances", "4"]], |work, pki, sched, api| {
        let units = work.join("units");
        std::fs::create_dir_all(&units).unwrap();
        std::fs::write(
            units.join("build.workorder"),
            format!(
                "# the root: asks for two graphs, keeps a line per run in its state directory\n\
                 [Workorder]\n\
                 Exec=/bin/sh -c '\"$DROVER\" task spawn graph -p target=/usr/bin/systemd && \\\n\
                   \"$DROVER\" task spawn graph -p target=/usr/bin/gnome-shell && \\\n\
                   echo run >> \"$DROVER_STATE_DIR/runs\" && sleep 120'\n\
                 Environment=DROVER={}\n\
                 Version=1.0\n\
                 Size=tiny\n\
                 Root=yes\n",
                drover.display()
            ),
        )
        .unwrap();
        std::fs::write(
            units.join("graph.batch"),
            "[Batch]\nExec=/bin/sh -c 'echo graph of \"$1\"; sleep 60' graph\nSize=tiny\nPriority=5\n\
             Parameters=target=/usr/bin/gnome-shell|/usr/bin/systemd\n",
        )
        .unwrap();
        std::fs::write(
            units.join("probe.batch"),
            "[Batch]\nExec=/bin/cat parameters.json\nSize=tiny\nParameters=runs=int mode=fast|slow\nParametersAs=json\n",
        )
        .unwrap();
        std::fs::write(units.join("broken.batch"), "[Batch]\nExec=/bin/true\nSize=enormous\n").unwrap();
        Cluster::spawn_controller(work, pki, sched, api)
    });
    // (Not `wait_ready`: the root and its children fill the node at once, which is then full.)
    let api = cluster.admin();

    // The task files are workloads; the broken one is refused with its line, the rest load.
    let workloads = wait_for("the API", || async { api.get("/v1/workloads").await.ok() }).await;
    let names: Vec<&str> = workloads.as_array().unwrap().iter().filter_map(|w| w["name"].as_str()).collect();
    assert!(names.contains(&"build") && names.contains(&"graph") && !names.contains(&"broken"), "{workloads}");
    let log = cluster.controller.log_text();
    assert!(log.contains("broken.batch:3") && log.contains("Size=enormous"), "{log}");

    // The root started with the controller and asked for two children.
    let tasks = wait_for("the root and its two children", || async {
        let tasks = api.get("/v1/tasks").await.ok()?;
        let running = tasks.as_array()?.iter().filter(|t| t["state"] == "running").count();
        (running == 3).then_some(tasks)
    })
    .await;
    let list = tasks.as_array().unwrap();
    assert_eq!(list[0]["name"], "build", "{tasks}");
    let root = list[0]["uuid"].as_str().unwrap().to_owned();
    assert!(list[0]["parent"].is_null() && list[0]["root"] == root.as_str(), "{tasks}");
    for child in &list[1..] {
        assert_eq!(
            (&child["name"], &child["parent"], &child["root"]),
            (&json!("build/graph"), &json!(root), &json!(root))
        );
    }
    let targets: Vec<&str> = list[1..].iter().map(|c| c["params"]["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["/usr/bin/systemd", "/usr/bin/gnome-shell"], "{tasks}");
    let out = cluster.cli(&["task", "ls"]);
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        tree.lines().nth(1).unwrap().starts_with("build ") && tree.lines().nth(2).unwrap().starts_with("  └ graph"),
        "{tree}"
    );
    // Parameters came as arguments; the working directory is named after task and version.
    let child = list[1]["uuid"].as_str().unwrap();
    let log = instance_when(&api, child, "the child's output", PATIENCE, |_| true).await;
    assert_eq!(log["state"], "running");
    let state = cluster.work.path().join("launcher0");
    wait_for("the child's output", || async {
        let out = api.get(&format!("/v1/instances/{child}/logs")).await.ok()?;
        (out["data"] == "graph of --target=/usr/bin/systemd\n").then_some(())
    })
    .await;
    assert!(state.join("instances").join(format!("build@1.0.{root}")).join("results/output.txt").exists());
    // The root's state directory, kept across runs, is its user's alone.
    let runs = state.join("roots/admin/build/runs");
    wait_for("the root's state directory", || async { std::fs::read_to_string(&runs).ok().filter(|t| t == "run\n") })
        .await;

    // A value outside the schema is refused, naming the key and the allowed values.
    let out = cluster.cli(&["run", "graph", "-p", "target=/bin/bash"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("target") && err.contains("/usr/bin/gnome-shell, /usr/bin/systemd"), "{err}");
    let out = cluster.cli(&["run", "graph", "-p", "colour=red"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("colour: unknown (this task takes target)"));
    // Typed and written to parameters.json when the task says so.
    let out = cluster.cli(&["--json", "run", "probe", "-p", "runs=3", "-p", "mode=fast", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    let probe = done[0]["uuid"].as_str().unwrap();
    let logs = api.get(&format!("/v1/instances/{probe}/logs")).await.unwrap();
    let written: Value = serde_json::from_str(logs["data"].as_str().unwrap()).unwrap();
    assert_eq!(written, json!({"mode": "fast", "runs": 3}));

    // The node runs four at most: of two more children of the root, one waits in the queue.
    let token = root_token(&state, &root);
    let spawn = |count: &str| {
        std::process::Command::new(&drover)
            .args(["--json", "task", "spawn", "graph", "-n", count, "-p", "target=/usr/bin/systemd"])
            .env("DROVER_API", format!("https://{}", cluster.api_addr))
            .env("DROVER_CA_PEM", std::fs::read_to_string(cluster.pki.ca()).unwrap())
            .env("DROVER_TASK_TOKEN", &token)
            .output()
            .unwrap()
    };
    let out = spawn("2");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let asked: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(asked["name"], "build/graph");
    let asked: Vec<String> =
        asked["instances"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_owned()).collect();
    let waiting = wait_for("one extra child queued, the other running", || async {
        let mut states = Vec::new();
        for id in &asked {
            states.push(api.get(&format!("/v1/instances/{id}")).await.ok()?["state"].as_str()?.to_owned());
        }
        match (states[0].as_str(), states[1].as_str()) {
            ("running", "queued") => Some(asked[1].clone()),
            ("queued", "running") => Some(asked[0].clone()),
            _ => None,
        }
    })
    .await;
    // A wrong credential opens nothing.
    let out = std::process::Command::new(&drover)
        .args(["task", "spawn", "graph"])
        .env("DROVER_API", format!("https://{}", cluster.api_addr))
        .env("DROVER_CA_PEM", std::fs::read_to_string(cluster.pki.ca()).unwrap())
        .env("DROVER_TASK_TOKEN", format!("{root}.0000"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));

    // Decommission: the queued one is canceled, the running ones finish, no new one runs.
    let out = cluster.cli(&["task", "decommission", &root[..8]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 queued task(s) canceled"));
    instance_when(&api, &waiting, "the queued child canceled", PATIENCE, |v| v["state"] == "canceled").await;
    let out = spawn("1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("decommissioned"), "{err}");
    let tasks = api.get("/v1/tasks").await.unwrap();
    let running = tasks.as_array().unwrap().iter().filter(|t| t["state"] == "running").count();
    assert_eq!(running, 4, "the running ones go on: {tasks}");
    assert_eq!(tasks[0]["decommissioned"], true);

    // Free the node, then a batch: per-instance answers with the slots left per size class,
    // and one batch_complete event per instance.
    for t in tasks.as_array().unwrap().iter().filter(|t| t["state"] == "running") {
        let out = cluster.cli(&["stop", t["uuid"].as_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    wait_for("the node to be free", || async {
        let tasks = api.get("/v1/tasks").await.ok()?;
        tasks.as_array()?.iter().all(|t| t["state"] != "running").then_some(())
    })
    .await;
    let answer =
        api.post("/v1/batch", &json!({"workload": "probe", "count": 2, "params": {"runs": "1"}})).await.unwrap();
    let slots = answer["slots_remaining"].as_object().unwrap();
    assert_eq!(slots.keys().collect::<Vec<_>>(), ["large", "medium", "small", "tiny"], "{answer}");
    assert!(slots["tiny"].as_u64().unwrap() >= slots["large"].as_u64().unwrap(), "{answer}");
    let batch = answer["batch"].as_str().unwrap().to_owned();
    let events = wait_for("a batch_complete event per instance", || async {
        let events = api.get("/v1/events?limit=10000").await.ok()?;
        let done: Vec<Value> = events["events"]
            .as_array()?
            .iter()
            .filter(|e| e["kind"] == "batch_complete" && e["batch"] == batch.as_str())
            .cloned()
            .collect();
        (done.len() == 2).then_some(done)
    })
    .await;
    for e in &events {
        assert!(e["slots"]["tiny"].is_u64() && e["params"]["runs"] == 1, "{e}");
    }
}
