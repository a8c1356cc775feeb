//! The `oci` backend: an OCI runtime bundle run by `runc` or `crun` (the EVE seed's task model:
//! root filesystem, arguments, memory, CPU).
//!
//! The bundle lives in the instance directory (`bundle/config.json`); the root filesystem is
//! the START's `rootfs`, mounted read-only; the instance's `results/` is bind-mounted at
//! `/results`, which is also the working directory. The runtime runs in the foreground under
//! the shim (`runc run --bundle … <id>`): it forwards the stop signals to the container, its
//! exit code is the container's, the container's output goes to `results/output.txt`, and it
//! removes the container when it ends. Limits are set in `linux.resources`, applied by the
//! runtime in its own cgroup (`/drover-oci/<id>`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

/// Which container, from what, and as whom.
#[derive(Debug, Clone, Copy)]
pub struct Container<'a> {
    /// The container's ID (the instance's UUID).
    pub id: &'a str,
    /// Root file system on the node, mounted read-only.
    pub rootfs: &'a Path,
    /// The instance's `results/`, bind-mounted at `/results`.
    pub results: &'a Path,
    /// The user its process runs as (no capabilities); `None`: root with the default set, for
    /// workloads that asked for root where the launcher allows it.
    pub user: Option<crate::users::Account>,
}

/// The runtime's `config.json` for one container.
pub fn config(
    container: &Container<'_>,
    args: &[String],
    env: &BTreeMap<String, String>,
    mem_mb: u64,
    vcpus: u32,
) -> Value {
    let mut environment = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()];
    environment.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    let Container { id, rootfs, results, user } = *container;
    let (uid, gid, caps) = match user {
        Some(u) => (u.uid, u.gid, json!([])),
        None => (
            0,
            0,
            json!([
                "CAP_CHOWN",
                "CAP_DAC_OVERRIDE",
                "CAP_FOWNER",
                "CAP_KILL",
                "CAP_SETGID",
                "CAP_SETUID",
                "CAP_NET_BIND_SERVICE"
            ]),
        ),
    };
    let mut resources = json!({ "devices": [{ "allow": false, "access": "rwm" }] });
    if mem_mb > 0 {
        resources["memory"] =
            json!({ "limit": mem_mb.saturating_mul(1024 * 1024), "swap": mem_mb.saturating_mul(1024 * 1024) });
    }
    if vcpus > 0 {
        resources["cpu"] = json!({ "quota": u64::from(vcpus) * 100_000, "period": 100_000 });
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": uid, "gid": gid },
            "args": args,
            "env": environment,
            "cwd": "/results",
            "capabilities": { "bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": [] },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096 }],
            "noNewPrivileges": true
        },
        "root": { "path": rootfs, "readonly": true },
        "hostname": format!("drover-{}", &id[..id.len().min(8)]),
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"] },
            { "destination": "/results", "type": "bind", "source": results, "options": ["rbind", "rw"] }
        ],
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("/drover-oci/{id}"),
            "namespaces": [{ "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_carries_rootfs_args_limits_and_results_mount() {
        let env = BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]);
        let user = Some(crate::users::Account { uid: 5000, gid: 5001 });
        let container = Container {
            id: "0123456789",
            rootfs: Path::new("/srv/rootfs"),
            results: Path::new("/var/x/results"),
            user,
        };
        let c = config(&container, &["sh".into(), "-c".into(), "true".into()], &env, 64, 2);
        assert_eq!(c["root"]["path"], "/srv/rootfs");
        assert_eq!(c["root"]["readonly"], true);
        assert_eq!(c["process"]["args"][2], "true");
        assert!(c["process"]["env"].as_array().unwrap().iter().any(|e| e == "GREETING=hi"));
        assert_eq!(c["linux"]["resources"]["memory"]["limit"], 64 * 1024 * 1024);
        assert_eq!(c["linux"]["resources"]["cpu"]["quota"], 200_000);
        assert_eq!(c["hostname"], "drover-01234567");
        assert_eq!(
            (c["process"]["user"]["uid"].as_u64(), c["process"]["user"]["gid"].as_u64()),
            (Some(5000), Some(5001))
        );
        assert_eq!(c["process"]["capabilities"]["bounding"], json!([]), "an unprivileged user gets no capabilities");
        assert_eq!(c["process"]["noNewPrivileges"], true);
        let results = c["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/results").unwrap();
        assert_eq!(results["source"], "/var/x/results");
        let as_root = Container { id: "x", rootfs: Path::new("/r"), results: Path::new("/o"), user: None };
        let unlimited = config(&as_root, &[], &BTreeMap::new(), 0, 0);
        assert!(unlimited["linux"]["resources"].get("memory").is_none());
        assert_eq!(unlimited["process"]["user"]["uid"], 0);
        assert!(!unlimited["process"]["capabilities"]["bounding"].as_array().unwrap().is_empty());
    }
}
