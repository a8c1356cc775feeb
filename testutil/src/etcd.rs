//! Real etcd members for tests: each a child process on loopback ports with its data in a
//! temporary directory of its own (nothing outside it is touched), stopped and removed when
//! dropped, pass or fail.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a member may take to answer `/health` after it starts.
const START_PATIENCE: Duration = Duration::from_secs(20);

/// An etcd cluster of one or more members on 127.0.0.1.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    /// Client URLs over TLS: the members' certificate and key, and the CA clients check it with.
    tls: Option<ServerTls>,
}

/// A member's TLS server certificate (it must name 127.0.0.1) and the CA that signed it.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
}

#[derive(Debug)]
struct Member {
    name: String,
    client: String,
    peer: String,
    child: Option<Child>,
    extra: Vec<String>,
}

/// The etcd binary, if this machine has one (`etcd-server` on Debian).
pub fn etcd_binary() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"].iter().map(PathBuf::from).find(|p| p.exists())
}

impl EtcdCluster {
    /// Starts `members` members (1 or 3) with `extra` flags each, and waits until every one is
    /// healthy. `None` (the test is skipped: see [`crate::skip`]) when etcd is not installed.
    ///
    /// # Panics
    /// When a member does not come up.
    pub fn start(test: &str, members: usize, extra: &[&str]) -> Option<Self> {
        Self::start_with(test, members, extra, None)
    }

    /// As [`EtcdCluster::start`], with client URLs over TLS when `tls` is given.
    ///
    /// # Panics
    /// When a member does not come up.
    pub fn start_with(test: &str, members: usize, extra: &[&str], tls: Option<ServerTls>) -> Option<Self> {
        if etcd_binary().is_none() {
            crate::skip("etcd", test, "no etcd binary (apt-get install etcd-server)");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = || crate::process::free_port().expect("a free port");
        let members: Vec<Member> = (0..members)
            .map(|i| Member {
                name: format!("m{i}"),
                client: format!("127.0.0.1:{}", port()),
                peer: format!("127.0.0.1:{}", port()),
                child: None,
                extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            })
            .collect();
        let mut cluster = Self { members, dir, tls };
        for i in 0..cluster.members.len() {
            cluster.spawn(i, "new");
        }
        for i in 0..cluster.members.len() {
            cluster.wait_healthy(i);
        }
        Some(cluster)
    }

    /// `host:port` of every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// The member that is raft's leader now, if one answers (`POST /v3/maintenance/status`).
    pub fn leader(&self) -> Option<usize> {
        let status = |addr: &str| -> Option<serde_json::Value> {
            let mut tcp = std::net::TcpStream::connect(addr).ok()?;
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
            let request = format!(
                "POST /v3/maintenance/status HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
            );
            tcp.write_all(request.as_bytes()).ok()?;
            let mut answer = String::new();
            let _ = tcp.read_to_string(&mut answer);
            serde_json::from_str(answer.split("\r\n\r\n").nth(1)?).ok()
        };
        let (i, s) = self.members.iter().enumerate().find_map(|(i, m)| Some((i, status(&m.client)?)))?;
        let leader = s["leader"].as_str()?.to_owned();
        if s["header"]["member_id"].as_str() == Some(leader.as_str()) {
            return Some(i);
        }
        self.members
            .iter()
            .position(|m| status(&m.client).is_some_and(|s| s["header"]["member_id"].as_str() == Some(leader.as_str())))
    }

    /// Kills member `i` (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data (after [`EtcdCluster::kill`]) and waits until healthy.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, "existing");
        self.wait_healthy(i);
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let initial: Vec<String> = self.members.iter().map(|m| format!("{}=http://{}", m.name, m.peer)).collect();
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let tls_args: Vec<String> = self
            .tls
            .iter()
            .flat_map(|t| {
                [
                    "--cert-file".to_owned(),
                    t.cert.display().to_string(),
                    "--key-file".to_owned(),
                    t.key.display().to_string(),
                ]
            })
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .expect("an etcd log file");
        let child = Command::new(etcd_binary().expect("checked at start"))
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &format!("{scheme}://{}", m.client)])
            .args(["--advertise-client-urls", &format!("{scheme}://{}", m.client)])
            .args(&tls_args)
            .args(["--listen-peer-urls", &format!("http://{}", m.peer)])
            .args(["--initial-advertise-peer-urls", &format!("http://{}", m.peer)])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "drover-test"])
            .args(&m.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.members[i].child = Some(child);
    }

    fn wait_healthy(&mut self, i: usize) {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            if health(&self.members[i].client, self.tls.as_ref()) {
                return;
            }
            if let Some(status) = self.members[i].child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("etcd member {i} exited ({status}):\n{}", self.log(i));
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {i} not healthy within {START_PATIENCE:?}:\n{}",
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of member `i`'s log.
    pub fn log(&self, i: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.members[i].name))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Whether the member at `addr` says it is healthy (`GET /health`, over TLS with `tls`).
fn health(addr: &str, tls: Option<&ServerTls>) -> bool {
    let Ok(mut tcp) = std::net::TcpStream::connect(addr) else { return false };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut answer = String::new();
    match tls {
        None => {
            if tcp.write_all(request.as_bytes()).is_err() {
                return false;
            }
            let _ = tcp.read_to_string(&mut answer);
        }
        Some(t) => {
            let Ok(cas) = ssntp::tls::load_certs(&t.ca) else { return false };
            let mut roots = rustls::RootCertStore::empty();
            for ca in cas {
                let _ = roots.add(ca);
            }
            let Ok(builder) = rustls::ClientConfig::builder_with_provider(ssntp::tls::provider())
                .with_safe_default_protocol_versions()
            else {
                return false;
            };
            let config = std::sync::Arc::new(builder.with_root_certificates(roots).with_no_client_auth());
            let Ok(name) = rustls_pki_types::ServerName::try_from("127.0.0.1") else { return false };
            let Ok(conn) = rustls::ClientConnection::new(config, name) else { return false };
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            if stream.write_all(request.as_bytes()).is_err() {
                return false;
            }
            let _ = stream.read_to_string(&mut answer);
        }
    }
    answer.contains("\"health\":\"true\"")
}
