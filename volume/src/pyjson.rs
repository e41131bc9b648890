//! A JSON value model, parser and writer that behave like CPython's `json` module.
//!
//! Upstream reads result files with `json.load` and writes them with `json.dump(obj, fd, indent=4[, sort_keys=True])`.
//! To produce byte-identical files we reproduce, on purpose:
//! - ints and floats are distinct (`100` vs `100.0`), ints are kept exactly;
//! - floats print as Python's `repr` (shortest round-trip digits, `1e-05`, `1e+16`, `NaN`, `Infinity`);
//! - strings are written with `ensure_ascii=True` (lowercase `\uXXXX`, surrogate pairs, 0x7F escaped);
//! - objects keep insertion order; a duplicated key keeps its first position and takes the last value;
//! - the parser accepts `NaN`, `Infinity` and `-Infinity`, as Python's does;
//! - 4-space indent, `": "` and `","` separators, inline `[]`/`{}`, no trailing newline.
//!
//! Differences from Python, all on inputs no Leaderboard ever writes: a lone UTF-16 surrogate escape is a
//! syntax error (Rust strings cannot hold one), and nesting deeper than [`MAX_DEPTH`] is an error of its own
//! (Python raises `RecursionError` near depth 1000).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// Deepest nesting the parser accepts. Result files are 6 levels deep.
pub const MAX_DEPTH: usize = 128;

/// A JSON value with Python's distinctions.
///
/// Lists and objects are shared (`Arc`): a merge passes thousands of records from the worker files to the merged
/// file, and sharing makes that a reference count instead of a deep copy. Editing goes through `Arc::make_mut`,
/// which copies only a container that is still shared.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// A Python `int` that fits in 64 bits.
    Int(i64),
    /// A Python `int` too large for 64 bits, kept as its decimal text.
    BigInt(Box<str>),
    Float(f64),
    Str(String),
    Array(Arc<Vec<Value>>),
    Object(Arc<Object>),
}

/// An insertion-ordered JSON object.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object {
    entries: Vec<(String, Value)>,
}

impl Object {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        Self { entries: Vec::with_capacity(n) }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `get`, trying position `hint` first: records almost always list their keys in the canonical order.
    pub fn get_at(&self, hint: usize, key: &str) -> Option<&Value> {
        match self.entries.get(hint) {
            Some((k, v)) if k == key => Some(v),
            _ => self.get(key),
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Python's `d[key] = value`: an existing key keeps its position, a new one is appended.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.get_mut(&key) {
            Some(slot) => *slot = value,
            None => self.entries.push((key, value)),
        }
    }

    /// Renames `from` to `to` in place, keeping its position. Does nothing when `to` already exists.
    pub fn rename(&mut self, from: &str, to: &str) {
        if self.contains_key(to) {
            return;
        }
        if let Some(entry) = self.entries.iter_mut().find(|(k, _)| k == from) {
            entry.0 = to.to_string();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }
}

impl<K: Into<String>> FromIterator<(K, Value)> for Object {
    fn from_iter<T: IntoIterator<Item = (K, Value)>>(iter: T) -> Self {
        let mut o = Object::new();
        for (k, v) in iter {
            o.insert(k, v);
        }
        o
    }
}

impl Value {
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    pub fn array(items: Vec<Value>) -> Value {
        Value::Array(Arc::new(items))
    }

    pub fn object(obj: Object) -> Value {
        Value::Object(Arc::new(obj))
    }

    pub fn empty_array() -> Value {
        Value::array(Vec::new())
    }

    pub fn empty_object() -> Value {
        Value::object(Object::new())
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Python truthiness: `None`, `False`, `0`, `0.0`, `""`, `[]` and `{}` are false.
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::BigInt(_) => true,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        }
    }

