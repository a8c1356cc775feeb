//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/kv/range`, `/v3/kv/txn`,
//! `/v3/lease/*` …, served by every etcd since 3.4 on its client port, with the same TLS).
//!
//! Why not the `etcd-client` crate: it generates its gRPC code at build time with `protoc`,
//! which a fresh Debian machine does not have, so every user building Drover would need it,
//! with etcd or without. The gateway speaks the same v3 API (the same transactions, leases and
//! revisions) as JSON over HTTPS, which Drover already speaks; the few calls it needs are here.
//! Keys and values travel base64-encoded, 64-bit numbers as strings, and fields at their
//! default (false, 0, empty) are left out of answers, as proto3's JSON mapping says.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use serde_json::{json, Value};

/// The most an answer may hold (a page of records is far less).
const MAX_ANSWER_BYTES: usize = 64 << 20;
/// Idle connections kept for reuse.
const MAX_IDLE: usize = 8;

/// What went wrong talking to etcd.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No member could be reached (refused, TLS, timeout).
    #[error("cannot reach etcd: {0}")]
    Unreachable(String),
    /// A member answered with an error (no quorum, a compacted revision, a bad request).
    #[error("etcd answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// etcd's message.
        message: String,
    },
    /// The answer is not what etcd sends.
    #[error("unexpected answer from etcd: {0}")]
    Decode(String),
}

/// TLS to etcd.
#[derive(Debug, Clone)]
pub struct Tls {
    /// CA of the members' certificates (PEM).
    pub ca_pem: Vec<u8>,
    /// Client certificate and key (PEM), for members started with `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// One key's value and revisions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created it.
    pub create_revision: i64,
    /// The revision that last changed it.
    pub mod_revision: i64,
}

/// A range read's answer.
#[derive(Debug, Clone, Default)]
pub struct Range {
    /// The keys, in order.
    pub kvs: Vec<KeyValue>,
    /// Whether more keys matched than the limit let through.
    pub more: bool,
    /// etcd's revision when it answered.
    pub revision: i64,
}

/// A condition of a transaction (each is "equal").
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key's last change was at this revision (0: the key does not exist).
    ModRevision(Vec<u8>, i64),
    /// The key was created at this revision (0: the key does not exist).
    CreateRevision(Vec<u8>, i64),
}

/// An operation of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// Sets `key` to `value`, attached to `lease` (0: none).
    Put {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
        /// Lease ID, or 0.
        lease: i64,
    },
    /// Reads `key` (or the range up to `end`).
    Get {
        /// Key.
        key: Vec<u8>,
        /// Range end, exclusive.
        end: Option<Vec<u8>>,
    },
    /// Deletes `key` (or the range up to `end`).
    Delete {
        /// Key.
        key: Vec<u8>,
        /// Range end, exclusive.
        end: Option<Vec<u8>>,
    },
}

impl Op {
    /// A put without a lease.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self::Put { key: key.into(), value: value.into(), lease: 0 }
    }

    /// A read of one key.
    pub fn get(key: impl Into<Vec<u8>>) -> Self {
        Self::Get { key: key.into(), end: None }
    }
}

/// A transaction: if every compare holds, `success` runs, else `failure`, atomically.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    /// Conditions.
    pub compare: Vec<Compare>,
    /// Run when they hold.
    pub success: Vec<Op>,
    /// Run when one does not.
    pub failure: Vec<Op>,
}

/// A transaction's answer.
#[derive(Debug, Clone, Default)]
pub struct TxnAnswer {
    /// Whether the compares held.
    pub succeeded: bool,
    /// etcd's revision after it (the revision of its writes, if any).
    pub revision: i64,
    /// For each operation run, the keys a `Get` read (empty for puts and deletes).
    pub reads: Vec<Vec<KeyValue>>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(v: &Value) -> Result<Vec<u8>, Error> {
    match v.as_str() {
        None => Ok(Vec::new()),
        Some(text) => base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| Error::Decode(e.to_string())),
    }
}

