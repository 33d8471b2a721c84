//! HL7 v2 message parsing: segments, fields, repetitions, components and sub-components,
//! with the delimiters declared in MSH-1 / MSH-2 and the escape sequences resolved.
//!
//! Invariants:
//! - Segments are separated by CR; LF and CR LF are accepted too (serial links), empty
//!   segments are skipped. The first segment must be `MSH`.
//! - Every leaf string is unescaped exactly once (`\F\ \S\ \T\ \R\ \E\`, `\Xhh…\`, `\.br\`;
//!   highlighting `\H\ \N\` is dropped; unknown or unterminated sequences are kept
//!   literally). MSH-1 and MSH-2 are kept verbatim.
//! - Text is UTF-8; input that is not valid UTF-8 is read as ISO-8859-1 (every byte maps),
//!   which is what the older ward gateways send.
//! - Field numbers are 1-based as in the standard: `segment.field(10)` is MSH-10 for MSH too.

use super::Hl7Error;

/// The delimiters of a message (MSH-1 and MSH-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Field separator, usually `|`.
    pub field: char,
    /// Component separator, usually `^`.
    pub component: char,
    /// Repetition separator, usually `~`.
    pub repetition: char,
    /// Escape character, usually `\`.
    pub escape: char,
    /// Sub-component separator, usually `&`.
    pub subcomponent: char,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self {
            field: '|',
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
        }
    }
}

impl Delimiters {
    /// MSH-2 as written: component, repetition, escape, sub-component.
    pub fn encoding_characters(&self) -> String {
        [
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ]
        .iter()
        .collect()
    }

    /// Escapes `text` so it can be placed in a field leaf.
    pub fn escape(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            let seq = match c {
                c if c == self.field => "F",
                c if c == self.component => "S",
                c if c == self.subcomponent => "T",
                c if c == self.repetition => "R",
                c if c == self.escape => "E",
                '\r' => "X0D",
                '\n' => "X0A",
                _ => {
                    out.push(c);
                    continue;
                }
            };
            out.push(self.escape);
            out.push_str(seq);
            out.push(self.escape);
        }
        out
    }

    /// Resolves escape sequences in one leaf string.
    pub fn unescape(&self, text: &str) -> String {
        let esc = self.escape;
        if !text.contains(esc) {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(esc) {
            out.push_str(&rest[..start]);
            let after = &rest[start + esc.len_utf8()..];
            let Some(end) = after.find(esc) else {
                out.push_str(&rest[start..]);
                return out;
            };
            let seq = &after[..end];
            match seq {
                "F" => out.push(self.field),
                "S" => out.push(self.component),
                "T" => out.push(self.subcomponent),
                "R" => out.push(self.repetition),
                "E" => out.push(esc),
                ".br" => out.push('\n'),
                "H" | "N" => {}
                _ => match hex_bytes(seq) {
                    Some(bytes) => out.push_str(&String::from_utf8_lossy(&bytes)),
                    None => {
                        out.push(esc);
                        out.push_str(seq);
                        out.push(esc);
                    }
                },
            }
            rest = &after[end + esc.len_utf8()..];
        }
        out.push_str(rest);
        out
    }
}

/// `Xhhhh` → bytes, when well formed.
fn hex_bytes(seq: &str) -> Option<Vec<u8>> {
    let hex = seq.strip_prefix('X')?;
    if hex.is_empty() || hex.len() % 2 != 0 || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// One field: repetitions of components of sub-components, all unescaped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Field {
    reps: Vec<Vec<Vec<String>>>,
}

static EMPTY_FIELD: Field = Field { reps: Vec::new() };

impl Field {
    fn parse(raw: &str, d: &Delimiters) -> Self {
        let reps = raw
            .split(d.repetition)
            .map(|rep| {
                rep.split(d.component)
                    .map(|comp| comp.split(d.subcomponent).map(|s| d.unescape(s)).collect())
                    .collect()
            })
            .collect();
        Self { reps }
    }

    fn verbatim(raw: &str) -> Self {
        Self {
            reps: vec![vec![vec![raw.to_owned()]]],
        }
    }

