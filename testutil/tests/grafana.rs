//! The Grafana dashboard under `deploy/` is valid JSON and asks only for metrics the daemons
//! serve (those `docs/metrics.md` lists, which their tests check against real scrapes).

#[test]
fn the_dashboard_queries_only_documented_metrics() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/drover.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let documented: Vec<String> = testutil::metrics::documented("drover_").into_iter().map(|(name, _)| name).collect();
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queried = 0;
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expression");
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("drover_"))
                .collect();
            assert!(!names.is_empty(), "{expr} asks for no Drover metric");
            for name in names {
                assert!(documented.iter().any(|d| d == name), "{expr}: {name} is not in docs/metrics.md");
                queried += 1;
            }
        }
    }
    assert!(queried >= 15, "the dashboard covers the three daemons ({queried} queries)");
    for daemon in ["drover_scheduler_", "drover_controller_", "drover_launcher_"] {
        assert!(text.contains(daemon), "no panel for {daemon}");
    }
}
