//! `e2e`: the user's path. The real scheduler, controller and K real launchers (sim backend)
//! as child processes; M instances launched through the HTTPS API; instances/s from the first
//! launch call until the API counts all of them `running`; each daemon's CPU and peak RSS; node
//! losses, disconnects, lost instances; steady-state CPU once all run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use drover_cli::client::ApiClient;
use drover_cli::local;
use hyper::Method;
use serde_json::{json, Value};
use testutil::process::{scheduler_view, sibling_binary, Daemon, Usage};
use testutil::Pki;

use crate::scenarios::{control_plane, mib, ControlPlane, Report, Ui};

/// `e2e` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct E2eArgs {
    /// Launchers (real `drover-launcher` processes, sim backend).
    #[arg(long, default_value_t = 10)]
    launchers: usize,
    /// Instances launched through the API.
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// Launchers' report interval.
    #[arg(long, default_value = "1s", value_parser = drover_model::parse_duration)]
    report_interval: Duration,
    /// Give up when not all run after this long.
    #[arg(long, default_value = "10m", value_parser = drover_model::parse_duration)]
    timeout: Duration,
    /// How long to measure the steady state once all run.
    #[arg(long, default_value = "10s", value_parser = drover_model::parse_duration)]
    steady: Duration,
    /// The launchers' niceness (0–19). On a real cluster each launcher has a machine of its own;
    /// here K of them share this one with the control plane, and at K = 1,000 they would take
    /// most of its CPU from the scheduler and controller being measured. Their CPU is reported
    /// apart either way; 0 runs them as equals.
    #[arg(long, default_value_t = 19, value_parser = clap::value_parser!(u8).range(0..=19))]
    launcher_nice: u8,
    /// The controller's store: `redb` (a file) or `etcd` (a local single-member etcd started for
    /// the run, with `--max-txn-ops 4096`; its CPU is not counted in the controller's).
    #[arg(long, default_value = "redb", value_parser = ["redb", "etcd"])]
    store: String,
}

/// The peak RSS a daemon may reach with `instances` launched (the scale issue's goals: 512 MiB
/// each up to 100,000 instances; at more, up to a million, 1 GiB for the scheduler and 2 GiB
/// for the controller, whose store index and cache grow with the instances).
fn rss_goal_mib(daemon: &str, instances: usize) -> f64 {
    match daemon {
        "scheduler" if instances > 100_000 => 1024.0,
        "controller" if instances > 100_000 => 2048.0,
        _ => 512.0,
    }
}

/// Most instances one launch call creates (the API's bound).
const LAUNCH_CHUNK: usize = 100_000;

struct Cluster {
    scheduler: Daemon,
    controller: Daemon,
    launchers: Vec<Daemon>,
    api: ApiClient,
    /// With `--store etcd`: the member, stopped when the run ends.
    _etcd: Option<testutil::etcd::EtcdCluster>,
    _work: tempfile::TempDir,
}

impl Cluster {
    fn usage(&self) -> (Usage, Usage, Usage) {
        let launchers = self.launchers.iter().map(Daemon::usage).fold(Usage::default(), |a, u| Usage {
            cpu_s: a.cpu_s + u.cpu_s,
            rss_kib: a.rss_kib.max(u.rss_kib),
            peak_rss_kib: a.peak_rss_kib.max(u.peak_rss_kib),
        });
        (self.scheduler.usage(), self.controller.usage(), launchers)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.scheduler.check_alive()?;
        self.controller.check_alive()?;
        for l in &mut self.launchers {
            l.check_alive()?;
        }
        Ok(())
    }

    /// Lines of every log that contain any of `texts`.
    fn log_lines(&self, texts: &[&str]) -> usize {
        std::iter::once(&self.scheduler)
            .chain(std::iter::once(&self.controller))
            .chain(&self.launchers)
            .map(|d| d.log_tail(usize::MAX).lines().filter(|l| texts.iter().any(|t| l.contains(t))).count())
            .sum()
    }
}

