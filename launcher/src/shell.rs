//! The launcher's shell: the scheduler connection, the report timer, the machine probe and the
//! executor around the pure [`crate::core::Core`]. Every input goes to the core; its effects
//! are carried out here and nowhere else.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ssntp::client::{Client, ClientEvent, ClientHandle, ClientOptions};
use ssntp::identity::uuid_for;
use ssntp::payload::{CommandFailure, LogData, LogFetch, Message};
use ssntp::tls::Identity;
use ssntp::{Role, Uuid};
use tokio::sync::mpsc;

use drover_model::{Clock as _, Overcommit, SystemClock};

use crate::admission::Limits;
use crate::cgroup::Cgroups;
use crate::cli::Args;
use crate::core::{Config, Core, Effect, Input, STOP_GRACE};
use crate::executor::{Adopted, Event, Executor};
use crate::instances::{Instances, ShimCommand};
use crate::probe;
use crate::state::{read_json, write_json, NodeFlags};
use crate::users::{Account, RunAs, Users};
use ssntp::payload::ROOT_FEATURE;

/// Validated configuration.
#[derive(Debug)]
pub struct Prepared {
    args: Args,
    tls: Arc<rustls::ClientConfig>,
    uuid: Uuid,
    shim: ShimCommand,
    offer: probe::Offer,
    users: Users,
    /// The server and peer-client TLS configurations of live migrations.
    migration_tls: (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>),
}

/// Loads TLS material, checks the agent role, creates the state directory and loads the
/// node's UUID.
///
/// # Errors
/// Unreadable files, a certificate without the agent role, an unusable state directory.
pub fn prepare(args: Args) -> anyhow::Result<Prepared> {
    let identity = Identity::load(&args.tls.paths(None)).context("loading TLS material")?;
    identity.require_role(Role::AGENT, &args.tls.cert)?;
    let tls = ssntp::tls::client_config(&identity).context("building the TLS configuration")?;
    for server in &args.servers {
        ssntp::tls::server_name_for(server).map_err(|e| anyhow::anyhow!("--server {server}: {e}"))?;
    }
    std::fs::create_dir_all(&args.state_dir).with_context(|| format!("creating {}", args.state_dir.display()))?;
    let certified = identity.certified_uuid().with_context(|| format!("reading {}", args.tls.cert.display()))?;
    let uuid = uuid_for(&args.state_dir, Role::AGENT, certified).context("the node's identity")?;
    let shim = ShimCommand::current().context("locating this executable for the shim")?;
    let users = users(&args)?;
    let mut offer = offer(&args)?;
    if users.allows_root() {
        offer.features.push(ROOT_FEATURE.to_owned());
    }
    let migration_tls = (
        ssntp::tls::server_config(&identity).context("building the migration TLS configuration")?,
        ssntp::tls::peer_client_config(&identity).context("building the migration TLS configuration")?,
    );
    Ok(Prepared { args, tls, uuid, shim, offer, users, migration_tls })
}

/// Where `--run-as auto` keeps the uid it gave each tenant.
pub const TENANT_UIDS_FILE: &str = "tenant-uids.json";

/// A user name or `UID[:GID]` as an account.
fn account(text: &str) -> anyhow::Result<Account> {
    if let Some(account) = crate::users::parse_numeric(text) {
        return Ok(account);
    }
    let user = nix::unistd::User::from_name(text)
        .with_context(|| format!("looking up user {text:?}"))?
        .with_context(|| format!("no user {text:?} on this machine (give a name from /etc/passwd or UID[:GID])"))?;
    Ok(Account { uid: user.uid.as_raw(), gid: user.gid.as_raw() })
}

