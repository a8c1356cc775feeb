//! The processes under test: a scheduler (or the relay) as a child, its CPU time and memory
//! read from `/proc`, its `/metrics` polled over plain HTTP.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A free loopback port (bound and released; good enough for a benchmark on a quiet machine).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A binary next to this one (`target/release/drover-scheduler` beside `drover-bench`).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating drover-bench")?;
    let path = me.parent().context("drover-bench has no directory")?.join(name);
    if !path.exists() {
        bail!(
            "{} not found; build it first: cargo build --release (the whole workspace: drover-bench e2e also starts the controller and launchers)",
            path.display()
        );
    }
    Ok(path)
}

/// A child process that is killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    /// Its SSNTP address.
    pub addr: SocketAddr,
    /// Its metrics address, if it serves metrics.
    pub metrics: Option<SocketAddr>,
}

impl Daemon {
    /// Starts `program args…`, its standard error going to `log`.
    pub fn start(
        program: &Path,
        args: Vec<String>,
        log: PathBuf,
        addr: SocketAddr,
        metrics: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let child = spawn(program, &args, &log)?;
        Ok(Self { child, program: program.to_owned(), args, log, addr, metrics })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, then the same command again (same port, same flags).
    pub fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = spawn(&self.program, &self.args, &self.log)?;
        Ok(())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(n).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Fails with the tail of the log if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); last lines of its log:\n{}", self.program.display(), self.log_tail(20));
        }
        Ok(())
    }

    /// CPU time used so far (all threads) and memory now.
    pub fn usage(&self) -> Usage {
        Usage::of(self.pid())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(program: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    Command::new(program)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// CPU and memory of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// CPU seconds of all live threads (`/proc/PID/task/*/schedstat`, nanosecond resolution).
    pub cpu_s: f64,
    /// Resident set now, KiB.
    pub rss_kib: u64,
    /// Peak resident set, KiB.
    pub peak_rss_kib: u64,
}

impl Usage {
    /// Reads the figures of `pid`; zeros when they cannot be read.
    pub fn of(pid: u32) -> Self {
        let mut cpu_ns: u64 = 0;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let text = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
                cpu_ns += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        #[allow(clippy::cast_precision_loss)] // nanoseconds of a benchmark run fit an f64 exactly enough
        let cpu_s = cpu_ns as f64 / 1e9;
        Self { cpu_s, rss_kib: field("VmRSS:"), peak_rss_kib: field("VmHWM:") }
    }
}

/// Scheduler figures from its `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SchedulerView {
    /// Nodes READY.
    pub ready: u64,
    /// Nodes declared lost.
    pub lost: u64,
    /// Bytes received from launchers so far.
    pub report_bytes: u64,
}

/// A daemon's `/metrics` text (the whole HTTP answer, headers included).
///
/// # Errors
/// It cannot be reached or read.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text)
}

/// Reads the scheduler's metrics (refreshed by the scheduler once a second).
pub async fn scheduler_view(addr: SocketAddr) -> anyhow::Result<SchedulerView> {
    let text = scrape(addr).await?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // counters
                let n = v as u64;
                n
            })
    };
    Ok(SchedulerView {
        ready: value("drover_scheduler_nodes{state=\"ready\"}"),
        lost: value("drover_scheduler_nodes{state=\"lost\"}"),
        report_bytes: value("drover_scheduler_launcher_report_bytes_total"),
    })
}

/// Polls the scheduler's metrics until `done` holds; returns when it first held.
pub async fn wait_view(
    addr: SocketAddr,
    timeout: Duration,
    mut done: impl FnMut(&SchedulerView) -> bool,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    let mut last = SchedulerView::default();
    while Instant::now() < deadline {
        if let Ok(view) = scheduler_view(addr).await {
            if done(&view) {
                return Ok(Instant::now());
            }
            last = view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the scheduler did not get there within {timeout:?}; last seen {last:?}")
}

/// Runs `ip ARGS` (iproute2) for tests that build network namespaces; the error says which
/// command failed and what `ip` printed.
///
/// # Errors
/// `ip` is missing or the command failed (no root, no iproute2, a name taken).
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}
