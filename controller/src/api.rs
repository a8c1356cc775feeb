//! The HTTPS API: client-certificate authentication, tenants, JSON in and out.
//!
//! Authentication follows ciao: the client certificate must chain to the API's client CA and
//! carry the user role (or, minted before that role, the controller role); its Organization
//! names the tenants it may act for, and `admin` may act for all. A request without a certificate (or with one that names no tenant) gets
//! 401; naming a tenant the certificate does not list (`X-Drover-Tenant`) gets 403; another
//! tenant's instance or workload is 404, so tenants cannot probe each other's UUIDs.
//!
//! Every error is JSON: `{"error": {"status": 404, "message": "..."}}`. The routes are listed
//! in `docs/api.md`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use drover_model::NodeStatus;
use serde::Deserialize;
use ssntp::payload::{Evacuate, Message, NodeForget, Restore};
use ssntp::{Role, Uuid};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use drover_api::views::{
    BatchAnswer, BatchBody, ChildrenAnswer, ChildrenBody, DecommissionAnswer, EventQuery, InstanceQuery, InstanceView,
    LaunchAnswer, LaunchBody, LogQuery, LogView, NodeActionAnswer, TaskView, WorkloadName, WorkloadSource,
    WorkloadSummary, NEXT_AFTER_HEADER,
};

use crate::daemon::{Controller, NodeView};
use crate::lifecycle::{Input, State as Life};
use crate::service::{ServiceError, ADMIN};
use crate::store::{InstancePage, InstanceRecord};
use crate::workload::Format;
use drover_etcd::election::LeaderInfo;

/// Most API connections at once (overflow: new connections wait in the kernel's backlog).
pub const MAX_CONNECTIONS: usize = 1024;
/// A TLS handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest long-poll for events.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a node action waits for the scheduler's refusal before it answers 202.
pub const NODE_COMMAND_WAIT: Duration = Duration::from_secs(1);

/// Who is calling, from the TLS client certificate.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No usable certificate; the reason is the 401's message.
    Anonymous(String),
    /// A certificate with the user role (or, from before that role, the controller role) that
    /// names tenants.
    User {
        /// Common Name.
        name: String,
        /// Tenants from the Organization attributes.
        tenants: Vec<String>,
    },
}

impl Caller {
    /// From the peer's certificate chain as the TLS layer saw it (already verified).
    pub fn from_peer(certs: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> Self {
        let Some(leaf) = certs.and_then(<[_]>::first) else {
            return Self::Anonymous(
                "a client certificate is required (drover-cert issue --role user --org TENANT)".into(),
            );
        };
        match drover_cert::inspect(leaf) {
            Err(e) => Self::Anonymous(format!("unreadable client certificate: {e}")),
            // Users' certificates minted before the user role carry the controller role and
            // tenants; the scheduler no longer takes those as controllers, the API still takes
            // them as users.
            Ok(info) if !info.roles.intersects(Role::USER | Role::CONTROLLER) => {
                Self::Anonymous(format!("the certificate's role is {}, not user", info.roles))
            }
            Ok(info) if info.orgs.is_empty() => Self::Anonymous(
                "the certificate names no tenant (Organization); issue it with --role user --org TENANT".into(),
            ),
            Ok(info) => {
                // The Common Name alone ("CN=alice, O=acme" → "alice"): tenants are listed apart.
                let name = info
                    .subject
                    .split(", ")
                    .find_map(|part| part.strip_prefix("CN="))
                    .unwrap_or(&info.subject)
                    .to_owned();
                Self::User { name, tenants: info.orgs }
            }
        }
    }

    /// The tenant this request acts for: `X-Drover-Tenant` if given and allowed, else the
    /// certificate's only tenant (`admin` acts for all).
    fn tenant(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let tenants = match self {
            Self::Anonymous(why) => return Err(ApiError::new(StatusCode::UNAUTHORIZED, why.clone())),
            Self::User { tenants, .. } => tenants,
        };
        let admin = tenants.iter().any(|t| t == ADMIN);
        match headers.get("x-drover-tenant").map(|v| v.to_str().unwrap_or("")) {
            Some(asked) if tenants.iter().any(|t| t == asked) || (admin && valid_tenant(asked)) => Ok(asked.to_owned()),
            Some(asked) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("this certificate may not act for tenant {asked:?} (it names {})", tenants.join(", ")),
            )),
            None if admin => Ok(ADMIN.to_owned()),
            None if tenants.len() == 1 => Ok(tenants[0].clone()),
            None => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "the certificate names several tenants ({}); pick one with X-Drover-Tenant",
                    tenants.join(", ")
                ),
            )),
        }
    }
}

fn valid_tenant(t: &str) -> bool {
    !t.is_empty() && t.len() <= 64 && t.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// What reads may see: one tenant, or all for `admin`.
pub(crate) fn scope(tenant: &str) -> Option<&str> {
    (tenant != ADMIN).then_some(tenant)
}

/// The tenant a request acts for (see [`Caller`]); a request that has none is refused with
/// the 401, 403 or 400 that says why.
#[derive(Debug)]
pub struct Tenant(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, ApiError> {
        match parts.extensions.get::<Caller>() {
            Some(caller) => caller.tenant(&parts.headers).map(Self),
            None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "no TLS session")),
        }
    }
}

/// An error as the API returns it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let status = match &e {
            ServiceError::Spec(_) | ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::Conflict(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = drover_api::views::ErrorDetail { status: self.status.as_u16(), message: self.message };
        (self.status, Json(drover_api::views::ErrorView { error })).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;
type Ctl = State<Arc<Controller>>;

/// An instance record as the API shows it.
pub fn instance_view(r: &InstanceRecord) -> InstanceView {
    let why = match &r.life.state {
        Life::Queued { reason } if r.why.is_empty() => reason.clone(),
        Life::Failed { reason } if r.why.is_empty() => reason.clone(),
        _ => r.why.clone(),
    };
    InstanceView {
        uuid: r.uuid,
        tenant: r.tenant.clone(),
        workload: r.workload.clone(),
        state: r.life.state.status(),
        node: r.node,
        why,
        restarts: r.life.restarts,
        exit_code: match r.life.state {
            Life::Exited { code } => code,
            // A failed run's code is kept too: `show` says what WHY says.
            Life::Failed { .. } => r.life.exit_code,
            _ => None,
        },
        batch: r.batch,
        created_unix_ms: r.created_unix_ms,
    }
}

/// The router (without TLS: [`serve`] adds the caller to each request).
pub fn router(controller: Arc<Controller>, limit: crate::api_guard::RateLimit) -> Router {
    let (routes, _) = api_routes().split_for_parts();
    routes
        .merge(crate::ui::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route; see docs/api.md") })
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&controller), refuse_writes_when_read_only))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(crate::api_guard::Guard::new(limit)),
            crate::api_guard::guard,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(crate::api_guard::MAX_BODY))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(controller)
}

/// Most bytes of a text error that [`json_errors`] reads to put into JSON.
const MAX_TEXT_ERROR: usize = 16 * 1024;

/// Every error is JSON, also the refusals axum's own extractors and router answer in text (a
/// query string or body they cannot read, a body over the limit, a method a route lacks); the
/// message is kept, and so are headers such as `Allow`.
async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let content_type = response.headers().get(axum::http::header::CONTENT_TYPE);
    let text = content_type.is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !text {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_TEXT_ERROR).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&bytes).trim().to_owned();
    let message = if message.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { message };
    let mut json = ApiError::new(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            json.headers_mut().insert(name, value.clone());
        }
    }
    json
}

