//! `drover-cert`: mint the CA and role certificates of a Drover cluster.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use drover_cert::cli::{Cli, Cmd};
use drover_cert::{create_ca, issue, revoke, show, verify, IssueRequest};
use ssntp::Role;

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Ca { dir, name, days } => {
            let path = create_ca(&dir, &name, days).context("creating the CA")?;
            println!("CA certificate: {}", path.display());
        }
        Cmd::Issue { dir, role, name, hosts, ips, orgs, days, uuid } => {
            if role.intersects(Role::SCHEDULER | Role::SERVER) && hosts.is_empty() && ips.is_empty() {
                anyhow::bail!("a {role} certificate needs --host or --ip: clients verify the address they dial");
            }
            let req = IssueRequest { role, name, hosts, ips, orgs, days, uuid };
            let issued = issue(&dir, &req).context("issuing the certificate")?;
            println!("certificate: {}\nkey:         {}", issued.cert.display(), issued.key.display());
        }
        Cmd::Show { file } => println!("{}", show(&file)?),
        Cmd::Verify { dir, file } => {
            let info = verify(&dir, &file).with_context(|| format!("{}", file.display()))?;
            println!("{}: OK ({} certificate, valid until {})", file.display(), info.roles, info.not_after);
        }
        Cmd::Revoke { dir, file } => {
            let crl = revoke(&dir, &file).context("revoking")?;
            println!("revoked; CRL written to {}", crl.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // Usage errors exit 64 (EX_USAGE), as every Drover binary's do; --help and --version 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover-cert: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
