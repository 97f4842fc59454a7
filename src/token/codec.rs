//! Packing primitives shared by 006 and 007 (spec §1), strict base64 and zlib.
//!
//! Integers are little-endian; a string is a u16 byte length then the bytes; a
//! privilege map is a u16 count then (u16 key, u32 value) pairs in ascending key
//! order. Writing refuses what does not fit the u16 prefixes instead of
//! truncating (Go and the official Rust crate truncate and corrupt the token).
//!
//! zlib: the system zlib backend (flate2 `zlib` feature) is the only backend
//! whose output is byte-identical to Agora's python3/C++/Java builders (spec §8:
//! 50/50 payloads, against 0/50 for miniz_oxide and 7/50 for zlib-rs) and it is
//! as fast as the others with a reused encoder. Creating an encoder costs more
//! than compressing a token, so each thread keeps one `Compress` and one
//! `Decompress` and resets them per use: state, not I/O, so the core stays pure.

use std::cell::RefCell;
use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::TokenError;

/// The largest inflated payload accepted, 16 KiB. Real tokens inflate to well
/// under 4 KiB (the largest of the 287 official and generated vectors, every
/// service in one token, is 983 bytes), so this leaves room for long RTM2
/// permission lists while a deflate bomb (1.7 KB of base64 inflates to 1 MiB)
/// costs the parser at most 16 KiB and a few microseconds, not milliseconds of
/// CPU and a megabyte of reply. Anything larger is a malformed token.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// The longest token body (after the version prefix) worth decoding: base64 of
/// a payload of `MAX_PAYLOAD_BYTES` plus zlib's worst-case overhead. Longer
/// input is refused before anything is allocated for it.
pub const MAX_BODY_CHARS: usize =
    (MAX_PAYLOAD_BYTES + MAX_PAYLOAD_BYTES / 1000 + 64).div_ceil(3) * 4;

/// Appends the wire encoding of values to a byte buffer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

/// Reads wire values from a byte slice; every read is bounds-checked.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Why a token string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The string does not start with this parser's version prefix.
    #[error("not a {expected} token")]
    NotThisVersion {
        /// The prefix this parser reads ("007" or "006").
        expected: &'static str,
    },
    /// The body is not strict standard base64 with padding.
    #[error("the token body is not standard base64")]
    BadBase64,
    /// The body is not one complete, valid zlib stream.
    #[error("the token body is not a valid zlib stream")]
    BadZlib,
    /// The token or its inflated payload is larger than any real token.
    #[error("the token is larger than {MAX_PAYLOAD_BYTES} bytes inflated")]
    PayloadTooLarge,
    /// The payload ended in the middle of a field.
    #[error("the payload ends inside {0}")]
    Truncated(&'static str),
}

thread_local! {
    /// One encoder per thread at zlib's default level with the zlib header,
    /// as Agora's builders use (spec §2.1).
    static DEFLATE: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), true));
    /// One decoder per thread, expecting the zlib header.
    static INFLATE: RefCell<Decompress> = RefCell::new(Decompress::new(true));
}

impl Writer {
    /// A writer whose buffer can hold `capacity` bytes before growing.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// A writer that reuses `buf`'s allocation (its content is cleared).
    pub fn from_vec(mut buf: Vec<u8>) -> Self {
        buf.clear();
        Self { buf }
    }

