//! `Key`: an id as the joiner's map (joinstate.rs) and the trainer's dedupe set
//! (recent.rs) hold it: up to `INLINE_KEY` bytes in the key itself, longer ones shared
//! behind an `Arc`.
//!
//! With `Arc<str>` keys every id was an allocation of its own, and every probe of the
//! map compared the id through that pointer: a second cache line, read at random, for a
//! map of tens of thousands of ids that does not fit in this machine's L2. An inline key
//! is compared, hashed and copied (into the deadline queue, the time buckets and the
//! change log) where it lies. A `Key` is 24 bytes either way.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Ids of up to this many bytes are held in the key itself.
pub const INLINE_KEY: usize = 22;

#[derive(Clone)]
pub enum Key {
    Inline(u8, [u8; INLINE_KEY]),
    Shared(Arc<str>),
}

impl From<&str> for Key {
    fn from(s: &str) -> Key {
        if s.len() > INLINE_KEY {
            return Key::Shared(Arc::from(s));
        }
        let mut bytes = [0u8; INLINE_KEY];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Key::Inline(s.len() as u8, bytes)
    }
}

impl std::ops::Deref for Key {
    type Target = str;

    #[inline]
    fn deref(&self) -> &str {
        match self {
            // SAFETY: the bytes were copied whole from a str (`From<&str>`)
            Key::Inline(n, bytes) => unsafe { std::str::from_utf8_unchecked(&bytes[..*n as usize]) },
            Key::Shared(s) => s,
        }
    }
}

// Equality and hash by the bytes where they lie: two inline keys compare as their fixed
// arrays (the unused bytes are zero), two shared ones by pointer first. An id has one form
// (inline if and only if it fits), so keys of different forms differ. The map is probed
// with a `Key` made from the record's id, not with a `&str`: the hash is the key's own.
impl PartialEq for Key {
    #[inline]
    fn eq(&self, other: &Key) -> bool {
        match (self, other) {
            (Key::Inline(n, a), Key::Inline(m, b)) => n == m && a == b,
            (Key::Shared(a), Key::Shared(b)) => Arc::ptr_eq(a, b) || **a == **b,
            _ => false,
        }
    }
}

impl Eq for Key {}

impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Key::Inline(n, b) => {
                let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
                let last = u64::from(u16::from_le_bytes([b[16], b[17]]))
                    | u64::from(u32::from_le_bytes([b[18], b[19], b[20], b[21]])) << 16
                    | u64::from(*n) << 56;
                state.write_u64(word(0));
                state.write_u64(word(8));
                state.write_u64(last);
            }
            Key::Shared(s) => s.hash(state),
        }
    }
}
