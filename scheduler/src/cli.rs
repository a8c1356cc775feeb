//! Command-line flags of `drover-scheduler`.

use std::net::SocketAddr;
use std::path::PathBuf;

use ssntp::cli::TlsArgs;

/// The Drover scheduler: accepts mutual-TLS connections from controllers and launchers on one
/// port, places work on launchers and forwards their reports. Never needs root.
///
/// Example:
///   drover-scheduler --cacert pki/ca.pem --cert pki/scheduler-sched.pem \
///       --key pki/scheduler-sched-key.pem --crl pki/crl.pem --heartbeat
#[derive(Debug, clap::Parser)]
#[command(name = "drover-scheduler", version, verbatim_doc_comment)]
pub struct Args {
    /// Address to accept SSNTP connections on.
    #[arg(long, default_value = "0.0.0.0:8888")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Certificate revocation list (`drover-cert revoke` writes it); revoked clients are refused.
    #[arg(long, value_name = "PEM")]
    pub crl: Option<PathBuf>,
    /// Print a status line every second (ciao's format: controllers, then nodes with
    /// status, available/total memory MiB and load).
    #[arg(long)]
    pub heartbeat: bool,
    /// Most concurrent connections (handshakes included); more wait in the kernel's backlog.
    #[arg(long, default_value_t = 16_384)]
    pub max_connections: usize,
    /// Largest frame payload accepted, in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_payload: usize,
}
