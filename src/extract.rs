//! Safe extraction and checking of `.tar.gz` and `.tar.zst` archives (the compression is
//! recognised by its magic bytes, gzip `1f 8b` or zstd `28 b5 2f fd`, not by the name).
//!
//! [`extract`] validates every entry before writing it and refuses hostile
//! archives: `..` components, absolute paths, symlinks and hardlinks that
//! point outside the destination, device files and fifos, and entries whose
//! parent path goes through a symlink (the symlink-then-write-through attack).
//! It works in a fresh staging folder on the destination's filesystem and only
//! moves the result into place once everything, including the gzip checksum at
//! the very end of the stream, checked out; on any refusal or failure the
//! staging folder is removed and nothing is left behind.
//!
//! [`check_readable`] decompresses and reads every entry (`gunzip -t` + `tar -t`).
//!
//! An age-encrypted archive (`.tar.gz.age`, recognised by its first bytes) is decrypted
//! in the same pass ([`extract_with`], [`check_readable_with`]) and goes through exactly
//! the same checks. Its header is opened before anything is created: a missing or wrong
//! identity fails (exit 2) with nothing written. [`ExtractOptions::max_bytes`] bounds the
//! file content written (a decompression bomb stops at the first entry that would cross
//! it, before that entry is written): the manifest's size, or the configured
//! `[restore] max_extract_size` when smaller ([`ExtractOptions::limit`]).
//!
//! A stream that does not decode — a truncated or corrupted gzip, zstd or age stream (its
//! CRC, checksum or MAC fails, or it ends early), a file that is neither, or a tar that is
//! damaged inside — is a verification failure (exit 4), told apart from a refused entry
//! or a failed write (exit 1) by a flag the decompressor raises when its input fails.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use flate2::bufread::MultiGzDecoder;
use tar::{Archive, Entry, EntryType};

use crate::archive::IO_BUF;

/// What an archive held (for [`extract`]: what was written).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Regular files (hardlinks included).
    pub files: u64,
    /// Folders.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Prefix of the staging folder (inside `dest` when it exists, beside it otherwise).
pub const STAGING_PREFIX: &str = ".pronto-extract-";

/// How to read (and bound) an archive.
#[derive(Debug, Default)]
pub struct ExtractOptions {
    /// The age identities for an encrypted archive (without them an encrypted archive is
    /// refused before anything is written).
    pub identities: Option<crate::crypto::Identities>,
    /// The recipient fingerprints its manifest records, for a precise wrong-key message.
    pub expected_recipients: Vec<String>,
    /// At most this many bytes of file content are written; an entry that would cross the
    /// limit is refused before it is written (decompression-bomb guard).
    pub max_bytes: Option<u64>,
    /// `max_bytes` is the configured `[restore] max_extract_size` (or `--max-extract-size`),
    /// not the manifest's size (for the message).
    pub max_bytes_configured: bool,
}

impl ExtractOptions {
    /// Sets the bound: the smaller of the manifest's [`content_limit`] (when there is a
    /// manifest) and the configured `max_extract_size` (when set).
    pub fn limit(&mut self, manifest: Option<&crate::manifest::Manifest>, configured: Option<u64>) {
        let from_manifest = manifest.map(content_limit);
        (self.max_bytes, self.max_bytes_configured) = match (from_manifest, configured) {
            (Some(m), Some(c)) if c < m => (Some(c), true),
            (Some(m), _) => (Some(m), false),
            (None, Some(c)) => (Some(c), true),
            (None, None) => (None, false),
        };
    }
}

