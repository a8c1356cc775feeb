//! The controller's service core: user intent and cluster reports in, SSNTP commands out, with
//! every change committed to the [`Store`] before anything is sent.
//!
//! - [`Service::tick`] sends a START for every instance whose time has come. The instance is
//!   committed as `starting` first, so a controller that crashes before or after sending never
//!   sends a START for that copy again on its own; [`Service::reconnected`] re-sends the STARTs
//!   that got no answer, and a duplicate is refused by the scheduler or launcher and read as
//!   "it runs" — at most one running copy per desired instance.
//! - [`Service::report`] turns a frame from the cluster into the instance's next state and the
//!   commands it needs (a STOP for an instance the user stopped while it was starting). A
//!   report from a node other than the one the instance runs on is about a stale copy: a start
//!   there is stopped, an end there changes nothing.
//! - A node's INSTANCE_NEWS and digests (STATS pages) are read against the store
//!   (`reconcile.rs`): an instance still waiting for its start report that runs there is running
//!   there (the report was lost); a copy the store does not want there is stopped; an end the
//!   controller missed (it was down) is applied; an instance the store believes runs there but
//!   a complete digest does not list is lost. A gap in a node's news asks it for a digest.
//! - User actions check the tenant: another tenant's instance is "not found", never "forbidden",
//!   so tenants cannot probe each other's UUIDs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use ssntp::payload::{Delete, ExitReason, InstanceState, Message, ParamValue, Start, Stats, Stop, WorkClass};

use ssntp::Uuid;
pub(crate) use tasks::Origin;
pub use tasks::{BadToken, UnitsLoaded};

use crate::lifecycle::{Action, Input, Lifecycle, State};
use crate::store::{InstanceRecord, Store, StoreError, StoredWorkload};
use crate::workload::{Format, SpecError, Workload};

/// Why a user request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The workload file is invalid (HTTP 400).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// No such workload or instance for this tenant (HTTP 404).
    #[error("{0} not found")]
    NotFound(String),
    /// A request that cannot be honoured as asked (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The request clashes with the current state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// The store failed (HTTP 500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Most instances one launch may create.
pub const MAX_LAUNCH: usize = 100_000;

/// Most STARTs one tick sends (the rest go at the next tick): bounds one transaction and the
/// burst on the scheduler connection.
pub const MAX_STARTS_PER_TICK: usize = 2_000;

/// A batch still running: what is left and how the rest ended.
#[derive(Debug, Default)]
struct OpenBatch {
    tenant: String,
    workload: String,
    left: usize,
    exited: usize,
    failed: usize,
}

/// The service.
#[derive(Debug)]
pub struct Service {
    store: Store,
    /// The order of each node's reports; in memory (a restarted controller asks every node
    /// for a digest).
    feeds: Mutex<crate::feeds::Feeds>,
    batches: Mutex<HashMap<Uuid, OpenBatch>>,
    /// STARTs sent on this connection, until answered or timed out.
    watch: Mutex<crate::answer_watch::AnswerWatch>,
    /// What a task's instance is told of the API, to ask for children.
    task_env: TaskEnv,
    /// Estimated slots remaining per size class, for batch events (kept current by the shell).
    slots: Mutex<BTreeMap<String, u64>>,
    /// Instances this controller asked to migrate whose outcome has not arrived (a live
    /// evacuation waits for them); in memory.
    migrating: Mutex<HashSet<Uuid>>,
}

/// Where a task reaches the API from its node, handed to it in its environment with its
/// credential.
#[derive(Debug, Clone, Default)]
pub struct TaskEnv {
    /// The API's address as nodes dial it, `https://host:port`.
    pub api_url: String,
    /// The CA that signs the API's certificate, PEM.
    pub ca_pem: String,
}

/// How long a START may go unanswered before it is sent again, by default.
pub const START_TIMEOUT_MS: u64 = 120_000;

impl Service {
    /// A service over `store`.
    ///
    /// # Errors
    /// The store.
    pub fn new(store: Store) -> Result<Self, ServiceError> {
        let mut batches: HashMap<Uuid, OpenBatch> = HashMap::new();
        for record in store.instances(None)? {
            if let Some(batch) = record.batch {
                let open = batches.entry(batch).or_default();
                open.tenant.clone_from(&record.tenant);
                open.workload.clone_from(&record.workload);
                match record.life.state {
                    State::Exited { .. } => open.exited += 1,
                    ref s if s.is_final() => open.failed += 1,
                    _ => open.left += 1,
                }
            }
        }
        batches.retain(|_, b| b.left > 0);
        Ok(Self {
            store,
            feeds: Mutex::new(crate::feeds::Feeds::default()),
            batches: Mutex::new(batches),
            watch: Mutex::new(crate::answer_watch::AnswerWatch::new(START_TIMEOUT_MS)),
            task_env: TaskEnv::default(),
            slots: Mutex::new(BTreeMap::new()),
            migrating: Mutex::new(HashSet::new()),
        })
    }

    /// The estimated slots remaining per size class that batch events report from now on.
    pub fn set_slots(&self, slots: BTreeMap<String, u64>) {
        *self.slots.lock().expect("slots lock") = slots;
    }

    /// Tells tasks' instances this API address and CA.
    #[must_use]
    pub fn with_task_env(self, task_env: TaskEnv) -> Self {
        Self { task_env, ..self }
    }

    /// Sends a START again when it got no answer for `timeout` (instead of [`START_TIMEOUT_MS`]).
    #[must_use]
    pub fn with_start_timeout(self, timeout: std::time::Duration) -> Self {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        Self { watch: Mutex::new(crate::answer_watch::AnswerWatch::new(ms)), ..self }
    }

    /// The store (reads for the API).
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// One change to one instance: the input and the explanation to keep.
type Change = (Uuid, Input, String);

/// The tenant that may act for all.
pub const ADMIN: &str = "admin";

pub(super) fn start_message(
    record: &InstanceRecord,
    stored: &StoredWorkload,
    w: &Workload,
    restart: bool,
    task_env: &TaskEnv,
) -> Message {
    let mut start = start_of(record.uuid, w, Some(stored.uuid), &stored.tenant);
    tasks::dress(&mut start, record, w, task_env);
    start.deadline_unix_ms =
        w.deadline_unix_ms.or_else(|| w.deadline_after_ms.map(|after| record.created_unix_ms.saturating_add(after)));
    start.restart = restart;
    Message::Start(start)
}

/// What every START of workload `w` carries, whichever instance it is for: the one place
/// that says what a workload asks of placement, for launches and plans (`drover plan`) alike.
pub fn start_of(id: Uuid, w: &Workload, workload_uuid: Option<Uuid>, tenant: &str) -> Start {
    let mut start = Start::new(id, w.requirements.clone(), w.backend.clone());
    start.workload_uuid = workload_uuid;
    start.tenant = Some(tenant.to_owned());
    start.run_as_root = w.run_as_root;
    start.class = w.class;
    start.priority = w.priority;
    start.max_run_time_s = w.max_run_time_s;
    start.arch_setups = w.arch_setups.clone();
    start.checks = w.checks.clone();
    start
}

pub(super) fn stop(instance: Uuid, node: Uuid) -> Message {
    Message::Stop(Stop { instance_uuid: instance, workload_agent_uuid: node, grace_ms: None })
}

mod intent;
mod reconcile;
mod reports;
mod sending;
pub mod tasks;

#[cfg(test)]
mod tests;
