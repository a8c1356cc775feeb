//! Whether work fits a node's resources: the one rule the scheduler places by and a launcher
//! admits by, so that what the scheduler sends a node is never refused there for want of room.
//!
//! A node offers `cpus_online × cpu` vCPUs and `mem_total_mb × mem` MiB ([`Overcommit`]), and
//! real memory as it is now (`mem_available_mb`, never overcommitted). Work is charged what the
//! scheduler granted it: its request, or with estimation on, its workload's memory estimate
//! (never more than the request). The launcher learns the overcommit from the cluster
//! configuration and each instance's charge from its START, and checks with the same function.

/// How far a node's vCPUs and memory may be promised beyond what it has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overcommit {
    /// vCPUs offered per online CPU.
    pub cpu: f64,
    /// MiB offered per MiB of memory.
    pub mem: f64,
}

impl Default for Overcommit {
    /// The scheduler's defaults: 4 vCPUs per CPU, memory not overcommitted.
    fn default() -> Self {
        Self { cpu: 4.0, mem: 1.0 }
    }
}

/// What a node has, as it reports it (any reserve for the system already taken off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    /// Online CPUs.
    pub cpus_online: u32,
    /// Memory, MiB.
    pub mem_total_mb: u64,
    /// Memory actually available right now, MiB.
    pub mem_available_mb: u64,
}

impl Capacity {
    /// vCPUs within the overcommit bound.
    pub fn cpu_limit(&self, overcommit: Overcommit) -> u64 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // small, non-negative
        let limit = (f64::from(self.cpus_online) * overcommit.cpu).floor() as u64;
        limit
    }

    /// Memory within the overcommit bound, MiB.
    pub fn mem_limit(&self, overcommit: Overcommit) -> u64 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        // non-negative, below 2^53 MiB
        let limit = (self.mem_total_mb as f64 * overcommit.mem).floor() as u64;
        limit
    }
}

/// What a node has given out already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// vCPUs of the work on it.
    pub vcpus: u64,
    /// Memory charged to the work on it, MiB.
    pub mem_mb: u64,
    /// Memory charged to work sent to it that it has not confirmed yet, MiB: not yet visible in
    /// its `mem_available_mb`, so it is taken off that too.
    pub mem_unconfirmed_mb: u64,
}

/// What one piece of work needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory charged, MiB.
    pub mem_mb: u64,
}

/// Which resource is short, in the order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shortfall {
    /// Not enough vCPUs within the overcommit bound.
    Cpu,
    /// Not enough memory within the overcommit bound.
    Memory,
    /// Not enough memory actually available right now.
    AvailableMemory,
}

/// Whether `demand` fits a node with `capacity` that has given out `usage`.
///
/// # Errors
/// The first [`Shortfall`].
pub fn fit(capacity: &Capacity, usage: &Usage, demand: &Demand, overcommit: Overcommit) -> Result<(), Shortfall> {
    if usage.vcpus + u64::from(demand.vcpus) > capacity.cpu_limit(overcommit) {
        return Err(Shortfall::Cpu);
    }
    if usage.mem_mb + demand.mem_mb > capacity.mem_limit(overcommit) {
        return Err(Shortfall::Memory);
    }
    if demand.mem_mb + usage.mem_unconfirmed_mb > capacity.mem_available_mb {
        return Err(Shortfall::AvailableMemory);
    }
    Ok(())
}