    /// Sub-component `sub` of component `comp` of repetition `rep` (component and
    /// sub-component 1-based, repetition 0-based); `""` when absent.
    pub fn get(&self, rep: usize, comp: usize, sub: usize) -> &str {
        comp.checked_sub(1)
            .zip(sub.checked_sub(1))
            .and_then(|(c, s)| self.reps.get(rep)?.get(c)?.get(s))
            .map_or("", String::as_str)
    }

    /// First value (repetition 0, component 1, sub-component 1).
    pub fn value(&self) -> &str {
        self.get(0, 1, 1)
    }

    /// Component `comp` (1-based) of the first repetition, first sub-component.
    pub fn component(&self, comp: usize) -> &str {
        self.get(0, comp, 1)
    }

    /// Number of repetitions.
    pub fn repetitions(&self) -> usize {
        self.reps.len()
    }

    /// `true` when every leaf is empty.
    pub fn is_empty(&self) -> bool {
        self.reps.iter().flatten().flatten().all(String::is_empty)
    }

    /// Re-encodes the field with `d` (escaping leaves, dropping trailing empty parts).
    pub fn encode(&self, d: &Delimiters) -> String {
        let join = |parts: Vec<String>, sep: char| {
            let mut parts = parts;
            while parts.last().is_some_and(String::is_empty) {
                parts.pop();
            }
            parts.join(&sep.to_string())
        };
        join(
            self.reps
                .iter()
                .map(|rep| {
                    join(
                        rep.iter()
                            .map(|comp| {
                                join(comp.iter().map(|s| d.escape(s)).collect(), d.subcomponent)
                            })
                            .collect(),
                        d.component,
                    )
                })
                .collect(),
            d.repetition,
        )
    }
}

/// One segment; `fields[0]` is the segment name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    fields: Vec<Field>,
}

impl Segment {
    /// The three-character segment name.
    pub fn name(&self) -> &str {
        self.fields.first().map_or("", Field::value)
    }

    /// Field `n` (1-based; for MSH, 1 is the field separator and 2 the encoding characters).
    pub fn field(&self, n: usize) -> &Field {
        self.fields.get(n).unwrap_or(&EMPTY_FIELD)
    }

    /// Number of fields present, not counting the name.
    pub fn len(&self) -> usize {
        self.fields.len().saturating_sub(1)
    }

    /// `true` when the segment has no fields after its name.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parsed HL7 v2 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    delimiters: Delimiters,
    segments: Vec<Segment>,
}

impl Message {
    /// Parses a message (without MLLP framing).
    pub fn parse(bytes: &[u8]) -> Result<Self, Hl7Error> {
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t.to_owned(),
            Err(_) => bytes.iter().map(|b| char::from(*b)).collect(),
        };
        let mut lines = text.split(['\r', '\n']).filter(|l| !l.trim().is_empty());
        let first = lines.next().ok_or(Hl7Error::Empty)?;
        let (delimiters, msh) = parse_msh(first)?;
        let mut segments = vec![msh];
        for line in lines {
            segments.push(parse_segment(line, &delimiters)?);
        }
        Ok(Self {
            delimiters,
            segments,
        })
    }

    /// The message's delimiters.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    /// All segments in order (the first is MSH).
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The MSH segment.
    pub fn msh(&self) -> &Segment {
        // Invariant: parse() never builds a message without its MSH segment.
        &self.segments[0]
    }

    /// The first segment with this name.
    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name() == name)
    }
}

fn parse_msh(line: &str) -> Result<(Delimiters, Segment), Hl7Error> {
    let found = || Hl7Error::NoMsh {
        found: line.chars().take(8).collect(),
    };
    let rest = line.strip_prefix("MSH").ok_or_else(found)?;
    let mut chars = rest.chars();
    let field = chars.next().ok_or_else(found)?;
    let enc: String = chars.take_while(|c| *c != field).collect();
    let enc_chars: Vec<char> = enc.chars().collect();
    if enc_chars.len() < 4 {
        return Err(Hl7Error::BadDelimiters(format!(
            "MSH-2 {enc:?} has fewer than 4 encoding characters"
        )));
    }
    let d = Delimiters {
        field,
        component: enc_chars[0],
        repetition: enc_chars[1],
        escape: enc_chars[2],
        subcomponent: enc_chars[3],
    };
    let all = [field, d.component, d.repetition, d.escape, d.subcomponent];
    for (i, c) in all.iter().enumerate() {
        if c.is_alphanumeric() || c.is_whitespace() || all[..i].contains(c) {
            return Err(Hl7Error::BadDelimiters(format!(
                "delimiter {c:?} is alphanumeric, whitespace or repeated"
            )));
        }
    }
    // rest = "|^~\&|field3|field4..."; skip the separator and MSH-2.
    let after_enc = &rest[field.len_utf8() + enc.len()..];
    let mut fields = vec![
        Field::verbatim("MSH"),
        Field::verbatim(&field.to_string()),
        Field::verbatim(&enc),
    ];
    if let Some(tail) = after_enc.strip_prefix(field) {
        fields.extend(tail.split(field).map(|f| Field::parse(f, &d)));
    }
    Ok((d, Segment { fields }))
}

