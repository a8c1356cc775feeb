//! `drover up` end to end with the real binaries, as a new user would run it: certificates
//! minted, scheduler, controller and launcher started, a real process placed and run through
//! the API, its output shown, everything stopped — by `--once` or by Ctrl-C — with no process
//! left behind.
//!
//! The sibling binaries exist because the scheduler and launcher packages have integration
//! tests of their own (cargo builds a package's binaries only for those).

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

use std::path::Path;
use std::process::Command;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn drover_up_runs_a_real_workload_and_stops_cleanly() {
    let drover = Path::new(env!("CARGO_BIN_EXE_drover"));
    let bin_dir = drover.parent().unwrap();
    for sibling in ["drover-scheduler", "drover-launcher", "drover-controller"] {
        assert!(
            bin_dir.join(sibling).exists(),
            "{sibling} is built by `cargo test --workspace`; run the whole workspace's tests"
        );
    }
    let work = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(drover)
            .args(["up", "--once", "--port", &free_port().to_string(), "--api-port", &free_port().to_string()])
            .current_dir(work.path())
            .output()
            .unwrap()
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}\n(if the demo timed out, the sibling binaries may be stale: run `cargo test --workspace`)",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("minting certificates"), "{stdout}");
    assert!(stdout.contains("exited on node"), "{stdout}");
    assert!(stdout.contains("hello from drover: instance"), "{stdout}");
    let pki = work.path().join(".drover/pki");
    for file in
        ["ca.pem", "scheduler-local.pem", "agent-local.pem", "controller-local.pem", "server-api.pem", "user-local.pem"]
    {
        assert!(pki.join(file).exists(), "{file}");
    }
    // The instance's results and its state file survive on the node; nothing else does.
    let instances = work.path().join(".drover/launcher/instances");
    let dirs: Vec<_> = std::fs::read_dir(&instances).unwrap().flatten().collect();
    assert_eq!(dirs.len(), 1);
    let mut entries: Vec<_> = std::fs::read_dir(dirs[0].path()).unwrap().flatten().map(|e| e.file_name()).collect();
    entries.sort();
    assert_eq!(entries, vec![std::ffi::OsString::from("results"), std::ffi::OsString::from("state.json")]);

    // A second run reuses the certificates and the launcher's identity.
    let node_uuid = std::fs::read_to_string(work.path().join(".drover/launcher/uuid-agent")).unwrap();
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("minting certificates"), "{stdout}");
    assert!(stdout.contains(&format!("on node {}", &node_uuid[..8])), "{stdout}");
    assert!(work.path().join(".drover/controller.redb").exists());
}

/// A `drover up` a failing test would leave running is stopped: SIGINT (it stops its children in
/// order), then SIGKILL after 20 s.
struct StopOnPanic(u32);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let gone = std::fs::read_to_string(format!("/proc/{}/stat", self.0))
                .map_or(true, |stat| stat.split_whitespace().nth(2) == Some("Z"));
            if gone {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

fn drover_processes_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(dir.to_str().unwrap()) {
                found.push(text);
            }
        }
    }
    found
}

#[test]
fn drover_up_keeps_running_until_ctrl_c_then_leaves_nothing_behind() {
    let work = tempfile::tempdir().unwrap();
    let api_port = free_port().to_string();
    let up = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["up", "--port", &free_port().to_string(), "--api-port", &api_port])
        .current_dir(work.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _stop = StopOnPanic(up.id());
    // The CLI reaches the cluster `up` started, with the credentials it wrote.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let ps = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(["--api", &format!("127.0.0.1:{api_port}"), "ps", "--state", "exited"])
            .current_dir(work.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("demo") {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "the demo never finished: {text}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(ps.contains("exited(0)"), "{ps}");
    assert!(drover_processes_under(work.path()).len() >= 3, "scheduler, controller and launcher run");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(up.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = up.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("stopping the cluster"), "{stdout}");
    let left = drover_processes_under(work.path());
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn drover_up_explains_a_port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["up", "--once", "--port", &port.to_string(), "--api-port", &free_port().to_string()])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is in use; pick another with --port"), "{stderr}");
}

/// Ports for `drover up --ha --port P`: P, P+2 (schedulers), P+100..102 and P+110..112 (etcd).
fn free_ha_base() -> u16 {
    loop {
        let base = free_port();
        let offsets = [0u16, 2, 100, 101, 102, 110, 111, 112];
        let free = offsets
            .iter()
            .all(|o| base.checked_add(*o).is_some_and(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()));
        if free {
            return base;
        }
    }
}

#[test]
fn drover_up_ha_runs_etcd_two_schedulers_and_two_controllers_says_who_leads_and_stops_everything() {
    if testutil::etcd::etcd_binary().is_none() {
        testutil::skip("etcd", "drover_up_ha", "no etcd binary (apt-get install etcd-server)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (port, api_port) = (free_ha_base(), free_port());
    let mut up = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["up", "--ha", "--port", &port.to_string(), "--api-port", &api_port.to_string()])
        .current_dir(work.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _stop = StopOnPanic(up.id());
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = std::sync::Arc::clone(&lines);
        let stdout = up.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let leader_line = loop {
        if let Some(l) = lines.lock().unwrap().iter().find(|l| l.contains("leader: controller")) {
            break l.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no leader line:\n{}", lines.lock().unwrap().join("\n"));
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(leader_line.contains("active scheduler: 127.0.0.1:"), "{leader_line}");
    let etcds = drover_processes_under(work.path()).into_iter().filter(|p| p.contains("etcd --name")).count();
    assert_eq!(etcds, 3, "three etcd members: {}", lines.lock().unwrap().join("\n"));
    // Either controller's API serves the CLI: the standby sends it to the leader.
    for api in [api_port, api_port + 2] {
        let out = Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(["--api", &format!("127.0.0.1:{api}"), "ps", "--state", "exited"])
            .current_dir(work.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("demo"),
            "via {api}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(up.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = up.wait().unwrap();
    reader.join().unwrap();
    let text = lines.lock().unwrap().join("\n");
    assert!(status.success(), "{text}");
    assert!(!text.contains("killing it"), "everything stops when asked: {text}");
    let left = drover_processes_under(work.path());
    assert!(left.is_empty(), "left behind: {left:?}");
}
