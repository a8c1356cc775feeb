//! Helpers shared by the launcher's process-level tests.

#![allow(dead_code)] // each test file uses a part

use std::path::Path;
use std::path::PathBuf;
use std::process::{Child, Command};

use ssntp::server::ServerEvent;
use testutil::{Pki, TestServer, PATIENCE};

/// How to start the real launcher binary against a test scheduler.
pub(crate) struct Launcher<'a> {
    pub(crate) pki: &'a Pki,
    pub(crate) addr: String,
    pub(crate) state: &'a Path,
    pub(crate) log: &'a Path,
    pub(crate) extra: Vec<String>,
}

impl Launcher<'_> {
    pub(crate) fn spawn(&self) -> Running {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log).unwrap();
        Command::new(env!("CARGO_BIN_EXE_drover-launcher"))
            .args(["--server", &self.addr, "--report-interval", "200ms", "--state-dir"])
            .arg(self.state)
            .arg("--cacert")
            .arg(self.pki.ca())
            .arg("--cert")
            .arg(self.pki.cert("agent"))
            .arg("--key")
            .arg(self.pki.key("agent"))
            .args(&self.extra)
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map(Running)
            .unwrap()
    }
}

/// A launcher's working files for one test: its state directory and log, with the guards that
/// print the log when the test fails and kill its workloads when the test ends (before the
/// directory goes).
pub(crate) struct Work {
    _show_log: LogOnPanic,
    _no_leftovers: KillWorkloads,
    pub(crate) state: PathBuf,
    pub(crate) log: PathBuf,
    _dir: tempfile::TempDir,
}

/// A test scheduler and a launcher's working files.
pub(crate) async fn rig() -> (Pki, TestServer, Work) {
    let pki = Pki::new();
    let server = TestServer::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("launcher.log");
    let work =
        Work { _show_log: LogOnPanic(log.clone()), _no_leftovers: KillWorkloads(state.clone()), state, log, _dir: dir };
    (pki, server, work)
}

impl<'a> Launcher<'a> {
    /// A launcher with no extra flags against `server`, in `work`.
    pub(crate) fn new(pki: &'a Pki, server: &TestServer, work: &'a Work) -> Self {
        Self { pki, addr: server.addr.to_string(), state: &work.state, log: &work.log, extra: vec![] }
    }
}

/// A launcher process that is killed if the test ends (or fails) without waiting for it.
pub(crate) struct Running(pub(crate) Child);

impl Running {
    pub(crate) fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    pub(crate) fn id(&self) -> u32 {
        self.0.id()
    }

    pub(crate) fn wait(&mut self) -> std::process::ExitStatus {
        self.0.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.kill();
        }
    }
}

/// Kills every workload left under a launcher state directory when the test ends, passed or
/// failed: workloads outlive launchers by design, so a test must not leave them behind.
pub(crate) struct KillWorkloads(pub(crate) PathBuf);

impl Drop for KillWorkloads {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.0.join("instances")) else { return };
        for entry in entries.flatten() {
            let pid = std::fs::read_to_string(entry.path().join("pid")).ok().and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// The next server event `pick` accepts.
pub(crate) async fn wait_for<T>(
    server: &mut TestServer,
    what: &str,
    mut pick: impl FnMut(ServerEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let event = tokio::time::timeout_at(deadline, server.events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {PATIENCE:?}"))
            .expect("server running");
        if let Some(t) = pick(event) {
            return t;
        }
    }
}

/// Whether a process exists.
pub(crate) fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Prints the launcher's log when the test fails.
pub(crate) struct LogOnPanic(pub(crate) std::path::PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- launcher log ---\n{}", std::fs::read_to_string(&self.0).unwrap_or_default());
        }
    }
}

/// The next report of `instance` (in INSTANCE_NEWS or a digest page) that `pick` accepts, with
/// the node that sent it.
pub(crate) async fn reported(
    server: &mut TestServer,
    what: &str,
    instance: ssntp::Uuid,
    mut pick: impl FnMut(&ssntp::payload::InstanceStat) -> bool,
) -> (ssntp::Uuid, ssntp::payload::InstanceStat) {
    use ssntp::payload::Message;
    wait_for(server, what, |e| {
        let (node, stats) = match e {
            ServerEvent::Message { message: Message::InstanceNews(n), .. } => (n.node_uuid, n.instances),
            ServerEvent::Message { message: Message::Stats(s), .. } => (s.node_uuid, s.instances),
            _ => return None,
        };
        stats.into_iter().find(|s| s.instance_uuid == instance && pick(s)).map(|s| (node, s))
    })
    .await
}
