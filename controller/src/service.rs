//! The controller's service core: user intent and cluster reports in, SSNTP commands out, with
//! every change committed to the [`Store`] before anything is sent.
//!
//! - [`Service::tick`] sends a START for every instance whose time has come. The instance is
//!   committed as `starting` first, so a controller that crashes before or after sending never
//!   sends a START for that copy again on its own; [`Service::reconnected`] re-sends the STARTs
//!   that got no answer, and a duplicate is refused by the scheduler or launcher and read as
//!   "it runs" — at most one running copy per desired instance.
//! - [`Service::report`] turns a frame from the cluster into the instance's next state and the
//!   commands it needs (a STOP for an instance the user stopped while it was starting).
//! - User actions check the tenant: another tenant's instance is "not found", never "forbidden",
//!   so tenants cannot probe each other's UUIDs.

use ssntp::payload::{Message, Start, Stop};
use ssntp::Uuid;

use crate::lifecycle::{Action, Input, Lifecycle};
use crate::store::{InstanceRecord, Store, StoreError, StoredWorkload};
use crate::workload::{Format, SpecError};

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
    /// The store failed (HTTP 500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Most instances one launch may create.
pub const MAX_LAUNCH: usize = 100_000;

/// The service.
#[derive(Debug)]
pub struct Service {
    store: Store,
}

impl Service {
    /// A service over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The store (reads for the API).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Checks and saves a workload file; returns its name.
    ///
    /// # Errors
    /// An invalid file, or the store.
    pub fn put_workload(&self, tenant: &str, source: &str, format: Format) -> Result<String, ServiceError> {
        let parsed = crate::workload::parse(source, format)?;
        let uuid = self.store.workload(tenant, &parsed.name)?.map_or_else(Uuid::new_v4, |w| w.uuid);
        let stored =
            StoredWorkload { tenant: tenant.to_owned(), uuid, source: source.to_owned(), toml: format == Format::Toml };
        self.store.put_workload(&parsed.name, &stored)?;
        Ok(parsed.name)
    }

    /// Creates `count` instances of a workload, all pending; they are durable when this returns.
    ///
    /// # Errors
    /// Unknown workload, a count of 0 or over [`MAX_LAUNCH`], or the store.
    pub fn launch(&self, tenant: &str, workload: &str, count: usize, now_ms: u64) -> Result<Vec<Uuid>, ServiceError> {
        if count == 0 || count > MAX_LAUNCH {
            return Err(ServiceError::Invalid(format!("count must be 1 to {MAX_LAUNCH}, got {count}")));
        }
        let stored = self
            .store
            .workload(tenant, workload)?
            .ok_or_else(|| ServiceError::NotFound(format!("workload {workload}")))?;
        let parsed = stored.parsed()?;
        Ok(self.store.create_instances(tenant, workload, count, &Lifecycle::new(parsed.restart, now_ms))?)
    }

    /// The STARTs due at `now_ms`, each committed as sent before it is returned.
    ///
    /// # Errors
    /// The store.
    pub fn tick(&self, now_ms: u64) -> Result<Vec<Message>, ServiceError> {
        let mut out = Vec::new();
        for record in self.store.instances(None)? {
            if !matches!(record.life.state, crate::lifecycle::State::Pending { not_before_ms } if not_before_ms <= now_ms)
            {
                continue;
            }
            let mut actions = Vec::new();
            self.store.update_instance(record.uuid, |r| actions = r.life.handle(now_ms, Input::Tick))?;
            for action in actions {
                if let Action::SendStart { restart } = action {
                    out.push(self.start_message(&record, restart)?);
                }
            }
        }
        Ok(out)
    }

    fn start_message(&self, record: &InstanceRecord, restart: bool) -> Result<Message, ServiceError> {
        let stored = self
            .store
            .workload(&record.tenant, &record.workload)?
            .ok_or_else(|| ServiceError::NotFound(format!("workload {}", record.workload)))?;
        let w = stored.parsed()?;
        let mut start = Start::new(record.uuid, w.requirements, w.backend);
        start.workload_uuid = Some(stored.uuid);
        start.class = w.class;
        start.priority = w.priority;
        start.deadline_unix_ms = w.deadline_unix_ms;
        start.max_run_time_s = w.max_run_time_s;
        start.restart = restart;
        Ok(Message::Start(start))
    }

    /// After the scheduler connection came back: STARTs that got no answer are sent again at
    /// the next tick.
    ///
    /// # Errors
    /// The store.
    pub fn reconnected(&self, now_ms: u64) -> Result<(), ServiceError> {
        for record in self.store.instances(None)? {
            if matches!(record.life.state, crate::lifecycle::State::Starting | crate::lifecycle::State::Queued { .. }) {
                self.store.update_instance(record.uuid, |r| {
                    r.life.handle(now_ms, Input::Resend);
                })?;
            }
        }
        Ok(())
    }

