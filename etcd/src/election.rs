//! Leader election on an etcd lease, for controllers sharing an etcd store and for schedulers of
//! which one is active (the timings of Kubernetes' leader election: a 15 s lease, renewed every
//! 2 s, given up 10 s after the last renewal that succeeded).
//!
//! - [`Tenure`] decides, from renewals and a clock, whether this controller may still act as
//!   the leader (pure).
//! - [`campaign`] waits until this process holds the election's key (created under its lease,
//!   only if absent), reporting who leads meanwhile; [`Leading::hold`] renews the lease and ends
//!   when leadership is lost; [`Leading::resign`] hands it over at once.
//!
//! A leader cut off from etcd stops acting at the renew deadline, 5 s before its lease can
//! expire and a standby can win. Writes to a shared store also compare the key's
//! `create_revision` (the [`Fence`]), so one tried in between is refused by etcd itself.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::{Client, Compare, Op, Txn};

/// The leader key's identity: writes are valid only while `key` is the one created at
/// `create_revision` (by this process's campaign).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The election key.
    pub key: String,
    /// Its `create_revision` when this process won.
    pub create_revision: i64,
}

/// The election's timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The lease's time to live: how long a silent leader keeps the key.
    pub lease: Duration,
    /// How long after its last successful renewal a leader gives up (less than `lease`).
    pub renew_deadline: Duration,
    /// How often the lease is renewed, and a standby looks again.
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self { lease: Duration::from_secs(15), renew_deadline: Duration::from_secs(10), retry: Duration::from_secs(2) }
    }
}

/// Who leads, as the leader key says: what a standby redirects to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The leader's UUID.
    pub uuid: ssntp::Uuid,
    /// Where clients reach it, `host:port` (a controller's API, a scheduler's SSNTP port;
    /// empty: nowhere).
    pub addr: String,
    /// When it won, Unix ms.
    pub since_unix_ms: u64,
}

/// Whether a leader may still act: yes until `renew_deadline` after its last renewal (pure).
#[derive(Debug, Clone, Copy)]
pub struct Tenure {
    timing: Timing,
    renewed_at_ms: u64,
}

impl Tenure {
    /// A tenure that starts at `now_ms` (the key was just created).
    pub const fn start(timing: Timing, now_ms: u64) -> Self {
        Self { timing, renewed_at_ms: now_ms }
    }

    /// The lease was renewed at `now_ms`.
    pub fn renewed(&mut self, now_ms: u64) {
        self.renewed_at_ms = self.renewed_at_ms.max(now_ms);
    }

    /// Whether the leader may still act at `now_ms`.
    pub fn holds(&self, now_ms: u64) -> bool {
        let deadline = u64::try_from(self.timing.renew_deadline.as_millis()).unwrap_or(u64::MAX);
        now_ms.saturating_sub(self.renewed_at_ms) < deadline
    }
}

/// Why an election step failed (etcd unreachable, no quorum).
#[derive(Debug, thiserror::Error)]
#[error("leader election: {0}")]
pub struct ElectionError(String);

impl From<crate::client::Error> for ElectionError {
    fn from(e: crate::client::Error) -> Self {
        Self(e.to_string())
    }
}

/// The key the leader of an election named `name` holds under `prefix` (`/drover/leader`,
/// `/drover/scheduler-leader`).
pub fn leader_key(prefix: &str, name: &str) -> String {
    format!("{prefix}/{name}")
}

