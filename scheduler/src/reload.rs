//! The scheduler's TLS material without a restart: on SIGHUP, and when the CA, certificate,
//! key or revocation list files change (looked at every [`CHECK_EVERY`]), it is loaded again.
//! New handshakes use it at once; peers already connected whose certificate the new list
//! revokes are closed. Material that does not load is refused with an error in the log, and
//! the current material stays.

use std::time::Duration;

use anyhow::Context as _;
use ssntp::cli::ReloadTrigger;
use ssntp::server::ServerControl;
use ssntp::tls::{Identity, Revoked, TlsPaths};
use ssntp::Role;

/// How often the files are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Reloads on SIGHUP or a change of the files in `paths`, until the task is dropped.
pub async fn watch(control: ServerControl, paths: TlsPaths) {
    let files = [Some(&paths.ca), Some(&paths.cert), paths.key.as_ref(), paths.crl.as_ref()];
    let mut trigger = ReloadTrigger::new(files.into_iter().flatten().cloned().collect(), CHECK_EVERY);
    loop {
        let why = trigger.next().await;
        match reload(&control, &paths) {
            Ok(closed) => tracing::info!(why, revoked_peers_closed = closed, "TLS material reloaded"),
            Err(e) => {
                tracing::error!(why, error = format!("{e:#}"), "TLS material not reloaded; the current one stays")
            }
        }
    }
}

/// Loads the material of `paths`, hands it to the server and closes revoked peers; returns how
/// many were closed.
///
/// # Errors
/// Unreadable or invalid files, or a certificate without the scheduler role.
pub fn reload(control: &ServerControl, paths: &TlsPaths) -> anyhow::Result<usize> {
    let identity = Identity::load(paths).context("loading TLS material")?;
    identity.require_role(Role::SCHEDULER, &paths.cert)?;
    let tls = ssntp::tls::server_config(&identity).context("building the TLS configuration")?;
    let revoked = Revoked::from_crls(&identity.crls)?;
    control.set_tls(tls);
    Ok(control.close_revoked(&revoked))
}
