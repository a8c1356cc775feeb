//! The API's contract over real HTTPS with real certificates: every error code, tenant
//! isolation, events with a cursor, metrics. The controller runs in process with no scheduler,
//! so instances stay pending; the end-to-end tests cover the cluster.

#![allow(clippy::disallowed_methods)] // tests and benches measure and wait with the real clock

mod common;

use std::sync::Arc;

use common::{api_client, cluster_pki, Pki};
use drover_cli::client::{ApiClient, ApiConfig};
use drover_controller::daemon::Controller;
use drover_controller::service::Service;
use drover_controller::store::Store;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

const WORKLOAD: &str = r#"
name = "web"
size = "tiny"
[backend]
type = "process"
argv = ["/bin/sleep", "60"]
"#;

struct Api {
    _dir: tempfile::TempDir,
    pki: Pki,
    addr: String,
    stop: tokio_util::sync::CancellationToken,
}

impl Api {
    async fn start() -> Self {
        Self::start_with(drover_controller::api_guard::RateLimit::default()).await
    }

    async fn start_with(limit: drover_controller::api_guard::RateLimit) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = cluster_pki();
        let store = Store::open(&dir.path().join("c.redb")).unwrap();
        let controller = Controller::new(Service::new(store).unwrap(), None, std::time::Duration::ZERO).unwrap();
        let files = drover_controller::api::ApiTlsFiles {
            cert: pki.cert("server-api"),
            key: pki.key("server-api"),
            client_ca: pki.ca(),
            crl: Some(pki.crl()),
        };
        let (tls, reloads) = tokio::sync::watch::channel(files.load().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(drover_controller::api::watch_tls(files, tls, stop.clone()));
        tokio::spawn(drover_controller::api::serve(listener, reloads, Arc::clone(&controller), limit, stop.clone()));
        Self { _dir: dir, pki, addr, stop }
    }

    fn as_user(&self, user: &str) -> ApiClient {
        api_client(&self.pki, &self.addr, Some(user))
    }