async fn start(args: &E2eArgs, pki: &Pki) -> anyhow::Result<Cluster> {
    let work = tempfile::tempdir()?;
    let mut controller_args = Vec::new();
    let etcd = if args.store == "etcd" {
        let etcd =
            testutil::etcd::EtcdCluster::start("e2e", 1, &["--max-txn-ops", "4096", "--max-request-bytes", "8388608"])
                .context("--store etcd needs etcd (apt-get install etcd-server)")?;
        controller_args.extend(
            ["--store", "etcd", "--etcd-max-txn-ops", "4096", "--etcd-endpoints", &etcd.endpoints().join(",")]
                .map(String::from),
        );
        Some(etcd)
    } else {
        None
    };
    let ControlPlane { scheduler, controller, api } =
        control_plane(pki, work.path(), &["--load-threshold", "1000"], controller_args, Duration::from_secs(120))
            .await?;
    let sched = scheduler.addr.to_string();
    let per_node = args.instances.div_ceil(args.launchers.max(1));
    let launcher = sibling_binary("drover-launcher")?;
    let mut launchers = Vec::with_capacity(args.launchers);
    for i in 0..args.launchers {
        let mut a = local::launcher_args(&sched, &work.path().join(format!("launcher{i}")), &pki.paths("agent", false));
        a.extend([
            "--backend".into(),
            "sim".into(),
            "--report-interval".into(),
            format!("{}ms", args.report_interval.as_millis()),
            "--max-instances".into(),
            (per_node * 2 + 16).to_string(),
            // A thousand launchers on one machine measuring their CPU at once would measure
            // each other; placement here needs no speed.
            "--cpu-score".into(),
            "1000".into(),
        ]);
        let log = work.path().join(format!("launcher{i}.log"));
        // `nice` execs the launcher: the process (and its pid, whose CPU is read) is the same.
        let mut niced = vec!["-n".to_owned(), args.launcher_nice.to_string(), launcher.display().to_string()];
        niced.extend(a);
        launchers.push(Daemon::start(std::path::Path::new("nice"), niced, log, scheduler.addr, None)?);
    }
    Ok(Cluster { scheduler, controller, launchers, api, _etcd: etcd, _work: work })
}

/// The API's count of instances by state.
async fn counts(api: &ApiClient) -> anyhow::Result<Value> {
    Ok(api.get("/v1/status").await?["instances"].clone())
}

/// How long the reads an operator makes most take, through the API, the best of three (the
/// first pays for the connection like every call of the CLI does).
struct ReadTimings {
    first_page: Duration,
    show: Duration,
    status: Duration,
    /// The dashboard's pages (HTML, rendered on the server): overview, instances, events.
    ui_overview: Duration,
    ui_instances: Duration,
    ui_events: Duration,
}

async fn read_timings(api: &ApiClient) -> anyhow::Result<ReadTimings> {
    async fn best<F, Fut>(mut call: F) -> anyhow::Result<Duration>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Value>>,
    {
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            call().await?;
            best = best.min(t.elapsed());
        }
        Ok(best)
    }
    let first_page = best(|| api.get("/v1/instances?limit=50")).await?;
    let page = api.get("/v1/instances?limit=1").await?;
    let id = page[0]["uuid"].as_str().unwrap_or_default().to_owned();
    let prefix = id.get(..8).unwrap_or_default().to_owned();
    let show = best(|| {
        let (api, prefix, id) = (api, prefix.clone(), id.clone());
        async move {
            api.get(&format!("/v1/instances?prefix={prefix}&limit=2")).await?;
            api.get(&format!("/v1/instances/{id}")).await
        }
    })
    .await?;
    let status = best(|| api.get("/v1/status")).await?;
    let page = |path: &'static str| async move {
        let (code, body) = api.raw(hyper::Method::GET, path, None).await?;
        anyhow::ensure!(code.is_success(), "{path}: {code}");
        Ok(body)
    };
    let ui_overview = best(|| page("/ui")).await?;
    let ui_instances = best(|| page("/ui/instances?state=running")).await?;
    let ui_events = best(|| page("/ui/events")).await?;
    Ok(ReadTimings { first_page, show, status, ui_overview, ui_instances, ui_events })
}

