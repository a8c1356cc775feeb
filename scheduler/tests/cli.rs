//! The scheduler binary refuses bad configuration with exit code 64 and a message a person can
//! act on, before binding anything.

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
