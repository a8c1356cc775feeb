//! Codec properties: every frame kind and payload survives encode → decode; arbitrary bytes
//! never panic the decoders; golden bytes pin the wire format of CONNECT and READY (the same
//! bytes are printed in docs/ssntp.md).

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use ssntp::frame::{self, Frame, Kind, DEFAULT_MAX_PAYLOAD};
use ssntp::payload::*;
use ssntp::{Command, ErrorCode, Event, Message, Role, Status, Uuid};

/// Random building blocks from which a payload of any kind is assembled.
#[derive(Debug, Clone)]
struct Prims {
    uuids: [Uuid; 3],
    text: String,
    words: Vec<String>,
    n: u64,
    small: u32,
    int: i32,
    load: f64,
    flag: bool,
    labels: BTreeMap<String, String>,
    reason: FailureReason,
}

fn reasons() -> impl Strategy<Value = FailureReason> {
    use FailureReason::*;
    prop::sample::select(vec![
        FullCloud,
        FullCn,
        NoCn,
        NodeMaintenance,
        InvalidPayload,
        InvalidData,
        AlreadyRunning,
        InstanceExists,
        ImageFailure,
        LaunchFailure,
        NoInstance,
        QueueTimeout,
        QueueFull,
        NoNode,
        NotPermitted,
        UnknownBackend,
        NoLimits,
        StopFailed,
    ])
}

fn prims() -> impl Strategy<Value = Prims> {
    (
        any::<[[u8; 16]; 3]>(),
        ".{0,40}",
        prop::collection::vec("[a-z0-9=/_-]{0,12}", 0..5),
        any::<u64>(),
        any::<u32>(),
        any::<i32>(),
        -1.0e6f64..1.0e6,
        any::<bool>(),
        prop::collection::btree_map("[a-z]{1,8}", "[a-z0-9]{0,8}", 0..3),
        reasons(),
    )
        .prop_map(|(u, text, words, n, small, int, load, flag, labels, reason)| Prims {
            uuids: u.map(Uuid::from_bytes),
            text,
            words,
            n,
            small,
            int,
            load,
            flag,
            labels,
            reason,
        })
}

fn report(p: &Prims) -> NodeReport {
    NodeReport {
        node_uuid: p.uuids[0],
        mem_total_mb: p.n,
        mem_available_mb: p.n / 2,
        disk_total_mb: p.n / 3,
        disk_available_mb: u64::from(p.small),
        cpus_online: p.small,
        hostname: p.text.clone(),
        load: p.load,
        networks: p.words.iter().map(|w| Network { ip: w.clone(), mac: p.text.clone() }).collect(),
        arch: p.words.first().cloned().unwrap_or_default(),
        cpu_model: p.text.clone(),
        cpu_mhz: p.flag.then_some(p.small),
        features: p.words.clone(),
        labels: p.labels.clone(),
        numa_node: p.flag.then_some(p.small % 8),
        vcpus_allocated: p.small / 2,
        mem_allocated_mb: p.flag.then_some(p.n / 5),
        instance_count: p.small % 1000,
        away_grace_ms: p.flag.then_some(p.n),
        foreign_arches: p.words.clone(),
        cpu_score: p.flag.then_some(p.small),
        pci: p.words.iter().map(|w| ssntp::payload::PciDevice { id: w.clone(), class: p.text.clone() }).collect(),
        images: p.words.clone(),
        draining_until_unix_ms: p.flag.then_some(p.n),
        anchor_tax_mb: p.words.iter().map(|w| (w.clone(), p.n)).collect(),
        cache_ways: p.small % 32,
    }
}

