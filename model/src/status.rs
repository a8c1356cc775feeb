//! The names of states that every part of Drover must read the same way: a node's status (the
//! scheduler keeps it, the launcher computes it, the controller and the CLI show it) and an
//! instance's state as the API and CLI show it, with which states are final.

/// A node's status, as the scheduler and everything downstream of it see the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeStatus {
    /// Connected; no status report yet.
    Connected,
    /// Takes work.
    Ready,
    /// Short of memory, disk or instance slots: takes no work until READY.
    Full,
    /// Evacuated, or its launcher is stopping: takes no work until RESTORE.
    Maintenance,
    /// Its launcher said it is offline.
    Offline,
    /// Its connection closed (it may come back).
    Disconnected,
    /// Silent past the liveness deadline: its work is presumed gone.
    Lost,
}

impl NodeStatus {
    /// Every status, in the order the API and `drover status` list them.
    pub const ALL: [Self; 7] =
        [Self::Ready, Self::Full, Self::Maintenance, Self::Offline, Self::Connected, Self::Disconnected, Self::Lost];

    /// The name the API and CLI show, in lower case as instance states are (the wire and the
    /// scheduler's ciao heartbeat keep ciao's capitals: `READY`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Ready => "ready",
            Self::Full => "full",
            Self::Maintenance => "maintenance",
            Self::Offline => "offline",
            Self::Disconnected => "disconnected",
            Self::Lost => "lost",
        }
    }

    /// The name in ciao's heartbeat line: reported statuses in capitals as on the wire
    /// (`READY`), connection states as [`NodeStatus::name`].
    pub const fn ciao_name(self) -> &'static str {
        match self {
            Self::Ready => "READY",
            Self::Full => "FULL",
            Self::Maintenance => "MAINTENANCE",
            Self::Offline => "OFFLINE",
            other => other.name(),
        }
    }

    /// The status a name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the node's launcher is connected (whatever it reported).
    pub const fn is_up(self) -> bool {
        !matches!(self, Self::Disconnected | Self::Lost)
    }

    /// Whether the node has work placed on it that still counts: up and not evacuated.
    pub const fn holds_capacity(self) -> bool {
        matches!(self, Self::Ready | Self::Full)
    }
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An instance's state as the API and CLI show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InstanceStatus {
    /// Waiting to be sent (new, or in a restart backoff).
    Pending,
    /// Sent to the scheduler; not yet running.
    Starting,
    /// Held by the scheduler until a node has room.
    Queued,
    /// Runs on a node.
    Running,
    /// Ended by itself.
    Exited,
    /// Could not run, or ended failing and was not restarted.
    Failed,
    /// Stopped on request.
    Stopped,
    /// Its node was lost.
    Lost,
    /// Canceled before it ran.
    Canceled,
}

impl InstanceStatus {
    /// Every state.
    pub const ALL: [Self; 9] = [
        Self::Pending,
        Self::Starting,
        Self::Queued,
        Self::Running,
        Self::Exited,
        Self::Failed,
        Self::Stopped,
        Self::Lost,
        Self::Canceled,
    ];

    /// The name the API and CLI show.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Exited => "exited",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
            Self::Lost => "lost",
            Self::Canceled => "canceled",
        }
    }

    /// The state a name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether nothing more will happen without the user.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Exited | Self::Failed | Self::Stopped | Self::Lost | Self::Canceled)
    }
}

impl std::fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_and_only_ends_are_final() {
        for s in NodeStatus::ALL {
            assert_eq!(NodeStatus::parse(s.name()), Some(s));
        }
        for s in InstanceStatus::ALL {
            assert_eq!(InstanceStatus::parse(s.name()), Some(s));
        }
        assert_eq!(NodeStatus::parse("READY"), None, "names are exact");
        let names = NodeStatus::ALL.iter().map(|s| s.name()).chain(InstanceStatus::ALL.iter().map(|s| s.name()));
        assert!(names.into_iter().all(|n| n == n.to_lowercase()), "one case for every state the API shows");
        let live = [InstanceStatus::Pending, InstanceStatus::Starting, InstanceStatus::Queued, InstanceStatus::Running];
        assert!(live.iter().all(|s| !s.is_final()));
        assert_eq!(InstanceStatus::ALL.iter().filter(|s| s.is_final()).count(), 5);
        assert!(!NodeStatus::Lost.is_up() && NodeStatus::Maintenance.is_up());
    }
}
