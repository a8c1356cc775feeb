//! The controller's durable state in redb: workloads, instances with their life, and an event
//! log with a monotonic revision.
//!
//! Every change is one write transaction that also appends an event and bumps the revision;
//! a method returns only after the commit (redb's default durability: fsync), so whatever the
//! API acknowledged survives a crash or `kill -9` of the controller. Values are JSON, so an
//! operator can read them with any redb tool.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use ssntp::Uuid;

use crate::lifecycle::{Lifecycle, State};
use crate::workload::Workload;

/// `<tenant>/<name>` → stored workload.
const WORKLOADS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("workloads");
/// instance UUID text → instance record.
const INSTANCES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("instances");
/// revision → event.
const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");

/// The store failed (disk, corruption) — not the caller's fault.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(String);

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        Self(e.into().to_string())
    }
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store types serialise")
}

fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError(format!("corrupt record: {e}")))
}

/// A workload as stored (the parsed file is kept with its source for `drover workload show`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredWorkload {
    /// Tenant owning it.
    pub tenant: String,
    /// The workload's identity (for START's `workload_uuid` and memory estimates).
    pub uuid: Uuid,
    /// The file as submitted.
    pub source: String,
    /// Whether `source` is TOML (else JSON).
    pub toml: bool,
}

impl StoredWorkload {
    /// The parsed workload.
    ///
    /// # Errors
    /// The stored source no longer parses (a newer controller changed the format).
    pub fn parsed(&self) -> Result<Workload, crate::workload::SpecError> {
        let format = if self.toml { crate::workload::Format::Toml } else { crate::workload::Format::Json };
        crate::workload::parse(&self.source, format)
    }
}

/// An instance as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The instance.
    pub uuid: Uuid,
    /// Tenant owning it.
    pub tenant: String,
    /// Workload name.
    pub workload: String,
    /// Its life.
    pub life: Lifecycle,
    /// Node it runs or ran on.
    pub node: Option<Uuid>,
    /// Latest explanation from the cluster ("0 of 3 nodes fit: …", "exited: oom").
    pub why: String,
    /// The batch submission it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Uuid>,
}

/// Something that changed, in revision order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic, never reused, survives restarts.
    pub revision: u64,
    /// Tenant it concerns.
    pub tenant: String,
    /// Instance, if it is about one.
    pub instance: Option<Uuid>,
    /// What happened, for people.
    pub what: String,
}

/// The store.
///
/// Beside the database it keeps two indexes in memory, rebuilt on open: the instances waiting
/// for a START and when they may have it (so a tick looks at those, not at every instance), and
/// the running instances by node (so a node's STATS is checked against what should run there).
#[derive(Debug)]
pub struct Store {
    db: Database,
    pending: Mutex<BTreeMap<Uuid, u64>>,
    running: Mutex<BTreeMap<Uuid, Uuid>>,
}

/// One change to the store's event log: tenant, instance, what happened.
type EventDraft = (String, Option<Uuid>, String);

