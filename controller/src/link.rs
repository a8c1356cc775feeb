//! The controller's connection to the scheduler.

use std::sync::Arc;

use ssntp::client::{error_reason, Client, ClientEvents, ClientHandle, ClientOptions};
use ssntp::payload::Message;
use ssntp::{Role, Uuid};

/// How many bytes of the scheduler's frames may wait for the link task: every node's news fans
/// in here, and the link task stops taking frames while a store write runs (a large launch), so
/// the socket is drained into memory meanwhile rather than left full for the scheduler's write
/// timeout to cut.
pub const INBOUND_BYTES: usize = 128 << 20;

/// Starts a reconnecting controller-role client.
/// `term` is this controller's leadership term when it was elected (a scheduler makes the
/// controller with the highest term its master).
pub fn connect(
    targets: Vec<String>,
    tls: Arc<rustls::ClientConfig>,
    uuid: Uuid,
    term: Option<u64>,
) -> (ClientHandle, ClientEvents) {
    let mut opts = ClientOptions::new(targets, tls, Role::CONTROLLER, uuid);
    opts.term = term;
    opts.inbound_bytes = INBOUND_BYTES;
    opts.hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned());
    Client::spawn(opts)
}

/// One line describing what a frame from the cluster says, for logs and the CLI.
pub fn describe(origin: Uuid, message: &Message) -> String {
    match message {
        Message::NodeConnected(e) => format!("node {} connected", e.node_uuid.short()),
        Message::NodeDisconnected(e) => format!("node {} disconnected", e.node_uuid.short()),
        Message::NodeLost(e) => format!("node {} lost with {} instances", e.node_uuid.short(), e.instances.len()),
        Message::InstanceStarted(e) => {
            format!("instance {} started on node {}", e.instance_uuid.short(), origin.short())
        }
        Message::InstanceStopped(e) => format!("instance {} stopped", e.instance_uuid.short()),
        Message::InstanceDeleted(e) => format!("instance {} deleted", e.instance_uuid.short()),
        Message::InstanceExited(e) => format!(
            "instance {} exited ({:?}{})",
            e.instance_uuid.short(),
            e.reason,
            e.exit_code.map_or(String::new(), |c| format!(", code {c}"))
        ),
        Message::InstanceQueued(e) => format!("instance {} queued: {}", e.instance_uuid.short(), e.reason),
        Message::Stats(s) => format!("stats from node {}: {} instances", s.node_uuid.short(), s.instances.len()),
        other => match error_reason(other) {
            Some(reason) => format!("{}: {reason}", other.kind()),
            None => other.kind().to_string(),
        },
    }
}
