//! Pickle, as python-socketio ≤ 5.13 publishes it (protocols 2–5), read safely.
//!
//! serde-pickle never executes code, but it is lenient in ways that do not suit a network input:
//! it turns unknown classes (INST, OBJ, NEWOBJ, BUILD, `copyreg._reconstructor`) into stand-in
//! values instead of failing, and keeps `GLOBAL os.system` + REDUCE on its stack as an opaque
//! value that a later POP silently discards. Its costs also follow the input in ways an attacker
//! can exploit: it builds its value tree iteratively but converts and drops it recursively, so a
//! deep pickle (or one that nests through memo references) overflows the stack; a value
//! referenced from the memo many times expands, and is copied each time REDUCE or a memo store
//! resolves it; and every MARK reserves room for 128 values. So [`parse`] first walks the
//! opcodes without building anything:
//!
//! - it accepts only the opcodes CPython's pickler writes for plain data in protocols 2–5;
//! - it refuses every opcode that builds arbitrary objects, and every global except the two
//!   plain data needs (`_codecs.encode`, protocol 2's bytes, and `bytearray`), as
//!   [`DecodeError::ForbiddenPickle`];
//! - it tracks, for each stack item and memo slot, its nesting depth and expanded size, and
//!   refuses the pickle once either exceeds [`Limits`]. This is exact because it also refuses
//!   what the pickler never writes and would make it inexact: changing a memoized container
//!   after it has been fetched (that is how recursive structures are written), reusing a memo
//!   slot, and DUP;
//! - it bounds the open MARKs by the depth limit and the sizes copied while parsing by the size
//!   limit.
//!
//! Only then does serde-pickle build the value.

use std::collections::HashMap;

use serde_pickle::{DeOptions, HashableValue, Value as Pickle};

use crate::payload::Value;

use super::{malformed, nested, wrong_type, DecodeError, Limits};

/// The first byte of every pickle of protocol 2 or later.
pub(super) const PROTO: u8 = 0x80;

const MARK: u8 = b'(';
const STOP: u8 = b'.';
const POP: u8 = b'0';
const POP_MARK: u8 = b'1';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const NONE: u8 = b'N';
const PERSID: u8 = b'P';
const BINPERSID: u8 = b'Q';
const REDUCE: u8 = b'R';
const BINUNICODE: u8 = b'X';
const APPEND: u8 = b'a';
const BUILD: u8 = b'b';
const GLOBAL: u8 = b'c';
const DICT: u8 = b'd';
const EMPTY_DICT: u8 = b'}';
const APPENDS: u8 = b'e';
const BINGET: u8 = b'h';
const INST: u8 = b'i';
const LONG_BINGET: u8 = b'j';
const LIST: u8 = b'l';
const EMPTY_LIST: u8 = b']';
const OBJ: u8 = b'o';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const SETITEM: u8 = b's';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const SETITEMS: u8 = b'u';
const BINFLOAT: u8 = b'G';
const NEWOBJ: u8 = 0x81;
const EXT1: u8 = 0x82;
const EXT2: u8 = 0x83;
const EXT4: u8 = 0x84;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const LONG1: u8 = 0x8a;
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BINBYTES8: u8 = 0x8e;
const EMPTY_SET: u8 = 0x8f;
const ADDITEMS: u8 = 0x90;
const FROZENSET: u8 = 0x91;
const NEWOBJ_EX: u8 = 0x92;
const STACK_GLOBAL: u8 = 0x93;
const MEMOIZE: u8 = 0x94;
const FRAME: u8 = 0x95;
const BYTEARRAY8: u8 = 0x96;

/// Decodes a pickle after checking it as described in the module documentation.
pub(super) fn parse(bytes: &[u8], limits: &Limits) -> Result<Pickle, DecodeError> {
    Check { bytes, pos: 0, stack: vec![], marks: vec![], memo: HashMap::new(), copied: 0, limits }.run()?;
    serde_pickle::value_from_slice(bytes, DeOptions::new()).map_err(|e| malformed("pickle", e))
}

