//! Reading a Redis RDB file without loading it: checks the `REDIS` magic, walks every
//! record (skipping values), counts keys and TTLs per database, and verifies the
//! CRC-64 at the end. The counts come from the snapshot itself, so they can be
//! compared exactly with what a server loads from it later.
//!
//! Covers the formats of Redis 2.6 to 7.4 (RDB versions up to 12): every value type
//! the server writes, including streams, module values of the second format and
//! functions. A value type it does not know makes [`scan`] fail with
//! [`ScanErrorKind::Unsupported`] (newer Redis), kept apart from corruption.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// What [`scan`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RdbScan {
    /// The four digits after `REDIS`.
    pub version: u32,
    /// `redis-ver` from the AUX fields, when present.
    pub redis_version: Option<String>,
    /// Per database: keys, and the expiry time (ms since the epoch) of each key with a TTL.
    pub dbs: BTreeMap<u32, DbScan>,
    /// The CRC-64 was present and matched (false: the writer had `rdbchecksum no`, or the
    /// format predates checksums).
    pub checksum_verified: bool,
    /// Size of the file in bytes.
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbScan {
    pub keys: u64,
    /// Expiry times (ms since the epoch) of the keys that have one.
    pub expire_at_ms: Vec<i64>,
}

impl DbScan {
    /// Keys that a server loading this file at `now_ms` would skip as already expired.
    pub fn expired_at(&self, now_ms: i64) -> u64 {
        self.expire_at_ms.iter().filter(|&&t| t < now_ms).count() as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanErrorKind {
    /// Not an RDB file at all (empty, no `REDIS` magic).
    NotRdb,
    /// Damaged: truncated, a bad length, a checksum mismatch.
    Corrupt,
    /// A record type this version does not know (a newer Redis).
    Unsupported,
    /// The file could not be read.
    Io,
}

#[derive(Debug)]
pub struct ScanError {
    pub kind: ScanErrorKind,
    pub message: String,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ScanError {}

type R<T> = std::result::Result<T, ScanError>;

fn corrupt(msg: impl Into<String>) -> ScanError {
    ScanError {
        kind: ScanErrorKind::Corrupt,
        message: msg.into(),
    }
}

/// Scan the RDB file at `path`.
pub fn scan(path: &Path) -> R<RdbScan> {
    let io_err = |e: std::io::Error| ScanError {
        kind: ScanErrorKind::Io,
        message: format!("reading {}: {e}", path.display()),
    };
    let file = File::open(path).map_err(io_err)?;
    let bytes = file.metadata().map_err(io_err)?.len();
    let mut r = Reader {
        inner: BufReader::with_capacity(1 << 20, file),
        crc: 0,
        pos: 0,
        scratch: vec![0u8; 64 << 10],
    };
    let res = scan_from(&mut r, bytes);
    let pos = r.pos;
    let mut s = match res {
        Ok(s) => s,
        Err(mut e) => {
            // A record this version does not know, or damage that looks like one? The
            // CRC-64 over the whole file tells them apart.
            let checkable = matches!(e.kind, ScanErrorKind::Unsupported | ScanErrorKind::Corrupt);
            if checkable && !e.message.starts_with("CRC-64") && whole_file_crc(path) == Some(false)
            {
                e.kind = ScanErrorKind::Corrupt;
                e.message = format!("CRC-64 mismatch (and {})", e.message);
            }
            e.message = format!("{}: {} (at byte {pos})", path.display(), e.message);
            return Err(e);
        }
    };
    s.bytes = bytes;
    Ok(s)
}

/// Whether the CRC-64 in the last 8 bytes matches the rest of the file (None: no
/// checksum to check: an old format, a zero checksum, or an unreadable file).
fn whole_file_crc(path: &Path) -> Option<bool> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if len < 17 {
        return None;
    }
    let mut head = [0u8; 9];
    f.read_exact(&mut head).ok()?;
    let version: u32 = std::str::from_utf8(&head[5..]).ok()?.parse().ok()?;
    if version < 5 {
        return None;
    }
    let mut crc = crc64(0, &head);
    let mut left = len - 9 - 8;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n]).ok()?;
        crc = crc64(crc, &buf[..n]);
        left -= n as u64;
    }
    let mut tail = [0u8; 8];
    f.read_exact(&mut tail).ok()?;
    let stored = u64::from_le_bytes(tail);
    (stored != 0).then_some(stored == crc)
}