/// How many more pieces of work like `demand` fit a node, one after another, by [`fit`]'s rule
/// (for estimates such as a batch's remaining slots). Work that needs nothing counts as one
/// MiB and one vCPU's worth of nothing: it is bounded by the other resources, or by `u64::MAX`.
pub fn slots(capacity: &Capacity, usage: &Usage, demand: &Demand, overcommit: Overcommit) -> u64 {
    let per = |room: u64, each: u64| room.checked_div(each).unwrap_or(u64::MAX);
    let vcpus = per(capacity.cpu_limit(overcommit).saturating_sub(usage.vcpus), u64::from(demand.vcpus));
    let memory = per(capacity.mem_limit(overcommit).saturating_sub(usage.mem_mb), demand.mem_mb);
    // Each one placed is unconfirmed until the node reports it, so available memory is shared.
    let available = per(capacity.mem_available_mb.saturating_sub(usage.mem_unconfirmed_mb), demand.mem_mb);
    vcpus.min(memory).min(available)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NODE: Capacity = Capacity { cpus_online: 2, mem_total_mb: 1000, mem_available_mb: 900 };

    #[test]
    fn each_resource_bounds_and_names_itself() {
        let oc = Overcommit { cpu: 2.0, mem: 1.5 };
        let none = Usage::default();
        assert_eq!(fit(&NODE, &Usage { vcpus: 4, ..none }, &Demand { vcpus: 1, mem_mb: 1 }, oc), Err(Shortfall::Cpu));
        assert_eq!(fit(&NODE, &Usage { vcpus: 3, ..none }, &Demand { vcpus: 1, mem_mb: 1 }, oc), Ok(()));
        let used = Usage { mem_mb: 1400, ..none };
        assert_eq!(fit(&NODE, &used, &Demand { vcpus: 1, mem_mb: 101 }, oc), Err(Shortfall::Memory));
        assert_eq!(fit(&NODE, &used, &Demand { vcpus: 1, mem_mb: 100 }, oc), Ok(()));
        let in_flight = Usage { mem_unconfirmed_mb: 850, ..none };
        assert_eq!(fit(&NODE, &in_flight, &Demand { vcpus: 1, mem_mb: 51 }, oc), Err(Shortfall::AvailableMemory));
    }

    #[test]
    fn overcommit_lets_promises_exceed_the_machine_but_not_its_free_memory() {
        let oc = Overcommit { cpu: 4.0, mem: 2.0 };
        let used = Usage { vcpus: 1, mem_mb: 1500, mem_unconfirmed_mb: 0 };
        assert_eq!(fit(&NODE, &used, &Demand { vcpus: 1, mem_mb: 500 }, oc), Ok(()), "2 × 1000 MiB offered");
        assert_eq!(fit(&NODE, &used, &Demand { vcpus: 1, mem_mb: 500 }, Overcommit::default()), Err(Shortfall::Memory));
    }

    proptest! {
        /// Whatever fits stays within every bound; a bigger overcommit never turns a fit away.
        #[test]
        fn a_fit_is_within_bounds_and_monotonic_in_overcommit(
            cpus in 0u32..64, total in 0u64..100_000, avail in 0u64..100_000,
            vcpus_used in 0u64..512, mem_used in 0u64..200_000, unconfirmed in 0u64..100_000,
            vcpus in 0u32..16, mem in 0u64..50_000, cpu_oc in 0.1f64..8.0, mem_oc in 0.1f64..4.0, extra in 0.0f64..4.0,
        ) {
            let cap = Capacity { cpus_online: cpus, mem_total_mb: total, mem_available_mb: avail };
            let usage = Usage { vcpus: vcpus_used, mem_mb: mem_used, mem_unconfirmed_mb: unconfirmed };
            let demand = Demand { vcpus, mem_mb: mem };
            let oc = Overcommit { cpu: cpu_oc, mem: mem_oc };
            if fit(&cap, &usage, &demand, oc).is_ok() {
                prop_assert!(vcpus_used + u64::from(vcpus) <= cap.cpu_limit(oc));
                prop_assert!(mem_used + mem <= cap.mem_limit(oc));
                prop_assert!(mem + unconfirmed <= avail);
                let more = Overcommit { cpu: cpu_oc + extra, mem: mem_oc + extra };
                prop_assert!(fit(&cap, &usage, &demand, more).is_ok());
            }
        }
    }

    proptest! {
        /// `slots` is exactly how many times `fit` says yes, adding one piece at a time.
        #[test]
        fn slots_agree_with_fit(
            cpus in 1u32..8, total in 1u64..4000, available in 0u64..4000,
            used_vcpus in 0u64..16, used_mb in 0u64..4000, unconfirmed in 0u64..2000,
            vcpus in 1u32..4, mem in 1u64..1500, cpu_oc in 1u32..5, mem_oc in 1u32..3,
        ) {
            let capacity = Capacity { cpus_online: cpus, mem_total_mb: total, mem_available_mb: available };
            let oc = Overcommit { cpu: f64::from(cpu_oc), mem: f64::from(mem_oc) };
            let demand = Demand { vcpus, mem_mb: mem };
            let mut usage = Usage { vcpus: used_vcpus, mem_mb: used_mb, mem_unconfirmed_mb: unconfirmed };
            let n = slots(&capacity, &usage, &demand, oc);
            for _ in 0..n {
                prop_assert!(fit(&capacity, &usage, &demand, oc).is_ok());
                usage.vcpus += u64::from(vcpus);
                usage.mem_mb += mem;
                usage.mem_unconfirmed_mb += mem;
            }
            prop_assert!(fit(&capacity, &usage, &demand, oc).is_err(), "one more than slots() fits");
        }
    }
}
