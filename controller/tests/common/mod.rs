//! Shared by the controller's integration tests: a PKI with API users of several tenants, and
//! the real binaries of the triad as child processes.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use drover_cli::client::{ApiClient, ApiConfig};
use drover_cli::local;
use drover_model::NodeStatus;
use serde_json::Value;
use ssntp::Role;
pub use testutil::Pki;

pub const PATIENCE: Duration = Duration::from_secs(30);

/// The host's address on the veth link to a partition test's network namespace.
pub const PARTITION_HOST_IP: &str = "10.213.77.1";

/// The cluster's certificates, minted by `testutil::Pki` as an operator would: scheduler (also
/// reachable from a partition test's namespace), one agent (`agent-local`; [`Cluster`] mints
/// one per launcher), the controller daemon, the API server, and API users of several tenants
/// (`user-<user>`).
pub fn cluster_pki() -> Pki {
    let pki = Pki::new();
    let local = ["localhost", "127.0.0.1"];
    pki.issue_named(Role::SCHEDULER, "local", &["localhost", "127.0.0.1", PARTITION_HOST_IP], &[]);
    pki.issue_named(Role::AGENT, "local", &[], &[]);
    pki.issue_named(Role::CONTROLLER, "local", &[], &[]);
    pki.issue_named(Role::SERVER, "api", &local, &[]);
    pki.issue_named(Role::USER, "admin", &[], &["admin"]);
    pki.issue_named(Role::USER, "acme", &[], &["acme"]);
    pki.issue_named(Role::USER, "globex", &[], &["globex"]);
    pki.issue_named(Role::USER, "both", &[], &["acme", "globex"]);
    pki.issue_named(Role::USER, "nobody", &[], &[]);
    pki
}

/// An API client acting as `user` (a `user-<user>` certificate), or with no certificate at all.
pub fn api_client(pki: &Pki, addr: &str, user: Option<&str>) -> ApiClient {
    let mut c = ApiClient::new(&ApiConfig {
        addr: addr.to_owned(),
        cacert: pki.ca(),
        cert: user.map(|u| pki.cert(&format!("user-{u}"))),
        key: None,
        tenant: None,
    })
    .unwrap();
    c.timeout = Duration::from_secs(30);
    c
}

pub fn free_port() -> u16 {
    testutil::process::free_port().unwrap()
}

/// A binary built next to this package's `drover-controller`.
pub fn bin(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_drover-controller")).parent().unwrap().to_owned();
    let path = dir.join(name);
    assert!(path.exists(), "{name} is built by `cargo test --workspace`; run the whole workspace's tests");
    path
}

/// A child process killed (SIGKILL) and reaped when dropped, its output in a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, program: &str, args: &[String], logs: &Path) -> Self {
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(bin(program))
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { child, log, name: name.to_owned() }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(self.pid(), signal);
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill9();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- last lines of {} ---", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        self.terminate();
    }
}

/// A scheduler, a controller with its API, and launchers, as real processes on loopback.
///
/// Fields drop in order: the processes first (their logs are printed on a panic), the
/// directory last.
pub struct Cluster {
    pub controller: Proc,
    pub launchers: Vec<Proc>,
    pub scheduler: Proc,
    pub pki: Pki,
    pub sched_addr: String,
    pub api_addr: String,
    pub scheduler_args: Vec<String>,
    pub work: tempfile::TempDir,
}

impl Cluster {
    /// Starts everything; `launcher_args` has one entry per launcher (extra flags).
    pub fn start(launcher_args: &[&[&str]]) -> Self {
        Self::start_with(&[], launcher_args)
    }

    /// As [`Cluster::start`], with extra scheduler flags.
    pub fn start_with(scheduler_args: &[&str], launcher_args: &[&[&str]]) -> Self {
        Self::start_custom(scheduler_args, launcher_args, Self::spawn_controller)
    }

