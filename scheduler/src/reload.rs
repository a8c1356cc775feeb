//! The scheduler's TLS material without a restart: on SIGHUP, and when the CA, certificate,
//! key or revocation list files change (looked at every [`CHECK_EVERY`]), it is loaded again.
//! New handshakes use it at once; peers already connected whose certificate the new list
//! revokes are closed. Material that does not load is refused with an error in the log, and
//! the current material stays.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use ssntp::server::ServerControl;
use ssntp::tls::{Identity, Revoked, TlsPaths};
use ssntp::Role;

/// How often the files are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Reloads on SIGHUP or a change of the files in `paths`, until the task is dropped.
pub async fn watch(control: ServerControl, paths: TlsPaths) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler; TLS material reloads only when its files change");
            None
        }
    };
    let mut seen = stamps(&paths);
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = ticker.tick() => {
                if stamps(&paths) == seen {
                    continue;
                }
                "its files changed"
            }
        };
        seen = stamps(&paths);
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

/// What identifies a version of each file: its modification time and length.
fn stamps(paths: &TlsPaths) -> Vec<Option<(SystemTime, u64)>> {
    [Some(&paths.ca), Some(&paths.cert), paths.key.as_ref(), paths.crl.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}