/// The API's routes with their OpenAPI operations (each handler's `#[utoipa::path]`).
fn api_routes() -> OpenApiRouter<Arc<Controller>> {
    OpenApiRouter::with_openapi(<crate::openapi::Frame as utoipa::OpenApi>::openapi())
        .routes(routes!(list_workloads, create_workload))
        .routes(routes!(show_workload, replace_workload, delete_workload))
        .routes(routes!(launch))
        .routes(routes!(plan_stored))
        .routes(routes!(plan_file))
        .routes(routes!(list_instances))
        .routes(routes!(show_instance, delete_instance))
        .routes(routes!(stop_instance))
        .routes(routes!(start_instance))
        .routes(routes!(cancel_instance))
        .routes(routes!(migrate_instance))
        .routes(routes!(logs))
        .routes(routes!(batch))
        .routes(routes!(list_tasks))
        .routes(routes!(spawn_children))
        .routes(routes!(decommission))
        .routes(routes!(nodes))
        .routes(routes!(evacuate_node))
        .routes(routes!(restore_node))
        .routes(routes!(drain_node))
        .routes(routes!(forget_node))
        .routes(routes!(status))
        .routes(routes!(leader))
        .routes(routes!(events))
        .routes(routes!(crate::event_stream::stream))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "cluster",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object))
)]
async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| openapi().to_json().expect("the OpenAPI document serialises"));
    ([("content-type", "application/json")], doc.as_str()).into_response()
}

/// The API's OpenAPI document, as `GET /v1/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    crate::openapi::complete(api_routes().split_for_parts().1)
}

/// While the store cannot take writes (etcd without quorum), every call that would write is
/// refused with 503 and why; reads go on.
async fn refuse_writes_when_read_only(
    State(c): Ctl,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let reads = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD)
        || is_plan(request.method(), request.uri().path());
    match c.read_only() {
        Some(why) if !reads => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("writes are refused until the store answers again: {why}; reads are still answered (they may be a little stale)"),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// Whether a call is one of the plan routes: a POST that writes nothing (`POST /v1/plan`,
/// `POST /v1/workloads/{name}/plan`; not a workload that happens to be named `plan`).
fn is_plan(method: &axum::http::Method, path: &str) -> bool {
    *method == axum::http::Method::POST && is_plan_path(path)
}

/// Whether a path (a request's, or an OpenAPI template's) is one of the plan routes.
pub(crate) fn is_plan_path(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(segments[..], ["v1", "plan"] | ["v1", "workloads", _, "plan"])
}

/// The header that names the task file a body is (`build.workorder`); its content type is
/// `text/x-drover-task`.
pub const UNIT_FILE_HEADER: &str = "x-drover-task-file";

/// The task file a workload body is, if it is one.
fn unit_file_of(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(UNIT_FILE_HEADER) else { return Ok(None) };
    let file = value.to_str().unwrap_or("");
    if !drover_api::unit::is_unit_file(file) || file.contains('/') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{UNIT_FILE_HEADER}: {file:?} is not a task file name (NAME.workorder or NAME.batch)"),
        ));
    }
    Ok(Some(file.to_owned()))
}

fn format_of(headers: &HeaderMap, body: &str) -> Format {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.contains("toml") {
        Format::Toml
    } else if content_type.contains("json") || body.trim_start().starts_with('{') {
        Format::Json
    } else {
        Format::Toml
    }
}

#[utoipa::path(get, path = "/v1/workloads", tag = "workloads", params(crate::openapi::TenantHeader),
    responses((status = 200, description = "The tenant's workloads (admin: all)", body = [drover_api::views::WorkloadSummary]))
)]
async fn list_workloads(State(c): Ctl, Tenant(tenant): Tenant) -> ApiResult<Response> {
    let list = c.blocking(move |c| c.service().store().workloads(scope(&tenant))).await.map_err(ServiceError::from)?;
    let out: Vec<_> = list
        .into_iter()
        .map(|(name, w)| {
            let parsed = w.parsed().ok();
            WorkloadSummary {
                name,
                tenant: w.tenant,
                uuid: w.uuid,
                class: parsed.as_ref().map(|p| p.class),
                backend: parsed.as_ref().map(|p| p.backend.name().to_owned()),
                vcpus: parsed.as_ref().map(|p| p.requirements.vcpus),
                mem_mb: parsed.as_ref().map(|p| p.requirements.mem_mb),
            }
        })
        .collect();
    Ok(Json(out).into_response())
}

async fn put(
    c: Arc<Controller>,
    tenant: String,
    headers: &HeaderMap,
    body: String,
    name: Option<String>,
) -> ApiResult<Response> {
    let create = name.is_none();
    if let Some(file) = unit_file_of(headers)? {
        let task = c
            .blocking(move |c| {
                let (task, _) = c.service().put_task_file(&tenant, &file, &body, create)?;
                if let Some(expected) = name.filter(|n| *n != task) {
                    return Err(ServiceError::Invalid(format!(
                        "the file {file} defines task {task:?} but the URL names {expected:?}"
                    )));
                }
                let now = c.now_ms();
                c.service().ensure_roots(now)?;
                Ok(task)
            })
            .await?;
        c.wake();
        let status = if create { StatusCode::CREATED } else { StatusCode::OK };
        return Ok((status, Json(WorkloadName { name: task })).into_response());
    }
    let format = format_of(headers, &body);
    if let Some(expected) = &name {
        let parsed = crate::workload::parse(&body, format).map_err(ServiceError::from)?;
        if &parsed.name != expected {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("name: the file names {:?} but the URL names {expected:?}", parsed.name),
            ));
        }
    }
    let name = c.blocking(move |c| c.service().put_workload(&tenant, &body, format, create)).await?;
    let status = if create { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(WorkloadName { name })).into_response())
}

#[utoipa::path(post, path = "/v1/workloads", tag = "workloads", params(crate::openapi::TenantHeader, crate::openapi::TaskFileHeader),
    request_body(description = "A workload file: TOML, JSON, or a task file (`build.workorder`, `graph.batch`) named by `X-Drover-Task-File`", content(
            (drover_api::workload::WorkloadFile = "application/json"),
            (String = "application/toml"),
            (String = "text/x-drover-task"),
        )),
    responses(
        (status = 201, description = "Saved; a task file's root tasks start at once", body = drover_api::views::WorkloadName),
        (status = 400, description = "Invalid: the message names the field, or for a task file `file:line`", body = drover_api::views::ErrorView),
        (status = 409, description = "A workload of that name exists", body = drover_api::views::ErrorView),
    )
)]
async fn create_workload(
    State(c): Ctl,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: String,
) -> ApiResult<Response> {
    put(c, tenant, &headers, body, None).await
}

#[utoipa::path(put, path = "/v1/workloads/{name}", tag = "workloads", params(("name" = String, Path, description = "The workload's name", pattern = "^[a-z0-9._-]{1,64}$"), crate::openapi::TenantHeader, crate::openapi::TaskFileHeader),
    request_body(description = "A workload file: TOML, JSON, or a task file (`build.workorder`, `graph.batch`) named by `X-Drover-Task-File`", content(
            (drover_api::workload::WorkloadFile = "application/json"),
            (String = "application/toml"),
            (String = "text/x-drover-task"),
        )),
    responses(
        (status = 200, description = "Saved (created or replaced)", body = drover_api::views::WorkloadName),
        (status = 400, description = "Invalid, or the file names another workload than the URL", body = drover_api::views::ErrorView),
        (status = 409, description = "The change conflicts with live instances", body = drover_api::views::ErrorView),
    )
)]
async fn replace_workload(
    State(c): Ctl,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: String,
) -> ApiResult<Response> {
    put(c, tenant, &headers, body, Some(name)).await
}

