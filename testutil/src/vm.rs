//! A guest for the `vm` backend's tests: a multiboot kernel of a few instructions that writes a
//! line to its serial console and resets the machine (which, with `-no-reboot`, ends its device
//! model with code 0). Built here with the node's assembler and linker, so the tests need no
//! downloaded image.

use std::path::{Path, PathBuf};

/// A START of a `vm` instance of one vCPU and `mem_mb` (a guest at `/guest.elf`, TCG), for
/// tests of the rules around VMs rather than of a guest.
pub fn start(instance: ssntp::Uuid, mem_mb: u64) -> ssntp::payload::Start {
    let backend = ssntp::payload::Backend::Vm {
        kernel: "/guest.elf".into(),
        initrd: None,
        append: None,
        disks: Vec::new(),
        arch: None,
        accel: ssntp::payload::VmAccel::Tcg,
    };
    let requirements = ssntp::payload::Requirements { vcpus: 1, mem_mb, ..Default::default() };
    ssntp::payload::Start::new(instance, requirements, backend)
}

/// The line the guest prints.
pub const GREETING: &str = "hello from a drover vm";

/// The x86 device model on `PATH`, if any.
pub fn x86_device_model() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("qemu-system-x86_64")).find(|p| p.is_file())
}

/// Builds the guest in `dir` (made readable by all: the workload runs as its tenant's user) and
/// returns its path.
///
/// # Errors
/// No 32-bit x86 assembler or linker here, or they failed; the message says which.
pub fn multiboot_kernel(dir: &Path) -> Result<PathBuf, String> {
    // The multiboot header (magic, flags 0, checksum) first in the image; then print through
    // COM1 and pulse the keyboard controller's reset line.
    let asm = format!(
        "{HEADER}_start:\n\
         mov $msg, %esi\n1: lodsb\ntest %al, %al\njz 2f\nmov $0x3f8, %dx\nout %al, %dx\njmp 1b\n\
         2: mov $0xfe, %al\nout %al, $0x64\n3: hlt\njmp 3b\nmsg: .asciz \"{GREETING}\\n\"\n"
    );
    build(dir, "guest", &asm)
}

/// The multiboot header (magic, flags 0, checksum) that starts every test guest.
const HEADER: &str = ".text\n.align 4\n.long 0x1BADB002\n.long 0\n.long -(0x1BADB002)\n.global _start\n";

/// Builds a guest that never ends: it counts from 1, printing `tick N` to its console about
/// every 20 ms under TCG. Its count lives in the guest's registers, so a guest whose first
/// line elsewhere is not `tick 1` carried its state there (live migration).
///
/// # Errors
/// As [`multiboot_kernel`].
pub fn counting_kernel(dir: &Path) -> Result<PathBuf, String> {
    counting_kernel_dirtying(dir, 0)
}

/// As [`counting_kernel`], first filling `dirty_mib` MiB of its memory from 2 MiB up with a
/// pattern, so that a migration has that much to copy (zero pages cost next to nothing). The
/// guest needs `2 + dirty_mib` MiB at least.
///
/// # Errors
/// As [`multiboot_kernel`].
pub fn counting_kernel_dirtying(dir: &Path, dirty_mib: u32) -> Result<PathBuf, String> {
    let words = dirty_mib * 1024 * 1024 / 4;
    let asm = format!(
        "{HEADER}_start:\nmov $0x200000, %edi\nmov ${words}, %ecx\nmov $0x5a5aa5a5, %eax\ncld\nrep stosl\n\
         xor %ebx, %ebx\nnext:\ninc %ebx\nmov $msg, %esi\n\
         1: lodsb\ntest %al, %al\njz 2f\nmov $0x3f8, %dx\nout %al, %dx\njmp 1b\n\
         2: mov %ebx, %eax\nmov $buf+10, %edi\nmovb $0, (%edi)\nmov $10, %ecx\n\
         3: xor %edx, %edx\ndiv %ecx\nadd $48, %dl\ndec %edi\nmov %dl, (%edi)\ntest %eax, %eax\njnz 3b\n\
         mov %edi, %esi\n4: lodsb\ntest %al, %al\njz 5f\nmov $0x3f8, %dx\nout %al, %dx\njmp 4b\n\
         5: mov $10, %al\nmov $0x3f8, %dx\nout %al, %dx\nmov ${COUNT_DELAY}, %ecx\n6: loop 6b\njmp next\n\
         msg: .asciz \"tick \"\nbuf: .space 12\n"
    );
    build(dir, &format!("counter{dirty_mib}"), &asm)
}

/// Iterations of the counting guest's delay loop between two lines.
const COUNT_DELAY: u32 = 30_000_000;

/// The numbers of the `tick N` lines of a counting guest's output, in order.
pub fn ticks(output: &str) -> Vec<u64> {
    output.lines().filter_map(|l| l.trim().strip_prefix("tick ")?.parse().ok()).collect()
}

/// Assembles and links `asm` as `NAME.elf` in `dir` (made readable by all: the workload runs
/// as its tenant's user).
fn build(dir: &Path, name: &str, asm: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let source = dir.join(format!("{name}.s"));
    let object = dir.join(format!("{name}.o"));
    let kernel = dir.join(format!("{name}.elf"));
    std::fs::write(&source, asm).map_err(|e| format!("{}: {e}", source.display()))?;
    let run = |program: &str, args: &[&std::ffi::OsStr]| -> Result<(), String> {
        let out = std::process::Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{program} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    };
    run("as", &["--32".as_ref(), "-o".as_ref(), object.as_os_str(), source.as_os_str()])?;
    run(
        "ld",
        &[
            "-m".as_ref(),
            "elf_i386".as_ref(),
            "-Ttext".as_ref(),
            "0x100000".as_ref(),
            "-e".as_ref(),
            "_start".as_ref(),
            "-o".as_ref(),
            kernel.as_os_str(),
            object.as_os_str(),
        ],
    )?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).map_err(|e| e.to_string())?;
    Ok(kernel)
}
