//! The SSNTP server: accept loop, handshake, per-connection reader and writer tasks.
//!
//! The server decodes and checks everything a peer sends before the application sees it: the
//! application receives typed [`ServerEvent`]s on one bounded channel and answers through each
//! peer's [`PeerSender`]. A peer that breaks the protocol gets an ERROR frame and a close; no
//! other connection notices.
//!
//! Bounds and overflow policies:
//! - connections: at most [`ServerOptions::max_connections`]; the accept loop waits for a free
//!   permit *before* accepting, so excess clients queue in the kernel's backlog;
//! - inbound: the application channel is bounded; a full channel stops the reading of peers
//!   (TCP backpressure), nothing is dropped;
//! - outbound: each peer has a queue of [`ServerOptions::outbound_queue`] frames (controllers
//!   [`ServerOptions::controller_outbound_queue`]: every node's reports fan in to them);
//!   [`PeerSender::try_send`] reports `Full` and [`PeerSender::offer`] hands the frame back, and
//!   the application decides (the scheduler keeps a bounded backlog per peer and closes a peer
//!   only when that overflows too);
//! - the handshake must finish within [`ServerOptions::handshake_timeout`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bindings::{Bindings, CertKey, IdentityPolicy};
use crate::conn::{FrameReader, FrameWriter, CLOSE_TIMEOUT};
use crate::error::{Error, Result};
use crate::frame::{Frame, DEFAULT_MAX_PAYLOAD};
use crate::payload::{ClusterConfig, Connect, Connected, Message};
use crate::role::{cert_facts, CertFacts, Role};
use crate::uuid::Uuid;

/// Server settings. [`ServerOptions::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The server's own UUID (origin of the frames it creates).
    pub uuid: Uuid,
    /// The role the server announces in CONNECTED.
    pub role: Role,
    /// Roles a client may claim; anything else is refused at CONNECT.
    pub accept_roles: Role,
    /// Most concurrent connections, handshakes included.
    pub max_connections: usize,
    /// Time for TLS plus CONNECT → CONNECTED.
    pub handshake_timeout: Duration,
    /// Largest payload accepted from a peer.
    pub max_payload: usize,
    /// Frames queued per peer before [`PeerSender::try_send`] reports `Full`.
    pub outbound_queue: usize,
    /// The same for controllers, which receive what every node reports: deeper, so that a burst
    /// of events (100,000 placements confirmed in a second) does not cut the controller off.
    pub controller_outbound_queue: usize,
    /// How long shutdown waits for connections to close.
    pub shutdown_grace: Duration,
    /// Whether certificates without an identity are taken (see [`crate::bindings`]).
    pub identities: IdentityPolicy,
}

impl ServerOptions {
    /// Defaults for a scheduler with the given UUID.
    pub fn new(uuid: Uuid) -> Self {
        Self {
            uuid,
            role: Role::SCHEDULER,
            accept_roles: Role::CONTROLLER | Role::AGENT | Role::NETAGENT | Role::CNCIAGENT,
            max_connections: 16_384,
            handshake_timeout: Duration::from_secs(10),
            max_payload: DEFAULT_MAX_PAYLOAD,
            outbound_queue: 1024,
            controller_outbound_queue: 65_536,
            shutdown_grace: Duration::from_secs(2),
            identities: IdentityPolicy::default(),
        }
    }
}

/// The cluster configuration sent in every CONNECTED; the application replaces it on CONFIGURE.
pub type SharedConfig = Arc<RwLock<ClusterConfig>>;

/// A connected, authenticated peer.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Unique per connection (a reconnecting peer gets a new one; events of an old connection
    /// can be told apart from those of its replacement).
    pub conn_id: u64,
    /// The peer's UUID from CONNECT.
    pub uuid: Uuid,
    /// The role it claimed (checked against its certificate).
    pub role: Role,
    /// Host name it gave, if any.
    pub hostname: Option<String>,
    /// A controller's leadership term, if it gave one.
    pub term: Option<u64>,
    /// Its address.
    pub addr: SocketAddr,
    /// How to send it frames.
    pub sender: PeerSender,
}

