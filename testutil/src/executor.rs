//! A launcher executor that runs nothing: a START "starts" at once, a stop ends it at once, and
//! every call is recorded. For tests of the launcher's shell and core without processes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_launcher::executor::{Event, Executor, Exit, InstanceUsage, Refusal};
use ssntp::payload::{Backend, ExitReason, FailureReason, Start};
use ssntp::Uuid;
use tokio::sync::mpsc;

/// What the launcher asked of the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Run an instance.
    Run(Uuid),
    /// Stop one.
    Stop(Uuid),
    /// Delete one.
    Delete(Uuid),
}

/// The fake executor. A `process` START whose program is `/refuse` is refused with
/// `launch_failure`, to test that path.
#[derive(Debug, Clone)]
pub struct FakeExecutor {
    events: mpsc::Sender<Event>,
    /// Every call, in order.
    pub calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeExecutor {
    /// A fake and the channel its events arrive on.
    pub fn new() -> (Self, mpsc::Receiver<Event>) {
        let (events, rx) = mpsc::channel(65_536);
        (Self { events, calls: Arc::default() }, rx)
    }

    /// The calls so far.
    ///
    /// # Panics
    /// If a test thread panicked while holding the lock.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }

    fn note(&self, call: Call) {
        self.calls.lock().expect("calls lock").push(call);
    }
}

impl Executor for FakeExecutor {
    fn run(&mut self, start: &Start) -> Result<(), Refusal> {
        if matches!(&start.backend, Backend::Process { argv, .. } if argv.first().is_some_and(|p| p == "/refuse")) {
            return Err((FailureReason::LaunchFailure, "the fake refuses /refuse".into()));
        }
        self.note(Call::Run(start.instance_uuid));
        let _ = self.events.try_send(Event::Started { instance: start.instance_uuid, pid: 0 });
        Ok(())
    }

    fn stop(&mut self, instance: Uuid, _grace: Duration) {
        self.note(Call::Stop(instance));
        let _ = self.events.try_send(Event::Exited(Exit { instance, code: None, reason: ExitReason::Killed }));
    }

    fn delete(&mut self, instance: Uuid) {
        self.note(Call::Delete(instance));
    }

    fn record(&mut self, _event: &Event) {}

    fn reported(&mut self, _instance: Uuid) {}

    fn tail(&self, instance: Uuid, _max_bytes: u32) -> Result<(String, bool), Refusal> {
        Ok((format!("output of {instance}\n"), false))
    }

    fn usage(&mut self) -> Vec<(Uuid, InstanceUsage)> {
        Vec::new()
    }
}