/// A 64-bit number as the gateway writes it (a string), absent as 0.
fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kvs(v: &Value) -> Result<Vec<KeyValue>, Error> {
    v["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            Ok(KeyValue {
                key: unb64(&kv["key"])?,
                value: unb64(&kv["value"])?,
                create_revision: num(&kv["create_revision"]),
                mod_revision: num(&kv["mod_revision"]),
            })
        })
        .collect()
}

/// A range answer as the gateway writes it (`/v3/kv/range`).
///
/// # Errors
/// A key or value that is not base64.
pub fn decode_range(v: &Value) -> Result<Range, Error> {
    Ok(Range { kvs: kvs(v)?, more: v["more"].as_bool().unwrap_or(false), revision: num(&v["header"]["revision"]) })
}

/// A transaction's answer as the gateway writes it (`/v3/kv/txn`).
///
/// # Errors
/// A key or value that is not base64.
pub fn decode_txn(v: &Value) -> Result<TxnAnswer, Error> {
    let reads = v["responses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| if r.get("response_range").is_some() { kvs(&r["response_range"]) } else { Ok(Vec::new()) })
        .collect::<Result<_, _>>()?;
    Ok(TxnAnswer {
        succeeded: v["succeeded"].as_bool().unwrap_or(false),
        revision: num(&v["header"]["revision"]),
        reads,
    })
}

fn op_json(op: &Op) -> Value {
    match op {
        Op::Put { key, value, lease } => {
            let mut put = json!({"key": b64(key), "value": b64(value)});
            if *lease != 0 {
                put["lease"] = json!(lease.to_string());
            }
            json!({"request_put": put})
        }
        Op::Get { key, end } => {
            let mut get = json!({"key": b64(key)});
            if let Some(end) = end {
                get["range_end"] = json!(b64(end));
            }
            json!({"request_range": get})
        }
        Op::Delete { key, end } => {
            let mut delete = json!({"key": b64(key)});
            if let Some(end) = end {
                delete["range_end"] = json!(b64(end));
            }
            json!({"request_delete_range": delete})
        }
    }
}

fn compare_json(c: &Compare) -> Value {
    match c {
        Compare::ModRevision(key, rev) => {
            json!({"target": "MOD", "key": b64(key), "mod_revision": rev.to_string(), "result": "EQUAL"})
        }
        Compare::CreateRevision(key, rev) => {
            json!({"target": "CREATE", "key": b64(key), "create_revision": rev.to_string(), "result": "EQUAL"})
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A client of an etcd cluster: cheap to clone, safe to share.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("etcd::Client").field("endpoints", &self.inner.endpoints).finish_non_exhaustive()
    }
}

struct Inner {
    /// `host:port` of each member.
    endpoints: Vec<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Connections idle between calls, with the endpoint they reach.
    idle: Mutex<Vec<(usize, Sender)>>,
    /// The endpoint new connections go to first (moves on after a failure).
    preferred: AtomicUsize,
    timeout: Duration,
}

impl Client {
    /// A client of the members at `endpoints` (`host:port`, or `http(s)://host:port`), over
    /// TLS when `tls` is given; `timeout` bounds each call. Nothing is dialled yet.
    ///
    /// # Errors
    /// No endpoint, or unusable TLS material.
    pub fn new(endpoints: &[String], tls: Option<&Tls>, timeout: Duration) -> Result<Self, Error> {
        if endpoints.is_empty() {
            return Err(Error::Unreachable("no endpoints given".into()));
        }
        let endpoints = endpoints
            .iter()
            .map(|e| e.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/').to_owned())
            .collect();
        let tls = tls.map(tls_config).transpose()?.map(Arc::new);
        Ok(Self {
            inner: Arc::new(Inner {
                endpoints,
                tls,
                idle: Mutex::new(Vec::new()),
                preferred: AtomicUsize::new(0),
                timeout,
            }),
        })
    }

    /// etcd's current revision (and a check that a member answers).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn status(&self) -> Result<i64, Error> {
        let v = self.call("/v3/maintenance/status", &json!({})).await?;
        Ok(num(&v["header"]["revision"]))
    }

    /// Keys from `key` (to `end`, exclusive, or just `key`), at most `limit` (0: all).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn range(&self, key: &[u8], end: Option<&[u8]>, limit: i64) -> Result<Range, Error> {
        self.range_with(key, end, limit, false).await
    }

    /// As [`Client::range`]; `serializable` reads are answered by the member asked, from what it
    /// has (no quorum needed; possibly stale), instead of linearizably.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn range_with(
        &self,
        key: &[u8],
        end: Option<&[u8]>,
        limit: i64,
        serializable: bool,
    ) -> Result<Range, Error> {
        let mut body = json!({"key": b64(key)});
        if serializable {
            body["serializable"] = json!(true);
        }
        if let Some(end) = end {
            body["range_end"] = json!(b64(end));
        }
        if limit > 0 {
            body["limit"] = json!(limit.to_string());
        }
        decode_range(&self.call("/v3/kv/range", &body).await?)
    }

    /// One key's value, if any.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        Ok(self.range(key, None, 0).await?.kvs.into_iter().next())
    }

    /// Runs a transaction.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn txn(&self, txn: &Txn) -> Result<TxnAnswer, Error> {
        let body = json!({
            "compare": txn.compare.iter().map(compare_json).collect::<Vec<_>>(),
            "success": txn.success.iter().map(op_json).collect::<Vec<_>>(),
            "failure": txn.failure.iter().map(op_json).collect::<Vec<_>>(),
        });
        decode_txn(&self.call("/v3/kv/txn", &body).await?)
    }

    /// A new lease of `ttl_s` seconds; its ID.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn lease_grant(&self, ttl_s: i64) -> Result<i64, Error> {
        let v = self.call("/v3/lease/grant", &json!({"TTL": ttl_s.to_string()})).await?;
        match num(&v["ID"]) {
            0 => Err(Error::Decode(format!("lease grant without an ID: {v}"))),
            id => Ok(id),
        }
    }

    /// Renews a lease; its time to live now, in seconds (0: it had expired).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, Error> {
        let v = self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()})).await?;
        Ok(num(&v["result"]["TTL"]))
    }

    /// Ends a lease now; its keys go with it.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn lease_revoke(&self, id: i64) -> Result<(), Error> {
        self.call("/v3/lease/revoke", &json!({"ID": id.to_string()})).await.map(drop)
    }

    /// Drops history before `revision`.
    ///
    /// # Errors
    /// As [`Client::call`] (a revision already compacted is an error).
    pub async fn compact(&self, revision: i64) -> Result<(), Error> {
        self.call("/v3/kv/compaction", &json!({"revision": revision.to_string()})).await.map(drop)
    }

    /// POSTs `body` to `path` on a member, trying each in turn when one cannot be reached.
    ///
    /// # Errors
    /// [`Error::Unreachable`] when none answers within the timeout, [`Error::Refused`] with
    /// etcd's message for an error status.
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let payload = Bytes::from(serde_json::to_vec(body).expect("JSON serialises"));
        let inner = &self.inner;
        let attempt = async {
            let mut last = String::new();
            for _ in 0..inner.endpoints.len() {
                let (endpoint, mut sender) = match self.connection().await {
                    Ok(c) => c,
                    Err(e) => {
                        last = e;
                        continue;
                    }
                };
                let host = &inner.endpoints[endpoint];
                let request = hyper::Request::post(path)
                    .header("host", host.as_str())
                    .header("content-type", "application/json")
                    .body(Full::new(payload.clone()))
                    .expect("a valid request");
                let response = match sender.send_request(request).await {
                    Ok(r) => r,
                    Err(e) => {
                        last = format!("{host}: {e}");
                        self.failed(endpoint);
                        continue;
                    }
                };
                let status = response.status();
                let bytes = match Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        last = format!("{host}: reading the answer: {e}");
                        self.failed(endpoint);
                        continue;
                    }
                };
                self.give_back(endpoint, sender);
                let value: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Decode(format!("{e}: {}", String::from_utf8_lossy(&bytes))))?;
                if !status.is_success() {
                    let message =
                        value["message"].as_str().or_else(|| value["error"].as_str()).unwrap_or("").to_owned();
                    return Err(Error::Refused { status: status.as_u16(), message });
                }
                return Ok(value);
            }
            Err(Error::Unreachable(last))
        };
        tokio::time::timeout(inner.timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(Error::Unreachable(format!("no answer within {:?} (no quorum?)", inner.timeout))))
    }

    /// An idle connection, or a new one to the preferred endpoint.
    async fn connection(&self) -> Result<(usize, Sender), String> {
        loop {
            let reused = self.inner.idle.lock().expect("idle lock").pop();
            match reused {
                Some((endpoint, mut sender)) => {
                    if sender.ready().await.is_ok() {
                        return Ok((endpoint, sender));
                    }
                }
                None => break,
            }
        }
        let endpoint = self.inner.preferred.load(Ordering::Relaxed) % self.inner.endpoints.len();
        match self.dial(endpoint).await {
            Ok(sender) => Ok((endpoint, sender)),
            Err(e) => {
                self.failed(endpoint);
                Err(format!("{}: {e}", self.inner.endpoints[endpoint]))
            }
        }
    }

    async fn dial(&self, endpoint: usize) -> Result<Sender, String> {
        let host = &self.inner.endpoints[endpoint];
        let tcp = tokio::net::TcpStream::connect(host.as_str()).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let sender = match &self.inner.tls {
            None => {
                let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                sender
            }
            Some(tls) => {
                let name = ssntp::tls::server_name_for(host)?;
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                sender
            }
        };
        Ok(sender)
    }

    fn give_back(&self, endpoint: usize, sender: Sender) {
        let mut idle = self.inner.idle.lock().expect("idle lock");
        if idle.len() < MAX_IDLE {
            idle.push((endpoint, sender));
        }
    }

    /// `endpoint` failed: new connections try the next one, and its idle ones are dropped.
    fn failed(&self, endpoint: usize) {
        let _ = self.inner.preferred.compare_exchange(
            endpoint,
            (endpoint + 1) % self.inner.endpoints.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.inner.idle.lock().expect("idle lock").retain(|(e, _)| *e != endpoint);
    }
}

