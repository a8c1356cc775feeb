//! Task definitions in unit-like files, as the sd-taskpacker seed writes them:
//! `build.workorder` with a `[Workorder]` section, `generate-disk-graph.batch` with `[Batch]`.
//! The file's name is the task's name; its extension, the work class.
//!
//! ```ini
//! # /etc/drover/units/massif.batch
//! [Batch]
//! Exec=/usr/bin/valgrind --tool=massif
//! Version=2
//! Size=small                  # tiny 32 MiB | small 128 | medium 256 | large 1024
//! Priority=5
//! Deadline=2h                 # latest start, counted from submission
//! Parameters=target=/usr/bin/gnome-shell|/usr/bin/systemd runs=int
//! ParametersAs=arguments      # arguments (--key=value appended to Exec=) | json (parameters.json)
//! ```
//!
//! Other keys: `Backend=` (process, systemd), `Memory=` and `CPUs=` instead of `Size=`,
//! `Environment=K=V …`, `MaxRunTime=` (or `RuntimeMaxSec=`), `Restart=` (never, on-failure,
//! always), `Root=yes` (a root task: started with the controller, with a state directory kept
//! across runs), `Features=`, `Label=K=V`, `Description=`. `#` and `;` start comments; a line
//! ending in `\` goes on. Every error names the file and the line.

use std::collections::BTreeMap;

use ssntp::payload::{Backend, Requirements, SizeClass, WorkClass, MEMORY_CHUNK_MB};

use crate::restart::{Restart, RestartPolicy};
use crate::workload::{check_name, ParamType, ParamsAs, SpecError, Workload};

/// The extensions of task files, with the class and section each stands for.
pub const KINDS: [(&str, WorkClass, &str); 2] =
    [("workorder", WorkClass::Workorder, "Workorder"), ("batch", WorkClass::Batch, "Batch")];

/// Whether a file name is a task file (`NAME.workorder` or `NAME.batch`).
pub fn is_unit_file(file_name: &str) -> bool {
    KINDS.iter().any(|(ext, ..)| file_name.rsplit_once('.').is_some_and(|(stem, e)| e == *ext && !stem.is_empty()))
}

const KEYS: &[&str] = &[
    "Exec",
    "Version",
    "Description",
    "Size",
    "Memory",
    "CPUs",
    "Priority",
    "Deadline",
    "Parameters",
    "ParametersAs",
    "Backend",
    "Environment",
    "MaxRunTime",
    "RuntimeMaxSec",
    "Restart",
    "Root",
    "Features",
    "Label",
];

/// Keys that may be given more than once (their values add up).
const REPEATABLE: &[&str] = &["Parameters", "Environment", "Features", "Label"];