impl ExtractOptions {
    /// For an archive in the backup folder: the identity from `[encryption]` (or
    /// `--identity`) when the archive is encrypted, and from the manifest beside it (when
    /// there is one) the recipients and a size limit of its content plus a margin
    /// ([`content_limit`]). For an encrypted archive the identity is required and checked
    /// against its header here (exit 2 when missing or wrong), before anything is written.
    pub fn for_archive(cfg: &crate::config::Config, archive: &Path) -> Result<ExtractOptions> {
        let mut opts = ExtractOptions::default();
        let name = archive.file_name().map_or_else(
            || archive.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mpath = archive.with_file_name(crate::manifest::Manifest::file_name_for(&name));
        let manifest = crate::manifest::Manifest::read(&mpath).ok();
        if let Some(m) = &manifest {
            opts.expected_recipients = m.recipient_fingerprints.clone();
        }
        opts.limit(manifest.as_ref(), cfg.max_extract_size);
        let head = crate::crypto::read_head(archive, crate::crypto::HEADER_PROBE as usize)?;
        if crate::crypto::is_age(&head) {
            let Some(ids) = cfg.encryption.identities()? else {
                return Err(crate::crypto::missing_identity(
                    &name,
                    &opts.expected_recipients,
                ));
            };
            ids.check_header(&head, &name, &opts.expected_recipients)?;
            opts.identities = Some(ids);
        }
        Ok(opts)
    }
}

/// The most file content an archive may hold given its manifest: what its sources
/// summed to, plus 1/16 and 16 MiB for `backup_info.txt` and slack.
pub fn content_limit(m: &crate::manifest::Manifest) -> u64 {
    let total: u64 = m.sources.iter().map(|s| s.bytes).sum();
    total.saturating_add(total / 16).saturating_add(16 << 20)
}

/// The archive's bytes: the file, or the plaintext of an age file.
type Raw = Box<dyn Read>;
type Reader = BufReader<Decompress>;

/// The decompressor, chosen by the stream's first bytes (never by the file name).
enum Codec {
    /// Every gzip member in turn (pigz and `cat a.gz b.gz` write several).
    Gzip(Box<MultiGzDecoder<BufReader<Raw>>>),
    /// Every zstd frame in turn, each frame's checksum checked.
    Zstd(zstd::stream::read::Decoder<'static, BufReader<Raw>>),
}

impl Read for Decompress {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = match &mut self.codec {
            Codec::Gzip(r) => r.read(buf),
            Codec::Zstd(r) => r.read(buf),
        };
        if let Err(e) = &r {
            if e.kind() != io::ErrorKind::Interrupted {
                self.damaged.set(true);
            }
        }
        r
    }
}

/// The decompressor, and a flag raised when the stream under it failed to decode (a
/// damaged or truncated gzip, zstd or age stream): such errors are verification
/// failures (exit 4), unlike a refused entry or a failed write.
struct Decompress {
    codec: Codec,
    damaged: Rc<Cell<bool>>,
}

/// How an archive being read is encoded (for messages), and whether its stream failed.
struct Stream {
    damaged: Rc<Cell<bool>>,
    what: String,
}

impl Stream {
    /// A verification failure (exit 4): the archive's own bytes do not decode.
    fn damaged(&self, archive: &Path, e: impl std::fmt::Display) -> anyhow::Error {
        crate::error::verification(format!(
            "{}: the archive is damaged or truncated (its {} stream does not decode): {e}",
            archive.display(),
            self.what
        ))
    }

    /// Classifies an error met while reading entries: one caused by the stream is a
    /// verification failure; anything else (a refused entry, a failed write) is kept.
    fn classify(&self, archive: &Path, e: anyhow::Error) -> anyhow::Error {
        if self.damaged.get() && crate::error::exit_code(&e) != crate::error::EXIT_VERIFY {
            self.damaged(archive, format!("{e:#}"))
        } else {
            e
        }
    }
}

/// Maps age's payload errors (a flipped bit, a cut-off file) to one clear message.
struct Decrypting<R: Read>(age::stream::StreamReader<R>);

impl<R: Read> Read for Decrypting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the age-encrypted stream is damaged or truncated ({e})"),
            )
        })
    }
}