fn count(v: &Value, state: &str) -> u64 {
    v[state].as_u64().unwrap_or(0)
}

#[allow(clippy::cast_precision_loss)] // counts and seconds in a report
pub(crate) async fn e2e(args: &E2eArgs, ui: &Ui) -> anyhow::Result<bool> {
    let pki = Pki::new();
    let mut cluster = start(args, &pki).await?;

    ui.say(&format!("waiting for {} launchers to be READY", args.launchers));
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        cluster.check_alive()?;
        let ready = cluster.api.get("/v1/status").await.ok().and_then(|s| s["nodes"]["ready"].as_u64()).unwrap_or(0);
        if ready >= args.launchers as u64 {
            break;
        }
        if Instant::now() > ready_by {
            bail!("only {ready} of {} launchers READY after 60 s", args.launchers);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let workload = json!({
        "name": "e2e",
        "resources": {"vcpus": 0, "mem_mb": 1},
        "backend": {"type": "sim", "duration_ms": 86_400_000u64, "mem_usage_mb": 1},
        "restart": {"policy": "never"},
    });
    cluster
        .api
        .call(Method::POST, "/v1/workloads", Some(("application/json", serde_json::to_vec(&workload)?)))
        .await
        .context("creating the workload")?;
    let before = cluster.usage();
    let bar = ui.bar(args.instances as u64, "instances running");
    let started = Instant::now();
    let mut left = args.instances;
    while left > 0 {
        let n = left.min(LAUNCH_CHUNK);
        cluster.api.post("/v1/workloads/e2e/launch", &json!({"count": n})).await.context("launching")?;
        left -= n;
    }
    let launched_in = started.elapsed();
    let deadline = started + args.timeout;
    let mut last = Value::Null;
    let all_running = loop {
        cluster.check_alive()?;
        if let Ok(c) = counts(&cluster.api).await {
            bar.set_position(count(&c, "running"));
            if count(&c, "running") >= args.instances as u64 {
                break Some(started.elapsed());
            }
            last = c;
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    // CPU until all run is read now; the steady window opens once the last starts' follow-up
    // news (each sim's usage, known at its first sample) has gone.
    let during = cluster.usage();
    tokio::time::sleep(args.report_interval * 3).await;
    let settled = cluster.usage();
    let bytes_before = match cluster.scheduler.metrics {
        Some(m) => scheduler_view(m).await.map(|v| v.report_bytes).unwrap_or(0),
        None => 0,
    };
    tokio::time::sleep(args.steady).await;
    let after = cluster.usage();
    let bytes_after = match cluster.scheduler.metrics {
        Some(m) => scheduler_view(m).await.map(|v| v.report_bytes).unwrap_or(0),
        None => 0,
    };
    let final_counts = counts(&cluster.api).await.unwrap_or(last);
    let reads = read_timings(&cluster.api).await?;
    let lost_nodes = match cluster.scheduler.metrics {
        Some(m) => scheduler_view(m).await.map(|v| v.lost).unwrap_or(0),
        None => 0,
    };

    let params = json!({
        "launchers": args.launchers,
        "instances": args.instances,
        "report_interval_ms": args.report_interval.as_millis(),
        "launcher_nice": args.launcher_nice,
        "backend": "sim",
    });
    let mut report = Report::new("e2e", params);
    match all_running {
        Some(t) => {
            let rate = args.instances as f64 / t.as_secs_f64();
            report.figure(
                "instances_per_s",
                "instances/s, API call → all running",
                rate,
                format!("{rate:.0}"),
                Some(("≥ 10,000", rate >= 10_000.0)),
            );
            report.figure(
                "all_running_s",
                "time until all run",
                t.as_secs_f64(),
                format!("{:.1} s", t.as_secs_f64()),
                None,
            );
        }
        None => {
            let running = count(&final_counts, "running");
            report.figure(
                "all_running_s",
                "time until all run",
                f64::NAN,
                format!("not within {:?} ({running} running)", args.timeout),
                Some(("all", false)),
            );
        }
    }
    report.figure(
        "launch_calls_s",
        "launch API calls took",
        launched_in.as_secs_f64(),
        format!("{:.2} s", launched_in.as_secs_f64()),
        None,
    );
    for (key, label, b, d, s, a) in [
        ("scheduler", "scheduler", before.0, during.0, settled.0, after.0),
        ("controller", "controller", before.1, during.1, settled.1, after.1),
        ("launchers", "launchers (all)", before.2, during.2, settled.2, after.2),
    ] {
        let cpu = d.cpu_s - b.cpu_s;
        report.figure(
            &format!("{key}_cpu_s"),
            &format!("{label} CPU to all running"),
            cpu,
            format!("{cpu:.1} s"),
            None,
        );
        let steady = (a.cpu_s - s.cpu_s) / args.steady.as_secs_f64() * 100.0;
        report.figure(
            &format!("{key}_steady_cpu_pct"),
            &format!("{label} CPU, steady"),
            steady,
            format!("{steady:.1} % of a core"),
            None,
        );
        let peak = mib(a.peak_rss_kib);
        let peak_label =
            if key == "launchers" { "launcher peak RSS (largest)".to_owned() } else { format!("{label} peak RSS") };
        let goal_mib = rss_goal_mib(key, args.instances);
        report.figure(
            &format!("{key}_peak_rss_mib"),
            &peak_label,
            peak,
            format!("{peak:.1} MiB"),
            Some((&format!("≤ {goal_mib:.0} MiB"), peak <= goal_mib)),
        );
    }
    for (key, label, took, goal_ms) in [
        ("ps_first_page_ms", "`ps` first page (50), API", reads.first_page, 200.0),
        ("show_prefix_ms", "`show <8-char prefix>`, API", reads.show, 50.0),
        ("status_ms", "`status`, API", reads.status, 50.0),
        ("ui_overview_ms", "dashboard `/ui`", reads.ui_overview, 200.0),
        ("ui_instances_ms", "dashboard `/ui/instances?state=running`", reads.ui_instances, 200.0),
        ("ui_events_ms", "dashboard `/ui/events`", reads.ui_events, 200.0),
    ] {
        let ms = took.as_secs_f64() * 1000.0;
        let goal = format!("≤ {goal_ms:.0} ms");
        report.figure(key, label, ms, format!("{ms:.1} ms"), Some((goal.as_str(), ms <= goal_ms)));
    }
    // The scheduler's counter moves once a second: over the steady window it counts whole seconds.
    let report_rate = bytes_after.saturating_sub(bytes_before) as f64 / args.steady.as_secs_f64();
    report.figure(
        "steady_report_bytes_per_s",
        "launcher report bytes/s, steady (all)",
        report_rate,
        format!("{:.1} KiB/s", report_rate / 1024.0),
        None,
    );
    report.check("nodes_lost", "nodes declared lost", lost_nodes);
    let disconnects = cluster.log_lines(&["disconnected from the scheduler", "scheduler connection lost"]);
    report.check("disconnects", "disconnects (launchers and controller)", disconnects as u64);
    let not_running = (args.instances as u64).saturating_sub(count(&final_counts, "running"));
    report.check("not_running", "instances not running at the end", not_running);
    let total: u64 = final_counts.as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    report.check("extra_instances", "instances beyond those launched", total.saturating_sub(args.instances as u64));
    // The scheduler alone, on the same machine right after, once the cluster is gone.
    drop(cluster);
    ui.say(&format!(
        "placing {} instances on {} fake launchers, the scheduler alone …",
        args.instances, args.launchers
    ));
    let place = crate::scenarios::place_rate(args.launchers, args.instances, args.report_interval, ui).await?;
    report.figure("place_per_s", "`place`, scheduler alone, same run", place, format!("{place:.0}"), None);
    if let Some(t) = all_running {
        let share = args.instances as f64 / t.as_secs_f64() / place.max(1e-9) * 100.0;
        report.figure(
            "share_of_place_pct",
            "end to end / `place`",
            share,
            format!("{share:.0} %"),
            Some(("≥ 25 %", share >= 25.0)),
        );
    }
    Ok(report.print(ui))
}
