//! `GET /metrics` on the API's port (no certificate needed): the controller's figures as
//! Prometheus text, read fresh at each scrape from the store's in-memory indexes and the link.
//! Every name is listed in `docs/metrics.md`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use drover_model::{InstanceStatus, NodeStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::daemon::Controller;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// What the store says, read off the async runtime (see [`text`]).
#[derive(Debug, Clone, Default)]
pub struct StoreFigures {
    /// Instances by state name, every tenant.
    pub instances: BTreeMap<&'static str, usize>,
    /// The store's latest revision.
    pub revision: u64,
    /// Instances waiting for a START to go.
    pub pending: usize,
}

fn gauge(v: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    g
}

/// The text exposition of `c` with the store's `figures`.
pub fn text(c: &Controller, figures: &StoreFigures) -> String {
    let mut registry = Registry::with_prefix("drover_controller");
    let instances = Family::<StateLabel, Gauge>::default();
    for state in InstanceStatus::ALL {
        let n = figures.instances.get(state.name()).copied().unwrap_or(0);
        instances.get_or_create(&StateLabel { state: state.name() }).set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    registry.register("instances", "Instances by state, every tenant", instances);
    let nodes = Family::<StatusLabel, Gauge>::default();
    let mut by_status: BTreeMap<&'static str, i64> = NodeStatus::ALL.iter().map(|s| (s.name(), 0)).collect();
    for node in c.nodes() {
        *by_status.entry(node.status.name()).or_default() += 1;
    }
    for (status, n) in by_status {
        nodes.get_or_create(&StatusLabel { status }).set(n);
    }
    registry.register("nodes", "Nodes by status, as the scheduler and their reports say", nodes);
    registry.register("pending_instances", "Instances waiting for their START to go", gauge(figures.pending as u64));
    registry.register("store_revision", "The store's latest revision (one per change)", gauge(figures.revision));
    let starts = Counter::<u64>::default();
    starts.inc_by(c.starts_sent.load(Ordering::Relaxed));
    registry.register("starts_sent", "STARTs sent to the scheduler since this process started", starts);
    registry.register(
        "scheduler_connected",
        "1 while the link to a scheduler is up",
        gauge(u64::from(c.link_view().connected)),
    );
    registry.register(
        "store_read_only",
        "1 while writes are refused because the store has no quorum",
        gauge(u64::from(c.read_only().is_some())),
    );
    registry.register(
        "event_streams",
        "Open /v1/events/stream connections",
        gauge(crate::event_stream::open_streams() as u64),
    );
    ssntp::metrics::text(&registry)
}
