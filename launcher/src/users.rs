//! Who a workload runs as: the launcher's run-as policy.
//!
//! A launcher that runs as root never hands root to a workload unless it was started with
//! `--allow-root` and the workload asks (`run_as_root`). By default (`--run-as auto`) each
//! tenant's workloads run as a user of their own, allocated on first use from `--uid-range`
//! and remembered in `<state>/tenant-uids.json`, so one tenant's workloads cannot read
//! another's results. `--tenant-user` names the user for a tenant; `--run-as USER` puts every
//! workload under one user. A launcher that is not root cannot switch users: its workloads run
//! as the launcher's own user, which is never root.
//!
//! The decision ([`Users::account_for`]) is pure apart from the allocation table it returns
//! for the caller to persist.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use ssntp::payload::{FailureReason, MAX_TENANT_NAME};

use crate::executor::Refusal;

/// A Unix user and group to run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
}

/// The launcher's setting for workloads that do not ask for root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// Each tenant its own user, allocated from `first ..= last` (the uid is also the gid).
    PerTenant {
        /// First uid of the range.
        first: u32,
        /// Last uid of the range.
        last: u32,
    },
    /// Every workload as this user.
    One(Account),
}

/// The tenant key of work that names no tenant.
const NO_TENANT: &str = "-";

/// The run-as policy and the per-tenant allocations made so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Users {
    run_as: RunAs,
    /// Tenants with a user of the operator's choosing (`--tenant-user`).
    named: BTreeMap<String, Account>,
    /// Tenants given a uid from the range, by tenant.
    allocated: BTreeMap<String, u32>,
    allow_root: bool,
}

impl Users {
    /// Every workload as `account`, never root (a launcher that cannot switch users passes its
    /// own account).
    pub fn one(account: Account) -> Self {
        Self { run_as: RunAs::One(account), named: BTreeMap::new(), allocated: BTreeMap::new(), allow_root: false }
    }

    /// A policy with the operator's per-tenant users, the allocations made before (read back
    /// from disk) and whether workloads may ask for root.
    pub fn new(
        run_as: RunAs,
        named: BTreeMap<String, Account>,
        allocated: BTreeMap<String, u32>,
        allow_root: bool,
    ) -> Self {
        Self { run_as, named, allocated, allow_root }
    }

    /// Whether workloads that ask for root get it here (the node offers feature `root`).
    pub fn allows_root(&self) -> bool {
        self.allow_root
    }

    /// The per-tenant allocations, to persist when [`Users::account_for`] says it allocated.
    pub fn allocated(&self) -> &BTreeMap<String, u32> {
        &self.allocated
    }

    /// The account a START runs as: `None` for root (asked for and allowed). The flag says
    /// whether a uid was allocated for a new tenant (persist [`Users::allocated`]).
    ///
    /// # Errors
    /// Root asked for where it is not allowed, a tenant name that is too long, or a range
    /// with no uid left.
    pub fn account_for(&mut self, tenant: Option<&str>, wants_root: bool) -> Result<(Option<Account>, bool), Refusal> {
        if wants_root {
            return if self.allow_root {
                Ok((None, false))
            } else {
                Err((
                    FailureReason::NotPermitted,
                    "the workload asks to run as root and this launcher does not allow it (--allow-root)".into(),
                ))
            };
        }
        let tenant = match tenant {
            Some(t) if t.len() > MAX_TENANT_NAME => {
                return Err((FailureReason::InvalidData, format!("tenant name longer than {MAX_TENANT_NAME} bytes")));
            }
            Some(t) if !t.is_empty() => t,
            _ => NO_TENANT,
        };
        if let Some(account) = self.named.get(tenant) {
            return Ok((Some(*account), false));
        }
        let (first, last) = match self.run_as {
            RunAs::One(account) => return Ok((Some(account), false)),
            RunAs::PerTenant { first, last } => (first, last),
        };
        if let Some(uid) = self.allocated.get(tenant) {
            return Ok((Some(Account { uid: *uid, gid: *uid }), false));
        }
        let taken: std::collections::BTreeSet<u32> = self.allocated.values().copied().collect();
        let Some(uid) = (first..=last).find(|uid| !taken.contains(uid)) else {
            return Err((
                FailureReason::LaunchFailure,
                format!("every uid of --uid-range {first}-{last} belongs to a tenant already"),
            ));
        };
        self.allocated.insert(tenant.to_owned(), uid);
        Ok((Some(Account { uid, gid: uid }), true))
    }
}

/// Parses `UID[:GID]` (numbers only; names are resolved by the caller); `None` when it is not
/// numeric.
pub fn parse_numeric(text: &str) -> Option<Account> {
    let (uid, gid) = match text.split_once(':') {
        Some((u, g)) => (u.parse().ok()?, g.parse().ok()?),
        None => {
            let uid = text.parse().ok()?;
            (uid, uid)
        }
    };
    Some(Account { uid, gid })
}

