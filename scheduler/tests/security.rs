//! The security suite against a live `drover-scheduler` process: for a bounded time, offenders
//! present every kind of bad certificate and send every kind of bad input, over and over, while
//! an honest controller keeps placing work on an honest launcher. Each offender must get an
//! error (a TLS refusal, or an ERROR frame) and a close; the honest pair must notice nothing;
//! the scheduler's memory must stay bounded.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ssntp::client::{Client, ClientEvent, ClientOptions};
use ssntp::frame::{Frame, MAJOR, MINOR};
use ssntp::payload::{Backend, Message, NodeLost, NodeReport, Requirements, Start};
use ssntp::{Kind, Role, Status, Uuid};
use testutil::{Pki, RawPeer, PATIENCE};

/// How long the offenders keep at it.
const HOSTILE_FOR: Duration = Duration::from_secs(8);

struct Scheduler {
    child: std::process::Child,
    addr: String,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What an offender presents: a certificate, the role it claims, and the UUID (a new one when
/// `None`); each must be refused.
type Offence = (&'static str, Arc<rustls::ClientConfig>, Role, Option<Uuid>);

/// The honest peers' identities, which offenders try to take.
struct Victims {
    launcher: Uuid,
    controller: Uuid,
}

/// The certificates offenders present; each must be refused.
fn bad_certificates(pki: &Pki, other: &Pki, victims: &Victims) -> Vec<Offence> {
    let mut expired = Pki::spec(&[Role::AGENT]);
    expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(3);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    pki.issue(&expired, "expired");
    let mut any_eku = Pki::spec(&[Role::AGENT]);
    any_eku.client_auth = false;
    any_eku.any_eku = true;
    pki.issue(&any_eku, "anyeku");
    pki.issue(&Pki::spec(&[Role::AGENT]), "revoked");
    pki.revoke("revoked");
    pki.issue(&Pki::spec(&[]), "norole");

    let mut foreign = pki.identity("agent");
    let theirs = other.identity("agent");
    foreign.chain = theirs.chain;
    foreign.key = theirs.key;
    // Another node's certificate, a user's, and a tenant's certificate minted the old way
    // (controller role, O=acme), as the trust issue reproduced them.
    let node2 = pki.issue_named(Role::AGENT, "node2", &[], &[]);
    let user = pki.issue_named(Role::USER, "alice", &[], &["acme"]);
    let mut tenant = Pki::spec(&[Role::CONTROLLER]);
    tenant.orgs = vec!["acme".into()];
    pki.issue(&tenant, "tenant-as-controller");
    vec![
        ("wrong CA", ssntp::tls::client_config(&foreign).unwrap(), Role::AGENT, None),
        ("expired", pki.client_tls("expired"), Role::AGENT, None),
        ("revoked", pki.client_tls("revoked"), Role::AGENT, None),
        ("anyExtendedKeyUsage", pki.client_tls("anyeku"), Role::AGENT, None),
        ("no role", pki.client_tls_unchecked("norole"), Role::AGENT, None),
        ("claimed role not in the certificate", pki.client_tls("agent"), Role::CONTROLLER, None),
        (
            "another node's certificate claiming the launcher's UUID",
            pki.client_tls(&node2),
            Role::AGENT,
            Some(victims.launcher),
        ),
        (
            "a certificate without identity claiming the launcher's UUID",
            pki.client_tls("agent"),
            Role::AGENT,
            Some(victims.launcher),
        ),
        (
            "a certificate without identity claiming the controller's UUID",
            pki.client_tls("controller"),
            Role::CONTROLLER,
            Some(victims.controller),
        ),
        ("a user's certificate as a controller", pki.client_tls(&user), Role::CONTROLLER, None),
        ("a user's certificate as a user", pki.client_tls(&user), Role::USER, None),
        ("a tenant's controller-role certificate", pki.client_tls("tenant-as-controller"), Role::CONTROLLER, None),
    ]
}

/// Bad input after a good handshake; each must be answered with an ERROR frame and a close.
fn bad_inputs(origin: Uuid) -> Vec<(&'static str, Vec<u8>)> {
    let mut random: Vec<u8> = (0..512).map(|_| rand::random::<u8>()).collect();
    random[0] = MAJOR.wrapping_add(1 + random[0] % 100); // never a valid version, so never a wait
    let garbage = Frame { kind: Kind::Status(Status::Ready), origin, payload: Bytes::from_static(b"\xff\x00\xde\xad") };
    let start = Message::Start(Start::new(
        Uuid::new_v4(),
        Requirements { vcpus: 1, mem_mb: 1, ..Requirements::default() },
        Backend::Sim { duration_ms: 1, mem_usage_mb: 0, exit_code: 0 },
    ));
    let lost = Message::NodeLost(NodeLost { node_uuid: origin, instances: vec![] });
    vec![
        ("random bytes", random),
        ("an oversized length", vec![MAJOR, MINOR, 1, 1, 0x7f, 0xff, 0xff, 0xff]),
        ("garbage CBOR under a valid header", garbage.to_bytes().to_vec()),
        ("START from a launcher", start.to_frame(origin).to_bytes().to_vec()),
        ("NODE_LOST from a launcher", lost.to_frame(origin).to_bytes().to_vec()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offenders_are_refused_and_closed_while_honest_peers_are_served_and_memory_stays_bounded() {
    let pki = Pki::new();
    let other = Pki::new();
    // The honest peers hold certificates issued to them, as `drover-cert issue` mints them.
    let honest_agent = pki.issue_named(Role::AGENT, "honest", &[], &[]);
    let honest_controller = pki.issue_named(Role::CONTROLLER, "ctl", &[], &[]);
    let victims = Victims {
        launcher: pki.certified_uuid(&honest_agent).unwrap(),
        controller: pki.certified_uuid(&honest_controller).unwrap(),
    };
    let certificates = bad_certificates(&pki, &other, &victims);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_drover-scheduler"))
        .args(["--listen", &addr, "--load-threshold", "1000", "--cpu-overcommit", "100"])
        .arg("--cacert")
        .arg(pki.ca())
        .arg("--cert")
        .arg(pki.cert("scheduler"))
        .arg("--key")
        .arg(pki.key("scheduler"))
        .arg("--crl")
        .arg(pki.crl())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let scheduler = Scheduler { child, addr };
    let pid = scheduler.child.id();

    // The honest launcher: READY on connect, INSTANCE_STARTED for every START.
    let launcher_uuid = victims.launcher;
    let opts =
        ClientOptions::new(vec![scheduler.addr.clone()], pki.client_tls(&honest_agent), Role::AGENT, launcher_uuid);
    let (launcher, mut launcher_events) = Client::spawn(opts);
    let (sessions, starts) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    {
        let (sessions, starts) = (sessions.clone(), starts.clone());
        tokio::spawn(async move {
            while let Some(event) = launcher_events.recv().await {
                match event {
                    ClientEvent::Connected { .. } => {
                        sessions.fetch_add(1, Ordering::SeqCst);
                        let report = NodeReport {
                            node_uuid: launcher_uuid,
                            mem_total_mb: 1 << 20,
                            mem_available_mb: 1 << 20,
                            cpus_online: 64,
                            hostname: "honest".into(),
                            features: vec!["sim".into()],
                            ..NodeReport::default()
                        };
                        launcher.send(&Message::Ready(report)).await.unwrap();
                    }
                    ClientEvent::Message { message: Message::Start(s), .. } => {
                        starts.fetch_add(1, Ordering::SeqCst);
                        let started = ssntp::payload::InstanceEvent {
                            instance_uuid: s.instance_uuid,
                            node_uuid: Some(launcher_uuid),
                        };
                        launcher.send(&Message::InstanceStarted(started)).await.unwrap();
                    }
                    _ => {}
                }
            }
        });
    }
    // The honest controller.
    let opts = ClientOptions::new(
        vec![scheduler.addr.clone()],
        pki.client_tls(&honest_controller),
        Role::CONTROLLER,
        victims.controller,
    );
    let (controller, mut controller_events) = Client::spawn(opts);
    let controller_sessions = Arc::new(AtomicU64::new(0));
    {
        let controller_sessions = controller_sessions.clone();
        tokio::spawn(async move {
            while let Some(event) = controller_events.recv().await {
                if matches!(event, ClientEvent::Connected { .. }) {
                    controller_sessions.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    let deadline = Instant::now() + PATIENCE;
    while sessions.load(Ordering::SeqCst) == 0 || controller_sessions.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the honest peers did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // the READY is in
    let rss_before = rss_kib(pid);

    // Offenders, in a loop, while the controller places one instance every 20 ms.
    let begin = Instant::now();
    let (mut sent, mut refused_certs, mut closed_inputs) = (0u64, 0u64, 0u64);
    while begin.elapsed() < HOSTILE_FOR {
        for (what, tls, role, claim) in &certificates {
            let addr = scheduler.addr.parse().unwrap();
            match RawPeer::connect_claiming(addr, tls.clone(), *role, *claim).await {
                Err(_) => {}
                Ok((_, frame, _)) => {
                    assert!(matches!(frame.kind, Kind::Error(_)), "{what}: got {} instead of a refusal", frame.kind);
                }
            }
            refused_certs += 1;
        }
        for (what, bytes) in bad_inputs(Uuid::new_v4()) {
            let addr = scheduler.addr.parse().unwrap();
            let (mut peer, frame, _) = RawPeer::connect_as(addr, pki.client_tls("agent"), Role::AGENT).await.unwrap();
            assert!(ssntp::client::is_connected_frame(&frame), "{what}: the handshake itself is fine");
            let _ = peer.send_bytes(&bytes).await;
            let frames = peer.until_closed(PATIENCE).await.unwrap_or_else(|e| panic!("{what}: not closed: {e}"));
            assert!(
                frames.first().is_some_and(|f| matches!(f.kind, Kind::Error(_))),
                "{what}: an ERROR frame before the close, got {:?}",
                frames.iter().map(|f| f.kind.to_string()).collect::<Vec<_>>()
            );
            closed_inputs += 1;
        }
        // A truncated header, then the offender hangs up: dropped without harm.
        let addr = scheduler.addr.parse().unwrap();
        let (mut peer, _, _) = RawPeer::connect_as(addr, pki.client_tls("agent"), Role::AGENT).await.unwrap();
        peer.send_bytes(&[MAJOR, MINOR, 1]).await.unwrap();
        drop(peer);

        let start = Start::new(
            Uuid::new_v4(),
            Requirements { vcpus: 1, mem_mb: 1, ..Requirements::default() },
            Backend::Sim { duration_ms: 60_000, mem_usage_mb: 0, exit_code: 0 },
        );
        controller.send(&Message::Start(start)).await.unwrap();
        sent += 1;
    }
    eprintln!(
        "{refused_certs} bad certificates refused, {closed_inputs} bad inputs closed, {sent} STARTs placed meanwhile"
    );

    let deadline = Instant::now() + PATIENCE;
    while starts.load(Ordering::SeqCst) < sent {
        assert!(
            Instant::now() < deadline,
            "honest work lost: {} of {sent} STARTs arrived",
            starts.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(starts.load(Ordering::SeqCst), sent, "no START duplicated");
    assert_eq!(sessions.load(Ordering::SeqCst), 1, "the honest launcher was never disconnected");
    assert_eq!(controller_sessions.load(Ordering::SeqCst), 1, "the honest controller was never disconnected");
    let rss_after = rss_kib(pid);
    eprintln!("scheduler RSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB under {refused_certs} + {closed_inputs} offenders"
    );
    assert!(refused_certs >= 12 && closed_inputs >= 5, "every offender kind ran at least once");
}

/// A scheduler process on a free port with `extra` flags (and the CRL), once it listens.
async fn listening_scheduler(pki: &Pki, extra: &[&str]) -> (Scheduler, std::net::SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_drover-scheduler"))
        .args(["--listen", &addr])
        .args(extra)
        .arg("--cacert")
        .arg(pki.ca())
        .arg("--cert")
        .arg(pki.cert("scheduler"))
        .arg("--key")
        .arg(pki.key("scheduler"))
        .arg("--crl")
        .arg(pki.crl())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    let scheduler = Scheduler { child, addr };
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(sock).await.is_err() {
        assert!(Instant::now() < deadline, "the scheduler did not listen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (scheduler, sock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_while_connected_is_closed_at_sighup_and_refused_after() {
    let pki = Pki::new();
    let (scheduler, sock) = listening_scheduler(&pki, &[]).await;
    let victim = pki.issue_named(Role::AGENT, "victim", &[], &[]);
    let bystander = pki.issue_named(Role::AGENT, "bystander", &[], &[]);
    let connect = |stem: String| {
        let (tls, uuid) = (pki.client_tls(&stem), pki.certified_uuid(&stem));
        async move { RawPeer::connect_claiming(sock, tls, Role::AGENT, uuid).await }
    };
    let (mut doomed, frame, _) = connect(victim.clone()).await.unwrap();
    assert!(ssntp::client::is_connected_frame(&frame));
    let (mut kept, frame, _) = connect(bystander).await.unwrap();
    assert!(ssntp::client::is_connected_frame(&frame));

    pki.revoke(&victim);
    let hup = std::process::Command::new("kill").args(["-HUP", &scheduler.child.id().to_string()]).status().unwrap();
    assert!(hup.success());
    doomed.until_closed(PATIENCE).await.expect("the revoked peer is closed at the reload");
    assert!(kept.until_closed(Duration::from_millis(500)).await.is_err(), "the others stay");
    match connect(victim).await {
        Ok((_, frame, message)) => panic!("a revoked certificate connected again: {} {message:?}", frame.kind),
        Err(e) => eprintln!("refused as revoked: {e}"),
    }
    let mut scheduler = scheduler;
    assert!(scheduler.child.try_wait().unwrap().is_none(), "SIGHUP reloads; it does not stop the scheduler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_cert_identity_refuses_certificates_minted_before_identities() {
    let pki = Pki::new();
    let (_scheduler, sock) = listening_scheduler(&pki, &["--require-cert-identity"]).await;
    let (_, frame, message) = RawPeer::connect_as(sock, pki.client_tls("agent"), Role::AGENT).await.unwrap();
    assert!(matches!(message, Message::ConnectionAborted(_)), "no identity: refused, got {}", frame.kind);
    assert!(ssntp::handshake::error_reason(&message).unwrap().contains("drover-cert issue"), "says what to do");
    let node = pki.issue_named(Role::AGENT, "n1", &[], &[]);
    let uuid = pki.certified_uuid(&node);
    let (_, frame, _) = RawPeer::connect_claiming(sock, pki.client_tls(&node), Role::AGENT, uuid).await.unwrap();
    assert!(ssntp::client::is_connected_frame(&frame), "issued to a UUID, claiming it: accepted");
}
