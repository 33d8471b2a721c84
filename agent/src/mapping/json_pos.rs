//! Line and column of every value in a JSON text, keyed by JSON pointer.
//!
//! `serde_json::Value` forgets where things were. Template errors must name a line and a
//! column (as upstream's `Line Number: n, Position: m`), so the loaders parse with serde_json
//! and then ask this index where a member or value starts. The scanner assumes the text is
//! valid JSON (serde_json already accepted it); on anything unexpected it simply stops adding
//! positions, it never fails.

use std::collections::HashMap;

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// Positions of values (pointer) and of member names (pointer + `#key`).
#[derive(Debug, Default)]
pub struct PosIndex {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

impl PosIndex {
    /// Scans `text` (BOM already stripped).
    pub fn build(text: &str) -> PosIndex {
        let mut s = Scanner {
            chars: text.char_indices().peekable(),
            line: 1,
            col: 1,
            idx: PosIndex::default(),
        };
        s.skip_ws();
        s.value(String::new(), 0);
        s.idx
    }

    /// Where the value at `pointer` starts (`""` is the root).
    pub fn value(&self, pointer: &str) -> Option<Pos> {
        self.values.get(pointer).copied()
    }

    /// Where the member name of the value at `pointer` starts; falls back to the value.
    pub fn key_or_value(&self, pointer: &str) -> Option<Pos> {
        self.keys
            .get(pointer)
            .or_else(|| self.values.get(pointer))
            .copied()
    }
}

/// Escapes one reference token for a JSON pointer (RFC 6901).
pub fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// `pointer` + `/token`.
pub fn child(pointer: &str, token: &str) -> String {
    format!("{pointer}/{}", escape_token(token))
}

const MAX_DEPTH: usize = 512;

struct Scanner<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    line: usize,
    col: usize,
    idx: PosIndex,
}

impl Scanner<'_> {
    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.col,
        }
    }

    fn bump(&mut self) -> Option<char> {
        let (_, c) = self.chars.next()?;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|&(_, c)| c)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\r' | '\n')) {
            self.bump();
        }
    }

    fn string(&mut self) -> Option<String> {
        if self.bump()? != '"' {
            return None;
        }
        let mut out = String::new();
        loop {
            match self.bump()? {
                '"' => return Some(out),
                '\\' => {
                    let e = self.bump()?;
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'u' => {
                            let mut code = 0u32;
                            for _ in 0..4 {
                                code = code * 16 + self.bump()?.to_digit(16)?;
                            }
                            // Surrogate pairs: keys with astral characters are rare in templates;
                            // an unpaired surrogate just becomes U+FFFD.
                            if (0xD800..0xDC00).contains(&code) && self.peek() == Some('\\') {
                                self.bump();
                                if self.bump()? == 'u' {
                                    let mut low = 0u32;
                                    for _ in 0..4 {
                                        low = low * 16 + self.bump()?.to_digit(16)?;
                                    }
                                    let c = 0x10000
                                        + ((code - 0xD800) << 10)
                                        + (low.wrapping_sub(0xDC00) & 0x3FF);
                                    out.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                                    continue;
                                }
                            }
                            out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn value(&mut self, pointer: String, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.idx.values.insert(pointer.clone(), self.pos());
        match self.peek()? {
            '{' => {
                self.bump();
                self.skip_ws();
                if self.peek()? == '}' {
                    self.bump();
                    return Some(());
                }
                loop {
                    self.skip_ws();
                    let key_pos = self.pos();
                    let key = self.string()?;
                    let p = child(&pointer, &key);
                    self.idx.keys.insert(p.clone(), key_pos);
                    self.skip_ws();
                    if self.bump()? != ':' {
                        return None;
                    }
                    self.skip_ws();
                    self.value(p, depth + 1)?;
                    self.skip_ws();
                    match self.bump()? {
                        ',' => continue,
                        '}' => return Some(()),
                        _ => return None,
                    }
                }
            }
            '[' => {
                self.bump();
                self.skip_ws();
                if self.peek()? == ']' {
                    self.bump();
                    return Some(());
                }
                let mut i = 0usize;
                loop {
                    self.skip_ws();
                    self.value(format!("{pointer}/{i}"), depth + 1)?;
                    i += 1;
                    self.skip_ws();
                    match self.bump()? {
                        ',' => continue,
                        ']' => return Some(()),
                        _ => return None,
                    }
                }
            }
            '"' => self.string().map(|_| ()),
            _ => {
                while matches!(self.peek(), Some(c) if !matches!(c, ',' | '}' | ']' | ' ' | '\t' | '\r' | '\n'))
                {
                    self.bump();
                }
                Some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_values_and_keys() {
        let text = "{\n  \"a\": [1, {\"b/c\": \"x\"}],\n  \"d\": true\n}";
        let idx = PosIndex::build(text);
        assert_eq!(idx.value(""), Some(Pos { line: 1, column: 1 }));
        assert_eq!(idx.key_or_value("/a"), Some(Pos { line: 2, column: 3 }));
        assert_eq!(idx.value("/a"), Some(Pos { line: 2, column: 8 }));
        assert_eq!(
            idx.value("/a/1/b~1c"),
            Some(Pos {
                line: 2,
                column: 20
            })
        );
        assert_eq!(idx.key_or_value("/d"), Some(Pos { line: 3, column: 3 }));
    }

    #[test]
    fn garbage_does_not_panic() {
        for text in ["", "{", "[1,", "{\"a\"", "\"\\u12", "{\"a\":[}]"] {
            let _ = PosIndex::build(text);
        }
    }
}
