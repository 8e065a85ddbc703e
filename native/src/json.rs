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

/// The powers of ten that are exact in f64.
const POW10: [f64; 23] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                          1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22];

/// 5^0 to 5^22 (5^22 < 2^52).
const POW5: [u64; 23] = {
    let mut p = [1u64; 23];
    let mut k = 1;
    while k < 23 {
        p[k] = p[k - 1] * 5;
        k += 1;
    }
    p
};

/// 2^e as an f64 (e within the normal exponents).
fn pow2(e: i64) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// `mantissa * 10^exp10` correctly rounded, for a mantissa of at most 19 digits and
/// |exp10| <= 22.
///
/// - mantissa <= 2^53: the mantissa and the power of ten are both exact in f64, so the
///   one rounding of the product or quotient is the correctly rounded value (Clinger).
/// - exp10 >= 0: `mantissa * 5^exp10` is an exact integer in u128 (under 2^116); its
///   conversion to f64 rounds once, and `* 2^exp10` is exact.
/// - exp10 = -k < 0: `q = floor(mantissa * 2^64 / 5^k)` has at least 66 bits (mantissa
///   > 2^53, 5^k < 2^52), and a remainder is kept as q's lowest bit (13 or more places
///   below the rounding position, so it only says "above q", which is all rounding to
///   nearest needs of it); q's conversion rounds once and `* 2^-(64+k)` is exact.
fn exact_float(mantissa: u64, exp10: i64) -> f64 {
    if mantissa <= 1 << 53 {
        let m = mantissa as f64;
        return if exp10 < 0 { m / POW10[(-exp10) as usize] } else { m * POW10[exp10 as usize] };
    }
    if exp10 >= 0 {
        return ((mantissa as u128) * POW5[exp10 as usize] as u128) as f64 * pow2(exp10);
    }
    let k = (-exp10) as usize;
    let n = (mantissa as u128) << 64;
    let d = POW5[k] as u128;
    let q = n / d | u128::from(n % d != 0);
    q as f64 * pow2(-(64 + k as i64))
}

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
            let mut high = 0u8; // the bits of every byte of the run or'ed: ASCII when under 0x80
            while let Some(&c) = b.get(i) {
                if c == b'"' || c == b'\\' {
                    break;
                }
                if c < 0x20 {
                    return None;
                }
                high |= c;
                i += 1;
            }
            // runs end at ASCII bytes, so each one is whole UTF-8 on its own
            let text = if high < 0x80 {
                // SAFETY: ASCII bytes are UTF-8
                unsafe { std::str::from_utf8_unchecked(&b[run..i]) }
            } else {
                std::str::from_utf8(&b[run..i]).ok()?
            };
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
    ///
    /// A float of at most 19 digits and a power of ten within ±22 (the shortest
    /// representations Python and orjson write of values from about 1e-3 to 1e22) is
    /// computed from its digits as they are scanned (`exact_float`); any other float goes
    /// to Rust's own parser, as every float did before.
    fn number(&mut self) -> Option<Val<'a>> {
        let b = self.b;
        let start = self.pos;
        let mut i = start;
        let negative = b.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        // the digits as an integer (it wraps when there are more than 19 of them: then
        // `n_digits` says it is not the value)
        let mut mantissa: u64 = 0;
        let digits_from = |mut i: usize, mantissa: &mut u64| -> usize {
            while let Some(&c) = b.get(i) {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                *mantissa = mantissa.wrapping_mul(10).wrapping_add(d as u64);
                i += 1;
            }
            i
        };
        let int_start = i;
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => i = digits_from(i, &mut mantissa),
            _ => return None,
        }
        let mut n_digits = i - int_start;
        let mut is_float = false;
        let mut exp10: i64 = 0;
        if b.get(i) == Some(&b'.') {
            let frac_start = i + 1;
            i = digits_from(frac_start, &mut mantissa);
            if i == frac_start {
                return None;
            }
            n_digits += i - frac_start;
            exp10 = -((i - frac_start) as i64);
            is_float = true;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            let mut sign = 1;
            match b.get(i) {
                Some(b'+') => i += 1,
                Some(b'-') => {
                    sign = -1;
                    i += 1
                }
                _ => {}
            }
            if !matches!(b.get(i), Some(b'0'..=b'9')) {
                return None;
            }
            let mut e: i64 = 0;
            while let Some(&c @ b'0'..=b'9') = b.get(i) {
                e = (e * 10 + (c - b'0') as i64).min(1 << 20); // far beyond any exact power: capped
                i += 1;
            }
            exp10 += sign * e;
            is_float = true;
        }
        let exact = n_digits <= 19;
        self.pos = i;
        if is_float {
            if exact && (-22..=22).contains(&exp10) {
                let v = exact_float(mantissa, exp10);
                return Some(Val::Float(if negative { -v } else { v }));
            }
            // the token is ASCII by construction
            let text = unsafe { std::str::from_utf8_unchecked(&b[start..i]) };
            let v: f64 = text.parse().ok()?;
            if v.is_finite() {
                Some(Val::Float(v))
            } else {
                None
            }
        } else {
            let text = unsafe { std::str::from_utf8_unchecked(&b[start..i]) };
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
    pub fn members(&mut self, depth: u32, member: impl FnMut(&str, &mut Self) -> Option<bool>) -> Option<()> {
        self.members_expecting(depth, || None, member)
    }

    /// `members`, where `expect()` may name the key the next member most likely has: a
    /// key spelled exactly so (no escapes) is then taken by comparing its bytes, without
    /// scanning it as a string. The names given must hold no `"`, `\` or control
    /// character (their JSON spelling is then their bytes between quotes).
    pub fn members_expecting<'e>(&mut self, depth: u32, mut expect: impl FnMut() -> Option<&'e str>,
                                 mut member: impl FnMut(&str, &mut Self) -> Option<bool>) -> Option<()> {
        if depth >= MAX_DEPTH || !self.eat(b'{') {
            return None;
        }
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            let scanned;
            let key = match expect() {
                Some(name) if self.exact_string(name) => name,
                _ => {
                    scanned = self.string()?;
                    &*scanned
                }
            };
            if !self.eat(b':') {
                return None;
            }
            if !member(key, self)? {
                self.value(depth + 1)?;
            }
            if self.eat(b',') {
                continue;
            }
            return if self.eat(b'}') { Some(()) } else { None };
        }
    }

    /// The string `"text"` spelled with `text`'s own bytes (after whitespace): consumed,
    /// true; else nothing is consumed.
    fn exact_string(&mut self, text: &str) -> bool {
        self.ws();
        let (b, p, n) = (self.b, self.pos, text.len());
        let end = p + 1 + n;
        if b.get(p) == Some(&b'"') && b.get(p + 1..end) == Some(text.as_bytes()) && b.get(end) == Some(&b'"') {
            self.pos = end + 1;
            true
        } else {
            false
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