/// Who leads now, if anyone.
///
/// # Errors
/// etcd's.
pub async fn current(client: &Client, key: &str) -> Result<Option<LeaderInfo>, ElectionError> {
    let got = client.get(key.as_bytes()).await?;
    Ok(got.and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

/// This process leads: its lease, and the fence its writes carry.
#[derive(Debug)]
pub struct Leading {
    client: Client,
    key: String,
    lease: i64,
    /// The fence for the store.
    pub fence: Fence,
    /// What the key says.
    pub info: LeaderInfo,
    timing: Timing,
}

/// Campaigns for `key` until this process leads; `standby` hears who leads meanwhile (or
/// `None`), or why etcd could not be asked, each time it looks.
pub async fn campaign(
    client: Client,
    key: &str,
    me: LeaderInfo,
    timing: Timing,
    mut standby: impl FnMut(Result<Option<LeaderInfo>, ElectionError>),
) -> Leading {
    loop {
        match try_once(client.clone(), key, &me, timing).await {
            Ok(Ok(leading)) => return leading,
            Ok(Err(other)) => standby(Ok(other)),
            Err(e) => standby(Err(e)),
        }
        tokio::time::sleep(timing.retry).await;
    }
}

/// One attempt: creates the key if absent. `Ok(Err(leader))` when another holds it.
async fn try_once(
    client: Client,
    key: &str,
    me: &LeaderInfo,
    timing: Timing,
) -> Result<Result<Leading, Option<LeaderInfo>>, ElectionError> {
    if let Some(kv) = client.get(key.as_bytes()).await? {
        return Ok(Err(serde_json::from_slice(&kv.value).ok()));
    }
    let ttl = i64::try_from(timing.lease.as_secs()).unwrap_or(15).max(2);
    let lease = client.lease_grant(ttl).await?;
    let me = LeaderInfo { since_unix_ms: drover_model::unix_ms_now(), ..me.clone() };
    let value = serde_json::to_vec(&me).expect("leader info serialises");
    let txn = Txn {
        compare: vec![Compare::CreateRevision(key.as_bytes().to_vec(), 0)],
        success: vec![Op::Put { key: key.as_bytes().to_vec(), value, lease }],
        failure: vec![Op::get(key)],
    };
    let answer = match client.txn(&txn).await {
        Ok(a) => a,
        Err(e) => {
            let _ = client.lease_revoke(lease).await;
            return Err(e.into());
        }
    };
    if answer.succeeded {
        let fence = Fence { key: key.to_owned(), create_revision: answer.revision };
        return Ok(Ok(Leading { client, key: key.to_owned(), lease, fence, info: me, timing }));
    }
    // Lost the race: give the lease back and report the winner.
    let _ = client.lease_revoke(lease).await;
    let winner = answer.reads.first().and_then(|kvs| kvs.first()).and_then(|kv| serde_json::from_slice(&kv.value).ok());
    Ok(Err(winner))
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// etcd did not answer until the renew deadline (no quorum, or this machine is cut off):
    /// no one may lead until it answers again.
    Unreachable(String),
    /// etcd answered that the lease or the key is gone: another may lead now.
    Superseded(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(why) | Self::Superseded(why) => f.write_str(why),
        }
    }
}

impl Leading {
    /// Renews the lease every `retry` until leadership is lost (the renew deadline passed
    /// without a renewal, the lease expired, or the key is no longer ours); returns why.
    pub async fn hold(&self, now_ms: impl Fn() -> u64) -> Lost {
        let client = &self.client;
        let mut tenure = Tenure::start(self.timing, now_ms());
        loop {
            tokio::time::sleep(self.timing.retry).await;
            let asked_at = now_ms();
            let attempt = tokio::time::timeout(self.timing.retry, async {
                let ttl = client.lease_keep_alive(self.lease).await?;
                // The key is still the one this campaign created.
                let got = client.get(self.key.as_bytes()).await?;
                let ours = got.is_some_and(|kv| kv.create_revision == self.fence.create_revision);
                Ok::<_, crate::client::Error>((ttl, ours))
            })
            .await;
            match attempt {
                // Renewed as of when it was asked: the lease runs from then at the latest.
                Ok(Ok((ttl, _))) if ttl <= 0 => return Lost::Superseded("the lease expired".into()),
                Ok(Ok((_, true))) => tenure.renewed(asked_at),
                Ok(Ok((_, false))) => return Lost::Superseded("the leader key is no longer ours".into()),
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the leader lease failed"),
                Err(_) => tracing::warn!("renewing the leader lease timed out"),
            }
            if !tenure.holds(now_ms()) {
                return Lost::Unreachable(format!(
                    "no renewal for {:?}: etcd unreachable or without quorum",
                    self.timing.renew_deadline
                ));
            }
        }
    }

    /// Every `every`, compacts etcd's history up to the revision seen at the previous round, as
    /// kube-apiserver does: superseded values go, while watchers keep at least `every` of
    /// history. Runs until dropped.
    pub async fn compact_history(&self, every: Duration) {
        let client = &self.client;
        let mut previous = None;
        loop {
            tokio::time::sleep(every).await;
            let Ok(now) = client.status().await else { continue };
            if let Some(target) = previous.filter(|p| *p > 0) {
                match client.compact(target).await {
                    Ok(_) => tracing::debug!(revision = target, "etcd history compacted"),
                    Err(e) => tracing::debug!(error = %e, "etcd compaction skipped"),
                }
            }
            previous = Some(now);
        }
    }

    /// Waits until etcd answers a linearizable read again (it has a quorum, and this process
    /// reaches it), asking every `retry`.
    pub async fn wait_for_quorum(&self) {
        loop {
            tokio::time::sleep(self.timing.retry).await;
            if self.client.range(self.key.as_bytes(), None, 1).await.is_ok() {
                return;
            }
        }
    }

    /// Gives leadership up now (a clean shutdown): deletes the key if still ours and revokes
    /// the lease, so a standby need not wait for it to expire.
    pub async fn resign(&self) {
        let client = &self.client;
        let txn = Txn {
            compare: vec![Compare::CreateRevision(self.key.as_bytes().to_vec(), self.fence.create_revision)],
            success: vec![Op::Delete { key: self.key.as_bytes().to_vec(), end: None }],
            failure: vec![],
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = client.txn(&txn).await;
            let _ = client.lease_revoke(self.lease).await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_campaign_wins_the_other_waits_and_leads_once_the_first_resigns_and_history_is_compacted() {
        let Some(etcd) = testutil::etcd::EtcdCluster::start("one_campaign_wins", 1, &[]) else { return };
        let client = Client::new(&etcd.endpoints(), None, Duration::from_secs(5)).unwrap();
        let timing = Timing {
            lease: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(3),
            retry: Duration::from_millis(200),
        };
        let me =
            |n: u8| LeaderInfo { uuid: ssntp::Uuid::from_bytes([n; 16]), addr: format!("host{n}:1"), since_unix_ms: 0 };
        let key = leader_key("/t", "leader");
        let first = campaign(client.clone(), &key, me(1), timing, |_| {}).await;
        let mut seen = Vec::new();
        let second = tokio::time::timeout(
            Duration::from_secs(1),
            campaign(client.clone(), &key, me(2), timing, |l| seen.push(l)),
        );
        assert!(second.await.is_err(), "a second campaign waits while the first leads");
        assert!(seen.iter().any(|l| matches!(l, Ok(Some(info)) if info.uuid == me(1).uuid)), "and hears who leads");
        // History: two values of one key, then a compaction from the leader's task.
        client.txn(&Txn { success: vec![Op::put("/t/x", "1")], ..Txn::default() }).await.unwrap();
        let old = client.status().await.unwrap();
        client.txn(&Txn { success: vec![Op::put("/t/x", "2")], ..Txn::default() }).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_millis(2500), first.compact_history(Duration::from_secs(1))).await;
        let again = client.compact(old).await;
        assert!(again.is_err(), "revision {old} was compacted already: {again:?}");
        first.resign().await;
        let second =
            tokio::time::timeout(Duration::from_secs(3), campaign(client.clone(), &key, me(2), timing, |_| {}))
                .await
                .expect("leads once the first resigned");
        assert_eq!(current(&client, &key).await.unwrap().map(|l| l.uuid), Some(me(2).uuid));
        assert!(second.fence.create_revision > first.fence.create_revision, "a later term");
    }

    #[test]
    fn a_leader_acts_until_the_renew_deadline_after_its_last_renewal() {
        let timing = Timing::default();
        let mut tenure = Tenure::start(timing, 1_000);
        assert!(tenure.holds(10_999));
        assert!(!tenure.holds(11_000), "10 s without a renewal");
        tenure.renewed(9_000);
        assert!(tenure.holds(18_999));
        tenure.renewed(5_000);
        assert!(tenure.holds(18_999), "a late answer of an older renewal does not shorten it");
        assert!(timing.renew_deadline < timing.lease, "a leader gives up before a standby may win");
    }
}
