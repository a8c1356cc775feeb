//! Prometheus metrics (`--metrics ADDR`, `GET /metrics`): what runs on this node and how it got
//! there and ended, counted in the shell as effects and events pass.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use ssntp::payload::ExitReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The launcher's metrics (prefix `drover_launcher_`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    running: Gauge,
    connected: Gauge,
    maintenance: Gauge,
    draining: Gauge,
    cpu_score: Gauge,
    pci_devices: Gauge,
    starts: Counter,
    refusals: Counter,
    ends: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("drover_launcher");
        let running = Gauge::default();
        registry.register("instances_running", "Instances running on this node", running.clone());
        let connected = Gauge::default();
        registry.register("connected", "1 while connected to a scheduler", connected.clone());
        let maintenance = Gauge::default();
        registry.register("maintenance", "1 while the node is in maintenance (no new work)", maintenance.clone());
        let draining = Gauge::default();
        registry.register(
            "draining",
            "1 while the node drains (no new work; what runs may finish until the deadline)",
            draining.clone(),
        );
        let cpu_score = Gauge::default();
        registry.register(
            "cpu_score",
            "The node's single-core speed score, measured at start (about 1000 for a 2020 server core)",
            cpu_score.clone(),
        );
        let pci_devices = Gauge::default();
        registry.register("pci_devices", "PCI devices the node advertises", pci_devices.clone());
        let starts = Counter::default();
        registry.register("starts", "Workloads started", starts.clone());
        let refusals = Counter::default();
        registry.register("start_refusals", "STARTs refused (no room, bad data, launch failure)", refusals.clone());
        let ends = Family::<ReasonLabel, Counter>::default();
        registry.register("ends", "Instances ended, by reason", ends.clone());
        Self { registry, running, connected, maintenance, draining, cpu_score, pci_devices, starts, refusals, ends }
    }

    /// The node's state after an input was handled.
    pub fn state(&self, running: usize, connected: bool, maintenance: bool, draining: bool) {
        self.running.set(i64::try_from(running).unwrap_or(i64::MAX));
        self.connected.set(i64::from(connected));
        self.maintenance.set(i64::from(maintenance));
        self.draining.set(i64::from(draining));
    }

    /// What the node can do, read at start.
    pub fn capabilities(&self, caps: &crate::probe::Capabilities) {
        self.cpu_score.set(i64::from(caps.cpu_score.unwrap_or(0)));
        self.pci_devices.set(i64::try_from(caps.pci.len()).unwrap_or(i64::MAX));
    }

    /// A workload was started.
    pub fn started(&self) {
        self.starts.inc();
    }

    /// A START was refused.
    pub fn refused(&self) {
        self.refusals.inc();
    }

    /// An instance ended.
    pub fn ended(&self, reason: ExitReason) {
        let reason = match reason {
            ExitReason::Completed => "completed",
            ExitReason::Failed => "failed",
            ExitReason::Oom => "oom",
            ExitReason::Killed => "killed",
            ExitReason::Unknown => "unknown",
        };
        self.ends.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        ssntp::metrics::text(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_passes_becomes_prometheus_text() {
        let m = Metrics::new();
        m.state(2, true, false, true);
        m.started();
        m.started();
        m.refused();
        m.ended(ExitReason::Oom);
        let text = m.encode();
        for line in [
            "drover_launcher_instances_running 2",
            "drover_launcher_connected 1",
            "drover_launcher_maintenance 0",
            "drover_launcher_draining 1",
            "drover_launcher_starts_total 2",
            "drover_launcher_start_refusals_total 1",
            "drover_launcher_ends_total{reason=\"oom\"} 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
