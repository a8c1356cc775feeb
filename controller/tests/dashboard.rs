//! The dashboard (`/ui`) on a real cluster (scheduler, controller, a process launcher and a sim
//! launcher with labels): each page shows the cluster's nodes, instances and workloads, with
//! the same certificates and tenant rules as the API; what workloads print is escaped.

#![allow(clippy::disallowed_methods)] // tests wait with the real clock

mod common;

use common::{api_client, create_workload, instance_when, launch_one, Cluster};
use hyper::{Method, StatusCode};

async fn page(api: &drover_cli::client::ApiClient, path: &str) -> (StatusCode, String) {
    let (status, body) = api.raw(Method::GET, path, None).await.unwrap();
    (status, body.as_str().map(str::to_owned).unwrap_or_else(|| body.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_within_the_callers_tenant() {
    let cluster = Cluster::start(&[&[], &["--backend", "sim", "--label", "zone=b"]]);
    cluster.wait_ready(2).await;
    let admin = cluster.admin();
    let acme = api_client(&cluster.pki, &cluster.api_addr, Some("acme"));
    let globex = api_client(&cluster.pki, &cluster.api_addr, Some("globex"));
    // Output with markup in it: the page must show it as text.
    create_workload(
        &acme,
        "name = \"shout\"\nsize = \"tiny\"\n[backend]\ntype = \"process\"\nargv = [\"/bin/sh\", \"-c\", \"echo '<b>loud</b>'; sleep 60\"]\n",
    )
    .await;
    create_workload(
        &globex,
        "name = \"quiet\"\n[resources]\nmem_mb = 4\nvcpus = 1\n[backend]\ntype = \"sim\"\nduration_ms = 60000\n",
    )
    .await;
    let shout = launch_one(&acme, "shout").await;
    let quiet = launch_one(&globex, "quiet").await;
    instance_when(&acme, &shout, "running", common::PATIENCE, |i| i["state"] == "running").await;
    instance_when(&globex, &quiet, "running", common::PATIENCE, |i| i["state"] == "running").await;

    let (status, overview) = page(&admin, "/ui").await;
    assert_eq!(status, StatusCode::OK, "{overview}");
    assert!(overview.contains("<!DOCTYPE html>") && overview.contains("/ui/static/htmx.min.js"), "{overview}");
    assert!(overview.contains("connected") && overview.contains("<svg"), "link state and the timeline: {overview}");

    // Nodes: both, with the sim node's label (from its READY, passed on by the scheduler).
    let nodes = common::wait_for("the nodes page to show the label", || async {
        let (_, text) = page(&admin, "/ui/nodes").await;
        text.contains("zone=b").then_some(text)
    })
    .await;
    assert_eq!(nodes.matches("<tr data-node=").count(), 2, "{nodes}");
    assert!(nodes.contains("class=\"bar"), "capacity bars: {nodes}");

    // Instances: admin sees both, a tenant only its own; ?tenant= stands in for the header.
    let (_, all) = page(&admin, "/ui/instances").await;
    assert!(all.contains(&shout[..8]) && all.contains(&quiet[..8]), "{all}");
    let (_, mine) = page(&acme, "/ui/instances").await;
    assert!(mine.contains(&shout[..8]) && !mine.contains(&quiet[..8]), "{mine}");
    let (_, filtered) = page(&admin, "/ui/instances?state=running&workload=quiet").await;
    assert!(filtered.contains(&quiet[..8]) && !filtered.contains(&shout[..8]), "{filtered}");
    let (_, chosen) = page(&admin, "/ui/instances?tenant=globex").await;
    assert!(chosen.contains(&quiet[..8]) && !chosen.contains(&shout[..8]), "{chosen}");
    assert!(chosen.contains("href=\"/ui/nodes?tenant=globex\""), "links keep the tenant: {chosen}");
    let (status, _) = page(&acme, "/ui/instances?tenant=globex").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = page(&acme, &format!("/ui/instances/{quiet}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another tenant's instance does not exist for acme");

    // One instance, and its output as text.
    let (status, detail) = page(&acme, &format!("/ui/instances/{shout}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(detail.contains("shout") && detail.contains(&format!("/ui/instances/{shout}/output")), "{detail}");
    let output = common::wait_for("the output", || async {
        let (_, text) = page(&acme, &format!("/ui/instances/{shout}/output")).await;
        text.contains("loud").then_some(text)
    })
    .await;
    assert!(output.contains("&lt;b&gt;loud&lt;/b&gt;") && !output.contains("<b>"), "escaped: {output}");

    // Workloads and events.
    let (_, workloads) = page(&admin, "/ui/workloads").await;
    assert!(workloads.contains("shout") && workloads.contains("quiet"), "{workloads}");
    let (_, events) = page(&acme, "/ui/events").await;
    assert!(events.contains("saved") && !events.contains("quiet"), "{events}");
    assert!(events.contains("/ui/static/events.js"), "the live list: {events}");

    // The same certificates as the API; the assets are compiled in.
    let anonymous = api_client(&cluster.pki, &cluster.api_addr, None);
    let (status, _) = page(&anonymous, "/ui").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, htmx) = page(&admin, "/ui/static/htmx.min.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(htmx.contains("htmx"), "{}", &htmx[..100.min(htmx.len())]);
}
