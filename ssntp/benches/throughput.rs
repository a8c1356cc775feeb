//! Small frames per second into one server over loopback TLS, with 1 and with 100 clients.
//! Each frame is received, decoded, role-checked and handed to the application (a counter),
//! exactly as the scheduler would receive it. Clients run in the same process on the same two
//! cores, so the figure includes their TLS encryption cost.
//!
//! Run: `cargo bench -p ssntp --bench throughput`

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ssntp::client::{ClientOptions, Connection};
use ssntp::payload::{InstanceEvent, InstanceStat, InstanceState, Message, NodeReport, NodeState, Stats};
use ssntp::server::ServerEvent;
use ssntp::{Frame, Role, Uuid};
use testutil::{Pki, TestServer};

/// Frames each measured iteration pushes through the server, over all clients.
const FRAMES_PER_ITER: usize = 200_000;
/// Frames a client writes per TLS write.
const BATCH: usize = 256;

struct Rig {
    rt: tokio::runtime::Runtime,
    received: Arc<AtomicU64>,
    senders: Vec<tokio::sync::mpsc::Sender<usize>>,
    done: tokio::sync::mpsc::Receiver<()>,
    _pki: Pki,
}

/// Builds the message a client sends, from the client's UUID.
type MakeFrame = fn(Uuid) -> Message;

fn rig(clients: usize, make: MakeFrame) -> Rig {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let pki = Pki::new();
    let received = Arc::new(AtomicU64::new(0));
    let (done_tx, done) = tokio::sync::mpsc::channel(clients);
    let senders = rt.block_on(async {
        let mut server = TestServer::start(&pki).await;
        let addr = server.addr.to_string();
        let count = received.clone();
        tokio::spawn(async move {
            while let Some(event) = server.events.recv().await {
                if let ServerEvent::Message { .. } = event {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(server);
        });
        let mut senders = Vec::new();
        for _ in 0..clients {
            let opts = ClientOptions::new(vec![], pki.client_tls("agent"), Role::AGENT, Uuid::new_v4());
            let mut conn = Connection::connect(&opts, &addr).await.unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<usize>(1);
            let done = done_tx.clone();
            let frame = make(opts.uuid).to_frame(opts.uuid);
            let batch: Vec<Frame> = vec![frame; BATCH];
            tokio::spawn(async move {
                while let Some(mut n) = rx.recv().await {
                    while n > 0 {
                        let k = n.min(BATCH);
                        conn.send_batch(&batch[..k]).await.unwrap();
                        n -= k;
                    }
                    let _ = done.send(()).await;
                }
            });
            senders.push(tx);
        }
        senders
    });
    Rig { rt, received, senders, done, _pki: pki }
}

impl Rig {
    /// Sends `total` frames spread over the clients; returns the time until all were received.
    fn push(&mut self, total: usize) -> Duration {
        let per = total / self.senders.len();
        let target = self.received.load(Ordering::Relaxed) + (per * self.senders.len()) as u64;
        let start = Instant::now();
        self.rt.block_on(async {
            for tx in &self.senders {
                tx.send(per).await.unwrap();
            }
            for _ in &self.senders {
                self.done.recv().await.unwrap();
            }
            while self.received.load(Ordering::Relaxed) < target {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        });
        start.elapsed()
    }
}

/// A small event: two UUIDs.
fn event(node: Uuid) -> Message {
    Message::InstanceStopped(InstanceEvent { instance_uuid: Uuid::new_v4(), node_uuid: Some(node) })
}

/// A launcher's READY as the launcher sends it.
fn ready(node: Uuid) -> Message {
    Message::Ready(NodeReport {
        node_uuid: node,
        mem_total_mb: 24_000,
        mem_available_mb: 20_000,
        disk_total_mb: 250_000,
        disk_available_mb: 53_000,
        cpus_online: 2,
        hostname: "node-0001.cluster.example".into(),
        load: 0.42,
        arch: "x86_64".into(),
        features: vec!["process".into(), "sim".into()],
        ..Default::default()
    })
}

/// STATS with 12 instances: about 2 KiB, the frame size of ciao's published figure.
fn stats_2k(node: Uuid) -> Message {
    Message::Stats(Stats {
        node_uuid: node,
        status: NodeState::Ready,
        mem_total_mb: 24_000,
        mem_available_mb: 20_000,
        disk_total_mb: 250_000,
        disk_available_mb: 53_000,
        load: 0.42,
        cpus_online: 2,
        hostname: "node-0001.cluster.example".into(),
        networks: vec![],
        instances: (0..12)
            .map(|_| InstanceStat {
                instance_uuid: Uuid::new_v4(),
                state: InstanceState::Active,
                memory_usage_mb: 100,
                disk_usage_mb: 12,
                cpu_usage: 37,
                exit_code: None,
                workload_uuid: Some(Uuid::new_v4()),
                reason: None,
            })
            .collect(),
        digest: Some(ssntp::payload::DigestPage { seq: 0, page: 0, pages: 1 }),
    })
}

fn bench(c: &mut Criterion) {
    let kinds: [(&str, MakeFrame); 3] = [("event", event), ("ready", ready), ("stats_2k", stats_2k)];
    for (name, make) in kinds {
        let frame_len = make(Uuid::nil()).to_frame(Uuid::nil()).wire_len();
        eprintln!("{name}: {frame_len} bytes per frame");
        let mut group = c.benchmark_group(format!("server_throughput_{name}"));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(10));
        group.throughput(Throughput::Elements(FRAMES_PER_ITER as u64));
        for clients in [1usize, 100] {
            let mut rig = rig(clients, make);
            rig.push(FRAMES_PER_ITER / 4); // warm up connections and buffers
            group.bench_function(format!("{clients}_clients"), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| rig.push(FRAMES_PER_ITER)).sum())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
