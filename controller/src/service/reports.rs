//! What the cluster reports: a frame from the scheduler or a node becomes the instance's next
//! state and the commands it needs; batches learn how their instances ended.

use super::*;

impl Service {
    /// Applies a frame from the cluster; returns the commands it calls for.
    ///
    /// # Errors
    /// The store.
    pub fn report(&self, origin: Uuid, message: &Message, now_ms: u64) -> Result<Vec<Message>, ServiceError> {
        self.report_many(&[(origin, message.clone())], now_ms)
    }

    /// Whether applying `message` may touch the store: a heartbeat (STATS without a digest
    /// page), a node's arrival or a log answer does not, so the link applies none of those
    /// through the store — a thousand nodes' heartbeats cost no transaction.
    pub fn reads_store(message: &Message) -> bool {
        match message {
            Message::Stats(stats) => stats.digest.is_some(),
            Message::InstanceNews(_)
            | Message::InstanceQueued(_)
            | Message::StartFailure(_)
            | Message::InstanceStarted(_)
            | Message::InstanceExited(_)
            | Message::InstanceStopped(_)
            | Message::NodeLost(_)
            | Message::InstanceMigrated(_) => true,
            Message::CommandFailure(f) => f.command == ssntp::Command::Migrate.to_string(),
            _ => false,
        }
    }

    /// Applies frames from the cluster in order, the instance changes of consecutive frames in
    /// one transaction (one fsync for a burst of reports); returns the commands they call for.
    ///
    /// # Errors
    /// The store.
    pub fn report_many(&self, frames: &[(Uuid, Message)], now_ms: u64) -> Result<Vec<Message>, ServiceError> {
        let mut out = Vec::new();
        let mut changes = Vec::new();
        for (origin, message) in frames {
            match message {
                Message::Stats(stats) => {
                    self.digest_changes(*origin, stats, now_ms, &mut changes, &mut out)?;
                    continue;
                }
                Message::InstanceNews(news) => {
                    self.news_changes(*origin, news, &mut changes, &mut out)?;
                    continue;
                }
                _ => {}
            }
            let (more, commands) = self.changes_for(*origin, message)?;
            changes.extend(more);
            out.extend(commands);
        }
        out.extend(self.apply_changes(changes, now_ms)?);
        Ok(out)
    }

    /// The instance changes a frame (other than STATS and INSTANCE_NEWS) asks for, and commands to send at once.
    pub(super) fn changes_for(
        &self,
        origin: Uuid,
        message: &Message,
    ) -> Result<(Vec<Change>, Vec<Message>), ServiceError> {
        // Which node a report about one instance comes from.
        let from_node = match message {
            Message::InstanceStarted(e) | Message::InstanceStopped(e) => {
                Some((e.instance_uuid, e.node_uuid.unwrap_or(origin)))
            }
            Message::InstanceExited(e) => Some((e.instance_uuid, e.node_uuid)),
            _ => None,
        };
        if let Some((instance, node)) = from_node {
            if let Some(State::Running { node: running_on }) = self.store.instance(instance)?.map(|r| r.life.state) {
                if running_on != node {
                    // A stale copy (its node was lost and came back, or a resent START raced).
                    let commands = match message {
                        Message::InstanceStarted(_) => vec![stop(instance, node)],
                        _ => Vec::new(),
                    };
                    return Ok((Vec::new(), commands));
                }
            }
        }
        let (inputs, why): (Vec<(Uuid, Input)>, String) = match message {
            Message::InstanceQueued(q) => {
                (vec![(q.instance_uuid, Input::Queued { reason: q.reason.clone() })], q.reason.clone())
            }
            Message::StartFailure(f) => {
                let input = Input::StartFailed { reason: f.reason, detail: f.detail.clone(), node: f.node_uuid };
                (vec![(f.instance_uuid, input)], format!("start failed: {:?}: {}", f.reason, f.detail))
            }
            Message::InstanceStarted(e) => {
                (vec![(e.instance_uuid, Input::Started { node: e.node_uuid.unwrap_or(origin) })], String::new())
            }
            Message::InstanceExited(e) => {
                let why =
                    format!("exited: {:?}{}", e.reason, e.exit_code.map_or(String::new(), |c| format!(", code {c}")));
                (vec![(e.instance_uuid, Input::Exited { code: e.exit_code, reason: e.reason })], why)
            }
            Message::InstanceStopped(e) => {
                // A stop the user did not ask for was the node's: an evacuation.
                let user = self.store.instance(e.instance_uuid)?.is_some_and(|r| r.life.stop_requested);
                (
                    vec![(e.instance_uuid, Input::Stopped { evacuated: !user })],
                    if user { "stopped".into() } else { "evacuated".into() },
                )
            }
            Message::InstanceMigrated(m) => {
                self.migrating.lock().expect("migrating lock").remove(&m.instance_uuid);
                let (from, to) = (m.from_node, m.to_node.unwrap_or(m.from_node));
                let why = if m.ok {
                    format!("migrated live from node {} to {}", from.short(), to.short())
                } else {
                    format!("live migration abandoned, runs on at node {}: {}", from.short(), m.detail)
                };
                let to = if m.ok { to } else { from };
                (vec![(m.instance_uuid, Input::Migrated { from, to })], why)
            }
            Message::CommandFailure(f) if f.command == ssntp::Command::Migrate.to_string() => {
                let Some(id) = f.instance_uuid else { return Ok((Vec::new(), Vec::new())) };
                self.migrating.lock().expect("migrating lock").remove(&id);
                (vec![(id, Input::Noted)], format!("live migration refused: {}", f.detail))
            }
            Message::NodeLost(l) => {
                // What the scheduler knew ran there, and what this controller believes runs
                // there: a scheduler that restarted knows nothing of it, and says so with an
                // empty list.
                self.feeds.lock().expect("feeds lock").lost(l.node_uuid);
                let mut lost: Vec<Uuid> = l.instances.clone();
                lost.extend(self.store.running_on(l.node_uuid));
                lost.sort_unstable();
                lost.dedup();
                (lost.into_iter().map(|i| (i, Input::NodeLost)).collect(), format!("node {} lost", l.node_uuid.short()))
            }
            _ => return Ok((Vec::new(), Vec::new())),
        };
        Ok((inputs.into_iter().map(|(id, input)| (id, input, why.clone())).collect(), Vec::new()))
    }

