//! A strict JSON reader and a canonical writer, for request bodies the
//! gateway judges and then forwards.
//!
//! Written here rather than taken from `serde_json` because the gateway
//! needs what that crate does not give without process-wide feature flags
//! (`arbitrary_precision`, `preserve_order`, which would change every other
//! crate's `Value`): numbers kept as their exact source text, keys kept in
//! document order, and duplicate keys reported instead of silently resolved.
//!
//! Strict means RFC 8259 and nothing more: UTF-8 only, no comments, no
//! `NaN`/`Infinity`, no raw control characters in strings, no lone UTF-16
//! surrogates in escapes, nothing after the value, a bounded depth, and no
//! key twice in one object. Every one of those is a place where two JSON
//! parsers (Go's, Python's, the gateway's) could read one body two ways.
//!
//! Strings and numbers are slices of the request's own buffer, so a large
//! body is parsed without copying its text. Keys are decoded (they are
//! judged); string values keep their validated escaped text, which every
//! JSON parser decodes to the same characters (the one escape they read
//! differently, a lone UTF-16 surrogate, is refused), and are written back
//! as they came.

use std::borrow::Cow;

use std::collections::HashSet;

use bytes::Bytes;

/// How deeply arrays and objects may nest.
pub const MAX_DEPTH: usize = 128;

/// Bytes that end the fast scan of a string: the closing quote, a
/// backslash, and the control characters JSON forbids raw.
const STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        table[c] = true;
        c += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Why a body is not strict JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("the body is not valid UTF-8")]
    InvalidUtf8,
    #[error("the body is not valid JSON (at byte {0})")]
    Syntax(usize),
    #[error("the key {0:?} appears twice in one object")]
    DuplicateKey(String),
    #[error("the body nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the body has data after its JSON value (at byte {0})")]
    TrailingData(usize),
    #[error("a string escape holds a lone UTF-16 surrogate (at byte {0})")]
    LoneSurrogate(usize),
    #[error("the keys {first:?} and {second:?} are one field to the decoder")]
    KeyCollision { first: String, second: String },
}

/// How a decoder matches keys besides exact equality, for bodies it could
/// otherwise read differently (Go's case folding: see `go_fold`).
pub trait KeyRules {
    /// Whether the decoder takes the (different) keys `a` and `b` for one
    /// field.
    fn same_field(&self, a: &str, b: &str) -> bool;
    /// `key` as the decoder compares it, for large objects.
    fn folded(&self, key: &str) -> String;
    /// Whether the value under `key` is data (a map, a schema) rather than a
    /// struct, so keys below it are matched exactly.
    fn holds_data(&self, key: &str) -> bool;
}

/// A JSON value, as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(Str),
    Array(Vec<Value>),
    Object(Object),
}