fn backend(p: &Prims) -> Backend {
    match p.small % 6 {
        0 => Backend::Process { argv: p.words.clone(), env: p.labels.clone() },
        1 => Backend::Oci {
            rootfs: p.text.clone(),
            args: p.words.clone(),
            env: p.labels.clone(),
            writable_root: p.flag,
            volumes: p
                .words
                .iter()
                .map(|w| ssntp::payload::Volume { source: w.clone(), destination: p.text.clone(), read_only: p.flag })
                .collect(),
            network: if p.flag {
                ssntp::payload::OciNetwork::Namespace(p.text.clone())
            } else {
                ssntp::payload::OciNetwork::None
            },
        },
        2 => Backend::Systemd { argv: p.words.clone(), env: p.labels.clone() },
        3 => Backend::Vm {
            kernel: p.text.clone(),
            initrd: p.flag.then(|| p.text.clone()),
            append: p.words.first().cloned(),
            disks: p.words.clone(),
            arch: (!p.flag).then(|| p.text.clone()),
            accel: [ssntp::payload::VmAccel::Auto, ssntp::payload::VmAccel::Kvm, ssntp::payload::VmAccel::Tcg]
                [usize::try_from(p.n % 3).unwrap()],
        },
        4 => Backend::Artifact { path: p.text.clone(), args: p.words.clone(), env: p.labels.clone() },
        _ => Backend::Sim { duration_ms: p.n, mem_usage_mb: u64::from(p.small), exit_code: p.int },
    }
}

