//! Schemathesis (from PyPI) against a live cluster: a scheduler, a controller and two launchers
//! (a process one and a simulated one) as real processes, with a workload and running instances
//! in the store. Schemathesis reads `GET /v1/openapi.json` and sends what it generates from it,
//! with an admin client certificate; no answer may be a 5xx, and every answer must match the
//! document (status, content type, headers, body schema).
//!
//! `.ci/run` installs Schemathesis into `target/schemathesis` and requires the feature
//! `schemathesis`; elsewhere the test looks there, then at `DROVER_SCHEMATHESIS`, then on `PATH`.

#![allow(clippy::disallowed_methods)] // tests wait with the real clock

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{create_workload, instance_when, launch_one, Cluster};

const TEST: &str = "schemathesis::the_api_answers_what_schemathesis_generates_as_its_document_says";

/// The checks that say "no 5xx, and every answer matches the document".
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_schema_conformance,response_headers_conformance";

fn schemathesis() -> Option<PathBuf> {
    let in_target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/schemathesis/bin/st");
    let from_env = std::env::var_os("DROVER_SCHEMATHESIS").map(PathBuf::from);
    let on_path =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("st")).find(|p| p.is_file()));
    [Some(in_target), from_env, on_path].into_iter().flatten().find(|p| p.is_file())
}

/// The run's settings. The long poll and the event stream wait by design (up to a minute for
/// an event that never comes, or for ever), so what they wait for is pinned to something that
/// is there (the long poll answers at once; the stream starts at the first of admin's events,
/// and Schemathesis reads one). Launches and batches are of two instances: a generated count
/// of up to 100,000 turned the run into a load test of a two-node cluster, in which a plan
/// waited behind the launch's STARTs on the controller's one link to the scheduler and got
/// 503 after 5 s (the bounds of `count` are checked in `openapi.rs` and `api.rs`). Every other
/// parameter is generated.
const CONFIG: &str = r#"
[[operations]]
include-name = "GET /v1/events"
parameters = { "query.wait_ms" = 0 }

[[operations]]
include-name = "GET /v1/events/stream"
parameters = { "query.after" = 0, "header.last-event-id" = "0", "header.x-drover-tenant" = "admin" }
max-stream-events = 1

[[operations]]
include-name = "POST /v1/batch"
parameters = { "body.wait_ms" = 0, "body.count" = 2 }

[[operations]]
include-name = "POST /v1/workloads/{name}/launch"
parameters = { "body.count" = 2 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_what_schemathesis_generates_as_its_document_says() {
    let Some(st) = schemathesis() else {
        testutil::skip(
            "schemathesis",
            TEST,
            "no Schemathesis (python3 -m venv target/schemathesis && target/schemathesis/bin/pip install schemathesis)",
        );
        return;
    };
    // Schemathesis calls as fast as it can from one certificate: the rate limit is raised so
    // that what is tested is the routes, not the limiter (whose 429 the document declares).
    let cluster =
        Cluster::start_custom(&[], &[&[], &["--backend", "sim", "--label", "zone=b"]], |work, pki, sched, api| {
            Cluster::spawn_controller_with(work, pki, sched, api, &["--api-rate", "100000", "--api-burst", "100000"])
        });
    cluster.wait_ready(2).await;
    let api = cluster.admin();
    create_workload(&api, common::SIM_WORKLOAD).await;
    let running = launch_one(&api, "sim").await;
    instance_when(&api, &running, "running", common::PATIENCE, |i| i["state"] == "running").await;

    // The document the controller serves is the one the tests check docs/api.md against.
    let served = api.get("/v1/openapi.json").await.unwrap();
    assert_eq!(served, serde_json::to_value(drover_controller::api::openapi()).unwrap());

    let dir = cluster.work.path().join("schemathesis");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("schemathesis.toml"), CONFIG).unwrap();
    let output = Command::new(&st)
        .current_dir(&dir)
        .env("HOME", &dir) // its cache and Hypothesis' database stay in the test's directory
        .args(["--config-file", "schemathesis.toml", "run"])
        .arg(format!("https://{}/v1/openapi.json", cluster.api_addr))
        .arg("--request-cert")
        .arg(cluster.pki.cert("user-admin"))
        .arg("--request-cert-key")
        .arg(cluster.pki.key("user-admin"))
        .arg("--tls-verify")
        .arg(cluster.pki.ca())
        .args(["--checks", CHECKS, "--max-examples", "40", "--seed", "1", "--request-timeout", "20"])
        .args(["--no-color", "--suppress-health-check", "all"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    eprintln!("{text}");
    assert!(output.status.success(), "Schemathesis found failures (above)");
    let requests = requests_sent(&text);
    assert!(requests >= 500, "Schemathesis sent {requests} requests; expected hundreds:\n{text}");
    // The cluster is still whole after the run.
    let status = api.get("/v1/status").await.unwrap();
    assert_eq!(status["scheduler"]["connected"], true, "{status}");
}

/// The number of test cases Schemathesis reports ("Test cases:", then "1932 generated, …").
fn requests_sent(text: &str) -> u64 {
    let mut lines = text.lines().skip_while(|l| l.trim() != "Test cases:").skip(1);
    lines.next().and_then(|l| l.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}
