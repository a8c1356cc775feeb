//! Command-line flags of `drover-launcher`.

use std::path::PathBuf;
use std::time::Duration;

use ssntp::cli::TlsArgs;

/// The Drover launcher: the agent on each compute node. Reports the node's capacity to the
/// scheduler and runs the workloads it is sent.
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
    /// Directory for the node's identity and instance working directories.
    #[arg(long, default_value = "/var/lib/drover/launcher")]
    pub state_dir: PathBuf,
    /// How often to send READY.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub report_interval: Duration,
    /// Memory kept back for the system, MiB (not offered to workloads).
    #[arg(long, default_value_t = 256)]
    pub mem_reserve_mb: u64,
}

/// Parses `500ms`, `2s`, `1m` or a bare number of seconds.
///
/// # Errors
/// Anything else.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.find(|c: char| !c.is_ascii_digit()).map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 500ms, 2s or 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?}: unknown unit {unit:?} (use ms, s or m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