/// Parses a task file named `file_name` (`build.workorder`); errors say
/// `build.workorder:LINE`.
///
/// # Errors
/// A [`SpecError`] whose field is `FILE:LINE` (or `FILE` for the name or a missing key).
pub fn parse_unit(file_name: &str, text: &str) -> Result<Workload, SpecError> {
    let at = |line: usize, message: String| SpecError { field: format!("{file_name}:{line}"), message };
    let whole = |message: String| SpecError { field: file_name.to_owned(), message };
    let Some((stem, ext)) = file_name.rsplit_once('.') else {
        return Err(whole("a task file is named NAME.workorder or NAME.batch".into()));
    };
    let Some(&(_, class, section)) = KINDS.iter().find(|(e, ..)| *e == ext) else {
        return Err(whole(format!(".{ext}: a task file is named NAME.workorder or NAME.batch")));
    };
    check_name(stem).map_err(|m| whole(format!("the file's name is the task's name: {m}")))?;

    // key → (line, values in order)
    let mut keys: BTreeMap<&'static str, (usize, Vec<String>)> = BTreeMap::new();
    let mut in_section = false;
    let mut seen_section = false;
    let mut pending = String::new();
    let mut pending_line = 0;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = raw.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';')) {
            continue;
        }
        if pending.is_empty() {
            pending_line = number;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let line = std::mem::take(&mut pending);
        let number = pending_line;
        if let Some(name) = line.strip_prefix('[') {
            let name = name.strip_suffix(']').ok_or_else(|| at(number, format!("{line:?}: a section is [Name]")))?;
            if name != section {
                return Err(at(
                    number,
                    format!("[{name}]: a .{ext} file has one section, [{section}] (the extension says the class)"),
                ));
            }
            if seen_section {
                return Err(at(number, format!("[{section}] is given twice")));
            }
            in_section = true;
            seen_section = true;
            continue;
        }
        if !in_section {
            return Err(at(number, format!("{line:?} comes before [{section}]")));
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(at(number, format!("{line:?} is not Key=Value")));
        };
        let key = key.trim();
        let Some(&known) = KEYS.iter().find(|k| **k == key) else {
            return Err(at(number, format!("unknown key {key}= in [{section}] (keys: {})", KEYS.join(", "))));
        };
        let entry = keys.entry(known).or_insert_with(|| (number, Vec::new()));
        if !entry.1.is_empty() && !REPEATABLE.contains(&known) {
            return Err(at(number, format!("{known}= is given twice (first on line {})", entry.0)));
        }
        entry.0 = number;
        entry.1.push(value.trim().to_owned());
    }
    if !pending.is_empty() {
        return Err(at(pending_line, "the file ends in a continued line ('\\')".into()));
    }
    if !seen_section {
        return Err(whole(format!("no [{section}] section")));
    }
    let one = |key: &str| keys.get(key).and_then(|(line, v)| v.last().map(|v| (*line, v.as_str())));
    let all = |key: &str| keys.get(key).map(|(line, v)| (*line, v.clone())).unwrap_or_default();

    let (exec_line, exec) = one("Exec").ok_or_else(|| whole(format!("[{section}] needs Exec= (the command)")))?;
    let argv = split_command(exec).map_err(|m| at(exec_line, format!("Exec=: {m}")))?;
    if argv.first().is_none_or(|p| !p.starts_with('/')) {
        return Err(at(exec_line, "Exec=: the program is an absolute path (/usr/bin/…)".into()));
    }
    let mut env = BTreeMap::new();
    let (env_line, env_values) = all("Environment");
    for value in env_values {
        for word in split_command(&value).map_err(|m| at(env_line, format!("Environment=: {m}")))? {
            let (k, v) =
                word.split_once('=').ok_or_else(|| at(env_line, format!("Environment=: {word:?} is not K=V")))?;
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    let backend = match one("Backend").map(|(_, v)| v) {
        None | Some("process") => Backend::Process { argv, env },
        Some("systemd") => Backend::Systemd { argv, env },
        Some(other) => {
            let line = keys["Backend"].0;
            return Err(at(line, format!("Backend={other}: process or systemd")));
        }
    };

    let version = match one("Version") {
        Some((line, v)) => {
            let ok =
                !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.+~".contains(c));
            if !ok {
                return Err(at(line, "Version=: 1-64 letters, digits and - _ . + ~".into()));
            }
            Some(v.to_owned())
        }
        None => None,
    };
    let number_at = |key: &str| -> Result<Option<u64>, SpecError> {
        one(key)
            .map(|(line, v)| v.parse::<u64>().map_err(|_| at(line, format!("{key}={v}: a whole number"))))
            .transpose()
    };
    let mut vcpus = 1;
    let mem_mb = match (one("Size"), number_at("Memory")?) {
        (Some(_), Some(_)) => return Err(at(keys["Memory"].0, "give Size= or Memory=, not both".into())),
        (Some((line, size)), None) => {
            let class = SizeClass::ALL
                .into_iter()
                .find(|c| c.name() == size)
                .ok_or_else(|| at(line, format!("Size={size}: tiny, small, medium or large")))?;
            class.mem_mb()
        }
        (None, Some(mb)) => {
            if mb == 0 || mb % MEMORY_CHUNK_MB != 0 {
                let line = keys["Memory"].0;
                return Err(at(line, format!("Memory={mb}: MiB in whole {MEMORY_CHUNK_MB} MiB chunks")));
            }
            mb
        }
        (None, None) => {
            return Err(whole(format!("[{section}] needs Size= (tiny, small, medium, large) or Memory= (MiB)")));
        }
    };
    if let Some(cpus) = number_at("CPUs")? {
        vcpus = u32::try_from(cpus).unwrap_or(u32::MAX);
    }
    let priority = match number_at("Priority")? {
        Some(p) => u32::try_from(p).map_err(|_| at(keys["Priority"].0, "Priority=: at most 4294967295".into()))?,
        None => 0,
    };
    let duration_at = |key: &str| -> Result<Option<std::time::Duration>, SpecError> {
        one(key)
            .map(|(line, v)| drover_model::parse_duration(v).map_err(|m| at(line, format!("{key}={v}: {m}"))))
            .transpose()
    };
    let deadline_after_ms = duration_at("Deadline")?.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let max_run = match (duration_at("MaxRunTime")?, one("RuntimeMaxSec")) {
        (Some(d), _) => Some(d),
        (None, Some((line, v))) => Some(
            v.parse::<u64>()
                .map(std::time::Duration::from_secs)
                .or_else(|_| drover_model::parse_duration(v))
                .map_err(|_| at(line, format!("RuntimeMaxSec={v}: seconds, or a duration such as 10m")))?,
        ),
        (None, None) => None,
    };
    if max_run.is_some_and(|d| d.as_secs() == 0) {
        return Err(at(keys.get("MaxRunTime").or(keys.get("RuntimeMaxSec")).map_or(0, |k| k.0), "at least 1s".into()));
    }

    let mut parameters = BTreeMap::new();
    let (param_line, param_values) = all("Parameters");
    for value in param_values {
        for spec in value.split_whitespace() {
            let (key, kind) = spec.split_once('=').ok_or_else(|| {
                at(param_line, format!("Parameters=: {spec:?} is not KEY=TYPE (string, int, bool, or a|b|c)"))
            })?;
            check_param_key(key).map_err(|m| at(param_line, format!("Parameters=: {m}")))?;
            let kind = ParamType::parse(kind).map_err(|m| at(param_line, format!("Parameters={key}: {m}")))?;
            if parameters.insert(key.to_owned(), kind).is_some() {
                return Err(at(param_line, format!("Parameters=: {key} is declared twice")));
            }
        }
    }
    let parameters_as = match one("ParametersAs") {
        None | Some((_, "arguments")) => ParamsAs::Arguments,
        Some((_, "json")) => ParamsAs::Json,
        Some((line, other)) => return Err(at(line, format!("ParametersAs={other}: arguments or json"))),
    };
    let yes_no = |key: &str| -> Result<bool, SpecError> {
        match one(key) {
            None => Ok(false),
            Some((_, "yes" | "true" | "1" | "on")) => Ok(true),
            Some((_, "no" | "false" | "0" | "off")) => Ok(false),
            Some((line, v)) => Err(at(line, format!("{key}={v}: yes or no"))),
        }
    };
    let root = yes_no("Root")?;
    let policy = match one("Restart") {
        None | Some((_, "on-failure")) => RestartPolicy::OnFailure,
        Some((_, "never" | "no")) => RestartPolicy::Never,
        Some((_, "always")) => RestartPolicy::Always,
        Some((line, other)) => return Err(at(line, format!("Restart={other}: never, on-failure or always"))),
    };
    let mut features = Vec::new();
    for value in all("Features").1 {
        features.extend(value.split_whitespace().map(str::to_owned));
    }
    let mut labels = BTreeMap::new();
    let (label_line, label_values) = all("Label");
    for value in label_values {
        for word in value.split_whitespace() {
            let (k, v) = word.split_once('=').ok_or_else(|| at(label_line, format!("Label=: {word:?} is not K=V")))?;
            labels.insert(k.to_owned(), v.to_owned());
        }
    }
    Ok(Workload {
        name: stem.to_owned(),
        class,
        priority,
        deadline_unix_ms: None,
        requirements: Requirements { vcpus, mem_mb, features, labels, ..Requirements::default() },
        backend,
        restart: Restart { policy, attempts: 3, backoff_ms: 10_000 },
        max_run_time_s: max_run.map(|d| d.as_secs()),
        run_as_root: false,
        version,
        parameters,
        parameters_as,
        task: true,
        root,
        deadline_after_ms,
        arch_setups: Vec::new(),
        checks: Vec::new(),
    })
}

fn check_param_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && key.starts_with(|c: char| c.is_ascii_alphabetic());
    if ok {
        Ok(())
    } else {
        Err(format!("{key:?}: a parameter's name is a letter, then letters, digits, - and _"))
    }
}

