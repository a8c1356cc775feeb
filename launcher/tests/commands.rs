//! The launcher against a fake scheduler: admission refusals with their reasons, reports after
//! every change, EVACUATE and RESTORE (persisted across a restart), and what SIGTERM does with
//! and without `--drain-on-exit`.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

mod common;

use common::{alive, reported, wait_for, Launcher};

use ssntp::payload::{Backend, Evacuate, FailureReason, InstanceState, Message, Requirements, Restore, Start};
use ssntp::server::{Peer, ServerEvent};
use ssntp::Uuid;
use testutil::TestServer;

fn sleeper(id: Uuid, mem_mb: u64) -> Start {
    let backend = Backend::Process {
        argv: vec!["/bin/sh".into(), "-c".into(), "echo up; sleep 60".into()],
        env: Default::default(),
    };
    Start::new(id, Requirements { vcpus: 1, mem_mb, ..Default::default() }, backend)
}

async fn refusal(server: &mut TestServer, instance: Uuid) -> (FailureReason, String) {
    wait_for(server, "START_FAILURE", |e| match e {
        ServerEvent::Message { message: Message::StartFailure(f), .. } if f.instance_uuid == instance => {
            Some((f.reason, f.detail))
        }
        _ => None,
    })
    .await
}

async fn status(server: &mut TestServer, want: &str) {
    wait_for(server, want, |e| match (&e, want) {
        (ServerEvent::Message { message: Message::Ready(_), .. }, "READY")
        | (ServerEvent::Message { message: Message::Maintenance(Some(_)), .. }, "MAINTENANCE") => Some(()),
        _ => None,
    })
    .await;
}

async fn connect(server: &mut TestServer) -> Peer {
    wait_for(server, "launcher connect", |e| if let ServerEvent::Connected(p) = e { Some(p) } else { None }).await
}

async fn started(server: &mut TestServer, instance: Uuid) {
    reported(server, "news of the start", instance, |s| s.state == InstanceState::Active).await;
}

#[tokio::test]
async fn admission_evacuation_restore_and_sigterm() {
    let (pki, mut server, work) = common::rig().await;
    let state = &work.state;
    let launcher = Launcher::new(&pki, &server, &work);
    let mut child = launcher.spawn();
    let peer = connect(&mut server).await;
    status(&mut server, "READY").await;

    // Admission.
    let a = Uuid::new_v4();
    peer.sender.try_send(&Message::Start(sleeper(a, 32))).unwrap();
    started(&mut server, a).await;
    // A digest on request lists it.
    peer.sender.try_send(&Message::ReportRequest(Default::default())).unwrap();
    wait_for(&mut server, "a digest listing the new instance", |e| match e {
        ServerEvent::Message { message: Message::Stats(s), .. } if s.digest.is_some() => {
            s.instances.iter().any(|i| i.instance_uuid == a && i.state == InstanceState::Active).then_some(())
        }
        _ => None,
    })
    .await;
    peer.sender.try_send(&Message::Start(sleeper(a, 32))).unwrap();
    assert_eq!(refusal(&mut server, a).await.0, FailureReason::AlreadyRunning);
    let huge = Uuid::new_v4();
    peer.sender.try_send(&Message::Start(sleeper(huge, 100_000_000))).unwrap();
    let (reason, detail) = refusal(&mut server, huge).await;
    assert_eq!(reason, FailureReason::FullCn);
    assert!(detail.contains("memory"), "{detail}");
    let oci = Uuid::new_v4();
    let backend = Backend::Oci {
        rootfs: "/nowhere".into(),
        args: vec!["true".into()],
        env: Default::default(),
        writable_root: false,
        volumes: vec![],
        network: Default::default(),
    };
    peer.sender.try_send(&Message::Start(Start::new(oci, Requirements::default(), backend))).unwrap();
    assert_eq!(refusal(&mut server, oci).await.0, FailureReason::UnknownBackend);

    // EVACUATE: instances stopped and reported, MAINTENANCE, new work refused.
    peer.sender
        .try_send(&Message::Evacuate(Evacuate {
            workload_agent_uuid: peer.uuid,
            deadline_ms: Some(2000),
            drain_ms: None,
        }))
        .unwrap();
    reported(&mut server, "news of the stop", a, |s| s.state == InstanceState::Stopped).await;
    status(&mut server, "MAINTENANCE").await;
    let b = Uuid::new_v4();
    peer.sender.try_send(&Message::Start(sleeper(b, 32))).unwrap();
    assert_eq!(refusal(&mut server, b).await.0, FailureReason::NodeMaintenance);

    // Maintenance survives a launcher restart.
    child.kill();
    child = launcher.spawn();
    let peer = connect(&mut server).await;
    status(&mut server, "MAINTENANCE").await;

    // RESTORE: READY again, work taken.
    peer.sender.try_send(&Message::Restore(Restore { workload_agent_uuid: peer.uuid })).unwrap();
    status(&mut server, "READY").await;
    let c = Uuid::new_v4();
    peer.sender.try_send(&Message::Start(sleeper(c, 32))).unwrap();
    started(&mut server, c).await;
    let pid_of = |id: Uuid| -> i32 {
        std::fs::read_to_string(state.join("instances").join(id.to_string()).join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let c_pid = pid_of(c);

    // SIGTERM: MAINTENANCE, exit, the workload keeps running.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    status(&mut server, "MAINTENANCE").await;
    assert!(child.wait().success(), "clean exit on SIGTERM");
    assert!(alive(c_pid), "the workload outlives a SIGTERMed launcher");

    // With --drain-on-exit, SIGTERM stops the workloads first.
    let draining = Launcher { extra: vec!["--drain-on-exit".into()], ..launcher };
    let mut child = draining.spawn();
    connect(&mut server).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    reported(&mut server, "news of the stop on drain", c, |s| s.state == InstanceState::Stopped).await;
    assert!(child.wait().success());
    testutil::assert_eventually!(|| async { !alive(c_pid) });
    server.stop().await;
}
