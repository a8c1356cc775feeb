//! What the API's routes take and give: request bodies and queries, and the views of
//! instances, launches, logs and batches. The controller serialises these, the CLI reads them;
//! state names come from [`drover_model`] so both sides spell them the same way.

use std::collections::BTreeMap;

use drover_model::InstanceStatus;
use serde::{Deserialize, Serialize};
use ssntp::payload::ParamValue;
use ssntp::Uuid;
use utoipa::{IntoParams, ToSchema};

/// An instance as the API shows it (`GET /v1/instances`, `GET /v1/instances/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceView {
    /// UUID.
    pub uuid: Uuid,
    /// Tenant.
    pub tenant: String,
    /// Workload name.
    pub workload: String,
    /// Its state (by name: `pending`, `running`, `exited` …).
    #[serde(with = "instance_status")]
    #[schema(schema_with = crate::schema::instance_state)]
    pub state: InstanceStatus,
    /// Node it runs or ran on.
    pub node: Option<Uuid>,
    /// Why it waits, failed or ended, in the cluster's words.
    pub why: String,
    /// Restarts so far.
    pub restarts: u32,
    /// Exit code, once exited (or failed with one).
    pub exit_code: Option<i32>,
    /// Batch it belongs to.
    pub batch: Option<Uuid>,
    /// When it was created, Unix ms (0: created before creation times were kept).
    #[serde(default)]
    pub created_unix_ms: u64,
}

impl InstanceView {
    /// Whether it ended well: exited with code 0.
    pub fn succeeded(&self) -> bool {
        self.state == InstanceStatus::Exited && self.exit_code.unwrap_or(0) == 0
    }
}

/// Serde for [`InstanceStatus`] by its name.
pub mod instance_status {
    use drover_model::InstanceStatus;
    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Writes the name.
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(status: &InstanceStatus, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(status.name())
    }

    /// Reads a name.
    ///
    /// # Errors
    /// Not a state name.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<InstanceStatus, D::Error> {
        let name = String::deserialize(d)?;
        InstanceStatus::parse(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown instance state {name:?}")))
    }
}

/// Body of `POST /v1/workloads/{name}/launch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchBody {
    /// How many instances (default 1, at most 100,000).
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 100_000)]
    pub count: usize,
    /// Parameters for every instance, checked against the workload's schema.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamValue>,
}

/// Body of `POST /v1/tasks/children`, sent by a running task with its credential
/// (`Authorization: Bearer $DROVER_TASK_TOKEN`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChildrenBody {
    /// The task to run (a task workload of the asking task's tenant).
    pub task: String,
    /// How many instances (default 1, at most 100,000).
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 100_000)]
    pub count: usize,
    /// Parameters for every instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamValue>,
}

/// Answer to `POST /v1/tasks/children`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChildrenAnswer {
    /// The new instances, pending.
    pub instances: Vec<Uuid>,
    /// Their name under the root (`build/graph`).
    pub name: String,
}

/// One task instance in `GET /v1/tasks` (a tree: each names its parent and root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    /// The instance.
    pub uuid: Uuid,
    /// Its name under its root: `build`, `build/graph`.
    pub name: String,
    /// Tenant.
    pub tenant: String,
    /// The instance that asked for it (none for a root).
    pub parent: Option<Uuid>,
    /// Its root instance (itself for a root).
    pub root: Uuid,
    /// State.
    #[serde(with = "instance_status")]
    #[schema(schema_with = crate::schema::instance_state)]
    pub state: InstanceStatus,
    /// Node it runs or ran on.
    pub node: Option<Uuid>,
    /// Its parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamValue>,
    /// (Roots.) Decommissioned.
    #[serde(default)]
    pub decommissioned: bool,
}

/// Answer to `POST /v1/tasks/{root}/decommission`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DecommissionAnswer {
    /// The root instance.
    pub root: Uuid,
    /// Its queued and pending tasks canceled.
    pub canceled: usize,
}

fn one() -> usize {
    1
}

/// Answer to a launch: the new instances, pending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LaunchAnswer {
    /// Their UUIDs.
    pub instances: Vec<Uuid>,
}

/// Filters and paging of `GET /v1/instances`. The answer is a JSON array in UUID order; when
/// more match than `limit`, the header [`NEXT_AFTER_HEADER`] names the `after` of the next page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstanceQuery {
    /// Only this workload's.
    pub workload: Option<String>,
    /// Only in this state (by name).
    pub state: Option<String>,
    /// Only those the store has running on this node (UUID).
    pub node: Option<Uuid>,
    /// Only the instances of this batch (`drover batch submit` answers its UUID).
    pub batch: Option<Uuid>,
    /// Only those whose UUID starts with this (a short ID).
    pub prefix: Option<String>,
    /// At most this many (all when absent).
    pub limit: Option<usize>,
    /// Only those after this UUID (the next page).
    pub after: Option<Uuid>,
}

/// The response header of `GET /v1/instances` that holds the `after` of the next page.
pub const NEXT_AFTER_HEADER: &str = "drover-next-after";

/// Options of `GET /v1/instances/{id}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// At most this many bytes from the end (default 64 KiB, at most 1 MiB).
    pub max_bytes: Option<u32>,
}

/// An instance's output, as its node holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogView {
    /// The instance.
    pub instance: Uuid,
    /// Its node.
    pub node: Uuid,
    /// The last bytes of its output (lossy UTF-8).
    pub data: String,
    /// Whether earlier output was cut off.
    pub truncated: bool,
}

