//! The controller daemon's shared state and its scheduler loop: the [`Service`] behind the
//! SSNTP link and the API.
//!
//! - [`Controller`] holds the service, the link to the scheduler, what the cluster reported
//!   about its nodes, and the log requests waiting for an answer.
//! - [`run_link`] is the only task that talks to the scheduler: it applies every frame to the
//!   service, sends what the service asks for, and ticks (STARTs due) every 100 ms or at once
//!   when the API asks. API handlers never write to the link: they hand it a [`LinkCommand`]
//!   (commands the service decided, a node action, a log request), so what goes to the
//!   scheduler goes in one order, from one place. After a reconnect it re-sends the STARTs that got no answer, once the
//!   nodes it knew have reported (see [`crate::resend_gate`]).
//!
//! Store calls block (redb commits with fsync), so they run on tokio's blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_model::NodeStatus;
use serde::Serialize;
use ssntp::client::{ClientEvent, ClientEvents, ClientHandle};
use ssntp::payload::{LogData, LogFetch, Message, NodeState, Stats};
use ssntp::Uuid;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::resend_gate::ResendGate;
use crate::service::{Service, ServiceError};

/// How often pending instances are looked at.
pub const TICK: Duration = Duration::from_millis(100);

/// Most cluster frames applied in one store transaction (a burst of reports).
pub const MAX_FRAMES_PER_BATCH: usize = 512;

/// Most log requests waiting for an answer at once (overflow: the request is refused, 502).
pub const MAX_LOG_REQUESTS: usize = 256;

/// What the controller knows of one node, from the scheduler's events and the node's STATS.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    /// The node.
    pub uuid: Uuid,
    /// `connected`, `disconnected` or `lost` (from the scheduler), refined by STATS to
    /// `READY`, `FULL`, `MAINTENANCE`.
    #[serde(serialize_with = "status_name")]
    #[schema(schema_with = drover_api::schema::node_status)]
    pub status: NodeStatus,
    /// Latest STATS figures (its `instances` left out: see `instances`), if any arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
    /// What the node is, from its last READY, FULL or MAINTENANCE report that the scheduler
    /// passed on (labels, features, architecture, NUMA node, CPU model …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<ssntp::payload::NodeReport>,
    /// How many instances the store believes run there.
    pub instances: usize,
    /// The instances the node itself says run there (`GET /v1/nodes?instances=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported_active: Option<Vec<Uuid>>,
    /// When it was last heard of, Unix ms.
    pub last_seen_unix_ms: u64,
    /// READY, but its load per CPU is above the scheduler's `--load-threshold`: it takes no
    /// new work until the load drops.
    pub load_blocked: bool,
}

fn status_name<S: serde::Serializer>(status: &NodeStatus, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(status.name())
}

/// Whether the scheduler link is up, and since when.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct LinkView {
    /// Connected right now.
    pub connected: bool,
    /// The scheduler's address.
    pub target: Option<String>,
    /// The scheduler's UUID (`status.scheduler.uuid`).
    pub uuid: Option<Uuid>,
    /// Why the last attempt or session failed.
    pub last_error: Option<String>,
}

type LogWaiter = (Uuid, oneshot::Sender<Result<LogData, String>>);

/// A node command sent for an API call: its name, the node, and where its refusal goes.
type NodeCommandWaiter = (String, Uuid, oneshot::Sender<ssntp::payload::CommandFailure>);

/// Most PLANs waiting for the scheduler's answer at once (more are refused: 503).
pub const MAX_PLAN_REQUESTS: usize = 64;

/// Most node commands waiting for a possible refusal at once (more are sent without waiting).
pub const MAX_NODE_COMMAND_WAITERS: usize = 256;

/// Most commands from API handlers waiting for the link task (overflow: the handler waits).
pub const MAX_LINK_COMMANDS: usize = 1024;

