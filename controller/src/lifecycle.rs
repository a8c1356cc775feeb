//! An instance's life as the controller tracks it: a pure state machine.
//!
//! ```text
//! pending ──START sent──▶ starting ──INSTANCE_QUEUED──▶ queued
//!    ▲                        │ ▲                         │
//!    │ restart (per policy,   │ └──────────(placed)───────┘
//!    │  after a backoff)      ▼
//!    └──────── failed ◀── running ──▶ exited(code) | stopped | lost | canceled
//! ```
//!
//! [`Lifecycle::handle`] takes the time and one [`Input`] (what the cluster reported, what the
//! user asked) and returns the [`Action`]s to take; the caller persists the new state before it
//! acts, so a controller that crashes never sends a START twice for one desired copy: START is
//! only ever sent from `pending`, and `pending` is left before the START goes out.

use drover_model::InstanceStatus;
use serde::{Deserialize, Serialize};
use ssntp::payload::{ExitReason, FailureReason};
use ssntp::Uuid;

pub use drover_api::restart::{Restart, RestartPolicy};

/// Where an instance is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Wants a START (at `not_before_ms` at the earliest).
    Pending {
        /// Earliest time to send START (backoff), Unix ms (persisted: a restarted controller
        /// compares it with its own clock).
        not_before_ms: u64,
    },
    /// START sent; no answer yet.
    Starting,
    /// The scheduler holds it in its queue.
    Queued {
        /// Why it waits, in the scheduler's words.
        reason: String,
    },
    /// Running on a node.
    Running {
        /// The node.
        node: Uuid,
    },
    /// Ended by itself with code 0 (or any end under `Never`), final.
    Exited {
        /// Exit code.
        code: Option<i32>,
    },
    /// Ended badly and not restarted (policy or attempts exhausted), final.
    Failed {
        /// Why, for `drover ps`.
        reason: String,
    },
    /// Stopped by the user, final until started again.
    Stopped,
    /// Its node was lost and it is not restarted, final.
    Lost,
    /// Canceled by the user, final.
    Canceled,
}

impl State {
    /// The state as the API and CLI name it.
    pub const fn status(&self) -> InstanceStatus {
        match self {
            Self::Pending { .. } => InstanceStatus::Pending,
            Self::Starting => InstanceStatus::Starting,
            Self::Queued { .. } => InstanceStatus::Queued,
            Self::Running { .. } => InstanceStatus::Running,
            Self::Exited { .. } => InstanceStatus::Exited,
            Self::Failed { .. } => InstanceStatus::Failed,
            Self::Stopped => InstanceStatus::Stopped,
            Self::Lost => InstanceStatus::Lost,
            Self::Canceled => InstanceStatus::Canceled,
        }
    }

    /// Whether nothing more will happen without the user.
    pub const fn is_final(&self) -> bool {
        self.status().is_final()
    }

    /// The state's name as the API and CLI show it.
    pub const fn name(&self) -> &'static str {
        self.status().name()
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Time passed (backoffs expire).
    Tick,
    /// The scheduler queued the START.
    Queued {
        /// Why.
        reason: String,
    },
    /// The START failed (scheduler or launcher).
    StartFailed {
        /// Why.
        reason: FailureReason,
        /// The words that came with it.
        detail: String,
        /// The node that answered, when a launcher did.
        node: Option<Uuid>,
    },
    /// The workload runs on `node`.
    Started {
        /// The node.
        node: Uuid,
    },
    /// The workload ended by itself.
    Exited {
        /// Exit code.
        code: Option<i32>,
        /// Why.
        reason: ExitReason,
    },
    /// The launcher stopped it (user stop, or evacuation when `evacuated`).
    Stopped {
        /// Stopped by an evacuation: start it elsewhere.
        evacuated: bool,
    },
    /// The scheduler declared its node lost.
    NodeLost,
    /// Something to say about it that changes nothing (a live migration refused).
    Noted,
    /// A live migration's outcome: it runs at `to` now if it ran at `from` (an abandoned one
    /// has `to` equal to `from`).
    Migrated {
        /// Where it ran.
        from: Uuid,
        /// Where it runs.
        to: Uuid,
    },
    /// The user wants it stopped (kept, startable again).
    Stop,
    /// The user wants it started again after a final state.
    Start,
    /// The user cancels it for good.
    Cancel,
    /// The scheduler connection was re-established: a START that got no answer may have been
    /// lost, so send it again (a duplicate is refused and read as "it runs").
    Resend,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send START (`restart`: it ran before).
    SendStart {
        /// Whether this is a restart.
        restart: bool,
    },
    /// Send STOP to the node it runs on.
    SendStop {
        /// The node.
        node: Uuid,
    },
}

