//! The submission's row in the DynamoDB submissions table, or its local stand-in (`OUT/dynamodb.json`), behind
//! one interface: the start and final updates run the same code in both cases.
//!
//! Key `{team_id: S, submission_id: S}`; every attribute is a string (spec: evalai-api.md 6.2). The pre-run step
//! `put_item`s the row with `start_time: "-"` before the Job starts.

use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DynamoDB update of {table}: {reason}")]
pub struct TableError {
    pub table: String,
    pub reason: String,
}

/// The row's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemKey {
    pub team_id: String,
    pub submission_id: String,
}

/// A condition on the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// `start_time` is absent or still the pre-run step's `-`.
    StartTimeUnset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updated {
    Applied,
    ConditionFailed,
}

/// A table of submission rows.
pub trait ItemStore: Send + Sync + 'static {
    fn describe(&self) -> String;
    /// `UpdateItem`: sets string attributes, creating the row if absent, when `condition` holds.
    fn update(
        &self,
        key: &ItemKey,
        set: &[(&str, String)],
        condition: Option<Condition>,
    ) -> impl Future<Output = Result<Updated, TableError>> + Send;
}

pub struct DynamoTable {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoTable {
    pub fn new(config: &aws_config::SdkConfig, table: &str) -> Self {
        DynamoTable { client: aws_sdk_dynamodb::Client::new(config), table: table.to_string() }
    }
}

impl ItemStore for DynamoTable {
    fn describe(&self) -> String {
        format!("dynamodb table {}", self.table)
    }

    async fn update(
        &self,
        key: &ItemKey,
        set: &[(&str, String)],
        condition: Option<Condition>,
    ) -> Result<Updated, TableError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("team_id", AttributeValue::S(key.team_id.clone()))
            .key("submission_id", AttributeValue::S(key.submission_id.clone()));
        let mut expr = Vec::new();
        for (i, (name, value)) in set.iter().enumerate() {
            expr.push(format!("#a{i} = :v{i}"));
            req = req
                .expression_attribute_names(format!("#a{i}"), *name)
                .expression_attribute_values(format!(":v{i}"), AttributeValue::S(value.clone()));
        }
        req = req.update_expression(format!("SET {}", expr.join(", ")));
        if condition == Some(Condition::StartTimeUnset) {
            req = req
                .condition_expression("attribute_not_exists(#st) OR #st = :dash")
                .expression_attribute_names("#st", "start_time")
                .expression_attribute_values(":dash", AttributeValue::S("-".into()));
        }
        match req.send().await {
            Ok(_) => Ok(Updated::Applied),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => {
                Ok(Updated::ConditionFailed)
            }
            Err(e) => Err(TableError { table: self.table.clone(), reason: DisplayErrorContext(e).to_string() }),
        }
    }
}

/// The embedded stand-in: the row as a JSON object of strings in one file.
pub struct LocalTable {
    path: PathBuf,
}

impl LocalTable {
    pub fn new(path: &Path) -> Self {
        LocalTable { path: path.to_path_buf() }
    }

    pub fn read(&self) -> BTreeMap<String, String> {
        std::fs::read(&self.path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }
}

impl ItemStore for LocalTable {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    async fn update(
        &self,
        key: &ItemKey,
        set: &[(&str, String)],
        condition: Option<Condition>,
    ) -> Result<Updated, TableError> {
        let mut item = self.read();
        if item.get("team_id") != Some(&key.team_id) || item.get("submission_id") != Some(&key.submission_id) {
            item.clear();
            item.insert("team_id".into(), key.team_id.clone());
            item.insert("submission_id".into(), key.submission_id.clone());
        }
        if condition == Some(Condition::StartTimeUnset) && item.get("start_time").is_some_and(|t| t != "-") {
            return Ok(Updated::ConditionFailed);
        }
        for (name, value) in set {
            item.insert(name.to_string(), value.clone());
        }
        let bytes = serde_json::to_vec_pretty(&item).unwrap_or_default();
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        crate::volume::atomic_write(&self.path, &bytes)
            .map(|()| Updated::Applied)
            .map_err(|e| TableError { table: self.describe(), reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_table_keeps_the_first_start_time() {
        let p = std::env::temp_dir().join(format!("logcopy-table-{}/dynamodb.json", std::process::id()));
        let t = LocalTable::new(&p);
        let key = ItemKey { team_id: "9".into(), submission_id: "4321".into() };
        let start = |s: &str| vec![("start_time", s.to_string())];
        assert_eq!(t.update(&key, &start("-"), None).await.unwrap(), Updated::Applied);
        assert_eq!(t.update(&key, &start("A"), Some(Condition::StartTimeUnset)).await.unwrap(), Updated::Applied);
        assert_eq!(
            t.update(&key, &start("B"), Some(Condition::StartTimeUnset)).await.unwrap(),
            Updated::ConditionFailed
        );
        assert_eq!(t.read().get("start_time").map(String::as_str), Some("A"));
    }
}
