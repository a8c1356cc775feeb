//! Live migration of `vm` instances (ciao's TODO "live migration"): the scheduler's half.
//!
//! 1. A controller sends MIGRATE with the instance's START. The scheduler checks that the
//!    instance runs, confirmed, where the controller says; picks a destination by the placement
//!    rules (or checks the one named); charges it beside the source; and sends the destination
//!    the START with `migrate_from` set. A MIGRATE that cannot begin is answered with
//!    COMMAND_FAILURE to its controller.
//! 2. The destination starts the device model waiting for the state and says MIGRATION_READY
//!    with its listener's address; the scheduler tells the source (MIGRATE_OUT).
//! 3. The source copies the state, pauses its copy and says MIGRATION_DONE. The scheduler moves
//!    the instance to the destination, tells the controllers (INSTANCE_MIGRATED) and both
//!    launchers (MIGRATE_END, committed): the destination resumes, the source drops its copy.
//!
//! Anything else abandons it, the source's copy running on: a failure either launcher reports,
//! the destination refusing or ending the incoming copy, either node lost, the instance ending
//! at the source, or [`MIGRATION_TIMEOUT_MS`] passing. Both launchers hear MIGRATE_END
//! (abandoned) and the controllers INSTANCE_MIGRATED with the reason.

use ssntp::payload::{
    CommandFailure, FailureReason, InstanceMigrated, Message, Migrate, MigrateEnd, MigrateOut, MigrationDone,
    MIGRATE_FEATURE,
};
use ssntp::{Command, Uuid};

use super::{placement, Hub, Now, Output};
use crate::nodes::Migration;

pub use ssntp::payload::MIGRATION_TIMEOUT_MS;

impl Hub {
    /// MIGRATE from the master controller.
    pub(super) fn migrate(&mut self, now: Now, controller: Uuid, m: Migrate) -> Vec<Output> {
        let id = m.start.instance_uuid;
        match self.destination(&m) {
            Ok(to) => {
                let charge_mb = self.need(&m.start).charge_mb;
                let placed = self.placed_for(to, &m.start);
                let expires_ms = now.mono_ms.saturating_add(MIGRATION_TIMEOUT_MS);
                let migration = Migration { from: m.from_node, to, expires_ms, sending: false };
                self.nodes.begin_migration(id, migration, placed, &self.cfg);
                let mut start = m.start;
                start.workload_agent_uuid = Some(to);
                start.charge_mb = Some(charge_mb);
                start.migrate_from = Some(m.from_node);
                let payload = super::Payload::Message { origin: controller, message: Box::new(Message::Start(start)) };
                vec![Output::To { peer: to, payload }]
            }
            Err((reason, to, detail)) => {
                // Refused before it began: the asking controller hears why (no INSTANCE_MIGRATED:
                // that is the outcome of a migration under way, and one may be).
                let failure = CommandFailure {
                    command: Command::Migrate.to_string(),
                    node_uuid: to,
                    instance_uuid: Some(id),
                    reason,
                    detail,
                };
                vec![Output::To { peer: controller, payload: self.own(Message::CommandFailure(failure)) }]
            }
        }
    }

    /// Where a MIGRATE may go, or why nowhere (naming the destination it concerns).
    fn destination(&self, m: &Migrate) -> Result<Uuid, (FailureReason, Option<Uuid>, String)> {
        let id = m.start.instance_uuid;
        if let Some(detail) = m.start.backend.migration_refusal() {
            return Err((FailureReason::InvalidData, m.to_node, detail.into()));
        }
        if self.nodes.migration(&id).is_some() {
            return Err((
                FailureReason::AlreadyRunning,
                m.to_node,
                format!("a migration of instance {id} is under way"),
            ));
        }
        match self.nodes.location(&id) {
            None => {
                let detail = format!("instance {id} is not known to run on any node");
                return Err((FailureReason::NoInstance, m.to_node, detail));
            }
            Some(l) if l.node != m.from_node => {
                let detail = format!("instance {id} runs on node {}, not {}", l.node, m.from_node);
                return Err((FailureReason::NoInstance, m.to_node, detail));
            }
            Some(l) if l.unconfirmed.is_some() => {
                return Err((FailureReason::NoInstance, m.to_node, format!("instance {id} has not started yet")));
            }
            Some(_) => {}
        }
        match self.nodes.get(&m.from_node) {
            Some(n) if n.conn_id.is_none() => {
                return Err((FailureReason::NoNode, m.to_node, format!("node {} is not connected", m.from_node)));
            }
            Some(n) if !n.report.features.iter().any(|f| f == MIGRATE_FEATURE) => {
                let detail =
                    format!("node {} takes part in no migrations (drover-launcher --migration-listen)", m.from_node);
                return Err((FailureReason::NotPermitted, m.to_node, detail));
            }
            _ => {}
        }
        // The destination must take migrations too.
        let mut start = m.start.clone();
        if !start.requirements.features.iter().any(|f| f == MIGRATE_FEATURE) {
            start.requirements.features.push(MIGRATE_FEATURE.to_owned());
        }
        let need = self.need(&start);
        match m.to_node {
            Some(to) if to == m.from_node => {
                Err((FailureReason::InvalidData, Some(to), format!("instance {id} already runs on node {to}")))
            }
            Some(to) => match self.nodes.get(&to) {
                None => Err((FailureReason::NoNode, Some(to), format!("node {to} is not known here"))),
                Some(node) => match node.check(&need, &self.cfg) {
                    Ok(()) => Ok(to),
                    Err(misfit) => {
                        Err((FailureReason::FullCn, Some(to), format!("node {to}: {}", misfit.words_for(&need))))
                    }
                },
            },
            None => placement::choose(&self.nodes, &need, &self.cfg, None, Some(m.from_node)).ok_or_else(|| {
                let why = placement::explain(&self.nodes, &need, &self.cfg);
                (FailureReason::FullCloud, None, format!("no other node can take it now: {why}"))
            }),
        }
    }