/// The run-as policy from the flags. A root launcher also opens the state directory for
/// passage (0711) so workloads under other users reach their `results/`.
fn users(args: &Args) -> anyhow::Result<Users> {
    let own = crate::instances::own_account();
    let named = |text: &str| -> anyhow::Result<Account> {
        let a = account(text)?;
        if a.uid == 0 || a.gid == 0 {
            anyhow::bail!("{text:?} is root: workloads run as root only when they ask and --allow-root is given");
        }
        Ok(a)
    };
    let mut tenants = std::collections::BTreeMap::new();
    for (tenant, user) in &args.tenant_users {
        tenants.insert(tenant.clone(), named(user).with_context(|| format!("--tenant-user {tenant}={user}"))?);
    }
    let run_as = if args.run_as == "auto" {
        RunAs::PerTenant { first: args.uid_range.0, last: args.uid_range.1 }
    } else {
        RunAs::One(named(&args.run_as).with_context(|| format!("--run-as {}", args.run_as))?)
    };
    if own.uid != 0 {
        // Not root: it cannot switch users, and its workloads are never root.
        let switching = matches!(run_as, RunAs::One(a) if a != own) || tenants.values().any(|a| *a != own);
        if switching || args.allow_root {
            anyhow::bail!(
                "--run-as, --tenant-user and --allow-root need the launcher to run as root (it runs as uid {}); \
                 without them its workloads run as its own user",
                own.uid
            );
        }
        tracing::info!(uid = own.uid, "workloads run as this launcher's user (tenants are not separated)");
        return Ok(Users::one(own));
    }
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&args.state_dir, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("opening {} for workloads to pass through", args.state_dir.display()))?;
    }
    for ancestor in args.state_dir.canonicalize()?.ancestors().skip(1) {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(ancestor).with_context(|| ancestor.display().to_string())?.permissions().mode();
        if mode & 0o001 == 0 {
            anyhow::bail!(
                "workloads run as other users and cannot pass through {} (mode {:o}); \
                 chmod o+x it or choose a --state-dir they can reach",
                ancestor.display(),
                mode & 0o7777
            );
        }
    }
    let allocated = read_json(&args.state_dir.join(TENANT_UIDS_FILE))
        .with_context(|| format!("reading {}", args.state_dir.join(TENANT_UIDS_FILE).display()))?
        .unwrap_or_default();
    Ok(Users::new(run_as, tenants, allocated, args.allow_root))
}

/// How long an exiting launcher waits for its connection to write what is queued and close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long an exiting launcher without a session waits for one, to send its last news.
const SESSION_WAIT: Duration = Duration::from_secs(1);

/// Where the measured CPU score is kept, with the CPU model it was measured on.
const CPU_SCORE_FILE: &str = "cpu-score";

