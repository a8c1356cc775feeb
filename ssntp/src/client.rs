//! The SSNTP client: one dial and handshake ([`Connection::connect`]), or a client that keeps
//! reconnecting with jittered exponential backoff and the same UUID ([`Client::spawn`]).
//!
//! A client counts itself connected only after CONNECTED arrives: with TLS 1.3 a server that
//! rejects the client's certificate says so only on the client's first read.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::conn::{FrameReader, FrameWriter};
use crate::error::{Error, Result};
use crate::frame::{Frame, Kind, Status, DEFAULT_MAX_PAYLOAD};
use crate::payload::{ClusterConfig, ErrorReport, Message};
use crate::role::{roles_from_cert_der, Role};
use crate::tls::server_name_for;
use crate::uuid::Uuid;

/// Exponential backoff with jitter: the n-th retry waits between half and all of
/// `min(max, initial · 2ⁿ)`, so a fleet of launchers that lost the scheduler at once does not
/// come back in one wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Ceiling of every delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(200), max: Duration::from_secs(30) }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (0-based); `unit` is a random number in `[0, 1)`.
    /// Pure, so the schedule can be tested.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        let cap = self.initial.saturating_mul(factor).min(self.max);
        let half = cap / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Servers to try in order, `host:port`.
    pub targets: Vec<String>,
    /// TLS configuration (see [`crate::tls::client_config`]).
    pub tls: Arc<rustls::ClientConfig>,
    /// Role claimed in CONNECT.
    pub role: Role,
    /// Own UUID (see [`crate::identity`]).
    pub uuid: Uuid,
    /// Host name sent in CONNECT.
    pub hostname: Option<String>,
    /// A controller's leadership term, sent in CONNECT.
    pub term: Option<u64>,
    /// Role the server's certificate and CONNECTED must carry.
    pub server_role: Role,
    /// Largest payload accepted from the server.
    pub max_payload: usize,
    /// Time for TCP, TLS and CONNECT → CONNECTED.
    pub handshake_timeout: Duration,
    /// Reconnect schedule.
    pub backoff: Backoff,
    /// Frames queued for sending before [`ClientHandle::try_send`] reports full.
    pub outbound_queue: usize,
    /// Bytes of frames received but not yet taken by the application before reading pauses
    /// (a frame counts its payload plus [`INBOUND_FRAME_OVERHEAD`]). Sized in bytes, not frames,
    /// so that an application busy for a while (a controller's long store write) keeps draining
    /// the socket while news is small, and a few large frames still bound memory.
    pub inbound_bytes: usize,
}

/// What a received frame counts against [`ClientOptions::inbound_bytes`] beyond its payload
/// (the decoded message, the event).
pub const INBOUND_FRAME_OVERHEAD: usize = 256;

/// The default [`ClientOptions::inbound_bytes`].
pub const DEFAULT_INBOUND_BYTES: usize = 16 << 20;

impl ClientOptions {
    /// Defaults for a client of a scheduler.
    pub fn new(targets: Vec<String>, tls: Arc<rustls::ClientConfig>, role: Role, uuid: Uuid) -> Self {
        Self {
            targets,
            tls,
            role,
            uuid,
            hostname: None,
            term: None,
            server_role: Role::SCHEDULER,
            max_payload: DEFAULT_MAX_PAYLOAD,
            handshake_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            outbound_queue: 1024,
            inbound_bytes: DEFAULT_INBOUND_BYTES,
        }
    }
}

type Reader = FrameReader<ReadHalf<TlsStream<TcpStream>>>;
type Writer = FrameWriter<WriteHalf<TlsStream<TcpStream>>>;

/// An established, handshaken connection to a server.
#[derive(Debug)]
pub struct Connection {
    /// The target that answered.
    pub target: String,
    /// The server's UUID from CONNECTED.
    pub server_uuid: Uuid,
    /// The server's role from CONNECTED.
    pub server_role: Role,
    /// Cluster configuration from CONNECTED.
    pub config: ClusterConfig,
    uuid: Uuid,
    reader: Reader,
    writer: Writer,
}