/// How long a plan waits for the scheduler's answer.
pub const PLAN_WAIT: Duration = Duration::from_secs(5);

/// `POST /v1/plan`: a dry run of a workload file (TOML, JSON, or a task file named by
/// `X-Drover-Task-File`) that is not saved.
#[utoipa::path(post, path = "/v1/plan", tag = "workloads", params(drover_api::views::PlanQuery, crate::openapi::TenantHeader, crate::openapi::TaskFileHeader),
    request_body(description = "A workload file: TOML, JSON, or a task file (`build.workorder`, `graph.batch`) named by `X-Drover-Task-File`", content(
            (drover_api::workload::WorkloadFile = "application/json"),
            (String = "application/toml"),
            (String = "text/x-drover-task"),
        )),
    responses(
        (status = 200, description = "Where the instances would go now, or why not; nothing is created or saved", body = drover_api::views::PlanView),
        (status = 400, description = "Invalid file or count", body = drover_api::views::ErrorView),
        (status = 503, description = "No scheduler link, or no answer within 5 s", body = drover_api::views::ErrorView),
    )
)]
async fn plan_file(
    State(c): Ctl,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    Query(q): Query<drover_api::views::PlanQuery>,
    body: String,
) -> ApiResult<Response> {
    let parsed = match unit_file_of(&headers)? {
        Some(file) => drover_api::unit::parse_unit(&file, &body),
        None => crate::workload::parse(&body, format_of(&headers, &body)),
    };
    let w = parsed.map_err(ServiceError::from)?;
    // The estimate of a workload already saved under this name applies to it.
    let name = w.name.clone();
    let known =
        c.blocking(move |c| c.service().store().workload(&tenant, &name).map(|s| (s.map(|s| s.uuid), tenant))).await;
    let (uuid, tenant) = known.map_err(ServiceError::from)?;
    plan(&c, &w, uuid, &tenant, q.count).await
}

/// `POST /v1/workloads/{name}/plan`: a dry run of a saved workload.
#[utoipa::path(post, path = "/v1/workloads/{name}/plan", tag = "workloads", params(("name" = String, Path, description = "The workload's name", pattern = "^[a-z0-9._-]{1,64}$"), drover_api::views::PlanQuery, crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "Where the instances would go now, or why not; nothing is created", body = drover_api::views::PlanView),
        (status = 400, description = "Count out of range", body = drover_api::views::ErrorView),
        (status = 404, description = "No such workload (or another tenant's)", body = drover_api::views::ErrorView),
        (status = 503, description = "No scheduler link, or no answer within 5 s", body = drover_api::views::ErrorView),
    )
)]
async fn plan_stored(
    State(c): Ctl,
    Tenant(tenant): Tenant,
    Path(name): Path<String>,
    Query(q): Query<drover_api::views::PlanQuery>,
) -> ApiResult<Response> {
    let found = c.blocking(move |c| c.service().store().workload(&tenant, &name).map(|w| (name, w))).await;
    let (name, stored) = found.map_err(ServiceError::from)?;
    let stored = stored.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("workload {name} not found")))?;
    let w = stored.parsed().map_err(ServiceError::from)?;
    plan(&c, &w, Some(stored.uuid), &stored.tenant, q.count).await
}

async fn plan(
    c: &Arc<Controller>,
    w: &crate::workload::Workload,
    uuid: Option<Uuid>,
    tenant: &str,
    count: Option<u32>,
) -> ApiResult<Response> {
    let count = count.unwrap_or(1);
    if !(1..=ssntp::payload::MAX_PLAN_COUNT).contains(&count) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("count: {count} is not between 1 and {}", ssntp::payload::MAX_PLAN_COUNT),
        ));
    }
    let start = crate::service::start_of(Uuid::new_v4(), w, uuid, tenant);
    let answer = c.plan(start, count, PLAN_WAIT).await.map_err(|e| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("cannot plan without the scheduler: {e}"))
    })?;
    let view = drover_api::views::PlanView {
        workload: w.name.clone(),
        count,
        fits: answer.unplaced == 0,
        nodes: answer.nodes,
        fit_now: answer.fit_now,
        placed: answer
            .placed
            .into_iter()
            .map(|p| drover_api::views::PlanPlacementView { node: p.node_uuid, host: p.hostname, count: p.count })
            .collect(),
        unplaced: answer.unplaced,
        explanation: answer.explanation,
        never: answer.never,
        advice: answer.advice,
    };
    Ok(Json(view).into_response())
}

#[utoipa::path(get, path = "/v1/workloads/{name}", tag = "workloads", params(("name" = String, Path, description = "The workload's name", pattern = "^[a-z0-9._-]{1,64}$"), crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The workload as written", body = drover_api::views::WorkloadSource),
        (status = 404, description = "No such workload (or another tenant's)", body = drover_api::views::ErrorView),
    )
)]
async fn show_workload(State(c): Ctl, Tenant(tenant): Tenant, Path(name): Path<String>) -> ApiResult<Response> {
    let found = c.blocking(move |c| c.service().store().workload(&tenant, &name).map(|w| (name, w))).await;
    let (name, w) = found.map_err(ServiceError::from)?;
    let w = w.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("workload {name} not found")))?;
    let format = if w.toml { "toml" } else { "json" };
    Ok(Json(WorkloadSource { name, tenant: w.tenant, uuid: w.uuid, format: format.into(), source: w.source })
        .into_response())
}

#[utoipa::path(delete, path = "/v1/workloads/{name}", tag = "workloads", params(("name" = String, Path, description = "The workload's name", pattern = "^[a-z0-9._-]{1,64}$"), crate::openapi::TenantHeader),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such workload (or another tenant's)", body = drover_api::views::ErrorView),
        (status = 409, description = "It has live instances", body = drover_api::views::ErrorView),
    )
)]
async fn delete_workload(State(c): Ctl, Tenant(tenant): Tenant, Path(name): Path<String>) -> ApiResult<Response> {
    c.blocking(move |c| c.service().delete_workload(&tenant, &name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &str) -> ApiResult<T> {
    let text = if body.trim().is_empty() { "{}" } else { body };
    serde_json::from_str(text).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("body: {e}")))
}

#[utoipa::path(post, path = "/v1/workloads/{name}/launch", tag = "workloads", params(("name" = String, Path, description = "The workload's name", pattern = "^[a-z0-9._-]{1,64}$"), crate::openapi::TenantHeader),
    request_body(content = drover_api::views::LaunchBody, description = "How many (default 1, at most 100,000) and their parameters"),
    responses(
        (status = 201, description = "The new instances, pending; durable when answered", body = drover_api::views::LaunchAnswer),
        (status = 400, description = "Bad body, count or parameter", body = drover_api::views::ErrorView),
        (status = 404, description = "No such workload (or another tenant's)", body = drover_api::views::ErrorView),
        (status = 409, description = "The workload cannot be launched this way (a task, a decommissioned root)", body = drover_api::views::ErrorView),
    )
)]
async fn launch(State(c): Ctl, Tenant(tenant): Tenant, Path(name): Path<String>, body: String) -> ApiResult<Response> {
    let LaunchBody { count, params } = json_body(&body)?;
    let ids = c
        .blocking(move |c| {
            let now = c.now_ms();
            c.service().launch_with(&tenant, &name, count, now, &params)
        })
        .await?;
    c.wake();
    Ok((StatusCode::CREATED, Json(LaunchAnswer { instances: ids })).into_response())
}

