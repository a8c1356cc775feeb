//! Live migration of `vm` instances: the launcher's IO (the decisions are the core's).
//!
//! The device models never talk to each other directly. Each launcher carries the state
//! stream between its device model's unix socket and a mutual-TLS connection to the other
//! launcher, so the stream is encrypted and both ends are known by their certificates:
//!
//! - **Destination.** Its device model starts paused, waiting on `in.sock` (`-S -incoming`).
//!   [`Migrations::expect`] registers the instance with the node it comes from and says
//!   MIGRATION_READY with this launcher's listener address. The listener ([`Migrations::listen`])
//!   takes one connection per expected instance, only from a launcher certificate naming the
//!   source node, and pipes it into `in.sock`.
//! - **Source.** [`Migrations::send`] connects to that address (the certificate must name the
//!   destination node), opens `out.sock` for its device model, tells it over QMP to migrate
//!   there, pipes the stream into the connection and polls until it is done. A completed copy
//!   leaves the source's guest paused; MIGRATION_DONE says so.
//! - **The end** (MIGRATE_END): the destination's guest is resumed ([`resume`]), or the
//!   source's migration cancelled and its guest resumed ([`cancel`]); the copy that is no
//!   longer the instance is stopped by the core.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use ssntp::payload::{Message, MigrationDone, MigrationReady};
use ssntp::{Role, Uuid};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;

/// The device model's sockets, in the instance's `results/` (the workload user's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSockets {
    /// Its QMP monitor.
    pub qmp: PathBuf,
    /// Where an incoming device model takes its state.
    pub incoming: PathBuf,
    /// Where the source launcher takes the state its device model sends.
    pub outgoing: PathBuf,
}

/// Longest path a unix socket may have (`sun_path` less its terminating zero).
const MAX_SOCKET_PATH: usize = 107;

impl VmSockets {
    /// The sockets in `dir`, or `None` when a path is too long for a unix socket.
    pub fn in_dir(dir: &Path) -> Option<Self> {
        let s = Self { qmp: dir.join("q.sock"), incoming: dir.join("in.sock"), outgoing: dir.join("out.sock") };
        [&s.qmp, &s.incoming, &s.outgoing].iter().all(|p| p.as_os_str().len() <= MAX_SOCKET_PATH).then_some(s)
    }
}

/// How long the destination's device model may take to open its incoming socket.
const READY_WAIT: Duration = Duration::from_secs(30);
/// How long a whole state copy may take (the scheduler gives up at the same time).
const COPY_LIMIT: Duration = Duration::from_secs(600);
/// How often the source asks its device model how the copy goes.
const POLL: Duration = Duration::from_millis(10);
/// "No cap" for the device model's migration bandwidth, bytes/s (1 TiB/s).
const UNCAPPED: u64 = 1 << 40;
/// Longest QMP line read (answers are small; a bigger line is not a device model's).
const MAX_QMP_LINE: usize = 64 * 1024;

/// An instance this node waits for: from which node, into which socket.
#[derive(Debug, Clone)]
struct Expected {
    from: Uuid,
    incoming: PathBuf,
}

/// The migrations of one launcher: its listener and what it expects.
#[derive(Debug, Clone)]
pub struct Migrations {
    /// The address the other launchers are told (MIGRATION_READY).
    advertised: String,
    expected: Arc<Mutex<HashMap<Uuid, Expected>>>,
    connector: Arc<rustls::ClientConfig>,
    /// What the migration tasks tell the core ([`crate::core::Input::Migration`]).
    events: mpsc::Sender<Message>,
    /// The device model's bandwidth cap for the state stream, bytes/s.
    max_bandwidth: u64,
    /// The longest the device model may pause the guest for the final copy, ms: it keeps
    /// copying what the guest dirties until the rest fits this at the measured bandwidth.
    downtime_limit_ms: u64,
}

impl Migrations {
    /// Binds the listener (`bind`, port 0 for any) and serves it. The address other launchers
    /// are told is `advertise`, else the bound address (which must then not be a wildcard).
    /// Outgoing state streams are capped at `bandwidth_mib_s` (0: no cap), and pause their guest
    /// for at most about `downtime_limit` at the end.
    ///
    /// # Errors
    /// The address cannot be bound, or there is nothing to advertise.
    pub async fn listen(
        bind: SocketAddr,
        advertise: Option<String>,
        tls: (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>),
        bandwidth_mib_s: u64,
        downtime_limit: std::time::Duration,
        events: mpsc::Sender<Message>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let listener = TcpListener::bind(bind).await.with_context(|| format!("binding --migration-listen {bind}"))?;
        let local = listener.local_addr()?;
        let advertised = match advertise {
            Some(host) if host.contains(':') && !host.starts_with('[') => format!("[{host}]:{}", local.port()),
            Some(host) => format!("{host}:{}", local.port()),
            None if local.ip().is_unspecified() => {
                anyhow::bail!(
                    "--migration-listen {bind} is a wildcard: name the address others reach with --migration-advertise"
                )
            }
            None => local.to_string(),
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.0);
        let connector = tls.1;
        // The device model caps a migration at 128 MiB/s unless told otherwise.
        let max_bandwidth = if bandwidth_mib_s == 0 { UNCAPPED } else { bandwidth_mib_s.saturating_mul(1 << 20) };
        let downtime_limit_ms = u64::try_from(downtime_limit.as_millis()).unwrap_or(u64::MAX).max(1);
        let this = Self { advertised, expected: Arc::default(), connector, events, max_bandwidth, downtime_limit_ms };
        tokio::spawn(this.clone().serve(listener, acceptor));
        tracing::info!(address = %this.advertised, "taking live migrations");
        Ok(this)
    }

