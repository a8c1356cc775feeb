//! `drover-controller`: flags, configuration checks, and the daemon's tasks (the scheduler
//! link and the HTTPS API) until a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use ssntp::cli::TlsArgs;
use ssntp::identity::uuid_for;
use ssntp::Role;
use tokio_util::sync::CancellationToken;

use crate::daemon::Controller;
use crate::service::Service;
use crate::store::Store;

/// The Drover controller: keeps workloads and instances durable (redb), sends them to the
/// scheduler, restarts them per policy, and serves the HTTPS API that the `drover` CLI uses.
///
/// Example (keys are found beside their certificates as <name>-key.pem):
///   drover-controller --server 10.0.0.1:8888 --cacert pki/ca.pem \
///       --cert pki/controller-ctl.pem --db /var/lib/drover/controller.redb \
///       --api-listen 0.0.0.0:8889 --api-cert pki/server-api.pem --api-crl pki/crl.pem
#[derive(Debug, clap::Parser)]
#[command(name = "drover-controller", version, verbatim_doc_comment)]
pub struct Args {
    /// Scheduler address `host:port` (repeatable: tried in order).
    #[arg(long = "server", required = true)]
    pub servers: Vec<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub diag: ssntp::cli::DiagArgs,
    /// Where state is kept: `redb` (a file on this machine: `--db`) or `etcd` (an etcd cluster
    /// shared by several controllers, of which one leads and the others stand by:
    /// `--etcd-endpoints`).
    #[arg(long, value_enum, default_value_t = StoreKind::Redb)]
    pub store: StoreKind,
    /// The durable store (created if missing), with `--store redb`.
    #[arg(long, default_value = "/var/lib/drover/controller.redb")]
    pub db: PathBuf,
    /// With `--store etcd`: where etcd is.
    #[command(flatten)]
    pub etcd: drover_etcd::cli::EtcdArgs,
    /// Most operations in one etcd transaction: the members' `--max-txn-ops` (larger changes
    /// are written in several transactions, in order).
    #[arg(long, default_value_t = crate::store::etcd::DEFAULT_MAX_TXN_OPS)]
    pub etcd_max_txn_ops: usize,
    /// Events kept in etcd; older ones are deleted as new ones come.
    #[arg(long, default_value_t = crate::store::etcd::DEFAULT_RETAIN_EVENTS)]
    pub etcd_retain_events: u64,
    /// The API address other controllers send users to while this one leads, `host:port`
    /// (default: `--api-listen`, with this machine's host name for an unspecified address).
    #[arg(long)]
    pub api_advertise: Option<String>,
    /// Memory the store may use to cache its file's pages, in MiB. More makes reads of a large
    /// store cheaper; the kernel's page cache holds the file either way.
    #[arg(long, default_value_t = crate::store::redb::DEFAULT_CACHE_BYTES >> 20, value_name = "MIB")]
    pub store_cache_mib: usize,
    /// Directory for the controller's identity (its UUID).
    #[arg(long, default_value = "/var/lib/drover/controller")]
    pub state_dir: PathBuf,
    /// Where the HTTPS API listens (`off` for none).
    #[arg(long, default_value = "127.0.0.1:8889")]
    pub api_listen: String,
    /// The API's certificate (server role; its SANs must name the host clients dial).
    #[arg(long)]
    pub api_cert: Option<PathBuf>,
    /// The API certificate's key (default: `<api-cert stem>-key.pem`).
    #[arg(long)]
    pub api_key: Option<PathBuf>,
    /// CA that signs API users' certificates (default: --cacert).
    #[arg(long)]
    pub api_client_ca: Option<PathBuf>,
    /// Certificate revocation list for API users.
    #[arg(long)]
    pub api_crl: Option<PathBuf>,
    /// Requests a second one API client (certificate subject) may make on average; more get
    /// 429 with Retry-After.
    #[arg(long, default_value_t = crate::api_guard::RATE_PER_S)]
    pub api_rate: f64,
    /// Requests one API client may make at once, above its rate.
    #[arg(long, default_value_t = crate::api_guard::BURST)]
    pub api_burst: f64,
    /// After the scheduler connection comes back (a scheduler restart), STARTs that got no
    /// answer are sent again only once every node known before has reported what it runs, or
    /// after this long: a node may already run such an instance, and sending it sooner could
    /// start it twice. A number with ms, s or m.
    #[arg(long, default_value = "15s", value_parser = drover_model::parse_duration)]
    pub resend_hold: std::time::Duration,
    /// A START with no answer (the instance still `starting`) for this long is sent again: it
    /// may have been lost with a launcher's connection. A repeat is harmless (the scheduler
    /// sends it to where it placed it, or answers where it runs). A number with ms, s or m.
    #[arg(long, default_value = "2m", value_parser = drover_model::parse_duration)]
    pub start_timeout: std::time::Duration,
    /// Directory of task files (`NAME.workorder`, `NAME.batch`) loaded as workloads at start
    /// (repeatable; a later directory overrides an earlier one's file of the same name). Root
    /// tasks among them (`Root=yes`) are started. A file that does not parse is logged, with
    /// its line, and skipped.
    #[arg(long = "units", value_name = "DIR", default_values_t = [
        "/usr/share/drover/units".to_owned(),
        "/etc/drover/units".to_owned(),
    ])]
    pub units: Vec<String>,
    /// The tenant the task files' workloads belong to.
    #[arg(long, default_value = "admin")]
    pub units_tenant: String,
}

