//! JSON schemas (for the OpenAPI document) of the values that are written by name: instance
//! states and node statuses, from [`drover_model`]'s lists, so the document cannot drift from
//! the names the API writes.

use drover_model::{InstanceStatus, NodeStatus};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{RefOr, Schema};

fn names(description: &str, names: impl IntoIterator<Item = &'static str>) -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).description(Some(description)).enum_values(Some(names)).into()
}

/// An instance state by name (`pending` … `canceled`).
pub fn instance_state() -> RefOr<Schema> {
    names("An instance's state.", InstanceStatus::ALL.iter().map(|s| s.name()))
}

/// A node status by name (`READY`, `lost` …).
pub fn node_status() -> RefOr<Schema> {
    names("A node's status.", NodeStatus::ALL.iter().map(|s| s.name()))
}
