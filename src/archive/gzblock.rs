//! The gzip format the parallel compressor writes: gzp's [`Gzip`] (one gzip
//! member, each block deflated on its own and ended with a sync flush, the
//! pigz layout), except that a block a cheap probe finds incompressible is
//! written as deflate *stored* blocks instead of going through the match search.
//!
//! zlib (and zlib-rs) already end up emitting stored blocks for such data —
//! random bytes, JPEG, video, zip and gzip files — but only after running the
//! full level-6 match search over them, which on our benchmark corpus (35 %
//! media) is about a third of all the compression CPU for no gain at all. The
//! probe costs about 0.1 % of a block's compression time on ordinary data
//! (it gives up after the first 16 KiB of text) and about 10 % of it on
//! incompressible data, and it only stores a block when deflate could not
//! shrink it by more than [`MAX_GAIN`]: the level keeps its meaning.
//!
//! The stream stays a single gzip member that any gunzip reads: stored blocks
//! are plain deflate (RFC 1951 §3.2.4), byte-aligned like the sync-flushed
//! blocks around them.

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};
use gzp::check::Crc32;
use gzp::deflate::Gzip;
use gzp::{FormatSpec, GzpError};

/// Store a block when deflate would shrink it by less than this share
/// (estimated: order-0 entropy of each 16 KiB slice, plus the share of bytes
/// that a 4-byte match search within deflate's 32 KiB window finds repeated).
pub const MAX_GAIN: f64 = 0.01;

/// Blocks smaller than this are always deflated (the probe would be noise).
const MIN_PROBE: usize = 16 << 10;

/// Size of the slices whose byte entropy is measured (deflate picks new
/// Huffman codes every few tens of KiB, so a block's entropy as a whole
/// could hide a slice that compresses).
const SLICE: usize = 16 << 10;

/// Largest stored block deflate allows.
const MAX_STORED: usize = 65_535;

/// pigz-style gzip with stored blocks for incompressible data (see the module docs).
#[derive(Copy, Clone, Debug)]
pub struct ProbedGzip {}

impl FormatSpec for ProbedGzip {
    type C = Crc32;
    type Compressor = Compress;

    fn new() -> Self {
        ProbedGzip {}
    }

    fn needs_dict(&self) -> bool {
        // As gzp's pure-Rust Gzip: blocks do not use the previous one as a
        // dictionary (output +0.8 % over `gzip -6` on the benchmark corpus).
        false
    }

    fn create_compressor(&self, level: Compression) -> Result<Compress, GzpError> {
        Ok(Compress::new(level, false))
    }

    fn encode(
        &self,
        input: &[u8],
        encoder: &mut Compress,
        _level: Compression,
        _dict: Option<&Bytes>,
        is_last: bool,
    ) -> Result<Vec<u8>, GzpError> {
        if incompressible(input) {
            return Ok(stored(input, is_last));
        }
        let mut out = Vec::with_capacity(input.len() + (input.len() / 10).max(128));
        let flush = if is_last {
            FlushCompress::Finish
        } else {
            FlushCompress::Sync
        };
        let status = encoder.compress_vec(input, &mut out, flush)?;
        // The buffer is sized so that one call always completes (deflate's
        // worst case is +5 bytes per 16 KiB): anything else is a bug, never
        // a silently truncated archive.
        if encoder.total_in() != input.len() as u64
            || (is_last && status != flate2::Status::StreamEnd)
        {
            return Err(GzpError::Io(std::io::Error::other(
                "deflate did not consume a whole block",
            )));
        }
        encoder.reset();
        Ok(out)
    }

    fn header(&self, level: Compression) -> Vec<u8> {
        Gzip {}.header(level)
    }

    fn footer(&self, check: &Crc32) -> Vec<u8> {
        Gzip {}.footer(check)
    }
}

/// `data` as deflate stored blocks, the last one final when `is_last`.
pub fn stored(data: &[u8], is_last: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 5 * (data.len() / MAX_STORED + 1));
    let mut chunks = data.chunks(MAX_STORED).peekable();
    if data.is_empty() {
        if is_last {
            out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
        }
        return out;
    }
    while let Some(c) = chunks.next() {
        let last = is_last && chunks.peek().is_none();
        let len = c.len() as u16;
        out.push(u8::from(last)); // BFINAL, BTYPE = 00 (stored), padding to the byte
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out
}

/// Whether deflate would shrink `data` by less than [`MAX_GAIN`].
pub fn incompressible(data: &[u8]) -> bool {
    if data.len() < MIN_PROBE {
        return false;
    }
    // Huffman coding: what order-0 entropy leaves, slice by slice. Gives up as
    // soon as the gain so far rules storing out (after one slice of text).
    let slices = data.len().div_ceil(SLICE);
    let budget = MAX_GAIN * slices as f64;
    let mut gain = 0.0;
    for s in data.chunks(SLICE) {
        gain += 1.0 - entropy(s) / 8.0;
        if gain >= budget {
            return false;
        }
    }
    // Matches: bytes covered by repeats of 4 or more within 32 KiB.
    gain / slices as f64 + repeated(data) as f64 / data.len() as f64 <= MAX_GAIN
}

/// Order-0 entropy of `s` in bits per byte.
fn entropy(s: &[u8]) -> f64 {
    let mut h = [[0u32; 256]; 4];
    let mut it = s.chunks_exact(4);
    for q in &mut it {
        h[0][q[0] as usize] += 1;
        h[1][q[1] as usize] += 1;
        h[2][q[2] as usize] += 1;
        h[3][q[3] as usize] += 1;
    }
    for &b in it.remainder() {
        h[0][b as usize] += 1;
    }
    let n = s.len() as f64;
    let [h0, h1, h2, h3] = &h;
    let mut e = 0.0;
    for (((a, b), c), d) in h0.iter().zip(h1).zip(h2).zip(h3) {
        let c = a + b + c + d;
        if c > 0 {
            let p = c as f64 / n;
            e -= p * p.log2();
        }
    }
    e
}

