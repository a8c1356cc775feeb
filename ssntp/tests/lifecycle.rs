//! Connection life: reconnect after a server restart with the same UUID, a reconnecting peer
//! replacing its stale connection, the per-peer outbound bound, the connection limit, and
//! graceful shutdown flushing queued frames.

use std::time::Duration;

use ssntp::client::{Backoff, Client, ClientEvent, ClientOptions, Connection};
use ssntp::identity::load_or_create_uuid;
use ssntp::payload::{InstanceEvent, Message};
use ssntp::server::ServerEvent;
use ssntp::{Role, Uuid};
use testutil::{Pki, RawPeer, TestServer, PATIENCE};
use tokio::net::TcpListener;

async fn next_client_event(rx: &mut ssntp::client::ClientEvents) -> ClientEvent {
    tokio::time::timeout(PATIENCE, rx.recv()).await.expect("client event in time").expect("client running")
}

async fn wait_connected(rx: &mut ssntp::client::ClientEvents) -> Uuid {
    loop {
        match next_client_event(rx).await {
            ClientEvent::Connected { server_uuid, .. } => return server_uuid,
            ClientEvent::ConnectFailed { permanent: false, .. } | ClientEvent::Disconnected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Binds `addr` again. On a busy machine another process's connection may hold the port as its
/// ephemeral source for a moment (`AddrInUse`): that is retried, for at most 10 s.
async fn rebind(addr: std::net::SocketAddr) -> TcpListener {
    let mut last = None;
    for _ in 0..200 {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => panic!("binding {addr} again: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("binding {addr} again: still in use after 10 s: {last:?}");
}

#[tokio::test]
async fn client_reconnects_after_server_restart_with_the_same_uuid() {
    let pki = Pki::new();
    let state = tempfile::tempdir().unwrap();
    let uuid = load_or_create_uuid(state.path(), Role::AGENT).unwrap();

    let mut server = TestServer::start(&pki).await;
    let addr = server.addr;
    let mut opts = ClientOptions::new(vec![addr.to_string()], pki.client_tls("agent"), Role::AGENT, uuid);
    opts.backoff = Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(200) };
    let (client, mut events) = Client::spawn(opts);
    let first_server = wait_connected(&mut events).await;
    assert_eq!(first_server, server.uuid);
    let ServerEvent::Connected(peer) = server.next_event().await else { panic!() };
    assert_eq!(peer.uuid, uuid);

    // Restart: the old server goes away, the client notices and retries with backoff.
    server.stop().await;
    assert!(matches!(next_client_event(&mut events).await, ClientEvent::Disconnected { .. }));
    assert!(client.try_send(&Message::Offline).is_err(), "no session while disconnected");
    tokio::time::sleep(Duration::from_millis(100)).await; // let a few dials fail
    let listener = rebind(addr).await;
    let mut server = TestServer::start_on(listener, &pki, "scheduler", |_| {});
    let second_server = wait_connected(&mut events).await;
    assert_eq!(second_server, server.uuid);
    assert_ne!(second_server, first_server);
    let ServerEvent::Connected(peer) = server.next_event().await else { panic!() };
    assert_eq!(peer.uuid, uuid, "the client kept its identity");
    // The UUID the process would load after its own restart is the same one.
    assert_eq!(load_or_create_uuid(state.path(), Role::AGENT).unwrap(), uuid);

    client.try_send(&Message::Offline).unwrap();
    // A message bound to the first connection is not sent on the second.
    let err = client.try_send_in(1, &Message::Offline).unwrap_err();
    assert!(err.to_string().contains("gone"), "{err}");
    client.try_send_in(2, &Message::Offline).unwrap();
    assert!(matches!(server.next_event().await, ServerEvent::Message { message: Message::Offline, .. }));
    client.close();
    server.stop().await;
}

#[tokio::test]
async fn a_reconnecting_peer_replaces_its_stale_connection() {
    let pki = Pki::new();
    let mut server = TestServer::start(&pki).await;
    let uuid = Uuid::new_v4();
    let opts = ClientOptions::new(vec![], pki.client_tls("agent"), Role::AGENT, uuid);
    let mut first = Connection::connect(&opts, &server.addr.to_string()).await.unwrap();
    let ServerEvent::Connected(old) = server.next_event().await else { panic!() };
    let _second = Connection::connect(&opts, &server.addr.to_string()).await.unwrap();
    let ServerEvent::Connected(new) = server.next_event().await else { panic!() };
    assert_ne!(old.conn_id, new.conn_id);
    // The old connection is closed by the server, and its Disconnected names the old conn_id.
    match server.next_event().await {
        ServerEvent::Disconnected { conn_id, uuid: u, .. } => {
            assert_eq!(conn_id, old.conn_id);
            assert_eq!(u, uuid);
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(matches!(tokio::time::timeout(PATIENCE, first.recv()).await.unwrap(), Ok(None) | Err(_)));
    assert!(!new.sender.is_closed());
    server.stop().await;
}

#[tokio::test]
async fn outbound_queue_is_bounded_and_reports_full() {
    let pki = Pki::new();
    let mut server = TestServer::start_with(&pki, "scheduler", |o| o.outbound_queue = 8).await;
    // A peer that never reads.
    let (_peer, _, _) = RawPeer::connect_as(server.addr, pki.client_tls("agent"), Role::AGENT).await.unwrap();
    let ServerEvent::Connected(peer) = server.next_event().await else { panic!() };
    let big = Message::LogData(ssntp::payload::LogData {
        instance_uuid: Uuid::nil(),
        request_id: 0,
        data: "x".repeat(256 * 1024),
        truncated: false,
    });
    let mut sent = 0usize;
    let full = loop {
        match peer.sender.try_send(&big) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 10_000, "queue never filled");
        if sent.is_multiple_of(8) {
            // Give the writer a chance to fill the socket buffers.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    assert!(full.to_string().contains("full"), "{full}");
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    let pki = Pki::new();
    let mut server = TestServer::start_with(&pki, "scheduler", |o| o.max_connections = 2).await;
    let opts = |u| ClientOptions::new(vec![], pki.client_tls("agent"), Role::AGENT, u);
    let addr = server.addr.to_string();
    let a = Connection::connect(&opts(Uuid::new_v4()), &addr).await.unwrap();
    let _b = Connection::connect(&opts(Uuid::new_v4()), &addr).await.unwrap();
    let mut third_opts = opts(Uuid::new_v4());
    third_opts.handshake_timeout = Duration::from_millis(300);
    assert!(Connection::connect(&third_opts, &addr).await.is_err(), "third connection must wait");
    a.close().await.unwrap();
    // Drain events so the server is not blocked on its application channel.
    while tokio::time::timeout(Duration::from_millis(100), server.events.recv()).await.is_ok() {}
    third_opts.handshake_timeout = PATIENCE;
    Connection::connect(&third_opts, &addr).await.expect("a slot was freed");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_flushes_queued_frames_and_closes_clients() {
    let pki = Pki::new();
    let mut server = TestServer::start(&pki).await;
    let opts = ClientOptions::new(vec![], pki.client_tls("controller"), Role::CONTROLLER, Uuid::new_v4());
    let mut conn = Connection::connect(&opts, &server.addr.to_string()).await.unwrap();
    let ServerEvent::Connected(peer) = server.next_event().await else { panic!() };
    for i in 0..50u8 {
        let event =
            Message::InstanceStopped(InstanceEvent { instance_uuid: Uuid::from_bytes([i; 16]), node_uuid: None });
        peer.sender.try_send(&event).unwrap();
    }
    server.stop().await;
    let mut received = 0;
    while let Ok(Some((_, message))) = conn.recv().await {
        assert!(matches!(message, Message::InstanceStopped(_)));
        received += 1;
    }
    assert_eq!(received, 50, "every queued frame arrives before the close");
}
