//! Json.NET `JValue` comparison semantics for filter expressions, over `serde_json` scalars.
//!
//! Mirrors `JValue.CompareTo` / `JValue.Compare`, `QueryExpression.EqualsWithStringCoercion`,
//! `EqualsWithStrictMatch` and `RegexEquals`, including the .NET `Convert.ToInt64` /
//! `Convert.ToDouble` / `Convert.ToBoolean` string conversions they rely on (which can fail: a
//! failure is an evaluation error, exactly where Json.NET throws).
//!
//! Invariants: pure functions, no panics on any input. Date, Guid, Uri, TimeSpan and Bytes tokens do
//! not exist here: strings that Json.NET would have parsed as dates are compared as strings.

use std::cmp::Ordering;

use regex::{Regex, RegexBuilder};

use super::JsonPathError;

/// A scalar (`JValue`) as Json.NET boxes it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Prim<'a> {
    Null,
    Bool(bool),
    /// `long`.
    Long(i64),
    /// `BigInteger` (integers above `long.MaxValue`; serde_json gives those as `u64`).
    Big(u64),
    /// `double`.
    Double(f64),
    Str(&'a str),
}

/// `JTokenType` of a [`Prim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Null,
    Boolean,
    Integer,
    Float,
    String,
}

impl Prim<'_> {
    fn ty(&self) -> Ty {
        match self {
            Prim::Null => Ty::Null,
            Prim::Bool(_) => Ty::Boolean,
            Prim::Long(_) | Prim::Big(_) => Ty::Integer,
            Prim::Double(_) => Ty::Float,
            Prim::Str(_) => Ty::String,
        }
    }
}

fn eval_err(message: impl Into<String>) -> JsonPathError {
    JsonPathError::Evaluation {
        message: message.into(),
    }
}

/// `JValue.CompareTo(JValue)`: the comparison type is the left's, except that a string compared to
/// a non-string takes the other side's type (so `"26" > 3` converts the string to a long).
pub(crate) fn compare_to(a: Prim<'_>, b: Prim<'_>) -> Result<Ordering, JsonPathError> {
    let ty = if a.ty() == Ty::String && b.ty() != Ty::String {
        b.ty()
    } else {
        a.ty()
    };
    compare(ty, a, b)
}

/// `JValue.Compare(valueType, objA, objB)`.
fn compare(ty: Ty, a: Prim<'_>, b: Prim<'_>) -> Result<Ordering, JsonPathError> {
    match (a, b) {
        (Prim::Null, Prim::Null) => return Ok(Ordering::Equal),
        (_, Prim::Null) => return Ok(Ordering::Greater),
        (Prim::Null, _) => return Ok(Ordering::Less),
        _ => {}
    }
    match ty {
        Ty::Integer | Ty::Float => {
            if let Prim::Big(x) = a {
                return compare_big(i128::from(x), b);
            }
            if let Prim::Big(y) = b {
                return compare_big(i128::from(y), a).map(Ordering::reverse);
            }
            if ty == Ty::Float || matches!(a, Prim::Double(_)) || matches!(b, Prim::Double(_)) {
                Ok(compare_float(to_double(a)?, to_double(b)?))
            } else {
                Ok(to_long(a)?.cmp(&to_long(b)?))
            }
        }
        Ty::String => Ok(ordinal(&to_string(a), &to_string(b))),
        Ty::Boolean => Ok(to_bool(a)?.cmp(&to_bool(b)?)),
        // Unreachable with two non-null values; .NET throws ArgumentOutOfRangeException.
        Ty::Null => Err(eval_err("unexpected value type: Null")),
    }
}

