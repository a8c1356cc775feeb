//! The process backend with real processes and the real shim (this package's binary): output,
//! exit codes, clean-up, stop grace, memory limits ending in `oom`, maximum run time, launch
//! failures, and re-adoption from disk.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

mod common;

use std::path::Path;
use std::time::Duration;

use drover_launcher::cgroup::Cgroups;
use drover_launcher::instances::{Adopted, Event, Exit, Instances, ShimCommand};
use drover_launcher::users::{RunAs, Users};
use ssntp::payload::{Backend, ExitReason, FailureReason, OciNetwork, Requirements, Start, Volume};
use ssntp::Uuid;
use tokio::sync::mpsc;

fn shim() -> ShimCommand {
    ShimCommand { program: env!("CARGO_BIN_EXE_drover-launcher").into(), args: vec!["shim".into()] }
}

fn sh(id: Uuid, script: &str, mem_mb: u64) -> Start {
    let backend =
        Backend::Process { argv: vec!["/bin/sh".into(), "-c".into(), script.into()], env: Default::default() };
    Start::new(id, Requirements { vcpus: 1, mem_mb, ..Default::default() }, backend)
}

async fn next(rx: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("instance event in time")
        .expect("channel open")
}

async fn until_exit(rx: &mut mpsc::Receiver<Event>, instances: &mut Instances) -> Exit {
    loop {
        match next(rx).await {
            Event::Started { instance, pid } => instances.started(instance, pid),
            Event::Exited(exit) => return exit,
            other @ Event::StartFailed { .. } => panic!("unexpected {other:?}"),
        }
    }
}