impl Connection {
    /// Dials `target`, does TLS and the CONNECT → CONNECTED exchange.
    ///
    /// # Errors
    /// Network and TLS errors (a rejected client certificate shows up as [`Error::Io`]),
    /// [`Error::Rejected`] when the server answered with an ERROR, [`Error::RoleMismatch`] or
    /// [`Error::CertRole`] when the server is not who it should be, [`Error::Timeout`].
    pub async fn connect(opts: &ClientOptions, target: &str) -> Result<Self> {
        tokio::time::timeout(opts.handshake_timeout, Self::connect_inner(opts, target))
            .await
            .map_err(|_| Error::Timeout("waiting for CONNECTED"))?
    }

    async fn connect_inner(opts: &ClientOptions, target: &str) -> Result<Self> {
        let name = server_name_for(target).map_err(Error::Protocol)?;
        let tcp = TcpStream::connect(target).await?;
        let _ = tcp.set_nodelay(true);
        crate::conn::detect_dead_peers(&tcp);
        let tls = TlsConnector::from(opts.tls.clone()).connect(name, tcp).await?;
        let certified = match tls.get_ref().1.peer_certificates() {
            Some([leaf, ..]) => roles_from_cert_der(leaf),
            _ => Err(crate::role::CertRoleError::NoRole),
        };
        let (r, w) = tokio::io::split(tls);
        let mut reader = FrameReader::new(r, opts.max_payload);
        let mut writer = FrameWriter::new(w);

        // A server without the expected role is told so (ciao sent ConnectionFailure) and left.
        let certified = match certified {
            Ok(role) if role.contains(opts.server_role) => role,
            Ok(role) => {
                return Err(refuse(
                    &mut writer,
                    opts.uuid,
                    Error::RoleMismatch { claimed: opts.server_role, certified: role },
                )
                .await)
            }
            Err(e) => return Err(refuse(&mut writer, opts.uuid, e.into()).await),
        };

        let connect = crate::handshake::connect(opts.role, opts.uuid, opts.hostname.clone(), opts.term);
        writer.write_message(opts.uuid, &connect).await?;
        let reply = reader.expect_frame().await?;
        match crate::handshake::connected(&reply, certified, opts.server_role) {
            Ok(c) => Ok(Self {
                target: target.to_owned(),
                server_uuid: c.uuid,
                server_role: c.role,
                config: c.config,
                uuid: opts.uuid,
                reader,
                writer,
            }),
            // Told so (ciao sent ConnectionFailure) and left.
            Err(e @ Error::RoleMismatch { .. }) => Err(refuse(&mut writer, opts.uuid, e).await),
            Err(e) => Err(e),
        }
    }

    /// Sends one message (the header origin is the client's UUID).
    ///
    /// # Errors
    /// IO errors.
    pub async fn send(&mut self, message: &Message) -> Result<()> {
        self.writer.write_message(self.uuid, message).await
    }

    /// Sends one prepared frame.
    ///
    /// # Errors
    /// IO errors.
    pub async fn send_frame(&mut self, frame: &Frame) -> Result<()> {
        self.writer.write_frame(frame).await
    }

    /// Sends several prepared frames in one write (bulk senders, benchmarks).
    ///
    /// # Errors
    /// IO errors.
    pub async fn send_batch(&mut self, frames: &[Frame]) -> Result<()> {
        for frame in frames {
            self.writer.queue(frame);
        }
        self.writer.flush().await
    }

    /// The next frame and its decoded payload; `Ok(None)` when the server closed.
    ///
    /// # Errors
    /// IO errors and frames or payloads that do not decode.
    pub async fn recv(&mut self) -> Result<Option<(Frame, Message)>> {
        let Some(frame) = self.reader.read_frame().await? else { return Ok(None) };
        let message = Message::decode(&frame)?;
        Ok(Some((frame, message)))
    }

