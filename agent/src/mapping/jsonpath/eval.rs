//! Lazy evaluation of a parsed path, in Json.NET's order.
//!
//! Json.NET chains lazy `IEnumerable`s: each filter pulls one token from the previous one and
//! pushes all its outputs down the chain before pulling the next. This module reproduces that
//! order with an explicit stack of per-step iterators, and a sink that can stop the enumeration
//! early. The order matters beyond the result list: an existence test stops at the first token
//! (`Any()`), a comparison stops at the first matching pair, `SelectToken` stops at the second
//! token, and errors (a negative index, a failed conversion) only surface if Json.NET would have
//! reached them.
//!
//! Invariants: no recursion over the document (descendants are walked with an explicit stack) or
//! over the number of steps (an explicit frame stack); the only recursion is path -> filter ->
//! path, bounded by the parser's nesting limit. No panics.
//!
//! Json.NET's token model has one node kind serde_json lacks: `JProperty`, the name/value pair
//! inside an object. It appears as a child of an object (`[?()]` iterates an object's properties)
//! and among descendants (`..[?()]` visits properties too). It is modelled here as
//! [`Node::Prop`], so filters see exactly the candidates Json.NET sees.

use crate::mapping::doc::{self, JsonTree};

use super::ast::{Comparison, Expr, Literal, Logic, Op, Operand, Path, Step};
use super::value::{self, Prim};
use super::JsonPathError;

/// A Json.NET token: a JSON value, or an object property (`JProperty`).
#[derive(Debug)]
pub(crate) enum Node<'a, T> {
    Val(&'a T),
    Prop(&'a str, &'a T),
}

impl<T> Clone for Node<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Node<'_, T> {}

/// Whether the consumer wants more tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

type Sink<'s, 'a, T> = dyn FnMut(Node<'a, T>) -> Result<Flow, JsonPathError> + 's;

/// Upper bound on the work one selection may do (tokens produced plus candidates examined).
///
/// Json.NET has no such bound; paths like `$..*..*..*` grow as (document size)^k and a filter
/// with `@..x` inside `..[?()]` grows quadratically. Ten million steps is far above any realistic
/// device message and keeps a hostile or mistaken input from pinning the gateway.
pub(crate) const MAX_WORK: u64 = 10_000_000;

/// Evaluation context: the token `SelectTokens` was called on (what `$` means in filters), and
/// the work counter.
pub(crate) struct Ctx<'a, T> {
    pub(crate) root: &'a T,
    work: std::cell::Cell<u64>,
    budget: u64,
}

impl<'a, T> Ctx<'a, T> {
    pub(crate) fn new(root: &'a T) -> Self {
        Self::with_budget(root, MAX_WORK)
    }

    pub(crate) fn with_budget(root: &'a T, budget: u64) -> Self {
        Ctx {
            root,
            work: std::cell::Cell::new(0),
            budget,
        }
    }

    /// Counts one unit of work; an error once the budget is spent.
    fn tick(&self) -> Result<(), JsonPathError> {
        let w = self.work.get() + 1;
        self.work.set(w);
        if w > self.budget {
            return Err(JsonPathError::Evaluation {
                message: format!("evaluation exceeded {} steps", self.budget),
            });
        }
        Ok(())
    }
}

/// Children of a token, in `JContainer` order.
enum Children<'a, T: JsonTree> {
    Obj(T::Members<'a>),
    Arr(std::slice::Iter<'a, T>),
    One(Option<&'a T>),
    None,
}

impl<'a, T: JsonTree + 'a> Children<'a, T> {
    fn of(n: Node<'a, T>) -> Self {
        match n {
            Node::Val(v) => {
                if let Some(m) = v.members() {
                    Children::Obj(m)
                } else if let Some(a) = v.elements() {
                    Children::Arr(a.iter())
                } else {
                    Children::None
                }
            }
            Node::Prop(_, v) => Children::One(Some(v)),
        }
    }
}

impl<'a, T: JsonTree + 'a> Iterator for Children<'a, T> {
    type Item = Node<'a, T>;
    fn next(&mut self) -> Option<Node<'a, T>> {
        match self {
            Children::Obj(it) => it.next().map(|(k, v)| Node::Prop(k, v)),
            Children::Arr(it) => it.next().map(Node::Val),
            Children::One(v) => v.take().map(Node::Val),
            Children::None => None,
        }
    }
}

