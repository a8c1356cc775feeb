//! A node's STATS against the store: lost start reports, stale copies, missed ends and silent
//! instances.

use super::*;

impl Service {
    /// Compares a node's STATS with the store (see the module text); returns the STOPs for
    /// copies that should not run there. `grace_ms`: how long an instance may go unreported
    /// before it counts as lost.
    ///
    /// # Errors
    /// The store.
    pub fn reconcile(&self, stats: &Stats, now_ms: u64, grace_ms: u64) -> Result<Vec<Message>, ServiceError> {
        let node = stats.node_uuid;
        let mut out = Vec::new();
        let mut inputs = Vec::new();
        let mut reported = HashSet::with_capacity(stats.instances.len());
        // What the store believes runs here, from the in-memory index: the common case (the
        // node reports what the store expects) needs no read of the store.
        let on_node: HashSet<Uuid> = self.store.running_on(node).into_iter().collect();
        for stat in &stats.instances {
            let id = stat.instance_uuid;
            reported.insert(id);
            let here = on_node.contains(&id);
            match stat.state {
                InstanceState::Active | InstanceState::Pending if !here => {
                    let record = self.store.instance(id)?;
                    let waiting =
                        record.as_ref().is_some_and(|r| matches!(r.life.state, State::Starting | State::Queued { .. }));
                    let unwanted = record.as_ref().is_none_or(|r| {
                        r.life.state.is_final()
                            || matches!(r.life.state, State::Running { node: other } if other != node)
                    });
                    if waiting {
                        // It runs, and the start report was lost (the controller was down, or a
                        // repeated START was refused as a duplicate): this is the copy.
                        inputs.push((id, Input::Started { node }));
                    } else if unwanted {
                        out.push(stop(id, node));
                    }
                }
                // An end the controller missed (it was down, or the event was lost).
                InstanceState::Exited if here => {
                    let reason = if stat.exit_code == Some(0) { ExitReason::Completed } else { ExitReason::Failed };
                    inputs.push((id, Input::Exited { code: stat.exit_code, reason }));
                }
                InstanceState::Stopped if here => {
                    let user = self.store.instance(id)?.is_some_and(|r| r.life.stop_requested);
                    inputs.push((id, Input::Stopped { evacuated: !user }));
                }
                _ => {}
            }
        }
        let mut missing = self.missing.lock().expect("missing lock");
        let mut lost = Vec::new();
        for id in on_node {
            if reported.contains(&id) {
                missing.remove(&id);
                continue;
            }
            let since = *missing.entry(id).or_insert(now_ms);
            if now_ms.saturating_sub(since) >= grace_ms {
                missing.remove(&id);
                lost.push((id, Input::NodeLost));
            }
        }
        drop(missing);
        out.extend(self.apply(inputs, "", now_ms)?);
        out.extend(self.apply(
            lost,
            &format!("not reported by node {} for {} s", node.short(), grace_ms / 1000),
            now_ms,
        )?);
        Ok(out)
    }
}
