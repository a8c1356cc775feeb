//! The packaged systemd units (`deploy/systemd/`) with the packaged configuration
//! (`deploy/etc/drover/`), run by a real systemd fenced off from the host
//! (`testutil::systemd`): the scheduler, the controller and a launcher come up as
//! `Type=notify` services, the first two unprivileged, and run a workload through
//! the API; a workload outlives `systemctl restart drover-launcher`. Only paths differ from
//! what a package installs (`/usr/bin` is the test's build, `/etc/drover` a directory of the
//! test's, the ports free ones), and the user: the package's system user `drover` is not
//! created on the test's host, so a user systemd makes up (`DynamicUser=yes`) stands in.

#![allow(clippy::disallowed_methods)] // tests wait with the real clock

mod common;

use std::path::{Path, PathBuf};

use common::{api_client, create_workload, instance_when, launch_one};
use testutil::systemd::SystemdNs;

const TEST: &str = "the_packaged_units_bring_up_a_cluster_that_runs_work";
const UNITS: [&str; 3] = ["drover-scheduler", "drover-controller", "drover-launcher"];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

struct Rig {
    work: PathBuf,
    systemd: SystemdNs,
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
    fn sh(&self, script: &str) -> String {
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
    fn main_uid(&self, unit: &str) -> u32 {
        let pid = self.systemd.unit_property(&format!("{unit}.service"), "MainPID");
        let status = self.sh(&format!("cat /proc/{pid}/status"));
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_else(|| panic!("{status}"));
        uid.split_whitespace().next().unwrap().parse().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packaged_units_bring_up_a_cluster_that_runs_work() {
    if let Some(why) = testutil::systemd::unavailable() {
        testutil::skip("systemd", TEST, &why);
        return;
    }
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let bin = common::bin("drover-controller").parent().unwrap().to_owned();
    let etc = work.join("etc");
    let pki_dir = etc.join("pki");
    std::fs::create_dir_all(&pki_dir).unwrap();
    let systemd = SystemdNs::start_sharing(&work.join("systemd"), &[&work, &bin]).unwrap_or_else(|e| panic!("{e}"));
    let rig = Rig { work: work.clone(), systemd };

    // Certificates under the names the packaged configuration uses.
    let pki = common::cluster_pki();
    for (stem, name) in [
        ("scheduler-local", "scheduler"),
        ("controller-local", "controller"),
        ("server-api", "api"),
        ("agent-local", "agent"),
    ] {
        std::fs::copy(pki.cert(stem), pki_dir.join(format!("{name}.pem"))).unwrap();
        std::fs::copy(pki.key(stem), pki_dir.join(format!("{name}-key.pem"))).unwrap();
    }
    std::fs::copy(pki.ca(), pki_dir.join("ca.pem")).unwrap();
    // The package makes keys readable by group drover; the stand-in user is in no group.
    for entry in std::fs::read_dir(&pki_dir).unwrap().flatten() {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::copy(pki.crl(), pki_dir.join("crl.pem")).unwrap();

    // The packaged files, with the test's paths and free ports.
    let port = || testutil::process::free_port().unwrap();
    let (sched, api, sched_metrics, launcher_metrics) = (port(), port(), port(), port());
    let inside = |p: &Path| rig.systemd.inside(p).display().to_string();
    let (etc_in, bin_in, units_in) = (inside(&etc), inside(&bin), inside(&work.join("units")));
    std::fs::create_dir_all(work.join("units")).unwrap();
    let packaged = |file: &str| {
        std::fs::read_to_string(repo(file))
            .unwrap()
            .replace("/etc/drover/", &format!("{etc_in}/"))
            .replace("/usr/bin/", &format!("{bin_in}/"))
            .replace("0.0.0.0:8888", &format!("127.0.0.1:{sched}"))
            .replace("127.0.0.1:8888", &format!("127.0.0.1:{sched}"))
            .replace("0.0.0.0:8889", &format!("127.0.0.1:{api}"))
            .replace("127.0.0.1:9888", &format!("127.0.0.1:{sched_metrics}"))
            .replace("127.0.0.1:9890", &format!("127.0.0.1:{launcher_metrics}"))
            // A loaded test machine must not read as a busy node (FULL).
            .replace("load-threshold = 4.0", "load-threshold = 1000.0")
            .replace("[\"/usr/share/drover/units\", \"/etc/drover/units\"]", &format!("[{units_in:?}]"))
            // The package's system user `drover` (sysusers.d) is not made on the test's host:
            // a user systemd makes up stands in for it, as unprivileged.
            .replace("User=drover\nGroup=drover\n", "DynamicUser=yes\n")
    };
    for name in ["scheduler", "controller", "launcher"] {
        std::fs::write(etc.join(format!("{name}.toml")), packaged(&format!("deploy/etc/drover/{name}.toml"))).unwrap();
    }
    let units = work.join("systemd-units");
    std::fs::create_dir_all(&units).unwrap();
    for unit in UNITS {
        std::fs::write(units.join(format!("{unit}.service")), packaged(&format!("deploy/systemd/{unit}.service")))
            .unwrap();
    }
    rig.sh(&format!("cp {}/*.service /run/systemd/system/ && systemctl daemon-reload", inside(&units)));

    // Type=notify: `start` returns once each says it is ready.
    for unit in UNITS {
        rig.sh(&format!("systemctl start {unit}.service"));
        assert_eq!(rig.systemd.unit_property(&format!("{unit}.service"), "ActiveState"), "active", "{unit}");
    }
    assert_ne!(rig.main_uid("drover-scheduler"), 0, "the scheduler is not root");
    assert_ne!(rig.main_uid("drover-controller"), 0, "the controller is not root");
    assert_eq!(rig.main_uid("drover-launcher"), 0, "the launcher is root, to give tenants users of their own");
    let status = rig.sh("systemctl status drover-scheduler.service --no-pager || true");
    assert!(status.contains(&format!("listening on 127.0.0.1:{sched}")), "the status it told systemd: {status}");

    // Work through the API, as a user would.
    let admin = api_client(&pki, &format!("127.0.0.1:{api}"), Some("admin"));
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
