//! Borrowed JSON documents for incoming messages, and the tree interface the evaluators use.
//!
//! [`Node`] is what a message is parsed into on the hot path: strings without escapes borrow
//! from the message text, objects are member vectors in document order (no hash map, no key
//! `String` per member). It is built by `serde_json`'s own parser (a `Deserialize` impl, no
//! tokenizer of ours), so it accepts and rejects exactly the texts `serde_json::Value` does,
//! with the same errors, and holds the same numbers (`serde_json::Number`, built from the same
//! `u64` / `i64` / `f64` the parser reports).
//!
//! Invariant: a [`Node`] is the same tree as the `serde_json::Value` (with `preserve_order`)
//! parsed from the same text. In particular a key repeated in an object keeps the position of
//! its first occurrence and the value of its last one, as `IndexMap::insert` does; so keys are
//! unique within an object and finding a member by a scan gives the member a map lookup gives.
//!
//! [`JsonTree`] is the read interface the JSONPath evaluator and the measurement extraction
//! are generic over; it is implemented for `serde_json::Value` and for [`Node`], and every
//! method gives the same answer on both for the same document.

use super::jmes::{JmesError, JmesExpr};
use super::jsonpath::Prim;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// A JSON value whose strings may borrow from the text it was parsed from.
#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    /// Members in document order, keys unique (see the module invariant).
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// Parses `text` exactly as `serde_json::from_str::<Value>` would (same acceptance, same
    /// errors, same tree), borrowing unescaped strings from `text`.
    pub fn parse(text: &'a str) -> Result<Node<'a>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let node = de::Deserialize::deserialize(&mut de)?;
        de.end()?;
        Ok(node)
    }

    /// The equivalent `serde_json::Value`.
    pub fn to_value(&self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Number(n) => Value::Number(n.clone()),
            Node::Str(s) => Value::String(s.as_ref().to_owned()),
            Node::Array(a) => Value::Array(a.iter().map(Node::to_value).collect()),
            Node::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.as_ref().to_owned(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// The equivalent owned node of a `serde_json::Value`.
    pub fn from_value(v: Value) -> Node<'static> {
        match v {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(b),
            Value::Number(n) => Node::Number(n),
            Value::String(s) => Node::Str(Cow::Owned(s)),
            Value::Array(a) => Node::Array(a.into_iter().map(Node::from_value).collect()),
            Value::Object(m) => Node::Object(
                m.into_iter()
                    .map(|(k, v)| (Cow::Owned(k), Node::from_value(v)))
                    .collect(),
            ),
        }
    }

    /// The value of member `name`, when this is an object that has it.
    pub fn get(&self, name: &str) -> Option<&Node<'a>> {
        match self {
            Node::Object(m) => m.iter().find(|(k, _)| k.as_ref() == name).map(|(_, v)| v),
            _ => None,
        }
    }
}

// === parsing ===

impl<'de> de::Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    // The number visitors build `Number` the way `serde_json::Value`'s visitor does.
    fn visit_bool<E>(self, b: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Node<'de>, E> {
        Ok(Node::Number(i.into()))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Node<'de>, E> {
        Ok(Node::Number(u.into()))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Node<'de>, E> {
        Ok(Number::from_f64(f).map_or(Node::Null, Node::Number))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Owned(s)))
    }
    fn visit_none<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node<'de>, D::Error> {
        de::Deserialize::deserialize(d)
    }
    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut v = Vec::new();
        while let Some(e) = seq.next_element()? {
            v.push(e);
        }
        Ok(Node::Array(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut members: Vec<(Cow<'de, str>, Node<'de>)> = Vec::new();
        while let Some(Key(k)) = map.next_key_seed(KeySeed)? {
            let v = map.next_value()?;
            members.push((k, v));
        }
        dedup_members(&mut members);
        Ok(Node::Object(members))
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct Key<'de>(Cow<'de, str>);

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key<'de>, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(s)))
    }
}

/// Objects up to this many members are checked for repeated keys by pairwise comparison;
/// larger ones through a hash map (so a hostile message cannot make the parse quadratic).
const SCAN_KEYS: usize = 16;

