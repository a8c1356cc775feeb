//! The `vm` backend (the EVE seed's hypervisor tasks): a guest's device model, qemu, is the
//! instance's anchor process. The node's hypervisor tools are the `qemu-system-ARCH` programs
//! found in `--hypervisor-tools` directories (or on `PATH`); each is a guest architecture the
//! node offers (`vm:ARCH`), so a node gains cross-architecture guests by being given a tools
//! directory, not a new launcher. What runs is decided here, purely; the shim runs it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ssntp::payload::{canonical_arch, VmAccel};

/// What a device model may take beyond its guest's memory, MiB: the VM's cgroup holds the
/// guest's memory plus this, and it is the `vm` backend's anchor tax before any is measured.
pub const DEVICE_MODEL_MB: u64 = 128;

/// A VM as its START describes it.
#[derive(Debug, Clone, Copy)]
pub struct VmSpec<'a> {
    /// The kernel to boot.
    pub kernel: &'a str,
    /// Its initial ramdisk.
    pub initrd: Option<&'a str>,
    /// Its command line.
    pub append: Option<&'a str>,
    /// Disk images, attached in snapshot mode.
    pub disks: &'a [String],
    /// The guest's architecture (the node's when absent).
    pub arch: Option<&'a str>,
    /// How its CPU runs.
    pub accel: VmAccel,
}

/// The device models in `dirs` (`qemu-system-ARCH`, executable), by canonical guest
/// architecture; the first directory that has one wins. No directories: `PATH`'s.
pub fn device_models(dirs: &[PathBuf]) -> BTreeMap<String, PathBuf> {
    let mut models = BTreeMap::new();
    for dir in crate::probe::tool_dirs(dirs) {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut found: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let arch = name.strip_prefix("qemu-system-")?;
                let executable = e.metadata().is_ok_and(|m| crate::probe::is_executable(&m));
                (executable && !arch.is_empty() && !arch.contains('.'))
                    .then(|| (canonical_arch(arch).to_owned(), e.path()))
            })
            .collect();
        found.sort();
        for (arch, path) in found {
            models.entry(arch).or_insert(path);
        }
    }
    models
}

/// Whether the guest runs with KVM: `auto` uses it when the node has it and the guest is of the
/// node's own architecture; `kvm` insists (an error where it cannot be had); `tcg` never.
///
/// # Errors
/// `kvm` asked where the node has no KVM or the guest is of another architecture.
pub fn use_kvm(accel: VmAccel, guest_arch: &str, node_has_kvm: bool) -> Result<bool, String> {
    let native = canonical_arch(guest_arch) == canonical_arch(std::env::consts::ARCH);
    match accel {
        VmAccel::Auto => Ok(node_has_kvm && native),
        VmAccel::Tcg => Ok(false),
        VmAccel::Kvm if node_has_kvm && native => Ok(true),
        VmAccel::Kvm if !native => Err(format!("accel = \"kvm\" cannot run a {guest_arch} guest on this node")),
        VmAccel::Kvm => Err("accel = \"kvm\": this node has no /dev/kvm".into()),
    }
}