    /// Applies a frame from the cluster; returns the commands it calls for.
    ///
    /// # Errors
    /// The store.
    pub fn report(&self, origin: Uuid, message: &Message, now_ms: u64) -> Result<Vec<Message>, ServiceError> {
        let (inputs, why): (Vec<(Uuid, Input)>, String) = match message {
            Message::InstanceQueued(q) => {
                (vec![(q.instance_uuid, Input::Queued { reason: q.reason.clone() })], q.reason.clone())
            }
            Message::StartFailure(f) => {
                let input = Input::StartFailed { reason: f.reason, detail: f.detail.clone(), node: f.node_uuid };
                (vec![(f.instance_uuid, input)], format!("start failed: {:?}: {}", f.reason, f.detail))
            }
            Message::InstanceStarted(e) => {
                (vec![(e.instance_uuid, Input::Started { node: e.node_uuid.unwrap_or(origin) })], String::new())
            }
            Message::InstanceExited(e) => {
                let why =
                    format!("exited: {:?}{}", e.reason, e.exit_code.map_or(String::new(), |c| format!(", code {c}")));
                (vec![(e.instance_uuid, Input::Exited { code: e.exit_code, reason: e.reason })], why)
            }
            Message::InstanceStopped(e) => {
                // A stop the user did not ask for was the node's: an evacuation.
                let user = self.store.instance(e.instance_uuid)?.is_some_and(|r| r.life.stop_requested);
                (
                    vec![(e.instance_uuid, Input::Stopped { evacuated: !user })],
                    if user { "stopped".into() } else { "evacuated".into() },
                )
            }
            Message::NodeLost(l) => (
                l.instances.iter().map(|i| (*i, Input::NodeLost)).collect(),
                format!("node {} lost", l.node_uuid.short()),
            ),
            _ => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        for (instance, input) in inputs {
            let node_hint = match &input {
                Input::Started { node } => Some(*node),
                _ => None,
            };
            let mut actions = Vec::new();
            self.store.update_instance(instance, |r| {
                actions = r.life.handle(now_ms, input);
                if let Some(node) = node_hint {
                    r.node = Some(node);
                }
                if let crate::lifecycle::State::Running { node } = r.life.state {
                    r.node = Some(node);
                }
                if !why.is_empty() {
                    r.why.clone_from(&why);
                }
            })?;
            out.extend(actions.into_iter().filter_map(|a| stop_message(instance, a)));
        }
        Ok(out)
    }

    /// A user's stop, cancel or start of an instance of `tenant`.
    ///
    /// # Errors
    /// Not this tenant's instance (reported as not found), or the store.
    pub fn user(&self, tenant: &str, instance: Uuid, input: Input, now_ms: u64) -> Result<Vec<Message>, ServiceError> {
        match self.store.instance(instance)? {
            Some(r) if r.tenant == tenant || tenant == "admin" => {}
            _ => return Err(ServiceError::NotFound(format!("instance {instance}"))),
        }
        let mut actions = Vec::new();
        self.store.update_instance(instance, |r| actions = r.life.handle(now_ms, input))?;
        Ok(actions.into_iter().filter_map(|a| stop_message(instance, a)).collect())
    }
}

fn stop_message(instance: Uuid, action: Action) -> Option<Message> {
    match action {
        Action::SendStop { node } => {
            Some(Message::Stop(Stop { instance_uuid: instance, workload_agent_uuid: node, grace_ms: None }))
        }
        Action::SendStart { .. } => None, // only `tick` starts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::State;
    use ssntp::payload::{
        ExitReason, FailureReason, InstanceEvent, InstanceExited, InstanceQueued, NodeLost, StartFailure,
    };

    const WORKLOAD: &str = r#"
name = "job"
size = "tiny"
[backend]
type = "process"
argv = ["/bin/false"]
[restart]
policy = "on-failure"
attempts = 1
backoff = "1s"
"#;

    fn node() -> Uuid {
        Uuid::from_bytes([7; 16])
    }

    fn starts(messages: &[Message]) -> Vec<(Uuid, bool)> {
        messages
            .iter()
            .filter_map(|m| if let Message::Start(s) = m { Some((s.instance_uuid, s.restart)) } else { None })
            .collect()
    }

    fn service(dir: &std::path::Path) -> Service {
        Service::new(Store::open(&dir.join("c.redb")).unwrap())
    }

    #[test]
    fn launch_start_fail_restart_and_give_up() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path());
        assert_eq!(s.put_workload("acme", WORKLOAD, Format::Toml).unwrap(), "job");
        let ids = s.launch("acme", "job", 2, 0).unwrap();
        let sent = s.tick(0).unwrap();
        assert_eq!(starts(&sent).len(), 2);
        let Message::Start(first) = &sent[0] else { unreachable!() };
        assert_eq!(first.requirements.mem_mb, 32, "tiny");
        assert!(first.workload_uuid.is_some());
        assert!(s.tick(0).unwrap().is_empty(), "nothing twice");
        let id = ids[0];
        s.report(
            node(),
            &Message::InstanceQueued(InstanceQueued {
                instance_uuid: id,
                reason: "0 of 1 nodes fit: 1 load above threshold".into(),
                position: 0,
            }),
            1,
        )
        .unwrap();
        assert_eq!(
            s.store().instance(id).unwrap().unwrap().why,
            "0 of 1 nodes fit: 1 load above threshold",
            "drover ps says why it waits"
        );
        s.report(node(), &Message::InstanceStarted(InstanceEvent { instance_uuid: id, node_uuid: Some(node()) }), 2)
            .unwrap();
        assert_eq!(s.store().instance(id).unwrap().unwrap().node, Some(node()));
        let exited = |_at: u64| {
            Message::InstanceExited(InstanceExited {
                instance_uuid: id,
                node_uuid: node(),
                exit_code: Some(1),
                reason: ExitReason::Failed,
            })
        };
        s.report(node(), &exited(3), 3).unwrap();
        assert!(s.tick(500).unwrap().is_empty(), "backoff");
        assert_eq!(starts(&s.tick(1003).unwrap()), vec![(id, true)], "restarted once, marked as a restart");
        s.report(node(), &Message::InstanceStarted(InstanceEvent { instance_uuid: id, node_uuid: Some(node()) }), 1004)
            .unwrap();
        s.report(node(), &exited(1005), 1005).unwrap();
        let record = s.store().instance(id).unwrap().unwrap();
        assert!(matches!(record.life.state, State::Failed { .. }), "attempts used up: {:?}", record.life.state);
        assert!(record.why.contains("code 1"), "{}", record.why);
    }

