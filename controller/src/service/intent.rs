//! What users ask: workloads, launches, batches, and actions on one instance, checked against
//! the tenant.

use super::*;

impl Service {
    /// Checks and saves a workload file; returns its name. `create` refuses to replace one.
    ///
    /// # Errors
    /// An invalid file, an existing workload when `create`, or the store.
    pub fn put_workload(
        &self,
        tenant: &str,
        source: &str,
        format: Format,
        create: bool,
    ) -> Result<String, ServiceError> {
        let parsed = crate::workload::parse(source, format)?;
        let existing = self.store.workload(tenant, &parsed.name)?;
        if create && existing.is_some() {
            return Err(ServiceError::Conflict(format!("workload {} exists; replace it with PUT", parsed.name)));
        }
        let uuid = existing.map_or_else(Uuid::new_v4, |w| w.uuid);
        let stored = StoredWorkload {
            tenant: tenant.to_owned(),
            uuid,
            source: source.to_owned(),
            toml: format == Format::Toml,
            unit_file: None,
        };
        self.store.put_workload(&parsed.name, &stored)?;
        Ok(parsed.name)
    }

    /// Deletes a workload that has no live instance.
    ///
    /// # Errors
    /// Unknown workload, live instances, or the store.
    pub fn delete_workload(&self, tenant: &str, name: &str) -> Result<(), ServiceError> {
        if self.store.workload(tenant, name)?.is_none() {
            return Err(ServiceError::NotFound(format!("workload {name}")));
        }
        let live = self
            .store
            .instances(Some(tenant))?
            .into_iter()
            .filter(|r| r.workload == name && !r.life.state.is_final())
            .count();
        if live > 0 {
            return Err(ServiceError::Conflict(format!(
                "workload {name} has {live} live instances; stop or cancel them first"
            )));
        }
        self.store.delete_workload(tenant, name)?;
        Ok(())
    }

    /// Creates `count` instances of a workload, all pending; they are durable when this returns.
    ///
    /// # Errors
    /// Unknown workload, a count of 0 or over [`MAX_LAUNCH`], or the store.
    pub fn launch(&self, tenant: &str, workload: &str, count: usize, now_ms: u64) -> Result<Vec<Uuid>, ServiceError> {
        self.launch_with(tenant, workload, count, now_ms, &BTreeMap::new())
    }

    /// As [`Service::launch`], with parameters for every instance.
    ///
    /// # Errors
    /// As [`Service::launch`], or a parameter the workload's schema does not allow.
    pub fn launch_with(
        &self,
        tenant: &str,
        workload: &str,
        count: usize,
        now_ms: u64,
        params: &BTreeMap<String, ParamValue>,
    ) -> Result<Vec<Uuid>, ServiceError> {
        let origin = Origin { params: params.clone(), parent: None };
        self.create(tenant, workload, count, now_ms, None, &origin, |_| None).map(|(ids, _, _)| ids)
    }