impl Value {
    /// The object, if this is one.
    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Self::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The object, if this is one.
    pub fn as_object_mut(&mut self) -> Option<&mut Object> {
        match self {
            Self::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The string (decoded), if this is one.
    pub fn as_str(&self) -> Option<Cow<'_, str>> {
        match self {
            Self::String(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// The canonical serialisation.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(64);
        write(self, &mut out);
        Bytes::from(out)
    }

    /// The canonical serialisation, appended to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        write(self, out);
    }
}

/// A JSON number, kept as its exact source text (validated against the
/// RFC 8259 grammar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number(Bytes);

impl Number {
    /// The number's text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("0")
    }

    /// A non-negative integer.
    pub fn from_u64(n: u64) -> Self {
        Self(Bytes::from(n.to_string()))
    }

    /// A signed integer.
    pub fn from_i64(n: i64) -> Self {
        Self(Bytes::from(n.to_string()))
    }

    /// Whether the text is an integer literal (no fraction, no exponent).
    pub fn is_integer_literal(&self) -> bool {
        !self.0.iter().any(|b| matches!(b, b'.' | b'e' | b'E'))
    }

    /// The value as a float (what JavaScript, Python's `float` and Go's
    /// `float64` make of it; very large values are infinite).
    pub fn as_f64(&self) -> f64 {
        self.as_str().parse().unwrap_or(f64::NAN)
    }
}

/// A JSON string: decoded text, or (for values read with escapes) the
/// validated JSON text between the quotes.
#[derive(Clone)]
pub enum Str {
    /// The characters themselves (valid UTF-8).
    Plain(Bytes),
    /// JSON string text with escapes, checked when read: valid UTF-8, valid
    /// escapes only, surrogates paired, no raw control characters.
    Escaped(Bytes),
}

impl Str {
    /// The characters, escapes resolved.
    pub fn as_str(&self) -> Cow<'_, str> {
        match self {
            Self::Plain(b) => Cow::Borrowed(std::str::from_utf8(b).unwrap_or("")),
            Self::Escaped(b) => {
                let mut out = Vec::with_capacity(b.len());
                let mut reader = Reader {
                    src: b,
                    b,
                    pos: 0,
                    depth: 0,
                    rules: None,
                };
                // Checked when read, so this cannot fail.
                while reader.pos < b.len() {
                    match b[reader.pos] {
                        b'\\' => {
                            reader.pos += 1;
                            if reader.escape(Some(&mut out)).is_err() {
                                break;
                            }
                        }
                        c => {
                            out.push(c);
                            reader.pos += 1;
                        }
                    }
                }
                Cow::Owned(String::from_utf8(out).unwrap_or_default())
            }
        }
    }

    /// The decoded bytes of a plain string (keys are always plain).
    fn plain_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Plain(b) => Some(b),
            Self::Escaped(_) => None,
        }
    }

    /// The length of the text as read: escapes counted as written, so the
    /// decoded text is never longer. Nothing is decoded.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Plain(b) | Self::Escaped(b) => b.len(),
        }
    }

    /// Whether the decoded text starts with `prefix`, decoding only when an
    /// escape falls within the prefix's length.
    pub fn starts_with(&self, prefix: &str) -> bool {
        match self {
            Self::Plain(b) => b.starts_with(prefix.as_bytes()),
            Self::Escaped(b) => {
                // No escape among the first bytes: they are the characters.
                if !b[..b.len().min(prefix.len())].contains(&b'\\') {
                    b.starts_with(prefix.as_bytes())
                } else {
                    self.as_str().starts_with(prefix)
                }
            }
        }
    }

    /// Whether this is the text `key`.
    pub fn is(&self, key: &str) -> bool {
        match self {
            Self::Plain(b) => b.as_ref() == key.as_bytes(),
            Self::Escaped(_) => self.as_str() == key,
        }
    }
}

impl PartialEq for Str {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Str {}

impl Str {
    /// A static text, without copying.
    pub fn from_static(s: &'static str) -> Self {
        Self::Plain(Bytes::from_static(s.as_bytes()))
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Self {
        Self::Plain(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for Str {
    fn from(s: String) -> Self {
        Self::Plain(Bytes::from(s))
    }
}

impl std::fmt::Debug for Str {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.as_str(), f)
    }
}

/// A JSON object: its members in document order, no key twice.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object(Vec<(Str, Value)>);

impl Object {
    /// The member named exactly `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k.is(key)).map(|(_, v)| v)
    }

    /// The member named exactly `key`.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.0.iter_mut().find(|(k, _)| k.is(key)).map(|(_, v)| v)
    }

    /// The first member whose key `matches`, with its index.
    pub fn position(&self, mut matches: impl FnMut(&str) -> bool) -> Option<usize> {
        self.0.iter().position(|(k, _)| matches(&k.as_str()))
    }

    /// The member at `index`.
    pub fn at(&self, index: usize) -> Option<(&Str, &Value)> {
        self.0.get(index).map(|(k, v)| (k, v))
    }

    /// The member at `index`.
    pub fn at_mut(&mut self, index: usize) -> Option<&mut (Str, Value)> {
        self.0.get_mut(index)
    }

    /// Sets `key` (replacing its value where present, else appending it).
    pub fn insert(&mut self, key: &str, value: Value) {
        match self.get_mut(key) {
            Some(slot) => *slot = value,
            None => self.0.push((Str::from(key), value)),
        }
    }

