//! The load: fake launchers ("agents", many to this process, each with its own mutual-TLS
//! connection and reconnecting client) and a controller that submits STARTs.
//!
//! Instance UUIDs carry their sequence number in their last eight bytes, so submit and receipt
//! times live in flat arrays instead of maps, and a lost or duplicated START is a count.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ssntp::client::{Client, ClientEvent, ClientHandle, ClientOptions};
use ssntp::payload::{
    Backend, DigestPage, InstanceEvent, InstanceStat, InstanceState, Message, NodeReport, NodeState, Requirements,
    Start, Stats,
};
use ssntp::{Role, Uuid};
use tokio::sync::{mpsc, Semaphore};

/// Resources each benchmark instance asks for.
pub const INSTANCE_VCPUS: u32 = 1;
/// Memory each benchmark instance asks for, MiB.
pub const INSTANCE_MEM_MB: u64 = 128;

/// Times and counts per instance, shared by the generator and every agent.
#[derive(Debug)]
pub struct Ledger {
    origin: Instant,
    prefix: [u8; 8],
    submitted_ns: Vec<AtomicU64>,
    received_ns: Vec<AtomicU64>,
    receipts: Vec<AtomicU32>,
    /// STARTs received by agents (duplicates included).
    pub received: AtomicU64,
    /// STARTs for instances this run never submitted.
    pub strangers: AtomicU64,
}

impl Ledger {
    /// A ledger for `instances` instances.
    pub fn new(instances: usize) -> Self {
        let prefix: [u8; 8] = rand::random();
        Self {
            origin: Instant::now(),
            prefix,
            submitted_ns: (0..instances).map(|_| AtomicU64::new(0)).collect(),
            received_ns: (0..instances).map(|_| AtomicU64::new(0)).collect(),
            receipts: (0..instances).map(|_| AtomicU32::new(0)).collect(),
            received: AtomicU64::new(0),
            strangers: AtomicU64::new(0),
        }
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.submitted_ns.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.submitted_ns.is_empty()
    }

    /// The UUID of instance `index`.
    pub fn uuid(&self, index: usize) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.prefix);
        bytes[8..].copy_from_slice(&(index as u64).to_be_bytes());
        Uuid::from_bytes(bytes)
    }

    fn index(&self, uuid: &Uuid) -> Option<usize> {
        let bytes = uuid.as_bytes();
        if bytes[..8] != self.prefix {
            return None;
        }
        let index = usize::try_from(u64::from_be_bytes(bytes[8..].try_into().ok()?)).ok()?;
        (index < self.len()).then_some(index)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    fn submitted(&self, index: usize) {
        self.submitted_ns[index].store(self.now_ns(), Ordering::Relaxed);
    }

    fn receive(&self, uuid: &Uuid) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let Some(index) = self.index(uuid) else {
            self.strangers.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.receipts[index].fetch_add(1, Ordering::Relaxed) == 0 {
            self.received_ns[index].store(self.now_ns(), Ordering::Relaxed);
        }
    }

    /// Submit→START latencies in µs of instances that arrived, sorted; and the span from the
    /// first submit to the last arrival.
    pub fn latencies(&self) -> (Vec<f64>, Duration) {
        let mut lat = Vec::with_capacity(self.len());
        let (mut first, mut last) = (u64::MAX, 0);
        for (s, r) in self.submitted_ns.iter().zip(&self.received_ns) {
            let (s, r) = (s.load(Ordering::Relaxed), r.load(Ordering::Relaxed));
            if s > 0 {
                first = first.min(s);
            }
            if s > 0 && r > 0 {
                last = last.max(r);
                #[allow(clippy::cast_precision_loss)]
                lat.push(r.saturating_sub(s) as f64 / 1000.0);
            }
        }
        lat.sort_by(f64::total_cmp);
        (lat, Duration::from_nanos(last.saturating_sub(first.min(last))))
    }

    /// Instances never received, and instances received more than once.
    pub fn lost_and_duplicated(&self) -> (u64, u64) {
        let mut lost = 0;
        let mut dup = 0;
        for r in &self.receipts {
            match r.load(Ordering::Relaxed) {
                0 => lost += 1,
                1 => {}
                _ => dup += 1,
            }
        }
        (lost, dup)
    }
}