/// Converts a pickled value nested `depth` containers deep.
pub(super) fn to_value(pickle: Pickle, depth: usize, limits: &Limits) -> Result<Value, DecodeError> {
    Ok(match pickle {
        Pickle::None => Value::Null,
        Pickle::Bool(b) => Value::Bool(b),
        Pickle::I64(i) => Value::Int(i),
        Pickle::Int(big) => big_integer(&big.to_string()),
        Pickle::F64(f) => Value::Float(f),
        Pickle::Bytes(bytes) => Value::Binary(bytes.into()),
        Pickle::String(s) => Value::String(s),
        Pickle::List(items) | Pickle::Tuple(items) => {
            let depth = nested(depth, limits)?;
            Value::Array(items.into_iter().map(|item| to_value(item, depth, limits)).collect::<Result<_, _>>()?)
        }
        Pickle::Dict(dict) => {
            let depth = nested(depth, limits)?;
            Value::Object(
                dict.into_iter()
                    .map(|(key, value)| Ok((key_string(key)?, to_value(value, depth, limits)?)))
                    .collect::<Result<_, DecodeError>>()?,
            )
        }
        Pickle::Set(_) | Pickle::FrozenSet(_) => return Err(wrong_type("pickled value", "no sets (JSON has none)")),
    })
}

/// An integer beyond `i64`, as the JSON producers would send it: exact up to `u64`, else float.
fn big_integer(decimal: &str) -> Value {
    match decimal.parse::<u64>() {
        Ok(u) => Value::UInt(u),
        Err(_) => Value::Float(decimal.parse().unwrap_or(f64::NAN)),
    }
}

/// A dict key as Python's `json.dumps` writes it.
fn key_string(key: HashableValue) -> Result<String, DecodeError> {
    match key {
        HashableValue::String(s) => Ok(s),
        HashableValue::I64(i) => Ok(i.to_string()),
        HashableValue::Int(big) => Ok(big.to_string()),
        HashableValue::Bool(b) => Ok(b.to_string()),
        HashableValue::None => Ok("null".to_string()),
        _ => Err(wrong_type("pickled dict key", "a string, integer, boolean or None")),
    }
}

fn allowed_global(module: &str, name: &str) -> bool {
    matches!((module, name), ("_codecs", "encode") | ("builtins" | "__builtin__", "bytearray"))
}

/// What the check knows about a value on the pickle stack or in the memo.
#[derive(Clone, Default)]
struct Item {
    /// Containers nested in it, itself included.
    depth: usize,
    /// Its size once every memo reference in it is expanded, about one unit per byte.
    size: usize,
    /// The memo slot it refers to, when it is a memo reference.
    slot: Option<u32>,
    /// Its text, when it is a short string (the operands of STACK_GLOBAL).
    text: Option<String>,
    /// Whether it is one of the allowed globals (the only things REDUCE may call).
    callable: bool,
}

struct Slot {
    item: Item,
    fetched: bool,
}

struct Check<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    /// Stack heights at each open MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Slot>,
    /// What serde-pickle copies out of its memo while parsing, in the units of [`Item::size`].
    copied: usize,
    limits: &'a Limits,
}

