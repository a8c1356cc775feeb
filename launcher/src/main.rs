//! `drover-launcher` binary: flags, logging, signals; the work is in the library.

use drover_launcher::{cli::Args, shell};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args: Args = ssntp::cli::parse_or_exit();
    let prepared = match shell::prepare(args) {
        Ok(p) => p,
        Err(e) => ssntp::cli::usage_error("drover-launcher", &format_args!("{e:#}")),
    };
    match shell::run(prepared, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover-launcher: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received; shutting down");
}