/// Resolves repeated keys as `IndexMap::insert` does: the first occurrence's position, the
/// last occurrence's value.
fn dedup_members(members: &mut Vec<(Cow<'_, str>, Node<'_>)>) {
    let n = members.len();
    if n < 2 {
        return;
    }
    // first[j] = Some(i) when key j repeats the earlier key i (i its first occurrence).
    let mut first: Vec<Option<usize>> = Vec::new();
    if n <= SCAN_KEYS {
        for j in 1..n {
            if let Some(i) = (0..j).find(|&i| members[i].0 == members[j].0) {
                if first.is_empty() {
                    first = vec![None; n];
                }
                first[j] = Some(i);
            }
        }
    } else {
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(n);
        for (j, (k, _)) in members.iter().enumerate() {
            match seen.get(k.as_ref()) {
                Some(&i) => {
                    if first.is_empty() {
                        first = vec![None; n];
                    }
                    first[j] = Some(i);
                }
                None => {
                    seen.insert(k.as_ref(), j);
                }
            }
        }
    }
    if first.is_empty() {
        return;
    }
    // Move each repeated value to its first position (later ones overwrite earlier ones),
    // then drop the repeats.
    for j in 0..n {
        if let Some(i) = first[j] {
            let v = std::mem::replace(&mut members[j].1, Node::Null);
            members[i].1 = v;
        }
    }
    let mut j = 0;
    members.retain(|_| {
        let keep = first[j].is_none();
        j += 1;
        keep
    });
}

// === the tree interface ===

/// A scalar or the kind of a container, as the conversions see a token.
#[derive(Debug, Clone, Copy)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    Number(&'a Number),
    Str(&'a str),
    Array,
    Object,
}

/// Read access to a JSON tree, the same for `serde_json::Value` and [`Node`] (see the module
/// doc). Also the two mutations CalculatedContent's `matchedToken` needs, and JMESPath.
pub trait JsonTree: Sized + Clone + fmt::Debug {
    /// An object's members in document order.
    type Members<'s>: Iterator<Item = (&'s str, &'s Self)>
    where
        Self: 's;

    /// The scalar, or which container this is.
    fn scalar(&self) -> Scalar<'_>;
    /// Members, when this is an object.
    fn members(&self) -> Option<Self::Members<'_>>;
    /// Elements, when this is an array.
    fn elements(&self) -> Option<&[Self]>;
    /// Member `name`, when this is an object that has it.
    fn member(&self, name: &str) -> Option<&Self>;

    fn is_object(&self) -> bool {
        matches!(self.scalar(), Scalar::Object)
    }
    fn is_container(&self) -> bool {
        matches!(self.scalar(), Scalar::Object | Scalar::Array)
    }