struct Reader<T: Read> {
    inner: T,
    crc: u64,
    pos: u64,
    scratch: Vec<u8>,
}

impl<T: Read> Reader<T> {
    fn fill(&mut self, buf: &mut [u8], crc: bool) -> R<()> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                corrupt("truncated")
            } else {
                corrupt(format!("read error: {e}"))
            }
        })?;
        if crc {
            self.crc = crc64(self.crc, buf);
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut b = [0u8; N];
        self.fill(&mut b, true)?;
        Ok(b)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.bytes::<1>()?[0])
    }

    fn skip(&mut self, mut n: u64) -> R<()> {
        let mut buf = std::mem::take(&mut self.scratch);
        let res = (|| {
            while n > 0 {
                let k = n.min(buf.len() as u64) as usize;
                self.fill(&mut buf[..k], true)?;
                n -= k as u64;
            }
            Ok(())
        })();
        self.scratch = buf;
        res
    }

    /// A length; `true` when it is a special string encoding instead.
    fn len_enc(&mut self) -> R<(u64, bool)> {
        let b = self.u8()?;
        Ok(match b >> 6 {
            0 => ((b & 0x3f) as u64, false),
            1 => ((((b & 0x3f) as u64) << 8) | self.u8()? as u64, false),
            2 => match b {
                0x80 => (u32::from_be_bytes(self.bytes::<4>()?) as u64, false),
                0x81 => (u64::from_be_bytes(self.bytes::<8>()?), false),
                _ => return Err(corrupt(format!("bad length byte 0x{b:02x}"))),
            },
            _ => ((b & 0x3f) as u64, true),
        })
    }

    fn len(&mut self) -> R<u64> {
        match self.len_enc()? {
            (n, false) => Ok(n),
            (_, true) => Err(corrupt("a string encoding where a length was expected")),
        }
    }

    /// Skip a string; returns it when it is short and stored plainly (or as an integer).
    fn string(&mut self, keep: bool) -> R<Option<Vec<u8>>> {
        let (n, enc) = self.len_enc()?;
        if enc {
            return match n {
                0 => Ok(Some((self.u8()? as i8).to_string().into_bytes())),
                1 => Ok(Some(
                    i16::from_le_bytes(self.bytes::<2>()?)
                        .to_string()
                        .into_bytes(),
                )),
                2 => Ok(Some(
                    i32::from_le_bytes(self.bytes::<4>()?)
                        .to_string()
                        .into_bytes(),
                )),
                3 => {
                    let clen = self.len()?;
                    let _ulen = self.len()?;
                    self.skip(clen)?;
                    Ok(None)
                }
                _ => Err(corrupt(format!("unknown string encoding {n}"))),
            };
        }
        if keep && n <= 4096 {
            let mut v = vec![0u8; n as usize];
            self.fill(&mut v, true)?;
            Ok(Some(v))
        } else {
            self.skip(n)?;
            Ok(None)
        }
    }

    fn skip_string(&mut self) -> R<()> {
        self.string(false).map(|_| ())
    }

    fn skip_strings(&mut self, n: u64) -> R<()> {
        for _ in 0..n {
            self.skip_string()?;
        }
        Ok(())
    }

    /// A module value: opcodes until EOF.
    fn skip_module_value(&mut self) -> R<()> {
        loop {
            match self.len()? {
                0 => return Ok(()),
                1 | 2 => {
                    self.len()?;
                }
                3 => self.skip(4)?,
                4 => self.skip(8)?,
                5 => self.skip_string()?,
                op => return Err(corrupt(format!("unknown module value opcode {op}"))),
            }
        }
    }

    fn skip_value(&mut self, ty: u8) -> R<()> {
        match ty {
            0 => self.skip_string(),
            1 | 2 => {
                let n = self.len()?;
                self.skip_strings(n)
            }
            3 => {
                let n = self.len()?;
                for _ in 0..n {
                    self.skip_string()?;
                    let l = self.u8()?;
                    if l < 253 {
                        self.skip(l as u64)?;
                    }
                }
                Ok(())
            }
            4 => {
                let n = self.len()?;
                self.skip_strings(
                    n.checked_mul(2)
                        .ok_or_else(|| corrupt("hash size overflows"))?,
                )
            }
            5 => {
                let n = self.len()?;
                for _ in 0..n {
                    self.skip_string()?;
                    self.skip(8)?;
                }
                Ok(())
            }
            6 => Err(ScanError {
                kind: ScanErrorKind::Unsupported,
                message: "a module value in the pre-release module format".into(),
            }),
            7 => {
                self.len()?; // module id
                self.skip_module_value()
            }
            9..=13 | 16 | 17 | 20 => self.skip_string(),
            14 => {
                let n = self.len()?;
                self.skip_strings(n)
            }
            18 => {
                let n = self.len()?;
                for _ in 0..n {
                    self.len()?; // container kind
                    self.skip_string()?;
                }
                Ok(())
            }
            15 | 19 | 21 => self.skip_stream(ty),
            22 | 24 => {
                if ty == 24 {
                    self.skip(8)?; // min expire
                }
                let n = self.len()?;
                for _ in 0..n {
                    if ty == 22 {
                        self.skip(8)?;
                    } else {
                        self.len()?;
                    }
                    self.skip_string()?;
                    self.skip_string()?;
                }
                Ok(())
            }
            23 | 25 => {
                if ty == 25 {
                    self.skip(8)?;
                }
                self.skip_string()
            }
            _ => Err(ScanError {
                kind: ScanErrorKind::Unsupported,
                message: format!("value type {ty} is not known to this version (a newer Redis?)"),
            }),
        }
    }

    fn skip_stream(&mut self, ty: u8) -> R<()> {
        let listpacks = self.len()?;
        self.skip_strings(
            listpacks
                .checked_mul(2)
                .ok_or_else(|| corrupt("stream size overflows"))?,
        )?;
        self.len()?; // length
        self.len()?; // last id ms
        self.len()?; // last id seq
        if ty >= 19 {
            for _ in 0..5 {
                self.len()?; // first id, max deleted id, entries added
            }
        }
        let groups = self.len()?;
        for _ in 0..groups {
            self.skip_string()?; // name
            self.len()?;
            self.len()?; // last id
            if ty >= 19 {
                self.len()?; // entries read
            }
            let pel = self.len()?;
            for _ in 0..pel {
                self.skip(16 + 8)?; // id, delivery time
                self.len()?; // delivery count
            }
            let consumers = self.len()?;
            for _ in 0..consumers {
                self.skip_string()?; // name
                self.skip(8)?; // seen time
                if ty >= 21 {
                    self.skip(8)?; // active time
                }
                let pel = self.len()?;
                self.skip(
                    pel.checked_mul(16)
                        .ok_or_else(|| corrupt("stream PEL overflows"))?,
                )?;
            }
        }
        Ok(())
    }
}