    /// The address other launchers are told.
    pub fn address(&self) -> &str {
        &self.advertised
    }

    async fn serve(self, listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else { continue };
            let this = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Err(e) = this.take(tcp, acceptor).await {
                    tracing::warn!(%peer, error = %e, "incoming migration refused or failed");
                }
            });
        }
    }

    /// One incoming connection: checked, then piped into the device model.
    async fn take(&self, tcp: TcpStream, acceptor: tokio_rustls::TlsAcceptor) -> anyhow::Result<()> {
        let mut tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await??;
        let (peer, roles) = peer_facts(tls.get_ref().1.peer_certificates())?;
        anyhow::ensure!(roles.contains(Role::AGENT), "the peer's certificate is not a launcher's");
        let mut id = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut id)).await??;
        let id = Uuid::from_bytes(id);
        let expected = {
            let mut map = self.expected.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match map.get(&id) {
                Some(e) if e.from == peer => map.remove(&id),
                Some(e) => anyhow::bail!("instance {id} comes from node {}, not {peer}", e.from),
                None => anyhow::bail!("no migration of instance {id} is expected here"),
            }
        };
        let Some(expected) = expected else { return Ok(()) };
        let result = async {
            let mut unix = UnixStream::connect(&expected.incoming).await?;
            tokio::io::copy_bidirectional(&mut tls, &mut unix).await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = &result {
            let done = MigrationDone { instance_uuid: id, ok: false, detail: format!("receiving the state: {e}") };
            let _ = self.events.send(Message::MigrationDone(done)).await;
        }
        result
    }

    /// The destination's half: once the incoming device model listens, the instance is
    /// expected from `from` and the scheduler hears MIGRATION_READY.
    pub fn expect(&self, instance: Uuid, from: Uuid, sockets: VmSockets) {
        let this = self.clone();
        tokio::spawn(async move {
            let appeared = tokio::time::timeout(READY_WAIT, async {
                while !sockets.incoming.exists() {
                    tokio::time::sleep(POLL).await;
                }
            })
            .await;
            let message = if appeared.is_ok() {
                let expected = Expected { from, incoming: sockets.incoming };
                this.expected.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(instance, expected);
                Message::MigrationReady(MigrationReady { instance_uuid: instance, address: this.advertised.clone() })
            } else {
                let detail = format!("the device model did not listen for its state in {} s", READY_WAIT.as_secs());
                Message::MigrationDone(MigrationDone { instance_uuid: instance, ok: false, detail })
            };
            let _ = this.events.send(message).await;
        });
    }

    /// Forgets an expected instance (its migration ended).
    pub fn forget(&self, instance: Uuid) {
        self.expected.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&instance);
    }

    /// The source's half: sends the state to `address`, whose certificate must name `to`.
    pub fn send(&self, instance: Uuid, to: Uuid, address: String, sockets: VmSockets) {
        let this = self.clone();
        tokio::spawn(async move {
            let result = tokio::time::timeout(COPY_LIMIT, this.copy_out(instance, to, &address, &sockets)).await;
            let detail = match result {
                Ok(Ok(())) => String::new(),
                Ok(Err(e)) => format!("sending the state to {address}: {e:#}"),
                Err(_) => format!("sending the state took more than {} s", COPY_LIMIT.as_secs()),
            };
            let _ = std::fs::remove_file(&sockets.outgoing);
            let done = MigrationDone { instance_uuid: instance, ok: detail.is_empty(), detail };
            let _ = this.events.send(Message::MigrationDone(done)).await;
        });
    }

    async fn copy_out(&self, instance: Uuid, to: Uuid, address: &str, sockets: &VmSockets) -> anyhow::Result<()> {
        let tcp = TcpStream::connect(address).await?;
        let name = ssntp::tls::server_name_for(address).map_err(anyhow::Error::msg)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.connector));
        let mut tls = connector.connect(name, tcp).await?;
        let (peer, roles) = peer_facts(tls.get_ref().1.peer_certificates())?;
        anyhow::ensure!(roles.contains(Role::AGENT) && peer == to, "the peer is not node {to} (it is {peer})");
        tls.write_all(instance.as_bytes()).await?;
        let _ = std::fs::remove_file(&sockets.outgoing);
        let listener = UnixListener::bind(&sockets.outgoing)?;
        {
            // The device model runs as the workload's user; the directory is that user's alone.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&sockets.outgoing, std::fs::Permissions::from_mode(0o666))?;
        }
        let mut qmp = Qmp::connect(&sockets.qmp).await?;
        let uri = format!("unix:{}", sockets.outgoing.display());
        let parameters = json!({ "max-bandwidth": self.max_bandwidth, "downtime-limit": self.downtime_limit_ms });
        qmp.execute("migrate-set-parameters", parameters).await?;
        qmp.execute("migrate", json!({ "uri": uri })).await?;
        let (mut unix, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await??;
        let pipe = tokio::spawn(async move { tokio::io::copy_bidirectional(&mut unix, &mut tls).await });
        loop {
            tokio::time::sleep(POLL).await;
            let state = qmp.execute("query-migrate", json!({})).await?;
            match state.get("status").and_then(Value::as_str) {
                Some("completed") => {
                    let ms = |key: &str| state.get(key).and_then(Value::as_u64).unwrap_or(0);
                    let sent = state.pointer("/ram/transferred").and_then(Value::as_u64).unwrap_or(0);
                    tracing::info!(
                        %instance,
                        %to,
                        total_ms = ms("total-time"),
                        downtime_ms = ms("downtime"),
                        sent_mib = sent >> 20,
                        "state copied"
                    );
                    break;
                }
                Some(status @ ("failed" | "cancelled")) => {
                    let why = state.get("error-desc").and_then(Value::as_str).unwrap_or("");
                    pipe.abort();
                    anyhow::bail!("the device model's migration {status} {why}");
                }
                _ => {}
            }
        }
        // The stream's end has reached the destination once the pipe is done.
        let _ = tokio::time::timeout(Duration::from_secs(10), pipe).await;
        Ok(())
    }
}