    /// A short name of the value's Python type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::BigInt(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Array(_) => "a list",
            Value::Object(_) => "an object",
        }
    }

    /// Python `==`: numbers compare by value across int, float and bool; objects ignore key order.
    pub fn py_eq(&self, other: &Value) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Str(a), Str(b)) => a == b,
            (Array(a), Array(b)) => a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.py_eq(y)),
            (Object(a), Object(b)) => a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v.py_eq(w))),
            (BigInt(a), BigInt(b)) => a == b,
            _ => match (crate::num::Num::from_value(self), crate::num::Num::from_value(other)) {
                (Some(a), Some(b)) => a.py_eq(b),
                _ => false,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Why a document did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Python's `json.load` raises `JSONDecodeError` here (upstream reads the file as "missing").
    #[error("invalid JSON at byte {offset}: {reason}")]
    Syntax { offset: usize, reason: &'static str },
    /// Python raises `UnicodeDecodeError` here (upstream crashes).
    #[error("not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    /// Python raises `RecursionError` far deeper than this (upstream crashes).
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Parses a whole document as Python's `json.loads` would.
pub fn parse(bytes: &[u8]) -> Result<Value, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ParseError::NotUtf8 { offset: e.valid_up_to() })?;
    let mut p = Parser { s: text.as_bytes(), text, pos: 0, depth: 0 };
    p.skip_ws();
    let v = p.value()?;
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(p.err("extra data after the document"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, reason: &'static str) -> ParseError {
        ParseError::Syntax { offset: self.pos, reason }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.pos) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.pos..].starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        match self.s.get(self.pos) {
            None => Err(self.err("expecting a value")),
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b'n') if self.eat("null") => Ok(Value::Null),
            Some(b't') if self.eat("true") => Ok(Value::Bool(true)),
            Some(b'f') if self.eat("false") => Ok(Value::Bool(false)),
            Some(b'N') if self.eat("NaN") => Ok(Value::Float(f64::NAN)),
            Some(b'I') if self.eat("Infinity") => Ok(Value::Float(f64::INFINITY)),
            Some(b'-') if self.eat("-Infinity") => Ok(Value::Float(f64::NEG_INFINITY)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("expecting a value")),
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH { Err(ParseError::TooDeep) } else { Ok(()) }
    }

    fn object(&mut self) -> Result<Value, ParseError> {
        self.enter()?;
        self.pos += 1;
        let mut obj = Object::new();
        // Duplicate keys: first position, last value. An index keeps large hostile objects linear.
        let mut index: Option<HashMap<String, usize>> = None;
        self.skip_ws();
        if self.eat("}") {
            self.depth -= 1;
            return Ok(Value::object(obj));
        }
        loop {
            self.skip_ws();
            if self.s.get(self.pos) != Some(&b'"') {
                return Err(self.err("expecting a property name in double quotes"));
            }
            let key = self.string()?;
            self.skip_ws();
            if !self.eat(":") {
                return Err(self.err("expecting ':' delimiter"));
            }
            self.skip_ws();
            let v = self.value()?;
            if obj.entries.len() >= 16 && index.is_none() {
                index = Some(obj.entries.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect());
            }
            match &mut index {
                Some(ix) => match ix.get(&key) {
                    Some(&i) => obj.entries[i].1 = v,
                    None => {
                        ix.insert(key.clone(), obj.entries.len());
                        obj.entries.push((key, v));
                    }
                },
                None => obj.insert(key, v),
            }
            self.skip_ws();
            if self.eat(",") {
                continue;
            }
            if self.eat("}") {
                break;
            }
            return Err(self.err("expecting ',' delimiter"));
        }
        self.depth -= 1;
        Ok(Value::object(obj))
    }

    fn array(&mut self) -> Result<Value, ParseError> {
        self.enter()?;
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.eat("]") {
            self.depth -= 1;
            return Ok(Value::array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value()?);
            self.skip_ws();
            if self.eat(",") {
                continue;
            }
            if self.eat("]") {
                break;
            }
            return Err(self.err("expecting ',' delimiter"));
        }
        self.depth -= 1;
        Ok(Value::array(items))
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let digits = self.s.get(self.pos..self.pos + 4).ok_or_else(|| self.err("invalid \\uXXXX escape"))?;
        let mut n = 0u32;
        for &d in digits {
            let v = (d as char).to_digit(16).ok_or_else(|| self.err("invalid \\uXXXX escape"))?;
            n = n * 16 + v;
        }
        self.pos += 4;
        Ok(n)
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(&b) = self.s.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // The slice lies on char boundaries: we stopped at an ASCII byte or the end.
            out.push_str(&self.text[start..self.pos]);
            match self.s.get(self.pos) {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = *self.s.get(self.pos).ok_or_else(|| self.err("unterminated string"))?;
                    self.pos += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if !self.eat("\\u") {
                                    return Err(self.err("lone UTF-16 surrogate"));
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("lone UTF-16 surrogate"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            out.push(char::from_u32(cp).ok_or_else(|| self.err("lone UTF-16 surrogate"))?);
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                Some(_) => return Err(self.err("invalid control character in string")),
            }
        }
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        self.eat("-");
        match self.s.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = self.s.get(self.pos) {
                    self.pos += 1;
                }
            }
            _ => return Err(self.err("expecting a value")),
        }
        let mut is_float = false;
        if self.s.get(self.pos) == Some(&b'.') && matches!(self.s.get(self.pos + 1), Some(b'0'..=b'9')) {
            is_float = true;
            self.pos += 1;
            while let Some(b'0'..=b'9') = self.s.get(self.pos) {
                self.pos += 1;
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.pos) {
            let save = self.pos;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.s.get(self.pos) {
                self.pos += 1;
            }
            if matches!(self.s.get(self.pos), Some(b'0'..=b'9')) {
                is_float = true;
                while let Some(b'0'..=b'9') = self.s.get(self.pos) {
                    self.pos += 1;
                }
            } else {
                // Python's number pattern stops before a bare 'e'; what follows is then a syntax error.
                self.pos = save;
            }
        }
        let text = &self.text[start..self.pos];
        if is_float {
            // Rust's parser is correctly rounded, as Python's is; overflow gives infinity in both.
            text.parse::<f64>().map(Value::Float).map_err(|_| self.err("invalid number"))
        } else {
            Ok(match text.parse::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => Value::BigInt(text.into()),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// `json.dumps(value, indent=4, sort_keys=sort_keys)`, byte for byte.
pub fn to_pretty(value: &Value, sort_keys: bool) -> String {
    let mut out = String::with_capacity(4096);
    write_value(&mut out, value, 0, sort_keys);
    out
}

fn newline_indent(out: &mut String, level: usize) {
    out.push('\n');
    for _ in 0..level {
        out.push_str("    ");
    }
}

fn write_value(out: &mut String, v: &Value, level: usize, sort_keys: bool) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::BigInt(s) => out.push_str(s),
        Value::Float(f) => write_float(out, *f),
        Value::Str(s) => write_str(out, s),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline_indent(out, level + 1);
                write_value(out, item, level + 1, sort_keys);
            }
            newline_indent(out, level);
            out.push(']');
        }
        Value::Object(obj) => {
            if obj.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            let mut entries: Vec<&(String, Value)> = obj.entries.iter().collect();
            if sort_keys {
                // Python compares str by code point, which is the byte order of UTF-8.
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline_indent(out, level + 1);
                write_str(out, k);
                out.push_str(": ");
                write_value(out, item, level + 1, sort_keys);
            }
            newline_indent(out, level);
            out.push('}');
        }
    }
}

