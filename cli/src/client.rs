//! A small HTTPS client for the API (the `drover` CLI and the tests): one TLS 1.3 connection
//! per request, the user's certificate presented, the API's certificate checked against the CA.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use serde_json::Value;

/// Where the API is and who we are.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `host:port` of the API.
    pub addr: String,
    /// CA that signed the API's certificate.
    pub cacert: PathBuf,
    /// The user's certificate (user role, tenants as Organization); none to call
    /// without one.
    pub cert: Option<PathBuf>,
    /// Its key (default: `<cert stem>-key.pem`).
    pub key: Option<PathBuf>,
    /// Act for this tenant (`X-Drover-Tenant`).
    pub tenant: Option<String>,
}

/// An API client.
#[derive(Debug, Clone)]
pub struct ApiClient {
    addr: String,
    tls: Arc<rustls::ClientConfig>,
    tenant: Option<String>,
    /// Sent with every request (a task's credential, a task file's name).
    headers: Vec<(&'static str, String)>,
    /// Per-request deadline.
    pub timeout: Duration,
}

/// An API answer that is not a success.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiFailure {
    /// HTTP status.
    pub status: StatusCode,
    /// The API's message.
    pub message: String,
}

impl ApiFailure {
    /// The failure an error answer describes (its `error.message`, or the whole answer).
    fn of(status: StatusCode, answer: &Value) -> Self {
        let message =
            answer.pointer("/error/message").and_then(Value::as_str).map_or_else(|| answer.to_string(), str::to_owned);
        Self { status, message }
    }
}

impl ApiClient {
    /// A client for `config`.
    ///
    /// # Errors
    /// Unreadable certificate files.
    pub fn new(config: &ApiConfig) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in
            ssntp::tls::load_certs(&config.cacert).with_context(|| format!("reading {}", config.cacert.display()))?
        {
            roots.add(ca)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(ssntp::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots);
        let mut tls = match &config.cert {
            Some(cert) => {
                let chain = ssntp::tls::load_certs(cert).with_context(|| format!("reading {}", cert.display()))?;
                let key_path = config.key.clone().unwrap_or_else(|| ssntp::tls::default_key_for(cert));
                let key = ssntp::tls::load_key(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
                builder.with_client_auth_cert(chain, key)?
            }
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            addr: config.addr.clone(),
            tls: Arc::new(tls),
            tenant: config.tenant.clone(),
            headers: Vec::new(),
            timeout: Duration::from_secs(90),
        })
    }

