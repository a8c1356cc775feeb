//! The dashboard at `/ui`: pages rendered on the server (maud, which escapes every value), on
//! the API's port with the same TLS, client certificates and tenant rules; a vendored htmx
//! refreshes their live parts, and the event page reads `/v1/events/stream`. No build step,
//! nothing fetched at run time (`controller/assets/`).
//!
//! Every page reads what it shows in bounded work, whatever the store holds: counts from the
//! in-memory index, instances a page at a time, the timeline from the latest
//! [`TIMELINE_EVENTS`] events. A browser cannot set `X-Drover-Tenant`, so `?tenant=` stands in
//! for it (checked against the certificate as the header is) and the links keep it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use ssntp::Uuid;

use crate::api::{instance_view, scope, ApiError, Tenant};
use crate::daemon::{Controller, NodeView};
use crate::lifecycle::State as Life;
use crate::service::ServiceError;
use crate::store::{Event, InstanceRecord};

/// Instances on one page.
pub const PAGE: usize = 100;
/// Events the timeline and the event page read (the latest).
pub const TIMELINE_EVENTS: u64 = 5000;
/// Minutes the timeline shows.
pub const TIMELINE_MINUTES: u64 = 30;
/// How often the live parts refresh.
const REFRESH: &str = "every 5s";

const HTMX: &str = include_str!("../assets/htmx.min.js");
const CSS: &str = include_str!("../assets/drover.css");
const EVENTS_JS: &str = include_str!("../assets/events.js");

/// The dashboard's routes (under the API's middleware: rate limits, audit, tenants).
pub fn routes() -> Router<Arc<Controller>> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/nodes", get(nodes))
        .route("/ui/instances", get(instances))
        .route("/ui/instances/{id}", get(instance))
        .route("/ui/instances/{id}/output", get(output))
        .route("/ui/workloads", get(workloads))
        .route("/ui/events", get(events))
        .route("/ui/static/{file}", get(asset))
        .layer(axum::middleware::from_fn(tenant_from_query))
}

/// `?tenant=T` as if `X-Drover-Tenant: T` (browsers cannot set headers).
async fn tenant_from_query(mut request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let asked = request.uri().query().and_then(|q| {
        q.split('&').find_map(|pair| pair.strip_prefix("tenant=")).map(str::to_owned).filter(|t| !t.is_empty())
    });
    if let Some(value) = asked.and_then(|t| HeaderValue::from_str(&t).ok()) {
        request.headers_mut().insert("x-drover-tenant", value);
    }
    let mut response = next.run(request).await;
    // Pages only ever load this controller's own scripts and styles.
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"),
    );
    response
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "events.js" => (EVENTS_JS, "text/javascript; charset=utf-8"),
        "drover.css" => (CSS, "text/css; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=3600")], body).into_response()
}

/// Who is looking, and how links keep their choice of tenant.
struct View {
    tenant: String,
    /// The `?tenant=` the page was asked with.
    chosen: Option<String>,
}

impl View {
    fn new(tenant: String, chosen: Option<String>) -> Self {
        Self { tenant, chosen }
    }

    /// `path` with the chosen tenant kept; `path` may have a query already.
    fn href(&self, path: &str) -> String {
        match &self.chosen {
            Some(t) => format!("{path}{}tenant={}", if path.contains('?') { '&' } else { '?' }, encode(t)),
            None => path.to_owned(),
        }
    }