/// `string.CompareOrdinal`: UTF-16 code unit order (differs from UTF-8 byte order above U+FFFF).
fn ordinal(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// `JValue.CompareFloat`: equal within Json.NET's `MathUtils.ApproxEquals` tolerance, else
/// `double.CompareTo` (NaN sorts first and equals NaN).
fn compare_float(d1: f64, d2: f64) -> Ordering {
    if approx_equals(d1, d2) {
        return Ordering::Equal;
    }
    match d1.partial_cmp(&d2) {
        Some(o) => o,
        None => match (d1.is_nan(), d2.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            _ => Ordering::Greater,
        },
    }
}

fn approx_equals(d1: f64, d2: f64) -> bool {
    const EPSILON: f64 = 2.220_446_049_250_313e-16;
    if d1 == d2 {
        return true;
    }
    let tolerance = (d1.abs() + d2.abs() + 10.0) * EPSILON;
    let difference = d1 - d2;
    -tolerance < difference && tolerance > difference
}

/// `JValue.CompareBigInteger(i1, i2)`: `i2` converted with `ConvertUtils.ToBigInteger`
/// (a double is truncated, then a fractional part makes `i1` compare as smaller).
fn compare_big(i1: i128, other: Prim<'_>) -> Result<Ordering, JsonPathError> {
    match other {
        Prim::Big(u) => Ok(i1.cmp(&i128::from(u))),
        Prim::Long(l) => Ok(i1.cmp(&i128::from(l))),
        Prim::Str(s) => Ok(match parse_big_integer(s) {
            Some(BigParse::Fits(v)) => i1.cmp(&v),
            Some(BigParse::Huge(positive)) => {
                if positive {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            None => return Err(eval_err(format!("cannot convert '{s}' to BigInteger"))),
        }),
        Prim::Double(d) => {
            if !d.is_finite() {
                return Err(eval_err(
                    "value was either too large or too small for a BigInteger",
                ));
            }
            let t = d.trunc();
            // 2^127: beyond it the truncated double is outside i128 and beyond any u64 value.
            const LIMIT: f64 = 1.701_411_834_604_692_3e38;
            let ord = if t >= LIMIT {
                Ordering::Less
            } else if t < -LIMIT {
                Ordering::Greater
            } else {
                // In range: the cast is exact for an integral double of this size.
                i1.cmp(&(t as i128))
            };
            if ord != Ordering::Equal {
                return Ok(ord);
            }
            // `(0d).CompareTo(Math.Abs(d - Math.Truncate(d)))`
            Ok(if (d - t).abs() == 0.0 {
                Ordering::Equal
            } else {
                Ordering::Less
            })
        }
        Prim::Bool(_) => Err(eval_err("cannot convert Boolean to BigInteger")),
        Prim::Null => Ok(Ordering::Greater),
    }
}

enum BigParse {
    Fits(i128),
    /// Too large for i128 (so beyond every u64); the flag is the sign.
    Huge(bool),
}

/// `BigInteger.Parse(s, InvariantCulture)` (NumberStyles.Integer).
fn parse_big_integer(s: &str) -> Option<BigParse> {
    let (negative, digits) = split_integer(s)?;
    let mut v: i128 = 0;
    for d in digits.bytes() {
        match v
            .checked_mul(10)
            .and_then(|x| x.checked_add(i128::from(d - b'0')))
        {
            Some(x) => v = x,
            None => return Some(BigParse::Huge(!negative)),
        }
    }
    Some(BigParse::Fits(if negative { -v } else { v }))
}

/// .NET "white" characters for number parsing (NumberStyles.AllowLeading/TrailingWhite).
fn is_number_white(c: char) -> bool {
    matches!(c, '\u{9}'..='\u{d}' | ' ')
}

/// NumberStyles.Integer: optional white, optional sign, ASCII digits, optional white (and trailing
/// NULs). Returns (negative, digits).
fn split_integer(s: &str) -> Option<(bool, &str)> {
    let s = s.trim_end_matches('\0').trim_matches(is_number_white);
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((negative, digits))
}

/// `long.TryParse(s, NumberStyles.Integer, InvariantCulture)`.
pub(crate) fn parse_long(s: &str) -> Option<i64> {
    let (negative, digits) = split_integer(s)?;
    let mut v: i64 = 0;
    for d in digits.bytes() {
        let d = i64::from(d - b'0');
        v = v.checked_mul(10)?;
        v = if negative {
            v.checked_sub(d)?
        } else {
            v.checked_add(d)?
        };
    }
    Some(v)
}

/// `double.TryParse(s, NumberStyles.Float | NumberStyles.AllowThousands, InvariantCulture)` as on
/// .NET Core 3.0+ (correctly rounded; overflow gives ±Infinity; "Infinity"/"NaN" accepted).
pub(crate) fn parse_double(s: &str) -> Option<f64> {
    let s = s.trim_end_matches('\0').trim_matches(is_number_white);
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let sign = if negative { -1.0 } else { 1.0 };
    if body.eq_ignore_ascii_case("infinity") || body == "∞" {
        return Some(sign * f64::INFINITY);
    }
    if body.eq_ignore_ascii_case("nan") {
        return Some(f64::NAN);
    }
    // Rebuild a plain decimal literal for Rust's (correctly rounded) parser.
    let mut clean = String::with_capacity(body.len() + 1);
    if negative {
        clean.push('-');
    }
    let bytes = body.as_bytes();
    let mut i = 0;
    let mut int_digits = 0usize;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_digit() {
            clean.push(char::from(b));
            int_digits += 1;
        } else if b == b',' && int_digits > 0 {
            // Group separator: accepted anywhere after the first integer digit.
        } else {
            break;
        }
        i += 1;
    }
    let mut frac_digits = 0usize;
    if i < bytes.len() && bytes[i] == b'.' {
        clean.push('.');
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            clean.push(char::from(bytes[i]));
            frac_digits += 1;
            i += 1;
        }
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        let mut j = i + 1;
        let mut exp = String::from("e");
        if j < bytes.len() && (bytes[j] == b'+' || bytes[j] == b'-') {
            exp.push(char::from(bytes[j]));
            j += 1;
        }
        let exp_start = j;
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            exp.push(char::from(bytes[j]));
            j += 1;
        }
        if j > exp_start {
            clean.push_str(&exp);
            i = j;
        }
    }
    if i != bytes.len() {
        return None;
    }
    if clean.ends_with('.') {
        clean.push('0');
    }
    if clean.starts_with('.') || clean.starts_with("-.") {
        clean = clean.replacen('.', "0.", 1);
    }
    clean.parse::<f64>().ok()
}

