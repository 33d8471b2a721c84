//! JMESPath as the IoMT connector evaluates it (JmesPath.Net plus the connector's custom
//! functions), on top of the `jmespath` crate.
//!
//! What this module adds to the crate:
//! - A process-wide [`jmespath::Runtime`] with the JMESPath built-ins and the connector's eight
//!   custom functions (`add`, `subtract`, `multiply`, `divide`, `pow`, `insertString`,
//!   `fromUnixTimestamp`, `fromUnixTimestampMs`). Where upstream's code and its
//!   `docs/CustomFunctions.md` disagree, the functions follow the docs; see
//!   `docs/decisions/0003-jmespath-functions-follow-docs.md` for the exact differences.
//! - `to_number` replaced by JmesPath.Net's rule (`Int64.TryParse`, then invariant
//!   `double.TryParse`); the crate's version JSON-decodes the string, so `to_number('"5"')`
//!   gave a string and `to_number('007')` gave null.
//! - The legacy backtick literal: a `` `...` `` whose content is not valid JSON is the raw
//!   string of that content (`` `heartRate` `` means `"heartRate"`). It is rewritten into a JSON
//!   string literal before parsing.
//! - Load-time checks JmesPath.Net makes when it parses: every called function must exist and
//!   get the right number of arguments.
//! - Upstream's token selection (`JmesPathExpressionEvaluator`): JmesPath.Net marks a result
//!   as a *projection* when the outermost expression is one (`[*]`, `[]`, `[?..]`, `*`,
//!   slices, and what follows them). Multi-select yields a projection's elements but a plain
//!   array as one token; single-select rejects a projection of more than one element.
//!
//! Invariants: evaluation is pure (no I/O, no clock); no input, expression or data makes it
//! panic or overflow the stack (expressions are capped in length and nesting before the
//! crate's recursive parser sees them); integer results stay JSON integers and float results
//! JSON floats; a result that JSON cannot carry (infinity, NaN) is an error.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, LazyLock};

use jmespath::ast::Ast;
use jmespath::functions::{ArgumentType, CustomFunction, Signature};
use jmespath::{Context, ErrorReason, JmespathError, Rcvar, Runtime, Variable};
use serde_json::{Map, Number, Value};

use super::time::Timestamp;

/// Longest expression accepted, in bytes. Template expressions are a few hundred bytes at
/// most; the cap bounds the work of the crate's recursive parser and interpreter.
pub const MAX_EXPRESSION_LEN: usize = 4096;

/// Deepest nesting accepted, as estimated by `scan`: brackets, braces and parentheses open at
/// once, plus the chains of prefix operators (`!`, `&`) and projections within them, which also
/// recurse in the parser. 64 levels stay well inside a 1 MiB thread stack in a debug build
/// (the crate's parser overflows 2 MiB at about 200).
pub const MAX_NESTING: usize = 64;

/// Prefix that marks an error raised by one of this module's functions. The crate has no
/// free-text runtime error, so the functions use `ErrorReason::Parse` with this prefix and
/// `JmesExpr::eval_error` strips it again.
const FUNCTION_ERROR_MARK: &str = "\u{1}iomt-function\u{1}";

/// The shared runtime: JMESPath built-ins plus the connector's custom functions.
static RUNTIME: LazyLock<Runtime> = LazyLock::new(build_runtime);

/// Every function of [`RUNTIME`] with its argument count and whether more may follow
/// (JmesPath.Net checks this when it parses; the crate only when it evaluates).
const FUNCTION_ARITY: &[(&str, usize, bool)] = &[
    ("abs", 1, false),
    ("avg", 1, false),
    ("ceil", 1, false),
    ("contains", 2, false),
    ("ends_with", 2, false),
    ("floor", 1, false),
    ("join", 2, false),
    ("keys", 1, false),
    ("length", 1, false),
    ("map", 2, false),
    ("max", 1, false),
    ("max_by", 2, false),
    ("merge", 1, true),
    ("min", 1, false),
    ("min_by", 2, false),
    ("not_null", 1, true),
    ("reverse", 1, false),
    ("sort", 1, false),
    ("sort_by", 2, false),
    ("starts_with", 2, false),
    ("sum", 1, false),
    ("to_array", 1, false),
    ("to_number", 1, false),
    ("to_string", 1, false),
    ("type", 1, false),
    ("values", 1, false),
    ("add", 2, false),
    ("subtract", 2, false),
    ("multiply", 2, false),
    ("divide", 2, false),
    ("pow", 2, false),
    ("insertString", 3, false),
    ("fromUnixTimestamp", 1, false),
    ("fromUnixTimestampMs", 1, false),
];

/// A JMESPath error, with upstream-like text.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum JmesError {
    /// The expression does not parse, or calls an unknown function or with the wrong number
    /// of arguments (a template load error upstream).
    #[error("{message}")]
    Compile { message: String },
    /// Evaluation failed: a function rejected its arguments, arithmetic overflowed, a
    /// single-select matched several tokens, or the result is not JSON.
    #[error("{message}")]
    Eval { message: String },
}

/// A compiled JMESPath expression. Cheap to clone (shared), `Send + Sync`.
#[derive(Clone)]
pub struct JmesExpr {
    inner: Arc<Compiled>,
}

struct Compiled {
    /// The expression as written in the template.
    source: String,
    /// What the crate parsed: `source` with legacy literals rewritten.
    parsed: String,
    ast: Ast,
}

impl fmt::Debug for JmesExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JmesExpr").field(&self.inner.source).finish()
    }
}

impl JmesExpr {
    /// Compiles `expr`, accepting the legacy unquoted backtick literal.
    pub fn compile(expr: &str) -> Result<JmesExpr, JmesError> {
        let compile_error = |cause: String| JmesError::Compile {
            message: format!(
                "the following JmesPath expression could not be parsed: {expr}. cause: {cause}"
            ),
        };
        if expr.trim().is_empty() {
            return Err(compile_error("the expression is empty".to_owned()));
        }
        if expr.len() > MAX_EXPRESSION_LEN {
            return Err(compile_error(format!(
                "the expression is longer than {MAX_EXPRESSION_LEN} bytes"
            )));
        }
        let scan = scan(expr);
        if scan.nesting > MAX_NESTING {
            return Err(compile_error(format!(
                "the expression nests deeper than {MAX_NESTING} levels"
            )));
        }
        let parsed = rewrite_legacy_literals(expr, &scan.legacy_literals);
        let ast = jmespath::parse(&parsed).map_err(|e| {
            let mut cause = format!("{} at position {}", e.reason, e.offset);
            if parsed != expr {
                cause.push_str(&format!(" of the rewritten expression {parsed}"));
            }
            compile_error(cause)
        })?;
        let ast = clamp_slice_steps(ast);
        check_functions(&ast).map_err(compile_error)?;
        Ok(JmesExpr {
            inner: Arc::new(Compiled {
                source: expr.to_owned(),
                parsed: parsed.into_owned(),
                ast,
            }),
        })
    }

    /// The expression as given to [`JmesExpr::compile`].
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Multi-select (`typeMatchExpression`), as upstream `SelectTokens`: a projection yields
    /// its elements (never null ones); any other result yields itself as one token, an array
    /// included; null yields nothing.
    pub fn select_all(&self, data: &Value) -> Result<Vec<Value>, JmesError> {
        let (result, projection) = self.evaluate(data)?;
        if projection {
            if let Some(items) = result.as_array() {
                return items.iter().map(|v| self.to_json(v)).collect();
            }
        }
        if result.is_null() {
            Ok(Vec::new())
        } else {
            Ok(vec![self.to_json(&result)?])
        }
    }

    /// Single-select, as upstream `SelectToken`: `Ok(None)` for null. A projection of more
    /// than one element is an error; a projection of zero or one element is returned as that
    /// (possibly empty) array, as JmesPath.Net does. A plain array result is returned as is.
    pub fn select_one(&self, data: &Value) -> Result<Option<Value>, JmesError> {
        let (result, projection) = self.evaluate(data)?;
        if projection && result.as_array().is_some_and(|items| items.len() > 1) {
            return Err(JmesError::Eval {
                message: format!(
                    "multiple tokens were returned using expression {}",
                    self.inner.source
                ),
            });
        }
        if result.is_null() {
            Ok(None)
        } else {
            self.to_json(&result).map(Some)
        }
    }

    /// Evaluates on `data`; the flag says whether JmesPath.Net would call the result a
    /// projection.
    fn evaluate(&self, data: &Value) -> Result<(Rcvar, bool), JmesError> {
        let root = Variable::try_from(data).map_err(|e| self.eval_error(e))?;
        let root = Rcvar::new(root);
        let mut ctx = Context::new(&self.inner.parsed, &RUNTIME);
        evaluate_top(&self.inner.ast, &root, &mut ctx).map_err(|e| self.eval_error(e))
    }

    fn eval_error(&self, e: JmespathError) -> JmesError {
        let cause = match &e.reason {
            ErrorReason::Parse(text) => match text.strip_prefix(FUNCTION_ERROR_MARK) {
                Some(message) => message.to_owned(),
                None => format!("{} at position {}", e.reason, e.offset),
            },
            ErrorReason::Runtime(_) => format!("{} at position {}", e.reason, e.offset),
        };
        JmesError::Eval {
            message: format!(
                "the JmesPath expression {} failed: {cause}",
                self.inner.source
            ),
        }
    }