fn open(archive: &Path, opts: &ExtractOptions) -> Result<(Archive<Reader>, Stream)> {
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut r = BufReader::with_capacity(IO_BUF, file);
    let head = r
        .fill_buf()
        .with_context(|| format!("reading {}", archive.display()))?;
    let encrypted = crate::crypto::is_age(head);
    let raw: Raw = if encrypted {
        let what = archive.file_name().map_or_else(
            || archive.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let Some(ids) = &opts.identities else {
            return Err(crate::crypto::missing_identity(
                &what,
                &opts.expected_recipients,
            ));
        };
        Box::new(Decrypting(ids.decrypt(
            r,
            &what,
            &opts.expected_recipients,
        )?))
    } else {
        Box::new(r)
    };
    let age = if encrypted { "age-encrypted " } else { "" };
    let bad = |what: String, e: &dyn std::fmt::Display| {
        crate::error::verification(format!(
            "{}: the archive is damaged or truncated (its {what} stream does not decode): {e}",
            archive.display()
        ))
    };
    let mut raw = BufReader::with_capacity(IO_BUF, raw);
    let head = match raw.fill_buf() {
        Ok(h) => h,
        Err(e) => return Err(bad(format!("{age}archive"), &e)),
    };
    let codec = match crate::archive::Codec::sniff(head) {
        Some(crate::archive::Codec::Gzip) => Codec::Gzip(Box::new(MultiGzDecoder::new(raw))),
        Some(crate::archive::Codec::Zstd) => Codec::Zstd(
            zstd::stream::read::Decoder::with_buffer(raw)
                .with_context(|| format!("{}: zstd decoder", archive.display()))?,
        ),
        None if head.is_empty() => {
            return Err(crate::error::verification(format!(
                "{}: empty, not an archive",
                archive.display()
            )))
        }
        None => {
            return Err(crate::error::verification(format!(
                "{}: neither gzip nor zstd (it starts with {}): not an archive, or a damaged one",
                archive.display(),
                hex::encode(&head[..head.len().min(4)])
            )))
        }
    };
    let what = match codec {
        Codec::Gzip(_) => format!("{age}gzip"),
        Codec::Zstd(_) => format!("{age}zstd"),
    };
    let damaged = Rc::new(Cell::new(false));
    let dec = Decompress {
        codec,
        damaged: damaged.clone(),
    };
    Ok((
        Archive::new(BufReader::with_capacity(256 << 10, dec)),
        Stream { damaged, what },
    ))
}

/// Reads the rest of the gzip stream after the tar end marker, so that the
/// gzip trailer (CRC-32 and length) of every member is checked.
/// Hands each entry of `ar` in turn to `each`. A tar stream that does not decode is a
/// damaged archive (exit 4), and whatever fails is classified by `o` (a decode error
/// under another error makes it a damaged archive too).
fn each_entry(
    archive: &Path,
    ar: &mut Archive<Reader>,
    o: &Stream,
    mut each: impl FnMut(&mut Entry<'_, Reader>) -> Result<()>,
) -> Result<()> {
    let res = (|| {
        let entries = match ar.entries() {
            Ok(e) => e,
            Err(e) => return Err(o.damaged(archive, format!("not a tar archive: {e}"))),
        };
        for (i, entry) in entries.enumerate() {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    return Err(o.damaged(archive, format!("cannot read entry #{}: {e}", i + 1)))
                }
            };
            each(&mut entry)?;
        }
        Ok(())
    })();
    res.map_err(|e| o.classify(archive, e))
}

fn drain(archive: &Path, ar: Archive<Reader>, o: &Stream, buf: &mut [u8]) -> Result<()> {
    let mut r = ar.into_inner();
    loop {
        match r.read(buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(crate::error::verification(format!(
                    "{}: the archive is damaged or truncated (its {} stream does not decode after the last entry): {e}",
                    archive.display(),
                    o.what
                )))
            }
        }
    }
}

fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Decompresses the archive and reads every entry, like `gunzip -t` (or `zstd -t`) and `tar -t`
/// together. Writes nothing.
pub fn check_readable(archive: &Path) -> Result<ExtractStats> {
    check_readable_with(archive, &ExtractOptions::default())
}