/// `Convert.ToInt64(object, InvariantCulture)` for the values that reach it.
fn to_long(p: Prim<'_>) -> Result<i64, JsonPathError> {
    match p {
        Prim::Long(l) => Ok(l),
        Prim::Bool(b) => Ok(i64::from(b)),
        Prim::Str(s) => parse_long(s)
            .ok_or_else(|| eval_err(format!("cannot convert '{s}' to Int64 for comparison"))),
        Prim::Big(u) => i64::try_from(u).map_err(|_| eval_err("value was too large for an Int64")),
        Prim::Double(d) => {
            // Convert.ToInt64(double) rounds half to even; unreachable from Compare (doubles take the
            // float path) but kept total.
            let r = d.round_ties_even();
            if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&r) {
                Ok(r as i64)
            } else {
                Err(eval_err("value was too large for an Int64"))
            }
        }
        Prim::Null => Ok(0),
    }
}

/// `Convert.ToDouble(object, InvariantCulture)` for the values that reach it.
fn to_double(p: Prim<'_>) -> Result<f64, JsonPathError> {
    match p {
        Prim::Double(d) => Ok(d),
        // Same rounding as .NET's long -> double conversion (round to nearest).
        Prim::Long(l) => Ok(l as f64),
        Prim::Big(u) => Ok(u as f64),
        Prim::Bool(b) => Ok(if b { 1.0 } else { 0.0 }),
        Prim::Str(s) => parse_double(s)
            .ok_or_else(|| eval_err(format!("cannot convert '{s}' to Double for comparison"))),
        Prim::Null => Ok(0.0),
    }
}

/// `Convert.ToBoolean(object, InvariantCulture)` for the values that reach it.
fn to_bool(p: Prim<'_>) -> Result<bool, JsonPathError> {
    match p {
        Prim::Bool(b) => Ok(b),
        Prim::Long(l) => Ok(l != 0),
        Prim::Double(d) => Ok(d != 0.0),
        Prim::Str(s) => {
            let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
            if t.eq_ignore_ascii_case("true") {
                Ok(true)
            } else if t.eq_ignore_ascii_case("false") {
                Ok(false)
            } else {
                Err(eval_err(format!(
                    "cannot convert '{s}' to Boolean for comparison"
                )))
            }
        }
        Prim::Big(_) => Err(eval_err("cannot convert BigInteger to Boolean")),
        Prim::Null => Ok(false),
    }
}

/// `Convert.ToString(object, InvariantCulture)`; only strings reach it from `Compare`.
fn to_string(p: Prim<'_>) -> String {
    match p {
        Prim::Str(s) => s.to_owned(),
        Prim::Long(l) => l.to_string(),
        Prim::Big(u) => u.to_string(),
        Prim::Double(d) => d.to_string(),
        Prim::Bool(b) => (if b { "True" } else { "False" }).to_owned(),
        Prim::Null => String::new(),
    }
}

/// `JValue.Equals` (`ValuesEquals`): same token type and `Compare == 0`.
fn values_equal(a: Prim<'_>, b: Prim<'_>) -> Result<bool, JsonPathError> {
    Ok(a.ty() == b.ty() && compare(a.ty(), a, b)? == Ordering::Equal)
}

