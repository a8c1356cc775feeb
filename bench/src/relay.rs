//! The `ceiling` relay: the scheduler's transport with no scheduling. It accepts the same
//! mutual-TLS connections through the same SSNTP server (handshake, framing, payload decoding,
//! role checks), hands each controller START to the next agent in turn, unchanged, and sends
//! agents' INSTANCE_STARTED back to the controllers. What it reaches is what this machine
//! allows the scheduler's transport; `place` divided by it is the scheduler's efficiency.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use ssntp::payload::{ClusterConfig, Message};
use ssntp::server::{PeerSender, Server, ServerEvent, ServerOptions};
use ssntp::tls::{Identity, TlsPaths};
use ssntp::{Role, Uuid};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Runs the relay until killed.
pub(crate) async fn run(listen: SocketAddr, tls: TlsPaths) -> anyhow::Result<()> {
    let identity = Identity::load(&tls).context("loading the relay's TLS material")?;
    let tls = ssntp::tls::server_config(&identity)?;
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let (tx, mut events) = mpsc::channel(65_536);
    let server =
        Server::new(tls, ServerOptions::new(Uuid::new_v4()), Arc::new(RwLock::new(ClusterConfig::default())), tx);
    tokio::spawn(server.run(listener, std::future::pending()));
    let mut agents: Vec<(Uuid, PeerSender)> = Vec::new();
    let mut controllers: HashMap<Uuid, PeerSender> = HashMap::new();
    let mut next = 0usize;
    while let Some(event) = events.recv().await {
        match event {
            ServerEvent::Connected(peer) => {
                if peer.role.contains(Role::CONTROLLER) {
                    controllers.insert(peer.uuid, peer.sender);
                } else {
                    agents.retain(|(u, _)| *u != peer.uuid);
                    agents.push((peer.uuid, peer.sender));
                }
            }
            ServerEvent::Disconnected { uuid, .. } => {
                controllers.remove(&uuid);
                agents.retain(|(u, _)| *u != uuid);
            }
            ServerEvent::Message { frame, message: Message::Start(_), .. } => {
                if agents.is_empty() {
                    continue;
                }
                next = (next + 1) % agents.len();
                let _ = agents[next].1.try_send_frame(frame);
            }
            ServerEvent::Message { frame, message: Message::InstanceStarted(_), .. } => {
                for c in controllers.values() {
                    let _ = c.try_send_frame(frame.clone());
                }
            }
            ServerEvent::Message { .. } => {}
        }
    }
    Ok(())
}
