//! `docs/metrics.md` kept true: the metrics a daemon serves are exactly the ones listed there.

use std::collections::BTreeSet;

/// The metrics `docs/metrics.md` lists whose names start with `prefix` (`drover_scheduler_`),
/// as (sample name, type).
pub fn documented(prefix: &str) -> BTreeSet<(String, String)> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md")).expect("docs/metrics.md");
    doc.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.get(2)?;
            name.starts_with(prefix).then(|| (name.to_owned(), (*kind).to_owned()))
        })
        .collect()
}

/// The metrics in a scrape (`# TYPE name type` lines) whose names start with `prefix`, as
/// (sample name, type): a counter's samples end in `_total`.
pub fn served(text: &str, prefix: &str) -> BTreeSet<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            let (name, kind) = (words.next()?, words.next()?);
            let sample = if kind == "counter" { format!("{name}_total") } else { name.to_owned() };
            sample.starts_with(prefix).then(|| (sample, kind.to_owned()))
        })
        .collect()
}

/// Panics, naming the difference, unless `text` (a scrape) serves exactly the metrics
/// `docs/metrics.md` lists under `prefix`.
pub fn assert_documented(text: &str, prefix: &str) {
    let (doc, served) = (documented(prefix), served(text, prefix));
    assert!(!doc.is_empty(), "docs/metrics.md lists nothing under {prefix}");
    let missing: Vec<_> = doc.difference(&served).collect();
    let undocumented: Vec<_> = served.difference(&doc).collect();
    assert!(
        missing.is_empty() && undocumented.is_empty(),
        "docs/metrics.md and /metrics disagree under {prefix}: listed but not served {missing:?}; served but not listed {undocumented:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_is_read_as_names_and_types_and_the_doc_as_its_tables() {
        let text =
            "# HELP x_a A.\n# TYPE x_a counter\nx_a_total 3\n# TYPE x_b gauge\nx_b{s=\"y\"} 1\n# TYPE z gauge\n# EOF\n";
        let got = served(text, "x_");
        assert_eq!(got, [("x_a_total".to_owned(), "counter".to_owned()), ("x_b".into(), "gauge".into())].into());
        let doc = documented("drover_launcher_");
        assert!(doc.contains(&("drover_launcher_ends_total".to_owned(), "counter".to_owned())), "{doc:?}");
    }
}
