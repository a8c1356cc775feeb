//! Workload files (JSON or TOML): what a user submits, checked with errors that name the field.
//!
//! ```toml
//! name = "render"
//! class = "batch"            # workorder (default) | batch
//! priority = 5
//! size = "small"             # tiny | small | medium | large — or [resources]
//! max_run_time = "10m"
//!
//! [backend]
//! type = "process"           # process | oci | sim
//! argv = ["/usr/bin/render", "--frame", "12"]
//!
//! [requirements]
//! labels = { zone = "b" }
//! features = ["limits"]
//!
//! [restart]
//! policy = "on-failure"      # never | on-failure | always
//! attempts = 3
//! backoff = "10s"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use ssntp::payload::{Backend, Requirements, SizeClass, WorkClass};
use ssntp::Uuid;

use crate::restart::{Restart, RestartPolicy};

/// A workload file that cannot be used, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Dotted path of the offending field (`restart.policy`), or `(file)`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError { field: field.to_owned(), message: message.into() }
}

/// Explicit resources.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// vCPUs.
    #[serde(default = "one")]
    pub vcpus: u32,
    /// Memory, MiB.
    pub mem_mb: u64,
    /// Disk, MiB.
    #[serde(default)]
    pub disk_mb: u64,
}

fn one() -> u32 {
    1
}

/// Placement constraints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Pin to a node.
    pub node_id: Option<Uuid>,
    /// Pin to a host name.
    pub hostname: Option<String>,
    /// Required labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Required architecture.
    pub arch: Option<String>,
    /// Required features (`oci`, `kvm`, `limits` …).
    #[serde(default)]
    pub features: Vec<String>,
    /// Needs a per-NUMA-node launcher.
    #[serde(default)]
    pub numa_local: bool,
    /// PCI devices the node must have, one each: `vendor:device` in hex with `*` for any
    /// part (`10de:*`), or `class=PREFIX` (`class=03`: a display controller).
    #[serde(default)]
    pub pci: Vec<String>,
    /// The least CPU speed score the node must have (a 2020 server core scores about 1000).
    pub min_cpu_score: Option<u32>,
    /// Last-level cache ways for each instance alone (nodes with cache allocation, resctrl).
    #[serde(default)]
    pub cache_ways: u32,
}

/// Soft wishes that order the nodes that fit without excluding any.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreferencesFile {
    /// Labels it would rather run on (`zone = "b"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// An `oci` workload would rather run where its root filesystem is already cached.
    #[serde(default)]
    pub image_cached: bool,
}

