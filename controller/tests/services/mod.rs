//! The packaged units run under a real systemd (`testutil::systemd`), checked the same way
//! whether they come from `deploy/` (units.rs) or from the installed packages (installed.rs).
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use testutil::systemd::SystemdNs;

use crate::common::{self, api_client, create_workload, instance_when, launch_one};

/// The three units, in the order they start.
pub const UNITS: [&str; 3] = ["drover-scheduler", "drover-controller", "drover-launcher"];

/// A systemd and the test's work directory (kept, with systemd's journal printed, when the
/// test fails).
pub struct Rig {
    /// Removed after a passing test.
    pub work: PathBuf,
    /// The systemd.
    pub systemd: SystemdNs,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let journal = self.systemd.command("/usr/bin/journalctl").args(["--no-pager", "-n", "120"]).output();
            eprintln!(
                "--- systemd's journal ---\n{}",
                journal.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

impl Rig {
    /// Runs a shell command inside the namespace; its output.
    pub fn sh(&self, script: &str) -> String {
        let out = self.systemd.command("/bin/sh").args(["-c", script]).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The uid of a unit's main process, read inside the namespace.
    pub fn main_uid(&self, unit: &str) -> u32 {
        let pid = self.systemd.unit_property(&format!("{unit}.service"), "MainPID");
        let status = self.sh(&format!("cat /proc/{pid}/status"));
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_else(|| panic!("{status}"));
        uid.split_whitespace().next().unwrap().parse().unwrap()
    }
}

/// Copies the test cluster's certificates into `dir` under the names the packaged
/// configuration uses (`scheduler.pem`, `scheduler-key.pem`, …, `ca.pem`, `crl.pem`).
pub fn install_pki(pki: &testutil::Pki, dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (stem, name) in [
        ("scheduler-local", "scheduler"),
        ("controller-local", "controller"),
        ("server-api", "api"),
        ("agent-local", "agent"),
    ] {
        std::fs::copy(pki.cert(stem), dir.join(format!("{name}.pem"))).unwrap();
        std::fs::copy(pki.key(stem), dir.join(format!("{name}-key.pem"))).unwrap();
    }
    std::fs::copy(pki.ca(), dir.join("ca.pem")).unwrap();
    std::fs::copy(pki.crl(), dir.join("crl.pem")).unwrap();
}

/// Starts the units (`Type=notify`: `start` returns once each is ready), checks who they run
/// as, runs a workload through the API at `api` as admin, restarts the launcher under it, and
/// stops them. `listening` is what the scheduler must have told systemd.
pub async fn check(rig: &Rig, pki: &testutil::Pki, api: &str, listening: &str) {
    // Type=notify: `start` returns once each says it is ready.
    for unit in UNITS {
        rig.sh(&format!("systemctl start {unit}.service"));
        assert_eq!(rig.systemd.unit_property(&format!("{unit}.service"), "ActiveState"), "active", "{unit}");
    }
    assert_ne!(rig.main_uid("drover-scheduler"), 0, "the scheduler is not root");
    assert_ne!(rig.main_uid("drover-controller"), 0, "the controller is not root");
    assert_eq!(rig.main_uid("drover-launcher"), 0, "the launcher is root, to give tenants users of their own");
    let status = rig.sh("systemctl status drover-scheduler.service --no-pager || true");
    assert!(status.contains(listening), "the status it told systemd: {status}");

    // Work through the API, as a user would.
    let admin = api_client(pki, api, Some("admin"));
    common::wait_for("a ready node", || async {
        let s = admin.get("/v1/status").await.ok()?;
        (s["nodes"]["ready"].as_u64() == Some(1)).then_some(())
    })
    .await;
    create_workload(
        &admin,
        "name = \"hello\"\nsize = \"tiny\"\n[backend]\ntype = \"process\"\nargv = [\"/bin/sh\", \"-c\", \"echo hello from $(id -u); sleep 600\"]\n",
    )
    .await;
    let id = launch_one(&admin, "hello").await;
    instance_when(&admin, &id, "running", common::PATIENCE * 3, |i| i["state"] == "running").await;
    let logs = common::wait_for("its output", || async {
        let v = admin.get(&format!("/v1/instances/{id}/logs")).await.ok()?;
        v["data"].as_str().filter(|d| d.contains("hello from")).map(str::to_owned)
    })
    .await;
    assert!(!logs.contains("hello from 0\n"), "the workload is not root: {logs}");

    // A launcher restart leaves the workload running; the new launcher adopts it.
    let before = rig.systemd.unit_property("drover-launcher.service", "MainPID");
    rig.sh("systemctl restart drover-launcher.service");
    assert_ne!(rig.systemd.unit_property("drover-launcher.service", "MainPID"), before);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let instance = admin.get(&format!("/v1/instances/{id}")).await.unwrap();
    assert_eq!(instance["state"], "running", "the workload outlived the launcher's restart: {instance}");
    assert_eq!(instance["restarts"], 0, "{instance}");

    for unit in UNITS.iter().rev() {
        rig.sh(&format!("systemctl stop {unit}.service"));
    }
}
