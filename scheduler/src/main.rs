//! `drover-scheduler` binary; the work is in the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    use drover_scheduler::{cli::Args, shell};
    ssntp::cli::run_daemon("drover-scheduler", |args: Args| shell::prepare(args), shell::run).await
}
