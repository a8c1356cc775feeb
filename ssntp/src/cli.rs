//! Command-line helpers shared by Drover's daemons (feature `cli`).

pub use crate::tls::TlsArgs;

/// Exit code for invalid command lines and configuration (`EX_USAGE` of sysexits.h).
pub const EX_USAGE: i32 = 64;

/// Parses the command line; `--help` and `--version` print and exit 0, anything invalid prints
/// clap's message and exits with [`EX_USAGE`] before the daemon binds or dials anything.
pub fn parse_or_exit<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

/// Reports an invalid configuration found after parsing (a file that does not load, a
/// certificate with the wrong role …) and exits with [`EX_USAGE`].
pub fn usage_error(program: &str, error: &dyn std::fmt::Display) -> ! {
    eprintln!("{program}: invalid configuration: {error}");
    std::process::exit(EX_USAGE);
}