    /// Creates the instances: pending, or already failed when `refuse` gives a reason for the
    /// workload, so that refused work is never due and no START of it can leave.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create(
        &self,
        tenant: &str,
        workload: &str,
        count: usize,
        now_ms: u64,
        batch: Option<Uuid>,
        origin: &Origin,
        refuse: impl FnOnce(&Workload) -> Option<String>,
    ) -> Result<(Vec<Uuid>, Workload, bool), ServiceError> {
        if count == 0 || count > MAX_LAUNCH {
            return Err(ServiceError::Invalid(format!("count must be 1 to {MAX_LAUNCH}, got {count}")));
        }
        let stored = self
            .store
            .workload(tenant, workload)?
            .ok_or_else(|| ServiceError::NotFound(format!("workload {workload}")))?;
        let parsed = stored.parsed()?;
        if batch.is_some() && parsed.class != WorkClass::Batch {
            return Err(ServiceError::Invalid(format!(
                "workload {workload} is of class workorder; batch submit takes class = \"batch\" workloads"
            )));
        }
        let params = crate::workload::check_parameters(&parsed.parameters, &origin.params)
            .map_err(|m| ServiceError::Invalid(format!("{workload}: {m}")))?;
        let task = match (&origin.parent, parsed.task) {
            (None, true) => Some((workload.to_owned(), None, None)),
            (None, false) => None,
            (Some((parent, facts)), true) => {
                Some((format!("{}/{workload}", facts.name), Some(*parent), Some(facts.root_of(*parent))))
            }
            (Some(_), false) => {
                return Err(ServiceError::Invalid(format!(
                    "workload {workload} is not a task (task files are; a workload file says task = true)"
                )))
            }
        };
        let extra = crate::store::NewInstances { params, task };
        let mut life = Lifecycle::new(parsed.restart, now_ms);
        let why = refuse(&parsed).unwrap_or_default();
        let refused = !why.is_empty();
        if refused {
            life.state = State::Failed { reason: why.clone() };
        }
        let ids = self.store.create_instances_with(tenant, workload, count, &life, &why, batch, &extra)?;
        Ok((ids, parsed, refused))
    }

    /// Creates a batch of `count` instances of a batch-class workload; returns the batch id, the
    /// instances and the workload. Work needing more memory than `largest_node_mb` (the largest
    /// node known, if any) is created already failed, with the reason, and its batch fails.
    ///
    /// # Errors
    /// As [`Service::launch`], or a workload that is not of class batch.
    pub fn submit_batch(
        &self,
        tenant: &str,
        workload: &str,
        count: usize,
        largest_node_mb: Option<u64>,
        now_ms: u64,
        params: &BTreeMap<String, ParamValue>,
    ) -> Result<(Uuid, Vec<Uuid>, Workload), ServiceError> {
        let batch = Uuid::new_v4();
        let too_large = |w: &Workload| {
            let need = w.requirements.mem_mb.max(1);
            let largest = largest_node_mb.filter(|l| *l < need)?;
            Some(format!("needs {need} MiB; the largest node offers {largest} MiB"))
        };
        let origin = Origin { params: params.clone(), parent: None };
        let (ids, parsed, refused) = self.create(tenant, workload, count, now_ms, Some(batch), &origin, too_large)?;
        let open =
            OpenBatch { tenant: tenant.to_owned(), workload: workload.to_owned(), left: count, ..Default::default() };
        self.batches.lock().expect("batches lock").insert(batch, open);
        self.store.note(tenant, None, format!("batch {batch} of {count} × {workload} submitted"))?;
        if refused {
            let records =
                ids.iter().filter_map(|id| self.store.instance(*id).transpose()).collect::<Result<Vec<_>, _>>()?;
            self.batch_progress(&records, &ids.iter().copied().collect())?;
        }
        Ok((batch, ids, parsed))
    }

    /// Marks instances failed at once (a batch refused before any START went out).
    ///
    /// # Errors
    /// The store.
    pub fn fail(&self, ids: &[Uuid], why: &str) -> Result<(), ServiceError> {
        let mut ended = HashSet::new();
        let (records, _) = self.store.update_instances(ids, |r| {
            if !r.life.state.is_final() {
                r.life.state = State::Failed { reason: why.to_owned() };
                why.clone_into(&mut r.why);
                ended.insert(r.uuid);
            }
        })?;
        self.batch_progress(&records, &ended)
    }

    /// A user's stop, cancel or start of an instance of `tenant`.
    ///
    /// # Errors
    /// Not this tenant's instance (reported as not found), a start of an instance that is not
    /// stopped or ended, or the store.
    pub fn user(&self, tenant: &str, instance: Uuid, input: Input, now_ms: u64) -> Result<Vec<Message>, ServiceError> {
        let record = self.owned(tenant, instance)?;
        let state = &record.life.state;
        match input {
            Input::Start if !state.is_final() => {
                return Err(ServiceError::Conflict(format!("instance {instance} is {}, not stopped", state.name())));
            }
            Input::Start if *state == State::Canceled => {
                return Err(ServiceError::Conflict(format!("instance {instance} was canceled for good")));
            }
            Input::Stop if state.is_final() => {
                return Err(ServiceError::Conflict(format!("instance {instance} is already {}", state.name())));
            }
            _ => {}
        }
        let why = match input {
            Input::Stop => "stop requested",
            Input::Cancel => "cancel requested",
            Input::Start => "start requested",
            _ => "",
        };
        self.apply(vec![(instance, input)], why, now_ms)
    }

    /// MIGRATE for a running instance: its START as it would be sent now, moved without a stop
    /// to `to`, or where the scheduler chooses. The outcome arrives as INSTANCE_MIGRATED.
    ///
    /// # Errors
    /// Not this tenant's, not running (409), its workload gone, or the store.
    pub fn migrate(&self, tenant: &str, instance: Uuid, to: Option<Uuid>) -> Result<Vec<Message>, ServiceError> {
        let record = self.owned(tenant, instance)?;
        let State::Running { node } = record.life.state else {
            let state = record.life.state.name();
            return Err(ServiceError::Conflict(format!("instance {instance} is {state}, not running")));
        };
        let Some(start) = self.start_now(&record)? else {
            return Err(ServiceError::Conflict(format!("instance {instance}'s workload was deleted")));
        };
        Ok(vec![self.migrate_message(start, node, to)])
    }

    /// The START an instance's record would be sent now; `None` when its workload is gone.
    fn start_now(&self, record: &InstanceRecord) -> Result<Option<ssntp::payload::Start>, ServiceError> {
        let Some(stored) = self.store.workload(&record.tenant, &record.workload)? else { return Ok(None) };
        match start_message(record, &stored, &stored.parsed()?, false, &self.task_env) {
            Message::Start(start) => Ok(Some(start)),
            _ => unreachable!("start_message makes a START"),
        }
    }

    /// MIGRATE of `start`'s instance from `node`, awaited by a live evacuation until its outcome.
    fn migrate_message(&self, start: ssntp::payload::Start, node: Uuid, to: Option<Uuid>) -> Message {
        self.migrating.lock().expect("migrating lock").insert(start.instance_uuid);
        Message::Migrate(ssntp::payload::Migrate { start, from_node: node, to_node: to })
    }

    /// MIGRATEs for every instance running on `node` that can move live (a `vm` without
    /// disks), where the scheduler chooses: the kind half of an evacuation.
    ///
    /// # Errors
    /// The store.
    pub fn live_moves_from(&self, node: Uuid) -> Result<Vec<Message>, ServiceError> {
        let mut moves = Vec::new();
        for id in self.store.running_on(node) {
            let Some(record) = self.store.instance(id)? else { continue };
            if record.life.state != (State::Running { node }) {
                continue; // it ended or moved meanwhile
            }
            let Some(start) = self.start_now(&record)? else { continue };
            if start.backend.migrates() {
                moves.push(self.migrate_message(start, node, None));
            }
        }
        Ok(moves)
    }

    /// Forgets that `instances` wait for an outcome (their MIGRATEs were never sent).
    pub fn migrations_dropped(&self, instances: &[Uuid]) {
        let mut migrating = self.migrating.lock().expect("migrating lock");
        for id in instances {
            migrating.remove(id);
        }
    }

    /// How many of `instances` still wait for their migration's outcome.
    pub fn still_migrating(&self, instances: &[Uuid]) -> usize {
        let migrating = self.migrating.lock().expect("migrating lock");
        instances.iter().filter(|id| migrating.contains(id)).count()
    }

    /// Deletes an ended instance: its record goes and its node is told to remove its files.
    ///
    /// # Errors
    /// Not this tenant's, still live (409), or the store.
    pub fn delete(&self, tenant: &str, instance: Uuid) -> Result<Vec<Message>, ServiceError> {
        let record = self.owned(tenant, instance)?;
        if !record.life.state.is_final() {
            return Err(ServiceError::Conflict(format!(
                "instance {instance} is {}; stop or cancel it first",
                record.life.state.name()
            )));
        }
        self.store.delete_instance(instance)?;
        Ok(record
            .node
            .map(|node| Message::Delete(Delete { instance_uuid: instance, workload_agent_uuid: node, stop: false }))
            .into_iter()
            .collect())
    }

    /// An instance of `tenant` (`admin` sees all); another tenant's is "not found".
    ///
    /// # Errors
    /// Not found, or the store.
    pub fn owned(&self, tenant: &str, instance: Uuid) -> Result<InstanceRecord, ServiceError> {
        match self.store.instance(instance)? {
            Some(r) if r.tenant == tenant || tenant == ADMIN => Ok(r),
            _ => Err(ServiceError::NotFound(format!("instance {instance}"))),
        }
    }

    /// How many instances are in each state.
    ///
    /// # Errors
    /// The store.
    pub fn counts(&self, tenant: Option<&str>) -> Result<BTreeMap<&'static str, usize>, ServiceError> {
        Ok(self.store.counts(tenant))
    }

    /// The events after revision `after` that `tenant` may see (every tenant's when `None`),
    /// from one read of at most `limit`, and the revision that read reached: the next page
    /// starts there, even when none of this one was the tenant's.
    ///
    /// # Errors
    /// The store.
    pub fn events_page(
        &self,
        tenant: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<crate::store::Event>, u64), ServiceError> {
        let page = self.store.events_after(after, limit)?;
        let reached = page.last().map_or(after, |e| e.revision);
        Ok((page.into_iter().filter(|e| tenant.is_none_or(|t| t == e.tenant)).collect(), reached))
    }
}