/// What one agent saw.
#[derive(Debug, Default)]
pub struct AgentCounters {
    /// STARTs received.
    pub starts: AtomicU64,
    /// Other commands received (STOP, DELETE, EVACUATE …).
    pub other_commands: AtomicU64,
    /// Sessions established.
    pub connects: AtomicU64,
    /// When (ns since the ledger's origin) it last sent READY after connecting.
    pub ready_at_ns: AtomicU64,
}

/// How the fake launchers present themselves.
#[derive(Debug, Clone)]
pub struct AgentShape {
    /// CPUs online each reports.
    pub cpus: u32,
    /// Memory each reports, MiB.
    pub mem_mb: u64,
    /// Interval of READY + STATS reports, as a launcher's `--report-interval`; `None` reports
    /// only on connecting.
    pub report_interval: Option<Duration>,
    /// Instances each already runs (reported in STATS; for `storm`).
    pub preexisting: usize,
}

/// A running fleet of agents.
#[derive(Debug)]
pub struct Fleet {
    /// Per-agent counters, in start order.
    pub counters: Vec<Arc<AgentCounters>>,
    handles: Vec<ClientHandle>,
    ledger: Arc<Ledger>,
}

impl Fleet {
    /// Starts `count` agents against `target`, at most `concurrent_handshakes` connecting at once
    /// (so that the ramp-up measures the scheduler, not a handshake storm the bench caused);
    /// returns once every agent has connected once. `progress` is called with the number
    /// connected.
    pub async fn start(
        count: usize,
        target: String,
        tls: Arc<rustls::ClientConfig>,
        shape: AgentShape,
        ledger: Arc<Ledger>,
        concurrent_handshakes: usize,
        progress: impl Fn(u64),
    ) -> Self {
        let gate = Arc::new(Semaphore::new(concurrent_handshakes));
        let (up_tx, mut up_rx) = mpsc::unbounded_channel::<()>();
        let mut counters = Vec::with_capacity(count);
        let mut handles = Vec::with_capacity(count);
        let mut up = 0u64;
        for i in 0..count {
            let permit = gate.clone().acquire_owned().await.expect("gate open");
            let mut opts = ClientOptions::new(vec![target.clone()], tls.clone(), Role::AGENT, Uuid::new_v4());
            opts.hostname = Some(format!("bench-{i}"));
            opts.handshake_timeout = Duration::from_secs(30);
            opts.outbound_queue = 4096;
            let (handle, events) = Client::spawn(opts);
            let c = Arc::new(AgentCounters::default());
            let agent = Agent {
                handle: handle.clone(),
                counters: c.clone(),
                ledger: ledger.clone(),
                shape: shape.clone(),
                instances: (0..shape.preexisting).map(|_| Uuid::new_v4()).collect(),
                hostname: format!("bench-{i}"),
            };
            tokio::spawn(agent.run(events, permit, up_tx.clone()));
            counters.push(c);
            handles.push(handle);
            while up_rx.try_recv().is_ok() {
                up += 1;
            }
            progress(up);
        }
        drop(up_tx);
        while up < count as u64 && up_rx.recv().await.is_some() {
            up += 1;
            progress(up);
        }
        Self { counters, handles, ledger }
    }

    /// The instant the agents' `ready_at_ns` count from.
    pub fn origin(&self) -> Instant {
        self.ledger.origin
    }

    /// Sum of a counter over all agents.
    pub fn total(&self, field: impl Fn(&AgentCounters) -> &AtomicU64) -> u64 {
        self.counters.iter().map(|c| field(c).load(Ordering::Relaxed)).sum()
    }

