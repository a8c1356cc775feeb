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

/// The runtime's `config.json` for one container.
pub fn config(
    id: &str,
    rootfs: &Path,
    results: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
    mem_mb: u64,
    vcpus: u32,
) -> Value {
    let mut environment = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()];
    environment.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_NET_BIND_SERVICE"
    ]);
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
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": environment,
            "cwd": "/results",
            "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
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
        let c = config(
            "0123456789",
            Path::new("/srv/rootfs"),
            Path::new("/var/x/results"),
            &["sh".into(), "-c".into(), "true".into()],
            &env,
            64,
            2,
        );
        assert_eq!(c["root"]["path"], "/srv/rootfs");
        assert_eq!(c["root"]["readonly"], true);
        assert_eq!(c["process"]["args"][2], "true");
        assert!(c["process"]["env"].as_array().unwrap().iter().any(|e| e == "GREETING=hi"));
        assert_eq!(c["linux"]["resources"]["memory"]["limit"], 64 * 1024 * 1024);
        assert_eq!(c["linux"]["resources"]["cpu"]["quota"], 200_000);
        assert_eq!(c["hostname"], "drover-01234567");
        let results = c["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/results").unwrap();
        assert_eq!(results["source"], "/var/x/results");
        let unlimited = config("x", Path::new("/r"), Path::new("/o"), &[], &BTreeMap::new(), 0, 0);
        assert!(unlimited["linux"]["resources"].get("memory").is_none());
    }
}
