//! `drover up`: a whole local cluster for a first try.
//!
//! 1. Certificates: a CA and scheduler, launcher and controller certificates are minted into
//!    `<dir>/pki/` unless they are there already.
//! 2. `drover-scheduler` and `drover-launcher` start as child processes (found next to the
//!    `drover` binary), logging to `<dir>/logs/`.
//! 3. This process connects as the controller, sends a demo workload (a real process) through
//!    the scheduler, waits for it to finish and prints its output, fetched from the launcher.
//! 4. It then shows the scheduler's heartbeat line until Ctrl-C (or stops at once with
//!    `--once`), and stops the children cleanly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use drover_cert::IssueRequest;
use ssntp::client::{ClientEvent, ClientHandle};
use ssntp::payload::{Backend, FailureReason, LogFetch, Message, Requirements, Start};
use ssntp::tls::{Identity, TlsPaths};
use ssntp::{Role, Uuid};
use tokio::process::{Child, Command};

/// What `drover up` was asked to do.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Working directory of the local cluster (certificates, logs, launcher state).
    pub dir: PathBuf,
    /// Scheduler port on 127.0.0.1.
    pub port: u16,
    /// Stop after the demo instead of running until Ctrl-C.
    pub once: bool,
    /// Where `drover-scheduler` and `drover-launcher` are; the `drover` binary's directory by
    /// default.
    pub bin_dir: Option<PathBuf>,
}

/// How long the demo may take before `drover up` gives up.
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

/// Mints the local PKI unless it exists.
fn ensure_pki(dir: &Path) -> anyhow::Result<Pki> {
    let pki = Pki { dir: dir.join("pki") };
    if pki.dir.join(drover_cert::CA_CERT).exists() {
        return Ok(pki);
    }
    println!("minting certificates into {}", pki.dir.display());
    drover_cert::create_ca(&pki.dir, "Drover local CA", 3650)?;
    let issue = |role, name: &str, hosts: Vec<String>| {
        let req = IssueRequest { role, name: name.into(), hosts, ips: vec![], orgs: vec!["admin".into()], days: 365 };
        drover_cert::issue(&pki.dir, &req)
    };
    issue(Role::SCHEDULER, "local", vec!["localhost".into(), "127.0.0.1".into()])?;
    issue(Role::AGENT, "local", vec![])?;
    issue(Role::CONTROLLER, "local", vec![])?;
    Ok(pki)
}

fn tls_args(paths: &TlsPaths) -> Vec<String> {
    let mut args =
        vec!["--cacert".into(), paths.ca.display().to_string(), "--cert".into(), paths.cert.display().to_string()];
    if let Some(key) = &paths.key {
        args.extend(["--key".into(), key.display().to_string()]);
    }
    args
}