    fn page(&self, here: &str, title: &str, body: Markup) -> Response {
        let nav = [
            ("/ui", "Overview"),
            ("/ui/nodes", "Nodes"),
            ("/ui/instances", "Instances"),
            ("/ui/workloads", "Workloads"),
            ("/ui/events", "Events"),
        ];
        let markup = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { "Drover · " (title) }
                    link rel="stylesheet" href="/ui/static/drover.css";
                    script src="/ui/static/htmx.min.js" {}
                }
                body {
                    nav {
                        @for (path, name) in nav {
                            a href=(self.href(path)) class=[(path == here).then_some("here")] { (name) }
                        }
                        span.who { "tenant " b { (self.tenant) } }
                    }
                    main {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        };
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[derive(Debug, Deserialize, Default)]
struct TenantQuery {
    tenant: Option<String>,
}

fn status_class(name: &str) -> String {
    format!("st st-{name}")
}

fn bar(used: u64, total: u64, label: &str) -> Markup {
    #[allow(clippy::cast_precision_loss)] // a percentage for a picture
    let pct = if total == 0 { 0.0 } else { (used as f64 / total as f64 * 100.0).min(100.0) };
    let class = if pct >= 95.0 {
        "bar full"
    } else if pct >= 75.0 {
        "bar hot"
    } else {
        "bar"
    };
    html! {
        span class=(class) title=(label) { span style=(format!("width:{pct:.1}%")) {} }
        " " span.muted { (label) }
    }
}

/// Load average against the CPUs it is spread over.
fn load_bar(load: f64, cpus: u64) -> Markup {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a load for a picture
    let hundredths = (load.max(0.0) * 100.0) as u64;
    bar(hundredths, cpus * 100, &format!("{load:.2} on {cpus} CPUs"))
}

fn host_of(node: &NodeView) -> String {
    node.stats
        .as_ref()
        .map(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| node.report.as_ref().map(|r| r.hostname.clone()).filter(|h| !h.is_empty()))
        .unwrap_or_else(|| node.uuid.short())
}

async fn overview(State(c): State<Arc<Controller>>, Tenant(tenant): Tenant, Query(q): Query<TenantQuery>) -> Response {
    let view = View::new(tenant.clone(), q.tenant);
    let now = c.now_ms();
    let read = c
        .blocking(move |c| {
            let store = c.service().store();
            let counts = c.service().counts(scope(&tenant))?;
            let revision = store.revision()?;
            let events = recent_events(c, scope(&tenant), revision)?;
            Ok::<_, ServiceError>((counts, revision, events))
        })
        .await;
    let (counts, _revision, events) = match read {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let nodes = c.nodes();
    let link = c.link_view();
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut mem_total, mut mem_used, mut cpus, mut load) = (0u64, 0u64, 0u64, 0f64);
    for n in &nodes {
        *by_status.entry(n.status.name()).or_default() += 1;
        if let (true, Some(s)) = (n.status.holds_capacity(), &n.stats) {
            mem_total += s.mem_total_mb;
            mem_used += s.mem_total_mb.saturating_sub(s.mem_available_mb);
            cpus += u64::from(s.cpus_online);
            load += s.load.max(0.0);
        }
    }
    let body = html! {
        div #live hx-get=(view.href("/ui")) hx-trigger=(REFRESH) hx-select="#live" hx-swap="outerHTML" {
            div.cards {
                div.card {
                    div.n { @if link.connected { "connected" } @else { "not connected" } }
                    div.l { "scheduler " @if let Some(t) = &link.target { (t) } }
                }
                @for (status, n) in &by_status {
                    div.card { div.n { (n) } div.l { span class=(status_class(status)) { (status) } " nodes" } }
                }
                @for (state, n) in &counts {
                    div.card { div.n { (n) } div.l { a href=(view.href(&format!("/ui/instances?state={state}"))) { span class=(status_class(state)) { (state) } } " instances" } }
                }
            }
            h2 { "Capacity of the nodes that take work" }
            table {
                tr { th { "memory in use" } td { (bar(mem_used, mem_total, &format!("{mem_used} of {mem_total} MiB"))) } }
                tr { th { "load" } td { (load_bar(load, cpus)) } }
            }
            h2 { "Starts and ends, last " (TIMELINE_MINUTES) " minutes" }
            (timeline(&events, now))
            p.muted { "From the latest " (TIMELINE_EVENTS) " events. " a href=(view.href("/ui/events")) { "All events, live" } }
        }
    };
    view.page("/ui", "Cluster", body)
}

fn recent_events(c: &Controller, tenant: Option<&str>, revision: u64) -> Result<Vec<Event>, ServiceError> {
    let limit = usize::try_from(TIMELINE_EVENTS).unwrap_or(usize::MAX);
    Ok(c.service().events_page(tenant, revision.saturating_sub(TIMELINE_EVENTS), limit)?.0)
}

/// Starts, ends and failures per minute as bars.
fn timeline(events: &[Event], now_ms: u64) -> Markup {
    let minutes = usize::try_from(TIMELINE_MINUTES).unwrap_or(30);
    let mut starts = vec![0u32; minutes];
    let mut ends = vec![0u32; minutes];
    let mut failed = vec![0u32; minutes];
    for e in events {
        let ago = now_ms.saturating_sub(e.at_unix_ms) / 60_000;
        let Some(slot) = usize::try_from(ago).ok().filter(|a| *a < minutes).map(|a| minutes - 1 - a) else { continue };
        match e.detail.to.as_deref() {
            Some("running") => starts[slot] += 1,
            Some("exited") => ends[slot] += 1,
            Some("failed" | "lost") => failed[slot] += 1,
            _ => {}
        }
    }
    let peak = starts.iter().chain(&ends).chain(&failed).copied().max().unwrap_or(0).max(1);
    let (w, h, col) = (900u32, 120u32, 30u32);
    let height = |n: u32| u64::from(n) * u64::from(h - 20) / u64::from(peak);
    html! {
        svg.timeline width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) role="img" aria-label="starts and ends per minute" {
            @for i in 0..minutes {
                @let x = u32::try_from(i).unwrap_or(0) * col;
                @let (s, e, f) = (height(starts[i]), height(ends[i]), height(failed[i]));
                rect.starts x=(x + 2) y=(u64::from(h - 10) - s) width="8" height=(s) { title { (starts[i]) " started" } }
                rect.ends x=(x + 11) y=(u64::from(h - 10) - e) width="8" height=(e) { title { (ends[i]) " exited" } }
                rect.failed x=(x + 20) y=(u64::from(h - 10) - f) width="8" height=(f) { title { (failed[i]) " failed or lost" } }
            }
            text x="4" y="12" font-size="11" fill="#6b7280" { "peak " (peak) " per minute · green started · grey exited · red failed or lost" }
        }
    }
}

