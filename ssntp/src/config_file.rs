//! `--config FILE` for the daemons (feature `cli`): a TOML file whose keys are the daemon's long
//! flags without the dashes, turned into flags placed before the command line's own, so that
//! every value goes through the same parser and checks as a flag, and a flag given on the
//! command line wins over the file.
//!
//! ```toml
//! listen = "0.0.0.0:8888"      # --listen 0.0.0.0:8888
//! heartbeat = true             # --heartbeat (false: left out)
//! cpu-overcommit = 4.0         # --cpu-overcommit 4
//! label = ["zone=a", "rack=3"] # a repeatable flag: --label zone=a --label rack=3
//! ```
//!
//! Keys may use `-` or `_`. A key that is not a flag, a table, or a list for a flag that takes
//! one value is refused with the file's name and the key; the daemon exits 64.

use std::ffi::OsString;

use clap::{ArgAction, Command};

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// It could not be read.
    #[error("--config {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not TOML.
    #[error("--config {file}: not valid TOML: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key the file may not have, or a value of the wrong shape.
    #[error("--config {file}: {key}: {message}")]
    Key {
        /// The file.
        file: String,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The `--config FILE` argument, as the daemons add it to their command.
pub fn config_arg() -> clap::Arg {
    clap::Arg::new("config").long("config").value_name("FILE").help(
        "Read flags from a TOML file first: each key a long flag without its dashes \
             (`listen = \"0.0.0.0:8888\"`, `heartbeat = true`, `label = [\"zone=a\"]`); a flag on \
             the command line wins over the file",
    )
}

/// The file `argv` names with `--config FILE` or `--config=FILE`, if any.
pub fn config_path(argv: &[OsString]) -> Option<OsString> {
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        let text = a.to_string_lossy();
        if text == "--" {
            return None;
        }
        if text == "--config" {
            return args.next().cloned();
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(path.into());
        }
    }
    None
}

/// The flags `text` (the contents of `file`) stands for, for `cmd`; keys whose flag `argv`
/// gives again are left out when the flag is repeatable (the command line replaces the
/// file's list; a single-valued flag given twice keeps the last, the command line's).
///
/// # Errors
/// Not TOML, a key that is not one of `cmd`'s flags, or a value of the wrong shape.
pub fn flags_from(cmd: &Command, file: &str, text: &str, argv: &[OsString]) -> Result<Vec<OsString>, ConfigFileError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigFileError::Syntax { file: file.to_owned(), message: e.to_string() })?;
    let key_error =
        |key: &str, message: String| ConfigFileError::Key { file: file.to_owned(), key: key.to_owned(), message };
    let mut out = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(long.as_str()) && !a.is_hide_set()) else {
            return Err(key_error(key, format!("not a flag of {} (see --help)", cmd.get_name())));
        };
        if long == "config" || long == "help" || long == "version" {
            return Err(key_error(key, "cannot be set from a configuration file".into()));
        }
        let given = argv.iter().skip(1).any(|a| {
            let a = a.to_string_lossy();
            a == format!("--{long}")
                || a.starts_with(&format!("--{long}="))
                || arg.get_short().is_some_and(|s| a == format!("-{s}"))
        });
        let action = arg.get_action();
        if given && matches!(action, ArgAction::Append) {
            continue;
        }
        let flag = format!("--{long}");
        match (value, action) {
            (toml::Value::Boolean(on), ArgAction::SetTrue) => {
                if *on {
                    out.push(flag.into());
                }
            }
            (toml::Value::Boolean(on), ArgAction::SetFalse) => {
                if !*on {
                    out.push(flag.into());
                }
            }
            (_, ArgAction::SetTrue | ArgAction::SetFalse) => {
                return Err(key_error(key, "takes true or false".into()));
            }
            (toml::Value::Array(items), ArgAction::Append) => {
                for item in items {
                    out.push(format!("{flag}={}", scalar(item).map_err(|m| key_error(key, m))?).into());
                }
            }
            (toml::Value::Array(_), _) => return Err(key_error(key, "takes one value, not a list".into())),
            (value, _) => out.push(format!("{flag}={}", scalar(value).map_err(|m| key_error(key, m))?).into()),
        }
    }
    Ok(out)
}

fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => Err("takes a string, number or true/false".into()),
    }
}

/// `argv` with the flags of the `--config` file it names (if any) placed before its own.
///
/// # Errors
/// As [`flags_from`], or the file cannot be read.
pub fn expand(cmd: &Command, argv: Vec<OsString>) -> Result<Vec<OsString>, ConfigFileError> {
    let Some(path) = config_path(&argv) else { return Ok(argv) };
    let file = path.to_string_lossy().into_owned();
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read { file: file.clone(), source })?;
    let flags = flags_from(cmd, &file, &text, &argv)?;
    let mut out = Vec::with_capacity(argv.len() + flags.len());
    let mut argv = argv.into_iter();
    out.extend(argv.next());
    out.extend(flags);
    out.extend(argv);
    Ok(out)
}