/// A JSON string literal with `ensure_ascii=True`.
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let mut rest = s;
    loop {
        // Copy the longest run of printable ASCII that needs no escape in one go.
        let plain = rest.bytes().take_while(|b| (b' '..=b'~').contains(b) && *b != b'"' && *b != b'\\').count();
        out.push_str(&rest[..plain]);
        rest = &rest[plain..];
        let Some(c) = rest.chars().next() else { break };
        rest = &rest[c.len_utf8()..];
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            _ => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// A float as `json.dumps` writes it: `repr`, or the bare literals `NaN`, `Infinity`, `-Infinity`.
pub fn float_json(f: f64) -> String {
    let mut out = String::new();
    write_float(&mut out, f);
    out
}

fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        write_repr(out, f);
    }
}

/// Python's `repr(float)` (and `str(float)`): shortest round-trip digits in Python's layout.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let mut out = String::new();
    write_repr(&mut out, f);
    out
}

/// Appends `repr(f)` for a finite `f`.
fn write_repr(out: &mut String, f: f64) {
    let mut buf = ryu::Buffer::new();
    let s = buf.format_finite(f);
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    // Split ryu's output ("123.45", "1e-7", "1.5e300", "0.001") into digits and a decimal exponent.
    let (mantissa, exp10) = match s.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (s, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut all_buf = [0u8; 32];
    let all_len = int_part.len() + frac_part.len();
    all_buf[..int_part.len()].copy_from_slice(int_part.as_bytes());
    all_buf[int_part.len()..all_len].copy_from_slice(frac_part.as_bytes());
    // ryu writes at most 17 significant digits plus a few zeros: ASCII digits only.
    let all = std::str::from_utf8(&all_buf[..all_len]).unwrap_or("0");
    // x = 0.<all> * 10^(len(int_part) + exp10), before stripping zeros.
    let mut decpt = int_part.len() as i32 + exp10;
    let trimmed_lead = all.trim_start_matches('0');
    decpt -= (all.len() - trimmed_lead.len()) as i32;
    let digits = trimmed_lead.trim_end_matches('0');
    if neg {
        out.push('-');
    }
    if digits.is_empty() {
        out.push_str("0.0");
        return;
    }
    let n = digits.len() as i32;
    if -4 < decpt && decpt <= 16 {
        if decpt <= 0 {
            out.push_str("0.");
            for _ in 0..(-decpt) {
                out.push('0');
            }
            out.push_str(digits);
        } else if decpt >= n {
            out.push_str(digits);
            for _ in 0..(decpt - n) {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        let _ = write!(out, "e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
}

/// Python's `str(value)` as an f-string prints it: strings raw, numbers as `repr`, containers as `repr`.
pub fn py_str(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Python's `repr(value)` for the value after `json.load`.
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Int(i) => i.to_string(),
        Value::BigInt(s) => s.to_string(),
        Value::Float(f) => float_repr(*f),
        Value::Str(s) => str_repr(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => {
            let items: Vec<String> = o.iter().map(|(k, v)| format!("{}: {}", str_repr(k), py_repr(v))).collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::new();
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(s: &str) -> String {
        to_pretty(&parse(s.as_bytes()).unwrap(), false)
    }

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (100.0, "100.0"),
            (0.0001, "0.0001"),
            (1e-05, "1e-05"),
            (1e-06, "1e-06"),
            (1234567890123456.0, "1234567890123456.0"),
            (1e16, "1e+16"),
            (5e-324, "5e-324"),
            (1.5e300, "1.5e+300"),
            (0.1, "0.1"),
            (74.305, "74.305"),
            (45.246103, "45.246103"),
            (3216.0995512061995, "3216.0995512061995"),
            (123456789.125, "123456789.125"),
            (1e22, "1e+22"),
            (-2.5e-7, "-2.5e-07"),
            (0.001, "0.001"),
            (12.0, "12.0"),
            (350131.72488167934, "350131.72488167934"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "repr of {f:e}");
        }
        assert_eq!(float_json(f64::NAN), "NaN");
        assert_eq!(float_json(f64::NEG_INFINITY), "-Infinity");
    }

    #[test]
    fn writer_matches_json_dumps_indent4() {
        let s = r#"{"b": [], "a": {}, "c": [1, 2.0, "x"], "d": {"z": null, "y": true}}"#;
        assert_eq!(
            rt(s),
            "{\n    \"b\": [],\n    \"a\": {},\n    \"c\": [\n        1,\n        2.0,\n        \"x\"\n    ],\n    \"d\": {\n        \"z\": null,\n        \"y\": true\n    }\n}"
        );
        let sorted = to_pretty(&parse(br#"{"b": 1, "_c": 2, "A": 3}"#).unwrap(), true);
        assert_eq!(sorted, "{\n    \"A\": 3,\n    \"_c\": 2,\n    \"b\": 1\n}");
    }

    #[test]
    fn ensure_ascii_escapes() {
        let v = Value::str("a\"b\\c\n\t\u{7f}é😀/\u{1}");
        assert_eq!(to_pretty(&v, false), r#""a\"b\\c\n\t\u007f\u00e9\ud83d\ude00/\u0001""#);
    }

    #[test]
    fn ints_and_floats_stay_distinct() {
        assert_eq!(
            rt("[100, 100.0, 1E2, -0, 123456789012345678901234567890]"),
            "[\n    100,\n    100.0,\n    100.0,\n    0,\n    123456789012345678901234567890\n]"
        );
    }

    #[test]
    fn python_literals_and_duplicates() {
        let v = parse(br#"{"a": NaN, "b": -Infinity, "a": 2}"#).unwrap();
        let o = v.as_object().unwrap();
        assert_eq!(o.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(o.get("a"), Some(&Value::Int(2)));
        assert_eq!(to_pretty(&v, false), "{\n    \"a\": 2,\n    \"b\": -Infinity\n}");
    }

    #[test]
    fn surrogate_pairs_decode() {
        assert_eq!(parse(br#""\ud83d\ude00""#).unwrap(), Value::str("😀"));
        assert!(parse(br#""\ud83d""#).is_err());
    }

    #[test]
    fn rejects_what_python_rejects() {
        for bad in ["", "{", "[1,]", "{\"a\":1,}", "01", "1.", "\u{feff}{}", "\"a\u{1}\"", "{} x", "nul", "'a'"] {
            assert!(matches!(parse(bad.as_bytes()), Err(ParseError::Syntax { .. })), "{bad:?} should fail");
        }
        assert!(matches!(parse(b"\xff"), Err(ParseError::NotUtf8 { .. })));
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(deep.as_bytes()), Err(ParseError::TooDeep));
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn truthiness_like_python() {
        for falsy in ["null", "false", "0", "0.0", "\"\"", "[]", "{}"] {
            assert!(!parse(falsy.as_bytes()).unwrap().is_truthy(), "{falsy}");
        }
        for truthy in ["1", "[0]", "\"x\"", "{\"a\":0}", "-0.5", "true"] {
            assert!(parse(truthy.as_bytes()).unwrap().is_truthy(), "{truthy}");
        }
    }

    #[test]
    fn py_str_of_values() {
        assert_eq!(py_str(&Value::Float(0.0)), "0.0");
        assert_eq!(py_str(&Value::Int(0)), "0");
        assert_eq!(py_str(&Value::str("x")), "x");
        assert_eq!(py_str(&parse(br#"["a", 1, null, true]"#).unwrap()), "['a', 1, None, True]");
    }

    #[test]
    fn large_objects_keep_python_duplicate_semantics() {
        let mut s = String::from("{");
        for i in 0..40 {
            s.push_str(&format!("\"k{i}\": {i},"));
        }
        s.push_str("\"k3\": \"last\"}");
        let v = parse(s.as_bytes()).unwrap();
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 40);
        assert_eq!(o.keys().nth(3), Some("k3"));
        assert_eq!(o.get("k3"), Some(&Value::str("last")));
    }
}