/// What the server tells the application.
#[derive(Debug)]
// Events move once through a channel; boxing the decoded message would cost an allocation per
// received frame on the hot path, more than moving a few hundred bytes.
#[allow(clippy::large_enum_variant)]
pub enum ServerEvent {
    /// A peer finished the handshake.
    Connected(Peer),
    /// A peer sent a frame, decoded and checked against its role.
    Message {
        /// The connection.
        conn_id: u64,
        /// The peer's UUID.
        from: Uuid,
        /// The peer's role.
        role: Role,
        /// The raw frame (for forwarding without re-encoding).
        frame: Frame,
        /// The decoded payload.
        message: Message,
    },
    /// A peer's connection ended.
    Disconnected {
        /// The connection.
        conn_id: u64,
        /// The peer's UUID.
        uuid: Uuid,
        /// The peer's role.
        role: Role,
        /// Why.
        reason: String,
    },
}

/// Sends frames to one peer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PeerSender {
    conn_id: u64,
    origin: Uuid,
    tx: mpsc::Sender<Frame>,
    close: CancellationToken,
}

impl PeerSender {
    /// The connection this sender belongs to.
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// Queues a frame without waiting.
    ///
    /// # Errors
    /// [`Error::Send`] when the queue is full (the peer is slow) or the connection is gone.
    pub fn try_send_frame(&self, frame: Frame) -> Result<()> {
        self.tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Send("outbound queue full"),
            mpsc::error::TrySendError::Closed(_) => Error::Send("connection closed"),
        })
    }

    /// Queues a frame without waiting, or hands it back when the queue is full so the caller
    /// can keep it for later; `Err(None)` when the connection is gone.
    ///
    /// # Errors
    /// `Some(frame)`: no room now; `None`: closed.
    pub fn offer(&self, frame: Frame) -> std::result::Result<(), Option<Frame>> {
        self.tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(frame) => Some(frame),
            mpsc::error::TrySendError::Closed(_) => None,
        })
    }

    /// Queues a frame, waiting for room.
    ///
    /// # Errors
    /// [`Error::Send`] when the connection is gone.
    pub async fn send_frame(&self, frame: Frame) -> Result<()> {
        self.tx.send(frame).await.map_err(|_| Error::Send("connection closed"))
    }

    /// Queues a message created by the server, without waiting.
    ///
    /// # Errors
    /// As [`PeerSender::try_send_frame`].
    pub fn try_send(&self, message: &Message) -> Result<()> {
        self.try_send_frame(message.to_frame(self.origin))
    }

    /// Closes the connection after the frames already queued are written.
    pub fn close(&self) {
        self.close.cancel();
    }

    /// Queues `message` (typically an ERROR) and closes the connection after it.
    pub fn close_with(&self, message: &Message) {
        let _ = self.try_send(message);
        self.close.cancel();
    }

    /// Whether the connection has been closed.
    pub fn is_closed(&self) -> bool {
        self.close.is_cancelled() || self.tx.is_closed()
    }
}

/// A live connection as the registry keeps it: how to close it, and the certificate it
/// presented (to close it when that certificate is revoked).
#[derive(Debug, Clone)]
struct LiveConn {
    token: CancellationToken,
    leaf: Arc<[u8]>,
}

/// Which certificate holds each UUID, and the live connection holding it: a reconnecting peer
/// replaces its stale connection, an impostor is refused (see [`crate::bindings`]).
type Registry = Mutex<Bindings<LiveConn>>;

struct Shared {
    opts: ServerOptions,
    /// Replaced by [`ServerControl::set_tls`]; each handshake takes the current one.
    acceptor: RwLock<TlsAcceptor>,
    config: SharedConfig,
    events: mpsc::Sender<ServerEvent>,
    registry: Registry,
    next_conn_id: AtomicU64,
    tracker: TaskTracker,
}

/// Changes a running [`Server`] (see [`Server::control`]). Cheap to clone.
#[derive(Clone)]
pub struct ServerControl {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ServerControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerControl").finish_non_exhaustive()
    }
}

impl ServerControl {
    /// New handshakes use `tls` (a reloaded certificate, key or revocation list); connections
    /// already up keep theirs.
    pub fn set_tls(&self, tls: Arc<rustls::ServerConfig>) {
        *self.shared.acceptor.write().expect("acceptor lock") = TlsAcceptor::from(tls);
    }

    /// Closes every live connection whose certificate (DER) `revoked` says is revoked; returns
    /// how many.
    pub fn close_revoked(&self, revoked: &crate::tls::Revoked) -> usize {
        let registry = self.shared.registry.lock().expect("registry lock");
        let mut closed = 0;
        for (uuid, live) in registry.live() {
            if revoked.contains(&live.leaf) {
                tracing::warn!(%uuid, "closing a peer whose certificate was revoked");
                live.token.cancel();
                closed += 1;
            }
        }
        closed
    }
}

