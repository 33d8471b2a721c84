//! A compiled template expression: Json.NET JSONPath or JMESPath.

use super::doc::JsonTree;
use super::jmes::{JmesError, JmesExpr};
use super::jsonpath::{JsonPath, JsonPathError};
use std::borrow::Cow;

/// The `language` of an expression (`TemplateExpressionLanguage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    JsonPath,
    JmesPath,
}

impl Language {
    /// Parses `JsonPath` / `JmesPath`, any case (Json.NET's StringEnumConverter).
    pub fn parse(s: &str) -> Option<Language> {
        if s.eq_ignore_ascii_case("jsonpath") {
            Some(Language::JsonPath)
        } else if s.eq_ignore_ascii_case("jmespath") {
            Some(Language::JmesPath)
        } else {
            None
        }
    }
}

/// A compiled expression.
#[derive(Debug, Clone)]
pub enum Expr {
    JsonPath(JsonPath),
    JmesPath(JmesExpr),
}

/// Why an expression failed to compile or evaluate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    #[error("{0}")]
    JsonPath(#[from] JsonPathError),
    #[error("{0}")]
    JmesPath(#[from] JmesError),
}

impl Expr {
    /// Compiles `text` in `language`.
    pub fn compile(text: &str, language: Language) -> Result<Expr, ExprError> {
        Ok(match language {
            Language::JsonPath => Expr::JsonPath(JsonPath::parse(text)?),
            Language::JmesPath => Expr::JmesPath(JmesExpr::compile(text)?),
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        match self {
            Expr::JsonPath(p) => p.source(),
            Expr::JmesPath(j) => j.source(),
        }
    }

    /// The language.
    pub fn language(&self) -> Language {
        match self {
            Expr::JsonPath(_) => Language::JsonPath,
            Expr::JmesPath(_) => Language::JmesPath,
        }
    }

    /// Multi-select (`SelectTokens`).
    pub fn select_all<'a, T: JsonTree>(&self, data: &'a T) -> Result<Vec<Cow<'a, T>>, ExprError> {
        Ok(match self {
            Expr::JsonPath(p) => p.select_all(data)?.into_iter().map(Cow::Borrowed).collect(),
            Expr::JmesPath(j) => T::jmes_all(j, data)?.into_iter().map(Cow::Owned).collect(),
        })
    }

    /// Single-select (`SelectToken`): `None` when nothing matched, an error for several tokens.
    pub fn select_one<'a, T: JsonTree>(
        &self,
        data: &'a T,
    ) -> Result<Option<Cow<'a, T>>, ExprError> {
        Ok(match self {
            Expr::JsonPath(p) => p.select_one(data)?.map(Cow::Borrowed),
            Expr::JmesPath(j) => T::jmes_one(j, data)?.map(Cow::Owned),
        })
    }
}
