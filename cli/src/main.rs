//! `drover`: the user's command line; the work is in the library (`cli`, `up`).

use drover_cli::cli::{self, Cli, Cmd};
use drover_cli::up::{self, UpOptions};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli: Cli = ssntp::cli::parse_or_exit();
    let result = match cli.command {
        Cmd::Up { port, api_port, once, bin_dir } => {
            // Handlers are installed now, so Ctrl-C at any point stops the children cleanly.
            let ctrl_c = ssntp::cli::shutdown_signal();
            let opts = UpOptions { dir: cli.api.dir, port, api_port, once, bin_dir };
            up::run(opts, ctrl_c).await.map(|()| std::process::ExitCode::SUCCESS)
        }
        _ => cli::run(cli).await,
    };
    result.unwrap_or_else(|e| {
        eprintln!("drover: error: {e:#}");
        std::process::ExitCode::FAILURE
    })
}