fn spawn(bin_dir: &Path, name: &str, args: &[String], logs: &Path) -> anyhow::Result<Child> {
    let program = bin_dir.join(name);
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
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

async fn stop_children(children: &mut [(&str, Child)]) {
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

fn demo_start(instance: Uuid) -> Message {
    let script = "echo \"hello from drover: instance $PWD\"; echo \"running on $(uname -n), $(uname -sr)\"; date";
    let requirements = Requirements { vcpus: 1, mem_mb: 32, ..Default::default() };
    let backend =
        Backend::Process { argv: vec!["/bin/sh".into(), "-c".into(), script.into()], env: Default::default() };
    Message::Start(Start { max_run_time_s: Some(60), ..Start::new(instance, requirements, backend) })
}

/// Sends the demo workload and prints its output. Retries START while the launcher is not yet
/// READY at the scheduler.
async fn demo(client: &ClientHandle, events: &mut tokio::sync::mpsc::Receiver<ClientEvent>) -> anyhow::Result<()> {
    let instance = Uuid::new_v4();
    let deadline = tokio::time::Instant::now() + DEMO_DEADLINE;
    let mut node = None;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .context("the demo workload did not finish in time; see the logs")?
            .context("the scheduler connection ended")?;
        match event {
            ClientEvent::Connected { .. } => {
                println!("connected to the scheduler; submitting the demo workload");
                client.send(&demo_start(instance)).await?;
            }
            ClientEvent::ConnectFailed { reason, permanent: true, .. } => bail!("the scheduler refused us: {reason}"),
            ClientEvent::ConnectFailed { .. } | ClientEvent::Disconnected { .. } => {}
            ClientEvent::Message { frame, message } => match message {
                Message::StartFailure(f)
                    if f.instance_uuid == instance
                        && matches!(f.reason, FailureReason::NoCn | FailureReason::FullCloud) =>
                {
                    // The launcher has not reported READY yet.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    client.send(&demo_start(instance)).await?;
                }
                Message::StartFailure(f) if f.instance_uuid == instance => {
                    bail!("the demo workload failed to start: {:?}: {}", f.reason, f.detail)
                }
                Message::InstanceStarted(e) if e.instance_uuid == instance => {
                    node = Some(frame.origin);
                    println!("instance {} started on node {}", instance.short(), frame.origin.short());
                }
                Message::InstanceExited(e) if e.instance_uuid == instance => {
                    println!("instance {} exited: {:?}, code {:?}", instance.short(), e.reason, e.exit_code);
                    let fetch = LogFetch {
                        instance_uuid: instance,
                        workload_agent_uuid: node.unwrap_or(e.node_uuid),
                        max_bytes: 64 * 1024,
                        request_id: 1,
                    };
                    client.send(&Message::LogFetch(fetch)).await?;
                }
                Message::LogData(log) if log.instance_uuid == instance => {
                    println!("--- results/output.txt of instance {} ---", instance.short());
                    print!("{}", log.data);
                    println!("---");
                    return Ok(());
                }
                Message::Stats(_) => {}
                other => println!("  {}", crate::link::describe(frame.origin, &other)),
            },
        }
    }
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
    let bin_dir = match opts.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?.parent().context("locating the drover binary")?.to_owned(),
    };
    let addr = format!("127.0.0.1:{}", opts.port);
    drop(
        std::net::TcpListener::bind(&addr)
            .with_context(|| format!("port {} is in use; pick another with --port", opts.port))?,
    );

    // A first try on someone's workstation should not wait for their load average to drop:
    // the load threshold is for shared compute nodes.
    let mut sched_args = vec![
        "--listen".to_owned(),
        addr.clone(),
        "--heartbeat".to_owned(),
        "--load-threshold".to_owned(),
        "64".to_owned(),
    ];
    sched_args.extend(tls_args(&pki.paths("scheduler-local")));
    let scheduler = spawn(&bin_dir, "drover-scheduler", &sched_args, &logs)?;
    let mut launcher_args =
        vec!["--server".to_owned(), addr.clone(), "--state-dir".to_owned(), dir.join("launcher").display().to_string()];
    launcher_args.extend(tls_args(&pki.paths("agent-local")));
    let launcher = spawn(&bin_dir, "drover-launcher", &launcher_args, &logs)?;
    let mut children = vec![("drover-scheduler", scheduler), ("drover-launcher", launcher)];
    println!("scheduler on {addr}, one launcher; logs in {}", logs.display());

    let result = async {
        let identity = Identity::load(&pki.paths("controller-local"))?;
        let tls = ssntp::tls::client_config(&identity)?;
        let uuid = ssntp::identity::load_or_create_uuid(&dir, Role::CONTROLLER)?;
        let (client, mut events) = crate::link::connect(vec![addr.clone()], tls, uuid);
        demo(&client, &mut events).await?;
        if opts.once {
            return Ok(());
        }
        println!("cluster is up; Ctrl-C stops it. Heartbeat (controllers, then node:status:available/total MiB,load):");
        let mut ticker = tokio::time::interval(Duration::from_secs(2));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Some(line) = last_heartbeat(&logs.join("drover-scheduler.log")) {
                        println!("  {line}");
                    }
                    for (name, child) in children.iter_mut() {
                        if let Ok(Some(status)) = child.try_wait() {
                            bail!("{name} exited ({status}); see {}", logs.join(format!("{name}.log")).display());
                        }
                    }
                }
                Some(ClientEvent::Message { frame, message }) = events.recv() => {
                    // Routine reports would drown the heartbeat; events are worth a line.
                    if !matches!(message, Message::Stats(_)) {
                        println!("  {}", crate::link::describe(frame.origin, &message));
                    }
                }
                () = &mut shutdown => break,
            }
        }
        client.close();
        Ok(())
    }
    .await;
    println!("stopping the cluster");
    stop_children(&mut children).await;
    result
}