impl Check<'_> {
    fn run(&mut self) -> Result<(), DecodeError> {
        loop {
            let opcode = self.take(1)?[0];
            match opcode {
                PROTO => {
                    let protocol = self.take(1)?[0];
                    if !(2..=5).contains(&protocol) {
                        return Err(malformed("pickle", format_args!("protocol {protocol}")));
                    }
                }
                FRAME => {
                    self.take(8)?;
                }
                STOP => {
                    self.pop()?;
                    if self.pos != self.bytes.len() {
                        return Err(malformed("pickle", "bytes after STOP"));
                    }
                    return Ok(());
                }
                MARK if self.marks.len() >= self.limits.max_depth => return Err(DecodeError::TooDeep { limit: self.limits.max_depth }),
                MARK => self.marks.push(self.stack.len()),
                POP if self.stack.len() == self.base() => {
                    self.pop_mark()?;
                }
                POP => {
                    self.pop()?;
                }
                POP_MARK => {
                    self.pop_mark()?;
                }
                NONE | NEWTRUE | NEWFALSE => self.push_scalar(0)?,
                BININT1 => self.scalar(1)?,
                BININT2 => self.scalar(2)?,
                BININT => self.scalar(4)?,
                BINFLOAT => self.scalar(8)?,
                LONG1 => self.prefixed_scalar(1)?,
                SHORT_BINBYTES => self.prefixed_scalar(1)?,
                BINBYTES => self.prefixed_scalar(4)?,
                BINBYTES8 | BYTEARRAY8 => self.prefixed_scalar(8)?,
                SHORT_BINUNICODE => self.string(1)?,
                BINUNICODE => self.string(4)?,
                BINUNICODE8 => self.string(8)?,
                EMPTY_TUPLE | EMPTY_LIST | EMPTY_DICT | EMPTY_SET => self.push_container(vec![])?,
                TUPLE1 => self.pop_into_container(1)?,
                TUPLE2 => self.pop_into_container(2)?,
                TUPLE3 => self.pop_into_container(3)?,
                TUPLE | LIST | DICT | FROZENSET => {
                    let items = self.pop_mark()?;
                    self.push_container(items)?;
                }
                APPEND => {
                    let item = self.pop()?;
                    self.add_to_top(vec![item])?;
                }
                SETITEM => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.add_to_top(vec![key, value])?;
                }
                APPENDS | SETITEMS | ADDITEMS => {
                    let items = self.pop_mark()?;
                    self.add_to_top(items)?;
                }
                MEMOIZE => self.memoize(self.memo.len() as u32)?,
                BINPUT => {
                    let slot = self.take(1)?[0];
                    self.memoize(slot.into())?;
                }
                LONG_BINPUT => {
                    let slot = self.number(4)?;
                    self.memoize(slot as u32)?;
                }
                BINGET => {
                    let slot = self.take(1)?[0];
                    self.fetch(slot.into())?;
                }
                LONG_BINGET => {
                    let slot = self.number(4)?;
                    self.fetch(slot as u32)?;
                }
                GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push_global(&module, &name)?;
                }
                STACK_GLOBAL => {
                    let name = self.pop()?.text;
                    let module = self.pop()?.text;
                    match (module, name) {
                        (Some(module), Some(name)) => self.push_global(&module, &name)?,
                        _ => return Err(DecodeError::ForbiddenPickle("STACK_GLOBAL of computed names".into())),
                    }
                }
                REDUCE => {
                    let arguments = self.pop()?;
                    self.copy_if_reference(&arguments)?;
                    let callable = self.pop()?;
                    self.copy_if_reference(&callable)?;
                    if !callable.callable {
                        return Err(malformed("pickle", "REDUCE of something not callable"));
                    }
                    self.push(Item { size: arguments.size, ..Item::default() })?;
                }
                INST | OBJ | NEWOBJ | NEWOBJ_EX | BUILD | PERSID | BINPERSID | EXT1 | EXT2 | EXT4 => {
                    return Err(DecodeError::ForbiddenPickle(format!("opcode {:?} builds objects", opcode as char)));
                }
                _ => return Err(malformed("pickle", format_args!("opcode 0x{opcode:02x} not used for plain data"))),
            }
        }
    }

    fn take(&mut self, len: usize) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(len).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| malformed("pickle", "truncated"))?;
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(taken)
    }

    /// A little-endian unsigned number of `width` bytes.
    fn number(&mut self, width: usize) -> Result<u64, DecodeError> {
        Ok(self.take(width)?.iter().rev().fold(0u64, |n, byte| (n << 8) | u64::from(*byte)))
    }

    /// A length prefix of `width` bytes followed by that many bytes.
    fn prefixed(&mut self, width: usize) -> Result<&[u8], DecodeError> {
        let len = self.number(width)?;
        self.take(usize::try_from(len).unwrap_or(usize::MAX))
    }

    fn line(&mut self) -> Result<String, DecodeError> {
        let rest = &self.bytes[self.pos..];
        let end = rest.iter().position(|b| *b == b'\n').ok_or_else(|| malformed("pickle", "truncated"))?;
        let line = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(line)
    }

    fn scalar(&mut self, width: usize) -> Result<(), DecodeError> {
        self.take(width)?;
        self.push_scalar(width)
    }

    fn prefixed_scalar(&mut self, width: usize) -> Result<(), DecodeError> {
        let len = self.prefixed(width)?.len();
        self.push_scalar(len)
    }

    fn string(&mut self, width: usize) -> Result<(), DecodeError> {
        let bytes = self.prefixed(width)?;
        let text = std::str::from_utf8(bytes).ok().filter(|s| s.len() <= 64).map(str::to_string);
        let size = bytes.len() + 1;
        self.push(Item { size, text, ..Item::default() })
    }

    fn push_scalar(&mut self, len: usize) -> Result<(), DecodeError> {
        self.push(Item { size: len + 1, ..Item::default() })
    }

    fn push_global(&mut self, module: &str, name: &str) -> Result<(), DecodeError> {
        if !allowed_global(module, name) {
            return Err(DecodeError::ForbiddenPickle(format!("global {module}.{name}")));
        }
        self.push(Item { size: 1, callable: true, ..Item::default() })
    }

    fn push_container(&mut self, items: Vec<Item>) -> Result<(), DecodeError> {
        let mut container = Item { depth: 1, size: 1, ..Item::default() };
        grow(&mut container, &items);
        self.push(container)
    }

    fn pop_into_container(&mut self, count: usize) -> Result<(), DecodeError> {
        let mut items = (0..count).map(|_| self.pop()).collect::<Result<Vec<_>, _>>()?;
        items.reverse();
        self.push_container(items)
    }

    /// APPEND(S), SETITEM(S), ADDITEMS: `items` go into the container on top of the stack.
    fn add_to_top(&mut self, items: Vec<Item>) -> Result<(), DecodeError> {
        if self.stack.len() == self.base() {
            return Err(malformed("pickle", "stack underflow"));
        }
        let top = self.stack.last_mut().expect("checked above");
        grow(top, &items);
        let top = top.clone();
        if let Some(slot) = top.slot {
            let slot = self.memo.get_mut(&slot).expect("memo references point to slots");
            if slot.fetched {
                return Err(malformed("pickle", "memoized container changed after use (recursive structure)"));
            }
            slot.item = Item { slot: None, ..top.clone() };
        }
        self.check_limits(&top)
    }

    fn memoize(&mut self, slot: u32) -> Result<(), DecodeError> {
        if self.stack.len() == self.base() {
            return Err(malformed("pickle", "stack underflow"));
        }
        if self.memo.contains_key(&slot) {
            return Err(malformed("pickle", "memo slot reused"));
        }
        let top = self.stack.last().expect("checked above").clone();
        self.copy_if_reference(&top)?;
        self.stack.last_mut().expect("checked above").slot = Some(slot);
        self.memo.insert(slot, Slot { item: Item { slot: None, ..top }, fetched: false });
        Ok(())
    }

    /// serde-pickle copies the value of a memo reference when REDUCE or a memo store resolves it.
    fn copy_if_reference(&mut self, item: &Item) -> Result<(), DecodeError> {
        if item.slot.is_some() {
            self.copied = self.copied.saturating_add(item.size);
            if self.copied > self.limits.max_bytes {
                return Err(DecodeError::TooLarge { size: self.copied, limit: self.limits.max_bytes });
            }
        }
        Ok(())
    }

    fn fetch(&mut self, slot: u32) -> Result<(), DecodeError> {
        let entry = self.memo.get_mut(&slot).ok_or_else(|| malformed("pickle", "unknown memo slot"))?;
        entry.fetched = true;
        let item = Item { slot: Some(slot), ..entry.item.clone() };
        self.push(item)
    }

    fn push(&mut self, item: Item) -> Result<(), DecodeError> {
        self.check_limits(&item)?;
        self.stack.push(item);
        Ok(())
    }

    fn check_limits(&self, item: &Item) -> Result<(), DecodeError> {
        if item.depth > self.limits.max_depth {
            return Err(DecodeError::TooDeep { limit: self.limits.max_depth });
        }
        if item.size > self.limits.max_bytes {
            return Err(DecodeError::TooLarge { size: item.size, limit: self.limits.max_bytes });
        }
        Ok(())
    }

    /// Where the items above the innermost MARK start (serde-pickle never pops across a MARK).
    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Item, DecodeError> {
        if self.stack.len() == self.base() {
            return Err(malformed("pickle", "stack underflow"));
        }
        Ok(self.stack.pop().expect("checked above"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Item>, DecodeError> {
        let mark = self.marks.pop().ok_or_else(|| malformed("pickle", "no MARK"))?;
        Ok(self.stack.split_off(mark))
    }
}

/// Accounts for `items` going into `container`.
fn grow(container: &mut Item, items: &[Item]) {
    for item in items {
        container.depth = container.depth.max(item.depth + 1);
        container.size = container.size.saturating_add(item.size);
    }
    container.text = None;
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn check(bytes: &[u8]) -> Result<Pickle, DecodeError> {
        parse(bytes, &Limits::default())
    }

    fn reason(bytes: &[u8]) -> &'static str {
        check(bytes).unwrap_err().reason()
    }

    #[test]
    fn reads_plain_data_of_every_protocol() {
        // pickle.dumps({'b': b'\x00\xff', 't': (1, 2.5, None, True), 'l': [2**70, 'é']}, protocol=P)
        let protocols = [
            &b"\x80\x02}q\x00(X\x01\x00\x00\x00bq\x01c_codecs\nencode\nq\x02X\x03\x00\x00\x00\x00\xc3\xbfq\x03X\x06\x00\x00\x00latin1q\x04\x86q\x05Rq\x06X\x01\x00\x00\x00tq\x07(K\x01G@\x04\x00\x00\x00\x00\x00\x00N\x88tq\x08X\x01\x00\x00\x00lq\t]q\n(\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@X\x02\x00\x00\x00\xc3\xa9q\x0beu."[..],
            b"\x80\x03}q\x00(X\x01\x00\x00\x00bq\x01C\x02\x00\xffq\x02X\x01\x00\x00\x00tq\x03(K\x01G@\x04\x00\x00\x00\x00\x00\x00N\x88tq\x04X\x01\x00\x00\x00lq\x05]q\x06(\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@X\x02\x00\x00\x00\xc3\xa9q\x07eu.",
            b"\x80\x05\x95:\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01b\x94C\x02\x00\xff\x94\x8c\x01t\x94(K\x01G@\x04\x00\x00\x00\x00\x00\x00N\x88t\x94\x8c\x01l\x94]\x94(\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@\x8c\x02\xc3\xa9\x94eu.",
        ];
        for pickle in protocols {
            let value = to_value(check(pickle).unwrap(), 0, &Limits::default()).unwrap();
            assert_eq!(
                format!("{value:?}"),
                "Object([(\"b\", Binary(b\"\\0\\xff\")), (\"l\", Array([Float(1.1805916207174113e21), String(\"é\")])), \
                 (\"t\", Array([Int(1), Float(2.5), Null, Bool(true)]))])"
            );
        }
        // pickle.dumps(bytearray(b'\x07\x08'), protocol=P): a global bytearray called by REDUCE.
        let bytearrays = [
            &b"\x80\x02c__builtin__\nbytearray\nq\x00c_codecs\nencode\nq\x01X\x02\x00\x00\x00\x07\x08q\x02X\x06\x00\x00\x00latin1q\x03\x86q\x04Rq\x05\x85q\x06Rq\x07."[..],
            b"\x80\x03cbuiltins\nbytearray\nq\x00C\x02\x07\x08q\x01\x85q\x02Rq\x03.",
            b"\x80\x04\x95#\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\tbytearray\x94\x93\x94C\x02\x07\x08\x94\x85\x94R\x94.",
        ];
        for pickle in bytearrays {
            assert_eq!(check(pickle).unwrap(), Pickle::Bytes(vec![7, 8]));
        }
        // pickle.dumps({1, 2}, protocol=4): readable, but JSON has no sets.
        let set = check(b"\x80\x04\x95\t\x00\x00\x00\x00\x00\x00\x00\x8f\x94(K\x01K\x02\x90.").unwrap();
        assert_eq!(to_value(set, 0, &Limits::default()).unwrap_err().reason(), "wrong_type");
    }

    #[test]
    fn refuses_globals_and_object_building() {
        // GLOBAL os.system, then REDUCE: serde-pickle would keep an opaque value on its stack.
        assert_eq!(reason(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsq\x00\x85R0N."), "forbidden_pickle");
        // The same through STACK_GLOBAL (protocol 4), and datetime.datetime.
        assert_eq!(reason(b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94."), "forbidden_pickle");
        // pickle.dumps(datetime.datetime(2020, 1, 1), protocol=4)
        let datetime = b"\x80\x04\x95*\x00\x00\x00\x00\x00\x00\x00\x8c\x08datetime\x94\x8c\x08datetime\x94\x93\x94C\n\x07\xe4\x01\x01\x00\x00\x00\x00\x00\x00\x94\x85\x94R\x94.";
        assert_eq!(reason(datetime), "forbidden_pickle");
        // Names computed rather than written.
        assert_eq!(reason(b"\x80\x04N\x8c\x06system\x94\x93."), "forbidden_pickle");
        for opcode in [b'i', b'o', 0x81, 0x92, b'b', b'P', b'Q', 0x82, 0x83, 0x84] {
            assert_eq!(reason(&[0x80, 0x04, b'}', opcode, b'.']), "forbidden_pickle", "opcode {opcode:#x}");
        }
    }

    #[test]
    fn refuses_what_would_blow_up_later() {
        // 100_000 nested lists: EMPTY_LIST * n, then APPEND * (n - 1).
        let n = 100_000;
        let mut deep = vec![0x80, 0x04];
        deep.extend(std::iter::repeat_n(b']', n));
        deep.extend(std::iter::repeat_n(b'a', n - 1));
        deep.push(b'.');
        assert_eq!(reason(&deep), "too_deep");
        // The same nesting through the memo: L0 = []; L1 = [L0]; ... each fetched from the memo.
        let mut chain = vec![0x80, 0x04, b']', 0x94];
        for _ in 0..100 {
            chain.extend([b']', 0x94, b'h']);
            let previous = chain.iter().filter(|b| **b == 0x94).count() as u8 - 2;
            chain.extend([previous, b'a']);
        }
        chain.push(b'.');
        assert_eq!(reason(&chain), "too_deep");
        // Expansion: a 1000-byte string referenced twice, then that list twice, ... 20 times.
        let mut laughs = vec![0x80, 0x04, b'X', 0xe8, 0x03, 0, 0];
        laughs.extend([b'x'; 1000]);
        laughs.push(0x94);
        for slot in 0..20u8 {
            laughs.extend([b'h', slot, b'h', slot, 0x86, 0x94]);
        }
        laughs.push(b'.');
        assert_eq!(reason(&laughs), "too_large");
        // Open MARKs, each of which serde-pickle would reserve room for 128 values for.
        let marks = [&[0x80, 0x04][..], &vec![b'('; n], b"N."].concat();
        assert_eq!(reason(&marks), "too_deep");
        // A 300 kB bytes object copied by REDUCE again and again: bytearray(b) for b in [b] * k.
        let copies = |k: usize| {
            let mut pickle = b"\x80\x04\x8c\x08builtins\x94\x8c\tbytearray\x94\x93\x94B\xe0\x93\x04\x00".to_vec();
            pickle.extend(vec![b'x'; 300_000]);
            pickle.extend(b"\x85\x94");
            pickle.extend(b"h\x02h\x03R0".repeat(k));
            pickle.extend(b"N.");
            pickle
        };
        assert!(check(&copies(3)).is_ok());
        assert_eq!(reason(&copies(4)), "too_large");
        // The same through memo stores.
        let stores = |k: u8| {
            let mut pickle = b"\x80\x04B\xe0\x93\x04\x00".to_vec();
            pickle.extend(vec![b'x'; 300_000]);
            pickle.push(0x94);
            for slot in 1..=k {
                pickle.extend([b'h', 0, b'q', slot, b'0']);
            }
            pickle.extend(b"N.");
            pickle
        };
        assert!(check(&stores(3)).is_ok());
        assert_eq!(reason(&stores(4)), "too_large");
        // A recursive list: l = []; l.append(l).
        assert_eq!(reason(b"\x80\x04]\x94h\x00a."), "malformed");
        // A length prefix far beyond the payload.
        assert_eq!(reason(b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\x7f."), "malformed");
    }

    /// Containers nested in a value, and the number of values in it once expanded.
    fn depth_and_count(pickle: &Pickle) -> (usize, usize) {
        fn hashable(key: &HashableValue) -> (usize, usize) {
            match key {
                HashableValue::Tuple(items) => nest(items.iter().map(hashable)),
                HashableValue::FrozenSet(items) => nest(items.iter().map(hashable)),
                _ => (0, 1),
            }
        }
        fn nest(children: impl Iterator<Item = (usize, usize)>) -> (usize, usize) {
            children.fold((1, 1), |(depth, count), (d, c)| (depth.max(d + 1), count + c))
        }
        match pickle {
            Pickle::List(items) | Pickle::Tuple(items) => nest(items.iter().map(depth_and_count)),
            Pickle::Set(items) | Pickle::FrozenSet(items) => nest(items.iter().map(hashable)),
            Pickle::Dict(dict) => nest(dict.iter().flat_map(|(k, v)| [hashable(k), depth_and_count(v)])),
            _ => (0, 1),
        }
    }

    /// A pickle that serde-pickle can read, of lists, dicts, tuples and memo references chosen
    /// by `choices`.
    fn well_formed(choices: Vec<u8>) -> Vec<u8> {
        #[derive(Clone, Copy, PartialEq)]
        enum Kind {
            List,
            Dict,
            Immutable,
        }
        let mut pickle = vec![PROTO, 4];
        let mut stack: Vec<Kind> = vec![];
        let mut memo: Vec<Kind> = vec![];
        for choice in choices {
            let from_top = |n: usize| stack.len().checked_sub(n + 1).map(|i| stack[i]);
            match choice % 8 {
                0 => {
                    pickle.push(EMPTY_LIST);
                    stack.push(Kind::List);
                }
                1 => {
                    pickle.push(EMPTY_DICT);
                    stack.push(Kind::Dict);
                }
                2 => {
                    pickle.extend([BININT1, choice]);
                    stack.push(Kind::Immutable);
                }
                3 if !stack.is_empty() => {
                    pickle.push(MEMOIZE);
                    memo.push(stack[stack.len() - 1]);
                }
                4 if !memo.is_empty() => {
                    let slot = usize::from(choice) % memo.len();
                    pickle.extend([BINGET, slot as u8]);
                    stack.push(memo[slot]);
                }
                5 if from_top(1) == Some(Kind::List) => {
                    pickle.push(APPEND);
                    stack.pop();
                }
                6 if from_top(2) == Some(Kind::Dict) && from_top(1) == Some(Kind::Immutable) => {
                    pickle.push(SETITEM);
                    stack.truncate(stack.len() - 2);
                }
                7 if stack.len() >= 2 => {
                    pickle.push(TUPLE2);
                    stack.truncate(stack.len() - 2);
                    stack.push(Kind::Immutable);
                }
                _ => {}
            }
        }
        if stack.is_empty() {
            pickle.push(NONE);
        }
        pickle.push(STOP);
        pickle
    }

    proptest! {
        /// What the check lets through stays within the limits once serde-pickle builds it.
        #[test]
        fn accepted_pickles_respect_the_limits(pickle in prop::collection::vec(any::<u8>(), 0..64).prop_map(well_formed)) {
            let limits = Limits { max_bytes: 40, max_depth: 3 };
            if let Ok(value) = parse(&pickle, &limits) {
                let (depth, count) = depth_and_count(&value);
                prop_assert!(depth <= limits.max_depth, "depth {depth} of {value:?}");
                prop_assert!(count <= limits.max_bytes, "{count} values in {value:?}");
            }
        }
    }

    #[test]
    fn refuses_broken_streams() {
        for bad in [
            &b"\x80"[..],
            b"\x80\x04",
            b"\x80\x04N",
            b"\x80\x04N.N",
            b"\x80\x04.",
            b"\x80\x04a.",
            b"\x80\x04(\x85.",
            b"\x80\x04h\x05.",
            b"\x80\x04N\x94q\x00.",
            b"\x80\x01N.",
            b"\x80\x04\x32.",
            b"\x80\x04e.",
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
    }
}
