//! The whole highly available cluster on separate "hosts" — network namespaces with their own
//! addresses on one bridge: three etcd members, two schedulers, two controllers, three launchers
//! and a user. Partitions are real: a host's link goes down.
//!
//! - The leading controller, alive but cut off, loses leadership; the other leads and takes work;
//!   after healing the first comes back as a standby; nothing runs twice, nothing is lost.
//! - The active scheduler's host is cut off: launchers and controllers move to the other; no
//!   instance is restarted and no node is declared lost.
//!
//! Needs root, iproute2 (`netns`) and etcd (`etcd`).

#![allow(clippy::disallowed_methods)] // tests measure and wait with the real clock

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::bin;
use serde_json::Value;
use testutil::netlab::Lab;

const NET: &str = "10.214.7";

fn addr(host: &str) -> String {
    let last = match host {
        "s1" => 1,
        "s2" => 2,
        "e1" => 11,
        "e2" => 12,
        "e3" => 13,
        "c1" => 21,
        "c2" => 22,
        "n1" => 31,
        "n2" => 32,
        "n3" => 33,
        "user" => 100,
        other => panic!("no host {other}"),
    };
    format!("{NET}.{last}")
}

struct Hosts {
    lab: Lab,
    work: tempfile::TempDir,
    pki: testutil::Pki,
}

impl Hosts {
    fn logs(&self) -> PathBuf {
        self.work.path().join("logs")
    }

    /// `drover ARGS --json` as the user, against the API at `api`; the parsed answer.
    fn drover(&self, api: &str, args: &[&str]) -> Result<Value, String> {
        let mut all: Vec<String> = vec![
            "--api".into(),
            api.into(),
            "--cacert".into(),
            self.pki.ca().display().to_string(),
            "--cert".into(),
            self.pki.cert("user-admin").display().to_string(),
            "--json".into(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let out = self.lab.command("user", &bin("drover"), &all).output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
        }
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    }

    fn tail(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.logs()).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            all.push_str(&format!("--- {} ---\n", entry.file_name().to_string_lossy()));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }
}

/// Waits up to `limit` for `check` to give a value.
fn within<T>(hosts: &Hosts, what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}\n{}", hosts.tail());
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn running(status: &Value) -> u64 {
    status["instances"]["running"].as_u64().unwrap_or(0)
}

