//! The `drover` command line: `up`, and a client of the controller's API for everything else.
//!
//! The API address and the user's certificate come from flags, else `DROVER_*` environment
//! variables, else `./.drover/` as `drover up` writes it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use drover_api::views::{
    BatchAnswer, BatchBody, ChildrenAnswer, ChildrenBody, InstanceView, LaunchAnswer, LaunchBody, LogView, TaskView,
};
use drover_model::InstanceStatus;

use crate::client::{ApiClient, ApiConfig};

/// How `ps` orders instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PsOrder {
    /// By UUID, the API's page order.
    Uuid,
    /// By creation time, oldest first.
    Created,
}

/// Drover: a cluster workload scheduler. `drover up` starts a local cluster; the other commands
/// talk to a controller's API.
#[derive(Debug, Parser)]
#[command(name = "drover", version)]
pub struct Cli {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print JSON (for scripts) instead of tables.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

/// The heading of the flags every command takes, listed after the command's own.
const GLOBAL: &str = "Global options";

/// The global flags that `drover up` does not read: it mints and writes these itself.
const NOT_FOR_UP: [&str; 6] = ["api", "cacert", "cert", "key", "tenant", "json"];

/// The command line's definition, with `up --help` listing only what `up` reads.
pub fn command() -> clap::Command {
    use clap::CommandFactory as _;
    let cmd = Cli::command();
    // A global flag is copied into a subcommand only where it has no flag of that name yet: give
    // `up` hidden copies first.
    let hidden: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| NOT_FOR_UP.contains(&a.get_id().as_str()))
        .map(|a| a.clone().hide(true))
        .collect();
    cmd.mut_subcommand("up", |up| up.args(hidden))
}

/// How to reach the API.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The controller's API, `host:port` [default: the address `drover up` wrote in `--dir`,
    /// else 127.0.0.1:8889].
    #[arg(long, env = "DROVER_API", global = true, help_heading = GLOBAL)]
    pub api: Option<String>,
    /// CA of the API's certificate [default: .drover/pki/ca.pem].
    #[arg(long, env = "DROVER_CACERT", global = true, help_heading = GLOBAL)]
    pub cacert: Option<PathBuf>,
    /// Your certificate (user role; Organization = your tenants)
    /// [default: .drover/pki/user-local.pem].
    #[arg(long, env = "DROVER_CERT", global = true, help_heading = GLOBAL)]
    pub cert: Option<PathBuf>,
    /// Your certificate's key [default: <cert stem>-key.pem].
    #[arg(long, env = "DROVER_KEY", global = true, help_heading = GLOBAL)]
    pub key: Option<PathBuf>,
    /// Act for this tenant (when your certificate names several, or you are admin).
    #[arg(long, env = "DROVER_TENANT", global = true, help_heading = GLOBAL)]
    pub tenant: Option<String>,
    /// Directory `drover up` wrote (for the defaults above).
    #[arg(long, default_value = ".drover", global = true, help_heading = GLOBAL)]
    pub dir: PathBuf,
}