/// What an API handler asks the link task to send.
#[derive(Debug)]
pub enum LinkCommand {
    /// Commands the service decided (STOPs, DELETEs): sent in order; without a connection they
    /// are dropped, since what matters is in the store and goes again after the reconnect.
    Send(Vec<Message>),
    /// One command whose sender wants to know whether it went (a node action, a log request).
    SendNow {
        /// The command.
        message: Box<Message>,
        /// Whether it was handed to the connection, or why not.
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// The controller's shared state.
#[derive(Debug)]
pub struct Controller {
    service: Service,
    link: Option<ClientHandle>,
    nodes: Mutex<BTreeMap<Uuid, NodeView>>,
    link_view: Mutex<LinkView>,
    logs: Mutex<HashMap<u64, LogWaiter>>,
    /// PLANs an API call waits to hear the answer to, by request id.
    plans: Mutex<HashMap<u64, oneshot::Sender<ssntp::payload::PlanAnswer>>>,
    /// Node commands (EVACUATE, RESTORE, NODE_FORGET) whose refusal an API call waits for.
    node_commands: Mutex<Vec<NodeCommandWaiter>>,
    next_request: AtomicU64,
    revision: watch::Sender<u64>,
    wake: Notify,
    /// After a reconnect: the nodes to hear from before unanswered STARTs are sent again.
    resend_gate: Mutex<Option<ResendGate>>,
    resend_hold: Duration,
    /// When the last failure to reach the scheduler was logged.
    connect_failures: Mutex<ssntp::advice::FailureLog>,
    /// The scheduler's overcommit, from the cluster configuration of the last CONNECTED.
    overcommit: Mutex<drover_model::Overcommit>,
    /// When the service's slots estimate was last brought up to date, ms.
    slots_at_ms: Mutex<u64>,
    /// The scheduler's load threshold, from the same configuration.
    load_threshold: Mutex<Option<f64>>,
    /// STARTs sent since this process started.
    pub starts_sent: AtomicU64,
    /// API handlers' commands for the link task.
    to_link: mpsc::Sender<LinkCommand>,
    /// The other end, until [`run_link`] takes it.
    link_commands: Mutex<Option<mpsc::Receiver<LinkCommand>>>,
    /// Who this controller is as the elected leader (with an etcd store).
    leader: Mutex<Option<drover_etcd::election::LeaderInfo>>,
    /// Why writes are refused, while they are (etcd without quorum).
    read_only: Mutex<Option<String>>,
}

/// Unix time now, ms.
pub fn unix_ms() -> u64 {
    drover_model::unix_ms_now()
}

impl Controller {
    /// Shared state over `service`, talking to the scheduler through `link` (none in tests
    /// that exercise only the API). After a reconnect, unanswered STARTs wait up to
    /// `resend_hold` for the nodes known before to report.
    ///
    /// # Errors
    /// The store.
    pub fn new(service: Service, link: Option<ClientHandle>, resend_hold: Duration) -> Result<Arc<Self>, ServiceError> {
        let revision = service.store().revision()?;
        let (to_link, link_commands) = mpsc::channel(MAX_LINK_COMMANDS);
        Ok(Arc::new(Self {
            to_link,
            link_commands: Mutex::new(Some(link_commands)),
            service,
            link,
            nodes: Mutex::new(BTreeMap::new()),
            link_view: Mutex::new(LinkView::default()),
            logs: Mutex::new(HashMap::new()),
            plans: Mutex::new(HashMap::new()),
            node_commands: Mutex::new(Vec::new()),
            next_request: AtomicU64::new(1),
            revision: watch::channel(revision).0,
            wake: Notify::new(),
            resend_gate: Mutex::new(None),
            connect_failures: Mutex::new(ssntp::advice::FailureLog::default()),
            resend_hold,
            overcommit: Mutex::new(drover_model::Overcommit::default()),
            slots_at_ms: Mutex::new(0),
            load_threshold: Mutex::new(None),
            starts_sent: AtomicU64::new(0),
            leader: Mutex::new(None),
            read_only: Mutex::new(None),
        }))
    }

    /// From now on the API refuses writes, saying `why`.
    pub fn set_read_only(&self, why: String) {
        *self.read_only.lock().expect("read-only lock") = Some(why);
    }

    /// Why writes are refused, if they are.
    pub fn read_only(&self) -> Option<String> {
        self.read_only.lock().expect("read-only lock").clone()
    }

    /// Records that this controller leads as `info` (what `GET /v1/leader` answers).
    pub fn set_leader_info(&self, info: drover_etcd::election::LeaderInfo) {
        *self.leader.lock().expect("leader lock") = Some(info);
    }

    /// This controller as the elected leader, when it shares an etcd store.
    pub fn leader_info(&self) -> Option<drover_etcd::election::LeaderInfo> {
        self.leader.lock().expect("leader lock").clone()
    }

    /// The service.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The lifecycle's clock: Unix ms. Its values are persisted (a backoff's `not_before_ms`)
    /// and compared by the next process after a restart, so they must not count from this
    /// process's start.
    pub fn now_ms(&self) -> u64 {
        unix_ms()
    }

    /// Runs a store call on the blocking pool, then tells event watchers what changed.
    pub async fn blocking<T: Send + 'static>(self: &Arc<Self>, f: impl FnOnce(&Self) -> T + Send + 'static) -> T {
        let this = Arc::clone(self);
        let value = tokio::task::spawn_blocking(move || {
            let value = f(&this);
            this.publish_revision();
            value
        })
        .await
        .expect("store call panicked");
        value
    }

    fn publish_revision(&self) {
        if let Ok(revision) = self.service.store().revision() {
            self.revision.send_if_modified(|r| {
                let changed = *r != revision;
                *r = revision;
                changed
            });
        }
    }

    /// A receiver that sees every new revision (for long-polling events).
    pub fn watch_revision(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Asks the link loop to tick now (after a launch).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Hands commands the service decided to the link task (see [`LinkCommand::Send`]).
    pub async fn submit(&self, messages: Vec<Message>) {
        if self.link.is_none() || messages.is_empty() {
            return;
        }
        let _ = self.to_link.send(LinkCommand::Send(messages)).await;
    }

    /// Hands one command to the link task and waits until it went, or says why it cannot go.
    ///
    /// # Errors
    /// No scheduler connection.
    pub async fn send_now(&self, message: Message) -> Result<(), String> {
        if self.link.is_none() {
            return Err("no scheduler link".into());
        }
        let (done, went) = oneshot::channel();
        self.to_link
            .send(LinkCommand::SendNow { message: Box::new(message), done })
            .await
            .map_err(|_| "the controller is stopping")?;
        went.await.map_err(|_| "the controller is stopping")?
    }

    /// Sends a node command (EVACUATE, RESTORE, NODE_FORGET) and waits up to `wait` for the
    /// scheduler to refuse it (a backup controller's command, a node it does not know, a node
    /// that still reports): `Some` with the refusal, `None` when none came in time.
    ///
    /// # Errors
    /// No link, or the controller is stopping.
    pub async fn node_command(
        &self,
        message: Message,
        node: Uuid,
        wait: Duration,
    ) -> Result<Option<ssntp::payload::CommandFailure>, String> {
        let command = message.kind().to_string();
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = self.node_commands.lock().expect("node commands lock");
            waiters.retain(|(_, _, t)| !t.is_closed());
            if waiters.len() < MAX_NODE_COMMAND_WAITERS {
                waiters.push((command, node, tx));
            }
        }
        self.send_now(message).await?;
        Ok(tokio::time::timeout(wait, rx).await.ok().and_then(Result::ok))
    }

    fn answer_node_command(&self, message: &Message) {
        let Message::CommandFailure(f) = message else { return };
        let Some(node) = f.node_uuid else { return };
        let mut waiters = self.node_commands.lock().expect("node commands lock");
        if let Some(i) = waiters.iter().position(|(c, n, _)| *c == f.command && *n == node) {
            let (_, _, tx) = waiters.swap_remove(i);
            let _ = tx.send(f.clone());
        }
    }

    /// Sends commands on the link (the link task only). A command that cannot go is dropped:
    /// what matters is in the store and is sent again after the reconnect.
    async fn send_all(&self, messages: Vec<Message>) {
        let Some(link) = &self.link else { return };
        for message in messages {
            if let Err(e) = link.send(&message).await {
                tracing::debug!(error = %e, kind = %message.kind(), "not sent; the reconnect re-sends what matters");
            }
        }
    }

    /// Carries out an API handler's command (the link task only).
    async fn link_command(&self, command: LinkCommand) {
        match command {
            LinkCommand::Send(messages) => self.send_all(messages).await,
            LinkCommand::SendNow { message, done } => {
                let result = match &self.link {
                    None => Err("no scheduler link".to_owned()),
                    Some(link) => link.send(&message).await.map_err(|e| format!("scheduler unreachable: {e}")),
                };
                let _ = done.send(result);
            }
        }
    }

    /// How many more instances of each size class would fit now, over every ready node, from
    /// their latest reports, with `placed_mb` more given out already.
    pub fn slots_remaining(&self, placed_mb: u64) -> BTreeMap<String, u64> {
        slots_by_size(&self.nodes(), self.overcommit(), placed_mb)
    }

    /// The scheduler's overcommit (how far nodes may be promised beyond what they have).
    pub fn overcommit(&self) -> drover_model::Overcommit {
        *self.overcommit.lock().expect("overcommit lock")
    }

    /// The nodes as last reported.
    pub fn nodes(&self) -> Vec<NodeView> {
        let mut nodes: Vec<NodeView> = self.nodes.lock().expect("nodes lock").values().cloned().collect();
        let threshold = *self.load_threshold.lock().expect("threshold lock");
        for n in &mut nodes {
            n.instances = self.service.store().running_count(n.uuid);
            n.load_blocked = match (&n.stats, threshold) {
                (Some(s), Some(limit)) if n.status == NodeStatus::Ready && s.cpus_online > 0 => {
                    s.load / f64::from(s.cpus_online) > limit
                }
                _ => false,
            };
        }
        nodes
    }

    /// Every node, with the instances each says runs there.
    pub fn nodes_with_instances(&self) -> Vec<NodeView> {
        let mut nodes = self.nodes();
        for n in &mut nodes {
            n.reported_active = Some(self.service.reported_running(n.uuid));
        }
        nodes
    }

    /// The scheduler link's state.
    pub fn link_view(&self) -> LinkView {
        self.link_view.lock().expect("link lock").clone()
    }

    /// Fetches the tail of an instance's output from its node.
    ///
    /// # Errors
    /// Too many requests waiting, no link, the node's refusal, or no answer in `timeout`.
    pub async fn fetch_log(
        &self,
        instance: Uuid,
        node: Uuid,
        max_bytes: u32,
        timeout: Duration,
    ) -> Result<LogData, String> {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut logs = self.logs.lock().expect("logs lock");
            if logs.len() >= MAX_LOG_REQUESTS {
                return Err("too many log requests waiting; try again".into());
            }
            logs.insert(request_id, (instance, tx));
        }
        let fetch = LogFetch { instance_uuid: instance, workload_agent_uuid: node, max_bytes, request_id };
        let result = match self.send_now(Message::LogFetch(fetch)).await {
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err("the request was dropped".into()),
                Err(_) => Err(format!("node {} did not answer within {} s", node.short(), timeout.as_secs())),
            },
            Err(e) => Err(e),
        };
        self.logs.lock().expect("logs lock").remove(&request_id);
        result
    }

    /// Asks the scheduler where `count` instances like `start` would go now (PLAN), and waits
    /// up to `timeout` for its answer.
    ///
    /// # Errors
    /// Too many plans waiting, no link, or no answer in time.
    pub async fn plan(
        &self,
        start: ssntp::payload::Start,
        count: u32,
        timeout: Duration,
    ) -> Result<ssntp::payload::PlanAnswer, String> {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut plans = self.plans.lock().expect("plans lock");
            if plans.len() >= MAX_PLAN_REQUESTS {
                return Err("too many plans waiting for the scheduler; try again".into());
            }
            plans.insert(request_id, tx);
        }
        let result = match self.send_now(Message::Plan(ssntp::payload::Plan { request_id, start, count })).await {
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(_)) => Err("the request was dropped".into()),
                Err(_) => Err(format!("the scheduler did not answer within {} s", timeout.as_secs())),
            },
            Err(e) => Err(e),
        };
        self.plans.lock().expect("plans lock").remove(&request_id);
        result
    }

    fn answer_plan(&self, message: &Message) {
        if let Message::PlanAnswer(answer) = message {
            if let Some(tx) = self.plans.lock().expect("plans lock").remove(&answer.request_id) {
                let _ = tx.send(answer.clone());
            }
        }
    }

    fn answer_log(&self, message: &Message) {
        let mut logs = self.logs.lock().expect("logs lock");
        match message {
            Message::LogData(data) => {
                if let Some((_, tx)) = logs.remove(&data.request_id) {
                    let _ = tx.send(Ok(data.clone()));
                }
            }
            Message::CommandFailure(f) if f.command == "LOG_FETCH" => {
                let ids: Vec<u64> =
                    logs.iter().filter(|(_, (i, _))| Some(*i) == f.instance_uuid).map(|(id, _)| *id).collect();
                for id in ids {
                    if let Some((_, tx)) = logs.remove(&id) {
                        let _ = tx.send(Err(format!("{:?}: {}", f.reason, f.detail)));
                    }
                }
            }
            _ => {}
        }
    }

    /// Notes what a frame says about nodes and log requests, and logs events.
    fn observe(&self, origin: Uuid, message: &Message) {
        self.observe_node(origin, message);
        self.answer_log(message);
        self.answer_node_command(message);
        self.answer_plan(message);
        if !matches!(message, Message::Stats(_) | Message::LogData(_) | Message::PlanAnswer(_)) {
            tracing::info!("{}", crate::link::describe(origin, message));
        }
    }

    fn observe_node(&self, origin: Uuid, message: &Message) {
        if matches!(message, Message::Stats(_) | Message::InstanceNews(_)) {
            self.service.heard(origin);
        }
        if let Some(gate) = self.resend_gate.lock().expect("gate lock").as_mut() {
            match message {
                // A node has reported once its digest is in (what runs there, all of it).
                Message::Stats(s) if s.digest.is_some_and(|d| d.page + 1 >= d.pages) => gate.reported(origin),
                Message::NodeDisconnected(e) if e.node_type == ssntp::payload::NodeType::ComputeNode => {
                    gate.gone(e.node_uuid);
                }
                Message::NodeLost(e) => gate.gone(e.node_uuid),
                _ => {}
            }
        }
        let mut nodes = self.nodes.lock().expect("nodes lock");
        let mut touch = |uuid: Uuid, status: Option<NodeStatus>, stats: Option<&Stats>| {
            let view = nodes.entry(uuid).or_insert_with(|| NodeView {
                uuid,
                status: NodeStatus::Connected,
                stats: None,
                report: None,
                instances: 0,
                reported_active: None,
                last_seen_unix_ms: 0,
                load_blocked: false,
            });
            view.last_seen_unix_ms = unix_ms();
            if let Some(status) = status {
                view.status = status;
            }
            // A digest page carries the heartbeat's figures too, and comes first after a connect:
            // keep its figures (the host name from the first report on) without its instance list.
            if let Some(stats) = stats {
                view.stats = Some(stats.figures());
            }
        };
        match message {
            Message::NodeConnected(e) if e.node_type == ssntp::payload::NodeType::ComputeNode => {
                touch(e.node_uuid, Some(NodeStatus::Connected), None);
            }
            // NODE_DISCONNECTED names any peer, controllers too; only launchers are nodes.
            Message::NodeDisconnected(e) if e.node_type == ssntp::payload::NodeType::ComputeNode => {
                touch(e.node_uuid, Some(NodeStatus::Disconnected), None);
            }
            Message::NodeLost(e) => touch(e.node_uuid, Some(NodeStatus::Lost), None),
            Message::Ready(report) | Message::Full(Some(report)) | Message::Maintenance(Some(report)) => {
                touch(origin, None, None);
                if let Some(view) = nodes.get_mut(&origin) {
                    view.report = Some(report.clone());
                }
            }
            Message::Stats(s) => {
                let status = match s.status {
                    NodeState::Ready => NodeStatus::Ready,
                    NodeState::Full => NodeStatus::Full,
                    NodeState::Maintenance => NodeStatus::Maintenance,
                    NodeState::Offline => NodeStatus::Offline,
                    // A status this build does not know: up, but not known to take work.
                    NodeState::Unknown => NodeStatus::Connected,
                };
                touch(origin, Some(status), Some(s));
            }
            _ => {}
        }
    }
}