    /// Sets the static `key` (replacing its value where present, else
    /// appending it), without copying the key.
    pub fn insert_static(&mut self, key: &'static str, value: Value) {
        match self.get_mut(key) {
            Some(slot) => *slot = value,
            None => self.0.push((Str::from_static(key), value)),
        }
    }

    /// Removes the member at `index`.
    pub fn remove_at(&mut self, index: usize) {
        if index < self.0.len() {
            self.0.remove(index);
        }
    }

    /// The members, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Str, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// Reads `body` as one strict JSON value.
pub fn parse(body: &Bytes) -> Result<Value, JsonError> {
    parse_with(body, None)
}

/// Reads `body` as one strict JSON value, also refusing keys that `rules`
/// take for one field, in every object that is not data.
pub fn parse_with(body: &Bytes, rules: Option<&dyn KeyRules>) -> Result<Value, JsonError> {
    // One pass over the whole body; string slices taken at ASCII delimiters
    // are then valid UTF-8 too.
    if std::str::from_utf8(body).is_err() {
        return Err(JsonError::InvalidUtf8);
    }
    let mut reader = Reader {
        src: body,
        b: body,
        pos: 0,
        depth: 0,
        rules,
    };
    reader.skip_ws();
    let value = reader.value(rules.is_some())?;
    reader.skip_ws();
    if reader.pos != reader.b.len() {
        return Err(JsonError::TrailingData(reader.pos));
    }
    Ok(value)
}

struct Reader<'a> {
    src: &'a Bytes,
    b: &'a [u8],
    pos: usize,
    depth: usize,
    rules: Option<&'a dyn KeyRules>,
}

impl Reader<'_> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }

    fn syntax(&self) -> JsonError {
        JsonError::Syntax(self.pos)
    }

    /// A value; `folding`: its objects are checked with the key rules.
    fn value(&mut self, folding: bool) -> Result<Value, JsonError> {
        match self.b.get(self.pos) {
            Some(b'{') => self.object(folding),
            Some(b'[') => self.array(folding),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number().map(Value::Number),
            _ => Err(self.syntax()),
        }
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, JsonError> {
        if self.b[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.syntax())
        }
    }

