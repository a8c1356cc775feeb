//! Command-line flags of `drover-scheduler`, and their validation into a [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ssntp::cli::TlsArgs;

use drover_model::Overcommit;

use crate::hub::{Config, Policy};

/// The Drover scheduler: accepts mutual-TLS connections from controllers and launchers on one
/// port, places work on launchers and forwards their reports. Never needs root.
///
/// Example:
///   drover-scheduler --cacert pki/ca.pem --cert pki/scheduler-sched.pem \
///       --key pki/scheduler-sched-key.pem --crl pki/crl.pem --heartbeat
///
/// Durations take a unit: 500ms, 10s, 5m, 1h (a bare number is refused).
#[derive(Debug, clap::Parser)]
#[command(name = "drover-scheduler", version, verbatim_doc_comment)]
pub struct Args {
    /// Address to accept SSNTP connections on.
    #[arg(long, default_value = "0.0.0.0:8888")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub diag: ssntp::cli::DiagArgs,
    /// Several schedulers, one active: with `--etcd-endpoints`, this scheduler stands by (not
    /// listening: launchers and controllers, given every scheduler's address, move on to the
    /// next) until it wins the election, then listens; it stops listening and starts again as
    /// a standby if it loses it. Without, it is the only scheduler and listens at once.
    #[command(flatten)]
    pub etcd: drover_etcd::cli::EtcdArgs,
    /// This scheduler's address as launchers and controllers dial it, `host:port`, for the
    /// others' logs (default: `--listen`, with the host name for an unspecified address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Certificate revocation list (`drover-cert revoke` writes it); revoked clients are refused.
    #[arg(long, value_name = "PEM")]
    pub crl: Option<PathBuf>,
    /// Print a status line every second: ciao's (controllers, then nodes with status,
    /// available/total memory MiB and load) followed by Drover's summary.
    #[arg(long)]
    pub heartbeat: bool,
    /// Where to place work: spread (most free memory first), binpack (fewest nodes), or
    /// firstfit (ciao's first fit, skipping the most recently used node).
    #[arg(long, value_enum, default_value = "spread")]
    pub policy: PolicyArg,
    /// vCPUs offered per online CPU of a node (1.0 = no overcommit).
    #[arg(long, default_value_t = 4.0)]
    pub cpu_overcommit: f64,
    /// Memory offered per MiB of a node's memory (1.0 = no overcommit).
    #[arg(long, default_value_t = 1.0)]
    pub mem_overcommit: f64,
    /// Load average per online CPU above which a node takes no new work; work waits in the
    /// queue meanwhile, and `drover node ls` shows the node as `loaded`. The default leaves a
    /// machine that also does other work usable (a build host often runs at 1-2 per CPU); lower
    /// it to keep nodes responsive.
    #[arg(long, default_value_t = 4.0)]
    pub load_threshold: f64,
    /// How long a START may wait in the queue before it fails with `queue_timeout`.
    #[arg(long, default_value = "5m", value_parser = drover_model::parse_duration)]
    pub queue_timeout: Duration,
    /// Most STARTs waiting at once; more fail with `queue_full`.
    #[arg(long, default_value_t = 100_000)]
    pub queue_max: usize,
    /// A launcher silent this long is suspect.
    #[arg(long, default_value = "10s", value_parser = drover_model::parse_duration)]
    pub node_ttl: Duration,
    /// A suspect launcher is declared lost (NODE_LOST) after this much more.
    #[arg(long, default_value = "10s", value_parser = drover_model::parse_duration)]
    pub node_grace: Duration,
    /// After the scheduler starts, no launcher is declared lost for this long (they are
    /// reconnecting).
    #[arg(long, default_value = "5m", value_parser = drover_model::parse_duration)]
    pub failover_grace: Duration,
    /// Charge estimated real memory instead of requested memory (on|off).
    // A bool field is a bare flag to clap unless told it takes a value.
    #[arg(long, default_value = "off", value_parser = parse_on_off, action = clap::ArgAction::Set, value_name = "on|off")]
    pub estimate: bool,
    /// Most STARTs a launcher may have in flight (placed, not yet reported started); more go
    /// to other launchers or wait in the queue until it catches up. Paces a burst to what each
    /// launcher takes, so the path to a slow launcher never overflows.
    #[arg(long, default_value_t = 256)]
    pub start_window: usize,
    /// Queue work that no connected node could ever take, even empty (too many vCPUs, too much
    /// memory, a missing feature or label), waiting for nodes that can to join. By default such
    /// a START fails at once with `full_cloud` and the reason, instead of after --queue-timeout.
    #[arg(long)]
    pub wait_for_capacity: bool,
    /// Strong workers for big jobs: a START charged at least this much memory (MiB) goes to the
    /// fastest node that fits (the launchers' measured CPU score) before the policy's order;
    /// slower nodes still take it when no fast one fits.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub strong_workers: Option<u64>,
    /// Reserve nodes for big jobs: a START charged at least this much memory (MiB) that no node
    /// fits gets a node of its own that could hold it, which takes no other work until enough
    /// of its work has ended; then the big START starts there. Without, small work takes every
    /// bit of room freed and a big job may wait until its queue timeout.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub reserve_big: Option<u64>,
    /// As --reserve-big, for a START asking at least this much disk (MiB, its disk_mb): the
    /// node reserved is the one with the most free disk, and it takes no other work until the
    /// big job fits there.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub reserve_big_disk: Option<u64>,
    /// As --reserve-big, for a START asking at least this many vCPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub reserve_big_vcpus: Option<u32>,
    /// With --reserve-big*: most nodes reserved at once (the others keep taking small work).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub reserve_nodes: u64,
    /// Serve Prometheus metrics on this address (`GET /metrics`), e.g. 127.0.0.1:9888.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Most concurrent connections (handshakes included); more wait in the kernel's backlog.
    #[arg(long, default_value_t = 16_384)]
    pub max_connections: usize,
    /// Refuse certificates that name no identity (minted before `drover-cert` wrote a
    /// `urn:uuid:` name into each). Without this flag such certificates are taken, each UUID
    /// bound to the first certificate seen with it, so that a cluster can move over node by
    /// node; set it once every certificate has been issued again (README, "Certificates").
    #[arg(long)]
    pub require_cert_identity: bool,
    /// Largest frame payload accepted, in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_payload: usize,
}