/// One message of `kind` built from `p`. The match is exhaustive over kinds, so a new operand
/// cannot be added without a generator.
fn build(kind: Kind, p: &Prims) -> Message {
    let [a, b, c] = p.uuids;
    let report_text = || ErrorReport { reason: p.text.clone() };
    let instance_failure = || InstanceFailure {
        node_uuid: p.flag.then_some(b),
        instance_uuid: a,
        reason: p.reason,
        detail: p.text.clone(),
    };
    let instance_event = || InstanceEvent { instance_uuid: a, node_uuid: p.flag.then_some(b) };
    let node_event =
        || NodeEvent { node_uuid: a, node_type: if p.flag { NodeType::ComputeNode } else { NodeType::NetworkNode } };
    #[allow(clippy::cast_precision_loss)] // any finite value round-trips
    let config = ClusterConfig {
        report_interval_ms: p.n,
        node_ttl_ms: p.n / 7,
        max_payload: p.small,
        labels: p.labels.clone(),
        cpu_overcommit: f64::from(p.small) / 8.0,
        mem_overcommit: (p.n % 1000) as f64 / 100.0,
        load_threshold: p.flag.then(|| f64::from(p.small) / 4.0),
    };
    match kind {
        Kind::Command(cmd) => match cmd {
            Command::Connect => Message::Connect(Connect {
                role: Role::from_bits(p.small),
                uuid: a,
                hostname: p.flag.then(|| p.text.clone()),
                version: (!p.flag).then(|| p.text.clone()),
                term: p.flag.then_some(p.n),
            }),
            Command::Start => Message::Start(Start {
                instance_uuid: a,
                tenant_uuid: p.flag.then_some(b),
                tenant: p.flag.then(|| p.text.clone()),
                run_as_root: !p.flag,
                workload_uuid: Some(c),
                class: if p.flag { WorkClass::Batch } else { WorkClass::Workorder },
                priority: p.small,
                deadline_unix_ms: p.flag.then_some(p.n),
                requirements: Requirements {
                    vcpus: p.small % 64,
                    mem_mb: p.n,
                    disk_mb: p.n / 3,
                    node_id: p.flag.then_some(c),
                    hostname: (!p.flag).then(|| p.text.clone()),
                    labels: p.labels.clone(),
                    arch: p.words.first().cloned(),
                    features: p.words.clone(),
                    numa_local: p.flag,
                    pci: p.words.clone(),
                    min_cpu_score: p.flag.then_some(p.small),
                    cache_ways: p.small % 20,
                    preferences: ssntp::payload::Preferences {
                        labels: p.labels.clone(),
                        image: p.flag.then(|| p.text.clone()),
                    },
                },
                backend: backend(p),
                restart: p.flag,
                max_run_time_s: p.flag.then_some(p.n),
                name: p.flag.then(|| p.text.clone()),
                version: p.words.last().cloned(),
                root_task: p.flag,
                migrate_from: p.flag.then_some(b),
                parameters: p
                    .labels
                    .iter()
                    .map(|(k, v)| {
                        (k.clone(), if p.flag { ParamValue::Text(v.clone()) } else { ParamValue::Int(p.int.into()) })
                    })
                    .collect(),
                workload_agent_uuid: (!p.flag).then_some(b),
                charge_mb: (!p.flag).then_some(p.n / 2),
                arch_setups: p
                    .words
                    .iter()
                    .map(|w| ssntp::payload::ArchSetup {
                        host: w.clone(),
                        target: p.flag.then(|| p.text.clone()),
                        packages: p.words.clone(),
                        skip: p.words.clone(),
                        env: p.labels.clone(),
                    })
                    .collect(),
                checks: p.words.clone(),
            }),
            Command::Stop => {
                Message::Stop(Stop { instance_uuid: a, workload_agent_uuid: b, grace_ms: p.flag.then_some(p.n) })
            }
            Command::Stats => Message::Stats(Stats {
                node_uuid: a,
                status: NodeState::Full,
                mem_total_mb: p.n,
                mem_available_mb: p.n / 2,
                disk_total_mb: p.n / 3,
                disk_available_mb: p.n / 4,
                load: p.load,
                cpus_online: p.small,
                hostname: p.text.clone(),
                networks: vec![],
                instances: (0..p.small % 4)
                    .map(|i| InstanceStat {
                        instance_uuid: b,
                        state: InstanceState::Active,
                        memory_usage_mb: i64::from(i) - 1,
                        disk_usage_mb: i64::from(p.int),
                        cpu_usage: p.int,
                        exit_code: p.flag.then_some(p.int),
                        workload_uuid: Some(c),
                        reason: p.flag.then_some(ExitReason::Killed),
                    })
                    .collect(),
                digest: p.flag.then_some(DigestPage { seq: p.n, page: p.small / 2, pages: p.small }),
            }),
            Command::Evacuate => Message::Evacuate(Evacuate {
                workload_agent_uuid: a,
                deadline_ms: p.flag.then_some(p.n),
                drain_ms: None,
            }),
            Command::Delete => Message::Delete(Delete { instance_uuid: a, workload_agent_uuid: b, stop: p.flag }),
            Command::Restart => Message::Restart(Restart { instance_uuid: a, workload_agent_uuid: b }),
            Command::Configure => Message::Configure(Configure { config }),
            Command::Restore => Message::Restore(Restore { workload_agent_uuid: a }),
            Command::LogFetch => Message::LogFetch(LogFetch {
                instance_uuid: a,
                workload_agent_uuid: b,
                max_bytes: p.small,
                request_id: p.n,
            }),
            Command::ReportRequest => Message::ReportRequest(ReportRequest { node_uuid: p.flag.then_some(a) }),
            Command::NodeForget => Message::NodeForget(NodeForget { node_uuid: a }),
            Command::Plan => {
                let Message::Start(start) = build(Kind::Command(Command::Start), p) else { unreachable!() };
                Message::Plan(Plan { request_id: p.n, start, count: p.small })
            }
            Command::Migrate => {
                let Message::Start(start) = build(Kind::Command(Command::Start), p) else { unreachable!() };
                Message::Migrate(Migrate { start, from_node: b, to_node: p.flag.then_some(c) })
            }
            Command::MigrateOut => {
                Message::MigrateOut(MigrateOut { instance_uuid: a, to_node: b, address: p.text.clone() })
            }
            Command::MigrateEnd => Message::MigrateEnd(MigrateEnd { instance_uuid: a, committed: p.flag, to_node: b }),
        },
        Kind::Status(status) => match status {
            Status::Connected => Message::Connected(Connected { role: Role::SCHEDULER, uuid: a, config }),
            Status::Ready => Message::Ready(report(p)),
            Status::Full => Message::Full(p.flag.then(|| report(p))),
            Status::Offline => Message::Offline,
            Status::Maintenance => Message::Maintenance(p.flag.then(|| report(p))),
        },
        Kind::Error(code) => match code {
            ErrorCode::InvalidFrameType => Message::InvalidFrameType(report_text()),
            ErrorCode::StartFailure => Message::StartFailure(StartFailure {
                node_uuid: p.flag.then_some(b),
                instance_uuid: a,
                reason: p.reason,
                restart: p.flag,
                detail: p.text.clone(),
            }),
            ErrorCode::StopFailure => Message::StopFailure(instance_failure()),
            ErrorCode::ConnectionFailure => Message::ConnectionFailure(report_text()),
            ErrorCode::RestartFailure => Message::RestartFailure(instance_failure()),
            ErrorCode::DeleteFailure => Message::DeleteFailure(instance_failure()),
            ErrorCode::ConnectionAborted => Message::ConnectionAborted(report_text()),
            ErrorCode::InvalidConfiguration => Message::InvalidConfiguration(report_text()),
            ErrorCode::InvalidPayload => Message::InvalidPayload(report_text()),
            ErrorCode::CommandFailure => Message::CommandFailure(CommandFailure {
                command: p.text.clone(),
                node_uuid: Some(b),
                instance_uuid: p.flag.then_some(a),
                reason: p.reason,
                detail: p.text.clone(),
            }),
        },
        Kind::Event(event) => match event {
            Event::InstanceDeleted => Message::InstanceDeleted(instance_event()),
            Event::TraceReport => Message::TraceReport(TraceReport {
                frames: vec![TraceFrame {
                    label: p.text.clone(),
                    frame_type: 0,
                    operand: 1,
                    start_timestamp: p.n,
                    end_timestamp: p.n / 2,
                    nodes: vec![TraceNode {
                        ssntp_node_uuid: a,
                        ssntp_role: Role::AGENT,
                        tx_timestamp: p.n,
                        rx_timestamp: 1,
                    }],
                }],
            }),
            Event::NodeConnected => Message::NodeConnected(node_event()),
            Event::NodeDisconnected => Message::NodeDisconnected(node_event()),
            Event::InstanceStopped => Message::InstanceStopped(instance_event()),
            Event::InstanceStarted => Message::InstanceStarted(instance_event()),
            Event::InstanceExited => Message::InstanceExited(InstanceExited {
                instance_uuid: a,
                node_uuid: b,
                exit_code: p.flag.then_some(p.int),
                reason: ExitReason::Oom,
            }),
            Event::InstanceQueued => {
                Message::InstanceQueued(InstanceQueued { instance_uuid: a, reason: p.text.clone(), position: p.small })
            }
            Event::NodeLost => Message::NodeLost(NodeLost { node_uuid: a, instances: vec![b, c] }),
            Event::LogData => {
                Message::LogData(LogData { instance_uuid: a, request_id: p.n, data: p.text.clone(), truncated: p.flag })
            }
            Event::InstanceNews => Message::InstanceNews(InstanceNews {
                node_uuid: a,
                seq: p.n,
                instances: (0..p.small % 3)
                    .map(|i| InstanceStat {
                        instance_uuid: if i == 0 { b } else { c },
                        state: if p.flag { InstanceState::Exited } else { InstanceState::Active },
                        memory_usage_mb: i64::from(p.int),
                        disk_usage_mb: -1,
                        cpu_usage: -1,
                        exit_code: p.flag.then_some(p.int),
                        workload_uuid: None,
                        reason: p.flag.then_some(ExitReason::Failed),
                    })
                    .collect(),
            }),
            Event::PlanAnswer => Message::PlanAnswer(PlanAnswer {
                request_id: p.n,
                nodes: p.small,
                fit_now: p.small / 2,
                placed: (0..p.small % 3)
                    .map(|i| PlanPlacement {
                        node_uuid: if i == 0 { b } else { c },
                        hostname: p.text.clone(),
                        count: i + 1,
                    })
                    .collect(),
                unplaced: p.small / 3,
                explanation: p.text.clone(),
                never: p.flag.then(|| p.text.clone()),
                advice: p.words.clone(),
            }),
            Event::MigrationReady => {
                Message::MigrationReady(MigrationReady { instance_uuid: a, address: p.text.clone() })
            }
            Event::MigrationDone => {
                Message::MigrationDone(MigrationDone { instance_uuid: a, ok: p.flag, detail: p.text.clone() })
            }
            Event::InstanceMigrated => Message::InstanceMigrated(InstanceMigrated {
                instance_uuid: a,
                from_node: b,
                to_node: p.flag.then_some(c),
                ok: !p.flag,
                detail: p.text.clone(),
            }),
        },
    }
}

