//! The launcher's event loop: scheduler connection, periodic READY and STATS, commands,
//! instance events.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ssntp::client::{Client, ClientEvent, ClientHandle, ClientOptions};
use ssntp::identity::load_or_create_uuid;
use ssntp::payload::{
    CommandFailure, FailureReason, InstanceEvent, InstanceExited, InstanceFailure, LogData, Message, NodeState,
    StartFailure, Stats,
};
use ssntp::tls::Identity;
use ssntp::{Role, Uuid};
use tokio::sync::mpsc;

use drover_model::Overcommit;

use crate::admission::{self, Figures, Limits, StatusMachine};
use crate::cgroup::Cgroups;
use crate::cli::Args;
use crate::instances::{Event, Exit, Instances, ShimCommand, STOP_GRACE};
use crate::probe;
use crate::state::{read_json, write_json, NodeFlags};

/// Validated configuration.
#[derive(Debug)]
pub struct Prepared {
    args: Args,
    tls: Arc<rustls::ClientConfig>,
    uuid: Uuid,
    shim: ShimCommand,
    offer: probe::Offer,
}

/// Loads TLS material, checks the agent role, creates the state directory and loads the
/// node's UUID.
///
/// # Errors
/// Unreadable files, a certificate without the agent role, an unusable state directory.
pub fn prepare(args: Args) -> anyhow::Result<Prepared> {
    let identity = Identity::load(&args.tls.paths(None)).context("loading TLS material")?;
    identity.require_role(Role::AGENT, &args.tls.cert)?;
    let tls = ssntp::tls::client_config(&identity).context("building the TLS configuration")?;
    for server in &args.servers {
        ssntp::tls::server_name_for(server).map_err(|e| anyhow::anyhow!("--server {server}: {e}"))?;
    }
    std::fs::create_dir_all(&args.state_dir).with_context(|| format!("creating {}", args.state_dir.display()))?;
    let uuid = load_or_create_uuid(&args.state_dir, Role::AGENT).context("loading the node identity")?;
    let shim = ShimCommand::current().context("locating this executable for the shim")?;
    let offer = offer(&args)?;
    Ok(Prepared { args, tls, uuid, shim, offer })
}

/// What the node offers, from the flags; refuses what cannot work here.
fn offer(args: &Args) -> anyhow::Result<probe::Offer> {
    let mut backends = Vec::new();
    for b in &args.backends {
        match b.as_str() {
            "process" | "sim" => {}
            "oci" => {
                if probe::find_program(&["runc", "crun"]).is_none() {
                    anyhow::bail!("--backend oci needs runc or crun on PATH (Debian: apt-get install runc)");
                }
            }
            other => anyhow::bail!("--backend {other:?}: unknown backend (process, oci, sim)"),
        }
        if !backends.contains(b) {
            backends.push(b.clone());
        }
    }
    let numa = args.numa_node.map(|n| (n, args.sysfs_root.clone()));
    if let Some((n, sysfs)) = &numa {
        probe::numa_node(sysfs, *n).map_err(|e| anyhow::anyhow!("--numa-node {n}: {e}"))?;
    }
    Ok(probe::Offer {
        backends,
        features: probe::machine_features(),
        labels: args.labels.iter().cloned().collect(),
        numa,
    })
}

/// How long FULL lasts at least before READY again.
const FULL_DWELL: Duration = Duration::from_secs(10);

struct Node {
    uuid: Uuid,
    offer: probe::Offer,
    state_dir: PathBuf,
    limits: Limits,
    flags: NodeFlags,
    status: StatusMachine,
    started: tokio::time::Instant,
    client: ClientHandle,
    instances: Instances,
    /// Ends of instances whose records were unreadable, to report once connected.
    orphans: Vec<Exit>,
    /// The scheduler's overcommit, from the cluster configuration it sent: admission and the
    /// FULL threshold use the same bounds placement does.
    overcommit: Overcommit,
    /// The connection this loop last saw `Connected` for. The client reconnects on its own task
    /// while this loop may still be working through commands from the old connection; a report
    /// sent on the new connection before those are done would leave out instances about to
    /// start, and a controller reconciling after a scheduler restart would start them a second
    /// time elsewhere. So reports go only on this connection (`try_send_in`).
    session: Option<u64>,
}

