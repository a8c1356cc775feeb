//! The etcd backend: the controller's records under a key prefix of an etcd cluster, so that a
//! standby controller on another machine can take over with everything the leader acknowledged.
//!
//! Layout under the prefix `P` (default `/drover`), values JSON like the redb backend's:
//! - `P/meta/revision`: the last event's revision, decimal. Every write is one etcd transaction
//!   that compares this key's `mod_revision` with the one this controller last wrote, so no two
//!   writers can both number events (revisions stay one apart and never reused);
//! - `P/w/<tenant>/<name>`: workloads; `P/i/<uuid>`: instances; `P/e/<revision, 20 digits>`:
//!   events, so a range read lists them in order;
//! - `P/leader`: the leader election's key (see [`drover_etcd::election`]). With a [`Fence`] set, every
//!   write also compares that key's `create_revision` with the one this controller created: a
//!   controller that lost its lease cannot write, even if it does not know yet.
//!
//! etcd limits a transaction to `--max-txn-ops` operations (128 by default) and a request to
//! `--max-request-bytes` (1.5 MiB): a larger change (a launch of 10,000 instances) is written in
//! several transactions, in order, each atomic, and acknowledged once the last is durable. A
//! failure between two of them leaves the first ones written (whole instances, each with its
//! event), never half a record. Events beyond [`EtcdConfig::retain_events`] are deleted as new
//! ones are written, and the leader compacts etcd's history every five minutes
//! ([`drover_etcd::election::Leading::compact_history`]), so the cluster stays within its quota.
//!
//! The backend's methods are synchronous like the other backends'; the etcd client
//! ([`drover_etcd::Client`]) is async, so each call runs on the backend's own small runtime and the
//! caller waits for its answer.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ssntp::Uuid;

use super::{Event, EventDraft, InstanceRecord, StoreBackend, StoreError, StoredWorkload};
use drover_etcd::{Client, Compare, Op, Txn};

/// How to reach etcd and where the records live.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `host:port` or URLs of the members (`https://` when `tls` is set).
    pub endpoints: Vec<String>,
    /// Key prefix, without a trailing slash.
    pub prefix: String,
    /// Client TLS (CA, and a client certificate when etcd requires one).
    pub tls: Option<drover_etcd::Tls>,
    /// Most operations in one transaction: etcd's `--max-txn-ops` (128 unless raised).
    pub max_txn_ops: usize,
    /// Most events kept; older ones are deleted as new ones come.
    pub retain_events: u64,
    /// How long one request may take before it fails.
    pub timeout: Duration,
}

impl EtcdConfig {
    /// Defaults for `endpoints`: prefix `/drover`, 128 operations per transaction, 100,000
    /// events, 5 s per request.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: "/drover".into(),
            tls: None,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            retain_events: DEFAULT_RETAIN_EVENTS,
            timeout: Duration::from_secs(5),
        }
    }
}

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// Events kept by default.
pub const DEFAULT_RETAIN_EVENTS: u64 = 100_000;
/// Most bytes of values in one transaction: under etcd's default 1.5 MiB request limit.
const MAX_TXN_BYTES: usize = 1 << 20;
/// Records read per range request.
const READ_CHUNK: i64 = 1000;

/// A client of `config`'s members, once one has answered.
///
/// # Errors
/// Unusable TLS files, or no member answers.
pub async fn connect(config: &EtcdConfig) -> Result<Client, drover_etcd::Error> {
    let client = Client::new(&config.endpoints, config.tls.as_ref(), config.timeout)?;
    client.status().await?;
    Ok(client)
}

pub use drover_etcd::election::Fence;

/// The records on etcd.
#[derive(Debug)]
pub struct EtcdBackend {
    client: Client,
    config: EtcdConfig,
    /// Always set; taken only when dropped.
    runtime: Option<tokio::runtime::Runtime>,
    /// The fence every write checks, once set.
    fence: Mutex<Option<Fence>>,
    /// One writer at a time in this process; holds the counter as last written.
    writer: Mutex<Counter>,
    /// Reads from whichever member answers, without quorum (set while etcd has none).
    serializable: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The revision counter as this controller last saw it.
#[derive(Debug, Clone, Copy)]
struct Counter {
    /// The last event's revision.
    revision: u64,
    /// The counter key's `mod_revision` (0: the key does not exist).
    mod_revision: i64,
}

fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError(format!("corrupt record: {e}")))
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store types serialise")
}

