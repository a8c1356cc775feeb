//! Command-line helpers shared by Drover's daemons (feature `cli`).

pub use crate::tls::TlsArgs;

/// Exit code for invalid command lines and configuration (`EX_USAGE` of sysexits.h).
pub const EX_USAGE: i32 = 64;

/// Parses the command line with `cmd` (a derived definition, adjusted after derive: headings,
/// hidden flags); `--help` and `--version` print and exit 0, anything invalid prints clap's
/// message and exits with [`EX_USAGE`] before anything is bound or dialled.
pub fn parse_or_exit_with<T: clap::FromArgMatches>(cmd: clap::Command) -> T {
    cmd.try_get_matches().and_then(|m| T::from_arg_matches(&m)).unwrap_or_else(|e| exit_for(&e, None))
}

/// Prints clap's message and exits: 0 for `--help` and `--version`, [`EX_USAGE`] otherwise,
/// naming the `--config` file whose flags were part of the command line, if one was.
fn exit_for(e: &clap::Error, config: Option<&std::ffi::OsStr>) -> ! {
    let _ = e.print();
    if !e.use_stderr() {
        std::process::exit(0);
    }
    if let Some(file) = config {
        eprintln!("(the flags include those of --config {})", file.to_string_lossy());
    }
    std::process::exit(EX_USAGE);
}

/// A daemon's command line, with `--config FILE` (see [`crate::config_file`]): the file's flags
/// first, the command line's after them and winning; exits as [`parse_or_exit_with`] does, 64 for
/// a file that does not load or holds a key that is not a flag.
pub fn parse_daemon_args<T: clap::Parser>() -> T {
    use crate::config_file::{self, ParseFailure};
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let file = config_file::config_path(&argv);
    match config_file::parse::<T>(argv) {
        Ok(args) => args,
        Err(ParseFailure::File(e)) => {
            eprintln!("{}: {e}", config_file::command_of::<T>().get_name());
            std::process::exit(EX_USAGE);
        }
        Err(ParseFailure::Flags(e)) => exit_for(&e, file.as_deref()),
    }
}

/// Tells systemd that the daemon is up (`Type=notify` units): serving, or standing by as one of
/// several; `status` is what `systemctl status` shows. Nothing happens outside systemd (no
/// `NOTIFY_SOCKET`); a failure to tell it is logged, not fatal.
pub fn notify_ready(status: &str) {
    let states = [sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)];
    if let Err(e) = sd_notify::notify(&states) {
        tracing::warn!(error = %e, "could not tell systemd the daemon is ready");
    }
}

/// Tells systemd that the daemon is stopping (it drains, closes connections …).
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Reports an invalid configuration found after parsing (a file that does not load, a
/// certificate with the wrong role …) and exits with [`EX_USAGE`].
pub fn usage_error(program: &str, error: &dyn std::fmt::Display) -> ! {
    eprintln!("{program}: invalid configuration: {error}");
    std::process::exit(EX_USAGE);
}

/// The diagnostics every daemon takes: log levels per module, and a CPU profile (ciao's
/// `-cpuprofile`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DiagArgs {
    /// Log levels, overall and per module, in `RUST_LOG`'s syntax: `debug`,
    /// `info,drover_scheduler_core=debug,ssntp=warn`. Wins over `RUST_LOG` (default: `RUST_LOG`,
    /// else `info`).
    #[arg(long, value_name = "FILTER", value_parser = parse_log_filter)]
    pub log: Option<String>,
    /// Sample this daemon's CPU use (99 times a second, from its start) and write the profile
    /// in pprof format to FILE when it exits (`go tool pprof -http=: FILE`, or `pprof`).
    #[arg(long, value_name = "FILE")]
    pub cpu_profile: Option<std::path::PathBuf>,
}

/// A daemon's flags: where its [`DiagArgs`] are.
pub trait Daemon {
    /// The diagnostics flags.
    fn diagnostics(&self) -> &DiagArgs;
}

fn parse_log_filter(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("{e} (examples: debug; info,drover_scheduler_core=debug)"))
}

/// A CPU profile being taken for `--cpu-profile`.
pub struct CpuProfile {
    path: std::path::PathBuf,
    guard: pprof::ProfilerGuard<'static>,
}

impl std::fmt::Debug for CpuProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuProfile").field("path", &self.path).finish_non_exhaustive()
    }
}

/// Samples a second.
pub const PROFILE_HZ: i32 = 99;

impl CpuProfile {
    /// Starts sampling; the profile goes to `path` at [`CpuProfile::write`].
    ///
    /// # Errors
    /// The profiler cannot start (another one runs, no timer).
    pub fn start(path: std::path::PathBuf) -> Result<Self, String> {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(PROFILE_HZ)
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .map_err(|e| format!("--cpu-profile: cannot start the profiler: {e}"))?;
        Ok(Self { path, guard })
    }

    /// Writes what was sampled, in pprof's protobuf format.
    ///
    /// # Errors
    /// The report cannot be built or the file written.
    pub fn write(self) -> Result<std::path::PathBuf, String> {
        use pprof::protos::Message as _;
        let report = self.guard.report().build().map_err(|e| format!("building the CPU profile: {e}"))?;
        let profile = report.pprof().map_err(|e| format!("encoding the CPU profile: {e}"))?;
        let mut bytes = Vec::new();
        profile.write_to_vec(&mut bytes).map_err(|e| format!("encoding the CPU profile: {e}"))?;
        std::fs::write(&self.path, bytes).map_err(|e| format!("{}: {e}", self.path.display()))?;
        Ok(self.path)
    }
}