#[utoipa::path(get, path = "/v1/instances", tag = "instances", params(drover_api::views::InstanceQuery, crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The instances in UUID order", body = [InstanceView],
            headers(("drover-next-after" = String, description = "When more match: the `after` of the next page"))),
        (status = 400, description = "A bad filter", body = drover_api::views::ErrorView),
    )
)]
async fn list_instances(State(c): Ctl, Tenant(tenant): Tenant, Query(q): Query<InstanceQuery>) -> ApiResult<Response> {
    if let Some(prefix) = &q.prefix {
        if prefix.is_empty() || prefix.len() > 36 || !prefix.chars().all(|ch| ch.is_ascii_hexdigit() || ch == '-') {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("{prefix:?} is not the start of a UUID")));
        }
    }
    let page = c
        .blocking(move |c| {
            let store = c.service().store();
            let keep = |r: &InstanceRecord| {
                scope(&tenant).is_none_or(|t| t == r.tenant)
                    && q.workload.as_ref().is_none_or(|w| *w == r.workload)
                    && q.state.as_ref().is_none_or(|s| s == r.life.state.name())
                    && q.node.is_none_or(|n| matches!(r.life.state, Life::Running { node } if node == n))
                    && q.batch.is_none_or(|b| r.batch == Some(b))
            };
            let limit = q.limit.unwrap_or(usize::MAX).max(1);
            match &q.prefix {
                // A short ID names few instances: read just those.
                Some(prefix) => {
                    let mut records = store.instances_with_prefix(prefix, PREFIX_SCAN)?;
                    records.retain(|r| keep(r) && q.after.is_none_or(|a| r.uuid > a));
                    let next_after = (records.len() > limit).then(|| records[limit - 1].uuid);
                    records.truncate(limit);
                    Ok(InstancePage { records, next_after })
                }
                None => store.instances_page(q.after, limit, keep),
            }
        })
        .await
        .map_err(ServiceError::from)?;
    let views: Vec<InstanceView> = page.records.iter().map(instance_view).collect();
    let mut response = Json(views).into_response();
    if let Some(next) = page.next_after {
        if let Ok(value) = axum::http::HeaderValue::from_str(&next.to_string()) {
            response.headers_mut().insert(NEXT_AFTER_HEADER, value);
        }
    }
    Ok(response)
}

/// Most instances a prefix lookup reads (a short ID that names more is ambiguous anyway).
const PREFIX_SCAN: usize = 64;

fn parse_id(id: &str) -> ApiResult<Uuid> {
    id.parse().map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("{id:?} is not an instance UUID")))
}

fn parse_node(id: &str) -> ApiResult<Uuid> {
    id.parse().map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("{id:?} is not a node UUID")))
}

#[utoipa::path(get, path = "/v1/instances/{id}", tag = "instances", params(("id" = Uuid, Path, description = "The instance's UUID"), crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The instance", body = InstanceView),
        (status = 400, description = "Not a UUID", body = drover_api::views::ErrorView),
        (status = 404, description = "No such instance (or another tenant's)", body = drover_api::views::ErrorView),
    )
)]
async fn show_instance(State(c): Ctl, Tenant(tenant): Tenant, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let record = c.blocking(move |c| c.service().owned(&tenant, id)).await?;
    Ok(Json(instance_view(&record)).into_response())
}

/// `POST /v1/instances/{id}/stop`, `…/start`, `…/cancel`: one user action on an instance.
async fn instance_action(c: Arc<Controller>, tenant: String, id: String, input: Input) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let (commands, record) = c
        .blocking(move |c| {
            let now = c.now_ms();
            let commands = c.service().user(&tenant, id, input, now)?;
            c.service().owned(&tenant, id).map(|r| (commands, r))
        })
        .await?;
    c.submit(commands).await;
    c.wake();
    Ok((StatusCode::ACCEPTED, Json(instance_view(&record))).into_response())
}

#[utoipa::path(post, path = "/v1/instances/{id}/stop", tag = "instances", params(("id" = Uuid, Path, description = "The instance's UUID"), crate::openapi::TenantHeader),
    responses(
        (status = 202, description = "Stopped; it can be started again", body = InstanceView),
        (status = 400, description = "Not a UUID", body = drover_api::views::ErrorView),
        (status = 404, description = "No such instance (or another tenant's)", body = drover_api::views::ErrorView),
        (status = 409, description = "It has ended", body = drover_api::views::ErrorView),
    )
)]
async fn stop_instance(State(c): Ctl, Tenant(tenant): Tenant, Path(id): Path<String>) -> ApiResult<Response> {
    instance_action(c, tenant, id, Input::Stop).await
}

#[utoipa::path(post, path = "/v1/instances/{id}/start", tag = "instances", params(("id" = Uuid, Path, description = "The instance's UUID"), crate::openapi::TenantHeader),
    responses(
        (status = 202, description = "A stopped or ended instance, pending again", body = InstanceView),
        (status = 400, description = "Not a UUID", body = drover_api::views::ErrorView),
        (status = 404, description = "No such instance (or another tenant's)", body = drover_api::views::ErrorView),
        (status = 409, description = "It is live, or canceled", body = drover_api::views::ErrorView),
    )
)]
async fn start_instance(State(c): Ctl, Tenant(tenant): Tenant, Path(id): Path<String>) -> ApiResult<Response> {
    instance_action(c, tenant, id, Input::Start).await
}

#[utoipa::path(post, path = "/v1/instances/{id}/cancel", tag = "instances", params(("id" = Uuid, Path, description = "The instance's UUID"), crate::openapi::TenantHeader),
    responses(
        (status = 202, description = "Canceled for good", body = InstanceView),
        (status = 400, description = "Not a UUID", body = drover_api::views::ErrorView),
        (status = 404, description = "No such instance (or another tenant's)", body = drover_api::views::ErrorView),
        (status = 409, description = "It cannot be canceled in its state", body = drover_api::views::ErrorView),
    )
)]
async fn cancel_instance(State(c): Ctl, Tenant(tenant): Tenant, Path(id): Path<String>) -> ApiResult<Response> {
    instance_action(c, tenant, id, Input::Cancel).await
}

/// `?to=` of `POST /v1/instances/{id}/migrate`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct MigrateQuery {
    /// The node to move it to (a UUID); where the scheduler's placement rules choose when
    /// absent.
    to: Option<String>,
}

#[utoipa::path(post, path = "/v1/instances/{id}/migrate", tag = "instances",
    params(("id" = Uuid, Path, description = "The instance's UUID"), MigrateQuery, crate::openapi::TenantHeader),
    responses(
        (status = 202, description = "Sent: a running vm instance moves live, without a stop; its events say where it runs, or why it stayed", body = InstanceView),
        (status = 400, description = "Not a UUID", body = drover_api::views::ErrorView),
        (status = 403, description = "Only admin moves instances between nodes", body = drover_api::views::ErrorView),
        (status = 404, description = "No such instance", body = drover_api::views::ErrorView),
        (status = 409, description = "It is not running, or its workload is gone", body = drover_api::views::ErrorView),
    )
)]
async fn migrate_instance(
    State(c): Ctl,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    Query(q): Query<MigrateQuery>,
) -> ApiResult<Response> {
    if tenant != ADMIN {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "only admin moves instances between nodes"));
    }
    let id = parse_id(&id)?;
    let to = q.to.as_deref().map(parse_node).transpose()?;
    let (commands, record) = c
        .blocking(move |c| {
            let commands = c.service().migrate(&tenant, id, to)?;
            c.service().owned(&tenant, id).map(|r| (commands, r))
        })
        .await?;
    c.submit(commands).await;
    Ok((StatusCode::ACCEPTED, Json(instance_view(&record))).into_response())
}