/// Checks a PCI requirement's pattern.
fn check_pci(pattern: &str) -> Result<(), String> {
    let hex = |t: &str, len: usize| t.len() <= len && !t.is_empty() && t.chars().all(|c| c.is_ascii_hexdigit());
    let ok = match pattern.strip_prefix("class=") {
        Some(class) => hex(class, 6),
        None => pattern
            .split_once(':')
            .is_some_and(|(v, d)| (v == "*" || hex(v, 4)) && (d == "*" || hex(d, 4)) && !(v == "*" && d == "*")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{pattern:?} is not vendor:device in hex (`10de:2204`, `10de:*`) or class=HEX (`class=03`)"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
enum PolicyName {
    Never,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RestartSpec {
    #[serde(default = "on_failure")]
    policy: PolicyName,
    #[serde(default = "three")]
    attempts: u32,
    #[serde(default)]
    backoff: Option<String>,
}

fn on_failure() -> PolicyName {
    PolicyName::OnFailure
}

fn three() -> u32 {
    3
}

impl Default for RestartSpec {
    fn default() -> Self {
        Self { policy: PolicyName::OnFailure, attempts: 3, backoff: None }
    }
}

/// A workload file as written (JSON, or TOML of the same shape): what `POST /v1/workloads`
/// takes. [`parse`] checks it further and gives a [`Workload`]; its schema is the API
/// document's.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFile {
    /// The workload's name: 1-64 of a-z, 0-9, `-`, `_`, `.` ([`check_name`]).
    #[schema(pattern = "^[a-z0-9._-]{1,64}$")]
    name: String,
    /// `workorder` (must run) or `batch` (best effort).
    #[serde(default = "workorder")]
    class: WorkClass,
    /// Batch priority: higher first.
    #[serde(default)]
    priority: u32,
    /// Batch deadline, Unix ms.
    deadline_unix_ms: Option<u64>,
    /// A size class instead of `resources`.
    size: Option<SizeClass>,
    /// vCPUs, memory and disk, instead of `size`.
    resources: Option<Resources>,
    /// How instances run.
    backend: Backend,
    /// Where instances may run.
    #[serde(default)]
    requirements: Placement,
    /// When instances run again.
    #[serde(default)]
    restart: RestartSpec,
    /// Longest run (`30m`, `2h`), then it is stopped.
    max_run_time: Option<String>,
    /// Run as root rather than the tenant's user (the launcher must allow it).
    #[serde(default)]
    run_as_root: bool,
    /// A task's version.
    version: Option<String>,
    /// The parameters instances take: a type (`string`, `int`, `bool`) or the allowed values.
    #[serde(default)]
    parameters: BTreeMap<String, ParamSpec>,
    /// How parameters reach the instance.
    #[serde(default)]
    parameters_as: ParamsAs,
    /// A task (sd-taskpacker): run by a parent task or as a root.
    #[serde(default)]
    task: bool,
    /// A root task: started with the controller and kept running, its state directory kept
    /// across its runs.
    #[serde(default)]
    root: bool,
    /// Latest start, counted from each instance's submission (`1h`).
    deadline: Option<String>,
    /// What orders the nodes that fit (soft; `requirements` are hard).
    #[serde(default)]
    preferences: PreferencesFile,
    /// Per host/target architecture combination, the packages the job installs or skips and
    /// more environment (cross builds); the node's launcher picks the first that applies.
    #[serde(default)]
    cross: Vec<ssntp::payload::ArchSetup>,
    /// Scripts of the node's (`drover-launcher --script NAME=PATH`) to run, in order, after the
    /// program exits 0 (acceptance tests): the first that fails fails the instance. Only nodes
    /// that offer them run the workload.
    #[serde(default)]
    checks: Vec<String>,
}

/// A parameter's type as a file writes it: `"string"`, `"int"`, `"bool"`, or the allowed values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum ParamSpec {
    Named(String),
    OneOf(Vec<String>),
}

/// What a task's parameter may hold (sd-taskpacker's "well-known schema").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// Any text.
    String,
    /// A whole number.
    Int,
    /// true or false.
    Bool,
    /// One of these values.
    Enum(Vec<String>),
}

impl ParamType {
    /// From `string`, `int`, `bool` or `a|b|c`.
    ///
    /// # Errors
    /// Anything else, as a sentence.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "string" => Ok(Self::String),
            "int" => Ok(Self::Int),
            "bool" => Ok(Self::Bool),
            t if t.contains('|') => Ok(Self::Enum(t.split('|').map(str::to_owned).collect())),
            other => Err(format!("{other:?} is not a type: string, int, bool, or the values as a|b|c")),
        }
    }

    /// A value given as text, checked and typed.
    ///
    /// # Errors
    /// It does not fit, with what would.
    pub fn check(&self, value: &ParamValue) -> Result<ParamValue, String> {
        let text = match value {
            ParamValue::Text(t) => t.clone(),
            ParamValue::Int(i) => i.to_string(),
            ParamValue::Bool(b) => b.to_string(),
        };
        match self {
            Self::String => Ok(ParamValue::Text(text)),
            Self::Int => text.parse().map(ParamValue::Int).map_err(|_| format!("{text:?} is not a whole number")),
            Self::Bool => match text.as_str() {
                "true" | "yes" | "1" => Ok(ParamValue::Bool(true)),
                "false" | "no" | "0" => Ok(ParamValue::Bool(false)),
                _ => Err(format!("{text:?} is not true or false")),
            },
            Self::Enum(allowed) if allowed.contains(&text) => Ok(ParamValue::Text(text)),
            Self::Enum(allowed) => Err(format!("{text:?} is not one of {}", allowed.join(", "))),
        }
    }
}

pub use ssntp::payload::ParamValue;

