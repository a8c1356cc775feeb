//! The destination's migration listener over real mutual TLS: it takes an instance's state
//! only from a launcher certificate naming the node the scheduler said it comes from, and
//! pipes exactly that into the device model's incoming socket (played here by the test).

#![allow(clippy::disallowed_methods)] // tests wait with the real clock

use std::sync::Arc;
use std::time::Duration;

use drover_launcher::migration::{Migrations, VmSockets};
use ssntp::payload::Message;
use ssntp::{Role, Uuid};
use testutil::Pki;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixListener};

fn tls(pki: &Pki, stem: &str) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let identity = pki.identity(stem);
    (ssntp::tls::server_config(&identity).unwrap(), ssntp::tls::peer_client_config(&identity).unwrap())
}

/// Connects to `address` as `stem` and sends the instance's UUID and some state; the bytes the
/// listener sent back before closing (none: it only ever pipes into the device model).
async fn send_as(pki: &Pki, stem: &str, address: &str, instance: Uuid, state: &[u8]) -> std::io::Result<Vec<u8>> {
    let connector = tokio_rustls::TlsConnector::from(tls(pki, stem).1);
    let tcp = TcpStream::connect(address).await?;
    let mut stream = connector.connect(ssntp::tls::server_name_for(address).unwrap(), tcp).await?;
    stream.write_all(instance.as_bytes()).await?;
    stream.write_all(state).await?;
    stream.shutdown().await?;
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut back)).await;
    Ok(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_named_source_node_gets_its_state_into_the_incoming_device_model() {
    let pki = Pki::new();
    let [dest, source, other] = ["dest", "source", "other"].map(|n| pki.issue_named(Role::AGENT, n, &[], &[]));
    let controller = pki.issue_named(Role::CONTROLLER, "ctl", &[], &[]);
    let source_uuid = pki.certified_uuid(&source).unwrap();
    let (events, mut inputs) = tokio::sync::mpsc::channel(8);
    let bind = "127.0.0.1:0".parse().unwrap();
    let migrations = Migrations::listen(bind, None, tls(&pki, &dest), 0, std::time::Duration::from_millis(300), events)
        .await
        .unwrap();
    let address = migrations.address().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let sockets = VmSockets::in_dir(dir.path()).unwrap();
    let device_model = UnixListener::bind(&sockets.incoming).unwrap();
    let instance = Uuid::from_bytes([7; 16]);
    migrations.expect(instance, source_uuid, sockets);
    let ready = tokio::time::timeout(Duration::from_secs(5), inputs.recv()).await.unwrap().unwrap();
    assert!(
        matches!(&ready, Message::MigrationReady(r) if r.instance_uuid == instance && r.address == address),
        "{ready:?}"
    );

    // Another launcher, a controller, and the right node naming another instance: turned away,
    // and the device model hears nothing.
    for (stem, id) in [(&other, instance), (&controller, instance), (&source, Uuid::from_bytes([8; 16]))] {
        let back = send_as(&pki, stem, &address, id, b"forged state").await.unwrap_or_default();
        assert!(back.is_empty(), "{stem}");
        let accepted = tokio::time::timeout(Duration::from_millis(300), device_model.accept()).await;
        assert!(accepted.is_err(), "{stem}'s state reached the device model");
    }

    // The source node: its state goes in, byte for byte.
    let sending = tokio::spawn({
        let address = address.clone();
        async move { send_as(&pki, &source, &address, instance, b"the guest's state").await }
    });
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(5), device_model.accept()).await.unwrap().unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, b"the guest's state");
    drop(conn);
    sending.await.unwrap().unwrap();

    // A certificate of another CA does not get through the handshake.
    let pki2 = Pki::new();
    let stranger = pki2.issue_named(Role::AGENT, "stranger", &[], &[]);
    assert!(send_as(&pki2, &stranger, &address, instance, b"x").await.is_err(), "another CA's certificate");
}
