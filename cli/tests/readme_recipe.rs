//! The README's "Running on several machines" recipe, run as written on network namespaces this
//! test creates: one per machine with the recipe's address, all on one bridge in a namespace of
//! its own (nothing touches the host's network). Each ```sh block starts with `# on HOST` or
//! `# on HOST (ADDRESS)`; the daemons in a block start in the background in that host's
//! namespace, everything else runs there as one `sh -e` script, which must succeed. The
//! machines share one directory, which stands in for copying the files (step 2), and each
//! machine's `/var/lib/drover` is a directory of its own under it: the one substitution.
//!
//! When the README drifts (a flag renamed, a certificate missing, an address that does not
//! match), this fails. Needs root and iproute2 (the `netns` feature).

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testutil::netlab::Lab;

const DAEMONS: [&str; 3] = ["drover-scheduler", "drover-controller", "drover-launcher"];

/// One ```sh block of the recipe: where it runs and its lines.
#[derive(Debug)]
struct Block {
    host: String,
    address: Option<String>,
    lines: Vec<String>,
}

/// The recipe's blocks, in order.
fn recipe(readme: &str) -> Vec<Block> {
    let start = readme.find("## Running on several machines").expect("the README has the recipe");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in section.lines().map(str::trim) {
        match (&mut current, line) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => {
                let lines = current.take().unwrap_or_default();
                let header =
                    lines.first().and_then(|l| l.strip_prefix("# on ")).expect("a block starts with `# on HOST`");
                let (host, address) = match header.split_once(" (") {
                    Some((h, rest)) => (h.trim().to_owned(), Some(rest.trim_end_matches(')').to_owned())),
                    None => (header.trim().to_owned(), None),
                };
                blocks.push(Block { host, address, lines: lines[1..].to_vec() });
            }
            (Some(lines), line) => lines.push(line.to_owned()),
            (None, _) => {}
        }
    }
    blocks
}

/// A command running `script` with `sh` on `host`, with the built binaries on its `PATH`.
fn command(lab: &Lab, host: &str, script: &str, work: &Path, bin: &Path) -> Command {
    let mut c = lab.shell(host, script);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    c.current_dir(work).env("PATH", path).env("NO_COLOR", "1");
    c
}

/// Runs `script` on `host` until it succeeds (the daemons it talks to may still be starting),
/// for at most `patience`; its output.
fn until_ok(lab: &Lab, host: &str, script: &str, work: &Path, bin: &Path, patience: Duration) -> String {
    let deadline = Instant::now() + patience;
    loop {
        let out = command(lab, host, script, work, bin).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            return text;
        }
        assert!(Instant::now() < deadline, "on {host}: `{script}` kept failing:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn logs(work: &Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(work.join("logs")).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        all.push_str(&format!("--- {} ---\n", entry.file_name().to_string_lossy()));
        for line in tail.into_iter().rev() {
            all.push_str(line);
            all.push('\n');
        }
    }
    all
}

#[test]
fn the_readme_recipe_for_several_machines_works_as_written() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let blocks = recipe(&readme);
    assert!(blocks.len() >= 5, "the recipe's blocks: {blocks:?}");
    let addresses: BTreeMap<String, String> =
        blocks.iter().filter_map(|b| b.address.clone().map(|a| (b.host.clone(), a))).collect();
    let mut lab = match Lab::new(&addresses) {
        Ok(lab) => lab,
        Err(e) => {
            let why = format!("cannot create network namespaces (needs root and iproute2): {e}");
            testutil::skip("netns", "the_readme_recipe_for_several_machines_works_as_written", &why);
            return;
        }
    };
    let bin: PathBuf = Path::new(env!("CARGO_BIN_EXE_drover")).parent().unwrap().to_owned();
    for name in DAEMONS.iter().chain(&["drover-cert"]) {
        assert!(
            bin.join(name).exists(),
            "{name} is built by `cargo test --workspace`; run the whole workspace's tests"
        );
    }
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    std::fs::create_dir_all(work.join("logs")).unwrap();
    // The user has the repository's examples at hand.
    let examples = work.join("examples");
    std::fs::create_dir_all(&examples).unwrap();
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")).unwrap().flatten() {
        std::fs::copy(entry.path(), examples.join(entry.file_name())).unwrap();
    }

    for block in &blocks {
        let var = work.join(&block.host).join("var/lib/drover");
        std::fs::create_dir_all(&var).unwrap();
        let own = |line: &str| line.replace("/var/lib/drover", &var.display().to_string());
        let (daemons, script): (Vec<&String>, Vec<&String>) = block
            .lines
            .iter()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .partition(|l| DAEMONS.iter().any(|d| l.split_whitespace().next() == Some(*d)));
        for (n, line) in daemons.iter().enumerate() {
            let log = std::fs::File::create(work.join("logs").join(format!("{}-{n}.log", block.host))).unwrap();
            let child = command(&lab, &block.host, &format!("exec {}", own(line)), work, &bin)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            lab.adopt(&block.host, child);
        }
        if script.is_empty() {
            continue;
        }
        let script: Vec<String> = script.iter().map(|l| own(l)).collect();
        let script = script.join("\n");
        if block.host == "user" {
            // "You should see both nodes `ready`": wait for it, then run the block as written.
            let api = |cmd: &str| {
                format!("{}\n{cmd}", script.lines().filter(|l| l.starts_with("export ")).collect::<Vec<_>>().join("\n"))
            };
            let nodes = until_ok(&lab, "user", &api("drover --json node ls"), work, &bin, Duration::from_secs(60));
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut nodes = nodes;
            while nodes.matches("\"ready\"").count() < 2 {
                assert!(Instant::now() < deadline, "both nodes READY:\n{nodes}\n{}", logs(work));
                std::thread::sleep(Duration::from_millis(500));
                nodes = until_ok(&lab, "user", &api("drover --json node ls"), work, &bin, Duration::from_secs(10));
            }
        }
        let out = command(&lab, &block.host, &script, work, &bin).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "on {}:\n{script}\nfailed:\n{text}\n{}", block.host, logs(work));
        if block.host == "user" {
            assert!(text.contains("exited(0)"), "the workload ran to completion:\n{text}\n{}", logs(work));
        }
    }
    assert!(lab.all_running(), "every daemon still runs:\n{}", logs(work));
}