    fn to_json(&self, v: &Variable) -> Result<Value, JmesError> {
        variable_to_json(v).ok_or_else(|| JmesError::Eval {
            message: format!(
                "the JmesPath expression {} returned an expression reference, which is not JSON",
                self.inner.source
            ),
        })
    }
}

/// Converts a result back to JSON. Numbers keep their integer or float kind. Object keys come
/// out sorted (the crate keeps objects in a `BTreeMap`). `None` for an expression reference.
fn variable_to_json(v: &Variable) -> Option<Value> {
    Some(match v {
        Variable::Null => Value::Null,
        Variable::Bool(b) => Value::Bool(*b),
        Variable::Number(n) => Value::Number(n.clone()),
        Variable::String(s) => Value::String(s.clone()),
        Variable::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| variable_to_json(item))
                .collect::<Option<Vec<_>>>()?,
        ),
        Variable::Object(map) => {
            let mut out = Map::new();
            for (key, item) in map {
                out.insert(key.clone(), variable_to_json(item)?);
            }
            Value::Object(out)
        }
        Variable::Expref(_) => return None,
    })
}

/// Interprets the outermost nodes itself to learn whether the result is a JmesPath.Net
/// projection; the value is always what `jmespath::interpret` gives for the whole tree.
fn evaluate_top(
    node: &Ast,
    data: &Rcvar,
    ctx: &mut Context<'_>,
) -> Result<(Rcvar, bool), JmespathError> {
    match node {
        Ast::Projection { .. } => {
            let value = jmespath::interpret(data, node, ctx)?;
            let projection = value.is_array();
            Ok((value, projection))
        }
        // Both `a.b` and `a | b`: a projection on the left has already absorbed any `.x`
        // that followed it, so only the right side decides.
        Ast::Subexpr { lhs, rhs, .. } => {
            let left = jmespath::interpret(data, lhs, ctx)?;
            evaluate_top(rhs, &left, ctx)
        }
        Ast::Or { lhs, rhs, .. } => {
            let left = evaluate_top(lhs, data, ctx)?;
            if left.0.is_truthy() {
                Ok(left)
            } else {
                evaluate_top(rhs, data, ctx)
            }
        }
        Ast::And { lhs, rhs, .. } => {
            let left = evaluate_top(lhs, data, ctx)?;
            if left.0.is_truthy() {
                evaluate_top(rhs, data, ctx)
            } else {
                Ok(left)
            }
        }
        _ => Ok((jmespath::interpret(data, node, ctx)?, false)),
    }
}

// ---------------------------------------------------------------------------------------------
// Load-time checks and rewriting
// ---------------------------------------------------------------------------------------------

/// What one pass over the expression found outside quoted strings.
struct Scan {
    /// Byte ranges (content only, without the backticks) of literals that are not valid JSON.
    legacy_literals: Vec<(usize, usize)>,
    /// Upper bound, in units of a few parser frames, on the parser's recursion depth.
    nesting: usize,
}

/// Tokenizes just enough of `expr` to find backtick literals and bound the nesting. Quoting
/// follows the crate's lexer: `'...'`, `"..."` and `` `...` `` end at the first unescaped
/// closing character, and a backslash escapes the character after it.
///
/// Nesting: the crate's Pratt parser recurses for each open bracket, and, within one bracket
/// level, for each prefix operator (`!`, `&`) and projection (`*`, `[..]`) in a chain until a
/// low-precedence token (`,` `|` `||` `&&` or a comparison) unwinds the chain. Dotted paths
/// (`a.b.c`) do not nest. The estimate is the number of open levels plus the chain lengths of
/// all of them.
fn scan(expr: &str) -> Scan {
    let mut legacy_literals = Vec::new();
    let mut chains: Vec<usize> = vec![0];
    let mut nesting = 0usize;
    let mut chars = expr.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next_is = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>, d: char| {
            chars.next_if(|&(_, n)| n == d).is_some()
        };
        match c {
            '\'' | '"' | '`' => {
                let mut end = None;
                while let Some((j, d)) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        end = Some(j);
                        break;
                    }
                }
                // An unclosed quote is left to the parser, which reports it.
                let Some(end) = end else { break };
                if c == '`' {
                    let content = expr[i + 1..end].replace("\\`", "`");
                    if Variable::from_json(&content).is_err() {
                        legacy_literals.push((i + 1, end));
                    }
                }
            }
            '(' | '[' | '{' => {
                if c == '[' {
                    // A bracket after an expression is an index or a projection.
                    bump(&mut chains);
                }
                chains.push(0);
            }
            ')' | ']' | '}' if chains.len() > 1 => {
                chains.pop();
            }
            '!' if next_is(&mut chars, '=') => reset(&mut chains),
            '&' if next_is(&mut chars, '&') => reset(&mut chains),
            '!' | '&' | '*' => bump(&mut chains),
            ',' | '|' | '=' | '<' | '>' => reset(&mut chains),
            _ => {}
        }
        nesting = nesting.max(chains.len() - 1 + chains.iter().sum::<usize>());
    }
    Scan {
        legacy_literals,
        nesting,
    }
}

fn bump(chains: &mut [usize]) {
    if let Some(last) = chains.last_mut() {
        *last += 1;
    }
}

fn reset(chains: &mut [usize]) {
    if let Some(last) = chains.last_mut() {
        *last = 0;
    }
}

/// Replaces each legacy literal (content that is not JSON) by a JSON string literal with the
/// same raw content: `` `heartRate` `` becomes `` `"heartRate"` ``.
fn rewrite_legacy_literals<'a>(expr: &'a str, literals: &[(usize, usize)]) -> Cow<'a, str> {
    if literals.is_empty() {
        return Cow::Borrowed(expr);
    }
    let mut out = String::with_capacity(expr.len() + 8 * literals.len());
    let mut copied = 0;
    for &(start, end) in literals {
        out.push_str(&expr[copied..start]);
        let raw = expr[start..end].replace("\\`", "`");
        // JSON never escapes a backtick, and a backslash it writes always starts an escape
        // pair, so escaping every backtick makes the crate's lexer give back exactly `json`.
        let json = Value::String(raw).to_string();
        out.push_str(&json.replace('`', "\\`"));
        copied = end;
    }
    out.push_str(&expr[copied..]);
    Cow::Owned(out)
}

/// Above this, a slice step is as good as infinite for any array that fits in memory; the
/// crate adds the step to an `i32` index, which would overflow for steps near `i32::MAX`.
const MAX_SLICE_STEP: i32 = 1 << 29;

fn clamp_slice_steps(ast: Ast) -> Ast {
    fn walk(node: &mut Ast) {
        match node {
            Ast::Slice { step, .. } => *step = (*step).clamp(-MAX_SLICE_STEP, MAX_SLICE_STEP),
            Ast::Comparison { lhs, rhs, .. }
            | Ast::Subexpr { lhs, rhs, .. }
            | Ast::Projection { lhs, rhs, .. }
            | Ast::And { lhs, rhs, .. }
            | Ast::Or { lhs, rhs, .. } => {
                walk(lhs);
                walk(rhs);
            }
            Ast::Condition {
                predicate, then, ..
            } => {
                walk(predicate);
                walk(then);
            }
            Ast::Expref { ast, .. } => walk(ast),
            Ast::Flatten { node, .. } | Ast::Not { node, .. } | Ast::ObjectValues { node, .. } => {
                walk(node)
            }
            Ast::Function { args, .. } => args.iter_mut().for_each(walk),
            Ast::MultiList { elements, .. } => elements.iter_mut().for_each(walk),
            Ast::MultiHash { elements, .. } => {
                elements.iter_mut().for_each(|kvp| walk(&mut kvp.value))
            }
            Ast::Identity { .. } | Ast::Field { .. } | Ast::Index { .. } | Ast::Literal { .. } => {}
        }
    }
    let mut ast = ast;
    walk(&mut ast);
    ast
}

/// JmesPath.Net's parse-time function checks, with its wording.
fn check_functions(node: &Ast) -> Result<(), String> {
    let mut result = Ok(());
    visit(node, &mut |n| {
        if let Ast::Function { name, args, .. } = n {
            if result.is_ok() {
                result = check_call(name, args.len());
            }
        }
    });
    result
}

fn check_call(name: &str, actual: usize) -> Result<(), String> {
    let Some(&(_, expected, variadic)) = FUNCTION_ARITY.iter().find(|(n, ..)| *n == name) else {
        return Err(format!(
            "unknown-function, no function named {name} has been registered"
        ));
    };
    if actual < expected || (!variadic && actual > expected) {
        let more = if variadic { "or more " } else { "" };
        let report = match (actual, variadic) {
            (0, _) => "none".to_owned(),
            (n, true) => format!("only {n}"),
            (n, false) => n.to_string(),
        };
        let plural = if expected > 1 { "s" } else { "" };
        return Err(format!(
            "invalid-arity, the function {name} expects {expected} argument{plural} {more}but {report} were supplied"
        ));
    }
    Ok(())
}