/// Pre-order walk over the descendants of a token (not the token itself), properties included,
/// like `GetNextScanValue` / `Descendants()`.
struct Walker<'a, T: JsonTree> {
    stack: Vec<Children<'a, T>>,
}

impl<'a, T: JsonTree + 'a> Walker<'a, T> {
    fn new(start: Node<'a, T>) -> Self {
        Walker {
            stack: vec![Children::of(start)],
        }
    }
}

impl<'a, T: JsonTree + 'a> Iterator for Walker<'a, T> {
    type Item = Node<'a, T>;
    fn next(&mut self) -> Option<Node<'a, T>> {
        while let Some(top) = self.stack.last_mut() {
            if let Some(n) = top.next() {
                let descend = match n {
                    Node::Prop(..) => true,
                    Node::Val(v) => v.is_container(),
                };
                if descend {
                    self.stack.push(Children::of(n));
                }
                return Some(n);
            }
            self.stack.pop();
        }
        None
    }
}

/// `GetTokenIndex`: only arrays are indexable; an index past the end gives nothing; a negative
/// index on an array throws (`JArray[-1]` is `ArgumentOutOfRangeException`).
fn token_index<T: JsonTree>(
    n: Node<'_, T>,
    index: i32,
) -> Result<Option<Node<'_, T>>, JsonPathError> {
    let Node::Val(v) = n else {
        return Ok(None);
    };
    let Some(a) = v.elements() else {
        return Ok(None);
    };
    if i64::try_from(a.len()).unwrap_or(i64::MAX) <= i64::from(index) {
        return Ok(None);
    }
    match usize::try_from(index).ok().and_then(|i| a.get(i)) {
        Some(v) => Ok(Some(Node::Val(v))),
        None => Err(index_out_of_range(index)),
    }
}

fn index_out_of_range(index: i32) -> JsonPathError {
    JsonPathError::Evaluation {
        message: format!(
            "index {index} was out of range (Json.NET does not support negative array indexes)"
        ),
    }
}