#[utoipa::path(delete, path = "/v1/instances/{id}", tag = "instances", params(("id" = Uuid, Path, description = "The instance's UUID"), crate::openapi::TenantHeader),
    responses(
        (status = 204, description = "Deleted; its node removes its files"),
        (status = 400, description = "Not a UUID", body = drover_api::views::ErrorView),
        (status = 404, description = "No such instance (or another tenant's)", body = drover_api::views::ErrorView),
        (status = 409, description = "It is live", body = drover_api::views::ErrorView),
    )
)]
async fn delete_instance(State(c): Ctl, Tenant(tenant): Tenant, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let commands = c.blocking(move |c| c.service().delete(&tenant, id)).await?;
    c.submit(commands).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/v1/instances/{id}/logs", tag = "instances", params(("id" = Uuid, Path, description = "The instance's UUID"), drover_api::views::LogQuery, crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The tail of its output", body = LogView),
        (status = 400, description = "Not a UUID", body = drover_api::views::ErrorView),
        (status = 404, description = "No such instance (or another tenant's)", body = drover_api::views::ErrorView),
        (status = 409, description = "It has not run yet", body = drover_api::views::ErrorView),
        (status = 502, description = "Its node did not answer within 10 s, or refused", body = drover_api::views::ErrorView),
    )
)]
async fn logs(
    State(c): Ctl,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let record = c.blocking(move |c| c.service().owned(&tenant, id)).await?;
    let node = record.node.ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, format!("instance {id} has not run yet ({})", record.life.state.name()))
    })?;
    let max_bytes = q.max_bytes.unwrap_or(64 * 1024).min(1024 * 1024);
    let data = c
        .fetch_log(id, node, max_bytes, Duration::from_secs(10))
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("logs of {id}: {e}")))?;
    Ok(Json(LogView { instance: id, node, data: data.data, truncated: data.truncated }).into_response())
}

#[allow(clippy::disallowed_methods)] // a handler's wait deadline (IO, not a decision)
#[utoipa::path(post, path = "/v1/batch", tag = "batches", params(crate::openapi::TenantHeader),
    request_body(content = BatchBody, description = "A batch workload, how many, how long to wait for the scheduler's answers"),
    responses(
        (status = 201, description = "What became of each instance within the wait", body = BatchAnswer),
        (status = 400, description = "Bad body, count, parameter, or not a batch workload", body = drover_api::views::ErrorView),
        (status = 404, description = "No such workload (or another tenant's)", body = drover_api::views::ErrorView),
    )
)]
async fn batch(State(c): Ctl, Tenant(tenant): Tenant, body: String) -> ApiResult<Response> {
    let BatchBody { workload, count, wait_ms, params } = json_body(&body)?;
    let wait = Duration::from_millis(wait_ms.unwrap_or(3000)).min(MAX_WAIT);
    let nodes = c.nodes();
    let usable: Vec<&NodeView> = nodes.iter().filter(|n| n.status.holds_capacity()).collect();
    // The most memory one node can be promised: the same bound the scheduler places by.
    let overcommit = c.overcommit();
    let largest = usable
        .iter()
        .filter_map(|n| n.stats.as_ref())
        .map(|s| drover_model::Capacity { mem_total_mb: s.mem_total_mb, ..Default::default() }.mem_limit(overcommit))
        .max();
    let (batch, ids, w) = c
        .blocking(move |c| {
            let now = c.now_ms();
            c.service().submit_batch(&tenant, &workload, count, largest, now, &params)
        })
        .await?;
    c.wake();
    let demand = drover_model::Demand { vcpus: w.requirements.vcpus, mem_mb: w.requirements.mem_mb.max(1) };
    let deadline = tokio::time::Instant::now() + wait;
    let records = loop {
        let ids = ids.clone();
        let records = c
            .blocking(move |c| {
                ids.iter().filter_map(|id| c.service().store().instance(*id).transpose()).collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(ServiceError::from)?;
        let undecided = records.iter().any(|r| matches!(r.life.state, Life::Pending { .. } | Life::Starting));
        if !undecided || tokio::time::Instant::now() >= deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut answer = BatchAnswer { batch, ..BatchAnswer::default() };
    for r in &records {
        let view = instance_view(r);
        match r.life.state {
            Life::Running { .. } | Life::Exited { .. } => answer.started.push(view),
            Life::Queued { .. } => answer.queued.push(view),
            Life::Pending { .. } | Life::Starting => answer.pending.push(view),
            _ => answer.rejected.push(view),
        }
    }
    // By the rule placement uses, from each READY node's last STATS (what it has given out is
    // in its real available memory; the scheduler's own charges are not known here), each
    // instance charged its memory and the node's anchor tax for its backend.
    let backend = w.backend.name();
    let free: u64 = usable
        .iter()
        .filter(|n| n.status == NodeStatus::Ready)
        .filter_map(|n| n.stats.as_ref().map(|s| (s, n.report.as_ref().map_or(0, |r| r.anchor_tax(backend)))))
        .map(|(s, tax_mb)| {
            let capacity = drover_model::Capacity {
                cpus_online: s.cpus_online,
                mem_total_mb: s.mem_total_mb,
                mem_available_mb: s.mem_available_mb,
            };
            let demand = drover_model::Demand { mem_mb: demand.mem_mb + tax_mb, ..demand };
            drover_model::slots(&capacity, &drover_model::Usage::default(), &demand, overcommit)
        })
        .fold(0, u64::saturating_add);
    answer.slots_remaining_estimate = free.saturating_sub(answer.started.len() as u64);
    let placed_mb = (answer.started.len() as u64).saturating_mul(ssntp::payload::in_chunks(w.requirements.mem_mb));
    answer.slots_remaining = c.slots_remaining(placed_mb);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// A task's credential from `Authorization: Bearer …`.
fn bearer(headers: &HeaderMap) -> ApiResult<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a task asks with its credential: Authorization: Bearer $DROVER_TASK_TOKEN",
            )
        })
}