/// `--policy` values (the core's [`Policy`] knows nothing of clap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyArg {
    /// Most free memory first: even load.
    Spread,
    /// Least free memory that fits: few busy nodes, others left empty.
    Binpack,
    /// ciao's first fit, skipping the most recently used node.
    Firstfit,
}

impl From<PolicyArg> for Policy {
    fn from(arg: PolicyArg) -> Self {
        match arg {
            PolicyArg::Spread => Self::Spread,
            PolicyArg::Binpack => Self::Binpack,
            PolicyArg::Firstfit => Self::Firstfit,
        }
    }
}

fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{text:?}: use on or off")),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Args {
    /// The core's configuration.
    ///
    /// # Errors
    /// A value outside its sensible range, named with the flag.
    pub fn config(&self) -> Result<Config, String> {
        let finite_at_least = |flag: &str, v: f64, min: f64| {
            if v.is_finite() && v >= min {
                Ok(v)
            } else {
                Err(format!("--{flag} must be a number ≥ {min}, got {v}"))
            }
        };
        if self.queue_max == 0 {
            return Err("--queue-max must be at least 1".into());
        }
        if self.start_window == 0 {
            return Err("--start-window must be at least 1".into());
        }
        if self.node_ttl.is_zero() {
            return Err("--node-ttl must be more than 0".into());
        }
        Ok(Config {
            policy: self.policy.into(),
            overcommit: Overcommit {
                cpu: finite_at_least("cpu-overcommit", self.cpu_overcommit, 0.1)?,
                mem: finite_at_least("mem-overcommit", self.mem_overcommit, 0.1)?,
            },
            load_threshold: finite_at_least("load-threshold", self.load_threshold, 0.0)?,
            queue_timeout_ms: millis(self.queue_timeout),
            queue_max: self.queue_max,
            node_ttl_ms: millis(self.node_ttl),
            node_grace_ms: millis(self.node_grace),
            failover_grace_ms: millis(self.failover_grace),
            estimate: self.estimate,
            start_window: self.start_window,
            wait_for_capacity: self.wait_for_capacity,
            strong_workers_mb: self.strong_workers,
            reserve_big_mb: self.reserve_big,
            reserve_big_disk_mb: self.reserve_big_disk,
            reserve_big_vcpus: self.reserve_big_vcpus,
            reserve_max: usize::try_from(self.reserve_nodes).unwrap_or(usize::MAX),
            ..Config::default()
        })
    }
}

impl ssntp::cli::Daemon for Args {
    fn diagnostics(&self) -> &ssntp::cli::DiagArgs {
        &self.diag
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["drover-scheduler", "--cacert", "ca.pem", "--cert", "s.pem", "--key", "s-key.pem"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
    }

    #[test]
    fn estimation_is_switched_with_on_and_off() {
        assert!(!args(&[]).unwrap().config().unwrap().estimate);
        assert!(args(&["--estimate", "on"]).unwrap().config().unwrap().estimate);
        assert!(args(&["--estimate=on"]).unwrap().config().unwrap().estimate);
        assert!(!args(&["--estimate", "off"]).unwrap().config().unwrap().estimate);
        let wrong = args(&["--estimate", "yes"]).unwrap_err().to_string();
        assert!(wrong.contains("use on or off"), "{wrong}");
    }
}
