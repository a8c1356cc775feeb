//! The redb backend: one file, one write transaction per change, fsync per commit (redb's
//! default durability), so whatever the API acknowledged survives a crash or `kill -9` of the
//! controller. Values are JSON, so an operator can read them with any redb tool.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use ssntp::Uuid;

use super::{Event, EventDraft, InstanceRecord, StoreBackend, StoreError, StoredWorkload};

/// `<tenant>/<name>` → stored workload.
const WORKLOADS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("workloads");
/// instance UUID text → instance record.
const INSTANCES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("instances");
/// revision → event.
const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");

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

/// The page cache a store keeps unless told otherwise. redb's own default is 1 GiB, which a
/// controller with a million instances fills (its RSS then passes 2 GiB); the kernel's page
/// cache keeps the file warm anyway, so a miss costs a copy, not a disk read.
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

/// A redb database file.
#[derive(Debug)]
pub struct RedbBackend {
    db: Database,
}

impl RedbBackend {
    /// Opens (or creates) the database at `path`, caching at most `cache_bytes` of its pages.
    ///
    /// # Errors
    /// The file cannot be opened or is not a redb database.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        let db = Database::builder().set_cache_size(cache_bytes).create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(WORKLOADS)?;
            txn.open_table(INSTANCES)?;
            txn.open_table(EVENTS)?;
        }
        txn.commit()?;
        Ok(Self { db })
    }

    /// Runs `change` in one write transaction that appends the events it returns, and returns
    /// the last revision written. Nothing is visible, and nothing is acknowledged, before the
    /// commit.
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
            let at = drover_model::unix_ms_now();
            for draft in events {
                revision += 1;
                table.insert(revision, json(&draft.into_event(revision, at)).as_slice())?;
            }
        }
        txn.commit()?;
        Ok((value, revision))
    }
}

impl StoreBackend for RedbBackend {
    fn revision(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let last = events.last()?.map_or(0, |(k, _)| k.value());
        Ok(last)
    }

    fn put_workload(&self, key: &str, workload: &StoredWorkload, event: EventDraft) -> Result<u64, StoreError> {
        let (_, revision) = self.write(|txn| {
            txn.open_table(WORKLOADS)?.insert(key, json(workload).as_slice())?;
            Ok(((), vec![event]))
        })?;
        Ok(revision)
    }

    fn workload(&self, key: &str) -> Result<Option<StoredWorkload>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(WORKLOADS)?;
        let value = table.get(key)?;
        value.map(|v| parse(v.value())).transpose()
    }

    fn workloads(&self) -> Result<Vec<(String, StoredWorkload)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(WORKLOADS)?;
        let mut out = Vec::new();
        for entry in table.range::<&str>(..)? {
            let (k, v) = entry?;
            out.push((k.value().to_owned(), parse(v.value())?));
        }
        Ok(out)
    }

    fn delete_workload(&self, key: &str, event: EventDraft) -> Result<bool, StoreError> {
        let (removed, _) = self.write(|txn| {
            let removed = txn.open_table(WORKLOADS)?.remove(key)?.is_some();
            Ok((removed, if removed { vec![event] } else { vec![] }))
        })?;
        Ok(removed)
    }

    fn insert_instances(&self, records: &[InstanceRecord], events: Vec<EventDraft>) -> Result<u64, StoreError> {
        let ((), revision) = self.write(|txn| {
            let mut table = txn.open_table(INSTANCES)?;
            for record in records {
                table.insert(record.uuid.to_string().as_str(), json(record).as_slice())?;
            }
            Ok(((), events))
        })?;
        Ok(revision)
    }

    fn instance(&self, uuid: Uuid) -> Result<Option<InstanceRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INSTANCES)?;
        let value = table.get(uuid.to_string().as_str())?;
        value.map(|v| parse(v.value())).transpose()
    }

    fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INSTANCES)?;
        let mut out = Vec::new();
        for entry in table.range::<&str>(..)? {
            let (_, v) = entry?;
            out.push(parse(v.value())?);
        }
        Ok(out)
    }

    fn instances_from(&self, start: &str, limit: usize) -> Result<Vec<InstanceRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INSTANCES)?;
        let mut out = Vec::with_capacity(limit.min(4096));
        for entry in table.range::<&str>(start..)?.take(limit) {
            let (_, v) = entry?;
            out.push(parse(v.value())?);
        }
        Ok(out)
    }

    fn update_instances(
        &self,
        uuids: &[Uuid],
        change: &mut dyn FnMut(&mut InstanceRecord) -> EventDraft,
    ) -> Result<(Vec<InstanceRecord>, u64), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(INSTANCES)?;
            let mut records = Vec::with_capacity(uuids.len());
            let mut events = Vec::with_capacity(uuids.len());
            for uuid in uuids {
                let key = uuid.to_string();
                let current = table.get(key.as_str())?.map(|v| parse::<InstanceRecord>(v.value())).transpose()?;
                let Some(mut record) = current else { continue };
                events.push(change(&mut record));
                table.insert(key.as_str(), json(&record).as_slice())?;
                records.push(record);
            }
            Ok((records, events))
        })
    }

    fn delete_instance(&self, uuid: Uuid, event: EventDraft) -> Result<bool, StoreError> {
        let key = uuid.to_string();
        let (removed, _) = self.write(|txn| {
            let removed = txn.open_table(INSTANCES)?.remove(key.as_str())?.is_some();
            Ok((removed, if removed { vec![event] } else { vec![] }))
        })?;
        Ok(removed)
    }

    fn note(&self, event: EventDraft) -> Result<u64, StoreError> {
        let (_, revision) = self.write(|_| Ok(((), vec![event])))?;
        Ok(revision)
    }

    fn events_after(&self, revision: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
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
