//! The scheduler over real TLS on loopback, with a raw controller and raw launchers: placement,
//! forwarding, refusals, evacuation, queueing and node loss as a peer sees them.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

use clap::Parser as _;
use drover_scheduler::cli::Args;
use drover_scheduler::shell;
use ssntp::client::{ClientOptions, Connection};
use ssntp::payload::{
    Backend, Evacuate, FailureReason, InstanceEvent, Message, NodeReport, Requirements, Restore, Start, Stop,
};
use ssntp::{Role, Uuid};
use testutil::{Pki, PATIENCE};
use tokio::net::TcpListener;

struct Cluster {
    addr: String,
    pki: Pki,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Cluster {
    async fn start(extra: &[&str]) -> Self {
        let pki = Pki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let ca = pki.ca().display().to_string();
        let cert = pki.cert("scheduler").display().to_string();
        let key = pki.key("scheduler").display().to_string();
        let mut argv =
            vec!["drover-scheduler", "--cacert", &ca, "--cert", &cert, "--key", &key, "--failover-grace", "0s"];
        argv.extend_from_slice(extra);
        let prepared = shell::prepare(Args::try_parse_from(argv).unwrap()).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(shell::run_on(listener, prepared, async {
            let _ = stopped.await;
        }));
        Self { addr, pki, stop: Some(stop) }
    }

    async fn connect(&self, stem: &str, role: Role) -> Peer {
        let uuid = Uuid::new_v4();
        let opts = ClientOptions::new(vec![], self.pki.client_tls(stem), role, uuid);
        Peer { conn: Connection::connect(&opts, &self.addr).await.unwrap(), uuid }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct Peer {
    conn: Connection,
    uuid: Uuid,
}

impl Peer {
    async fn send(&mut self, m: Message) {
        self.conn.send(&m).await.unwrap();
    }

    /// The next message that `pick` accepts, skipping others (events of other peers).
    async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(&ssntp::Frame, Message) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let next = tokio::time::timeout_at(deadline, self.conn.recv()).await;
            match next {
                Ok(Ok(Some((frame, message)))) => {
                    if let Some(t) = pick(&frame, message) {
                        return t;
                    }
                }
                Ok(other) => panic!("{what}: connection ended: {other:?}"),
                Err(_) => panic!("{what}: nothing within {PATIENCE:?}"),
            }
        }
    }

    async fn ready(&mut self, mem: u64, load: f64) {
        let report = NodeReport {
            node_uuid: self.uuid,
            mem_total_mb: mem,
            mem_available_mb: mem,
            cpus_online: 2,
            hostname: format!("node-{}", self.uuid.short()),
            load,
            features: vec!["process".into()],
            ..Default::default()
        };
        self.send(Message::Ready(report)).await;
    }
}

fn start(instance: Uuid, mem_mb: u64) -> Message {
    Message::Start(Start::new(
        instance,
        Requirements { vcpus: 1, mem_mb, ..Default::default() },
        Backend::Process { argv: vec!["true".into()], env: Default::default() },
    ))
}

#[tokio::test]
async fn placement_forwarding_refusals_evacuation_and_node_loss() {
    testutil::init_tracing();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let cluster = Cluster::start(&["--node-ttl", "1s", "--node-grace", "1s", "--metrics", &metrics_addr]).await;
    let mut ctl = cluster.connect("controller", Role::CONTROLLER).await;
    let mut node = cluster.connect("agent", Role::AGENT).await;
    let node_id = node.uuid;
    ctl.expect("NODE_CONNECTED", |_, m| matches!(m, Message::NodeConnected(e) if e.node_uuid == node_id).then_some(()))
        .await;

    // Before READY the START waits, and the controller is told why.
    let first = Uuid::new_v4();
    ctl.send(start(first, 100)).await;
    let reason =
        ctl.expect("queued", |_, m| if let Message::InstanceQueued(q) = m { Some(q.reason) } else { None }).await;
    assert_eq!(reason, "0 of 1 nodes fit: 1 not ready");
    node.ready(1000, 0.0).await;
    let placed = node.expect("START", |_, m| if let Message::Start(s) = m { Some(s) } else { None }).await;
    assert_eq!((placed.instance_uuid, placed.workload_agent_uuid), (first, Some(node_id)));

    // Launcher events reach the controller with the launcher as origin.
    node.send(Message::InstanceStarted(InstanceEvent { instance_uuid: first, node_uuid: Some(node_id) })).await;
    let origin = ctl.expect("started", |f, m| matches!(m, Message::InstanceStarted(_)).then_some(f.origin)).await;
    assert_eq!(origin, node_id);

    // A command for a node that is not connected is answered, not dropped.
    let absent = Uuid::new_v4();
    ctl.send(Message::Stop(Stop { instance_uuid: first, workload_agent_uuid: absent, grace_ms: None })).await;
    let f = ctl.expect("stop failure", |_, m| if let Message::StopFailure(f) = m { Some(f) } else { None }).await;
    assert_eq!(f.reason, FailureReason::NoNode);

    // A backup controller may not command.
    let mut backup = cluster.connect("controller", Role::CONTROLLER).await;
    backup.send(start(Uuid::new_v4(), 10)).await;
    let f = backup.expect("not permitted", |_, m| if let Message::StartFailure(f) = m { Some(f) } else { None }).await;
    assert_eq!(f.reason, FailureReason::NotPermitted);

    // Evacuation: forwarded, node closed at once, queued work placed after RESTORE.
    ctl.send(Message::Evacuate(Evacuate { workload_agent_uuid: node_id, deadline_ms: None, drain_ms: None })).await;
    node.expect("EVACUATE", |_, m| matches!(m, Message::Evacuate(_)).then_some(())).await;
    let second = Uuid::new_v4();
    ctl.send(start(second, 100)).await;
    let reason =
        ctl.expect("queued", |_, m| if let Message::InstanceQueued(q) = m { Some(q.reason) } else { None }).await;
    assert_eq!(reason, "0 of 1 nodes fit: 1 maintenance");
    ctl.send(Message::Restore(Restore { workload_agent_uuid: node_id })).await;
    node.expect("RESTORE", |_, m| matches!(m, Message::Restore(_)).then_some(())).await;
    let placed = node.expect("queued START", |_, m| if let Message::Start(s) = m { Some(s) } else { None }).await;
    assert_eq!(placed.instance_uuid, second);

    // Metrics show the placements (refreshed every second).
    let scrape = || async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&metrics_addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    };
    testutil::assert_eventually!(|| async { scrape().await.contains("drover_scheduler_placements_total 2") });
    let text = scrape().await;
    assert!(text.starts_with("HTTP/1.1 200 OK"));
    testutil::metrics::assert_documented(&text, "drover_scheduler_");