fn etcd_error(e: drover_etcd::Error) -> StoreError {
    StoreError(format!("etcd: {e}"))
}

/// A call to etcd, as the backend's runtime runs it.
type EtcdFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, drover_etcd::Error>> + Send>>;

/// Tries after a transient failure: 0.2 + 0.4 + 0.8 + 1.6 s, about the time etcd takes to
/// elect a new leader when one member of three is lost.
const RETRIES: u32 = 4;

fn retry_pause(attempt: u32) -> Duration {
    Duration::from_millis(200 << attempt.min(4))
}

/// Whether a failure may pass by itself: a member unreachable or timed out, or etcd changing
/// leaders (it answers 503 "leader changed", "no leader", "request timed out").
fn transient(e: &drover_etcd::Error) -> bool {
    match e {
        drover_etcd::Error::Unreachable(_) => true,
        drover_etcd::Error::Refused { status, message } => {
            *status == 503 || *status == 504 || message.contains("leader") || message.contains("timed out")
        }
        drover_etcd::Error::Decode(_) => false,
    }
}

/// The smallest key after every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A key and its value, as a range read gives them.
type KeyAndValue = (Vec<u8>, Vec<u8>);

/// One transaction's worth of writes, with the events it appends.
struct Batch {
    ops: Vec<Op>,
    events: Vec<EventDraft>,
    bytes: usize,
}

