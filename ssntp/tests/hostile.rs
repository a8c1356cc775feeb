//! Hostile input at a live server: each offender gets an ERROR frame and a close, and an honest
//! client connected throughout keeps being served.

use bytes::Bytes;
use ssntp::client::{Client, ClientEvent, ClientOptions};
use ssntp::frame::{Frame, MAJOR, MINOR};
use ssntp::payload::{Message, NodeReport};
use ssntp::server::ServerEvent;
use ssntp::{Command, ErrorCode, Kind, Role, Status, Uuid};
use testutil::{Pki, RawPeer, TestServer, PATIENCE};

fn ready(node: Uuid) -> Message {
    Message::Ready(NodeReport { node_uuid: node, mem_total_mb: 1024, hostname: "honest".into(), ..Default::default() })
}

/// Connects an offender as an agent and returns it after CONNECTED.
async fn offender(server: &TestServer, pki: &Pki) -> RawPeer {
    let (peer, frame, _) = RawPeer::connect_as(server.addr, pki.client_tls("agent"), Role::AGENT).await.unwrap();
    assert!(ssntp::client::is_connected_frame(&frame));
    peer
}

/// Reads until close and returns the error operand of the ERROR frame that came first.
async fn error_then_close(peer: &mut RawPeer) -> ErrorCode {
    let frames = peer.until_closed(PATIENCE).await.expect("the server closes the offender");
    let first = frames.first().expect("an ERROR frame before the close");
    match first.kind {
        Kind::Error(code) => {
            let message = Message::decode(first).expect("error payload decodes");
            assert!(ssntp::client::error_reason(&message).is_some_and(|r| !r.is_empty()));
            code
        }
        other => panic!("expected an ERROR frame, got {other}"),
    }
}

