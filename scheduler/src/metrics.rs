//! Prometheus metrics (`--metrics ADDR`): the hub's summary, refreshed every second, served as
//! text on `GET /metrics` (axum; anything else is answered 404).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::hub::Summary;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The scheduler's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    nodes: Family<StateLabel, Gauge>,
    queued: Gauge,
    reserved: Gauge,
    migrating: Gauge,
    oldest_wait: Gauge<f64, AtomicU64>,
    placements: Counter,
    refused: Counter,
    reclaimed: Gauge,
    brake: Gauge,
    report_bytes: Counter,
    last: Summary,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("drover_scheduler");
        let nodes = Family::<StateLabel, Gauge>::default();
        registry.register("nodes", "Launchers by state", nodes.clone());
        let queued = Gauge::default();
        registry.register("queue_length", "STARTs waiting for room", queued.clone());
        let reserved = Gauge::default();
        registry.register("reserved_nodes", "Nodes reserved for a big START waiting for room there", reserved.clone());
        let migrating = Gauge::default();
        registry.register("migrations", "Live migrations under way", migrating.clone());
        let oldest_wait = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "queue_oldest_wait_seconds",
            "How long the oldest queued START has waited",
            oldest_wait.clone(),
        );
        let placements = Counter::default();
        registry.register("placements", "STARTs placed on a node", placements.clone());
        let refused = Counter::default();
        registry.register(
            "refused_starts",
            "STARTs refused (queue full or timed out, not permitted, duplicate)",
            refused.clone(),
        );
        let reclaimed = Gauge::default();
        registry.register(
            "reclaimed_memory_bytes",
            "Memory charged below requests thanks to estimates",
            reclaimed.clone(),
        );
        let brake = Gauge::default();
        registry.register("node_loss_brake", "1 while most nodes are silent and NODE_LOST is held back", brake.clone());
        let report_bytes = Counter::default();
        registry.register(
            "launcher_report_bytes",
            "Bytes of frames received from launchers (heartbeats, news, digests, events)",
            report_bytes.clone(),
        );
        Self {
            registry,
            nodes,
            queued,
            reserved,
            migrating,
            oldest_wait,
            placements,
            refused,
            reclaimed,
            brake,
            report_bytes,
            last: Summary::default(),
        }
    }

    /// Counts bytes received from launchers since the last call.
    pub fn add_report_bytes(&mut self, bytes: u64) {
        self.report_bytes.inc_by(bytes);
    }

    /// Takes in the latest summary.
    pub fn update(&mut self, s: &Summary) {
        let set = |state, n: usize| {
            self.nodes.get_or_create(&StateLabel { state }).set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("ready", s.ready);
        set("full", s.full);
        set("maintenance", s.maintenance);
        set("not_ready", s.not_ready);
        set("disconnected", s.disconnected);
        set("lost", s.lost);
        self.queued.set(i64::try_from(s.queued).unwrap_or(i64::MAX));
        self.reserved.set(i64::try_from(s.reserved).unwrap_or(i64::MAX));
        self.migrating.set(i64::try_from(s.migrating).unwrap_or(i64::MAX));
        #[allow(clippy::cast_precision_loss)] // milliseconds of waiting fit an f64 exactly
        self.oldest_wait.set(s.oldest_wait_ms as f64 / 1000.0);
        self.placements.inc_by(s.placements.saturating_sub(self.last.placements));
        self.refused.inc_by(s.refused.saturating_sub(self.last.refused));
        self.reclaimed.set(i64::try_from(s.reclaimed_mb.saturating_mul(1 << 20)).unwrap_or(i64::MAX));
        self.brake.set(i64::from(s.brake));
        self.last = s.clone();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        ssntp::metrics::text(&self.registry)
    }
}

pub use ssntp::metrics::serve;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_becomes_prometheus_text() {
        let mut m = Metrics::new();
        m.update(&Summary {
            ready: 3,
            lost: 1,
            queued: 2,
            placements: 10,
            reclaimed_mb: 512,
            brake: true,
            ..Summary::default()
        });
        m.update(&Summary {
            ready: 3,
            lost: 1,
            queued: 2,
            placements: 15,
            reclaimed_mb: 512,
            brake: true,
            ..Summary::default()
        });
        m.add_report_bytes(1200);
        let text = m.encode();
        for line in [
            "drover_scheduler_nodes{state=\"ready\"} 3",
            "drover_scheduler_nodes{state=\"lost\"} 1",
            "drover_scheduler_queue_length 2",
            "drover_scheduler_placements_total 15",
            "drover_scheduler_reclaimed_memory_bytes 536870912",
            "drover_scheduler_node_loss_brake 1",
            "drover_scheduler_launcher_report_bytes_total 1200",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
