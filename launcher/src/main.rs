//! `drover-launcher` binary; the work is in the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    use drover_launcher::{cli::Args, shell};
    ssntp::cli::run_daemon("drover-launcher", |args: Args| shell::prepare(args), shell::run).await
}
