//! Parser for Json.NET's JSONPath dialect, following `JPath.cs` step by step so that its quirks
//! (which expressions it accepts, and what they mean) are the same.
//!
//! Notable quirks kept on purpose:
//! - Dot-notation member names run until `.`, `[`, `(`, `)`, `]` or a space (and, inside filters,
//!   until `= < ! > | &`), so `$.Properties.iothub-creation-time-utc` is one member.
//! - In a filter `@name` is `@.name`; `(` works like `[` (`$.a(0)` is `$.a[0]`).
//! - `..` only affects a following name, quoted name or filter: `$..[0]` is `$[0]`.
//! - `[1,*]` is `[*]`; `['a',x']` reads the second name as `''` (the character after a comma is
//!   skipped as if it were the opening quote).
//! - Numbers in filters end only at a space or `)`; `@.a==1&&...` does not parse.
//! - `&&`/`||` have no precedence: `a && b || c` groups as `a && (b || c)`.
//! - No parenthesised sub-expressions in filters.
//! - A comparison followed by something other than `)`, `&&` or `||` is silently dropped
//!   (`[?(@.a==1 @.b)]` is `[?(@.b)]`).
//!
//! Differences from Json.NET:
//! - Where Json.NET would crash with `IndexOutOfRangeException` (e.g. `[?(@.a&&`), this parser
//!   returns a parse error.
//! - Filters nest at most [`MAX_NESTING`] deep (Json.NET overflows its stack eventually).
//! - Unless parsing strictly, `"..."` strings are accepted wherever `'...'` strings are
//!   (Json.NET rejects them); this only turns errors into successes.
//!
//! Positions in errors are character (Unicode scalar) offsets.

use super::ast::{Comparison, Expr, Level, Literal, Logic, Op, Operand, Path, Step};
use super::value::{compile_regex, parse_double, parse_long};
use super::JsonPathError;

/// Maximum nesting of filters inside filters.
pub(crate) const MAX_NESTING: usize = 32;

pub(crate) struct Parser {
    s: Vec<char>,
    i: usize,
    double_quotes: bool,
    depth: usize,
}

type PResult<T> = Result<T, JsonPathError>;

impl Parser {
    pub(crate) fn new(expr: &str, double_quotes: bool) -> Self {
        Parser {
            s: expr.chars().collect(),
            i: 0,
            double_quotes,
            depth: 0,
        }
    }

    fn err_at<T>(&self, position: usize, message: impl Into<String>) -> PResult<T> {
        Err(JsonPathError::Parse {
            position,
            message: message.into(),
        })
    }

    fn err<T>(&self, message: impl Into<String>) -> PResult<T> {
        self.err_at(self.i, message)
    }

    fn len(&self) -> usize {
        self.s.len()
    }

    /// The current character; an error where Json.NET would index past the end.
    fn cur(&self) -> PResult<char> {
        match self.s.get(self.i) {
            Some(&c) => Ok(c),
            None => self.err("unexpected end of path"),
        }
    }

    fn eat_ws(&mut self) {
        while self.s.get(self.i) == Some(&' ') {
            self.i += 1;
        }
    }

    fn ensure_len(&self, message: &str) -> PResult<()> {
        if self.i >= self.len() {
            return self.err(message);
        }
        Ok(())
    }

    fn substring(&self, start: usize, end: usize) -> String {
        self.s.get(start..end).unwrap_or_default().iter().collect()
    }

    fn matches(&mut self, text: &str) -> bool {
        let mut pos = self.i;
        for c in text.chars() {
            if self.s.get(pos) == Some(&c) {
                pos += 1;
            } else {
                return false;
            }
        }
        self.i = pos;
        true
    }