    /// Closes the connection (TLS close_notify).
    ///
    /// # Errors
    /// IO errors.
    pub async fn close(mut self) -> Result<()> {
        self.writer.shutdown().await
    }
}

/// Tells a server that is not who it should be why we leave (ciao sent ConnectionFailure), and
/// closes.
async fn refuse(writer: &mut Writer, uuid: Uuid, e: Error) -> Error {
    let reply = Message::ConnectionAborted(ErrorReport { reason: e.to_string() });
    let _ = writer.write_message(uuid, &reply).await;
    let _ = writer.shutdown().await;
    e
}

pub use crate::handshake::error_reason;

/// What a reconnecting [`Client`] tells the application.
#[derive(Debug)]
// Events move once through a channel; boxing the decoded message would cost an allocation per
// received frame on the hot path, more than moving a few hundred bytes.
#[allow(clippy::large_enum_variant)]
pub enum ClientEvent {
    /// Connected (again); the application re-announces its state (a launcher sends READY).
    Connected {
        /// The target that answered.
        target: String,
        /// The server's UUID.
        server_uuid: Uuid,
        /// Cluster configuration.
        config: ClusterConfig,
        /// This connection's number (1, 2, …), for [`ClientHandle::try_send_in`]: the client
        /// reconnects on its own task, so the application may still be handling frames of the
        /// previous connection when the next one is up.
        session: u64,
    },
    /// A frame from the server.
    Message {
        /// The raw frame.
        frame: Frame,
        /// Its decoded payload.
        message: Message,
    },
    /// The connection ended; the client is retrying.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// A connection attempt failed (the client keeps retrying; a permanent refusal such as a
    /// wrong role is worth an operator's attention).
    ConnectFailed {
        /// The target.
        target: String,
        /// Why.
        reason: String,
        /// Whether retrying unchanged is unlikely to help.
        permanent: bool,
    },
}

/// A connection's number (1, 2, … per client) and its outbound queue.
type Session = (u64, mpsc::Sender<Frame>);

/// Sends frames through a reconnecting client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ClientHandle {
    uuid: Uuid,
    /// The current connection's number and queue.
    session: Arc<Mutex<Option<Session>>>,
    stop: CancellationToken,
}

impl ClientHandle {
    /// The client's UUID.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// Whether a session is up right now.
    pub fn is_connected(&self) -> bool {
        self.session.lock().expect("session lock").is_some()
    }

    /// Queues a message for the current session without waiting.
    ///
    /// # Errors
    /// [`Error::Send`] when not connected or the queue is full. Nothing is kept for a later
    /// session: after a reconnect the application re-sends what matters (its state), so stale
    /// commands are never replayed.
    pub fn try_send(&self, message: &Message) -> Result<()> {
        let guard = self.session.lock().expect("session lock");
        let (_, tx) = guard.as_ref().ok_or(Error::Send("not connected"))?;
        Self::queue(tx, message.to_frame(self.uuid))
    }

    /// As [`ClientHandle::try_send`], but only on connection number `session` (from its
    /// [`ClientEvent::Connected`]): a message that describes what the application knew on that
    /// connection is not sent on a later one.
    ///
    /// # Errors
    /// [`Error::Send`] when that connection is gone or its queue is full.
    pub fn try_send_in(&self, session: u64, message: &Message) -> Result<()> {
        let guard = self.session.lock().expect("session lock");
        match guard.as_ref() {
            Some((current, tx)) if *current == session => Self::queue(tx, message.to_frame(self.uuid)),
            _ => Err(Error::Send("that connection is gone")),
        }
    }

    /// As [`ClientHandle::try_send_in`], waiting for room in that connection's queue.
    ///
    /// # Errors
    /// [`Error::Send`] when that connection is gone.
    pub async fn send_in(&self, session: u64, message: &Message) -> Result<()> {
        let tx = match self.session.lock().expect("session lock").as_ref() {
            Some((current, tx)) if *current == session => tx.clone(),
            _ => return Err(Error::Send("that connection is gone")),
        };
        tx.send(message.to_frame(self.uuid)).await.map_err(|_| Error::Send("that connection is gone"))
    }