/// Splits a command line as systemd's `Exec=` does for the common cases: words separated by
/// blanks, `"…"` and `'…'` quote, `\` escapes the next character. No variables, no globbing.
///
/// # Errors
/// An unterminated quote or a trailing `\`.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err(format!("the quote {c} is not closed")),
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => word.push(chars.next().ok_or("a \\ ends the line")?),
                        Some(other) => word.push(other),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next().ok_or("a \\ ends the line")?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASSIF: &str = "# a batch task\n[Batch]\nExec=/usr/bin/valgrind --tool=massif \"--log-file=out put\"\n\
        Version=2\nSize=small\nPriority=5\nDeadline=2h\n\
        Parameters=target=/usr/bin/gnome-shell|/usr/bin/systemd\nParameters=runs=int verbose=bool\n\
        ParametersAs=json\nEnvironment=A=1 B=\"two words\"\nMaxRunTime=10m\n";

    #[test]
    fn a_batch_file_becomes_a_batch_task() {
        let w = parse_unit("massif.batch", MASSIF).unwrap();
        assert_eq!((w.name.as_str(), w.class, w.priority), ("massif", WorkClass::Batch, 5));
        assert_eq!(w.version.as_deref(), Some("2"));
        assert_eq!(w.requirements.mem_mb, 128);
        assert_eq!(w.deadline_after_ms, Some(2 * 3600 * 1000));
        assert_eq!(w.max_run_time_s, Some(600));
        assert!(w.task && !w.root);
        assert_eq!(w.parameters_as, ParamsAs::Json);
        assert_eq!(
            w.parameters["target"],
            ParamType::Enum(vec!["/usr/bin/gnome-shell".into(), "/usr/bin/systemd".into()])
        );
        assert_eq!((w.parameters["runs"].clone(), w.parameters["verbose"].clone()), (ParamType::Int, ParamType::Bool));
        let Backend::Process { argv, env } = &w.backend else { panic!("{:?}", w.backend) };
        assert_eq!(argv, &["/usr/bin/valgrind", "--tool=massif", "--log-file=out put"]);
        assert_eq!(env["B"], "two words");
    }

    #[test]
    fn a_workorder_file_with_the_seed_s_one_line() {
        let w = parse_unit(
            "build.workorder",
            "[Workorder]\nExec=/usr/bin/rpm-ostree-autobuilder task build\nSize=tiny\nRoot=yes\nBackend=systemd\n",
        )
        .unwrap();
        assert_eq!((w.class, w.root), (WorkClass::Workorder, true));
        assert!(matches!(&w.backend, Backend::Systemd { argv, .. } if argv.len() == 3));
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let cases = [
            ("x.batch", "[Batch]\nExec=/bin/true\nSize=huge\n", "x.batch:3", "tiny, small, medium or large"),
            ("x.batch", "[Batch]\nExec=/bin/true\nSize=tiny\nColor=red\n", "x.batch:4", "unknown key Color="),
            ("x.batch", "[Workorder]\nExec=/bin/true\n", "x.batch:1", "[Batch]"),
            ("x.batch", "Exec=/bin/true\n", "x.batch:1", "before [Batch]"),
            ("x.batch", "[Batch]\nExec=true\nSize=tiny\n", "x.batch:2", "absolute path"),
            ("x.batch", "[Batch]\nExec=/bin/true\nSize=tiny\nSize=small\n", "x.batch:4", "given twice"),
            ("x.batch", "[Batch]\nExec=/bin/echo \"open\nSize=tiny\n", "x.batch:2", "not closed"),
            ("x.batch", "[Batch]\nExec=/bin/true\nMemory=100\n", "x.batch:3", "32 MiB chunks"),
            ("x.batch", "[Batch]\nExec=/bin/true\nSize=tiny\nParameters=t=float\n", "x.batch:4", "string, int, bool"),
            ("x.batch", "[Batch]\nSize=tiny\n", "x.batch", "needs Exec="),
            ("X!.batch", "[Batch]\nExec=/bin/true\nSize=tiny\n", "X!.batch", "task's name"),
            ("x.job", "", "x.job", "NAME.workorder or NAME.batch"),
        ];
        for (file, text, field, message) in cases {
            let e = parse_unit(file, text).unwrap_err();
            assert_eq!(e.field, field, "{file}: {text:?} → {e}");
            assert!(e.message.contains(message), "{text:?} → {e}");
        }
    }

    #[test]
    fn continued_lines_and_comments() {
        let w =
            parse_unit("c.workorder", "; comment\n[Workorder]\n# another\nExec=/bin/echo \\\n  one two\nSize=tiny\n")
                .unwrap();
        assert!(matches!(&w.backend, Backend::Process { argv, .. } if argv == &["/bin/echo", "one", "two"]));
    }

    proptest::proptest! {
        /// Whatever a task file holds, parsing answers a task or an error that names the file,
        /// and a line within the file when it names one.
        #[test]
        fn any_text_parses_or_names_file_and_line(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::string::string_regex("[A-Za-z]{0,12}=[ -~]{0,30}").unwrap(),
                    proptest::string::string_regex("\\[(Batch|Workorder|X)\\]").unwrap(),
                    proptest::string::string_regex("(Exec=/bin/sh -c '[ -~]{0,10}'|Size=(tiny|huge)|Memory=[0-9]{1,4}|Parameters=[a-z]{1,3}=[a-z|]{0,8})").unwrap(),
                    proptest::string::string_regex("[ -~]{0,20}\\\\?").unwrap(),
                ],
                0..12,
            )
        ) {
            let text = lines.join("\n");
            for file in ["t.batch", "t.workorder"] {
                match parse_unit(file, &text) {
                    Ok(w) => proptest::prop_assert_eq!(w.name, "t"),
                    Err(e) => {
                        proptest::prop_assert!(e.field.starts_with(file), "{}", e);
                        if let Some(line) = e.field.strip_prefix(&format!("{file}:")) {
                            let n: usize = line.parse().unwrap();
                            proptest::prop_assert!(n >= 1 && n <= lines.len().max(1), "{}", e);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn only_task_extensions_are_task_files() {
        assert!(is_unit_file("build.workorder") && is_unit_file("a.b.batch"));
        assert!(!is_unit_file(".batch") && !is_unit_file("x.toml") && !is_unit_file("batch"));
    }
}
