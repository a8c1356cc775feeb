//! `drover up`: a whole local cluster for a first try.
//!
//! 1. Certificates: a CA, scheduler, launcher, controller and API certificates, and a user
//!    certificate for the CLI (tenant `admin`), are minted into `<dir>/pki/` unless there.
//! 2. `drover-scheduler`, `drover-controller` and one `drover-launcher` per NUMA node start
//!    as child processes (found next to the `drover` binary), logging to `<dir>/logs/`.
//! 3. Once the API answers and a node is READY, a demo workload (a real process) is created and
//!    run through the API, like `drover run demo --wait`, and its output is printed.
//! 4. Then a status line every few seconds until Ctrl-C (or stop at once with `--once`); the
//!    children are stopped (the launchers drain their workloads) and nothing is left behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use drover_api::views::{InstanceView, LaunchAnswer, LaunchBody, LogView};
use drover_cert::IssueRequest;
use serde_json::Value;
use ssntp::tls::TlsPaths;
use ssntp::Role;
use tokio::process::{Child, Command};

use crate::client::{ApiClient, ApiConfig};
use crate::local;

/// What `drover up` was asked to do.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Working directory of the local cluster (certificates, logs, launcher state).
    pub dir: PathBuf,
    /// Scheduler port on 127.0.0.1.
    pub port: u16,
    /// API port on 127.0.0.1.
    pub api_port: u16,
    /// Stop after the demo instead of running until Ctrl-C.
    pub once: bool,
    /// Where `drover-scheduler`, `drover-controller` and `drover-launcher` are; the `drover`
    /// binary's directory by default.
    pub bin_dir: Option<PathBuf>,
    /// Highly available: three etcd members, two schedulers (one active), two controllers (one
    /// leading) sharing their state on etcd.
    pub ha: bool,
}

/// The API user's certificate `drover up` mints in `<dir>/pki` (the CLI's default).
pub const USER_CERT: &str = "user-local.pem";

/// How long the demo may take before `drover up` gives up.
/// The file in `--dir` where `drover up` writes the API's address, so that `drover --dir D`
/// finds it whatever `--api-port` was.
pub const API_ADDRESS_FILE: &str = "api-address";

const DEMO_DEADLINE: Duration = Duration::from_secs(30);

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn paths(&self, stem: &str) -> TlsPaths {
        TlsPaths {
            ca: self.dir.join(drover_cert::CA_CERT),
            cert: self.dir.join(format!("{stem}.pem")),
            key: Some(self.dir.join(format!("{stem}-key.pem"))),
            crl: None,
        }
    }
}

/// Mints the local PKI: the CA unless it exists, then each certificate that is missing.
fn ensure_pki(dir: &Path) -> anyhow::Result<Pki> {
    let pki = Pki { dir: dir.join("pki") };
    if !pki.dir.join(drover_cert::CA_CERT).exists() {
        println!("minting certificates into {}", pki.dir.display());
        drover_cert::create_ca(&pki.dir, "Drover local CA", 3650)?;
    }
    let local = || vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let wanted = [
        (Role::SCHEDULER, "local", local(), false),
        (Role::CONTROLLER, "local", vec![], false),
        (Role::CONTROLLER, "local-b", vec![], false),
        (Role::SERVER, "api", local(), false),
        (Role::USER, "local", vec![], true),
    ];
    for (role, name, hosts, admin) in wanted {
        let stem = format!("{}-{name}", role.iter().next().map_or_else(String::new, |r| r.to_string()));
        let path = pki.dir.join(format!("{stem}.pem"));
        // Certificates an older `drover up` minted (clients without an identity) are minted again.
        if path.exists() && (role.intersects(Role::SCHEDULER | Role::SERVER) || has_identity(&path)) {
            continue;
        }
        let orgs = if admin { vec!["admin".into()] } else { vec![] };
        let req = IssueRequest { role, name: name.into(), hosts, ips: vec![], orgs, days: 365, uuid: None };
        drover_cert::issue(&pki.dir, &req).with_context(|| format!("minting {stem}"))?;
    }
    Ok(pki)
}