impl Node {
    fn probe(&self) -> ssntp::payload::NodeReport {
        let mut r = probe::report_for(self.uuid, &self.state_dir, self.limits.mem_reserve_mb, &self.offer)
            .unwrap_or_else(|e| {
                // Offer nothing rather than the whole machine: this launcher serves only its node.
                tracing::error!(error = %e, "cannot read this launcher's NUMA node; reporting no capacity");
                ssntp::payload::NodeReport { node_uuid: self.uuid, ..Default::default() }
            });
        let (vcpus, mem) = self.instances.allocated();
        r.vcpus_allocated = vcpus;
        r.mem_allocated_mb = Some(mem);
        r.instance_count = u32::try_from(self.instances.running()).unwrap_or(u32::MAX);
        if let Some(feature) = self.instances.cgroups().feature() {
            r.features.push(feature.to_owned());
            r.features.push(admission::LIMITS_FEATURE.to_owned());
        }
        r
    }

    /// The figures admission and status work from. The report's memory figures already have
    /// the reserve taken off; admission wants the raw ones.
    fn figures(&self, r: &ssntp::payload::NodeReport) -> Figures {
        Figures {
            cpus_online: r.cpus_online,
            mem_total_mb: r.mem_total_mb + self.limits.mem_reserve_mb,
            mem_available_mb: r.mem_available_mb + self.limits.mem_reserve_mb,
            disk_available_mb: r.disk_available_mb,
            vcpus_allocated: u64::from(r.vcpus_allocated),
            mem_allocated_mb: r.mem_allocated_mb.unwrap_or(0),
            instances: self.instances.running(),
        }
    }

    /// The status frame (READY, FULL or MAINTENANCE, with the report) for now.
    fn status(&mut self, r: ssntp::payload::NodeReport) -> Message {
        let figures = self.figures(&r);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match self.status.update(now, &self.limits, &figures, self.overcommit, self.flags.maintenance) {
            NodeState::Full => Message::Full(Some(r)),
            NodeState::Maintenance => Message::Maintenance(Some(r)),
            _ => Message::Ready(r),
        }
    }

    fn stats(&mut self, r: ssntp::payload::NodeReport) -> Message {
        Message::Stats(Stats {
            node_uuid: self.uuid,
            status: self.status.state(),
            mem_total_mb: r.mem_total_mb,
            mem_available_mb: r.mem_available_mb,
            disk_total_mb: r.disk_total_mb,
            disk_available_mb: r.disk_available_mb,
            load: r.load,
            cpus_online: r.cpus_online,
            hostname: r.hostname,
            networks: r.networks,
            instances: self.instances.stats(),
        })
    }

    /// Sends the status and STATS; dropped while disconnected (the next connect sends them
    /// anew).
    fn report(&mut self) {
        // The first report on a new connection follows every command of the old one.
        let Some(session) = self.session else { return };
        if !self.client.is_connected() {
            return;
        }
        // One probe of the machine serves both frames.
        let r = self.probe();
        let status = self.status(r.clone());
        let _ = self.client.try_send_in(session, &status);
        let stats = self.stats(r);
        let _ = self.client.try_send_in(session, &stats);
    }

    fn set_maintenance(&mut self, on: bool) {
        self.flags.maintenance = on;
        if let Err(e) = write_json(&self.state_dir.join("launcher.json"), &self.flags) {
            tracing::error!(error = %e, "cannot persist the maintenance flag");
        }
    }

    fn end_message(&self, exit: &Exit, stopped: bool) -> Message {
        if stopped {
            Message::InstanceStopped(InstanceEvent { instance_uuid: exit.instance, node_uuid: Some(self.uuid) })
        } else {
            Message::InstanceExited(InstanceExited {
                instance_uuid: exit.instance,
                node_uuid: self.uuid,
                exit_code: exit.code,
                reason: exit.reason,
            })
        }
    }