/// The scheduler loop (see the module text). Ends when the link's event stream ends.
pub async fn run_link(controller: Arc<Controller>, mut events: ClientEvents) {
    let Some(mut commands) = controller.link_commands.lock().expect("link commands lock").take() else {
        tracing::error!("the scheduler loop was started twice");
        return;
    };
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                // Frames that have already arrived are applied together: one transaction, one
                // fsync, for a burst of reports.
                let mut frames = Vec::new();
                let mut next = Some(event);
                while let Some(event) = next.take() {
                    match event {
                        ClientEvent::Message { frame, message } => {
                            controller.observe(frame.origin, &message);
                            if Service::reads_store(&message) {
                                frames.push((frame.origin, message));
                            }
                        }
                        other => {
                            apply_frames(&controller, std::mem::take(&mut frames)).await;
                            handle_event(&controller, other).await;
                        }
                    }
                    if frames.len() < MAX_FRAMES_PER_BATCH {
                        next = events.try_recv().ok();
                    }
                }
                apply_frames(&controller, frames).await;
            }
            Some(command) = commands.recv() => controller.link_command(command).await,
            _ = ticker.tick() => tick(&controller).await,
            () = controller.wake.notified() => tick(&controller).await,
        }
    }
}

/// The nodes a reconnect must hear from before unanswered STARTs go again: those the
/// controller last knew to be up, and those the store believes run its instances.
fn expected_nodes(controller: &Controller) -> Vec<Uuid> {
    let mut expected: Vec<Uuid> =
        controller.nodes.lock().expect("nodes lock").values().filter(|n| n.status.is_up()).map(|n| n.uuid).collect();
    expected.extend(controller.service.store().nodes_running());
    expected.sort();
    expected.dedup();
    expected
}

