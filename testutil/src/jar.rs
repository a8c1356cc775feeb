//! A JAR for the `artifact` backend's tests, compiled here with the node's JDK (`javac`, `jar`),
//! so the tests need no downloaded artifact. Its program prints its arguments, its
//! `DROVER_CPUS` and the heap the JVM was given; with `fill` as its first argument it allocates
//! until the heap is exhausted (an `OutOfMemoryError`, exit code 1).

use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = r#"public class Report {
    public static void main(String[] args) {
        System.out.println("args=" + String.join(" ", args));
        System.out.println("cpus=" + System.getenv("DROVER_CPUS"));
        System.out.println("heap_max_mib=" + Runtime.getRuntime().maxMemory() / (1024 * 1024));
        if (args.length > 0 && args[0].equals("fill")) {
            java.util.List<byte[]> held = new java.util.ArrayList<>();
            for (int i = 0; i < 65536; i++) {
                held.add(new byte[1 << 20]);
            }
            System.out.println("held " + held.size() + " MiB");
        }
    }
}
"#;

/// Builds `report.jar` in `dir` (its classes in `dir/classes`).
///
/// # Errors
/// Why it could not be built: no JDK here, or its tools failed.
pub fn report(dir: &Path) -> Result<PathBuf, String> {
    for tool in ["java", "javac", "jar"] {
        if !on_path(tool) {
            return Err(format!("no {tool} on PATH (apt-get install default-jdk-headless)"));
        }
    }
    let classes = dir.join("classes");
    std::fs::create_dir_all(&classes).map_err(|e| format!("{}: {e}", classes.display()))?;
    let source = dir.join("Report.java");
    std::fs::write(&source, SOURCE).map_err(|e| format!("{}: {e}", source.display()))?;
    let jar = dir.join("report.jar");
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?}: {} {}", out.status, String::from_utf8_lossy(&out.stderr)))
        }
    };
    run(Command::new("javac").arg("-d").arg(&classes).arg(&source))?;
    run(Command::new("jar")
        .arg("--create")
        .arg("--file")
        .arg(&jar)
        .args(["--main-class", "Report", "-C"])
        .arg(&classes)
        .arg("."))?;
    Ok(jar)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
