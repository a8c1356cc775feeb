//! The per-instance supervisor (`drover-launcher shim --dir DIR`), like containerd's shim.
//!
//! The launcher starts one shim per `process` instance and forgets about it; the shim outlives
//! launcher crashes. It:
//! 1. makes itself a session of its own with `no_new_privs` (inherited by the workload), reads
//!    `spec.json`, joins the instance's cgroups (the workload inherits them);
//! 2. starts the workload in its own process group as the spec's user, working directory =
//!    `results/`, stdout and stderr appended to `results/output.txt`, and writes its PID to `pid`;
//! 3. kills it when its maximum run time is up;
//! 4. waits for it, tells an OOM kill from other ends with the cgroup's `oom_kill` counter,
//!    kills what the workload left in its cgroups (daemons in other sessions), removes everything in the directory but `results/` and the state files, and writes
//!    `exit.json` last — the launcher (this one or a restarted one) reports from that file.

use std::io::Write as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ssntp::payload::ExitReason;

use crate::state::{files, read_json, write_json, ExitRecord, ShimSpec};

/// Exit code recorded when the workload could not be started at all (as a shell does).
pub const CANNOT_RUN: i32 = 127;

/// The OOM-kill counter of the first group, whichever cgroup version it is.
pub(crate) fn oom_kills(cgroups: &[std::path::PathBuf]) -> u64 {
    let Some(dir) = cgroups.first() else { return 0 };
    ["memory.oom_control", "memory.events"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .find_map(|text| text.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok())))
        .unwrap_or(0)
}

/// Appends a line of the shim's own to the instance's output, so the operator sees why.
pub(crate) fn note(dir: &Path, text: &str) {
    let path = dir.join(files::RESULTS).join(files::OUTPUT);
    if let Ok(mut f) = crate::state::open_output(&path, true) {
        let _ = writeln!(f, "drover: {text}");
    }
}

/// Keeps `results/` and the state files; removes what the workload left elsewhere (an OCI
/// bundle's overlay unmounted first).
pub fn clean_up(dir: &Path) {
    crate::oci::unmount_overlay(&dir.join("bundle"));
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if [files::RESULTS, files::STATE, files::EXIT, files::PID, files::SPEC].iter().any(|k| name == *k) {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
}

fn finish(dir: &Path, record: ExitRecord) -> i32 {
    clean_up(dir);
    match write_json(&dir.join(files::EXIT), &record) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("drover shim: {e}");
            1
        }
    }
}

/// The instance gets a session of its own (the shim leads it; no controlling terminal to reach
/// the operator's through) and `no_new_privs`, which the workload inherits: no set-user-ID
/// program gives it back the privileges it was started without. Done in the shim itself, as
/// the first thing, because doing it in the workload's pre-exec step would need `unsafe`.
fn isolate() -> Result<(), String> {
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    Ok(())
}