/// An SSNTP server bound to its TLS configuration and its application channel.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("opts", &self.opts).finish_non_exhaustive()
    }
}

impl Server {
    /// A server that reports to `events`.
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        opts: ServerOptions,
        config: SharedConfig,
        events: mpsc::Sender<ServerEvent>,
    ) -> Self {
        let registry = Mutex::new(Bindings::new(opts.identities, opts.max_connections.saturating_mul(4)));
        let shared = Shared {
            opts,
            acceptor: RwLock::new(TlsAcceptor::from(tls)),
            config,
            events,
            registry,
            next_conn_id: AtomicU64::new(1),
            tracker: TaskTracker::new(),
        };
        Self { shared: Arc::new(shared) }
    }

    /// A handle that changes the running server: its TLS configuration, its peers.
    pub fn control(&self) -> ServerControl {
        ServerControl { shared: Arc::clone(&self.shared) }
    }

    /// Accepts connections on `listener` until `shutdown` completes, then closes every
    /// connection (queued frames are flushed) and waits up to the shutdown grace for them.
    ///
    /// # Errors
    /// Only if the listener itself fails permanently; per-connection errors are logged.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
        let shared = self.shared;
        let limit = Arc::new(Semaphore::new(shared.opts.max_connections));
        let root = CancellationToken::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                permit = limit.clone().acquire_owned() => permit.expect("semaphore never closed"),
                () = &mut shutdown => break,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            match accepted {
                Ok((tcp, addr)) => {
                    let token = root.child_token();
                    let shared2 = shared.clone();
                    shared.tracker.spawn(connection(shared2, tcp, addr, token, permit));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tracing::info!("ssntp server shutting down");
        root.cancel();
        shared.tracker.close();
        if tokio::time::timeout(shared.opts.shutdown_grace, shared.tracker.wait()).await.is_err() {
            tracing::warn!("connections still open after the shutdown grace; abandoning them");
        }
        Ok(())
    }
}

/// Everything about a peer known once CONNECT was accepted.
struct Accepted<R, W> {
    reader: FrameReader<R>,
    writer: FrameWriter<W>,
    connect: Connect,
}

/// The client's certificate as the handshake needs it: its facts and its DER bytes.
type ClientCert = std::result::Result<(CertFacts, Arc<[u8]>), crate::role::CertRoleError>;

/// Reads CONNECT, checks it against the certificate, binds the UUID to the certificate (closing
/// the connection it replaces), answers CONNECTED or an ERROR.
async fn handshake<R, W>(
    shared: &Shared,
    cert: ClientCert,
    conn_id: u64,
    token: &CancellationToken,
    mut reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
) -> Result<Accepted<R, W>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let checked = async {
        let (facts, leaf) = cert?;
        let der = leaf.clone();
        let first = reader.expect_frame().await?;
        let connect = crate::handshake::accept(&first, &facts, shared.opts.accept_roles)?;
        let key = facts.identity.map_or(CertKey::Certificate(der), CertKey::Identity);
        let replaced = shared
            .registry
            .lock()
            .expect("registry lock")
            .claim(connect.uuid, key, conn_id, LiveConn { token: token.clone(), leaf: leaf.clone() })
            .map_err(|refused| Error::Identity(refused.to_string()))?;
        if let Some(old) = replaced {
            tracing::info!(uuid = %connect.uuid, "peer reconnected; closing its previous connection");
            old.token.cancel();
        }
        Ok::<_, Error>(connect)
    };
    match checked.await {
        Ok(connect) => {
            let config = shared.config.read().expect("config lock").clone();
            let connected = Message::Connected(Connected { role: shared.opts.role, uuid: shared.opts.uuid, config });
            if let Err(e) = writer.write_message(shared.opts.uuid, &connected).await {
                shared.registry.lock().expect("registry lock").release(connect.uuid, conn_id);
                return Err(e);
            }
            Ok(Accepted { reader, writer, connect })
        }
        Err(e) => {
            if let Some(reply) = e.to_peer_message() {
                let _ = writer.write_message(shared.opts.uuid, &reply).await;
            }
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.shutdown()).await;
            Err(e)
        }
    }
}