/// [`check_readable`] of a possibly encrypted archive.
pub fn check_readable_with(archive: &Path, opts: &ExtractOptions) -> Result<ExtractStats> {
    let (mut ar, o) = open(archive, opts)?;
    let mut stats = ExtractStats::default();
    let mut buf = vec![0u8; IO_BUF];
    let what = archive.display();
    each_entry(archive, &mut ar, &o, |entry| {
        let name = shown(&entry.path_bytes());
        let n = copy_to(entry, &mut io::sink(), &mut buf)
            .with_context(|| format!("{what}: cannot read the data of '{name}'"))?;
        if n != entry.size() {
            return Err(o.damaged(
                archive,
                format!("'{name}' is truncated ({n} of {} bytes)", entry.size()),
            ));
        }
        match entry.header().entry_type() {
            // "./" is the destination itself, as in `extract`.
            EntryType::Directory if matches!(sanitize(name.as_bytes()), Ok(None)) => {}
            EntryType::Directory => stats.dirs += 1,
            EntryType::Symlink => stats.symlinks += 1,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                stats.files += 1;
                stats.bytes += n;
            }
            EntryType::Link => stats.files += 1,
            _ => {}
        }
        Ok(())
    })?;
    drain(archive, ar, &o, &mut buf)?;
    Ok(stats)
}

/// Extracts `archive` into `dest`, safely (see the module docs).
///
/// `dest` may not exist yet (its parent must), or must be an empty folder.
/// Modes, mtimes and symlinks are restored; when running as root, owners too
/// (as `tar` does), before the mode so that set-uid bits are applied to the
/// archived owner and never to root.
pub fn extract(archive: &Path, dest: &Path) -> Result<ExtractStats> {
    extract_with(archive, dest, &ExtractOptions::default())
}

/// [`extract`] of a possibly encrypted archive, with a bound on what it writes. The age
/// header is opened (the identity checked) before the destination is touched.
pub fn extract_with(archive: &Path, dest: &Path, opts: &ExtractOptions) -> Result<ExtractStats> {
    let (mut ar, o) = open(archive, opts)?;
    let staging = Staging::new(dest)?;
    let mut u = Unpacker {
        root: staging.temp.clone(),
        known_dirs: HashSet::new(),
        dirs: Vec::new(),
        stats: ExtractStats::default(),
        as_root: unsafe { libc::geteuid() } == 0,
        buf: vec![0u8; IO_BUF],
        max_bytes: opts.max_bytes,
        max_bytes_configured: opts.max_bytes_configured,
    };
    let what = archive.display();
    // On an error `staging` is dropped on the way out: nothing is left behind.
    each_entry(archive, &mut ar, &o, |entry| {
        u.entry(entry).with_context(|| format!("extracting {what}"))
    })?;
    drain(archive, ar, &o, &mut u.buf)?;
    u.finish_dirs()?;
    staging.commit()?;
    Ok(u.stats)
}

// ---------------------------------------------------------------------------

/// The staging folder; removed on drop unless committed.
struct Staging {
    temp: PathBuf,
    dest: PathBuf,
    /// `dest` existed (and was empty): the staging folder is inside it.
    inside: bool,
    done: bool,
}

fn unique_name() -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{STAGING_PREFIX}{:016x}", h.finish())
}

impl Staging {
    fn new(dest: &Path) -> Result<Staging> {
        let (parent, inside) = match fs::metadata(dest) {
            Ok(m) if m.is_dir() => {
                let mut it = fs::read_dir(dest)
                    .with_context(|| format!("reading destination {}", dest.display()))?;
                if it.next().is_some() {
                    bail!(
                        "destination {} is not empty: extract only into a new or empty folder",
                        dest.display()
                    );
                }
                (dest.to_path_buf(), true)
            }
            Ok(_) => bail!("destination {} exists and is not a folder", dest.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if fs::symlink_metadata(dest).is_ok() {
                    bail!("destination {} is a dangling symlink", dest.display());
                }
                let parent = match dest.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                if !parent.is_dir() {
                    bail!(
                        "cannot extract into {}: its parent folder {} does not exist",
                        dest.display(),
                        parent.display()
                    );
                }
                (parent, false)
            }
            Err(e) => {
                return Err(e).with_context(|| format!("destination {}", dest.display()));
            }
        };
        for _ in 0..100 {
            let temp = parent.join(unique_name());
            match DirBuilder::new().mode(0o700).create(&temp) {
                Ok(()) => {
                    return Ok(Staging {
                        temp,
                        dest: dest.to_path_buf(),
                        inside,
                        done: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("creating a staging folder in {}", parent.display())
                    })
                }
            }
        }
        bail!("cannot create a staging folder in {}", parent.display())
    }

