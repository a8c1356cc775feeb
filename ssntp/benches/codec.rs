//! Encode/decode cost of READY and of STATS with 100 instances: frame plus CBOR payload, the
//! work a server does per received frame before the application sees it.
//!
//! Run: `cargo bench -p ssntp --bench codec`

use std::collections::BTreeMap;
use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ssntp::frame::{self, DEFAULT_MAX_PAYLOAD};
use ssntp::payload::{InstanceStat, InstanceState, Message, Network, NodeReport, NodeState, Stats};
use ssntp::Uuid;

fn ready() -> Message {
    Message::Ready(NodeReport {
        node_uuid: Uuid::new_v4(),
        mem_total_mb: 24_000,
        mem_available_mb: 20_000,
        disk_total_mb: 250_000,
        disk_available_mb: 53_000,
        cpus_online: 2,
        hostname: "node-0001.cluster.example".into(),
        load: 0.42,
        networks: vec![Network { ip: "10.0.0.17".into(), mac: "02:00:15:03:6f:49".into() }],
        arch: "x86_64".into(),
        cpu_model: "AMD EPYC".into(),
        cpu_mhz: Some(2445),
        features: vec!["process".into(), "oci".into(), "kvm".into()],
        labels: BTreeMap::from([("rack".into(), "r12".into())]),
        numa_node: None,
        vcpus_allocated: 6,
        mem_allocated_mb: Some(3_000),
        instance_count: 5,
        away_grace_ms: None,
        cpu_score: Some(1100),
        ..NodeReport::default()
    })
}

fn stats(instances: usize) -> Message {
    Message::Stats(Stats {
        node_uuid: Uuid::new_v4(),
        status: NodeState::Ready,
        mem_total_mb: 24_000,
        mem_available_mb: 20_000,
        disk_total_mb: 250_000,
        disk_available_mb: 53_000,
        load: 0.42,
        cpus_online: 2,
        hostname: "node-0001.cluster.example".into(),
        networks: vec![],
        instances: (0..instances)
            .map(|i| InstanceStat {
                instance_uuid: Uuid::new_v4(),
                state: InstanceState::Active,
                memory_usage_mb: 100 + i as i64,
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
    let origin = Uuid::new_v4();
    for (name, message) in [("ready", ready()), ("stats_100", stats(100))] {
        let frame = message.to_frame(origin);
        let bytes = frame.to_bytes();
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        group.bench_function("encode", |b| {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            b.iter(|| {
                buf.clear();
                black_box(&message).to_frame(origin).encode(&mut buf);
                black_box(buf.len())
            })
        });
        group.bench_function("decode", |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(black_box(&bytes[..]));
                let frame = frame::decode(&mut buf, DEFAULT_MAX_PAYLOAD).unwrap().unwrap();
                black_box(Message::decode(&frame).unwrap())
            })
        });
        group.bench_function("decode_payload_only", |b| {
            b.iter(|| black_box(Message::decode_payload(frame.kind, black_box(&frame.payload)).unwrap()))
        });
        group.finish();
        eprintln!("{name}: {} bytes on the wire", bytes.len());
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