/// Parses `FIRST-LAST`, a range of at least one uid above 0.
///
/// # Errors
/// A message for the flag's user.
pub fn parse_range(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{text:?}: give FIRST-LAST, two uids above 0 (e.g. 1000000000-1000065535)");
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let (first, last): (u32, u32) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if first == 0 || last < first {
        return Err(bad());
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn per_tenant(first: u32, last: u32) -> Users {
        Users::new(RunAs::PerTenant { first, last }, BTreeMap::new(), BTreeMap::new(), false)
    }

    #[test]
    fn each_tenant_gets_its_own_uid_and_keeps_it() {
        let mut users = per_tenant(5000, 5009);
        let (a, new_a) = users.account_for(Some("acme"), false).unwrap();
        let (b, new_b) = users.account_for(Some("globex"), false).unwrap();
        let (again, new_again) = users.account_for(Some("acme"), false).unwrap();
        assert_eq!((a, new_a), (Some(Account { uid: 5000, gid: 5000 }), true));
        assert_eq!((b, new_b), (Some(Account { uid: 5001, gid: 5001 }), true));
        assert_eq!((again, new_again), (a, false));
        // Untenanted work is a tenant of its own, not anyone's.
        assert_eq!(users.account_for(None, false).unwrap().0, Some(Account { uid: 5002, gid: 5002 }));
        assert_eq!(users.account_for(Some(""), false).unwrap().0, Some(Account { uid: 5002, gid: 5002 }));
        // A restarted launcher reads the table back and gives the same answers.
        let mut restarted =
            Users::new(RunAs::PerTenant { first: 5000, last: 5009 }, BTreeMap::new(), users.allocated().clone(), false);
        assert_eq!(restarted.account_for(Some("globex"), false).unwrap(), (b, false));
    }

    #[test]
    fn root_only_when_allowed_and_asked() {
        let mut users = per_tenant(5000, 5000);
        let (reason, detail) = users.account_for(Some("acme"), true).unwrap_err();
        assert_eq!(reason, FailureReason::NotPermitted);
        assert!(detail.contains("--allow-root"), "{detail}");
        let mut allowing =
            Users::new(RunAs::PerTenant { first: 5000, last: 5000 }, BTreeMap::new(), BTreeMap::new(), true);
        assert_eq!(allowing.account_for(Some("acme"), true).unwrap(), (None, false));
        // Asking is what gets root: the same tenant's other work does not.
        assert_eq!(allowing.account_for(Some("acme"), false).unwrap().0, Some(Account { uid: 5000, gid: 5000 }));
    }

    #[test]
    fn named_users_and_one_user_and_a_full_range() {
        let named = BTreeMap::from([("acme".to_owned(), Account { uid: 700, gid: 70 })]);
        let mut users = Users::new(RunAs::PerTenant { first: 5000, last: 5000 }, named, BTreeMap::new(), false);
        assert_eq!(users.account_for(Some("acme"), false).unwrap(), (Some(Account { uid: 700, gid: 70 }), false));
        users.account_for(Some("globex"), false).unwrap();
        let (reason, detail) = users.account_for(Some("initech"), false).unwrap_err();
        assert_eq!(reason, FailureReason::LaunchFailure);
        assert!(detail.contains("5000-5000"), "{detail}");
        let mut one = Users::one(Account { uid: 65534, gid: 65534 });
        assert_eq!(one.account_for(Some("x"), false).unwrap(), (Some(Account { uid: 65534, gid: 65534 }), false));
        let long = "t".repeat(MAX_TENANT_NAME + 1);
        assert_eq!(one.account_for(Some(&long), false).unwrap_err().0, FailureReason::InvalidData);
    }

    #[test]
    fn flag_values() {
        assert_eq!(parse_numeric("1500"), Some(Account { uid: 1500, gid: 1500 }));
        assert_eq!(parse_numeric("1500:100"), Some(Account { uid: 1500, gid: 100 }));
        assert_eq!(parse_numeric("nobody"), None);
        assert_eq!(parse_range("10-20"), Ok((10, 20)));
        assert!(parse_range("0-20").is_err());
        assert!(parse_range("20-10").is_err());
        assert!(parse_range("x").is_err());
    }

    proptest! {
        /// Never root without asking, never one uid for two tenants, always inside the range.
        #[test]
        fn tenants_never_share_a_uid(tenants in prop::collection::vec(0u8..20, 1..60), size in 1u32..30) {
            let mut users = per_tenant(1000, 1000 + size - 1);
            let mut seen: BTreeMap<String, u32> = BTreeMap::new();
            for t in tenants {
                let name = format!("t{t}");
                match users.account_for(Some(&name), false) {
                    Ok((Some(a), _)) => {
                        prop_assert!(a.uid != 0 && (1000..1000 + size).contains(&a.uid));
                        prop_assert_eq!(*seen.entry(name.clone()).or_insert(a.uid), a.uid);
                        prop_assert_eq!(seen.values().filter(|u| **u == a.uid).count(), 1);
                    }
                    Ok((None, _)) => prop_assert!(false, "root without asking"),
                    Err(_) => prop_assert!(seen.len() >= size as usize),
                }
            }
        }
    }
}