    fn queue(tx: &mpsc::Sender<Frame>, frame: Frame) -> Result<()> {
        tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Send("outbound queue full"),
            mpsc::error::TrySendError::Closed(_) => Error::Send("not connected"),
        })
    }

    /// Queues a message, waiting for room in the current session's queue.
    ///
    /// # Errors
    /// [`Error::Send`] when not connected.
    pub async fn send(&self, message: &Message) -> Result<()> {
        let (_, tx) = self.session.lock().expect("session lock").clone().ok_or(Error::Send("not connected"))?;
        tx.send(message.to_frame(self.uuid)).await.map_err(|_| Error::Send("not connected"))
    }

    /// Stops the client: the session is closed and no reconnect is tried.
    pub fn close(&self) {
        self.stop.cancel();
    }
}

/// A client that stays connected.
#[derive(Debug)]
pub struct Client;

impl Client {
    /// Starts connecting in the background. Events arrive on the returned receiver; the client
    /// stops when [`ClientHandle::close`] is called or the receiver is dropped.
    pub fn spawn(opts: ClientOptions) -> (ClientHandle, ClientEvents) {
        let budget = opts.inbound_bytes.clamp(1, Semaphore::MAX_PERMITS);
        let bytes = Arc::new(Semaphore::new(budget));
        let (tx, rx) = mpsc::unbounded_channel();
        let events = EventSender { tx, bytes: bytes.clone(), budget };
        let handle =
            ClientHandle { uuid: opts.uuid, session: Arc::new(Mutex::new(None)), stop: CancellationToken::new() };
        tokio::spawn(run(opts, handle.clone(), events));
        (handle, ClientEvents { rx, bytes })
    }
}

/// The events of a [`Client`], in order; at most [`ClientOptions::inbound_bytes`] of received
/// frames wait here (overflow policy: the client stops reading the socket until the application
/// takes some, and the server's own write timeout decides what happens to a peer that stays
/// behind).
#[derive(Debug)]
pub struct ClientEvents {
    rx: mpsc::UnboundedReceiver<(ClientEvent, u32)>,
    bytes: Arc<Semaphore>,
}

impl ClientEvents {
    /// The next event; `None` once the client has stopped.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        let (event, cost) = self.rx.recv().await?;
        self.bytes.add_permits(cost as usize);
        Some(event)
    }

    /// The next event if one is waiting.
    ///
    /// # Errors
    /// None waiting, or the client has stopped.
    pub fn try_recv(&mut self) -> std::result::Result<ClientEvent, mpsc::error::TryRecvError> {
        let (event, cost) = self.rx.try_recv()?;
        self.bytes.add_permits(cost as usize);
        Ok(event)
    }
}

impl Drop for ClientEvents {
    fn drop(&mut self) {
        // A client waiting for room learns that no one will make any.
        self.bytes.close();
    }
}

/// The client's side of [`ClientEvents`].
#[derive(Debug)]
struct EventSender {
    tx: mpsc::UnboundedSender<(ClientEvent, u32)>,
    bytes: Arc<Semaphore>,
    budget: usize,
}

impl EventSender {
    /// Queues an event once its bytes fit; `Err` when the application has gone.
    async fn send(&self, event: ClientEvent) -> std::result::Result<(), ()> {
        let size = match &event {
            ClientEvent::Message { frame, .. } => frame.payload.len() + INBOUND_FRAME_OVERHEAD,
            _ => INBOUND_FRAME_OVERHEAD,
        };
        // A frame larger than the whole budget waits for an empty queue.
        let cost = u32::try_from(size.min(self.budget)).unwrap_or(u32::MAX);
        let permit = self.bytes.acquire_many(cost).await.map_err(|_| ())?;
        permit.forget();
        self.tx.send((event, cost)).map_err(|_| ())
    }
}

