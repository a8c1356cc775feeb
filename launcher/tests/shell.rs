//! The launcher's shell and core against a fake scheduler with a fake executor (no processes):
//! a START runs and is reported, a STOP ends it as a stop, a refused run is answered with its
//! reason, a log request is answered from the executor, and the reports list what runs.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

mod common;

use clap::Parser as _;
use common::{reported, wait_for};
use drover_launcher::cli::Args;
use drover_launcher::shell::{self, Executing};
use ssntp::payload::{Backend, FailureReason, InstanceState, LogFetch, Message, Requirements, Start, Stop};
use ssntp::server::ServerEvent;
use ssntp::Uuid;
use testutil::executor::{Call, FakeExecutor};
use testutil::{Pki, TestServer};

fn start(id: Uuid, program: &str) -> Start {
    let backend = Backend::Process { argv: vec![program.into()], env: Default::default() };
    Start::new(id, Requirements { vcpus: 1, mem_mb: 16, ..Default::default() }, backend)
}

#[tokio::test]
async fn the_shell_carries_out_what_the_core_decides_through_its_executor() {
    let pki = Pki::new();
    let mut server = TestServer::start(&pki).await;
    let state = tempfile::tempdir().unwrap();
    let args = Args::parse_from([
        "drover-launcher",
        "--server",
        &server.addr.to_string(),
        "--state-dir",
        state.path().to_str().unwrap(),
        "--report-interval",
        "200ms",
        "--cacert",
        pki.ca().to_str().unwrap(),
        "--cert",
        pki.cert("agent").to_str().unwrap(),
        "--key",
        pki.key("agent").to_str().unwrap(),
    ]);
    let prepared = shell::prepare(args).unwrap();
    let (fake, events) = FakeExecutor::new();
    let executing = Executing { executor: Box::new(fake.clone()), events, adopted: Vec::new(), limits_feature: None };
    let (stop_launcher, stopped) = tokio::sync::oneshot::channel::<()>();
    let launcher = tokio::spawn(shell::run_with(prepared, executing, async {
        let _ = stopped.await;
    }));

    let peer =
        wait_for(&mut server, "launcher connect", |e| if let ServerEvent::Connected(p) = e { Some(p) } else { None })
            .await;
    wait_for(&mut server, "READY", |e| {
        matches!(e, ServerEvent::Message { message: Message::Ready(_), .. }).then_some(())
    })
    .await;

    let (runs, refused) = (Uuid::new_v4(), Uuid::new_v4());
    peer.sender.try_send(&Message::Start(start(runs, "/bin/true"))).unwrap();
    reported(&mut server, "news of the start", runs, |s| s.state == InstanceState::Active).await;

    peer.sender.try_send(&Message::Start(start(refused, "/refuse"))).unwrap();
    let failure = wait_for(&mut server, "START_FAILURE", |e| match e {
        ServerEvent::Message { message: Message::StartFailure(f), .. } if f.instance_uuid == refused => Some(f),
        _ => None,
    })
    .await;
    assert_eq!(failure.reason, FailureReason::LaunchFailure);

    let fetch = LogFetch { instance_uuid: runs, workload_agent_uuid: peer.uuid, max_bytes: 100, request_id: 7 };
    peer.sender.try_send(&Message::LogFetch(fetch)).unwrap();
    let log = wait_for(&mut server, "LOG_DATA", |e| match e {
        ServerEvent::Message { message: Message::LogData(d), .. } if d.request_id == 7 => Some(d),
        _ => None,
    })
    .await;
    assert_eq!(log.data, format!("output of {runs}\n"));

    let stop = Stop { instance_uuid: runs, workload_agent_uuid: peer.uuid, grace_ms: None };
    peer.sender.try_send(&Message::Stop(stop)).unwrap();
    reported(&mut server, "news of the stop", runs, |s| s.state == InstanceState::Stopped).await;
    assert_eq!(fake.calls(), vec![Call::Run(runs), Call::Stop(runs)], "the refused run never reached it");

    let _ = stop_launcher.send(());
    launcher.await.unwrap().unwrap();
}