    /// A client as a running task is one, from its environment: the API (`DROVER_API`), the
    /// CA that signs the API's certificate (`DROVER_CA_PEM`), and its credential
    /// (`DROVER_TASK_TOKEN`), sent as `Authorization: Bearer`; no client certificate.
    ///
    /// # Errors
    /// A variable is missing or the CA does not parse.
    pub fn for_task() -> anyhow::Result<Self> {
        use rustls_pki_types::pem::PemObject as _;
        let var = |name: &str| {
            std::env::var(name).ok().filter(|v| !v.is_empty()).with_context(|| {
                format!("{name} is not set: `drover task spawn` runs inside a task, which Drover gives it")
            })
        };
        let api = var("DROVER_API")?;
        let addr = api.strip_prefix("https://").unwrap_or(&api).trim_end_matches('/').to_owned();
        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls_pki_types::CertificateDer::pem_slice_iter(var("DROVER_CA_PEM")?.as_bytes()) {
            roots.add(ca.context("DROVER_CA_PEM")?)?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(ssntp::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let token = var("DROVER_TASK_TOKEN")?;
        Ok(Self {
            addr,
            tls: Arc::new(tls),
            tenant: None,
            headers: vec![("authorization", format!("Bearer {token}"))],
            timeout: Duration::from_secs(90),
        })
    }

    /// The same client, sending one more header with every request.
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Sends a request; returns the status and the parsed JSON body (`null` when empty).
    ///
    /// # Errors
    /// The API cannot be reached, the TLS handshake fails, or the answer is not JSON.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        self.raw_with_headers(method, path, body).await.map(|(status, value, _)| (status, value))
    }

    async fn raw_with_headers(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> anyhow::Result<(StatusCode, Value, hyper::HeaderMap)> {
        let follow = async {
            // A standby controller redirects to the leader (307): follow a few hops, with the
            // same certificate, method and body.
            let (mut addr, mut path) = (self.addr.clone(), path.to_owned());
            for _ in 0..MAX_REDIRECTS {
                let (status, value, headers) = self.raw_inner(&addr, method.clone(), &path, body.clone()).await?;
                let location = headers.get(hyper::header::LOCATION).and_then(|l| l.to_str().ok());
                match location.and_then(redirect_target).filter(|_| is_redirect(status)) {
                    Some((to, to_path)) => (addr, path) = (to, to_path),
                    None => return Ok((status, value, headers)),
                }
            }
            bail!(
                "the API at {} redirected more than {MAX_REDIRECTS} times (controllers disagree on who leads?)",
                self.addr
            )
        };
        tokio::time::timeout(self.timeout, follow)
            .await
            .with_context(|| format!("no answer from the API at {} within {} s", self.addr, self.timeout.as_secs()))?
    }

    /// GET one page of a list, read as `T`, and the `after` of the next page if there is one
    /// (see `drover_api::views::NEXT_AFTER_HEADER`).
    ///
    /// # Errors
    /// As [`ApiClient::call`], or an answer that is not a `T`.
    pub async fn get_page<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<(T, Option<String>)> {
        let (status, value, headers) = self.raw_with_headers(Method::GET, path, None).await?;
        if !status.is_success() {
            return Err(ApiFailure::of(status, &value).into());
        }
        let next = headers.get(drover_api::views::NEXT_AFTER_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let page = serde_json::from_value(value).map_err(|e| anyhow::anyhow!("GET {path}: unexpected answer: {e}"))?;
        Ok((page, next))
    }

    /// Sends one request to `addr` and returns the answer as it starts (its body still to read).
    async fn open(
        &self,
        addr: &str,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        // A leader that a standby redirects to may be gone: say so in seconds, not minutes.
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| {
                anyhow::anyhow!("no answer within {} s (host down or unreachable?)", CONNECT_TIMEOUT.as_secs())
            })
            .and_then(|connected| connected.map_err(anyhow::Error::from))
            .with_context(|| format!("connecting to the API at {addr} (is drover-controller running?)"))?;
        let name = ssntp::tls::server_name_for(addr).map_err(anyhow::Error::msg)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with the API at {addr}"))
            .map_err(|e| advised(e, addr))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        let connection = tokio::spawn(conn);
        let mut request = Request::builder().method(method).uri(path).header("host", addr);
        if let Some(tenant) = &self.tenant {
            request = request.header("x-drover-tenant", tenant);
        }
        for (name, value) in self.headers.iter().chain(extra) {
            request = request.header(*name, value);
        }
        let request = match body {
            Some((content_type, bytes)) => {
                request.header("content-type", content_type).body(Full::new(Bytes::from(bytes)))?
            }
            None => request.body(Full::new(Bytes::new()))?,
        };
        // TLS 1.3 servers judge the client's certificate after the handshake: a refusal arrives
        // as an alert that ends the connection, so its reason is the connection's error.
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(e) => {
                let ended = tokio::time::timeout(Duration::from_secs(1), connection).await;
                let cause = match ended {
                    Ok(Ok(Err(closed))) => anyhow::Error::new(closed).context(e.to_string()),
                    _ => anyhow::Error::new(e),
                };
                let e = cause.context(format!("sending the request to the API at {addr}"));
                return Err(advised(e, addr));
            }
        };
        Ok(response)
    }

    async fn raw_inner(
        &self,
        addr: &str,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> anyhow::Result<(StatusCode, Value, hyper::HeaderMap)> {
        let response = self.open(addr, method, path, body, &[]).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.context("reading the answer")?.to_bytes();
        Ok((status, answer_value(&bytes), headers))
    }

    /// Follows `GET /v1/events/stream` from after revision `after`, handing `each` every event
    /// in order. When the stream ends or breaks (a controller restarting or stepping down), it
    /// connects again and resumes with `Last-Event-ID`, following a standby's redirect to the
    /// leader, so nothing is missed or seen twice.
    ///
    /// # Errors
    /// `each`'s error; the API's refusal (an error status); or [`STREAM_RETRIES`] failed
    /// connections in a row.
    pub async fn follow_events(
        &self,
        mut after: u64,
        mut each: impl FnMut(Value) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut addr = self.addr.clone();
        let mut failures = 0;
        loop {
            let headers = [("last-event-id", after.to_string()), ("accept", "text/event-stream".to_owned())];
            let path = format!("/v1/events/stream?after={after}");
            let opened = tokio::time::timeout(self.timeout, self.open(&addr, Method::GET, &path, None, &headers))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer from the API at {addr}")));
            let response = match opened {
                Ok(r) => r,
                Err(e) => {
                    failures += 1;
                    if failures >= STREAM_RETRIES {
                        return Err(e.context(format!("following events ({failures} attempts)")));
                    }
                    // The leader we were sent to may be gone: ask the configured API again.
                    addr.clone_from(&self.addr);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let status = response.status();
            if is_redirect(status) {
                let location = response.headers().get(hyper::header::LOCATION).and_then(|l| l.to_str().ok());
                match location.and_then(redirect_target) {
                    Some((to, _)) => {
                        addr = to;
                        failures += 1;
                        if failures >= STREAM_RETRIES {
                            bail!("the API at {} keeps redirecting (controllers disagree on who leads?)", self.addr);
                        }
                        continue;
                    }
                    None => bail!("the API at {addr} redirected to an unusable location"),
                }
            }
            if !status.is_success() {
                let bytes =
                    response.into_body().collect().await.map(http_body_util::Collected::to_bytes).unwrap_or_default();
                return Err(ApiFailure::of(status, &answer_value(&bytes)).into());
            }
            failures = 0;
            let mut body = response.into_body();
            let mut decoder = drover_api::sse::SseDecoder::new(MAX_STREAM_EVENT);
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                let Some(data) = frame.data_ref() else { continue };
                let events = decoder.push(data).context("reading the event stream")?;
                for event in events {
                    let value: Value = serde_json::from_str(&event.data)
                        .with_context(|| format!("an event that is not JSON: {:?}", event.data))?;
                    if let Some(revision) = event.id.and_then(|id| id.parse().ok()) {
                        after = revision;
                    }
                    each(value)?;
                }
            }
        }
    }

    /// Sends a request and turns an error status into an [`ApiFailure`].
    ///
    /// # Errors
    /// Transport errors, or the API's error.
    pub async fn call(&self, method: Method, path: &str, body: Option<(&str, Vec<u8>)>) -> anyhow::Result<Value> {
        let (status, value) = self.raw(method, path, body).await?;
        if status.is_success() {
            return Ok(value);
        }
        Err(ApiFailure::of(status, &value).into())
    }

    /// GET.
    ///
    /// # Errors
    /// As [`ApiClient::call`].
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    /// GET, read as `T` (one of the API's views).
    ///
    /// # Errors
    /// As [`ApiClient::call`], or an answer that is not a `T`.
    pub async fn get_as<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let value = self.get(path).await?;
        serde_json::from_value(value).map_err(|e| anyhow::anyhow!("GET {path}: unexpected answer: {e}"))
    }

    /// POST `body` as JSON and read the answer as `T`.
    ///
    /// # Errors
    /// As [`ApiClient::call`], or an answer that is not a `T`.
    pub async fn post_as<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let value = self.post(path, &serde_json::to_value(body)?).await?;
        serde_json::from_value(value).map_err(|e| anyhow::anyhow!("POST {path}: unexpected answer: {e}"))
    }

    /// POST with a JSON body.
    ///
    /// # Errors
    /// As [`ApiClient::call`].
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(("application/json", serde_json::to_vec(body)?))).await
    }

    /// Waits until the API answers `/v1/status`, up to `within`.
    ///
    /// # Errors
    /// The last error when the time is up.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.get("/v1/status").await {
                Ok(v) => return Ok(v),
                Err(e) if tokio::time::Instant::now() >= deadline => bail!("the API did not come up: {e:#}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// An answer's body as JSON: `null` when empty, the text as a string when it is not JSON.
fn answer_value(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
    }
}

