//! `artifact`: JARs on the user's path. The real scheduler, controller and one launcher
//! (`--backend artifact --volume-root DIR`, the node's own `java`), a JAR compiled here
//! (`testutil::jar`). First `--single` launches of one instance through the HTTPS API, one after
//! another, each timed from the launch call until the API shows it `exited`, beside the same JAR
//! run by `java` directly (what the JVM itself costs); then `--instances` launched in one call,
//! timed until every one has exited. Every instance must exit 0.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use drover_cli::client::ApiClient;
use drover_cli::local;
use hyper::Method;
use serde_json::json;
use testutil::process::{sibling_binary, Daemon};
use testutil::Pki;

use crate::scenarios::{control_plane, spread, wait_ready, ControlPlane, Report, Ui};

/// `artifact` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ArtifactArgs {
    /// Launches of one instance, one after another.
    #[arg(long, default_value_t = 5)]
    single: usize,
    /// Instances launched in one call.
    #[arg(long, default_value_t = 20)]
    instances: usize,
    /// Each instance's memory: the JVM's heap, MiB.
    #[arg(long, default_value_t = 64)]
    heap_mib: u64,
}

/// Waits until every instance of the workload has ended; how many exited 0.
async fn until_ended(api: &ApiClient, ids: &[String], by: Instant) -> anyhow::Result<usize> {
    loop {
        let all = api.get("/v1/instances?workload=report").await?;
        let ended: Vec<&serde_json::Value> = all
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| ids.iter().any(|id| i["uuid"] == id.as_str()))
            .filter(|i| ["exited", "failed", "canceled"].contains(&i["state"].as_str().unwrap_or_default()))
            .collect();
        if ended.len() == ids.len() {
            return Ok(ended.iter().filter(|i| i["state"] == "exited" && i["exit_code"] == 0).count());
        }
        if Instant::now() > by {
            bail!("{} of {} instances ended in time", ended.len(), ids.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn launch(api: &ApiClient, count: usize) -> anyhow::Result<Vec<String>> {
    let launched = api.post("/v1/workloads/report/launch", &json!({ "count": count })).await?;
    let ids: Vec<String> = launched["instances"]
        .as_array()
        .context("no instances launched")?
        .iter()
        .filter_map(|i| i.as_str().map(str::to_owned))
        .collect();
    Ok(ids)
}

pub(crate) async fn artifact(args: &ArtifactArgs, ui: &Ui) -> anyhow::Result<bool> {
    if args.single == 0 || args.instances == 0 {
        bail!("--single and --instances are at least 1");
    }
    let work_dir = tempfile::tempdir()?;
    let work = work_dir.path().to_owned();
    let volume = work.join("artifacts");
    std::fs::create_dir_all(&volume)?;
    let jar = testutil::jar::report(&volume).map_err(anyhow::Error::msg)?;
    // The JVM runs as the tenant's user when the launcher is root: it must reach the JAR.
    use std::os::unix::fs::PermissionsExt as _;
    for open in [&work, &volume] {
        std::fs::set_permissions(open, std::fs::Permissions::from_mode(0o755))?;
    }

    // What the JVM alone takes to run the JAR, as the launcher would start it.
    let mut bare = Vec::new();
    for _ in 0..args.single {
        let t = Instant::now();
        let out = std::process::Command::new("java")
            .arg(format!("-Xmx{}m", args.heap_mib))
            .arg("-jar")
            .arg(&jar)
            .arg("bare")
            .output()
            .context("running java")?;
        if !out.status.success() {
            bail!("java -jar {}: {}", jar.display(), String::from_utf8_lossy(&out.stderr));
        }
        bare.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    let pki = Pki::new();
    let ControlPlane { mut scheduler, mut controller, api } =
        control_plane(&pki, &work, &["--load-threshold", "1000"], Vec::new(), Duration::from_secs(60)).await?;
    let stem = pki.issue_named(ssntp::Role::AGENT, "node0", &[], &[]);
    let mut a = local::launcher_args(&scheduler.addr.to_string(), &work.join("launcher"), &pki.paths(&stem, false));
    a.extend(["--backend".into(), "artifact".into(), "--volume-root".into(), volume.display().to_string()]);
    a.extend(["--cpu-score", "1000"].map(String::from));
    let mut launcher =
        Daemon::start(&sibling_binary("drover-launcher")?, a, work.join("launcher.log"), scheduler.addr, None)?;
    wait_ready(&api, ui, 1).await?;
    let workload = format!(
        "name = \"report\"\nclass = \"batch\"\nmax_run_time = \"5m\"\n[resources]\nvcpus = 1\nmem_mb = {}\n\
         [backend]\ntype = \"artifact\"\npath = \"{}\"\nargs = [\"bench\"]\n[restart]\npolicy = \"never\"\n",
        args.heap_mib,
        jar.display()
    );
    api.call(Method::POST, "/v1/workloads", Some(("application/toml", workload.into_bytes())))
        .await
        .context("creating the workload")?;

    let before = (scheduler.usage(), controller.usage(), launcher.usage());
    let mut singles = Vec::new();
    let mut failed = 0;
    for _ in 0..args.single {
        let t = Instant::now();
        let ids = launch(&api, 1).await?;
        failed += ids.len() - until_ended(&api, &ids, Instant::now() + Duration::from_secs(60)).await?;
        singles.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let t = Instant::now();
    let ids = launch(&api, args.instances).await?;
    failed += ids.len() - until_ended(&api, &ids, Instant::now() + Duration::from_secs(600)).await?;
    let burst_s = t.elapsed().as_secs_f64();
    let after = (scheduler.usage(), controller.usage(), launcher.usage());
    for d in [&mut scheduler, &mut controller, &mut launcher] {
        d.check_alive()?;
    }
    let nodes = api.get("/v1/nodes").await?;
    let tax = nodes[0]["report"]["anchor_tax_mb"]["artifact"].as_f64().unwrap_or(-1.0);

    let params = json!({
        "single": args.single,
        "instances": args.instances,
        "heap_mib": args.heap_mib,
        "runtime": "the node's java",
    });
    let mut report = Report::new("artifact", params);
    let (one, jvm) = (spread(singles).1, spread(bare).1);
    report.figure(
        "single_ms_median",
        "one JAR: API launch → API shows it exited (median)",
        one,
        format!("{one:.0} ms"),
        None,
    );
    report.figure(
        "bare_jvm_ms_median",
        "the same JAR run by java directly (median)",
        jvm,
        format!("{jvm:.0} ms"),
        None,
    );
    let overhead = one - jvm;
    report.figure(
        "overhead_ms",
        "what the path adds to the JVM's own time",
        overhead,
        format!("{overhead:.0} ms"),
        None,
    );
    let rate = args.instances as f64 / burst_s;
    report.figure(
        "burst_s",
        &format!("{} JARs launched in one call → all exited", args.instances),
        burst_s,
        format!("{burst_s:.1} s ({rate:.1} JARs/s)"),
        None,
    );
    report.figure(
        "anchor_tax_mb",
        "the artifact backend's anchor tax the node reports",
        tax,
        format!("{tax:.0} MiB"),
        None,
    );
    for (key, label, b, a) in [
        ("scheduler", "scheduler", before.0, after.0),
        ("controller", "controller", before.1, after.1),
        ("launcher", "launcher", before.2, after.2),
    ] {
        report.daemon(key, label, "", b, a);
    }
    report.check("failed", "instances that did not exit 0", failed as u64);
    drop((scheduler, controller, launcher, work_dir));
    Ok(report.print(ui))
}
