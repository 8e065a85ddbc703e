//! A strict JSON scanner for the record contract (RFC 8259 grammar).
//!
//! It is used only to *accept* records: every function returns `None` when the input is
//! not JSON, or is JSON the decoder does not handle itself (a string with a surrogate
//! escape, an integer outside i64, a float that overflows, nesting deeper than
//! `MAX_DEPTH`). The caller then decodes the batch in Python, which gives the reference
//! answer (a decoded record or a reject with its reason). So this scanner may refuse
//! more than orjson does, never less, and where both accept it must give the same
//! values: integers as i64, other numbers correctly rounded to f64 (Rust's `parse`),
//! strings with their escapes decoded.

use std::borrow::Cow;

/// Deeper nesting than this (inside values the decoder skips) is left to Python.
const MAX_DEPTH: u32 = 64;

/// A scalar JSON value, or `Other` for an object or array (scanned and valid).
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Other,
}

pub struct Scanner<'a> {
    b: &'a [u8],
    pub pos: usize,
}

impl<'a> Scanner<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Scanner { b, pos: 0 }
    }

    #[inline]
    pub fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    pub fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    /// Consume `c` (after whitespace); false when the next byte is something else.
    #[inline]
    pub fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// At the end of the input, after trailing whitespace.
    pub fn at_end(&mut self) -> bool {
        self.ws();
        self.pos == self.b.len()
    }

    /// A string (the opening quote next, after whitespace): borrowed from the input
    /// unless it has escapes.
    pub fn string(&mut self) -> Option<Cow<'a, str>> {
        if !self.eat(b'"') {
            return None;
        }
        let b = self.b;
        let mut i = self.pos;
        let mut owned: Option<String> = None; // from the first escape on
        loop {
            let run = i;
            while i < b.len() && b[i] != b'"' && b[i] != b'\\' {
                if b[i] < 0x20 {
                    return None;
                }
                i += 1;
            }
            // runs end at ASCII bytes, so each one is whole UTF-8 on its own
            let text = std::str::from_utf8(&b[run..i]).ok()?;
            if *b.get(i)? == b'"' {
                self.pos = i + 1;
                return Some(match owned {
                    None => Cow::Borrowed(text),
                    Some(mut out) => {
                        out.push_str(text);
                        Cow::Owned(out)
                    }
                });
            }
            let out = owned.get_or_insert_with(String::new);
            out.push_str(text);
            let e = *b.get(i + 1)?;
            i += 2;
            match e {
                b'"' => out.push('"'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => {
                    let hex = std::str::from_utf8(b.get(i..i + 4)?).ok()?;
                    if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                        return None;
                    }
                    let code = u32::from_str_radix(hex, 16).ok()?;
                    if (0xD800..0xE000).contains(&code) {
                        return None; // surrogates: left to Python
                    }
                    out.push(char::from_u32(code)?);
                    i += 4;
                }
                _ => return None,
            }
        }
    }

    /// A number token; `Int` when it has no fraction or exponent and fits i64.
    fn number(&mut self) -> Option<Val<'a>> {
        let b = self.b;
        let start = self.pos;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => {
                while matches!(b.get(i), Some(b'0'..=b'9')) {
                    i += 1;
                }
            }
            _ => return None,
        }
        // one or more digits from `i`: the index after them
        let digits = |mut i: usize| -> Option<usize> {
            if !matches!(b.get(i), Some(b'0'..=b'9')) {
                return None;
            }
            while matches!(b.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
            Some(i)
        };
        let mut is_float = false;
        if b.get(i) == Some(&b'.') {
            i = digits(i + 1)?;
            is_float = true;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            i = digits(i)?;
            is_float = true;
        }
        self.pos = i;
        // the token is ASCII by construction
        let text = unsafe { std::str::from_utf8_unchecked(&b[start..i]) };
        if is_float {
            let v: f64 = text.parse().ok()?;
            if v.is_finite() {
                Some(Val::Float(v))
            } else {
                None
            }
        } else {
            text.parse::<i64>().ok().map(Val::Int)
        }
    }

    fn literal(&mut self, word: &[u8], v: Val<'a>) -> Option<Val<'a>> {
        if self.b.get(self.pos..self.pos + word.len())? == word {
            self.pos += word.len();
            Some(v)
        } else {
            None
        }
    }

    /// An object's members, its `{` next: `member(key, scanner)` reads a member's value,
    /// or returns false to leave it to be scanned (at `depth + 1`) and ignored.
    pub fn members(&mut self, depth: u32, mut member: impl FnMut(&str, &mut Self) -> Option<bool>) -> Option<()> {
        if depth >= MAX_DEPTH || !self.eat(b'{') {
            return None;
        }
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            let key = self.string()?;
            if !self.eat(b':') {
                return None;
            }
            if !member(&key, self)? {
                self.value(depth + 1)?;
            }
            if self.eat(b',') {
                continue;
            }
            return if self.eat(b'}') { Some(()) } else { None };
        }
    }

    /// An array, its `[` next: scanned, given as `Other`.
    fn array(&mut self, depth: u32) -> Option<Val<'a>> {
        if depth >= MAX_DEPTH || !self.eat(b'[') {
            return None;
        }
        if self.eat(b']') {
            return Some(Val::Other);
        }
        loop {
            self.value(depth + 1)?;
            if self.eat(b',') {
                continue;
            }
            return if self.eat(b']') { Some(Val::Other) } else { None };
        }
    }

    /// Any value; objects and arrays are scanned (validated) and given as `Other`.
    pub fn value(&mut self, depth: u32) -> Option<Val<'a>> {
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(Val::Str),
            b'{' => self.members(depth, |_, _| Some(false)).map(|_| Val::Other),
            b'[' => self.array(depth),
            b't' => self.literal(b"true", Val::Bool(true)),
            b'f' => self.literal(b"false", Val::Bool(false)),
            b'n' => self.literal(b"null", Val::Null),
            _ => self.number(),
        }
    }
}