fn int_float_mix(a: Prim<'_>, b: Prim<'_>) -> bool {
    matches!(
        (a.ty(), b.ty()),
        (Ty::Integer, Ty::Float) | (Ty::Float, Ty::Integer)
    )
}

/// `EqualsWithStringCoercion(value, queryValue)` (`==`, and `!=` negated).
///
/// Numbers of both kinds compare numerically; a string never equals a number or boolean. The
/// "string coercion" in Json.NET only applies to Date/Bytes/Guid/TimeSpan/Uri tokens, which
/// do not exist here.
pub(crate) fn equals_coercion(a: Prim<'_>, b: Prim<'_>) -> Result<bool, JsonPathError> {
    if values_equal(a, b)? {
        return Ok(true);
    }
    if int_float_mix(a, b) {
        return Ok(compare(a.ty(), a, b)? == Ordering::Equal);
    }
    Ok(false)
}

/// `EqualsWithStrictMatch(value, queryValue)` (`===`, and `!==` negated).
pub(crate) fn equals_strict(a: Prim<'_>, b: Prim<'_>) -> Result<bool, JsonPathError> {
    if int_float_mix(a, b) {
        return Ok(compare(a.ty(), a, b)? == Ordering::Equal);
    }
    if a.ty() != b.ty() {
        return Ok(false);
    }
    values_equal(a, b)
}

/// Splits a Json.NET regex string `/pattern/flags` and compiles it with the `regex` crate.
///
/// Like `RegexEquals`: the text between the first character and the last `/` is the pattern, the
/// rest are options (`i` ignore case, `m` multi-line, `s` single-line; `x` and anything else ignored).
pub(crate) fn compile_regex(text: &str) -> Result<Regex, String> {
    let slash = text.rfind('/').unwrap_or(0);
    let mut chars = text.char_indices();
    let first_len = chars.next().map(|(_, c)| c.len_utf8()).unwrap_or(0);
    if slash == 0 || slash < first_len {
        // .NET: Substring(1, LastIndexOf('/') - 1) with a negative length.
        return Err(format!(
            "'{text}' is not a /pattern/flags regex (length cannot be less than zero)"
        ));
    }
    let pattern = &text[first_len..slash];
    let options = &text[slash + 1..];
    RegexBuilder::new(pattern)
        .case_insensitive(options.contains('i'))
        .multi_line(options.contains('m'))
        .dot_matches_new_line(options.contains('s'))
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regex '{pattern}': {e}"))
}

