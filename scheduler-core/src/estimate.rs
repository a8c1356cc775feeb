//! Real versus requested memory, per workload (Borg-style).
//!
//! An estimate starts at the request. Usage samples arrive when they change (launchers report
//! usage only when it moves), so a usage that holds is still evidence: once a workload has been
//! watched for a warm-up, its estimate decays with time ([`Estimator::settle`]) towards the
//! observed peak plus a margin, a fraction of the gap per step; when usage rises above it, it
//! jumps back up at once. It never exceeds the request: a workload is never charged more than it
//! asked for, and never less than it has been seen to use.

use std::collections::HashMap;

use ssntp::Uuid;

/// How long a workload is watched, from its first sample, before its estimate may fall below
/// the request, ms.
pub const WARM_UP_MS: u64 = 1_500;
/// Time between two decay steps, ms.
pub const STEP_MS: u64 = 500;
/// Fraction of the gap between estimate and target closed per step.
pub const DECAY: f64 = 0.25;
/// Margin over the observed peak: 10 % plus this many MiB.
pub const MARGIN_MB: u64 = 16;

/// The estimate of one workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// What the workload asked for, MiB.
    pub request_mb: u64,
    /// Current estimate, MiB (≤ request).
    pub estimate_mb: u64,
    /// Highest usage seen, MiB.
    pub peak_mb: u64,
    /// Samples seen.
    pub samples: u32,
    /// When it was last registered or sampled (monotonic ms).
    pub used_ms: u64,
    /// When the first sample came (monotonic ms).
    pub first_sample_ms: Option<u64>,
    /// When the estimate last stepped down (monotonic ms).
    pub stepped_ms: u64,
}

impl Estimate {
    fn new(request_mb: u64) -> Self {
        Self {
            request_mb,
            estimate_mb: request_mb,
            peak_mb: 0,
            samples: 0,
            used_ms: 0,
            first_sample_ms: None,
            stepped_ms: 0,
        }
    }

    fn with_margin(usage_mb: u64) -> u64 {
        usage_mb + usage_mb / 10 + MARGIN_MB
    }

    fn observe(&mut self, usage_mb: u64, now_ms: u64) {
        self.samples = self.samples.saturating_add(1);
        self.used_ms = now_ms;
        self.first_sample_ms.get_or_insert(now_ms);
        self.peak_mb = self.peak_mb.max(usage_mb);
        let needed = Self::with_margin(usage_mb).min(self.request_mb);
        if needed > self.estimate_mb {
            self.estimate_mb = needed; // jump up at once
        }
    }

    fn settle(&mut self, now_ms: u64) {
        let Some(first) = self.first_sample_ms else { return };
        if now_ms < first.saturating_add(WARM_UP_MS) || now_ms < self.stepped_ms.saturating_add(STEP_MS) {
            return;
        }
        self.stepped_ms = now_ms;
        let target = Self::with_margin(self.peak_mb).min(self.request_mb);
        if self.estimate_mb > target {
            let gap = self.estimate_mb - target;
            // Round the step up so the estimate always reaches the target.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // gap·DECAY ≤ gap
            let step = ((gap as f64) * DECAY).ceil() as u64;
            self.estimate_mb -= step.min(gap);
        }
    }
}

/// Estimates of every workload seen.
#[derive(Debug, Default)]
pub struct Estimator {
    by_workload: HashMap<Uuid, Estimate>,
}

impl Estimator {
    /// The memory to charge for a new instance of `workload` requesting `request_mb`.
    pub fn charge(&self, workload: Option<Uuid>, request_mb: u64) -> u64 {
        workload.and_then(|w| self.by_workload.get(&w)).map_or(request_mb, |e| e.estimate_mb.min(request_mb))
    }

    /// Records the request of a workload (the first START of it creates the estimate).
    pub fn register(&mut self, workload: Uuid, request_mb: u64, now_ms: u64) {
        let entry = self.by_workload.entry(workload).or_insert_with(|| Estimate::new(request_mb));
        if entry.request_mb != request_mb {
            // The workload's request changed: start over from the new request.
            *entry = Estimate::new(request_mb);
        }
        entry.used_ms = now_ms;
    }

    /// Records one usage sample of an instance of `workload` at `now_ms`.
    pub fn observe(&mut self, workload: Uuid, usage_mb: u64, now_ms: u64) {
        if let Some(e) = self.by_workload.get_mut(&workload) {
            e.observe(usage_mb, now_ms);
        }
    }

    /// Forgets the estimates of workloads neither started nor sampled for `idle_ms`.
    pub fn prune(&mut self, now_ms: u64, idle_ms: u64) {
        self.by_workload.retain(|_, e| now_ms.saturating_sub(e.used_ms) < idle_ms);
    }

    /// Lets time act: each estimate past its warm-up closes a step of its gap every
    /// [`STEP_MS`].
    pub fn settle(&mut self, now_ms: u64) {
        for e in self.by_workload.values_mut() {
            e.settle(now_ms);
        }
    }

    /// The estimate of a workload.
    pub fn get(&self, workload: Uuid) -> Option<&Estimate> {
        self.by_workload.get(&workload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn starts_at_request_decays_after_warm_up_and_jumps_back_up() {
        let w = Uuid::from_bytes([1; 16]);
        let mut est = Estimator::default();
        assert_eq!(est.charge(Some(w), 1000), 1000, "unknown workload: the request");
        est.register(w, 1000, 0);
        est.settle(10_000);
        assert_eq!(est.charge(Some(w), 1000), 1000, "no sample, no decay");
        est.observe(w, 100, 0);
        for t in (0..WARM_UP_MS).step_by(100) {
            est.settle(t);
            assert_eq!(est.charge(Some(w), 1000), 1000, "no decay during warm-up");
        }
        est.settle(WARM_UP_MS);
        let one_step = est.charge(Some(w), 1000);
        assert!(one_step < 1000);
        est.settle(WARM_UP_MS + 1);
        assert_eq!(est.charge(Some(w), 1000), one_step, "one step per STEP_MS");
        for step in 1..40 {
            est.settle(WARM_UP_MS + step * STEP_MS);
        }
        assert_eq!(est.charge(Some(w), 1000), 100 + 10 + MARGIN_MB, "converges to peak plus margin");
        est.observe(w, 600, 30_000);
        assert_eq!(est.charge(Some(w), 1000), 600 + 60 + MARGIN_MB, "jumps up at once");
        est.observe(w, 5000, 30_000);
        assert_eq!(est.charge(Some(w), 1000), 1000, "never above the request");
        est.register(w, 2000, 30_000);
        assert_eq!(est.charge(Some(w), 2000), 2000, "a new request starts over");
        est.prune(30_000 + 3_599_999, 3_600_000);
        assert!(est.get(w).is_some(), "used within the hour");
        est.prune(30_000 + 3_600_000, 3_600_000);
        assert!(est.get(w).is_none(), "forgotten after an hour unused");
    }

    proptest! {
        #[test]
        fn estimate_stays_between_last_usage_and_request(request in 1u64..100_000, usages in prop::collection::vec(0u64..200_000, 1..60)) {
            let w = Uuid::from_bytes([2; 16]);
            let mut est = Estimator::default();
            est.register(w, request, 0);
            for (t, usage) in (0u64..).zip(usages) {
                est.observe(w, usage, t * 400);
                est.settle(t * 400);
                let charge = est.charge(Some(w), request);
                prop_assert!(charge <= request);
                prop_assert!(charge >= usage.min(request), "charge {} below usage {}", charge, usage);
            }
        }
    }
}
