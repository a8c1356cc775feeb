//! The scenarios and their reports.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};
use testutil::Pki;

use testutil::agents::{AgentShape, Fleet, Generator, Ledger, INSTANCE_MEM_MB, INSTANCE_VCPUS};
use testutil::process::{free_port, sibling_binary, wait_view, Daemon, Usage};

/// How results and progress are shown.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ui {
    /// JSON instead of a table.
    pub(crate) json: bool,
    /// No progress bars.
    pub(crate) quiet: bool,
}

impl Ui {
    pub(crate) fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if self.json || self.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        bar
    }

    pub(crate) fn say(&self, text: &str) {
        if !self.json && !self.quiet {
            eprintln!("{text}");
        }
    }
}

/// `place` and `ceiling` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PlaceArgs {
    /// Launchers (fake, many to this process, one TLS connection each).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// STARTs to place.
    #[arg(long, default_value_t = 100_000)]
    instances: usize,
    /// Offered load, STARTs/s, paced every millisecond; 0 submits as fast as the connection
    /// takes them.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Placement policy passed to the scheduler.
    #[arg(long, default_value = "spread")]
    policy: String,
    /// How often each launcher sends READY + STATS, as `drover-launcher --report-interval`.
    #[arg(long, default_value = "1s", value_parser = drover_model::parse_duration)]
    report_interval: Duration,
    /// Launchers handshaking at once while the fleet connects.
    #[arg(long, default_value_t = 64)]
    handshakes: usize,
}

/// `hold` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct HoldArgs {
    /// Connections (fake launchers) to hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// How often each sends READY + STATS.
    #[arg(long, default_value = "1s", value_parser = drover_model::parse_duration)]
    report_interval: Duration,
    /// Instances each reports in STATS.
    #[arg(long, default_value_t = 4)]
    instances_per_node: usize,
    /// How long to measure once all are connected.
    #[arg(long, default_value = "20s", value_parser = drover_model::parse_duration)]
    duration: Duration,
    /// Launchers handshaking at once while the fleet connects.
    #[arg(long, default_value_t = 64)]
    handshakes: usize,
}

/// `storm` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StormArgs {
    /// Launchers (fake) connected when the scheduler is killed.
    #[arg(long, default_value_t = 5000)]
    launchers: usize,
    /// Instances each runs (reported in STATS).
    #[arg(long, default_value_t = 4)]
    instances_per_node: usize,
    /// How often each sends READY + STATS.
    #[arg(long, default_value = "1s", value_parser = drover_model::parse_duration)]
    report_interval: Duration,
    /// Launchers handshaking at once while the fleet first connects (the reconnect after the
    /// kill is not limited: that is the storm).
    #[arg(long, default_value_t = 64)]
    handshakes: usize,
}

// === the report ===

pub(crate) struct Report {
    scenario: &'static str,
    params: Value,
    rows: Vec<(String, String, String, Option<bool>)>,
    figures: Map<String, Value>,
    checks_ok: bool,
}

impl Report {
    pub(crate) fn new(scenario: &'static str, params: Value) -> Self {
        Self { scenario, params, rows: Vec::new(), figures: Map::new(), checks_ok: true }
    }

    /// A figure; `goal` is its text and verdict when the project has one.
    pub(crate) fn figure(&mut self, key: &str, label: &str, value: f64, shown: String, goal: Option<(&str, bool)>) {
        self.figures.insert(key.to_owned(), json!(value));
        let (goal_text, met) = goal.map_or((String::new(), None), |(t, m)| (t.to_owned(), Some(m)));
        if goal_text.is_empty() {
            self.rows.push((label.to_owned(), shown, String::new(), None));
        } else {
            self.figures.insert(format!("{key}_goal_met"), json!(met));
            self.rows.push((label.to_owned(), shown, goal_text, met));
        }
    }

    /// A daemon's CPU between two samples (`during` says over what) and its peak RSS, as
    /// `{key}_cpu_s` and `{key}_peak_rss_mib`.
    pub(crate) fn daemon(&mut self, key: &str, label: &str, during: &str, before: Usage, after: Usage) {
        let cpu = after.cpu_s - before.cpu_s;
        self.figure(&format!("{key}_cpu_s"), &format!("{label} CPU{during}"), cpu, format!("{cpu:.2} s"), None);
        let peak = mib(after.peak_rss_kib);
        let shown = format!("{peak:.1} MiB");
        self.figure(&format!("{key}_peak_rss_mib"), &format!("{label} peak RSS"), peak, shown, None);
    }