/// What the node offers, from the flags; refuses what cannot work here.
fn offer(args: &Args) -> anyhow::Result<probe::Offer> {
    let mut backends = Vec::new();
    for b in &args.backends {
        match b.as_str() {
            // Whether systemd answers is asked when the launcher runs (D-Bus is async).
            "process" | "sim" | "systemd" => {}
            "oci" => {
                if probe::find_program(&["runc", "crun"]).is_none() {
                    anyhow::bail!("--backend oci needs runc or crun on PATH (Debian: apt-get install runc)");
                }
            }
            "vm" | "artifact" => {}
            other => anyhow::bail!("--backend {other:?}: unknown backend (process, oci, systemd, vm, artifact, sim)"),
        }
        if !backends.contains(b) {
            backends.push(b.clone());
        }
    }
    let mut features = probe::machine_features();
    let device_models = if backends.iter().any(|b| b == "vm") {
        crate::vm::device_models(&args.hypervisor_tools)
    } else {
        Default::default()
    };
    if backends.iter().any(|b| b == "vm") && device_models.is_empty() {
        let place =
            if args.hypervisor_tools.is_empty() { "on PATH".to_owned() } else { "in --hypervisor-tools".to_owned() };
        anyhow::bail!(
            "--backend vm needs a device model, qemu-system-ARCH, {place} (Debian: apt-get install qemu-system-x86)"
        );
    }
    features.extend(device_models.keys().map(|arch| ssntp::payload::vm_feature(arch)));
    let runtimes = if backends.iter().any(|b| b == "artifact") {
        let found = crate::artifact::runtimes(&args.hypervisor_tools);
        let place = if args.hypervisor_tools.is_empty() { "on PATH" } else { "in --hypervisor-tools" };
        if found.is_empty() {
            anyhow::bail!(
                "--backend artifact needs a runtime, java, {place} (Debian: apt-get install default-jre-headless)"
            );
        }
        if args.volume_roots.is_empty() {
            anyhow::bail!("--backend artifact runs files in the node's volumes: give --volume-root DIR");
        }
        found
    } else {
        Default::default()
    };
    features.extend(runtimes.keys().map(|kind| ssntp::payload::runtime_feature(kind)));
    if args.migration_listen.is_some() {
        if !backends.iter().any(|b| b == "vm") {
            anyhow::bail!("--migration-listen moves vm instances: it needs --backend vm");
        }
        features.push(ssntp::payload::MIGRATE_FEATURE.to_owned());
    }
    if !args.volume_roots.is_empty() {
        features.push(ssntp::payload::VOLUMES_FEATURE.to_owned());
    }
    for (name, path) in &args.scripts {
        let meta = std::fs::metadata(path).with_context(|| format!("--script {name}={}", path.display()))?;
        if !probe::is_executable(&meta) {
            anyhow::bail!("--script {name}={}: not an executable file", path.display());
        }
        features.push(ssntp::payload::script_feature(name));
    }
    let numa = args.numa_node.map(|n| (n, args.sysfs_root.clone()));
    if let Some((n, sysfs)) = &numa {
        probe::numa_node(sysfs, *n).map_err(|e| anyhow::anyhow!("--numa-node {n}: {e}"))?;
    }
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").map(|t| probe::parse_cpuinfo(&t).0).unwrap_or_default();
    let capabilities = probe::Capabilities {
        foreign_arches: crate::capabilities::foreign_arches(&args.binfmt_root),
        cpu_score: Some(
            args.cpu_score
                .unwrap_or_else(|| crate::capabilities::cpu_score(&args.state_dir.join(CPU_SCORE_FILE), &cpu_model)),
        ),
        pci: crate::capabilities::pci_devices(&args.sysfs_root, args.numa_node),
        image_dirs: args.image_dirs.clone(),
        cache: crate::resctrl::read(&args.resctrl_root),
    };
    tracing::info!(
        cpu_score = capabilities.cpu_score,
        pci = capabilities.pci.len(),
        foreign_arches = ?capabilities.foreign_arches,
        "capabilities"
    );
    Ok(probe::Offer {
        backends,
        features,
        labels: args.labels.iter().cloned().collect(),
        numa,
        capabilities,
        device_models,
        runtimes,
    })
}

/// How long FULL lasts at least before READY again.
const FULL_DWELL: Duration = Duration::from_secs(10);

/// The IO around the core.
struct Shell {
    core: Core,
    clock: SystemClock,
    client: ClientHandle,
    executor: Box<dyn Executor + Send>,
    uuid: Uuid,
    offer: probe::Offer,
    state_dir: PathBuf,
    mem_reserve_mb: u64,
    drain_on_exit: bool,
    metrics: Arc<crate::metrics::Metrics>,
    /// Live migrations, where this launcher takes part in them (`--migration-listen`).
    migrations: Option<crate::migration::Migrations>,
}

impl Shell {
    /// While exiting: carries instance events and the session's until nothing runs or the
    /// deadline.
    async fn until_ended(
        &mut self,
        deadline: tokio::time::Instant,
        instance_events: &mut mpsc::Receiver<Event>,
        events: &mut ssntp::client::ClientEvents,
    ) {
        while self.core.running() > 0 {
            tokio::select! {
                event = tokio::time::timeout_at(deadline, instance_events.recv()) => match event {
                    Ok(Some(event)) => self.on_event(event).await,
                    _ => break,
                },
                Some(event) = events.recv() => self.exit_event(event).await,
            }
        }
    }

    /// Hands one input to the core and carries out what it decides, including what those
    /// effects feed back (a refused run, a delivered end).
    async fn handle(&mut self, input: Input) {
        let mut pending: std::collections::VecDeque<Effect> = self.core.handle(self.clock.now(), input).into();
        while let Some(effect) = pending.pop_front() {
            for next in self.apply(effect).await {
                pending.extend(self.core.handle(self.clock.now(), next));
            }
        }
        self.metrics.state(self.core.running(), self.core.connected(), self.core.maintenance(), self.core.draining());
    }