impl ApiArgs {
    /// The API configuration, defaults filled in from `--dir`.
    pub fn config(&self) -> ApiConfig {
        let pki = self.dir.join("pki");
        let written = || {
            let text = std::fs::read_to_string(self.dir.join(crate::up::API_ADDRESS_FILE)).ok()?;
            Some(text.trim().to_owned()).filter(|a| !a.is_empty())
        };
        ApiConfig {
            // `https://host:port` too, as tasks are given it in DROVER_API.
            addr: self
                .api
                .as_deref()
                .map(|a| a.strip_prefix("https://").unwrap_or(a).trim_end_matches('/').to_owned())
                .or_else(written)
                .unwrap_or_else(|| "127.0.0.1:8889".into()),
            cacert: self.cacert.clone().unwrap_or_else(|| pki.join(drover_cert::CA_CERT)),
            cert: Some(self.cert.clone().unwrap_or_else(|| pki.join(crate::up::USER_CERT))),
            key: self.key.clone(),
            tenant: self.tenant.clone(),
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Start a local cluster (scheduler, controller, one launcher per NUMA node) as child
    /// processes, run a demo workload and show its output, then show live status until
    /// Ctrl-C. Certificates are minted into DIR/pki on the first run; logs go to DIR/logs.
    Up {
        /// Scheduler port on 127.0.0.1.
        #[arg(long, default_value_t = ssntp::DEFAULT_PORT)]
        port: u16,
        /// API port on 127.0.0.1.
        #[arg(long, default_value_t = 8889)]
        api_port: u16,
        /// Stop after the demo workload instead of running until Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Directory holding drover-scheduler, drover-controller and drover-launcher
        /// (default: next to drover).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Highly available, on this machine: three etcd members (ports PORT+100..102 and
        /// PORT+110..112, data in DIR/etcd), two schedulers (PORT and PORT+2; one active) and two
        /// controllers (API-PORT and API-PORT+2; one leads, the other redirects to it) sharing
        /// their state on etcd. The status line says who leads. Needs etcd (etcd-server).
        #[arg(long)]
        ha: bool,
    },
    /// Workload definitions.
    #[command(subcommand)]
    Workload(WorkloadCmd),
    /// Launch instances of a workload.
    Run {
        /// Workload name.
        workload: String,
        /// How many instances.
        #[arg(short = 'n', long, default_value_t = 1)]
        count: usize,
        /// Wait until every instance has ended (exit status 1 if any failed).
        #[arg(long)]
        wait: bool,
        /// A parameter for every instance (repeatable), checked against the workload's schema.
        #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
        params: Vec<(String, String)>,
    },
    /// Where a workload's instances would go now, or exactly why not (a dry run).
    ///
    /// Nothing is created: the scheduler applies its placement rules to the nodes as they are.
    /// Exit status 0 when every instance would start now, 1 when some would not (they would
    /// queue, or fail), 2 on an error, like `nomad job plan`.
    #[command(
        after_help = "Examples:\n  drover plan web.toml -n 20     a file, not saved\n  drover plan web -n 20          a saved workload\n  drover plan build.workorder    a task file"
    )]
    Plan {
        /// A workload file (.toml, .json, .workorder, .batch), or the name of a saved workload.
        workload: String,
        /// How many instances.
        #[arg(short = 'n', long = "count", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(ssntp::payload::MAX_PLAN_COUNT)))]
        count: u32,
    },
    /// List instances, with why each waits or failed: a page, and a count of all by state.
    Ps {
        /// Only this workload's.
        #[arg(long)]
        workload: Option<String>,
        /// Only instances in this state: pending, starting, queued, running, exited, failed,
        /// stopped, lost or canceled.
        #[arg(long, value_parser = parse_state)]
        state: Option<String>,
        /// Only instances running on this node (UUID).
        #[arg(long)]
        node: Option<String>,
        /// Only the instances of this batch (the UUID `batch submit` prints).
        #[arg(long)]
        batch: Option<ssntp::Uuid>,
        /// Instances per page.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Start after this instance UUID (the next page; `ps` prints the command for it).
        #[arg(long)]
        after: Option<String>,
        /// Every matching instance, page after page.
        #[arg(long, conflicts_with = "after")]
        all: bool,
        /// Order: `uuid` (pages stay stable while instances come and go) or `created` (oldest
        /// first; reads every matching instance, as `--all` does, to sort them).
        #[arg(long, value_enum, default_value_t = PsOrder::Uuid)]
        sort: PsOrder,
    },
    /// Show one instance.
    Show {
        /// Instance UUID (or a unique prefix).
        id: String,
    },
    /// Print an instance's output (results/output.txt on its node).
    Logs {
        /// Instance UUID (or a unique prefix).
        id: String,
        /// Keep printing new output until the instance ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Stop an instance (it can be started again).
    Stop {
        /// Instance UUID (or a unique prefix).
        id: String,
    },
    /// Start a stopped or ended instance again.
    Start {
        /// Instance UUID (or a unique prefix).
        id: String,
    },
    /// Move a running vm instance to another node without stopping it (live migration; admin).
    /// Its events (`drover show ID`) say where it runs once the state is copied, or why it
    /// stayed. Both nodes' launchers need --migration-listen.
    Migrate {
        /// Instance UUID (or a unique prefix).
        id: String,
        /// The node to move it to; where the scheduler's placement rules choose when absent.
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
    },
    /// Cancel an instance for good.
    Cancel {
        /// Instance UUID (or a unique prefix).
        id: String,
    },
    /// Delete an ended instance and its files on the node.
    Rm {
        /// Instance UUID (or a unique prefix).
        id: String,
    },
    /// Batch work.
    #[command(subcommand)]
    Batch(BatchCmd),
    /// Tasks: the tree of root tasks and the children they asked for; decommissioning a root;
    /// and, from inside a running task, asking for children.
    #[command(subcommand)]
    Task(TaskCmd),
    /// Nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Cluster status: scheduler link, nodes, instances by state.
    Status,
    /// Print events (every change, in order).
    Events {
        /// Keep printing new events as they happen (from the API's event stream; a controller
        /// that restarts or steps down is followed without missing or repeating any).
        #[arg(short, long)]
        follow: bool,
        /// Start after this revision.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

/// `drover workload …`
#[derive(Debug, Subcommand)]
pub enum WorkloadCmd {
    /// Create a workload from a file (`.toml` or `.json`, or a task file `NAME.workorder` /
    /// `NAME.batch`); --replace overwrites one.
    Create {
        /// The workload file.
        file: PathBuf,
        /// Replace an existing workload of that name.
        #[arg(long)]
        replace: bool,
    },
    /// List workloads (also `ls`, as `node ls`).
    #[command(visible_alias = "ls")]
    List,
    /// Show a workload's file.
    Show {
        /// Name.
        name: String,
    },
    /// Delete a workload (no live instances may remain).
    Rm {
        /// Name.
        name: String,
    },
}

/// `drover batch …`
#[derive(Debug, Subcommand)]
pub enum BatchCmd {
    /// Submit N instances of a batch-class workload; prints which started, which are queued,
    /// which were rejected, and how many more would fit.
    Submit {
        /// Workload name (class = "batch").
        workload: String,
        /// How many instances.
        #[arg(short = 'n', long, default_value_t = 1)]
        count: usize,
        /// How long to wait for the scheduler's answers, ms.
        #[arg(long, default_value_t = 3000)]
        wait_ms: u64,
        /// A parameter for every instance (repeatable), checked against the workload's schema.
        #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
        params: Vec<(String, String)>,
    },
}

/// `drover task …`
#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// List task instances as trees: each root, then the children it asked for, indented.
    Ls,
    /// Decommission a root task's instance: no further task of that root runs (its queued
    /// tasks are canceled, children it asks for are refused); running ones finish.
    Decommission {
        /// The root instance's UUID (or a unique prefix).
        id: String,
    },
    /// From inside a running task: ask for child tasks, named `<this task>/<TASK>`. Uses the
    /// credential Drover gives every task (DROVER_API, DROVER_CA_PEM, DROVER_TASK_TOKEN); no
    /// certificate needed.
    Spawn {
        /// The task to run (a task of the same tenant).
        task: String,
        /// How many instances.
        #[arg(short = 'n', long, default_value_t = 1)]
        count: usize,
        /// A parameter (repeatable).
        #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
        params: Vec<(String, String)>,
    },
}

/// `KEY=VALUE`, for `--param`.
fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{text:?}: give KEY=VALUE")),
    }
}

/// Parameters as the API takes them (text; the server types them by the schema).
fn params_of(pairs: Vec<(String, String)>) -> std::collections::BTreeMap<String, ssntp::payload::ParamValue> {
    pairs.into_iter().map(|(k, v)| (k, ssntp::payload::ParamValue::Text(v))).collect()
}

/// `drover node …`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes with capacity and usage (also `list`, as `workload list`).
    #[command(visible_alias = "list")]
    Ls,
    /// What one node is and offers: host, architectures, CPU model and score, memory, disk,
    /// backends and features, labels, PCI devices, cached images, NUMA node.
    Show {
        /// Node UUID (or a unique prefix).
        id: String,
    },
    /// Move every instance off a node and put it in maintenance (admin). Its vm instances move
    /// live first where they can (both launchers run with --migration-listen); the rest are
    /// stopped and start elsewhere.
    Evacuate {
        /// Node UUID (or a unique prefix).
        id: String,
        /// Stop and restart everything, vm instances too (no live migration).
        #[arg(long)]
        no_live: bool,
    },
    /// Drain a node gracefully (admin): it takes no new work, what runs may finish until the
    /// deadline, and what is left then is stopped and starts elsewhere. `drover node ls` shows
    /// it draining; `drover node restore` ends it.
    Drain {
        /// Node UUID (or a unique prefix).
        id: String,
        /// How long running work may finish (`90s`, `30m`, `2h`; at most 7d).
        #[arg(long, default_value = "1h")]
        deadline: String,
    },
    /// Bring a node back from maintenance (admin).
    Restore {
        /// Node UUID (or a unique prefix).
        id: String,
    },
    /// Declare a silent node gone for good (admin): the scheduler declares it lost now and its
    /// instances start elsewhere per their restart policy. The way out when the node-loss
    /// brake holds back NODE_LOST because most nodes really died (the scheduler's heartbeat
    /// says BRAKE). Refused for a node that still reports.
    Forget {
        /// Node UUID (or a unique prefix of one `drover node ls` lists).
        id: String,
    },
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

