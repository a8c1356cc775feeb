//! The time, injected: decision code never reads a clock, its shell passes [`Now`] in.

/// The current time as the shell read it.
///
/// Durations inside one process (timeouts, TTLs) use `mono_ms`, which never goes backwards but
/// means nothing to another process. Anything persisted, sent, or compared by the next process
/// after a restart (a backoff's deadline, a START's deadline) uses `unix_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Now {
    /// Monotonic milliseconds (any origin, this process only).
    pub mono_ms: u64,
    /// Unix milliseconds (wall clock).
    pub unix_ms: u64,
}