    #[test]
    fn a_crash_after_commit_resends_once_and_a_duplicate_means_running() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let s = service(dir.path());
            s.put_workload("acme", WORKLOAD, Format::Toml).unwrap();
            let id = s.launch("acme", "job", 1, 0).unwrap()[0];
            let _lost_in_the_crash = s.tick(0).unwrap();
            id
        };
        let s = service(dir.path());
        assert!(s.tick(10).unwrap().is_empty(), "a restarted controller does not start it again by itself");
        s.reconnected(10).unwrap();
        assert_eq!(starts(&s.tick(10).unwrap()), vec![(id, true)], "sent again after reconnecting");
        let dup = StartFailure {
            node_uuid: Some(node()),
            instance_uuid: id,
            reason: FailureReason::AlreadyRunning,
            restart: true,
            detail: String::new(),
        };
        s.report(node(), &Message::StartFailure(dup), 11).unwrap();
        assert_eq!(s.store().instance(id).unwrap().unwrap().life.state, State::Running { node: node() });
        assert!(s.tick(5000).unwrap().is_empty(), "exactly one copy");
    }

    #[test]
    fn node_loss_evacuation_user_stop_and_tenant_isolation() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path());
        s.put_workload("acme", WORKLOAD, Format::Toml).unwrap();
        let ids = s.launch("acme", "job", 2, 0).unwrap();
        s.tick(0).unwrap();
        for id in &ids {
            s.report(
                node(),
                &Message::InstanceStarted(InstanceEvent { instance_uuid: *id, node_uuid: Some(node()) }),
                1,
            )
            .unwrap();
        }
        // Tenant isolation: another tenant cannot stop it, and learns nothing about it.
        assert!(matches!(s.user("other", ids[0], Input::Stop, 2), Err(ServiceError::NotFound(_))));
        // The user stops one: a STOP goes to its node; its stop is final.
        let out = s.user("acme", ids[0], Input::Stop, 2).unwrap();
        assert!(matches!(&out[..], [Message::Stop(stop)] if stop.workload_agent_uuid == node()));
        s.report(
            node(),
            &Message::InstanceStopped(InstanceEvent { instance_uuid: ids[0], node_uuid: Some(node()) }),
            3,
        )
        .unwrap();
        assert_eq!(s.store().instance(ids[0]).unwrap().unwrap().life.state, State::Stopped);
        // The other is evacuated (a stop nobody asked for): started again elsewhere.
        s.report(
            node(),
            &Message::InstanceStopped(InstanceEvent { instance_uuid: ids[1], node_uuid: Some(node()) }),
            4,
        )
        .unwrap();
        assert_eq!(starts(&s.tick(4).unwrap()), vec![(ids[1], true)]);
        s.report(
            node(),
            &Message::InstanceStarted(InstanceEvent { instance_uuid: ids[1], node_uuid: Some(node()) }),
            5,
        )
        .unwrap();
        // Its node is lost: restarted per policy.
        s.report(node(), &Message::NodeLost(NodeLost { node_uuid: node(), instances: vec![ids[1]] }), 6).unwrap();
        assert!(matches!(s.store().instance(ids[1]).unwrap().unwrap().life.state, State::Pending { .. }));
        assert!(matches!(s.launch("acme", "nope", 1, 0), Err(ServiceError::NotFound(_))));
        assert!(matches!(s.launch("acme", "job", 0, 0), Err(ServiceError::Invalid(_))));
        assert!(matches!(s.put_workload("acme", "name = 1", Format::Toml), Err(ServiceError::Spec(_))));
    }
}
