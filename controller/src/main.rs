//! `drover-controller` binary; the work is in the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    use drover_controller::shell;
    ssntp::cli::run_daemon("drover-controller", shell::prepare, shell::run).await
}
