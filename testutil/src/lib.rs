//! Test support for Drover. A dev-dependency only.
//!
//! # Layout
//! - [`Pki`]: an ephemeral CA with one certificate per role, minted through `drover-cert`'s
//!   library (the same code operators run), plus helpers for deliberately bad certificates.
//! - [`RawPeer`]: a TLS connection that sends arbitrary bytes or frames and expects frames with
//!   timeouts — for handshake, hostile-input and protocol tests.
//! - [`TestServer`]: an SSNTP server on `127.0.0.1:0` whose events the test reads.
//! - [`poll`], [`eventually`], [`assert_eventually!`] and [`wait_for`]: wait for a condition
//!   or a value with a deadline (one loop).
//! - [`agents`]: fake launchers (many to a process, each its own mutual-TLS connection) and a
//!   controller-role load generator, for benchmarks and scale tests.
//! - [`etcd`]: real etcd members on loopback ports, each in a temporary directory.
//! - [`netlab`]: hosts as network namespaces on a bridge, for multi-host tests and partitions.
//! - [`systemd`]: a real systemd as PID 1 of namespaces of its own, fenced off from the host.
//! - [`vm`]: a tiny multiboot guest, built with the node's assembler, for the `vm` backend.
//! - [`jar`]: a small JAR, compiled with the node's JDK, for the `artifact` backend.
//! - [`executor`]: a launcher executor that runs nothing and records what it was asked.
//! - [`process`]: daemons as child processes: free ports, sibling binaries, CPU and peak RSS
//!   from `/proc`, the scheduler's `/metrics`.
//! - [`metrics`]: a scrape checked against `docs/metrics.md` (nothing missing, nothing unlisted).
//! - [`init_tracing`]: log output for a failing test (`RUST_LOG=debug`).
//! - [`skip`]: a test that cannot run here says so, and fails where the feature is known to
//!   exist (`DROVER_REQUIRE`, set by `.ci/run`).

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock
#![forbid(unsafe_code)]

pub mod agents;
pub mod etcd;
pub mod executor;
pub mod jar;
pub mod metrics;
pub mod netlab;
pub mod process;
pub mod systemd;
pub mod vm;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use drover_cert::{CertSpec, IssueRequest};
use ssntp::conn::FrameReader;
use ssntp::payload::{ClusterConfig, Connect, Message};
use ssntp::server::{Server, ServerEvent, ServerOptions};
use ssntp::tls::{Identity, TlsPaths};
use ssntp::{Frame, Role, Uuid};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::client::TlsStream;

/// A test that cannot run because `feature` is missing here (`why` says what was looked for).
/// Where the machine is known to have the feature — `DROVER_REQUIRE` names it (comma-separated;
/// `.ci/run` sets it from what it probed: `root`, `cgroup-memory`, `cpuset`, `oci`, `netns`, `etcd`, `systemd`, `qemu` …) — a skip
/// would hide a failure, so this panics. Otherwise it prints `SKIPPED`, and appends a line to
/// the file `DROVER_SKIP_LOG` names (if any) for the run's summary.
///
/// # Panics
/// When `feature` is required here.
pub fn skip(feature: &str, test: &str, why: &str) {
    let required = std::env::var("DROVER_REQUIRE").unwrap_or_default();
    assert!(
        !required.split(',').any(|f| f.trim() == feature),
        "{test} needs {feature}, which DROVER_REQUIRE says this machine has, but: {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
    if let Ok(path) = std::env::var("DROVER_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut log) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(log, "{test} ({feature}): {why}");
        }
    }
}

/// A READY node's STATS with these CPUs and memory (all of it available), no instances and
/// no digest page: the base of a test's reports.
pub fn ready_stats(node_uuid: Uuid, cpus_online: u32, mem_mb: u64) -> ssntp::payload::Stats {
    ssntp::payload::Stats {
        node_uuid,
        status: ssntp::payload::NodeState::Ready,
        mem_total_mb: mem_mb,
        mem_available_mb: mem_mb,
        disk_total_mb: 0,
        disk_available_mb: 0,
        load: 0.0,
        cpus_online,
        hostname: "n".into(),
        networks: Vec::new(),
        instances: Vec::new(),
        digest: None,
    }
}