    /// Sets member `name` (in place when present, else at the end). `None` when this is not
    /// an object; otherwise the previous value, for [`JsonTree::restore_member`].
    fn insert_member(&mut self, name: &'static str, v: Self) -> Option<Option<Self>>;
    /// Undoes [`JsonTree::insert_member`].
    fn restore_member(&mut self, name: &'static str, previous: Option<Self>);

    /// JMESPath `select_all` on this tree.
    fn jmes_all(e: &JmesExpr, data: &Self) -> Result<Vec<Self>, JmesError>;
    /// JMESPath `select_one` on this tree.
    fn jmes_one(e: &JmesExpr, data: &Self) -> Result<Option<Self>, JmesError>;
}

/// Json.NET's boxing of a scalar for comparisons; `None` for containers.
pub(crate) fn prim<T: JsonTree>(v: &T) -> Option<Prim<'_>> {
    Some(match v.scalar() {
        Scalar::Null => Prim::Null,
        Scalar::Bool(b) => Prim::Bool(b),
        Scalar::Number(n) => {
            if let Some(i) = n.as_i64() {
                Prim::Long(i)
            } else if let Some(u) = n.as_u64() {
                Prim::Big(u)
            } else {
                // Without arbitrary_precision every other number is representable as f64.
                Prim::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Scalar::Str(s) => Prim::Str(s),
        Scalar::Array | Scalar::Object => return None,
    })
}

type ValueMembers<'s> =
    std::iter::Map<serde_json::map::Iter<'s>, fn((&'s String, &'s Value)) -> (&'s str, &'s Value)>;

impl JsonTree for Value {
    type Members<'s> = ValueMembers<'s>;

    fn scalar(&self) -> Scalar<'_> {
        match self {
            Value::Null => Scalar::Null,
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Number(n) => Scalar::Number(n),
            Value::String(s) => Scalar::Str(s),
            Value::Array(_) => Scalar::Array,
            Value::Object(_) => Scalar::Object,
        }
    }
    fn members<'s>(&'s self) -> Option<ValueMembers<'s>> {
        let f: fn((&'s String, &'s Value)) -> (&'s str, &'s Value) = |(k, v)| (k.as_str(), v);
        match self {
            Value::Object(m) => Some(m.iter().map(f)),
            _ => None,
        }
    }
    fn elements(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    fn member(&self, name: &str) -> Option<&Value> {
        let Value::Object(m) = self else { return None };
        // Small objects (device messages are mostly a handful of members per level) are
        // scanned, which is cheaper than hashing the name; keys are unique, so both give the
        // same member.
        if m.len() <= 8 {
            m.iter().find(|(k, _)| k.as_str() == name).map(|(_, v)| v)
        } else {
            m.get(name)
        }
    }
    fn insert_member(&mut self, name: &'static str, v: Value) -> Option<Option<Value>> {
        let Value::Object(m) = self else { return None };
        Some(m.insert(name.to_owned(), v))
    }
    fn restore_member(&mut self, name: &'static str, previous: Option<Value>) {
        if let Value::Object(m) = self {
            match previous {
                Some(p) => {
                    m.insert(name.to_owned(), p);
                }
                None => {
                    m.shift_remove(name);
                }
            }
        }
    }
    fn jmes_all(e: &JmesExpr, data: &Value) -> Result<Vec<Value>, JmesError> {
        e.select_all(data)
    }
    fn jmes_one(e: &JmesExpr, data: &Value) -> Result<Option<Value>, JmesError> {
        e.select_one(data)
    }
}

type Member<'a> = (Cow<'a, str>, Node<'a>);
type MemberRef<'s, 'a> = fn(&'s Member<'a>) -> (&'s str, &'s Node<'a>);
type NodeMembers<'s, 'a> = std::iter::Map<std::slice::Iter<'s, Member<'a>>, MemberRef<'s, 'a>>;

fn node_member<'s, 'a>(m: &'s Member<'a>) -> (&'s str, &'s Node<'a>) {
    (m.0.as_ref(), &m.1)
}

impl<'a> JsonTree for Node<'a> {
    type Members<'s>
        = NodeMembers<'s, 'a>
    where
        Self: 's;

    fn scalar(&self) -> Scalar<'_> {
        match self {
            Node::Null => Scalar::Null,
            Node::Bool(b) => Scalar::Bool(*b),
            Node::Number(n) => Scalar::Number(n),
            Node::Str(s) => Scalar::Str(s),
            Node::Array(_) => Scalar::Array,
            Node::Object(_) => Scalar::Object,
        }
    }
    fn members<'s>(&'s self) -> Option<NodeMembers<'s, 'a>> {
        let f: MemberRef<'s, 'a> = node_member;
        match self {
            Node::Object(m) => Some(m.iter().map(f)),
            _ => None,
        }
    }
    fn elements(&self) -> Option<&[Node<'a>]> {
        match self {
            Node::Array(a) => Some(a),
            _ => None,
        }
    }
    fn member(&self, name: &str) -> Option<&Node<'a>> {
        self.get(name)
    }
    fn insert_member(&mut self, name: &'static str, v: Node<'a>) -> Option<Option<Node<'a>>> {
        let Node::Object(m) = self else { return None };
        match m.iter_mut().find(|(k, _)| k.as_ref() == name) {
            Some((_, slot)) => Some(Some(std::mem::replace(slot, v))),
            None => {
                m.push((Cow::Borrowed(name), v));
                Some(None)
            }
        }
    }
    fn restore_member(&mut self, name: &'static str, previous: Option<Node<'a>>) {
        let Node::Object(m) = self else { return };
        let Some(pos) = m.iter().position(|(k, _)| k.as_ref() == name) else {
            return;
        };
        match previous {
            Some(p) => m[pos].1 = p,
            None => {
                m.remove(pos);
            }
        }
    }
    // JMESPath runs on `serde_json::Value`s: the tree is converted (correct, not fast; the
    // text entry point sends mappings with JMESPath through `Value` instead).
    fn jmes_all(e: &JmesExpr, data: &Node<'a>) -> Result<Vec<Node<'a>>, JmesError> {
        Ok(e.select_all(&data.to_value())?
            .into_iter()
            .map(Node::from_value)
            .collect())
    }
    fn jmes_one(e: &JmesExpr, data: &Node<'a>) -> Result<Option<Node<'a>>, JmesError> {
        Ok(e.select_one(&data.to_value())?.map(Node::from_value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(text: &str) {
        let v: Result<Value, _> = serde_json::from_str(text);
        let n = Node::parse(text);
        match (v, n) {
            // As text: `Value` equality ignores member order, the text does not.
            (Ok(v), Ok(n)) => assert_eq!(
                serde_json::to_string(&n.to_value()).unwrap(),
                serde_json::to_string(&v).unwrap(),
                "{text}"
            ),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
            (v, n) => panic!("{text}: value {v:?}, node {n:?}"),
        }
    }

    #[test]
    fn parses_like_value() {
        for t in [
            r#"{"a":1,"b":[1,-2,3.5,-0,1e3,72.0,18446744073709551615,18446744073709551616,-9223372036854775809],"c":{"d":null,"e":true}}"#,
            r#"{"a":1,"b":2,"a":3}"#,
            r#"{"a":1,"b":2,"a":3,"b":{"x":1,"x":2},"c":0,"a":4}"#,
            r#"{"k\u0041":"v\n","kA":"w"}"#,
            r#"  [1, "x", {"y": "z"}]  "#,
            r#"{"a":1} x"#,
            r#"{"a":1,}"#,
            r#"{"a":1e400}"#,
            r#"[1,2"#,
            r#""\ud800""#,
            "",
            "nul",
        ] {
            same(t);
        }
        let big: String = format!(
            "{{{}}}",
            (0..40)
                .map(|i| format!("\"k{}\":{i}", i % 23))
                .collect::<Vec<_>>()
                .join(",")
        );
        same(&big);
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        same(&deep);
    }

    #[test]
    fn unescaped_strings_borrow() {
        let n = Node::parse(r#"{"a":"plain","b\n":"esc\t"}"#).unwrap();
        let Node::Object(m) = &n else {
            panic!("object")
        };
        assert!(matches!(m[0].0, Cow::Borrowed(_)));
        assert!(matches!(m[0].1, Node::Str(Cow::Borrowed(_))));
        assert!(matches!(m[1].0, Cow::Owned(_)));
        assert!(matches!(m[1].1, Node::Str(Cow::Owned(_))));
    }

    #[test]
    fn matched_token_insertion_round_trips() {
        for text in [r#"{"a":1,"matchedToken":2,"b":3}"#, r#"{"a":1}"#] {
            let mut n = Node::parse(text).unwrap();
            let mut v: Value = serde_json::from_str(text).unwrap();
            let pn = n.insert_member("matchedToken", Node::Bool(true)).unwrap();
            let pv = v.insert_member("matchedToken", Value::Bool(true)).unwrap();
            assert_eq!(n.to_value(), v);
            n.restore_member("matchedToken", pn);
            v.restore_member("matchedToken", pv);
            assert_eq!(n.to_value(), v);
            assert_eq!(v, serde_json::from_str::<Value>(text).unwrap());
        }
        assert!(Node::Null
            .insert_member("matchedToken", Node::Null)
            .is_none());
    }
}