/// The certificate of the launcher `name` (`agent-<name>.pem`), minted when missing or when an
/// older `drover up` minted it without an identity; a launcher that already has a UUID in
/// `state_dir` keeps it (its instances are known under it).
fn ensure_agent_cert(pki: &Pki, name: &str, state_dir: &Path) -> anyhow::Result<TlsPaths> {
    let stem = format!("agent-{name}");
    let path = pki.dir.join(format!("{stem}.pem"));
    if !(path.exists() && has_identity(&path)) {
        let known = std::fs::read_to_string(ssntp::identity::uuid_path(state_dir, Role::AGENT))
            .ok()
            .and_then(|t| t.trim().parse::<ssntp::Uuid>().ok());
        let req = IssueRequest {
            role: Role::AGENT,
            name: name.into(),
            hosts: vec![],
            ips: vec![],
            orgs: vec![],
            days: 365,
            uuid: known,
        };
        drover_cert::issue(&pki.dir, &req).with_context(|| format!("minting {stem}"))?;
    }
    Ok(pki.paths(&stem))
}

/// Whether the certificate at `path` names an identity.
fn has_identity(path: &Path) -> bool {
    ssntp::tls::load_certs(path)
        .ok()
        .and_then(|certs| certs.first().and_then(|leaf| ssntp::role::identity_from_cert_der(leaf).ok().flatten()))
        .is_some()
}

/// Starts `program` from `bin_dir`, logging to `<logs>/<name>.log`.
fn spawn_named(bin_dir: &Path, program: &str, name: &str, args: &[String], logs: &Path) -> anyhow::Result<Child> {
    let program = bin_dir.join(program); // an absolute `program` (etcd) stays as it is
    if !program.exists() {
        bail!(
            "{} not found; build every binary first: cargo build --release (then run target/release/drover up)",
            program.display()
        );
    }
    let log_path = logs.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    Command::new(&program)
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: Ctrl-C in the terminal reaches `drover up` alone, which stops
        // the children in order (controllers first, etcd last).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

async fn stop_children(children: &mut [(String, Child)]) {
    for (_, child) in children.iter() {
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
    for (name, child) in children.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
            eprintln!("{name} did not stop within 5 s; killing it");
            let _ = child.kill().await;
        }
    }
}

/// The last heartbeat line in the scheduler's log (heartbeat lines do not start with a
/// timestamp; log records do).
fn last_heartbeat(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.is_empty() && !l.starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| l.replace('\t', "  "))
}

const DEMO: &str = r#"name = "demo"
size = "tiny"
max_run_time = "60s"

[backend]
type = "process"
argv = ["/bin/sh", "-c", "echo \"hello from drover: instance $PWD\"; echo \"running on $(uname -n), $(uname -sr)\"; date"]

[restart]
policy = "never"
"#;

/// NUMA nodes of this machine (one launcher each); none listed means one launcher for all.
fn numa_nodes() -> Vec<u32> {
    let mut nodes: Vec<u32> = std::fs::read_dir("/sys/devices/system/node")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
        .collect();
    nodes.sort_unstable();
    nodes
}