fn start(lab: Lab) -> Hosts {
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("logs")).unwrap();
    let pki = common::cluster_pki();
    let mut hosts = Hosts { lab, work, pki };
    let etcd = testutil::etcd::etcd_binary().unwrap();
    let members = ["e1", "e2", "e3"];
    let initial: Vec<String> = members.iter().map(|m| format!("{m}=http://{}:2380", addr(m))).collect();
    for m in members {
        let a = addr(m);
        let args: Vec<String> = [
            "--name",
            m,
            "--data-dir",
            &hosts.work.path().join(m).display().to_string(),
            "--listen-client-urls",
            &format!("http://{a}:2379"),
            "--advertise-client-urls",
            &format!("http://{a}:2379"),
            "--listen-peer-urls",
            &format!("http://{a}:2380"),
            "--initial-advertise-peer-urls",
            &format!("http://{a}:2380"),
            "--initial-cluster",
            &initial.join(","),
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "ha-hosts",
        ]
        .map(String::from)
        .to_vec();
        let log = hosts.logs().join(format!("{m}.log"));
        hosts.lab.spawn(m, &etcd, &args, &log);
    }
    let endpoints: Vec<String> = members.iter().map(|m| format!("{}:2379", addr(m))).collect();
    let endpoints = endpoints.join(",");
    let schedulers = [format!("{}:8888", addr("s1")), format!("{}:8888", addr("s2"))];
    let servers: Vec<String> = schedulers.iter().flat_map(|s| ["--server".to_owned(), s.clone()]).collect();
    for s in ["s1", "s2"] {
        let cert = hosts.pki.issue_named(ssntp::Role::SCHEDULER, s, &[&addr(s)], &[]);
        let mut args = drover_cli::local::scheduler_args(&format!("{}:8888", addr(s)), &hosts.pki.paths(&cert, false));
        args.extend(
            ["--load-threshold", "1000", "--cpu-overcommit", "600", "--etcd-endpoints", &endpoints].map(String::from),
        );
        let log = hosts.logs().join(format!("{s}.log"));
        hosts.lab.spawn(s, &bin("drover-scheduler"), &args, &log);
        if s == "s1" {
            // s1 first, so that it is the active one.
            std::thread::sleep(Duration::from_secs(3));
        }
    }
    let api_cert = hosts.pki.issue_named(ssntp::Role::SERVER, "api-ha", &[&addr("c1"), &addr("c2")], &[]);
    for c in ["c1", "c2"] {
        let cert = hosts.pki.issue_named(ssntp::Role::CONTROLLER, c, &[], &[]);
        let dir = hosts.work.path().join(c);
        let mut args = drover_cli::local::controller_args(
            &schedulers[0],
            &dir,
            &format!("{}:8889", addr(c)),
            &hosts.pki.cert(&api_cert),
            &hosts.pki.paths(&cert, false),
        );
        args.extend(servers[2..].iter().cloned());
        args.extend(["--store", "etcd", "--etcd-endpoints", &endpoints].map(String::from));
        let log = hosts.logs().join(format!("{c}.log"));
        hosts.lab.spawn(c, &bin("drover-controller"), &args, &log);
        if c == "c1" {
            std::thread::sleep(Duration::from_secs(3));
        }
    }
    for n in ["n1", "n2", "n3"] {
        let cert = hosts.pki.issue_named(ssntp::Role::AGENT, n, &[], &[]);
        let mut args = drover_cli::local::launcher_args(
            &schedulers[0],
            &hosts.work.path().join(n),
            &hosts.pki.paths(&cert, false),
        );
        args.extend(servers[2..].iter().cloned());
        args.extend(["--backend", "sim", "--report-interval", "500ms"].map(String::from));
        let log = hosts.logs().join(format!("{n}.log"));
        hosts.lab.spawn(n, &bin("drover-launcher"), &args, &log);
    }
    hosts
}

