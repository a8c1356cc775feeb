//! The `systemd` backend against a real systemd (PID 1 of namespaces of its own, fenced off
//! from the host: `testutil::systemd`). The real launcher runs inside, connected to a test
//! scheduler on the host's loopback: each instance is a transient unit with its `MemoryMax`,
//! output kept in `results/output.txt`; exit codes, OOM kills, time-outs and start failures
//! are reported; a launcher killed with `kill -9` and started again re-adopts the running unit.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

mod common;

use std::path::{Path, PathBuf};

use common::{reported, wait_for, LogOnPanic};
use ssntp::payload::{Backend, ExitReason, InstanceState, Message, Requirements, Start};
use ssntp::server::ServerEvent;
use ssntp::Uuid;
use testutil::systemd::SystemdNs;
use testutil::{Pki, TestServer};

/// A systemd, a test scheduler, and the files a launcher inside needs (under the target
/// directory: the namespace has its own /tmp).
struct Rig {
    _log: LogOnPanic,
    pki: Pki,
    server: TestServer,
    work: PathBuf,
    systemd: SystemdNs,
}

impl Rig {
    async fn new(name: &str) -> Option<Self> {
        if let Some(why) = testutil::systemd::unavailable() {
            testutil::skip("systemd", name, &why);
            return None;
        }
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        // The namespace sees the work directory and the launcher binary, wherever the checkout is.
        let binaries = Path::new(env!("CARGO_BIN_EXE_drover-launcher")).parent().unwrap();
        let systemd =
            SystemdNs::start_sharing(&work.join("systemd"), &[&work, binaries]).unwrap_or_else(|e| panic!("{e}"));
        let pki = Pki::new();
        for (from, to) in [(pki.ca(), "ca.pem"), (pki.cert("agent"), "agent.pem"), (pki.key("agent"), "agent-key.pem")]
        {
            std::fs::copy(from, work.join(to)).unwrap();
        }
        let server = TestServer::start(&pki).await;
        Some(Self { _log: LogOnPanic(work.join("launcher.log")), pki, server, work, systemd })
    }

