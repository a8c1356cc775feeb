//! The launcher binary refuses bad configuration with exit code 64 and a reason, before it
//! dials anything.
//!
//! (This file also makes `cargo test --workspace` build the `drover-launcher` binary, which the
//! controller's `drover up` test runs: cargo builds a package's binaries for its integration
//! tests only.)

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

use std::process::Command;

fn launcher(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drover-launcher")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_configuration_exits_64_with_a_reason() {
    let pki = testutil::Pki::new();
    let state = tempfile::tempdir().unwrap();
    let state = state.path().to_str().unwrap();
    let ca = pki.ca().display().to_string();
    let cert = |stem: &str| pki.cert(stem).display().to_string();
    let key = |stem: &str| pki.key(stem).display().to_string();

    let (code, err) = launcher(&["--cacert", &ca, "--cert", &cert("agent")]);
    assert_eq!(code, 64, "--server is required: {err}");
    let (code, err) =
        launcher(&["--server", "127.0.0.1:1", "--cacert", &ca, "--cert", &cert("agent"), "--report-interval", "soon"]);
    assert_eq!(code, 64);
    assert!(err.contains("not a duration"), "{err}");
    let (code, err) = launcher(&[
        "--server",
        "127.0.0.1:1",
        "--cacert",
        &ca,
        "--cert",
        &cert("controller"),
        "--key",
        &key("controller"),
        "--state-dir",
        state,
    ]);
    assert_eq!(code, 64);
    assert!(err.contains("needs agent"), "{err}");
    let (code, err) = launcher(&[
        "--server",
        "bad host:1",
        "--cacert",
        &ca,
        "--cert",
        &cert("agent"),
        "--key",
        &key("agent"),
        "--state-dir",
        state,
    ]);
    assert_eq!(code, 64);
    assert!(err.contains("bad host"), "{err}");
    // The artifact backend needs a runtime among the hypervisor tools, and volumes to run from.
    let tools = tempfile::tempdir().unwrap();
    let tools_dir = tools.path().display().to_string();
    let artifact = |extra: &[&str]| {
        let mut args = vec!["--server", "127.0.0.1:1", "--cacert", &ca];
        let (c, k) = (cert("agent"), key("agent"));
        args.extend(["--cert", &c, "--key", &k, "--state-dir", state, "--backend", "artifact"]);
        args.extend(["--hypervisor-tools", &tools_dir]);
        args.extend(extra);
        launcher(&args)
    };
    let (code, err) = artifact(&[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("needs a runtime, java, in --hypervisor-tools"), "{err}");
    let java = tools.path().join("java");
    std::fs::write(&java, "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&java, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, err) = artifact(&[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("give --volume-root DIR"), "{err}");
    assert_eq!(launcher(&["--help"]).0, 0);
}

/// A launcher that cannot connect says why, at warning level, with what to fix — here the
/// scheduler's certificate does not name the address dialled — and does not repeat it every
/// retry.
#[tokio::test]
async fn a_launcher_that_cannot_connect_says_what_to_fix() {
    let pki = testutil::Pki::new();
    pki.issue_named(ssntp::Role::SCHEDULER, "narrow", &["sched.example"], &[]);
    let server = testutil::TestServer::start_with(&pki, "scheduler-narrow", |_| {}).await;
    let state = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover-launcher"))
        .args(["--server", &format!("127.0.0.1:{}", server.addr.port()), "--cacert"])
        .arg(pki.ca())
        .arg("--cert")
        .arg(pki.cert("agent"))
        .arg("--key")
        .arg(pki.key("agent"))
        .arg("--state-dir")
        .arg(state.path().join("s"))
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN") && l.contains("cannot connect")).collect();
    assert_eq!(warnings.len(), 1, "said once while it lasts: {log}");
    assert!(warnings[0].contains("does not name"), "{log}");
    assert!(warnings[0].contains("--host/--ip 127.0.0.1"), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes in a log that is not a terminal");
}

/// The configuration a package installs (`deploy/etc/drover/launcher.toml`) is one the
/// launcher takes; a key that is no flag is refused with exit 64, naming the file.
#[test]
fn the_packaged_configuration_parses_and_a_bad_key_is_refused() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/etc/drover/launcher.toml");
    let argv = ["drover-launcher", "--config", file].map(std::ffi::OsString::from).to_vec();
    let args = ssntp::config_file::parse::<drover_launcher::cli::Args>(argv).unwrap();
    assert_eq!(args.backends, ["process"]);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "servr = [\"127.0.0.1:8888\"]\n").unwrap();
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_drover-launcher")).arg("--config").arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("servr: not a flag of drover-launcher"), "{err}");
}

#[test]
fn doctor_inspects_this_host_and_asks_when_interactive() {
    // This machine, non-interactive: facts, flags with reasons, a command line.
    let out = Command::new(env!("CARGO_BIN_EXE_drover-launcher")).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for want in [
        "This host:",
        "memory",
        "cgroups",
        "Recommended:",
        "--mem-reserve-mb",
        "--backend process",
        "--max-instances",
        "Command line:",
    ] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
    // Interactive: a build node on a shared machine.
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover-launcher"))
        .args(["doctor", "--interactive"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(b"builds\nyes\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("[b]uilds") && text.contains("a quarter of its"), "{text}");
    assert!(text.contains("--label kind=build") && text.contains("builds are CPU-bound"), "{text}");
    // A bad flag is a usage error.
    let (code, _) = launcher(&["doctor", "--no-such-flag"]);
    assert_eq!(code, 64);
}