fn scan_from<T: Read>(r: &mut Reader<T>, size: u64) -> R<RdbScan> {
    if size < 9 {
        return Err(ScanError {
            kind: ScanErrorKind::NotRdb,
            message: format!("not an RDB file ({size} bytes)"),
        });
    }
    let magic = r.bytes::<9>()?;
    if &magic[..5] != b"REDIS" {
        return Err(ScanError {
            kind: ScanErrorKind::NotRdb,
            message: "not an RDB file (no REDIS magic)".into(),
        });
    }
    let version: u32 = std::str::from_utf8(&magic[5..])
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt("bad version after the REDIS magic"))?;
    if version > 12 {
        return Err(ScanError {
            kind: ScanErrorKind::Unsupported,
            message: format!("RDB version {version} is newer than this version reads (12)"),
        });
    }
    let mut out = RdbScan {
        version,
        ..RdbScan::default()
    };
    let mut db: u32 = 0;
    let mut expire: Option<i64> = None;
    loop {
        let op = r.u8()?;
        match op {
            0xFF => break,
            0xFE => {
                db =
                    u32::try_from(r.len()?).map_err(|_| corrupt("database number out of range"))?;
            }
            0xFD => expire = Some(u32::from_le_bytes(r.bytes::<4>()?) as i64 * 1000),
            0xFC => expire = Some(i64::from_le_bytes(r.bytes::<8>()?)),
            0xFB => {
                r.len()?;
                r.len()?;
            }
            0xFA => {
                let k = r.string(true)?;
                let v = r.string(true)?;
                if k.as_deref() == Some(b"redis-ver") {
                    out.redis_version = v.map(|v| String::from_utf8_lossy(&v).into_owned());
                }
            }
            0xF9 => {
                r.u8()?;
            }
            0xF8 => {
                r.len()?;
            }
            0xF7 => {
                r.len()?; // module id
                r.len()?; // when opcode
                r.len()?; // when
                r.skip_module_value()?;
            }
            0xF6 => {
                return Err(ScanError {
                    kind: ScanErrorKind::Unsupported,
                    message: "functions in the pre-release format of Redis 7.0 release candidates"
                        .into(),
                })
            }
            0xF5 => r.skip_string()?,
            0xF4 => {
                r.len()?;
                r.len()?;
                r.len()?;
            }
            ty => {
                r.skip_string()?; // the key
                r.skip_value(ty)?;
                let d = out.dbs.entry(db).or_default();
                d.keys += 1;
                if let Some(t) = expire.take() {
                    d.expire_at_ms.push(t);
                }
            }
        }
        if !matches!(op, 0xFD | 0xFC | 0xF9 | 0xF8) && op >= 0xF4 {
            expire = None;
        }
    }
    if version >= 5 {
        let expected = r.crc;
        let mut b = [0u8; 8];
        r.fill(&mut b, false)?;
        let stored = u64::from_le_bytes(b);
        if stored != 0 {
            if stored != expected {
                return Err(corrupt(format!(
                    "CRC-64 mismatch: the file says {stored:016x}, its content gives {expected:016x}"
                )));
            }
            out.checksum_verified = true;
        }
    }
    Ok(out)
}