/// The identity and roles of a peer's certificate.
fn peer_facts(certs: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> anyhow::Result<(Uuid, Role)> {
    let leaf = certs.and_then(<[_]>::first).ok_or_else(|| anyhow::anyhow!("the peer sent no certificate"))?;
    let facts = ssntp::role::cert_facts(leaf)?;
    let id = facts.identity.ok_or_else(|| anyhow::anyhow!("the peer's certificate names no node"))?;
    Ok((id, facts.roles))
}

/// Resumes a guest whose incoming migration was committed, once its state is all in.
///
/// # Errors
/// Its monitor cannot be reached, or it did not finish taking its state in time.
pub async fn resume(sockets: &VmSockets) -> anyhow::Result<()> {
    let mut qmp = Qmp::connect(&sockets.qmp).await?;
    let arrived = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let status = qmp.execute("query-status", json!({})).await?;
            if status.get("status").and_then(Value::as_str) != Some("inmigrate") {
                return anyhow::Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    arrived.map_err(|_| anyhow::anyhow!("the guest's state did not arrive in time"))??;
    qmp.execute("cont", json!({})).await?;
    Ok(())
}

/// Cancels an outgoing migration and resumes the guest if it was left paused.
///
/// # Errors
/// Its monitor cannot be reached or refuses.
pub async fn cancel(sockets: &VmSockets) -> anyhow::Result<()> {
    let mut qmp = Qmp::connect(&sockets.qmp).await?;
    qmp.execute("migrate_cancel", json!({})).await?;
    let status = qmp.execute("query-status", json!({})).await?;
    if status.get("running").and_then(Value::as_bool) == Some(false) {
        qmp.execute("cont", json!({})).await?;
    }
    Ok(())
}

/// A QMP monitor connection (JSON lines over a unix socket).
struct Qmp {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Qmp {
    async fn connect(path: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(path).await.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let (read, writer) = stream.into_split();
        let mut qmp = Self { reader: BufReader::new(read), writer };
        qmp.line().await?; // the greeting
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    async fn line(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            (&mut self.reader).take(MAX_QMP_LINE as u64).read_line(&mut line),
        )
        .await??;
        anyhow::ensure!(read > 0 && line.ends_with('\n'), "the monitor closed or sent too long a line");
        Ok(serde_json::from_str(&line)?)
    }

    /// Runs a command; its `return` value, skipping the events between.
    async fn execute(&mut self, command: &str, arguments: Value) -> anyhow::Result<Value> {
        let mut request = serde_json::to_vec(&json!({ "execute": command, "arguments": arguments }))?;
        request.push(b'\n');
        self.writer.write_all(&request).await?;
        loop {
            let answer = self.line().await?;
            if let Some(value) = answer.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = answer.get("error") {
                let desc = error.get("desc").and_then(Value::as_str).unwrap_or("error");
                anyhow::bail!("{command}: {desc}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_whose_paths_are_too_long_are_refused() {
        let short = VmSockets::in_dir(Path::new("/var/lib/drover/instances/x/results")).unwrap();
        assert_eq!(short.qmp, Path::new("/var/lib/drover/instances/x/results/q.sock"));
        assert!(VmSockets::in_dir(&Path::new("/").join("d".repeat(100))).is_none());
    }
}
