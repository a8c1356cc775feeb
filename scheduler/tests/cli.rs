//! The scheduler binary refuses bad configuration with exit code 64 and a message a person can
//! act on, before binding anything; `--config FILE` sets flags from TOML.

#![allow(clippy::disallowed_methods)] // a test waits with the real clock

use std::process::Command;

fn scheduler(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drover-scheduler")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_configuration_exits_64_with_a_reason() {
    let pki = testutil::Pki::new();
    let s = |stem: &str| pki.cert(stem).display().to_string();
    let k = |stem: &str| pki.key(stem).display().to_string();
    let ca = pki.ca().display().to_string();

    let (code, err) = scheduler(&["--bogus"]);
    assert_eq!(code, 64, "{err}");
    let (code, err) = scheduler(&["--cacert", &ca, "--cert", "/no/such.pem"]);
    assert_eq!(code, 64);
    assert!(err.contains("/no/such.pem"), "{err}");
    // A controller certificate cannot run the scheduler.
    let (code, err) =
        scheduler(&["--cacert", &ca, "--cert", &s("controller"), "--key", &k("controller"), "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 64);
    assert!(err.contains("needs scheduler"), "{err}");
    let (code, err) = scheduler(&["--cacert", &ca, "--cert", &s("scheduler"), "--listen", "nowhere"]);
    assert_eq!(code, 64, "{err}");
    // --help explains and succeeds.
    let (code, _) = scheduler(&["--help"]);
    assert_eq!(code, 0);
}

/// `--config FILE`: TOML keys are flags, checked as flags (64 and the flag's own message), a
/// key that is no flag is refused naming the file; a flag on the command line wins.
#[test]
fn a_config_file_sets_flags_and_the_command_line_wins() {
    let pki = testutil::Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scheduler.toml");
    let config = file.display().to_string();
    let tls = format!(
        "cacert = {:?}\ncert = {:?}\nkey = {:?}\n",
        pki.ca().display().to_string(),
        pki.cert("scheduler").display().to_string(),
        pki.key("scheduler").display().to_string()
    );

    std::fs::write(&file, format!("{tls}listen = \"nowhere\"\n")).unwrap();
    let (code, err) = scheduler(&["--config", &config]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("nowhere") && err.contains(&format!("(the flags include those of --config {config})")),
        "{err}"
    );

    std::fs::write(&file, format!("{tls}lisen = \"127.0.0.1:0\"\n")).unwrap();
    let (code, err) = scheduler(&["--config", &config]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains(&format!("--config {config}: lisen: not a flag of drover-scheduler")), "{err}");

    let (code, err) = scheduler(&["--config", "/no/such.toml"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--config /no/such.toml"), "{err}");

    // The file's --listen is replaced by the command line's; it starts and serves.
    std::fs::write(&file, format!("{tls}listen = \"127.0.0.1:9\"\npolicy = \"binpack\"\n")).unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover-scheduler"))
        .args(["--config", &config, "--listen", "127.0.0.1:0"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("scheduler listening")
            || child.try_wait().unwrap().is_some()
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(running && text.contains("scheduler listening") && text.contains("listen=127.0.0.1:"), "{text}");
    assert!(!text.contains("listen=127.0.0.1:9 "), "the command line's address, not the file's: {text}");
}

/// The configuration a package installs (`deploy/etc/drover/scheduler.toml`) is one the
/// scheduler takes.
#[test]
fn the_packaged_configuration_parses() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/etc/drover/scheduler.toml");
    let argv = ["drover-scheduler", "--config", file].map(std::ffi::OsString::from).to_vec();
    let args = ssntp::config_file::parse::<drover_scheduler::cli::Args>(argv).unwrap();
    assert_eq!(args.listen, "0.0.0.0:8888".parse().unwrap());
}

/// `--log` sets levels per module (over `RUST_LOG`); `--cpu-profile FILE` writes a pprof
/// profile when the daemon exits (ciao's `-cpuprofile`).
#[test]
fn log_levels_per_module_and_a_cpu_profile_on_exit() {
    let pki = testutil::Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("scheduler.pprof");
    let (code, err) = scheduler(&["--log", "info,=bad[", "--cacert", "x", "--cert", "y"]);
    assert_eq!(code, 64, "a bad filter is a usage error: {err}");
    let port = testutil::process::free_port().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_drover-scheduler"))
        .env("RUST_LOG", "error")
        .args(["--listen", &format!("127.0.0.1:{port}"), "--heartbeat", "--log", "warn,drover_scheduler=debug"])
        .arg("--cacert")
        .arg(pki.ca())
        .arg("--cert")
        .arg(pki.cert("scheduler"))
        .arg("--key")
        .arg(pki.key("scheduler"))
        .arg("--cpu-profile")
        .arg(&profile)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("DEBUG drover_scheduler"),
        "debug for the scheduler's own modules, over RUST_LOG=error: {log}"
    );
    assert!(!log.contains("INFO ssntp"), "other modules at warn: {log}");
    let bytes = std::fs::read(&profile).unwrap_or_else(|e| panic!("{}: {e}\n{log}", profile.display()));
    // A pprof Profile: protobuf whose first field is sample_type (field 1, length-delimited).
    assert!(bytes.len() > 16 && bytes[0] == 0x0a, "{} bytes", bytes.len());
}