/// Runs the shim for the instance in `dir`; returns the shim's own exit code.
pub fn run(dir: &Path) -> i32 {
    if let Err(e) = isolate() {
        note(dir, &format!("cannot isolate the workload: {e}"));
        return finish(dir, ExitRecord { code: Some(CANNOT_RUN), signal: None, reason: ExitReason::Failed });
    }
    let spec: ShimSpec = match read_json(&dir.join(files::SPEC)) {
        Ok(Some(spec)) => spec,
        Ok(None) => {
            note(dir, "spec.json missing; nothing to run");
            return finish(dir, ExitRecord { code: Some(CANNOT_RUN), signal: None, reason: ExitReason::Failed });
        }
        Err(e) => {
            note(dir, &e.to_string());
            return finish(dir, ExitRecord { code: Some(CANNOT_RUN), signal: None, reason: ExitReason::Failed });
        }
    };
    if let Err(e) = crate::cgroup::join(&spec.cgroups) {
        note(dir, &format!("cannot apply limits: {e}"));
        return finish(dir, ExitRecord { code: Some(CANNOT_RUN), signal: None, reason: ExitReason::Failed });
    }
    if let Some(group) = &spec.resctrl {
        // The workload, forked after this, inherits the group's cache ways.
        if let Err(e) = std::fs::write(group.join("tasks"), std::process::id().to_string()) {
            note(dir, &format!("cannot join the cache group {}: {e}", group.display()));
            return finish(dir, ExitRecord { code: Some(CANNOT_RUN), signal: None, reason: ExitReason::Failed });
        }
    }
    let output = dir.join(files::RESULTS).join(files::OUTPUT);
    let open = || crate::state::open_output(&output, true);
    let (Ok(out), Ok(err)) = (open(), open()) else {
        return finish(dir, ExitRecord { code: Some(CANNOT_RUN), signal: None, reason: ExitReason::Failed });
    };
    let Some((program, args)) = spec.argv.split_first() else {
        note(dir, "argv is empty");
        return finish(dir, ExitRecord { code: Some(CANNOT_RUN), signal: None, reason: ExitReason::Failed });
    };
    let work = dir.join(files::RESULTS);
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(base_env(&work))
        .envs(&spec.env)
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if let Some(user) = spec.user {
        // std drops the supplementary groups too when it switches away from root.
        command.uid(user.uid).gid(user.gid);
    }
    let spawned = command.process_group(0).spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            note(dir, &format!("cannot run {program:?}: {e}"));
            return finish(dir, ExitRecord { code: Some(CANNOT_RUN), signal: None, reason: ExitReason::Failed });
        }
    };
    let pid = child.id();
    if let Err(e) = std::fs::write(dir.join(files::PID), pid.to_string()) {
        note(dir, &format!("cannot record the PID: {e}"));
    }
    let timed_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(limit) = spec.max_run_time_s {
        let timed_out = timed_out.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(limit));
            timed_out.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Ok(group) = i32::try_from(pid) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), nix::sys::signal::Signal::SIGKILL);
            }
        });
    }
    let status = loop {
        match child.wait() {
            Ok(status) => break Some(status),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break None,
        }
    };
    // The group is this instance's alone, so any OOM kill in it was this workload's — even
    // when the kernel picked a child and the main process then exited with a code.
    let oom = oom_kills(&spec.cgroups) > 0;
    // The instance ends with its main process: stragglers in its process group go too, and the
    // shim leaves the instance's cgroups, so they are empty (removable) once exit.json appears.
    if let Ok(group) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), nix::sys::signal::Signal::SIGKILL);
    }
    crate::cgroup::leave(&spec.cgroups);
    // What the workload left running in another process group or session goes too: nothing
    // of an ended instance runs on unaccounted, and its groups can be removed.
    if !crate::cgroup::kill_all(&spec.cgroups, Duration::from_secs(5)) {
        note(dir, "processes of the workload's were still in its cgroup after SIGKILL");
    }
    // The shim knows the groups are empty now; removing them here does not depend on a launcher
    // being alive when the workload ends.
    for dir in &spec.cgroups {
        let _ = std::fs::remove_dir(dir);
    }
    // Its cache group too (resctrl moves any task left in it back to the default group), so
    // the ways are free again even if no launcher runs now.
    if let Some(group) = &spec.resctrl {
        crate::resctrl::remove(group);
    }
    let record = match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(0), _) => ExitRecord { code: Some(0), signal: None, reason: ExitReason::Completed },
            (code, signal) if oom => {
                note(dir, "killed: out of memory (cgroup limit)");
                ExitRecord { code, signal, reason: ExitReason::Oom }
            }
            (Some(code), _) => ExitRecord { code: Some(code), signal: None, reason: ExitReason::Failed },
            (None, signal) => {
                if timed_out.load(std::sync::atomic::Ordering::SeqCst) {
                    note(dir, "killed: maximum run time reached");
                }
                ExitRecord { code: None, signal, reason: ExitReason::Killed }
            }
        },
        None => ExitRecord { code: None, signal: None, reason: ExitReason::Unknown },
    };
    finish(dir, record)
}

/// Where programs are looked up when the launcher itself has no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a workload's environment starts from: nothing of the launcher's own (its log settings,
/// its service manager's variables, whatever its operator exported) but `PATH`, and `HOME` set
/// to its working directory; its START's `env` and the node's `DROVER_*` go on top.
fn base_env(work: &Path) -> [(String, String); 2] {
    [
        ("PATH".to_owned(), std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned())),
        ("HOME".to_owned(), work.display().to_string()),
    ]
}
