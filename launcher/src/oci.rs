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
    /// Root file system on the node: the shared `rootfs`, mounted read-only, or the instance's
    /// own overlay of it, writable.
    pub rootfs: &'a Path,
    /// Whether the root is writable (an overlay of the instance's own).
    pub writable_root: bool,
    /// Node directories bind-mounted into it, checked by the launcher.
    pub volumes: &'a [ssntp::payload::Volume],
    /// Its network namespace.
    pub network: &'a ssntp::payload::OciNetwork,
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
    let Container { id, rootfs, writable_root, volumes, network, results, user } = *container;
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
    let mut namespaces =
        vec![json!({ "type": "pid" }), json!({ "type": "ipc" }), json!({ "type": "uts" }), json!({ "type": "mount" })];
    match network {
        ssntp::payload::OciNetwork::Host => {}
        ssntp::payload::OciNetwork::None => namespaces.push(json!({ "type": "network" })),
        ssntp::payload::OciNetwork::Namespace(path) => namespaces.push(json!({ "type": "network", "path": path })),
    }
    let mut mounts = vec![
        json!({ "destination": "/proc", "type": "proc", "source": "proc" }),
        json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
        json!({ "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] }),
        json!({ "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] }),
        json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] }),
        json!({ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"] }),
        json!({ "destination": "/results", "type": "bind", "source": results, "options": ["rbind", "rw"] }),
    ];
    for v in volumes {
        let mode = if v.read_only { "ro" } else { "rw" };
        mounts.push(json!({ "destination": v.destination, "type": "bind", "source": v.source, "options": ["rbind", mode, "nosuid", "nodev"] }));
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
        "root": { "path": rootfs, "readonly": !writable_root },
        "hostname": format!("drover-{}", &id[..id.len().min(8)]),
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("/drover-oci/{id}"),
            "namespaces": namespaces,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// Mounts an overlay of `rootfs` at `bundle/rootfs`, its changes in `bundle/overlay`: a root
/// the container may write without writing `rootfs`, which other instances share. Returns the
/// mount point.
///
/// # Errors
/// A `rootfs` path overlayfs cannot take (`,` or `:` in it), or the mount failed (not root, no
/// overlayfs).
pub fn overlay(rootfs: &Path, bundle: &Path) -> Result<std::path::PathBuf, (ssntp::payload::FailureReason, String)> {
    use ssntp::payload::FailureReason;
    let text = rootfs.display().to_string();
    if text.contains([',', ':']) {
        return Err((
            FailureReason::ImageFailure,
            format!("writable_root: rootfs {text} has , or : in it, which overlayfs cannot take"),
        ));
    }
    let (upper, work, merged) = (bundle.join("overlay/upper"), bundle.join("overlay/work"), bundle.join(OVERLAY_ROOT));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).map_err(|e| (FailureReason::LaunchFailure, format!("{}: {e}", d.display())))?;
    }
    let options = format!("lowerdir={text},upperdir={},workdir={}", upper.display(), work.display());
    nix::mount::mount(Some("overlay"), &merged, Some("overlay"), nix::mount::MsFlags::empty(), Some(options.as_str()))
        .map_err(|e| (FailureReason::LaunchFailure, format!("writable_root: mounting an overlay of {text}: {e}")))?;
    Ok(merged)
}

/// Where a writable root is mounted, under the bundle.
pub const OVERLAY_ROOT: &str = "rootfs";

/// Unmounts the overlay under `bundle`, if one is mounted (at the end, before the bundle is
/// removed: removing through the mount would only write whiteouts).
pub fn unmount_overlay(bundle: &Path) {
    let merged = bundle.join(OVERLAY_ROOT);
    if merged.exists() {
        let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
    }
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
            writable_root: false,
            volumes: &[],
            network: &ssntp::payload::OciNetwork::Host,
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
        assert!(
            !c["linux"]["namespaces"].as_array().unwrap().iter().any(|n| n["type"] == "network"),
            "the node's network by default"
        );
        let as_root = Container { user: None, ..container };
        let unlimited = config(&as_root, &[], &BTreeMap::new(), 0, 0);
        assert!(unlimited["linux"]["resources"].get("memory").is_none());
        assert_eq!(unlimited["process"]["user"]["uid"], 0);
        assert!(!unlimited["process"]["capabilities"]["bounding"].as_array().unwrap().is_empty());
    }

    #[test]
    fn a_writable_root_volumes_and_a_network_of_its_own_are_in_the_bundle() {
        let volumes = [
            ssntp::payload::Volume { source: "/srv/data".into(), destination: "/data".into(), read_only: true },
            ssntp::payload::Volume { source: "/srv/cache".into(), destination: "/cache".into(), read_only: false },
        ];
        let none = ssntp::payload::OciNetwork::None;
        let container = Container {
            id: "abc",
            rootfs: Path::new("/i/bundle/rootfs"),
            writable_root: true,
            volumes: &volumes,
            network: &none,
            results: Path::new("/i/results"),
            user: None,
        };
        let c = config(&container, &["true".into()], &BTreeMap::new(), 0, 0);
        assert_eq!(c["root"]["readonly"], false);
        let mounts = c["mounts"].as_array().unwrap();
        let data = mounts.iter().find(|m| m["destination"] == "/data").unwrap();
        assert_eq!((data["source"].as_str(), data["options"][1].as_str()), (Some("/srv/data"), Some("ro")));
        let cache = mounts.iter().find(|m| m["destination"] == "/cache").unwrap();
        assert_eq!(cache["options"][1], "rw");
        let net = c["linux"]["namespaces"].as_array().unwrap().iter().find(|n| n["type"] == "network").unwrap();
        assert!(net.get("path").is_none(), "a new, empty namespace");
        let named = ssntp::payload::OciNetwork::Namespace("/run/netns/blue".into());
        let c = config(&Container { network: &named, ..container }, &["true".into()], &BTreeMap::new(), 0, 0);
        let net = c["linux"]["namespaces"].as_array().unwrap().iter().find(|n| n["type"] == "network").unwrap();
        assert_eq!(net["path"], "/run/netns/blue");
    }
}
