//! Machines for multi-host tests: a network namespace per host, each with its own address on one
//! bridge that lives in a namespace of its own (nothing touches the host's network). Processes
//! started on a host run in its namespace; links go down and up for real partitions. Everything
//! — processes and namespaces — is removed on drop, pass or fail. Needs root and iproute2.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::ip;

/// The hosts of one test.
#[derive(Debug)]
pub struct Lab {
    switch: String,
    hosts: BTreeMap<String, String>,
    daemons: Vec<(String, Child)>,
}

impl Lab {
    /// A namespace per host (`name → IPv4 address`, all in one /24), on one bridge.
    ///
    /// # Errors
    /// Namespaces cannot be made here (no root, no iproute2).
    pub fn new(addresses: &BTreeMap<String, String>) -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        // Distinct per lab in one process too.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut lab = Self { switch: format!("drv-sw-{id}-{n}"), hosts: BTreeMap::new(), daemons: Vec::new() };
        ip(&["netns", "add", &lab.switch])?;
        ip(&["-n", &lab.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lab.switch, "link", "set", "br0", "up"])?;
        for (i, (host, address)) in addresses.iter().enumerate() {
            let ns = format!("drv-{host}-{id}-{n}");
            ip(&["netns", "add", &ns])?;
            lab.hosts.insert(host.clone(), ns.clone());
            let port = format!("p{i}");
            ip(&["-n", &lab.switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["-n", &lab.switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &lab.switch, "link", "set", &port, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    /// `program` with `args` to run on `host` (in its namespace; on this machine for a host the
    /// lab does not have).
    pub fn command(&self, host: &str, program: &Path, args: &[String]) -> Command {
        match self.hosts.get(host) {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program).args(args);
                c
            }
            None => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        }
    }

    /// A command running `script` with `sh -e` on `host`.
    pub fn shell(&self, host: &str, script: &str) -> Command {
        let mut c = self.command(host, Path::new("sh"), &["-ec".to_owned(), script.to_owned()]);
        c.stdin(Stdio::null());
        c
    }

    /// Starts `program` on `host` in the background, logging to `log`; stopped on drop.
    ///
    /// # Panics
    /// The log cannot be created or the program not started.
    pub fn spawn(&mut self, host: &str, program: &Path, args: &[String], log: &Path) {
        let file = std::fs::File::create(log).expect("a log file");
        let child = self
            .command(host, program, args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("a log handle"))
            .stderr(file)
            .spawn()
            .expect("the program starts");
        self.daemons.push((host.to_owned(), child));
    }

    /// Adds a process started elsewhere, so that it is stopped with the lab.
    pub fn adopt(&mut self, host: &str, child: Child) {
        self.daemons.push((host.to_owned(), child));
    }

    /// Whether every process started on the lab still runs.
    pub fn all_running(&mut self) -> bool {
        self.daemons.iter_mut().all(|(_, c)| c.try_wait().ok().flatten().is_none())
    }

    /// Cuts `host` off the network (its link down), or joins it again: a real partition.
    ///
    /// # Errors
    /// `ip` failed.
    pub fn set_connected(&self, host: &str, connected: bool) -> Result<(), String> {
        let ns = self.hosts.get(host).ok_or_else(|| format!("no host {host}"))?;
        ip(&["-n", ns, "link", "set", "eth0", if connected { "up" } else { "down" }])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.daemons {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, child) in &mut self.daemons {
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.hosts.values() {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
    }
}
