//! The tokio shell around [`Hub`]: runs the SSNTP server, feeds its events to the hub and
//! delivers the hub's outputs; prints the heartbeat.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use ssntp::payload::ClusterConfig;
use ssntp::server::{PeerSender, Server, ServerEvent, ServerOptions};
use ssntp::tls::Identity;
use ssntp::{Frame, Role, Uuid};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use drover_model::{Clock as _, SystemClock};

use crate::cli::Args;
use crate::heartbeat::Heartbeat;
use crate::hub::{Config, Hub, Input, Output};
use crate::metrics::Metrics;

/// Capacity of the channel from connections to the hub. When it is full, connections stop
/// reading (TCP backpressure) until the hub catches up.
const INBOX: usize = 8192;

/// Bytes of frames kept for one launcher whose outbound queue is full, until it has room again.
const PEER_BACKLOG_BYTES: usize = 8 << 20;
/// The same for a controller: every node's reports go to it, and a dropped controller costs a
/// resync (digests from every node), so it may fall further behind before it is cut off.
const CONTROLLER_BACKLOG_BYTES: usize = 128 << 20;
/// Bytes of such backlogs over all peers together.
const TOTAL_BACKLOG_BYTES: usize = 256 << 20;

/// Validated configuration: everything that can be wrong with the flags is found here, before
/// anything is bound.
#[derive(Debug)]
pub struct Prepared {
    args: Args,
    config: Config,
    tls: Arc<rustls::ServerConfig>,
}

/// Loads and checks the TLS material named by the flags.
///
/// # Errors
/// Invalid knobs, unreadable files, a certificate without the scheduler role, a bad CRL.
pub fn prepare(args: Args) -> anyhow::Result<Prepared> {
    let config = args.config().map_err(anyhow::Error::msg)?;
    if args.etcd.given() {
        args.etcd.check().map_err(anyhow::Error::msg)?;
    }
    let identity = Identity::load(&args.tls.paths(args.crl.clone())).context("loading TLS material")?;
    identity.require_role(Role::SCHEDULER, &args.tls.cert)?;
    let tls = ssntp::tls::server_config(&identity).context("building the TLS configuration")?;
    Ok(Prepared { args, config, tls })
}

/// Runs the scheduler until `shutdown` completes.
///
/// # Errors
/// The listen address cannot be bound.
pub async fn run(
    prepared: Prepared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listen = prepared.args.listen;
    if !prepared.args.etcd.given() {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        return run_on(listener, prepared, shutdown).await;
    }
    // One of several: stand by, not listening, until elected.
    let etcd = prepared.args.etcd.clone();
    let tls = etcd.check().map_err(anyhow::Error::msg)?;
    let advertise = prepared.args.advertise.clone().unwrap_or_else(|| drover_etcd::cli::advertised(listen));
    let me = drover_etcd::election::LeaderInfo { uuid: Uuid::new_v4(), addr: advertise.clone(), since_unix_ms: 0 };
    tracing::info!(etcd = ?etcd.etcd_endpoints, prefix = %etcd.etcd_prefix, %advertise,
        "scheduler standing by until elected (not listening)");
    ssntp::cli::notify_ready("standing by until elected");
    let mut shutdown = Box::pin(shutdown);
    let elect = async {
        let client = drover_etcd::cli::connect_retrying(&etcd.etcd_endpoints, tls.as_ref()).await;
        drover_etcd::cli::elect(client, &etcd.etcd_prefix, "scheduler-leader", me, "scheduler", |_| {}).await
    };
    let leading = tokio::select! {
        leading = elect => leading,
        () = &mut shutdown => return Ok(()),
    };
    tracing::info!(%advertise, "this scheduler is the active one");
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            leading.resign().await;
            return Err(e).with_context(|| format!("binding {listen}"));
        }
    };
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<drover_etcd::election::Lost>();
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            why = leading.hold(drover_model::unix_ms_now) => {
                tracing::error!(reason = %why, "no longer the active scheduler; starting again as a standby");
                let _ = lost_tx.send(why);
                return;
            }
        }
        leading.resign().await;
    };
    let result = run_on(listener, prepared, stop).await;
    if lost_rx.await.is_ok() {
        drover_etcd::cli::restart_as_standby("drover-scheduler");
    }
    result
}