/// Whether this process runs as root (tests of switching users need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// How long helpers wait by default. Generous: CI machines are slow and shared.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Sets up `tracing` output once per test process (honours `RUST_LOG`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An ephemeral CA in a temporary directory with a certificate for every role.
///
/// Stems of the issued files: `scheduler` (SANs `localhost`, `127.0.0.1`), `controller`,
/// `agent`, `netagent`, `cnciagent`, `server`.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Mints the CA and the role certificates.
    ///
    /// # Panics
    /// If minting fails (a broken test environment).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        drover_cert::create_ca(dir.path(), "Test CA", 2).expect("create CA");
        let pki = Self { dir };
        for (role, hosts) in [
            (Role::SCHEDULER, vec!["localhost".to_owned(), "127.0.0.1".to_owned()]),
            (Role::CONTROLLER, vec![]),
            (Role::AGENT, vec![]),
            (Role::NETAGENT, vec![]),
            (Role::CNCIAGENT, vec![]),
            (Role::SERVER, vec!["localhost".to_owned()]),
        ] {
            // Shared by many test peers, each with its own UUID: certificates without an
            // identity, as minted before identities (see `issue_named` for ones with).
            let req = IssueRequest { role, name: "test".into(), hosts, ips: vec![], orgs: vec![], days: 2, uuid: None };
            let mut spec = CertSpec::from_request(&req).expect("spec");
            spec.identity = None;
            pki.issue(&spec, &role.to_string());
        }
        pki
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate file.
    pub fn ca(&self) -> PathBuf {
        self.dir().join(drover_cert::CA_CERT)
    }

    /// The CRL file.
    pub fn crl(&self) -> PathBuf {
        self.dir().join(drover_cert::CRL)
    }

    /// Certificate file of a stem.
    pub fn cert(&self, stem: &str) -> PathBuf {
        self.dir().join(format!("{stem}.pem"))
    }

    /// Key file of a stem.
    pub fn key(&self, stem: &str) -> PathBuf {
        self.dir().join(format!("{stem}-key.pem"))
    }

    /// Paths for a stem, with or without the CRL.
    pub fn paths(&self, stem: &str, with_crl: bool) -> TlsPaths {
        TlsPaths { ca: self.ca(), cert: self.cert(stem), key: Some(self.key(stem)), crl: with_crl.then(|| self.crl()) }
    }

    /// Loaded identity of a stem.
    ///
    /// # Panics
    /// If the files do not load.
    pub fn identity(&self, stem: &str) -> Identity {
        Identity::load(&self.paths(stem, false)).expect("load identity")
    }

    /// Client TLS configuration for a stem.
    ///
    /// # Panics
    /// If the files do not load.
    pub fn client_tls(&self, stem: &str) -> Arc<rustls::ClientConfig> {
        ssntp::tls::client_config(&self.identity(stem)).expect("client config")
    }

    /// Client TLS configuration for a stem whose certificate [`Identity::load`] would refuse
    /// (one with no SSNTP role), built without that check, to test servers against it.
    ///
    /// # Panics
    /// If the files do not load.
    pub fn client_tls_unchecked(&self, stem: &str) -> Arc<rustls::ClientConfig> {
        let ca = ssntp::tls::load_certs(&self.ca()).expect("load CA");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca[0].clone()).expect("CA certificate");
        let config = rustls::ClientConfig::builder_with_provider(ssntp::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_client_auth_cert(
                ssntp::tls::load_certs(&self.cert(stem)).expect("load certificate"),
                ssntp::tls::load_key(&self.key(stem)).expect("load key"),
            )
            .expect("client config");
        Arc::new(config)
    }

    /// Server TLS configuration for a stem, checking this CA's CRL.
    ///
    /// # Panics
    /// If the files do not load.
    pub fn server_tls(&self, stem: &str) -> Arc<rustls::ServerConfig> {
        let id = Identity::load(&self.paths(stem, true)).expect("load identity");
        ssntp::tls::server_config(&id).expect("server config")
    }

    /// A spec valid for one day with `clientAuth` and the given roles; tests change fields to
    /// make bad certificates.
    pub fn spec(roles: &[Role]) -> CertSpec {
        let now = time::OffsetDateTime::now_utc();
        CertSpec {
            name: "special".into(),
            roles: roles.to_vec(),
            client_auth: true,
            server_auth: false,
            any_eku: false,
            dns: vec![],
            ips: vec![],
            orgs: vec![],
            identity: None,
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(1),
        }
    }

    /// Issues a certificate from `spec` under `stem`.
    ///
    /// # Panics
    /// If minting fails.
    pub fn issue(&self, spec: &CertSpec, stem: &str) {
        drover_cert::issue_spec(self.dir(), spec, stem).expect("issue spec");
    }

    /// Issues a certificate the way an operator does (`drover-cert issue --role R --name N`,
    /// `--host` for names and `--ip` for addresses among `hosts`), with `orgs` as its tenants (a client's is issued to a new UUID: see
    /// [`Pki::certified_uuid`]); returns its stem, `<role>-<name>`.
    ///
    /// # Panics
    /// If minting fails.
    pub fn issue_named(&self, role: Role, name: &str, hosts: &[&str], orgs: &[&str]) -> String {
        let req = IssueRequest {
            role,
            name: name.into(),
            // An address among the hosts goes in as an IP SAN, as `drover-cert --ip` does.
            hosts: hosts.iter().filter(|h| h.parse::<std::net::IpAddr>().is_err()).map(|h| (*h).to_owned()).collect(),
            ips: hosts.iter().filter_map(|h| h.parse().ok()).collect(),
            orgs: orgs.iter().map(|o| (*o).to_owned()).collect(),
            days: 2,
            uuid: None,
        };
        let issued = drover_cert::issue(self.dir(), &req).expect("issue");
        let file = issued.cert.file_name().and_then(|f| f.to_str()).expect("a certificate file name");
        file.strip_suffix(".pem").expect("a .pem file").to_owned()
    }

    /// The UUID the certificate of `stem` was issued to, if it names one.
    ///
    /// # Panics
    /// If the certificate does not load.
    pub fn certified_uuid(&self, stem: &str) -> Option<ssntp::Uuid> {
        let certs = ssntp::tls::load_certs(&self.cert(stem)).expect("load certificate");
        ssntp::role::identity_from_cert_der(&certs[0]).expect("a readable identity")
    }

    /// Revokes the certificate of `stem` (servers built afterwards refuse it).
    ///
    /// # Panics
    /// If revoking fails.
    pub fn revoke(&self, stem: &str) {
        drover_cert::revoke(self.dir(), &self.cert(stem)).expect("revoke");
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// Waits until `check` returns true, polling every 10 ms, for at most `timeout`.
/// Returns whether it became true.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(timeout, Duration::from_millis(10), || {
        let ready = check();
        async move { ready.await.then_some(()) }
    })
    .await
    .is_some()
}

