//! Whether this node takes a START, and whether it reports READY or FULL. Pure: figures and
//! the time in, decisions out.
//!
//! Room for a START is [`drover_model::fit`], the rule the scheduler placed it by: the
//! overcommit comes from the cluster configuration the scheduler sent, the charge from the
//! START (the request, or the memory estimate the scheduler granted), and what is given out is
//! the sum of the running instances' charges. So work the scheduler placed is refused here only
//! when this node knows better (real memory, disk, instance slots).
//!
//! FULL is entered as soon as the node is short of memory (real or allocated), disk or instance
//! slots; READY comes back only when every figure is clear of its threshold by a margin *and*
//! the node has been FULL for at least the dwell time, so a node hovering at a threshold does
//! not flap (kubelet's eviction-pressure transition period, scaled down).

use drover_model::{Capacity, Demand, NodeStatus, Overcommit, Shortfall, Usage};
use ssntp::payload::{FailureReason, Start};

/// The node's thresholds (from the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory kept for the system, MiB.
    pub mem_reserve_mb: u64,
    /// Disk kept free in the state directory, MiB.
    pub disk_reserve_mb: u64,
    /// Most instances at once.
    pub max_instances: usize,
    /// Minimum time in FULL before READY again, ms.
    pub dwell_ms: u64,
}

/// What the node has and has given out right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Figures {
    /// Online CPUs.
    pub cpus_online: u32,
    /// Memory of the node (before the reserve is taken off), MiB.
    pub mem_total_mb: u64,
    /// Memory actually available (before the reserve is taken off), MiB.
    pub mem_available_mb: u64,
    /// Free disk of the state directory, MiB.
    pub disk_available_mb: u64,
    /// vCPUs of the running instances.
    pub vcpus_allocated: u64,
    /// Memory charged to the running instances, MiB.
    pub mem_allocated_mb: u64,
    /// Running instances.
    pub instances: usize,
    /// Last-level cache ways the node gives out (0: no cache allocation).
    pub cache_ways: u32,
    /// Cache ways held by running instances.
    pub cache_ways_allocated: u32,
}

impl Figures {
    /// What the node offers once the reserve is taken off (what it reports to the scheduler).
    fn capacity(&self, limits: &Limits) -> Capacity {
        Capacity {
            cpus_online: self.cpus_online,
            mem_total_mb: self.mem_total_mb.saturating_sub(limits.mem_reserve_mb),
            mem_available_mb: self.mem_available_mb.saturating_sub(limits.mem_reserve_mb),
        }
    }
}

/// Margin by which figures must clear a threshold before FULL turns back to READY.
fn margin(total_mb: u64) -> u64 {
    (total_mb / 20).max(64)
}

/// The feature a START lists in its requirements when it must run under memory and CPU
/// limits; nodes with usable cgroups advertise it.
pub const LIMITS_FEATURE: &str = "limits";