#[tokio::test]
async fn offenders_are_closed_and_an_honest_client_keeps_working() {
    testutil::init_tracing();
    let pki = Pki::new();
    let mut server = TestServer::start_with(&pki, "scheduler", |o| o.max_payload = 64 * 1024).await;

    // The honest launcher: a reconnecting client that sends READY and gets an answer through
    // the application for every READY (the test plays the application and echoes).
    let honest_uuid = Uuid::new_v4();
    let opts = ClientOptions::new(vec![server.addr.to_string()], pki.client_tls("agent"), Role::AGENT, honest_uuid);
    let (honest, mut honest_events) = Client::spawn(opts);
    assert!(matches!(honest_events.recv().await, Some(ClientEvent::Connected { .. })));
    let ServerEvent::Connected(honest_peer) = server.next_event().await else { panic!("honest not connected") };

    let mut rounds = 0;
    let mut check_honest = async |server: &mut TestServer| {
        rounds += 1;
        honest.send(&ready(honest_uuid)).await.unwrap();
        loop {
            match server.next_event().await {
                ServerEvent::Message { from, message: Message::Ready(_), .. } if from == honest_uuid => break,
                ServerEvent::Message { from, .. } if from == honest_uuid => panic!("unexpected frame from honest"),
                _ => {} // offenders' connects and disconnects
            }
        }
        let echo = Message::InstanceStarted(ssntp::payload::InstanceEvent {
            instance_uuid: Uuid::from_bytes([rounds; 16]),
            node_uuid: None,
        });
        honest_peer.sender.try_send(&echo).unwrap();
        match tokio::time::timeout(PATIENCE, honest_events.recv()).await.unwrap() {
            Some(ClientEvent::Message { message, .. }) => assert_eq!(message, echo),
            other => panic!("honest client lost its session: {other:?}"),
        }
    };
    check_honest(&mut server).await;

    // 1. A truncated header, then silence: the server waits (it cannot know more is not
    //    coming), so the offender gives up by closing mid-frame; the server must notice and
    //    drop it without an answer, and the honest client is unaffected.
    let mut peer = offender(&server, &pki).await;
    peer.send_bytes(&[MAJOR, MINOR, 1]).await.unwrap();
    drop(peer);
    check_honest(&mut server).await;

    // 2. A length over the maximum: refused from the header alone.
    let mut peer = offender(&server, &pki).await;
    peer.send_bytes(&[MAJOR, MINOR, 1, 1, 0x7f, 0xff, 0xff, 0xff]).await.unwrap();
    assert_eq!(error_then_close(&mut peer).await, ErrorCode::InvalidFrameType);
    check_honest(&mut server).await;

    // 3. A valid header with garbage CBOR.
    let mut peer = offender(&server, &pki).await;
    let garbage = Frame {
        kind: Kind::Status(Status::Ready),
        origin: peer.uuid,
        payload: Bytes::from_static(b"\xff\x00\xde\xad\xbe\xef"),
    };
    peer.send_frame(&garbage).await.unwrap();
    assert_eq!(error_then_close(&mut peer).await, ErrorCode::InvalidPayload);
    check_honest(&mut server).await;

    // 4. Unknown type, and unknown operand.
    for header in [[MAJOR, MINOR, 9, 0, 0, 0, 0, 0], [MAJOR, MINOR, 0, 200, 0, 0, 0, 0]] {
        let mut peer = offender(&server, &pki).await;
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(&[0u8; 16]);
        peer.send_bytes(&bytes).await.unwrap();
        assert_eq!(error_then_close(&mut peer).await, ErrorCode::InvalidFrameType);
    }
    check_honest(&mut server).await;

    // 5. A wrong major version.
    let mut peer = offender(&server, &pki).await;
    peer.send_bytes(&[7, 0, 1, 1, 0, 0, 0, 0]).await.unwrap();
    assert_eq!(error_then_close(&mut peer).await, ErrorCode::InvalidFrameType);

    // 6. A frame the agent role may not send (START is a controller's command).
    let mut peer = offender(&server, &pki).await;
    let start = Message::Start(ssntp::payload::Start::new(
        Uuid::new_v4(),
        ssntp::payload::Requirements { vcpus: 1, mem_mb: 32, ..Default::default() },
        ssntp::payload::Backend::Sim { duration_ms: 1, mem_usage_mb: 1, exit_code: 0 },
    ));
    assert_eq!(start.kind(), Kind::Command(Command::Start));
    peer.send_message(&start).await.unwrap();
    assert_eq!(error_then_close(&mut peer).await, ErrorCode::InvalidFrameType);
    let mut peer = offender(&server, &pki).await;
    let lost = Message::NodeLost(ssntp::payload::NodeLost { node_uuid: peer.uuid, instances: vec![] });
    peer.send_message(&lost).await.unwrap();
    assert_eq!(error_then_close(&mut peer).await, ErrorCode::InvalidFrameType);
    check_honest(&mut server).await;

    // 7. A flood of frames before CONNECT: the first non-CONNECT frame ends it.
    let mut peer = RawPeer::connect(server.addr, pki.client_tls("agent")).await.unwrap();
    let mut flood = Vec::new();
    for _ in 0..2000 {
        flood.extend_from_slice(&ready(peer.uuid).to_frame(peer.uuid).to_bytes());
    }
    // The server may close while we are still writing; that is the point.
    let _ = peer.send_bytes(&flood).await;
    assert_eq!(error_then_close(&mut peer).await, ErrorCode::InvalidFrameType);
    check_honest(&mut server).await;

    // 8. A second CONNECT after the handshake.
    let mut peer = offender(&server, &pki).await;
    let again = Message::Connect(ssntp::payload::Connect {
        role: Role::AGENT,
        uuid: peer.uuid,
        hostname: None,
        version: None,
        term: None,
    });
    peer.send_message(&again).await.unwrap();
    assert_eq!(error_then_close(&mut peer).await, ErrorCode::InvalidFrameType);
    check_honest(&mut server).await;

    // The honest client never lost its session.
    assert!(honest.is_connected());
    honest.close();
    server.stop().await;
}
