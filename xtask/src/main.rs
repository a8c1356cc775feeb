//! `cargo xtask docs DIR`: writes, for every Drover binary B, its man pages
//! (`DIR/B/man1/*.1`, one per command and subcommand) and bash, zsh and fish completions
//! (`DIR/B/completions/{bash,zsh,fish}/…`), from the same clap definitions the binaries parse with, so they cannot drift,
//! and the controller API's OpenAPI document (`DIR/drover-controller/openapi.json`, as
//! `GET /v1/openapi.json` serves it; the controller's package puts it in
//! `/usr/share/drover/`). The packages ship them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::CommandFactory as _;

/// Every binary's command, as it parses (the daemons with `--config`).
fn commands() -> Vec<clap::Command> {
    vec![
        drover_cli::cli::command(),
        ssntp::config_file::command_of::<drover_scheduler::cli::Args>(),
        ssntp::config_file::command_of::<drover_controller::shell::Args>(),
        ssntp::config_file::command_of::<drover_launcher::cli::Args>(),
        drover_cert::cli::Cli::command(),
    ]
}

/// Writes a page for `cmd` and, under `drover-x-y` names, for each subcommand.
fn man_pages(cmd: &clap::Command, prefix: &str, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let name = if prefix.is_empty() { cmd.get_name().to_owned() } else { format!("{prefix}-{}", cmd.get_name()) };
    let cmd = cmd.clone().name(name.clone()).bin_name(name.replace('-', " "));
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        man_pages(sub, &name, dir, written)?;
    }
    Ok(())
}

/// Writes the man pages and completions under `dir`; returns the files written.
fn docs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    use clap_complete::Shell;
    let mut written = Vec::new();
    for cmd in commands() {
        let mut cmd = cmd;
        cmd.build();
        let name = cmd.get_name().to_owned();
        let man = dir.join(&name).join("man1");
        std::fs::create_dir_all(&man)?;
        man_pages(&cmd, "", &man, &mut written)?;
        for (shell, sub, file) in [
            (Shell::Bash, "bash", name.clone()),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let target = dir.join(&name).join("completions").join(sub);
            std::fs::create_dir_all(&target)?;
            let path = target.join(file);
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, name.clone(), &mut out);
            std::fs::write(&path, out)?;
            written.push(path);
        }
    }
    let path = dir.join("drover-controller").join("openapi.json");
    std::fs::write(&path, drover_controller::api::openapi().to_pretty_json()?)?;
    written.push(path);
    Ok(written)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["docs", dir] => {
            let written = docs(Path::new(dir))?;
            println!("{} files under {dir}", written.len());
            Ok(())
        }
        _ => {
            eprintln!("usage: cargo xtask docs DIR   (man pages and shell completions for every binary, the API's OpenAPI document)");
            std::process::exit(64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binary_gets_man_pages_and_completions_that_name_its_flags() {
        let dir = tempfile::tempdir().unwrap();
        let written = docs(dir.path()).unwrap();
        let read = |rel: &str| std::fs::read_to_string(dir.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        for (page, flag) in [
            ("drover-scheduler/man1/drover-scheduler.1", "load\\-threshold"),
            ("drover-controller/man1/drover-controller.1", "api\\-listen"),
            ("drover-launcher/man1/drover-launcher.1", "maintenance\\-grace"),
            ("drover-launcher/man1/drover-launcher.1", "config"),
            ("drover/man1/drover.1", "plan"),
            ("drover/man1/drover-plan.1", "count"),
            ("drover-cert/man1/drover-cert-issue.1", "role"),
        ] {
            assert!(read(page).contains(flag), "{page} mentions {flag}");
        }
        assert!(read("drover/completions/bash/drover").contains("plan"), "bash completes subcommands");
        assert!(read("drover-scheduler/completions/zsh/_drover-scheduler").contains("--load-threshold"));
        assert!(read("drover-launcher/completions/fish/drover-launcher.fish").contains("maintenance-grace"));
        assert!(written.len() > 30, "{} files", written.len());
        let openapi: serde_json::Value = serde_json::from_str(&read("drover-controller/openapi.json")).unwrap();
        assert!(openapi["paths"]["/v1/workloads"]["post"].is_object(), "{openapi}");
    }
}
