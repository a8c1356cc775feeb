//! Real versus requested memory, per workload (Borg-style).
//!
//! An estimate starts at the request. After a warm-up of a few samples it decays towards the
//! observed peak plus a margin, a fraction of the gap per sample; when usage rises above it, it
//! jumps back up at once. It never exceeds the request: a workload is never charged more than it
//! asked for, and never less than it has been seen to use.

use std::collections::HashMap;

use ssntp::Uuid;

/// Samples before an estimate may fall below the request.
pub const WARM_UP_SAMPLES: u32 = 3;
/// Fraction of the gap between estimate and target closed per sample.
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
}

impl Estimate {
    fn new(request_mb: u64) -> Self {
        Self { request_mb, estimate_mb: request_mb, peak_mb: 0, samples: 0 }
    }

    fn with_margin(usage_mb: u64) -> u64 {
        usage_mb + usage_mb / 10 + MARGIN_MB
    }

    fn observe(&mut self, usage_mb: u64) {
        self.samples = self.samples.saturating_add(1);
        self.peak_mb = self.peak_mb.max(usage_mb);
        let needed = Self::with_margin(usage_mb).min(self.request_mb);
        if needed > self.estimate_mb {
            self.estimate_mb = needed; // jump up at once
            return;
        }
        if self.samples < WARM_UP_SAMPLES {
            return;
        }
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
    pub fn register(&mut self, workload: Uuid, request_mb: u64) {
        let entry = self.by_workload.entry(workload).or_insert_with(|| Estimate::new(request_mb));
        if entry.request_mb != request_mb {
            // The workload's request changed: start over from the new request.
            *entry = Estimate::new(request_mb);
        }
    }

    /// Records one usage sample of an instance of `workload`.
    pub fn observe(&mut self, workload: Uuid, usage_mb: u64) {
        if let Some(e) = self.by_workload.get_mut(&workload) {
            e.observe(usage_mb);
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
        est.register(w, 1000);
        for _ in 0..WARM_UP_SAMPLES - 1 {
            est.observe(w, 100);
            assert_eq!(est.charge(Some(w), 1000), 1000, "no decay during warm-up");
        }
        for _ in 0..40 {
            est.observe(w, 100);
        }
        assert_eq!(est.charge(Some(w), 1000), 100 + 10 + MARGIN_MB, "converges to peak plus margin");
        est.observe(w, 600);
        assert_eq!(est.charge(Some(w), 1000), 600 + 60 + MARGIN_MB, "jumps up at once");
        est.observe(w, 5000);
        assert_eq!(est.charge(Some(w), 1000), 1000, "never above the request");
        est.register(w, 2000);
        assert_eq!(est.charge(Some(w), 2000), 2000, "a new request starts over");
    }

    proptest! {
        #[test]
        fn estimate_stays_between_last_usage_and_request(request in 1u64..100_000, usages in prop::collection::vec(0u64..200_000, 1..60)) {
            let w = Uuid::from_bytes([2; 16]);
            let mut est = Estimator::default();
            est.register(w, request);
            for usage in usages {
                est.observe(w, usage);
                let charge = est.charge(Some(w), request);
                prop_assert!(charge <= request);
                prop_assert!(charge >= usage.min(request), "charge {} below usage {}", charge, usage);
            }
        }
    }
}