/// Logs to stderr with `filter` (`--log`), else `RUST_LOG`, else `info`; colours only on a
/// terminal, and never with `NO_COLOR` set (a log file gets no escape codes).
pub fn init_logging_with(filter: Option<&str>) {
    use std::io::IsTerminal as _;
    let filter = match filter {
        Some(f) => tracing_subscriber::EnvFilter::new(f),
        None => tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
    };
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour).init();
}

/// Logs to stderr with `RUST_LOG` (default `info`); see [`init_logging_with`].
pub fn init_logging() {
    init_logging_with(None);
}

/// Logs a failure to reach `target` as a warning with what to fix, when `log` says it is due
/// (first, changed, or a minute on); `permanent` ones (refused by the server) as errors.
#[allow(clippy::disallowed_methods)] // a daemon's logging shell: when a failure was last said
pub fn log_connect_failure(log: &mut crate::advice::FailureLog, target: &str, reason: &str, permanent: bool) {
    let now_ms = u64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis(),
    )
    .unwrap_or(u64::MAX);
    let Some(unlogged) = log.failed(reason, now_ms) else { return };
    let fix = crate::advice::advice(reason, target).unwrap_or_else(|| "retrying with backoff".to_owned());
    if permanent {
        tracing::error!(%target, %reason, %fix, "refused by the server");
    } else {
        tracing::warn!(%target, %reason, %fix, repeats = unlogged, "cannot connect; retrying");
    }
}

/// The daemons' shutdown trigger: completes on SIGINT or SIGTERM. The handlers are installed
/// when this is *called*, not when the future is first polled, so a signal that arrives while
/// the daemon is still starting up is not lost to the default action (which would kill it
/// without a clean shutdown).
///
/// # Panics
/// If the signal handlers cannot be installed (no signal support at all), or outside a tokio
/// runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal received; shutting down");
    }
}

/// When a daemon should load its TLS material again: on SIGHUP, or when one of its files
/// changes (modification time or length, looked at every `every`). One trigger for the
/// scheduler and the API, so both reload alike.
#[derive(Debug)]
pub struct ReloadTrigger {
    files: Vec<std::path::PathBuf>,
    hangup: Option<tokio::signal::unix::Signal>,
    ticker: tokio::time::Interval,
    seen: Vec<Option<(std::time::SystemTime, u64)>>,
}

impl ReloadTrigger {
    /// Watches `files`; the SIGHUP handler is installed now (without one, only file changes
    /// count, with a warning).
    pub fn new(files: Vec<std::path::PathBuf>, every: std::time::Duration) -> Self {
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; TLS material reloads only when its files change");
                None
            }
        };
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let seen = stamps(&files);
        Self { files, hangup, ticker, seen }
    }

    /// Waits for the next reason to reload: `"SIGHUP"` or `"its files changed"`.
    pub async fn next(&mut self) -> &'static str {
        loop {
            let hangup = async {
                match self.hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            let why = tokio::select! {
                Some(()) = hangup => "SIGHUP",
                _ = self.ticker.tick() => {
                    if stamps(&self.files) == self.seen {
                        continue;
                    }
                    "its files changed"
                }
            };
            self.seen = stamps(&self.files);
            return why;
        }
    }
}

/// What identifies a version of each file: its modification time and length.
fn stamps(files: &[std::path::PathBuf]) -> Vec<Option<(std::time::SystemTime, u64)>> {
    files.iter().map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}

/// The whole `main` of a daemon: logging, command line (exit 64 when invalid), `prepare` (load
/// and check configuration; exit 64 on error, before anything is bound or dialled), then `run`
/// until SIGINT or SIGTERM (exit 1 with the error's chain on failure).
pub async fn run_daemon<A, P, E1, E2, Fut>(
    program: &str,
    prepare: impl FnOnce(A) -> Result<P, E1>,
    run: impl FnOnce(P, std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
) -> std::process::ExitCode
where
    A: clap::Parser + Daemon,
    E1: std::fmt::Display,
    E2: std::fmt::Display,
    Fut: std::future::Future<Output = Result<(), E2>>,
{
    let shutdown = shutdown_signal();
    let args: A = parse_daemon_args();
    init_logging_with(args.diagnostics().log.as_deref());
    let profile = match args.diagnostics().cpu_profile.clone().map(CpuProfile::start).transpose() {
        Ok(p) => p,
        Err(e) => usage_error(program, &e),
    };
    let prepared = prepare(args).unwrap_or_else(|e| usage_error(program, &format_args!("{e:#}")));
    let shutdown = async {
        shutdown.await;
        notify_stopping();
    };
    let result = run(prepared, Box::pin(shutdown)).await;
    if let Some(profile) = profile {
        match profile.write() {
            Ok(path) => tracing::info!(path = %path.display(), "CPU profile written"),
            Err(e) => tracing::error!(error = %e, "the CPU profile was not written"),
        }
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
