//! JSONPath as Json.NET (Newtonsoft.Json 12/13) speaks it: `JToken.SelectToken` / `SelectTokens`.
//!
//! IoMT FHIR Connector templates are written in this dialect, which is not RFC 9535 and which no
//! Rust crate implements. The three idioms that matter most (semantics doc §1.4):
//! - `$..[?(@heartRate)]`: `@name` means `@.name`, and `..[?()]` tests the start node itself as
//!   well as every descendant, so a flat payload matches at the root;
//! - `$.Properties.iothub-creation-time-utc`: dot-names run until `.`, `[`, `(`, `)`, `]` or space;
//! - `$..[?(@unit == 'inches')]`: single-quoted strings, `==`, `!=`, `<`, `<=`, `>`, `>=`, `=~`,
//!   `===`, `!==`, `<>`, `&&`, `||`.
//!
//! The parser (`parser`) follows `JPath.cs` step by step, quirks included; the evaluator
//! (`eval`) follows the `PathFilter` classes and enumerates lazily in Json.NET's order; the
//! comparisons (`value`) follow `JValue.CompareTo` and `QueryExpression`.
//!
//! # Where this differs from Json.NET
//! - Date-looking strings: Json.NET parses them into Date tokens (`DateParseHandling.DateTime`), so
//!   in filters they compare chronologically, `===` against a string literal is false, `==` compares
//!   Json.NET's own re-formatting of the date, and `=~` never matches them. Here they are plain
//!   strings and compare as strings.
//! - Integers beyond `u64` are `double` in serde_json (Json.NET: `BigInteger`).
//! - A result that is a `JProperty` (only possible through odd filters such as `$..[?(@)]`, where
//!   Json.NET also tests the name/value pairs of objects) has no `serde_json::Value`; selecting one
//!   is [`JsonPathError::PropertyToken`].
//! - Regexes (`=~ /pattern/flags`) run on the `regex` crate: .NET-only syntax (look-around,
//!   back-references, `\p{..}` classes with the workspace's feature set, ...) is an evaluation
//!   error instead of a match, and `$` only matches at the very end (.NET also before a final `\n`).
//! - Double-quoted strings (`["name"]`, `@.a == "x"`) are accepted by [`JsonPath::parse`]; Json.NET
//!   rejects them. [`JsonPath::parse_strict`] rejects them too.
//! - One selection gives up with [`JsonPathError::Evaluation`] after 10 million steps (tokens
//!   produced plus filter candidates examined); Json.NET has no bound (`$..*..*..*` grows as
//!   the document size cubed).
//! - Errors that Json.NET raises as crashes of its parser (`IndexOutOfRangeException`) are parse
//!   errors here; filters may nest at most 32 deep.
//!
//! Invariants: no I/O, no clock, no panics on any input; recursion depth is bounded by the filter
//! nesting limit, never by the size or depth of the document.

mod ast;
mod eval;
mod parser;
mod value;

#[cfg(test)]
mod tests;

use super::doc::JsonTree;

use eval::{Ctx, Flow, Node};
pub(crate) use value::Prim;

/// A parsed Json.NET JSONPath expression.
#[derive(Debug, Clone)]
pub struct JsonPath {
    source: String,
    path: ast::Path,
    /// `Some(names)` when the path is only plain child names (`$.a.b['c']`): then it is
    /// evaluated by direct lookups, which is what Json.NET's `FieldFilter` chain does (a name
    /// on an object gives that member, on anything else nothing), without the general walker.
    fields: Option<Vec<String>>,
    /// `Some(names)` when the path is `..[?(@name...)]` with plain names (the usual
    /// `typeMatchExpression`): evaluated by [`eval::scan_exists`], the same tokens and work
    /// as the general walker.
    scan_exists: Option<Vec<String>>,
}

/// Parse and evaluation errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum JsonPathError {
    /// The expression is not valid Json.NET JSONPath. `position` counts characters.
    #[error("invalid jsonpath at character {position}: {message}")]
    Parse { position: usize, message: String },
    /// `select_one` found more than one token (Json.NET: "Path returned multiple tokens.").
    #[error("path returned multiple tokens")]
    MultipleTokens,
    /// Evaluation failed where Json.NET throws: a zero slice step, a negative array index, a
    /// value that cannot be converted for a comparison, an invalid or unsupported regex.
    #[error("jsonpath evaluation failed: {message}")]
    Evaluation { message: String },
    /// The path selected an object property itself (a Json.NET `JProperty`), not a value.
    #[error("path selected the property '{name}' itself, which has no JSON value")]
    PropertyToken { name: String },
}

impl JsonPath {
    /// Parses `expr` like Json.NET's `JPath`, also accepting double-quoted strings.
    pub fn parse(expr: &str) -> Result<JsonPath, JsonPathError> {
        Self::parse_with(expr, true)
    }

    /// Parses exactly the Json.NET grammar (single-quoted strings only).
    pub fn parse_strict(expr: &str) -> Result<JsonPath, JsonPathError> {
        Self::parse_with(expr, false)
    }