/// Re-sends the STARTs that got no answer once the gate set at the last reconnect opens.
async fn resend_if_settled(controller: &Arc<Controller>, now: u64) {
    let open = {
        let mut gate = controller.resend_gate.lock().expect("gate lock");
        match gate.as_ref() {
            Some(g) if g.is_open(now) => {
                let missing: Vec<String> = g.waiting_for().map(|n| n.short()).collect();
                if !missing.is_empty() {
                    tracing::warn!(?missing, "nodes did not report in time; re-sending unanswered STARTs anyway");
                }
                *gate = None;
                true
            }
            _ => false,
        }
    };
    if open {
        if let Err(e) = controller.blocking(move |c| c.service.reconnected(now)).await {
            tracing::error!(error = %e, "re-sending unanswered STARTs");
        }
    }
}

async fn tick(controller: &Arc<Controller>) {
    if !controller.link_view.lock().expect("link lock").connected {
        return;
    }
    let now = controller.now_ms();
    // What batch events say is left, as of the nodes' latest reports (at most a second old).
    let due = {
        let mut last = controller.slots_at_ms.lock().expect("slots lock");
        let due = now.saturating_sub(*last) >= 1000;
        if due {
            *last = now;
        }
        due
    };
    if due {
        controller.service.set_slots(slots_by_size(&controller.nodes(), controller.overcommit(), 0));
    }
    let digests = controller.service.digests_due(now);
    controller.send_all(digests).await;
    resend_if_settled(controller, now).await;
    match controller.blocking(move |c| c.service.tick(now)).await {
        Ok(starts) => {
            controller.starts_sent.fetch_add(starts.len() as u64, Ordering::Relaxed);
            controller.send_all(starts).await;
        }
        Err(e) => tracing::error!(error = %e, "tick failed"),
    }
}