impl Store {
    /// Opens (or creates) the store at `path`.
    ///
    /// # Errors
    /// The file cannot be opened or is not a redb database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(WORKLOADS)?;
            txn.open_table(INSTANCES)?;
            txn.open_table(EVENTS)?;
        }
        txn.commit()?;
        let store = Self { db, pending: Mutex::new(BTreeMap::new()), running: Mutex::new(BTreeMap::new()) };
        let records = store.instances(None)?;
        store.index(&records);
        Ok(store)
    }

    /// Keeps the pending index in step with records just committed.
    fn index<'a>(&self, records: impl IntoIterator<Item = &'a InstanceRecord>) {
        let mut pending = self.pending.lock().expect("pending index lock");
        let mut running = self.running.lock().expect("running index lock");
        for record in records {
            if let State::Pending { not_before_ms } = record.life.state {
                pending.insert(record.uuid, not_before_ms);
            } else {
                pending.remove(&record.uuid);
            }
            if let State::Running { node } = record.life.state {
                running.insert(record.uuid, node);
            } else {
                running.remove(&record.uuid);
            }
        }
    }

    /// Instances the store believes run on `node`.
    pub fn running_on(&self, node: Uuid) -> Vec<Uuid> {
        let running = self.running.lock().expect("running index lock");
        running.iter().filter(|(_, n)| **n == node).map(|(id, _)| *id).collect()
    }

    /// The nodes the store believes run at least one instance.
    pub fn nodes_running(&self) -> std::collections::BTreeSet<Uuid> {
        self.running.lock().expect("running index lock").values().copied().collect()
    }

    /// Instances waiting for a START whose time has come at `now_ms`, at most `limit`.
    pub fn due(&self, now_ms: u64, limit: usize) -> Vec<Uuid> {
        let pending = self.pending.lock().expect("pending index lock");
        pending.iter().filter(|(_, at)| **at <= now_ms).map(|(id, _)| *id).take(limit).collect()
    }

    /// How many instances wait for a START (due or in backoff).
    pub fn pending_count(&self) -> usize {
        self.pending.lock().expect("pending index lock").len()
    }

    /// The latest revision (0 for an empty store).
    ///
    /// # Errors
    /// Storage errors.
    pub fn revision(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let last = events.last()?.map_or(0, |(k, _)| k.value());
        Ok(last)
    }

    /// Runs `change` in one write transaction that appends `events` (tenant, instance, what) and
    /// returns the last revision written. Nothing is visible, and nothing is acknowledged,
    /// before the commit.
    fn write<T>(
        &self,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<(T, Vec<EventDraft>), StoreError>,
    ) -> Result<(T, u64), StoreError> {
        let txn = self.db.begin_write()?;
        let (value, events) = change(&txn)?;
        let mut revision;
        {
            let mut table = txn.open_table(EVENTS)?;
            revision = table.last()?.map_or(0, |(k, _)| k.value());
            for (tenant, instance, what) in events {
                revision += 1;
                table.insert(revision, json(&Event { revision, tenant, instance, what }).as_slice())?;
            }
        }
        txn.commit()?;
        Ok((value, revision))
    }

    /// Creates or replaces a workload; returns the revision.
    ///
    /// # Errors
    /// Storage errors.
    pub fn put_workload(&self, name: &str, workload: &StoredWorkload) -> Result<u64, StoreError> {
        let key = format!("{}/{name}", workload.tenant);
        let (_, revision) = self.write(|txn| {
            txn.open_table(WORKLOADS)?.insert(key.as_str(), json(workload).as_slice())?;
            Ok(((), vec![(workload.tenant.clone(), None, format!("workload {name} saved"))]))
        })?;
        Ok(revision)
    }

    /// A workload of a tenant.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn workload(&self, tenant: &str, name: &str) -> Result<Option<StoredWorkload>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(WORKLOADS)?;
        let value = table.get(format!("{tenant}/{name}").as_str())?;
        value.map(|v| parse(v.value())).transpose()
    }

    /// Creates `count` instances of a workload, all in `life`'s state (pending, or failed when
    /// refused before they were created) with `why`, in one transaction; returns their UUIDs
    /// once they are durable.
    ///
    /// # Errors
    /// Storage errors.
    pub fn create_instances(
        &self,
        tenant: &str,
        workload: &str,
        count: usize,
        life: &Lifecycle,
        why: &str,
        batch: Option<Uuid>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let (records, _) = self.write(|txn| {
            let mut table = txn.open_table(INSTANCES)?;
            let mut records = Vec::with_capacity(count);
            let mut events = Vec::with_capacity(count);
            for _ in 0..count {
                let uuid = Uuid::new_v4();
                let record = InstanceRecord {
                    uuid,
                    tenant: tenant.to_owned(),
                    workload: workload.to_owned(),
                    life: life.clone(),
                    node: None,
                    why: why.to_owned(),
                    batch,
                };
                table.insert(uuid.to_string().as_str(), json(&record).as_slice())?;
                events.push((tenant.to_owned(), Some(uuid), format!("instance of {workload} created")));
                records.push(record);
            }
            Ok((records, events))
        })?;
        self.index(&records);
        Ok(records.into_iter().map(|r| r.uuid).collect())
    }

    /// An instance.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn instance(&self, uuid: Uuid) -> Result<Option<InstanceRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INSTANCES)?;
        let value = table.get(uuid.to_string().as_str())?;
        value.map(|v| parse(v.value())).transpose()
    }

    /// Every instance (of one tenant, or all).
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn instances(&self, tenant: Option<&str>) -> Result<Vec<InstanceRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INSTANCES)?;
        let mut out = Vec::new();
        for entry in table.range::<&str>(..)? {
            let (_, v) = entry?;
            let record: InstanceRecord = parse(v.value())?;
            if tenant.is_none_or(|t| t == record.tenant) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Changes an instance in one transaction; the event says what became of it. Returns the
    /// revision, or `None` for an unknown instance.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn update_instance(
        &self,
        uuid: Uuid,
        change: impl FnOnce(&mut InstanceRecord),
    ) -> Result<Option<u64>, StoreError> {
        let mut change = Some(change);
        let (found, revision) = self.update_instances(&[uuid], |r| {
            if let Some(change) = change.take() {
                change(r);
            }
        })?;
        Ok((!found.is_empty()).then_some(revision))
    }

    /// Changes many instances in one transaction (one fsync), an event each; unknown UUIDs are
    /// skipped. Returns the records as written and the last revision.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn update_instances(
        &self,
        uuids: &[Uuid],
        mut change: impl FnMut(&mut InstanceRecord),
    ) -> Result<(Vec<InstanceRecord>, u64), StoreError> {
        if uuids.is_empty() {
            return Ok((Vec::new(), self.revision()?));
        }
        let (records, revision) = self.write(|txn| {
            let mut table = txn.open_table(INSTANCES)?;
            let mut records = Vec::with_capacity(uuids.len());
            let mut events = Vec::with_capacity(uuids.len());
            for uuid in uuids {
                let key = uuid.to_string();
                let current = table.get(key.as_str())?.map(|v| parse::<InstanceRecord>(v.value())).transpose()?;
                let Some(mut record) = current else { continue };
                let before = record.life.state.name();
                change(&mut record);
                table.insert(key.as_str(), json(&record).as_slice())?;
                let after = record.life.state.name();
                let what = if before == after {
                    format!("instance {after}")
                } else {
                    format!("instance {before} → {after}")
                };
                let what = if record.why.is_empty() { what } else { format!("{what}: {}", record.why) };
                events.push((record.tenant.clone(), Some(*uuid), what));
                records.push(record);
            }
            Ok((records, events))
        })?;
        self.index(&records);
        Ok((records, revision))
    }

    /// Deletes an instance record (its history stays in the event log).
    ///
    /// # Errors
    /// Storage errors.
    pub fn delete_instance(&self, uuid: Uuid) -> Result<bool, StoreError> {
        let key = uuid.to_string();
        let (removed, _) = self.write(|txn| {
            let mut table = txn.open_table(INSTANCES)?;
            let removed = table.remove(key.as_str())?.map(|v| parse::<InstanceRecord>(v.value())).transpose()?;
            let events =
                removed.iter().map(|r| (r.tenant.clone(), Some(uuid), "instance deleted".to_owned())).collect();
            Ok((removed.is_some(), events))
        })?;
        self.pending.lock().expect("pending index lock").remove(&uuid);
        self.running.lock().expect("running index lock").remove(&uuid);
        Ok(removed)
    }

    /// Every workload of a tenant (or of all), by name.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn workloads(&self, tenant: Option<&str>) -> Result<Vec<(String, StoredWorkload)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(WORKLOADS)?;
        let mut out = Vec::new();
        for entry in table.range::<&str>(..)? {
            let (k, v) = entry?;
            let stored: StoredWorkload = parse(v.value())?;
            if tenant.is_none_or(|t| t == stored.tenant) {
                let name = k.value().split_once('/').map_or(k.value(), |(_, n)| n).to_owned();
                out.push((name, stored));
            }
        }
        Ok(out)
    }

    /// Deletes a workload; returns whether it existed.
    ///
    /// # Errors
    /// Storage errors.
    pub fn delete_workload(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        let key = format!("{tenant}/{name}");
        let (removed, _) = self.write(|txn| {
            let removed = txn.open_table(WORKLOADS)?.remove(key.as_str())?.is_some();
            let events =
                if removed { vec![(tenant.to_owned(), None, format!("workload {name} deleted"))] } else { vec![] };
            Ok((removed, events))
        })?;
        Ok(removed)
    }

    /// Appends an event that changes no record (a batch finished); returns its revision.
    ///
    /// # Errors
    /// Storage errors.
    pub fn note(&self, tenant: &str, instance: Option<Uuid>, what: String) -> Result<u64, StoreError> {
        let (_, revision) = self.write(|_| Ok(((), vec![(tenant.to_owned(), instance, what)])))?;
        Ok(revision)
    }

    /// Events after `revision`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// Storage errors or a corrupt record.
    pub fn events_after(&self, revision: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        for entry in table.range(revision.saturating_add(1)..)? {
            if out.len() >= limit {
                break;
            }
            let (_, v) = entry?;
            out.push(parse(v.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{Restart, RestartPolicy, State};

    const RESTART: Restart = Restart { policy: RestartPolicy::OnFailure, attempts: 3, backoff_ms: 1000 };

    fn workload() -> StoredWorkload {
        let source = r#"{"name": "web", "size": "tiny", "backend": {"type": "process", "argv": ["true"]}}"#;
        StoredWorkload { tenant: "acme".into(), uuid: Uuid::new_v4(), source: source.into(), toml: false }
    }

    #[test]
    fn everything_written_is_there_after_reopening_and_revisions_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.redb");
        let (ids, last) = {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.revision().unwrap(), 0);
            let r1 = store.put_workload("web", &workload()).unwrap();
            let ids = store.create_instances("acme", "web", 3, &Lifecycle::new(RESTART, 0), "", None).unwrap();
            let r2 = store.update_instance(ids[0], |r| r.life.state = State::Starting).unwrap().unwrap();
            assert!(r2 > r1);
            assert_eq!(store.update_instance(Uuid::new_v4(), |_| {}).unwrap(), None);
            (ids, r2)
        };
        let store = Store::open(&path).unwrap();
        assert_eq!(store.revision().unwrap(), last);
        assert_eq!(store.workload("acme", "web").unwrap().unwrap().parsed().unwrap().name, "web");
        assert_eq!(store.workload("other", "web").unwrap(), None, "tenants are separate");
        assert_eq!(store.instances(Some("acme")).unwrap().len(), 3);
        assert!(store.instances(Some("other")).unwrap().is_empty());
        assert_eq!(store.instance(ids[0]).unwrap().unwrap().life.state, State::Starting);
        let next = store.update_instance(ids[1], |r| r.why = "queued".into()).unwrap().unwrap();
        assert!(next > last, "revisions grow across restarts");
        let events = store.events_after(0, 100).unwrap();
        assert_eq!(events.len() as u64, next);
        assert!(events.windows(2).all(|w| w[1].revision == w[0].revision + 1));
        assert!(events.last().unwrap().what.contains("instance pending"));
        assert_eq!(store.events_after(next - 1, 10).unwrap().len(), 1, "cursor");
    }
}
