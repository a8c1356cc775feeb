//! The API's OpenAPI 3.1 document, built from the handlers' own annotations (utoipa): each
//! route's `#[utoipa::path]` says what it takes and answers, and what every call may answer
//! because of the layers around it (the tenant check, the rate limit, the body limit, the
//! read-only refusal) is added here, once. Served at `GET /v1/openapi.json`; `docs/api.md` is
//! checked against it (`controller/tests/openapi.rs`), and Schemathesis runs against it.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response};
use utoipa::ToSchema;

use drover_api::views::ErrorView;

/// The document's frame: title, version, tags and security schemes; the paths come from the
/// router ([`crate::api::router`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Drover controller API",
        description = "Workloads, instances, batches, tasks, nodes and events of a Drover cluster. \
            Callers are authenticated by their TLS client certificate (role user; its Organization \
            names the tenants it may act for). Every error is `{\"error\": {\"status\", \"message\"}}`. \
            See docs/api.md.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorView)),
    tags(
        (name = "workloads", description = "Workload files: create, replace, read, delete, launch, plan"),
        (name = "instances", description = "Instances: list, show, stop, start, cancel, delete, logs"),
        (name = "batches", description = "sd-taskpacker's batch submission"),
        (name = "tasks", description = "Task trees: list, children, decommission"),
        (name = "nodes", description = "Nodes: list, evacuate, restore, forget"),
        (name = "cluster", description = "Status, leader, events, metrics, this document"),
    )
)]
#[derive(Debug)]
pub struct Frame;

/// The security scheme of every call but the unauthenticated ones.
pub const CLIENT_CERT: &str = "client_certificate";
/// The security scheme of a task asking for children.
pub const TASK_TOKEN: &str = "task_token";

/// The routes any caller may call without a certificate.
const OPEN: [&str; 3] = ["/metrics", "/v1/openapi.json", "/v1/leader"];

/// Completes the router's document: security schemes, and the answers every route may give
/// because of the layers around it.
pub fn complete(mut doc: OpenApi) -> OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    let mutual_tls = SecurityScheme::MutualTls {
        description: Some(
            "A TLS client certificate from the API's client CA with the user role; its Organization names the \
             tenants it may act for (`drover-cert issue --role user --org TENANT`)."
                .into(),
        ),
        deprecated: None,
        extensions: None,
    };
    components.security_schemes.insert(CLIENT_CERT.into(), mutual_tls.into());
    components.security_schemes.insert(
        TASK_TOKEN.into(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("A running task's credential, `$DROVER_TASK_TOKEN`."))
                .build(),
        )
        .into(),
    );
    for (path, item) in &mut doc.paths.paths {
        for (method, op) in operations(item) {
            let open = OPEN.contains(&path.as_str());
            let task = path == "/v1/tasks/children";
            if op.security.is_none() {
                op.security = Some(match (open, task) {
                    (true, _) => vec![SecurityRequirement::default()],
                    (_, true) => vec![SecurityRequirement::new(TASK_TOKEN, Vec::<String>::new())],
                    _ => vec![SecurityRequirement::new(CLIENT_CERT, Vec::<String>::new())],
                });
            }
            let mut common = vec![
                (429, "More than `--api-rate` calls a second from this certificate subject; `Retry-After` says when to try again."),
                (500, "The store failed."),
            ];
            if !open {
                common.push((401, "No usable client certificate (or task credential), with why."));
            }
            if !open && !task {
                common.push((400, "The certificate names several tenants and `X-Drover-Tenant` picks none, or the request is malformed."));
                common.push((403, "`X-Drover-Tenant` names a tenant the certificate does not list."));
            }
            if op.request_body.is_some() {
                common.push((413, "The body is over 1 MiB."));
            }
            if method != "get" && !crate::api::is_plan_path(path) {
                common.push((503, "The store cannot take writes (etcd without quorum); reads are still answered."));
            }
            for (status, description) in common {
                op.responses.responses.entry(status.to_string()).or_insert_with(|| error(description));
            }
        }
    }
    doc
}

fn operations(item: &mut PathItem) -> Vec<(&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
    .collect()
}

/// An error answer: the JSON error body.
pub fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name(ErrorView::name()))).build(),
        )
        .build()
        .into()
}

/// The header that picks the tenant a call acts for.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header, rename_all = "kebab-case")]
pub struct TenantHeader {
    /// The tenant to act for, when the certificate names several (admin: any). The pattern is
    /// the API's rule for tenant names (`api::valid_tenant`).
    #[param(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub x_drover_tenant: Option<String>,
}

/// The header that says a body is a task file, and which.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header, rename_all = "kebab-case")]
pub struct TaskFileHeader {
    /// With `Content-Type: text/x-drover-task`: the task file's name, `NAME.workorder` or
    /// `NAME.batch`.
    pub x_drover_task_file: Option<String>,
}

/// The header a resuming event stream sends.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header, rename_all = "kebab-case")]
pub struct LastEventIdHeader {
    /// Resume after this revision (the `id:` of the last event seen).
    pub last_event_id: Option<String>,
}

/// One event of `GET /v1/events/stream`, as Server-Sent Events frame it.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamEvent {
    /// The event's revision: what `Last-Event-ID` resumes after.
    pub id: String,
    /// The event type: absent or `message`.
    pub event: Option<String>,
    /// The event as JSON, the same object as in `/v1/events`.
    pub data: String,
}

/// What a node command (evacuate, drain, restore, forget) may be refused with.
#[derive(Debug, utoipa::IntoResponses)]
pub enum NodeRefusals {
    /// Not a UUID (or, for a drain, a deadline that is not a duration up to 7 days).
    #[response(status = 400)]
    BadRequest(ErrorView),
    /// Not admin.
    #[response(status = 403)]
    Forbidden(ErrorView),
    /// The scheduler knows no such node.
    #[response(status = 404)]
    NoNode(ErrorView),
    /// Not permitted: this controller is a backup (for forget: the node still reports).
    #[response(status = 409)]
    NotPermitted(ErrorView),
    /// The scheduler refused for another reason.
    #[response(status = 502)]
    Refused(ErrorView),
    /// No scheduler link.
    #[response(status = 503)]
    NoLink(ErrorView),
}

/// `GET /v1/status`: the scheduler link, nodes and instances by state, the store's revision.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusView {
    /// The controller's link to the scheduler.
    pub scheduler: crate::daemon::LinkView,
    /// How many nodes are in each status.
    pub nodes: BTreeMap<String, usize>,
    /// How many of the tenant's instances (admin: all) are in each state.
    pub instances: BTreeMap<String, usize>,
    /// The store's latest revision.
    pub revision: u64,
}

/// `GET /v1/leader`: whether this controller leads, and who does.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaderView {
    /// `leader` or `standby`.
    pub role: String,
    /// Who leads, when the controllers share an etcd store and one does.
    pub leader: Option<LeaderSeat>,
}

/// The leading controller.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaderSeat {
    /// Its UUID.
    pub uuid: ssntp::Uuid,
    /// Where clients reach its API, `host:port`.
    pub addr: String,
    /// When it won the election, Unix ms.
    pub since_unix_ms: u64,
}

impl From<drover_etcd::election::LeaderInfo> for LeaderSeat {
    fn from(l: drover_etcd::election::LeaderInfo) -> Self {
        Self { uuid: l.uuid, addr: l.addr, since_unix_ms: l.since_unix_ms }
    }
}

/// `GET /v1/events`: the events after `after`, and the revision to pass next.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    /// Pass this as the next `after`.
    pub revision: u64,
    /// The events, oldest first.
    pub events: Vec<crate::store::Event>,
}
