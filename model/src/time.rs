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

/// Where the time comes from: the system in the shells, anything in tests.
pub trait Clock {
    /// The time now.
    fn now(&self) -> Now;
}

/// The system's clocks: the one place Drover's daemons read them. `mono_ms` counts from
/// [`SystemClock::start`].
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: std::time::Instant,
}

impl SystemClock {
    /// A clock whose monotonic time starts now.
    #[allow(clippy::disallowed_methods)] // the one reading of the monotonic clock
    pub fn start() -> Self {
        Self { origin: std::time::Instant::now() }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Now {
        Now { mono_ms: u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX), unix_ms: unix_ms_now() }
    }
}

/// Unix milliseconds now, for shells that need only the wall clock.
#[allow(clippy::disallowed_methods)] // the one reading of the wall clock
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `2026-11-28 06:45:01` (UTC) for Unix milliseconds: how people read event times.
pub fn format_utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm), in i64 to keep the era arithmetic exact.
    let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_read_as_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_utc(1_795_847_101_999), "2026-11-28 06:25:01");
    }

    #[test]
    fn the_system_clock_moves_forward_from_its_start() {
        let clock = SystemClock::start();
        let a = clock.now();
        let b = clock.now();
        assert!(b.mono_ms >= a.mono_ms && b.unix_ms >= a.unix_ms);
        assert!(a.mono_ms < 1_000, "monotonic time counts from the start");
        assert!(a.unix_ms > 1_700_000_000_000, "wall time is Unix time");
    }
}