    fn commit(mut self) -> Result<()> {
        if self.inside {
            let mut moved: Vec<PathBuf> = Vec::new();
            let result = (|| -> Result<()> {
                for e in fs::read_dir(&self.temp)? {
                    let name = e?.file_name();
                    let to = self.dest.join(&name);
                    rename_noreplace(&self.temp.join(&name), &to)
                        .with_context(|| format!("moving into {}", to.display()))?;
                    moved.push(name.into());
                }
                fs::remove_dir(&self.temp)?;
                Ok(())
            })();
            if let Err(e) = result {
                for name in moved {
                    let _ = fs::rename(self.dest.join(&name), self.temp.join(&name));
                }
                return Err(e);
            }
        } else {
            rename_noreplace(&self.temp, &self.dest)
                .with_context(|| format!("moving the extracted tree to {}", self.dest.display()))?;
            let _ = fs::set_permissions(&self.dest, fs::Permissions::from_mode(0o755));
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            remove_tree(&self.temp);
        }
    }
}

/// Removes a tree, making folders writable first if a plain removal fails.
fn remove_tree(path: &Path) {
    if fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    fn open_up(p: &Path) {
        if let Ok(m) = fs::symlink_metadata(p) {
            if m.is_dir() {
                let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
                if let Ok(rd) = fs::read_dir(p) {
                    for e in rd.flatten() {
                        open_up(&e.path());
                    }
                }
            }
        }
    }
    open_up(path);
    let _ = fs::remove_dir_all(path);
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// rename(2) that never replaces an existing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let (f, t) = (cstr(from)?, cstr(to)?);
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
            return Err(e);
        }
    }
    if fs::symlink_metadata(to).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", to.display()),
        ));
    }
    fs::rename(from, to)
}

/// Sets the mtime of `path` without following a symlink; atime is left alone.
fn set_mtime_nofollow(path: &Path, mtime: u64) -> io::Result<()> {
    let c = cstr(path)?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime.min(i64::MAX as u64) as libc::time_t,
            tv_nsec: 0,
        },
    ];
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn copy_to(r: &mut dyn Read, w: &mut dyn Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut n = 0u64;
    loop {
        match r.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => {
                w.write_all(&buf[..k])?;
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// An entry path made safe: `.` and empty components dropped; `..` and absolute
/// paths refused. `None` for the archive root itself (`./`).
fn sanitize(raw: &[u8]) -> std::result::Result<Option<PathBuf>, &'static str> {
    if raw.is_empty() {
        return Err("empty path");
    }
    if raw[0] == b'/' {
        return Err("absolute path");
    }
    let mut out = PathBuf::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains a '..' component"),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

/// Checks that a symlink at `rel` with target `target` stays inside the
/// destination. The target may climb with leading `..` components no higher
/// than the destination, then descend; a `..` after a folder name is refused,
/// because that folder could itself be a symlink, which a lexical check
/// cannot see through. Together with "no entry is written through a symlink",
/// every link then resolves inside the destination.
fn check_link_target(rel: &Path, target: &[u8]) -> std::result::Result<(), &'static str> {
    if target.is_empty() {
        return Err("empty symlink target");
    }
    if target[0] == b'/' {
        return Err("absolute symlink target points outside the destination");
    }
    let depth = rel.components().count().saturating_sub(1);
    let mut ups = 0usize;
    let mut descended = false;
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." if descended => {
                return Err(
                    "symlink target has '..' after a folder name (cannot be checked safely)",
                )
            }
            b".." => {
                ups += 1;
                if ups > depth {
                    return Err("symlink target points outside the destination");
                }
            }
            _ => descended = true,
        }
    }
    Ok(())
}

struct DirMeta {
    rel: PathBuf,
    mode: u32,
    mtime: u64,
    owner: Option<(u64, u64)>,
}

