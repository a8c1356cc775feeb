//! `migrate`: live migration on the user's path. The real scheduler, controller and two
//! launchers (`--backend vm --migration-listen`), one guest of `--guest-mib` with
//! `--dirty-mib` of its memory written (zero pages cost next to nothing), moved back and forth
//! `--moves` times through the HTTPS API. Per move: the time from the API call until the API
//! shows the instance at the other node, and the guest's downtime and the bytes sent as its
//! device model reported them. The guest counts on its console throughout: a move that
//! restarted it instead of moving it fails the run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use drover_cli::client::ApiClient;
use drover_cli::local;
use hyper::Method;
use serde_json::{json, Value};
use ssntp::Role;
use testutil::process::{sibling_binary, Daemon};
use testutil::Pki;

use crate::scenarios::{control_plane, spread, wait_ready, ControlPlane, Report, Ui};

/// `migrate` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MigrateArgs {
    /// The guest's memory, MiB.
    #[arg(long, default_value_t = 512)]
    guest_mib: u32,
    /// How much of it the guest writes before it starts counting, MiB (at most guest - 8).
    #[arg(long, default_value_t = 448)]
    dirty_mib: u32,
    /// How many moves.
    #[arg(long, default_value_t = 10)]
    moves: usize,
    /// The launchers' `--migration-bandwidth`, MiB/s (0: no cap).
    #[arg(long, default_value_t = 0)]
    bandwidth: u64,
    /// The launchers' `--migration-downtime-limit`.
    #[arg(long, default_value = "300ms")]
    downtime_limit: String,
    /// Keep the work directory (the daemons' logs) and print where it is.
    #[arg(long)]
    keep: bool,
}

/// The value of `key=` on a log line (tracing's text format).
fn field(line: &str, key: &str) -> Option<f64> {
    let rest = line.split(&format!("{key}=")).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit() && c != '.').next()?.parse().ok()
}

async fn instance(api: &ApiClient, id: &str) -> anyhow::Result<Value> {
    api.get(&format!("/v1/instances/{id}")).await
}

async fn last_tick(api: &ApiClient, id: &str) -> anyhow::Result<Option<u64>> {
    let logs = api.get(&format!("/v1/instances/{id}/logs")).await?;
    Ok(testutil::vm::ticks(logs["data"].as_str().unwrap_or_default()).last().copied())
}