async fn handle_event(controller: &Arc<Controller>, event: ClientEvent) {
    match event {
        ClientEvent::Connected { target, server_uuid, config, .. } => {
            tracing::info!(%target, scheduler = %server_uuid, "connected to the scheduler");
            controller.connect_failures.lock().expect("failures lock").connected();
            *controller.overcommit.lock().expect("overcommit lock") =
                drover_model::Overcommit { cpu: config.cpu_overcommit, mem: config.mem_overcommit };
            *controller.load_threshold.lock().expect("threshold lock") = config.load_threshold;
            let now = controller.now_ms();
            let expected = expected_nodes(controller);
            if !expected.is_empty() {
                tracing::info!(
                    nodes = expected.len(),
                    hold_s = controller.resend_hold.as_secs_f64(),
                    "waiting for the known nodes to report before re-sending unanswered STARTs"
                );
            }
            let hold_ms = u64::try_from(controller.resend_hold.as_millis()).unwrap_or(u64::MAX);
            *controller.resend_gate.lock().expect("gate lock") = Some(ResendGate::new(expected, now, hold_ms));
            *controller.link_view.lock().expect("link lock") =
                LinkView { connected: true, target: Some(target), uuid: Some(server_uuid), last_error: None };
            // What happened while the link was down is in the nodes' digests.
            controller.service.link_up();
            tick(controller).await;
        }
        ClientEvent::Disconnected { reason } => {
            tracing::warn!(%reason, "scheduler connection lost");
            // The next connection decides anew whom to wait for.
            *controller.resend_gate.lock().expect("gate lock") = None;
            let mut view = controller.link_view.lock().expect("link lock");
            view.connected = false;
            view.last_error = Some(reason);
        }
        ClientEvent::ConnectFailed { target, reason, permanent } => {
            ssntp::cli::log_connect_failure(
                &mut controller.connect_failures.lock().expect("failures lock"),
                &target,
                &reason,
                permanent,
            );
            controller.link_view.lock().expect("link lock").last_error = Some(format!("{target}: {reason}"));
        }
        ClientEvent::Message { frame, message } => {
            controller.observe(frame.origin, &message);
            if Service::reads_store(&message) {
                apply_frames(controller, vec![(frame.origin, message)]).await;
            }
        }
    }
}