async fn run(opts: ClientOptions, handle: ClientHandle, events: EventSender) {
    let stop = handle.stop.clone();
    let mut attempt: u32 = 0;
    let mut sessions: u64 = 0;
    'outer: while !stop.is_cancelled() {
        for target in &opts.targets {
            let connected = tokio::select! {
                c = Connection::connect(&opts, target) => c,
                () = stop.cancelled() => break 'outer,
            };
            match connected {
                Ok(conn) => {
                    attempt = 0;
                    sessions += 1;
                    let reason = session(conn, sessions, &handle, &events, &opts).await;
                    if events.send(ClientEvent::Disconnected { reason }).await.is_err() {
                        break 'outer;
                    }
                    // Reconnect at once; back off only when dialling fails.
                    continue 'outer;
                }
                Err(e) => {
                    tracing::debug!(%target, error = %e, "connect failed");
                    let event = ClientEvent::ConnectFailed {
                        target: target.clone(),
                        reason: e.to_string(),
                        permanent: e.is_permanent(),
                    };
                    if events.send(event).await.is_err() {
                        break 'outer;
                    }
                }
            }
        }
        let delay = opts.backoff.delay(attempt, rand::random::<f64>());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => break,
        }
    }
    *handle.session.lock().expect("session lock") = None;
}

/// Runs one connected session; returns why it ended.
async fn session(
    conn: Connection,
    number: u64,
    handle: &ClientHandle,
    events: &EventSender,
    opts: &ClientOptions,
) -> String {
    let Connection { target, server_uuid, config, mut reader, writer, .. } = conn;
    let (tx, rx) = mpsc::channel(opts.outbound_queue);
    *handle.session.lock().expect("session lock") = Some((number, tx));
    let session_end = CancellationToken::new();
    let writer_task = tokio::spawn(client_write_loop(writer, rx, session_end.clone(), handle.stop.clone()));

    let reason = if events.send(ClientEvent::Connected { target, server_uuid, config, session: number }).await.is_err()
    {
        "application stopped".to_owned()
    } else {
        loop {
            let next = tokio::select! {
                next = reader.read_frame() => next,
                () = handle.stop.cancelled() => break "client closed".to_owned(),
                () = session_end.cancelled() => break "write failed".to_owned(),
            };
            let (frame, message) = match next {
                Ok(Some(frame)) => match Message::decode(&frame) {
                    Ok(message) => (frame, message),
                    Err(e) => break format!("server sent a bad payload: {e}"),
                },
                Ok(None) => break "server closed the connection".to_owned(),
                Err(e) => break e.to_string(),
            };
            if events.send(ClientEvent::Message { frame, message }).await.is_err() {
                break "application stopped".to_owned();
            }
        }
    };
    *handle.session.lock().expect("session lock") = None;
    session_end.cancel();
    let _ = writer_task.await;
    reason
}

/// The session's writer: [`crate::conn::write_loop`] until the session ends or the client
/// stops; a failed or stuck write (the server stopped reading) ends the session, and the client
/// reconnects.
async fn client_write_loop(
    writer: Writer,
    rx: mpsc::Receiver<Frame>,
    session_end: CancellationToken,
    stop: CancellationToken,
) {
    let until = {
        let (session_end, stop) = (session_end.clone(), stop);
        async move {
            tokio::select! {
                () = session_end.cancelled() => {}
                () = stop.cancelled() => {}
            }
        }
    };
    if let Err(e) = crate::conn::write_loop(writer, rx, until).await {
        tracing::debug!(error = %e, "write to the server failed");
        session_end.cancel();
    }
}

/// Whether a frame is the server's CONNECTED (useful to raw peers in tests).
pub fn is_connected_frame(frame: &Frame) -> bool {
    frame.kind == Kind::Status(Status::Connected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(5) };
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(800));
        assert_eq!(b.delay(30, 1.0), Duration::from_secs(5));
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_millis(2500));
    }
}