/// Body of `POST /v1/batch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// A workload of class `batch`.
    pub workload: String,
    /// How many instances (at most 100,000).
    #[schema(minimum = 1, maximum = 100_000)]
    pub count: usize,
    /// How long to wait for the scheduler's answers before replying, ms (default 3000).
    pub wait_ms: Option<u64>,
    /// Parameters for every instance, checked against the workload's schema.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamValue>,
}

/// The answer to a batch submission (sd-taskpacker's BatchSubmit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BatchAnswer {
    /// The batch.
    pub batch: Uuid,
    /// Instances running, with their node.
    pub started: Vec<InstanceView>,
    /// Instances in the scheduler's queue, with why.
    pub queued: Vec<InstanceView>,
    /// Instances refused (too large for any node, queue full …), with why.
    pub rejected: Vec<InstanceView>,
    /// Instances with no answer yet when the wait ran out.
    pub pending: Vec<InstanceView>,
    /// How many more instances of this size would fit now, from the nodes' latest reports.
    pub slots_remaining_estimate: u64,
    /// The same per size class (`tiny`, `small`, `medium`, `large`): sd-taskpacker's
    /// estimated slots remaining.
    #[serde(default)]
    pub slots_remaining: BTreeMap<String, u64>,
}

/// Cursor and wait of `GET /v1/events`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Events after this revision.
    #[serde(default)]
    pub after: u64,
    /// Wait this long for something new, ms (long poll; at most 60,000); 0 answers at once.
    #[serde(default)]
    #[param(maximum = 60_000)]
    pub wait_ms: u64,
    /// At most this many (default 1000, at most 10,000).
    pub limit: Option<usize>,
}

/// `?count=` of the plan routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PlanQuery {
    /// Instances to plan for (default 1, at most 100,000).
    #[param(minimum = 1, maximum = 100_000)]
    pub count: Option<u32>,
}

/// Where a plan puts instances on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanPlacementView {
    /// The node's UUID.
    pub node: Uuid,
    /// Its host name.
    pub host: String,
    /// Instances that would go there.
    pub count: u32,
}

/// The answer of `POST /v1/plan` and `POST /v1/workloads/{name}/plan`: where the instances
/// would go now, or exactly why not. Nothing is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanView {
    /// The workload planned for.
    pub workload: String,
    /// Instances planned for.
    pub count: u32,
    /// Whether every one would start now.
    pub fits: bool,
    /// Nodes the scheduler knows.
    pub nodes: u32,
    /// Nodes that would take one instance now.
    pub fit_now: u32,
    /// Where they would go, node by node.
    pub placed: Vec<PlanPlacementView>,
    /// Instances no node would take now (they would wait in the queue).
    pub unplaced: u32,
    /// Counted over the nodes: "0 of 12 nodes fit: 7 insufficient memory, …".
    pub explanation: String,
    /// Set when no node could take one even empty: a launch would fail at once.
    pub never: Option<String>,
    /// What would make the rest fit.
    pub advice: Vec<String>,
}

/// One workload in `GET /v1/workloads`; the fields read from its file are absent when the
/// stored file no longer parses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkloadSummary {
    /// Its name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Its UUID (the scheduler's memory estimates are per workload UUID).
    pub uuid: Uuid,
    /// `workorder` or `batch`.
    pub class: Option<ssntp::payload::WorkClass>,
    /// `process`, `oci` or `systemd`.
    pub backend: Option<String>,
    /// vCPUs each instance asks for.
    pub vcpus: Option<u32>,
    /// Memory each instance asks for, MiB.
    pub mem_mb: Option<u64>,
}

/// A saved workload as written (`GET /v1/workloads/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkloadSource {
    /// Its name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Its UUID.
    pub uuid: Uuid,
    /// `toml` or `json`: how `source` is written.
    pub format: String,
    /// The file as it was sent.
    pub source: String,
}

/// The answer to a workload's create or replace: the name it is saved under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkloadName {
    /// The workload's (or, for a task file, the task's) name.
    pub name: String,
}

/// The answer to a node action: what was asked of the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeActionAnswer {
    /// The node.
    pub node: Uuid,
    /// `evacuate`, `restore` or `forget`.
    pub action: String,
    /// Of an evacuation: how many `vm` instances move live (the rest stop and start elsewhere
    /// once they have).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub live_migrations: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Every error the API answers: `{"error": {"status": 404, "message": "…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorView {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// The HTTP status again.
    pub status: u16,
    /// Why, in words a person can act on.
    pub message: String,
}

/// Where `GET /v1/events/stream` starts: after this revision, unless the `Last-Event-ID`
/// header of a resuming client says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Events after this revision (default 0: the whole history the store keeps, then live).
    #[serde(default)]
    pub after: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_view_reads_back_with_its_state_by_name() {
        let view = InstanceView {
            uuid: Uuid::from_bytes([7; 16]),
            tenant: "admin".into(),
            workload: "w".into(),
            state: InstanceStatus::Running,
            node: None,
            why: String::new(),
            restarts: 0,
            exit_code: None,
            batch: None,
            created_unix_ms: 1_764_000_000_000,
        };
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["state"], "running");
        assert_eq!(serde_json::from_value::<InstanceView>(json).unwrap(), view);
        let bad = serde_json::json!({"uuid": Uuid::nil(), "tenant": "", "workload": "", "state": "dancing",
            "node": null, "why": "", "restarts": 0, "exit_code": null, "batch": null});
        let e = serde_json::from_value::<InstanceView>(bad).unwrap_err().to_string();
        assert!(e.contains("dancing"), "{e}");
        assert_eq!(serde_json::from_str::<LaunchBody>("{}").unwrap().count, 1);
        assert!(serde_json::from_str::<LaunchBody>(r#"{"cuont": 2}"#).is_err(), "unknown fields are refused");
    }
}
