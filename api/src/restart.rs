//! When an instance is started again, as a workload file says.

use serde::{Deserialize, Serialize};

/// When an instance is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never: an end is final.
    Never,
    /// After a failure (non-zero exit, OOM, kill, a fatal start failure, node loss).
    OnFailure,
    /// After any end but a user's stop or cancel.
    Always,
}

/// Restart policy with its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart {
    /// When.
    pub policy: RestartPolicy,
    /// Most restarts over the instance's life.
    pub attempts: u32,
    /// First backoff, ms; doubled per restart, at most 5 minutes.
    pub backoff_ms: u64,
}