    fn enter(&mut self) -> Result<(), JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        Ok(())
    }

    fn object(&mut self, folding: bool) -> Result<Value, JsonError> {
        self.enter()?;
        self.pos += 1;
        let rules = self.rules.filter(|_| folding);
        let mut members: Vec<(Str, Value)> = Vec::new();
        // Linear checks are cheaper for the usual handful of keys.
        let mut seen: Option<HashSet<Bytes>> = None;
        let mut folded: Option<std::collections::HashMap<String, usize>> = None;
        self.skip_ws();
        if self.b.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Object(Object(members)));
        }
        loop {
            self.skip_ws();
            if self.b.get(self.pos) != Some(&b'"') {
                return Err(self.syntax());
            }
            let key = self.key()?;
            let bytes = key.plain_bytes().unwrap_or_default();
            let duplicate = match &mut seen {
                Some(set) => !set.insert(Bytes::copy_from_slice(bytes)),
                None => {
                    let dup = members.iter().any(|(k, _)| k.plain_bytes() == Some(bytes));
                    if members.len() >= 16 {
                        let mut set: HashSet<Bytes> = members
                            .iter()
                            .filter_map(|(k, _)| k.plain_bytes().map(Bytes::copy_from_slice))
                            .collect();
                        set.insert(Bytes::copy_from_slice(bytes));
                        seen = Some(set);
                    }
                    dup
                }
            };
            if duplicate {
                return Err(JsonError::DuplicateKey(bounded(&key.as_str())));
            }
            let text = key.as_str();
            if let Some(rules) = rules {
                let collision = match &mut folded {
                    Some(map) => map.insert(rules.folded(&text), members.len()),
                    None => {
                        let found = members
                            .iter()
                            .position(|(k, _)| rules.same_field(&k.as_str(), &text));
                        if members.len() >= 16 {
                            let mut map: std::collections::HashMap<String, usize> = members
                                .iter()
                                .enumerate()
                                .map(|(i, (k, _))| (rules.folded(&k.as_str()), i))
                                .collect();
                            map.insert(rules.folded(&text), members.len());
                            folded = Some(map);
                        }
                        found
                    }
                };
                if let Some(i) = collision {
                    return Err(JsonError::KeyCollision {
                        first: bounded(&members[i].0.as_str()),
                        second: bounded(&text),
                    });
                }
            }
            let folding_below = rules.is_some_and(|r| !r.holds_data(&text));
            self.skip_ws();
            if self.b.get(self.pos) != Some(&b':') {
                return Err(self.syntax());
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value(folding_below)?;
            members.push((key, value));
            self.skip_ws();
            match self.b.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Value::Object(Object(members)));
                }
                _ => return Err(self.syntax()),
            }
        }
    }

    fn array(&mut self, folding: bool) -> Result<Value, JsonError> {
        self.enter()?;
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.b.get(self.pos) == Some(&b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(folding)?);
            self.skip_ws();
            match self.b.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.syntax()),
            }
        }
    }

    /// Scans a string from its opening quote: returns where its text
    /// starts and ends (the quote excluded), and whether it has escapes,
    /// which are checked (into `decoded` if given).
    fn scan_string(
        &mut self,
        mut decoded: Option<&mut Vec<u8>>,
    ) -> Result<(usize, usize, bool), JsonError> {
        self.pos += 1; // the opening quote
        let start = self.pos;
        let mut escaped = false;
        let mut copied = start;
        loop {
            // The hot loop: to the next quote, backslash or control byte.
            self.pos = skip_plain(self.b, self.pos);
            match self.b.get(self.pos) {
                None => return Err(self.syntax()),
                Some(b'"') => {
                    if let Some(out) = decoded.as_deref_mut() {
                        out.extend_from_slice(&self.b[copied..self.pos]);
                    }
                    let end = self.pos;
                    self.pos += 1;
                    return Ok((start, end, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    if let Some(out) = decoded.as_deref_mut() {
                        out.extend_from_slice(&self.b[copied..self.pos]);
                    }
                    self.pos += 1;
                    self.escape(decoded.as_deref_mut())?;
                    copied = self.pos;
                }
                Some(_) => return Err(self.syntax()), // a raw control character
            }
        }
    }

    /// A string value: a slice of the body, escapes checked, not resolved.
    fn string(&mut self) -> Result<Str, JsonError> {
        let (start, end, escaped) = self.scan_string(None)?;
        let text = self.src.slice(start..end);
        Ok(if escaped {
            Str::Escaped(text)
        } else {
            Str::Plain(text)
        })
    }

    /// A key: decoded, as it is judged.
    fn key(&mut self) -> Result<Str, JsonError> {
        let mark = self.pos;
        let (start, end, escaped) = self.scan_string(None)?;
        if !escaped {
            return Ok(Str::Plain(self.src.slice(start..end)));
        }
        self.pos = mark;
        let mut out = Vec::with_capacity(end - start);
        self.scan_string(Some(&mut out))?;
        Ok(Str::Plain(Bytes::from(out)))
    }

    /// Checks one escape (after its backslash), appending what it stands for
    /// to `out` if given.
    fn escape(&mut self, out: Option<&mut Vec<u8>>) -> Result<(), JsonError> {
        let c = *self.b.get(self.pos).ok_or_else(|| self.syntax())?;
        self.pos += 1;
        let simple = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let at = self.pos - 2;
                let first = self.hex4()?;
                let ch = if (0xD800..0xDC00).contains(&first) {
                    // A high surrogate must be followed by a low one.
                    if self.b.get(self.pos..self.pos + 2) != Some(b"\\u") {
                        return Err(JsonError::LoneSurrogate(at));
                    }
                    self.pos += 2;
                    let second = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&second) {
                        return Err(JsonError::LoneSurrogate(at));
                    }
                    0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                } else if (0xDC00..0xE000).contains(&first) {
                    return Err(JsonError::LoneSurrogate(at));
                } else {
                    first
                };
                let ch = char::from_u32(ch).ok_or(JsonError::LoneSurrogate(at))?;
                if let Some(out) = out {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                return Ok(());
            }
            _ => return Err(JsonError::Syntax(self.pos - 1)),
        };
        if let Some(out) = out {
            out.push(simple);
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .b
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.syntax())?;
        let mut n = 0u32;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.syntax()),
            };
            n = (n << 4) + u32::from(v);
        }
        self.pos += 4;
        Ok(n)
    }

    fn number(&mut self) -> Result<Number, JsonError> {
        let start = self.pos;
        if self.b.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.b.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.syntax()),
        }
        if self.b.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if !matches!(self.b.get(self.pos), Some(b'0'..=b'9')) {
                return Err(self.syntax());
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.b.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.b.get(self.pos) {
                self.pos += 1;
            }
            if !matches!(self.b.get(self.pos), Some(b'0'..=b'9')) {
                return Err(self.syntax());
            }
            self.digits();
        }
        Ok(Number(self.src.slice(start..self.pos)))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }
}

