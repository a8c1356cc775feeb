//! `drover plan` on a real cluster (scheduler, controller, two sim launchers): where instances
//! would go, the counted reasons when they would not, what would help, and exit statuses 0, 1
//! and 2 as `nomad job plan` has them. Nothing is ever created.

#![allow(clippy::disallowed_methods)] // tests wait with the real clock

mod common;

use common::Cluster;
use serde_json::Value;

fn plan(cluster: &Cluster, args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["--json", "plan"];
    all.extend_from_slice(args);
    let out = cluster.cli(&all);
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_says_where_work_would_go_or_why_not_and_creates_nothing() {
    let cluster =
        Cluster::start(&[&["--backend", "sim", "--label", "zone=a"], &["--backend", "sim", "--label", "zone=b"]]);
    cluster.wait_ready(2).await;
    let api = cluster.admin();
    let file = |name: &str, body: &str| {
        let path = cluster.work.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.display().to_string()
    };
    let small = file(
        "small.toml",
        "name = \"small\"\n[resources]\nmem_mb = 64\nvcpus = 1\n[backend]\ntype = \"sim\"\nduration_ms = 60000\n",
    );

    // Fits: every instance placed, spread over both nodes.
    let (code, fits, err) = plan(&cluster, &[&small, "-n", "4"]);
    assert_eq!(code, 0, "{fits} {err}");
    assert_eq!(
        (fits["fits"].as_bool(), fits["count"].as_u64(), fits["unplaced"].as_u64()),
        (Some(true), Some(4), Some(0))
    );
    let placed = fits["placed"].as_array().unwrap();
    assert_eq!(placed.len(), 2, "spread over both nodes: {fits}");
    assert_eq!(placed.iter().map(|p| p["count"].as_u64().unwrap()).sum::<u64>(), 4);
    assert_eq!(fits["explanation"], "2 of 2 nodes fit");

    // A requirement one node lacks: counted, and the advice names the flag.
    let zoned = file(
        "zoned.toml",
        "name = \"zoned\"\n[resources]\nmem_mb = 64\nvcpus = 1\n[requirements]\nlabels = { zone = \"c\" }\n[backend]\ntype = \"sim\"\nduration_ms = 60000\n",
    );
    let (code, zoned_plan, err) = plan(&cluster, &[&zoned, "-n", "2"]);
    assert_eq!(code, 1, "{zoned_plan} {err}");
    assert_eq!(zoned_plan["explanation"], "0 of 2 nodes fit: 2 missing labels (zone=c)");
    assert!(zoned_plan["never"].as_str().is_some_and(|n| n.contains("could ever fit")), "{zoned_plan}");
    let advice = zoned_plan["advice"].to_string();
    assert!(advice.contains("--label zone=c"), "{advice}");

    // Too big for any node, even empty.
    let huge = file(
        "huge.toml",
        "name = \"huge\"\n[resources]\nmem_mb = 100000000\nvcpus = 1\n[backend]\ntype = \"sim\"\nduration_ms = 1\n",
    );
    let (code, huge_plan, _) = plan(&cluster, &[&huge]);
    assert_eq!(code, 1);
    assert!(huge_plan["never"].as_str().unwrap().contains("2 insufficient memory"), "{huge_plan}");

    // People read it as a table with the reason and what would help.
    let out = cluster.cli(&["plan", &zoned]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("zoned × 1: would fail at once") && text.contains("what would help:"), "{text}");
    let out = cluster.cli(&["plan", &small, "-n", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("small × 2: all would start now") && text.contains("NODE"), "{text}");

    // A saved workload by name; then errors are exit 2.
    let out = cluster.cli(&["workload", "create", &small]);
    assert!(out.status.success());
    let (code, saved, err) = plan(&cluster, &["small", "-n", "3"]);
    assert_eq!((code, saved["fits"].as_bool()), (0, Some(true)), "{saved} {err}");
    let (code, _, err) = plan(&cluster, &["nosuch"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("workload nosuch not found"), "{err}");
    let broken = file("broken.toml", "name = \"broken\"\n[resources]\nmem_mb = \"lots\"\n");
    let (code, _, err) = plan(&cluster, &[&broken]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("broken.toml") && err.contains("mem_mb"), "{err}");

    // Nothing was created by any of it.
    let instances = api.get("/v1/instances").await.unwrap();
    assert_eq!(instances.as_array().map(Vec::len), Some(0), "{instances}");
    let workloads = api.get("/v1/workloads").await.unwrap();
    assert_eq!(workloads.as_array().map(Vec::len), Some(1), "only the one saved: {workloads}");
}
