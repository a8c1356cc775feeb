//! The flags that say where etcd is, shared by the daemons that use it, and the steps every
//! one of them takes: connect (retrying), campaign, and start again as a standby after losing.

use std::path::PathBuf;
use std::time::Duration;

use crate::client::{Client, Tls};
use crate::election::{campaign, leader_key, LeaderInfo, Leading, Timing};

/// Where etcd is (flags `--etcd-*`).
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd members, `host:port` (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of this cluster's keys in etcd (one etcd may serve several clusters).
    #[arg(long, default_value = "/drover")]
    pub etcd_prefix: String,
    /// CA of the etcd members' certificates: TLS to etcd.
    #[arg(long)]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate for etcd (members started with `--client-cert-auth`).
    #[arg(long, requires = "etcd_cacert")]
    pub etcd_cert: Option<PathBuf>,
    /// The etcd client certificate's key (default: `<etcd-cert stem>-key.pem`).
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

/// How long one etcd call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl EtcdArgs {
    /// Whether any member was named.
    pub fn given(&self) -> bool {
        !self.etcd_endpoints.is_empty()
    }

    /// The TLS material, read from the files.
    ///
    /// # Errors
    /// A file cannot be read.
    pub fn tls(&self) -> std::io::Result<Option<Tls>> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| std::io::Error::new(e.kind(), format!("reading {}: {e}", p.display())))
        };
        let Some(ca) = &self.etcd_cacert else { return Ok(None) };
        let identity = match &self.etcd_cert {
            None => None,
            Some(cert) => {
                let key = self.etcd_key.clone().unwrap_or_else(|| ssntp::tls::default_key_for(cert));
                Some((read(cert)?, read(&key)?))
            }
        };
        Ok(Some(Tls { ca_pem: read(ca)?, identity }))
    }

    /// Checks the flags.
    ///
    /// # Errors
    /// A prefix that is not `/name`, unreadable TLS files.
    pub fn check(&self) -> Result<Option<Tls>, String> {
        if !self.etcd_prefix.starts_with('/') || self.etcd_prefix.ends_with('/') {
            return Err(format!(
                "--etcd-prefix {:?} must start with / and not end with one (e.g. /drover)",
                self.etcd_prefix
            ));
        }
        self.tls().map_err(|e| e.to_string())
    }
}

/// `addr` as other machines dial it, for the leader key: this host's name in place of an
/// unspecified address (`0.0.0.0:8888` → `sched1:8888`).
pub fn advertised(addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned());
        format!("{}:{}", host.unwrap_or_else(|_| "localhost".into()), addr.port())
    } else {
        addr.to_string()
    }
}

/// Connects to etcd, retrying every 2 s (logging each failure) until a member answers.
pub async fn connect_retrying(endpoints: &[String], tls: Option<&Tls>) -> Client {
    loop {
        match Client::new(endpoints, tls, CALL_TIMEOUT) {
            Ok(client) => match client.status().await {
                Ok(_) => return client,
                Err(e) => tracing::warn!(error = %e, etcd = ?endpoints, "cannot reach etcd; retrying"),
            },
            Err(e) => tracing::warn!(error = %e, "etcd client"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Campaigns for the election `name` under `prefix` until this process leads, logging who
/// leads meanwhile (`what` names the daemon in the logs) and telling `seen` each time.
pub async fn elect(
    client: Client,
    prefix: &str,
    name: &str,
    me: LeaderInfo,
    what: &'static str,
    mut seen: impl FnMut(Option<LeaderInfo>),
) -> Leading {
    let mut last: Option<Option<LeaderInfo>> = None;
    campaign(client, &leader_key(prefix, name), me, Timing::default(), |result| match result {
        Ok(leader) => {
            if last.as_ref() != Some(&leader) {
                match &leader {
                    Some(l) => tracing::info!(leader = %l.uuid, addr = %l.addr, "another {what} leads; standing by"),
                    None => tracing::info!("no {what} leads; campaigning"),
                }
                last = Some(leader.clone());
            }
            seen(leader);
        }
        Err(e) => {
            tracing::warn!(error = %e, "leader election: etcd unreachable; retrying");
            last = None;
            seen(None);
        }
    })
    .await
}

/// Replaces this process with a fresh one, same program and arguments: a daemon that lost
/// leadership keeps nothing of its term and campaigns again as a standby. Exits with 75
/// (EX_TEMPFAIL: a supervisor restarting it is right) when that fails.
pub fn restart_as_standby(program: &str) -> ! {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let error = std::process::Command::new(&exe).args(std::env::args_os().skip(1)).exec();
    eprintln!("{program}: cannot start again as a standby ({}): {error}", exe.display());
    std::process::exit(75);
}