    async fn apply(&mut self, effect: Effect) -> Vec<Input> {
        match effect {
            Effect::Send(message) => {
                if let Message::StartFailure(_) = &message {
                    self.metrics.refused();
                }
                if let Err(e) = self.client.send(&message).await {
                    tracing::debug!(error = %e, kind = %message.kind(), "not delivered");
                }
            }
            Effect::Report { session, message, ends } if ends.is_empty() => {
                let _ = self.client.try_send_in(session, &message);
            }
            Effect::Report { session, message, ends } => {
                if self.client.send_in(session, &message).await.is_ok() {
                    for instance in &ends {
                        self.executor.reported(*instance);
                    }
                    return ends.into_iter().map(Input::EndDelivered).collect();
                }
            }
            Effect::SendEnd { instance, message } => {
                if self.client.send(&message).await.is_ok() {
                    self.executor.reported(instance);
                    return vec![Input::EndDelivered(instance)];
                }
            }
            Effect::Run(start) => {
                if let Err((reason, detail)) = self.executor.run(&start) {
                    tracing::warn!(instance = %start.instance_uuid, %detail, "cannot start the workload");
                    return vec![Input::RunRefused { instance: start.instance_uuid, reason, detail }];
                }
                if let Some(from) = start.migrate_from {
                    let id = start.instance_uuid;
                    match (&self.migrations, self.executor.vm_sockets(id)) {
                        (Some(migrations), Some(sockets)) => migrations.expect(id, from, sockets),
                        _ => return vec![migration_failed(id, "this launcher takes no migrations")],
                    }
                }
            }
            Effect::MigrateOut(o) => {
                let id = o.instance_uuid;
                match (&self.migrations, self.executor.vm_sockets(id)) {
                    (Some(migrations), Some(sockets)) => migrations.send(id, o.to_node, o.address, sockets),
                    _ => return vec![migration_failed(id, "this launcher takes no migrations")],
                }
            }
            Effect::Resume(instance) => self.monitor(instance, true),
            Effect::CancelMigration(instance) => self.monitor(instance, false),
            Effect::Stop { instance, grace } => self.executor.stop(instance, grace),
            Effect::Delete(instance) => {
                if let Some(migrations) = &self.migrations {
                    migrations.forget(instance);
                }
                self.executor.delete(instance);
            }
            Effect::Tail(fetch) => {
                let answer = self.tail(&fetch);
                if let Err(e) = self.client.send(&answer).await {
                    tracing::warn!(error = %e, "log answer not delivered");
                }
            }
            Effect::SaveFlags(flags) => {
                if let Err(e) = write_json(&self.state_dir.join("launcher.json"), &flags) {
                    tracing::error!(error = %e, "cannot persist the maintenance flag");
                }
            }
        }
        Vec::new()
    }

    /// Resumes a guest whose incoming migration was committed, or cancels an outgoing one, on
    /// its device model's monitor (in the background: a guest still taking its last state
    /// must not hold up the launcher).
    fn monitor(&self, instance: Uuid, resume: bool) {
        let Some(sockets) = self.executor.vm_sockets(instance) else { return };
        tokio::spawn(async move {
            let result = if resume {
                crate::migration::resume(&sockets).await
            } else {
                crate::migration::cancel(&sockets).await
            };
            match result {
                Ok(()) if resume => tracing::info!(%instance, "migrated instance resumed here"),
                Ok(()) => tracing::info!(%instance, "migration abandoned; the instance runs on here"),
                Err(e) => {
                    tracing::error!(%instance, resume, error = %format!("{e:#}"), "the device model's monitor failed")
                }
            }
        });
    }

    fn tail(&self, fetch: &LogFetch) -> Message {
        match self.executor.tail(fetch.instance_uuid, fetch.max_bytes) {
            Ok((data, truncated)) => Message::LogData(LogData {
                instance_uuid: fetch.instance_uuid,
                request_id: fetch.request_id,
                data,
                truncated,
            }),
            Err((reason, detail)) => Message::CommandFailure(CommandFailure {
                command: "LOG_FETCH".into(),
                node_uuid: Some(self.uuid),
                instance_uuid: Some(fetch.instance_uuid),
                reason,
                detail,
            }),
        }
    }