/// The index of the first byte at or after `i` that ends a run of plain
/// string text (a quote, a backslash or a control character), or the
/// length. Eight bytes at a time ("SWAR": a byte-wise compare within one
/// 64-bit word), as long bodies are mostly such text.
fn skip_plain(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Bytes equal to zero, flagged in their high bit. Borrows only flag
    // bytes above a true match, so the lowest flag is always a true one.
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let quote = zero(x ^ (ONES * u64::from(b'"')));
        let backslash = zero(x ^ (ONES * u64::from(b'\\')));
        // Bytes below 0x20 (high bit clear, so ASCII): the same trick.
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let found = quote | backslash | control;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !STRING_STOP[usize::from(b[i])] {
        i += 1;
    }
    i
}

/// At most 64 characters of `s`, for error messages.
fn bounded(s: &str) -> String {
    s.chars().take(64).collect()
}

fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(&n.0),
        Value::String(Str::Plain(s)) => write_str(s, out),
        Value::String(Str::Escaped(s)) => {
            // Checked JSON text: written as it came.
            out.push(b'"');
            out.extend_from_slice(s);
            out.push(b'"');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Value::Object(Object(members)) => {
            out.push(b'{');
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match key {
                    Str::Plain(k) => write_str(k, out),
                    Str::Escaped(_) => write_str(key.as_str().as_bytes(), out),
                }
                out.push(b':');
                write(value, out);
            }
            out.push(b'}');
        }
    }
}