/// How an instance gets its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParamsAs {
    /// `--key=value` appended to the command, in key order.
    #[default]
    Arguments,
    /// `parameters.json` in the working directory.
    Json,
}

/// Checks the parameters given for one instance against a task's schema: every key declared,
/// every value of its type; keys not given are left out.
///
/// # Errors
/// The first key that is unknown or whose value does not fit, with what would.
pub fn check_parameters(
    schema: &BTreeMap<String, ParamType>,
    given: &BTreeMap<String, ParamValue>,
) -> Result<BTreeMap<String, ParamValue>, String> {
    let mut out = BTreeMap::new();
    for (key, value) in given {
        let Some(kind) = schema.get(key) else {
            let known: Vec<&str> = schema.keys().map(String::as_str).collect();
            return Err(if known.is_empty() {
                format!("parameter {key}: this task takes no parameters")
            } else {
                format!("parameter {key}: unknown (this task takes {})", known.join(", "))
            });
        };
        out.insert(key.clone(), kind.check(value).map_err(|m| format!("parameter {key}: {m}"))?);
    }
    Ok(out)
}

/// Whether a workload or task name is well formed.
///
/// # Errors
/// What a name may be.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err("1-64 characters of a-z, 0-9, '-', '_' and '.'".into())
    }
}

fn workorder() -> WorkClass {
    WorkClass::Workorder
}

/// A checked workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Name (unique per tenant).
    pub name: String,
    /// Work class.
    pub class: WorkClass,
    /// Priority within the class.
    pub priority: u32,
    /// Latest start, Unix ms.
    pub deadline_unix_ms: Option<u64>,
    /// What an instance needs (resources resolved from the size class).
    pub requirements: Requirements,
    /// How it runs.
    pub backend: Backend,
    /// Restart policy.
    pub restart: Restart,
    /// Kill after this many seconds.
    pub max_run_time_s: Option<u64>,
    /// Runs as root, on nodes that allow it only (it requires their `root` feature). Without
    /// it, a workload runs as an unprivileged user of its tenant's.
    pub run_as_root: bool,
    /// The task's version (names its unit and working directory with its name).
    pub version: Option<String>,
    /// The parameters an instance may be given, by name.
    pub parameters: BTreeMap<String, ParamType>,
    /// How an instance gets them.
    pub parameters_as: ParamsAs,
    /// A task: its instances get a credential to ask for child tasks (every task file is one).
    pub task: bool,
    /// A root task: started with the controller, kept running, with a state directory kept
    /// across its runs.
    pub root: bool,
    /// Latest start counted from each instance's submission, ms.
    pub deadline_after_ms: Option<u64>,
    /// What it needs per host/target architecture combination.
    pub arch_setups: Vec<ssntp::payload::ArchSetup>,
    /// The node's scripts it runs after its program, in order.
    pub checks: Vec<String>,
}

/// At most this many `[[cross]]` combinations per workload.
pub const MAX_ARCH_SETUPS: usize = 32;

fn check_arch_setups(setups: &[ssntp::payload::ArchSetup]) -> Result<(), SpecError> {
    if setups.len() > MAX_ARCH_SETUPS {
        return Err(err("cross", format!("at most {MAX_ARCH_SETUPS} combinations")));
    }
    let arch_name =
        |a: &str| !a.is_empty() && a.len() <= 32 && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let word = |w: &str| !w.is_empty() && w.len() <= 128 && !w.chars().any(|c| c.is_whitespace() || c.is_control());
    for (i, s) in setups.iter().enumerate() {
        let at = |f: &str| format!("cross[{i}].{f}");
        if s.host != "*" && !arch_name(&s.host) {
            return Err(err(&at("host"), "an architecture name (x86_64, i586, armv7 …) or * for any"));
        }
        if s.target.as_deref().is_some_and(|t| !arch_name(t)) {
            return Err(err(&at("target"), "an architecture name (x86_64, i586, armv7 …)"));
        }
        if let Some(bad) = s.packages.iter().chain(&s.skip).find(|p| !word(p)) {
            return Err(err(&at("packages"), format!("{bad:?}: a package name is 1-128 characters without spaces")));
        }
        if let Some(key) = s.env.keys().find(|k| k.starts_with("DROVER_") || k.is_empty() || k.contains('=')) {
            return Err(err(
                &at("env"),
                format!("{key:?}: not a variable a workload may set (DROVER_* are the node's)"),
            ));
        }
    }
    Ok(())
}

