//! `drover-cert`'s command line (the binary runs it; `cargo xtask` makes its man page and
//! completions from it).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ssntp::Role;

/// Mints the certificates of a Drover cluster (in the manner of ciao-cert).
///
/// A typical cluster:
///
///   drover-cert ca --dir pki
///   drover-cert issue --dir pki --role scheduler --name sched --host sched.example --ip 10.0.0.1
///   drover-cert issue --dir pki --role controller --name ctl
///   drover-cert issue --dir pki --role agent --name node1
///   drover-cert issue --dir pki --role user --name alice --org admin         # an API user
///
/// How ciao-cert's flags map:
///   -anchor                    → `ca` (the CA is its own certificate, not the scheduler's)
///   -anchor-cert FILE          → `--dir DIR` (the CA is read from DIR/ca.pem, DIR/ca-key.pem)
///   -role agent,netagent       → `--role agent` (one role per certificate, on purpose)
///   -host a,b                  → `--host a --host b` (DNS names or IP literals)
///   -ip a,b                    → `--ip a --ip b`
///   -organization ORG          → `--org ORG` (repeatable: tenants, or `admin`)
///   -directory DIR             → `--dir DIR`
///   -dump FILE                 → `show FILE`
///   -verify                    → `verify --dir DIR FILE`
///   -email                     → dropped (no e-mail SAN)
///   (none)                     → `revoke --dir DIR FILE` writes DIR/crl.pem for `--crl`
#[derive(Debug, Parser)]
#[command(name = "drover-cert", version, verbatim_doc_comment)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create a CA in DIR: ca.pem, ca-key.pem (0600), an empty crl.pem.
    Ca {
        /// CA directory (created if missing; an existing CA is never replaced).
        #[arg(long)]
        dir: PathBuf,
        /// Common Name of the CA.
        #[arg(long, default_value = "Drover CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a role certificate: DIR/<role>-<name>.pem and DIR/<role>-<name>-key.pem (0600).
    Issue {
        /// CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// agent (a launcher), controller (the controller daemon), user (a person using the API,
        /// with --org), scheduler, server (the API's TLS certificate), netagent or cnciagent.
        #[arg(long)]
        role: Role,
        /// Holder name: Common Name and part of the file names.
        #[arg(long)]
        name: String,
        /// DNS name or IP address clients dial (repeatable; the scheduler needs at least one).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// IP address SAN (repeatable).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// Organization: a tenant the holder may act for, or `admin` (repeatable).
        #[arg(long = "org")]
        orgs: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// The UUID the holder is (agents, controllers, users): by default a new one. Give an
        /// existing launcher's (`cat STATE_DIR/uuid-agent`) to issue it a certificate it can
        /// keep using its instances with.
        #[arg(long)]
        uuid: Option<ssntp::Uuid>,
    },
    /// Print a certificate: subject, role, SANs, validity, SPKI fingerprint.
    Show {
        /// Certificate file (PEM).
        file: PathBuf,
    },
    /// Check a certificate against the CA in DIR: signature, validity, revocation, role.
    Verify {
        /// CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// Certificate file (PEM).
        file: PathBuf,
    },
    /// Revoke a certificate and rewrite DIR/crl.pem (give it to the scheduler with --crl).
    Revoke {
        /// CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// Certificate file (PEM).
        file: PathBuf,
    },
}