/// Why a daemon's command line (with its `--config` file) was refused.
#[derive(Debug)]
pub enum ParseFailure {
    /// The file.
    File(ConfigFileError),
    /// A flag, from the file or the command line (or `--help`, which is no failure).
    Flags(clap::Error),
}

/// The daemon command `T` with `--config` added (flags given twice keep the last).
pub fn command_of<T: clap::CommandFactory>() -> Command {
    T::command().arg(config_arg()).args_override_self(true)
}

/// Parses `argv` as daemon `T`'s command line, the flags of its `--config` file first.
///
/// # Errors
/// See [`ParseFailure`].
pub fn parse<T: clap::Parser>(argv: Vec<OsString>) -> Result<T, ParseFailure> {
    let cmd = command_of::<T>();
    let argv = expand(&cmd, argv).map_err(ParseFailure::File)?;
    cmd.try_get_matches_from(argv).and_then(|m| T::from_arg_matches(&m)).map_err(ParseFailure::Flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cmd() -> Command {
        Command::new("daemon")
            .args_override_self(true)
            .arg(config_arg())
            .arg(Arg::new("listen").long("listen").default_value("0.0.0.0:1"))
            .arg(Arg::new("heartbeat").long("heartbeat").action(ArgAction::SetTrue))
            .arg(Arg::new("label").long("label").action(ArgAction::Append))
            .arg(Arg::new("ratio").long("cpu-overcommit").value_parser(clap::value_parser!(f64)))
            .arg(Arg::new("secret").long("secret").hide(true))
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("daemon").chain(args.iter().copied()).map(OsString::from).collect()
    }

    fn matches(text: &str, args: &[&str]) -> Result<clap::ArgMatches, String> {
        let flags = flags_from(&cmd(), "d.toml", text, &argv(args)).map_err(|e| e.to_string())?;
        let mut all = argv(&[]);
        all.extend(flags);
        all.extend(argv(args).into_iter().skip(1));
        cmd().try_get_matches_from(all).map_err(|e| e.to_string())
    }

    #[test]
    fn keys_become_flags_and_the_command_line_wins() {
        let text =
            "listen = \"127.0.0.1:9\"\nheartbeat = true\ncpu_overcommit = 2.5\nlabel = [\"zone=a\", \"rack=3\"]\n";
        let m = matches(text, &[]).unwrap();
        assert_eq!(m.get_one::<String>("listen").unwrap(), "127.0.0.1:9");
        assert!(m.get_flag("heartbeat"));
        assert_eq!(m.get_one::<f64>("ratio"), Some(&2.5));
        let labels: Vec<&String> = m.get_many::<String>("label").unwrap().collect();
        assert_eq!(labels, ["zone=a", "rack=3"]);

        let m = matches(text, &["--listen", "10.0.0.1:1", "--label", "zone=b"]).unwrap();
        assert_eq!(m.get_one::<String>("listen").unwrap(), "10.0.0.1:1", "a flag beats the file");
        let labels: Vec<&String> = m.get_many::<String>("label").unwrap().collect();
        assert_eq!(labels, ["zone=b"], "a repeatable flag on the command line replaces the file's list");
        assert!(!matches("heartbeat = false", &[]).unwrap().get_flag("heartbeat"));
    }

    #[test]
    fn unknown_keys_bad_shapes_and_bad_values_are_refused_with_the_file_and_key() {
        let err = |text: &str| matches(text, &[]).unwrap_err();
        assert!(
            err("lisen = \"x\"").contains("--config d.toml: lisen: not a flag of daemon"),
            "{}",
            err("lisen = \"x\"")
        );
        assert!(err("secret = \"x\"").contains("not a flag"), "hidden flags are not configuration");
        assert!(err("config = \"other.toml\"").contains("cannot be set"));
        assert!(err("heartbeat = \"yes\"").contains("heartbeat: takes true or false"));
        assert!(err("listen = [\"a\", \"b\"]").contains("listen: takes one value, not a list"));
        assert!(err("[listen]\nport = 1").contains("takes a string, number or true/false"));
        assert!(err("listen = ").contains("--config d.toml: not valid TOML"), "{}", err("listen = "));
        // The value goes through the flag's own parser.
        assert!(err("cpu_overcommit = \"lots\"").contains("invalid value 'lots' for '--cpu-overcommit"));
    }

    #[test]
    fn the_config_path_is_found_in_either_spelling_and_not_after_a_double_dash() {
        assert_eq!(config_path(&argv(&["--config", "a.toml"])), Some("a.toml".into()));
        assert_eq!(config_path(&argv(&["--listen", "x", "--config=b.toml"])), Some("b.toml".into()));
        assert_eq!(config_path(&argv(&["--", "--config", "c.toml"])), None);
        assert_eq!(config_path(&argv(&[])), None);
    }
}