    /// `JPath.ParseMain`.
    pub(crate) fn parse_main(&mut self) -> PResult<Vec<Step>> {
        let mut part_start = self.i;
        self.eat_ws();
        if self.i == self.len() {
            return Ok(Vec::new());
        }
        if self.s.get(self.i) == Some(&'$') {
            if self.len() == 1 {
                return Ok(Vec::new());
            }
            // Only "$." and "$[" skip the '$'; otherwise it starts a member name ("$values").
            let next = match self.s.get(self.i + 1) {
                Some(&c) => c,
                None => return self.err_at(self.i + 1, "unexpected end of path after '$'"),
            };
            if next == '.' || next == '[' {
                self.i += 1;
                part_start = self.i;
            }
        }
        let mut steps = Vec::new();
        if !self.parse_path(&mut steps, part_start, false)? {
            let last = self.i;
            self.eat_ws();
            if self.i < self.len() {
                let c = self.s.get(last).copied().unwrap_or(' ');
                return self.err_at(
                    last,
                    format!("unexpected character while parsing path: {c}"),
                );
            }
        }
        Ok(steps)
    }

    fn member_step(member: String, scan: bool) -> Step {
        let name = if member == "*" { None } else { Some(member) };
        if scan {
            Step::Scan(name)
        } else {
            Step::Field(name)
        }
    }

    /// `JPath.ParsePath`: returns true when the path ran to the end of the text.
    fn parse_path(
        &mut self,
        steps: &mut Vec<Step>,
        mut part_start: usize,
        query: bool,
    ) -> PResult<bool> {
        let mut scan = false;
        let mut following_indexer = false;
        let mut following_dot = false;
        let mut ended = false;
        while self.i < self.len() && !ended {
            let c = self.s[self.i];
            match c {
                '[' | '(' => {
                    if self.i > part_start {
                        let member = self.substring(part_start, self.i);
                        steps.push(Self::member_step(member, scan));
                        scan = false;
                    }
                    let step = self.parse_indexer(c, scan)?;
                    steps.push(step);
                    scan = false;
                    self.i += 1;
                    part_start = self.i;
                    following_indexer = true;
                    following_dot = false;
                }
                ']' | ')' | ' ' => ended = true,
                '.' => {
                    if self.i > part_start {
                        let member = self.substring(part_start, self.i);
                        steps.push(Self::member_step(member, scan));
                        scan = false;
                    }
                    if self.s.get(self.i + 1) == Some(&'.') {
                        scan = true;
                        self.i += 1;
                    }
                    self.i += 1;
                    part_start = self.i;
                    following_indexer = false;
                    following_dot = true;
                }
                _ => {
                    if query && matches!(c, '=' | '<' | '!' | '>' | '|' | '&') {
                        ended = true;
                    } else {
                        if following_indexer {
                            return self
                                .err(format!("unexpected character following indexer: {c}"));
                        }
                        self.i += 1;
                    }
                }
            }
        }
        let at_end = self.i == self.len();
        if self.i > part_start {
            let member = self.substring(part_start, self.i).trim_end().to_owned();
            steps.push(Self::member_step(member, scan));
        } else if following_dot && (at_end || query) {
            return self.err("unexpected end while parsing path");
        }
        Ok(at_end)
    }

    /// `JPath.ParseIndexer`: entered on the opening `[` or `(`, leaves on the closing one.
    fn parse_indexer(&mut self, open: char, scan: bool) -> PResult<Step> {
        self.i += 1;
        let close = if open == '[' { ']' } else { ')' };
        self.ensure_len("path ended with open indexer")?;
        self.eat_ws();
        let c = self.cur()?;
        if c == '\'' || (self.double_quotes && c == '"') {
            self.parse_quoted_field(close, scan)
        } else if c == '?' {
            self.parse_query(close, scan)
        } else {
            self.parse_array_indexer(close)
        }
    }

    /// `Convert.ToInt32` of an indexer part.
    fn to_i32(&self, start: usize, length: usize) -> PResult<i32> {
        let text = self.substring(start, start + length);
        match parse_long(&text).and_then(|v| i32::try_from(v).ok()) {
            Some(v) => Ok(v),
            None => self.err_at(start, format!("invalid array index '{text}'")),
        }
    }

