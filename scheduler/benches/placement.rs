//! Placement cost.
//!
//! - `choose/<policy>/<nodes>/<case>`: the placement decision alone, over 1k, 10k and 100k
//!   nodes: `all_fit` (every node fits), `few_fit_memory` (1 % of nodes have room),
//!   `few_fit_label` (1 % carry the required label).
//! - `start_to_forward`: one START as the scheduler handles it: payload decode, placement,
//!   reservation, re-encoding of the forwarded START — then the matching INSTANCE_STOPPED so the
//!   cluster never fills (the figure is an upper bound for a START).
//!
//! Run: `cargo bench -p drover-scheduler --bench placement`

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use drover_model::NodeStatus;
use drover_scheduler::hub::nodes::{Need, Node, NodeTable, Placed};
use drover_scheduler::hub::{placement, Config, Hub, Input, Now, Policy};
use ssntp::payload::{Backend, InstanceEvent, Message, NodeReport, Requirements, Start};
use ssntp::{Role, Uuid};

fn uuid(i: u64) -> Uuid {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&i.to_be_bytes());
    b[0] = 0x42;
    Uuid::from_bytes(b)
}

#[derive(Clone, Copy)]
enum Case {
    AllFit,
    FewFitMemory,
    FewFitLabel,
}

fn table(n: u64, case: Case, cfg: &Config) -> NodeTable {
    let mut table = NodeTable::default();
    for i in 0..n {
        let id = uuid(i);
        let mut node = Node::new(id, i, 0);
        node.status = NodeStatus::Ready;
        let rare = i % 100 == 37;
        let mut labels = BTreeMap::new();
        if rare || !matches!(case, Case::FewFitLabel) {
            labels.insert("gpu".to_owned(), "yes".to_owned());
        }
        node.report = NodeReport {
            node_uuid: id,
            mem_total_mb: 65_536,
            mem_available_mb: 65_536,
            cpus_online: 32,
            hostname: format!("node-{i}"),
            features: vec!["process".into()],
            labels,
            ..Default::default()
        };
        if matches!(case, Case::FewFitMemory) && !rare {
            // Nearly full: 64 MiB left.
            node.instances.insert(
                uuid(1 << 40 | i),
                Placed {
                    vcpus: 1,
                    request_mb: 65_472,
                    charge_mb: 65_472,
                    tax_mb: 0,
                    cache_ways: 0,
                    disk_mb: 0,
                    workload: None,
                    confirmed: true,
                },
            );
        }
        table.insert(node, cfg);
    }
    table
}

fn choose(c: &mut Criterion) {
    let requirements = Requirements {
        vcpus: 1,
        mem_mb: 512,
        labels: BTreeMap::from([("gpu".to_owned(), "yes".to_owned())]),
        ..Default::default()
    };
    let need = Need { requirements: &requirements, backend: "process", vcpus: 1, charge_mb: 512, instance: None };
    let mut group = c.benchmark_group("choose");
    for policy in [Policy::Spread, Policy::Binpack, Policy::Firstfit] {
        let cfg = Config { policy, ..Config::default() };
        for n in [1_000u64, 10_000, 100_000] {
            for (name, case) in [
                ("all_fit", Case::AllFit),
                ("few_fit_memory", Case::FewFitMemory),
                ("few_fit_label", Case::FewFitLabel),
            ] {
                if policy == Policy::Firstfit && n == 100_000 {
                    continue; // linear by design; 10k shows its shape
                }
                let t = table(n, case, &cfg);
                group.bench_with_input(BenchmarkId::new(format!("{policy:?}/{name}"), n), &t, |b, t| {
                    b.iter(|| black_box(placement::choose(t, black_box(&need), &cfg, None, None)))
                });
            }
        }
    }
    group.finish();
}

fn start_to_forward(c: &mut Criterion) {
    let now = Now { mono_ms: 0, unix_ms: 0 };
    let mut hub = Hub::new(uuid(0), Config::default(), now);
    let ctl = uuid(1);
    hub.handle(now, Input::Connected { conn_id: 1, uuid: ctl, role: Role::CONTROLLER, term: None });
    for i in 0..1_000 {
        let id = uuid(100 + i);
        hub.handle(now, Input::Connected { conn_id: 100 + i, uuid: id, role: Role::AGENT, term: None });
        let report = NodeReport {
            node_uuid: id,
            mem_total_mb: 65_536,
            mem_available_mb: 65_536,
            cpus_online: 32,
            features: vec!["process".into()],
            ..Default::default()
        };
        hub.handle(now, Input::Message { from: id, role: Role::AGENT, frame: None, message: Message::Ready(report) });
    }
    let instance = uuid(7);
    let backend = Backend::Process { argv: vec!["/bin/sleep".into(), "60".into()], env: BTreeMap::new() };
    let requirements = Requirements { vcpus: 1, mem_mb: 512, ..Default::default() };
    let start = Message::Start(Start {
        tenant_uuid: Some(uuid(8)),
        workload_uuid: Some(uuid(9)),
        ..Start::new(instance, requirements, backend)
    });
    let frame = start.to_frame(ctl);
    c.bench_function("start_to_forward/1000_nodes", |b| {
        b.iter(|| {
            let message = Message::decode(black_box(&frame)).unwrap();
            let out = hub
                .handle(now, Input::Message { from: ctl, role: Role::CONTROLLER, frame: Some(frame.clone()), message });
            let node = match &out[0] {
                drover_scheduler::hub::Output::To { peer, .. } => *peer,
                other => panic!("not placed: {other:?}"),
            };
            black_box(out);
            let stopped = Message::InstanceStopped(InstanceEvent { instance_uuid: instance, node_uuid: Some(node) });
            black_box(hub.handle(now, Input::Message { from: node, role: Role::AGENT, frame: None, message: stopped }));
        })
    });
}

criterion_group!(benches, choose, start_to_forward);
criterion_main!(benches);