/// One instance's tracked life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Current state.
    pub state: State,
    /// Restarts so far.
    pub restarts: u32,
    /// STARTs sent so far (the first and every restart).
    pub starts_sent: u32,
    /// The user asked for a stop or cancel that has not arrived yet.
    pub stop_requested: bool,
    /// Cancel rather than stop once the workload is down.
    pub cancel_requested: bool,
    /// The exit code of the last run that exited with one (kept when it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    restart: Restart,
}

const MAX_BACKOFF_MS: u64 = 300_000;

impl Lifecycle {
    /// A new instance, wanting its first START now.
    pub fn new(restart: Restart, now_ms: u64) -> Self {
        Self {
            state: State::Pending { not_before_ms: now_ms },
            restarts: 0,
            starts_sent: 0,
            stop_requested: false,
            cancel_requested: false,
            exit_code: None,
            restart,
        }
    }

    fn backoff(&self) -> u64 {
        let factor = 1u64 << self.restarts.min(20);
        self.restart.backoff_ms.saturating_mul(factor).min(MAX_BACKOFF_MS)
    }

    /// After an end: restart (back to `pending` after the backoff) if the policy and the
    /// attempts allow it, else the given final state.
    fn end(&mut self, now_ms: u64, failure: bool, final_state: State) {
        let wanted = match self.restart.policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => failure,
            RestartPolicy::Always => true,
        };
        if wanted && self.restarts < self.restart.attempts && !self.stop_requested && !self.cancel_requested {
            let not_before_ms = now_ms.saturating_add(self.backoff());
            self.restarts += 1;
            self.state = State::Pending { not_before_ms };
        } else {
            self.state = final_state;
        }
    }

    /// Applies one input at `now_ms` (Unix ms) and returns what to do.
    pub fn handle(&mut self, now_ms: u64, input: Input) -> Vec<Action> {
        let mut actions = Vec::new();
        match (self.state.clone(), input) {
            // User intent first: it applies in any state.
            // A STOP is already on its way.
            (State::Running { .. }, Input::Stop | Input::Cancel) if self.stop_requested => {}
            (State::Running { node }, input @ (Input::Stop | Input::Cancel)) => {
                self.stop_requested = true;
                self.cancel_requested = input == Input::Cancel;
                actions.push(Action::SendStop { node });
            }
            (State::Pending { .. }, Input::Stop) => self.state = State::Stopped,
            (State::Pending { .. }, Input::Cancel) => self.state = State::Canceled,
            (State::Starting | State::Queued { .. }, Input::Stop | Input::Cancel) if self.stop_requested => {}
            (State::Starting | State::Queued { .. }, input @ (Input::Stop | Input::Cancel)) => {
                // Not running yet: the scheduler takes it out of its queue, or stops it where it
                // placed it (a STOP naming no node); should it run anyway, it is stopped the
                // moment it reports in.
                self.stop_requested = true;
                self.cancel_requested = input == Input::Cancel;
                actions.push(Action::SendStop { node: Uuid::nil() });
            }
            (state, Input::Cancel) if state.is_final() => self.state = State::Canceled,
            (state, Input::Start) if state.is_final() && state != State::Canceled => {
                self.stop_requested = false;
                self.state = State::Pending { not_before_ms: now_ms };
            }

            (State::Starting | State::Queued { .. }, Input::Resend) if !self.stop_requested => {
                self.state = State::Pending { not_before_ms: now_ms };
            }

            // Time.
            (State::Pending { not_before_ms }, Input::Tick) if now_ms >= not_before_ms => {
                self.state = State::Starting;
                self.starts_sent += 1;
                actions.push(Action::SendStart { restart: self.starts_sent > 1 });
            }

            // The cluster.
            (State::Starting, Input::Queued { reason }) | (State::Queued { .. }, Input::Queued { reason }) => {
                self.state = State::Queued { reason };
            }
            (State::Running { node }, Input::Migrated { from, to }) if node == from && to != from => {
                self.state = State::Running { node: to };
                if self.stop_requested {
                    actions.push(Action::SendStop { node: to });
                }
            }
            (State::Starting | State::Queued { .. }, Input::Started { node }) => {
                self.state = State::Running { node };
                if self.stop_requested {
                    actions.push(Action::SendStop { node });
                }
            }
            (State::Starting | State::Queued { .. }, Input::StartFailed { reason, detail, node }) => {
                let final_state = State::Failed { reason: format!("{reason:?}: {detail}") };
                match (reason, node) {
                    // A repeated START (after a reconnect) found it already there: it runs.
                    (FailureReason::AlreadyRunning | FailureReason::InstanceExists, Some(node)) => {
                        self.state = State::Running { node };
                        if self.stop_requested {
                            actions.push(Action::SendStop { node });
                        }
                    }
                    // Not fatal and no node to point at (or a launcher's full_cn, which the
                    // scheduler retries elsewhere): keep waiting for the outcome.
                    _ if !reason.is_fatal() => {}
                    _ if self.stop_requested => {
                        self.state = if self.cancel_requested { State::Canceled } else { State::Stopped };
                    }
                    // No node could ever take it: a restart would be refused the same way.
                    (FailureReason::FullCloud, None) => self.state = final_state,
                    _ => self.end(now_ms, true, final_state),
                }
            }
            (State::Running { .. }, Input::Exited { code, reason }) => {
                self.exit_code = code;
                if self.stop_requested {
                    self.state = if self.cancel_requested { State::Canceled } else { State::Stopped };
                } else {
                    let failure = reason != ExitReason::Completed;
                    let final_state = if failure {
                        State::Failed { reason: format!("{reason:?}, exit code {code:?}") }
                    } else {
                        State::Exited { code }
                    };
                    self.end(now_ms, failure, final_state);
                }
            }
            (State::Running { .. } | State::Starting | State::Queued { .. }, Input::Stopped { evacuated }) => {
                if self.stop_requested || !evacuated {
                    self.state = if self.cancel_requested { State::Canceled } else { State::Stopped };
                } else {
                    // Evacuated: start it elsewhere at once, whatever the policy.
                    self.state = State::Pending { not_before_ms: now_ms };
                }
            }
            (State::Running { .. } | State::Starting | State::Queued { .. }, Input::NodeLost) => {
                if self.stop_requested {
                    self.state = if self.cancel_requested { State::Canceled } else { State::Stopped };
                } else {
                    self.end(now_ms, true, State::Lost);
                }
            }
            // Anything else (a late report for a final instance, a duplicate) changes nothing.
            _ => {}
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ON_FAILURE: Restart = Restart { policy: RestartPolicy::OnFailure, attempts: 2, backoff_ms: 1000 };

    fn node() -> Uuid {
        Uuid::from_bytes([9; 16])
    }

    #[test]
    fn a_failing_workload_is_restarted_with_backoff_until_attempts_run_out() {
        let mut l = Lifecycle::new(ON_FAILURE, 0);
        assert_eq!(l.handle(0, Input::Tick), vec![Action::SendStart { restart: false }]);
        l.handle(1, Input::Started { node: node() });
        l.handle(2, Input::Exited { code: Some(1), reason: ExitReason::Failed });
        assert_eq!(l.state, State::Pending { not_before_ms: 1002 });
        assert!(l.handle(1001, Input::Tick).is_empty(), "backoff");
        assert_eq!(l.handle(1002, Input::Tick), vec![Action::SendStart { restart: true }]);
        l.handle(1003, Input::Started { node: node() });
        l.handle(1004, Input::Exited { code: None, reason: ExitReason::Oom });
        assert_eq!(l.state, State::Pending { not_before_ms: 1004 + 2000 }, "backoff doubles");
        l.handle(3004, Input::Tick);
        l.handle(3005, Input::Started { node: node() });
        l.handle(3006, Input::Exited { code: Some(2), reason: ExitReason::Failed });
        assert!(matches!(l.state, State::Failed { .. }), "attempts exhausted: {:?}", l.state);
        assert_eq!((l.starts_sent, l.restarts), (3, 2));
        assert_eq!(l.exit_code, Some(2), "the last run's code is kept with the failure");
    }

    #[test]
    fn work_no_node_could_ever_take_fails_without_restarts() {
        let mut l = Lifecycle::new(ON_FAILURE, 0);
        l.handle(0, Input::Tick);
        let never = Input::StartFailed {
            reason: FailureReason::FullCloud,
            detail: "0 of 2 nodes could ever fit it".into(),
            node: None,
        };
        l.handle(1, never);
        assert!(matches!(&l.state, State::Failed { reason } if reason.contains("could ever fit")), "{:?}", l.state);
        assert_eq!(l.restarts, 0);
    }

    #[test]
    fn success_is_final_under_on_failure_and_restarted_under_always() {
        let mut l = Lifecycle::new(ON_FAILURE, 0);
        l.handle(0, Input::Tick);
        l.handle(0, Input::Started { node: node() });
        l.handle(0, Input::Exited { code: Some(0), reason: ExitReason::Completed });
        assert_eq!(l.state, State::Exited { code: Some(0) });
        let mut l = Lifecycle::new(Restart { policy: RestartPolicy::Always, ..ON_FAILURE }, 0);
        l.handle(0, Input::Tick);
        l.handle(0, Input::Started { node: node() });
        l.handle(0, Input::Exited { code: Some(0), reason: ExitReason::Completed });
        assert!(matches!(l.state, State::Pending { .. }));
    }

    #[test]
    fn node_loss_and_evacuation_move_the_instance_user_stop_does_not() {
        let mut l = Lifecycle::new(ON_FAILURE, 0);
        l.handle(0, Input::Tick);
        l.handle(0, Input::Started { node: node() });
        l.handle(0, Input::NodeLost);
        assert!(matches!(l.state, State::Pending { .. }), "lost: restarted under on-failure");
        let mut l = Lifecycle::new(Restart { policy: RestartPolicy::Never, ..ON_FAILURE }, 0);
        l.handle(0, Input::Tick);
        l.handle(0, Input::Started { node: node() });
        l.handle(0, Input::Stopped { evacuated: true });
        assert_eq!(l.state, State::Pending { not_before_ms: 0 }, "evacuation moves it whatever the policy");
        l.handle(0, Input::Tick);
        l.handle(0, Input::Started { node: node() });
        assert_eq!(l.handle(0, Input::Stop), vec![Action::SendStop { node: node() }]);
        assert!(l.handle(0, Input::Stop).is_empty(), "one STOP");
        l.handle(0, Input::Stopped { evacuated: false });
        assert_eq!(l.state, State::Stopped);
        l.handle(5, Input::Start);
        assert_eq!(l.state, State::Pending { not_before_ms: 5 });
    }

    #[test]
    fn a_repeated_start_that_finds_the_instance_running_marks_it_running() {
        let mut l = Lifecycle::new(ON_FAILURE, 0);
        l.handle(0, Input::Tick);
        let already =
            Input::StartFailed { reason: FailureReason::AlreadyRunning, detail: String::new(), node: Some(node()) };
        assert!(l.handle(0, already).is_empty());
        assert_eq!(l.state, State::Running { node: node() });
        assert_eq!(l.restarts, 0, "not a failure");
        let mut l = Lifecycle::new(ON_FAILURE, 0);
        l.handle(0, Input::Tick);
        l.handle(0, Input::StartFailed { reason: FailureReason::FullCn, detail: String::new(), node: Some(node()) });
        assert_eq!(l.state, State::Starting, "full_cn is retried by the scheduler");
        l.handle(
            0,
            Input::StartFailed {
                reason: FailureReason::LaunchFailure,
                detail: "no such file".into(),
                node: Some(node()),
            },
        );
        assert!(matches!(l.state, State::Pending { .. }), "a fatal failure is restarted per policy");
    }

    #[test]
    fn cancel_while_starting_stops_it_as_soon_as_it_runs() {
        let mut l = Lifecycle::new(ON_FAILURE, 0);
        l.handle(0, Input::Tick);
        assert_eq!(l.handle(0, Input::Cancel), vec![Action::SendStop { node: Uuid::nil() }], "withdrawn at once");
        assert!(l.handle(0, Input::Cancel).is_empty(), "once");
        assert_eq!(l.handle(0, Input::Started { node: node() }), vec![Action::SendStop { node: node() }]);
        l.handle(0, Input::Exited { code: None, reason: ExitReason::Killed });
        assert_eq!(l.state, State::Canceled);
        assert!(l.handle(10_000, Input::Tick).is_empty());
        l.handle(0, Input::Start);
        assert_eq!(l.state, State::Canceled, "canceled is for good");
    }

    #[test]
    fn cancel_of_queued_work_ends_when_the_scheduler_takes_it_out_of_its_queue() {
        let mut l = Lifecycle::new(ON_FAILURE, 0);
        l.handle(0, Input::Tick);
        l.handle(0, Input::Queued { reason: "0 of 1 nodes fit".into() });
        assert_eq!(l.handle(0, Input::Cancel), vec![Action::SendStop { node: Uuid::nil() }]);
        // The scheduler's INSTANCE_STOPPED: it never ran.
        assert!(l.handle(0, Input::Stopped { evacuated: true }).is_empty());
        assert_eq!(l.state, State::Canceled);
    }

    fn inputs() -> impl Strategy<Value = Input> {
        prop_oneof![
            4 => Just(Input::Tick),
            1 => Just(Input::Queued { reason: "0 of 1 nodes fit".into() }),
            1 => (prop::sample::select(vec![FailureReason::FullCloud, FailureReason::LaunchFailure, FailureReason::AlreadyRunning, FailureReason::FullCn]), any::<bool>())
                .prop_map(|(reason, has_node)| Input::StartFailed { reason, detail: String::new(), node: has_node.then(|| Uuid::from_bytes([1; 16])) }),
            2 => Just(Input::Started { node: Uuid::from_bytes([1; 16]) }),
            2 => prop::sample::select(vec![ExitReason::Completed, ExitReason::Failed, ExitReason::Oom]).prop_map(|reason| Input::Exited { code: Some(1), reason }),
            1 => any::<bool>().prop_map(|evacuated| Input::Stopped { evacuated }),
            1 => Just(Input::NodeLost),
            1 => Just(Input::Stop),
            1 => Just(Input::Start),
            1 => Just(Input::Cancel),
            1 => Just(Input::Resend),
        ]
    }

    proptest! {
        /// One desired copy is never started twice at once: a START goes out only from
        /// `pending`, never while one is starting or running, and every restart is counted
        /// against the policy (user restarts and evacuations aside).
        #[test]
        fn never_two_starts_for_one_copy(inputs in prop::collection::vec(inputs(), 1..200), policy in prop::sample::select(vec![RestartPolicy::Never, RestartPolicy::OnFailure, RestartPolicy::Always])) {
            let restart = Restart { policy, attempts: 3, backoff_ms: 100 };
            let mut l = Lifecycle::new(restart, 0);
            let mut now = 0;
            for input in inputs {
                now += 50;
                let before = l.state.clone();
                let actions = l.handle(now, input);
                for action in &actions {
                    if let Action::SendStart { .. } = action {
                        prop_assert!(matches!(before, State::Pending { .. }), "START sent from {:?}", before);
                        prop_assert_eq!(&l.state, &State::Starting);
                    }
                }
                prop_assert!(l.restarts <= restart.attempts);
                if before == State::Canceled {
                    prop_assert_eq!(&l.state, &State::Canceled, "canceled is final");
                    prop_assert!(actions.is_empty());
                }
            }
        }
    }

    #[test]
    fn a_migration_moves_a_running_instance_only_from_where_it_runs() {
        let other = Uuid::from_bytes([8; 16]);
        let mut l = Lifecycle::new(ON_FAILURE, 0);
        l.handle(0, Input::Tick);
        l.handle(0, Input::Started { node: node() });
        assert!(l.handle(1, Input::Migrated { from: other, to: other }).is_empty());
        assert_eq!(l.state, State::Running { node: node() }, "news of another copy changes nothing");
        assert!(l.handle(1, Input::Migrated { from: node(), to: other }).is_empty());
        assert_eq!(l.state, State::Running { node: other });
        assert_eq!((l.restarts, l.starts_sent), (0, 1), "not a restart");
        // A stop asked for while it moved goes to where it is now.
        l.stop_requested = true;
        let actions = l.handle(2, Input::Migrated { from: other, to: node() });
        assert_eq!(actions, vec![Action::SendStop { node: node() }]);
    }
}