    /// As [`Cluster::start_with`], with the controller `spawn` starts (work directory, PKI,
    /// scheduler address, API address).
    pub fn start_custom(
        scheduler_args: &[&str],
        launcher_args: &[&[&str]],
        spawn: impl FnOnce(&Path, &Pki, &str, &str) -> Proc,
    ) -> Self {
        let work = tempfile::tempdir().unwrap();
        let pki = cluster_pki();
        let logs = work.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        // A test may choose the scheduler's listen address (`--listen 0.0.0.0:P`); everyone on
        // loopback still dials 127.0.0.1:P.
        let listen = scheduler_args.iter().position(|a| *a == "--listen").map(|i| scheduler_args[i + 1]);
        let port = listen.map_or_else(free_port, |l| l.rsplit(':').next().unwrap().parse().unwrap());
        let sched_addr = format!("127.0.0.1:{port}");
        let api_addr = format!("127.0.0.1:{}", free_port());
        let mut args = local::scheduler_args(listen.unwrap_or(&sched_addr), &pki.paths("scheduler-local", false));
        if !scheduler_args.contains(&"--load-threshold") {
            args.extend(["--load-threshold".to_owned(), "1000".into()]);
        }
        let mut extra = scheduler_args.iter().map(|s| (*s).to_owned()).peekable();
        while let Some(a) = extra.next() {
            if a == "--listen" {
                extra.next(); // given above
            } else {
                args.push(a);
            }
        }
        let scheduler = Proc::spawn("scheduler", "drover-scheduler", &args, &logs);
        let scheduler_args = args;
        let controller = spawn(work.path(), &pki, &sched_addr, &api_addr);
        let mut launchers = Vec::new();
        for (i, extra) in launcher_args.iter().enumerate() {
            let state = work.path().join(format!("launcher{i}"));
            // Each launcher is a node of its own, with its own certificate.
            let agent = pki.issue_named(Role::AGENT, &format!("local{i}"), &[], &[]);
            let mut args = local::launcher_args(&sched_addr, &state, &pki.paths(&agent, false));
            // Launchers drain on exit, so a test's workloads end with it; one given a maintenance
            // grace is one a test stops leaving its work running.
            if !extra.contains(&"--maintenance-grace") {
                args.push("--drain-on-exit".into());
            }
            args.extend(["--report-interval".into(), "500ms".into()]);
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            launchers.push(Proc::spawn(&format!("launcher{i}"), "drover-launcher", &args, &logs));
        }
        Self { work, pki, sched_addr, api_addr, scheduler_args, scheduler, controller, launchers }
    }

    pub fn spawn_controller(work: &Path, pki: &Pki, sched_addr: &str, api_addr: &str) -> Proc {
        Self::spawn_controller_with(work, pki, sched_addr, api_addr, &[])
    }

    /// As [`Cluster::spawn_controller`], with extra flags.
    pub fn spawn_controller_with(work: &Path, pki: &Pki, sched_addr: &str, api_addr: &str, extra: &[&str]) -> Proc {
        let args = local::controller_args(
            sched_addr,
            work,
            api_addr,
            &pki.cert("server-api"),
            &pki.paths("controller-local", false),
        );
        let mut args = args;
        // The test's own task files only, never the machine's (/etc/drover/units …).
        args.extend(["--units".to_owned(), work.join("units").display().to_string()]);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        Proc::spawn("controller", "drover-controller", &args, &work.join("logs"))
    }

    pub fn restart_controller(&mut self) {
        self.controller = Self::spawn_controller(self.work.path(), &self.pki, &self.sched_addr, &self.api_addr);
    }

    /// Starts the scheduler again with the same flags (after a kill).
    pub fn restart_scheduler(&mut self) {
        let logs = self.work.path().join("logs");
        self.scheduler = Proc::spawn("scheduler", "drover-scheduler", &self.scheduler_args, &logs);
    }

    pub fn admin(&self) -> ApiClient {
        api_client(&self.pki, &self.api_addr, Some("admin"))
    }

    /// Waits until the controller is connected and `nodes` nodes are READY.
    pub async fn wait_ready(&self, nodes: u64) {
        let api = self.admin();
        wait_for("the cluster to be ready", || async {
            let s = api.get("/v1/status").await.ok()?;
            (s["scheduler"]["connected"] == true && s["nodes"]["ready"].as_u64() == Some(nodes)).then_some(())
        })
        .await;
    }

    /// Runs the `drover` CLI against this cluster as admin.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_at(&self.api_addr, args)
    }

    /// Runs the `drover` CLI as admin against the API at `api_addr` (another controller's).
    pub fn cli_at(&self, api_addr: &str, args: &[&str]) -> std::process::Output {
        Command::new(bin("drover"))
            .args(["--api", api_addr, "--cacert"])
            .arg(self.pki.ca())
            .arg("--cert")
            .arg(self.pki.cert("user-admin"))
            .args(args)
            .output()
            .unwrap()
    }
}

/// Polls `check` until it gives a value, up to [`PATIENCE`].
pub async fn wait_for<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    testutil::wait_for(what, PATIENCE, check).await
}

/// Polls `check` until it gives a value, up to `limit` (for waits longer than [`PATIENCE`]).
pub async fn wait_within<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    testutil::wait_for(what, limit, check).await
}

// === what the cluster says, through the API ===

/// Saves a workload from its TOML text (admin or the client's tenant).
/// A sim workload named `sim` that runs ten minutes in 4 MiB and one vCPU.
pub const SIM_WORKLOAD: &str =
    "name = \"sim\"\n[resources]\nmem_mb = 4\nvcpus = 1\n[backend]\ntype = \"sim\"\nduration_ms = 600000\n";

