//! Json.NET-dialect JSONPath (temporary stub with the agreed API; replaced by the real module).
#![allow(missing_docs)]
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct JsonPath {
    src: String,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum JsonPathError {
    #[error("unsupported")]
    Unsupported,
}

impl JsonPath {
    pub fn parse(expr: &str) -> Result<JsonPath, JsonPathError> {
        Ok(JsonPath {
            src: expr.to_owned(),
        })
    }
    pub fn source(&self) -> &str {
        &self.src
    }
    pub fn select_all<'a>(&self, root: &'a Value) -> Result<Vec<&'a Value>, JsonPathError> {
        Ok(root
            .pointer(&self.src.replace("$.", "/").replace('.', "/"))
            .into_iter()
            .collect())
    }
    pub fn select_one<'a>(&self, root: &'a Value) -> Result<Option<&'a Value>, JsonPathError> {
        Ok(self.select_all(root)?.into_iter().next())
    }
}
