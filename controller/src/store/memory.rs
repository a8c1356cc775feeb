//! The in-memory backend: the same guarantees as redb within one process (each change is atomic
//! under one lock, revisions one apart), nothing on disk. For tests of the service.

use std::collections::BTreeMap;
use std::sync::Mutex;

use ssntp::Uuid;

use super::{Event, EventDraft, InstanceRecord, StoreBackend, StoreError, StoredWorkload};

/// Records in maps under one lock.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    workloads: BTreeMap<String, StoredWorkload>,
    instances: BTreeMap<Uuid, InstanceRecord>,
    events: BTreeMap<u64, Event>,
}

impl Inner {
    fn append(&mut self, events: Vec<EventDraft>) -> u64 {
        let mut revision = self.events.last_key_value().map_or(0, |(r, _)| *r);
        let at = drover_model::unix_ms_now();
        for draft in events {
            revision += 1;
            self.events.insert(revision, draft.into_event(revision, at));
        }
        revision
    }
}

impl MemoryBackend {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("memory store lock")
    }
}

impl StoreBackend for MemoryBackend {
    fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.lock().events.last_key_value().map_or(0, |(r, _)| *r))
    }

    fn put_workload(&self, key: &str, workload: &StoredWorkload, event: EventDraft) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        inner.workloads.insert(key.to_owned(), workload.clone());
        Ok(inner.append(vec![event]))
    }

    fn workload(&self, key: &str) -> Result<Option<StoredWorkload>, StoreError> {
        Ok(self.lock().workloads.get(key).cloned())
    }

    fn workloads(&self) -> Result<Vec<(String, StoredWorkload)>, StoreError> {
        Ok(self.lock().workloads.iter().map(|(k, w)| (k.clone(), w.clone())).collect())
    }

    fn delete_workload(&self, key: &str, event: EventDraft) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let removed = inner.workloads.remove(key).is_some();
        if removed {
            inner.append(vec![event]);
        }
        Ok(removed)
    }

    fn insert_instances(&self, records: &[InstanceRecord], events: Vec<EventDraft>) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        for record in records {
            inner.instances.insert(record.uuid, record.clone());
        }
        Ok(inner.append(events))
    }

    fn instance(&self, uuid: Uuid) -> Result<Option<InstanceRecord>, StoreError> {
        Ok(self.lock().instances.get(&uuid).cloned())
    }

    fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        // In UUID text order, as redb keeps them.
        let mut all: Vec<InstanceRecord> = self.lock().instances.values().cloned().collect();
        all.sort_by_cached_key(|r| r.uuid.to_string());
        Ok(all)
    }

    fn instances_from(&self, start: &str, limit: usize) -> Result<Vec<InstanceRecord>, StoreError> {
        // UUID byte order is UUID text order.
        let inner = self.lock();
        Ok(inner.instances.values().filter(|r| r.uuid.to_string().as_str() >= start).take(limit).cloned().collect())
    }

    fn update_instances(
        &self,
        uuids: &[Uuid],
        change: &mut dyn FnMut(&mut InstanceRecord) -> EventDraft,
    ) -> Result<(Vec<InstanceRecord>, u64), StoreError> {
        let mut inner = self.lock();
        let mut records = Vec::with_capacity(uuids.len());
        let mut events = Vec::with_capacity(uuids.len());
        for uuid in uuids {
            let Some(mut record) = inner.instances.get(uuid).cloned() else { continue };
            events.push(change(&mut record));
            inner.instances.insert(*uuid, record.clone());
            records.push(record);
        }
        let revision = inner.append(events);
        Ok((records, revision))
    }

    fn delete_instance(&self, uuid: Uuid, event: EventDraft) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let removed = inner.instances.remove(&uuid).is_some();
        if removed {
            inner.append(vec![event]);
        }
        Ok(removed)
    }

    fn note(&self, event: EventDraft) -> Result<u64, StoreError> {
        Ok(self.lock().append(vec![event]))
    }

    fn events_after(&self, revision: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        Ok(self.lock().events.range(revision.saturating_add(1)..).take(limit).map(|(_, e)| e.clone()).collect())
    }
}