    /// Appends a little-endian u16.
    pub fn u16(&mut self, value: u16) -> &mut Self {
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends a little-endian u32.
    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends a little-endian i16 (the APaaS role).
    pub fn i16(&mut self, value: i16) -> &mut Self {
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends raw bytes with no length prefix.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// Appends a u16-length-prefixed string; `field` names it in the error.
    pub fn string(&mut self, field: &'static str, bytes: &[u8]) -> Result<&mut Self, TokenError> {
        let len = u16::try_from(bytes.len()).map_err(|_| TokenError::StringTooLong {
            field,
            len: bytes.len(),
        })?;
        self.u16(len);
        self.buf.extend_from_slice(bytes);
        Ok(self)
    }

    /// Appends a u16 count for a list named `what`, refusing more than 65535 entries.
    pub fn count(&mut self, what: &'static str, count: usize) -> Result<&mut Self, TokenError> {
        let narrow =
            u16::try_from(count).map_err(|_| TokenError::TooManyEntries { what, count })?;
        Ok(self.u16(narrow))
    }

    /// Appends a privilege map; a `BTreeMap` iterates in the ascending key order the format needs.
    pub fn map(&mut self, map: &BTreeMap<u16, u32>) -> Result<&mut Self, TokenError> {
        self.count("privileges", map.len())?;
        for (&key, &value) in map {
            self.u16(key).u32(value);
        }
        Ok(self)
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// The bytes written so far, mutably (to fill in a reserved field later).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// The finished buffer.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// The offset of the next byte to read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Takes the next `n` bytes; `what` names the field in the error.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(ParseError::Truncated(what))?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or(ParseError::Truncated(what))?;
        self.pos = end;
        Ok(bytes)
    }

    /// Reads a little-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, ParseError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// Reads a little-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, ParseError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a little-endian i16.
    pub fn i16(&mut self, what: &'static str) -> Result<i16, ParseError> {
        let b = self.take(2, what)?;
        Ok(i16::from_le_bytes([b[0], b[1]]))
    }

    /// Reads a u16-length-prefixed string as raw bytes (no UTF-8 requirement:
    /// the signature covers bytes, and inspect must show any token).
    pub fn string(&mut self, what: &'static str) -> Result<&'a [u8], ParseError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    /// Reads a privilege map. A repeated key keeps its last value, as every
    /// official parser does.
    pub fn map(&mut self, what: &'static str) -> Result<BTreeMap<u16, u32>, ParseError> {
        let count = self.u16(what)?;
        let mut map = BTreeMap::new();
        for _ in 0..count {
            let key = self.u16(what)?;
            let value = self.u32(what)?;
            map.insert(key, value);
        }
        Ok(map)
    }
}

/// Appends the zlib compression of `input` (default level, zlib header) to `out`,
/// with this thread's reused encoder.
pub fn deflate(input: &[u8], out: &mut Vec<u8>) -> Result<(), TokenError> {
    DEFLATE.with(|cell| {
        let mut z = cell.borrow_mut();
        z.reset();
        // zlib's deflateBound for small inputs: the whole stream fits in one
        // call, which is also what python's zlib.compress does.
        out.reserve(input.len() + input.len() / 8 + 64);
        loop {
            let consumed = usize::try_from(z.total_in()).map_err(|_| TokenError::Compress)?;
            let rest = input.get(consumed..).ok_or(TokenError::Compress)?;
            match z.compress_vec(rest, out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => return Ok(()),
                Ok(_) => out.reserve(out.capacity().max(64)),
                Err(_) => return Err(TokenError::Compress),
            }
        }
    })
}

/// Inflates one complete zlib stream into `out` (cleared first), with this
/// thread's reused decoder. Any valid stream is accepted (stored, fixed or
/// dynamic blocks, any level: the compression is not signed, spec §2.1);
/// bytes after the end of the stream are refused.
pub fn inflate(input: &[u8], out: &mut Vec<u8>) -> Result<(), ParseError> {
    out.clear();
    INFLATE.with(|cell| {
        let mut z = cell.borrow_mut();
        z.reset(true);
        // Exact reservations keep the buffer itself within the bound.
        out.reserve_exact(input.len().saturating_mul(4).clamp(256, MAX_PAYLOAD_BYTES));
        loop {
            let consumed = usize::try_from(z.total_in()).map_err(|_| ParseError::BadZlib)?;
            let rest = input.get(consumed..).ok_or(ParseError::BadZlib)?;
            let status = z
                .decompress_vec(rest, out, FlushDecompress::Finish)
                .map_err(|_| ParseError::BadZlib)?;
            match status {
                // The allocator may round capacity up, so the bound is checked on the result too.
                Status::StreamEnd if out.len() > MAX_PAYLOAD_BYTES => {
                    return Err(ParseError::PayloadTooLarge);
                }
                Status::StreamEnd if z.total_in() == input.len() as u64 => return Ok(()),
                Status::StreamEnd => return Err(ParseError::BadZlib),
                // The output filled up: grow it, within the bound.
                _ if out.len() == out.capacity() => {
                    if out.len() >= MAX_PAYLOAD_BYTES {
                        return Err(ParseError::PayloadTooLarge);
                    }
                    out.reserve_exact(out.len().min(MAX_PAYLOAD_BYTES - out.len()).max(256));
                }
                // Room left but no end of stream: the input is cut short.
                _ => return Err(ParseError::BadZlib),
            }
        }
    })
}

/// Appends the standard base64 (with padding) of `input` to `out`.
pub fn base64_encode(input: &[u8], out: &mut String) {
    STANDARD.encode_string(input, out);
}

/// Decodes strict standard base64 with canonical padding into `out` (cleared
/// first). URL-safe characters, missing padding and stray characters are
/// refused, as Go's `StdEncoding` does (spec §3).
pub fn base64_decode(input: &str, out: &mut Vec<u8>) -> Result<(), ParseError> {
    out.clear();
    if input.len() > MAX_BODY_CHARS {
        return Err(ParseError::PayloadTooLarge);
    }
    STANDARD
        .decode_vec(input, out)
        .map_err(|_| ParseError::BadBase64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_encodes_little_endian_and_prefixes() {
        let mut w = Writer::default();
        w.u16(0x0102).u32(0x0304_0506).i16(-1);
        w.string("s", b"ab").unwrap();
        w.map(&BTreeMap::from([(3, 1), (1, 600)])).unwrap();
        assert_eq!(
            hex::encode(w.as_slice()),
            "0201\
             06050403\
             ffff\
             02006162\
             0200010058020000030001000000"
        );
    }

    #[test]
    fn writer_refuses_what_a_u16_cannot_count() {
        let mut w = Writer::default();
        let long = vec![b'a'; 65_536];
        assert_eq!(
            w.string("channel name", &long).err(),
            Some(TokenError::StringTooLong {
                field: "channel name",
                len: 65_536
            })
        );
        assert!(w.string("ok", &long[..65_535]).is_ok());
        assert!(w.count("services", 65_536).is_err());
    }

    #[test]
    fn reader_reports_truncation_instead_of_panicking() {
        let cases: &[(&[u8], bool)] = &[
            (&[], false),
            (&[0x01], false),
            (&[0x02, 0x00, b'a'], false),
            (&[0x02, 0x00, b'a', b'b'], true),
            (&[0xff, 0xff], false),
        ];
        for (input, ok) in cases {
            assert_eq!(Reader::new(input).string("s").is_ok(), *ok, "{input:?}");
        }
        let mut r = Reader::new(&[1, 0, 1, 0, 0x58, 2, 0]);
        assert_eq!(r.map("p"), Err(ParseError::Truncated("p")));
    }

    #[test]
    fn zlib_round_trips_and_refuses_trailing_or_cut_streams() {
        let payload = b"agora agora agora token payload".repeat(4);
        let mut z = Vec::new();
        deflate(&payload, &mut z).unwrap();
        assert_eq!(&z[..2], &[0x78, 0x9c]);
        let mut back = Vec::new();
        inflate(&z, &mut back).unwrap();
        assert_eq!(back, payload);
        let mut trailing = z.clone();
        trailing.push(0);
        assert_eq!(inflate(&trailing, &mut back), Err(ParseError::BadZlib));
        assert_eq!(
            inflate(&z[..z.len() - 1], &mut back),
            Err(ParseError::BadZlib)
        );
        assert_eq!(inflate(b"", &mut back), Err(ParseError::BadZlib));
    }

    #[test]
    fn a_megabyte_bomb_is_refused_and_the_bound_itself_inflates() {
        // 1 MiB of zeros deflates to about 1 KB: the adversarial review's bomb.
        let mut z = Vec::new();
        deflate(&vec![0u8; 1 << 20], &mut z).unwrap();
        assert!(z.len() < 1100, "{}", z.len());
        let mut back = Vec::new();
        assert_eq!(inflate(&z, &mut back), Err(ParseError::PayloadTooLarge));
        assert!(back.len() <= MAX_PAYLOAD_BYTES + 256, "{}", back.len());
        let mut z = Vec::new();
        deflate(&vec![7u8; MAX_PAYLOAD_BYTES], &mut z).unwrap();
        inflate(&z, &mut back).unwrap();
        assert_eq!(back.len(), MAX_PAYLOAD_BYTES);
    }

    #[test]
    fn zlib_bombs_are_refused() {
        let huge = vec![0u8; MAX_PAYLOAD_BYTES + 1];
        let mut z = Vec::new();
        deflate(&huge, &mut z).unwrap();
        let mut back = Vec::new();
        assert_eq!(inflate(&z, &mut back), Err(ParseError::PayloadTooLarge));
    }

    #[test]
    fn base64_is_strict() {
        let mut out = Vec::new();
        let cases: &[(&str, bool)] = &[
            ("aGk=", true),
            ("aGk", false),
            ("a-k_", false),
            ("aG*k=", false),
            ("aGk=\n", false),
            ("", true),
        ];
        let huge = "A".repeat(MAX_BODY_CHARS + 4);
        assert_eq!(
            base64_decode(&huge, &mut out),
            Err(ParseError::PayloadTooLarge)
        );
        for (input, ok) in cases {
            assert_eq!(base64_decode(input, &mut out).is_ok(), *ok, "{input:?}");
        }
    }
}