    /// Reports every end not yet delivered (after a reconnect or a restart).
    async fn report_ends(&mut self) {
        for (exit, stopped) in self.instances.unreported() {
            if self.client.send(&self.end_message(&exit, stopped)).await.is_ok() {
                self.instances.reported(exit.instance);
            }
        }
        let orphans = std::mem::take(&mut self.orphans);
        for exit in orphans {
            if self.client.send(&self.end_message(&exit, false)).await.is_err() {
                self.orphans.push(exit);
            }
        }
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Started { instance, pid } => {
                self.instances.started(instance, pid);
                tracing::info!(%instance, pid, "instance started");
                let started =
                    Message::InstanceStarted(InstanceEvent { instance_uuid: instance, node_uuid: Some(self.uuid) });
                let _ = self.client.send(&started).await;
            }
            Event::StartFailed { instance, detail } => {
                tracing::warn!(%instance, %detail, "instance failed to start");
                let exit =
                    Exit { instance, code: Some(crate::shim::CANNOT_RUN), reason: ssntp::payload::ExitReason::Failed };
                self.instances.exited(&exit);
                let failure = StartFailure {
                    node_uuid: Some(self.uuid),
                    instance_uuid: instance,
                    reason: FailureReason::LaunchFailure,
                    restart: false,
                    detail,
                };
                if self.client.send(&Message::StartFailure(failure)).await.is_ok() {
                    self.instances.reported(instance);
                }
            }
            Event::Exited(exit) => {
                let stopped = self.instances.exited(&exit);
                tracing::info!(instance = %exit.instance, code = ?exit.code, reason = ?exit.reason, stopped, "instance ended");
                if self.client.send(&self.end_message(&exit, stopped)).await.is_ok() {
                    self.instances.reported(exit.instance);
                }
            }
        }
        self.report();
    }

    /// Handles one command; returns the answer to send, if any.
    fn command(&mut self, message: Message) -> Option<Message> {
        let node = self.uuid;
        let instance_failure = |instance_uuid, (reason, detail): (FailureReason, String)| InstanceFailure {
            node_uuid: Some(node),
            instance_uuid,
            reason,
            detail,
        };
        Some(match message {
            Message::Start(start) => match self.admit(&start).and_then(|()| self.instances.start(&start)) {
                Ok(()) => return None, // INSTANCE_STARTED follows once the workload runs
                Err((reason, detail)) => Message::StartFailure(StartFailure {
                    node_uuid: Some(node),
                    instance_uuid: start.instance_uuid,
                    reason,
                    restart: start.restart,
                    detail,
                }),
            },
            Message::Stop(stop) => {
                let grace = stop.grace_ms.map_or(STOP_GRACE, Duration::from_millis);
                match self.instances.stop(stop.instance_uuid, grace) {
                    Ok(()) => return None, // INSTANCE_STOPPED follows the end
                    Err(refusal) => Message::StopFailure(instance_failure(stop.instance_uuid, refusal)),
                }
            }
            Message::Delete(delete) => match self.instances.delete(delete.instance_uuid) {
                Ok(()) => Message::InstanceDeleted(InstanceEvent {
                    instance_uuid: delete.instance_uuid,
                    node_uuid: Some(node),
                }),
                Err(refusal) => Message::DeleteFailure(instance_failure(delete.instance_uuid, refusal)),
            },
            Message::LogFetch(fetch) => match self.instances.tail(fetch.instance_uuid, fetch.max_bytes) {
                Ok((data, truncated)) => Message::LogData(LogData {
                    instance_uuid: fetch.instance_uuid,
                    request_id: fetch.request_id,
                    data,
                    truncated,
                }),
                Err((reason, detail)) => Message::CommandFailure(CommandFailure {
                    command: "LOG_FETCH".into(),
                    node_uuid: Some(node),
                    instance_uuid: Some(fetch.instance_uuid),
                    reason,
                    detail,
                }),
            },
            Message::Restart(r) => Message::RestartFailure(instance_failure(
                r.instance_uuid,
                (FailureReason::InvalidData, "RESTART is not supported by this launcher build".into()),
            )),
            Message::Evacuate(evacuate) => {
                // Persisted first: a launcher restarted mid-evacuation stays in maintenance.
                self.set_maintenance(true);
                let grace = evacuate.deadline_ms.map_or(STOP_GRACE, Duration::from_millis);
                let running: Vec<Uuid> = self.instances.running_ids();
                tracing::info!(instances = running.len(), "evacuating: stopping every instance");
                for id in running {
                    let _ = self.instances.stop(id, grace);
                }
                return None; // MAINTENANCE and one INSTANCE_STOPPED per instance follow
            }
            Message::Restore(_) => {
                self.set_maintenance(false);
                tracing::info!("restored: taking work again");
                return None; // READY follows
            }
            other => {
                tracing::debug!(kind = %other.kind(), "ignoring frame");
                return None;
            }
        })
    }
}

impl Node {
    fn admit(&self, start: &ssntp::payload::Start) -> Result<(), (FailureReason, String)> {
        let r = self.probe();
        admission::admit(
            &self.limits,
            &self.figures(&r),
            self.overcommit,
            self.flags.maintenance,
            start,
            &self.offer.backends,
            self.instances.cgroups().feature().is_some(),
        )
    }
}