    /// A correctness check: failing one makes the run fail.
    pub(crate) fn check(&mut self, key: &str, label: &str, count: u64) {
        self.figures.insert(key.to_owned(), json!(count));
        let ok = count == 0;
        self.checks_ok &= ok;
        self.rows.push((label.to_owned(), count.to_string(), "0 (check)".to_owned(), Some(ok)));
    }

    pub(crate) fn print(self, ui: &Ui) -> bool {
        if ui.json {
            let out = json!({
                "scenario": self.scenario,
                "params": self.params,
                "figures": self.figures,
                "checks_passed": self.checks_ok,
            });
            println!("{out}");
            return self.checks_ok;
        }
        let w0 = self.rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0).max(6);
        let w1 = self.rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0).max(8);
        let w2 = self.rows.iter().map(|r| r.2.chars().count()).max().unwrap_or(0).max(4);
        println!("drover-bench {} {}", self.scenario, self.params);
        println!("{:<w0$}  {:>w1$}  {:<w2$}  verdict", "figure", "measured", "goal");
        for (label, value, goal, met) in &self.rows {
            let verdict = match met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            };
            println!("{label:<w0$}  {value:>w1$}  {goal:<w2$}  {verdict}");
        }
        if !self.checks_ok {
            println!("A correctness check failed (see the rows marked 0 (check)).");
        }
        self.checks_ok
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn median_u64(values: &[u64]) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

#[allow(clippy::cast_precision_loss)]
pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// === the processes ===

