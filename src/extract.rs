//! Safe extraction and checking of `.tar.gz` and `.tar.zst` archives (the compression is
//! recognised by its magic bytes, gzip `1f 8b` or zstd `28 b5 2f fd`, not by the name).
//!
//! [`extract`] validates every entry before writing it (the one validation that
//! [`check_readable`], and so `verify`, applies too) and refuses hostile archives with
//! exit 4: `..` components, absolute paths, hardlinks to anything but an earlier entry,
//! and entries whose parent path goes through a symlink (the symlink-then-write-through
//! attack). Fifos are made with `mknodat`, device nodes too when running as root (as GNU
//! tar does; otherwise each is skipped with a warning). Symlinks themselves are restored verbatim, whatever
//! they point to (absolute, above the tree, dangling): safety comes from never writing
//! through one. Every entry is created relative to an open folder (`openat`,
//! `O_NOFOLLOW`), so no path is resolved through a link and none nears `PATH_MAX`.
//! Hard links come back as one inode, GNU sparse entries as sparse files, and pax
//! `SCHILY.xattr.*` records, `mtime` (before 1970 too) and owner names are applied.
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
use std::ffi::{CStr, CString, OsStr};
use std::fs::{self, DirBuilder, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use flate2::bufread::MultiGzDecoder;
use tar::{Archive, Entry, EntryType};

use crate::archive::{IO_BUF, XATTR_PAX};
use crate::dir_at::{check, create_at, mtime_only, open_dir_at};

/// What an archive held (for [`extract`]: what was written).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Regular files (hardlinks included).
    pub files: u64,
    /// Folders.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Fifos and device nodes.
    pub specials: u64,
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
        let mut manifest = crate::manifest::Manifest::read(&mpath).ok();
        if let Some(m) = &manifest {
            opts.expected_recipients = m.recipient_fingerprints.clone();
        }
        let head = crate::crypto::read_head(archive, crate::crypto::HEADER_PROBE as usize)?;
        if crate::crypto::is_age(&head) {
            let Some(ids) = cfg.encryption.identities()? else {
                return Err(crate::crypto::missing_identity(
                    &name,
                    &opts.expected_recipients,
                ));
            };
            ids.check_header(&head, &name, &opts.expected_recipients)?;
            // A manifest pulled without the identity holds its contents sealed.
            if let Some(m) = &mut manifest {
                m.unseal(&ids)?;
            }
            opts.identities = Some(ids);
        }
        opts.limit(manifest.as_ref(), cfg.max_extract_size);
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
        if self.damaged.get() && !crate::error::is_verification(&e) {
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

/// The archive's bytes, counted on a progress bar as they are read (a bar on a
/// terminal; nothing otherwise): the bar of every restore, `pull --to` and `verify`.
struct Counted {
    file: Box<dyn Read>,
    bar: crate::progress::Progress,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn open(archive: &Path, opts: &ExtractOptions) -> Result<(Archive<Reader>, Stream)> {
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let size = file.metadata().map(|m| m.len()).ok();
    open_reader(archive, Box::new(file), size, opts)
}

/// [`open`] of the archive's bytes from `src` (`size` of them, for the bar), named
/// `archive` in messages.
fn open_reader(
    archive: &Path,
    src: Box<dyn Read>,
    size: Option<u64>,
    opts: &ExtractOptions,
) -> Result<(Archive<Reader>, Stream)> {
    let label = archive
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let file = Counted {
        file: src,
        bar: crate::progress::Progress::bytes(label, size),
    };
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
    let mut model = Model::new(opts);
    let mut buf = vec![0u8; IO_BUF];
    let what = archive.display();
    each_entry(archive, &mut ar, &o, |entry| {
        let name = shown(&entry.path_bytes());
        model.admit(entry)?;
        let n = copy_to(entry, &mut io::sink(), &mut buf)
            .with_context(|| format!("{what}: cannot read the data of '{name}'"))?;
        if n != entry.size() {
            return Err(o.damaged(
                archive,
                format!("'{name}' is truncated ({n} of {} bytes)", entry.size()),
            ));
        }
        Ok(())
    })?;
    drain(archive, ar, &o, &mut buf)?;
    Ok(model.stats)
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
    let (ar, o) = open(archive, opts)?;
    extract_opened(archive, ar, o, dest, opts, || Ok(()))
}

/// [`extract_with`] of an archive read from `src` while it arrives (`pull --to` extracts
/// as it downloads; `size`: the archive's, for the bar). Everything is written into a
/// hidden staging folder; `gate` is called after the last entry and must return `Ok`
/// before that folder is moved into place: the downloader's verdict on the archive's
/// SHA-256. Any error, the gate's included, removes the staging folder.
pub fn extract_stream(
    archive: &Path,
    src: impl Read + 'static,
    size: Option<u64>,
    dest: &Path,
    opts: &ExtractOptions,
    gate: impl FnOnce() -> Result<()>,
) -> Result<ExtractStats> {
    let (ar, o) = open_reader(archive, Box::new(src), size, opts)?;
    extract_opened(archive, ar, o, dest, opts, gate)
}

fn extract_opened(
    archive: &Path,
    mut ar: Archive<Reader>,
    o: Stream,
    dest: &Path,
    opts: &ExtractOptions,
    gate: impl FnOnce() -> Result<()>,
) -> Result<ExtractStats> {
    let staging = Staging::new(dest)?;
    let mut model = Model::new(opts);
    let mut u = Unpacker::new(&staging.temp, unsafe { libc::geteuid() } == 0)?;
    let what = archive.display();
    // On an error `staging` is dropped on the way out: nothing is left behind.
    each_entry(archive, &mut ar, &o, |entry| {
        if let Some(a) = model.admit(entry)? {
            u.write(entry, a)?;
        }
        Ok(())
    })
    .with_context(|| format!("extracting {what}"))?;
    drain(archive, ar, &o, &mut u.buf)?;
    u.finish_dirs()?;
    gate()?;
    staging.commit()?;
    Ok(model.stats)
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

// ---------------------------------------------------------------------------
// The one validation path: what `extract` would refuse, `check_readable` (and so
// `verify`) refuses too, with the same message.

/// What an admitted entry creates.
enum Kind {
    File,
    Dir,
    Symlink(Vec<u8>),
    /// A hard link to an earlier entry (its sanitized path).
    Hardlink(PathBuf),
    /// A fifo or a device node: its file type bits (`S_IFIFO`, `S_IFCHR`, `S_IFBLK`) and
    /// device number.
    Node(libc::mode_t, libc::dev_t),
}

/// An entry that passed [`Model::admit`]: where it goes, what it is, the folders
/// missing on its way (shallowest first, to create before it), and whether it
/// replaces an earlier file or symlink of the same name (as tar does).
struct Admitted {
    rel: PathBuf,
    kind: Kind,
    new_parents: Vec<PathBuf>,
    replaces: bool,
    /// A folder that was already there (an earlier entry or a parent made for one).
    dir_exists: bool,
}

/// The tree an archive builds, as much of it as judging an entry needs. Both
/// [`extract`] and [`check_readable`] feed every entry through [`Model::admit`], so an
/// archive that `verify` reads fine is one that a restore extracts.
///
/// The rule that keeps extraction inside the destination: every component of an
/// entry's parent path must be a folder this archive made (never a symlink, never a
/// file), and hard links may only name an earlier file or symlink of the archive.
/// Symlink targets themselves are stored verbatim and never judged: nothing is ever
/// written through one.
struct Model {
    dirs: HashSet<PathBuf>,
    symlinks: HashSet<PathBuf>,
    /// Files and hard links, by a keyed hash of their path (16 bytes each, not a path).
    files: HashSet<u64>,
    keys: RandomState,
    stats: ExtractStats,
    max_bytes: Option<u64>,
    max_bytes_configured: bool,
}

impl Model {
    fn new(opts: &ExtractOptions) -> Model {
        Model {
            dirs: HashSet::new(),
            symlinks: HashSet::new(),
            files: HashSet::new(),
            keys: RandomState::new(),
            stats: ExtractStats::default(),
            max_bytes: opts.max_bytes,
            max_bytes_configured: opts.max_bytes_configured,
        }
    }

    fn key(&self, p: &Path) -> u64 {
        self.keys.hash_one(p.as_os_str().as_bytes())
    }

    /// Judges one entry and records it; `None` for entries that create nothing (the
    /// archive's `./`, pax global headers). A refusal is a verification failure (exit 4).
    fn admit(&mut self, entry: &mut Entry<'_, Reader>) -> Result<Option<Admitted>> {
        // Every pax record must parse (a value may hold any byte; the length frames it):
        // a malformed one is refused here, so `verify` rejects what a restore would.
        let bad_pax = match entry.pax_extensions() {
            Ok(Some(records)) => records.filter_map(|r| r.err()).next(),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if let Some(e) = bad_pax {
            return refuse(
                &shown(&entry.path_bytes()),
                format!("a malformed pax header ({e})"),
            );
        }
        // A pax uid or gid must be a decimal number that a uid_t holds. GNU tar reports any
        // other value as a malformed header (and exits 2); we refuse the entry, as for any
        // malformed record, rather than give the file an owner the archive did not name
        // (4294967296 cut to 32 bits would be root).
        if let Some(bad) = pax_ids_not_numbers(entry) {
            return refuse(
                &shown(&entry.path_bytes()),
                format!("a malformed pax header ({bad} is not a user or group number)"),
            );
        }
        // The same for the header's own numbers (GNU's base-256 fields reach 2^63).
        let h = entry.header();
        for (what, id) in [("uid", h.uid()), ("gid", h.gid())] {
            if let Ok(n) = id {
                if u32::try_from(n).is_err() {
                    return refuse(
                        &shown(&entry.path_bytes()),
                        format!("its {what} {n} is out of range"),
                    );
                }
            }
        }
        let raw = entry.path_bytes();
        let name = shown(&raw);
        let ty = entry.header().entry_type();
        if ty == EntryType::XGlobalHeader {
            return Ok(None);
        }
        let rel = match sanitize(&raw) {
            Ok(Some(rel)) => rel,
            Ok(None) if ty == EntryType::Directory => return Ok(None), // "./": the destination itself
            Ok(None) => return refuse(&name, "empty path"),
            Err(why) => return refuse(&name, why),
        };
        let kind = match ty {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => match entry.link_name_bytes() {
                Some(t) if !t.is_empty() => Kind::Symlink(t.into_owned()),
                _ => return refuse(&name, "symlink without a target"),
            },
            EntryType::Link => {
                let Some(target) = entry.link_name_bytes() else {
                    return refuse(&name, "hardlink without a target");
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
                let through_dirs = trel
                    .parent()
                    .is_none_or(|p| p.as_os_str().is_empty() || self.dirs.contains(p));
                let known = self.files.contains(&self.key(&trel)) || self.symlinks.contains(&trel);
                if !through_dirs || !known {
                    return refuse(
                        &shown_link,
                        "hardlink target is not a file extracted earlier from this archive",
                    );
                }
                Kind::Hardlink(trel)
            }
            EntryType::Fifo => Kind::Node(libc::S_IFIFO, 0),
            EntryType::Char | EntryType::Block => {
                let h = entry.header();
                let (Ok(Some(major)), Ok(Some(minor))) = (h.device_major(), h.device_minor())
                else {
                    return refuse(&name, "device file without valid device numbers");
                };
                let fmt = if ty == EntryType::Char {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                Kind::Node(fmt, libc::makedev(major, minor))
            }
            other => return refuse(&name, format!("unsupported entry type {other:?}")),
        };
        let new_parents = self.parents(&rel, &name)?;
        let key = self.key(&rel);
        let mut replaces = false;
        let mut dir_exists = false;
        if let Kind::Dir = kind {
            if self.symlinks.contains(&rel) || self.files.contains(&key) {
                return refuse(
                    &name,
                    "a file or symlink of the same name was already extracted",
                );
            }
            dir_exists = !self.dirs.insert(rel.clone());
            self.stats.dirs += 1;
        } else {
            if self.dirs.contains(&rel) {
                return refuse(&name, "a folder of the same name was already extracted");
            }
            replaces = self.symlinks.remove(&rel) | self.files.remove(&key);
            if let Kind::Symlink(_) = kind {
                self.symlinks.insert(rel.clone());
                self.stats.symlinks += 1;
            } else if let Kind::Node(..) = kind {
                self.files.insert(key);
                self.stats.specials += 1;
            } else {
                self.files.insert(key);
                self.stats.files += 1;
            }
        }
        if let Kind::File = kind {
            let size = entry.size();
            if let Some(max) = self.max_bytes {
                if self.stats.bytes.saturating_add(size) > max {
                    let why = if self.max_bytes_configured {
                        "the extraction limit ([restore] max_extract_size or --max-extract-size)"
                    } else {
                        "more than the archive's manifest declares"
                    };
                    // A limit, not a hostile archive: exit 1, as before.
                    bail!(
                        "refusing entry '{name}': it would take the extracted data past {max} bytes, {why} (a decompression bomb?)"
                    );
                }
            }
            self.stats.bytes += size;
        }
        Ok(Some(Admitted {
            rel,
            kind,
            new_parents,
            replaces,
            dir_exists,
        }))
    }

    /// Checks every parent of `rel`: a folder made by the archive, or missing (then it is
    /// recorded and returned, to create); a symlink or a file on the way is refused.
    fn parents(&mut self, rel: &Path, name: &str) -> Result<Vec<PathBuf>> {
        let mut missing = Vec::new();
        let Some(parent) = rel.parent() else {
            return Ok(missing);
        };
        let mut cur = PathBuf::new();
        for c in parent.components() {
            cur.push(c);
            if self.dirs.contains(&cur) {
                continue;
            }
            if self.symlinks.contains(&cur) {
                return refuse(
                    name,
                    format!(
                        "its parent '{}' is a symlink (writing through it could escape the destination)",
                        cur.display()
                    ),
                );
            }
            if self.files.contains(&self.key(&cur)) {
                return refuse(
                    name,
                    format!("its parent '{}' is not a folder", cur.display()),
                );
            }
            self.dirs.insert(cur.clone());
            missing.push(cur.clone());
        }
        Ok(missing)
    }
}

fn refuse<T>(name: &str, why: impl std::fmt::Display) -> Result<T> {
    Err(crate::error::verification(format!(
        "refusing entry '{name}': {why}"
    )))
}

/// A pax `uid` or `gid` value: a decimal number.
fn pax_id(v: &[u8]) -> Option<u32> {
    if !v.iter().all(u8::is_ascii_digit) {
        return None; // "+5", "-1", " 5": not what a tar writes ("" fails to parse)
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The first pax `uid` or `gid` record of `entry` whose value is not a [`pax_id`], shown as
/// `key=value`.
fn pax_ids_not_numbers(entry: &mut Entry<'_, Reader>) -> Option<String> {
    let records = entry.pax_extensions().ok()??;
    records.flatten().find_map(|r| {
        let (k, v) = (r.key_bytes(), r.value_bytes());
        let id = k == b"uid" || k == b"gid";
        (id && pax_id(v).is_none()).then(|| format!("{}={}", shown(k), shown(v)))
    })
}

/// Mode, times, owner and extended attributes of an entry, from its header and its pax
/// records (pax `mtime` wins: it carries times before 1970 and fractions).
struct Meta {
    mode: u32,
    mtime: (i64, i64),
    /// Numeric owner and group, names resolved to this host's ids when they exist (as
    /// GNU tar does); `None` unless running as root.
    owner: Option<(u32, u32)>,
    /// `SCHILY.xattr.NAME` records (as `tar --xattrs` writes them).
    xattrs: Vec<(CString, Vec<u8>)>,
}

fn entry_meta(entry: &mut Entry<'_, Reader>, name: &str, ids: Option<&mut Ids>) -> Result<Meta> {
    let h = entry.header();
    let mode = h
        .mode()
        .with_context(|| format!("entry '{name}': bad mode field"))?
        & 0o7777;
    let mut mtime = (
        h.mtime()
            .with_context(|| format!("entry '{name}': bad mtime field"))?
            .min(i64::MAX as u64) as i64,
        0,
    );
    // `admit` refused numbers a uid_t does not hold.
    let mut uid = h.uid().ok().and_then(|u| u32::try_from(u).ok());
    let mut gid = h.gid().ok().and_then(|g| u32::try_from(g).ok());
    let mut uname = h.username_bytes().map(<[u8]>::to_vec);
    let mut gname = h.groupname_bytes().map(<[u8]>::to_vec);
    let mut xattrs = Vec::new();
    let mut acl_texts = Vec::new();
    if let Some(pax) = entry
        .pax_extensions()
        .with_context(|| format!("entry '{name}': bad pax header"))?
    {
        for ext in pax {
            let ext = ext.with_context(|| format!("entry '{name}': bad pax record"))?;
            let (k, v) = (ext.key_bytes(), ext.value_bytes());
            match k {
                b"mtime" => {
                    if let Some(t) = parse_pax_time(v) {
                        mtime = t;
                    }
                }
                // The last record wins, as in GNU tar (the tar crate's header keeps the
                // first); `admit` refused a value that is not a number.
                b"uid" => uid = pax_id(v),
                b"gid" => gid = pax_id(v),
                b"uname" => uname = Some(v.to_vec()),
                b"gname" => gname = Some(v.to_vec()),
                _ if k.starts_with(b"SCHILY.acl.") => {
                    let text = String::from_utf8_lossy(v).into_owned();
                    acl_texts.push((String::from_utf8_lossy(k).into_owned(), text));
                }
                _ => {
                    if let Some(x) = k.strip_prefix(XATTR_PAX.as_bytes()) {
                        if let Ok(c) = CString::new(x) {
                            xattrs.push((c, v.to_vec()));
                        }
                    }
                }
            }
        }
    }
    acl_attributes(name, &acl_texts, &mut xattrs);
    let owner = ids.and_then(|ids| {
        let u = ids.uid(uname.as_deref()).or(uid)?;
        let g = ids.gid(gname.as_deref()).or(gid)?;
        Some((u, g))
    });
    Ok(Meta {
        mode,
        mtime,
        owner,
        xattrs,
    })
}

/// The ACLs of an entry from GNU tar's text (`SCHILY.acl.access` and `.default`, which
/// `tar --acls` writes, and ours too) as the extended attributes the kernel takes. Names
/// are resolved to this host's ids, as `tar --acls` does and as owners are, so the text
/// wins over a raw `system.posix_acl_*` attribute holding the backup host's numbers; a
/// text this host cannot apply (an unknown name) leaves the raw attribute, when there is
/// one, and is warned about.
fn acl_attributes(name: &str, texts: &[(String, String)], xattrs: &mut Vec<(CString, Vec<u8>)>) {
    use crate::posix_acl::{from_text, Who, KINDS};
    for (record, text) in texts {
        let Some((attr, _)) = KINDS.iter().find(|(_, r)| r == record) else {
            continue;
        };
        // GNU tar writes an empty `SCHILY.acl.default` for a folder without one.
        if text.trim().is_empty() {
            continue;
        }
        let raw = from_text(text, |who, q| {
            let by_name = match who {
                Who::User => crate::owners::uid_of_name(q.as_bytes()),
                Who::Group => crate::owners::gid_of_name(q.as_bytes()),
            };
            by_name.or_else(|| q.parse().ok())
        });
        let (Some(raw), Ok(k)) = (raw, CString::new(*attr)) else {
            // The raw attribute, when the archive has it, is applied instead.
            tracing::warn!("entry '{name}': {record} is not an ACL this host can apply: {text:?}");
            continue;
        };
        // The text names users and groups, resolved on this host as the owners are (as
        // `tar --acls` does); it replaces the raw attribute's numbers from the backup host.
        xattrs.retain(|(x, _)| x.as_bytes() != attr.as_bytes());
        xattrs.push((k, raw));
    }
}

/// A pax time, `-123.5` or `1700000000.25`, as (seconds, nanoseconds ≥ 0).
fn parse_pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let mut nanos: i64 = if digits.is_empty() {
        0
    } else {
        digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32)
    };
    if s.starts_with('-') && nanos > 0 {
        // -1.25 is 1.25 s before the epoch: -2 s + 0.75 s.
        return Some((secs - 1, 1_000_000_000 - nanos));
    }
    if nanos >= 1_000_000_000 {
        nanos = 0;
    }
    Some((secs, nanos))
}

/// User and group names resolved to this host's ids (cached), as GNU tar does when it
/// runs as root: a name that exists here wins over the archived number.
#[derive(Default)]
struct Ids {
    users: std::collections::HashMap<Vec<u8>, Option<u32>>,
    groups: std::collections::HashMap<Vec<u8>, Option<u32>>,
}

impl Ids {
    fn uid(&mut self, name: Option<&[u8]>) -> Option<u32> {
        let name = name.filter(|n| !n.is_empty())?;
        *self
            .users
            .entry(name.to_vec())
            .or_insert_with(|| crate::owners::uid_of_name(name))
    }

    fn gid(&mut self, name: Option<&[u8]>) -> Option<u32> {
        let name = name.filter(|n| !n.is_empty())?;
        *self
            .groups
            .entry(name.to_vec())
            .or_insert_with(|| crate::owners::gid_of_name(name))
    }
}

/// Writes admitted entries into the staging folder, every one relative to an open folder
/// (`openat` and friends, `O_NOFOLLOW`): no path is ever resolved through a symlink and
/// no absolute path gets near `PATH_MAX`, however deep the tree.
struct Unpacker {
    root: File,
    /// The folder last opened, to write its next entries without opening it again.
    cur: Option<(PathBuf, File)>,
    /// Folder metadata, applied after all contents, deepest first.
    dirs: Vec<(PathBuf, Meta)>,
    /// `Some` when running as root: owners are restored (names first, as GNU tar).
    ids: Option<Ids>,
    buf: Vec<u8>,
}

fn c_name(p: &Path) -> Result<CString> {
    let n = p.file_name().map_or(p.as_os_str(), |n| n);
    CString::new(n.as_bytes()).map_err(|_| anyhow!("{}: a name with a NUL byte", p.display()))
}

impl Unpacker {
    fn new(root: &Path, as_root: bool) -> Result<Unpacker> {
        let root = File::open(root).with_context(|| format!("opening {}", root.display()))?;
        Ok(Unpacker {
            root,
            cur: None,
            dirs: Vec::new(),
            ids: as_root.then(Ids::default),
            buf: vec![0u8; IO_BUF],
        })
    }

    /// The open folder `rel` (relative to the root), opened one component at a time.
    fn dir(&mut self, rel: &Path) -> Result<&File> {
        if self.cur.as_ref().is_none_or(|(p, _)| p != rel) {
            let mut f: Option<File> = None;
            for c in rel.components() {
                let name = CString::new(c.as_os_str().as_bytes())?;
                let parent = f.as_ref().unwrap_or(&self.root).as_raw_fd();
                f = Some(
                    open_dir_at(parent, &name)
                        .with_context(|| format!("opening folder {}", rel.display()))?,
                );
            }
            let f = match f {
                Some(f) => f,
                None => self.root.try_clone()?,
            };
            self.cur = Some((rel.to_path_buf(), f));
        }
        Ok(&self.cur.as_ref().expect("set above").1)
    }

    fn parent_of(&mut self, rel: &Path) -> Result<(RawFd, CString)> {
        let name = c_name(rel)?;
        let fd = self.dir(rel.parent().unwrap_or(Path::new("")))?.as_raw_fd();
        Ok((fd, name))
    }

    fn write(&mut self, entry: &mut Entry<'_, Reader>, a: Admitted) -> Result<()> {
        let name = shown(&entry.path_bytes());
        for p in &a.new_parents {
            let (fd, n) = self.parent_of(p)?;
            check(unsafe { libc::mkdirat(fd, n.as_ptr(), 0o755) })
                .with_context(|| format!("creating folder {}", p.display()))?;
        }
        let meta = entry_meta(entry, &name, self.ids.as_mut())?;
        let rel = &a.rel;
        let (fd, n) = self.parent_of(rel)?;
        if a.replaces {
            match check(unsafe { libc::unlinkat(fd, n.as_ptr(), 0) }) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("replacing {}", rel.display()))
                }
                _ => {}
            }
        }
        match a.kind {
            Kind::Dir => {
                if !a.dir_exists {
                    check(unsafe { libc::mkdirat(fd, n.as_ptr(), 0o700) })
                        .with_context(|| format!("creating folder {}", rel.display()))?;
                }
                self.dirs.push((rel.clone(), meta));
            }
            Kind::File => self.file(entry, fd, &n, rel, &name, meta)?,
            Kind::Symlink(target) => {
                let t = CString::new(target)
                    .map_err(|_| anyhow!("symlink '{name}': a target with a NUL byte"))?;
                check(unsafe { libc::symlinkat(t.as_ptr(), fd, n.as_ptr()) })
                    .with_context(|| format!("creating symlink {}", rel.display()))?;
                if let Some((u, g)) = meta.owner {
                    check(unsafe {
                        libc::fchownat(fd, n.as_ptr(), u, g, libc::AT_SYMLINK_NOFOLLOW)
                    })
                    .with_context(|| format!("chown {}", rel.display()))?;
                }
                let times = mtime_only(meta.mtime);
                check(unsafe {
                    libc::utimensat(fd, n.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
                })
                .with_context(|| format!("setting the mtime of {}", rel.display()))?;
            }
            Kind::Node(fmt, dev) => {
                let mode = fmt | (meta.mode as libc::mode_t);
                if let Err(e) = check(unsafe { libc::mknodat(fd, n.as_ptr(), mode, dev) }) {
                    if fmt != libc::S_IFIFO && e.kind() == io::ErrorKind::PermissionDenied {
                        tracing::warn!(
                            "{}: device node not created: only root can make one ({e})",
                            rel.display()
                        );
                        return Ok(());
                    }
                    return Err(e).with_context(|| format!("creating {}", rel.display()));
                }
                if let Some((u, g)) = meta.owner {
                    check(unsafe {
                        libc::fchownat(fd, n.as_ptr(), u, g, libc::AT_SYMLINK_NOFOLLOW)
                    })
                    .with_context(|| format!("chown {}", rel.display()))?;
                }
                // mknod's mode went through the umask; set it exactly (after the chown,
                // which clears set-id bits).
                check(unsafe { libc::fchmodat(fd, n.as_ptr(), meta.mode as libc::mode_t, 0) })
                    .with_context(|| format!("chmod {}", rel.display()))?;
                let times = mtime_only(meta.mtime);
                check(unsafe {
                    libc::utimensat(fd, n.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
                })
                .with_context(|| format!("setting the mtime of {}", rel.display()))?;
            }
            Kind::Hardlink(target) => {
                let tdir = match target.parent() {
                    Some(p) if !p.as_os_str().is_empty() => {
                        let mut f: Option<File> = None;
                        for c in p.components() {
                            let cn = CString::new(c.as_os_str().as_bytes())?;
                            let parent = f.as_ref().unwrap_or(&self.root).as_raw_fd();
                            f = Some(open_dir_at(parent, &cn)?);
                        }
                        f
                    }
                    _ => None,
                };
                let tfd = tdir.as_ref().unwrap_or(&self.root).as_raw_fd();
                let tn = c_name(&target)?;
                let (fd, n) = self.parent_of(rel)?;
                check(unsafe { libc::linkat(tfd, tn.as_ptr(), fd, n.as_ptr(), 0) }).with_context(
                    || {
                        format!(
                            "creating hardlink {} => {}",
                            rel.display(),
                            target.display()
                        )
                    },
                )?;
            }
        }
        Ok(())
    }

    fn file(
        &mut self,
        entry: &mut Entry<'_, Reader>,
        dir: RawFd,
        n: &CStr,
        rel: &Path,
        name: &str,
        meta: Meta,
    ) -> Result<()> {
        // O_EXCL and O_NOFOLLOW: never opens through a symlink.
        let file = create_at(dir, n).with_context(|| format!("creating {}", rel.display()))?;
        let size = entry.size();
        let sparse = entry.header().entry_type() == EntryType::GNUSparse;
        let written = if sparse {
            copy_sparse(entry, &file, &mut self.buf)
        } else {
            let mut w = BufWriter::with_capacity(IO_BUF, &file);
            copy_to(entry, &mut w, &mut self.buf).and_then(|n| w.flush().map(|_| n))
        };
        let n = written.with_context(|| format!("writing '{name}'"))?;
        if n != size {
            return Err(crate::error::verification(format!(
                "'{name}' is truncated in the archive ({n} of {size} bytes): the archive is damaged or truncated"
            )));
        }
        apply_meta(&file, &meta)
            .with_context(|| format!("setting the metadata of {}", rel.display()))
    }

    /// Applies folder owners, modes, xattrs and mtimes, deepest first, after all contents.
    fn finish_dirs(&mut self) -> Result<()> {
        let mut dirs = std::mem::take(&mut self.dirs);
        // Stable: of duplicate entries for one folder, the last one wins.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
        for (rel, meta) in &dirs {
            let (fd, n) = self.parent_of(rel)?;
            let f =
                open_dir_at(fd, &n).with_context(|| format!("opening folder {}", rel.display()))?;
            apply_meta(&f, meta)
                .with_context(|| format!("setting the metadata of {}", rel.display()))?;
        }
        Ok(())
    }
}

/// An entry's metadata ([`crate::dir_at::apply_metadata`]: owner, mode, attributes, mtime,
/// in that order). An attribute the kernel refuses (a `security.*` one without the
/// privilege) is warned about, as GNU tar does, and does not fail the restore.
fn apply_meta(f: &File, meta: &Meta) -> io::Result<()> {
    crate::dir_at::apply_metadata(
        f,
        meta.owner,
        meta.mode,
        meta.xattrs
            .iter()
            .map(|(k, v)| (k.as_c_str(), v.as_slice())),
        meta.mtime,
    )
}

/// Writes a sparse entry's content leaving its all-zero blocks as holes, and sets the
/// file's length at the end (a trailing hole).
fn copy_sparse(r: &mut dyn Read, f: &File, buf: &mut [u8]) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    const BLOCK: usize = 4096;
    let mut off = 0u64;
    loop {
        let k = match r.read(buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for chunk in buf[..k].chunks(BLOCK) {
            if chunk.iter().any(|b| *b != 0) {
                f.write_all_at(chunk, off)?;
            }
            off += chunk.len() as u64;
        }
    }
    f.set_len(off)?;
    Ok(off)
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

    // ---- added for the mutation check (issue 21) ----

    use std::os::unix::fs::MetadataExt;

    use tar::Header;

    const MTIME: u64 = 1_000_000_000;

    /// A tar built header by header (the tar crate's own path checks cannot stop a
    /// hostile name), written gzipped.
    struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Tar {
            Tar(tar::Builder::new(Vec::new()))
        }

        fn header(kind: EntryType, path: &str, link: &str, size: u64) -> Header {
            let mut h = Header::new_gnu();
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(if kind == EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_mtime(MTIME);
            h
        }

        fn add(mut self, mut h: Header, data: &[u8]) -> Tar {
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }

        fn file(self, path: &str, data: &[u8]) -> Tar {
            let h = Tar::header(EntryType::Regular, path, "", data.len() as u64);
            self.add(h, data)
        }

        fn dir(self, path: &str) -> Tar {
            let h = Tar::header(EntryType::Directory, path, "", 0);
            self.add(h, b"")
        }

        fn symlink(self, path: &str, target: &str) -> Tar {
            let h = Tar::header(EntryType::Symlink, path, target, 0);
            self.add(h, b"")
        }

        /// A pax extended header: its records apply to the next entry.
        fn pax(self, records: &[(&str, &str)]) -> Tar {
            let mut body = Vec::new();
            for (k, v) in records {
                let rest = format!(" {k}={v}\n");
                let mut len = rest.len() + 1;
                while len.to_string().len() + rest.len() != len {
                    len += 1;
                }
                body.extend_from_slice(format!("{len}{rest}").as_bytes());
            }
            let h = Tar::header(EntryType::XHeader, "PaxHeaders/x", "", body.len() as u64);
            self.add(h, &body)
        }

        fn write_to(self, at: &Path) {
            let tar = self.0.into_inner().unwrap();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            fs::write(at, gz.finish().unwrap()).unwrap();
        }
    }

    /// The error of extracting `archive` into a new folder, after checking that nothing
    /// was created there.
    fn extract_error(archive: &Path, opts: &ExtractOptions) -> anyhow::Error {
        let dest = archive.with_extension("out");
        let e = extract_with(archive, &dest, opts).expect_err("extracted");
        assert!(!dest.exists(), "{} was created", dest.display());
        let parent = archive.parent().unwrap();
        let left: Vec<_> = fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(STAGING_PREFIX))
            .collect();
        assert!(left.is_empty(), "staging left behind: {left:?}");
        e
    }

    fn code(e: &anyhow::Error) -> i32 {
        crate::error::Exit::of(e).code()
    }

    /// Both `verify` (`check_readable`) and a restore refuse `archive` with exit 4 and a
    /// message holding `needle`, nothing extracted; returns the two messages.
    fn refused_by_both(archive: &Path, needle: &str) -> [String; 2] {
        let checked = check_readable(archive).expect_err("verify accepted it");
        let extracted = extract_error(archive, &ExtractOptions::default());
        [checked, extracted].map(|e| {
            let msg = format!("{e:#}");
            assert!(msg.contains(needle), "{msg}");
            assert_eq!(code(&e), 4, "{msg}");
            msg
        })
    }

    #[test]
    fn pax_times_keep_fractions_and_dates_before_1970() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time(b"1700000000.25"),
            Some((1_700_000_000, 250_000_000))
        );
        assert_eq!(parse_pax_time(b"12.000"), Some((12, 0)));
        // Nanoseconds at most; further digits are dropped.
        assert_eq!(parse_pax_time(b"1.123456789987"), Some((1, 123_456_789)));
        // Before 1970: -1.25 is 1.25 s before the epoch, -2 s + 0.75 s.
        assert_eq!(parse_pax_time(b"-3"), Some((-3, 0)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"-0.5"), Some((-1, 500_000_000)));
        assert_eq!(parse_pax_time(b"soon"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
    }

    fn manifest_of(bytes: &[u64]) -> crate::manifest::Manifest {
        let sources: Vec<String> = bytes
            .iter()
            .enumerate()
            .map(|(i, b)| {
                format!(
                    r#"{{"name":"s{i}","section":"static_content","archive_path":"static_content/s{i}",
                    "origin":"/srv/s{i}","files":1,"dirs":1,"symlinks":0,"bytes":{b}}}"#
                )
            })
            .collect();
        let json = format!(
            r#"{{"format":1,"id":"20260101-000000","file":"p-20260101-000000.tar.gz",
            "created":"2026-01-01T00:00:00Z","size":10,"sha256":"{}","compression":"gzip",
            "encryption":"none","host":"h","tool_version":"0","sources":[{}]}}"#,
            "0".repeat(64),
            sources.join(",")
        );
        crate::manifest::Manifest::from_json(json.as_bytes(), "test").unwrap()
    }

    #[test]
    fn the_bound_is_the_manifests_content_with_a_margin_or_a_smaller_configured_size() {
        let m = manifest_of(&[1600, 0, 3200]);
        // 4800 bytes of sources, plus a sixteenth (300) and 16 MiB.
        let from_manifest = 4800 + 300 + (16 << 20);
        assert_eq!(content_limit(&m), from_manifest);
        let bound = |manifest: Option<&crate::manifest::Manifest>, configured| {
            let mut o = ExtractOptions::default();
            o.limit(manifest, configured);
            (o.max_bytes, o.max_bytes_configured)
        };
        assert_eq!(bound(Some(&m), None), (Some(from_manifest), false));
        assert_eq!(
            bound(Some(&m), Some(from_manifest - 1)),
            (Some(from_manifest - 1), true)
        );
        // The configured size wins only when smaller: a tie is the manifest's bound.
        assert_eq!(
            bound(Some(&m), Some(from_manifest)),
            (Some(from_manifest), false)
        );
        assert_eq!(
            bound(Some(&m), Some(from_manifest + 1)),
            (Some(from_manifest), false)
        );
        assert_eq!(bound(None, Some(5)), (Some(5), true));
        assert_eq!(bound(None, None), (None, false));
    }

    #[test]
    fn the_bound_admits_exactly_its_size_and_stops_before_one_byte_more() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.tar.gz");
        Tar::new()
            .file("a", b"abc")
            .file("b", b"defg")
            .write_to(&archive);
        let opts = |max, configured| ExtractOptions {
            max_bytes: Some(max),
            max_bytes_configured: configured,
            ..Default::default()
        };
        let dest = tmp.path().join("exact");
        let st = extract_with(&archive, &dest, &opts(7, true)).unwrap();
        assert_eq!((st.files, st.bytes), (2, 7));
        assert_eq!(fs::read(dest.join("b")).unwrap(), b"defg");

        for (configured, why) in [
            (true, "max_extract_size"),
            (false, "more than the archive's manifest declares"),
        ] {
            let e = extract_error(&archive, &opts(6, configured));
            let msg = format!("{e:#}");
            assert!(
                msg.contains("refusing entry 'b': it would take the extracted data past 6 bytes"),
                "{msg}"
            );
            assert!(msg.contains(why), "{msg}");
            // A limit, not a damaged or hostile archive.
            assert_eq!(code(&e), 1, "{msg}");
        }
        // The bound is on what is written: reading the archive is not bounded by it.
        let st = check_readable(&archive).unwrap();
        assert_eq!(st.bytes, 7);
    }

    #[test]
    fn an_empty_file_or_another_format_is_named_as_such() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty.tar.gz");
        fs::write(&empty, b"").unwrap();
        let text = tmp.path().join("text.tar.gz");
        fs::write(&text, b"hello, world").unwrap();
        for (file, needle) in [
            (&empty, "empty, not an archive"),
            (&text, "neither gzip nor zstd (it starts with 68656c6c)"),
        ] {
            refused_by_both(file, needle);
        }
    }

    #[test]
    fn a_refused_entry_in_a_sound_stream_is_not_called_damaged() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.tar.gz");
        Tar::new()
            .file("ok", b"x")
            .file("../escape", b"y")
            .write_to(&archive);
        let needle = "refusing entry '../escape': path contains a '..' component";
        for msg in refused_by_both(&archive, needle) {
            assert!(!msg.contains("damaged"), "{msg}");
        }
    }

    #[test]
    fn a_stream_cut_inside_a_file_is_a_damaged_archive() {
        let tmp = tempfile::tempdir().unwrap();
        // Incompressible content, so that a cut in the gzip stream falls inside it.
        let noise = crate::test_noise(400_000, 0x2545_f491_4f6c_dd1d);
        let whole = tmp.path().join("whole.tar.gz");
        Tar::new().file("big", &noise).write_to(&whole);
        let bytes = fs::read(&whole).unwrap();
        let cut = tmp.path().join("cut.tar.gz");
        fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = extract_error(&cut, &ExtractOptions::default());
        let msg = format!("{e:#}");
        assert!(msg.contains("damaged or truncated"), "{msg}");
        assert_eq!(code(&e), 4, "{msg}");
        let e = check_readable(&cut).unwrap_err();
        assert_eq!(code(&e), 4, "{e:#}");
    }

    #[test]
    fn a_file_named_as_the_destination_or_a_symlink_to_nothing_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let cases = [
            (
                Tar::new().file("./", b"lost"),
                "refusing entry './': empty path",
            ),
            (
                Tar::new().symlink("l", ""),
                "refusing entry 'l': symlink without a target",
            ),
            // An empty pax `linkpath` over the header's target.
            (
                Tar::new().pax(&[("linkpath", "")]).symlink("m", "x"),
                "refusing entry 'm': symlink without a target",
            ),
            (
                Tar::new().file("x", b"f").dir("x/"),
                "refusing entry 'x/': a file or symlink of the same name was already extracted",
            ),
            (
                Tar::new().symlink("y", "/tmp").dir("y"),
                "refusing entry 'y': a file or symlink of the same name was already extracted",
            ),
        ];
        for (i, (tar, needle)) in cases.into_iter().enumerate() {
            let archive = tmp.path().join(format!("{i}.tar.gz"));
            tar.write_to(&archive);
            refused_by_both(&archive, needle);
        }
    }

    #[test]
    fn the_archive_root_is_the_destination_and_a_later_entry_replaces_an_earlier_one() {
        // What `tar -r` (append) makes, and what tar itself extracts as the last one.
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.tar.gz");
        Tar::new()
            // The archive's own folder, as `tar -C folder .` writes it: the destination.
            .dir("./")
            .file("f", b"old")
            .file("f", b"new")
            .symlink("l", "f")
            .file("l", b"now a file")
            .file("m", b"was a file")
            .symlink("m", "f")
            .write_to(&archive);
        let dest = tmp.path().join("out");
        let st = extract_with(&archive, &dest, &ExtractOptions::default()).unwrap();
        assert_eq!(fs::read(dest.join("f")).unwrap(), b"new");
        assert!(fs::symlink_metadata(dest.join("l")).unwrap().is_file());
        assert_eq!(fs::read(dest.join("l")).unwrap(), b"now a file");
        assert_eq!(fs::read_link(dest.join("m")).unwrap(), Path::new("f"));
        assert_eq!((st.files, st.symlinks, st.dirs), (4, 2, 0));
        assert_eq!(fs::read_dir(&dest).unwrap().count(), 3);
    }

    #[test]
    fn as_root_owners_come_from_names_first_then_numbers_pax_records_included() {
        if unsafe { libc::geteuid() } != 0 {
            // Owners are restored only by root (as tar does).
            return;
        }
        let nobody = crate::owners::uid_of_name(b"nobody").expect("a user nobody here");
        let nogroup = crate::owners::gid_of_name(b"nogroup")
            .or_else(|| crate::owners::gid_of_name(b"nobody"))
            .expect("a group nogroup or nobody here");
        let group_name = if crate::owners::gid_of_name(b"nogroup").is_some() {
            "nogroup"
        } else {
            "nobody"
        };
        let owned = |path: &str, uid: u64, gid: u64, uname: &str, gname: &str| {
            let mut h = Tar::header(EntryType::Regular, path, "", 1);
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_username(uname).unwrap();
            h.set_groupname(gname).unwrap();
            h
        };
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.tar.gz");
        Tar::new()
            // Names that exist here win over the numbers.
            .add(owned("named", 4321, 4322, "nobody", group_name), b"1")
            // Names unknown here: the numbers.
            .add(
                owned("numbered", 4321, 4322, "no-such-user-x", "no-such-group-x"),
                b"2",
            )
            // pax records win over the header: numbers...
            .pax(&[("uid", "123456789"), ("gid", "23456789")])
            .add(owned("pax-numbered", 1, 1, "", ""), b"3")
            // ... and names.
            .pax(&[("uname", "nobody"), ("gname", group_name)])
            .add(owned("pax-named", 4321, 4322, "", ""), b"4")
            // A record given twice: the last wins, as in GNU tar (checked with tar 1.34).
            .pax(&[
                ("uid", "5"),
                ("gid", "6"),
                ("uid", "7654321"),
                ("gid", "7654322"),
            ])
            .add(owned("pax-twice", 4321, 4322, "", ""), b"5")
            .write_to(&archive);
        let dest = tmp.path().join("out");
        extract_with(&archive, &dest, &ExtractOptions::default()).unwrap();
        let owner = |name: &str| {
            let m = fs::symlink_metadata(dest.join(name)).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(owner("named"), (nobody, nogroup));
        assert_eq!(owner("numbered"), (4321, 4322));
        assert_eq!(owner("pax-numbered"), (123_456_789, 23_456_789));
        assert_eq!(owner("pax-named"), (nobody, nogroup));
        assert_eq!(owner("pax-twice"), (7_654_321, 7_654_322));
    }

    #[test]
    fn a_pax_uid_or_gid_that_is_not_a_number_is_a_malformed_header() {
        // GNU tar says "Malformed extended header: invalid uid=abc" and exits 2; we refuse
        // the entry (exit 4, nothing extracted), and `verify` refuses it as well.
        let tmp = tempfile::tempdir().unwrap();
        for (key, value) in [
            ("uid", "abc"),
            ("gid", "-1"),
            ("uid", ""),
            ("uid", "+5"),
            // One more than a uid_t holds: cut to 32 bits, it would be root.
            ("uid", "4294967296"),
            ("gid", "99999999999999999999"),
        ] {
            let archive = tmp.path().join(format!("{key}{value}.tar.gz"));
            Tar::new()
                .file("before", b"1")
                .pax(&[(key, value)])
                .file("owned", b"2")
                .write_to(&archive);
            let expected = format!(
                "refusing entry 'owned': a malformed pax header ({key}={value} is not a user or group number)"
            );
            refused_by_both(&archive, &expected);
        }
    }

    #[test]
    fn a_header_uid_or_gid_beyond_32_bits_is_refused_not_cut_to_root() {
        let tmp = tempfile::tempdir().unwrap();
        for (what, big) in [("uid", 1u64 << 32), ("gid", (1u64 << 32) + 7)] {
            let archive = tmp.path().join(format!("{what}.tar.gz"));
            let mut h = Tar::header(EntryType::Regular, "big", "", 1);
            if what == "uid" {
                h.set_uid(big);
            } else {
                h.set_gid(big);
            }
            assert_eq!(
                if what == "uid" { h.uid() } else { h.gid() }.unwrap(),
                big,
                "the header holds the number (base-256)"
            );
            Tar::new().add(h, b"x").write_to(&archive);
            let expected = format!("refusing entry 'big': its {what} {big} is out of range");
            refused_by_both(&archive, &expected);
        }
    }

    #[test]
    fn a_device_node_that_cannot_be_made_for_another_reason_than_privilege_fails_the_restore() {
        // Only a missing privilege skips a device node (with a warning); any other failure
        // (here a name longer than the filesystem allows) fails the restore and names it.
        let long = "n".repeat(300);
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.tar.gz");
        let mut h = Tar::header(EntryType::Char, "short", "", 0);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        Tar::new()
            .pax(&[("path", &long)])
            .add(h, b"")
            .write_to(&archive);
        let e = extract_error(&archive, &ExtractOptions::default());
        let text = format!("{e:#}");
        assert!(text.contains(&format!("creating {long}")), "{text}");
        assert!(text.contains("File name too long"), "{text}");
    }

    /// Runs `f` on a thread of its own where renameat2(2) fails with ENOSYS, as on a kernel
    /// before 3.15 or under a seccomp profile that does not know it (a seccomp filter
    /// applies to the thread that installs it; the thread ends with `f`).
    fn without_renameat2<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                const RET_ERRNO: u32 = 0x0005_0000;
                const RET_ALLOW: u32 = 0x7fff_0000;
                // seccomp_data: nr at offset 0, arch at offset 4.
                let filter = [
                    libc::sock_filter {
                        code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                        jt: 0,
                        jf: 0,
                        k: 0,
                    },
                    libc::sock_filter {
                        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                        jt: 0,
                        jf: 1,
                        k: libc::SYS_renameat2 as u32,
                    },
                    libc::sock_filter {
                        code: (libc::BPF_RET | libc::BPF_K) as u16,
                        jt: 0,
                        jf: 0,
                        k: RET_ERRNO | libc::ENOSYS as u32,
                    },
                    libc::sock_filter {
                        code: (libc::BPF_RET | libc::BPF_K) as u16,
                        jt: 0,
                        jf: 0,
                        k: RET_ALLOW,
                    },
                ];
                let prog = libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr() as *mut _,
                };
                let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                assert_eq!(r, 0, "no_new_privs: {}", io::Error::last_os_error());
                let r = unsafe {
                    libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &prog as *const _,
                    )
                };
                assert_eq!(r, 0, "seccomp: {}", io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }

    #[test]
    fn without_renameat2_the_extraction_still_moves_into_place_and_never_replaces() {
        without_renameat2(|| {
            let tmp = tempfile::tempdir().unwrap();
            let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
            fs::write(&a, "a").unwrap();
            fs::write(&b, "b").unwrap();
            // The filter is in place: the system call itself fails.
            let (ca, cb) = (cstr(&a).unwrap(), cstr(&b).unwrap());
            // (glibc's renameat2 turns ENOSYS into EINVAL when flags are given: our
            // rename falls back on either.)
            let r = unsafe {
                libc::syscall(
                    libc::SYS_renameat2,
                    libc::AT_FDCWD,
                    ca.as_ptr(),
                    libc::AT_FDCWD,
                    cb.as_ptr(),
                    libc::RENAME_NOREPLACE,
                )
            };
            let errno = io::Error::last_os_error().raw_os_error();
            assert_eq!((r, errno), (-1, Some(libc::ENOSYS)));
            // Our rename falls back to a check and rename(2).
            let e = rename_noreplace(&a, &b).expect_err("replaced b");
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
            assert_eq!(fs::read(&b).unwrap(), b"b");
            rename_noreplace(&a, &tmp.path().join("c")).unwrap();
            assert_eq!(fs::read(tmp.path().join("c")).unwrap(), b"a");
            // A whole extraction, whose last step is that rename.
            let archive = tmp.path().join("x.tar.gz");
            Tar::new().dir("d").file("d/f", b"data").write_to(&archive);
            let dest = tmp.path().join("out");
            extract_with(&archive, &dest, &ExtractOptions::default()).unwrap();
            assert_eq!(fs::read(dest.join("d/f")).unwrap(), b"data");
        });
    }

    /// Hands out `data` in pieces of at most `piece` bytes, each after an `Interrupted`
    /// error (a signal arriving during the read); with `fail_first`, the first read fails.
    struct Jumpy<'a> {
        data: &'a [u8],
        piece: usize,
        interrupt: bool,
        fail_first: bool,
    }

    impl Read for Jumpy<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if std::mem::take(&mut self.fail_first) {
                return Err(io::Error::other("the disk is on fire"));
            }
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(self.piece).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn an_interrupted_read_is_retried_and_a_failed_one_is_an_error() {
        let mut data = vec![0u8; 3 * 4096];
        data.extend((0..10_000u32).map(|i| (i % 251) as u8 + 1));
        data.extend([0u8; 4096]);
        let jumpy = |fail_first| Jumpy {
            data: &data,
            piece: 4096,
            interrupt: false,
            fail_first,
        };
        let mut buf = vec![0u8; 8192];

        let mut out = Vec::new();
        assert_eq!(
            copy_to(&mut jumpy(false), &mut out, &mut buf).unwrap(),
            data.len() as u64
        );
        assert_eq!(out, data);
        let e = copy_to(&mut jumpy(true), &mut Vec::new(), &mut buf).unwrap_err();
        assert_eq!(e.to_string(), "the disk is on fire");

        let tmp = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(tmp.path().join("f"))
            .unwrap();
        assert_eq!(
            copy_sparse(&mut jumpy(false), &file, &mut buf).unwrap(),
            data.len() as u64
        );
        assert_eq!(fs::read(tmp.path().join("f")).unwrap(), data);
        let e = copy_sparse(&mut jumpy(true), &file, &mut buf).unwrap_err();
        assert_eq!(e.to_string(), "the disk is on fire");
    }

    #[test]
    fn a_sparse_entry_comes_back_with_its_holes_and_its_data() {
        const SIZE: u64 = 8 << 20;
        let mut h = Tar::header(EntryType::GNUSparse, "holey", "", 2 * 4096);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(SIZE);
        gnu.sparse[0].set_offset(0);
        gnu.sparse[0].set_length(4096);
        gnu.sparse[1].set_offset(SIZE - 4096);
        gnu.sparse[1].set_length(4096);
        let mut data = vec![b'A'; 4096];
        data.extend([b'Z'; 4096]);
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.tar.gz");
        Tar::new().add(h, &data).write_to(&archive);
        let dest = tmp.path().join("out");
        let st = extract_with(&archive, &dest, &ExtractOptions::default()).unwrap();
        assert_eq!((st.files, st.bytes), (1, SIZE));
        let restored = dest.join("holey");
        let content = fs::read(&restored).unwrap();
        assert_eq!(content.len() as u64, SIZE);
        assert!(content[..4096].iter().all(|b| *b == b'A'));
        assert!(content[4096..SIZE as usize - 4096].iter().all(|b| *b == 0));
        assert!(content[SIZE as usize - 4096..].iter().all(|b| *b == b'Z'));
        // The 8 MiB file takes its two data blocks on disk, not 8 MiB.
        let on_disk = fs::metadata(&restored).unwrap().blocks() * 512;
        assert!(on_disk < 1 << 20, "{on_disk} bytes on disk");
    }

    #[test]
    fn each_extraction_stages_in_its_own_recognisable_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Staging::new(&tmp.path().join("a")).unwrap();
        let b = Staging::new(&tmp.path().join("b")).unwrap();
        assert_ne!(a.temp, b.temp);
        for s in [&a, &b] {
            assert_eq!(s.temp.parent(), Some(tmp.path()));
            let name = s.temp.file_name().unwrap().to_string_lossy().into_owned();
            // A stray one (a killed restore) is recognised by its name.
            assert!(name.starts_with(STAGING_PREFIX), "{name}");
            assert!(s.temp.is_dir());
        }
    }

    /// Runs `f` on a thread of its own without any effective capability: as root, file
    /// permissions then apply and device nodes cannot be made, as for an ordinary user
    /// (capabilities are per thread on Linux; the thread ends with `f`).
    fn as_ordinary_user<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        #[repr(C)]
        struct CapHeader {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct CapData {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                // _LINUX_CAPABILITY_VERSION_3: two 32-bit words of each set.
                let mut h = CapHeader {
                    version: 0x2008_0522,
                    pid: 0,
                };
                let mut d = [CapData::default(); 2];
                let r = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
                assert_eq!(r, 0, "capget: {}", io::Error::last_os_error());
                for w in &mut d {
                    w.effective = 0;
                }
                let r = unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) };
                assert_eq!(r, 0, "capset: {}", io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }

    #[test]
    fn a_staging_folder_with_read_only_folders_inside_is_removed_all_the_same() {
        as_ordinary_user(|| {
            let tmp = tempfile::tempdir().unwrap();
            let s = Staging::new(&tmp.path().join("new")).unwrap();
            let temp = s.temp.clone();
            // A folder whose mode was applied (0o555 in the archive) before a later
            // failure: its file cannot be removed until the folder is writable again.
            fs::create_dir_all(temp.join("ro/deeper")).unwrap();
            fs::write(temp.join("ro/deeper/f"), "x").unwrap();
            for d in ["ro/deeper", "ro"] {
                fs::set_permissions(temp.join(d), fs::Permissions::from_mode(0o555)).unwrap();
            }
            assert!(
                fs::remove_dir_all(&temp).is_err(),
                "permissions do not apply"
            );
            drop(s);
            let left = temp.exists();
            if left {
                // Let the tempdir go all the same.
                let _ = std::process::Command::new("chmod")
                    .arg("-R")
                    .arg("u+w")
                    .arg(&temp)
                    .status();
            }
            assert!(!left, "the staging folder was left behind");
        });
    }

    #[test]
    fn without_the_privilege_device_nodes_are_skipped_and_their_names_free() {
        as_ordinary_user(|| {
            let node = |kind, path: &str, major, minor| {
                let mut h = Tar::header(kind, path, "", 0);
                h.set_device_major(major).unwrap();
                h.set_device_minor(minor).unwrap();
                h
            };
            let tmp = tempfile::tempdir().unwrap();
            let archive = tmp.path().join("a.tar.gz");
            Tar::new()
                .add(Tar::header(EntryType::Fifo, "pipe", "", 0), b"")
                .add(node(EntryType::Char, "null", 1, 3), b"")
                .add(node(EntryType::Block, "loop", 7, 0), b"")
                // A later entry of the name of a node that was skipped.
                .file("loop", b"a file now")
                .write_to(&archive);
            let dest = tmp.path().join("out");
            extract_with(&archive, &dest, &ExtractOptions::default()).unwrap();
            use std::os::unix::fs::FileTypeExt;
            assert!(fs::symlink_metadata(dest.join("pipe"))
                .unwrap()
                .file_type()
                .is_fifo());
            assert!(!dest.join("null").exists());
            assert_eq!(fs::read(dest.join("loop")).unwrap(), b"a file now");
        });
    }
}