/// Polls `check` every `every` until it gives a value, for at most `timeout`. The one waiting
/// loop of the tests: [`eventually`], [`assert_eventually!`] and [`wait_for`] are built on it.
pub async fn poll<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `check` every 100 ms until it gives a value; panics naming `what` after `timeout`.
/// For waits on whole clusters of processes, where each look costs an API call.
///
/// # Panics
/// When the time is up.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll(timeout, Duration::from_millis(100), check).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Asserts that an async condition becomes true within a timeout (default [`PATIENCE`]).
///
/// ```ignore
/// assert_eventually!(|| async { counter.load(SeqCst) == 3 });
/// assert_eventually!(Duration::from_secs(2), || async { ready() }, "node never became ready");
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($check:expr) => {
        assert!($crate::eventually($crate::PATIENCE, $check).await, "condition not met within {:?}", $crate::PATIENCE)
    };
    ($timeout:expr, $check:expr $(, $($msg:tt)+)?) => {
        assert!($crate::eventually($timeout, $check).await $(, $($msg)+)?)
    };
}

/// A raw TLS connection to an SSNTP server, for tests that need to misbehave.
#[derive(Debug)]
pub struct RawPeer {
    reader: FrameReader<ReadHalf<TlsStream<TcpStream>>>,
    writer: WriteHalf<TlsStream<TcpStream>>,
    /// The UUID this peer uses as origin.
    pub uuid: Uuid,
}