/// Runs until `shutdown` completes. Workloads keep running when the launcher exits.
///
/// # Errors
/// None yet; the signature leaves room for fatal conditions.
#[allow(clippy::disallowed_methods)] // the shell: its clock origin and the drain deadline
pub async fn run(prepared: Prepared, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let Prepared { args, tls, uuid, shim, offer } = prepared;
    let cgroups = Cgroups::detect(&args.cgroup_root);
    match &cgroups {
        Cgroups::Unavailable { why } => tracing::warn!(%why, "workloads will run without memory and CPU limits"),
        other => tracing::info!(cgroups = ?other.feature(), "memory and CPU limits available"),
    }
    let mut opts = ClientOptions::new(args.servers.clone(), tls, Role::AGENT, uuid);
    opts.hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned());
    let (client, mut events) = Client::spawn(opts);
    let (instance_tx, mut instance_events) = mpsc::channel::<Event>(1024);
    let pin = match &offer.numa {
        Some((n, sysfs)) => {
            let node = probe::numa_node(sysfs, *n).map_err(anyhow::Error::msg)?;
            if matches!(cgroups, Cgroups::Unavailable { .. }) {
                tracing::warn!(numa_node = n, "no cgroups: workloads cannot be pinned to the NUMA node");
            }
            Some(crate::cgroup::Pin { cpus: node.cpulist, mems: n.to_string() })
        }
        None => None,
    };
    let oci_runtime =
        offer.backends.iter().any(|b| b == "oci").then(|| probe::find_program(&["runc", "crun"])).flatten();
    let mut instances =
        Instances::new(&args.state_dir, shim, cgroups, instance_tx).with_pin(pin).with_oci_runtime(oci_runtime);
    let orphans = instances
        .adopt()
        .into_iter()
        .filter_map(|e| match e {
            Event::Exited(exit) if !instances.contains(exit.instance) => Some(exit),
            _ => None,
        })
        .collect();
    let flags: NodeFlags = match read_json(&args.state_dir.join("launcher.json")) {
        Ok(flags) => flags.unwrap_or_default(),
        Err(e) => {
            tracing::error!(error = %e, "node flags unreadable; starting out of maintenance");
            NodeFlags::default()
        }
    };
    let limits = Limits {
        mem_reserve_mb: args.mem_reserve_mb,
        disk_reserve_mb: args.disk_reserve_mb,
        max_instances: args.max_instances,
        dwell_ms: u64::try_from(FULL_DWELL.as_millis()).unwrap_or(u64::MAX),
    };
    let mut node = Node {
        uuid,
        offer,
        state_dir: args.state_dir.clone(),
        limits,
        flags,
        status: StatusMachine::default(),
        started: tokio::time::Instant::now(),
        client,
        instances,
        orphans,
        overcommit: Overcommit::default(),
        session: None,
    };
    let mut ticker = tokio::time::interval(args.report_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(node = %uuid, servers = ?args.servers, running = node.instances.running(), "launcher starting");
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                match event {
                    ClientEvent::Connected { target, server_uuid, config, session } => {
                        tracing::info!(%target, scheduler = %server_uuid, "connected");
                        node.overcommit = Overcommit { cpu: config.cpu_overcommit, mem: config.mem_overcommit };
                        node.session = Some(session);
                        node.report();
                        node.report_ends().await;
                    }
                    ClientEvent::Disconnected { reason } => {
                        tracing::warn!(%reason, "disconnected from the scheduler");
                        node.session = None;
                    }
                    ClientEvent::ConnectFailed { target, reason, permanent } => {
                        if permanent {
                            tracing::error!(%target, %reason, "the scheduler refused this launcher; check its certificate and role");
                        } else {
                            tracing::debug!(%target, %reason, "connect failed; retrying");
                        }
                    }
                    ClientEvent::Message { message, .. } => {
                        if let Some(reply) = node.command(message) {
                            if let Err(e) = node.client.send(&reply).await {
                                tracing::warn!(error = %e, kind = %reply.kind(), "answer not delivered");
                            }
                            node.report();
                        }
                    }
                }
            }
            Some(event) = instance_events.recv() => node.on_event(event).await,
            _ = ticker.tick() => node.report(),
            () = &mut shutdown => break,
        }
    }
    // Stop taking work and say so; then leave the workloads to the next launcher, or stop them.
    let report = node.probe();
    let status = node.status(report);
    let maintenance = match status {
        Message::Ready(r) | Message::Full(Some(r)) | Message::Maintenance(Some(r)) => Message::Maintenance(Some(r)),
        other => other,
    };
    let _ = node.client.send(&maintenance).await;
    if args.drain_on_exit {
        let running = node.instances.running_ids();
        tracing::info!(instances = running.len(), "draining before exit");
        for id in running {
            let _ = node.instances.stop(id, STOP_GRACE);
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE + Duration::from_secs(2);
        while node.instances.running() > 0 {
            match tokio::time::timeout_at(deadline, instance_events.recv()).await {
                Ok(Some(event)) => node.on_event(event).await,
                _ => break,
            }
        }
    } else {
        tracing::info!(running = node.instances.running(), "exiting; workloads keep running and will be re-adopted");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    node.client.close();
    Ok(())
}