impl EtcdBackend {
    /// Connects to etcd and reads the revision counter.
    ///
    /// # Errors
    /// No member answers, or the counter is not a number.
    pub fn open(config: EtcdConfig) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError(format!("starting the etcd client's runtime: {e}")))?;
        let client = {
            let for_task = config.clone();
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            runtime.spawn(async move {
                let _ = tx.send(connect(&for_task).await);
            });
            rx.recv()
                .map_err(|_| StoreError("the etcd client's runtime stopped".into()))?
                .map_err(|e| StoreError(format!("cannot reach etcd at {}: {e}", config.endpoints.join(", "))))?
        };
        let backend = Self {
            client,
            config,
            runtime: Some(runtime),
            fence: Mutex::new(None),
            writer: Mutex::new(Counter { revision: 0, mod_revision: 0 }),
            serializable: std::sync::Arc::default(),
        };
        let counter = backend.read_counter()?;
        *backend.writer.lock().expect("writer lock") = counter;
        Ok(backend)
    }

    /// The switch to serializable reads: on, reads are answered by the member asked, without
    /// quorum, possibly stale (a leader keeps answering reads while etcd has no quorum).
    pub fn serializable_reads(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        std::sync::Arc::clone(&self.serializable)
    }

    /// From now on every write checks `fence` (or nothing, with `None`).
    pub fn set_fence(&self, fence: Option<Fence>) {
        *self.fence.lock().expect("fence lock") = fence;
    }

    /// Runs `work` with a client on the backend's runtime and waits for it. Safe from any
    /// thread, async or not: the caller only blocks on a channel.
    fn run_raw<T: Send + 'static>(&self, work: &dyn Fn(Client) -> EtcdFuture<T>) -> Result<T, drover_etcd::Error> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let future = work(self.client.clone());
        let timeout = self.config.timeout;
        self.runtime.as_ref().expect("a runtime until dropped").spawn(async move {
            let answer = match tokio::time::timeout(timeout, future).await {
                Ok(answer) => answer,
                Err(_) => Err(drover_etcd::Error::Unreachable(format!("no answer within {timeout:?} (no quorum?)"))),
            };
            let _ = tx.send(answer);
        });
        rx.recv().map_err(|_| drover_etcd::Error::Unreachable("the etcd client's runtime stopped".into()))?
    }

    /// Runs a read, again after a transient failure (etcd electing a leader, a member gone):
    /// a read changes nothing, so trying again is always safe.
    fn run<T: Send + 'static>(&self, work: impl Fn(Client) -> EtcdFuture<T>) -> Result<T, StoreError> {
        let mut attempt = 0;
        loop {
            match self.run_raw(&work) {
                Err(e) if transient(&e) && attempt < RETRIES => {
                    tracing::debug!(error = %e, attempt, "etcd read failed; trying again");
                    std::thread::sleep(retry_pause(attempt));
                    attempt += 1;
                }
                other => return other.map_err(etcd_error),
            }
        }
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        format!("{}/{kind}/{rest}", self.config.prefix)
    }

    fn counter_key(&self) -> String {
        self.key("meta", "revision")
    }

    fn event_key(&self, revision: u64) -> String {
        self.key("e", &format!("{revision:020}"))
    }

    fn read_counter(&self) -> Result<Counter, StoreError> {
        let key = self.counter_key();
        let serializable = self.serializable.load(std::sync::atomic::Ordering::Relaxed);
        let got = self.run(move |c| {
            let key = key.clone();
            Box::pin(async move { c.range_with(key.as_bytes(), None, 0, serializable).await })
        })?;
        match got.kvs.into_iter().next() {
            None => Ok(Counter { revision: 0, mod_revision: 0 }),
            Some(kv) => {
                let text = String::from_utf8_lossy(&kv.value);
                let revision = text.parse().map_err(|_| StoreError(format!("corrupt revision counter {text:?}")))?;
                Ok(Counter { revision, mod_revision: kv.mod_revision })
            }
        }
    }

    /// One value by key.
    fn get_one(&self, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        let serializable = self.serializable.load(std::sync::atomic::Ordering::Relaxed);
        let got = self.run(move |c| {
            let key = key.clone();
            Box::pin(async move { c.range_with(key.as_bytes(), None, 0, serializable).await })
        })?;
        Ok(got.kvs.into_iter().next().map(|kv| kv.value))
    }

    /// Values of keys in `[start, end)`, in key order, at most `limit`.
    fn range(&self, start: Vec<u8>, end: Vec<u8>, limit: usize) -> Result<Vec<KeyAndValue>, StoreError> {
        let mut out = Vec::new();
        let mut from = start;
        while out.len() < limit {
            let chunk = READ_CHUNK.min(i64::try_from(limit - out.len()).unwrap_or(READ_CHUNK));
            let (f, e) = (from.clone(), end.clone());
            let serializable = self.serializable.load(std::sync::atomic::Ordering::Relaxed);
            let got = self.run(move |c| {
                let (f, e) = (f.clone(), e.clone());
                Box::pin(async move { c.range_with(&f, Some(&e), chunk, serializable).await })
            })?;
            let next = got.kvs.last().map(|kv| kv.key.clone());
            out.extend(got.kvs.into_iter().map(|kv| (kv.key, kv.value)));
            match next {
                Some(mut last) if got.more => {
                    last.push(0);
                    from = last;
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Writes `batches` in order, each one transaction that appends its events; returns the last
    /// revision. Holds the writer for all of them.
    fn write(&self, batches: Vec<Batch>) -> Result<u64, StoreError> {
        let mut counter = self.writer.lock().expect("writer lock");
        self.write_locked(&mut counter, batches)
    }

    /// [`EtcdBackend::write`] for a caller that already holds the writer (it read what it
    /// changes under it).
    fn write_locked(&self, counter: &mut Counter, batches: Vec<Batch>) -> Result<u64, StoreError> {
        let fence = self.fence.lock().expect("fence lock").clone();
        for batch in batches {
            *counter = self.commit(*counter, fence.as_ref(), batch)?;
        }
        Ok(counter.revision)
    }

    fn commit(&self, counter: Counter, fence: Option<&Fence>, batch: Batch) -> Result<Counter, StoreError> {
        let Batch { mut ops, events, .. } = batch;
        let at = drover_model::unix_ms_now();
        let mut revision = counter.revision;
        for draft in events {
            revision += 1;
            ops.push(Op::put(self.event_key(revision), json(&draft.into_event(revision, at))));
        }
        if revision == counter.revision && ops.is_empty() {
            return Ok(counter);
        }
        ops.push(Op::put(self.counter_key(), revision.to_string()));
        // Every 1,024 revisions, the events beyond retention go in the same transaction.
        let retain = self.config.retain_events.max(1);
        if revision / 1024 != counter.revision / 1024 && revision > retain {
            let end = self.event_key(revision - retain + 1);
            ops.push(Op::Delete { key: self.event_key(0).into_bytes(), end: Some(end.into_bytes()) });
        }
        let mut compare = vec![Compare::ModRevision(self.counter_key().into_bytes(), counter.mod_revision)];
        if let Some(f) = fence {
            compare.push(Compare::CreateRevision(f.key.clone().into_bytes(), f.create_revision));
        }
        let failure = vec![Op::get(self.counter_key())];
        let txn = Txn { compare, success: ops, failure };
        // A transient failure is ambiguous (the write may have been applied before the answer
        // was lost): try again, and if the counter then already says this write's revision,
        // it was this write — only this controller writes, and never the same revision twice.
        let mut ambiguous = false;
        let mut attempt = 0;
        let answer = loop {
            let sent = self.run_raw(&|c: Client| {
                let t = txn.clone();
                Box::pin(async move { c.txn(&t).await })
            });
            match sent {
                Ok(answer) => break answer,
                Err(e) if transient(&e) && attempt < RETRIES => {
                    tracing::warn!(error = %e, attempt, "etcd write failed; trying again");
                    ambiguous = true;
                    std::thread::sleep(retry_pause(attempt));
                    attempt += 1;
                }
                Err(e) => return Err(etcd_error(e)),
            }
        };
        if answer.succeeded {
            return Ok(Counter { revision, mod_revision: answer.revision });
        }
        let now = answer.reads.first().and_then(|kvs| kvs.first());
        if let Some(kv) = now.filter(|kv| ambiguous && kv.value == revision.to_string().as_bytes()) {
            return Ok(Counter { revision, mod_revision: kv.mod_revision });
        }
        // Refused: another writer moved the counter, or this controller is no longer the leader.
        let moved = now.map_or(0, |kv| kv.mod_revision) != counter.mod_revision;
        Err(StoreError(if moved {
            "another controller wrote to the store: this one is not the leader".into()
        } else {
            "this controller is no longer the leader (its election key is gone): write refused".into()
        }))
    }

    /// Splits writes of `(key, value)` pairs, each with an event, into transactions within
    /// etcd's limits.
    fn batches(&self, writes: Vec<(Op, usize, Option<EventDraft>)>, extra_events: Vec<EventDraft>) -> Vec<Batch> {
        // Each write costs its op and its event's; keep room for the counter and a retention delete.
        let max_ops = self.config.max_txn_ops.max(4) - 2;
        let mut out = Vec::new();
        let mut current = Batch { ops: Vec::new(), events: Vec::new(), bytes: 0 };
        for (op, bytes, event) in writes {
            let cost = 1 + usize::from(event.is_some());
            if !current.ops.is_empty()
                && (current.ops.len() + current.events.len() + cost > max_ops
                    || current.bytes + bytes * 2 > MAX_TXN_BYTES)
            {
                out.push(std::mem::replace(&mut current, Batch { ops: Vec::new(), events: Vec::new(), bytes: 0 }));
            }
            current.ops.push(op);
            current.bytes += bytes * 2; // the record and, about as long, its event
            current.events.extend(event);
        }
        current.events.extend(extra_events);
        out.push(current);
        out
    }
}

impl Drop for EtcdBackend {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async caller may not do; this does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl StoreBackend for EtcdBackend {
    fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.read_counter()?.revision)
    }

    fn put_workload(&self, key: &str, workload: &StoredWorkload, event: EventDraft) -> Result<u64, StoreError> {
        let value = json(workload);
        let len = value.len();
        let op = Op::put(self.key("w", key), value);
        self.write(self.batches(vec![(op, len, Some(event))], vec![]))
    }

    fn workload(&self, key: &str) -> Result<Option<StoredWorkload>, StoreError> {
        self.get_one(self.key("w", key))?.map(|v| parse(&v)).transpose()
    }

    fn workloads(&self) -> Result<Vec<(String, StoredWorkload)>, StoreError> {
        let prefix = self.key("w", "");
        let all = self.range(prefix.clone().into_bytes(), prefix_end(&prefix), usize::MAX)?;
        all.into_iter()
            .map(|(k, v)| {
                let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((key, parse(&v)?))
            })
            .collect()
    }

    fn delete_workload(&self, key: &str, event: EventDraft) -> Result<bool, StoreError> {
        // Whether it existed decides whether the event is written: read, then delete in a write
        // that only this (leading) controller makes.
        let mut counter = self.writer.lock().expect("writer lock");
        if self.get_one(self.key("w", key))?.is_none() {
            return Ok(false);
        }
        let op = Op::Delete { key: self.key("w", key).into_bytes(), end: None };
        self.write_locked(&mut counter, self.batches(vec![(op, 0, Some(event))], vec![]))?;
        Ok(true)
    }

    fn insert_instances(&self, records: &[InstanceRecord], events: Vec<EventDraft>) -> Result<u64, StoreError> {
        // Each record with its own event when they pair up (the usual launch), so a split
        // between transactions never separates them.
        let paired = events.len() == records.len();
        let mut events = events.into_iter();
        let writes = records
            .iter()
            .map(|r| {
                let value = json(r);
                let len = value.len();
                let event = if paired { events.next() } else { None };
                (Op::put(self.key("i", &r.uuid.to_string()), value), len, event)
            })
            .collect();
        self.write(self.batches(writes, events.collect()))
    }

    fn instance(&self, uuid: Uuid) -> Result<Option<InstanceRecord>, StoreError> {
        self.get_one(self.key("i", &uuid.to_string()))?.map(|v| parse(&v)).transpose()
    }

    fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let prefix = self.key("i", "");
        let all = self.range(prefix.clone().into_bytes(), prefix_end(&prefix), usize::MAX)?;
        all.into_iter().map(|(_, v)| parse(&v)).collect()
    }

    fn instances_from(&self, start: &str, limit: usize) -> Result<Vec<InstanceRecord>, StoreError> {
        let prefix = self.key("i", "");
        let from = self.key("i", start).into_bytes();
        let page = self.range(from, prefix_end(&prefix), limit)?;
        page.into_iter().map(|(_, v)| parse(&v)).collect()
    }

    fn update_instances(
        &self,
        uuids: &[Uuid],
        change: &mut dyn FnMut(&mut InstanceRecord) -> EventDraft,
    ) -> Result<(Vec<InstanceRecord>, u64), StoreError> {
        // Only the leader writes, one write at a time: what it reads here is what it changes.
        let mut counter = self.writer.lock().expect("writer lock");
        let mut records = Vec::with_capacity(uuids.len());
        for chunk in uuids.chunks(self.config.max_txn_ops.max(1)) {
            let success = chunk.iter().map(|u| Op::get(self.key("i", &u.to_string()))).collect();
            let txn = Txn { success, ..Txn::default() };
            // Only reads: safe to try again.
            let answer = self.run(move |c| {
                let txn = txn.clone();
                Box::pin(async move { c.txn(&txn).await })
            })?;
            for kv in answer.reads.iter().filter_map(|kvs| kvs.first()) {
                records.push(parse::<InstanceRecord>(&kv.value)?);
            }
        }
        let writes = records
            .iter_mut()
            .map(|record| {
                let event = change(record);
                let value = json(&*record);
                let len = value.len();
                (Op::put(self.key("i", &record.uuid.to_string()), value), len, Some(event))
            })
            .collect();
        let revision = self.write_locked(&mut counter, self.batches(writes, vec![]))?;
        Ok((records, revision))
    }

    fn delete_instance(&self, uuid: Uuid, event: EventDraft) -> Result<bool, StoreError> {
        let mut counter = self.writer.lock().expect("writer lock");
        if self.instance(uuid)?.is_none() {
            return Ok(false);
        }
        let op = Op::Delete { key: self.key("i", &uuid.to_string()).into_bytes(), end: None };
        self.write_locked(&mut counter, self.batches(vec![(op, 0, Some(event))], vec![]))?;
        Ok(true)
    }

    fn note(&self, event: EventDraft) -> Result<u64, StoreError> {
        self.write(vec![Batch { ops: Vec::new(), events: vec![event], bytes: 0 }])
    }

    fn events_after(&self, revision: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let prefix = self.key("e", "");
        let from = self.event_key(revision.saturating_add(1)).into_bytes();
        let events = self.range(from, prefix_end(&prefix), limit)?;
        events.into_iter().map(|(_, v)| parse(&v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_where_its_keys_do() {
        assert_eq!(prefix_end("/drover/i/"), b"/drover/i0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
