//! `drover-controller` (foundation build): connects to the scheduler as the controller and logs
//! what the cluster reports.

use ssntp::cli::TlsArgs;
use ssntp::client::ClientEvent;
use ssntp::identity::load_or_create_uuid;
use ssntp::Role;

/// The Drover controller. This build connects to the scheduler and logs cluster events; the
/// durable store and HTTPS API arrive with the controller issue.
#[derive(Debug, clap::Parser)]
#[command(name = "drover-controller", version)]
struct Args {
    /// Scheduler address `host:port` (repeatable: tried in order).
    #[arg(long = "server", required = true)]
    servers: Vec<String>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Directory for the controller's identity.
    #[arg(long, default_value = "/var/lib/drover/controller")]
    state_dir: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ssntp::cli::init_logging();
    let args: Args = ssntp::cli::parse_or_exit();
    let prepared = (|| -> anyhow::Result<_> {
        let identity = ssntp::tls::Identity::load(&args.tls.paths(None))?;
        identity.require_role(Role::CONTROLLER, &args.tls.cert)?;
        let tls = ssntp::tls::client_config(&identity)?;
        let uuid = load_or_create_uuid(&args.state_dir, Role::CONTROLLER)?;
        Ok((tls, uuid))
    })();
    let (tls, uuid) = prepared.unwrap_or_else(|e| ssntp::cli::usage_error("drover-controller", &format_args!("{e:#}")));
    let (_client, mut events) = drover_controller::link::connect(args.servers, tls, uuid);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(ClientEvent::Connected { target, server_uuid, .. }) => tracing::info!(%target, scheduler = %server_uuid, "connected"),
                Some(ClientEvent::Message { frame, message }) => tracing::info!("{}", drover_controller::link::describe(frame.origin, &message)),
                Some(ClientEvent::Disconnected { reason }) => tracing::warn!(%reason, "disconnected"),
                Some(ClientEvent::ConnectFailed { target, reason, .. }) => tracing::debug!(%target, %reason, "connect failed"),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(())
}
