//! Parsed form of a Json.NET JSONPath expression.
//!
//! One [`Step`] per Json.NET `PathFilter` class, one [`Comparison`] per `BooleanQueryExpression`.
//! Invariants:
//! - [`Step::Root`] only ever appears as the first step of a path inside a filter expression
//!   (`$...` in `[?(...)]`); the top-level `$` is consumed by the parser and produces no step.
//! - `&&` / `||` chains are stored flat ([`Expr::Chain`]): Json.NET's parser only ever nests a new
//!   composite as the *last* child of the previous one, so the tree is a spine and a list of levels
//!   represents it without recursion (deep chains cannot overflow the stack when evaluated or dropped).
//! - Filter nesting depth is bounded by the parser (`MAX_NESTING`), so the recursive parts of this
//!   tree (a path inside a filter inside a path ...) are shallow.

use regex::Regex;

/// A sequence of steps, applied left to right.
#[derive(Debug, Clone)]
pub(crate) struct Path {
    pub(crate) steps: Vec<Step>,
    /// True when some step is a slice with an explicit step of 0. Json.NET throws
    /// "Step cannot be zero." as soon as such a path is enumerated, whatever the input.
    pub(crate) has_zero_step: bool,
    /// True when every step is a plain child name (`.name` / `['name']`, `@name` in filters):
    /// the evaluator then follows the names directly instead of stacking step iterators.
    pub(crate) plain_fields: bool,
}

impl Path {
    pub(crate) fn new(steps: Vec<Step>) -> Self {
        let has_zero_step = steps
            .iter()
            .any(|s| matches!(s, Step::Slice { step: Some(0), .. }));
        let plain_fields = steps.iter().all(|s| matches!(s, Step::Field(Some(_))));
        Path {
            steps,
            has_zero_step,
            plain_fields,
        }
    }
}

/// One path filter. `None` names / indexes are the wildcards.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// `$` inside a filter: yields the evaluation root, ignoring the input.
    Root,
    /// `.name` / `['name']`; `None` is `.*` (object member values only).
    Field(Option<String>),
    /// `['a','b']`: for each object, each listed member that exists, in list order.
    FieldMulti(Vec<String>),
    /// `..name` / `..['name']`; `None` is `..*` (the start node itself and every descendant value).
    Scan(Option<String>),
    /// `..['a','b']`: member values of every descendant property whose name is listed, document order.
    ScanMulti(Vec<String>),
    /// `[n]`; `None` is `[*]` (array elements only).
    Index(Option<i32>),
    /// `[a,b,...]`.
    IndexMulti(Vec<i32>),
    /// `[start:end:step]`.
    Slice {
        start: Option<i32>,
        end: Option<i32>,
        step: Option<i32>,
    },
    /// `[?(expr)]`: the children of each node that match.
    Query(Expr),
    /// `..[?(expr)]`: each node itself and all its descendants that match.
    QueryScan(Expr),
}

/// A filter expression.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
    /// A single comparison or existence test.
    Cmp(Box<Comparison>),
    /// `levels[0]` combined with its items and, as its last operand, the value of `levels[1]`, etc.
    Chain(Vec<Level>),
}

/// One `CompositeExpression` level of a chain.
#[derive(Debug, Clone)]
pub(crate) struct Level {
    pub(crate) op: Logic,
    /// Never empty: a level is created together with its first item.
    pub(crate) items: Vec<Comparison>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Logic {
    And,
    Or,
}

/// Comparison operators (`QueryOperator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Exists,
    Eq,
    Ne,
    StrictEq,
    StrictNe,
    Lt,
    Le,
    Gt,
    Ge,
    Regex,
}

/// `left op right`; `right` is `None` only for [`Op::Exists`].
#[derive(Debug, Clone)]
pub(crate) struct Comparison {
    pub(crate) op: Op,
    pub(crate) left: Operand,
    pub(crate) right: Option<Operand>,
    /// For `=~` with a literal string on the right: the pattern compiled once at parse time.
    /// The error (if any) is only reported when the regex is actually needed, as in Json.NET.
    pub(crate) regex: Option<Result<Regex, String>>,
}

#[derive(Debug, Clone)]
pub(crate) enum Operand {
    Path(Path),
    Lit(Literal),
}

/// A literal in a filter; Json.NET stores these as `JValue`s.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Null,
    Bool(bool),
    /// Integer literal (`long`).
    Int(i64),
    /// Literal containing `.`, `E` or `e` (`double`).
    Float(f64),
    /// Quoted string, or a regex literal `/.../flags` kept verbatim as a string.
    Str(String),
}