/// Prints rows as aligned columns.
/// Rows of a table whose header was printed with an earlier page.
fn table_rows(headers: &[&str], rows: &[Vec<String>]) {
    table_with(headers, rows, false);
}

fn table(headers: &[&str], rows: &[Vec<String>]) {
    table_with(headers, rows, true);
}

fn table_with(headers: &[&str], rows: &[Vec<String>], header: bool) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(&cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    if header {
        line(headers.iter().map(|h| (*h).to_owned()).collect());
    }
    for row in rows {
        line(row.clone());
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// An instance state's name, refused when it is none (a typo must not list nothing, silently).
fn parse_state(text: &str) -> Result<String, String> {
    let names: Vec<&str> = InstanceStatus::ALL.iter().map(|s| s.name()).collect();
    if names.contains(&text) {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not a state; one of {}", names.join(", ")))
    }
}

/// Node names by UUID, as `node ls` shows them (its host name), for tables of instances.
async fn host_names(api: &ApiClient) -> std::collections::HashMap<ssntp::Uuid, String> {
    let Ok(nodes) = api.get("/v1/nodes").await else { return std::collections::HashMap::new() };
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let uuid = n["uuid"].as_str()?.parse().ok()?;
            let host = n["stats"]["hostname"].as_str().filter(|h| !h.is_empty())?;
            Some((uuid, host.to_owned()))
        })
        .collect()
}

fn instance_rows(list: &[InstanceView], hosts: &std::collections::HashMap<ssntp::Uuid, String>) -> Vec<Vec<String>> {
    let now = drover_model::unix_ms_now();
    list.iter()
        .map(|i| {
            let state = match i.exit_code {
                Some(code) => format!("{}({code})", i.state),
                None => i.state.to_string(),
            };
            let why = if i.why.is_empty() { "-".to_owned() } else { i.why.clone() };
            vec![
                short(&i.uuid.to_string()),
                i.tenant.clone(),
                i.workload.clone(),
                state,
                i.node.map_or("-".into(), |n| hosts.get(&n).cloned().unwrap_or_else(|| short(&n.to_string()))),
                i.restarts.to_string(),
                age(now, Some(i.created_unix_ms)),
                why,
            ]
        })
        .collect()
}

const INSTANCE_HEADERS: [&str; 8] = ["ID", "TENANT", "WORKLOAD", "STATE", "NODE", "RESTARTS", "AGE", "WHY"];

struct PsArgs {
    workload: Option<String>,
    state: Option<String>,
    node: Option<String>,
    batch: Option<ssntp::Uuid>,
    limit: usize,
    after: Option<String>,
    all: bool,
    sort: PsOrder,
}

/// A page of instances and the counts by state (or, with `--all`, every page as it comes).
async fn ps(api: &ApiClient, args: PsArgs, json: bool) -> anyhow::Result<()> {
    let mut filters = Vec::new();
    if let Some(w) = &args.workload {
        filters.push(format!("workload={w}"));
    }
    if let Some(s) = &args.state {
        filters.push(format!("state={s}"));
    }
    if let Some(n) = &args.node {
        let node = resolve(api, n, "node", "/v1/nodes").await?;
        filters.push(format!("node={node}"));
    }
    if let Some(b) = &args.batch {
        filters.push(format!("batch={b}"));
    }
    let hosts = if json { std::collections::HashMap::new() } else { host_names(api).await };
    if args.sort == PsOrder::Created {
        let mut list = Vec::new();
        let mut after = args.after.clone();
        loop {
            let mut query = filters.clone();
            query.push("limit=1000".to_owned());
            query.extend(after.as_ref().map(|a| format!("after={a}")));
            let (page, next): (Vec<InstanceView>, Option<String>) =
                api.get_page(&format!("/v1/instances?{}", query.join("&"))).await?;
            list.extend(page);
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        list.sort_by_key(|i| (i.created_unix_ms, i.uuid));
        if json {
            print_json(&serde_json::to_value(&list)?);
        } else {
            table(&INSTANCE_HEADERS, &instance_rows(&list, &hosts));
        }
        return Ok(());
    }
    let limit = if args.all { 1000 } else { args.limit.max(1) };
    let mut after = args.after.clone();
    let mut first = true;
    loop {
        let mut query = filters.clone();
        query.push(format!("limit={limit}"));
        if let Some(a) = &after {
            query.push(format!("after={a}"));
        }
        let (list, next): (Vec<InstanceView>, Option<String>) =
            api.get_page(&format!("/v1/instances?{}", query.join("&"))).await?;
        if json {
            print_json(&serde_json::to_value(&list)?);
        } else if first || !list.is_empty() {
            let rows = instance_rows(&list, &hosts);
            if first {
                table(&INSTANCE_HEADERS, &rows);
            } else {
                table_rows(&INSTANCE_HEADERS, &rows);
            }
        }
        first = false;
        match next {
            Some(n) if args.all => after = Some(n),
            Some(n) => {
                if !json {
                    let status = api.get("/v1/status").await?;
                    eprintln!("{}", summary_line(&status["instances"], list.len()));
                    eprintln!("next page: drover ps --after {n} (or --all)");
                }
                return Ok(());
            }
            None => return Ok(()),
        }
    }
}

/// "showing 50 of 1,000,000 instances: 999,950 running, 50 pending".
fn summary_line(counts: &Value, shown: usize) -> String {
    let by_state: Vec<(String, u64)> = counts
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(state, n)| n.as_u64().map(|n| (state.clone(), n)))
        .collect();
    let total: u64 = by_state.iter().map(|(_, n)| n).sum();
    let parts: Vec<String> = by_state.iter().map(|(state, n)| format!("{} {state}", thousands(*n))).collect();
    format!("showing {shown} of {} instances: {}", thousands(total), parts.join(", "))
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Finds the instance (or node) a UUID or unique prefix names. Instances are looked up by
/// prefix on the server: a short ID costs the same with a million instances as with ten.
async fn resolve(api: &ApiClient, id: &str, what: &str, list_path: &str) -> anyhow::Result<String> {
    if id.len() == 36 {
        return Ok(id.to_owned());
    }
    let list = if list_path == "/v1/instances" {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            bail!("{id:?} is not the start of an {what} UUID");
        }
        api.get(&format!("/v1/instances?prefix={}&limit=2", id.to_ascii_lowercase())).await?
    } else {
        api.get(list_path).await?
    };
    let matches: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("uuid").and_then(Value::as_str))
        .filter(|u| u.starts_with(id))
        .map(str::to_owned)
        .collect();
    match &matches[..] {
        [one] => Ok(one.clone()),
        [] => bail!("no {what} starts with {id:?}"),
        _ => bail!("{id:?} matches {} {what}s; give more of the UUID", matches.len()),
    }
}