/// A running task asks for child tasks (its credential says which; no client certificate).
#[utoipa::path(post, path = "/v1/tasks/children", tag = "tasks",
    request_body(content = ChildrenBody, description = "The task to run as children of the asking task"),
    responses(
        (status = 201, description = "The new instances, pending", body = ChildrenAnswer),
        (status = 400, description = "Bad body, not a task, or a bad parameter", body = drover_api::views::ErrorView),
        (status = 404, description = "No such task workload in the asking task's tenant", body = drover_api::views::ErrorView),
        (status = 409, description = "Its root is decommissioned", body = drover_api::views::ErrorView),
    )
)]
async fn spawn_children(State(c): Ctl, headers: HeaderMap, body: String) -> ApiResult<Response> {
    let token = bearer(&headers)?;
    let ChildrenBody { task, count, params } = json_body(&body)?;
    let answer = c
        .blocking(move |c| {
            let parent = match c.service().task_by_token(&token)? {
                Ok(parent) => parent,
                Err(bad) => return Ok(Err(bad)),
            };
            let now = c.now_ms();
            let ids = c.service().spawn_children(&parent, &task, count, &params, now)?;
            let name = format!("{}/{task}", parent.task.map(|t| t.name).unwrap_or_default());
            Ok::<_, ServiceError>(Ok(ChildrenAnswer { instances: ids, name }))
        })
        .await?
        .map_err(|bad| ApiError::new(StatusCode::UNAUTHORIZED, bad.to_string()))?;
    c.wake();
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// The task instances of the tenant (admin: all), as a tree: roots first, each followed by its
/// descendants in creation order.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(crate::openapi::TenantHeader),
    responses((status = 200, description = "Every task instance, as trees: each root, then its descendants depth first", body = [TaskView]))
)]
async fn list_tasks(State(c): Ctl, Tenant(tenant): Tenant) -> ApiResult<Response> {
    let records =
        c.blocking(move |c| c.service().store().instances(scope(&tenant))).await.map_err(ServiceError::from)?;
    let mut tasks: Vec<&InstanceRecord> = records.iter().filter(|r| r.task.is_some()).collect();
    tasks.sort_by_key(|a| (a.created_unix_ms, a.uuid));
    let view = |r: &InstanceRecord| {
        let t = r.task.as_ref().expect("a task");
        TaskView {
            uuid: r.uuid,
            name: t.name.clone(),
            tenant: r.tenant.clone(),
            parent: t.parent,
            root: t.root_of(r.uuid),
            state: r.life.state.status(),
            node: r.node,
            params: r.params.clone(),
            decommissioned: t.decommissioned,
        }
    };
    // Depth first from each root, children in creation order.
    let mut children: std::collections::HashMap<Uuid, Vec<&InstanceRecord>> = std::collections::HashMap::new();
    let mut roots = Vec::new();
    for r in &tasks {
        match r.task.as_ref().and_then(|t| t.parent) {
            Some(parent) => children.entry(parent).or_default().push(r),
            None => roots.push(*r),
        }
    }
    let mut out = Vec::with_capacity(tasks.len());
    let mut stack: Vec<&InstanceRecord> = roots.into_iter().rev().collect();
    while let Some(r) = stack.pop() {
        out.push(view(r));
        if let Some(kids) = children.remove(&r.uuid) {
            stack.extend(kids.into_iter().rev());
        }
    }
    // Children whose parent record was deleted: listed after the trees.
    let mut orphans: Vec<&InstanceRecord> = children.into_values().flatten().collect();
    orphans.sort_by_key(|a| (a.created_unix_ms, a.uuid));
    out.extend(orphans.into_iter().map(view));
    Ok(Json(out).into_response())
}

#[utoipa::path(post, path = "/v1/tasks/{root}/decommission", tag = "tasks",
    params(("root" = Uuid, Path, description = "The root task instance's UUID"), crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "No further task of that root runs; its pending and queued ones are canceled", body = DecommissionAnswer),
        (status = 400, description = "Not a UUID, or not a root task", body = drover_api::views::ErrorView),
        (status = 404, description = "No such instance (or another tenant's)", body = drover_api::views::ErrorView),
    )
)]
async fn decommission(State(c): Ctl, Tenant(tenant): Tenant, Path(root): Path<String>) -> ApiResult<Response> {
    let root = parse_id(&root)?;
    let (commands, canceled) = c
        .blocking(move |c| {
            let now = c.now_ms();
            c.service().decommission(&tenant, root, now)
        })
        .await?;
    c.submit(commands).await;
    c.wake();
    Ok(Json(DecommissionAnswer { root, canceled }).into_response())
}

/// `GET /v1/nodes` options.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct NodesQuery {
    /// Add each node's own list of the instances it runs (admin only: which instances run
    /// where is other tenants' business).
    #[serde(default)]
    instances: bool,
}

#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", params(NodesQuery, crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The nodes the controller knows", body = [NodeView]),
        (status = 403, description = "`instances=true` is admin's", body = drover_api::views::ErrorView),
    )
)]
async fn nodes(State(c): Ctl, Tenant(tenant): Tenant, Query(q): Query<NodesQuery>) -> ApiResult<Response> {
    if q.instances {
        if tenant != ADMIN {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "only admin may list which instances run where"));
        }
        return Ok(Json(c.nodes_with_instances()).into_response());
    }
    Ok(Json(c.nodes()).into_response())
}

/// `POST /v1/nodes/{id}/evacuate`, `…/restore`, `…/forget`: a node command, admin's.
async fn node_action(c: Arc<Controller>, tenant: String, id: String, action: &'static str) -> ApiResult<Response> {
    node_command(c, tenant, id, action, None, false).await
}

/// A node command; `drain_ms` makes an evacuation a drain.
async fn node_command(
    c: Arc<Controller>,
    tenant: String,
    id: String,
    action: &'static str,
    drain_ms: Option<u64>,
    live: bool,
) -> ApiResult<Response> {
    if tenant != ADMIN {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "only admin may evacuate, restore or forget nodes"));
    }
    let node = parse_node(&id)?;
    // Whether the node exists is the scheduler's to say (404 from its NoNode): this controller
    // may never have heard from it (it restarted while the node was gone, or it is a backup,
    // whose refusal must read as one and not as an unknown node).
    // A live evacuation moves the vm instances that can move first: the node drains (no new
    // work, nothing stopped) while they migrate, then what is left is stopped.
    let moves = if live { c.blocking(move |c| c.service().live_moves_from(node)).await? } else { Vec::new() };
    let moving: Vec<Uuid> = moves
        .iter()
        .filter_map(|m| if let Message::Migrate(m) = m { Some(m.start.instance_uuid) } else { None })
        .collect();
    let drain_ms = if moving.is_empty() { drain_ms } else { Some(LIVE_EVACUATION_DRAIN_MS) };
    let message = match action {
        "evacuate" | "drain" => Message::Evacuate(Evacuate { workload_agent_uuid: node, deadline_ms: None, drain_ms }),
        "restore" => Message::Restore(Restore { workload_agent_uuid: node }),
        _ => Message::NodeForget(NodeForget { node_uuid: node }),
    };
    // The scheduler answers only a refusal: a moment's wait tells the caller of one (a backup
    // controller may not command, a node still reporting is not forgotten).
    let refused = c.node_command(message, node, NODE_COMMAND_WAIT).await;
    if refused.as_ref().map_or(true, Option::is_some) {
        c.service().migrations_dropped(&moving);
    }
    let refused = refused.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    if let Some(f) = refused {
        let status = match f.reason {
            ssntp::payload::FailureReason::NoNode => StatusCode::NOT_FOUND,
            ssntp::payload::FailureReason::NotPermitted => StatusCode::CONFLICT,
            _ => StatusCode::BAD_GATEWAY,
        };
        return Err(ApiError::new(status, format!("the scheduler refused to {action} node {node}: {}", f.detail)));
    }
    let live_migrations = moving.len();
    if live_migrations > 0 {
        c.submit(moves).await;
        tokio::spawn(finish_live_evacuation(Arc::clone(&c), node, moving));
    }
    let answer = NodeActionAnswer { node, action: action.to_owned(), live_migrations };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// How long the node of a live evacuation drains, ms: past the migrations' own limit, so the
/// drain's deadline stops what is left only if this controller never does.
const LIVE_EVACUATION_DRAIN_MS: u64 = ssntp::payload::MIGRATION_TIMEOUT_MS + 60_000;