async fn nodes(State(c): State<Arc<Controller>>, Tenant(tenant): Tenant, Query(q): Query<TenantQuery>) -> Response {
    let view = View::new(tenant, q.tenant);
    let mut nodes = c.nodes();
    nodes.sort_by_key(host_of);
    let body = html! {
        div #live hx-get=(view.href("/ui/nodes")) hx-trigger=(REFRESH) hx-select="#live" hx-swap="outerHTML" {
            @if nodes.is_empty() { p.muted { "No launcher has connected." } }
            @else {
                table #nodes {
                    tr { th { "host" } th { "node" } th { "status" } th { "memory in use" } th { "load" } th { "instances" } th { "labels" } th { "features" } th { "arch" } th { "NUMA" } }
                    @for n in &nodes {
                        tr data-node=(n.uuid) {
                            td { a href=(view.href(&format!("/ui/instances?node={}", n.uuid))) { (host_of(n)) } }
                            td { code { (n.uuid.short()) } }
                            td { span class=(status_class(n.status.name())) { (n.status.name()) } }
                            @if let Some(s) = &n.stats {
                                @let used = s.mem_total_mb.saturating_sub(s.mem_available_mb);
                                td { (bar(used, s.mem_total_mb, &format!("{used} / {} MiB", s.mem_total_mb))) }
                                td { (load_bar(s.load, u64::from(s.cpus_online))) }
                            } @else {
                                td.muted { "no report yet" } td {}
                            }
                            td { (n.instances) }
                            @if let Some(r) = &n.report {
                                td { @for (k, v) in &r.labels { code { (k) "=" (v) } " " } }
                                td { (r.features.join(", ")) }
                                td { (r.arch) }
                                td { @if let Some(numa) = r.numa_node { (numa) } @else { "—" } }
                            } @else {
                                td {} td {} td {} td {}
                            }
                        }
                    }
                }
            }
        }
    };
    view.page("/ui/nodes", "Nodes", body)
}

#[derive(Debug, Deserialize, Default)]
struct InstancesQuery {
    tenant: Option<String>,
    state: Option<String>,
    workload: Option<String>,
    node: Option<String>,
    batch: Option<String>,
    after: Option<Uuid>,
}