    /// MIGRATION_READY from the destination: the source is told where to send.
    pub(super) fn migration_ready(&mut self, node: Uuid, instance: Uuid, address: String) -> Vec<Output> {
        let Some(m) = self.nodes.migration(&instance).filter(|m| m.to == node && !m.sending) else {
            return vec![Output::Warn(format!(
                "node {node} is ready for a migration of {instance} that is not expected"
            ))];
        };
        let from = m.from;
        self.nodes.migration_sending(&instance);
        let out = MigrateOut { instance_uuid: instance, to_node: node, address };
        vec![Output::To { peer: from, payload: self.own(Message::MigrateOut(out)) }]
    }

    /// MIGRATION_DONE from either launcher of a migration.
    pub(super) fn migration_done(&mut self, node: Uuid, done: MigrationDone) -> Vec<Output> {
        let id = done.instance_uuid;
        let Some(m) = self.nodes.migration(&id).cloned() else {
            return vec![Output::Warn(format!("node {node} reports a migration of {id} that is not under way"))];
        };
        let mut out = Vec::new();
        if done.ok && node == m.from && m.sending {
            self.nodes.end_migration(id, true, &self.cfg);
            out.push(self.migrated(id, m.from, Some(m.to), true, String::new()));
            for peer in [m.to, m.from] {
                let end = MigrateEnd { instance_uuid: id, committed: true, to_node: m.to };
                out.push(Output::To { peer, payload: self.own(Message::MigrateEnd(end)) });
            }
            // The source's room is free now.
            self.drain_on(m.from, &mut out);
        } else if node == m.from || node == m.to {
            let detail = if done.detail.is_empty() { format!("node {node} failed it") } else { done.detail };
            self.abandon(id, detail, &mut out);
        }
        out
    }

    /// Whether a launcher's message is about the incoming copy of a migration to it (a refused
    /// START, an end): it abandons the migration, and goes no further (for the controllers
    /// the instance runs on at its source).
    pub(super) fn incoming_report(&mut self, node: Uuid, message: &Message, out: &mut Vec<Output>) -> bool {
        let id = match message {
            Message::StartFailure(f) => f.instance_uuid,
            Message::InstanceExited(e) => e.instance_uuid,
            Message::InstanceStopped(e) | Message::InstanceDeleted(e) => e.instance_uuid,
            _ => return false,
        };
        if self.nodes.migration(&id).is_none_or(|m| m.to != node) {
            return false;
        }
        let detail = match message {
            Message::StartFailure(f) => format!("node {node} refused it: {}", f.detail),
            _ => format!("the incoming copy on node {node} ended"),
        };
        self.abandon(id, detail, out);
        true
    }

    /// Abandons the migrations that cannot go on or took too long (after every report and
    /// tick; there are few at a time).
    pub(super) fn check_migrations(&mut self, now: Now, out: &mut Vec<Output>) {
        let mut broken = self.nodes.broken_migrations();
        broken.extend(
            self.nodes
                .migrations()
                .filter(|(_, m)| now.mono_ms >= m.expires_ms)
                .map(|(id, _)| (*id, format!("not done in {} s", MIGRATION_TIMEOUT_MS / 1000))),
        );
        for (id, detail) in broken {
            self.abandon(id, detail, out);
        }
    }

    /// Ends a migration with the instance left at its source.
    fn abandon(&mut self, id: Uuid, detail: String, out: &mut Vec<Output>) {
        let Some(m) = self.nodes.end_migration(id, false, &self.cfg) else { return };
        out.push(Output::Warn(format!("migration of {id} from {} to {} abandoned: {detail}", m.from, m.to)));
        for peer in [m.to, m.from] {
            if self.nodes.get(&peer).is_some_and(|n| n.conn_id.is_some()) {
                let end = MigrateEnd { instance_uuid: id, committed: false, to_node: m.to };
                out.push(Output::To { peer, payload: self.own(Message::MigrateEnd(end)) });
            }
        }
        out.push(self.migrated(id, m.from, Some(m.to), false, detail));
        self.drain_on(m.to, out);
    }

    fn migrated(&self, id: Uuid, from: Uuid, to: Option<Uuid>, ok: bool, detail: String) -> Output {
        let event = InstanceMigrated { instance_uuid: id, from_node: from, to_node: to, ok, detail };
        Output::ToControllers(self.own(Message::InstanceMigrated(event)))
    }
}
