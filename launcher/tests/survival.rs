//! kill -9 of the launcher, ten times, while a workload runs: the workload survives with the same
//! PID, every restarted launcher re-adopts and reports it, its output is still captured, and
//! its exit code — even one that happened while no launcher ran — is reported. A corrupt state
//! file does not stop the launcher.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

mod common;

use std::time::Duration;

use common::{alive, reported, wait_for, Launcher};
use ssntp::payload::{Backend, InstanceState, Message, Requirements, Start};
use ssntp::server::ServerEvent;
use ssntp::Uuid;

#[tokio::test]
async fn workloads_survive_ten_launcher_kills_and_are_re_adopted() {
    let (pki, mut server, work) = common::rig().await;
    let (state, log) = (&work.state, &work.log);
    let launcher = Launcher::new(&pki, &server, &work);

    let mut child = launcher.spawn();
    let peer = wait_for(&mut server, "launcher connect", |e| match e {
        ServerEvent::Connected(p) => Some(p),
        _ => None,
    })
    .await;
    let node = peer.uuid;
    let instance = Uuid::new_v4();
    let script = "i=0; while [ ! -f stopme ]; do echo tick $i; i=$((i+1)); sleep 0.05; done; exit 7";
    let backend =
        Backend::Process { argv: vec!["/bin/sh".into(), "-c".into(), script.into()], env: Default::default() };
    let start = Start::new(instance, Requirements { vcpus: 1, mem_mb: 32, ..Default::default() }, backend);
    peer.sender.try_send(&Message::Start(start)).unwrap();
    reported(&mut server, "news of the start", instance, |s| s.state == InstanceState::Active).await;
    let instance_dir = state.join("instances").join(instance.to_string());
    let pid: i32 = std::fs::read_to_string(instance_dir.join("pid")).unwrap().trim().parse().unwrap();
    let output = instance_dir.join("results/output.txt");
    let ticks = || std::fs::read_to_string(&output).unwrap_or_default().lines().count();

    for round in 0..10 {
        child.kill(); // SIGKILL
        assert!(alive(pid), "round {round}: the workload died with the launcher");
        let before = ticks();
        if round == 4 {
            // A corrupt record of another instance must not stop the launcher.
            let corrupt = state.join("instances").join(Uuid::new_v4().to_string());
            std::fs::create_dir_all(&corrupt).unwrap();
            std::fs::write(corrupt.join("state.json"), "{ truncated").unwrap();
        }
        child = launcher.spawn();
        let reconnected = wait_for(&mut server, "reconnect", |e| match e {
            ServerEvent::Connected(p) => Some(p.uuid),
            _ => None,
        })
        .await;
        assert_eq!(reconnected, node, "round {round}: same node identity");
        let (listed_pid_alive, state_reported) = wait_for(&mut server, "STATS with the instance", |e| match e {
            ServerEvent::Message { message: Message::Stats(s), .. } => {
                s.instances.iter().find(|i| i.instance_uuid == instance).map(|i| (alive(pid), i.state))
            }
            _ => None,
        })
        .await;
        assert!(listed_pid_alive);
        assert_eq!(state_reported, InstanceState::Active, "round {round}");
        let same_pid: i32 = std::fs::read_to_string(instance_dir.join("pid")).unwrap().trim().parse().unwrap();
        assert_eq!(same_pid, pid, "round {round}: same PID");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(ticks() > before, "round {round}: output still captured");
    }

    // The workload ends while no launcher runs; the next one reports its exit code.
    child.kill();
    std::fs::write(instance_dir.join("results/stopme"), "").unwrap();
    testutil::assert_eventually!(|| async { !alive(pid) });
    let mut child = launcher.spawn();
    let (from, exited) =
        reported(&mut server, "the end, in the digest", instance, |s| s.state == InstanceState::Exited).await;
    assert_eq!(exited.exit_code, Some(7));
    assert_eq!(from, node);
    child.kill();
    let log_text = std::fs::read_to_string(log).unwrap();
    assert!(log_text.contains("instance state unreadable"), "the corrupt record was reported:\n{log_text}");
    server.stop().await;
}