/// An instance's memory cgroup (launchers without a node name call it by the instance alone).
fn memory_group(instances: &Instances, id: Uuid) -> std::path::PathBuf {
    match instances.cgroups() {
        Cgroups::V1 { memory, .. } => memory.join("drover").join(id.to_string()),
        Cgroups::V2 { root } => root.join("drover").join(id.to_string()),
        Cgroups::Unavailable { .. } => unreachable!("the test has cgroups"),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn output_exit_codes_clean_up_and_launch_failures() {
    let state = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let no_limits = Cgroups::Unavailable { why: "test".into() };
    let mut instances = Instances::new(state.path(), shim(), no_limits, tx);

    let ok = Uuid::new_v4();
    instances.start(&sh(ok, "echo hello; echo oops >&2; touch scratch; mkdir tmpdir", 16)).unwrap();
    // However quick the workload, its start is reported before its end.
    assert!(matches!(next(&mut rx).await, Event::Started { instance, .. } if instance == ok));
    let exit = until_exit(&mut rx, &mut instances).await;
    assert_eq!(exit, Exit { instance: ok, code: Some(0), reason: ExitReason::Completed });
    assert!(!instances.exited(&exit));
    assert_eq!(std::fs::read_to_string(instances.output(ok)).unwrap(), "hello\noops\n");
    assert_eq!(names(&instances.dir(ok)), vec!["results", "state.json"], "only results/ and the state file are kept");
    let (tail, truncated) = instances.tail(ok, 4).unwrap();
    assert_eq!((tail.as_str(), truncated), ("ops\n", true));
    let (all, truncated) = instances.tail(ok, u32::MAX).unwrap();
    assert_eq!((all.len(), truncated), (11, false), "a huge request is bounded and still exact for small output");

    // Nothing of the launcher's environment reaches the workload (cargo set these for this
    // test process, the shim's parent) but PATH; HOME is its working directory.
    let env = Uuid::new_v4();
    instances
        .start(&sh(env, "echo \"[$CARGO_MANIFEST_DIR][$CARGO_PKG_NAME]\"; echo \"$HOME\"; command -v sh", 16))
        .unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    assert_eq!(exit.code, Some(0));
    let shown = std::fs::read_to_string(instances.output(env)).unwrap();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines[0], "[][]", "the launcher's variables stay with it: {shown}");
    assert_eq!(Path::new(lines[1]), instances.dir(env).join("results"), "{shown}");
    assert!(lines[2].ends_with("/sh"), "PATH finds programs: {shown}");
    instances.exited(&exit);

    let failing = Uuid::new_v4();
    instances.start(&sh(failing, "exit 3", 16)).unwrap();
    assert_eq!(instances.start(&sh(failing, "true", 16)).unwrap_err().0, FailureReason::AlreadyRunning);
    let exit = until_exit(&mut rx, &mut instances).await;
    assert_eq!((exit.code, exit.reason), (Some(3), ExitReason::Failed));
    instances.exited(&exit);
    assert_eq!(instances.start(&sh(failing, "true", 16)).unwrap_err().0, FailureReason::InstanceExists);
    // A restart (the controller's policy) replaces the ended copy and runs it again.
    let mut restart = sh(failing, "echo again", 16);
    restart.restart = true;
    instances.start(&restart).unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    assert_eq!((exit.instance, exit.code), (failing, Some(0)));
    instances.exited(&exit);
    assert_eq!(std::fs::read_to_string(instances.output(failing)).unwrap(), "again\n");

    let missing = Uuid::new_v4();
    let backend = Backend::Process { argv: vec!["/no/such/program".into()], env: Default::default() };
    instances.start(&Start::new(missing, Requirements::default(), backend)).unwrap();
    match next(&mut rx).await {
        Event::StartFailed { instance, detail } => {
            assert_eq!(instance, missing);
            assert!(detail.contains("/no/such/program"), "{detail}");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }

    let timed = Uuid::new_v4();
    let mut start = sh(timed, "sleep 30", 16);
    start.max_run_time_s = Some(1);
    instances.start(&start).unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    assert_eq!(exit.reason, ExitReason::Killed);
    assert!(std::fs::read_to_string(instances.output(timed)).unwrap().contains("maximum run time"));

    instances.delete(ok).unwrap();
    assert!(!instances.dir(ok).exists());
}

#[tokio::test]
async fn stop_sends_sigterm_to_the_group_then_sigkill_after_the_grace() {
    let state = tempfile::tempdir().unwrap();
    let _no_leftovers = common::KillWorkloads(state.path().to_owned());
    let (tx, mut rx) = mpsc::channel(16);
    let mut instances = Instances::new(state.path(), shim(), Cgroups::Unavailable { why: "test".into() }, tx);
    let polite = Uuid::new_v4();
    instances.start(&sh(polite, "sleep 60 & wait", 16)).unwrap();
    let Event::Started { pid, .. } = next(&mut rx).await else { panic!("not started") };
    instances.started(polite, pid);
    instances.stop(polite, Duration::from_secs(5)).unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    assert_eq!(exit.reason, ExitReason::Killed);
    assert!(instances.exited(&exit), "reported as a requested stop");

    // A workload that ignores SIGTERM is killed after the grace.
    let stubborn = Uuid::new_v4();
    instances.start(&sh(stubborn, "trap '' TERM; echo ready; while true; do sleep 0.1; done", 16)).unwrap();
    let Event::Started { pid, .. } = next(&mut rx).await else { panic!("not started") };
    instances.started(stubborn, pid);
    // Stop only once the trap is in place.
    let output = instances.output(stubborn);
    testutil::assert_eventually!(|| async { std::fs::read_to_string(&output).unwrap_or_default().contains("ready") });
    let asked = tokio::time::Instant::now();
    instances.stop(stubborn, Duration::from_millis(500)).unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    assert_eq!(exit.reason, ExitReason::Killed);
    assert!(asked.elapsed() >= Duration::from_millis(500), "survived SIGTERM until the grace ran out");
    assert!(instances.exited(&exit));
    assert_eq!(instances.running(), 0);
}

#[tokio::test]
async fn a_stop_before_the_workload_has_started_ends_it_once_it_starts() {
    // An EVACUATE or STOP can arrive right after the START, before the shim has said the PID.
    let state = tempfile::tempdir().unwrap();
    let _no_leftovers = common::KillWorkloads(state.path().to_owned());
    let (tx, mut rx) = mpsc::channel(16);
    let mut instances = Instances::new(state.path(), shim(), Cgroups::Unavailable { why: "test".into() }, tx);
    let early = Uuid::new_v4();
    instances.start(&sh(early, "sleep 60", 16)).unwrap();
    instances.stop(early, Duration::from_secs(5)).unwrap();
    let asked = tokio::time::Instant::now();
    let exit = until_exit(&mut rx, &mut instances).await;
    assert_eq!((exit.instance, exit.reason), (early, ExitReason::Killed));
    assert!(asked.elapsed() < Duration::from_secs(20), "ended by the stop, not by its own end");
    assert!(instances.exited(&exit), "reported as a requested stop");
}

#[tokio::test]
async fn a_workload_past_its_memory_limit_ends_with_oom() {
    let cgroups = Cgroups::detect(Path::new("/sys/fs/cgroup"));
    if let Cgroups::Unavailable { why } = &cgroups {
        testutil::skip("cgroup-memory", "a_workload_past_its_memory_limit_ends_with_oom", why);
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let _no_leftovers = common::KillWorkloads(state.path().to_owned());
    let (tx, mut rx) = mpsc::channel(16);
    let mut instances = Instances::new(state.path(), shim(), cgroups, tx);
    let hog = Uuid::new_v4();
    // The shell keeps 300 MB of command output in memory; the limit is 64 MiB.
    instances.start(&sh(hog, "a=$(head -c 300000000 /dev/zero | tr '\\0' x); echo survived", 64)).unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    assert_eq!(exit.reason, ExitReason::Oom, "{exit:?}");
    let output = std::fs::read_to_string(instances.output(hog)).unwrap();
    assert!(!output.contains("survived") && output.contains("out of memory"), "{output}");
    instances.exited(&exit);
    // Its groups are gone once it ended.
    let dir = memory_group(&instances, hog);
    testutil::assert_eventually!(|| async { !dir.exists() });

    // Within its limit, the same node reports real usage.
    let small = Uuid::new_v4();
    instances.start(&sh(small, "a=$(head -c 20000000 /dev/zero | tr '\\0' x); sleep 2", 64)).unwrap();
    let Event::Started { pid, .. } = next(&mut rx).await else { panic!("not started") };
    instances.started(small, pid);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, usage) = instances.usage().into_iter().find(|(id, _)| *id == small).unwrap();
    assert!((10..64).contains(&usage.memory_mb), "usage {} MiB", usage.memory_mb);
    // When it ends, its groups go too, removed by its shim.
    let exit = until_exit(&mut rx, &mut instances).await;
    assert_eq!(exit.reason, ExitReason::Completed);
    let memory_dir = memory_group(&instances, small);
    testutil::assert_eventually!(|| async { !memory_dir.exists() });
}

/// An instance ends with its main process: what it left running in another session (a
/// daemon) is killed with it, so nothing runs on unaccounted, and its cgroup is removed.
#[tokio::test]
async fn what_a_workload_leaves_running_in_its_cgroup_ends_with_it() {
    const TEST: &str = "what_a_workload_leaves_running_in_its_cgroup_ends_with_it";
    let cgroups = Cgroups::detect(Path::new("/sys/fs/cgroup"));
    if let Cgroups::Unavailable { why } = &cgroups {
        return testutil::skip("cgroup-memory", TEST, why);
    }
    let state = tempfile::tempdir().unwrap();
    let _no_leftovers = common::KillWorkloads(state.path().to_owned());
    let (tx, mut rx) = mpsc::channel(16);
    let mut instances = Instances::new(state.path(), shim(), cgroups, tx);
    let id = Uuid::new_v4();
    instances.start(&sh(id, "setsid sleep 300 & echo $! > daemon.pid; sleep 0.2; exit 0", 64)).unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    assert_eq!(exit.reason, ExitReason::Completed, "{exit:?}");
    let pid_file = instances.output(id).with_file_name("daemon.pid");
    let daemon: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let alive = || {
        // A zombie has been killed; only its parent (init) has yet to reap it.
        std::fs::read_to_string(format!("/proc/{daemon}/stat"))
            .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
    };
    assert!(!alive(), "the daemon it started in its own session ended with it");
    let dir = memory_group(&instances, id);
    assert!(!dir.exists(), "its cgroup is removed by its shim: {}", dir.display());
    instances.exited(&exit);
}

#[tokio::test]
async fn a_new_launcher_re_adopts_running_and_reports_ended_instances() {
    let state = tempfile::tempdir().unwrap();
    let _no_leftovers = common::KillWorkloads(state.path().to_owned());
    let no_limits = || Cgroups::Unavailable { why: "test".into() };
    let running = Uuid::new_v4();
    let ended = Uuid::new_v4();
    let pid = {
        let (tx, mut rx) = mpsc::channel(16);
        let mut first = Instances::new(state.path(), shim(), no_limits(), tx);
        first.start(&sh(running, "while [ ! -f stopme ]; do echo tick; sleep 0.1; done; exit 7", 16)).unwrap();
        let Event::Started { pid, .. } = next(&mut rx).await else { panic!() };
        first.start(&sh(ended, "exit 0", 16)).unwrap();
        loop {
            if let Event::Exited(e) = next(&mut rx).await {
                assert_eq!(e.instance, ended);
                break; // ended, but this launcher "crashes" before recording or reporting it
            }
        }
        pid
        // `first` is dropped here: its watchers stop with the test's runtime, as on a crash.
    };
    // A corrupt record must not stop the next launcher.
    let corrupt = Uuid::new_v4();
    std::fs::create_dir_all(state.path().join("instances").join(corrupt.to_string())).unwrap();
    std::fs::write(state.path().join("instances").join(corrupt.to_string()).join("state.json"), "{not json").unwrap();

    let (tx, mut rx) = mpsc::channel(16);
    let mut second = Instances::new(state.path(), shim(), no_limits(), tx);
    let adopted = second.adopt();
    let ended_exit = Exit { instance: ended, code: Some(0), reason: ExitReason::Completed };
    assert!(
        adopted
            .iter()
            .any(|a| matches!(a, Adopted::Known { exit: Some(e), exit_reported: false, .. } if *e == ended_exit)),
        "the end the first launcher never reported: {adopted:?}"
    );
    assert!(
        adopted.iter().any(|a| matches!(a, Adopted::Known { exit: None, start, .. } if start.instance_uuid == running)),
        "{adopted:?}"
    );
    assert!(
        adopted.contains(&Adopted::Unreadable(Exit { instance: corrupt, code: None, reason: ExitReason::Unknown })),
        "{adopted:?}"
    );
    assert_eq!(second.pid(running), Some(pid), "same PID");
    assert!(second.is_running(running));
    std::fs::write(second.dir(running).join("results/stopme"), "").unwrap();
    let exit = until_exit(&mut rx, &mut second).await;
    assert_eq!(exit, Exit { instance: running, code: Some(7), reason: ExitReason::Failed });
    assert!(std::fs::read_to_string(second.output(running)).unwrap().contains("tick"));
}

#[tokio::test]
async fn numa_local_workloads_are_pinned_to_their_node() {
    let cgroups = Cgroups::detect(Path::new("/sys/fs/cgroup"));
    let has_cpuset = match &cgroups {
        Cgroups::V1 { cpuset, .. } => cpuset.is_some(),
        Cgroups::V2 { root } => {
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default().contains("cpuset")
        }
        Cgroups::Unavailable { .. } => false,
    };
    if !has_cpuset {
        let why = format!("no writable cpuset controller ({cgroups:?})");
        testutil::skip("cpuset", "numa_local_workloads_are_pinned_to_their_node", &why);
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let pin = drover_launcher::cgroup::Pin { cpus: "0".into(), mems: "0".into() };
    let mut instances = Instances::new(state.path(), shim(), cgroups, tx).with_pin(Some(pin));
    let id = Uuid::new_v4();
    instances.start(&sh(id, "grep Cpus_allowed_list /proc/self/status", 16)).unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    assert_eq!(exit.reason, ExitReason::Completed);
    let output = std::fs::read_to_string(instances.output(id)).unwrap();
    assert_eq!(output.split_whitespace().last(), Some("0"), "{output}");
    instances.exited(&exit);
}

/// A root file system built from busybox-static: /bin/busybox and links for the tools used.
fn busybox_rootfs(dir: &Path) -> Option<std::path::PathBuf> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().map(Path::new).find(|p| p.exists())?;
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for tool in ["sh", "echo", "cat", "hostname", "sleep", "ls"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
    }
    Some(rootfs)
}

#[tokio::test]
async fn oci_containers_run_with_runc_from_a_busybox_rootfs() {
    let runtime = ["/usr/sbin/runc", "/usr/bin/runc", "/usr/bin/crun"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists());
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    let work = tempfile::tempdir().unwrap();
    let (Some(runtime), true, Some(rootfs)) = (runtime, root, busybox_rootfs(work.path())) else {
        testutil::skip(
            "oci",
            "oci_containers_run_with_runc_from_a_busybox_rootfs",
            "needs root, runc or crun, and busybox-static",
        );
        return;
    };
    let state = work.path().join("state");
    let (tx, mut rx) = mpsc::channel(16);
    let cgroups = Cgroups::detect(Path::new("/sys/fs/cgroup"));
    let users = Users::new(
        RunAs::PerTenant { first: 1_000_000_200, last: 1_000_000_299 },
        Default::default(),
        Default::default(),
        false,
    );
    let mut instances =
        Instances::new(&state, shim(), cgroups, tx).with_oci_runtime(Some(runtime)).with_users(users, None);
    let id = Uuid::new_v4();
    let backend = Backend::Oci {
        rootfs: rootfs.display().to_string(),
        args: vec![
            "sh".into(),
            "-c".into(),
            "echo hello from $(hostname) in $PWD as $(id -u); echo kept > /results/file; exit 3".into(),
        ],
        env: Default::default(),
        writable_root: false,
        volumes: vec![],
        network: Default::default(),
    };
    instances.start(&Start::new(id, Requirements { vcpus: 1, mem_mb: 64, ..Default::default() }, backend)).unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    let output = std::fs::read_to_string(instances.output(id)).unwrap();
    assert_eq!((exit.code, exit.reason), (Some(3), ExitReason::Failed), "{output}");
    assert!(
        output.contains(&format!("hello from drover-{} in /results as 1000000200", &id.to_string()[..8])),
        "the container's process runs as the tenant's user, not root: {output}"
    );
    assert_eq!(std::fs::read_to_string(instances.dir(id).join("results/file")).unwrap(), "kept\n");
    instances.exited(&exit);
    assert_eq!(names(&instances.dir(id)), vec!["results", "state.json"], "the bundle is gone after the end");

    // Stop reaches the container through the runtime.
    let sleeper = Uuid::new_v4();
    let backend = Backend::Oci {
        rootfs: rootfs.display().to_string(),
        args: vec!["sleep".into(), "60".into()],
        env: Default::default(),
        writable_root: false,
        volumes: vec![],
        network: Default::default(),
    };
    instances.start(&Start::new(sleeper, Requirements::default(), backend)).unwrap();
    let Event::Started { pid, .. } = next(&mut rx).await else { panic!("not started") };
    instances.started(sleeper, pid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    instances.stop(sleeper, Duration::from_secs(2)).unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    assert!(instances.exited(&exit), "reported as stopped: {exit:?}");

    // A rootfs that is not one is refused before anything runs.
    let bad = Backend::Oci {
        rootfs: "relative/path".into(),
        args: vec!["true".into()],
        env: Default::default(),
        writable_root: false,
        volumes: vec![],
        network: Default::default(),
    };
    assert_eq!(
        instances.start(&Start::new(Uuid::new_v4(), Requirements::default(), bad)).unwrap_err().0,
        FailureReason::ImageFailure
    );
}

#[tokio::test]
async fn stats_report_cpu_and_disk_use() {
    let state = tempfile::tempdir().unwrap();
    let _no_leftovers = common::KillWorkloads(state.path().to_owned());
    let (tx, mut rx) = mpsc::channel(16);
    let mut instances = Instances::new(state.path(), shim(), Cgroups::Unavailable { why: "test".into() }, tx);
    let id = Uuid::new_v4();
    instances.start(&sh(id, "head -c 3000000 /dev/zero > blob; while :; do :; done", 16)).unwrap();
    let Event::Started { pid, .. } = next(&mut rx).await else { panic!("not started") };
    instances.started(id, pid);
    let usage_of = |instances: &mut Instances| instances.usage().into_iter().find(|(i, _)| *i == id).unwrap().1;
    assert_eq!(usage_of(&mut instances).cpu_percent, -1, "no share before a second sample");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let usage = usage_of(&mut instances);
    assert!(usage.cpu_percent >= 30, "a busy loop uses a good share of a CPU: {}", usage.cpu_percent);
    assert!(usage.disk_mb >= 2, "results/ holds 3 MB: {}", usage.disk_mb);
    instances.stop(id, Duration::from_millis(200)).unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    assert!(instances.exited(&exit));
}

#[tokio::test]
async fn sim_instances_have_no_files_of_their_own_and_are_re_adopted_from_the_sim_file() {
    let state = tempfile::tempdir().unwrap();
    let sim = |id: Uuid, duration_ms: u64| {
        let backend = Backend::Sim { duration_ms, mem_usage_mb: 7, exit_code: 0 };
        Start::new(id, Requirements { vcpus: 0, mem_mb: 8, ..Default::default() }, backend)
    };
    let (long, short) = (Uuid::new_v4(), Uuid::new_v4());
    {
        let (tx, mut rx) = mpsc::channel(16);
        let mut first = Instances::new(state.path(), shim(), Cgroups::Unavailable { why: "test".into() }, tx);
        first.start(&sim(long, 60_000)).unwrap();
        first.start(&sim(short, 1)).unwrap();
        let exit = loop {
            if let Event::Exited(e) = next(&mut rx).await {
                break e;
            }
        };
        assert_eq!(exit.instance, short);
        first.exited(&exit);
        assert!(!first.dir(long).exists(), "no directory per sim instance");
        assert!(first.usage().iter().any(|(id, u)| *id == long && u.memory_mb == 7), "a sim uses what it says");
        first.flush();
    }
    let (tx, mut rx) = mpsc::channel(16);
    let mut second = Instances::new(state.path(), shim(), Cgroups::Unavailable { why: "test".into() }, tx);
    let adopted = second.adopt();
    assert!(
        adopted.iter().any(|a| matches!(a, Adopted::Known { start, exit: None, .. } if start.instance_uuid == long)),
        "the long one runs on: {adopted:?}"
    );
    assert!(
        adopted.iter().any(|a| matches!(a, Adopted::Known { start, exit: Some(_), exit_reported: false, .. } if start.instance_uuid == short)),
        "the short one's end is still to report: {adopted:?}"
    );
    assert!(matches!(next(&mut rx).await, Event::Started { instance, .. } if instance == long));
    assert!(second.is_running(long));
    assert_eq!(second.tail(long, 100).unwrap(), (String::new(), false), "a sim writes no output");
}

fn tenant_sh(id: Uuid, tenant: &str, script: &str) -> Start {
    Start { tenant: Some(tenant.to_owned()), ..sh(id, script, 16) }
}

/// Workloads of a root launcher run as their tenant's unprivileged user, with `no_new_privs`
/// and a session of their own; one tenant cannot read another's results; a link planted as
/// `output.txt` does not make the launcher (root) read what it points to; root only when the
/// launcher allows it and the workload asks.
#[tokio::test]
async fn workloads_run_as_their_tenants_user_never_root_and_apart() {
    if !testutil::is_root() {
        testutil::skip(
            "root",
            "workloads_run_as_their_tenants_user_never_root_and_apart",
            "needs root to switch users",
        );
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let _no_leftovers = common::KillWorkloads(state.path().to_owned());
    let (tx, mut rx) = mpsc::channel(16);
    let no_limits = Cgroups::Unavailable { why: "test".into() };
    let users = Users::new(
        RunAs::PerTenant { first: 1_000_000_100, last: 1_000_000_199 },
        Default::default(),
        Default::default(),
        false,
    );
    let uids_file = state.path().join("tenant-uids.json");
    let mut instances = Instances::new(state.path(), shim(), no_limits, tx).with_users(users, Some(uids_file.clone()));

    let acme = Uuid::new_v4();
    let acme_results = instances.dir(acme).join("results");
    instances
        .start(&tenant_sh(acme, "acme", "echo uid=$(id -u); echo secret > secret.txt; grep NoNewPrivs /proc/self/status; ps -o sid= -p $$ 2>/dev/null || cat /proc/self/stat | cut -d' ' -f6"))
        .unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    let output = std::fs::read_to_string(instances.output(acme)).unwrap();
    assert_eq!(exit.code, Some(0), "{exit:?}: {output}");
    assert!(output.contains("uid=1000000100"), "acme's workload runs as acme's user: {output}");
    assert!(output.lines().any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')), "{output}");
    let session: i32 = output.lines().last().unwrap().trim().parse().unwrap();
    let launcher_session = nix::unistd::getsid(None).unwrap().as_raw();
    assert_ne!(session, launcher_session, "the workload is not in the launcher's session");
    assert!(std::fs::read_to_string(&uids_file).unwrap().contains("1000000100"), "the allocation is kept");

    let globex = Uuid::new_v4();
    let script = format!(
        "echo uid=$(id -u); cat {0}/secret.txt && echo READ || echo refused; ls {1} >/dev/null 2>&1 && echo LISTED || echo unlisted",
        acme_results.display(),
        state.path().join("instances").display()
    );
    instances.start(&tenant_sh(globex, "globex", &script)).unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    let output = std::fs::read_to_string(instances.output(globex)).unwrap();
    assert_eq!(exit.code, Some(0), "{exit:?}: {output}");
    assert!(output.contains("uid=1000000101"), "globex has a user of its own: {output}");
    assert!(output.contains("refused") && !output.contains("READ"), "another tenant's results stay closed: {output}");
    assert!(output.contains("unlisted"), "nobody lists the node's instances: {output}");

    // A workload that swaps its output for a link to a file only root may read.
    let sly = Uuid::new_v4();
    instances.start(&tenant_sh(sly, "acme", "rm -f output.txt; ln -s /etc/shadow output.txt")).unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    assert_eq!(exit.code, Some(0));
    assert!(instances.tail(sly, 4096).is_err(), "the launcher does not follow the link");

    // Root: refused unless the launcher allows it, and then only for work that asks.
    let wants_root = Uuid::new_v4();
    let refusal = instances.start(&Start { run_as_root: true, ..tenant_sh(wants_root, "acme", "id -u") }).unwrap_err();
    assert_eq!(refusal.0, FailureReason::NotPermitted, "{}", refusal.1);
    let (tx, mut rx) = mpsc::channel(16);
    let allowing = Users::new(
        RunAs::PerTenant { first: 1_000_000_100, last: 1_000_000_199 },
        Default::default(),
        Default::default(),
        true,
    );
    let mut instances = Instances::new(state.path(), shim(), Cgroups::Unavailable { why: "test".into() }, tx)
        .with_users(allowing, None);
    instances.start(&Start { run_as_root: true, ..tenant_sh(wants_root, "acme", "echo uid=$(id -u)") }).unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    let output = std::fs::read_to_string(instances.output(wants_root)).unwrap();
    assert_eq!((exit.code, output.trim()), (Some(0), "uid=0"));
}

#[tokio::test]
async fn a_root_task_keeps_its_state_directory_across_runs_and_gets_its_parameters_as_json() {
    let state = tempfile::tempdir().unwrap();
    let _no_leftovers = common::KillWorkloads(state.path().to_owned());
    let (tx, mut rx) = mpsc::channel(16);
    let mut instances = Instances::new(state.path(), shim(), Cgroups::Unavailable { why: "test".into() }, tx);
    let run = |n: u8| {
        let mut start = sh(Uuid::from_bytes([n; 16]), "echo run >> \"$DROVER_STATE_DIR/runs\"; cat parameters.json", 0);
        start.name = Some("build".into());
        start.version = Some("2".into());
        start.root_task = true;
        start.tenant = Some("acme".into());
        start.parameters = [("target".to_owned(), ssntp::payload::ParamValue::Text("/usr/bin/systemd".into()))].into();
        start
    };
    for n in 1..=2 {
        let start = run(n);
        instances.start(&start).unwrap();
        let exit = until_exit(&mut rx, &mut instances).await;
        assert_eq!(exit.reason, ExitReason::Completed, "{exit:?}");
        // The working directory is named after the task and its version.
        let dir = state.path().join("instances").join(format!("build@2.{}", start.instance_uuid));
        assert_eq!(instances.dir(start.instance_uuid), dir);
        let output = std::fs::read_to_string(dir.join("results/output.txt")).unwrap();
        let written: serde_json::Value = serde_json::from_str(&output).unwrap();
        assert_eq!(
            written,
            serde_json::json!({"target": "/usr/bin/systemd"}),
            "parameters.json in the working directory"
        );
        instances.exited(&exit);
    }
    let runs = std::fs::read_to_string(state.path().join("roots/acme/build/runs")).unwrap();
    assert_eq!(runs, "run\nrun\n", "one state directory for every run of the root");
    // A restarted launcher finds the instances again by their directories' names.
    let (tx, _rx) = mpsc::channel(16);
    let mut again = Instances::new(state.path(), shim(), Cgroups::Unavailable { why: "test".into() }, tx);
    assert_eq!(again.adopt().len(), 2);
    assert!(again.contains(Uuid::from_bytes([1; 16])));
}

/// The EVE seed's minimum OCI spec beyond the basics: a root the container may write (an
/// overlay of its own: the shared rootfs is never written), node directories bind-mounted
/// (only from a `--volume-root`, read-only when asked), and a network namespace of its own.
#[tokio::test]
async fn oci_containers_get_a_writable_root_of_their_own_volumes_and_their_own_network() {
    const TEST: &str = "oci_containers_get_a_writable_root_of_their_own_volumes_and_their_own_network";
    let runtime = ["/usr/sbin/runc", "/usr/bin/runc", "/usr/bin/crun"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists());
    let work = tempfile::tempdir().unwrap();
    let (Some(runtime), true, Some(rootfs)) = (runtime, testutil::is_root(), busybox_rootfs(work.path())) else {
        testutil::skip("oci", TEST, "needs root, runc or crun, and busybox-static");
        return;
    };
    for tool in ["touch", "ip", "grep", "wc"] {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool));
    }
    // A directory anyone may write in the shared rootfs: writes there must land in the overlay.
    std::fs::create_dir_all(rootfs.join("scratch")).unwrap();
    std::fs::set_permissions(rootfs.join("scratch"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let volumes_root = work.path().join("volumes");
    let (data, out) = (volumes_root.join("data"), volumes_root.join("out"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::write(data.join("input"), "from the node\n").unwrap();
    let state = work.path().join("state");
    let (tx, mut rx) = mpsc::channel(16);
    let users = Users::new(
        RunAs::PerTenant { first: 1_000_000_300, last: 1_000_000_399 },
        Default::default(),
        Default::default(),
        false,
    );
    let mut instances = Instances::new(&state, shim(), Cgroups::detect(Path::new("/sys/fs/cgroup")), tx)
        .with_oci_runtime(Some(runtime))
        .with_volume_roots(std::slice::from_ref(&volumes_root))
        .with_users(users, None);
    let volumes = vec![
        Volume { source: data.display().to_string(), destination: "/data".into(), read_only: true },
        Volume { source: out.display().to_string(), destination: "/out".into(), read_only: false },
    ];
    let script = "cat /data/input; echo changed > /scratch/file && echo wrote-root; \
                  touch /data/nope 2>/dev/null || echo data-is-read-only; echo result > /out/file; \
                  echo links=$(ls /sys/class/net | wc -l)";
    let backend = Backend::Oci {
        rootfs: rootfs.display().to_string(),
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: Default::default(),
        writable_root: true,
        volumes: volumes.clone(),
        network: OciNetwork::None,
    };
    let id = Uuid::new_v4();
    instances.start(&Start::new(id, Requirements { vcpus: 1, mem_mb: 64, ..Default::default() }, backend)).unwrap();
    let exit = until_exit(&mut rx, &mut instances).await;
    let output = std::fs::read_to_string(instances.output(id)).unwrap();
    assert_eq!(exit.code, Some(0), "{exit:?}: {output}");
    for line in ["from the node", "wrote-root", "data-is-read-only", "links=1"] {
        assert!(output.contains(line), "{line:?} in {output}");
    }
    assert!(!rootfs.join("scratch/file").exists(), "the shared rootfs was not written");
    assert_eq!(std::fs::read_to_string(out.join("file")).unwrap(), "result\n", "the writable volume was");
    instances.exited(&exit);
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounted.contains(&id.to_string()), "the overlay is unmounted at the end");

    // Refused before anything runs: a volume from outside the volume roots, a reserved
    // destination, a namespace that is not one of the node's.
    for (bad, why) in [
        (vec![Volume { source: "/etc".into(), destination: "/etc2".into(), read_only: true }], "--volume-root"),
        (
            vec![Volume { source: data.display().to_string(), destination: "/proc".into(), read_only: true }],
            "destination",
        ),
    ] {
        let backend = Backend::Oci {
            rootfs: rootfs.display().to_string(),
            args: vec!["true".into()],
            env: Default::default(),
            writable_root: false,
            volumes: bad,
            network: OciNetwork::Host,
        };
        let (reason, text) =
            instances.start(&Start::new(Uuid::new_v4(), Requirements::default(), backend)).unwrap_err();
        assert_eq!(reason, FailureReason::InvalidData);
        assert!(text.contains(why), "{text}");
    }
    let backend = Backend::Oci {
        rootfs: rootfs.display().to_string(),
        args: vec!["true".into()],
        env: Default::default(),
        writable_root: false,
        volumes: vec![],
        network: OciNetwork::Namespace("/etc/hostname".into()),
    };
    let (_, text) = instances.start(&Start::new(Uuid::new_v4(), Requirements::default(), backend)).unwrap_err();
    assert!(text.contains("not a namespace of this node"), "{text}");
}
