//! Every write the store acknowledged survives `kill -9` of the process that wrote it.
//!
//! The test runs its own binary again as a writer (`writer_until_killed`, ignored unless asked
//! for) that creates instances one transaction at a time and prints `ACK <uuid>` after each
//! commit; it kills the writer mid-stream, reopens the store, and looks for every acknowledged
//! instance.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_controller::lifecycle::{Lifecycle, Restart, RestartPolicy};
use drover_controller::store::Store;
use ssntp::Uuid;

const RESTART: Restart = Restart { policy: RestartPolicy::Never, attempts: 0, backoff_ms: 0 };
const ENV: &str = "DROVER_STORE_CRASH_PATH";

#[test]
#[ignore = "run by acknowledged_writes_survive_kill_9 as a child process"]
fn writer_until_killed() {
    let Ok(path) = std::env::var(ENV) else { return };
    let store = Store::open(std::path::Path::new(&path)).unwrap();
    loop {
        let ids = store.create_instances("acme", "web", 1, &Lifecycle::new(RESTART, 0), "", None).unwrap();
        println!("ACK {}", ids[0]);
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["writer_until_killed", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked: Vec<Uuid> = Vec::new();
    let started = Instant::now();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.push(id.parse().unwrap());
            if acked.len() == 300 {
                child.kill().unwrap(); // SIGKILL, mid-stream
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "writer too slow");
    }
    child.wait().unwrap();
    assert_eq!(acked.len(), 300, "the writer acknowledged writes");
    let store = Store::open(&path).unwrap();
    let stored: std::collections::HashSet<Uuid> = store.instances(None).unwrap().into_iter().map(|r| r.uuid).collect();
    let lost: Vec<&Uuid> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "{} acknowledged instances lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    assert!(store.revision().unwrap() >= 300);
}