/// Bytes of `data` covered by matches of 4 bytes or more at a distance of at
/// most 32 KiB, found greedily with a one-entry hash table and LZ4's
/// acceleration: after every 32 misses in a row the scan steps one byte further
/// (up to about 16), so that noise costs a few tens of thousands of look-ups
/// per block while a repeat longer than a few dozen bytes is still found (a
/// match resets the step).
fn repeated(data: &[u8]) -> usize {
    const BITS: u32 = 12;
    const WINDOW: usize = 32 << 10;
    let mut table = [0u32; 1 << BITS];
    let word = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
    let mut covered = 0;
    let mut misses = 0usize;
    let mut i = 0;
    while i + 4 <= data.len() {
        let w = word(i);
        let slot = (w.wrapping_mul(2_654_435_761) >> (32 - BITS)) as usize;
        let cand = table[slot] as usize;
        table[slot] = i as u32 + 1;
        if cand > 0 && i - (cand - 1) <= WINDOW && word(cand - 1) == w {
            let from = cand - 1;
            let mut len = 4;
            while i + len < data.len() && len < 258 && data[from + len] == data[i + len] {
                len += 1;
            }
            covered += len;
            i += len;
            misses = 0;
        } else {
            misses += 1;
            // The step varies by up to 3 so that the probed offsets drift: a
            // fixed step could keep missing a repeat whose first copy was
            // scanned at the other offsets.
            let accel = (misses >> 5).min(15);
            i += 1 + accel - accel.min(misses & 3);
        }
    }
    covered
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    use crate::test_noise as noise;

    #[test]
    fn noise_is_stored_text_and_repeats_are_not() {
        assert!(incompressible(&noise(256 << 10, 7)));
        let text: Vec<u8> = b"SELECT id, customer FROM orders;\n"
            .iter()
            .cycle()
            .take(256 << 10)
            .copied()
            .collect();
        assert!(!incompressible(&text));
        // High byte entropy, but one 4 KiB random chunk over and over: LZ77 food.
        let chunk = noise(4 << 10, 9);
        let again: Vec<u8> = chunk.iter().cycle().take(256 << 10).copied().collect();
        assert!(!incompressible(&again));
        assert!(repeated(&again) > 200 << 10, "{}", repeated(&again));
        // 32 KiB of noise, then the same 32 KiB again, and so on: found too.
        let far = noise(32 << 10, 5).repeat(8);
        assert!(!incompressible(&far));
        assert!(repeated(&noise(256 << 10, 13)) < 1 << 10);
        // Each 16 KiB slice uses half the byte values: the block as a whole
        // looks random, each slice saves 1/8 with its own Huffman code.
        let mut halves = noise(256 << 10, 11);
        for (k, s) in halves.chunks_mut(SLICE).enumerate() {
            for b in s {
                *b = (*b & 0x7f) | if k % 2 == 0 { 0 } else { 0x80 };
            }
        }
        assert!(!incompressible(&halves));
        // Small blocks are always deflated.
        assert!(!incompressible(&noise(MIN_PROBE - 1, 3)));
    }

    #[test]
    fn stored_blocks_inflate_back() {
        for (n, last) in [
            (0, true),
            (1, true),
            (65_535, true),
            (200_000, true),
            (70_000, false),
        ] {
            let data = noise(n, n as u64 + 1);
            let mut raw = stored(&data, last);
            if !last {
                // End the stream so that it can be read back.
                raw.extend_from_slice(&stored(&[], true));
            }
            let mut back = Vec::new();
            flate2::read::DeflateDecoder::new(&raw[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "{n} bytes");
        }
    }

    #[test]
    fn mixed_blocks_make_one_gzip_member_any_gunzip_reads() {
        // Noise (stored) between text blocks (deflated), through gzp's pipeline.
        let mut data = Vec::new();
        for k in 0..6u64 {
            if k % 2 == 0 {
                data.extend(
                    format!("{k}\tcustomer {k}\t12.50\n")
                        .bytes()
                        .cycle()
                        .take(300_000),
                );
            } else {
                data.extend(noise(300_000, k));
            }
        }
        let mut gz = gzp::par::compress::ParCompressBuilder::<ProbedGzip>::new()
            .num_threads(2)
            .unwrap()
            .buffer_size(super::super::COMPRESS_BLOCK)
            .unwrap()
            .compression_level(Compression::new(6))
            .from_writer(Vec::new());
        gz.write_all(&data).unwrap();
        let out = gzp::ZWriter::finish(&mut gz).unwrap();
        // The noise half is stored (5 bytes per 64 KiB), the text half nearly vanishes.
        assert!(out.len() < data.len() / 2 + 12_000, "{}", out.len());
        // One member: a single-member decoder reads all of it, nothing trails.
        let mut d = flate2::read::GzDecoder::new(&out[..]);
        let mut back = Vec::new();
        d.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        // And the system's gunzip agrees (CRC and length checked).
        let mut child = std::process::Command::new("gzip")
            .args(["-d", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip must be installed");
        let mut stdin = child.stdin.take().unwrap();
        let feed = std::thread::spawn(move || stdin.write_all(&out).unwrap());
        let res = child.wait_with_output().unwrap();
        feed.join().unwrap();
        assert!(res.status.success());
        assert_eq!(res.stdout, data);
    }
}