async fn instances(
    State(c): State<Arc<Controller>>,
    Tenant(tenant): Tenant,
    Query(q): Query<InstancesQuery>,
) -> Response {
    let view = View::new(tenant.clone(), q.tenant.clone());
    let state = q.state.clone().filter(|s| !s.is_empty());
    let workload = q.workload.clone().filter(|s| !s.is_empty());
    let node: Option<Uuid> = q.node.as_deref().filter(|s| !s.is_empty()).and_then(|s| s.parse().ok());
    let batch: Option<Uuid> = q.batch.as_deref().filter(|s| !s.is_empty()).and_then(|s| s.parse().ok());
    let (state_f, workload_f, after) = (state.clone(), workload.clone(), q.after);
    let read = c
        .blocking(move |c| {
            let keep = |r: &InstanceRecord| {
                scope(&tenant).is_none_or(|t| t == r.tenant)
                    && workload_f.as_ref().is_none_or(|w| *w == r.workload)
                    && state_f.as_ref().is_none_or(|s| s == r.life.state.name())
                    && node.is_none_or(|n| r.node == Some(n))
                    && batch.is_none_or(|b| r.batch == Some(b))
            };
            let page = c.service().store().instances_page(after, PAGE, keep)?;
            let counts = c.service().counts(scope(&tenant))?;
            Ok::<_, ServiceError>((page, counts))
        })
        .await;
    let (page, counts) = match read {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let hosts: BTreeMap<Uuid, String> = c.nodes().iter().map(|n| (n.uuid, host_of(n))).collect();
    let filter = |after: Option<Uuid>| {
        let mut parts = Vec::new();
        for (k, v) in [("state", &state), ("workload", &workload)] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", encode(v)));
            }
        }
        if let Some(n) = node {
            parts.push(format!("node={n}"));
        }
        if let Some(b) = batch {
            parts.push(format!("batch={b}"));
        }
        if let Some(a) = after {
            parts.push(format!("after={a}"));
        }
        view.href(&format!("/ui/instances?{}", parts.join("&")))
    };
    let filter_batch = |b: Uuid| view.href(&format!("/ui/instances?batch={b}"));
    let body = html! {
        form.filter method="get" action="/ui/instances" {
            @if let Some(t) = &view.chosen { input type="hidden" name="tenant" value=(t); }
            label { "state" select name="state" {
                option value="" { "any" }
                @for s in drover_model::InstanceStatus::ALL {
                    option value=(s.name()) selected[state.as_deref() == Some(s.name())] { (s.name()) " (" (counts.get(s.name()).copied().unwrap_or(0)) ")" }
                }
            } }
            label { "workload" input name="workload" value=[workload.as_deref()]; }
            label { "node" input name="node" value=[node.map(|n| n.to_string())] placeholder="UUID"; }
            label { "batch" input name="batch" value=[batch.map(|b| b.to_string())] placeholder="UUID"; }
            button type="submit" { "Filter" }
        }
        div #live hx-get=(filter(after)) hx-trigger=(REFRESH) hx-select="#live" hx-swap="outerHTML" {
            table #instances {
                tr { th { "instance" } th { "workload" } th { "tenant" } th { "state" } th { "node" } th { "batch" } th { "why" } th { "restarts" } th { "exit" } }
                @for r in &page.records {
                    @let v = instance_view(r);
                    tr data-instance=(v.uuid) {
                        td { a href=(view.href(&format!("/ui/instances/{}", v.uuid))) { code { (v.uuid.short()) } } }
                        td { (v.workload) }
                        td { (v.tenant) }
                        td { span class=(status_class(v.state.name())) { (v.state.name()) } }
                        td { @if let Some(n) = v.node { (hosts.get(&n).cloned().unwrap_or_else(|| n.short())) } }
                        td { @if let Some(b) = v.batch { a href=(filter_batch(b)) { code { (b.short()) } } } }
                        td.why { (v.why) }
                        td { (v.restarts) }
                        td { @if let Some(code) = v.exit_code { (code) } }
                    }
                }
            }
            @if page.records.is_empty() { p.muted { "No instance matches." } }
            @if let Some(next) = page.next_after { p { a href=(filter(Some(next))) { "Next " (PAGE) " →" } } }
        }
    };
    view.page("/ui/instances", "Instances", body)
}

async fn instance(
    State(c): State<Arc<Controller>>,
    Tenant(tenant): Tenant,
    Path(id): Path<Uuid>,
    Query(q): Query<TenantQuery>,
) -> Response {
    let view = View::new(tenant.clone(), q.tenant);
    let record = match c.blocking(move |c| c.service().owned(&tenant, id)).await {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let v = instance_view(&record);
    let host = v.node.and_then(|n| c.nodes().into_iter().find(|x| x.uuid == n)).map(|n| host_of(&n));
    let running = matches!(record.life.state, Life::Running { .. });
    let here = view.href(&format!("/ui/instances/{id}"));
    let body = html! {
        div #live hx-get=(here) hx-trigger=(REFRESH) hx-select="#live" hx-swap="outerHTML" {
            table {
                tr { th { "instance" } td { code { (v.uuid) } } }
                tr { th { "workload" } td { a href=(view.href(&format!("/ui/instances?workload={}", encode(&v.workload)))) { (v.workload) } } }
                tr { th { "tenant" } td { (v.tenant) } }
                tr { th { "state" } td { span class=(status_class(v.state.name())) { (v.state.name()) } } }
                tr { th { "why" } td.why { (v.why) } }
                tr { th { "node" } td { @if let Some(h) = &host { (h) } @else if let Some(n) = v.node { (n) } } }
                tr { th { "restarts" } td { (v.restarts) } }
                tr { th { "exit code" } td { @if let Some(code) = v.exit_code { (code) } } }
                @if let Some(b) = v.batch { tr { th { "batch" } td { a href=(view.href(&format!("/ui/instances?batch={b}"))) { code { (b) } } } } }
            }
        }
        h2 { "Output" @if running { " (live)" } }
        pre.output #output hx-get=(view.href(&format!("/ui/instances/{id}/output"))) hx-trigger=(if running { "load, every 2s" } else { "load" }) {
            "…"
        }
    };
    view.page(&format!("/ui/instances/{id}"), &format!("Instance {}", id.short()), body)
}