#[test]
fn on_separate_hosts_a_cut_off_leader_and_a_lost_scheduler_host_are_replaced_and_nothing_runs_twice() {
    let names = ["s1", "s2", "e1", "e2", "e3", "c1", "c2", "n1", "n2", "n3", "user"];
    let addresses: BTreeMap<String, String> = names.iter().map(|h| ((*h).to_owned(), addr(h))).collect();
    if testutil::etcd::etcd_binary().is_none() {
        testutil::skip("etcd", "on_separate_hosts_…", "no etcd binary (apt-get install etcd-server)");
        return;
    }
    let lab = match Lab::new(&addresses) {
        Ok(lab) => lab,
        Err(e) => {
            testutil::skip("netns", "on_separate_hosts_…", &format!("cannot create network namespaces: {e}"));
            return;
        }
    };
    let mut hosts = start(lab);
    // Whoever wins the elections leads: s1 and c1 start first, but on a loaded machine etcd may
    // not have its quorum yet, and then either may win. The test follows the winners.
    let api_of = |c: &str| format!("{}:8889", addr(c));
    let sched_of = |s: &str| format!("{}:8888", addr(s));
    let (lead, status) =
        within(&hosts, "a controller to lead, through a scheduler, with three nodes", Duration::from_secs(90), || {
            ["c1", "c2"].into_iter().find_map(|c| {
                let s = hosts.drover(&api_of(c), &["status"]).ok()?;
                let leads = ["c1", "c2"].into_iter().find(|l| s["leader"]["addr"] == api_of(l).as_str())?;
                let through = ["s1", "s2"].iter().any(|x| s["scheduler"]["target"] == sched_of(x).as_str());
                (through && s["scheduler"]["connected"] == true && s["nodes"]["ready"].as_u64() == Some(3))
                    .then_some((leads, s))
            })
        });
    let standby = if lead == "c1" { "c2" } else { "c1" };
    let active = if status["scheduler"]["target"] == sched_of("s1").as_str() { "s1" } else { "s2" };
    let other = if active == "s1" { "s2" } else { "s1" };
    eprintln!("{lead} leads through {active}");
    let (c1, c2, s1, s2) = (lead, standby, active, other);
    let (c1_api, c2_api) = (api_of(c1), api_of(c2));
    let s2 = sched_of(s2);
    let workload = hosts.work.path().join("sim.toml");
    std::fs::write(&workload, common::SIM_WORKLOAD).unwrap();
    hosts.drover(&c1_api, &["workload", "create", &workload.display().to_string()]).unwrap();
    hosts.drover(&c1_api, &["run", "sim", "-n", "30"]).unwrap();
    within(&hosts, "thirty running", Duration::from_secs(60), || {
        (running(&hosts.drover(&c1_api, &["status"]).ok()?) == 30).then_some(())
    });

    // The leading controller, alive but cut off: the standby leads, takes work, and the old leader cannot write.
    hosts.lab.set_connected(c1, false).unwrap();
    let cut = Instant::now();
    within(&hosts, "the standby to lead", Duration::from_secs(40), || {
        let s = hosts.drover(&c2_api, &["status"]).ok()?;
        (s["leader"]["addr"] == c2_api.as_str()).then_some(())
    });
    eprintln!("{c2} leads {:?} after {c1} was cut off", cut.elapsed());
    hosts.drover(&c2_api, &["run", "sim", "-n", "10"]).unwrap();
    within(&hosts, "forty running", Duration::from_secs(60), || {
        (running(&hosts.drover(&c2_api, &["status"]).ok()?) == 40).then_some(())
    });
    hosts.lab.set_connected(c1, true).unwrap();
    within(
        &hosts,
        "the old leader back, as a standby that sends users to the new one",
        Duration::from_secs(60),
        || {
            let s = hosts.drover(&c1_api, &["status"]).ok()?;
            (s["leader"]["addr"] == c2_api.as_str() && running(&s) == 40).then_some(())
        },
    );
    let c1_log = std::fs::read_to_string(hosts.logs().join(format!("{c1}.log"))).unwrap();
    assert!(c1_log.contains("leadership lost"), "the old leader says it stepped down");

    // The active scheduler's host is lost: everyone moves to s2; nothing restarts, no node lost.
    hosts.lab.set_connected(s1, false).unwrap();
    let cut = Instant::now();
    within(&hosts, "the controller and three nodes on the other scheduler", Duration::from_secs(90), || {
        let s = hosts.drover(&c2_api, &["status"]).ok()?;
        (s["scheduler"]["target"] == s2.as_str()
            && s["scheduler"]["connected"] == true
            && s["nodes"]["ready"].as_u64() == Some(3))
        .then_some(())
    });
    eprintln!("everyone on {s2} {:?} after {s1} was cut off", cut.elapsed());
    hosts.drover(&c2_api, &["run", "sim", "-n", "5"]).unwrap();
    let status = within(&hosts, "forty-five running", Duration::from_secs(60), || {
        let s = hosts.drover(&c2_api, &["status"]).ok()?;
        (running(&s) == 45).then_some(s)
    });
    assert_eq!(status["instances"].as_object().unwrap().len(), 1, "all running, nothing else: {status}");
    let events = hosts.drover(&c2_api, &["events"]).unwrap();
    let runs = common::runs(events.as_array().unwrap());
    assert_eq!(runs.len(), 45, "{runs:?}");
    assert!(runs.values().all(|n| *n == 1), "started more than once: {runs:?}");
    let lost: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["to"] == "lost" || e["to"] == "stopped" || e["what"].as_str().is_some_and(|w| w.contains("node lost"))
        })
        .collect();
    assert!(lost.is_empty(), "nothing lost or stopped: {lost:?}");
    let nodes = hosts.drover(&c2_api, &["node", "ls"]).unwrap();
    assert!(nodes.as_array().unwrap().iter().all(|n| n["status"] == "ready"), "{nodes}");
    assert!(hosts.lab.all_running(), "every process still runs\n{}", hosts.tail());
}
