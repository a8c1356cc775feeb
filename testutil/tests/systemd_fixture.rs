//! The systemd fixture stays inside its fences: a marker in the host's `/tmp` survives, and the
//! host's mount table and cgroup roots are the same after as before (and, while it runs, hold
//! nothing of systemd's but the fixture's own sub-cgroups).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One test at a time: each compares the host's whole cgroup roots before and after.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Every mount of this (the host's) mount namespace: point, source, options.
fn mount_table() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let after = l.split_once(" - ").map(|(_, r)| r).unwrap_or_default();
            format!("{} {} {}", f[4], f[5], after)
        })
        .collect()
}

/// What sits at the root of each cgroup hierarchy of the host.
fn cgroup_roots() -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let path = hierarchy.path();
        let entries = std::fs::read_dir(&path).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>());
        match entries {
            Ok(entries) if path.is_dir() => out.extend(entries),
            _ => {
                out.insert(path);
            }
        }
    }
    out
}

#[test]
fn systemd_boots_in_its_namespaces_and_leaves_the_host_as_it_was() {
    if let Some(why) = testutil::systemd::unavailable() {
        testutil::skip("systemd", "systemd_fixture", &why);
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let marker = Path::new("/tmp").join(format!("drover-fence-marker-{}", std::process::id()));
    std::fs::write(&marker, "still here").unwrap();
    let mounts_before = mount_table();
    let roots_before = cgroup_roots();
    // The fixture's own files (script, log) under the host's /tmp, as in a checkout there.
    let work_dir = tempfile::tempdir().unwrap();
    let work = work_dir.path().join("systemd");

    // A directory under the host's /tmp that the test shares: seen inside elsewhere, and not
    // emptied with the namespace's /tmp.
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("kept.txt"), "shared").unwrap();
    let fixture =
        testutil::systemd::SystemdNs::start_sharing(&work, &[shared.path()]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fixture.systemctl(&["is-system-running"]).map(|o| o.stdout).unwrap(), b"running\n");
    let inside = fixture.inside(&shared.path().join("kept.txt"));
    assert!(inside.starts_with("/run/drover-keep"), "{}", inside.display());
    let cat = fixture.command("/bin/cat").arg(&inside).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "shared", "{cat:?}");
    assert_eq!(std::fs::read_to_string(shared.path().join("kept.txt")).unwrap(), "shared");
    let run = fixture
        .command("/usr/bin/systemd-run")
        .args(["--unit=fence-probe", "-p", "MemoryMax=64M", "/bin/sleep", "60"])
        .output()
        .unwrap();
    assert!(run.status.success(), "systemd-run: {}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(fixture.unit_property("fence-probe", "MemoryMax"), "67108864");
    assert_eq!(fixture.unit_property("fence-probe", "ActiveState"), "active");
    // systemd's own groups are under the fixture's sub-cgroup, never at the host's roots.
    let during = cgroup_roots();
    let added: Vec<&PathBuf> = during.difference(&roots_before).collect();
    assert!(
        added.iter().all(|p| p.file_name().unwrap().to_string_lossy().starts_with("drover-systemd-")),
        "new at the host's cgroup roots: {added:?}"
    );
    assert!(
        fixture.host_cgroups().iter().any(|g| g.join("system.slice").join("fence-probe.service").exists()),
        "the unit's group is under the fixture's: {:?}",
        fixture.host_cgroups()
    );
    assert_eq!(mount_table(), mounts_before, "the host's mount table changed while systemd runs");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "still here");
    let sub_cgroups = fixture.host_cgroups().to_vec();
    drop(fixture);

    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "still here", "the host's /tmp was emptied");
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(mount_table(), mounts_before, "the host's mount table changed");
    assert_eq!(cgroup_roots(), roots_before, "the host's cgroup roots changed");
    assert!(sub_cgroups.iter().all(|g| !g.exists()), "sub-cgroups left: {sub_cgroups:?}");
}

#[test]
fn without_a_private_tmp_systemd_is_never_started() {
    if let Some(why) = testutil::systemd::unavailable() {
        testutil::skip("systemd", "systemd_fixture", &why);
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let marker = Path::new("/tmp").join(format!("drover-fence-marker-refused-{}", std::process::id()));
    std::fs::write(&marker, "still here").unwrap();
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("systemd-refused-{}", std::process::id()));
    let e = testutil::systemd::SystemdNs::start_leaving_out(&work, "/tmp").unwrap_err();
    assert!(e.contains("/tmp is not a private tmpfs"), "{e}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "still here");
    std::fs::remove_file(&marker).unwrap();
    let _ = std::fs::remove_dir_all(&work);
}