    fn launcher(&self) -> common::Running {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.work.join("launcher.log")).unwrap();
        let inside = |p: &Path| self.systemd.inside(p);
        std::fs::create_dir_all(self.work.join("state")).unwrap();
        let mut command = self.systemd.command(inside(Path::new(env!("CARGO_BIN_EXE_drover-launcher"))));
        command
            .args(["--server", &self.server.addr.to_string(), "--report-interval", "200ms", "--backend", "systemd"])
            .arg("--state-dir")
            .arg(inside(&self.work.join("state")))
            .arg("--cacert")
            .arg(inside(&self.work.join("ca.pem")))
            .arg("--cert")
            .arg(inside(&self.work.join("agent.pem")))
            .arg("--key")
            .arg(inside(&self.work.join("agent-key.pem")))
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        common::Running(command.spawn().unwrap())
    }

    /// An instance's directory, named after its task and version (`graph@2.<uuid>`).
    fn instance_dir(&self, id: Uuid) -> PathBuf {
        self.work.join("state").join("instances").join(format!("graph@2.{id}"))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = &self.pki;
        if std::thread::panicking() {
            let journal = self.systemd.command("/usr/bin/journalctl").args(["--no-pager", "-n", "60"]).output();
            eprintln!(
                "--- systemd's journal ---\n{}",
                journal.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

fn task(script: &str, mem_mb: u64) -> Start {
    let backend =
        Backend::Systemd { argv: vec!["/bin/sh".into(), "-c".into(), script.into()], env: Default::default() };
    let mut start = Start::new(Uuid::new_v4(), Requirements { vcpus: 1, mem_mb, ..Default::default() }, backend);
    start.name = Some("graph".into());
    start.version = Some("2".into());
    start
}

async fn connected(server: &mut TestServer) -> ssntp::server::Peer {
    wait_for(server, "launcher connect", |e| match e {
        ServerEvent::Connected(p) => Some(p),
        _ => None,
    })
    .await
}

async fn ended(server: &mut TestServer, id: Uuid) -> ssntp::payload::InstanceStat {
    reported(server, "the end", id, |s| matches!(s.state, InstanceState::Exited | InstanceState::Stopped)).await.1
}

#[tokio::test]
async fn a_unit_runs_with_its_limits_survives_a_launcher_kill_and_reports_how_it_ended() {
    let Some(mut rig) = Rig::new("systemd_backend").await else { return };
    let mut launcher = rig.launcher();
    let peer = connected(&mut rig.server).await;

    // Runs as a transient unit with its memory limit, in drover.slice, output appended.
    let long = task("echo hello from the unit; while true; do sleep 0.1; done", 64);
    let unit = format!("drover-graph-2-{}.service", long.instance_uuid);
    peer.sender.try_send(&Message::Start(long.clone())).unwrap();
    reported(&mut rig.server, "the unit running", long.instance_uuid, |s| s.state == InstanceState::Active).await;
    // Its usage is read from the unit's own cgroup.
    reported(&mut rig.server, "the unit's usage", long.instance_uuid, |s| s.memory_usage_mb >= 0).await;
    assert_eq!(rig.systemd.unit_property(&unit, "ActiveState"), "active");
    assert_eq!(rig.systemd.unit_property(&unit, "MemoryMax"), "67108864");
    assert_eq!(rig.systemd.unit_property(&unit, "Slice"), "drover.slice");
    let status = rig.systemd.systemctl(&["status", "--no-pager", &unit]).unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("drover graph"), "{status:?}");
    let main_pid = rig.systemd.unit_property(&unit, "MainPID");
    let output = rig.instance_dir(long.instance_uuid).join("results/output.txt");
    testutil::assert_eventually!(|| async { std::fs::read_to_string(&output).unwrap_or_default().contains("hello") });

    // kill -9 of the launcher: the unit runs on, and the next launcher adopts it.
    // (nsenter forks to enter the PID namespace: the launcher is its child.)
    let nsenter = launcher.id();
    let children = std::fs::read_to_string(format!("/proc/{nsenter}/task/{nsenter}/children")).unwrap();
    let pid: i32 = children.split_whitespace().next().expect("the launcher runs").parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    launcher.wait();
    assert_eq!(rig.systemd.unit_property(&unit, "ActiveState"), "active", "the unit died with its launcher");
    let _launcher = rig.launcher();
    let peer = connected(&mut rig.server).await;
    reported(&mut rig.server, "the adopted unit", long.instance_uuid, |s| s.state == InstanceState::Active).await;
    assert_eq!(rig.systemd.unit_property(&unit, "MainPID"), main_pid, "the same process runs on");
    // A STOP is StopUnit.
    let stop = ssntp::payload::Stop {
        instance_uuid: long.instance_uuid,
        workload_agent_uuid: peer.uuid,
        grace_ms: Some(2000),
    };
    peer.sender.try_send(&Message::Stop(stop)).unwrap();
    let end = ended(&mut rig.server, long.instance_uuid).await;
    assert_eq!(end.state, InstanceState::Stopped, "{end:?}");
    testutil::assert_eventually!(|| async { rig.systemd.unit_property(&unit, "LoadState") == "not-found" });
    assert!(std::fs::read_to_string(&output).unwrap().contains("hello"), "output.txt is kept");

    // An exit code.
    let failing = task("echo bye; exit 3", 32);
    peer.sender.try_send(&Message::Start(failing.clone())).unwrap();
    let end = ended(&mut rig.server, failing.instance_uuid).await;
    assert_eq!((end.exit_code, end.reason), (Some(3), Some(ExitReason::Failed)), "{end:?}");

    // Past its MemoryMax: an OOM kill, told apart from other kills.
    let hog = task("a=$(head -c 300000000 /dev/zero | tr '\\0' x); echo survived", 64);
    peer.sender.try_send(&Message::Start(hog.clone())).unwrap();
    let end = ended(&mut rig.server, hog.instance_uuid).await;
    assert_eq!(end.reason, Some(ExitReason::Oom), "{end:?}");
    let hog_output = std::fs::read_to_string(rig.instance_dir(hog.instance_uuid).join("results/output.txt")).unwrap();
    assert!(!hog_output.contains("survived") && hog_output.contains("out of memory"), "{hog_output}");

    // Past its maximum run time (RuntimeMaxSec=).
    let mut slow = task("sleep 60", 32);
    slow.max_run_time_s = Some(1);
    peer.sender.try_send(&Message::Start(slow.clone())).unwrap();
    let end = ended(&mut rig.server, slow.instance_uuid).await;
    assert_eq!(end.reason, Some(ExitReason::Killed), "{end:?}");
    let slow_output = std::fs::read_to_string(rig.instance_dir(slow.instance_uuid).join("results/output.txt")).unwrap();
    assert!(slow_output.contains("maximum run time"), "{slow_output}");

    // A program that is not there: the start fails, with systemd's reason.
    let mut missing = task("", 32);
    missing.backend = Backend::Systemd { argv: vec!["/no/such/program".into()], env: Default::default() };
    peer.sender.try_send(&Message::Start(missing.clone())).unwrap();
    let failure = wait_for(&mut rig.server, "the start failure", |e| match e {
        ServerEvent::Message { message: Message::StartFailure(f), .. } if f.instance_uuid == missing.instance_uuid => {
            Some(f)
        }
        _ => None,
    })
    .await;
    assert!(failure.detail.contains("/no/such/program"), "{failure:?}");
}

#[tokio::test]
async fn without_a_system_bus_the_systemd_backend_refuses_to_start() {
    // A system bus that is not there: the launcher says what is missing and exits.
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover-launcher"))
        .args(["--server", "127.0.0.1:1", "--backend", "systemd", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--cacert")
        .arg(pki.ca())
        .arg("--cert")
        .arg(pki.cert("agent"))
        .arg("--key")
        .arg(pki.key("agent"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", format!("unix:path={}", dir.path().join("no-bus").display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--backend systemd") && stderr.contains("system bus"), "{stderr}");
}