/// Waits until no node but `at` reports `id` (the copy a move left elsewhere is gone).
async fn wait_gone(api: &ApiClient, id: &str, at: &str) -> anyhow::Result<()> {
    let by = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = api.get("/v1/nodes?instances=true").await?;
        let elsewhere = nodes
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["uuid"] != at && n["reported_active"].as_array().is_some_and(|a| a.iter().any(|i| i == id)));
        if !elsewhere {
            // Reported gone; its removal follows its delivery at once.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Ok(());
        }
        if Instant::now() > by {
            bail!("the copy a move left was not removed within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn migrate(args: &MigrateArgs, ui: &Ui) -> anyhow::Result<bool> {
    if args.dirty_mib + 8 > args.guest_mib {
        bail!("--dirty-mib {} leaves the guest no room: at most --guest-mib minus 8", args.dirty_mib);
    }
    testutil::vm::x86_device_model().context("no qemu-system-x86_64 on PATH (apt-get install qemu-system-x86)")?;
    let mut work_dir = Some(tempfile::tempdir()?);
    let work = work_dir.as_ref().map(|w| w.path().to_owned()).unwrap_or_default();
    if args.keep {
        let _ = work_dir.take().map(tempfile::TempDir::keep);
        ui.say(&format!("logs in {}", work.display()));
    }
    let kernel = testutil::vm::counting_kernel_dirtying(work.as_path(), args.dirty_mib).map_err(anyhow::Error::msg)?;
    let pki = Pki::new();
    let ControlPlane { mut scheduler, mut controller, api } =
        control_plane(&pki, &work, &[], Vec::new(), Duration::from_secs(60)).await?;
    let sched = scheduler.addr.to_string();
    let mut launchers = Vec::new();
    for i in 0..2 {
        // Certificates naming their node: launchers know each other by them.
        let stem = pki.issue_named(Role::AGENT, &format!("node{i}"), &[], &[]);
        let mut a =
            local::launcher_args(&sched, &work.as_path().join(format!("launcher{i}")), &pki.paths(&stem, false));
        a.extend(["--backend", "vm", "--migration-listen", "127.0.0.1:0", "--cpu-score", "1000"].map(String::from));
        // Each move's downtime and size is in the source's "state copied" line.
        a.extend(["--log", "warn,drover_launcher=info"].map(String::from));
        a.extend(["--migration-bandwidth".to_owned(), args.bandwidth.to_string()]);
        a.extend(["--migration-downtime-limit".to_owned(), args.downtime_limit.clone()]);
        let log = work.as_path().join(format!("launcher{i}.log"));
        launchers.push(Daemon::start(&sibling_binary("drover-launcher")?, a, log, scheduler.addr, None)?);
    }

    wait_ready(&api, ui, 2).await?;
    let workload = format!(
        // Bounded: the guest never ends by itself and workloads outlive their launchers.
        "name = \"guest\"\nmax_run_time = \"15m\"\n[resources]\nvcpus = 1\nmem_mb = {}\n[backend]\ntype = \"vm\"\n\
         kernel = \"{}\"\naccel = \"tcg\"\n[restart]\npolicy = \"never\"\n",
        args.guest_mib,
        kernel.display()
    );
    api.call(Method::POST, "/v1/workloads", Some(("application/toml", workload.into_bytes())))
        .await
        .context("creating the workload")?;
    let launched = api.post("/v1/workloads/guest/launch", &json!({})).await?;
    let id = launched["instances"][0].as_str().context("no instance launched")?.to_owned();
    let by = Instant::now() + Duration::from_secs(60);
    let mut node = loop {
        let i = instance(&api, &id).await?;
        if i["state"] == "running" && last_tick(&api, &id).await?.is_some() {
            break i["node"].as_str().unwrap_or_default().to_owned();
        }
        if Instant::now() > by {
            bail!("the guest did not run and count within 60 s: {i}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let before = (scheduler.usage(), controller.usage(), launchers[0].usage(), launchers[1].usage());

    let moved: anyhow::Result<(Vec<f64>, u64)> = async {
        let bar = ui.bar(args.moves as u64, "moves");
        let mut times = Vec::new();
        let mut broken = 0u64;
        for _ in 0..args.moves {
            // The copy the last move left is removed once its end is reported; the way back is
            // refused until then.
            wait_gone(&api, &id, &node).await?;
            let tick_before = last_tick(&api, &id).await?.unwrap_or(0);
            let asked = Instant::now();
            api.post(&format!("/v1/instances/{id}/migrate"), &json!({})).await.context("asking for the move")?;
            let moved = loop {
                let i = instance(&api, &id).await?;
                let at = i["node"].as_str().unwrap_or_default();
                if at != node {
                    if i["state"] != "running" || i["restarts"] != 0 {
                        bail!("the guest did not move but restarted: {i}");
                    }
                    break at.to_owned();
                }
                if i["why"].as_str().unwrap_or_default().contains("live migration")
                    && asked.elapsed() > Duration::from_secs(1)
                {
                    bail!("the move failed: {}", i["why"]);
                }
                if asked.elapsed() > Duration::from_secs(120) {
                    bail!("no move within 120 s: {i}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            times.push(asked.elapsed().as_secs_f64() * 1000.0);
            node = moved;
            // The count goes on from where it was at the new node.
            let by = Instant::now() + Duration::from_secs(30);
            loop {
                let logs = api.get(&format!("/v1/instances/{id}/logs")).await?;
                let ticks = testutil::vm::ticks(logs["data"].as_str().unwrap_or_default());
                if ticks.len() >= 2 {
                    if ticks[0] <= tick_before {
                        broken += 1;
                    }
                    break;
                }
                if Instant::now() > by {
                    bail!("the moved guest did not count on within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            bar.inc(1);
            scheduler.check_alive()?;
            controller.check_alive()?;
            for l in &mut launchers {
                l.check_alive()?;
            }
        }
        bar.finish_and_clear();
        Ok((times, broken))
    }
    .await;
    // The guest never ends by itself, and workloads outlive their launchers: cancel it.
    let _ = api.post(&format!("/v1/instances/{id}/cancel"), &json!({})).await;
    let by = Instant::now() + Duration::from_secs(15);
    while instance(&api, &id).await.is_ok_and(|i| i["state"] != "canceled") && Instant::now() < by {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (times, broken) = moved?;
    let after = (scheduler.usage(), controller.usage(), launchers[0].usage(), launchers[1].usage());
    let copies: Vec<String> = launchers
        .iter()
        .flat_map(|l| {
            l.log_tail(usize::MAX).lines().filter(|l| l.contains("state copied")).map(str::to_owned).collect::<Vec<_>>()
        })
        .collect();
    let downtimes: Vec<f64> = copies.iter().filter_map(|l| field(l, "downtime_ms")).collect();
    let sent: Vec<f64> = copies.iter().filter_map(|l| field(l, "sent_mib")).collect();

    let params = json!({
        "guest_mib": args.guest_mib,
        "dirty_mib": args.dirty_mib,
        "moves": args.moves,
        "bandwidth_mib_s": args.bandwidth,
        "downtime_limit": args.downtime_limit,
        "accel": "tcg",
        "transport": "loopback, TLS 1.3 between the launchers",
    });
    let mut report = Report::new("migrate", params);
    let (lo, med, hi) = spread(times);
    report.figure(
        "move_ms_median",
        "API call → API shows it at the other node (median)",
        med,
        format!("{med:.0} ms (min {lo:.0}, max {hi:.0})"),
        None,
    );
    if !downtimes.is_empty() {
        let (lo, med, hi) = spread(downtimes);
        report.figure(
            "downtime_ms_median",
            "guest paused, as its device model reports (median)",
            med,
            format!("{med:.0} ms (min {lo:.0}, max {hi:.0})"),
            None,
        );
    }
    if !sent.is_empty() {
        let (_, med, _) = spread(sent);
        report.figure("sent_mib_median", "state sent per move (median)", med, format!("{med:.0} MiB"), None);
    }
    for (key, label, b, a) in [
        ("scheduler", "scheduler", before.0, after.0),
        ("controller", "controller", before.1, after.1),
        ("launcher0", "launcher 1", before.2, after.2),
        ("launcher1", "launcher 2", before.3, after.3),
    ] {
        report.daemon(key, label, " over the moves", b, a);
    }
    report.check("restarted_not_moved", "moves whose count did not go on", broken);
    let state_copies = copies.len() as u64;
    report.check(
        "missing_copy_reports",
        "moves without a state-copied line",
        (args.moves as u64).saturating_sub(state_copies),
    );
    drop((scheduler, controller, launchers, work_dir));
    Ok(report.print(ui))
}