pub(crate) fn scheduler(pki: &Pki, extra: &[&str]) -> anyhow::Result<Daemon> {
    let program = sibling_binary("drover-scheduler")?;
    let addr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let metrics = format!("127.0.0.1:{}", free_port()?).parse()?;
    let path = |p: std::path::PathBuf| p.display().to_string();
    let mut args = vec![
        "--listen".into(),
        format!("{addr}"),
        "--cacert".into(),
        path(pki.ca()),
        "--cert".into(),
        path(pki.cert("scheduler")),
        "--key".into(),
        path(pki.key("scheduler")),
        "--metrics".into(),
        format!("{metrics}"),
        "--max-connections".into(),
        "20000".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Daemon::start(&program, args, pki.dir().join("scheduler.log"), addr, Some(metrics))
}

fn relay(pki: &Pki) -> anyhow::Result<Daemon> {
    let program = std::env::current_exe()?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let path = |p: std::path::PathBuf| p.display().to_string();
    let args = vec![
        "relay".into(),
        "--listen".into(),
        addr.to_string(),
        "--cacert".into(),
        path(pki.ca()),
        "--cert".into(),
        path(pki.cert("scheduler")),
        "--key".into(),
        path(pki.key("scheduler")),
    ];
    Daemon::start(&program, args, pki.dir().join("relay.log"), addr, None)
}

pub(crate) async fn wait_listening(daemon: &mut Daemon) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(daemon.addr).await.is_err() {
        daemon.check_alive()?;
        if Instant::now() > deadline {
            bail!("{} did not start listening within 10 s", daemon.addr);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Connects `n` fake launchers to `daemon` with a progress bar and waits until the scheduler
/// counts them all READY (the relay has no metrics: a second's grace instead).
async fn connect_fleet(
    ui: &Ui,
    pki: &Pki,
    daemon: &Daemon,
    n: usize,
    shape: AgentShape,
    ledger: Arc<Ledger>,
    handshakes: usize,
) -> anyhow::Result<Fleet> {
    let bar = ui.bar(n as u64, "launchers connecting");
    let target = daemon.addr.to_string();
    let fleet =
        Fleet::start(n, target, pki.client_tls("agent"), shape, ledger, handshakes, |k| bar.set_position(k)).await;
    bar.finish_and_clear();
    if let Some(metrics) = daemon.metrics {
        wait_view(metrics, Duration::from_secs(60), |v| v.ready >= n as u64).await?;
    } else {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(fleet)
}

// === place ===

struct PlaceFigures {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu_us: f64,
    cpu_s: f64,
    peak_rss_mib: f64,
    spread_max: u64,
    spread_median: u64,
    lost: u64,
    duplicated: u64,
    strangers: u64,
    over_placed: u64,
    refused: u64,
    queued: u64,
    wall_s: f64,
}

/// Places `args.instances` STARTs onto `args.nodes` agents through `daemon`.
async fn run_place(args: &PlaceArgs, ui: &Ui, pki: &Pki, mut daemon: Daemon) -> anyhow::Result<PlaceFigures> {
    let result = place_on(args, ui, pki, &mut daemon).await;
    result.map_err(|e| e.context(format!("last lines of the server's log:\n{}", daemon.log_tail(10))))
}

async fn place_on(args: &PlaceArgs, ui: &Ui, pki: &Pki, daemon: &mut Daemon) -> anyhow::Result<PlaceFigures> {
    wait_listening(daemon).await?;
    let (n, m) = (args.nodes, args.instances);
    if n == 0 || m == 0 {
        bail!("--nodes and --instances must be at least 1");
    }
    // Each node has room for its fair share plus 10 %: enough for an even spread, tight enough
    // that a scheduler over-filling a node is caught.
    let capacity = (m.div_ceil(n) * 11).div_ceil(10) as u64;
    let shape = AgentShape {
        cpus: u32::try_from(capacity.div_ceil(4)).unwrap_or(u32::MAX), // --cpu-overcommit 4
        mem_mb: capacity * INSTANCE_MEM_MB,
        report_interval: Some(args.report_interval),
        preexisting: 0,
    };
    let ledger = Arc::new(Ledger::new(m));
    let fleet = connect_fleet(ui, pki, daemon, n, shape, ledger.clone(), args.handshakes).await?;
    let generator = Generator::connect(daemon.addr.to_string(), pki.client_tls("controller")).await?;
    let before = daemon.usage();
    let begin = Instant::now();
    let submit_bar = ui.bar(m as u64, "STARTs submitted");
    let recv_bar = ui.bar(m as u64, "STARTs at launchers");
    generator
        .submit(&ledger, args.rate, |k| {
            submit_bar.set_position(k);
            recv_bar.set_position(ledger.received.load(Ordering::Relaxed));
        })
        .await?;
    // Wait for every START to arrive and be confirmed back to the controller, or for progress
    // to stop for 10 s.
    let mut last = (0, 0);
    let mut last_change = Instant::now();
    loop {
        let received = ledger.received.load(Ordering::Relaxed);
        let confirmed = generator.counters.started.load(Ordering::Relaxed);
        recv_bar.set_position(received);
        if received >= m as u64 && confirmed >= m as u64 {
            break;
        }
        if (received, confirmed) != last {
            last = (received, confirmed);
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(10) {
            break;
        }
        daemon.check_alive()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = begin.elapsed();
    let after = daemon.usage();
    submit_bar.finish_and_clear();
    recv_bar.finish_and_clear();
    let (lat, span) = ledger.latencies();
    let (lost, duplicated) = ledger.lost_and_duplicated();
    let per_node = fleet.starts_per_agent();
    let over_placed = per_node.iter().filter(|s| **s > capacity).count() as u64;
    let placed = lat.len();
    #[allow(clippy::cast_precision_loss)]
    let figures = PlaceFigures {
        rate: placed as f64 / span.as_secs_f64().max(1e-9),
        p50_ms: percentile(&lat, 0.5) / 1000.0,
        p99_ms: percentile(&lat, 0.99) / 1000.0,
        max_ms: lat.last().copied().unwrap_or(f64::NAN) / 1000.0,
        cpu_s: after.cpu_s - before.cpu_s,
        cpu_us: (after.cpu_s - before.cpu_s) * 1e6 / placed.max(1) as f64,
        peak_rss_mib: mib(after.peak_rss_kib),
        spread_max: per_node.iter().copied().max().unwrap_or(0),
        spread_median: median_u64(&per_node),
        lost,
        duplicated,
        strangers: ledger.strangers.load(Ordering::Relaxed),
        over_placed,
        refused: generator.counters.refused.load(Ordering::Relaxed),
        queued: generator.counters.queued.load(Ordering::Relaxed),
        wall_s: wall.as_secs_f64(),
    };
    generator.close();
    fleet.close();
    Ok(figures)
}

fn place_params(args: &PlaceArgs) -> Value {
    json!({
        "nodes": args.nodes,
        "instances": args.instances,
        "offered_rate": args.rate,
        "policy": args.policy,
        "report_interval_ms": args.report_interval.as_millis(),
        "instance": {"vcpus": INSTANCE_VCPUS, "mem_mb": INSTANCE_MEM_MB},
    })
}

fn place_rows(report: &mut Report, f: &PlaceFigures, spread_goal: bool) {
    report.figure(
        "placements_per_s",
        "placements/s (end to end)",
        f.rate,
        format!("{:.0}", f.rate),
        Some(("≥ 100000", f.rate >= 100_000.0)),
    );
    report.figure("latency_p50_ms", "submit→START p50", f.p50_ms, format!("{:.2} ms", f.p50_ms), None);
    report.figure(
        "latency_p99_ms",
        "submit→START p99",
        f.p99_ms,
        format!("{:.2} ms", f.p99_ms),
        Some(("≤ 10 ms", f.p99_ms <= 10.0)),
    );
    report.figure("latency_max_ms", "submit→START max", f.max_ms, format!("{:.2} ms", f.max_ms), None);
    report.figure("scheduler_cpu_s", "scheduler CPU", f.cpu_s, format!("{:.2} s", f.cpu_s), None);
    report.figure(
        "scheduler_cpu_us_per_placement",
        "scheduler CPU per placement",
        f.cpu_us,
        format!("{:.2} µs", f.cpu_us),
        Some(("≤ 5 µs", f.cpu_us <= 5.0)),
    );
    report.figure(
        "scheduler_peak_rss_mib",
        "scheduler peak RSS",
        f.peak_rss_mib,
        format!("{:.1} MiB", f.peak_rss_mib),
        Some(("≤ 64 MiB", f.peak_rss_mib <= 64.0)),
    );
    #[allow(clippy::cast_precision_loss)]
    let ratio = f.spread_max as f64 / f.spread_median.max(1) as f64;
    report.figure("spread_max", "STARTs on the busiest node", f.spread_max as f64, f.spread_max.to_string(), None);
    report.figure(
        "spread_median",
        "STARTs per node, median",
        f.spread_median as f64,
        f.spread_median.to_string(),
        None,
    );
    let goal = spread_goal.then_some(("≤ 1.15 (spread)", ratio <= 1.15));
    report.figure("spread_ratio", "busiest / median", ratio, format!("{ratio:.3}"), goal);
    report.figure("wall_s", "wall time", f.wall_s, format!("{:.2} s", f.wall_s), None);
    report.figure("queued", "INSTANCE_QUEUED answers", f.queued as f64, f.queued.to_string(), None);
    report.check("refused", "START_FAILURE answers", f.refused);
    report.check("lost", "STARTs lost", f.lost);
    report.check("duplicated", "STARTs duplicated", f.duplicated);
    report.check("strangers", "STARTs never submitted", f.strangers);
    report.check("over_placed_nodes", "nodes over capacity", f.over_placed);
}

/// `place`.
pub(crate) async fn place(args: &PlaceArgs, ui: &Ui) -> anyhow::Result<bool> {
    let pki = Pki::new();
    let daemon = scheduler(&pki, &["--policy", &args.policy])?;
    ui.say(&format!("placing {} instances on {} launchers through drover-scheduler …", args.instances, args.nodes));
    let f = run_place(args, ui, &pki, daemon).await?;
    let mut report = Report::new("place", place_params(args));
    place_rows(&mut report, &f, args.policy == "spread");
    Ok(report.print(ui))
}

/// The scheduler alone on `nodes` fake launchers: placements/s for `instances` STARTs offered as
/// fast as the connection takes them (for `e2e`'s share of it).
pub(crate) async fn place_rate(
    nodes: usize,
    instances: usize,
    report_interval: Duration,
    ui: &Ui,
) -> anyhow::Result<f64> {
    let args = PlaceArgs { nodes, instances, rate: 0, policy: "spread".into(), report_interval, handshakes: 64 };
    let pki = Pki::new();
    let daemon = scheduler(&pki, &["--policy", &args.policy])?;
    Ok(run_place(&args, ui, &pki, daemon).await?.rate)
}

/// `ceiling`.
pub(crate) async fn ceiling(args: &PlaceArgs, ui: &Ui) -> anyhow::Result<bool> {
    let pki = Pki::new();
    ui.say(&format!("placing {} instances on {} launchers through drover-scheduler …", args.instances, args.nodes));
    let sched = run_place(args, ui, &pki, scheduler(&pki, &["--policy", &args.policy])?).await?;
    ui.say("… and the same through the relay that does no scheduling");
    let relayed = run_place(args, ui, &pki, relay(&pki)?).await?;
    let mut report = Report::new("ceiling", place_params(args));
    report.figure(
        "scheduler_placements_per_s",
        "scheduler: placements/s",
        sched.rate,
        format!("{:.0}", sched.rate),
        None,
    );
    report.figure("relay_per_s", "relay: STARTs/s", relayed.rate, format!("{:.0}", relayed.rate), None);
    let share = sched.rate / relayed.rate.max(1e-9) * 100.0;
    report.figure("share_pct", "place / ceiling", share, format!("{share:.0} %"), Some(("≥ 50 %", share >= 50.0)));
    report.figure("scheduler_p99_ms", "scheduler: p99", sched.p99_ms, format!("{:.2} ms", sched.p99_ms), None);
    report.figure("relay_p99_ms", "relay: p99", relayed.p99_ms, format!("{:.2} ms", relayed.p99_ms), None);
    report.figure(
        "scheduler_cpu_us",
        "scheduler: CPU per START",
        sched.cpu_us,
        format!("{:.2} µs", sched.cpu_us),
        None,
    );
    report.figure("relay_cpu_us", "relay: CPU per START", relayed.cpu_us, format!("{:.2} µs", relayed.cpu_us), None);
    report.figure(
        "scheduler_peak_rss_mib",
        "scheduler: peak RSS",
        sched.peak_rss_mib,
        format!("{:.1} MiB", sched.peak_rss_mib),
        None,
    );
    report.figure(
        "relay_peak_rss_mib",
        "relay: peak RSS",
        relayed.peak_rss_mib,
        format!("{:.1} MiB", relayed.peak_rss_mib),
        None,
    );
    report.check("scheduler_lost_or_duplicated", "scheduler: STARTs lost or duplicated", sched.lost + sched.duplicated);
    Ok(report.print(ui))
}

// === hold ===

/// `hold`.
pub(crate) async fn hold(args: &HoldArgs, ui: &Ui) -> anyhow::Result<bool> {
    let pki = Pki::new();
    let mut daemon = scheduler(&pki, &[])?;
    wait_listening(&mut daemon).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = daemon.usage();
    let n = args.connections;
    let shape = AgentShape {
        cpus: 16,
        mem_mb: 65_536,
        report_interval: Some(args.report_interval),
        preexisting: args.instances_per_node,
    };
    let ledger = Arc::new(Ledger::new(0));
    let connect_begin = Instant::now();
    let fleet = connect_fleet(ui, &pki, &daemon, n, shape, ledger, args.handshakes).await?;
    let connect_s = connect_begin.elapsed().as_secs_f64();
    let metrics = daemon.metrics.context("metrics")?;
    // Let every connection settle into its report rhythm before measuring.
    tokio::time::sleep(args.report_interval * 2).await;
    let before: Usage = daemon.usage();
    let measure = ui.bar(args.duration.as_secs(), "seconds measured");
    let begin = Instant::now();
    while begin.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        measure.set_position(begin.elapsed().as_secs());
        daemon.check_alive()?;
    }
    measure.finish_and_clear();
    let after = daemon.usage();
    let view = testutil::process::scheduler_view(metrics).await?;
    #[allow(clippy::cast_precision_loss)]
    let per_conn_kib = after.rss_kib.saturating_sub(idle.rss_kib) as f64 / n as f64;
    let cpu_share = (after.cpu_s - before.cpu_s) / begin.elapsed().as_secs_f64() * 100.0;
    let mut report = Report::new(
        "hold",
        json!({
            "connections": n,
            "report_interval_ms": args.report_interval.as_millis(),
            "instances_per_node": args.instances_per_node,
            "duration_s": args.duration.as_secs_f64(),
        }),
    );
    #[allow(clippy::cast_precision_loss)]
    let frames = 2.0 * n as f64 / args.report_interval.as_secs_f64();
    report.figure(
        "connect_s",
        "time until all READY (1 s metrics ticks)",
        connect_s,
        format!("{connect_s:.1} s"),
        None,
    );
    report.figure(
        "idle_rss_mib",
        "scheduler RSS, no connections",
        mib(idle.rss_kib),
        format!("{:.1} MiB", mib(idle.rss_kib)),
        None,
    );
    report.figure(
        "rss_mib",
        "scheduler RSS, all connected",
        mib(after.rss_kib),
        format!("{:.1} MiB", mib(after.rss_kib)),
        None,
    );
    report.figure(
        "rss_per_connection_kib",
        "RSS per connection",
        per_conn_kib,
        format!("{per_conn_kib:.1} KiB"),
        Some(("≤ 32 KiB", per_conn_kib <= 32.0)),
    );
    report.figure("reports_per_s", "reports received/s (READY+STATS)", frames, format!("{frames:.0}"), None);
    report.figure("cpu_share_pct", "scheduler CPU (of one core)", cpu_share, format!("{cpu_share:.1} %"), None);
    report.figure("ready_nodes", "nodes READY at the end", view.ready as f64, view.ready.to_string(), None);
    report.check("not_ready", "nodes not READY at the end", (n as u64).saturating_sub(view.ready));
    fleet.close();
    Ok(report.print(ui))
}

// === storm ===

/// `storm`.
pub(crate) async fn storm(args: &StormArgs, ui: &Ui) -> anyhow::Result<bool> {
    let pki = Pki::new();
    let mut daemon = scheduler(&pki, &[])?;
    wait_listening(&mut daemon).await?;
    let n = args.launchers;
    let shape = AgentShape {
        cpus: 16,
        mem_mb: 65_536,
        report_interval: Some(args.report_interval),
        preexisting: args.instances_per_node,
    };
    let ledger = Arc::new(Ledger::new(0));
    let fleet = connect_fleet(ui, &pki, &daemon, n, shape, ledger, args.handshakes).await?;
    let metrics = daemon.metrics.context("metrics")?;
    let generator = Generator::connect(daemon.addr.to_string(), pki.client_tls("controller")).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let commands_before = fleet.total(|c| &c.other_commands) + fleet.total(|c| &c.starts);

    ui.say(&format!("kill -9 the scheduler under {n} launchers, and start it again …"));
    let killed = Instant::now();
    let killed_ns = u64::try_from(killed.duration_since(fleet.origin()).as_nanos()).unwrap_or(0);
    daemon.kill_and_restart()?;
    let restarted_s = killed.elapsed().as_secs_f64();
    wait_listening(&mut daemon).await?;
    let listening_s = killed.elapsed().as_secs_f64();
    let back = ui.bar(n as u64, "launchers READY again");
    let deadline = Instant::now() + Duration::from_secs(120);
    let all_ready = loop {
        let view = testutil::process::scheduler_view(metrics).await.unwrap_or_default();
        back.set_position(view.ready);
        if view.ready >= n as u64 {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("only {} of {n} launchers READY 120 s after the restart", view.ready);
        }
        daemon.check_alive()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    back.finish_and_clear();
    let ready_s = all_ready.duration_since(killed).as_secs_f64();
    let reconnected = fleet.counters.iter().filter(|c| c.connects.load(Ordering::Relaxed) >= 2).count();
    let last_ready_ns = fleet.counters.iter().map(|c| c.ready_at_ns.load(Ordering::Relaxed)).max().unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let agents_ready_s = last_ready_ns.saturating_sub(killed_ns) as f64 / 1e9;
    // Watch a while longer: a scheduler that lost track would now send STARTs or STOPs, or
    // declare nodes lost.
    tokio::time::sleep(args.report_interval * 3).await;
    let view = testutil::process::scheduler_view(metrics).await?;
    let usage = daemon.usage();
    let commands_after = fleet.total(|c| &c.other_commands) + fleet.total(|c| &c.starts);
    let mut report = Report::new(
        "storm",
        json!({
            "launchers": n,
            "instances_per_node": args.instances_per_node,
            "report_interval_ms": args.report_interval.as_millis(),
        }),
    );
    report.figure("restart_s", "scheduler process started again", restarted_s, format!("{restarted_s:.2} s"), None);
    report.figure("listening_s", "scheduler listening again", listening_s, format!("{listening_s:.2} s"), None);
    report.figure("agents_ready_s", "last launcher sent READY", agents_ready_s, format!("{agents_ready_s:.2} s"), None);
    report.figure(
        "all_ready_s",
        "every node READY (metrics, 1 s ticks)",
        ready_s,
        format!("{ready_s:.2} s"),
        Some(("≤ 5 s", ready_s <= 5.0)),
    );
    report.figure(
        "peak_rss_mib",
        "restarted scheduler peak RSS",
        mib(usage.peak_rss_kib),
        format!("{:.1} MiB", mib(usage.peak_rss_kib)),
        None,
    );
    report.check("not_reconnected", "launchers that did not reconnect", (n - reconnected) as u64);
    report.check("commands_to_launchers", "STARTs/STOPs sent to launchers", commands_after - commands_before);
    report.check(
        "nodes_lost",
        "nodes declared lost",
        view.lost + generator.counters.nodes_lost.load(Ordering::Relaxed),
    );
    generator.close();
    fleet.close();
    Ok(report.print(ui))
}

/// The quantiles shown of a list of figures: min, median (the lower one of an even count), max.
pub(crate) fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let last = values.len() - 1;
    (values[0], values[last / 2], values[last])
}

/// Waits up to 60 s until the API counts `nodes` READY nodes.
pub(crate) async fn wait_ready(api: &drover_cli::client::ApiClient, ui: &Ui, nodes: u64) -> anyhow::Result<()> {
    ui.say(&format!("waiting for {nodes} launchers to be READY"));
    let by = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = api.get("/v1/status").await.ok().and_then(|s| s["nodes"]["ready"].as_u64()).unwrap_or(0);
        if ready >= nodes {
            return Ok(());
        }
        if Instant::now() > by {
            anyhow::bail!("only {ready} of {nodes} launchers READY after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The control plane of a scenario on the user's path: the scheduler, the controller (its files
/// in `work`) and an API client with the admin's certificate.
pub(crate) struct ControlPlane {
    pub(crate) scheduler: Daemon,
    pub(crate) controller: Daemon,
    pub(crate) api: drover_cli::client::ApiClient,
}

/// Mints the controller's, the admin's and the API's certificates in `pki`, and starts the
/// scheduler (with `scheduler_args`) and the controller (with `controller_args` besides its
/// own) as child processes; the API client waits up to `api_timeout` per call.
pub(crate) async fn control_plane(
    pki: &Pki,
    work: &std::path::Path,
    scheduler_args: &[&str],
    controller_args: Vec<String>,
    api_timeout: Duration,
) -> anyhow::Result<ControlPlane> {
    pki.issue_named(ssntp::Role::CONTROLLER, "local", &[], &[]);
    pki.issue_named(ssntp::Role::USER, "admin", &[], &["admin"]);
    pki.issue_named(ssntp::Role::SERVER, "api", &["localhost", "127.0.0.1"], &[]);
    let mut scheduler = scheduler(pki, scheduler_args)?;
    wait_listening(&mut scheduler).await?;
    let api_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut args = drover_cli::local::controller_args(
        &scheduler.addr.to_string(),
        work,
        &api_addr.to_string(),
        &pki.cert("server-api"),
        &pki.paths("controller-local", false),
    );
    args.extend(controller_args);
    let controller =
        Daemon::start(&sibling_binary("drover-controller")?, args, work.join("controller.log"), api_addr, None)?;
    let mut api = drover_cli::client::ApiClient::new(&drover_cli::client::ApiConfig {
        addr: api_addr.to_string(),
        cacert: pki.ca(),
        cert: Some(pki.cert("user-admin")),
        key: None,
        tenant: None,
    })?;
    api.timeout = api_timeout;
    Ok(ControlPlane { scheduler, controller, api })
}