fn kinds() -> Vec<Kind> {
    Kind::all().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_message_round_trips(kind in prop::sample::select(kinds()), p in prims(), origin in any::<[u8; 16]>()) {
        let message = build(kind, &p);
        prop_assert_eq!(message.kind(), kind);
        let frame = message.to_frame(Uuid::from_bytes(origin));
        let bytes = frame.to_bytes();
        let decoded = frame::decode_one(&bytes, DEFAULT_MAX_PAYLOAD).unwrap();
        prop_assert_eq!(&decoded, &frame);
        prop_assert_eq!(Message::decode(&decoded).unwrap(), message);
    }

    #[test]
    fn frames_split_anywhere_decode_the_same(kind in prop::sample::select(kinds()), p in prims(), cut in 0usize..4096) {
        let frames: Vec<Frame> = (0..3).map(|i| build(kind, &p).to_frame(Uuid::from_bytes([i; 16]))).collect();
        let mut all = BytesMut::new();
        for f in &frames { f.encode(&mut all); }
        let cut = cut % (all.len() + 1);
        let mut buf = BytesMut::from(&all[..cut]);
        let mut out = Vec::new();
        while let Some(f) = frame::decode(&mut buf, DEFAULT_MAX_PAYLOAD).unwrap() { out.push(f); }
        buf.extend_from_slice(&all[cut..]);
        while let Some(f) = frame::decode(&mut buf, DEFAULT_MAX_PAYLOAD).unwrap() { out.push(f); }
        prop_assert_eq!(out, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_frame_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512), max in 0usize..1024) {
        let mut buf = BytesMut::from(&bytes[..]);
        // Decode until the input is used up or an error: must terminate without panicking,
        // and never hand out a payload above the maximum.
        while let Ok(Some(f)) = frame::decode(&mut buf, max) {
            prop_assert!(f.payload.len() <= max);
        }
    }

    #[test]
    fn arbitrary_payloads_never_panic_any_payload_decoder(kind in prop::sample::select(kinds()), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Message::decode_payload(kind, &bytes);
    }

    #[test]
    fn mutated_payloads_never_panic(kind in prop::sample::select(kinds()), p in prims(), pos in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = build(kind, &p).encode_payload().to_vec();
        if !bytes.is_empty() {
            let i = pos % bytes.len();
            bytes[i] = byte;
        }
        let _ = Message::decode_payload(kind, &bytes);
    }
}