/// The state of one step applied to one input token.
enum StepIter<'a, 'p, T: JsonTree> {
    Done,
    One(Option<Node<'a, T>>),
    FieldMulti {
        obj: &'a T,
        names: &'p [String],
        pos: usize,
    },
    Values(T::Members<'a>),
    Elems(std::slice::Iter<'a, T>),
    IndexMulti {
        node: Node<'a, T>,
        indexes: &'p [i32],
        pos: usize,
    },
    Slice {
        arr: &'a [T],
        i: i32,
        stop: i32,
        step: i32,
    },
    /// `..name` / `..*`; `first` is the start token, yielded first by `..*` only.
    Scan {
        first: Option<Node<'a, T>>,
        walker: Walker<'a, T>,
        name: Option<&'p str>,
    },
    ScanMulti {
        walker: Walker<'a, T>,
        names: &'p [String],
        /// A matched value still to be yielded this many more times (duplicate names in the list).
        repeat: Option<(&'a T, usize)>,
    },
    Query {
        children: Children<'a, T>,
        expr: &'p Expr,
    },
    QueryScan {
        first: Option<Node<'a, T>>,
        walker: Walker<'a, T>,
        expr: &'p Expr,
    },
}

impl<'a, 'p, T: JsonTree + 'a> StepIter<'a, 'p, T> {
    fn start(ctx: &Ctx<'a, T>, step: &'p Step, t: Node<'a, T>) -> Result<Self, JsonPathError> {
        let val = match t {
            Node::Val(v) => Some(v),
            Node::Prop(..) => None,
        };
        Ok(match step {
            Step::Root => StepIter::One(Some(Node::Val(ctx.root))),
            Step::Field(Some(name)) => match val {
                Some(v) if v.is_object() => StepIter::One(v.member(name).map(Node::Val)),
                _ => StepIter::Done,
            },
            Step::Field(None) => match val.and_then(|v| v.members()) {
                Some(m) => StepIter::Values(m),
                None => StepIter::Done,
            },
            Step::FieldMulti(names) => match val {
                Some(obj) if obj.is_object() => StepIter::FieldMulti { obj, names, pos: 0 },
                _ => StepIter::Done,
            },
            Step::Index(Some(i)) => StepIter::One(token_index(t, *i)?),
            Step::Index(None) => match val.and_then(|v| v.elements()) {
                Some(a) => StepIter::Elems(a.iter()),
                None => StepIter::Done,
            },
            Step::IndexMulti(indexes) => StepIter::IndexMulti {
                node: t,
                indexes,
                pos: 0,
            },
            Step::Slice { start, end, step } => match val.and_then(|v| v.elements()) {
                Some(a) => slice_iter(a, *start, *end, *step),
                None => StepIter::Done,
            },
            Step::Scan(name) => StepIter::Scan {
                first: if name.is_none() { Some(t) } else { None },
                walker: Walker::new(t),
                name: name.as_deref(),
            },
            Step::ScanMulti(names) => StepIter::ScanMulti {
                walker: Walker::new(t),
                names,
                repeat: None,
            },
            Step::Query(expr) => StepIter::Query {
                children: Children::of(t),
                expr,
            },
            Step::QueryScan(expr) => StepIter::QueryScan {
                first: Some(t),
                walker: Walker::new(t),
                expr,
            },
        })
    }

    fn next(&mut self, ctx: &Ctx<'a, T>) -> Result<Option<Node<'a, T>>, JsonPathError> {
        match self {
            StepIter::Done => Ok(None),
            StepIter::One(n) => Ok(n.take()),
            StepIter::FieldMulti { obj, names, pos } => {
                while let Some(name) = names.get(*pos) {
                    *pos += 1;
                    if let Some(v) = obj.member(name) {
                        return Ok(Some(Node::Val(v)));
                    }
                }
                Ok(None)
            }
            StepIter::Values(it) => Ok(it.next().map(|(_, v)| Node::Val(v))),
            StepIter::Elems(it) => Ok(it.next().map(Node::Val)),
            StepIter::IndexMulti { node, indexes, pos } => {
                while let Some(&i) = indexes.get(*pos) {
                    *pos += 1;
                    if let Some(v) = token_index(*node, i)? {
                        return Ok(Some(v));
                    }
                }
                Ok(None)
            }
            StepIter::Slice { arr, i, stop, step } => {
                let valid = if *step > 0 { *i < *stop } else { *i > *stop };
                if !valid {
                    return Ok(None);
                }
                let index = *i;
                // C# `i += stepCount` is unchecked int arithmetic: it can wrap to a negative
                // index, which then throws on access.
                *i = i.wrapping_add(*step);
                match usize::try_from(index).ok().and_then(|u| arr.get(u)) {
                    Some(v) => Ok(Some(Node::Val(v))),
                    None => Err(index_out_of_range(index)),
                }
            }
            StepIter::Scan {
                first,
                walker,
                name,
            } => {
                if let Some(f) = first.take() {
                    return Ok(Some(f));
                }
                for n in walker.by_ref() {
                    ctx.tick()?;
                    match (n, *name) {
                        (Node::Prop(k, v), Some(want)) if k == want => {
                            return Ok(Some(Node::Val(v)));
                        }
                        (Node::Val(_), None) => return Ok(Some(n)),
                        _ => {}
                    }
                }
                Ok(None)
            }
            StepIter::ScanMulti {
                walker,
                names,
                repeat,
            } => {
                if let Some((v, left)) = repeat {
                    let v = *v;
                    if *left <= 1 {
                        *repeat = None;
                    } else {
                        *left -= 1;
                    }
                    return Ok(Some(Node::Val(v)));
                }
                for n in walker.by_ref() {
                    ctx.tick()?;
                    if let Node::Prop(k, v) = n {
                        let count = names.iter().filter(|name| name.as_str() == k).count();
                        if count > 0 {
                            if count > 1 {
                                *repeat = Some((v, count - 1));
                            }
                            return Ok(Some(Node::Val(v)));
                        }
                    }
                }
                Ok(None)
            }
            StepIter::Query { children, expr } => {
                for c in children.by_ref() {
                    ctx.tick()?;
                    if eval_expr(ctx, expr, c)? {
                        return Ok(Some(c));
                    }
                }
                Ok(None)
            }
            StepIter::QueryScan {
                first,
                walker,
                expr,
            } => {
                if let Some(f) = first.take() {
                    if eval_expr(ctx, expr, f)? {
                        return Ok(Some(f));
                    }
                }
                for d in walker.by_ref() {
                    ctx.tick()?;
                    if eval_expr(ctx, expr, d)? {
                        return Ok(Some(d));
                    }
                }
                Ok(None)
            }
        }
    }
}

/// `ArraySliceFilter` bounds, computed with C# `int` semantics.
fn slice_iter<'a, 'p, T: JsonTree + 'a>(
    a: &'a [T],
    start: Option<i32>,
    end: Option<i32>,
    step: Option<i32>,
) -> StepIter<'a, 'p, T> {
    let count = i32::try_from(a.len()).unwrap_or(i32::MAX);
    let step_count = step.unwrap_or(1);
    let positive = step_count > 0;
    let mut start_index = start.unwrap_or(if positive { 0 } else { count.wrapping_sub(1) });
    let mut stop_index = end.unwrap_or(if positive { count } else { -1 });
    if start.is_some_and(|s| s < 0) {
        start_index = count.wrapping_add(start_index);
    }
    if end.is_some_and(|e| e < 0) {
        stop_index = count.wrapping_add(stop_index);
    }
    start_index = start_index.max(if positive { 0 } else { i32::MIN });
    start_index = start_index.min(if positive {
        count
    } else {
        count.wrapping_sub(1)
    });
    stop_index = stop_index.max(-1).min(count);
    StepIter::Slice {
        arr: a,
        i: start_index,
        stop: stop_index,
        step: step_count,
    }
}

/// Evaluates `path` from `start`, feeding each result to `sink` until it says stop.
pub(crate) fn eval_path<'a, T: JsonTree + 'a>(
    ctx: &Ctx<'a, T>,
    path: &Path,
    start: Node<'a, T>,
    sink: &mut Sink<'_, 'a, T>,
) -> Result<Flow, JsonPathError> {
    if path.has_zero_step {
        return Err(JsonPathError::Evaluation {
            message: "step cannot be zero".to_owned(),
        });
    }
    let Some(first) = path.steps.first() else {
        ctx.tick()?;
        return sink(start);
    };
    if path.plain_fields {
        // A chain of `FieldFilter`s yields at most one token: follow the names. Same token,
        // same ticks (one per token a step yields) as the general loop below.
        let mut n = start;
        for step in &path.steps {
            let Step::Field(Some(name)) = step else {
                // `plain_fields` says this cannot happen; the general loop handles it anyway.
                return eval_steps(ctx, path, first, start, sink);
            };
            match n {
                Node::Val(v) => match v.member(name) {
                    Some(v) => {
                        ctx.tick()?;
                        n = Node::Val(v);
                    }
                    None => return Ok(Flow::Continue),
                },
                Node::Prop(..) => return Ok(Flow::Continue),
            }
        }
        return sink(n);
    }
    eval_steps(ctx, path, first, start, sink)
}

/// The general evaluation loop of [`eval_path`] (`first` is the path's first step).
fn eval_steps<'a, T: JsonTree + 'a>(
    ctx: &Ctx<'a, T>,
    path: &Path,
    first: &Step,
    start: Node<'a, T>,
    sink: &mut Sink<'_, 'a, T>,
) -> Result<Flow, JsonPathError> {
    // frames[k] iterates step k applied to one output of step k-1.
    let mut frames: Vec<StepIter<'a, '_, T>> = vec![StepIter::start(ctx, first, start)?];
    while let Some(top) = frames.last_mut() {
        match top.next(ctx)? {
            None => {
                frames.pop();
            }
            Some(n) => {
                ctx.tick()?;
                let level = frames.len();
                match path.steps.get(level) {
                    None => {
                        if sink(n)? == Flow::Stop {
                            return Ok(Flow::Stop);
                        }
                    }
                    Some(step) => frames.push(StepIter::start(ctx, step, n)?),
                }
            }
        }
    }
    Ok(Flow::Continue)
}

/// `QueryExpression.IsMatch`.
pub(crate) fn eval_expr<'a, T: JsonTree + 'a>(
    ctx: &Ctx<'a, T>,
    expr: &Expr,
    t: Node<'a, T>,
) -> Result<bool, JsonPathError> {
    match expr {
        Expr::Cmp(c) => eval_cmp(ctx, c, t),
        Expr::Chain(levels) => {
            // Level k's value is decided by its own items unless none short-circuits, in which
            // case it equals its last operand: level k+1 (or, for the last level, And -> true,
            // Or -> false).
            for level in levels {
                for c in &level.items {
                    let m = eval_cmp(ctx, c, t)?;
                    match level.op {
                        Logic::And if !m => return Ok(false),
                        Logic::Or if m => return Ok(true),
                        _ => {}
                    }
                }
            }
            Ok(levels.last().is_some_and(|l| l.op == Logic::And))
        }
    }
}

/// One side's token: a document token or a literal `JValue`.
enum Item<'a, 'p, T> {
    Node(Node<'a, T>),
    Lit(&'p Literal),
}

impl<T> Clone for Item<'_, '_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Item<'_, '_, T> {}

impl<'a, T: JsonTree> Item<'a, '_, T> {
    /// The `JValue` behind the item, `None` for objects, arrays and properties.
    fn prim(&self) -> Option<Prim<'_>> {
        match self {
            Item::Node(Node::Val(v)) => doc::prim(*v),
            Item::Node(Node::Prop(..)) => None,
            Item::Lit(l) => Some(match l {
                Literal::Null => Prim::Null,
                Literal::Bool(b) => Prim::Bool(*b),
                Literal::Int(i) => Prim::Long(*i),
                Literal::Float(f) => Prim::Double(*f),
                Literal::Str(s) => Prim::Str(s),
            }),
        }
    }
}

/// `BooleanQueryExpression.IsMatch`.
fn eval_cmp<'a, T: JsonTree + 'a>(
    ctx: &Ctx<'a, T>,
    c: &Comparison,
    t: Node<'a, T>,
) -> Result<bool, JsonPathError> {
    if c.op == Op::Exists {
        return match &c.left {
            Operand::Lit(_) => Ok(true),
            Operand::Path(p) => {
                let flow = eval_path(ctx, p, t, &mut |_| Ok(Flow::Stop))?;
                Ok(flow == Flow::Stop)
            }
        };
    }
    // Right side: fully materialised (ToList), but only once a left token exists.
    let mut right: Option<Vec<Item<'a, '_, T>>> = None;
    let mut matched = false;
    let mut on_left = |l: Item<'a, '_, T>| -> Result<Flow, JsonPathError> {
        if right.is_none() {
            right = Some(collect_operand(ctx, c.right.as_ref(), t)?);
        }
        for r in right.iter().flatten() {
            if match_tokens(c, l, *r)? {
                matched = true;
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    };
    match &c.left {
        Operand::Lit(lit) => {
            on_left(Item::Lit(lit))?;
        }
        Operand::Path(p) => {
            eval_path(ctx, p, t, &mut |n| on_left(Item::Node(n)))?;
        }
    }
    Ok(matched)
}

fn collect_operand<'a, 'p, T: JsonTree + 'a>(
    ctx: &Ctx<'a, T>,
    operand: Option<&'p Operand>,
    t: Node<'a, T>,
) -> Result<Vec<Item<'a, 'p, T>>, JsonPathError> {
    match operand {
        None => Ok(Vec::new()),
        Some(Operand::Lit(lit)) => Ok(vec![Item::Lit(lit)]),
        Some(Operand::Path(p)) => {
            let mut out = Vec::new();
            eval_path(ctx, p, t, &mut |n| {
                out.push(Item::Node(n));
                Ok(Flow::Continue)
            })?;
            Ok(out)
        }
    }
}

/// `BooleanQueryExpression.MatchTokens`.
fn match_tokens<T: JsonTree>(
    c: &Comparison,
    l: Item<'_, '_, T>,
    r: Item<'_, '_, T>,
) -> Result<bool, JsonPathError> {
    let (Some(a), Some(b)) = (l.prim(), r.prim()) else {
        // Not both primitive: only "exists" and "not equals" hold.
        return Ok(matches!(c.op, Op::Exists | Op::Ne));
    };
    use std::cmp::Ordering::{Greater, Less};
    Ok(match c.op {
        Op::Exists => true,
        Op::Regex => {
            // The cached regex belongs to the right literal; only use it when it is the pattern.
            let cached = match r {
                Item::Lit(_) => c.regex.as_ref(),
                Item::Node(_) => None,
            };
            value::regex_equals(a, b, cached)?
        }
        Op::Eq => value::equals_coercion(a, b)?,
        Op::Ne => !value::equals_coercion(a, b)?,
        Op::StrictEq => value::equals_strict(a, b)?,
        Op::StrictNe => !value::equals_strict(a, b)?,
        Op::Gt => value::compare_to(a, b)? == Greater,
        Op::Ge => value::compare_to(a, b)? != Less,
        Op::Lt => value::compare_to(a, b)? == Less,
        Op::Le => value::compare_to(a, b)? != Greater,
    })
}

/// The names of `..[?(@a.b...)]` when `path` is exactly that: one `QueryScan` step whose
/// filter is an existence test of a non-empty plain child-name path (the usual
/// `typeMatchExpression`, `$..[?(@heartRate)]`). `None` for anything else.
pub(crate) fn scan_exists_names(path: &Path) -> Option<Vec<String>> {
    let [Step::QueryScan(Expr::Cmp(c))] = path.steps.as_slice() else {
        return None;
    };
    let Operand::Path(p) = &c.left else {
        return None;
    };
    if c.op != Op::Exists || !p.plain_fields || p.has_zero_step || p.steps.is_empty() {
        return None;
    }
    p.steps
        .iter()
        .map(|s| match s {
            Step::Field(Some(n)) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

/// A stack that holds its first few entries inline (device messages are a few levels deep,
/// so the walk of one usually allocates nothing) and the rest in a `Vec`.
struct Stack<K> {
    inline: [Option<K>; 6],
    len: usize,
    spill: Vec<K>,
}

impl<K> Stack<K> {
    fn new() -> Self {
        Stack {
            inline: std::array::from_fn(|_| None),
            len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, k: K) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = Some(k),
            None => self.spill.push(k),
        }
        self.len += 1;
    }

    fn pop(&mut self) {
        if self.len == 0 {
            return;
        }
        self.len -= 1;
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = None,
            None => {
                self.spill.pop();
            }
        }
    }

    fn last_mut(&mut self) -> Option<&mut K> {
        let top = self.len.checked_sub(1)?;
        match self.inline.get_mut(top) {
            Some(slot) => slot.as_mut(),
            None => self.spill.last_mut(),
        }
    }
}

/// Children of a container, for [`scan_exists`].
enum Kids<'a, T: JsonTree> {
    Obj(T::Members<'a>),
    Arr(std::slice::Iter<'a, T>),
}

impl<'a, T: JsonTree> Kids<'a, T> {
    fn of(v: &'a T) -> Option<Self> {
        if let Some(m) = v.members() {
            Some(Kids::Obj(m))
        } else {
            v.elements().map(|a| Kids::Arr(a.iter()))
        }
    }
}

/// Evaluates `..[?(@names...)]` (see [`scan_exists_names`]) from `start`, feeding matches to
/// `sink`: the same tokens, in the same order, with the same work ticks, as the general loop
/// (`StepIter::QueryScan` over a `Walker`, each candidate tested by [`eval_expr`] through the
/// plain-field branch of [`eval_path`]), without its frame and filter machinery.
///
/// Candidates are the start token and then every descendant in pre-order, a property (`Prop`)
/// before its value; each descendant costs one tick, each member found by the test one, each
/// match one. A property never matches (a name path on a property finds nothing).
pub(crate) fn scan_exists<'a, T: JsonTree>(
    ctx: &Ctx<'a, T>,
    names: &[String],
    start: &'a T,
    sink: &mut Sink<'_, 'a, T>,
) -> Result<Flow, JsonPathError> {
    let test = |v: &'a T| -> Result<bool, JsonPathError> {
        let mut n = v;
        for name in names {
            match n.member(name) {
                Some(x) => {
                    ctx.tick()?;
                    n = x;
                }
                None => return Ok(false),
            }
        }
        Ok(true)
    };
    let mut visit = |v: &'a T| -> Result<Flow, JsonPathError> {
        if test(v)? {
            ctx.tick()?;
            return sink(Node::Val(v));
        }
        Ok(Flow::Continue)
    };
    if visit(start)? == Flow::Stop {
        return Ok(Flow::Stop);
    }
    let mut stack: Stack<Kids<'a, T>> = Stack::new();
    if let Some(k) = Kids::of(start) {
        stack.push(k);
    }
    while let Some(top) = stack.last_mut() {
        let v = match top {
            Kids::Obj(it) => match it.next() {
                Some((_, v)) => {
                    ctx.tick()?; // the property itself
                    v
                }
                None => {
                    stack.pop();
                    continue;
                }
            },
            Kids::Arr(it) => match it.next() {
                Some(v) => v,
                None => {
                    stack.pop();
                    continue;
                }
            },
        };
        ctx.tick()?;
        if visit(v)? == Flow::Stop {
            return Ok(Flow::Stop);
        }
        if let Some(k) = Kids::of(v) {
            stack.push(k);
        }
    }
    Ok(Flow::Continue)
}