    fn parse_with(expr: &str, double_quotes: bool) -> Result<JsonPath, JsonPathError> {
        let steps = parser::Parser::new(expr, double_quotes).parse_main()?;
        let fields = steps
            .iter()
            .map(|s| match s {
                ast::Step::Field(Some(name)) => Some(name.clone()),
                _ => None,
            })
            .collect::<Option<Vec<String>>>();
        let path = ast::Path::new(steps);
        let scan_exists = eval::scan_exists_names(&path);
        Ok(JsonPath {
            source: expr.to_owned(),
            path,
            fields,
            scan_exists,
        })
    }

    /// The original expression text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `SelectTokens(path)` with `errorWhenNoMatch = false`: all matches in Json.NET order.
    ///
    /// `root` is a `serde_json::Value` or a parsed message ([`crate::mapping::doc::Node`]):
    /// the same tokens in the same order either way.
    pub fn select_all<'a, T: JsonTree>(&self, root: &'a T) -> Result<Vec<&'a T>, JsonPathError> {
        if let Some(names) = &self.fields {
            return Ok(Self::walk_fields(names, root).into_iter().collect());
        }
        let mut out = Vec::new();
        self.run(root, &mut |n| match n {
            Node::Val(v) => {
                out.push(v);
                Ok(Flow::Continue)
            }
            Node::Prop(name, _) => Err(JsonPathError::PropertyToken {
                name: name.to_owned(),
            }),
        })?;
        Ok(out)
    }

    /// `SelectToken(path)`: `Ok(None)` when nothing matches; `Err` when more than one token
    /// matches (Json.NET throws "Path returned multiple tokens.").
    pub fn select_one<'a, T: JsonTree>(&self, root: &'a T) -> Result<Option<&'a T>, JsonPathError> {
        if let Some(names) = &self.fields {
            return Ok(Self::walk_fields(names, root));
        }
        let mut found: Option<&'a T> = None;
        self.run(root, &mut |n| {
            if found.is_some() {
                return Err(JsonPathError::MultipleTokens);
            }
            match n {
                Node::Val(v) => {
                    found = Some(v);
                    Ok(Flow::Continue)
                }
                Node::Prop(name, _) => Err(JsonPathError::PropertyToken {
                    name: name.to_owned(),
                }),
            }
        })?;
        Ok(found)
    }

    /// The general evaluator, bypassing the plain-path shortcut (to test the shortcut).
    #[cfg(test)]
    pub(crate) fn select_all_general<'a, T: JsonTree>(
        &self,
        root: &'a T,
    ) -> Result<Vec<&'a T>, JsonPathError> {
        let slow = JsonPath {
            fields: None,
            scan_exists: None,
            ..self.clone()
        };
        slow.select_all(root)
    }

    /// Direct evaluation of a plain child-name path.
    fn walk_fields<'a, T: JsonTree>(names: &[String], root: &'a T) -> Option<&'a T> {
        let mut v = root;
        for n in names {
            v = v.member(n)?;
        }
        Some(v)
    }

    fn run<'a, T: JsonTree>(
        &self,
        root: &'a T,
        sink: &mut dyn FnMut(Node<'a, T>) -> Result<Flow, JsonPathError>,
    ) -> Result<(), JsonPathError> {
        let ctx = Ctx::new(root);
        if let Some(names) = &self.scan_exists {
            return eval::scan_exists(&ctx, names, root, sink).map(|_| ());
        }
        eval::eval_path(&ctx, &self.path, Node::Val(root), sink).map(|_| ())
    }

    /// `select_all` with a smaller work budget, to test the budget cheaply.
    #[cfg(test)]
    fn select_all_with_budget<'a, T: JsonTree>(
        &self,
        root: &'a T,
        budget: u64,
    ) -> Result<Vec<&'a T>, JsonPathError> {
        let ctx = Ctx::with_budget(root, budget);
        let mut out = Vec::new();
        eval::eval_path(&ctx, &self.path, Node::Val(root), &mut |n| {
            if let Node::Val(v) = n {
                out.push(v);
            }
            Ok(Flow::Continue)
        })?;
        Ok(out)
    }

    /// `select_all` with a smaller work budget and the shortcuts of [`JsonPath::run`] (when
    /// `fast`) or the general evaluator: to test that both spend the same work.
    #[cfg(test)]
    pub(crate) fn select_all_budget_mode<'a, T: JsonTree>(
        &self,
        root: &'a T,
        budget: u64,
        fast: bool,
    ) -> Result<Vec<&'a T>, JsonPathError> {
        let ctx = Ctx::with_budget(root, budget);
        let mut out = Vec::new();
        let mut sink = |n: Node<'a, T>| {
            if let Node::Val(v) = n {
                out.push(v);
            }
            Ok(Flow::Continue)
        };
        match &self.scan_exists {
            Some(names) if fast => eval::scan_exists(&ctx, names, root, &mut sink)?,
            _ => eval::eval_path(&ctx, &self.path, Node::Val(root), &mut sink)?,
        };
        Ok(out)
    }
}