    // Node loss: disconnected at once, lost with its instances after TTL + grace.
    node.conn.close().await.unwrap();
    ctl.expect("NODE_DISCONNECTED", |_, m| {
        matches!(m, Message::NodeDisconnected(e) if e.node_uuid == node_id).then_some(())
    })
    .await;
    let lost = ctl.expect("NODE_LOST", |_, m| if let Message::NodeLost(l) = m { Some(l) } else { None }).await;
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!((lost.node_uuid, lost.instances), (node_id, expected));
}

#[tokio::test]
async fn invalid_knobs_are_refused_before_binding() {
    let pki = Pki::new();
    let ca = pki.ca().display().to_string();
    let cert = pki.cert("scheduler").display().to_string();
    for (flag, value) in
        [("--cpu-overcommit", "0"), ("--mem-overcommit", "NaN"), ("--queue-max", "0"), ("--node-ttl", "0s")]
    {
        let args = Args::try_parse_from(["drover-scheduler", "--cacert", &ca, "--cert", &cert, flag, value]).unwrap();
        let err = shell::prepare(args).unwrap_err().to_string();
        assert!(err.contains(flag), "{flag}: {err}");
    }
    assert!(Args::try_parse_from(["drover-scheduler", "--cacert", &ca, "--cert", &cert, "--policy", "random"]).is_err());
    assert!(
        Args::try_parse_from(["drover-scheduler", "--cacert", &ca, "--cert", &cert, "--estimate", "maybe"]).is_err()
    );
}