fn parse_segment(line: &str, d: &Delimiters) -> Result<Segment, Hl7Error> {
    let mut parts = line.split(d.field);
    let name = parts.next().unwrap_or_default();
    if name.len() != 3
        || !name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(Hl7Error::BadSegment {
            name: name.chars().take(16).collect(),
        });
    }
    let mut fields = vec![Field::verbatim(name)];
    fields.extend(parts.map(|f| Field::parse(f, d)));
    Ok(Segment { fields })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_msh_numbering_and_components() {
        let m = Message::parse(b"MSH|^~\\&|APP^EUI^X|FAC|||20240101||ORU^R01^ORU_R01|ID1|P|2.6\rPID|||1^^^H^MR~2^^^H^PI")
            .expect("parses");
        let msh = m.msh();
        assert_eq!(msh.field(1).value(), "|");
        assert_eq!(msh.field(2).value(), "^~\\&");
        assert_eq!(msh.field(3).component(2), "EUI");
        assert_eq!(msh.field(9).component(2), "R01");
        assert_eq!(msh.field(10).value(), "ID1");
        assert_eq!(msh.field(40).value(), "");
        let pid = m.segment("PID").expect("pid");
        assert_eq!(pid.field(3).repetitions(), 2);
        assert_eq!(pid.field(3).get(1, 1, 1), "2");
        assert_eq!(pid.field(3).get(1, 5, 1), "PI");
    }

    #[test]
    fn unescapes_with_declared_delimiters() {
        let m = Message::parse(b"MSH#*$!@#A\nOBX#1#ST#c#x#a!F!b!S!c!T!d!R!e!E!f!X41!!.br!!Q!!H!")
            .expect("parses");
        let obx = m.segment("OBX").expect("obx");
        assert_eq!(obx.field(5).value(), "a#b*c@d$e!fA\n!Q!");
        let d = m.delimiters();
        assert_eq!(d.unescape("x!F"), "x!F", "unterminated stays literal");
    }

    #[test]
    fn escape_round_trips() {
        let d = Delimiters::default();
        let text = "a|b^c~d\\e&f\rg";
        assert_eq!(d.unescape(&d.escape(text)), text);
        assert_eq!(d.escape("a|b"), "a\\F\\b");
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(Message::parse(b""), Err(Hl7Error::Empty));
        assert!(matches!(
            Message::parse(b"PID|1"),
            Err(Hl7Error::NoMsh { .. })
        ));
        assert!(matches!(
            Message::parse(b"MSH|^~|"),
            Err(Hl7Error::BadDelimiters(_))
        ));
        assert!(matches!(
            Message::parse(b"MSH|^^\\&|"),
            Err(Hl7Error::BadDelimiters(_))
        ));
        assert!(matches!(
            Message::parse(b"MSH|^~\\&|\rpid|1"),
            Err(Hl7Error::BadSegment { .. })
        ));
    }

    #[test]
    fn latin1_fallback() {
        let m = Message::parse(b"MSH|^~\\&|A\rPID|||1||M\xfcller").expect("parses");
        assert_eq!(m.segment("PID").expect("pid").field(5).value(), "Müller");
    }

    #[test]
    fn encode_re_escapes() {
        let m = Message::parse(b"MSH|^~\\&|A\\S\\B^C&D~E").expect("parses");
        assert_eq!(
            m.msh().field(3).encode(&Delimiters::default()),
            "A\\S\\B^C&D~E"
        );
    }
}
