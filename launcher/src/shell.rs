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

use crate::cgroup::Cgroups;
use crate::cli::Args;
use crate::instances::{Event, Exit, Instances, ShimCommand, STOP_GRACE};
use crate::probe;

/// Validated configuration.
#[derive(Debug)]
pub struct Prepared {
    args: Args,
    tls: Arc<rustls::ClientConfig>,
    uuid: Uuid,
    shim: ShimCommand,
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
    Ok(Prepared { args, tls, uuid, shim })
}

struct Node {
    uuid: Uuid,
    state_dir: PathBuf,
    mem_reserve_mb: u64,
    client: ClientHandle,
    instances: Instances,
    /// Ends of instances whose records were unreadable, to report once connected.
    orphans: Vec<Exit>,
}

impl Node {
    fn features(&self) -> Vec<String> {
        let mut features = vec!["process".to_owned(), "sim".to_owned()];
        features.extend(self.instances.cgroups().feature().map(str::to_owned));
        features
    }

    fn ready(&self) -> Message {
        let mut r = probe::report(self.uuid, &self.state_dir, self.mem_reserve_mb);
        let (vcpus, mem) = self.instances.allocated();
        r.vcpus_allocated = vcpus;
        r.mem_allocated_mb = Some(mem);
        r.instance_count = u32::try_from(self.instances.running()).unwrap_or(u32::MAX);
        r.features = self.features();
        Message::Ready(r)
    }

    fn stats(&self) -> Message {
        let r = probe::report(self.uuid, &self.state_dir, self.mem_reserve_mb);
        Message::Stats(Stats {
            node_uuid: self.uuid,
            status: NodeState::Ready,
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

    /// Sends READY and STATS; dropped while disconnected (the next connect sends them anew).
    fn report(&self) {
        let _ = self.client.try_send(&self.ready());
        let _ = self.client.try_send(&self.stats());
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
            Message::Start(start) => match self.instances.start(&start) {
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
            other @ (Message::Evacuate(_) | Message::Restore(_)) => Message::CommandFailure(CommandFailure {
                command: other.kind().to_string(),
                node_uuid: Some(node),
                instance_uuid: None,
                reason: FailureReason::InvalidData,
                detail: "evacuation is not supported by this launcher build".into(),
            }),
            other => {
                tracing::debug!(kind = %other.kind(), "ignoring frame");
                return None;
            }
        })
    }
}

/// Runs until `shutdown` completes. Workloads keep running when the launcher exits.
///
/// # Errors
/// None yet; the signature leaves room for fatal conditions.
pub async fn run(prepared: Prepared, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let Prepared { args, tls, uuid, shim } = prepared;
    let cgroups = Cgroups::detect(&args.cgroup_root);
    match &cgroups {
        Cgroups::Unavailable { why } => tracing::warn!(%why, "workloads will run without memory and CPU limits"),
        other => tracing::info!(cgroups = ?other.feature(), "memory and CPU limits available"),
    }
    let mut opts = ClientOptions::new(args.servers.clone(), tls, Role::AGENT, uuid);
    opts.hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned());
    let (client, mut events) = Client::spawn(opts);
    let (instance_tx, mut instance_events) = mpsc::channel::<Event>(1024);
    let mut instances = Instances::new(&args.state_dir, shim, cgroups, instance_tx);
    let orphans = instances
        .adopt()
        .into_iter()
        .filter_map(|e| match e {
            Event::Exited(exit) if !instances.contains(exit.instance) => Some(exit),
            _ => None,
        })
        .collect();
    let mut node = Node {
        uuid,
        state_dir: args.state_dir.clone(),
        mem_reserve_mb: args.mem_reserve_mb,
        client,
        instances,
        orphans,
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
                    ClientEvent::Connected { target, server_uuid, .. } => {
                        tracing::info!(%target, scheduler = %server_uuid, "connected");
                        node.report();
                        node.report_ends().await;
                    }
                    ClientEvent::Disconnected { reason } => tracing::warn!(%reason, "disconnected from the scheduler"),
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
    let _ = node.client.try_send(&Message::Offline);
    tokio::time::sleep(Duration::from_millis(50)).await;
    node.client.close();
    Ok(())
}