#[test]
fn unknown_keys_are_ignored_and_missing_required_keys_are_refused() {
    // READY with an extra key a newer launcher might send.
    let mut map = vec![
        ("node_uuid", ciborium::Value::Text("4cb19522-1e18-439a-883a-f9b2a3a95f5e".into())),
        ("mem_total_mb", 1.into()),
        ("mem_available_mb", 1.into()),
        ("disk_total_mb", 1.into()),
        ("disk_available_mb", 1.into()),
        ("cpus_online", 1.into()),
        ("hostname", "h".into()),
        ("load", ciborium::Value::Float(0.5)),
        ("gpu_count", 4.into()),
    ];
    let encode = |m: &Vec<(&str, ciborium::Value)>| {
        let value =
            ciborium::Value::Map(m.iter().map(|(k, v)| (ciborium::Value::Text((*k).into()), v.clone())).collect());
        let mut out = Vec::new();
        ciborium::into_writer(&value, &mut out).unwrap();
        out
    };
    let kind = Kind::Status(Status::Ready);
    let Message::Ready(r) = Message::decode_payload(kind, &encode(&map)).unwrap() else { panic!("not READY") };
    assert_eq!(r.load, 0.5);
    map.retain(|(k, _)| *k != "hostname");
    let err = Message::decode_payload(kind, &encode(&map)).unwrap_err();
    assert!(err.reason.contains("hostname"), "{err}");
    // Trailing bytes after the CBOR value are refused.
    let mut bytes = encode(&vec![("reason", "x".into())]);
    bytes.push(0);
    assert!(Message::decode_payload(Kind::Error(ErrorCode::InvalidFrameType), &bytes).is_err());
    // OFFLINE carries nothing.
    assert!(Message::decode_payload(Kind::Status(Status::Offline), b"\xa0").is_err());
    // An unknown failure reason from a newer peer is kept as Unknown, not refused.
    let bytes = encode(&vec![
        ("instance_uuid", ciborium::Value::Text("4cb19522-1e18-439a-883a-f9b2a3a95f5e".into())),
        ("reason", "gpu_on_fire".into()),
    ]);
    let Message::StartFailure(f) = Message::decode_payload(Kind::Error(ErrorCode::StartFailure), &bytes).unwrap()
    else {
        panic!()
    };
    assert_eq!(f.reason, FailureReason::Unknown);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const AGENT: &str = "4cb19522-1e18-439a-883a-f9b2a3a95f5e";

/// Golden CONNECT: an agent (role 4) with ciao's test AgentUUID. Printed in docs/ssntp.md.
pub const GOLDEN_CONNECT: &str = concat!(
    "01000000",
    "00000032",                         // 1.0 COMMAND CONNECT, 50 payload bytes
    "4cb195221e18439a883af9b2a3a95f5e", // origin
    "a2",                               // map(2)
    "64726f6c65",
    "04", // "role": 4
    "6475756964",
    "7824", // "uuid": text(36)
    "34636231393532322d316531382d343339612d383833612d663962326133613935663565",
);

/// Golden READY: 3896 MiB of 3896, 500000/256000 MiB disk, 4 CPUs, host1, load 0.0.
pub const GOLDEN_READY: &str = concat!(
    "01000101",
    "000000a3",                         // 1.0 STATUS READY, 163 payload bytes
    "4cb195221e18439a883af9b2a3a95f5e", // origin
    "a8",                               // map(8)
    "696e6f64655f75756964",
    "7824", // "node_uuid": text(36)
    "34636231393532322d316531382d343339612d383833612d663962326133613935663565",
    "6c6d656d5f746f74616c5f6d62",
    "190f38", // "mem_total_mb": 3896
    "706d656d5f617661696c61626c655f6d62",
    "190f38", // "mem_available_mb": 3896
    "6d6469736b5f746f74616c5f6d62",
    "1a0007a120", // "disk_total_mb": 500000
    "716469736b5f617661696c61626c655f6d62",
    "1a0003e800", // "disk_available_mb": 256000
    "6b637075735f6f6e6c696e65",
    "04", // "cpus_online": 4
    "68686f73746e616d65",
    "65686f737431", // "hostname": "host1"
    "646c6f6164",
    "f90000", // "load": 0.0 (half float)
);

#[test]
fn golden_connect() {
    let uuid: Uuid = AGENT.parse().unwrap();
    let frame =
        Message::Connect(Connect { role: Role::AGENT, uuid, hostname: None, version: None, term: None }).to_frame(uuid);
    assert_eq!(hex(&frame.to_bytes()), GOLDEN_CONNECT);
}

#[test]
fn golden_ready() {
    let uuid: Uuid = AGENT.parse().unwrap();
    let ready = NodeReport {
        node_uuid: uuid,
        mem_total_mb: 3896,
        mem_available_mb: 3896,
        disk_total_mb: 500_000,
        disk_available_mb: 256_000,
        cpus_online: 4,
        hostname: "host1".into(),
        ..Default::default()
    };
    let frame = Message::Ready(ready.clone()).to_frame(uuid);
    assert_eq!(hex(&frame.to_bytes()), GOLDEN_READY);
    let back = frame::decode_one(&frame.to_bytes(), DEFAULT_MAX_PAYLOAD).unwrap();
    assert_eq!(Message::decode(&back).unwrap(), Message::Ready(ready));
}

const INSTANCE: &str = "00000000-0000-4000-8000-000000000001";

/// Golden INSTANCE_NEWS: news number 7 from the same node; one instance exited with code 3.
pub const GOLDEN_INSTANCE_NEWS: &str = concat!(
    "01000315",
    "000000c7",                         // 1.0 EVENT INSTANCE_NEWS, 199 payload bytes
    "4cb195221e18439a883af9b2a3a95f5e", // origin
    "a3",                               // map(3)
    "696e6f64655f75756964",
    "7824", // "node_uuid": text(36)
    "34636231393532322d316531382d343339612d383833612d663962326133613935663565",
    "63736571",
    "07", // "seq": 7
    "69696e7374616e636573",
    "81", // "instances": array(1)
    "a7", // map(7)
    "6d696e7374616e63655f75756964",
    "7824", // "instance_uuid": text(36)
    "30303030303030302d303030302d343030302d383030302d303030303030303030303031",
    "657374617465",
    "66657869746564", // "state": "exited"
    "6f6d656d6f72795f75736167655f6d62",
    "20", // "memory_usage_mb": -1
    "6d6469736b5f75736167655f6d62",
    "20", // "disk_usage_mb": -1
    "696370755f7573616765",
    "20", // "cpu_usage": -1
    "69657869745f636f6465",
    "03", // "exit_code": 3
    "66726561736f6e",
    "666661696c6564", // "reason": "failed"
);

#[test]
fn golden_instance_news() {
    let uuid: Uuid = AGENT.parse().unwrap();
    let news = InstanceNews {
        node_uuid: uuid,
        seq: 7,
        instances: vec![InstanceStat {
            instance_uuid: INSTANCE.parse().unwrap(),
            state: InstanceState::Exited,
            memory_usage_mb: -1,
            disk_usage_mb: -1,
            cpu_usage: -1,
            exit_code: Some(3),
            workload_uuid: None,
            reason: Some(ExitReason::Failed),
        }],
    };
    let frame = Message::InstanceNews(news.clone()).to_frame(uuid);
    assert_eq!(hex(&frame.to_bytes()), GOLDEN_INSTANCE_NEWS);
    let back = frame::decode_one(&frame.to_bytes(), DEFAULT_MAX_PAYLOAD).unwrap();
    assert_eq!(Message::decode(&back).unwrap(), Message::InstanceNews(news));
}

/// Golden REPORT_REQUEST for every node: an empty map.
pub const GOLDEN_REPORT_REQUEST: &str = concat!(
    "01000011",
    "00000001",                         // 1.0 COMMAND REPORT_REQUEST, 1 payload byte
    "4cb195221e18439a883af9b2a3a95f5e", // origin
    "a0",                               // map(0)
);

#[test]
fn golden_report_request() {
    let uuid: Uuid = AGENT.parse().unwrap();
    let frame = Message::ReportRequest(ReportRequest::default()).to_frame(uuid);
    assert_eq!(hex(&frame.to_bytes()), GOLDEN_REPORT_REQUEST);
}

#[test]
fn payload_over_the_limit_is_refused_before_buffering() {
    let frame = Frame { kind: Kind::Event(Event::LogData), origin: Uuid::nil(), payload: Bytes::from(vec![0u8; 2048]) };
    let bytes = frame.to_bytes();
    let mut buf = BytesMut::from(&bytes[..frame::HEADER_LEN]);
    assert!(matches!(frame::decode(&mut buf, 1024), Err(ssntp::FrameError::TooLarge { len: 2048, max: 1024 })));
}