    /// `JPath.ParseArrayIndexer`: `[n]`, `[a,b]`, `[start:end:step]`, `[*]`.
    fn parse_array_indexer(&mut self, close: char) -> PResult<Step> {
        let mut start = self.i;
        let mut end: Option<usize> = None;
        let mut indexes: Option<Vec<i32>> = None;
        let mut colon_count = 0usize;
        let mut start_index: Option<i32> = None;
        let mut end_index: Option<i32> = None;
        let mut step: Option<i32> = None;

        while self.i < self.len() {
            let c = self.s[self.i];
            if c == ' ' {
                end = Some(self.i);
                self.eat_ws();
                continue;
            }
            if c == close {
                let length = end.unwrap_or(self.i).saturating_sub(start);
                if let Some(mut list) = indexes {
                    if length == 0 {
                        return self.err("array index expected");
                    }
                    list.push(self.to_i32(start, length)?);
                    return Ok(Step::IndexMulti(list));
                } else if colon_count > 0 {
                    if length > 0 {
                        let v = self.to_i32(start, length)?;
                        if colon_count == 1 {
                            end_index = Some(v);
                        } else {
                            step = Some(v);
                        }
                    }
                    return Ok(Step::Slice {
                        start: start_index,
                        end: end_index,
                        step,
                    });
                } else {
                    if length == 0 {
                        return self.err("array index expected");
                    }
                    return Ok(Step::Index(Some(self.to_i32(start, length)?)));
                }
            } else if c == ',' {
                let length = end.unwrap_or(self.i).saturating_sub(start);
                if length == 0 {
                    return self.err("array index expected");
                }
                let v = self.to_i32(start, length)?;
                indexes.get_or_insert_with(Vec::new).push(v);
                self.i += 1;
                self.eat_ws();
                start = self.i;
                end = None;
            } else if c == '*' {
                self.i += 1;
                self.ensure_len("path ended with open indexer")?;
                self.eat_ws();
                if self.cur()? != close {
                    return self.err("unexpected character while parsing path indexer: *");
                }
                return Ok(Step::Index(None));
            } else if c == ':' {
                let length = end.unwrap_or(self.i).saturating_sub(start);
                if length > 0 {
                    let v = self.to_i32(start, length)?;
                    match colon_count {
                        0 => start_index = Some(v),
                        1 => end_index = Some(v),
                        _ => step = Some(v),
                    }
                }
                colon_count += 1;
                self.i += 1;
                self.eat_ws();
                start = self.i;
                end = None;
            } else if !c.is_numeric() && c != '-' {
                return self.err(format!(
                    "unexpected character while parsing path indexer: {c}"
                ));
            } else {
                if end.is_some() {
                    return self.err(format!(
                        "unexpected character while parsing path indexer: {c}"
                    ));
                }
                self.i += 1;
            }
        }
        self.err("path ended with open indexer")
    }

    /// `JPath.ParseQuotedField`: `['a']`, `['a','b']`.
    fn parse_quoted_field(&mut self, close: char, scan: bool) -> PResult<Step> {
        let mut fields: Option<Vec<String>> = None;
        // Json.NET reads `['a',"b']` as the names a and b (the character after a comma is skipped
        // whatever it is). Double-quoted names are therefore only recognised in a list that
        // itself opened with `"`, which Json.NET rejects: the extension never changes the meaning
        // of an expression Json.NET accepts.
        let double_quotes = self.double_quotes && self.s.get(self.i) == Some(&'"');
        while self.i < self.len() {
            let field = self.read_quoted_string(double_quotes)?;
            self.eat_ws();
            self.ensure_len("path ended with open indexer")?;
            let c = self.s[self.i];
            if c == close {
                return Ok(match fields {
                    Some(mut list) => {
                        list.push(field);
                        if scan {
                            Step::ScanMulti(list)
                        } else {
                            Step::FieldMulti(list)
                        }
                    }
                    // A quoted '*' is a member name, not a wildcard.
                    None if scan => Step::Scan(Some(field)),
                    None => Step::Field(Some(field)),
                });
            } else if c == ',' {
                self.i += 1;
                self.eat_ws();
                fields.get_or_insert_with(Vec::new).push(field);
            } else {
                return self.err(format!(
                    "unexpected character while parsing path indexer: {c}"
                ));
            }
        }
        self.err("path ended with open indexer")
    }

