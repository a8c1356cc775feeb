//! Command-line flags of `drover-launcher`.

use std::path::PathBuf;
use std::time::Duration;

use ssntp::cli::TlsArgs;

/// The Drover launcher: the agent on each compute node. Reports the node's capacity to the
/// scheduler and runs the workloads it is sent. `drover-launcher doctor [--interactive]`
/// inspects this host and recommends these flags, with the reason for each.
///
/// Example:
///   drover-launcher --server sched.example:8888 --cacert pki/ca.pem \
///       --cert pki/agent-node1.pem --key pki/agent-node1-key.pem
#[derive(Debug, clap::Parser)]
#[command(name = "drover-launcher", version, verbatim_doc_comment)]
pub struct Args {
    /// Scheduler address `host:port` (repeatable: tried in order). The host must be a SAN of
    /// the scheduler's certificate.
    #[arg(long = "server", required = true)]
    pub servers: Vec<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub diag: ssntp::cli::DiagArgs,
    /// Directory for the node's identity and instance working directories.
    #[arg(long, default_value = "/var/lib/drover/launcher")]
    pub state_dir: PathBuf,
    /// How often to send the heartbeat (the status and the node's figures; small, whatever
    /// the number of instances).
    #[arg(long, default_value = "1s", value_parser = drover_model::parse_duration)]
    pub report_interval: Duration,
    /// How often to send the instances that changed (INSTANCE_NEWS). A burst of 64 changes
    /// goes at once.
    #[arg(long, default_value = "250ms", value_parser = drover_model::parse_duration)]
    pub news_interval: Duration,
    /// Memory kept back for the system, MiB (not offered to workloads).
    #[arg(long, default_value_t = 256)]
    pub mem_reserve_mb: u64,
    /// Disk kept free in the state directory, MiB.
    #[arg(long, default_value_t = 1024)]
    pub disk_reserve_mb: u64,
    /// Most instances at once on this node.
    #[arg(long, default_value_t = 1000)]
    pub max_instances: usize,
    /// On SIGTERM, stop every instance before exiting (default: leave them running; the next
    /// launcher re-adopts them).
    #[arg(long)]
    pub drain_on_exit: bool,
    /// With --drain-on-exit: how long running instances may finish after SIGTERM before the
    /// rest are stopped (a graceful drain; the node takes no new work meanwhile). 0s stops
    /// them at once.
    #[arg(long, default_value = "0s", value_parser = drover_model::parse_duration)]
    pub drain_deadline: Duration,
    /// On SIGTERM without --drain-on-exit, how long the scheduler holds this node's running
    /// workloads for the next launcher before declaring the node lost and starting them
    /// elsewhere (at most 24h).
    #[arg(long, default_value = "10m", value_parser = drover_model::parse_duration)]
    pub maintenance_grace: Duration,
    /// Serve one NUMA node only: report its CPUs and memory, and pin every workload to them
    /// (run one launcher per node, each with its own --state-dir and certificate).
    #[arg(long, value_name = "N")]
    pub numa_node: Option<u32>,
    /// Backend this node offers (repeatable): process, oci (needs runc or crun), systemd
    /// (transient units; needs systemd as PID 1 answering on the D-Bus system bus), vm
    /// (virtual machines; needs a device model, qemu-system-ARCH), artifact (JAR files in the
    /// node's volumes; needs a runtime, java, and --volume-root), sim.
    #[arg(long = "backend", value_name = "NAME", default_values_t = ["process".to_owned()])]
    pub backends: Vec<String>,
    /// Label placement can require (repeatable), e.g. --label zone=b --label gpu=a100.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Who workloads run as when the launcher runs as root: `auto` gives each tenant a user of
    /// its own from --uid-range (kept in the state directory), so tenants cannot read each
    /// other's results; a user name or UID[:GID] runs every workload as that user. A launcher
    /// that is not root runs workloads as its own user. Never root (see --allow-root).
    #[arg(long, default_value = "auto", value_name = "auto|USER|UID[:GID]")]
    pub run_as: String,
    /// The user one tenant's workloads run as (repeatable), e.g. --tenant-user acme=build-acme.
    #[arg(long = "tenant-user", value_name = "TENANT=USER", value_parser = parse_tenant_user)]
    pub tenant_users: Vec<(String, String)>,
    /// The uids `--run-as auto` gives tenants, one each, FIRST-LAST (they need no entry in
    /// /etc/passwd; keep the range free of real users).
    #[arg(long, default_value = "1000000000-1000065535", value_name = "FIRST-LAST", value_parser = crate::users::parse_range)]
    pub uid_range: (u32, u32),
    /// Run a workload as root when it asks (`run_as_root = true`); the node then offers the
    /// `root` feature, which such workloads require. Needs the launcher to run as root.
    #[arg(long)]
    pub allow_root: bool,
    /// Serve Prometheus metrics on this address (`GET /metrics`), e.g. 127.0.0.1:9890:
    /// instances running, starts, refusals, ends by reason, connection and maintenance.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// A directory of cached OCI root filesystems (repeatable): each subdirectory is reported,
    /// so workloads that prefer `image_cached` come to this node.
    #[arg(long = "image-dir", value_name = "DIR")]
    pub image_dirs: Vec<PathBuf>,
    /// A directory OCI workloads may bind-mount from and artifacts are run from (repeatable): a
    /// volume's source must be a directory under one, an artifact a file under one. The node
    /// then offers the `volumes` feature. Without, volumes and artifacts are refused.
    #[arg(long = "volume-root", value_name = "DIR")]
    pub volume_roots: Vec<PathBuf>,
    /// Where the node's hypervisor tools are (repeatable): the vm backend's device models, the
    /// `qemu-system-ARCH` programs in these directories, each a guest architecture the node
    /// offers (feature `vm:ARCH`); the artifact backend's runtimes (`java`, feature
    /// `runtime:jar`). Without, those on PATH.
    #[arg(long = "hypervisor-tools", value_name = "DIR")]
    pub hypervisor_tools: Vec<PathBuf>,
    /// Take part in live migrations of vm instances: the address other launchers send an
    /// instance's state to (mutual TLS with launcher certificates that name their node, as
    /// `drover-cert issue` writes them; port 0 picks one). The node then offers the feature
    /// `migrate`. Without, its vm instances are evacuated by stopping them instead.
    #[arg(long, value_name = "ADDR")]
    pub migration_listen: Option<std::net::SocketAddr>,
    /// The host other launchers reach this one at for migrations, when --migration-listen is
    /// a wildcard address (0.0.0.0, [::]).
    #[arg(long, value_name = "HOST", requires = "migration_listen")]
    pub migration_advertise: Option<String>,
    /// Most a migration's state stream may take of the network, MiB/s (0: as fast as it goes;
    /// the device model's own default would be 128).
    #[arg(long, value_name = "MIB_S", default_value_t = 0, requires = "migration_listen")]
    pub migration_bandwidth: u64,
    /// The longest a migrating guest may be paused for its last copy (the device model keeps
    /// copying what the guest writes until the rest fits in this): lower pauses less and may
    /// copy longer, or never finish for a guest that writes fast (the migration is then
    /// abandoned after 10 minutes and the guest runs on where it was). At most 2000s.
    #[arg(long, value_name = "DURATION", default_value = "300ms", value_parser = parse_downtime, requires = "migration_listen")]
    pub migration_downtime_limit: Duration,
    /// A script workloads may run as a check after their program succeeds (repeatable), e.g.
    /// --script rpmlint=/usr/local/bin/drover-rpmlint: it runs in the instance's directory, as
    /// its user, under its limits and with its environment; its exit code decides the
    /// instance's. The node offers the feature `script:NAME`, which such workloads require.
    #[arg(long = "script", value_name = "NAME=PATH", value_parser = parse_script)]
    pub scripts: Vec<(String, PathBuf)>,
    /// The CPU speed score to report instead of measuring it at start (a short benchmark,
    /// cached in the state directory per CPU model).
    #[arg(long, value_name = "SCORE", value_parser = clap::value_parser!(u32).range(1..))]
    pub cpu_score: Option<u32>,
    /// Where sysfs is mounted (tests point this at a fixture tree).
    #[arg(long, default_value = "/sys", hide = true)]
    pub sysfs_root: PathBuf,
    /// Where binfmt_misc is mounted: its enabled `qemu-ARCH` entries are the foreign
    /// architectures this node runs (tests point this at a fixture tree).
    #[arg(long, default_value = "/proc/sys/fs/binfmt_misc", hide = true)]
    pub binfmt_root: PathBuf,
    /// Where the resctrl file system is mounted: its L3 cache allocation, if any, is given to
    /// workloads as cache ways (tests point this at a fixture tree).
    #[arg(long, default_value = "/sys/fs/resctrl", hide = true)]
    pub resctrl_root: PathBuf,
    /// Where the cgroup file systems are mounted (tests point this at a fixture tree).
    #[arg(long, default_value = "/sys/fs/cgroup", hide = true)]
    pub cgroup_root: PathBuf,
}

