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
    /// The durable store (created if missing).
    #[arg(long, default_value = "/var/lib/drover/controller.redb")]
    pub db: PathBuf,
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
}

/// Everything checked before anything is bound or dialled.
#[derive(Debug)]
pub struct Prepared {
    args: Args,
    tls: Arc<rustls::ClientConfig>,
    uuid: ssntp::Uuid,
    api: Option<(SocketAddr, crate::api::ApiTlsFiles, crate::api::ApiTls)>,
    store: Store,
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
    if let Some(dir) = args.db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let store = Store::open_with_cache(&args.db, args.store_cache_mib.saturating_mul(1 << 20))
        .with_context(|| format!("opening the store {}", args.db.display()))?;
    Ok(Prepared { args, tls, uuid, api, store })
}

/// Runs until `shutdown`.
///
/// # Errors
/// The API address is in use.
pub async fn run(
    prepared: Prepared,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> anyhow::Result<()> {
    let Prepared { args, tls, uuid, api, store } = prepared;
    let service = Service::new(store)?.with_start_timeout(args.start_timeout);
    let (client, events) = crate::link::connect(args.servers.clone(), tls, uuid);
    let controller = Controller::new(service, Some(client.clone()), args.resend_hold)?;
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some((addr, files, tls)) = api {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the API to {addr} (in use? pick another with --api-listen)"))?;
        tracing::info!(%addr, "API listening");
        let (tls_tx, tls_rx) = tokio::sync::watch::channel(tls);
        tasks.spawn(crate::api::watch_tls(files, tls_tx, stop.clone()));
        let limit = crate::api_guard::RateLimit { per_s: args.api_rate, burst: args.api_burst };
        tasks.spawn(crate::api::serve(listener, tls_rx, Arc::clone(&controller), limit, stop.clone()));
    }
    tracing::info!(uuid = %uuid, db = %args.db.display(), servers = ?args.servers, "controller running");
    tasks.spawn(crate::daemon::run_link(Arc::clone(&controller), events));
    shutdown.await;
    stop.cancel();
    client.close();
    // The link loop ends when the client's event stream closes; the API on cancel.
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), async { while tasks.join_next().await.is_some() {} })
            .await;
    Ok(())
}