/// Why a START is refused here, if it is. `overcommit`: the scheduler's, from the cluster
/// configuration; `has_limits`: whether this node can enforce memory and CPU limits;
/// `tax_mb`: the anchor tax of its backend here, charged on top of its memory (the scheduler
/// charges the same, from this node's report).
///
/// # Errors
/// The reason for the wire and a sentence for the operator.
#[allow(clippy::too_many_arguments)] // each is an input of the one rule, named at the call
pub fn admit(
    limits: &Limits,
    figures: &Figures,
    overcommit: Overcommit,
    maintenance: bool,
    start: &Start,
    offered: &[String],
    has_limits: bool,
    tax_mb: u64,
) -> Result<(), (FailureReason, String)> {
    let req = &start.requirements;
    let backend = start.backend.name();
    if maintenance {
        return Err((FailureReason::NodeMaintenance, "the node is in maintenance (evacuated)".into()));
    }
    if !has_limits && req.features.iter().any(|f| f == LIMITS_FEATURE) {
        return Err((
            FailureReason::NoLimits,
            "the workload requires limits and this node has no usable cgroups".into(),
        ));
    }
    if !offered.iter().any(|b| b == backend) {
        return Err((
            FailureReason::UnknownBackend,
            format!("backend {backend:?} is not offered here (offered: {})", offered.join(", ")),
        ));
    }
    let capacity = figures.capacity(limits);
    let usage = Usage { vcpus: figures.vcpus_allocated, mem_mb: figures.mem_allocated_mb, mem_unconfirmed_mb: 0 };
    let charge = start.charged_mb() + tax_mb;
    let demand = Demand { vcpus: req.vcpus, mem_mb: charge };
    if let Err(short) = drover_model::fit(&capacity, &usage, &demand, overcommit) {
        let detail = match short {
            Shortfall::Cpu => format!(
                "vCPUs: {} given out + {} requested > {} offered ({} CPUs × {})",
                usage.vcpus,
                demand.vcpus,
                capacity.cpu_limit(overcommit),
                capacity.cpus_online,
                overcommit.cpu
            ),
            Shortfall::Memory => format!(
                "memory: {} MiB allocated + {charge} MiB requested > {} MiB offered ({} MiB × {})",
                usage.mem_mb,
                capacity.mem_limit(overcommit),
                capacity.mem_total_mb,
                overcommit.mem
            ),
            Shortfall::AvailableMemory => format!(
                "memory: {} MiB available, {charge} MiB requested + {} MiB reserve",
                figures.mem_available_mb, limits.mem_reserve_mb
            ),
        };
        return Err((FailureReason::FullCn, detail));
    }
    if figures.disk_available_mb < req.disk_mb + limits.disk_reserve_mb {
        return Err((
            FailureReason::FullCn,
            format!(
                "disk: {} MiB available, {} MiB requested + {} MiB reserve",
                figures.disk_available_mb, req.disk_mb, limits.disk_reserve_mb
            ),
        ));
    }
    if req.cache_ways > 0 && figures.cache_ways_allocated.saturating_add(req.cache_ways) > figures.cache_ways {
        let detail = if figures.cache_ways == 0 {
            "cache ways: this node has no cache allocation (resctrl)".to_owned()
        } else {
            format!(
                "cache ways: {} given out + {} requested > {} offered",
                figures.cache_ways_allocated, req.cache_ways, figures.cache_ways
            )
        };
        return Err((FailureReason::FullCn, detail));
    }
    if figures.instances >= limits.max_instances {
        return Err((
            FailureReason::FullCn,
            format!("{} instances running, the most this node takes", figures.instances),
        ));
    }
    Ok(())
}

/// READY/FULL/MAINTENANCE with hysteresis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatusMachine {
    state: NodeStatus,
    full_since_ms: u64,
}

impl Default for StatusMachine {
    fn default() -> Self {
        Self { state: NodeStatus::Ready, full_since_ms: 0 }
    }
}

impl StatusMachine {
    /// The status to report at `now_ms`, with the scheduler's `overcommit`.
    pub fn update(
        &mut self,
        now_ms: u64,
        limits: &Limits,
        f: &Figures,
        overcommit: Overcommit,
        maintenance: bool,
    ) -> NodeStatus {
        if maintenance {
            self.state = NodeStatus::Maintenance;
            return self.state;
        }
        let offered = f.capacity(limits).mem_limit(overcommit);
        let short = f.mem_available_mb < limits.mem_reserve_mb
            || f.disk_available_mb < limits.disk_reserve_mb
            || f.instances >= limits.max_instances
            || f.mem_allocated_mb >= offered;
        let m = margin(f.mem_total_mb);
        let clear = f.mem_available_mb >= limits.mem_reserve_mb + m
            && f.disk_available_mb >= limits.disk_reserve_mb + m
            && f.instances < limits.max_instances
            && f.mem_allocated_mb + m <= offered;
        self.state = match self.state {
            NodeStatus::Full => {
                if clear && now_ms.saturating_sub(self.full_since_ms) >= limits.dwell_ms {
                    NodeStatus::Ready
                } else {
                    NodeStatus::Full
                }
            }
            _ if short => {
                self.full_since_ms = now_ms;
                NodeStatus::Full
            }
            _ => NodeStatus::Ready,
        };
        self.state
    }
}