    /// Probes the machine and samples the instances' usage: on the report timer only.
    async fn sample(&mut self) {
        let report =
            probe::report_for(self.uuid, &self.state_dir, self.mem_reserve_mb, &self.offer).unwrap_or_else(|e| {
                // Offer nothing rather than the whole machine: this launcher serves only its node.
                tracing::error!(error = %e, "cannot read this launcher's NUMA node; reporting no capacity");
                ssntp::payload::NodeReport { node_uuid: self.uuid, ..Default::default() }
            });
        self.handle(Input::Sample(Box::new(report))).await;
        let usage = self.executor.usage();
        self.handle(Input::Usage(usage)).await;
        self.executor.flush();
    }

    /// A client event while exiting: a session that comes up takes the last news and hears
    /// MAINTENANCE (no new work); commands are no longer taken.
    async fn exit_event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Connected { session, config, .. } => {
                let overcommit = Overcommit { cpu: config.cpu_overcommit, mem: config.mem_overcommit };
                self.handle(Input::Connected { session, overcommit }).await;
                self.handle(Input::ShuttingDown { drain: self.drain_on_exit }).await;
            }
            ClientEvent::Disconnected { .. } => self.handle(Input::Disconnected).await,
            ClientEvent::ConnectFailed { .. } | ClientEvent::Message { .. } => {}
        }
    }

    async fn on_event(&mut self, event: Event) {
        match &event {
            Event::Started { instance, pid } => {
                self.metrics.started();
                tracing::info!(%instance, pid, "instance started");
            }
            Event::StartFailed { instance, detail } => tracing::warn!(%instance, %detail, "instance failed to start"),
            Event::Exited(exit) => {
                self.metrics.ended(exit.reason);
                tracing::info!(instance = %exit.instance, code = ?exit.code, reason = ?exit.reason, "instance ended");
            }
        }
        self.executor.record(&event);
        self.handle(Input::Workload(event)).await;
    }
}

/// A migration that cannot go on here, for the core.
fn migration_failed(instance: Uuid, detail: &str) -> Input {
    let done = ssntp::payload::MigrationDone { instance_uuid: instance, ok: false, detail: detail.to_owned() };
    Input::Migration(Message::MigrationDone(done))
}

/// Runs until `shutdown` completes. Workloads keep running when the launcher exits.
///
/// # Errors
/// This launcher's NUMA node cannot be read.
pub async fn run(prepared: Prepared, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let cgroups = Cgroups::detect(&prepared.args.cgroup_root);
    match &cgroups {
        Cgroups::Unavailable { why } => tracing::warn!(%why, "workloads will run without memory and CPU limits"),
        other => tracing::info!(cgroups = ?other.feature(), "memory and CPU limits available"),
    }
    let limits_feature = cgroups.feature().map(str::to_owned);
    let (instance_tx, instance_events) = mpsc::channel::<Event>(1024);
    let pin = match &prepared.offer.numa {
        Some((n, sysfs)) => {
            let node = probe::numa_node(sysfs, *n).map_err(anyhow::Error::msg)?;
            if matches!(cgroups, Cgroups::Unavailable { .. }) {
                tracing::warn!(numa_node = n, "no cgroups: workloads cannot be pinned to the NUMA node");
            }
            Some(crate::cgroup::Pin { cpus: node.cpulist, mems: n.to_string() })
        }
        None => None,
    };
    let oci_runtime =
        prepared.offer.backends.iter().any(|b| b == "oci").then(|| probe::find_program(&["runc", "crun"])).flatten();
    let systemd = if prepared.offer.backends.iter().any(|b| b == "systemd") {
        Some(crate::systemd::Systemd::connect().await.map_err(|e| anyhow::anyhow!("--backend systemd: {e}"))?)
    } else {
        None
    };
    let mut instances = Instances::new(&prepared.args.state_dir, prepared.shim.clone(), cgroups, instance_tx)
        .with_systemd(systemd)
        .with_pin(pin)
        .with_oci_runtime(oci_runtime)
        .with_volume_roots(&prepared.args.volume_roots)
        .with_scripts(prepared.args.scripts.iter().cloned().collect())
        .with_device_models(prepared.offer.device_models.clone())
        .with_runtimes(prepared.offer.runtimes.clone())
        .with_cache(prepared.offer.capabilities.cache.clone())
        .with_node(prepared.uuid)
        .with_users(prepared.users.clone(), Some(prepared.args.state_dir.join(TENANT_UIDS_FILE)));
    let adopted = instances.adopt();
    let executor = Executing { executor: Box::new(instances), events: instance_events, adopted, limits_feature };
    run_with(prepared, executor, shutdown).await
}