    /// `JPath.ReadQuotedString`: the current character is skipped as the opening quote, whatever it
    /// is; the string ends at `'` (or at `"` when it was opened by `"` and `double_quotes` is set).
    fn read_quoted_string(&mut self, double_quotes: bool) -> PResult<String> {
        let quote = if double_quotes && self.s.get(self.i) == Some(&'"') {
            '"'
        } else {
            '\''
        };
        let mut sb = String::new();
        self.i += 1;
        while self.i < self.len() {
            let c = self.s[self.i];
            if c == '\\' && self.i + 1 < self.len() {
                self.i += 1;
                let e = self.s[self.i];
                let resolved = match e {
                    'b' => '\u{8}',
                    't' => '\t',
                    'n' => '\n',
                    'f' => '\u{c}',
                    'r' => '\r',
                    '\\' | '"' | '\'' | '/' => e,
                    _ => return self.err(format!("unknown escape character: \\{e}")),
                };
                sb.push(resolved);
                self.i += 1;
            } else if c == quote {
                self.i += 1;
                return Ok(sb);
            } else {
                self.i += 1;
                sb.push(c);
            }
        }
        self.err("path ended with an open string")
    }

    /// `JPath.ParseQuery`: `[?(expr)]`, entered on `?`, leaves on the closing bracket.
    fn parse_query(&mut self, close: char, scan: bool) -> PResult<Step> {
        self.i += 1;
        self.ensure_len("path ended with open indexer")?;
        let c = self.s[self.i];
        if c != '(' {
            return self.err(format!(
                "unexpected character while parsing path indexer: {c}"
            ));
        }
        self.i += 1;
        if self.depth >= MAX_NESTING {
            return self.err(format!("filters nested more than {MAX_NESTING} deep"));
        }
        self.depth += 1;
        let expr = self.parse_expression()?;
        self.depth -= 1;
        self.i += 1;
        self.ensure_len("path ended with open indexer")?;
        self.eat_ws();
        let c = self.cur()?;
        if c != close {
            return self.err(format!(
                "unexpected character while parsing path indexer: {c}"
            ));
        }
        Ok(if scan {
            Step::QueryScan(expr)
        } else {
            Step::Query(expr)
        })
    }

    /// `JPath.TryParseExpression`: a `$` or `@` path inside a filter.
    fn try_parse_expression(&mut self) -> PResult<Option<Path>> {
        let mut steps = match self.cur()? {
            '$' => vec![Step::Root],
            '@' => Vec::new(),
            _ => return Ok(None),
        };
        self.i += 1;
        if self.parse_path(&mut steps, self.i, true)? {
            return self.err("path ended with open query");
        }
        Ok(Some(Path::new(steps)))
    }

    fn unexpected_query_char<T>(&self) -> PResult<T> {
        match self.s.get(self.i) {
            Some(c) => self.err(format!(
                "unexpected character while parsing path query: {c}"
            )),
            None => self.err("path ended with open query"),
        }
    }

    /// `JPath.ParseSide`.
    fn parse_side(&mut self) -> PResult<Operand> {
        self.eat_ws();
        if let Some(path) = self.try_parse_expression()? {
            self.eat_ws();
            self.ensure_len("path ended with open query")?;
            return Ok(Operand::Path(path));
        }
        if let Some(lit) = self.try_parse_value()? {
            self.eat_ws();
            self.ensure_len("path ended with open query")?;
            return Ok(Operand::Lit(lit));
        }
        self.unexpected_query_char()
    }