/// Waits for the API and a READY node.
async fn wait_healthy(api: &ApiClient, children: &mut [(String, Child)], logs: &Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + DEMO_DEADLINE;
    loop {
        for (name, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("{name} exited ({status}); see {}", logs.join(format!("{name}.log")).display());
            }
        }
        if let Ok(status) = api.get("/v1/status").await {
            let ready = status["nodes"][drover_model::NodeStatus::Ready.name()].as_u64().unwrap_or(0);
            if status["scheduler"]["connected"] == true && ready > 0 {
                println!("cluster healthy: controller connected, {ready} node(s) ready");
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the cluster did not become healthy within {} s; see the logs in {}",
                DEMO_DEADLINE.as_secs(),
                logs.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates and runs the demo workload through the API and prints its output.
async fn demo(api: &ApiClient) -> anyhow::Result<()> {
    api.call(hyper::Method::PUT, "/v1/workloads/demo", Some(("application/toml", DEMO.as_bytes().to_vec()))).await?;
    let launched: LaunchAnswer =
        api.post_as("/v1/workloads/demo/launch", &LaunchBody { count: 1, params: Default::default() }).await?;
    let id = *launched.instances.first().context("the API returned no instance")?;
    let short = id.short();
    println!("demo workload submitted: instance {short}");
    let deadline = tokio::time::Instant::now() + DEMO_DEADLINE;
    let mut last_state = None;
    let instance = loop {
        let v: InstanceView = api.get_as(&format!("/v1/instances/{id}")).await?;
        if last_state != Some(v.state) {
            let node = v.node.map_or(String::new(), |n| format!(" on node {}", n.short()));
            let why = if v.why.is_empty() { String::new() } else { format!(" ({})", v.why) };
            println!("  instance {short} {}{node}{why}", v.state);
            last_state = Some(v.state);
        }
        if v.state.is_final() {
            break v;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the demo workload did not finish in time (state {}); see the logs", v.state);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if instance.state != drover_model::InstanceStatus::Exited {
        bail!("the demo workload {}: {}", instance.state, instance.why);
    }
    let log: LogView = api.get_as(&format!("/v1/instances/{id}/logs")).await?;
    println!("--- output of instance {short} (drover logs {short}) ---");
    print!("{}", log.data);
    println!("---");
    Ok(())
}

fn status_line(status: &Value, heartbeat: Option<String>) -> String {
    let join = |o: &Value| {
        o.as_object()
            .map_or_else(String::new, |m| m.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", "))
    };
    let instances = join(&status["instances"]);
    let mut line = format!(
        "nodes: {} | instances: {}",
        join(&status["nodes"]),
        if instances.is_empty() { "none".into() } else { instances }
    );
    if let Some(hb) = heartbeat {
        line.push_str(&format!("\n  scheduler: {hb}"));
    }
    line
}

/// One process of the local cluster.
struct Part {
    /// Its log's name, and how messages name it.
    name: String,
    /// The program (a name in `bin_dir`, or an absolute path).
    program: String,
    args: Vec<String>,
    /// Stopping order: controllers first (nothing new is sent), launchers next (they drain),
    /// schedulers, etcd last.
    stop_rank: u8,
}

/// The local cluster's layout: its processes and where they listen.
struct Layout {
    parts: Vec<Part>,
    /// The scheduler addresses launchers and controllers are given, in order.
    schedulers: Vec<String>,
    /// The API address the CLI is pointed at.
    api: String,
    launchers: usize,
}

/// The etcd binary of this machine, if any.
fn etcd_binary() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// Refuses a port already in use, naming the flag that moves it.
fn check_free(addr: &str, flag: &str) -> anyhow::Result<()> {
    drop(std::net::TcpListener::bind(addr).with_context(|| format!("{addr} is in use; pick another with {flag}"))?);
    Ok(())
}

fn layout(opts: &UpOptions, dir: &Path, pki: &Pki) -> anyhow::Result<Layout> {
    let at = |port: u16| format!("127.0.0.1:{port}");
    let port = |base: u16, offset: u16| {
        base.checked_add(offset).with_context(|| format!("port {base} + {offset} is past 65535; pick a lower one"))
    };
    let mut parts = Vec::new();
    let schedulers: Vec<String> =
        if opts.ha { vec![at(opts.port), at(port(opts.port, 2)?)] } else { vec![at(opts.port)] };
    let apis: Vec<String> =
        if opts.ha { vec![at(opts.api_port), at(port(opts.api_port, 2)?)] } else { vec![at(opts.api_port)] };
    let mut planned: Vec<&String> = schedulers.iter().chain(&apis).collect();
    let etcd_ports: Vec<String> = if opts.ha {
        (0..3u16)
            .flat_map(|i| [port(opts.port, 100 + i), port(opts.port, 110 + i)])
            .map(|p| p.map(at))
            .collect::<anyhow::Result<_>>()?
    } else {
        Vec::new()
    };
    planned.extend(&etcd_ports);
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = planned.iter().find(|a| !seen.insert(**a)) {
        bail!("{twice} would serve two processes: --port and --api-port must be further apart (with --ha, etcd takes PORT+100..102 and PORT+110..112, the second scheduler PORT+2, the second API API-PORT+2)");
    }
    for s in &schedulers {
        check_free(s, "--port")?;
    }
    for a in &apis {
        check_free(a, "--api-port")?;
    }
    let mut etcd_endpoints = Vec::new();
    if opts.ha {
        let etcd = etcd_binary().context("drover up --ha needs etcd: apt-get install etcd-server")?;
        let members: Vec<(String, String, String)> = (0..3u16)
            .map(|i| Ok((format!("m{i}"), at(port(opts.port, 100 + i)?), at(port(opts.port, 110 + i)?))))
            .collect::<anyhow::Result<_>>()?;
        let initial: Vec<String> = members.iter().map(|(n, _, peer)| format!("{n}=http://{peer}")).collect();
        for (name, client, peer) in &members {
            check_free(client, "--port (etcd uses port+100..102 and port+110..112)")?;
            check_free(peer, "--port (etcd uses port+100..102 and port+110..112)")?;
            let data = dir.join("etcd").join(name);
            // A member that has its data already rejoins; a new one starts the cluster.
            let state = if data.join("member").exists() { "existing" } else { "new" };
            parts.push(Part {
                name: format!("etcd-{name}"),
                program: etcd.display().to_string(),
                args: [
                    "--name",
                    name,
                    "--data-dir",
                    &data.display().to_string(),
                    "--listen-client-urls",
                    &format!("http://{client}"),
                    "--advertise-client-urls",
                    &format!("http://{client}"),
                    "--listen-peer-urls",
                    &format!("http://{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://{peer}"),
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-state",
                    state,
                    "--initial-cluster-token",
                    "drover-up",
                    "--max-txn-ops",
                    "4096",
                    "--max-request-bytes",
                    "8388608",
                ]
                .map(String::from)
                .to_vec(),
                stop_rank: 3,
            });
            etcd_endpoints.push(client.clone());
        }
    }
    let with_etcd = |mut args: Vec<String>| {
        if opts.ha {
            args.extend(["--etcd-endpoints".to_owned(), etcd_endpoints.join(",")]);
        }
        args
    };
    let also = |args: &mut Vec<String>, first: &str| {
        for s in schedulers.iter().filter(|s| *s != first) {
            args.extend(["--server".to_owned(), s.clone()]);
        }
    };
    for (i, addr) in schedulers.iter().enumerate() {
        // A first try on someone's workstation should not wait for their load average to drop:
        // the load threshold is for shared compute nodes. Every certificate here names its
        // holder's identity.
        let mut args = local::scheduler_args(addr, &pki.paths("scheduler-local"));
        args.extend(["--heartbeat", "--load-threshold", "64", "--require-cert-identity"].map(String::from));
        let name = if opts.ha { format!("drover-scheduler-{}", ["a", "b"][i]) } else { "drover-scheduler".into() };
        parts.push(Part { name, program: "drover-scheduler".into(), args: with_etcd(args), stop_rank: 2 });
    }
    for (i, api) in apis.iter().enumerate() {
        let (state, cert, name) = if opts.ha {
            let suffix = ["a", "b"][i];
            (
                dir.join(format!("controller-{suffix}")),
                ["controller-local", "controller-local-b"][i],
                format!("drover-controller-{suffix}"),
            )
        } else {
            (dir.to_owned(), "controller-local", "drover-controller".to_owned())
        };
        let mut args =
            local::controller_args(&schedulers[0], &state, api, &pki.dir.join("server-api.pem"), &pki.paths(cert));
        also(&mut args, &schedulers[0]);
        if opts.ha {
            args.extend(["--store", "etcd", "--etcd-max-txn-ops", "4096"].map(String::from));
        }
        parts.push(Part { name, program: "drover-controller".into(), args: with_etcd(args), stop_rank: 0 });
    }
    let numa = numa_nodes();
    let launchers: Vec<Option<u32>> = if numa.len() > 1 { numa.into_iter().map(Some).collect() } else { vec![None] };
    for node in &launchers {
        let (name, state, cert) = match node {
            Some(n) => {
                (format!("drover-launcher-numa{n}"), dir.join(format!("launcher-numa{n}")), format!("local-numa{n}"))
            }
            None => ("drover-launcher".to_owned(), dir.join("launcher"), "local".to_owned()),
        };
        // One certificate per launcher: each is its own node.
        let paths = ensure_agent_cert(pki, &cert, &state)?;
        let mut args = local::launcher_args(&schedulers[0], &state, &paths);
        also(&mut args, &schedulers[0]);
        args.push("--drain-on-exit".to_owned());
        if let Some(n) = node {
            args.extend(["--numa-node".to_owned(), n.to_string()]);
        }
        parts.push(Part { name, program: "drover-launcher".into(), args, stop_rank: 1 });
    }
    Ok(Layout { parts, schedulers, api: apis[0].clone(), launchers: launchers.len() })
}

/// Who leads, for the status line of `drover up --ha`: the controller and the active scheduler.
async fn leaders_line(api: &ApiClient, status: &Value) -> String {
    let leader = api.get("/v1/leader").await.ok();
    let controller = leader
        .as_ref()
        .and_then(|l| {
            Some(format!(
                "controller {} (API {})",
                l["leader"]["uuid"].as_str()?.get(..8)?,
                l["leader"]["addr"].as_str()?
            ))
        })
        .unwrap_or_else(|| "no controller leads yet".into());
    let scheduler = status["scheduler"]["target"].as_str().map_or("none".to_owned(), str::to_owned);
    format!("leader: {controller}; active scheduler: {scheduler}")
}

/// Runs `drover up`.
///
/// # Errors
/// Missing binaries, a port in use, certificates that cannot be minted, a demo that fails.
pub async fn run(opts: UpOptions, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let dir = std::path::absolute(&opts.dir).context("resolving --dir")?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let pki = ensure_pki(&dir)?;
    let bin_dir = match &opts.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("locating the drover binary")?.to_owned(),
    };
    let layout = layout(&opts, &dir, &pki)?;
    let api_addr = layout.api.clone();
    std::fs::write(dir.join(API_ADDRESS_FILE), format!("{api_addr}\n"))
        .with_context(|| format!("writing {}", dir.join(API_ADDRESS_FILE).display()))?;
    let mut children: Vec<(String, Child)> = Vec::new();
    let mut stop_ranks: Vec<u8> = Vec::new();
    tokio::pin!(shutdown);
    let heartbeat_logs: Vec<PathBuf> = layout
        .parts
        .iter()
        .filter(|p| p.program == "drover-scheduler")
        .map(|p| logs.join(format!("{}.log", p.name)))
        .collect();
    let result = async {
        for part in &layout.parts {
            children.push((part.name.clone(), spawn_named(&bin_dir, &part.program, &part.name, &part.args, &logs)?));
            stop_ranks.push(part.stop_rank);
        }
        let ha = if opts.ha { " (etcd ×3, schedulers and controllers ×2)" } else { "" };
        println!(
            "scheduler on {}, API on https://{api_addr}, {} launcher(s){ha}; logs in {}",
            layout.schedulers.join(" and "),
            layout.launchers,
            logs.display()
        );
        let api = ApiClient::new(&ApiConfig {
            addr: api_addr.clone(),
            cacert: pki.dir.join(drover_cert::CA_CERT),
            cert: Some(pki.dir.join(USER_CERT)),
            key: None,
            tenant: None,
        })?;
        // Ctrl-C while starting or during the demo stops everything too.
        tokio::select! {
            ready = async {
                wait_healthy(&api, &mut children, &logs).await?;
                demo(&api).await
            } => ready?,
            () = &mut shutdown => return Ok(()),
        }
        if opts.once {
            return Ok(());
        }
        let cli_dir = if opts.dir == Path::new(".drover") { String::new() } else { format!(" --dir {}", opts.dir.display()) };
        println!("cluster is up. Try: drover{cli_dir} ps | drover{cli_dir} node ls | drover{cli_dir} events -f. Ctrl-C stops it.");
        let user = pki.dir.join(USER_CERT);
        println!(
            "dashboard: https://{api_addr}/ui (your browser needs the user certificate: openssl pkcs12 -export -in {} -inkey {} -out drover-user.p12, then import drover-user.p12 and {})",
            user.display(),
            ssntp::tls::default_key_for(&user).display(),
            pki.dir.join(drover_cert::CA_CERT).display()
        );
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    for (name, child) in children.iter_mut() {
                        if let Ok(Some(status)) = child.try_wait() {
                            bail!("{name} exited ({status}); see {}", logs.join(format!("{name}.log")).display());
                        }
                    }
                    match api.get("/v1/status").await {
                        Ok(status) => {
                            // The active scheduler's heartbeat: the newest line of any.
                            let heartbeat = heartbeat_logs.iter().filter_map(|l| {
                                let at = std::fs::metadata(l).and_then(|m| m.modified()).ok()?;
                                Some((at, last_heartbeat(l)?))
                            }).max_by_key(|(at, _)| *at).map(|(_, line)| line);
                            println!("  {}", status_line(&status, heartbeat));
                            if opts.ha {
                                println!("  {}", leaders_line(&api, &status).await);
                            }
                        }
                        Err(e) => println!("  status unavailable: {e:#}"),
                    }
                }
                () = &mut shutdown => break,
            }
        }
        Ok(())
    }
    .await;
    println!("stopping the cluster");
    // Controllers first (nothing new is sent), launchers next (they drain), schedulers, etcd.
    for rank in 0..=3 {
        let mut group: Vec<(String, Child)> = Vec::new();
        let mut rest = Vec::new();
        for (child, r) in children.drain(..).zip(stop_ranks.iter().copied()) {
            if r == rank {
                group.push(child);
            } else {
                rest.push(child);
            }
        }
        stop_ranks.retain(|r| *r != rank);
        children = rest;
        if rank == 3 {
            // etcd members one by one: each hands raft leadership on while the others run.
            for member in group.chunks_mut(1) {
                stop_children(member).await;
            }
        } else {
            stop_children(&mut group).await;
        }
    }
    result
}
