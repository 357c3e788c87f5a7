//! What a forced build of a builder builds when the request leaves the
//! source out: the repository, branch and properties of the builder's
//! scheduler (a `force` scheduler listing it first, then the others in the
//! order of the cluster file), else the repository and branch the builder
//! last built. Without this a builder with a git step could not be forced
//! without naming its repository.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::db::{DbError, Store};
use crate::state::MasterState;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ForceDefaults {
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub properties: BTreeMap<String, Value>,
    /// Where they come from: `scheduler <name>`, `last build`, or null.
    pub from: Option<String>,
}

pub async fn force_defaults(st: &MasterState, builder: &str) -> Result<ForceDefaults, DbError> {
    let mut schedulers: Vec<_> = st
        .config
        .schedulers
        .iter()
        .filter(|s| s.builders.iter().any(|b| b == builder))
        .collect();
    schedulers.sort_by_key(|s| s.kind != "force");
    let mut d = ForceDefaults::default();
    if let Some(s) = schedulers
        .iter()
        .find(|s| s.repository.is_some() || s.branch.is_some())
    {
        d.repository = s.repository.clone().filter(|r| !r.is_empty());
        d.branch = s.branch.clone();
        d.from = Some(format!("scheduler {}", s.name));
    }
    if let Some(s) = schedulers.first() {
        d.properties = s
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(Value::Null)))
            .collect();
    }
    if d.repository.is_none()
        && let Some(id) = st.builder_ids.get(builder)
        && let Some(last) = last_source(&st.store, *id).await?
    {
        d.branch = d.branch.or(last.1);
        d.repository = Some(last.0);
        d.from.get_or_insert_with(|| "last build".to_owned());
    }
    Ok(d)
}

async fn last_source(
    store: &Store,
    builder_id: i64,
) -> Result<Option<(String, Option<String>)>, DbError> {
    Ok(store
        .last_source_of_builder(builder_id)
        .await?
        .map(|ss| (ss.repository, ss.branch)))
}