/// Runs the scheduler on an already bound listener (tests bind `127.0.0.1:0`).
///
/// # Errors
/// The listener has no local address.
pub async fn run_on(
    listener: TcpListener,
    prepared: Prepared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Prepared { args, config: core_config, tls } = prepared;
    let clock = SystemClock::start();
    let uuid = Uuid::new_v4();
    tracing::info!(listen = %listener.local_addr()?, %uuid, "scheduler listening");
    tracing::debug!(config = ?core_config, "placement and liveness configuration");
    ssntp::cli::notify_ready(&format!("listening on {}", listener.local_addr()?));
    let mut opts = ServerOptions::new(uuid);
    opts.max_connections = args.max_connections;
    opts.max_payload = args.max_payload;
    opts.identities = if args.require_cert_identity {
        ssntp::bindings::IdentityPolicy::Require
    } else {
        ssntp::bindings::IdentityPolicy::Bind
    };
    let config = Arc::new(RwLock::new(with_scheduler_fields(ClusterConfig::default(), &core_config)));
    let (events_tx, mut events) = mpsc::channel(INBOX);
    let server = Server::new(tls, opts, config.clone(), events_tx);
    let reloader = tokio::spawn(crate::reload::watch(server.control(), args.tls.paths(args.crl.clone())));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server.run(listener, async {
        let _ = stop_rx.await;
    }));

    let mut hub = Hub::new(uuid, core_config, clock.now());
    let mut heartbeat = Heartbeat::default();
    let metrics = Arc::new(std::sync::Mutex::new(Metrics::new()));
    if let Some(addr) = args.metrics {
        let http = TcpListener::bind(addr).await.with_context(|| format!("binding --metrics {addr}"))?;
        tracing::info!(%addr, "serving metrics on /metrics");
        let metrics = metrics.clone();
        tokio::spawn(crate::metrics::serve(http, Arc::new(move || metrics.lock().expect("metrics lock").encode())));
    }
    let mut peers = Outbox::default();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    // Bytes received from launchers since the last metrics update.
    let mut report_bytes = 0u64;
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                let input = match event {
                    ServerEvent::Connected(peer) => {
                        let input = Input::Connected { conn_id: peer.conn_id, uuid: peer.uuid, role: peer.role, term: peer.term };
                        peers.connected(peer.uuid, peer.role, peer.sender);
                        input
                    }
                    ServerEvent::Disconnected { conn_id, uuid, .. } => {
                        peers.disconnected(uuid, conn_id);
                        Input::Disconnected { conn_id, uuid }
                    }
                    ServerEvent::Message { from, role, frame, message, .. } => {
                        if role.contains(ssntp::Role::AGENT) {
                            report_bytes += frame.wire_len() as u64;
                        }
                        Input::Message { from, role, frame: Some(frame), message }
                    }
                };
                for output in hub.handle(clock.now(), input) {
                    deliver(&mut peers, &hub, &config, output);
                }
                peers.flush();
            }
            _ = ticker.tick() => {
                let now = clock.now();
                peers.flush();
                for output in hub.tick(now) {
                    deliver(&mut peers, &hub, &config, output);
                }
                let summary = hub.summary(now);
                {
                    let mut metrics = metrics.lock().expect("metrics lock");
                    metrics.update(&summary);
                    metrics.add_report_bytes(std::mem::take(&mut report_bytes));
                }
                if args.heartbeat {
                    eprintln!("{}", heartbeat.line(&hub, &summary, now));
                }
            }
            () = &mut shutdown => break,
        }
    }
    reloader.abort();
    let _ = stop_tx.send(());
    let _ = server_task.await;
    Ok(())
}

/// The connected peers and what waits to be queued to them.
///
/// A peer's outbound queue is bounded in frames; when it is full (a burst of commands to a
/// launcher that is busy starting work, say), further frames wait here in order, bounded in bytes
/// per peer and in total, and move on as the peer drains. Only a peer whose backlog overflows
/// too, or that the server finds stuck on a write, is disconnected (it reconnects and resyncs).
#[derive(Debug, Default)]
struct Outbox {
    senders: HashMap<Uuid, PeerSender>,
    backlogs: HashMap<Uuid, Backlog>,
    backlog_bytes: usize,
    /// Peers allowed the larger backlog (controllers).
    controllers: std::collections::HashSet<Uuid>,
}

