//! A network partition of one node: its launcher runs in a network namespace this test creates,
//! linked to the host by a veth pair; the partition takes the host's end of the link down, so
//! every packet between the node and the scheduler is dropped (no reset, no close), and healing
//! brings it back up. Needs root and iproute2; skipped with a printed reason where either is
//! missing.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{active_copies, all_instances, free_port, running, wait_within, Cluster, Proc, PARTITION_HOST_IP};
use hyper::Method;
use serde_json::json;
use testutil::process::ip;

const NODE_IP: &str = "10.213.77.2";

/// A network namespace and veth pair, removed on drop.
struct Link {
    ns: String,
    host_if: String,
}

impl Link {
    fn create() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let link = Self { ns: format!("drover-part-{id}"), host_if: format!("dvh{id}") };
        let node_if = format!("dvn{id}");
        ip(&["netns", "add", &link.ns])?;
        ip(&["link", "add", &link.host_if, "type", "veth", "peer", "name", &node_if])?;
        ip(&["link", "set", &node_if, "netns", &link.ns])?;
        ip(&["addr", "add", &format!("{PARTITION_HOST_IP}/30"), "dev", &link.host_if])?;
        ip(&["link", "set", &link.host_if, "up"])?;
        ip(&["-n", &link.ns, "addr", "add", &format!("{NODE_IP}/30"), "dev", &node_if])?;
        ip(&["-n", &link.ns, "link", "set", &node_if, "up"])?;
        ip(&["-n", &link.ns, "link", "set", "lo", "up"])?;
        Ok(link)
    }

    fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]).unwrap();
    }

    fn heal(&self) {
        ip(&["link", "set", &self.host_if, "up"]).unwrap();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_is_lost_its_work_runs_elsewhere_and_after_healing_stale_copies_stop() {
    let link = match Link::create() {
        Ok(link) => link,
        Err(e) => {
            let why = format!("cannot create a network namespace and veth pair (needs root and iproute2): {e}");
            testutil::skip("netns", "a_partitioned_node_is_lost_its_work_runs_elsewhere", &why);
            return;
        }
    };
    const COUNT: usize = 8;
    let listen = format!("0.0.0.0:{}", free_port());
    let sim: &[&str] = &["--backend", "sim", "--max-instances", "5000"];
    let fast_loss = [
        "--listen",
        &listen,
        "--node-ttl",
        "1s",
        "--node-grace",
        "1s",
        "--failover-grace",
        "0s",
        "--cpu-overcommit",
        "600",
    ];
    let mut cluster = Cluster::start_with(&fast_loss, &[sim, sim]);
    // The third launcher, in the namespace, dials the host's end of the veth.
    let port = listen.rsplit(':').next().unwrap();
    let state = cluster.work.path().join("launcher-netns");
    let mut args: Vec<String> = ["netns", "exec", &link.ns, common::bin("drover-launcher").to_str().unwrap()]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.extend(
        [
            "--server",
            &format!("{PARTITION_HOST_IP}:{port}"),
            "--state-dir",
            state.to_str().unwrap(),
            "--report-interval",
            "500ms",
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    args.extend(sim.iter().map(|s| (*s).to_owned()));
    args.extend(drover_cli::local::tls_args(&cluster.pki.paths("agent-local", false)));
    let log = cluster.work.path().join("logs").join("launcher-netns.log");
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
    let child = Command::new("ip")
        .args(&args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    cluster.launchers.push(Proc { child, log, name: "launcher-netns".into() });
    cluster.wait_ready(3).await;
    let node = std::fs::read_to_string(state.join("uuid-agent")).unwrap().trim().to_owned();

    let api = cluster.admin();
    let toml = "name = \"web\"\n[resources]\nmem_mb = 4\nvcpus = 1\n[backend]\ntype = \"sim\"\nduration_ms = 600000\n\
                [restart]\npolicy = \"on-failure\"\nattempts = 5\nbackoff = \"100ms\"\n";
    api.call(Method::POST, "/v1/workloads", Some(("application/toml", toml.as_bytes().to_vec()))).await.unwrap();
    api.post("/v1/workloads/web/launch", &json!({"count": COUNT})).await.unwrap();
    let list = wait_within("all running", Duration::from_secs(30), || async {
        let list = all_instances(&api).await;
        (running(&list) == COUNT).then_some(list)
    })
    .await;
    let cut_off: Vec<String> =
        list.iter().filter(|i| i["node"] == node.as_str()).map(|i| i["uuid"].as_str().unwrap().to_owned()).collect();
    assert!(!cut_off.is_empty(), "spread put work on the namespaced node");

    link.cut();
    let moved = wait_within("the cut-off node's work to run elsewhere", Duration::from_secs(30), || async {
        let list = all_instances(&api).await;
        (running(&list) == COUNT && list.iter().all(|i| i["node"] != node.as_str())).then_some(list)
    })
    .await;
    for i in &moved {
        let was_there = cut_off.iter().any(|u| u == i["uuid"].as_str().unwrap());
        assert_eq!(i["restarts"], u64::from(was_there), "only the cut-off node's instances restart: {i}");
    }
    assert!(cluster.scheduler.log_text().contains("declared lost"), "lost after TTL + grace");

    link.heal();
    // The healed node still runs its old copies; the controller stops them from its STATS.
    let c = wait_within("exactly one copy of each instance", Duration::from_secs(60), || async {
        // The node's last STATS from before the cut still list its copies, so this holds only
        // once it reports again after healing and its copies are stopped.
        let c = active_copies(&api).await?;
        (c.len() == COUNT && c.values().all(|n| n.len() == 1 && n[0] != node)).then_some(c)
    })
    .await;
    assert_eq!(c.len(), COUNT);
    let list = all_instances(&api).await;
    assert_eq!((list.len(), running(&list)), (COUNT, COUNT), "exactly the desired count");
    drop(cluster);
    drop(link);
}