/// The device model's command line: `mem_mb` of memory, `vcpus` CPUs (at least 1), no display,
/// no default devices or user configuration, the serial console on its standard output (the
/// instance's output), and no reboot: a guest that resets or powers off ends the instance.
/// With `sockets`, the device model also has a QMP monitor (live migration), and when
/// `incoming` it starts paused, waiting for its state on the incoming socket.
pub fn argv(
    model: &Path,
    vm: &VmSpec<'_>,
    mem_mb: u64,
    vcpus: u32,
    kvm: bool,
    sockets: Option<&crate::migration::VmSockets>,
    incoming: bool,
) -> Vec<String> {
    let mut argv: Vec<String> = vec![model.display().to_string()];
    let mut push = |args: &[&str]| argv.extend(args.iter().map(|a| (*a).to_owned()));
    push(&["-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot"]);
    push(&["-m", &mem_mb.max(1).to_string(), "-smp", &vcpus.max(1).to_string()]);
    push(&["-accel", if kvm { "kvm" } else { "tcg" }]);
    push(&["-kernel", vm.kernel]);
    if let Some(initrd) = vm.initrd {
        push(&["-initrd", initrd]);
    }
    if let Some(append) = vm.append {
        push(&["-append", append]);
    }
    for disk in vm.disks {
        // A comma in a path would start another option: qemu doubles it to escape it.
        push(&["-drive", &format!("file={},if=virtio,snapshot=on", disk.replace(',', ",,"))]);
    }
    if let Some(sockets) = sockets {
        let path = |p: &Path| p.display().to_string().replace(',', ",,");
        push(&["-qmp", &format!("unix:{},server=on,wait=off", path(&sockets.qmp))]);
        if incoming {
            push(&["-S", "-incoming", &format!("unix:{}", path(&sockets.incoming))]);
        }
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_holds_the_guest_its_console_and_no_reboot() {
        let disks = vec!["/srv/images/a,b.qcow2".to_owned()];
        let vm = VmSpec {
            kernel: "/srv/vmlinuz",
            initrd: Some("/srv/initrd"),
            append: Some("console=ttyS0"),
            disks: &disks,
            arch: None,
            accel: VmAccel::Auto,
        };
        let argv = argv(Path::new("/usr/bin/qemu-system-x86_64"), &vm, 256, 0, true, None, false);
        assert_eq!(
            argv.join(" "),
            "/usr/bin/qemu-system-x86_64 -nodefaults -no-user-config -display none -serial stdio -no-reboot \
             -m 256 -smp 1 -accel kvm -kernel /srv/vmlinuz -initrd /srv/initrd -append console=ttyS0 \
             -drive file=/srv/images/a,,b.qcow2,if=virtio,snapshot=on"
        );
    }

    #[test]
    fn a_migrating_guest_has_a_monitor_and_an_incoming_one_starts_paused_waiting_for_its_state() {
        let vm = VmSpec { kernel: "/k", initrd: None, append: None, disks: &[], arch: None, accel: VmAccel::Tcg };
        let sockets = crate::migration::VmSockets::in_dir(Path::new("/i,d")).unwrap();
        let model = Path::new("/usr/bin/qemu-system-x86_64");
        let tail = |incoming| argv(model, &vm, 64, 1, false, Some(&sockets), incoming)[16..].join(" ");
        assert_eq!(tail(false), "-qmp unix:/i,,d/q.sock,server=on,wait=off");
        assert_eq!(tail(true), "-qmp unix:/i,,d/q.sock,server=on,wait=off -S -incoming unix:/i,,d/in.sock");
    }

    #[test]
    fn kvm_only_for_the_nodes_own_architecture_and_where_it_exists() {
        let own = std::env::consts::ARCH;
        let other = if own == "riscv64" { "aarch64" } else { "riscv64" };
        assert_eq!(use_kvm(VmAccel::Auto, own, true), Ok(true));
        assert_eq!(use_kvm(VmAccel::Auto, own, false), Ok(false));
        assert_eq!(use_kvm(VmAccel::Auto, other, true), Ok(false), "another architecture is emulated");
        assert_eq!(use_kvm(VmAccel::Tcg, own, true), Ok(false));
        assert!(use_kvm(VmAccel::Kvm, own, false).unwrap_err().contains("no /dev/kvm"));
        assert!(use_kvm(VmAccel::Kvm, other, true).is_err());
    }

    #[test]
    fn device_models_are_the_executable_qemu_system_programs_by_canonical_architecture() {
        let root = tempfile::tempdir().unwrap();
        let (first, second) = (root.path().join("a"), root.path().join("b"));
        let program = |dir: &Path, name: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(name), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
        };
        program(&first, "qemu-system-x86_64", 0o755);
        program(&first, "qemu-system-arm", 0o644); // not executable
        program(&second, "qemu-system-arm", 0o755);
        program(&second, "qemu-system-x86_64", 0o755); // the first directory's wins
        program(&second, "qemu-img", 0o755);
        let models = device_models(&[first.clone(), second.clone()]);
        assert_eq!(
            models.into_iter().collect::<Vec<_>>(),
            [
                ("arm".to_owned(), second.join("qemu-system-arm")),
                ("x86_64".to_owned(), first.join("qemu-system-x86_64"))
            ]
        );
    }
}
