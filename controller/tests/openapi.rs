//! The API's OpenAPI document against `docs/api.md`: every route the document has is in the
//! docs' routes table and the other way round, with the same query parameters, and every status
//! the table names for a route is one the document declares for it. The document itself is built
//! from the handlers (`drover_controller::api::openapi`), so this keeps the prose true to the code.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The statuses the docs may name (numbers such as "256 streams" are not statuses).
const STATUSES: [&str; 14] =
    ["200", "201", "202", "204", "400", "401", "403", "404", "409", "413", "429", "500", "502", "503"];

/// One row of the docs' routes table: method and path, its query parameters, the statuses its
/// answer names.
#[derive(Debug, Default)]
struct DocRoute {
    query: BTreeSet<String>,
    statuses: BTreeSet<String>,
}

fn doc_routes() -> BTreeMap<(String, String), DocRoute> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md")).unwrap();
    let table = text.split("## Routes").nth(1).expect("docs/api.md has a Routes section");
    let table = table.split("\n## ").next().unwrap();
    let mut routes: BTreeMap<(String, String), DocRoute> = BTreeMap::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let route = cells[0].trim_start_matches("| `").split('`').next().unwrap();
        let (method, target) = route.split_once(' ').unwrap_or_else(|| panic!("no method in {line}"));
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let entry = routes.entry((method.to_lowercase(), path.to_owned())).or_default();
        entry.query.extend(query.split('&').filter(|q| !q.is_empty()).map(|q| q.split('=').next().unwrap().to_owned()));
        let answer = cells.last().unwrap();
        entry
            .statuses
            .extend(answer.split(|c: char| !c.is_ascii_digit()).filter(|n| STATUSES.contains(n)).map(str::to_owned));
    }
    routes
}

#[test]
fn docs_api_md_lists_exactly_the_documents_routes_parameters_and_statuses() {
    let doc = serde_json::to_value(drover_controller::api::openapi()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented = doc_routes();
    let mut in_spec = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let key = (method.clone(), path.clone());
            in_spec.insert(key.clone());
            let Some(row) = documented.get(&key) else {
                panic!(
                    "{} {path} is in the OpenAPI document but not in docs/api.md's routes table",
                    method.to_uppercase()
                )
            };
            let query: BTreeSet<String> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(
                row.query,
                query,
                "query parameters of {} {path}: docs/api.md, then the document",
                method.to_uppercase()
            );
            let responses = op["responses"].as_object().unwrap();
            for status in &row.statuses {
                assert!(
                    responses.contains_key(status),
                    "docs/api.md says {} {path} may answer {status}; the document does not (it has {:?})",
                    method.to_uppercase(),
                    responses.keys().collect::<Vec<_>>()
                );
            }
            let success = responses.keys().filter(|s| s.starts_with('2')).count();
            assert_eq!(success, 1, "{} {path} has one success status: {:?}", method.to_uppercase(), responses.keys());
        }
    }
    let missing: Vec<_> = documented.keys().filter(|k| !in_spec.contains(*k)).collect();
    assert!(missing.is_empty(), "in docs/api.md's routes table but not in the OpenAPI document: {missing:?}");
}

#[test]
fn the_documents_count_bounds_are_the_services() {
    let doc = serde_json::to_value(drover_controller::api::openapi()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let launch = drover_controller::service::MAX_LAUNCH as u64;
    for body in ["LaunchBody", "BatchBody", "ChildrenBody"] {
        let count = &schemas[body]["properties"]["count"];
        assert_eq!(count["maximum"].as_u64(), Some(launch), "{body}.count: {count}");
        assert_eq!(count["minimum"].as_u64(), Some(1), "{body}.count: {count}");
    }
    let plan = &doc["paths"]["/v1/plan"]["post"]["parameters"];
    let count = plan.as_array().unwrap().iter().find(|p| p["name"] == "count").unwrap();
    assert_eq!(count["schema"]["maximum"].as_u64(), Some(u64::from(ssntp::payload::MAX_PLAN_COUNT)));
    let events = &doc["paths"]["/v1/events"]["get"]["parameters"];
    let wait = events.as_array().unwrap().iter().find(|p| p["name"] == "wait_ms").unwrap();
    let max_wait = u64::try_from(drover_controller::api::MAX_WAIT.as_millis()).unwrap();
    assert_eq!(wait["schema"]["maximum"].as_u64(), Some(max_wait));
}

#[test]
fn every_operation_declares_what_the_layers_around_it_may_answer_and_how_it_is_authenticated() {
    let doc = serde_json::to_value(drover_controller::api::openapi()).unwrap();
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["client_certificate"]["type"], "mutualTLS");
    assert_eq!(schemes["task_token"]["scheme"], "bearer");
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("429") && responses.contains_key("500"), "{method} {path}");
            let open = ["/metrics", "/v1/openapi.json", "/v1/leader"].contains(&path.as_str());
            assert_eq!(responses.contains_key("401"), !open, "{method} {path}: 401 unless open to all");
            let security: Vec<&Value> = op["security"].as_array().unwrap().iter().collect();
            let scheme = security[0].as_object().unwrap().keys().next().cloned();
            let expected = match (open, path.as_str()) {
                (true, _) => None,
                (_, "/v1/tasks/children") => Some("task_token".to_owned()),
                _ => Some("client_certificate".to_owned()),
            };
            assert_eq!(scheme, expected, "{method} {path}");
            if method != "get" && !path.ends_with("/plan") {
                assert!(responses.contains_key("503"), "{method} {path} is refused while the store is read-only");
            }
            if op.get("requestBody").is_some() {
                assert!(responses.contains_key("413"), "{method} {path} has a body limit");
            }
        }
    }
}