/// Writes a string with the minimal escapes: `"`, `\` and control
/// characters. Everything else is written as UTF-8.
fn write_str(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    if !s.iter().any(|&c| STRING_STOP[usize::from(c)]) {
        out.extend_from_slice(s);
        out.push(b'"');
        return;
    }
    let mut from = 0;
    for (i, &c) in s.iter().enumerate() {
        let escaped: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            c if c < 0x20 => {
                out.extend_from_slice(&s[from..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
                from = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&s[from..i]);
        out.extend_from_slice(escaped);
        from = i + 1;
    }
    out.extend_from_slice(&s[from..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> Result<String, JsonError> {
        let v = parse(&Bytes::copy_from_slice(text.as_bytes()))?;
        Ok(String::from_utf8(v.to_bytes().to_vec()).unwrap())
    }

    #[test]
    fn canonical_form_keeps_order_numbers_and_unknown_fields() {
        assert_eq!(
            canon(r#" { "z" : 1.50 , "a":[ 1e3, -0, 12345678901234567890123 ], "x": {"y": null, "t": true} } "#)
                .unwrap(),
            r#"{"z":1.50,"a":[1e3,-0,12345678901234567890123],"x":{"y":null,"t":true}}"#
        );
    }

    #[test]
    fn keys_are_decoded_and_values_keep_their_checked_escapes() {
        let text = r#"{"mod\u0065l":"a\/b\u00e9\ud83d\ude00\"\\\n\u0001"}"#;
        // The key is judged, so it is written decoded; the value is written
        // as it came (every JSON parser decodes it the same way).
        assert_eq!(
            canon(text).unwrap(),
            r#"{"model":"a\/b\u00e9\ud83d\ude00\"\\\n\u0001"}"#
        );
        let v = parse(&Bytes::copy_from_slice(text.as_bytes())).unwrap();
        let value = v.as_object().unwrap().get("model").unwrap();
        assert_eq!(value.as_str().unwrap(), "a/b\u{e9}\u{1f600}\"\\\n\u{1}");
        // A value the gateway writes is escaped minimally.
        let mut o = Object::default();
        o.insert("k", Value::String(Str::from("q\"\\\n\u{1}é")));
        assert_eq!(
            &Value::Object(o).to_bytes()[..],
            "{\"k\":\"q\\\"\\\\\\n\\u0001é\"}".as_bytes()
        );
    }

    #[test]
    fn what_two_parsers_could_read_differently_is_refused() {
        let refused = |text: &[u8]| parse(&Bytes::copy_from_slice(text)).unwrap_err();
        assert_eq!(
            refused(br#"{"model":"a","model":"b"}"#),
            JsonError::DuplicateKey("model".into())
        );
        // The same key once escaped is still the same key.
        assert_eq!(
            refused(br#"{"model":"a","m\u006fdel":"b"}"#),
            JsonError::DuplicateKey("model".into())
        );
        assert_eq!(
            refused(br#"{"a":{"k":1,"k":2}}"#),
            JsonError::DuplicateKey("k".into())
        );
        assert_eq!(refused(b"{\"model\":\"\xff\"}"), JsonError::InvalidUtf8);
        assert_eq!(
            refused(br#"{"model":"a"} {"model":"b"}"#),
            JsonError::TrailingData(14)
        );
        assert!(matches!(refused(br#"{"a":NaN}"#), JsonError::Syntax(_)));
        assert!(matches!(
            refused(br#"{"a":Infinity}"#),
            JsonError::Syntax(_)
        ));
        assert!(matches!(refused(b"{\"a\":\"x\ty\"}"), JsonError::Syntax(_)));
        assert!(matches!(
            refused(br#"{"a":01}"#),
            JsonError::TrailingData(_) | JsonError::Syntax(_)
        ));
        assert!(matches!(refused(br#"{"a":1.}"#), JsonError::Syntax(_)));
        assert!(matches!(refused(br#"{"a":1,}"#), JsonError::Syntax(_)));
        assert!(matches!(refused(b"\xef\xbb\xbf{}"), JsonError::Syntax(0)));
        // Each refusal names the byte where its escape starts.
        assert_eq!(refused(br#"{"a":"\ud800"}"#), JsonError::LoneSurrogate(6));
        assert_eq!(
            refused(br#"{"a":"xy\udc00\ud800"}"#),
            JsonError::LoneSurrogate(8)
        );
        assert_eq!(refused(br#"{"a":"\x"}"#), JsonError::Syntax(7));
        assert_eq!(refused(br#"{"a":"xyz\x"}"#), JsonError::Syntax(10));
        assert!(matches!(refused(b""), JsonError::Syntax(0)));
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(refused(deep.as_bytes()), JsonError::TooDeep);
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(&Bytes::from(ok)).is_ok());
    }

    #[test]
    fn every_escape_decodes_as_rfc_8259_says() {
        let v = parse(&Bytes::from_static(
            br#"{"k\b\f\n\r\t\"\\\/\u004D\u00c9\u00E9\uABCD\ufEdC":"\uD83D\uDE00"}"#,
        ))
        .unwrap();
        let (key, value) = v.as_object().unwrap().at(0).unwrap();
        assert_eq!(
            key.as_str(),
            "k\u{8}\u{c}\n\r\t\"\\/M\u{c9}\u{e9}\u{abcd}\u{fedc}"
        );
        assert_eq!(value.as_str().unwrap(), "\u{1f600}");
    }

    #[test]
    fn depth_counts_nesting_not_siblings() {
        // Every kind of closed value gives its level back: hundreds of
        // siblings, then a nest as deep as allowed, still parse.
        let siblings = ["{}", "[]", r#"{"a":1}"#, "[1]"]
            .iter()
            .map(|v| format!("{v},").repeat(2 * MAX_DEPTH))
            .collect::<String>();
        let nest = "[".repeat(MAX_DEPTH - 1) + &"]".repeat(MAX_DEPTH - 1);
        let text = format!("[{siblings}{nest}]");
        assert!(parse(&Bytes::from(text)).is_ok());
        let too_deep = format!(
            "[{siblings}{}]",
            "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH)
        );
        assert_eq!(
            parse(&Bytes::from(too_deep)).unwrap_err(),
            JsonError::TooDeep
        );
    }

    #[test]
    fn the_fast_scan_stops_exactly_where_the_table_does() {
        let reference = |b: &[u8], i: usize| {
            (i..b.len())
                .find(|&j| STRING_STOP[usize::from(b[j])])
                .unwrap_or(b.len())
        };
        let mut text: Vec<u8> = (0u8..=255).collect();
        text.extend_from_slice("plain text é ü 😀 \\ \" \u{1f}".as_bytes());
        for start in 0..text.len() {
            for end in start..text.len().min(start + 40) {
                let slice = &text[start..end];
                for i in 0..slice.len() {
                    assert_eq!(
                        skip_plain(slice, i),
                        reference(slice, i),
                        "{slice:?} at {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn duplicates_are_found_in_large_objects_too() {
        let mut text = String::from("{");
        for i in 0..40 {
            text.push_str(&format!("\"k{i}\":{i},"));
        }
        text.push_str("\"k3\":0}");
        assert_eq!(
            parse(&Bytes::from(text)).unwrap_err(),
            JsonError::DuplicateKey("k3".into())
        );
    }

    #[test]
    fn strings_compare_match_and_print_as_their_characters() {
        let v = parse(&Bytes::from_static(br#"["m\u006fdel","model","mod"]"#)).unwrap();
        let Value::Array(items) = v else {
            panic!("an array")
        };
        let [
            Value::String(escaped),
            Value::String(plain),
            Value::String(other),
        ] = &items[..]
        else {
            panic!("three strings: {items:?}")
        };
        assert!(escaped.is("model"));
        assert!(!escaped.is("m\\u006fdel"));
        assert!(!escaped.is("mod"));
        assert!(plain.is("model") && !plain.is("mod"));
        // Equal when the characters are, however they were written.
        assert_eq!(escaped, plain);
        assert_ne!(plain, other);
        assert_eq!(Value::String(Str::from("model")), items[0]);
        // Debug output shows the characters (logs and test failures).
        assert_eq!(format!("{escaped:?}"), r#""model""#);
        assert_eq!(format!("{other:?}"), r#""mod""#);
    }

    #[test]
    fn strings_are_written_with_the_short_escapes_and_u00xx_for_other_controls() {
        // A space, DEL and non-ASCII are written as they are.
        let text = "a b\"\\\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}\u{e9}";
        let want = "\"a b\\\"\\\\\\n\\r\\t\\b\\f\\u0001\\u001f\u{7f}\u{e9}\"";
        assert_eq!(
            &Value::String(Str::from(text)).to_bytes()[..],
            want.as_bytes()
        );
    }

    #[test]
    fn objects_are_edited_in_place() {
        let mut v = parse(&Bytes::from_static(br#"{"a":1,"b":2}"#)).unwrap();
        let o = v.as_object_mut().unwrap();
        o.insert("a", Value::Bool(true));
        o.insert("c", Value::Number(Number::from_u64(7)));
        assert_eq!(&v.to_bytes()[..], br#"{"a":true,"b":2,"c":7}"#);
        // An index past the end removes nothing (and does not panic).
        let o = v.as_object_mut().unwrap();
        o.remove_at(3);
        assert_eq!(&v.to_bytes()[..], br#"{"a":true,"b":2,"c":7}"#);
        let o = v.as_object_mut().unwrap();
        o.remove_at(2);
        o.remove_at(0);
        assert_eq!(&v.to_bytes()[..], br#"{"b":2}"#);
    }
}