/// Where the controller keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// A redb file on this machine.
    Redb,
    /// An etcd cluster, with leader election among controllers.
    Etcd,
}

/// The store, opened (redb) or to open once elected (etcd).
#[derive(Debug)]
enum StoreChoice {
    Redb(Store),
    Etcd(crate::store::etcd::EtcdConfig),
}

/// Everything checked before anything is bound or dialled.
#[derive(Debug)]
pub struct Prepared {
    args: Args,
    tls: Arc<rustls::ClientConfig>,
    uuid: ssntp::Uuid,
    api: Option<(SocketAddr, crate::api::ApiTlsFiles, crate::api::ApiTls)>,
    store: StoreChoice,
}

/// Loads certificates and opens the store.
///
/// # Errors
/// Bad certificates, a missing API certificate, an unusable store.
pub fn prepare(args: Args) -> anyhow::Result<Prepared> {
    if args.api_rate.is_nan() || args.api_rate <= 0.0 || args.api_burst.is_nan() || args.api_burst < 1.0 {
        anyhow::bail!("--api-rate must be above 0 and --api-burst at least 1");
    }
    let identity = ssntp::tls::Identity::load(&args.tls.paths(None))?;
    identity.require_role(Role::CONTROLLER, &args.tls.cert)?;
    let tls = ssntp::tls::client_config(&identity)?;
    let certified = identity.certified_uuid().with_context(|| format!("reading {}", args.tls.cert.display()))?;
    let uuid = uuid_for(&args.state_dir, Role::CONTROLLER, certified)
        .with_context(|| format!("state directory {}", args.state_dir.display()))?;
    let api = if args.api_listen == "off" {
        None
    } else {
        let addr: SocketAddr =
            args.api_listen.parse().with_context(|| format!("--api-listen {:?} is not ip:port", args.api_listen))?;
        let cert = args.api_cert.clone().context(
            "--api-cert is required for the API (a certificate with the server role: \
             drover-cert issue --role server --name api --host <host>), or pass --api-listen off",
        )?;
        let key = args.api_key.clone().unwrap_or_else(|| {
            let stem = cert.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            cert.with_file_name(format!("{stem}-key.pem"))
        });
        let ca = args.api_client_ca.clone().unwrap_or_else(|| args.tls.cacert.clone());
        let files = crate::api::ApiTlsFiles { cert, key, client_ca: ca, crl: args.api_crl.clone() };
        let loaded = files.load()?;
        Some((addr, files, loaded))
    };
    let store = match args.store {
        StoreKind::Redb => {
            if let Some(dir) = args.db.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let store = Store::open_with_cache(&args.db, args.store_cache_mib.saturating_mul(1 << 20))
                .with_context(|| format!("opening the store {}", args.db.display()))?;
            StoreChoice::Redb(store)
        }
        StoreKind::Etcd => StoreChoice::Etcd(etcd_config(&args)?),
    };
    Ok(Prepared { args, tls, uuid, api, store })
}

fn etcd_config(args: &Args) -> anyhow::Result<crate::store::etcd::EtcdConfig> {
    if !args.etcd.given() {
        anyhow::bail!("--store etcd needs --etcd-endpoints HOST:PORT[,HOST:PORT…] (the etcd members)");
    }
    let tls = args.etcd.check().map_err(anyhow::Error::msg)?;
    if args.etcd_max_txn_ops < 8 {
        anyhow::bail!("--etcd-max-txn-ops must be at least 8 (etcd's default is 128)");
    }
    let mut config = crate::store::etcd::EtcdConfig::new(args.etcd.etcd_endpoints.clone());
    config.prefix = args.etcd.etcd_prefix.clone();
    config.tls = tls;
    config.max_txn_ops = args.etcd_max_txn_ops;
    config.retain_events = args.etcd_retain_events.max(1);
    Ok(config)
}

