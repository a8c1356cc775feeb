//! The real launcher's `--metrics`: after a workload ran and ended, its `/metrics` counts the
//! start and the end by reason, says it is connected, and runs nothing.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

mod common;

use common::{reported, wait_for, Launcher};
use ssntp::payload::{Backend, InstanceState, Message, Requirements, Start};
use ssntp::server::ServerEvent;
use ssntp::Uuid;

#[tokio::test]
async fn the_launcher_serves_what_ran_and_how_it_ended_as_prometheus_text() {
    let (pki, mut server, work) = common::rig().await;
    let port = testutil::process::free_port().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut launcher = Launcher::new(&pki, &server, &work);
    launcher.extra = vec!["--metrics".into(), addr.to_string(), "--cpu-score".into(), "1234".into()];
    let _running = launcher.spawn();
    let peer = wait_for(&mut server, "launcher connect", |e| match e {
        ServerEvent::Connected(p) => Some(p),
        _ => None,
    })
    .await;
    let id = Uuid::new_v4();
    let backend =
        Backend::Process { argv: vec!["/bin/sh".into(), "-c".into(), "exit 3".into()], env: Default::default() };
    let start = Start::new(id, Requirements { vcpus: 1, mem_mb: 32, ..Default::default() }, backend);
    peer.sender.try_send(&Message::Start(start)).unwrap();
    reported(&mut server, "the end", id, |s| s.state == InstanceState::Exited).await;
    let text = testutil::wait_for("the launcher's metrics", testutil::PATIENCE, || async {
        let text = testutil::process::scrape(addr).await.ok()?;
        text.contains("drover_launcher_ends_total{reason=\"failed\"} 1").then_some(text)
    })
    .await;
    assert!(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"), "{text}");
    for line in [
        "drover_launcher_starts_total 1",
        "drover_launcher_connected 1",
        "drover_launcher_instances_running 0",
        "drover_launcher_cpu_score 1234",
        "drover_launcher_draining 0",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    testutil::metrics::assert_documented(&text, "drover_launcher_");
}