/// The second half of a live evacuation: once every migration has its outcome (or the
/// scheduler's limit passed), what still runs on the node is stopped to start elsewhere.
#[allow(clippy::disallowed_methods)] // the shell: waiting on the real clock
async fn finish_live_evacuation(c: Arc<Controller>, node: Uuid, moving: Vec<Uuid>) {
    let limit = Duration::from_millis(ssntp::payload::MIGRATION_TIMEOUT_MS + 5_000);
    let deadline = tokio::time::Instant::now() + limit;
    while c.service().still_migrating(&moving) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = c.service().still_migrating(&moving);
    c.service().migrations_dropped(&moving);
    // Restored meanwhile: the operator changed their mind, nothing more is stopped.
    if c.nodes().iter().any(|n| n.uuid == node && n.status != NodeStatus::Maintenance) {
        tracing::info!(%node, "the node was restored during its live evacuation; nothing left is stopped");
        return;
    }
    tracing::info!(%node, answered = moving.len() - left, unanswered = left, "live migrations over; stopping what is left");
    let message = Message::Evacuate(Evacuate { workload_agent_uuid: node, deadline_ms: None, drain_ms: None });
    match c.node_command(message, node, NODE_COMMAND_WAIT).await {
        Ok(None) => {}
        Ok(Some(f)) => {
            tracing::warn!(%node, detail = %f.detail, "the evacuation after the live migrations was refused")
        }
        Err(e) => tracing::warn!(%node, error = %e, "the evacuation after the live migrations was not sent"),
    }
}

#[utoipa::path(post, path = "/v1/nodes/{id}/evacuate", tag = "nodes", params(("id" = Uuid, Path, description = "The node's UUID"), EvacuateQuery, crate::openapi::TenantHeader),
    responses(
        (status = 202, description = "Sent: the node takes no new work and its instances move elsewhere (its vm instances live first, unless live=false)", body = NodeActionAnswer),
        crate::openapi::NodeRefusals,
    )
)]
async fn evacuate_node(
    State(c): Ctl,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    Query(q): Query<EvacuateQuery>,
) -> ApiResult<Response> {
    node_command(c, tenant, id, "evacuate", None, q.live.unwrap_or(true)).await
}

/// `?live=` of `POST /v1/nodes/{id}/evacuate`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EvacuateQuery {
    /// Move the node's vm instances live where they can (both nodes' launchers take
    /// migrations) before the rest is stopped to start elsewhere (default true); `false`
    /// stops everything at once.
    live: Option<bool>,
}

/// `?deadline=` of `POST /v1/nodes/{id}/drain`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DrainQuery {
    /// How long running work may finish before what is left is stopped (`90s`, `30m`, `2h`;
    /// default 1h, at most 7 days).
    deadline: Option<String>,
}

/// Longest drain deadline.
pub const MAX_DRAIN: Duration = Duration::from_secs(7 * 24 * 3600);

#[utoipa::path(post, path = "/v1/nodes/{id}/drain", tag = "nodes",
    params(("id" = Uuid, Path, description = "The node's UUID"), DrainQuery, crate::openapi::TenantHeader),
    responses(
        (status = 202, description = "Sent: the node takes no new work, its running work may finish until the deadline, and what is left then is stopped and starts elsewhere", body = NodeActionAnswer),
        crate::openapi::NodeRefusals,
    )
)]
async fn drain_node(
    State(c): Ctl,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    Query(q): Query<DrainQuery>,
) -> ApiResult<Response> {
    let text = q.deadline.as_deref().unwrap_or("1h");
    let deadline =
        drover_model::parse_duration(text).ok().filter(|d| !d.is_zero() && *d <= MAX_DRAIN).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("deadline: {text:?} is not a duration from 1s to 7d (90s, 30m, 2h)"),
            )
        })?;
    let ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
    node_command(c, tenant, id, "drain", Some(ms), false).await
}

#[utoipa::path(post, path = "/v1/nodes/{id}/restore", tag = "nodes", params(("id" = Uuid, Path, description = "The node's UUID"), crate::openapi::TenantHeader),
    responses(
        (status = 202, description = "Sent: the node takes work again", body = NodeActionAnswer),
        crate::openapi::NodeRefusals,
    )
)]
async fn restore_node(State(c): Ctl, Tenant(tenant): Tenant, Path(id): Path<String>) -> ApiResult<Response> {
    node_action(c, tenant, id, "restore").await
}

#[utoipa::path(post, path = "/v1/nodes/{id}/forget", tag = "nodes", params(("id" = Uuid, Path, description = "The node's UUID"), crate::openapi::TenantHeader),
    responses(
        (status = 202, description = "Sent: a silent node is declared lost now, brake or not", body = NodeActionAnswer),
        crate::openapi::NodeRefusals,
    )
)]
async fn forget_node(State(c): Ctl, Tenant(tenant): Tenant, Path(id): Path<String>) -> ApiResult<Response> {
    node_action(c, tenant, id, "forget").await
}

/// This controller leads (it serves the full API); who it is, when it shares an etcd store.
#[utoipa::path(get, path = "/v1/leader", tag = "cluster",
    responses((status = 200, description = "This controller leads; who it is, when it shares an etcd store", body = crate::openapi::LeaderView))
)]
async fn leader(State(c): Ctl) -> Json<crate::openapi::LeaderView> {
    Json(crate::openapi::LeaderView { role: "leader".into(), leader: c.leader_info().map(Into::into) })
}

#[utoipa::path(get, path = "/v1/status", tag = "cluster", params(crate::openapi::TenantHeader),
    responses((status = 200, description = "The scheduler link, nodes and instances by state, the store's revision", body = crate::openapi::StatusView))
)]
async fn status(State(c): Ctl, Tenant(tenant): Tenant) -> ApiResult<Response> {
    let (counts, revision) = c
        .blocking(move |c| {
            Ok::<_, ServiceError>((c.service().counts(scope(&tenant))?, c.service().store().revision()?))
        })
        .await?;
    let mut nodes = std::collections::BTreeMap::<String, usize>::new();
    for n in c.nodes() {
        *nodes.entry(n.status.name().to_owned()).or_default() += 1;
    }
    let instances = counts.into_iter().map(|(state, n)| (state.to_owned(), n)).collect();
    Ok(Json(crate::openapi::StatusView { scheduler: c.link_view(), nodes, instances, revision }).into_response())
}

#[allow(clippy::disallowed_methods)] // the long poll's deadline (IO, not a decision)
#[utoipa::path(get, path = "/v1/events", tag = "cluster", params(EventQuery, crate::openapi::TenantHeader),
    responses((status = 200, description = "The events after `after` (waiting up to `wait_ms` for one)", body = crate::openapi::EventsPage))
)]
async fn events(State(c): Ctl, Tenant(tenant): Tenant, Query(q): Query<EventQuery>) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.wait_ms).min(MAX_WAIT);
    let mut revisions = c.watch_revision();
    let mut after = q.after;
    loop {
        let t = tenant.clone();
        let (events, revision) = c
            .blocking(move |c| {
                // Other tenants' events are skipped, not counted against the limit.
                let mut out = Vec::new();
                let mut cursor = after;
                loop {
                    let (page, reached) = c.service().events_page(scope(&t), cursor, limit)?;
                    if reached == cursor {
                        break;
                    }
                    cursor = reached;
                    out.extend(page);
                    if out.len() >= limit {
                        out.truncate(limit);
                        cursor = out.last().map_or(cursor, |e| e.revision);
                        break;
                    }
                }
                Ok::<_, ServiceError>((out, cursor))
            })
            .await?;
        after = revision;
        if !events.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(crate::openapi::EventsPage { revision: after, events }).into_response());
        }
        if tokio::time::timeout_at(deadline, revisions.changed()).await.is_err() {
            return Ok(Json(crate::openapi::EventsPage { revision: after, events: Vec::new() }).into_response());
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "cluster",
    responses((status = 200, description = "The controller's figures, Prometheus text", body = String, content_type = "text/plain"))
)]
async fn metrics(State(c): Ctl) -> ApiResult<Response> {
    let figures = c
        .blocking(|c| {
            Ok::<_, ServiceError>(crate::metrics::StoreFigures {
                instances: c.service().counts(None)?,
                revision: c.service().store().revision()?,
                pending: c.service().store().pending_count(),
            })
        })
        .await?;
    let text = crate::metrics::text(&c, &figures);
    Ok(([("content-type", ssntp::metrics::CONTENT_TYPE)], text).into_response())
}