/// `RegexEquals(input, pattern)`: false unless both are strings.
pub(crate) fn regex_equals(
    input: Prim<'_>,
    pattern: Prim<'_>,
    cached: Option<&Result<Regex, String>>,
) -> Result<bool, JsonPathError> {
    let (Prim::Str(input), Prim::Str(pattern)) = (input, pattern) else {
        return Ok(false);
    };
    let compiled;
    let re = match cached {
        Some(r) => r,
        None => {
            compiled = compile_regex(pattern);
            &compiled
        }
    };
    match re {
        Ok(re) => Ok(re.is_match(input)),
        Err(message) => Err(JsonPathError::Evaluation {
            message: message.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_long_follows_number_styles_integer() {
        assert_eq!(parse_long("42"), Some(42));
        assert_eq!(parse_long(" -7\t"), Some(-7));
        assert_eq!(parse_long("+3"), Some(3));
        assert_eq!(parse_long("9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_long("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_long("9223372036854775808"), None);
        assert_eq!(parse_long("1.0"), None);
        assert_eq!(parse_long("1,000"), None);
        assert_eq!(parse_long("-"), None);
        assert_eq!(parse_long(""), None);
        assert_eq!(parse_long("١"), None);
    }

    #[test]
    fn parse_double_follows_number_styles_float_with_thousands() {
        assert_eq!(parse_double("12.1"), Some(12.1));
        assert_eq!(parse_double("5.56789e+0"), Some(5.56789));
        assert_eq!(parse_double("1,000.5"), Some(1000.5));
        assert_eq!(parse_double("1."), Some(1.0));
        assert_eq!(parse_double("-.5"), Some(-0.5));
        assert_eq!(parse_double("1e999"), Some(f64::INFINITY));
        assert_eq!(parse_double("-Infinity"), Some(f64::NEG_INFINITY));
        assert!(parse_double("NaN").is_some_and(f64::is_nan));
        assert_eq!(parse_double(",5.0"), None);
        assert_eq!(parse_double("1e"), None);
        assert_eq!(parse_double("1.0.0"), None);
        assert_eq!(parse_double("."), None);
        assert_eq!(parse_double("abc"), None);
    }

    #[test]
    fn compare_to_takes_the_non_string_type() {
        // "214376" > 10: the string is converted to a long (Json.NET issue 1518).
        assert_eq!(
            compare_to(Prim::Str("214376"), Prim::Long(10)).ok(),
            Some(Ordering::Greater)
        );
        // 26 > "3": the right string is converted to a long.
        assert_eq!(
            compare_to(Prim::Long(26), Prim::Str("3")).ok(),
            Some(Ordering::Greater)
        );
        // a non-numeric string against a number is a conversion error, as in .NET.
        assert!(compare_to(Prim::Str("abc"), Prim::Long(1)).is_err());
        // strings compare ordinally
        assert_eq!(
            compare_to(Prim::Str("B"), Prim::Str("a")).ok(),
            Some(Ordering::Less)
        );
        // null sorts first
        assert_eq!(
            compare_to(Prim::Null, Prim::Long(1)).ok(),
            Some(Ordering::Less)
        );
        assert_eq!(
            compare_to(Prim::Str("x"), Prim::Null).ok(),
            Some(Ordering::Greater)
        );
        // booleans convert numbers (non-zero is true)
        assert_eq!(
            compare_to(Prim::Bool(true), Prim::Long(5)).ok(),
            Some(Ordering::Equal)
        );
        assert_eq!(
            compare_to(Prim::Long(5), Prim::Bool(true)).ok(),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn ordinal_is_utf16_order() {
        // U+FF5E (one UTF-16 unit 0xFF5E) sorts after U+1F600 (surrogates 0xD83D...) in UTF-16,
        // but before it in UTF-8 byte / code point order.
        assert_eq!(ordinal("\u{FF5E}", "\u{1F600}"), Ordering::Greater);
        assert_eq!("\u{FF5E}".cmp("\u{1F600}"), Ordering::Less);
    }

    #[test]
    fn float_comparison_is_approximate() {
        assert_eq!(compare_float(0.1 + 0.2, 0.3), Ordering::Equal);
        assert_eq!(compare_float(1.0, 1.000001), Ordering::Less);
    }

    #[test]
    fn equality_rules() {
        assert!(equals_coercion(Prim::Long(1), Prim::Double(1.0)).unwrap_or(false));
        assert!(!equals_coercion(Prim::Long(1), Prim::Str("1")).unwrap_or(true));
        assert!(!equals_coercion(Prim::Str("1"), Prim::Long(1)).unwrap_or(true));
        assert!(equals_coercion(Prim::Null, Prim::Null).unwrap_or(false));
        assert!(!equals_coercion(Prim::Null, Prim::Str("null")).unwrap_or(true));
        assert!(equals_strict(Prim::Long(1), Prim::Double(1.0)).unwrap_or(false));
        assert!(!equals_strict(Prim::Long(1), Prim::Bool(true)).unwrap_or(true));
        assert!(!equals_strict(Prim::Long(1), Prim::Double(1.1)).unwrap_or(true));
        assert!(equals_coercion(Prim::Big(u64::MAX), Prim::Big(u64::MAX)).unwrap_or(false));
        assert!(!equals_coercion(Prim::Big(u64::MAX), Prim::Long(1)).unwrap_or(true));
    }

    #[test]
    fn big_integer_against_double() {
        let big = (1u64 << 63) + 2048; // exactly representable as f64
        assert_eq!(
            compare_to(Prim::Big(big), Prim::Double(big as f64)).ok(),
            Some(Ordering::Equal)
        );
        assert_eq!(
            compare_to(Prim::Big(big), Prim::Double(1e300)).ok(),
            Some(Ordering::Less)
        );
        assert!(compare_to(Prim::Big(big), Prim::Double(f64::INFINITY)).is_err());
        assert!(compare_to(Prim::Big(big), Prim::Bool(true)).is_err());
    }

    #[test]
    fn regex_split_and_flags() {
        let re = compile_regex("/hi/i");
        assert!(re.as_ref().is_ok_and(|r| r.is_match("say HI")));
        assert!(compile_regex("noslash").is_err());
        assert!(compile_regex("/").is_err());
        assert!(compile_regex("").is_err());
        // the first character is dropped whatever it is
        assert!(compile_regex("xab/").is_ok_and(|r| r.is_match("ab")));
        assert!(compile_regex("/(a/").is_err());
        assert!(!regex_equals(Prim::Long(1), Prim::Str("/1/"), None).unwrap_or(true));
    }
}
