//! `drover`: the user's command line; the work is in the library (`cli`, `up`).

use drover_cli::cli::{self, Cli, Cmd};
use drover_cli::up::{self, UpOptions};

/// `drover events | head`: once the reader has gone, writing more is pointless, and Rust's
/// `println!` panics on the broken pipe. Exit quietly instead, as Unix tools do (without the
/// `unsafe` that restoring SIGPIPE's default would take); every other panic reports as usual.
fn quiet_on_closed_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        report(info);
    }));
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    quiet_on_closed_pipe();
    let cli: Cli = ssntp::cli::parse_or_exit_with(drover_cli::cli::command());
    let json = cli.json;
    // `drover plan` keeps exit status 1 for "would not place", as `nomad job plan` does.
    let error_status = if matches!(cli.command, Cmd::Plan { .. }) { 2 } else { 1 };
    let result = match cli.command {
        Cmd::Up { port, api_port, once, bin_dir, ha } => {
            // Handlers are installed now, so Ctrl-C at any point stops the children cleanly.
            let ctrl_c = ssntp::cli::shutdown_signal();
            let opts = UpOptions { dir: cli.api.dir, port, api_port, once, bin_dir, ha };
            up::run(opts, ctrl_c).await.map(|()| std::process::ExitCode::SUCCESS)
        }
        _ => cli::run(cli).await,
    };
    result.unwrap_or_else(|e| {
        if json {
            // Scripts that asked for JSON get their errors in it too, on stdout.
            println!("{}", drover_cli::cli::error_json(&e));
        }
        eprintln!("drover: error: {e:#}");
        std::process::ExitCode::from(error_status)
    })
}