#[derive(Debug, Default)]
struct Backlog {
    frames: VecDeque<Frame>,
    bytes: usize,
}

impl Outbox {
    fn connected(&mut self, uuid: Uuid, role: ssntp::Role, sender: PeerSender) {
        self.drop_backlog(uuid); // frames for the old connection were for it only
        self.senders.insert(uuid, sender);
        if role.contains(ssntp::Role::CONTROLLER) {
            self.controllers.insert(uuid);
        } else {
            self.controllers.remove(&uuid);
        }
    }

    fn disconnected(&mut self, uuid: Uuid, conn_id: u64) {
        if self.senders.get(&uuid).is_some_and(|s| s.conn_id() == conn_id) {
            self.senders.remove(&uuid);
            self.drop_backlog(uuid);
        }
    }

    fn drop_backlog(&mut self, uuid: Uuid) {
        if let Some(b) = self.backlogs.remove(&uuid) {
            self.backlog_bytes -= b.bytes;
        }
    }

    fn send(&mut self, to: Uuid, frame: Frame) {
        let Some(sender) = self.senders.get(&to) else { return };
        if sender.is_closed() {
            return; // already cut off; it will reconnect
        }
        if !self.backlogs.contains_key(&to) {
            match sender.offer(frame) {
                Ok(()) | Err(None) => return,
                Err(Some(frame)) => return self.keep(to, frame),
            }
        }
        self.keep(to, frame);
    }

    /// Keeps a frame for later, in order behind what already waits for that peer.
    fn keep(&mut self, to: Uuid, frame: Frame) {
        let size = frame.wire_len();
        let limit = if self.controllers.contains(&to) { CONTROLLER_BACKLOG_BYTES } else { PEER_BACKLOG_BYTES };
        let backlog = self.backlogs.entry(to).or_default();
        if backlog.bytes + size > limit || self.backlog_bytes + size > TOTAL_BACKLOG_BYTES {
            let waiting = backlog.bytes;
            tracing::warn!(peer = %to, waiting_bytes = waiting, "peer cannot keep up; disconnecting it");
            if let Some(sender) = self.senders.get(&to) {
                sender.close();
            }
            self.drop_backlog(to);
            return;
        }
        if backlog.frames.is_empty() {
            tracing::debug!(peer = %to, "outbound queue full; keeping frames until the peer catches up");
        }
        backlog.bytes += size;
        backlog.frames.push_back(frame);
        self.backlog_bytes += size;
    }

    /// Moves waiting frames into the queues of peers that have room again.
    fn flush(&mut self) {
        if self.backlogs.is_empty() {
            return;
        }
        let mut freed = 0;
        let senders = &self.senders;
        self.backlogs.retain(|peer, backlog| {
            let Some(sender) = senders.get(peer).filter(|s| !s.is_closed()) else {
                freed += backlog.bytes;
                return false;
            };
            while let Some(frame) = backlog.frames.pop_front() {
                let size = frame.wire_len();
                match sender.offer(frame) {
                    Ok(()) => {
                        backlog.bytes -= size;
                        freed += size;
                    }
                    Err(Some(frame)) => {
                        backlog.frames.push_front(frame);
                        return true;
                    }
                    Err(None) => {
                        freed += backlog.bytes;
                        return false;
                    }
                }
            }
            false
        });
        self.backlog_bytes -= freed;
    }
}

/// The cluster configuration with the fields only the scheduler decides (the overcommit
/// launchers admit by) taken from its own flags: CONFIGURE cannot change them.
fn with_scheduler_fields(mut config: ClusterConfig, core: &Config) -> ClusterConfig {
    config.cpu_overcommit = core.overcommit.cpu;
    config.mem_overcommit = core.overcommit.mem;
    config.load_threshold = Some(core.load_threshold);
    config
}

fn deliver(peers: &mut Outbox, hub: &Hub, config: &RwLock<ClusterConfig>, output: Output) {
    match output {
        Output::To { peer, payload } => peers.send(peer, payload.into_frame()),
        Output::ToControllers(payload) => {
            let frame = payload.into_frame();
            for controller in hub.controllers() {
                peers.send(controller, frame.clone());
            }
        }
        Output::Configure(new) => *config.write().expect("config lock") = with_scheduler_fields(new, hub.config()),
        Output::Warn(text) => tracing::warn!("{text}"),
    }
}
