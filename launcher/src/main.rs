//! `drover-launcher` binary; the work is in the library.
//!
//! `drover-launcher shim --dir DIR` is the per-instance supervisor the launcher starts itself;
//! it runs without an async runtime. `drover-launcher unit-ended --dir DIR` is the
//! `ExecStopPost=` hook of the units of the `systemd` backend.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("shim") {
        return match (args.get(2).map(String::as_str), args.get(3)) {
            (Some("--dir"), Some(dir)) => {
                let code = drover_launcher::shim::run(std::path::Path::new(dir));
                std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
            }
            _ => {
                eprintln!("usage: drover-launcher shim --dir INSTANCE_DIR (started by the launcher itself)");
                std::process::ExitCode::from(64)
            }
        };
    }
    if args.get(1).map(String::as_str) == Some("unit-ended") {
        return match (args.get(2).map(String::as_str), args.get(3)) {
            (Some("--dir"), Some(dir)) => {
                let code = drover_launcher::systemd::unit_ended(std::path::Path::new(dir));
                std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
            }
            _ => {
                eprintln!("usage: drover-launcher unit-ended --dir INSTANCE_DIR (systemd runs it after a unit)");
                std::process::ExitCode::from(64)
            }
        };
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        use drover_launcher::{cli::Args, shell};
        ssntp::cli::run_daemon("drover-launcher", |args: Args| shell::prepare(args), shell::run).await
    })
}