/// How long dialling the API may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Failed connections in a row after which [`ApiClient::follow_events`] gives up.
pub const STREAM_RETRIES: u32 = 10;

/// Longest event a stream may send (the API's are a few hundred bytes).
const MAX_STREAM_EVENT: usize = 1 << 20;

/// Most redirects followed for one call.
const MAX_REDIRECTS: usize = 3;

fn is_redirect(status: StatusCode) -> bool {
    status == StatusCode::TEMPORARY_REDIRECT || status == StatusCode::PERMANENT_REDIRECT
}

/// `https://host:port/path?query` → (`host:port`, `/path?query`); other schemes are not
/// followed (the API is HTTPS only).
fn redirect_target(location: &str) -> Option<(String, String)> {
    let rest = location.strip_prefix("https://")?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    (!authority.is_empty()).then(|| (authority.to_owned(), path.to_owned()))
}

/// A connection error with what to do about it in front, when the TLS library's words have a
/// known fix ("received fatal alert: DecryptError" → another CA signed this certificate).
fn advised(e: anyhow::Error, addr: &str) -> anyhow::Error {
    match ssntp::advice::advice(&format!("{e:#}"), addr) {
        Some(fix) => e.context(fix),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_to_the_leader_names_its_address_and_the_same_path() {
        assert_eq!(
            redirect_target("https://10.0.0.3:8889/v1/instances?limit=5"),
            Some(("10.0.0.3:8889".to_owned(), "/v1/instances?limit=5".to_owned()))
        );
        assert_eq!(redirect_target("https://ctl2:8889"), Some(("ctl2:8889".to_owned(), "/".to_owned())));
        assert_eq!(redirect_target("http://ctl2:8889/v1/status"), None, "never to plain HTTP");
        assert!(is_redirect(StatusCode::TEMPORARY_REDIRECT) && !is_redirect(StatusCode::FOUND));
    }
}