/// The anchor tax per backend before anything is measured, MiB: a shim (a small static
/// process) for `process`, a shim and runc for `oci`, what a device model may take beyond its
/// guest for `vm`, what a runtime may take beyond its heap for `artifact`; a `systemd` unit's
/// own cost is in its cgroup, a `sim` has none.
pub const DEFAULT_ANCHOR_TAX_MB: [(&str, u64); 6] = [
    ("process", 2),
    ("oci", 12),
    ("systemd", 0),
    ("vm", crate::vm::DEVICE_MODEL_MB),
    ("artifact", crate::artifact::RUNTIME_MB),
    ("sim", 0),
];

/// The anchor tax of the `backends` offered, before any measurement.
pub fn initial_anchor_tax(backends: &[String]) -> std::collections::BTreeMap<String, u64> {
    backends
        .iter()
        .map(|b| (b.clone(), DEFAULT_ANCHOR_TAX_MB.iter().find(|(name, _)| name == b).map_or(0, |(_, mb)| *mb)))
        .collect()
}

/// The anchor tax after a sample of what each running instance's machinery takes
/// (`(backend, KiB)`, -1 unknown): per backend, the most seen, in whole MiB rounded up, and
/// never less than before (a node is never overcommitted by its own machinery).
pub fn measured_anchor_tax<'a>(
    before: &std::collections::BTreeMap<String, u64>,
    samples: impl IntoIterator<Item = (&'a str, i64)>,
) -> std::collections::BTreeMap<String, u64> {
    let mut tax = before.clone();
    for (backend, kb) in samples {
        let Ok(kb) = u64::try_from(kb) else { continue };
        let mb = kb.div_ceil(1024);
        let entry = tax.entry(backend.to_owned()).or_insert(0);
        *entry = (*entry).max(mb);
    }
    tax
}

/// The environment variable with an instance's CPU allowance (its vCPUs).
pub const CPUS_ENV: &str = "DROVER_CPUS";
/// The environment variable with a parallelism hint (`make -j"$DROVER_JOBS"`).
pub const JOBS_ENV: &str = "DROVER_JOBS";

/// How parallel an instance should run (OBS's `-jN` from the worker's load): its allowance is
/// its vCPUs (the node's CPUs when it asked for none), and the hint is the CPUs the node has
/// idle now (online CPUs less the one-minute load, rounded), at least 1 and at most the
/// allowance. Returns (allowance, hint).
pub fn parallelism(vcpus: u32, cpus_online: u32, load: f64) -> (u32, u32) {
    let cpus = cpus_online.max(1);
    let allowance = if vcpus == 0 { cpus } else { vcpus };
    let idle = (f64::from(cpus) - if load.is_finite() { load.max(0.0) } else { f64::from(cpus) }).round();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // clamped to 1..=allowance
    let hint = idle.clamp(1.0, f64::from(allowance)) as u32;
    (allowance, hint)
}

/// `DROVER_CPUS` and `DROVER_JOBS` in the instance's environment, from its vCPUs and the node's
/// CPUs (a NUMA launcher's own) and load as last sampled: decided with admission, so a START
/// costs no reading of `/proc`.
pub fn add_parallelism(start: &mut Start, cpus_online: u32, load: f64) {
    let (allowance, hint) = parallelism(start.requirements.vcpus, cpus_online, load);
    if let Some(env) = start.backend.env_mut() {
        env.insert(CPUS_ENV.to_owned(), allowance.to_string());
        env.insert(JOBS_ENV.to_owned(), hint.to_string());
    }
}