async fn connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    addr: SocketAddr,
    token: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    crate::conn::detect_dead_peers(&tcp);
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let accepted = tokio::time::timeout(shared.opts.handshake_timeout, async {
        // A certificate that fails verification (wrong CA, expired, revoked, no clientAuth)
        // ends here; the client sees the TLS alert on its first read.
        let acceptor = shared.acceptor.read().expect("acceptor lock").clone();
        let tls = acceptor.accept(tcp).await?;
        let cert: ClientCert = match tls.get_ref().1.peer_certificates() {
            Some([leaf, ..]) => cert_facts(leaf).map(|facts| (facts, Arc::from(leaf.as_ref()))),
            _ => Err(crate::role::CertRoleError::NoRole),
        };
        let (r, w) = tokio::io::split(tls);
        let reader = FrameReader::new(r, shared.opts.max_payload);
        handshake(&shared, cert, conn_id, &token, reader, FrameWriter::new(w)).await
    })
    .await;
    let accepted = match accepted {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(e)) => {
            tracing::info!(%addr, error = %e, "handshake refused");
            return;
        }
        Err(_) => {
            tracing::info!(%addr, "handshake timed out");
            shared.registry.lock().expect("registry lock").release_connection(conn_id);
            return;
        }
    };
    let Accepted { mut reader, writer, connect } = accepted;
    let (uuid, role) = (connect.uuid, connect.role);
    let depth = if role.contains(Role::CONTROLLER) {
        shared.opts.controller_outbound_queue
    } else {
        shared.opts.outbound_queue
    };
    let (tx, rx) = mpsc::channel(depth);
    let sender = PeerSender { conn_id, origin: shared.opts.uuid, tx, close: token.clone() };

    tracing::info!(%addr, %uuid, %role, conn_id, "peer connected");
    shared.tracker.spawn(write_loop(writer, rx, token.clone()));

    let peer =
        Peer { conn_id, uuid, role, hostname: connect.hostname, term: connect.term, addr, sender: sender.clone() };
    let reason = if shared.events.send(ServerEvent::Connected(peer)).await.is_err() {
        "server stopping".to_owned()
    } else {
        read_loop(&shared, &mut reader, &sender, conn_id, uuid, role, &token).await
    };
    token.cancel();
    shared.registry.lock().expect("registry lock").release(uuid, conn_id);
    tracing::info!(%uuid, conn_id, %reason, "peer disconnected");
    let _ = shared.events.send(ServerEvent::Disconnected { conn_id, uuid, role, reason }).await;
}

/// Reads, decodes and checks frames until the connection ends; returns why it ended.
async fn read_loop<R: AsyncRead + Unpin>(
    shared: &Shared,
    reader: &mut FrameReader<R>,
    sender: &PeerSender,
    conn_id: u64,
    from: Uuid,
    role: Role,
    token: &CancellationToken,
) -> String {
    loop {
        let next = tokio::select! {
            next = reader.read_frame() => next,
            () = token.cancelled() => return "closed by server".into(),
        };
        let checked = next.and_then(|frame| {
            let Some(frame) = frame else { return Err(Error::Closed) };
            let message = Message::decode(&frame)?;
            if matches!(message, Message::Connect(_)) {
                return Err(Error::Protocol("CONNECT after the handshake".into()));
            }
            if !message.allowed_senders().intersects(role) {
                return Err(Error::Protocol(format!("role {role} may not send {}", frame.kind)));
            }
            Ok((frame, message))
        });
        match checked {
            Ok((frame, message)) => {
                let event = ServerEvent::Message { conn_id, from, role, frame, message };
                tokio::select! {
                    sent = shared.events.send(event) => if sent.is_err() { return "server stopping".into() },
                    () = token.cancelled() => return "closed by server".into(),
                }
            }
            Err(Error::Closed) => return "closed by peer".into(),
            Err(e) => {
                if let Some(reply) = e.to_peer_message() {
                    tracing::warn!(%from, %role, error = %e, "closing misbehaving peer");
                    sender.close_with(&reply);
                }
                return e.to_string();
            }
        }
    }
}

/// The peer's writer: [`crate::conn::write_loop`] until the connection is closed; a failed or
/// stuck write closes it.
async fn write_loop<W: AsyncWrite + Unpin>(
    writer: FrameWriter<W>,
    rx: mpsc::Receiver<Frame>,
    token: CancellationToken,
) {
    match crate::conn::write_loop(writer, rx, token.clone().cancelled_owned()).await {
        Ok(()) => return,
        Err(e @ Error::Timeout(_)) => tracing::warn!(error = %e, "peer stopped reading; dropping it"),
        Err(e) => tracing::debug!(error = %e, "write failed"),
    }
    token.cancel();
}
