//! A search's metadata filter as the JSON object both backends match
//! against: PostgreSQL with `@>` (scalar values compare equal), SQLite key
//! by key (`metadata_matches!`).

use crate::model::MetadataFilter;
use crate::store::{SearchScope, Selection};

/// `filter` as one JSON object (`None` without one).
fn object(filter: &MetadataFilter) -> Option<serde_json::Value> {
    if filter.is_empty() {
        return None;
    }
    Some(serde_json::Value::Object(
        filter.pairs().iter().cloned().collect(),
    ))
}

impl SearchScope<'_> {
    /// The metadata filter as one JSON object (`None` without one).
    pub(in crate::store) fn filter_object(&self) -> Option<serde_json::Value> {
        object(self.filter)
    }
}

impl Selection<'_> {
    /// The metadata filter as one JSON object (`None` without one).
    pub(in crate::store) fn filter_object(&self) -> Option<serde_json::Value> {
        object(self.filter)
    }
}
