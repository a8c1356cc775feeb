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
    assert_eq!(launcher(&["--help"]).0, 0);
}