/// File format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// TOML.
    Toml,
}

impl Format {
    /// From a file name's extension: `.toml` is TOML, `.json` (or none) JSON; YAML and other
    /// extensions are refused rather than read as something they are not.
    ///
    /// # Errors
    /// A message naming the extension and the formats there are.
    pub fn for_file(path: &std::path::Path) -> Result<Self, String> {
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("toml") => Ok(Self::Toml),
            Some("json") | None => Ok(Self::Json),
            Some(other) => Err(format!(
                "{}: .{other} files are not read; write the workload in TOML (.toml) or JSON (.json)",
                path.display()
            )),
        }
    }
}

/// Parses and checks a workload file.
///
/// # Errors
/// A [`SpecError`] naming the field.
pub fn parse(text: &str, format: Format) -> Result<Workload, SpecError> {
    let file: WorkloadFile = match format {
        Format::Json => {
            let de = &mut serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let at = (e.inner().line() > 0).then(|| (e.inner().line(), e.inner().column()));
                path_error(e.path().to_string(), e.inner().to_string(), at)
            })?
        }
        Format::Toml => {
            let de = toml::Deserializer::parse(text).map_err(|e| {
                let at = e.span().map(|span| line_and_column(text, span.start));
                path_error(String::new(), e.message().to_owned(), at)
            })?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                let at = e.inner().span().map(|span| line_and_column(text, span.start));
                path_error(e.path().to_string(), e.inner().message().to_owned(), at)
            })?
        }
    };
    check(file)
}

fn path_error(path: String, message: String, at: Option<(usize, usize)>) -> SpecError {
    let field = if path == "." || path.is_empty() { "(file)".to_owned() } else { path };
    // serde_json says "at line L column C" its own way; every format says it alike here.
    let mut message = message.split(" at line ").next().unwrap_or(&message).trim_end().to_owned();
    if let Some((line, column)) = at {
        message.push_str(&format!(" (line {line}, column {column})"));
    }
    SpecError { field, message }
}