    /// `JPath.ParseExpression`: comparisons joined by `&&` / `||`, up to the closing `)`.
    fn parse_expression(&mut self) -> PResult<Expr> {
        // The CompositeExpression spine: each new level is the last operand of the previous one.
        let mut spine: Vec<Level> = Vec::new();
        while self.i < self.len() {
            let left = self.parse_side()?;
            let (op, right) = if matches!(self.cur()?, ')' | '|' | '&') {
                (Op::Exists, None)
            } else {
                let op = self.parse_operator()?;
                (op, Some(self.parse_side()?))
            };
            let cmp = Self::comparison(op, left, right);
            let c = self.cur()?;
            if c == ')' {
                return Ok(match spine.last_mut() {
                    None => Expr::Cmp(Box::new(cmp)),
                    Some(level) => {
                        level.items.push(cmp);
                        Expr::Chain(spine)
                    }
                });
            }
            if c == '&' {
                if !self.matches("&&") {
                    return self.unexpected_query_char();
                }
                Self::push_logic(&mut spine, Logic::And, cmp.clone());
            }
            if self.cur()? == '|' {
                if !self.matches("||") {
                    return self.unexpected_query_char();
                }
                Self::push_logic(&mut spine, Logic::Or, cmp);
            }
        }
        self.err("path ended with open query")
    }

    fn push_logic(spine: &mut Vec<Level>, op: Logic, cmp: Comparison) {
        match spine.last_mut() {
            Some(level) if level.op == op => level.items.push(cmp),
            _ => spine.push(Level {
                op,
                items: vec![cmp],
            }),
        }
    }

    fn comparison(op: Op, left: Operand, right: Option<Operand>) -> Comparison {
        let regex = match (&right, op) {
            (Some(Operand::Lit(Literal::Str(pattern))), Op::Regex) => Some(compile_regex(pattern)),
            _ => None,
        };
        Comparison {
            op,
            left,
            right,
            regex,
        }
    }

    /// `JPath.TryParseValue`: a literal, or `None` if the text is not one.
    fn try_parse_value(&mut self) -> PResult<Option<Literal>> {
        let c = self.cur()?;
        if c == '\'' || (self.double_quotes && c == '"') {
            return Ok(Some(Literal::Str(
                self.read_quoted_string(self.double_quotes)?,
            )));
        }
        if c.is_numeric() || c == '-' {
            let mut sb = String::new();
            sb.push(c);
            self.i += 1;
            while self.i < self.len() {
                let c = self.s[self.i];
                if c == ' ' || c == ')' {
                    return Ok(if sb.contains(['.', 'E', 'e']) {
                        parse_double(&sb).map(Literal::Float)
                    } else {
                        parse_long(&sb).map(Literal::Int)
                    });
                }
                sb.push(c);
                self.i += 1;
            }
            return Ok(None);
        }
        let lit = match c {
            't' if self.matches("true") => Literal::Bool(true),
            'f' if self.matches("false") => Literal::Bool(false),
            'n' if self.matches("null") => Literal::Null,
            '/' => Literal::Str(self.read_regex_string()?),
            _ => return Ok(None),
        };
        Ok(Some(lit))
    }

    /// `JPath.ReadRegexString`: `/pattern/flags`, kept verbatim.
    fn read_regex_string(&mut self) -> PResult<String> {
        let start = self.i;
        self.i += 1;
        while self.i < self.len() {
            let c = self.s[self.i];
            if c == '\\' && self.i + 1 < self.len() {
                self.i += 2;
            } else if c == '/' {
                self.i += 1;
                // char.IsLetter on UTF-16 units: letters outside the BMP are surrogates there.
                while let Some(&f) = self.s.get(self.i) {
                    if u32::from(f) < 0x1_0000 && f.is_alphabetic() {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                return Ok(self.substring(start, self.i));
            } else {
                self.i += 1;
            }
        }
        self.err("path ended with an open regex")
    }

    /// `JPath.ParseOperator`.
    fn parse_operator(&mut self) -> PResult<Op> {
        if self.i + 1 >= self.len() {
            return self.err("path ended with open query");
        }
        let op = if self.matches("===") {
            Op::StrictEq
        } else if self.matches("==") {
            Op::Eq
        } else if self.matches("=~") {
            Op::Regex
        } else if self.matches("!==") {
            Op::StrictNe
        } else if self.matches("!=") || self.matches("<>") {
            Op::Ne
        } else if self.matches("<=") {
            Op::Le
        } else if self.matches("<") {
            Op::Lt
        } else if self.matches(">=") {
            Op::Ge
        } else if self.matches(">") {
            Op::Gt
        } else {
            return self.err("could not read query operator");
        };
        Ok(op)
    }
}
