//! sd-taskpacker's task model over instances: task files, root tasks started with the
//! controller, children a running task asks for with the credential in its environment (named
//! `root/child`, listed as a tree), decommissioning a root, and parameters.
//!
//! A task's credential is `<instance>.<secret>`: the secret is drawn when the instance is
//! created and kept in its record, so it survives a restart and a failover, and it is good only
//! while that instance is live and its root is not decommissioned.

use std::path::{Path, PathBuf};

use super::*;
use crate::store::TaskFacts;

/// Where new instances come from besides their workload: parameters, and the task that asked
/// for them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origin {
    /// Parameters as given (checked against the schema in `create`).
    pub(crate) params: BTreeMap<String, ParamValue>,
    /// The asking task's instance and facts.
    pub(crate) parent: Option<(Uuid, TaskFacts)>,
}

/// Environment variables a task's instance is given.
pub mod env {
    /// Its name under its root (`build/graph`).
    pub const TASK: &str = "DROVER_TASK";
    /// Its instance.
    pub const INSTANCE: &str = "DROVER_INSTANCE";
    /// Its credential: `Authorization: Bearer $DROVER_TASK_TOKEN`.
    pub const TOKEN: &str = "DROVER_TASK_TOKEN";
    /// The API, `https://host:port`.
    pub const API: &str = "DROVER_API";
    /// The CA that signs the API's certificate, PEM.
    pub const CA_PEM: &str = "DROVER_CA_PEM";
}