/// The host/target combination this node is for the instance (`DROVER_HOST_ARCH`,
/// `DROVER_TARGET_ARCH`) and, when one of its workload's `[[cross]]` entries applies, that
/// entry's packages and environment. The `DROVER_*` variables are the node's; of the others,
/// what the workload's backend set itself wins.
pub fn add_arch_setup(start: &mut Start) {
    let (_, setup) =
        ssntp::payload::arch_setup(&start.arch_setups, std::env::consts::ARCH, start.requirements.arch.as_deref());
    let Some(env) = start.backend.env_mut() else { return };
    for (key, value) in setup {
        if ssntp::payload::ARCH_ENV.contains(&key.as_str()) {
            env.insert(key, value);
        } else {
            env.entry(key).or_insert(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_anchor_tax_is_measured_per_backend_and_charged_on_top_of_the_memory() {
        let tax = initial_anchor_tax(&["process".into(), "oci".into(), "sim".into()]);
        assert_eq!(tax.get("process"), Some(&2));
        assert_eq!(tax.get("oci"), Some(&12));
        let measured = measured_anchor_tax(&tax, [("process", 3000), ("process", -1), ("oci", 5000), ("sim", 0)]);
        assert_eq!(measured.get("process"), Some(&3), "2.9 MiB seen: 3, rounded up");
        assert_eq!(measured.get("oci"), Some(&12), "never less than before");
        // 4096 MiB offered, 3950 given out: 96 MiB fits, 96 and a 100 MiB tax do not.
        let f = Figures {
            cpus_online: 4,
            mem_total_mb: 4096 + 256,
            mem_available_mb: 4096,
            disk_available_mb: 100_000,
            mem_allocated_mb: 3950,
            ..Figures::default()
        };
        let limits = Limits { mem_reserve_mb: 256, disk_reserve_mb: 0, max_instances: 100, dwell_ms: 0 };
        let start = Start::new(
            ssntp::Uuid::nil(),
            ssntp::payload::Requirements { vcpus: 1, mem_mb: 96, ..Default::default() },
            ssntp::payload::Backend::Process { argv: vec!["true".into()], env: Default::default() },
        );
        let offered = vec!["process".to_owned()];
        let oc = Overcommit::default();
        assert!(admit(&limits, &f, oc, false, &start, &offered, true, 0).is_ok());
        let (reason, detail) = admit(&limits, &f, oc, false, &start, &offered, true, 100).unwrap_err();
        assert_eq!(reason, FailureReason::FullCn);
        assert!(detail.contains("196 MiB requested"), "the tax is in the charge: {detail}");
    }

    #[test]
    fn the_jobs_hint_is_the_idle_cpus_within_the_allowance() {
        assert_eq!(parallelism(4, 16, 0.3), (4, 4), "an idle node: the whole allowance");
        assert_eq!(parallelism(8, 16, 10.6), (8, 5), "a busy node: what is idle");
        assert_eq!(parallelism(8, 16, 40.0), (8, 1), "an overloaded node: one at a time");
        assert_eq!(parallelism(0, 6, 1.0), (6, 5), "no vCPUs asked: the node's CPUs");
        assert_eq!(parallelism(2, 0, f64::NAN), (2, 1), "nothing known: one");
    }

    proptest::proptest! {
        #[test]
        fn the_hint_is_between_one_and_the_allowance(vcpus in 0u32..256, cpus in 0u32..512, load in -1.0f64..1000.0) {
            let (allowance, hint) = parallelism(vcpus, cpus, load);
            proptest::prop_assert!(allowance >= 1 && (1..=allowance).contains(&hint));
        }
    }
    use proptest::prelude::*;
    use ssntp::payload::{Backend, Requirements};

    const LIMITS: Limits = Limits { mem_reserve_mb: 256, disk_reserve_mb: 1024, max_instances: 10, dwell_ms: 10_000 };
    const OC: Overcommit = Overcommit { cpu: 4.0, mem: 1.0 };

    fn figures(mem_available_mb: u64) -> Figures {
        Figures {
            cpus_online: 2,
            mem_total_mb: 4096,
            mem_available_mb,
            disk_available_mb: 50_000,
            vcpus_allocated: 0,
            mem_allocated_mb: 0,
            instances: 0,
            cache_ways: 0,
            cache_ways_allocated: 0,
        }
    }

    #[test]
    fn cache_ways_are_admitted_within_what_the_node_gives_out() {
        let start = start_with(Requirements { vcpus: 1, mem_mb: 64, cache_ways: 4, ..Default::default() }, "process");
        let offered = ["process".to_owned()];
        let admit_with = |total, given| {
            let f = Figures { cache_ways: total, cache_ways_allocated: given, ..figures(4096) };
            admit(&LIMITS, &f, OC, false, &start, &offered, true, 0)
        };
        assert!(admit_with(12, 8).is_ok());
        let (reason, detail) = admit_with(12, 9).unwrap_err();
        assert_eq!(reason, FailureReason::FullCn);
        assert_eq!(detail, "cache ways: 9 given out + 4 requested > 12 offered");
        assert!(admit_with(0, 0).unwrap_err().1.contains("no cache allocation"));
    }

    fn start_with(requirements: Requirements, backend: &str) -> Start {
        let backend = match backend {
            "oci" => Backend::Oci {
                rootfs: "/".into(),
                args: vec![],
                env: Default::default(),
                writable_root: false,
                volumes: vec![],
                network: Default::default(),
            },
            _ => Backend::Process { argv: vec!["true".into()], env: Default::default() },
        };
        Start::new(ssntp::Uuid::nil(), requirements, backend)
    }

    fn req(mem_mb: u64) -> Start {
        start_with(Requirements { vcpus: 1, mem_mb, ..Default::default() }, "process")
    }

    #[test]
    fn refusals_name_their_reason() {
        let offered = vec!["process".to_owned()];
        let f = figures(4000);
        assert!(admit(&LIMITS, &f, OC, false, &req(100), &offered, true, 0).is_ok());
        assert_eq!(
            admit(&LIMITS, &f, OC, true, &req(100), &offered, true, 0).unwrap_err().0,
            FailureReason::NodeMaintenance
        );
        let oci = start_with(Requirements { vcpus: 1, mem_mb: 100, ..Default::default() }, "oci");
        assert_eq!(
            admit(&LIMITS, &f, OC, false, &oci, &offered, true, 0).unwrap_err().0,
            FailureReason::UnknownBackend
        );
        let (reason, detail) =
            admit(&LIMITS, &Figures { mem_allocated_mb: 3800, ..f }, OC, false, &req(100), &offered, true, 0)
                .unwrap_err();
        assert_eq!(reason, FailureReason::FullCn);
        assert!(detail.contains("3800 MiB allocated"), "{detail}");
        let (_, detail) = admit(&LIMITS, &figures(300), OC, false, &req(100), &offered, true, 0).unwrap_err();
        assert!(detail.contains("300 MiB available"), "{detail}");
        let (_, detail) =
            admit(&LIMITS, &Figures { vcpus_allocated: 8, ..f }, OC, false, &req(1), &offered, true, 0).unwrap_err();
        assert!(detail.starts_with("vCPUs: 8 given out"), "{detail}");
        let (_, detail) =
            admit(&LIMITS, &Figures { disk_available_mb: 1000, ..f }, OC, false, &req(100), &offered, true, 0)
                .unwrap_err();
        assert!(detail.starts_with("disk"), "{detail}");
        let (_, detail) =
            admit(&LIMITS, &Figures { instances: 10, ..f }, OC, false, &req(1), &offered, true, 0).unwrap_err();
        assert!(detail.contains("10 instances"), "{detail}");
        let needs_limits = start_with(
            Requirements { vcpus: 1, mem_mb: 1, features: vec![LIMITS_FEATURE.into()], ..Default::default() },
            "process",
        );
        assert_eq!(
            admit(&LIMITS, &f, OC, false, &needs_limits, &offered, false, 0).unwrap_err().0,
            FailureReason::NoLimits
        );
        assert!(admit(&LIMITS, &f, OC, false, &needs_limits, &offered, true, 0).is_ok());
    }

    #[test]
    fn the_scheduler_overcommit_and_the_charge_it_granted_are_honoured() {
        let offered = vec!["process".to_owned()];
        // 3,840 MiB offered (4,096 − 256 reserve), 3,000 already allocated, 1,000 requested.
        let f = Figures { mem_allocated_mb: 3000, ..figures(4000) };
        assert_eq!(admit(&LIMITS, &f, OC, false, &req(1000), &offered, true, 0).unwrap_err().0, FailureReason::FullCn);
        let doubled = Overcommit { cpu: 4.0, mem: 2.0 };
        assert!(admit(&LIMITS, &f, doubled, false, &req(1000), &offered, true, 0).is_ok());
        // An estimate below the request is what counts; a charge is never above the request.
        let estimated = Start { charge_mb: Some(500), ..req(1000) };
        assert!(admit(&LIMITS, &f, OC, false, &estimated, &offered, true, 0).is_ok());
        let inflated = Start { charge_mb: Some(5000), ..req(100) };
        assert!(admit(&LIMITS, &f, OC, false, &inflated, &offered, true, 0).is_ok());
        // With memory overcommitted the node is READY past its raw memory, FULL past the bound.
        let mut m = StatusMachine::default();
        let over = Figures { mem_allocated_mb: 5000, ..figures(4000) };
        assert_eq!(m.update(0, &LIMITS, &over, doubled, false), NodeStatus::Ready);
        assert_eq!(m.update(0, &LIMITS, &over, OC, false), NodeStatus::Full);
    }

    #[test]
    fn full_turns_ready_only_with_margin_and_after_the_dwell() {
        let mut m = StatusMachine::default();
        assert_eq!(m.update(0, &LIMITS, &figures(4000), OC, false), NodeStatus::Ready);
        assert_eq!(m.update(1_000, &LIMITS, &figures(200), OC, false), NodeStatus::Full);
        // Just above the reserve is not enough: the margin is 5 % of 4096 MiB.
        assert_eq!(m.update(20_000, &LIMITS, &figures(300), OC, false), NodeStatus::Full);
        // Clear, but the dwell is not over yet.
        assert_eq!(m.update(5_000, &LIMITS, &figures(4000), OC, false), NodeStatus::Full);
        assert_eq!(m.update(11_000, &LIMITS, &figures(4000), OC, false), NodeStatus::Ready);
        assert_eq!(m.update(12_000, &LIMITS, &figures(4000), OC, true), NodeStatus::Maintenance);
    }

    proptest! {
        /// Memory oscillating around the reserve makes at most one FULL→READY turn per dwell.
        #[test]
        fn oscillation_does_not_flap(samples in prop::collection::vec(0u64..1000, 1..400)) {
            let mut m = StatusMachine::default();
            let mut turns_to_ready: Vec<u64> = Vec::new();
            let mut last = NodeStatus::Ready;
            for (i, avail) in samples.iter().enumerate() {
                let now = i as u64 * 500;
                let state = m.update(now, &LIMITS, &figures(*avail), OC, false);
                if last == NodeStatus::Full && state == NodeStatus::Ready {
                    turns_to_ready.push(now);
                }
                last = state;
            }
            for pair in turns_to_ready.windows(2) {
                prop_assert!(pair[1] - pair[0] >= LIMITS.dwell_ms, "{:?}", turns_to_ready);
            }
        }
    }
}
