//! The `artifact` backend (the EVE seed's "tasks defined by volumes derived from JAR files"): a
//! binary artifact in one of the node's volumes, run by a runtime among the node's hypervisor
//! tools, as a `vm` guest is run by a device model. Each runtime found in `--hypervisor-tools`
//! directories (or on `PATH`) is a kind of artifact the node offers (`runtime:KIND`), so a node
//! gains JARs by being given a JVM, not a new launcher. The runtime is the instance's anchor
//! process under the shim. What runs is decided here, purely; the shim runs it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ssntp::payload::ARTIFACT_RUNTIMES;

/// What a runtime may take beyond the heap the workload asked for, MiB (a JVM's metaspace, code
/// cache, thread stacks and collector): the instance's cgroup holds the heap plus this, and it
/// is the `artifact` backend's anchor tax before any is measured. A JVM running a small program
/// holds about 35 MiB besides its heap on this project's test machine.
pub const RUNTIME_MB: u64 = 128;

/// The runtimes in `dirs` (or on `PATH` when there are none), by the kind of artifact they run:
/// the first directory with an executable of the runtime's name wins (a symlink counts, as
/// Debian's `/usr/bin/java` is one).
pub fn runtimes(dirs: &[PathBuf]) -> BTreeMap<String, PathBuf> {
    let search = crate::probe::tool_dirs(dirs);
    let mut found = BTreeMap::new();
    for (kind, program) in ARTIFACT_RUNTIMES {
        let first = search
            .iter()
            .map(|dir| dir.join(program))
            .find(|path| std::fs::metadata(path).is_ok_and(|m| crate::probe::is_executable(&m)));
        if let Some(path) = first {
            found.insert((*kind).to_owned(), path);
        }
    }
    found
}

/// The runtime's command line for the artifact of `kind` at `artifact` (its canonical path on
/// the node) with `args` after it. A JAR: the JVM with its heap capped at `heap_mb` (none when
/// 0: the JVM then sizes it from the cgroup), `-jar`, the artifact.
pub fn argv(runtime: &Path, kind: &str, artifact: &Path, heap_mb: u64, args: &[String]) -> Vec<String> {
    let mut argv = vec![runtime.display().to_string()];
    if kind == "jar" {
        if heap_mb > 0 {
            argv.push(format!("-Xmx{heap_mb}m"));
        }
        argv.push("-jar".to_owned());
    }
    argv.push(artifact.display().to_string());
    argv.extend(args.iter().cloned());
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(dir: &Path, name: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn runtimes_are_found_in_the_tools_directories_first_wins_symlinks_count() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
        for d in [&a, &b, &c] {
            std::fs::create_dir(d).unwrap();
        }
        tool(&a, "java", 0o644);
        tool(&b, "java", 0o755);
        std::os::unix::fs::symlink(b.join("java"), c.join("java")).unwrap();
        let found = runtimes(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(found.get("jar"), Some(&b.join("java")), "a file that is not executable is not a runtime");
        assert_eq!(runtimes(std::slice::from_ref(&c)).get("jar"), Some(&c.join("java")), "through a symlink");
        assert!(runtimes(&[a]).is_empty());
        assert!(runtimes(&[tmp.path().join("missing")]).is_empty());
    }

    #[test]
    fn a_jar_runs_under_the_jvm_with_its_heap_capped() {
        let argv = argv(
            Path::new("/opt/jdk/bin/java"),
            "jar",
            Path::new("/srv/a/report.jar"),
            256,
            &["--month".into(), "11".into()],
        );
        assert_eq!(argv, ["/opt/jdk/bin/java", "-Xmx256m", "-jar", "/srv/a/report.jar", "--month", "11"]);
        let uncapped = super::argv(Path::new("java"), "jar", Path::new("/srv/a/r.jar"), 0, &[]);
        assert_eq!(uncapped, ["java", "-jar", "/srv/a/r.jar"]);
    }
}