    /// Clients of tenants acme and globex, each of which has saved the workload `web`.
    async fn two_tenants_with_a_workload(&self) -> (ApiClient, ApiClient) {
        let (acme, globex) = (self.as_user("acme"), self.as_user("globex"));
        let toml = Some(("application/toml", WORKLOAD));
        status_of(&acme, Method::POST, "/v1/workloads", toml).await;
        status_of(&globex, Method::POST, "/v1/workloads", toml).await;
        (acme, globex)
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn status_of(c: &ApiClient, method: Method, path: &str, body: Option<(&str, &str)>) -> (StatusCode, Value) {
    let (status, value) = c.raw(method, path, body.map(|(t, b)| (t, b.as_bytes().to_vec()))).await.unwrap();
    if !status.is_success() {
        let message = value.pointer("/error/message").and_then(Value::as_str);
        assert!(message.is_some_and(|m| !m.is_empty()), "every error is JSON with a message: {value}");
        assert_eq!(value.pointer("/error/status").and_then(Value::as_u64), Some(u64::from(status.as_u16())));
    }
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_certificate_revoked_while_the_api_runs_is_refused_once_the_crl_file_changes() {
    let api = Api::start().await;
    let acme = api.as_user("acme");
    assert_eq!(status_of(&acme, Method::GET, "/v1/instances", None).await.0, StatusCode::OK);
    api.pki.revoke("user-acme");
    // The API looks at its files every few seconds; no restart, no signal.
    testutil::assert_eventually!(
        testutil::PATIENCE + drover_controller::api::TLS_CHECK_EVERY,
        || async { api.as_user("acme").raw(Method::GET, "/v1/instances", None).await.is_err() },
        "the revoked certificate is still taken"
    );
    let refused = format!("{:#}", api.as_user("acme").raw(Method::GET, "/v1/instances", None).await.unwrap_err());
    assert!(refused.contains("was revoked: issue a new one"), "the CLI says what to do: {refused}");
    let globex = api.as_user("globex");
    assert_eq!(status_of(&globex, Method::GET, "/v1/instances", None).await.0, StatusCode::OK, "others are");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_has_a_rate_and_a_body_limit_answered_in_json() {
    let api = Api::start_with(drover_controller::api_guard::RateLimit { per_s: 0.5, burst: 3.0 }).await;
    let acme = api.as_user("acme");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(status_of(&acme, Method::GET, "/v1/status", None).await);
    }
    let codes: Vec<StatusCode> = statuses.iter().map(|(s, _)| *s).collect();
    assert_eq!(&codes[..3], &[StatusCode::OK; 3], "the burst");
    assert!(codes[3..].contains(&StatusCode::TOO_MANY_REQUESTS), "then the rate: {codes:?}");
    let limited = statuses.iter().find(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS).unwrap();
    assert!(limited.1.to_string().contains("slow down"), "{}", limited.1);
    assert_eq!(
        status_of(&api.as_user("globex"), Method::GET, "/v1/status", None).await.0,
        StatusCode::OK,
        "per client"
    );
    let huge = "x".repeat(drover_controller::api_guard::MAX_BODY + 1);
    let (status, v) =
        status_of(&api.as_user("admin"), Method::POST, "/v1/workloads", Some(("application/toml", &huge))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_401_and_403() {
    let api = Api::start().await;
    let anonymous = api_client(&api.pki, &api.addr, None);
    let (status, v) = status_of(&anonymous, Method::GET, "/v1/instances", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v.to_string().contains("client certificate is required"), "{v}");
    let (status, v) = status_of(&api.as_user("nobody"), Method::GET, "/v1/instances", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a certificate naming no tenant: {v}");
    // A launcher's certificate is not an API user's.
    let agent = ApiClient::new(&ApiConfig {
        addr: api.addr.clone(),
        cacert: api.pki.ca(),
        cert: Some(api.pki.cert("agent-local")),
        key: None,
        tenant: None,
    })
    .unwrap();
    let (status, v) = status_of(&agent, Method::GET, "/v1/status", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v.to_string().contains("not user"), "{v}");
    // A user's certificate minted before the user role (controller role, with tenants) still
    // works at the API; the scheduler refuses it as a controller (scheduler/tests/security.rs).
    let mut legacy = Pki::spec(&[ssntp::Role::CONTROLLER]);
    legacy.orgs = vec!["acme".into()];
    api.pki.issue(&legacy, "legacy-acme");
    let old_user = ApiClient::new(&ApiConfig {
        addr: api.addr.clone(),
        cacert: api.pki.ca(),
        cert: Some(api.pki.cert("legacy-acme")),
        key: None,
        tenant: None,
    })
    .unwrap();
    let (status, v) = status_of(&old_user, Method::GET, "/v1/instances", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // A certificate from another CA does not get past TLS.
    let stranger = cluster_pki();
    let foreign = ApiClient::new(&ApiConfig {
        addr: api.addr.clone(),
        cacert: api.pki.ca(),
        cert: Some(stranger.cert("user-admin")),
        key: None,
        tenant: None,
    })
    .unwrap();
    let refused = format!("{:#}", foreign.get("/v1/status").await.unwrap_err());
    assert!(
        refused.contains("signed by another CA"),
        "a foreign CA's certificate is refused, saying what to fix: {refused}"
    );

    // Several tenants: pick one; one not in the certificate is 403.
    let both = api.as_user("both");
    let (status, _) = status_of(&both, Method::GET, "/v1/instances", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "which tenant?");
    let config = ApiConfig {
        addr: api.addr.clone(),
        cacert: api.pki.ca(),
        cert: Some(api.pki.cert("user-both")),
        key: None,
        tenant: Some("acme".into()),
    };
    let acme_via_both = ApiClient::new(&config).unwrap();
    assert_eq!(status_of(&acme_via_both, Method::GET, "/v1/instances", None).await.0, StatusCode::OK);
    let sneaky =
        ApiClient::new(&ApiConfig { tenant: Some("initech".into()), cert: Some(api.pki.cert("user-acme")), ..config })
            .unwrap();
    let (status, v) = status_of(&sneaky, Method::GET, "/v1/instances", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");

    // Nodes are admin's to evacuate.
    let (status, _) =
        status_of(&api.as_user("acme"), Method::POST, &format!("/v1/nodes/{}/evacuate", ssntp::Uuid::new_v4()), None)
            .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Whether a node exists is the scheduler's to say; with none connected, the API says that.
    let (status, v) =
        status_of(&api.as_user("admin"), Method::POST, &format!("/v1/nodes/{}/evacuate", ssntp::Uuid::new_v4()), None)
            .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v.to_string().contains("scheduler"), "{v}");
    // /metrics needs no tenant.
    let (status, v) = status_of(&anonymous, Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let text = v.as_str().unwrap();
    assert!(text.contains("drover_controller_instances{state=\"running\"} 0"), "{text}");
    testutil::metrics::assert_documented(text, "drover_controller_");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_instances_400_404_409_and_tenant_isolation() {
    let api = Api::start().await;
    let acme = api.as_user("acme");
    let globex = api.as_user("globex");
    let toml = Some(("application/toml", WORKLOAD));

    // 400: the field is named.
    let bad = WORKLOAD.replace("tiny", "enormous");
    let (status, v) = status_of(&acme, Method::POST, "/v1/workloads", Some(("application/toml", &bad))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v.to_string().contains("size"), "{v}");
    // Create; 409 on a second create; PUT replaces; a name mismatch is 400.
    assert_eq!(status_of(&acme, Method::POST, "/v1/workloads", toml).await.0, StatusCode::CREATED);
    assert_eq!(status_of(&acme, Method::POST, "/v1/workloads", toml).await.0, StatusCode::CONFLICT);
    assert_eq!(status_of(&acme, Method::PUT, "/v1/workloads/web", toml).await.0, StatusCode::OK);
    assert_eq!(status_of(&acme, Method::PUT, "/v1/workloads/api", toml).await.0, StatusCode::BAD_REQUEST);
    // The same name in another tenant is another workload.
    assert_eq!(status_of(&globex, Method::POST, "/v1/workloads", toml).await.0, StatusCode::CREATED);
    let listed = acme.get("/v1/workloads").await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(acme.get("/v1/workloads/web").await.unwrap()["source"], WORKLOAD);

    // Launch: 404 unknown workload, 400 bad count, 201 with the instances.
    assert_eq!(status_of(&acme, Method::POST, "/v1/workloads/nope/launch", None).await.0, StatusCode::NOT_FOUND);
    let (status, _) =
        status_of(&acme, Method::POST, "/v1/workloads/web/launch", Some(("application/json", r#"{"count": 0}"#))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) =
        status_of(&acme, Method::POST, "/v1/workloads/web/launch", Some(("application/json", r#"{"count": "x"}"#)))
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let launched = acme.post("/v1/workloads/web/launch", &json!({"count": 2})).await.unwrap();
    let ids: Vec<String> =
        launched["instances"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 2);
    let theirs =
        globex.post("/v1/workloads/web/launch", &json!({})).await.unwrap()["instances"][0].as_str().unwrap().to_owned();

    // Tenant isolation: acme sees its own two, cannot see, stop, cancel, delete or read logs
    // of globex's; admin sees all three.
    assert_eq!(acme.get("/v1/instances").await.unwrap().as_array().unwrap().len(), 2);
    assert_eq!(api.as_user("admin").get("/v1/instances").await.unwrap().as_array().unwrap().len(), 3);
    // Pages: one at a time, a header names the next; the last has none.
    let (page, next): (Vec<Value>, Option<String>) = acme.get_page("/v1/instances?limit=1").await.unwrap();
    assert_eq!(page.len(), 1);
    let next = next.expect("a second page");
    let (rest, none): (Vec<Value>, Option<String>) =
        acme.get_page(&format!("/v1/instances?limit=1&after={next}")).await.unwrap();
    assert_eq!((rest.len(), none), (1, None));
    assert_ne!(page[0]["uuid"], rest[0]["uuid"]);
    // A short ID finds its instance, and never another tenant's.
    let found = acme.get(&format!("/v1/instances?prefix={}", &ids[0][..8])).await.unwrap();
    assert_eq!(found[0]["uuid"], ids[0].as_str());
    let foreign = acme.get(&format!("/v1/instances?prefix={}", &theirs[..8])).await.unwrap();
    assert!(foreign.as_array().unwrap().is_empty(), "{foreign}");
    assert_eq!(status_of(&acme, Method::GET, "/v1/instances?prefix=zz", None).await.0, StatusCode::BAD_REQUEST);
    for (method, path) in [
        (Method::GET, format!("/v1/instances/{theirs}")),
        (Method::POST, format!("/v1/instances/{theirs}/stop")),
        (Method::POST, format!("/v1/instances/{theirs}/cancel")),
        (Method::DELETE, format!("/v1/instances/{theirs}")),
        (Method::GET, format!("/v1/instances/{theirs}/logs")),
    ] {
        let (status, v) = status_of(&acme, method.clone(), &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {v}");
    }
    assert_eq!(globex.get(&format!("/v1/instances/{theirs}")).await.unwrap()["state"], "pending", "untouched");
    // 400 for a malformed id, 404 for an unknown one or route.
    assert_eq!(status_of(&acme, Method::GET, "/v1/instances/not-a-uuid", None).await.0, StatusCode::BAD_REQUEST);
    let unknown = ssntp::Uuid::new_v4();
    assert_eq!(status_of(&acme, Method::GET, &format!("/v1/instances/{unknown}"), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(status_of(&acme, Method::GET, "/v2/everything", None).await.0, StatusCode::NOT_FOUND);

    // 409: conflicts with the state.
    let mine = &ids[0];
    assert_eq!(
        status_of(&acme, Method::DELETE, "/v1/workloads/web", None).await.0,
        StatusCode::CONFLICT,
        "live instances"
    );
    assert_eq!(status_of(&acme, Method::DELETE, &format!("/v1/instances/{mine}"), None).await.0, StatusCode::CONFLICT);
    assert_eq!(
        status_of(&acme, Method::POST, &format!("/v1/instances/{mine}/start"), None).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        status_of(&acme, Method::GET, &format!("/v1/instances/{mine}/logs"), None).await.0,
        StatusCode::CONFLICT,
        "never ran"
    );
    // Stop a pending instance: it is stopped; start brings it back; cancel ends it for good.
    assert_eq!(acme.post(&format!("/v1/instances/{mine}/stop"), &json!({})).await.unwrap()["state"], "stopped");
    assert_eq!(
        status_of(&acme, Method::POST, &format!("/v1/instances/{mine}/stop"), None).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(acme.post(&format!("/v1/instances/{mine}/start"), &json!({})).await.unwrap()["state"], "pending");
    assert_eq!(acme.post(&format!("/v1/instances/{mine}/cancel"), &json!({})).await.unwrap()["state"], "canceled");
    assert_eq!(
        status_of(&acme, Method::POST, &format!("/v1/instances/{mine}/start"), None).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        status_of(&acme, Method::POST, &format!("/v1/instances/{mine}/reboot"), None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(&acme, Method::DELETE, &format!("/v1/instances/{mine}"), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(status_of(&acme, Method::GET, &format!("/v1/instances/{mine}"), None).await.0, StatusCode::NOT_FOUND);
    acme.post(&format!("/v1/instances/{}/cancel", ids[1]), &json!({})).await.unwrap();
    assert_eq!(status_of(&acme, Method::DELETE, "/v1/workloads/web", None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(status_of(&acme, Method::GET, "/v1/workloads/web", None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(globex.get("/v1/workloads/web").await.unwrap()["name"], "web", "globex's is untouched");

    // Batch: only batch-class workloads.
    let (status, v) =
        status_of(&globex, Method::POST, "/v1/batch", Some(("application/json", r#"{"workload": "web", "count": 2}"#)))
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_have_a_cursor_long_poll_and_stay_within_the_tenant() {
    let api = Api::start().await;
    let (acme, globex) = api.two_tenants_with_a_workload().await;
    let first = acme.get("/v1/events").await.unwrap();
    let events = first["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "only acme's: {first}");
    assert_eq!(events[0]["tenant"], "acme");
    let cursor = first["revision"].as_u64().unwrap();
    assert!(cursor >= 2, "the cursor passes globex's event too: {first}");
    // Long poll: the request waits until something of acme's happens.
    let waiter = {
        let acme = acme.clone();
        tokio::spawn(async move { acme.get(&format!("/v1/events?after={cursor}&wait_ms=20000")).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "nothing new yet");
    globex.post("/v1/workloads/web/launch", &json!({})).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "another tenant's change does not answer it");
    acme.post("/v1/workloads/web/launch", &json!({})).await.unwrap();
    let page = tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await.unwrap().unwrap().unwrap();
    let events = page["events"].as_array().unwrap();
    assert!(!events.is_empty() && events.iter().all(|e| e["tenant"] == "acme"), "{page}");
    assert!(events[0]["what"].as_str().unwrap().contains("created"), "{page}");
    let empty = acme.get(&format!("/v1/events?after={}&wait_ms=100", page["revision"])).await.unwrap();
    assert_eq!(empty["events"], json!([]));
}

/// Reads events from `follow_events` into a channel, in a task of its own.
fn follow(client: &ApiClient, after: u64) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = client.clone();
    tokio::spawn(async move {
        let _ = client.follow_events(after, |e| Ok(tx.send(e)?)).await;
    });
    rx
}

async fn next_event(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await.expect("an event within 10 s").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_is_live_within_the_tenant_and_resumes_after_the_last_id() {
    let api = Api::start().await;
    let (acme, globex) = api.two_tenants_with_a_workload().await;

    // History first, then live; globex's events never reach acme's stream.
    let mut acme_events = follow(&acme, 0);
    let mut admin_events = follow(&api.as_user("admin"), 0);
    let created = next_event(&mut acme_events).await;
    assert_eq!(created["tenant"], "acme");
    assert!(created["what"].as_str().unwrap().contains("saved"), "{created}");
    let seen_by_admin = [next_event(&mut admin_events).await, next_event(&mut admin_events).await];
    assert_eq!(seen_by_admin.map(|e| e["tenant"].clone()), [json!("acme"), json!("globex")]);

    globex.post("/v1/workloads/web/launch", &json!({})).await.unwrap();
    acme.post("/v1/workloads/web/launch", &json!({})).await.unwrap();
    let launched = next_event(&mut acme_events).await;
    assert_eq!(launched["tenant"], "acme", "globex's launch, which came first, is not acme's: {launched}");
    assert!(launched["revision"].as_u64() > created["revision"].as_u64());

    // A client that resumes with Last-Event-ID gets exactly what came after.
    let mut resumed = follow(&acme, created["revision"].as_u64().unwrap());
    assert_eq!(next_event(&mut resumed).await, launched);

    // A resume point that is not a revision is refused, in JSON, before any stream starts.
    let bad = acme.clone().with_header("last-event-id", "yesterday".into());
    let (status, body) = bad.raw(Method::GET, "/v1/events/stream", None).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("Last-Event-ID"), "{body}");
}