/// An executor with the channel its events arrive on and what it found on disk.
#[derive(Debug)]
pub struct Executing {
    /// The executor.
    pub executor: Box<dyn Executor + Send>,
    /// Its events.
    pub events: mpsc::Receiver<Event>,
    /// The instances it found at start-up.
    pub adopted: Vec<Adopted>,
    /// The cgroup feature when it can limit workloads.
    pub limits_feature: Option<String>,
}

/// Runs the launcher around any executor (the real one in [`run`], a fake in tests) until
/// `shutdown` completes.
///
/// # Errors
/// None yet; the signature leaves room for fatal conditions.
#[allow(clippy::disallowed_methods)] // the shell: the drain deadline
pub async fn run_with(
    prepared: Prepared,
    executing: Executing,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let Prepared { args, tls, uuid, offer, migration_tls, .. } = prepared;
    let (migration_events, mut migration_inputs) = mpsc::channel::<Message>(256);
    let migrations = match args.migration_listen {
        Some(bind) => Some(
            crate::migration::Migrations::listen(
                bind,
                args.migration_advertise.clone(),
                migration_tls,
                args.migration_bandwidth,
                args.migration_downtime_limit,
                migration_events,
            )
            .await?,
        ),
        None => None,
    };
    let Executing { executor, events: mut instance_events, adopted, limits_feature } = executing;
    let mut opts = ClientOptions::new(args.servers.clone(), tls, Role::AGENT, uuid);
    opts.hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned());
    let (client, mut events) = Client::spawn(opts);
    let flags: NodeFlags = match read_json(&args.state_dir.join("launcher.json")) {
        Ok(flags) => flags.unwrap_or_default(),
        Err(e) => {
            tracing::error!(error = %e, "node flags unreadable; starting out of maintenance");
            NodeFlags::default()
        }
    };
    let config = Config {
        node: uuid,
        limits: Limits {
            mem_reserve_mb: args.mem_reserve_mb,
            disk_reserve_mb: args.disk_reserve_mb,
            max_instances: args.max_instances,
            dwell_ms: u64::try_from(FULL_DWELL.as_millis()).unwrap_or(u64::MAX),
        },
        backends: offer.backends.clone(),
        limits_feature,
        ended_retention_ms: u64::try_from(crate::core::ENDED_RETENTION.as_millis()).unwrap_or(u64::MAX),
        away_grace_ms: u64::try_from(args.maintenance_grace.as_millis()).unwrap_or(u64::MAX),
    };
    let mut shell = Shell {
        core: Core::new(config, flags),
        clock: SystemClock::start(),
        client,
        executor,
        uuid,
        offer,
        state_dir: args.state_dir.clone(),
        mem_reserve_mb: args.mem_reserve_mb,
        drain_on_exit: args.drain_on_exit,
        metrics: Arc::new(crate::metrics::Metrics::new()),
        migrations,
    };
    shell.metrics.capabilities(&shell.offer.capabilities);
    if let Some(addr) = args.metrics {
        let http =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding --metrics {addr} (in use?)"))?;
        tracing::info!(%addr, "serving metrics on /metrics");
        let metrics = Arc::clone(&shell.metrics);
        tokio::spawn(ssntp::metrics::serve(http, Arc::new(move || metrics.encode())));
    }
    shell.handle(Input::Adopted(adopted)).await;
    shell.sample().await;
    let mut ticker = tokio::time::interval(args.report_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut news_ticker = tokio::time::interval(args.news_interval);
    news_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(node = %uuid, servers = ?args.servers, running = shell.core.running(), "launcher starting");
    ssntp::cli::notify_ready(&format!(
        "{} instances adopted; connecting to {}",
        shell.core.running(),
        args.servers.join(", ")
    ));
    tokio::pin!(shutdown);
    let mut failures = ssntp::advice::FailureLog::default();

    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                match event {
                    ClientEvent::Connected { target, server_uuid, config, session } => {
                        failures.connected();
                        tracing::info!(%target, scheduler = %server_uuid, "connected");
                        let overcommit = Overcommit { cpu: config.cpu_overcommit, mem: config.mem_overcommit };
                        shell.handle(Input::Connected { session, overcommit }).await;
                    }
                    ClientEvent::Disconnected { reason } => {
                        tracing::warn!(%reason, "disconnected from the scheduler");
                        shell.handle(Input::Disconnected).await;
                    }
                    ClientEvent::ConnectFailed { target, reason, permanent } => {
                        ssntp::cli::log_connect_failure(&mut failures, &target, &reason, permanent);
                    }
                    ClientEvent::Message { message, .. } => {
                        match &message {
                            Message::Evacuate(_) => tracing::info!(instances = shell.core.running(), "evacuating: stopping every instance"),
                            Message::Restore(_) => tracing::info!("restored: taking work again"),
                            _ => {}
                        }
                        shell.handle(Input::Command(message)).await;
                    }
                }
            }
            Some(event) = instance_events.recv() => shell.on_event(event).await,
            Some(message) = migration_inputs.recv() => shell.handle(Input::Migration(message)).await,
            _ = ticker.tick() => {
                shell.sample().await;
                shell.handle(Input::ReportDue).await;
            }
            _ = news_ticker.tick() => shell.handle(Input::NewsDue).await,
            () = &mut shutdown => break,
        }
    }
    // A session that came up just before the signal still carries what follows.
    while let Ok(event) = events.try_recv() {
        shell.exit_event(event).await;
    }
    shell.sample().await;
    if args.drain_on_exit && !args.drain_deadline.is_zero() && shell.core.running() > 0 {
        // A graceful drain: no new work, and what runs may finish until the deadline.
        let drain_ms = u64::try_from(args.drain_deadline.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(instances = shell.core.running(), deadline = ?args.drain_deadline, "draining gracefully before exit");
        shell.handle(Input::ExitDraining { drain_ms }).await;
        shell.executor.flush();
        let deadline = tokio::time::Instant::now() + args.drain_deadline;
        shell.until_ended(deadline, &mut instance_events, &mut events).await;
        // The ends so far go now; what still runs is stopped below.
        shell.handle(Input::NewsDue).await;
        shell.executor.flush();
    }
    shell.handle(Input::ShuttingDown { drain: args.drain_on_exit }).await;
    shell.executor.flush();
    if args.drain_on_exit {
        tracing::info!(instances = shell.core.running(), "draining before exit");
        let deadline = tokio::time::Instant::now() + STOP_GRACE + Duration::from_secs(2);
        shell.until_ended(deadline, &mut instance_events, &mut events).await;
    } else {
        tracing::info!(running = shell.core.running(), "exiting; workloads keep running and will be re-adopted");
    }
    // The last news needs a session: one being set up gets a moment.
    let deadline = tokio::time::Instant::now() + SESSION_WAIT;
    while !shell.core.connected() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => shell.exit_event(event).await,
            _ => break,
        }
    }
    // What changed since the last news goes now (the ends of a drain above all).
    shell.handle(Input::NewsDue).await;
    shell.executor.flush();
    // Closing writes what is queued first; the client's events end once it has (a fixed pause
    // here lost the last news on a loaded machine).
    shell.client.close();
    let closed = tokio::time::timeout(CLOSE_WAIT, async { while events.recv().await.is_some() {} }).await;
    if closed.is_err() {
        tracing::warn!("the scheduler connection did not close in time; the last news may be lost");
    }
    Ok(())
}
