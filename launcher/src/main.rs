//! `drover-launcher` binary; the work is in the library.
//!
//! `drover-launcher shim --dir DIR` is the per-instance supervisor the launcher starts itself;
//! it runs without an async runtime. `drover-launcher unit-ended --dir DIR` is the
//! `ExecStopPost=` hook of the units of the `systemd` backend. `drover-launcher doctor`
//! inspects the host and recommends flags.

/// `drover-launcher MODE --dir DIR`, for the helper modes the launcher and systemd start.
fn helper(args: &[String], run: fn(&std::path::Path) -> i32, usage: &str) -> std::process::ExitCode {
    match (args.get(2).map(String::as_str), args.get(3)) {
        (Some("--dir"), Some(dir)) => {
            std::process::ExitCode::from(u8::try_from(run(std::path::Path::new(dir))).unwrap_or(1))
        }
        _ => {
            eprintln!("usage: {usage}");
            std::process::ExitCode::from(64)
        }
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("shim") => {
            return helper(
                &args,
                drover_launcher::shim::run,
                "drover-launcher shim --dir INSTANCE_DIR (started by the launcher itself)",
            )
        }
        Some("doctor") => {
            let code = drover_launcher::doctor::run(&args[2..]);
            return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
        Some("unit-ended") => {
            return helper(
                &args,
                drover_launcher::systemd::unit_ended,
                "drover-launcher unit-ended --dir INSTANCE_DIR (systemd runs it after a unit)",
            )
        }
        _ => {}
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        use drover_launcher::{cli::Args, shell};
        ssntp::cli::run_daemon("drover-launcher", |args: Args| shell::prepare(args), shell::run).await
    })
}
