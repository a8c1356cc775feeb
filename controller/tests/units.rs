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

mod services;

use services::{Rig, UNITS};
use testutil::systemd::SystemdNs;

const TEST: &str = "the_packaged_units_bring_up_a_cluster_that_runs_work";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
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
    services::install_pki(&pki, &pki_dir);
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

    services::check(&rig, &pki, &format!("127.0.0.1:{api}"), &format!("listening on 127.0.0.1:{sched}")).await;
}