/// Fills in what a START carries of a task and its parameters: its name and version, whether
/// it is a root, its parameters (appended as `--key=value`, or for `parameters.json`), and, for
/// a task, its credential and the API in its environment.
pub(super) fn dress(start: &mut Start, record: &InstanceRecord, w: &Workload, task_env: &TaskEnv) {
    use ssntp::payload::Backend;
    start.name = Some(record.task.as_ref().map_or_else(|| record.workload.clone(), |t| t.name.clone()));
    start.version.clone_from(&w.version);
    start.root_task = w.root && record.task.as_ref().is_some_and(|t| t.root.is_none());
    let (args, env) = match &mut start.backend {
        Backend::Process { argv, env } | Backend::Systemd { argv, env } => (Some(argv), Some(env)),
        Backend::Oci { args, env, .. } | Backend::Artifact { args, env, .. } => (Some(args), Some(env)),
        Backend::Vm { .. } | Backend::Sim { .. } => (None, None),
    };
    match w.parameters_as {
        crate::workload::ParamsAs::Arguments => {
            if let Some(args) = args {
                args.extend(record.params.iter().map(|(k, v)| format!("--{k}={v}")));
            }
        }
        crate::workload::ParamsAs::Json => start.parameters.clone_from(&record.params),
    }
    if let (Some(task), Some(env)) = (&record.task, env) {
        env.insert(env::TASK.into(), task.name.clone());
        env.insert(env::INSTANCE.into(), record.uuid.to_string());
        env.insert(env::TOKEN.into(), format!("{}.{}", record.uuid, task.secret));
        if !task_env.api_url.is_empty() {
            env.insert(env::API.into(), task_env.api_url.clone());
        }
        if !task_env.ca_pem.is_empty() {
            env.insert(env::CA_PEM.into(), task_env.ca_pem.clone());
        }
    }
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A credential that does not open anything; the API answers 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadToken(pub String);

impl Service {
    /// The live task instance a credential belongs to.
    ///
    /// # Errors
    /// [`BadToken`] for a malformed or unknown credential or one whose instance has ended (as
    /// one message, so a caller learns nothing about other instances); the store.
    pub fn task_by_token(&self, token: &str) -> Result<Result<InstanceRecord, BadToken>, ServiceError> {
        let refused = || Ok(Err(BadToken("the task credential is not valid (or its instance has ended)".into())));
        let Some((id, secret)) = token.split_once('.') else { return refused() };
        let Ok(id) = id.parse::<Uuid>() else { return refused() };
        let Some(record) = self.store.instance(id)? else { return refused() };
        match &record.task {
            Some(t) if same_secret(&t.secret, secret) && !record.life.state.is_final() => Ok(Ok(record)),
            _ => refused(),
        }
    }

    /// A running task asks for `count` instances of the task `workload` (of its own tenant) as
    /// its children, named `<its name>/<workload>`.
    ///
    /// # Errors
    /// Its root is decommissioned (conflict), the workload is unknown or not a task, a bad
    /// parameter, or the store.
    pub fn spawn_children(
        &self,
        parent: &InstanceRecord,
        workload: &str,
        count: usize,
        params: &BTreeMap<String, ParamValue>,
        now_ms: u64,
    ) -> Result<Vec<Uuid>, ServiceError> {
        let facts = parent.task.clone().ok_or_else(|| ServiceError::Invalid("not a task's instance".into()))?;
        let root = facts.root_of(parent.uuid);
        let root_facts =
            if root == parent.uuid { Some(facts.clone()) } else { self.store.instance(root)?.and_then(|r| r.task) };
        if root_facts.as_ref().is_some_and(|f| f.decommissioned) {
            return Err(ServiceError::Conflict(format!(
                "the root task {root} is decommissioned: no further task of it runs"
            )));
        }
        let origin = Origin { params: params.clone(), parent: Some((parent.uuid, facts.clone())) };
        let (ids, ..) = self.create(&parent.tenant, workload, count, now_ms, None, &origin, |_| None)?;
        self.store.note(&parent.tenant, Some(parent.uuid), format!("{} asked for {count} × {workload}", facts.name))?;
        Ok(ids)
    }

    /// Decommissions the root task instance `root`: no further task of it runs (children are
    /// refused, its queued and pending tasks are canceled, none is restarted), the running ones
    /// finish. Returns the commands and how many were canceled.
    ///
    /// # Errors
    /// Not this tenant's, not a root task, or the store.
    pub fn decommission(&self, tenant: &str, root: Uuid, now_ms: u64) -> Result<(Vec<Message>, usize), ServiceError> {
        let record = self.owned(tenant, root)?;
        match &record.task {
            Some(t) if t.root.is_none() => {}
            Some(t) => {
                return Err(ServiceError::Invalid(format!(
                    "{} is not a root task; its root is {}",
                    t.name,
                    t.root_of(root)
                )))
            }
            None => return Err(ServiceError::Invalid(format!("instance {root} is not a task"))),
        }
        self.store.update_instance(root, |r| {
            if let Some(t) = &mut r.task {
                t.decommissioned = true;
            }
        })?;
        let waiting: Vec<Uuid> = self
            .store
            .instances(Some(&record.tenant))?
            .into_iter()
            .filter(|r| r.task.as_ref().is_some_and(|t| t.root_of(r.uuid) == root))
            .filter(|r| matches!(r.life.state, State::Pending { .. } | State::Queued { .. }))
            .map(|r| r.uuid)
            .collect();
        let name = record.task.map(|t| t.name).unwrap_or_default();
        self.store.note(&record.tenant, Some(root), format!("root task {name} decommissioned"))?;
        let changes: Vec<(Uuid, Input)> = waiting.iter().map(|id| (*id, Input::Cancel)).collect();
        let commands = self.apply(changes, "its root task was decommissioned", now_ms)?;
        Ok((commands, waiting.len()))
    }

    /// Whether an instance may start now: not when its root is decommissioned (then it is
    /// canceled instead, and `false`).
    pub(super) fn root_allows(&self, record: &InstanceRecord) -> Result<bool, ServiceError> {
        let Some(t) = &record.task else { return Ok(true) };
        let root = t.root_of(record.uuid);
        let decommissioned = if root == record.uuid {
            t.decommissioned
        } else {
            self.store.instance(root)?.and_then(|r| r.task).is_some_and(|f| f.decommissioned)
        };
        Ok(!decommissioned)
    }

    /// Saves a task file (`build.workorder`) as a workload of `tenant`; returns its name and
    /// whether it changed. `create` refuses to replace one.
    ///
    /// # Errors
    /// An invalid file (naming the file and line), an existing workload when `create`, or the
    /// store.
    pub fn put_task_file(
        &self,
        tenant: &str,
        file_name: &str,
        source: &str,
        create: bool,
    ) -> Result<(String, bool), ServiceError> {
        let parsed = drover_api::unit::parse_unit(file_name, source)?;
        let existing = self.store.workload(tenant, &parsed.name)?;
        if create && existing.is_some() {
            return Err(ServiceError::Conflict(format!("workload {} exists; replace it with PUT", parsed.name)));
        }
        if existing.as_ref().is_some_and(|w| w.source == source && w.unit_file.as_deref() == Some(file_name)) {
            return Ok((parsed.name, false));
        }
        let uuid = existing.map_or_else(Uuid::new_v4, |w| w.uuid);
        let stored = StoredWorkload {
            tenant: tenant.to_owned(),
            uuid,
            source: source.to_owned(),
            toml: false,
            unit_file: Some(file_name.to_owned()),
        };
        self.store.put_workload(&parsed.name, &stored)?;
        Ok((parsed.name, true))
    }

    /// Starts every root task that has no live instance (at the controller's start, and when a
    /// root task is saved); returns how many were started.
    ///
    /// # Errors
    /// The store.
    pub fn ensure_roots(&self, now_ms: u64) -> Result<usize, ServiceError> {
        let mut started = 0;
        let workloads = self.store.workloads(None)?;
        let roots: Vec<(String, String)> = workloads
            .into_iter()
            .filter(|(_, w)| w.parsed().is_ok_and(|p| p.root))
            .map(|(name, w)| (w.tenant, name))
            .collect();
        if roots.is_empty() {
            return Ok(0);
        }
        let live: HashSet<(String, String)> = self
            .store
            .instances(None)?
            .into_iter()
            .filter(|r| !r.life.state.is_final() && r.task.as_ref().is_some_and(|t| t.root.is_none()))
            .map(|r| (r.tenant, r.workload))
            .collect();
        for (tenant, name) in roots {
            if live.contains(&(tenant.clone(), name.clone())) {
                continue;
            }
            self.launch(&tenant, &name, 1, now_ms)?;
            self.store.note(&tenant, None, format!("root task {name} started"))?;
            started += 1;
        }
        Ok(started)
    }

    /// Loads the task files of `dirs` (later directories override earlier ones by file name,
    /// as systemd's unit directories do) as workloads of `tenant`, then starts the root tasks.
    /// A file that does not parse is reported (file and line) and skipped; the others load.
    ///
    /// # Errors
    /// The store.
    pub fn load_units(&self, dirs: &[PathBuf], tenant: &str, now_ms: u64) -> Result<UnitsLoaded, ServiceError> {
        let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if drover_api::unit::is_unit_file(&name) {
                    files.insert(name, entry.path());
                }
            }
        }
        let mut loaded = UnitsLoaded::default();
        for (name, path) in files {
            match read_unit(&path)
                .and_then(|text| self.put_task_file(tenant, &name, &text, false).map_err(|e| e.to_string()))
            {
                Ok((task, changed)) => {
                    tracing::info!(file = %path.display(), task = %task, changed, "task file loaded");
                    loaded.tasks.push(task);
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "task file not loaded");
                    loaded.errors.push(format!("{}: {e}", path.display()));
                }
            }
        }
        loaded.roots_started = self.ensure_roots(now_ms)?;
        Ok(loaded)
    }
}

/// What [`Service::load_units`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnitsLoaded {
    /// Tasks loaded.
    pub tasks: Vec<String>,
    /// Files refused, each with why.
    pub errors: Vec<String>,
    /// Root tasks started.
    pub roots_started: usize,
}

/// Most bytes a task file may have.
const MAX_UNIT_BYTES: u64 = 64 * 1024;

fn read_unit(path: &Path) -> Result<String, String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > MAX_UNIT_BYTES {
        return Err(format!("{size} bytes; a task file has at most {MAX_UNIT_BYTES}"));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}