/// A migration's downtime limit: 1 ms to 2000 s (what the device model takes).
fn parse_downtime(text: &str) -> Result<Duration, String> {
    let d = drover_model::parse_duration(text)?;
    if d < Duration::from_millis(1) || d > Duration::from_secs(2000) {
        return Err(format!("{text:?}: between 1ms and 2000s"));
    }
    Ok(d)
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text.split_once('=').ok_or_else(|| format!("{text:?} is not a label; use key=value"))?;
    let ok = |x: &str| !x.is_empty() && x.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if !ok(k) || !(v.is_empty() || ok(v)) {
        return Err(format!("{text:?}: keys and values are letters, digits and - _ . /"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn parse_script(text: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = text.split_once('=').ok_or_else(|| format!("{text:?}: give NAME=PATH"))?;
    if !ssntp::payload::is_script_name(name) {
        return Err(format!("{name:?}: a script's name is 1-64 of a-z, 0-9, - _ ."));
    }
    if !path.starts_with('/') {
        return Err(format!("{path:?}: give the script's absolute path"));
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

fn parse_tenant_user(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((tenant, user)) if !tenant.is_empty() && !user.is_empty() => Ok((tenant.to_owned(), user.to_owned())),
        _ => Err(format!("{text:?}: give TENANT=USER (a user name or UID[:GID])")),
    }
}

impl ssntp::cli::Daemon for Args {
    fn diagnostics(&self) -> &ssntp::cli::DiagArgs {
        &self.diag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_is_a_name_and_an_absolute_path() {
        assert_eq!(parse_script("rpmlint=/usr/bin/lint").unwrap(), ("rpmlint".into(), PathBuf::from("/usr/bin/lint")));
        assert!(parse_script("rpmlint").unwrap_err().contains("NAME=PATH"));
        assert!(parse_script("Rpm Lint=/x").unwrap_err().contains("name"));
        assert!(parse_script("lint=bin/lint").unwrap_err().contains("absolute"));
    }

    #[test]
    fn a_downtime_limit_is_what_the_device_model_takes() {
        assert_eq!(parse_downtime("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_downtime("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_downtime("0s").unwrap_err().contains("between 1ms and 2000s"));
        assert!(parse_downtime("1h").unwrap_err().contains("between 1ms and 2000s"));
        assert!(parse_downtime("soon").is_err());
    }
}