/// The tail of an instance's output, as text for the page's `<pre>`.
async fn output(State(c): State<Arc<Controller>>, Tenant(tenant): Tenant, Path(id): Path<Uuid>) -> Response {
    let record = match c.blocking(move |c| c.service().owned(&tenant, id)).await {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let text = match record.node {
        None => format!("(no output: it has not run yet; {})", record.life.state.name()),
        Some(node) => match c.fetch_log(id, node, 16 * 1024, Duration::from_secs(5)).await {
            Ok(data) if data.truncated => format!("…\n{}", data.data),
            Ok(data) => data.data,
            Err(e) => format!("(the node could not send it: {e})"),
        },
    };
    // Escaped by maud; htmx puts it in the <pre> as it is.
    let markup = html! { (text) };
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

async fn workloads(State(c): State<Arc<Controller>>, Tenant(tenant): Tenant, Query(q): Query<TenantQuery>) -> Response {
    let view = View::new(tenant.clone(), q.tenant);
    let list = match c.blocking(move |c| c.service().store().workloads(scope(&tenant))).await {
        Ok(l) => l,
        Err(e) => return ApiError::from(ServiceError::from(e)).into_response(),
    };
    let body = html! {
        div #live hx-get=(view.href("/ui/workloads")) hx-trigger=(REFRESH) hx-select="#live" hx-swap="outerHTML" {
            @if list.is_empty() { p.muted { "No workload yet: " code { "drover workload create FILE" } } }
            @else {
                table #workloads {
                    tr { th { "name" } th { "tenant" } th { "class" } th { "backend" } th { "vCPUs" } th { "memory (MiB)" } th { "file" } }
                    @for (name, w) in &list {
                        @let parsed = w.parsed().ok();
                        tr {
                            td { a href=(view.href(&format!("/ui/instances?workload={}", encode(name)))) { (name) } }
                            td { (w.tenant) }
                            td { @if let Some(p) = &parsed { (match p.class { ssntp::payload::WorkClass::Batch => "batch", ssntp::payload::WorkClass::Workorder => "workorder" }) } }
                            td { @if let Some(p) = &parsed { (p.backend.name()) } }
                            td { @if let Some(p) = &parsed { (p.requirements.vcpus) } }
                            td { @if let Some(p) = &parsed { (p.requirements.mem_mb) } }
                            td.muted { @if let Some(f) = &w.unit_file { (f) } @else if w.toml { "TOML" } @else { "JSON" } }
                        }
                    }
                }
            }
        }
    };
    view.page("/ui/workloads", "Workloads", body)
}

async fn events(State(c): State<Arc<Controller>>, Tenant(tenant): Tenant, Query(q): Query<TenantQuery>) -> Response {
    let view = View::new(tenant.clone(), q.tenant);
    let read = c
        .blocking(move |c| {
            let revision = c.service().store().revision()?;
            let events = recent_events(c, scope(&tenant), revision)?;
            Ok::<_, ServiceError>((revision, events))
        })
        .await;
    let (revision, events) = match read {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let shown: Vec<&Event> = events.iter().rev().take(100).collect();
    // Not refreshed by htmx: the stream adds rows as they come.
    let markup = html! {
        p.muted { "Newest first; new events appear as they happen (from " code { "/v1/events/stream" } ")." }
        table #events data-after=(revision) {
            thead { tr { th { "revision" } th { "time (UTC)" } th { "tenant" } th { "workload" } th { "to" } th { "what" } } }
            tbody {
                @for e in &shown {
                    tr data-revision=(e.revision) {
                        td { (e.revision) }
                        td { (drover_model::format_utc(e.at_unix_ms)) }
                        td { (e.tenant) }
                        td { @if let Some(w) = &e.detail.workload { (w) } }
                        td { @if let Some(to) = &e.detail.to { (to) } }
                        td { (e.what) }
                    }
                }
            }
        }
        script src="/ui/static/events.js" {}
    };
    let mut response = view.page("/ui/events", "Events", markup);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