/// The 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn check(f: WorkloadFile) -> Result<Workload, SpecError> {
    check_name(&f.name).map_err(|m| err("name", m))?;
    let (vcpus, mem_mb, disk_mb) = match (&f.size, &f.resources) {
        (Some(_), Some(_)) => return Err(err("size", "give either size or resources, not both")),
        (None, None) => {
            return Err(err("resources", "give resources (mem_mb, vcpus) or a size (tiny, small, medium, large)"))
        }
        (Some(size), None) => (1, size.mem_mb(), 0),
        (None, Some(r)) => (r.vcpus, r.mem_mb, r.disk_mb),
    };
    if mem_mb == 0 || mem_mb % 32 != 0 && f.class == WorkClass::Batch {
        return Err(err("resources.mem_mb", "must be more than 0, in 32 MiB chunks for batch work"));
    }
    match &f.backend {
        Backend::Process { argv, .. } if argv.is_empty() || argv[0].is_empty() => {
            return Err(err("backend.argv", "needs at least the program"));
        }
        Backend::Systemd { argv, .. } if argv.first().is_none_or(|p| !p.starts_with('/')) => {
            return Err(err("backend.argv", "needs the program as an absolute path (systemd runs it)"));
        }
        Backend::Oci { rootfs, args, volumes, network, .. } => {
            if !rootfs.starts_with('/') {
                return Err(err("backend.rootfs", "must be an absolute path on the node"));
            }
            if args.is_empty() {
                return Err(err("backend.args", "needs at least the program"));
            }
            for v in volumes {
                if !v.source.starts_with('/') || !v.destination.starts_with('/') {
                    return Err(err("backend.volumes", "source and destination are absolute paths"));
                }
            }
            if let ssntp::payload::OciNetwork::Namespace(path) = network {
                if !path.starts_with("/run/netns/") && !path.starts_with("/var/run/netns/") {
                    return Err(err("backend.network", "a namespace is named by its path, /run/netns/NAME"));
                }
            }
        }
        Backend::Vm { kernel, initrd, disks, arch, .. } => {
            if std::iter::once(kernel).chain(initrd).chain(disks).any(|p| !p.starts_with('/')) {
                return Err(err("backend", "kernel, initrd and disks are absolute paths on the node"));
            }
            if arch.as_deref().is_some_and(|a| {
                a.is_empty() || a.len() > 32 || !a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            }) {
                return Err(err("backend.arch", "an architecture name (x86_64, aarch64, riscv64 …)"));
            }
        }
        Backend::Artifact { path, .. } => {
            if !path.starts_with('/') {
                return Err(err("backend.path", "must be an absolute path on the node (under its --volume-root)"));
            }
            if ssntp::payload::artifact_kind(path).is_none() {
                let known: Vec<String> =
                    ssntp::payload::ARTIFACT_RUNTIMES.iter().map(|(kind, _)| format!(".{kind}")).collect();
                return Err(err(
                    "backend.path",
                    format!("an artifact's kind comes from its name; known: {}", known.join(" ")),
                ));
            }
        }
        _ => {}
    }
    if f.restart.attempts > 1000 {
        return Err(err("restart.attempts", "at most 1000"));
    }
    let backoff = match &f.restart.backoff {
        Some(text) => drover_model::parse_duration(text).map_err(|m| err("restart.backoff", m))?,
        None => std::time::Duration::from_secs(10),
    };
    let max_run_time_s = match &f.max_run_time {
        Some(text) => {
            let d = drover_model::parse_duration(text).map_err(|m| err("max_run_time", m))?;
            if d.as_secs() == 0 {
                return Err(err("max_run_time", "must be at least 1s"));
            }
            Some(d.as_secs())
        }
        None => None,
    };
    let mut parameters = BTreeMap::new();
    for (key, spec) in f.parameters {
        let kind = match spec {
            ParamSpec::Named(name) => ParamType::parse(&name).map_err(|m| err(&format!("parameters.{key}"), m))?,
            ParamSpec::OneOf(values) if !values.is_empty() => ParamType::Enum(values),
            ParamSpec::OneOf(_) => return Err(err(&format!("parameters.{key}"), "list at least one value")),
        };
        parameters.insert(key, kind);
    }
    let deadline_after_ms = match &f.deadline {
        Some(text) => {
            let d = drover_model::parse_duration(text).map_err(|m| err("deadline", m))?;
            Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        }
        None => None,
    };
    if let Some(v) = &f.version {
        if v.is_empty() || v.len() > 64 || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.+~".contains(c)) {
            return Err(err("version", "1-64 letters, digits and - _ . + ~"));
        }
    }
    let mut p = f.requirements;
    // Volumes (and artifacts, which are files in one) run only where a launcher allows them;
    // an artifact, where there is a runtime for its kind.
    let has_volumes = match &f.backend {
        Backend::Oci { volumes, .. } => !volumes.is_empty(),
        Backend::Artifact { .. } => true,
        _ => false,
    };
    if has_volumes && !p.features.iter().any(|x| x == ssntp::payload::VOLUMES_FEATURE) {
        p.features.push(ssntp::payload::VOLUMES_FEATURE.to_owned());
    }
    if let Backend::Artifact { path, .. } = &f.backend {
        let runtime = ssntp::payload::runtime_feature(ssntp::payload::artifact_kind(path).unwrap_or_default());
        if !p.features.contains(&runtime) {
            p.features.push(runtime);
        }
    }
    for pattern in &p.pci {
        check_pci(pattern).map_err(|m| err("requirements.pci", m))?;
    }
    if p.min_cpu_score == Some(0) {
        return Err(err("requirements.min_cpu_score", "must be at least 1 (leave it out for any)"));
    }
    let image = match (&f.backend, f.preferences.image_cached) {
        (_, false) => None,
        (Backend::Oci { rootfs, .. }, true) => Some(rootfs.clone()),
        (_, true) => return Err(err("preferences.image_cached", "only an oci workload has an image to find cached")),
    };
    let preferences = ssntp::payload::Preferences { labels: f.preferences.labels, image };
    check_arch_setups(&f.cross)?;
    // A VM of another architecture runs where there is a device model for it; one that
    // insists on KVM, where there is KVM.
    if let Backend::Vm { arch, accel, .. } = &f.backend {
        let needed = arch
            .as_deref()
            .map(ssntp::payload::vm_feature)
            .into_iter()
            .chain((*accel == ssntp::payload::VmAccel::Kvm).then(|| "kvm".to_owned()));
        for feature in needed {
            if !p.features.contains(&feature) {
                p.features.push(feature);
            }
        }
    }
    if !f.checks.is_empty() && !matches!(f.backend, Backend::Process { .. } | Backend::Systemd { .. }) {
        return Err(err("checks", "the node's scripts run only after a process or systemd program"));
    }
    if f.checks.len() > 16 {
        return Err(err("checks", "at most 16"));
    }
    for name in &f.checks {
        if !ssntp::payload::is_script_name(name) {
            return Err(err("checks", format!("{name:?}: a script's name is 1-64 of a-z, 0-9, - _ .")));
        }
        let feature = ssntp::payload::script_feature(name);
        if !p.features.contains(&feature) {
            p.features.push(feature);
        }
    }
    if f.run_as_root && !p.features.iter().any(|x| x == ssntp::payload::ROOT_FEATURE) {
        p.features.push(ssntp::payload::ROOT_FEATURE.to_owned());
    }
    Ok(Workload {
        name: f.name,
        class: f.class,
        priority: f.priority,
        deadline_unix_ms: f.deadline_unix_ms,
        requirements: Requirements {
            vcpus,
            mem_mb,
            disk_mb,
            node_id: p.node_id,
            hostname: p.hostname,
            labels: p.labels,
            arch: p.arch,
            features: p.features,
            numa_local: p.numa_local,
            pci: p.pci,
            min_cpu_score: p.min_cpu_score,
            cache_ways: p.cache_ways,
            preferences,
        },
        backend: f.backend,
        restart: Restart {
            policy: match f.restart.policy {
                PolicyName::Never => RestartPolicy::Never,
                PolicyName::OnFailure => RestartPolicy::OnFailure,
                PolicyName::Always => RestartPolicy::Always,
            },
            attempts: f.restart.attempts,
            backoff_ms: u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
        },
        max_run_time_s,
        run_as_root: f.run_as_root,
        version: f.version,
        parameters,
        parameters_as: f.parameters_as,
        task: f.task || f.root,
        root: f.root,
        deadline_after_ms,
        arch_setups: f.cross,
        checks: f.checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
name = "render"
class = "batch"
priority = 5
size = "small"
max_run_time = "10m"

[backend]
type = "process"
argv = ["/usr/bin/render", "--frame", "12"]

[requirements]
labels = { zone = "b" }
features = ["limits"]

[restart]
policy = "always"
attempts = 5
backoff = "2s"
"#;

    #[test]
    fn toml_and_json_files_parse_and_resolve() {
        let w = parse(TOML, Format::Toml).unwrap();
        assert_eq!(w.name, "render");
        assert_eq!((w.class, w.priority), (WorkClass::Batch, 5));
        assert_eq!((w.requirements.vcpus, w.requirements.mem_mb), (1, 128));
        assert_eq!(w.requirements.labels.get("zone").map(String::as_str), Some("b"));
        assert_eq!(w.restart, Restart { policy: RestartPolicy::Always, attempts: 5, backoff_ms: 2000 });
        assert_eq!(w.max_run_time_s, Some(600));
        let json = r#"{"name": "web", "resources": {"vcpus": 2, "mem_mb": 512},
                       "backend": {"type": "oci", "rootfs": "/srv/alpine", "args": ["httpd"]}}"#;
        let w = parse(json, Format::Json).unwrap();
        assert_eq!((w.class, w.requirements.vcpus, w.requirements.mem_mb), (WorkClass::Workorder, 2, 512));
        assert_eq!(w.restart.policy, RestartPolicy::OnFailure, "default policy");
        assert!(!w.run_as_root && w.requirements.features.is_empty(), "no root unless asked");
        let root = parse(&TOML.replace("priority = 5", "priority = 5\nrun_as_root = true"), Format::Toml).unwrap();
        assert!(root.run_as_root);
        assert_eq!(
            root.requirements.features,
            vec!["limits", ssntp::payload::ROOT_FEATURE],
            "only nodes allowing root fit"
        );
        assert_eq!(Format::for_file(std::path::Path::new("w.TOML")), Ok(Format::Toml));
        assert_eq!(Format::for_file(std::path::Path::new("w.json")), Ok(Format::Json));
        assert!(Format::for_file(std::path::Path::new("w.yaml")).unwrap_err().contains(".yaml files are not read"));
    }

    #[test]
    fn errors_say_where_in_the_file() {
        let bad = TOML.replace("attempts = 5", "attempts = \"five\"");
        let e = parse(&bad, Format::Toml).unwrap_err();
        let line = bad.lines().position(|l| l.contains("\"five\"")).unwrap() + 1;
        assert!(e.to_string().contains(&format!("(line {line}, column 12)")), "{e}");
        let e = parse("{\"name\": \"x\",\n \"priority\": true}", Format::Json).unwrap_err();
        assert_eq!(e.field, "priority");
        assert!(e.message.contains("(line 2, column"), "{e}");
        assert!(parse("name = ", Format::Toml).unwrap_err().message.contains("(line 1, column"));
    }

    #[test]
    fn errors_name_the_field() {
        let field = |text: &str, format| parse(text, format).unwrap_err().field;
        assert_eq!(field(&TOML.replace("always", "sometimes"), Format::Toml), "restart.policy");
        assert_eq!(
            field(&TOML.replace("argv = [\"/usr/bin/render\", \"--frame\", \"12\"]", "argv = []"), Format::Toml),
            "backend.argv"
        );
        assert_eq!(field(&TOML.replace("backoff = \"2s\"", "backoff = \"soon\""), Format::Toml), "restart.backoff");
        assert_eq!(field(&TOML.replace("size = \"small\"", "size = \"huge\""), Format::Toml), "size");
        assert_eq!(field(&TOML.replace("name = \"render\"", "name = \"Render Farm\""), Format::Toml), "name");
        let unknown = parse(&TOML.replace("priority = 5", "priority = 5\ncolour = \"red\""), Format::Toml).unwrap_err();
        assert_eq!(unknown.field, "colour");
        assert!(unknown.message.contains("unknown field"), "{unknown}");
        assert_eq!(field(r#"{"name": "x", "backend": {"type": "process", "argv": ["a"]}}"#, Format::Json), "resources");
        assert_eq!(
            field(
                r#"{"name": "x", "resources": {"mem_mb": "lots"}, "backend": {"type": "sim", "duration_ms": 1}}"#,
                Format::Json
            ),
            "resources.mem_mb"
        );
        assert_eq!(
            field(
                r#"{"name": "x", "size": "tiny", "backend": {"type": "oci", "rootfs": "alpine", "args": ["sh"]}}"#,
                Format::Json
            ),
            "backend.rootfs"
        );
        let e = parse("{", Format::Json).unwrap_err();
        assert!(!e.message.is_empty());
    }

    #[test]
    fn cross_build_combinations_are_carried_and_checked() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cross-build.toml")).unwrap();
        let w = parse(&text, Format::Toml).unwrap();
        assert_eq!(w.arch_setups.len(), 3);
        let (chosen, env) = ssntp::payload::arch_setup(&w.arch_setups, "x86_64", w.requirements.arch.as_deref());
        assert_eq!(chosen.map(|s| s.host.as_str()), Some("x86_64"));
        assert_eq!(env["DROVER_PACKAGES"], "cross-arm-gcc rpm-x86 bash-x86");
        assert_eq!(env["DROVER_PACKAGES_SKIP"], "rpm bash");
        assert_eq!(env["CC"], "arm-linux-gnueabihf-gcc");
        let (chosen, env) = ssntp::payload::arch_setup(&w.arch_setups, "arm", w.requirements.arch.as_deref());
        assert_eq!((chosen.map(|s| s.host.as_str()), env["DROVER_PACKAGES"].as_str()), (Some("armv7"), ""));
        let field = |replace: &str, with: &str| parse(&text.replace(replace, with), Format::Toml).unwrap_err().field;
        assert_eq!(field("host = \"i586\"", "host = \"i 586\""), "cross[1].host");
        assert_eq!(field("\"bash-x86\"]\nskip", "\"bash x86\"]\nskip"), "cross[0].packages");
        assert_eq!(field("CC = ", "DROVER_JOBS = "), "cross[0].env");
        assert_eq!(field("host = \"armv7\"", "host = \"armv7\"\ntarget = \"\""), "cross[2].target");
        assert_eq!(field("host = \"armv7\"", "host = \"armv7\"\ncolour = 1"), "cross[2].colour");
    }

    #[test]
    fn checks_require_the_scripts_and_a_backend_that_runs_them() {
        let w = parse(&TOML.replace("priority = 5", "priority = 5\nchecks = [\"accept\", \"lint\"]"), Format::Toml)
            .unwrap();
        assert_eq!(w.checks, ["accept", "lint"]);
        assert_eq!(w.requirements.features, ["limits", "script:accept", "script:lint"]);
        let field = |text: &str| parse(text, Format::Toml).unwrap_err();
        let bad = field(&TOML.replace("priority = 5", "priority = 5\nchecks = [\"Accept Test\"]"));
        assert_eq!(bad.field, "checks");
        let sim = "name = \"s\"\nsize = \"tiny\"\nchecks = [\"accept\"]\n[backend]\ntype = \"sim\"\nduration_ms = 1\n";
        assert!(field(sim).message.contains("process or systemd"), "{}", field(sim));
    }

    #[test]
    fn a_vm_requires_a_device_model_for_its_architecture_and_kvm_when_it_insists() {
        let vm = |extra: &str| {
            format!("name = \"v\"\nsize = \"small\"\n[backend]\ntype = \"vm\"\nkernel = \"/srv/vmlinuz\"\n{extra}")
        };
        let w = parse(&vm("arch = \"arm64\"\naccel = \"kvm\"\n"), Format::Toml).unwrap();
        assert_eq!(w.requirements.features, ["vm:aarch64", "kvm"]);
        assert!(parse(&vm(""), Format::Toml).unwrap().requirements.features.is_empty(), "the node's own architecture");
        let e = parse(&vm("disks = [\"disk.qcow2\"]\n"), Format::Toml).unwrap_err();
        assert_eq!(e.field, "backend", "{e}");
        assert_eq!(parse(&vm("accel = \"fast\"\n"), Format::Toml).unwrap_err().field, "backend");
    }

    #[test]
    fn an_artifact_requires_a_runtime_for_its_kind_and_a_node_with_volumes() {
        let artifact = |path: &str| {
            format!(
                "name = \"a\"\nsize = \"small\"\n[backend]\ntype = \"artifact\"\npath = \"{path}\"\nargs = [\"x\"]\n"
            )
        };
        let w = parse(&artifact("/srv/artifacts/report.jar"), Format::Toml).unwrap();
        assert_eq!(w.requirements.features, [ssntp::payload::VOLUMES_FEATURE, "runtime:jar"]);
        let upper = parse(&artifact("/srv/artifacts/REPORT.JAR"), Format::Toml).unwrap();
        assert_eq!(upper.requirements.features, [ssntp::payload::VOLUMES_FEATURE, "runtime:jar"]);
        let e = parse(&artifact("report.jar"), Format::Toml).unwrap_err();
        assert_eq!(e.field, "backend.path", "{e}");
        let e = parse(&artifact("/srv/artifacts/report.war"), Format::Toml).unwrap_err();
        assert_eq!((e.field.as_str(), e.message.contains("known: .jar")), ("backend.path", true), "{e}");
        let e = parse(&artifact("/srv/artifacts/report"), Format::Toml).unwrap_err();
        assert_eq!(e.field, "backend.path", "{e}");
    }

    #[test]
    fn the_examples_in_the_repository_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let text = std::fs::read_to_string(&path).unwrap();
            parse(&text, Format::for_file(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
        assert!(seen >= 3, "examples/ holds the README's examples");
    }
}
