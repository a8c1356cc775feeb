//! A guest for the `vm` backend's tests: a multiboot kernel of a few instructions that writes a
//! line to its serial console and resets the machine (which, with `-no-reboot`, ends its device
//! model with code 0). Built here with the node's assembler and linker, so the tests need no
//! downloaded image.

use std::path::{Path, PathBuf};

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
    use std::os::unix::fs::PermissionsExt as _;
    let source = dir.join("guest.s");
    let object = dir.join("guest.o");
    let kernel = dir.join("guest.elf");
    // The multiboot header (magic, flags 0, checksum) first in the image; then print through
    // COM1 and pulse the keyboard controller's reset line.
    let asm = format!(
        ".text\n.align 4\n.long 0x1BADB002\n.long 0\n.long -(0x1BADB002)\n.global _start\n_start:\n\
         mov $msg, %esi\n1: lodsb\ntest %al, %al\njz 2f\nmov $0x3f8, %dx\nout %al, %dx\njmp 1b\n\
         2: mov $0xfe, %al\nout %al, $0x64\n3: hlt\njmp 3b\nmsg: .asciz \"{GREETING}\\n\"\n"
    );
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