    /// STARTs received per agent.
    pub fn starts_per_agent(&self) -> Vec<u64> {
        self.counters.iter().map(|c| c.starts.load(Ordering::Relaxed)).collect()
    }

    /// Closes every connection.
    pub fn close(&self) {
        for h in &self.handles {
            h.close();
        }
    }
}

struct Agent {
    handle: ClientHandle,
    counters: Arc<AgentCounters>,
    ledger: Arc<Ledger>,
    shape: AgentShape,
    instances: Vec<Uuid>,
    hostname: String,
}

impl Agent {
    async fn run(
        mut self,
        mut events: ssntp::client::ClientEvents,
        permit: tokio::sync::OwnedSemaphorePermit,
        up: mpsc::UnboundedSender<()>,
    ) {
        // Held until the first session: the handshake gate, and the one "up" signal.
        let mut first_session = Some((permit, up));
        let period = self.shape.report_interval.unwrap_or(Duration::from_secs(3600));
        // Agents start their report clocks at random phases, as real launchers do.
        let phase = period.mul_f64(rand::random::<f64>());
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { return };
                    match event {
                        ClientEvent::Connected { .. } => {
                            self.report(true).await;
                            self.counters.ready_at_ns.store(self.ledger.now_ns(), Ordering::Relaxed);
                            self.counters.connects.fetch_add(1, Ordering::Relaxed);
                            if let Some((_permit, up)) = first_session.take() {
                                let _ = up.send(());
                            }
                        }
                        ClientEvent::Message { message: Message::Start(start), .. } => {
                            self.ledger.receive(&start.instance_uuid);
                            self.counters.starts.fetch_add(1, Ordering::Relaxed);
                            self.instances.push(start.instance_uuid);
                            let started = InstanceEvent { instance_uuid: start.instance_uuid, node_uuid: Some(self.handle.uuid()) };
                            let _ = self.handle.send(&Message::InstanceStarted(started)).await;
                        }
                        ClientEvent::Message {
                            message:
                                Message::Stop(_)
                                | Message::Delete(_)
                                | Message::Restart(_)
                                | Message::Evacuate(_)
                                | Message::Restore(_),
                            ..
                        } => {
                            self.counters.other_commands.fetch_add(1, Ordering::Relaxed);
                        }
                        ClientEvent::Message { .. } => {}
                        ClientEvent::Disconnected { .. } | ClientEvent::ConnectFailed { .. } => {}
                    }
                }
                _ = ticker.tick(), if self.shape.report_interval.is_some() => {
                    if self.handle.is_connected() {
                        self.report(false).await;
                    }
                }
            }
        }
    }

    /// READY and a heartbeat STATS, or with `digest` a one-page digest listing every instance
    /// (as a launcher does on connecting).
    async fn report(&self, digest: bool) {
        let used = self.instances.len() as u64 * INSTANCE_MEM_MB;
        let report = NodeReport {
            node_uuid: self.handle.uuid(),
            mem_total_mb: self.shape.mem_mb,
            mem_available_mb: self.shape.mem_mb.saturating_sub(used),
            disk_total_mb: 100_000,
            disk_available_mb: 100_000,
            cpus_online: self.shape.cpus,
            hostname: self.hostname.clone(),
            load: 0.0,
            features: vec!["sim".into()],
            instance_count: u32::try_from(self.instances.len()).unwrap_or(u32::MAX),
            ..NodeReport::default()
        };
        let stats = Stats {
            node_uuid: self.handle.uuid(),
            status: NodeState::Ready,
            mem_total_mb: report.mem_total_mb,
            mem_available_mb: report.mem_available_mb,
            disk_total_mb: report.disk_total_mb,
            disk_available_mb: report.disk_available_mb,
            load: 0.0,
            cpus_online: report.cpus_online,
            hostname: report.hostname.clone(),
            networks: Vec::new(),
            instances: if digest {
                self.instances
                    .iter()
                    .map(|id| InstanceStat {
                        instance_uuid: *id,
                        state: InstanceState::Active,
                        memory_usage_mb: 64,
                        disk_usage_mb: 0,
                        cpu_usage: 1,
                        exit_code: None,
                        workload_uuid: None,
                        reason: None,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            digest: digest.then_some(DigestPage { seq: 0, page: 0, pages: 1 }),
        };
        let _ = self.handle.send(&Message::Ready(report)).await;
        let _ = self.handle.send(&Message::Stats(stats)).await;
    }
}

/// What the controller heard back.
#[derive(Debug, Default)]
pub struct ControllerCounters {
    /// INSTANCE_STARTED forwarded by the scheduler.
    pub started: AtomicU64,
    /// INSTANCE_QUEUED.
    pub queued: AtomicU64,
    /// START_FAILURE.
    pub refused: AtomicU64,
    /// NODE_LOST.
    pub nodes_lost: AtomicU64,
    /// Sessions established.
    pub connects: AtomicU64,
}

/// The load generator: a controller-role client.
#[derive(Debug)]
pub struct Generator {
    handle: ClientHandle,
    /// What it heard.
    pub counters: Arc<ControllerCounters>,
}

impl Generator {
    /// Connects as a controller and starts reading what the scheduler forwards.
    pub async fn connect(target: String, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Self> {
        let mut opts = ClientOptions::new(vec![target], tls, Role::CONTROLLER, Uuid::new_v4());
        opts.outbound_queue = 65_536;
        opts.inbound_bytes = 256 << 20;
        let (handle, mut events) = Client::spawn(opts);
        let counters = Arc::new(ControllerCounters::default());
        let (up_tx, up_rx) = tokio::sync::oneshot::channel();
        let c = counters.clone();
        tokio::spawn(async move {
            let mut up_tx = Some(up_tx);
            while let Some(event) = events.recv().await {
                let ClientEvent::Message { message, .. } = event else {
                    if matches!(event, ClientEvent::Connected { .. }) {
                        c.connects.fetch_add(1, Ordering::Relaxed);
                        if let Some(tx) = up_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    continue;
                };
                let counter = match message {
                    Message::InstanceStarted(_) => &c.started,
                    Message::InstanceQueued(_) => &c.queued,
                    Message::StartFailure(_) => &c.refused,
                    Message::NodeLost(_) => &c.nodes_lost,
                    _ => continue,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        tokio::time::timeout(Duration::from_secs(30), up_rx)
            .await
            .map_err(|_| anyhow::anyhow!("the controller did not connect within 30 s"))??;
        Ok(Self { handle, counters })
    }

    /// Submits every instance of the ledger at `rate` STARTs/s (0: as fast as the connection
    /// takes them), in bursts every millisecond. `progress` gets the number submitted.
    pub async fn submit(&self, ledger: &Ledger, rate: u64, progress: impl Fn(u64)) -> anyhow::Result<()> {
        let begin = Instant::now();
        let mut next_progress = 0;
        for i in 0..ledger.len() {
            if rate > 0 {
                #[allow(clippy::cast_precision_loss)]
                let due = Duration::from_secs_f64(i as f64 / rate as f64);
                let now = begin.elapsed();
                if due > now + Duration::from_millis(1) {
                    tokio::time::sleep(due - now).await;
                }
            }
            let requirements =
                Requirements { vcpus: INSTANCE_VCPUS, mem_mb: INSTANCE_MEM_MB, ..Requirements::default() };
            let backend = Backend::Sim { duration_ms: 3_600_000, mem_usage_mb: 64, exit_code: 0 };
            let start = Start::new(ledger.uuid(i), requirements, backend);
            ledger.submitted(i);
            self.handle.send(&Message::Start(start)).await.map_err(|e| anyhow::anyhow!("submitting: {e}"))?;
            if i >= next_progress {
                progress(i as u64);
                next_progress = i + 1000;
            }
        }
        progress(ledger.len() as u64);
        Ok(())
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.handle.close();
    }
}
