//! The CONNECT → CONNECTED handshake over real TLS on loopback: every role is accepted, every
//! bad certificate or claim is refused. Negative tests read until CONNECTED or the error,
//! because TLS 1.3 tells a client of a refused certificate only on its first read.

use std::time::Duration;

use ssntp::client::{ClientOptions, Connection};
use ssntp::payload::Message;
use ssntp::server::ServerEvent;
use ssntp::{ErrorCode, Kind, Role};
use testutil::{Pki, RawPeer, TestServer};

fn assert_refused_by_tls(result: Result<(RawPeer, ssntp::Frame, Message), ssntp::Error>, what: &str) {
    match result {
        Err(ssntp::Error::Io(e)) => {
            let text = e.to_string();
            assert!(
                text.contains("alert") || text.contains("reset") || text.contains("closed") || text.contains("eof"),
                "{what}: {text}"
            );
        }
        Err(ssntp::Error::Closed) => {}
        Ok((_, frame, message)) => panic!("{what}: expected a TLS refusal, got {} {message:?}", frame.kind),
        Err(other) => panic!("{what}: expected a TLS refusal, got {other}"),
    }
}

fn assert_aborted(result: Result<(RawPeer, ssntp::Frame, Message), ssntp::Error>, what: &str) -> String {
    match result {
        Ok((_, frame, Message::ConnectionAborted(report))) => {
            assert_eq!(frame.kind, Kind::Error(ErrorCode::ConnectionAborted));
            report.reason
        }
        Ok((_, frame, message)) => panic!("{what}: expected ConnectionAborted, got {} {message:?}", frame.kind),
        Err(e) => panic!("{what}: expected ConnectionAborted, got {e}"),
    }
}

#[tokio::test]
async fn every_client_role_is_accepted_with_its_own_certificate() {
    let pki = Pki::new();
    let mut server = TestServer::start(&pki).await;
    for (stem, role) in [
        ("controller", Role::CONTROLLER),
        ("agent", Role::AGENT),
        ("netagent", Role::NETAGENT),
        ("cnciagent", Role::CNCIAGENT),
    ] {
        let opts = ClientOptions::new(vec![server.addr.to_string()], pki.client_tls(stem), role, ssntp::Uuid::new_v4());
        let conn = Connection::connect(&opts, &server.addr.to_string()).await.unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert_eq!(conn.server_uuid, server.uuid);
        assert_eq!(conn.server_role, Role::SCHEDULER);
        match server.next_event().await {
            ServerEvent::Connected(peer) => {
                assert_eq!(peer.uuid, opts.uuid);
                assert_eq!(peer.role, role);
            }
            other => panic!("{stem}: expected Connected, got {other:?}"),
        }
        conn.close().await.unwrap();
        assert!(matches!(server.next_event().await, ServerEvent::Disconnected { .. }));
    }
    server.stop().await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    let server = TestServer::start(&pki).await;
    // The client trusts the server (same CA file) but presents a certificate from another CA.
    let mut id = pki.identity("agent");
    let foreign = other.identity("agent");
    id.chain = foreign.chain;
    id.key = foreign.key;
    let tls = ssntp::tls::client_config(&id).unwrap();
    assert_refused_by_tls(RawPeer::connect_as(server.addr, tls, Role::AGENT).await, "wrong CA");
    server.stop().await;
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let pki = Pki::new();
    let mut spec = Pki::spec(&[Role::AGENT]);
    spec.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(3);
    spec.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    pki.issue(&spec, "expired");
    let server = TestServer::start(&pki).await;
    assert_refused_by_tls(RawPeer::connect_as(server.addr, pki.client_tls("expired"), Role::AGENT).await, "expired");
    server.stop().await;
}

#[tokio::test]
async fn revoked_certificate_is_refused() {
    let pki = Pki::new();
    pki.revoke("agent");
    let server = TestServer::start(&pki).await;
    assert_refused_by_tls(RawPeer::connect_as(server.addr, pki.client_tls("agent"), Role::AGENT).await, "revoked");
    // Other certificates are unaffected by the CRL.
    let (_, frame, _) = RawPeer::connect_as(server.addr, pki.client_tls("controller"), Role::CONTROLLER).await.unwrap();
    assert!(ssntp::client::is_connected_frame(&frame));
    server.stop().await;
}