#[tokio::test]
async fn refusals_over_tls_queue_full_timeout_duplicate_and_full_cn_retry() {
    let cluster = Cluster::start(&["--queue-max", "1", "--queue-timeout", "1s"]).await;
    let mut ctl = cluster.connect("controller", Role::CONTROLLER).await;
    let failure = |instance: Uuid| {
        move |_: &ssntp::Frame, m: Message| match m {
            Message::StartFailure(f) if f.instance_uuid == instance => Some(f),
            _ => None,
        }
    };

    // No launcher yet: the first START waits, the second finds the queue full, and the first
    // times out with the explanation.
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    ctl.send(start(a, 10)).await;
    ctl.send(start(b, 10)).await;
    let f = ctl.expect("queue_full", failure(b)).await;
    assert_eq!(f.reason, FailureReason::QueueFull);
    assert!(f.detail.contains("no launcher has connected"), "{}", f.detail);
    let f = ctl.expect("queue_timeout", failure(a)).await;
    assert_eq!(f.reason, FailureReason::QueueTimeout);

    // Two launchers; the first to be chosen refuses with full_cn and the START moves on.
    let mut n1 = cluster.connect("agent", Role::AGENT).await;
    let mut n2 = cluster.connect("agent", Role::AGENT).await;
    n1.ready(1000, 0.0).await;
    n2.ready(900, 0.0).await;
    // Wait until both are READY at the scheduler: a START placed on n1 proves n1 is.
    let c = Uuid::new_v4();
    ctl.send(start(c, 10)).await;
    let placed = n1
        .expect(
            "START on the node with most free memory",
            |_, m| if let Message::Start(s) = m { Some(s) } else { None },
        )
        .await;
    assert_eq!(placed.instance_uuid, c);
    let refusal = ssntp::payload::StartFailure {
        node_uuid: Some(n1.uuid),
        instance_uuid: c,
        reason: FailureReason::FullCn,
        restart: false,
        detail: "too many open files".into(),
    };
    n1.send(Message::StartFailure(refusal)).await;
    let retried =
        n2.expect("START retried elsewhere", |_, m| if let Message::Start(s) = m { Some(s) } else { None }).await;
    assert_eq!((retried.instance_uuid, retried.workload_agent_uuid), (c, Some(n2.uuid)));

    // A START for an instance placed and unconfirmed goes to the same node again (the first
    // may have been lost), never to another.
    ctl.send(start(c, 10)).await;
    let again = n2.expect("the START again", |_, m| if let Message::Start(s) = m { Some(s) } else { None }).await;
    assert_eq!((again.instance_uuid, again.workload_agent_uuid), (c, Some(n2.uuid)));
    // Once the node confirms it, a START is refused with the node named, not placed twice.
    n2.send(Message::InstanceStarted(ssntp::payload::InstanceEvent { instance_uuid: c, node_uuid: Some(n2.uuid) }))
        .await;
    ctl.send(start(c, 10)).await;
    let f = ctl.expect("instance_exists", failure(c)).await;
    assert_eq!((f.reason, f.node_uuid), (FailureReason::InstanceExists, Some(n2.uuid)));
    assert!(!f.reason.is_fatal());
}

#[tokio::test]
async fn a_launcher_that_reads_slowly_gets_a_burst_of_commands_in_order_and_stays_connected() {
    const COUNT: u128 = 50_000;
    let cluster = Cluster::start(&[]).await;
    let mut ctl = cluster.connect("controller", Role::CONTROLLER).await;
    let mut node = cluster.connect("agent", Role::AGENT).await;
    let node_id = node.uuid;
    ctl.expect("NODE_CONNECTED", |_, m| matches!(m, Message::NodeConnected(e) if e.node_uuid == node_id).then_some(()))
        .await;
    // 50,000 STOPs (about 5 MB) for a launcher that reads nothing meanwhile: far more than its
    // outbound queue (1,024 frames) and the sockets' buffers hold.
    let instance = |i: u128| Uuid::from_bytes(i.to_be_bytes());
    let stops: Vec<ssntp::Frame> = (0..COUNT)
        .map(|i| {
            let stop = Stop { instance_uuid: instance(i), workload_agent_uuid: node_id, grace_ms: None };
            Message::Stop(stop).to_frame(ctl.uuid)
        })
        .collect();
    for chunk in stops.chunks(1000) {
        ctl.conn.send_batch(chunk).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    // Every one arrives, in order: the launcher was not cut off, nothing was dropped.
    for i in 0..COUNT {
        let got = node.expect("STOP", |_, m| if let Message::Stop(s) = m { Some(s.instance_uuid) } else { None }).await;
        assert_eq!(got, instance(i), "STOP {i} out of order");
    }
}