fn tls_config(tls: &Tls) -> Result<rustls::ClientConfig, Error> {
    let bad = |what: &str, e: &dyn std::fmt::Display| Error::Unreachable(format!("etcd TLS: {what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&tls.ca_pem) {
        let cert: rustls_pki_types::CertificateDer<'static> = cert.map_err(|e| bad("the CA", &e))?;
        roots.add(cert).map_err(|e| bad("the CA", &e))?;
    }
    // etcd 3.4 speaks TLS 1.2 and 1.3.
    let builder = rustls::ClientConfig::builder_with_provider(ssntp::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_root_certificates(roots);
    let mut config = match &tls.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = rustls_pki_types::pem::PemObject::pem_slice_iter(cert)
                .collect::<Result<Vec<rustls_pki_types::CertificateDer<'static>>, _>>()
                .map_err(|e| bad("the client certificate", &e))?;
            let key =
                <rustls_pki_types::PrivateKeyDer<'static> as rustls_pki_types::pem::PemObject>::from_pem_slice(key)
                    .map_err(|e| bad("the client key", &e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| bad("the client certificate", &e))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode_as_the_gateway_writes_them() {
        let answer = json!({"header": {"revision": "7"}, "kvs": [
            {"key": "Zm9v", "create_revision": "2", "mod_revision": "7", "version": "3", "value": "YmFy"}],
            "count": "1"});
        let read = kvs(&answer).unwrap();
        assert_eq!(
            read,
            [KeyValue { key: b"foo".to_vec(), value: b"bar".to_vec(), create_revision: 2, mod_revision: 7 }]
        );
        assert_eq!(num(&answer["header"]["revision"]), 7);
        assert_eq!(num(&answer["missing"]), 0, "proto3 leaves zero out");
        assert!(matches!(unb64(&json!("not base64!")), Err(Error::Decode(_))));
    }

    #[test]
    fn requests_encode_as_the_gateway_reads_them() {
        let put = op_json(&Op::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: 12 });
        assert_eq!(put, json!({"request_put": {"key": "aw==", "value": "dg==", "lease": "12"}}));
        let cmp = compare_json(&Compare::CreateRevision(b"k".to_vec(), 0));
        assert_eq!(cmp["target"], "CREATE");
        assert_eq!(cmp["create_revision"], "0");
    }
}