/// The API's TLS: the server configuration new connections use, and the certificates its
/// revocation list names (open connections of those are closed when it changes).
#[derive(Debug, Clone)]
pub struct ApiTls {
    /// For new connections.
    pub config: Arc<rustls::ServerConfig>,
    /// Revoked client certificates.
    pub revoked: Arc<ssntp::tls::Revoked>,
}

/// Where the API's TLS material lives, as the flags name it.
#[derive(Debug, Clone)]
pub struct ApiTlsFiles {
    /// The API's certificate.
    pub cert: std::path::PathBuf,
    /// Its key.
    pub key: std::path::PathBuf,
    /// The CA of client certificates.
    pub client_ca: std::path::PathBuf,
    /// The revocation list of client certificates.
    pub crl: Option<std::path::PathBuf>,
}

impl ApiTlsFiles {
    /// Loads the material.
    ///
    /// # Errors
    /// Unreadable or invalid files.
    pub fn load(&self) -> anyhow::Result<ApiTls> {
        let config = tls_config(&self.cert, &self.key, &self.client_ca, self.crl.as_deref())?;
        let crls = match &self.crl {
            Some(crl) => ssntp::tls::load_crls(crl)?,
            None => Vec::new(),
        };
        Ok(ApiTls { config, revoked: Arc::new(ssntp::tls::Revoked::from_crls(&crls)?) })
    }

    fn files(&self) -> Vec<std::path::PathBuf> {
        [Some(&self.cert), Some(&self.key), Some(&self.client_ca), self.crl.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

/// How often the API's TLS files are looked at for changes.
pub const TLS_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Loads the API's TLS material again on SIGHUP or when its files change, until `shutdown`;
/// material that does not load is refused with an error in the log and the current one stays.
pub async fn watch_tls(files: ApiTlsFiles, tls: tokio::sync::watch::Sender<ApiTls>, shutdown: CancellationToken) {
    let mut trigger = ssntp::cli::ReloadTrigger::new(files.files(), TLS_CHECK_EVERY);
    loop {
        let why = tokio::select! {
            () = shutdown.cancelled() => return,
            why = trigger.next() => why,
        };
        match files.load() {
            Ok(loaded) => {
                tracing::info!(why, revoked = loaded.revoked.len(), "API TLS material reloaded");
                tls.send_replace(loaded);
            }
            Err(e) => {
                tracing::error!(why, error = format!("{e:#}"), "API TLS material not reloaded; the current one stays")
            }
        }
    }
}

/// The API's TLS configuration: TLS 1.3, the server certificate, client certificates from
/// `client_ca` checked when offered (and CRLs), but not required at the TLS layer, so a
/// request without one gets a JSON 401 rather than a failed handshake.
///
/// # Errors
/// Unreadable or invalid files.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: &std::path::Path,
    crl: Option<&std::path::Path>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context as _;
    let chain = ssntp::tls::load_certs(cert).with_context(|| format!("reading {}", cert.display()))?;
    let key = ssntp::tls::load_key(key).with_context(|| format!("reading {}", key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in ssntp::tls::load_certs(client_ca).with_context(|| format!("reading {}", client_ca.display()))? {
        roots.add(ca)?;
    }
    let mut verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), ssntp::tls::provider())
            .allow_unauthenticated();
    if let Some(crl) = crl {
        verifier = verifier.with_crls(ssntp::tls::load_crls(crl)?);
    }
    let mut config = rustls::ServerConfig::builder_with_provider(ssntp::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier.build()?)
        .with_single_cert(chain, key)
        .context("the API certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: tokio::sync::watch::Receiver<ApiTls>,
    controller: Arc<Controller>,
    limit: crate::api_guard::RateLimit,
    shutdown: CancellationToken,
) {
    serve_app(listener, tls, router(controller, limit), shutdown).await;
}

/// A standby controller's API: `GET /v1/leader` says who leads; every other call is redirected
/// there (307, the same method and body) or, while no one leads, answered 503.
pub fn standby_router(leader: tokio::sync::watch::Receiver<Option<LeaderInfo>>) -> Router {
    let for_route = leader.clone();
    Router::new()
        .route(
            "/v1/leader",
            get(move || {
                let leader = for_route.borrow().clone();
                async move { Json(crate::openapi::LeaderView { role: "standby".into(), leader: leader.map(Into::into) }) }
            }),
        )
        .fallback(move |uri: axum::http::Uri| {
            let leader = leader.borrow().clone();
            async move {
                match leader.filter(|l| !l.addr.is_empty()) {
                    Some(l) => {
                        let path = uri.path_and_query().map_or("/", axum::http::uri::PathAndQuery::as_str);
                        let location = format!("https://{}{path}", l.addr);
                        (StatusCode::TEMPORARY_REDIRECT, [(axum::http::header::LOCATION, location)]).into_response()
                    }
                    None => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "this controller is a standby and no controller leads yet (an election is under way, \
                         or etcd has no quorum): retry shortly",
                    )
                    .into_response(),
                }
            }
        })
        .layer(axum::extract::DefaultBodyLimit::max(crate::api_guard::MAX_BODY))
}

/// Serves `app` over TLS until `shutdown`; gives the listener back, so a controller that
/// becomes the leader serves its full API on the same socket.
pub async fn serve_app(
    listener: TcpListener,
    tls: tokio::sync::watch::Receiver<ApiTls>,
    app: Router,
    shutdown: CancellationToken,
) -> TcpListener {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return listener,
            permit = Arc::clone(&slots).acquire_owned() => permit.expect("never closed"),
        };
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            () = shutdown.cancelled() => return listener,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.borrow().config));
        let mut reloads = tls.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "API TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "API TLS handshake timed out");
                    return;
                }
            };
            let caller = Caller::from_peer(stream.get_ref().1.peer_certificates());
            let leaf = stream.get_ref().1.peer_certificates().and_then(<[_]>::first).map(|c| c.as_ref().to_vec());
            let app = app.layer(Extension(caller)).layer(Extension(crate::event_stream::Stopping(shutdown.clone())));
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "API connection ended");
                        }
                        return;
                    }
                    () = shutdown.cancelled() => break,
                    changed = reloads.changed() => {
                        // A kept-alive connection of a certificate revoked since is cut.
                        let revoked = changed.is_err()
                            || leaf.as_ref().is_some_and(|l| reloads.borrow().revoked.contains(l));
                        if revoked {
                            tracing::warn!(%peer, "closing an API connection whose certificate was revoked");
                            return;
                        }
                    }
                }
            }
            conn.as_mut().graceful_shutdown();
            // A response still streaming ends at shutdown (event streams watch the token);
            // anything else gets a few seconds.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn only_the_plan_routes_count_as_reads_among_posts() {
        assert!(is_plan(&Method::POST, "/v1/plan"));
        assert!(is_plan(&Method::POST, "/v1/workloads/web/plan"));
        // A workload named `plan` is written like any other.
        assert!(!is_plan(&Method::PUT, "/v1/workloads/plan"));
        assert!(!is_plan(&Method::DELETE, "/v1/workloads/plan"));
        assert!(!is_plan(&Method::POST, "/v1/workloads/plan/launch"));
        assert!(!is_plan(&Method::POST, "/v1/workloads"));
    }
}