struct Unpacker {
    root: PathBuf,
    /// Relative paths known to be real folders (never symlinks) in `root`.
    known_dirs: HashSet<PathBuf>,
    /// Folder metadata, applied after all contents.
    dirs: Vec<DirMeta>,
    stats: ExtractStats,
    as_root: bool,
    buf: Vec<u8>,
    /// [`ExtractOptions::max_bytes`].
    max_bytes: Option<u64>,
    max_bytes_configured: bool,
}

/// Permission bits and mtime of an entry.
fn mode_mtime(entry: &Entry<'_, Reader>, name: &str) -> Result<(u32, u64)> {
    let h = entry.header();
    let mode = h
        .mode()
        .with_context(|| format!("entry '{name}': bad mode field"))?;
    let mtime = h
        .mtime()
        .with_context(|| format!("entry '{name}': bad mtime field"))?;
    Ok((mode & 0o7777, mtime))
}

fn refuse<T>(name: &str, why: impl std::fmt::Display) -> Result<T> {
    Err(anyhow!("refusing entry '{name}': {why}"))
}

impl Unpacker {
    fn entry(&mut self, entry: &mut Entry<'_, Reader>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let name = shown(&raw);
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(()); // pax global metadata, no file
        }
        let rel = match sanitize(&raw) {
            Ok(Some(rel)) => rel,
            Ok(None) if kind == EntryType::Directory => return Ok(()), // "./": the destination itself
            Ok(None) => return refuse(&name, "empty path"),
            Err(why) => return refuse(&name, why),
        };
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(entry, &rel, &name)
            }
            EntryType::Directory => self.dir(entry, &rel, &name),
            EntryType::Symlink => self.symlink(entry, &rel, &name),
            EntryType::Link => self.hardlink(entry, &rel, &name),
            EntryType::Char | EntryType::Block => refuse(&name, "device file"),
            EntryType::Fifo => refuse(&name, "fifo (named pipe)"),
            other => refuse(&name, format!("unsupported entry type {other:?}")),
        }
    }

    fn owner(&self, entry: &Entry<'_, Reader>) -> Result<Option<(u64, u64)>> {
        if !self.as_root {
            return Ok(None);
        }
        // An archive without numeric owners (some writers leave them empty) keeps ours.
        let h = entry.header();
        Ok(match (h.uid(), h.gid()) {
            (Ok(u), Ok(g)) => Some((u, g)),
            _ => None,
        })
    }

    /// Makes sure every parent of `rel` is a real folder inside the root,
    /// creating missing ones; refuses a parent that is a symlink or a file.
    fn parents(&mut self, rel: &Path, name: &str) -> Result<()> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        let mut cur = PathBuf::new();
        for c in parent.components() {
            cur.push(c);
            if self.known_dirs.contains(&cur) {
                continue;
            }
            let full = self.root.join(&cur);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.file_type().is_symlink() => {
                    return refuse(
                        name,
                        format!(
                            "its parent '{}' is a symlink (writing through it could escape the destination)",
                            cur.display()
                        ),
                    )
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return refuse(name, format!("its parent '{}' is not a folder", cur.display()))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
                    .mode(0o755)
                    .create(&full)
                    .with_context(|| format!("creating {}", full.display()))?,
                Err(e) => return Err(e).with_context(|| format!("checking {}", full.display())),
            }
            self.known_dirs.insert(cur.clone());
        }
        Ok(())
    }

    /// Frees the slot for a non-folder entry: an earlier file or symlink of the
    /// same name is replaced (as tar does), a folder is not.
    fn clear_slot(&self, rel: &Path, full: &Path, name: &str) -> Result<()> {
        if self.known_dirs.contains(rel) {
            return refuse(name, "a folder of the same name was already extracted");
        }
        match fs::symlink_metadata(full) {
            Ok(m) if m.is_dir() => refuse(name, "a folder of the same name was already extracted"),
            Ok(_) => fs::remove_file(full).with_context(|| format!("replacing {}", full.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("checking {}", full.display())),
        }
    }

    fn file(&mut self, entry: &mut Entry<'_, Reader>, rel: &Path, name: &str) -> Result<()> {
        self.parents(rel, name)?;
        let full = self.root.join(rel);
        self.clear_slot(rel, &full, name)?;
        let (mode, mtime) = mode_mtime(entry, name)?;
        let owner = self.owner(entry)?;
        let size = entry.size();
        if let Some(max) = self.max_bytes {
            if self.stats.bytes.saturating_add(size) > max {
                let why = if self.max_bytes_configured {
                    "the extraction limit ([restore] max_extract_size or --max-extract-size)"
                } else {
                    "more than the archive's manifest declares"
                };
                return refuse(
                    name,
                    format!(
                        "it would take the extracted data past {max} bytes, {why} (a decompression bomb?)"
                    ),
                );
            }
        }
        // create_new = O_EXCL: never opens through a symlink.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&full)
            .with_context(|| format!("creating {}", full.display()))?;
        let mut w = BufWriter::with_capacity(IO_BUF, &file);
        let n =
            copy_to(entry, &mut w, &mut self.buf).with_context(|| format!("writing '{name}'"))?;
        w.flush().with_context(|| format!("writing '{name}'"))?;
        drop(w);
        if n != size {
            return Err(crate::error::verification(format!(
                "'{name}' is truncated in the archive ({n} of {size} bytes): the archive is damaged or truncated"
            )));
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid as u32), Some(gid as u32))
                .with_context(|| format!("chown {}", full.display()))?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", full.display()))?;
        file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
            .with_context(|| format!("setting the mtime of {}", full.display()))?;
        self.stats.files += 1;
        self.stats.bytes += n;
        Ok(())
    }

    fn dir(&mut self, entry: &mut Entry<'_, Reader>, rel: &Path, name: &str) -> Result<()> {
        self.parents(rel, name)?;
        if !self.known_dirs.contains(rel) {
            let full = self.root.join(rel);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return refuse(
                        name,
                        "a file or symlink of the same name was already extracted",
                    )
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
                    .mode(0o700)
                    .create(&full)
                    .with_context(|| format!("creating {}", full.display()))?,
                Err(e) => return Err(e).with_context(|| format!("checking {}", full.display())),
            }
            self.known_dirs.insert(rel.to_path_buf());
        }
        let (mode, mtime) = mode_mtime(entry, name)?;
        self.dirs.push(DirMeta {
            rel: rel.to_path_buf(),
            mode,
            mtime,
            owner: self.owner(entry)?,
        });
        self.stats.dirs += 1;
        Ok(())
    }

    fn symlink(&mut self, entry: &mut Entry<'_, Reader>, rel: &Path, name: &str) -> Result<()> {
        let Some(target) = entry.link_name_bytes().map(|t| t.into_owned()) else {
            return refuse(name, "symlink without a target");
        };
        if let Err(why) = check_link_target(rel, &target) {
            return refuse(&format!("{name} -> {}", shown(&target)), why);
        }
        self.parents(rel, name)?;
        let full = self.root.join(rel);
        self.clear_slot(rel, &full, name)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &full)
            .with_context(|| format!("creating symlink {}", full.display()))?;
        if let Some((uid, gid)) = self.owner(entry)? {
            std::os::unix::fs::lchown(&full, Some(uid as u32), Some(gid as u32))
                .with_context(|| format!("chown {}", full.display()))?;
        }
        let (_, mtime) = mode_mtime(entry, name)?;
        set_mtime_nofollow(&full, mtime)
            .with_context(|| format!("setting the mtime of {}", full.display()))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn hardlink(&mut self, entry: &mut Entry<'_, Reader>, rel: &Path, name: &str) -> Result<()> {
        let Some(target) = entry.link_name_bytes().map(|t| t.into_owned()) else {
            return refuse(name, "hardlink without a target");
        };
        let shown_link = format!("{name} => {}", shown(&target));
        let trel = match sanitize(&target) {
            Ok(Some(t)) => t,
            Ok(None) => return refuse(&shown_link, "hardlink to the destination folder"),
            Err(why) => return refuse(&shown_link, format!("hardlink target: {why}")),
        };
        if trel == rel {
            return refuse(&shown_link, "hardlink to itself");
        }
        // The target must be an entry extracted earlier, reached through real folders only.
        let mut cur = PathBuf::new();
        for c in trel.parent().into_iter().flat_map(|p| p.components()) {
            cur.push(c);
            if !self.known_dirs.contains(&cur) {
                return refuse(
                    &shown_link,
                    "hardlink target is not a file extracted earlier from this archive",
                );
            }
        }
        let tfull = self.root.join(&trel);
        match fs::symlink_metadata(&tfull) {
            Ok(m) if !m.is_dir() => {}
            _ => {
                return refuse(
                    &shown_link,
                    "hardlink target is not a file extracted earlier from this archive",
                )
            }
        }
        self.parents(rel, name)?;
        let full = self.root.join(rel);
        self.clear_slot(rel, &full, name)?;
        fs::hard_link(&tfull, &full)
            .with_context(|| format!("creating hardlink {}", full.display()))?;
        self.stats.files += 1;
        Ok(())
    }

    /// Applies folder owners, modes and mtimes, deepest first, after all contents.
    fn finish_dirs(&mut self) -> Result<()> {
        let mut dirs = std::mem::take(&mut self.dirs);
        // Stable: of duplicate entries for one folder, the last one wins.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.rel.components().count()));
        for d in &dirs {
            let full = self.root.join(&d.rel);
            if let Some((uid, gid)) = d.owner {
                std::os::unix::fs::lchown(&full, Some(uid as u32), Some(gid as u32))
                    .with_context(|| format!("chown {}", full.display()))?;
            }
            fs::set_permissions(&full, fs::Permissions::from_mode(d.mode))
                .with_context(|| format!("chmod {}", full.display()))?;
            set_mtime_nofollow(&full, d.mtime)
                .with_context(|| format!("setting the mtime of {}", full.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_paths() {
        assert_eq!(
            sanitize(b"a/./b//c/").unwrap(),
            Some(PathBuf::from("a/b/c"))
        );
        assert_eq!(sanitize(b"./").unwrap(), None);
        assert!(sanitize(b"../x").is_err());
        assert!(sanitize(b"a/../../x").is_err());
        assert!(sanitize(b"/etc/passwd").is_err());
        assert!(sanitize(b"").is_err());
        assert_eq!(
            sanitize("café/日本.txt".as_bytes()).unwrap(),
            Some(PathBuf::from("café/日本.txt"))
        );
    }

    #[test]
    fn link_targets() {
        let at = |p: &str, t: &str| check_link_target(Path::new(p), t.as_bytes());
        assert!(at("a/b/link", "../x").is_ok());
        assert!(at("a/b/link", "../../x").is_ok());
        assert!(at("a/b/link", "../../../x").is_err());
        assert!(at("link", "x/y").is_ok());
        assert!(at("link", "./x").is_ok());
        assert!(at("link", "..").is_err());
        assert!(at("a/link", "x/../../..").is_err());
        assert!(at("a/b/link", "s/../x").is_err());
        assert!(at("link", "/etc").is_err());
        assert!(at("link", "").is_err());
    }

    #[test]
    fn refuses_non_empty_destination_and_missing_parent() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("x"), "").unwrap();
        let e = Staging::new(tmp.path()).err().unwrap();
        assert!(e.to_string().contains("is not empty"), "{e}");
        let e = Staging::new(&tmp.path().join("no/such/dir")).err().unwrap();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = Staging::new(&tmp.path().join("x")).err().unwrap();
        assert!(e.to_string().contains("not a folder"), "{e}");
    }

    #[test]
    fn staging_is_removed_unless_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("new");
        let s = Staging::new(&dest).unwrap();
        let temp = s.temp.clone();
        fs::create_dir(temp.join("d")).unwrap();
        fs::set_permissions(temp.join("d"), fs::Permissions::from_mode(0o500)).unwrap();
        drop(s);
        assert!(!temp.exists());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);

        let s = Staging::new(&dest).unwrap();
        fs::write(s.temp.join("f"), "x").unwrap();
        s.commit().unwrap();
        assert_eq!(fs::read(dest.join("f")).unwrap(), b"x");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