pub async fn create_workload(api: &ApiClient, toml: &str) {
    api.call(hyper::Method::POST, "/v1/workloads", Some(("application/toml", toml.as_bytes().to_vec()))).await.unwrap();
}

/// Launches one instance of `workload`; its UUID.
pub async fn launch_one(api: &ApiClient, workload: &str) -> String {
    let launched = api.post(&format!("/v1/workloads/{workload}/launch"), &serde_json::json!({})).await.unwrap();
    launched["instances"][0].as_str().unwrap().to_owned()
}

/// Instance `id` as the API shows it, once `done` holds for it (within `limit`).
pub async fn instance_when(
    api: &ApiClient,
    id: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    wait_within(what, limit, || async {
        let i = api.get(&format!("/v1/instances/{id}")).await.ok()?;
        done(&i).then_some(i)
    })
    .await
}

/// Every instance the controller knows.
pub async fn all_instances(api: &ApiClient) -> Vec<Value> {
    api.get("/v1/instances").await.unwrap().as_array().unwrap().clone()
}

/// How many of `list` are running.
pub fn running(list: &[Value]) -> usize {
    list.iter().filter(|i| i["state"] == "running").count()
}

/// Instance → the nodes whose own reports (digests and news) say it runs there.
pub async fn active_copies(api: &ApiClient) -> Option<HashMap<String, Vec<String>>> {
    let nodes = api.get("/v1/nodes?instances=true").await.ok()?;
    let mut copies: HashMap<String, Vec<String>> = HashMap::new();
    for n in nodes.as_array()? {
        for i in n["reported_active"].as_array().map(Vec::as_slice).unwrap_or_default() {
            copies.entry(i.as_str()?.to_owned()).or_default().push(n["uuid"].as_str()?.to_owned());
        }
    }
    Some(copies)
}

/// Every acknowledged instance runs exactly once: in the controller's view (each of them, and
/// only them, never restarted), in the nodes' own reports (each on one node), and in the event
/// log (each entered `running` once). Returns the event log.
pub async fn assert_each_runs_exactly_once(api: &ApiClient, acknowledged: &[String]) -> Vec<Value> {
    let list = api.get("/v1/instances?limit=10000").await.unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), acknowledged.len());
    for i in list {
        assert!(acknowledged.iter().any(|a| a == i["uuid"].as_str().unwrap()), "not acknowledged: {i}");
        assert_eq!(i["restarts"], 0, "{i}");
    }
    let copies = wait_for("the nodes to report every instance", || async {
        let copies = active_copies(api).await?;
        (copies.len() == acknowledged.len()).then_some(copies)
    })
    .await;
    let duplicates: Vec<_> = copies.iter().filter(|(_, n)| n.len() > 1).collect();
    assert!(duplicates.is_empty(), "a duplicate copy: {duplicates:?}");
    for a in acknowledged {
        assert!(copies.contains_key(a), "{a} does not run");
    }
    let events = all_events(api).await;
    let runs = runs(&events);
    assert_eq!(runs.len(), acknowledged.len());
    let twice: Vec<(&String, &usize)> = runs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "started more than once: {twice:?}");
    events
}

/// The status the controller shows for a node.
pub async fn node_status(api: &ApiClient, node: &str) -> Option<String> {
    let nodes = api.get("/v1/nodes").await.ok()?;
    let n = nodes.as_array()?.iter().find(|n| n["uuid"] == node)?;
    Some(n["status"].as_str()?.to_owned())
}

/// The whole event log, in order.
pub async fn all_events(api: &ApiClient) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = api.get(&format!("/v1/events?after={after}&limit=10000")).await.unwrap();
        let batch = page["events"].as_array().unwrap();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch.iter().cloned());
        after = page["revision"].as_u64().unwrap();
    }
}

/// How many times each instance entered `running`, from the event log.
pub fn runs(events: &[Value]) -> HashMap<String, usize> {
    let mut runs: HashMap<String, usize> = HashMap::new();
    for e in events {
        if e["what"].as_str().unwrap_or_default().contains("→ running") {
            *runs.entry(e["instance"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
    }
    runs
}

/// Waits for an evacuated node to be in maintenance, restores it, and waits for it to be READY.
pub async fn restore_evacuated(api: &ApiClient, node: &str) {
    wait_for("the node to be in maintenance", || async {
        (node_status(api, node).await? == NodeStatus::Maintenance.name()).then_some(())
    })
    .await;
    api.post(&format!("/v1/nodes/{node}/restore"), &serde_json::json!({})).await.unwrap();
    wait_for("the node to be READY again", || async {
        (node_status(api, node).await? == NodeStatus::Ready.name()).then_some(())
    })
    .await;
}