/// Runs one command against the API (everything but `up`).
///
/// # Errors
/// The API's refusal or an unreachable API, with what to do about it.
pub async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    if let Cmd::Task(TaskCmd::Spawn { task, count, params }) = cli.command {
        run_task_spawn(task, count, params, cli.json).await?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let config = cli.api.config();
    let api = ApiClient::new(&config).with_context(|| {
        format!(
            "loading the API credentials (CA {}, certificate {}); run `drover up` first or pass --cacert/--cert",
            config.cacert.display(),
            config.cert.as_deref().unwrap_or(Path::new("-")).display()
        )
    })?;
    let json = cli.json;
    match cli.command {
        Cmd::Up { .. } => unreachable!("handled by the binary"),
        Cmd::Workload(cmd) => workload(&api, cmd, json).await?,
        Cmd::Run { workload, count, wait, params } => {
            return run_workload(&api, &workload, count, params_of(params), wait, json).await
        }
        Cmd::Task(cmd) => task(&api, cmd, json).await?,
        Cmd::Ps { workload, state, node, batch, limit, after, all, sort } => {
            ps(&api, PsArgs { workload, state, node, batch, limit, after, all, sort }, json).await?;
        }
        Cmd::Show { id } => {
            let id = resolve(&api, &id, "instance", "/v1/instances").await?;
            let v = api.get(&format!("/v1/instances/{id}")).await?;
            if json {
                print_json(&v);
            } else {
                for key in ["uuid", "workload", "tenant", "state", "exit_code", "node", "restarts", "batch", "why"] {
                    println!("{:<10} {}", format!("{key}:"), text(&v, key));
                }
                if let Some(at) = v["created_unix_ms"].as_u64().filter(|ms| *ms > 0) {
                    let ago = age(drover_model::unix_ms_now(), Some(at));
                    println!("{:<10} {} UTC ({ago} ago)", "created:", drover_model::format_utc(at));
                }
            }
        }
        Cmd::Logs { id, follow } => logs(&api, &id, follow, json).await?,
        Cmd::Stop { id } => action(&api, &id, "stop", json).await?,
        Cmd::Start { id } => action(&api, &id, "start", json).await?,
        Cmd::Cancel { id } => action(&api, &id, "cancel", json).await?,
        Cmd::Migrate { id, to } => {
            let id = resolve(&api, &id, "instance", "/v1/instances").await?;
            let query = to.map(|to| format!("?to={to}")).unwrap_or_default();
            let v = api.post(&format!("/v1/instances/{id}/migrate{query}"), &json!({})).await?;
            if json {
                print_json(&v);
            } else {
                println!("{}: migration requested (see `drover show {}`)", short(&id), short(&id));
            }
        }
        Cmd::Rm { id } => {
            let id = resolve(&api, &id, "instance", "/v1/instances").await?;
            api.call(Method::DELETE, &format!("/v1/instances/{id}"), None).await?;
            if !json {
                println!("deleted {id}");
            }
        }
        Cmd::Batch(BatchCmd::Submit { workload, count, wait_ms, params }) => {
            let body = BatchBody { workload, count, wait_ms: Some(wait_ms), params: params_of(params) };
            let answer: BatchAnswer = api.post_as("/v1/batch", &body).await?;
            if json {
                print_json(&serde_json::to_value(&answer)?);
            } else {
                println!(
                    "batch {}: {} started, {} queued, {} rejected, {} undecided; about {} more would fit now",
                    answer.batch,
                    answer.started.len(),
                    answer.queued.len(),
                    answer.rejected.len(),
                    answer.pending.len(),
                    answer.slots_remaining_estimate
                );
                if !answer.slots_remaining.is_empty() {
                    let per: Vec<String> = ssntp::payload::SizeClass::ALL
                        .iter()
                        .filter_map(|c| answer.slots_remaining.get(c.name()).map(|n| format!("{n} {}", c.name())))
                        .collect();
                    println!("slots remaining by size: {}", per.join(", "));
                }
                let hosts = host_names(&api).await;
                let mut rows = Vec::new();
                for part in [&answer.started, &answer.queued, &answer.rejected, &answer.pending] {
                    rows.extend(instance_rows(part, &hosts));
                }
                table(&INSTANCE_HEADERS, &rows);
            }
        }
        Cmd::Node(cmd) => node(&api, cmd, json).await?,
        Cmd::Status => {
            let mut v = api.get("/v1/status").await?;
            // With several controllers, who leads (older controllers have no such route).
            let leader = api.get("/v1/leader").await.ok().map(|l| l["leader"].clone()).filter(|l| !l.is_null());
            if json {
                if let Some(l) = leader {
                    v["leader"] = l;
                }
                print_json(&v);
            } else {
                if let Some(l) = &leader {
                    println!("leader:    controller {} (API {})", short(&text(l, "uuid")), text(l, "addr"));
                }
                let s = &v["scheduler"];
                if s["connected"].as_bool() == Some(true) {
                    println!("scheduler: connected to {} ({})", text(s, "target"), short(&text(s, "uuid")));
                } else {
                    println!("scheduler: NOT connected ({})", text(s, "last_error"));
                }
                let summary = |o: &Value| {
                    o.as_object().map_or_else(String::new, |m| {
                        m.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
                    })
                };
                println!("nodes:     {}", summary(&v["nodes"]));
                println!("instances: {}", summary(&v["instances"]));
                println!("revision:  {}", text(&v, "revision"));
            }
        }
        Cmd::Plan { workload, count } => return plan(&api, &workload, count, json).await,
        Cmd::Events { follow: true, after } => {
            // Following: one line (or JSON object) per event, as they come, from the stream.
            api.follow_events(after, |e| {
                if json {
                    println!("{e}");
                } else {
                    println!("{}", event_line(&e));
                }
                std::io::stdout().flush()?;
                Ok(())
            })
            .await?;
        }
        Cmd::Events { follow: false, after } => {
            let page = api.get(&format!("/v1/events?after={after}")).await?;
            let events = page["events"].as_array().cloned().unwrap_or_default();
            if json {
                // One answer, one JSON array, like every other command.
                print_json(&Value::Array(events));
            } else {
                for e in &events {
                    println!("{}", event_line(e));
                }
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn workload(api: &ApiClient, cmd: WorkloadCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        WorkloadCmd::Create { file, replace } => {
            let WorkloadFile { api, name, content } = WorkloadFile::read(api, &file)?;
            let v = if replace {
                api.call(Method::PUT, &format!("/v1/workloads/{name}"), Some(content)).await?
            } else {
                api.call(Method::POST, "/v1/workloads", Some(content)).await.map_err(|e| {
                    match e.downcast_ref::<crate::client::ApiFailure>() {
                        Some(f) if f.status == hyper::StatusCode::CONFLICT => anyhow::anyhow!(
                            "{}; `drover workload create --replace {}` replaces it",
                            f.message.split(';').next().unwrap_or(&f.message),
                            file.display()
                        ),
                        _ => e,
                    }
                })?
            };
            let kind = if is_task_file(&file) { "task" } else { "workload" };
            if json {
                print_json(&v);
            } else {
                println!("{kind} {} saved", text(&v, "name"));
            }
        }
        WorkloadCmd::List => {
            let list = api.get("/v1/workloads").await?;
            if json {
                print_json(&list);
            } else {
                let rows: Vec<Vec<String>> = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|w| {
                        vec![
                            text(w, "name"),
                            text(w, "tenant"),
                            text(w, "class"),
                            text(w, "backend"),
                            text(w, "vcpus"),
                            text(w, "mem_mb"),
                        ]
                    })
                    .collect();
                table(&["NAME", "TENANT", "CLASS", "BACKEND", "VCPUS", "MEM_MB"], &rows);
            }
        }
        WorkloadCmd::Show { name } => {
            let v = api.get(&format!("/v1/workloads/{name}")).await?;
            if json {
                print_json(&v);
            } else {
                print!("{}", text(&v, "source"));
                if !text(&v, "source").ends_with('\n') {
                    println!();
                }
            }
        }
        WorkloadCmd::Rm { name } => {
            api.call(Method::DELETE, &format!("/v1/workloads/{name}"), None).await?;
            if !json {
                println!("workload {name} deleted");
            }
        }
    }
    Ok(())
}

async fn run_workload(
    api: &ApiClient,
    workload: &str,
    count: usize,
    params: std::collections::BTreeMap<String, ssntp::payload::ParamValue>,
    wait: bool,
    json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let launched: LaunchAnswer =
        api.post_as(&format!("/v1/workloads/{workload}/launch"), &LaunchBody { count, params }).await?;
    if !wait {
        if json {
            print_json(&serde_json::to_value(&launched)?);
        } else {
            for id in &launched.instances {
                println!("{id}");
            }
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let wanted: std::collections::HashSet<ssntp::Uuid> = launched.instances.iter().copied().collect();
    let total = wanted.len();
    let progress = if !json && total > 0 {
        let bar = indicatif::ProgressBar::new(u64::try_from(total).unwrap_or(u64::MAX));
        bar.set_style(
            indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} done, {msg}")
                .expect("a fixed template")
                .progress_chars("#>-"),
        );
        Some(bar)
    } else {
        None
    };
    let mut interval = tokio::time::interval(Duration::from_millis(500));
    let finals = loop {
        interval.tick().await;
        let list: Vec<InstanceView> = api.get_as(&format!("/v1/instances?workload={workload}")).await?;
        let mine: Vec<InstanceView> = list.into_iter().filter(|i| wanted.contains(&i.uuid)).collect();
        let count_of = |s: InstanceStatus| mine.iter().filter(|i| i.state == s).count();
        let done = mine.iter().filter(|i| i.state.is_final()).count();
        if let Some(bar) = &progress {
            bar.set_position(u64::try_from(done).unwrap_or(u64::MAX));
            // Why work waits, in the scheduler's words, so a wait is never silent.
            let waiting = mine.iter().find(|i| i.state == InstanceStatus::Queued && !i.why.is_empty());
            bar.set_message(format!(
                "{} running, {} queued, {} failed{}",
                count_of(InstanceStatus::Running),
                count_of(InstanceStatus::Queued),
                count_of(InstanceStatus::Failed),
                waiting.map_or(String::new(), |i| format!(" — waiting: {}", i.why))
            ));
        }
        // Instances deleted meanwhile no longer count.
        if done == total || mine.len() < total && done == mine.len() {
            if let Some(bar) = &progress {
                bar.finish();
            }
            break mine;
        }
    };
    let failed = finals.iter().filter(|i| !i.succeeded()).count();
    if json {
        print_json(&serde_json::to_value(&finals)?);
    } else {
        table(&INSTANCE_HEADERS, &instance_rows(&finals, &host_names(api).await));
    }
    Ok(if failed == 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}

async fn logs(api: &ApiClient, id: &str, follow: bool, json: bool) -> anyhow::Result<()> {
    let id = resolve(api, id, "instance", "/v1/instances").await?;
    let mut printed = String::new();
    loop {
        let state: InstanceView = api.get_as(&format!("/v1/instances/{id}")).await?;
        let data = match api.get_as::<LogView>(&format!("/v1/instances/{id}/logs?max_bytes=1048576")).await {
            Ok(log) => log.data,
            Err(e) if follow && state.node.is_none() => {
                tracing::debug!(error = %e, "not running yet");
                String::new()
            }
            Err(e) => return Err(e),
        };
        // The node keeps the tail; print what is new since the last fetch.
        let new = data.strip_prefix(printed.as_str()).map_or_else(|| data.clone(), str::to_owned);
        if json {
            // One object per fetch (JSON lines when following).
            println!("{}", json!({"instance": id, "state": state.state.name(), "data": new}));
        } else {
            print!("{new}");
        }
        std::io::stdout().flush()?;
        printed = data;
        if !follow || state.state.is_final() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn action(api: &ApiClient, id: &str, verb: &str, json: bool) -> anyhow::Result<()> {
    let id = resolve(api, id, "instance", "/v1/instances").await?;
    let v = api.post(&format!("/v1/instances/{id}/{verb}"), &json!({})).await?;
    if json {
        print_json(&v);
    } else {
        println!("{}", action_outcome(verb, &short(&id), &text(&v, "state")));
    }
    Ok(())
}

/// What a stop, cancel or start did, in words that do not read as a refusal: a stop of running
/// work is on its way, not done.
fn action_outcome(verb: &str, id: &str, state: &str) -> String {
    match (verb, state) {
        ("stop", "stopped") | ("cancel", "canceled") => format!("{id} {state}"),
        ("stop" | "cancel", _) => format!("{verb} requested: {id} is {state} until its node confirms"),
        _ => format!("{verb}: {id} is {state}"),
    }
}

async fn node(api: &ApiClient, cmd: NodeCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::Ls => {
            let list = api.get("/v1/nodes").await?;
            if json {
                print_json(&list);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    let s = &n["stats"];
                    let mem = if s.is_null() {
                        "-".into()
                    } else {
                        format!("{}/{}", text(s, "mem_available_mb"), text(s, "mem_total_mb"))
                    };
                    let instances = text(n, "instances");
                    vec![
                        short(&text(n, "uuid")),
                        // READY by its own account, but the scheduler places nothing there.
                        match n["report"]["draining_until_unix_ms"].as_u64() {
                            Some(until) => {
                                format!("draining ({} left)", left_until(drover_model::unix_ms_now(), until))
                            }
                            None if n["load_blocked"] == true => "loaded".to_owned(),
                            None => text(n, "status"),
                        },
                        text(s, "hostname"),
                        seen_ago(drover_model::unix_ms_now(), n["last_seen_unix_ms"].as_u64()),
                        text(s, "cpus_online"),
                        mem,
                        text(s, "load"),
                        instances,
                    ]
                })
                .collect();
            table(&["ID", "STATUS", "HOST", "LAST_SEEN", "CPUS", "MEM_FREE/TOTAL_MB", "LOAD", "RUNNING"], &rows);
        }
        NodeCmd::Show { id } => {
            let list = api.get("/v1/nodes").await?;
            let found: Vec<&Value> = list
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| !id.is_empty() && text(n, "uuid").starts_with(&id))
                .collect();
            let node = match found[..] {
                [one] => one,
                [] => bail!("no node {id:?} (drover node ls lists them)"),
                _ => bail!("{id:?} names {} nodes; give more of the UUID", found.len()),
            };
            if json {
                print_json(node);
            } else {
                print!("{}", node_details(node));
            }
        }
        NodeCmd::Evacuate { id, .. } | NodeCmd::Restore { id } | NodeCmd::Forget { id } if id.is_empty() => {
            bail!("a node id is required")
        }
        NodeCmd::Evacuate { id, no_live } => {
            let verb = if no_live { "evacuate?live=false" } else { "evacuate" };
            node_action(api, &id, verb, json).await?;
        }
        NodeCmd::Drain { id, .. } if id.is_empty() => bail!("a node id is required"),
        NodeCmd::Drain { id, deadline } => {
            drover_model::parse_duration(&deadline).map_err(|e| anyhow::anyhow!("--deadline {deadline:?}: {e}"))?;
            node_action(api, &id, &format!("drain?deadline={deadline}"), json).await?;
        }
        NodeCmd::Restore { id } => node_action(api, &id, "restore", json).await?,
        NodeCmd::Forget { id } => node_action(api, &id, "forget", json).await?,
    }
    Ok(())
}

/// How long until `until` (Unix ms), in the largest unit: `42m`, `3h`, `0s` once past.
fn left_until(now_ms: u64, until_ms: u64) -> String {
    let s = until_ms.saturating_sub(now_ms) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// `drover node show`'s text: one fact a line, what the node's last report says.
fn node_details(node: &Value) -> String {
    let r = if node["report"].is_null() { &node["stats"] } else { &node["report"] };
    let list = |v: &Value| {
        let items: Vec<String> =
            v.as_array().into_iter().flatten().map(|x| x.as_str().unwrap_or_default().to_owned()).collect();
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(", ")
        }
    };
    let labels: Vec<String> = r["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let pci: Vec<String> = r["pci"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| format!("{} (class {})", text(d, "id"), text(d, "class")))
        .collect();
    let or_dash = |t: String| if t.is_empty() || t == "null" { "-".to_owned() } else { t };
    let mut out = String::new();
    for (key, value) in [
        ("node", text(node, "uuid")),
        ("status", text(node, "status")),
        ("host", or_dash(text(r, "hostname"))),
        ("arch", or_dash(text(r, "arch"))),
        ("foreign arches", list(&r["foreign_arches"])),
        (
            "cpu",
            format!(
                "{} × {} ({} MHz)",
                or_dash(text(r, "cpus_online")),
                or_dash(text(r, "cpu_model")),
                or_dash(text(r, "cpu_mhz"))
            ),
        ),
        ("cpu score", or_dash(text(r, "cpu_score"))),
        (
            "memory",
            format!("{} of {} MiB free", or_dash(text(r, "mem_available_mb")), or_dash(text(r, "mem_total_mb"))),
        ),
        (
            "disk",
            format!("{} of {} MiB free", or_dash(text(r, "disk_available_mb")), or_dash(text(r, "disk_total_mb"))),
        ),
        ("load", or_dash(text(r, "load"))),
        ("features", list(&r["features"])),
        ("labels", if labels.is_empty() { "-".to_owned() } else { labels.join(", ") }),
        ("pci", if pci.is_empty() { "-".to_owned() } else { pci.join(", ") }),
        ("images", list(&r["images"])),
        ("numa node", or_dash(text(r, "numa_node"))),
        (
            "draining",
            r["draining_until_unix_ms"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |u| format!("{} left", left_until(drover_model::unix_ms_now(), u))),
        ),
        ("instances", text(node, "instances")),
    ] {
        out.push_str(&format!("{key:<15} {value}\n"));
    }
    out
}

/// An error as `--json` prints it: `{"error": {"message": …, "status": 404}}` (`status` when
/// the API answered).
pub fn error_json(e: &anyhow::Error) -> Value {
    let status = e.downcast_ref::<crate::client::ApiFailure>().map(|f| f.status.as_u16());
    json!({"error": {"message": format!("{e:#}"), "status": status}})
}

/// One event for people: when (UTC), its revision, tenant, instance and what happened.
fn event_line(e: &Value) -> String {
    let at = e["at_unix_ms"].as_u64().filter(|ms| *ms > 0).map_or_else(|| "-".repeat(19), drover_model::format_utc);
    let instance = e.get("instance").and_then(Value::as_str).map_or_else(|| "-".to_owned(), short);
    format!("{at}  {:>6}  {:<10} {:<8}  {}", text(e, "revision"), text(e, "tenant"), instance, text(e, "what"))
}

/// How long ago a node was last heard from, for people ("4s ago", "3m ago", "-" never).
fn seen_ago(now_ms: u64, unix_ms: Option<u64>) -> String {
    match age(now_ms, unix_ms) {
        dash if dash == "-" => dash,
        age => format!("{age} ago"),
    }
}

/// The time since `unix_ms` as people read it ("4s", "3m", "5h", "2d"; "-" when unknown).
fn age(now_ms: u64, unix_ms: Option<u64>) -> String {
    let Some(at) = unix_ms.filter(|ms| *ms > 0) else { return "-".into() };
    let secs = now_ms.saturating_sub(at) / 1000;
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

async fn node_action(api: &ApiClient, id: &str, verb: &str, json: bool) -> anyhow::Result<()> {
    let id = resolve(api, id, "node", "/v1/nodes").await?;
    let v = api.post(&format!("/v1/nodes/{id}/{verb}"), &json!({})).await?;
    if json {
        print_json(&v);
    } else {
        println!("{}: sent to node {}", verb.split('?').next().unwrap_or(verb), short(&id));
        if let Some(n) = v["live_migrations"].as_u64().filter(|n| *n > 0) {
            println!("{n} vm instances move live first; the rest stop and start elsewhere once they have");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_state_is_refused_by_name() {
        assert_eq!(parse_state("running").as_deref(), Ok("running"));
        assert!(parse_state("runing").unwrap_err().contains("one of pending"));
    }

    #[test]
    fn json_errors_carry_the_message_and_the_apis_status() {
        let failure =
            crate::client::ApiFailure { status: hyper::StatusCode::NOT_FOUND, message: "no such instance".into() };
        let v = error_json(&anyhow::Error::new(failure));
        assert_eq!(v["error"]["status"], 404);
        assert!(v["error"]["message"].as_str().unwrap().contains("no such instance"));
        assert_eq!(error_json(&anyhow::anyhow!("offline"))["error"]["status"], Value::Null);
    }

    #[test]
    fn an_event_reads_with_its_time() {
        let e = json!({"revision": 42, "at_unix_ms": 1_795_847_101_999_u64, "tenant": "acme",
                       "instance": "b0b95bab-0000-0000-0000-000000000000", "what": "instance running → exited: Completed"});
        assert_eq!(
            event_line(&e),
            "2026-11-28 06:25:01      42  acme       b0b95bab  instance running → exited: Completed"
        );
    }

    #[test]
    fn a_requested_stop_does_not_read_as_a_refusal() {
        assert_eq!(
            action_outcome("stop", "b0b95bab", "running"),
            "stop requested: b0b95bab is running until its node confirms"
        );
        assert_eq!(action_outcome("stop", "b0b95bab", "stopped"), "b0b95bab stopped");
        assert_eq!(action_outcome("start", "b0b95bab", "pending"), "start: b0b95bab is pending");
    }

    #[test]
    fn last_seen_reads_as_an_age() {
        let now = 10_000_000;
        assert_eq!(seen_ago(now, None), "-");
        assert_eq!(seen_ago(now, Some(now - 4_000)), "4s ago");
        assert_eq!(seen_ago(now, Some(now - 600_000)), "10m ago");
        assert_eq!(seen_ago(now, Some(now - 7_200_000)), "2h ago");
        assert_eq!(seen_ago(now, Some(now + 5_000)), "0s ago", "a clock ahead is not the future");
        let now = 1_000_000_000_000;
        assert_eq!(age(now, Some(0)), "-", "created before creation times were kept");
        assert_eq!(age(now, Some(now - 3 * 86_400_000)), "3d");
    }

    #[test]
    fn the_api_address_comes_from_the_flag_else_from_drover_up_else_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let args = |api: Option<&str>| ApiArgs {
            api: api.map(str::to_owned),
            cacert: None,
            cert: None,
            key: None,
            tenant: None,
            dir: dir.path().to_owned(),
        };
        assert_eq!(args(None).config().addr, "127.0.0.1:8889");
        std::fs::write(dir.path().join(crate::up::API_ADDRESS_FILE), "127.0.0.1:18892\n").unwrap();
        assert_eq!(args(None).config().addr, "127.0.0.1:18892", "the port drover up chose");
        assert_eq!(args(Some("h:1")).config().addr, "h:1", "the flag wins");
        assert_eq!(args(Some("https://h:1/")).config().addr, "h:1", "as a task's DROVER_API says it");
    }

    #[test]
    fn a_parameter_is_key_equals_value() {
        assert_eq!(parse_param("target=/usr/bin/systemd"), Ok(("target".into(), "/usr/bin/systemd".into())));
        assert_eq!(parse_param("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_param("=x").is_err() && parse_param("novalue").unwrap_err().contains("KEY=VALUE"));
    }
}

#[cfg(test)]
mod help_tests {
    #[test]
    fn up_help_lists_what_up_reads_and_other_help_puts_global_flags_last() {
        let help = |args: &[&str]| match super::command().try_get_matches_from(args) {
            Ok(m) => panic!("{args:?} parsed as a command: {:?}", m.subcommand_name()),
            Err(e) => (e.kind(), e.render().to_string()),
        };
        let (kind, up) = help(&["drover", "up", "--help"]);
        assert_eq!(kind, clap::error::ErrorKind::DisplayHelp);
        assert!(up.contains("--api-port") && up.contains("--dir"), "{up}");
        for flag in ["--api ", "--cacert", "--cert ", "--key", "--tenant", "--json"] {
            assert!(!up.contains(flag), "up does not read {flag}: {up}");
        }
        let (_, ps) = help(&["drover", "ps", "--help"]);
        let global = ps.find("Global options:").expect("a heading of global flags");
        assert!(ps.find("--state").unwrap() < global && ps.find("--cacert").unwrap() > global, "{ps}");
        // Given anyway, up still accepts it (a script may set DROVER_API for everything).
        let parsed = super::command().try_get_matches_from(["drover", "up", "--json", "--once"]);
        assert!(parsed.is_ok(), "{parsed:?}");
    }
}

/// `drover plan`: prints where the instances would go, or why not; exit 0 if all fit now,
/// 1 if not (errors are 2, from `main`).
async fn plan(api: &ApiClient, workload: &str, count: u32, json: bool) -> anyhow::Result<std::process::ExitCode> {
    let file = Path::new(workload);
    let path_like = file.exists() || workload.contains('/') || workload.contains('.');
    let v = if path_like {
        let WorkloadFile { api, content, .. } = WorkloadFile::read(api, file)?;
        api.call(Method::POST, &format!("/v1/plan?count={count}"), Some(content)).await?
    } else {
        api.call(Method::POST, &format!("/v1/workloads/{workload}/plan?count={count}"), None).await?
    };
    let answer: drover_api::views::PlanView = serde_json::from_value(v).context("the API's plan answer")?;
    if json {
        print_json(&serde_json::to_value(&answer)?);
    } else {
        print_plan(&answer);
    }
    Ok(if answer.fits { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) })
}

/// A plan as people read it.
fn print_plan(p: &drover_api::views::PlanView) {
    let placed = p.count - p.unplaced;
    match (p.fits, &p.never) {
        (true, _) => println!("{} × {}: all would start now", p.workload, p.count),
        (false, Some(_)) => println!("{} × {}: would fail at once, no node could ever take it", p.workload, p.count),
        (false, None) => {
            println!("{} × {}: {placed} would start now, {} would wait in the queue", p.workload, p.count, p.unplaced);
        }
    }
    if !p.placed.is_empty() {
        let rows: Vec<Vec<String>> = p
            .placed
            .iter()
            .map(|n| {
                let host = if n.host.is_empty() { n.node.short() } else { n.host.clone() };
                vec![host, n.node.short(), n.count.to_string()]
            })
            .collect();
        table(&["NODE", "UUID", "INSTANCES"], &rows);
    }
    println!("{}", p.never.as_deref().unwrap_or(&p.explanation));
    if !p.advice.is_empty() {
        println!("what would help:");
        for a in &p.advice {
            println!("  - {a}");
        }
    }
}

/// A workload file as the API takes it, checked here first so that an error names the file as
/// the user wrote it.
struct WorkloadFile {
    /// The client to send it with (a task file's name travels in `X-Drover-Task-File`).
    api: ApiClient,
    /// The workload's (or task's) name.
    name: String,
    /// Content type and body.
    content: (&'static str, Vec<u8>),
}

impl WorkloadFile {
    fn read(api: &ApiClient, file: &Path) -> anyhow::Result<Self> {
        let body = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        if is_task_file(file) {
            let file_name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let name = drover_api::unit::parse_unit(&file_name, &body).map_err(|e| anyhow::anyhow!("{e}"))?.name;
            let api = api.clone().with_header("x-drover-task-file", file_name);
            return Ok(Self { api, name, content: ("text/x-drover-task", body.into_bytes()) });
        }
        let format = drover_api::workload::Format::for_file(file).map_err(anyhow::Error::msg)?;
        let name =
            drover_api::workload::parse(&body, format).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?.name;
        let content_type =
            if format == drover_api::workload::Format::Toml { "application/toml" } else { "application/json" };
        Ok(Self { api: api.clone(), name, content: (content_type, body.into_bytes()) })
    }
}

fn is_task_file(file: &Path) -> bool {
    file.file_name().is_some_and(|n| drover_api::unit::is_unit_file(&n.to_string_lossy()))
}

async fn task(api: &ApiClient, cmd: TaskCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        TaskCmd::Ls => {
            let list: Vec<TaskView> = api.get_as("/v1/tasks").await?;
            if json {
                print_json(&serde_json::to_value(&list)?);
                return Ok(());
            }
            let hosts = host_names(api).await;
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|t| {
                    let depth = t.name.matches('/').count();
                    let leaf = t.name.rsplit('/').next().unwrap_or(&t.name);
                    let name = format!("{}{}{leaf}", "  ".repeat(depth), if depth > 0 { "└ " } else { "" });
                    let state =
                        if t.decommissioned { format!("{} (decommissioned)", t.state) } else { t.state.to_string() };
                    let params: Vec<String> = t.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    vec![
                        name,
                        short(&t.uuid.to_string()),
                        state,
                        t.node.map_or("-".into(), |n| hosts.get(&n).cloned().unwrap_or_else(|| short(&n.to_string()))),
                        if params.is_empty() { "-".into() } else { params.join(" ") },
                    ]
                })
                .collect();
            table(&["TASK", "ID", "STATE", "NODE", "PARAMS"], &rows);
        }
        TaskCmd::Decommission { id } => {
            let id = resolve(api, &id, "instance", "/v1/instances").await?;
            let v = api.post(&format!("/v1/tasks/{id}/decommission"), &json!({})).await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "root {id} decommissioned: {} queued task(s) canceled; running ones finish",
                    text(&v, "canceled")
                );
            }
        }
        TaskCmd::Spawn { .. } => unreachable!("run with the task's own credential (run_task_spawn)"),
    }
    Ok(())
}

/// `drover task spawn`, inside a running task: its own credential, not the user's.
///
/// # Errors
/// Not inside a task (its variables are missing), or the API's refusal.
pub async fn run_task_spawn(
    task: String,
    count: usize,
    params: Vec<(String, String)>,
    json: bool,
) -> anyhow::Result<()> {
    let api = ApiClient::for_task()?;
    let body = ChildrenBody { task, count, params: params_of(params) };
    let answer: ChildrenAnswer = api.post_as("/v1/tasks/children", &body).await?;
    if json {
        print_json(&serde_json::to_value(&answer)?);
    } else {
        for id in &answer.instances {
            println!("{} {id}", answer.name);
        }
    }
    Ok(())
}