fn visit(node: &Ast, f: &mut dyn FnMut(&Ast)) {
    f(node);
    match node {
        Ast::Comparison { lhs, rhs, .. }
        | Ast::Subexpr { lhs, rhs, .. }
        | Ast::Projection { lhs, rhs, .. }
        | Ast::And { lhs, rhs, .. }
        | Ast::Or { lhs, rhs, .. } => {
            visit(lhs, f);
            visit(rhs, f);
        }
        Ast::Condition {
            predicate, then, ..
        } => {
            visit(predicate, f);
            visit(then, f);
        }
        Ast::Expref { ast, .. } => visit(ast, f),
        Ast::Flatten { node, .. } | Ast::Not { node, .. } | Ast::ObjectValues { node, .. } => {
            visit(node, f)
        }
        Ast::Function { args, .. } => args.iter().for_each(|a| visit(a, f)),
        Ast::MultiList { elements, .. } => elements.iter().for_each(|e| visit(e, f)),
        Ast::MultiHash { elements, .. } => elements.iter().for_each(|kvp| visit(&kvp.value, f)),
        Ast::Identity { .. }
        | Ast::Field { .. }
        | Ast::Index { .. }
        | Ast::Literal { .. }
        | Ast::Slice { .. } => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Runtime and custom functions
// ---------------------------------------------------------------------------------------------

fn build_runtime() -> Runtime {
    let mut rt = Runtime::new();
    rt.register_builtin_functions();
    let number2 = || Signature::new(vec![ArgumentType::Number, ArgumentType::Number], None);
    for (name, op) in [
        ("add", Op::Add),
        ("subtract", Op::Subtract),
        ("multiply", Op::Multiply),
        ("divide", Op::Divide),
        ("pow", Op::Pow),
    ] {
        rt.register_function(
            name,
            Box::new(CustomFunction::new(
                number2(),
                Box::new(move |args: &[Rcvar], ctx: &mut Context<'_>| arithmetic(op, args, ctx)),
            )),
        );
    }
    rt.register_function(
        "insertString",
        Box::new(CustomFunction::new(
            Signature::new(
                vec![
                    ArgumentType::String,
                    ArgumentType::String,
                    ArgumentType::Number,
                ],
                None,
            ),
            Box::new(insert_string),
        )),
    );
    for (name, unit) in [
        ("fromUnixTimestamp", EpochUnit::Seconds),
        ("fromUnixTimestampMs", EpochUnit::Milliseconds),
    ] {
        rt.register_function(
            name,
            Box::new(CustomFunction::new(
                Signature::new(vec![ArgumentType::Number], None),
                Box::new(move |args: &[Rcvar], ctx: &mut Context<'_>| from_unix(unit, args, ctx)),
            )),
        );
    }
    rt.register_function(
        "to_number",
        Box::new(CustomFunction::new(
            Signature::new(vec![ArgumentType::Any], None),
            Box::new(to_number),
        )),
    );
    rt
}

fn function_error(ctx: &Context<'_>, message: String) -> JmespathError {
    JmespathError::from_ctx(
        ctx,
        ErrorReason::Parse(format!("{FUNCTION_ERROR_MARK}{message}")),
    )
}

/// A JSON number as Json.NET types it: `Integer` (any JSON integer) or `Float`.
#[derive(Clone, Copy, Debug)]
enum Num {
    Int(i64),
    /// An integer above `i64::MAX`: Json.NET reads it as an `Integer`, but `Value<long>()`
    /// overflows on it.
    BigInt(u64),
    Float(f64),
}

impl Num {
    fn of(n: &Number) -> Num {
        if let Some(i) = n.as_i64() {
            Num::Int(i)
        } else if let Some(u) = n.as_u64() {
            Num::BigInt(u)
        } else {
            // Without `arbitrary_precision` every other Number is a finite f64.
            Num::Float(n.as_f64().unwrap_or(f64::NAN))
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::BigInt(u) => u as f64,
            Num::Float(f) => f,
        }
    }
}

/// Argument `position` as a number (the signature has already checked the type).
fn number_arg(args: &[Rcvar], position: usize) -> Option<Num> {
    match args.get(position).map(|a| &**a) {
        Some(Variable::Number(n)) => Some(Num::of(n)),
        _ => None,
    }
}

/// Argument `position` as a 64-bit integer, with upstream's wording when it is not one.
fn integer_arg(
    name: &str,
    args: &[Rcvar],
    position: usize,
    ctx: &Context<'_>,
) -> Result<i64, JmespathError> {
    match number_arg(args, position) {
        Some(Num::Int(i)) => Ok(i),
        Some(Num::BigInt(u)) => Err(function_error(
            ctx,
            format!(
                "function {name} argument {position} ({u}) is outside the range of a 64-bit integer"
            ),
        )),
        _ => Err(function_error(
            ctx,
            format!(
                "invalid-type, function {name} expects argument {position} to be one of the following: Integer"
            ),
        )),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Subtract,
    Multiply,
    Divide,
    Pow,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Subtract => "subtract",
            Op::Multiply => "multiply",
            Op::Divide => "divide",
            Op::Pow => "pow",
        }
    }
}

fn arithmetic(op: Op, args: &[Rcvar], ctx: &mut Context<'_>) -> Result<Rcvar, JmespathError> {
    let name = op.name();
    let (Some(a), Some(b)) = (number_arg(args, 0), number_arg(args, 1)) else {
        return Err(function_error(
            ctx,
            format!("invalid-type, function {name} expects two numbers"),
        ));
    };
    let result = if matches!(a, Num::Float(_)) || matches!(b, Num::Float(_)) {
        float_math(op, a.as_f64(), b.as_f64())
    } else {
        let a = integer_arg(name, args, 0, ctx)?;
        let b = integer_arg(name, args, 1, ctx)?;
        integer_math(op, a, b)
    };
    match result {
        Ok(n) => Ok(Rcvar::new(Variable::Number(n))),
        Err(message) => Err(function_error(ctx, format!("function {name}: {message}"))),
    }
}

const OVERFLOW: &str = "arithmetic overflow, the result does not fit in a 64-bit integer";
const DIVIDE_BY_ZERO: &str = "divide by zero";

/// Integer math per the docs: the exact result, an error when it leaves the `i64` range.
fn integer_math(op: Op, a: i64, b: i64) -> Result<Number, String> {
    let int = |r: Option<i64>| r.map(Number::from).ok_or_else(|| OVERFLOW.to_owned());
    match op {
        Op::Add => int(a.checked_add(b)),
        Op::Subtract => int(a.checked_sub(b)),
        Op::Multiply => int(a.checked_mul(b)),
        Op::Divide => integer_divide(a, b),
        Op::Pow => integer_pow(a, b),
    }
}

/// The exact quotient: an integer when `b` divides `a`, else the nearest double.
fn integer_divide(a: i64, b: i64) -> Result<Number, String> {
    if b == 0 {
        return Err(DIVIDE_BY_ZERO.to_owned());
    }
    let (wide_a, wide_b) = (i128::from(a), i128::from(b));
    if wide_a % wide_b == 0 {
        return i64::try_from(wide_a / wide_b)
            .map(Number::from)
            .map_err(|_| OVERFLOW.to_owned());
    }
    const EXACT: i64 = 1 << 53;
    let quotient = if (-EXACT..=EXACT).contains(&a) && (-EXACT..=EXACT).contains(&b) {
        // Both convert exactly, and IEEE division rounds correctly.
        a as f64 / b as f64
    } else {
        (wide_a / wide_b) as f64 + (wide_a % wide_b) as f64 / b as f64
    };
    finite(quotient)
}

/// `a` to the power `b`, exactly: an integer for `b >= 0` (error when out of range); for
/// `b < 0`, `±1` stays an integer, 0 is a division by zero, and anything else is a fraction.
fn integer_pow(a: i64, b: i64) -> Result<Number, String> {
    let parity_one = || Number::from(if b % 2 == 0 { 1 } else { -1 });
    match (a, b) {
        (1, _) => Ok(Number::from(1)),
        (-1, _) => Ok(parity_one()),
        (0, b) if b < 0 => Err(format!("{DIVIDE_BY_ZERO}, zero raised to a negative power")),
        (0, _) => Ok(Number::from(if b == 0 { 1 } else { 0 })),
        (_, b) if b < 0 => finite((a as f64).powf(b as f64)),
        (_, b) => u32::try_from(b)
            .ok()
            .and_then(|e| a.checked_pow(e))
            .map(Number::from)
            .ok_or_else(|| OVERFLOW.to_owned()),
    }
}

/// Double math as upstream, except that a result JSON cannot carry is an error.
fn float_math(op: Op, a: f64, b: f64) -> Result<Number, String> {
    match op {
        Op::Add => finite(a + b),
        Op::Subtract => finite(a - b),
        Op::Multiply => finite(a * b),
        Op::Divide if b == 0.0 => Err(DIVIDE_BY_ZERO.to_owned()),
        Op::Divide => finite(a / b),
        Op::Pow => finite(a.powf(b)),
    }
}

fn finite(x: f64) -> Result<Number, String> {
    Number::from_f64(x).ok_or_else(|| {
        let what = if x.is_nan() {
            "not a number (NaN)"
        } else {
            "infinite"
        };
        format!("the result is {what}, which JSON cannot represent")
    })
}

/// `insertString(original, toInsert, pos)`: zero-based, `pos` in `0..=length` counted in
/// Unicode scalar values (the unit of the crate's `length()`).
fn insert_string(args: &[Rcvar], ctx: &mut Context<'_>) -> Result<Rcvar, JmespathError> {
    const NAME: &str = "insertString";
    let text = |i: usize| args.get(i).and_then(|a| a.as_string());
    let (Some(original), Some(to_insert)) = (text(0), text(1)) else {
        return Err(function_error(
            ctx,
            format!("invalid-type, function {NAME} expects two strings and an integer"),
        ));
    };
    let pos = integer_arg(NAME, args, 2, ctx)?;
    let length = original.chars().count();
    let byte = usize::try_from(pos).ok().and_then(|p| {
        if p == length {
            Some(original.len())
        } else {
            original.char_indices().nth(p).map(|(i, _)| i)
        }
    });
    let Some(byte) = byte else {
        return Err(function_error(
            ctx,
            format!(
                "function {NAME}: position {pos} is out of range, it must be between 0 and the length of the string ({length})"
            ),
        ));
    };
    let mut out = String::with_capacity(original.len() + to_insert.len());
    out.push_str(&original[..byte]);
    out.push_str(to_insert);
    out.push_str(&original[byte..]);
    Ok(Rcvar::new(Variable::String(out)))
}

#[derive(Clone, Copy, Debug)]
enum EpochUnit {
    Seconds,
    Milliseconds,
}

/// `DateTimeOffset.FromUnixTimeSeconds/Milliseconds` ranges: 0001-01-01 to 9999-12-31.
const MIN_UNIX_SECONDS: i64 = -62_135_596_800;
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// `fromUnixTimestamp(seconds)` / `fromUnixTimestampMs(ms)`: integer only; gives the UTC
/// instant in .NET's round-trip form `yyyy-MM-ddTHH:mm:ss.fffffffZ`.
fn from_unix(
    unit: EpochUnit,
    args: &[Rcvar],
    ctx: &mut Context<'_>,
) -> Result<Rcvar, JmespathError> {
    let name = match unit {
        EpochUnit::Seconds => "fromUnixTimestamp",
        EpochUnit::Milliseconds => "fromUnixTimestampMs",
    };
    let value = integer_arg(name, args, 0, ctx)?;
    let (min, max) = match unit {
        EpochUnit::Seconds => (MIN_UNIX_SECONDS, MAX_UNIX_SECONDS),
        EpochUnit::Milliseconds => (MIN_UNIX_SECONDS * 1000, MAX_UNIX_SECONDS * 1000 + 999),
    };
    let instant = if (min..=max).contains(&value) {
        match unit {
            EpochUnit::Seconds => Timestamp::from_unix(value, 0),
            EpochUnit::Milliseconds => Timestamp::from_unix_millis(value),
        }
    } else {
        None
    };
    match instant {
        Some(t) => Ok(Rcvar::new(Variable::String(t.format_o()))),
        None => Err(function_error(
            ctx,
            format!("function {name}: {value} is out of range, it must be between {min} and {max}"),
        )),
    }
}

/// JmesPath.Net's `to_number`: numbers pass; a string is `Int64.TryParse`d, else
/// `double.TryParse`d (invariant culture, `NumberStyles.Float`); anything else is null, and
/// so is a string whose value JSON cannot carry (infinity, NaN).
fn to_number(args: &[Rcvar], _ctx: &mut Context<'_>) -> Result<Rcvar, JmespathError> {
    let result = match args.first() {
        Some(arg) if arg.is_number() => return Ok(arg.clone()),
        Some(arg) => arg.as_string().and_then(|s| parse_dotnet_number(s)),
        None => None,
    };
    Ok(Rcvar::new(result.map_or(Variable::Null, Variable::Number)))
}

/// Whitespace that .NET's number parsing skips (U+0009..U+000D and U+0020).
fn is_dotnet_number_space(c: char) -> bool {
    matches!(c, '\u{9}'..='\u{d}' | ' ')
}

fn parse_dotnet_number(s: &str) -> Option<Number> {
    let t = s.trim_matches(is_dotnet_number_space);
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    let bytes = unsigned.as_bytes();
    if !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit) {
        if let Ok(i) = t.parse::<i64>() {
            return Some(Number::from(i));
        }
    }
    // [digits][.digits] with at least one digit, then an optional exponent.
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((w, f)) => (w, f),
        None => (mantissa, ""),
    };
    let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok =
        digits(whole) && digits(fraction) && !(whole.is_empty() && fraction.is_empty());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    if !(mantissa_ok && exponent_ok) {
        return None;
    }
    t.parse::<f64>().ok().and_then(Number::from_f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn one(expr: &str, data: &Value) -> Option<Value> {
        JmesExpr::compile(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .select_one(data)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    fn eval(expr: &str) -> Value {
        one(expr, &json!({})).unwrap_or(Value::Null)
    }

    fn eval_err(expr: &str, data: &Value) -> String {
        match JmesExpr::compile(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .select_one(data)
        {
            Err(JmesError::Eval { message }) => message,
            other => panic!("{expr}: expected an evaluation error, got {other:?}"),
        }
    }

    fn compile_err(expr: &str) -> String {
        match JmesExpr::compile(expr) {
            Err(JmesError::Compile { message }) => message,
            other => panic!("{expr}: expected a compile error, got {other:?}"),
        }
    }

    fn assert_int(v: &Value, expected: i64) {
        assert!(v.is_i64(), "{v} should be an integer");
        assert_eq!(v.as_i64(), Some(expected));
    }

    fn assert_float(v: &Value, expected: f64) {
        assert!(v.is_f64(), "{v} should be a float");
        let got = v.as_f64().unwrap();
        assert!(
            (got - expected).abs() <= 1e-12 * expected.abs().max(1.0),
            "{got} != {expected}"
        );
    }

    #[test]
    fn every_function_in_the_arity_table_is_registered() {
        for (name, ..) in FUNCTION_ARITY {
            assert!(
                RUNTIME.get_function(name).is_some(),
                "{name} is not registered"
            );
        }
        assert!(RUNTIME.get_function("appendString").is_none());
    }

    #[test]
    fn expr_is_send_sync_and_cheap_to_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<JmesExpr>();
        let a = JmesExpr::compile("a.b").unwrap();
        let b = a.clone();
        assert!(Arc::ptr_eq(&a.inner, &b.inner));
        assert_eq!(b.source(), "a.b");
        let handle = std::thread::spawn(move || b.select_one(&json!({"a": {"b": 1}})));
        assert_eq!(handle.join().unwrap(), Ok(Some(json!(1))));
    }

    // ---- add / subtract / multiply -------------------------------------------------------

    #[test]
    fn add_follows_the_docs_examples() {
        assert_int(&eval("add(`10`, `10`)"), 20);
        let data = json!({"left": 40, "right": 50});
        assert_int(&one("add(left, right)", &data).unwrap(), 90);
        assert_int(
            &one("add(left, right)", &json!({"left": 0, "right": 50})).unwrap(),
            50,
        );
    }

    #[test]
    fn add_uses_double_math_when_either_side_is_a_float() {
        assert_float(&eval("add(`1.5`, `2.25`)"), 3.75);
        assert_float(&eval("add(`1`, `0.5`)"), 1.5);
        // A float that happens to be whole keeps the float kind.
        assert_float(&eval("add(`2.0`, `3`)"), 5.0);
        assert_eq!(eval("add(`2.0`, `3`)").to_string(), "5.0");
    }

    #[test]
    fn add_subtract_multiply_overflow_is_an_error() {
        for expr in [
            "add(`9223372036854775807`, `1`)",
            "subtract(`-9223372036854775808`, `1`)",
            "multiply(`4611686018427387904`, `2`)",
            "multiply(`-9223372036854775808`, `-1`)",
        ] {
            let message = eval_err(expr, &json!({}));
            assert!(message.contains("overflow"), "{expr}: {message}");
        }
        assert_int(&eval("add(`9223372036854775806`, `1`)"), i64::MAX);
        assert_int(&eval("multiply(`-4611686018427387904`, `2`)"), i64::MIN);
    }

    #[test]
    fn integers_above_i64_are_out_of_range_but_fine_in_float_math() {
        let message = eval_err("add(`9223372036854775808`, `0`)", &json!({}));
        assert!(
            message.contains("outside the range of a 64-bit integer"),
            "{message}"
        );
        assert_float(
            &eval("add(`9223372036854775808`, `0.5`)"),
            9.223372036854776e18,
        );
    }

    #[test]
    fn float_overflow_to_infinity_is_an_error() {
        let message = eval_err("add(`1e308`, `1e308`)", &json!({}));
        assert!(message.contains("infinite"), "{message}");
        assert!(eval_err("multiply(`-1e308`, `10`)", &json!({})).contains("infinite"));
    }

    #[test]
    fn subtract_follows_the_docs_examples() {
        assert_int(&eval("subtract(`10`, `10`)"), 0);
        assert_int(
            &one("subtract(left, right)", &json!({"left": 40, "right": 50})).unwrap(),
            -10,
        );
        assert_int(
            &one("subtract(left, right)", &json!({"left": 0, "right": 50})).unwrap(),
            -50,
        );
        assert_float(&eval("subtract(`1`, `0.25`)"), 0.75);
    }

    #[test]
    fn multiply_follows_the_docs_examples_and_keeps_integers() {
        assert_int(&eval("multiply(`10`, `10`)"), 100);
        assert_int(
            &one("multiply(left, right)", &json!({"left": 40, "right": 50})).unwrap(),
            2000,
        );
        assert_int(
            &one("multiply(left, right)", &json!({"left": 0, "right": 50})).unwrap(),
            0,
        );
        let six = eval("multiply(`2`, `3`)");
        assert_int(&six, 6);
        assert_eq!(six.to_string(), "6");
        assert_float(&eval("multiply(`2.5`, `2`)"), 5.0);
    }

    #[test]
    fn arithmetic_rejects_non_numbers() {
        for expr in [
            "add('a', `1`)",
            "subtract(`1`, `true`)",
            "multiply(`null`, `1`)",
            "divide(`[1]`, `1`)",
            "pow(`1`, `{}`)",
        ] {
            let message = eval_err(expr, &json!({}));
            assert!(message.contains("expects type number"), "{expr}: {message}");
        }
        // A missing field is null, which is not a number either.
        assert!(eval_err("add(missing, `1`)", &json!({})).contains("expects type number"));
    }

    // ---- divide ----------------------------------------------------------------------------

    #[test]
    fn divide_follows_the_docs_examples() {
        assert_int(&eval("divide(`10`, `10`)"), 1);
        // Upstream's code truncates to 0 here; the docs (and we) say 0.8.
        assert_float(
            &one("divide(left, right)", &json!({"left": 40, "right": 50})).unwrap(),
            0.8,
        );
        assert_int(
            &one("divide(left, right)", &json!({"left": 0, "right": 50})).unwrap(),
            0,
        );
        let message = eval_err("divide(left, right)", &json!({"left": 50, "right": 0}));
        assert!(message.contains("divide by zero"), "{message}");
    }

    #[test]
    fn divide_gives_an_integer_only_when_exact() {
        assert_int(&eval("divide(`6`, `-3`)"), -2);
        assert_float(&eval("divide(`-7`, `2`)"), -3.5);
        assert_float(&eval("divide(`1`, `3`)"), 1.0 / 3.0);
        assert_float(&eval("divide(`7.5`, `2.5`)"), 3.0);
        assert_float(
            &eval("divide(`9007199254740993`, `2`)"),
            4_503_599_627_370_496.5,
        );
        assert!(eval_err("divide(`-9223372036854775808`, `-1`)", &json!({})).contains("overflow"));
    }

    #[test]
    fn divide_by_any_zero_is_an_error() {
        for expr in [
            "divide(`1`, `0`)",
            "divide(`1.0`, `0`)",
            "divide(`1`, `0.0`)",
            "divide(`0.0`, `0.0`)",
            "divide(`-1.5`, `-0.0`)",
        ] {
            let message = eval_err(expr, &json!({}));
            assert!(message.contains("divide by zero"), "{expr}: {message}");
        }
        assert!(eval_err("divide(`1e308`, `1e-308`)", &json!({})).contains("infinite"));
    }

    // ---- pow -------------------------------------------------------------------------------

    #[test]
    fn pow_follows_the_docs_examples() {
        assert_int(&eval("pow(`10`, `10`)"), 10_000_000_000);
        let message = eval_err("pow(left, right)", &json!({"left": 40, "right": 50}));
        assert!(message.contains("overflow"), "{message}");
        assert_int(
            &one("pow(left, right)", &json!({"left": 0, "right": 50})).unwrap(),
            0,
        );
        assert_float(
            &one("pow(left, right)", &json!({"left": 100, "right": 0.5})).unwrap(),
            10.0,
        );
    }

    #[test]
    fn pow_integer_edges() {
        assert_int(&eval("pow(`0`, `0`)"), 1);
        assert_int(&eval("pow(`-2`, `63`)"), i64::MIN);
        assert!(eval_err("pow(`2`, `63`)", &json!({})).contains("overflow"));
        // Exact, where Math.Pow would lose digits: 3^39 = 4052555153018976267.
        assert_int(&eval("pow(`3`, `39`)"), 4_052_555_153_018_976_267);
        assert_int(&eval("pow(`1`, `10000000000`)"), 1);
        assert_int(&eval("pow(`-1`, `10000000001`)"), -1);
        assert!(eval_err("pow(`2`, `10000000000`)", &json!({})).contains("overflow"));
        assert_float(&eval("pow(`2`, `-1`)"), 0.5);
        assert_int(&eval("pow(`-1`, `-3`)"), -1);
        assert!(eval_err("pow(`0`, `-1`)", &json!({})).contains("divide by zero"));
    }

    #[test]
    fn pow_float_results_must_be_finite() {
        assert_float(&eval("pow(`2.0`, `3`)"), 8.0);
        assert!(eval_err("pow(`-8`, `0.5`)", &json!({})).contains("NaN"));
        assert!(eval_err("pow(`0.0`, `-1`)", &json!({})).contains("infinite"));
        assert!(eval_err("pow(`10.0`, `400`)", &json!({})).contains("infinite"));
    }

    // ---- insertString ----------------------------------------------------------------------

    #[test]
    fn insert_string_follows_the_docs_examples() {
        let run = |data: Value, expr: &str| one(expr, &data);
        let e = "insertString(original, toInsert, pos)";
        assert_eq!(
            run(json!({"original": "mple", "toInsert": "sa", "pos": 0}), e),
            Some(json!("sample"))
        );
        assert_eq!(
            run(json!({"original": "suess", "toInsert": "cc", "pos": 2}), e),
            Some(json!("success"))
        );
        assert_eq!(
            run(
                json!({"original": "myString", "toInsert": "!!", "pos": 8}),
                e
            ),
            Some(json!("myString!!"))
        );
        assert_eq!(
            run(
                json!({"original": "myString", "toInsert": "!!"}),
                "insertString(original, toInsert, length(original))"
            ),
            Some(json!("myString!!"))
        );
        for pos in [100, -1, 9] {
            let data = json!({"original": "myString", "toInsert": "!!", "pos": pos});
            let message = eval_err(e, &data);
            assert!(message.contains("out of range"), "{pos}: {message}");
        }
        assert_eq!(
            eval("insertString('123', 'patient', `0`)"),
            json!("patient123")
        );
    }

    #[test]
    fn insert_string_counts_unicode_scalar_values() {
        assert_eq!(eval("insertString('héllo', 'X', `2`)"), json!("héXllo"));
        assert_eq!(eval("insertString('a😀b', 'X', `2`)"), json!("a😀Xb"));
        assert_eq!(
            eval("insertString('a😀b', 'X', length('a😀b'))"),
            json!("a😀bX")
        );
        assert!(eval_err("insertString('a😀b', 'X', `4`)", &json!({})).contains("out of range"));
    }

    #[test]
    fn insert_string_rejects_bad_types() {
        let message = eval_err("insertString('abc', 'X', `1.0`)", &json!({}));
        assert!(
            message.contains("argument 2") && message.contains("Integer"),
            "{message}"
        );
        assert!(eval_err("insertString(`1`, 'X', `1`)", &json!({})).contains("expects type string"));
        assert!(
            eval_err("insertString('a', `[]`, `1`)", &json!({})).contains("expects type string")
        );
        assert!(eval_err("insertString('a', 'b', '1')", &json!({})).contains("expects type number"));
        assert!(
            eval_err("insertString('a', 'b', `18446744073709551615`)", &json!({}))
                .contains("64-bit")
        );
    }

    // ---- fromUnixTimestamp / fromUnixTimestampMs -------------------------------------------

    #[test]
    fn from_unix_timestamp_gives_the_dotnet_round_trip_form() {
        let at = |expr: &str, unix: i64| one(expr, &json!({ "unix": unix })).unwrap();
        assert_eq!(
            at("fromUnixTimestamp(unix)", 1_625_677_200),
            json!("2021-07-07T17:00:00.0000000Z")
        );
        assert_eq!(
            at("fromUnixTimestamp(unix)", 0),
            json!("1970-01-01T00:00:00.0000000Z")
        );
        assert_eq!(
            at("fromUnixTimestamp(unix)", -1),
            json!("1969-12-31T23:59:59.0000000Z")
        );
        assert_eq!(
            at("fromUnixTimestampMs(unix)", 1_626_799_080_000),
            json!("2021-07-20T16:38:00.0000000Z")
        );
        assert_eq!(
            at("fromUnixTimestampMs(unix)", 0),
            json!("1970-01-01T00:00:00.0000000Z")
        );
        assert_eq!(
            at("fromUnixTimestampMs(unix)", 1_626_799_080_123),
            json!("2021-07-20T16:38:00.1230000Z")
        );
        assert_eq!(
            at("fromUnixTimestampMs(unix)", -1),
            json!("1969-12-31T23:59:59.9990000Z")
        );
    }

    #[test]
    fn from_unix_timestamp_output_parses_back_to_the_same_instant() {
        for secs in [0i64, 1_625_677_200, -86_400, 4_102_444_800] {
            let s = one("fromUnixTimestamp(@)", &json!(secs)).unwrap();
            let parsed = Timestamp::parse_rfc3339(s.as_str().unwrap()).unwrap();
            assert_eq!(parsed, Timestamp::from_unix(secs, 0).unwrap());
        }
        let s = one("fromUnixTimestampMs(@)", &json!(1_626_799_080_123i64)).unwrap();
        let parsed = Timestamp::parse_rfc3339(s.as_str().unwrap()).unwrap();
        assert_eq!(
            parsed,
            Timestamp::from_unix_millis(1_626_799_080_123).unwrap()
        );
    }

    #[test]
    fn from_unix_timestamp_range_is_dotnet_datetime() {
        assert_eq!(
            eval("fromUnixTimestamp(`253402300799`)"),
            json!("9999-12-31T23:59:59.0000000Z")
        );
        assert_eq!(
            eval("fromUnixTimestamp(`-62135596800`)"),
            json!("0001-01-01T00:00:00.0000000Z")
        );
        assert_eq!(
            eval("fromUnixTimestampMs(`253402300799999`)"),
            json!("9999-12-31T23:59:59.9990000Z")
        );
        for expr in [
            "fromUnixTimestamp(`253402300800`)",
            "fromUnixTimestamp(`-62135596801`)",
            "fromUnixTimestampMs(`253402300800000`)",
            "fromUnixTimestampMs(`-62135596800001`)",
            "fromUnixTimestamp(`-9223372036854775808`)",
        ] {
            assert!(
                eval_err(expr, &json!({})).contains("out of range"),
                "{expr}"
            );
        }
    }

    #[test]
    fn from_unix_timestamp_rejects_floats_and_non_numbers() {
        for expr in [
            "fromUnixTimestamp(`1.0`)",
            "fromUnixTimestampMs(`1625677200.5`)",
        ] {
            let message = eval_err(expr, &json!({}));
            assert!(
                message.contains("argument 0") && message.contains("Integer"),
                "{expr}: {message}"
            );
        }
        assert!(
            eval_err("fromUnixTimestamp('1625677200')", &json!({})).contains("expects type number")
        );
    }

    // ---- to_number -------------------------------------------------------------------------

    #[test]
    fn to_number_parses_like_jmespath_net() {
        let n = |s: &str| one("to_number(@)", &json!(s));
        assert_int(&n("78").unwrap(), 78);
        assert_int(&n(" 42 ").unwrap(), 42);
        assert_int(&n("+7").unwrap(), 7);
        assert_int(&n("007").unwrap(), 7);
        assert_int(&n("-0").unwrap(), 0);
        assert_float(&n("1.5").unwrap(), 1.5);
        assert_float(&n("1e3").unwrap(), 1000.0);
        assert_float(&n(".5").unwrap(), 0.5);
        assert_float(&n("-2.").unwrap(), -2.0);
        assert_float(&n("99999999999999999999").unwrap(), 1e20);
        for bad in [
            "abc", "\"5\"", "[1]", "true", "", " ", "1,000", "0x10", "1e", "e5", ".", "1e400",
            "Infinity", "NaN", "1.2.3",
        ] {
            assert_eq!(n(bad), None, "to_number({bad:?})");
        }
        assert_int(&one("to_number(@)", &json!(5)).unwrap(), 5);
        assert_eq!(one("to_number(@)", &json!(true)), None);
        assert_eq!(one("to_number(@)", &json!({"a": 1})), None);
    }

    // ---- compile-time checks ---------------------------------------------------------------

    #[test]
    fn unknown_functions_and_wrong_arity_fail_at_compile_time() {
        // Upstream's JmesPathExpressionEvaluatorTests: sort takes one argument.
        let message = compile_err("sort(itemOne, itemTwo)");
        assert!(message.starts_with("the following JmesPath expression could not be parsed: sort(itemOne, itemTwo). cause: "), "{message}");
        assert!(
            message.contains(
                "invalid-arity, the function sort expects 1 argument but 2 were supplied"
            ),
            "{message}"
        );
        assert!(compile_err("add(`1`)").contains("expects 2 arguments but 1 were supplied"));
        assert!(compile_err("insertString('a', 'b')").contains("expects 3 arguments"));
        assert!(compile_err("a[?length(@) > `1`].fromUnixTimestamp()")
            .contains("but none were supplied"));
        assert!(
            compile_err("merge()").contains("expects 1 argument or more but none were supplied")
        );
        assert!(JmesExpr::compile("merge(a, b, c)").is_ok());
        assert!(compile_err("appendString('a', 'b')")
            .contains("unknown-function, no function named appendString"));
        assert!(compile_err("a | sort_by(@, &nope(x))").contains("no function named nope"));
    }

    #[test]
    fn syntax_errors_and_limits() {
        assert!(compile_err("").contains("empty"));
        assert!(compile_err("  \t").contains("empty"));
        assert!(compile_err("foo[")
            .starts_with("the following JmesPath expression could not be parsed: foo["));
        assert!(compile_err("a = b").contains("could not be parsed"));
        assert!(compile_err(&"a".repeat(MAX_EXPRESSION_LEN + 1)).contains("longer than"));
        assert!(JmesExpr::compile(&"a".repeat(MAX_EXPRESSION_LEN)).is_ok());
        assert!(compile_err(&format!("{}a", "!".repeat(MAX_NESTING + 1))).contains("nests deeper"));
        assert!(compile_err(&format!(
            "{}a{}",
            "(".repeat(MAX_NESTING + 1),
            ")".repeat(MAX_NESTING + 1)
        ))
        .contains("nests deeper"));
    }

    #[test]
    fn the_deepest_accepted_expressions_run_on_a_small_stack() {
        let n = MAX_NESTING;
        let cases = [
            format!("{}a", "!".repeat(n)),
            format!("{}a", "&".repeat(n)),
            format!("{}a{}", "(".repeat(n), ")".repeat(n)),
            format!("{}a{}", "[".repeat(n / 2), "]".repeat(n / 2)),
            format!("a{}", "[*].b".repeat(n - 2)),
            format!("{}a", "*.".repeat(n)),
            format!("{}@{}", "abs(".repeat(n), ")".repeat(n)),
            format!("{}a{}", "{a:".repeat(n), "}".repeat(n)),
            format!("{}a{}", "[?".repeat(n / 2), "]".repeat(n / 2)),
        ];
        for expr in cases {
            assert!(scan(&expr).nesting <= MAX_NESTING, "{expr}");
            let e = std::thread::Builder::new()
                .stack_size(1 << 20)
                .spawn(move || {
                    if let Ok(x) = JmesExpr::compile(&expr) {
                        let _count = x
                            .select_all(&json!({"a": [1, {"a": 2}], "b": {"a": 3}}))
                            .map_or(0, |v| v.len());
                    }
                })
                .unwrap()
                .join();
            assert!(e.is_ok());
        }
    }

    #[test]
    fn long_flat_expressions_are_not_mistaken_for_deep_ones() {
        let path = vec!["a"; 200].join(".");
        assert!(JmesExpr::compile(&path).is_ok());
        let hash = (0..100)
            .map(|i| format!("k{i}: x[*].y"))
            .collect::<Vec<_>>()
            .join(", ");
        assert!(JmesExpr::compile(&format!("{{{hash}}}")).is_ok());
        let ors = vec!["!a"; 150].join(" || ");
        assert!(JmesExpr::compile(&ors).is_ok());
    }

    // ---- legacy literals -------------------------------------------------------------------

    fn parsed(expr: &str) -> String {
        JmesExpr::compile(expr).unwrap().inner.parsed.clone()
    }

    #[test]
    fn medtech_doc_example_with_a_legacy_literal() {
        let expr = "[Body][?contains(keys(@), `heartRate`)] | @[0]";
        let data = json!({"Body": {"heartRate": 78, "deviceId": "d1"}, "Properties": {}});
        assert_eq!(
            one(expr, &data),
            Some(json!({"deviceId": "d1", "heartRate": 78}))
        );
        assert_eq!(one(expr, &json!({"Body": {"steps": 1}})), None);
        assert_eq!(
            parsed(expr),
            "[Body][?contains(keys(@), `\"heartRate\"`)] | @[0]"
        );
    }

    #[test]
    fn legacy_literal_is_the_raw_content() {
        assert_eq!(eval("`heartRate`"), json!("heartRate"));
        assert_eq!(eval("`foo bar`"), json!("foo bar"));
        assert_eq!(eval("` foo`"), json!(" foo"));
        assert_eq!(eval("``"), json!(""));
        assert_eq!(eval(r"`it\`s`"), json!("it`s"));
        assert_eq!(eval(r#"`a\"b`"#), json!(r#"a\"b"#));
        assert_eq!(eval(r"`a\\`"), json!(r"a\\"));
        assert_eq!(eval(r"`\``"), json!("`"));
        assert_eq!(eval(r"`'q'`"), json!("'q'"));
        assert_eq!(eval(r"`tab\t`"), json!(r"tab\t"));
    }

    #[test]
    fn valid_json_literals_are_left_alone() {
        for expr in [
            "`0.0254`",
            "`\"x\"`",
            "`[1, 2]`",
            "`{\"a\": `",
            "`true`",
            "`null`",
            "` 5 `",
        ] {
            if expr == "`{\"a\": `" {
                // Not JSON: becomes a string.
                assert_eq!(eval(expr), json!("{\"a\": "));
                continue;
            }
            assert_eq!(parsed(expr), expr);
        }
        let v = eval("`0.0254`");
        assert_float(&v, 0.0254);
        assert_eq!(eval("`\"x\"`"), json!("x"));
        assert_eq!(eval("`[1, 2]`"), json!([1, 2]));
        assert_eq!(eval("`true`"), json!(true));
        assert_eq!(one("`null`", &json!({})), None);
        assert_int(&eval("` 5 `"), 5);
        assert_eq!(eval(r#"`"it\`s"`"#), json!("it`s"));
    }

    #[test]
    fn backticks_inside_quoted_strings_are_not_literals() {
        let expr = "['a`b', \"we`ird\", `x`, 'it\\'s `y`']";
        let data = json!({"we`ird": 1});
        assert_eq!(one(expr, &data), Some(json!(["a`b", 1, "x", "it's `y`"])));
        assert_eq!(parsed(expr), "['a`b', \"we`ird\", `\"x\"`, 'it\\'s `y`']");
        // Escaped quotes do not end the string early.
        let expr = r#"["q\"`z`", `w`]"#;
        assert_eq!(one(expr, &json!({"q\"`z`": 2})), Some(json!([2, "w"])));
    }

    #[test]
    fn unterminated_literal_is_a_compile_error() {
        assert!(compile_err("a == `abc").contains("could not be parsed"));
        assert!(compile_err("'abc").contains("could not be parsed"));
    }

    // ---- selection semantics (JmesPathExpressionEvaluator) ---------------------------------

    #[test]
    fn upstream_evaluator_tests() {
        // When_SelectSingleToken_And_SingleTokenExtracted_Succeeds: a plain array is one token.
        let data = json!({"testProperty": ["a", "b"]});
        let e = JmesExpr::compile("testProperty").unwrap();
        assert_eq!(e.select_one(&data), Ok(Some(json!(["a", "b"]))));
        // When_SelectMultipleTokens_And_SingleTokenExtracted_Succeeds
        assert_eq!(e.select_all(&data), Ok(vec![json!(["a", "b"])]));
        // ..._NoTokensAreExtracted_Succeeds
        assert_eq!(e.select_one(&json!({})), Ok(None));
        assert_eq!(e.select_all(&json!({})), Ok(vec![]));
        // When_SelectSingleToken_And_MultipleTokensAreExtracted_ExceptionIsThrown
        let data = json!({"property": [{"name": "value1"}, {"name": "value2"}]});
        let p = JmesExpr::compile("property[].name").unwrap();
        match p.select_one(&data) {
            Err(JmesError::Eval { message }) => {
                assert_eq!(
                    message,
                    "multiple tokens were returned using expression property[].name"
                )
            }
            other => panic!("{other:?}"),
        }
        // When_SelectMultipleTokens_And_MultipleTokensAreExtracted_Succeeds
        assert_eq!(
            p.select_all(&data),
            Ok(vec![json!("value1"), json!("value2")])
        );
    }

    #[test]
    fn single_select_keeps_small_projections_as_arrays() {
        let data = json!({"a": [{"x": 1}, {"y": 2}]});
        assert_eq!(one("a[?x]", &data), Some(json!([{"x": 1}])));
        assert_eq!(one("a[?z]", &data), Some(json!([])));
        assert_eq!(one("a[*].x", &data), Some(json!([1])));
        // A projection over something that is not an array is null.
        assert_eq!(one("b[*]", &data), None);
        assert_eq!(one("a.*", &data), None);
    }

    #[test]
    fn what_counts_as_a_projection() {
        let data = json!({"a": [1, 2, null, 3], "o": {"k1": "v1", "k2": "v2"}, "n": [[1, 2], [3]]});
        let all = |expr: &str| JmesExpr::compile(expr).unwrap().select_all(&data).unwrap();
        assert_eq!(all("a[*]"), vec![json!(1), json!(2), json!(3)]);
        assert_eq!(all("a[]"), vec![json!(1), json!(2), json!(3)]);
        assert_eq!(all("a[0:2]"), vec![json!(1), json!(2)]);
        assert_eq!(all("a[?@ > `1`]"), vec![json!(2), json!(3)]);
        assert_eq!(all("o.*"), vec![json!("v1"), json!("v2")]);
        assert_eq!(all("n[]"), vec![json!(1), json!(2), json!(3)]);
        assert_eq!(all("n[*][0]"), vec![json!(1), json!(3)]);
        // A pipe stops the projection: the array is one token.
        assert_eq!(all("a[*] | @"), vec![json!([1, 2, 3])]);
        assert_eq!(all("a[*] | [0]"), vec![json!(1)]);
        // A pipe into a projection is a projection.
        assert_eq!(all("@ | a[*]"), vec![json!(1), json!(2), json!(3)]);
        // Functions, multi-selects and plain arrays are not projections.
        assert_eq!(all("sort(a[?@ != null])"), vec![json!([1, 2, 3])]);
        assert_eq!(all("[a[0], a[1]]"), vec![json!([1, 2])]);
        assert_eq!(all("a"), vec![json!([1, 2, null, 3])]);
        // `||` and `&&` pass on whichever side they return.
        assert_eq!(
            all("missing[*] || a[*]"),
            vec![json!(1), json!(2), json!(3)]
        );
        assert_eq!(all("a[*] || o"), vec![json!(1), json!(2), json!(3)]);
        assert_eq!(
            all("a[?@ == `9`] || o"),
            vec![json!({"k1": "v1", "k2": "v2"})]
        );
        assert_eq!(all("o && a[*]"), vec![json!(1), json!(2), json!(3)]);
        assert_eq!(all("missing && a[*]"), Vec::<Value>::new());
    }

    #[test]
    fn to_array_filter_matches_a_flat_payload() {
        let e = JmesExpr::compile("to_array(@)[?heartrate]").unwrap();
        let flat = json!({"heartrate": "60", "device": "abc"});
        assert_eq!(e.select_all(&flat), Ok(vec![flat.clone()]));
        assert_eq!(
            e.select_all(&json!([{"heartrate": 1}, {"steps": 2}, {"heartrate": 3}]))
                .unwrap()
                .len(),
            2
        );
        assert_eq!(e.select_all(&json!({"steps": 2})), Ok(vec![]));
    }

    #[test]
    fn results_that_are_not_json_are_errors() {
        let message = eval_err("&a", &json!({}));
        assert!(message.contains("expression reference"), "{message}");
        assert!(eval_err("[&a]", &json!({})).contains("expression reference"));
    }

    #[test]
    fn numbers_keep_their_kind_through_evaluation() {
        let data = json!({"i": 7, "f": 7.0, "u": u64::MAX, "neg": -3});
        assert_int(&one("i", &data).unwrap(), 7);
        assert_float(&one("f", &data).unwrap(), 7.0);
        assert_eq!(one("u", &data), Some(json!(u64::MAX)));
        assert_int(&one("neg", &data).unwrap(), -3);
    }

    #[test]
    fn object_keys_come_back_sorted() {
        // Known deviation from Json.NET (document order): the crate stores objects in a BTreeMap.
        let v = one("@", &json!({"b": 1, "a": 2})).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(
            one("keys(@)", &json!({"b": 1, "a": 2})),
            Some(json!(["a", "b"]))
        );
    }

    #[test]
    fn huge_slice_steps_do_not_overflow() {
        let data = json!((0..10).collect::<Vec<_>>());
        assert_eq!(one("[5::2147483647]", &data), Some(json!([5])));
        assert_eq!(one("[0::2147483647]", &data), Some(json!([0])));
        assert_eq!(one("[::-2147483647]", &data), Some(json!([9])));
        assert!(eval_err("[::0]", &data).contains("Invalid slice"));
    }

    // ---- conformance templates -------------------------------------------------------------

    /// `$IOMT_CONFORMANCE_DIR`, else `shared/conformance/iomt-fhir` in the nearest ancestor of
    /// the crate that has it (`../../shared` next to a checkout, `/work/shared` from a worktree).
    fn conformance_dir() -> std::path::PathBuf {
        if let Some(dir) = std::env::var_os("IOMT_CONFORMANCE_DIR") {
            return dir.into();
        }
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|a| a.join("shared/conformance/iomt-fhir"))
            .find(|d| d.is_dir())
            .expect(
                "shared/conformance/iomt-fhir not found above the crate; set IOMT_CONFORMANCE_DIR",
            )
    }

    fn read_json(name: &str) -> Value {
        let path = conformance_dir().join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(text.trim_start_matches('\u{feff}')).unwrap()
    }

    /// Every JmesPath expression of the CalculatedContent templates in a device mapping.
    fn jmespath_expressions(mapping: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for entry in mapping["template"].as_array().unwrap() {
            let t = &entry["template"];
            let default = t["defaultExpressionLanguage"]
                .as_str()
                .unwrap_or("JsonPath");
            let mut fields: Vec<&Value> = t
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.ends_with("Expression"))
                .map(|(_, v)| v)
                .collect();
            for value in t["values"].as_array().into_iter().flatten() {
                fields.push(&value["valueExpression"]);
            }
            for field in fields {
                let (text, language) = match field {
                    Value::String(s) => (s.as_str(), default),
                    Value::Object(o) => (
                        o["value"].as_str().unwrap(),
                        o.get("language").and_then(Value::as_str).unwrap_or(default),
                    ),
                    _ => continue,
                };
                if language.eq_ignore_ascii_case("JmesPath") {
                    out.push(text.to_owned());
                }
            }
        }
        out
    }

    #[test]
    fn conformance_jmespath_expressions_compile() {
        let hr = jmespath_expressions(&read_json("device-jmespath-hr-steps.json"));
        assert_eq!(hr.len(), 8, "{hr:?}");
        let multiply =
            jmespath_expressions(&read_json("doc-transform-jmespath-multiply.device.json"));
        assert_eq!(
            multiply,
            ["multiply(to_number(matchedToken.height), `0.0254`)"]
        );
        for expr in hr.iter().chain(&multiply) {
            JmesExpr::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        }
    }

    #[test]
    fn conformance_height_transform() {
        let v = one(
            "multiply(to_number(height), `0.0254`)",
            &json!({"height": "78"}),
        )
        .unwrap();
        assert!((v.as_f64().unwrap() - 1.9812).abs() < 1e-9, "{v}");
        let msg = read_json("doc-transform-jmespath-multiply.msg.json");
        let mut root = msg.clone();
        root["matchedToken"] = msg["Body"][0].clone();
        let v = one("multiply(to_number(matchedToken.height), `0.0254`)", &root).unwrap();
        assert!((v.as_f64().unwrap() - 1.9812).abs() < 1e-4, "{v}");
    }

    /// The `jmespath-flat-*` cases of cases.json, evaluated as CalculatedContent does it: the
    /// type match on the message, then each expression on the message plus `matchedToken`.
    #[test]
    fn conformance_flat_hr_and_steps_cases() {
        let mapping = read_json("device-jmespath-hr-steps.json");
        let cases = read_json("cases.json");
        let mut seen = 0;
        let mut visit_cases = vec![&cases];
        while let Some(node) = visit_cases.pop() {
            match node {
                Value::Array(items) => visit_cases.extend(items),
                Value::Object(o) => {
                    if o.get("device_mapping").and_then(Value::as_str)
                        == Some("device-jmespath-hr-steps.json")
                    {
                        seen += 1;
                        let message = &o["message_inline"];
                        let mut got = Vec::new();
                        for entry in mapping["template"].as_array().unwrap() {
                            let t = &entry["template"];
                            let matcher =
                                JmesExpr::compile(t["typeMatchExpression"].as_str().unwrap())
                                    .unwrap();
                            for token in matcher.select_all(message).unwrap() {
                                let mut root = message.clone();
                                root["matchedToken"] = token;
                                let pick = |field: &Value| {
                                    JmesExpr::compile(field.as_str().unwrap())
                                        .unwrap()
                                        .select_one(&root)
                                        .unwrap()
                                };
                                let value = &t["values"][0];
                                got.push(json!({
                                    "type": t["typeName"],
                                    "deviceId": pick(&t["deviceIdExpression"]),
                                    "occurrenceTimeUtc": pick(&t["timestampExpression"]),
                                    "properties": [{"name": value["valueName"], "value": pick(&value["valueExpression"])}],
                                }));
                            }
                        }
                        assert_eq!(Value::Array(got), o["expect"], "{}", o["id"]);
                    } else {
                        visit_cases.extend(o.values());
                    }
                }
                _ => {}
            }
        }
        assert_eq!(seen, 4);
    }

    // ---- properties ------------------------------------------------------------------------

    fn expected_int(result: Option<i128>) -> Option<i64> {
        result.and_then(|r| i64::try_from(r).ok())
    }

    fn run2(name: &str, a: i64, b: i64) -> Result<Option<Value>, JmesError> {
        JmesExpr::compile(&format!("{name}(a, b)"))
            .unwrap()
            .select_one(&json!({"a": a, "b": b}))
    }

    proptest! {
        #[test]
        fn integer_arithmetic_matches_checked_i128(a in any::<i64>(), b in any::<i64>()) {
            let (x, y) = (i128::from(a), i128::from(b));
            for (name, exact) in [("add", x.checked_add(y)), ("subtract", x.checked_sub(y)), ("multiply", x.checked_mul(y))] {
                match (run2(name, a, b), expected_int(exact)) {
                    (Ok(Some(v)), Some(e)) => {
                        prop_assert!(v.is_i64());
                        prop_assert_eq!(v.as_i64(), Some(e));
                    }
                    (Err(JmesError::Eval { message }), None) => prop_assert!(message.contains("overflow")),
                    (got, want) => prop_assert!(false, "{name}({a}, {b}): got {got:?}, want {want:?}"),
                }
            }
        }

        #[test]
        fn integer_divide_is_exact(a in any::<i64>(), b in prop_oneof![any::<i64>(), -5i64..5]) {
            let (x, y) = (i128::from(a), i128::from(b));
            let got = run2("divide", a, b);
            if b == 0 {
                let ok = matches!(got, Err(JmesError::Eval { ref message }) if message.contains("divide by zero"));
                prop_assert!(ok, "divide({}, 0): {:?}", a, got);
            } else if x % y == 0 {
                match (got, i64::try_from(x / y)) {
                    (Ok(Some(v)), Ok(q)) => {
                        prop_assert!(v.is_i64());
                        prop_assert_eq!(v.as_i64(), Some(q));
                    }
                    (Err(JmesError::Eval { message }), Err(_)) => prop_assert!(message.contains("overflow")),
                    (got, want) => prop_assert!(false, "divide({a}, {b}): got {got:?}, want {want:?}"),
                }
            } else {
                let v = got.unwrap().unwrap();
                prop_assert!(v.is_f64());
                let want = a as f64 / b as f64;
                let got = v.as_f64().unwrap();
                prop_assert!((got - want).abs() <= 1e-12 * want.abs().max(1e-300), "{got} vs {want}");
            }
        }

        #[test]
        fn integer_pow_matches_checked_i128(a in -100i64..100, b in -70i64..70) {
            let got = run2("pow", a, b);
            if b >= 0 {
                let exact = i128::from(a).checked_pow(b as u32);
                match (got, expected_int(exact)) {
                    (Ok(Some(v)), Some(e)) => {
                        prop_assert!(v.is_i64());
                        prop_assert_eq!(v.as_i64(), Some(e));
                    }
                    (Err(JmesError::Eval { message }), None) => prop_assert!(message.contains("overflow")),
                    (got, want) => prop_assert!(false, "pow({a}, {b}): got {got:?}, want {want:?}"),
                }
            } else if a == 0 {
                prop_assert!(got.is_err());
            } else if a == 1 || a == -1 {
                let v = got.unwrap().unwrap();
                prop_assert_eq!(v.as_i64(), Some(if a == -1 && b % 2 != 0 { -1 } else { 1 }));
            } else {
                let v = got.unwrap().unwrap();
                prop_assert!(v.is_f64());
                let want = (a as f64).powf(b as f64);
                prop_assert!((v.as_f64().unwrap() - want).abs() <= 1e-12 * want.abs());
            }
        }

        #[test]
        fn arbitrary_expressions_never_panic(expr in "[a-z@`'\"\\\\\\[\\]{}()*.|&!=<>,:?0-9 -]{0,40}") {
            if let Ok(e) = JmesExpr::compile(&expr) {
                let data = json!({"a": [1, {"b": "x`y"}, null], "b": {"c": 2.5}, "c": "s"});
                // Multi- and single-select see the same evaluation.
                match (e.select_all(&data), e.select_one(&data)) {
                    (Ok(all), Ok(None)) => prop_assert!(all.is_empty()),
                    (Ok(all), Ok(Some(_))) => prop_assert!(all.len() <= 1),
                    (Ok(all), Err(JmesError::Eval { message })) => {
                        prop_assert!(all.len() > 1 && message.starts_with("multiple tokens"));
                    }
                    (Err(a), Err(b)) => prop_assert_eq!(a, b),
                    (all, one) => prop_assert!(false, "{:?} vs {:?}", all, one),
                }
            }
        }

        #[test]
        fn legacy_literal_round_trips_any_text(s in "\\PC{0,20}") {
            let escaped = s.replace('`', "\\`");
            let expr = format!("`{escaped}`");
            // Only text that is not JSON (after unescaping) is a legacy literal.
            prop_assume!(Variable::from_json(&s).is_err());
            // A backslash right before a backtick cannot be written in a literal at all.
            prop_assume!(!s.ends_with('\\') && !s.contains("\\`"));
            let e = JmesExpr::compile(&expr).unwrap();
            prop_assert_eq!(e.select_one(&json!({})).unwrap(), Some(Value::String(s)));
        }
    }
}
