//! The launcher's event loop: scheduler connection, periodic READY, commands, instance exits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ssntp::client::{Client, ClientEvent, ClientOptions};
use ssntp::identity::load_or_create_uuid;
use ssntp::payload::{
    CommandFailure, FailureReason, InstanceEvent, InstanceExited, InstanceFailure, LogData, Message, StartFailure,
};
use ssntp::tls::Identity;
use ssntp::{Role, Uuid};
use tokio::sync::mpsc;

use crate::cli::Args;
use crate::instances::{Exit, Instances, STOP_GRACE};
use crate::probe;

/// Validated configuration.
#[derive(Debug)]
pub struct Prepared {
    args: Args,
    tls: Arc<rustls::ClientConfig>,
    uuid: Uuid,
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
    Ok(Prepared { args, tls, uuid })
}

/// Runs until `shutdown` completes. Workloads keep running when the launcher exits.
///
/// # Errors
/// None yet; the signature leaves room for fatal conditions.
pub async fn run(prepared: Prepared, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let Prepared { args, tls, uuid } = prepared;
    let mut opts = ClientOptions::new(args.servers.clone(), tls, Role::AGENT, uuid);
    opts.hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned());
    let (client, mut events) = Client::spawn(opts);
    let (exits_tx, mut exits) = mpsc::channel::<Exit>(1024);
    let mut instances = Instances::new(&args.state_dir, exits_tx);
    let mut ticker = tokio::time::interval(args.report_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(node = %uuid, servers = ?args.servers, "launcher starting");
    tokio::pin!(shutdown);

    let report = |instances: &Instances| {
        let mut r = probe::report(uuid, &args.state_dir, args.mem_reserve_mb);
        r.instance_count = u32::try_from(instances.running()).unwrap_or(u32::MAX);
        Message::Ready(r)
    };
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                match event {
                    ClientEvent::Connected { target, server_uuid, .. } => {
                        tracing::info!(%target, scheduler = %server_uuid, "connected");
                        let _ = client.try_send(&report(&instances));
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
                        if let Some(reply) = command(uuid, &mut instances, message) {
                            send(&client, &reply).await;
                        }
                    }
                }
            }
            Some(exit) = exits.recv() => {
                let stopped = instances.exited(&exit);
                let reply = if stopped {
                    Message::InstanceStopped(InstanceEvent { instance_uuid: exit.instance, node_uuid: Some(uuid) })
                } else {
                    Message::InstanceExited(InstanceExited { instance_uuid: exit.instance, node_uuid: uuid, exit_code: exit.code, reason: exit.reason })
                };
                send(&client, &reply).await;
                let _ = client.try_send(&report(&instances));
            }
            _ = ticker.tick() => { let _ = client.try_send(&report(&instances)); }
            () = &mut shutdown => break,
        }
    }
    let _ = client.try_send(&Message::Offline);
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.close();
    Ok(())
}

/// Reports matter more than READY ticks: wait for room rather than drop them. While the
/// scheduler is unreachable they are lost; the launcher issue adds STATS-based resync.
async fn send(client: &ssntp::client::ClientHandle, message: &Message) {
    if let Err(e) = client.send(message).await {
        tracing::warn!(error = %e, kind = %message.kind(), "report not delivered");
    }
}

/// Handles one command; returns the answer to send, if any.
fn command(node: Uuid, instances: &mut Instances, message: Message) -> Option<Message> {
    let instance_failure = |instance_uuid, (reason, detail): (FailureReason, String)| InstanceFailure {
        node_uuid: Some(node),
        instance_uuid,
        reason,
        detail,
    };
    Some(match message {
        Message::Start(start) => match instances.start(&start) {
            Ok(()) => {
                Message::InstanceStarted(InstanceEvent { instance_uuid: start.instance_uuid, node_uuid: Some(node) })
            }
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
            match instances.stop(stop.instance_uuid, grace) {
                Ok(()) => return None, // InstanceStopped follows the exit
                Err(refusal) => Message::StopFailure(instance_failure(stop.instance_uuid, refusal)),
            }
        }
        Message::Delete(delete) => match instances.delete(delete.instance_uuid) {
            Ok(()) => {
                Message::InstanceDeleted(InstanceEvent { instance_uuid: delete.instance_uuid, node_uuid: Some(node) })
            }
            Err(refusal) => Message::DeleteFailure(instance_failure(delete.instance_uuid, refusal)),
        },
        Message::LogFetch(fetch) => match instances.tail(fetch.instance_uuid, fetch.max_bytes) {
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
