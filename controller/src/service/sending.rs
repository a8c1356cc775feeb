//! What goes to the scheduler on the controller's own clock: STARTs whose time has come, and
//! after a reconnect the STARTs that got no answer.

use drover_model::InstanceStatus;

use super::*;

impl Service {
    /// The STARTs due at `now_ms`, each committed as sent before it is returned.
    ///
    /// # Errors
    /// The store.
    pub fn tick(&self, now_ms: u64) -> Result<Vec<Message>, ServiceError> {
        self.resend_unanswered(now_ms)?;
        let due = self.store.due(now_ms, MAX_STARTS_PER_TICK);
        let mut sends = Vec::new();
        let (records, _) = self.store.update_instances(&due, |r| {
            for action in r.life.handle(now_ms, Input::Tick) {
                if let Action::SendStart { restart } = action {
                    sends.push((r.uuid, restart));
                }
            }
        })?;
        let by_id: HashMap<Uuid, &InstanceRecord> = records.iter().map(|r| (r.uuid, r)).collect();
        let mut workloads: HashMap<(String, String), (StoredWorkload, Workload)> = HashMap::new();
        let mut out = Vec::with_capacity(sends.len());
        let mut halted = Vec::new();
        for (id, restart) in sends {
            let record = by_id[&id];
            // No further task of a decommissioned root runs, restarts included.
            if record.task.is_some() && !self.root_allows(record)? {
                halted.push((id, Input::Cancel));
                continue;
            }
            let key = (record.tenant.clone(), record.workload.clone());
            if !workloads.contains_key(&key) {
                match self.store.workload(&record.tenant, &record.workload)? {
                    Some(stored) => {
                        let parsed = stored.parsed()?;
                        workloads.insert(key.clone(), (stored, parsed));
                    }
                    None => {
                        // The workload went away under a pending instance: it cannot start.
                        self.store.update_instance(id, |r| {
                            r.life.state = State::Failed { reason: "its workload was deleted".into() };
                        })?;
                        continue;
                    }
                }
            }
            let (stored, w) = &workloads[&key];
            out.push(start_message(record, stored, w, restart, &self.task_env));
        }
        if !halted.is_empty() {
            out.extend(self.apply(halted, "its root task was decommissioned", now_ms)?);
        }
        let sent = out.iter().filter_map(|m| if let Message::Start(s) = m { Some(s.instance_uuid) } else { None });
        self.watch.lock().expect("watch lock").sent(now_ms, sent);
        Ok(out)
    }

    /// Instances whose START got no answer within the start timeout and still wait for one go
    /// back to `pending`, to be sent again at once.
    fn resend_unanswered(&self, now_ms: u64) -> Result<(), ServiceError> {
        let expired = self.watch.lock().expect("watch lock").expired(now_ms);
        let mut waiting: Vec<Uuid> =
            expired.into_iter().filter(|id| self.store.state_of(*id) == Some(InstanceStatus::Starting)).collect();
        if waiting.is_empty() {
            return Ok(());
        }
        waiting.sort_unstable();
        waiting.dedup();
        tracing::warn!(instances = waiting.len(), "STARTs got no answer in time; sending them again");
        self.store.update_instances(&waiting, |r| {
            r.life.handle(now_ms, Input::Resend);
        })?;
        Ok(())
    }

    /// STARTs sent and watched for an answer, and how many were not watched for want of room.
    pub fn watched_starts(&self) -> (usize, u64) {
        self.watch.lock().expect("watch lock").counts()
    }

    /// After the scheduler connection came back: STARTs that got no answer are sent again at
    /// the next tick.
    ///
    /// # Errors
    /// The store.
    pub fn reconnected(&self, now_ms: u64) -> Result<(), ServiceError> {
        let mut waiting = self.store.instances_in_states(&[InstanceStatus::Starting, InstanceStatus::Queued]);
        waiting.sort_unstable();
        self.store.update_instances(&waiting, |r| {
            r.life.handle(now_ms, Input::Resend);
        })?;
        Ok(())
    }
}
