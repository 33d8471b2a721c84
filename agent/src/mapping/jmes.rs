//! JMESPath with the connector's functions (temporary stub with the agreed API).
#![allow(missing_docs)]
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct JmesExpr {
    src: String,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum JmesError {
    #[error("{message}")]
    Compile { message: String },
    #[error("{message}")]
    Eval { message: String },
}

impl JmesExpr {
    pub fn compile(expr: &str) -> Result<JmesExpr, JmesError> {
        Ok(JmesExpr {
            src: expr.to_owned(),
        })
    }
    pub fn source(&self) -> &str {
        &self.src
    }
    pub fn select_all(&self, _data: &Value) -> Result<Vec<Value>, JmesError> {
        Err(JmesError::Eval {
            message: "stub".into(),
        })
    }
    pub fn select_one(&self, _data: &Value) -> Result<Option<Value>, JmesError> {
        Err(JmesError::Eval {
            message: "stub".into(),
        })
    }
}