#[tokio::test]
async fn any_extended_key_usage_without_client_auth_is_refused() {
    let pki = Pki::new();
    let mut spec = Pki::spec(&[Role::AGENT]);
    spec.client_auth = false;
    spec.any_eku = true; // ciao's recipe
    pki.issue(&spec, "anyeku");
    let server = TestServer::start(&pki).await;
    assert_refused_by_tls(RawPeer::connect_as(server.addr, pki.client_tls("anyeku"), Role::AGENT).await, "anyEKU");
    server.stop().await;
}

#[tokio::test]
async fn certificate_without_role_oid_gets_connection_aborted() {
    let pki = Pki::new();
    pki.issue(&Pki::spec(&[]), "norole");
    let server = TestServer::start(&pki).await;
    let reason = assert_aborted(
        RawPeer::connect_as(server.addr, pki.client_tls_unchecked("norole"), Role::AGENT).await,
        "no role",
    );
    assert!(reason.contains("no SSNTP role"), "{reason}");
    server.stop().await;
}

#[tokio::test]
async fn claimed_role_not_in_certificate_gets_connection_aborted() {
    let pki = Pki::new();
    let server = TestServer::start(&pki).await;
    let reason = assert_aborted(
        RawPeer::connect_as(server.addr, pki.client_tls("agent"), Role::CONTROLLER).await,
        "agent claiming controller",
    );
    assert!(reason.contains("claimed controller"), "{reason}");
    // A role the server never accepts from clients (a second scheduler) is refused too.
    pki.issue(&Pki::spec(&[Role::SCHEDULER]), "rogue-scheduler");
    assert_aborted(
        RawPeer::connect_as(server.addr, pki.client_tls("rogue-scheduler"), Role::SCHEDULER).await,
        "client claiming scheduler",
    );
    // And the typed client reports it as permanent.
    let opts = ClientOptions::new(vec![], pki.client_tls("agent"), Role::CONTROLLER, ssntp::Uuid::new_v4());
    let err = Connection::connect(&opts, &server.addr.to_string()).await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn client_refuses_a_server_without_the_scheduler_role() {
    let pki = Pki::new();
    // A server run with the generic "server" certificate: valid TLS, wrong SSNTP role.
    let mut server = TestServer::start_with(&pki, "server", |o| o.role = Role::SERVER).await;
    let opts = ClientOptions::new(vec![], pki.client_tls("agent"), Role::AGENT, ssntp::Uuid::new_v4());
    let err = Connection::connect(&opts, &format!("localhost:{}", server.addr.port())).await.unwrap_err();
    assert!(matches!(err, ssntp::Error::RoleMismatch { .. }), "{err}");
    assert!(err.is_permanent());
    // The server saw no CONNECT (the client left before claiming anything).
    assert!(tokio::time::timeout(Duration::from_millis(300), server.events.recv()).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn first_frame_must_be_connect_and_handshake_times_out() {
    let pki = Pki::new();
    let server = TestServer::start_with(&pki, "scheduler", |o| o.handshake_timeout = Duration::from_millis(300)).await;
    // Something other than CONNECT first.
    let mut peer = RawPeer::connect(server.addr, pki.client_tls("agent")).await.unwrap();
    peer.send_message(&Message::Offline).await.unwrap();
    let (frame, message) = peer.expect(testutil::PATIENCE).await.unwrap();
    assert_eq!(frame.kind, Kind::Error(ErrorCode::InvalidFrameType), "{message:?}");
    peer.until_closed(testutil::PATIENCE).await.unwrap();
    // Silence: closed after the handshake timeout.
    let mut silent = RawPeer::connect(server.addr, pki.client_tls("agent")).await.unwrap();
    silent.until_closed(Duration::from_secs(5)).await.unwrap();
    server.stop().await;
}