impl RawPeer {
    /// Connects with TLS only (no SSNTP handshake). A server that refuses the certificate may
    /// still let this succeed (TLS 1.3); the refusal shows on the first read.
    ///
    /// # Errors
    /// TCP or TLS errors.
    pub async fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("valid name");
        let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
        let (r, w) = tokio::io::split(stream);
        Ok(Self { reader: FrameReader::new(r, 64 * 1024 * 1024), writer: w, uuid: Uuid::new_v4() })
    }

    /// Connects and does the handshake claiming `role`. Returns the peer and the server's
    /// first answer (CONNECTED or an ERROR), or the IO error seen instead.
    ///
    /// # Errors
    /// TCP/TLS errors, or an error reading the answer (a TLS alert for a refused certificate).
    pub async fn connect_as(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        role: Role,
    ) -> Result<(Self, Frame, Message), ssntp::Error> {
        Self::connect_claiming(addr, tls, role, None).await
    }

    /// [`RawPeer::connect_as`], claiming `uuid` (another peer's, say) instead of a new one.
    ///
    /// # Errors
    /// As [`RawPeer::connect_as`].
    pub async fn connect_claiming(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        role: Role,
        uuid: Option<Uuid>,
    ) -> Result<(Self, Frame, Message), ssntp::Error> {
        let mut peer = Self::connect(addr, tls).await?;
        if let Some(uuid) = uuid {
            peer.uuid = uuid;
        }
        peer.send_message(&Message::Connect(Connect {
            role,
            uuid: peer.uuid,
            hostname: None,
            version: None,
            term: None,
        }))
        .await?;
        let (frame, message) = peer.expect(PATIENCE).await?;
        Ok((peer, frame, message))
    }

    /// Writes raw bytes.
    ///
    /// # Errors
    /// IO errors.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await?;
        self.writer.flush().await
    }

    /// Writes a frame.
    ///
    /// # Errors
    /// IO errors.
    pub async fn send_frame(&mut self, frame: &Frame) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        self.send_bytes(&buf).await
    }

    /// Writes a message from this peer's UUID.
    ///
    /// # Errors
    /// IO errors.
    pub async fn send_message(&mut self, message: &Message) -> std::io::Result<()> {
        self.send_frame(&message.to_frame(self.uuid)).await
    }

    /// The next frame and its payload, within `timeout`.
    ///
    /// # Errors
    /// Timeout, IO errors, a clean close ([`ssntp::Error::Closed`]), undecodable input.
    pub async fn expect(&mut self, timeout: Duration) -> Result<(Frame, Message), ssntp::Error> {
        let frame = tokio::time::timeout(timeout, self.reader.expect_frame())
            .await
            .map_err(|_| ssntp::Error::Timeout("waiting for a frame"))??;
        let message = Message::decode(&frame)?;
        Ok((frame, message))
    }

    /// Reads until the server closes the connection; returns the frames seen on the way.
    /// Fails if the connection stays open past `timeout`.
    ///
    /// # Errors
    /// Timeout.
    pub async fn until_closed(&mut self, timeout: Duration) -> Result<Vec<Frame>, ssntp::Error> {
        let mut frames = Vec::new();
        let read_all = async {
            loop {
                match self.reader.read_frame().await {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) | Err(_) => return,
                }
            }
        };
        tokio::time::timeout(timeout, read_all).await.map_err(|_| ssntp::Error::Timeout("waiting for close"))?;
        Ok(frames)
    }
}

/// An SSNTP server on `127.0.0.1:0`, run by the scheduler certificate of a [`Pki`].
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it reports.
    pub events: mpsc::Receiver<ServerEvent>,
    /// Its UUID.
    pub uuid: Uuid,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with default options (CRL checked).
    pub async fn start(pki: &Pki) -> Self {
        Self::start_with(pki, "scheduler", |_| {}).await
    }

    /// Starts a server with certificate `stem`, options adjusted by `tune`.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn start_with(pki: &Pki, stem: &str, tune: impl FnOnce(&mut ServerOptions)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_on(listener, pki, stem, tune)
    }

    /// Starts a server on an already bound listener.
    pub fn start_on(listener: TcpListener, pki: &Pki, stem: &str, tune: impl FnOnce(&mut ServerOptions)) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let uuid = Uuid::new_v4();
        let mut opts = ServerOptions::new(uuid);
        opts.handshake_timeout = Duration::from_secs(5);
        tune(&mut opts);
        let (tx, events) = mpsc::channel(4096);
        let config = Arc::new(RwLock::new(ClusterConfig::default()));
        let server = Server::new(pki.server_tls(stem), opts, config, tx);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = server
                .run(listener, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self { addr, events, uuid, stop: Some(stop), task: Some(task) }
    }

    /// The next event, within [`PATIENCE`].
    ///
    /// # Panics
    /// If none arrives.
    pub async fn next_event(&mut self) -> ServerEvent {
        tokio::time::timeout(PATIENCE, self.events.recv())
            .await
            .expect("server event within patience")
            .expect("server running")
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}
