//! The dashboard in a real browser: headless Chromium (Debian's `chromium`) presents the admin
//! user's client certificate from an NSS database of its own, loads the pages of a small live
//! cluster, runs their scripts, and the DOM shows the nodes and instances. A screenshot of
//! `/ui` is saved as `target/dashboard.png` (CI keeps it as an artifact).
//!
//! Chromium picks a client certificate without asking only by policy
//! (`AutoSelectCertificateForUrls`), which it reads from `/etc/chromium/policies`. The test
//! never writes there: Chromium runs in a mount namespace of its own where a directory of the
//! test's is bind-mounted over `/etc/chromium`, so it needs root.

#![allow(clippy::disallowed_methods)] // tests wait with the real clock

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{create_workload, instance_when, launch_one, Cluster};

const TEST: &str = "the_dashboard_renders_the_cluster_in_chromium_with_a_client_certificate";

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A browser profile: HOME with an NSS database holding the CA and the user's certificate,
/// and the policy directory that will stand in for `/etc/chromium`.
struct Browser {
    home: tempfile::TempDir,
    api: String,
}

impl Browser {
    fn new(cluster: &Cluster) -> Self {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let db = format!("sql:{}", h.join(".pki/nssdb").display());
        std::fs::create_dir_all(h.join(".pki/nssdb")).unwrap();
        run("certutil", &["-N", "-d", &db, "--empty-password"]);
        let ca = cluster.pki.ca().display().to_string();
        run("certutil", &["-A", "-d", &db, "-n", "drover-ca", "-t", "CT,C,C", "-i", &ca]);
        let p12 = h.join("user.p12").display().to_string();
        let (cert, key) = (cluster.pki.cert("user-admin"), cluster.pki.key("user-admin"));
        run(
            "openssl",
            &[
                "pkcs12",
                "-export",
                "-in",
                &cert.display().to_string(),
                "-inkey",
                &key.display().to_string(),
                "-out",
                &p12,
                "-passout",
                "pass:",
            ],
        );
        run("pk12util", &["-i", &p12, "-d", &db, "-W", ""]);
        let etc = h.join("etc-chromium");
        std::fs::create_dir_all(etc.join("policies/managed")).unwrap();
        for entry in std::fs::read_dir("/etc/chromium").unwrap().flatten() {
            if entry.path().is_file() {
                std::fs::copy(entry.path(), etc.join(entry.file_name())).unwrap();
            }
        }
        let pattern = serde_json::json!({"pattern": format!("https://{}", cluster.api_addr), "filter": {}}).to_string();
        let policy = serde_json::json!({"AutoSelectCertificateForUrls": [pattern]});
        std::fs::write(etc.join("policies/managed/drover-test.json"), policy.to_string()).unwrap();
        Self { home, api: cluster.api_addr.clone() }
    }

    /// Chromium on `path`, with `what` (`--dump-dom` or `--screenshot=FILE`); its stdout.
    fn chromium(&self, path: &str, what: &str) -> String {
        let h = self.home.path();
        let profile = tempfile::tempdir_in(h).unwrap();
        let script = format!(
            "mount --bind {etc} /etc/chromium && exec env HOME={home} timeout 60 chromium --headless --no-sandbox \
             --disable-gpu --disable-quic --no-first-run --disable-background-networking --disable-component-update \
             --disable-sync --user-data-dir={profile} --window-size=1280,900 --virtual-time-budget=4000 {what} https://{api}{path}",
            etc = h.join("etc-chromium").display(),
            home = h.display(),
            profile = profile.path().display(),
            api = self.api,
        );
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "chromium on {path}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn missing_tool() -> Option<String> {
    for tool in ["chromium", "certutil", "pk12util", "openssl", "unshare"] {
        let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            return Some(format!("no {tool} (apt-get install chromium libnss3-tools openssl util-linux)"));
        }
    }
    (!Path::new("/etc/chromium").is_dir()).then(|| "no /etc/chromium (the chromium package makes it)".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_the_cluster_in_chromium_with_a_client_certificate() {
    if let Some(why) = missing_tool() {
        testutil::skip("chromium", TEST, &why);
        return;
    }
    if !testutil::is_root() {
        testutil::skip("root", TEST, "Chromium's policy directory is replaced in a mount namespace, which needs root");
        return;
    }
    let cluster = Cluster::start(&[&["--backend", "sim", "--label", "zone=b"]]);
    cluster.wait_ready(1).await;
    let api = cluster.admin();
    create_workload(&api, common::SIM_WORKLOAD).await;
    let ids = [launch_one(&api, "sim").await, launch_one(&api, "sim").await];
    for id in &ids {
        instance_when(&api, id, "running", common::PATIENCE, |i| i["state"] == "running").await;
    }
    let browser = Browser::new(&cluster);

    let nodes = browser.chromium("/ui/nodes", "--dump-dom");
    assert!(nodes.contains("tenant <b>admin</b>"), "the certificate was presented: {nodes}");
    assert!(nodes.contains("zone=b") && nodes.contains("st-ready"), "the node, ready, with its label: {nodes}");
    assert!(nodes.contains("htmx-"), "the page's script ran (htmx marks what it manages): {nodes}");

    let instances = browser.chromium("/ui/instances?state=running", "--dump-dom");
    for id in &ids {
        assert!(instances.contains(&format!("data-instance=\"{id}\"")), "{id} in {instances}");
    }

    let shot: PathBuf = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/dashboard.png"));
    let _ = std::fs::remove_file(&shot);
    browser.chromium("/ui", &format!("--screenshot={}", shot.display()));
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real picture: {} bytes", png.len());
    eprintln!("screenshot: {}", shot.display());
}