/// The API address users are sent to while this controller leads.
fn advertised_api(args: &Args, api: Option<SocketAddr>) -> String {
    if let Some(a) = &args.api_advertise {
        return a.clone();
    }
    api.map_or_else(String::new, drover_etcd::cli::advertised)
}

/// Runs until `shutdown`: with a redb store at once; with etcd, as a standby until elected,
/// then as the leader until `shutdown` or until leadership is lost (then it starts again, as a
/// standby: the process re-executes itself, so nothing of its term survives).
///
/// # Errors
/// The API address is in use; the etcd store cannot be read once elected.
pub async fn run(
    prepared: Prepared,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> anyhow::Result<()> {
    let Prepared { args, tls, uuid, api, store } = prepared;
    let mut api_server = None;
    if let Some((addr, files, api_tls)) = api {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the API to {addr} (in use? pick another with --api-listen)"))?;
        tracing::info!(%addr, "API listening");
        ssntp::cli::notify_ready(&format!("API on {addr}"));
        let (tls_tx, tls_rx) = tokio::sync::watch::channel(api_tls);
        api_server = Some((listener, files, tls_tx, tls_rx));
    }
    if api_server.is_none() {
        ssntp::cli::notify_ready("running without an API");
    }
    match store {
        StoreChoice::Redb(store) => {
            tracing::info!(uuid = %uuid, db = %args.db.display(), servers = ?args.servers, "controller running");
            lead(&args, tls, uuid, store, api_server, None, shutdown).await
        }
        StoreChoice::Etcd(config) => run_etcd(args, tls, uuid, config, api_server, shutdown).await,
    }
}

type ApiServer = (
    tokio::net::TcpListener,
    crate::api::ApiTlsFiles,
    tokio::sync::watch::Sender<crate::api::ApiTls>,
    tokio::sync::watch::Receiver<crate::api::ApiTls>,
);

/// Stands by until elected, then leads.
async fn run_etcd(
    args: Args,
    tls: Arc<rustls::ClientConfig>,
    uuid: ssntp::Uuid,
    config: crate::store::etcd::EtcdConfig,
    mut api_server: Option<ApiServer>,
    mut shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> anyhow::Result<()> {
    use drover_etcd::election::LeaderInfo;
    let advertise = advertised_api(&args, api_server.as_ref().and_then(|(l, ..)| l.local_addr().ok()));
    tracing::info!(uuid = %uuid, etcd = ?config.endpoints, prefix = %config.prefix, api = %advertise,
        "controller standing by until elected");
    // Meanwhile the API redirects users to whoever leads.
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(None::<LeaderInfo>);
    let standby_stop = CancellationToken::new();
    let standby = api_server.take().map(|(listener, files, tls_tx, tls_rx)| {
        let app = crate::api::standby_router(leader_rx);
        let task = tokio::spawn(crate::api::serve_app(listener, tls_rx.clone(), app, standby_stop.clone()));
        (task, files, tls_tx, tls_rx)
    });
    let elect = async {
        let client = drover_etcd::cli::connect_retrying(&config.endpoints, config.tls.as_ref()).await;
        let me = LeaderInfo { uuid, addr: advertise.clone(), since_unix_ms: drover_model::unix_ms_now() };
        drover_etcd::cli::elect(client, &config.prefix, "leader", me, "controller", |leader| {
            let _ = leader_tx.send(leader);
        })
        .await
    };
    let leading = tokio::select! {
        leading = elect => leading,
        () = &mut shutdown => {
            standby_stop.cancel();
            return Ok(());
        }
    };
    tracing::info!(uuid = %uuid, api = %advertise, "this controller leads");
    standby_stop.cancel();
    let api_server = match standby {
        Some((task, files, tls_tx, tls_rx)) => {
            Some((task.await.context("the standby API stopped")?, files, tls_tx, tls_rx))
        }
        None => None,
    };
    let fence = leading.fence.clone();
    let open = tokio::task::spawn_blocking(move || {
        let backend = crate::store::etcd::EtcdBackend::open(config)?;
        backend.set_fence(Some(fence));
        let serializable = backend.serializable_reads();
        Store::over(Box::new(backend)).map(|store| (store, serializable))
    });
    let (store, serializable) = match open.await.context("opening the etcd store")? {
        Ok(opened) => opened,
        Err(e) => {
            leading.resign().await;
            return Err(anyhow::Error::new(e).context("reading the store from etcd"));
        }
    };
    let leading = Arc::new(leading);
    let compacting = Arc::clone(&leading);
    let compaction = tokio::spawn(async move { compacting.compact_history(COMPACTION_EVERY).await });
    let term = Term { leading: Arc::clone(&leading), serializable };
    let result = lead(&args, tls, uuid, store, api_server, Some(term), shutdown).await;
    compaction.abort();
    leading.resign().await;
    result
}

/// How often the leader compacts etcd's history.
const COMPACTION_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// An elected controller's term: its lease, and the switch that lets its store answer reads
/// while etcd has no quorum.
struct Term {
    leading: Arc<drover_etcd::election::Leading>,
    serializable: Arc<std::sync::atomic::AtomicBool>,
}

/// Leads: the scheduler link, the service and the full API, until `shutdown` (or, elected, until
/// leadership is lost: then the process starts again as a standby).
async fn lead(
    args: &Args,
    tls: Arc<rustls::ClientConfig>,
    uuid: ssntp::Uuid,
    store: Store,
    api_server: Option<ApiServer>,
    term: Option<Term>,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> anyhow::Result<()> {
    let api_addr = api_server.as_ref().and_then(|(l, ..)| l.local_addr().ok());
    let task_env = crate::service::TaskEnv {
        api_url: match advertised_api(args, api_addr) {
            a if a.is_empty() => String::new(),
            a => format!("https://{a}"),
        },
        // Not secret (a certificate); tasks verify the API with it.
        ca_pem: std::fs::read_to_string(&args.tls.cacert).unwrap_or_default(),
    };
    let service = Service::new(store)?.with_start_timeout(args.start_timeout).with_task_env(task_env);
    let term_number = term.as_ref().and_then(|t| u64::try_from(t.leading.fence.create_revision).ok());
    let (client, events) = crate::link::connect(args.servers.clone(), tls, uuid, term_number);
    let controller = Controller::new(service, Some(client.clone()), args.resend_hold)?;
    let dirs: Vec<std::path::PathBuf> = args.units.iter().map(std::path::PathBuf::from).collect();
    let tenant = args.units_tenant.clone();
    let loaded = controller
        .blocking(move |c| {
            let now = c.now_ms();
            c.service().load_units(&dirs, &tenant, now)
        })
        .await
        .context("loading the task files")?;
    if !loaded.tasks.is_empty() || !loaded.errors.is_empty() {
        tracing::info!(
            tasks = loaded.tasks.len(),
            refused = loaded.errors.len(),
            roots_started = loaded.roots_started,
            "task files loaded"
        );
    }
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some((listener, files, tls_tx, tls_rx)) = api_server {
        tasks.spawn(crate::api::watch_tls(files, tls_tx, stop.clone()));
        let limit = crate::api_guard::RateLimit { per_s: args.api_rate, burst: args.api_burst };
        tasks.spawn(crate::api::serve(listener, tls_rx, Arc::clone(&controller), limit, stop.clone()));
    }
    tasks.spawn(crate::daemon::run_link(Arc::clone(&controller), events));
    use drover_etcd::election::Lost;
    let mut shutdown = shutdown;
    let lost = async {
        match &term {
            Some(t) => {
                controller.set_leader_info(t.leading.info.clone());
                t.leading.hold(drover_model::unix_ms_now).await
            }
            None => std::future::pending().await,
        }
    };
    let lost_why = tokio::select! {
        () = &mut shutdown => None,
        why = lost => Some(why),
    };
    match (&lost_why, &term) {
        (Some(Lost::Unreachable(why)), Some(t)) => {
            // No one can lead until etcd answers again. Stop commanding (the scheduler link
            // closes) and writing (the API refuses), but keep answering reads from the member
            // this controller reaches; start again once etcd has a quorum.
            tracing::error!(reason = %why, "leadership lost: commands and writes stop; reads go on until etcd answers again");
            client.close();
            t.serializable.store(true, std::sync::atomic::Ordering::Relaxed);
            controller.set_read_only(format!("etcd has no quorum or cannot be reached ({why})"));
            tokio::select! {
                () = &mut shutdown => {
                    stop.cancel();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async { while tasks.join_next().await.is_some() {} }).await;
                    return Ok(());
                }
                () = t.leading.wait_for_quorum() => tracing::info!("etcd answers again; starting again as a standby"),
            }
        }
        // Stop acting at once: no more commands, no more writes (the fence refuses them anyway).
        (Some(why), _) => tracing::error!(reason = %why, "leadership lost; starting again as a standby"),
        _ => {}
    }
    stop.cancel();
    client.close();
    // The link loop ends when the client's event stream closes; the API on cancel.
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), async { while tasks.join_next().await.is_some() {} })
            .await;
    if lost_why.is_some() {
        drover_etcd::cli::restart_as_standby("drover-controller");
    }
    Ok(())
}

impl ssntp::cli::Daemon for Args {
    fn diagnostics(&self) -> &ssntp::cli::DiagArgs {
        &self.diag
    }
}