    /// Applies inputs with one explanation to instances in one transaction.
    pub(super) fn apply(
        &self,
        inputs: Vec<(Uuid, Input)>,
        why: &str,
        now_ms: u64,
    ) -> Result<Vec<Message>, ServiceError> {
        self.apply_changes(inputs.into_iter().map(|(id, input)| (id, input, why.to_owned())).collect(), now_ms)
    }

    /// Applies changes in one transaction, each instance's in the order given; returns the
    /// STOPs they call for.
    pub(super) fn apply_changes(&self, changes: Vec<Change>, now_ms: u64) -> Result<Vec<Message>, ServiceError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut order = Vec::new();
        let mut by_id: HashMap<Uuid, Vec<(Input, String)>> = HashMap::new();
        for (id, input, why) in changes {
            by_id
                .entry(id)
                .or_insert_with(|| {
                    order.push(id);
                    Vec::new()
                })
                .push((input, why));
        }
        let mut out = Vec::new();
        let mut ended = HashSet::new();
        let (records, _) = self.store.update_instances_stepwise(&order, |r| {
            let was_final = r.life.state.is_final();
            let mut steps = Vec::new();
            for (input, why) in by_id.remove(&r.uuid).unwrap_or_default() {
                let before = r.life.state.name();
                steps.push(before);
                for action in r.life.handle(now_ms, input) {
                    if let Action::SendStop { node } = action {
                        out.push(stop(r.uuid, node));
                    }
                }
                if let State::Running { node } = r.life.state {
                    r.node = Some(node);
                }
                r.why = explanation(&r.life, before, why, std::mem::take(&mut r.why));
            }
            if !was_final && r.life.state.is_final() {
                ended.insert(r.uuid);
            }
            steps
        })?;
        self.batch_progress(&records, &ended)?;
        Ok(out)
    }

    /// Counts instances of open batches that just ended; a batch whose last instance ended is
    /// an event.
    pub(super) fn batch_progress(&self, records: &[InstanceRecord], ended: &HashSet<Uuid>) -> Result<(), ServiceError> {
        let mut finished = Vec::new();
        let mut each = Vec::new();
        {
            let mut batches = self.batches.lock().expect("batches lock");
            for record in records.iter().filter(|r| ended.contains(&r.uuid)) {
                let Some(batch_id) = record.batch else { continue };
                let Some(batch) = batches.get_mut(&batch_id) else { continue };
                batch.left = batch.left.saturating_sub(1);
                let completed = matches!(record.life.state, State::Exited { .. });
                if completed {
                    batch.exited += 1;
                } else {
                    batch.failed += 1;
                }
                each.push((record, batch_id, completed));
                if batch.left == 0 {
                    if let Some(b) = batches.remove(&batch_id) {
                        finished.push((batch_id, b));
                    }
                }
            }
        }
        // sd-taskpacker's BatchComplete / BatchFailed: one event per instance, with its
        // parameters and the estimated slots remaining per size class.
        let slots = self.slots.lock().expect("slots lock").clone();
        for (record, batch_id, completed) in each {
            let kind = if completed { "batch_complete" } else { "batch_failed" };
            let detail = crate::store::EventDetail {
                workload: Some(record.workload.clone()),
                node: record.node,
                to: Some(record.life.state.name().to_owned()),
                exit_code: record.life.exit_code,
                batch: Some(batch_id),
                kind: Some(kind.to_owned()),
                slots: Some(slots.clone()),
                params: Some(record.params.clone()),
                ..crate::store::EventDetail::default()
            };
            let what = format!("{kind}: instance of {} in batch {batch_id}", record.workload);
            self.store.note_detail(&record.tenant, Some(record.uuid), what, detail)?;
        }
        for (id, b) in finished {
            let verdict = if b.failed == 0 { "completed" } else { "failed" };
            self.store.note(
                &b.tenant,
                None,
                format!("batch {id} of {} {verdict}: {} exited, {} failed or stopped", b.workload, b.exited, b.failed),
            )?;
        }
        Ok(())
    }
}

/// What an instance's WHY says after an input explained by `why` moved it on from the state
/// named `before`: the words of the change that led to the state it is in, never those of an
/// earlier one. A state reached at the user's request says so, whatever report completed it.
fn explanation(life: &crate::lifecycle::Lifecycle, before: &str, why: String, old: String) -> String {
    let changed = life.state.name() != before;
    match &life.state {
        State::Canceled if changed && life.cancel_requested => "canceled at the user's request".to_owned(),
        State::Stopped if changed && life.stop_requested => "stopped at the user's request".to_owned(),
        _ if !why.is_empty() => why,
        _ if changed => String::new(),
        _ => old,
    }
}
