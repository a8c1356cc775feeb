//! The Debian packages as `dpkg -i` installed them on this machine (`.ci/run` builds them with
//! cargo-deb and installs them, then runs this test with `installed` required): their units,
//! binaries and configuration, unchanged, run a cluster under a real systemd fenced off from
//! the host (`testutil::systemd`). Only the certificates are the test's: inside the namespace a
//! directory of the test's is bind-mounted over `/etc/drover/pki`, which the host never sees.
//! Also checks what the packages ship besides: man pages, completions, the sysusers entry.

#![allow(clippy::disallowed_methods)] // tests wait with the real clock

mod common;
mod services;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use services::Rig;
use testutil::systemd::SystemdNs;

const TEST: &str = "the_installed_packages_run_a_cluster_from_their_units";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_packages_run_a_cluster_from_their_units() {
    let installed = ["/usr/bin/drover-scheduler", "/lib/systemd/system/drover-scheduler.service", "/usr/bin/drover"];
    if let Some(missing) = installed.iter().find(|p| !Path::new(p).exists()) {
        testutil::skip("installed", TEST, &format!("{missing} is not installed (dpkg -i target/debian/*.deb)"));
        return;
    }
    if let Some(why) = testutil::systemd::unavailable() {
        testutil::skip("systemd", TEST, &why);
        return;
    }
    // What the packages ship besides the binaries and units.
    for file in [
        "/etc/drover/scheduler.toml",
        "/etc/drover/controller.toml",
        "/etc/drover/launcher.toml",
        "/usr/lib/sysusers.d/drover-scheduler.conf",
        "/usr/share/man/man1/drover-plan.1.gz",
        "/usr/share/man/man1/drover-scheduler.1.gz",
        "/usr/share/bash-completion/completions/drover",
        "/usr/share/drover/grafana/drover.json",
        "/usr/share/drover/openapi.json",
    ] {
        assert!(Path::new(file).exists(), "{file} is installed");
    }
    let drover = nix::unistd::Group::from_name("drover").unwrap().expect("the package made the group drover");
    assert!(nix::unistd::User::from_name("drover").unwrap().is_some(), "the package made the user drover");

    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("installed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let pki_dir = work.join("pki");
    std::fs::create_dir_all(&pki_dir).unwrap();
    let systemd = SystemdNs::start_sharing(&work.join("systemd"), &[&work]).unwrap_or_else(|e| panic!("{e}"));
    let rig = Rig { work: work.clone(), systemd };

    // Certificates under the names the installed configuration uses; keys for group drover.
    let pki = common::cluster_pki();
    services::install_pki(&pki, &pki_dir);
    for entry in std::fs::read_dir(&pki_dir).unwrap().flatten() {
        nix::unistd::chown(&entry.path(), None, Some(drover.gid)).unwrap();
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    nix::unistd::chown(&pki_dir, None, Some(drover.gid)).unwrap();
    std::fs::set_permissions(&pki_dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    // The parents of a shared directory must let the drover user through.
    let inside = rig.systemd.inside(&pki_dir).display().to_string();
    rig.sh(&format!("mount --bind {inside} /etc/drover/pki && systemctl daemon-reload"));

    services::check(&rig, &pki, "127.0.0.1:8889", "listening on 0.0.0.0:8888").await;
}