/// Redis's CRC-64 (Jones polynomial, reflected).
pub fn crc64(mut crc: u64, data: &[u8]) -> u64 {
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u64;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x95ac_9329_ac4b_c9b5
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    for &b in data {
        crc = t[((crc ^ b as u64) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_check_value() {
        assert_eq!(crc64(0, b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }

    fn build(body: &[u8]) -> Vec<u8> {
        let mut v = b"REDIS0010".to_vec();
        v.extend_from_slice(body);
        v.push(0xFF);
        let c = crc64(0, &v);
        v.extend_from_slice(&c.to_le_bytes());
        v
    }

    fn scan_bytes(b: &[u8]) -> R<RdbScan> {
        let mut r = Reader {
            inner: b,
            crc: 0,
            pos: 0,
            scratch: vec![0; 16],
        };
        scan_from(&mut r, b.len() as u64)
    }

    #[test]
    fn counts_keys_and_ttls_per_database() {
        let mut body = Vec::new();
        body.extend_from_slice(&[0xFA, 9]);
        body.extend_from_slice(b"redis-ver");
        body.extend_from_slice(&[6]);
        body.extend_from_slice(b"7.0.15");
        body.extend_from_slice(&[0xFE, 0, 0xFB, 2, 1]);
        body.extend_from_slice(&[0, 1, b'a', 0xC0, 5]); // a = int 5
        body.push(0xFC);
        body.extend_from_slice(&1_000i64.to_le_bytes());
        body.extend_from_slice(&[0, 1, b'b', 3, b'x', b'y', b'z']);
        body.extend_from_slice(&[0xFE, 3]);
        body.extend_from_slice(&[2, 1, b's', 2, 1, b'p', 1, b'q']); // a set of 2
        let s = scan_bytes(&build(&body)).unwrap();
        assert_eq!(s.version, 10);
        assert_eq!(s.redis_version.as_deref(), Some("7.0.15"));
        assert!(s.checksum_verified);
        assert_eq!(s.dbs[&0].keys, 2);
        assert_eq!(s.dbs[&0].expire_at_ms, vec![1000]);
        assert_eq!(s.dbs[&0].expired_at(2000), 1);
        assert_eq!(s.dbs[&3].keys, 1);

        let mut bad = build(&body);
        let n = bad.len();
        bad[n - 12] ^= 0x40;
        let e = scan_bytes(&bad).unwrap_err();
        assert!(matches!(e.kind, ScanErrorKind::Corrupt), "{e}");
        let e = scan_bytes(&build(&body)[..20]).unwrap_err();
        assert_eq!(e.kind, ScanErrorKind::Corrupt);
        assert_eq!(scan_bytes(b"").unwrap_err().kind, ScanErrorKind::NotRdb);
        assert_eq!(
            scan_bytes(b"NOTREDIS0010").unwrap_err().kind,
            ScanErrorKind::NotRdb
        );
        let e = scan_bytes(&build(&[0, 1, b'k', 0x82])).unwrap_err();
        assert_eq!(e.kind, ScanErrorKind::Corrupt);
        let e = scan_bytes(&build(&[99, 1, b'k', 0])).unwrap_err();
        assert_eq!(e.kind, ScanErrorKind::Unsupported);
    }
}