async fn apply_frames(controller: &Arc<Controller>, frames: Vec<(Uuid, Message)>) {
    if frames.is_empty() {
        return;
    }
    let now = controller.now_ms();
    match controller.blocking(move |c| c.service.report_many(&frames, now)).await {
        Ok(commands) => controller.send_all(commands).await,
        Err(e) => tracing::error!(error = %e, "applying cluster reports"),
    }
}

/// How many more instances of each size class (sd-taskpacker's estimated slots) fit the ready
/// nodes, by the rule placement uses, from each one's last report (what it has given out is in
/// its real available memory), less `placed_mb` given out since (spread over the classes by
/// their size). An estimate: the scheduler's own charges are not known here.
pub fn slots_by_size(
    nodes: &[NodeView],
    overcommit: drover_model::Overcommit,
    placed_mb: u64,
) -> BTreeMap<String, u64> {
    use ssntp::payload::SizeClass;
    // Each with the node's anchor tax for a process instance (what batch work mostly is).
    let ready: Vec<(drover_model::Capacity, u64)> = nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Ready && !n.load_blocked)
        .filter_map(|n| n.stats.as_ref().map(|s| (s, n.report.as_ref().map_or(0, |r| r.anchor_tax("process")))))
        .map(|(s, tax_mb)| {
            let capacity = drover_model::Capacity {
                cpus_online: s.cpus_online,
                mem_total_mb: s.mem_total_mb,
                mem_available_mb: s.mem_available_mb,
            };
            (capacity, tax_mb)
        })
        .collect();
    SizeClass::ALL
        .into_iter()
        .map(|class| {
            let fit: u64 = ready
                .iter()
                .map(|(c, tax_mb)| {
                    let demand = drover_model::Demand { vcpus: 1, mem_mb: class.mem_mb() + tax_mb };
                    drover_model::slots(c, &drover_model::Usage::default(), &demand, overcommit)
                })
                .fold(0, u64::saturating_add);
            (class.name().to_owned(), fit.saturating_sub(placed_mb.div_ceil(class.mem_mb())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_slots_count_each_instance_with_the_nodes_anchor_tax() {
        let node = |tax_mb: u64| NodeView {
            uuid: Uuid::nil(),
            status: NodeStatus::Ready,
            stats: Some(testutil::ready_stats(Uuid::nil(), 64, 1024)),
            report: Some(ssntp::payload::NodeReport {
                anchor_tax_mb: [("process".to_owned(), tax_mb)].into(),
                ..Default::default()
            }),
            instances: 0,
            reported_active: None,
            last_seen_unix_ms: 0,
            load_blocked: false,
        };
        let oc = drover_model::Overcommit::default();
        assert_eq!(slots_by_size(&[node(0)], oc, 0)["tiny"], 32, "1024 MiB in 32 MiB slots");
        assert_eq!(slots_by_size(&[node(32)], oc, 0)["tiny"], 16, "each slot also holds its shim's 32 MiB");
        assert_eq!(slots_by_size(&[node(32)], oc, 0)["large"], 0);
    }
}
