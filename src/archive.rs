//! The one streaming pass that makes an archive: tar → gzip|zstd → [age] → sha256 → file.
//!
//! [`write_archive`] walks every source folder (sorted names, symlinks stored as
//! symlinks and never followed except at a source's root), feeds the tar stream
//! into a parallel gzip compressor (pigz style: one gzip member that plain
//! `gunzip` reads; blocks that would not compress are stored, see `gzblock`)
//! or, with [`Codec::Zstd`], libzstd's multithreaded compressor
//! (one frame that `zstd -d` reads), optionally encrypts the compressed stream with age
//! ([`write_archive_with`]), and hashes and counts the bytes as they are
//! written to the file, so that size and sha256 are those of the file. Memory stays bounded whatever the archive size: files are read
//! through a 1 MiB buffer and the compressor holds a few blocks per thread.
//!
//! Layout inside the archive (the seed's):
//!
//! ```text
//! TOP/
//! TOP/postgres_data/
//! TOP/redis_data/
//! TOP/static_content/
//! TOP/static_content/<source name>/...
//! TOP/configs/
//! TOP/docker_volumes/
//! TOP/backup_info.txt        (always the last entry)
//! ```

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use gzp::par::compress::{ParCompress, ParCompressBuilder};
use gzp::{Compression, ZWriter};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header, HeaderMode};

pub use crate::config::codec::Codec;
use crate::dir_at;
use crate::manifest::{Section, SourceSummary};
use crate::posix_acl;

mod gzblock;
use gzblock::ProbedGzip;

/// Read and write buffer size used for file data (1 MiB).
pub const IO_BUF: usize = 1 << 20;

/// The pax prefix of extended attributes (GNU tar, star, bsdtar).
pub(crate) const XATTR_PAX: &str = "SCHILY.xattr.";

/// Size of the blocks handed to the compression threads. gzp's pure-Rust
/// build compresses each block without the previous one as a dictionary
/// (its `any_zlib` feature, which would add it, needs the C libz-sys), so
/// blocks are a little larger than pigz's 128 KiB. Measured on a 485 MB mixed
/// corpus: 128 KiB → 236.0 MB, 256 KiB → 234.8 MB, 1 MiB → 233.8 MB (pigz:
/// 233.0 MB), for +4 % and +7 % CPU respectively.
const COMPRESS_BLOCK: usize = 256 << 10;

/// Every section, in the order their folders appear in the archive.
pub const SECTIONS: [Section; 5] = [
    Section::PostgresData,
    Section::RedisData,
    Section::StaticContent,
    Section::Configs,
    Section::DockerVolumes,
];

/// Name of the text file that is the last entry of every archive.
pub const INFO_FILE: &str = "backup_info.txt";

/// One source to put into the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInput {
    /// The source's name; its folder in the archive is `TOP/<section>/<name>/`.
    pub name: String,
    pub section: Section,
    /// A folder (or a symlink to one, followed at the root only). A single
    /// regular file is accepted too: it is stored as `TOP/<section>/<name>/<file name>`.
    pub path: PathBuf,
    /// When true, unreadable and vanished paths are recorded in
    /// [`SourceSummary::skipped`] and the walk goes on; when false they fail the backup.
    pub allow_skip: bool,
    /// When true, a file that changes while it is read fails the backup (database dumps,
    /// and sources with `strict = true`); when false what was read is stored, and the
    /// file is listed in [`SourceSummary::changed`].
    pub strict: bool,
}

impl Codec {
    /// The codec a compressed stream starts with: gzip `1f 8b`, zstd `28 b5 2f fd`.
    pub fn sniff(head: &[u8]) -> Option<Codec> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Codec::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Codec::Zstd)
        } else {
            None
        }
    }
}

/// How to write the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOptions {
    /// Name of the one top folder in the tar, e.g. `pronto-app-backup-20260201-170521`.
    pub top: String,
    /// gzip or zstd.
    pub codec: Codec,
    /// Compression level: gzip 0-9 (6 is gzip's default), zstd 1-19 (3 is zstd's default).
    pub level: u32,
    /// Compression threads; 0 means one per available core.
    pub threads: usize,
    /// What the walk leaves out (patterns, CACHEDIR.TAG folders).
    pub exclude: crate::exclude::Excludes,
}

impl WriteOptions {
    /// gzip level 6, all cores.
    pub fn new(top: impl Into<String>) -> WriteOptions {
        WriteOptions {
            top: top.into(),
            codec: Codec::Gzip,
            level: 6,
            threads: 0,
            exclude: Default::default(),
        }
    }
}

/// What [`write_archive`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Size of the archive file in bytes.
    pub size: u64,
    /// SHA-256 of the archive file.
    pub sha256: [u8; 32],
    /// One summary per input, in the order of `inputs`.
    pub sources: Vec<SourceSummary>,
}

/// Writes the archive to `out` (the `.partial` path; the caller renames it once
/// it has recorded the result). `out` must not exist: it is created with mode
/// 0600, and fsynced before this returns. On any error it is removed again.
///
/// `info` is called once, after every source is stored, with the summaries (in
/// the order of `inputs`); its text becomes `TOP/backup_info.txt`, the last entry.
///
/// Sources are written in section order, then by name, whatever the order of `inputs`.
pub fn write_archive(
    out: &Path,
    opts: &WriteOptions,
    inputs: &[ArchiveInput],
    info: &dyn Fn(&[SourceSummary]) -> String,
) -> Result<Written> {
    write_archive_with(out, opts, None, inputs, info)
}

/// [`write_archive`], encrypting the gzip stream to `recipients` (age) when given: the
/// file is then `age -d` away from a plain `.tar.gz`, and [`Written`]'s size and sha256
/// are those of the encrypted file.
pub fn write_archive_with(
    out: &Path,
    opts: &WriteOptions,
    recipients: Option<&crate::crypto::Recipients>,
    inputs: &[ArchiveInput],
    info: &dyn Fn(&[SourceSummary]) -> String,
) -> Result<Written> {
    write_archive_tapped(out, opts, recipients, inputs, info, None, None)
}

/// [`write_archive_with`], counting the source bytes read on `progress` and telling `tap`
/// how far the file has been written as it grows (see [`WriteTap`]); [`Written`] then
/// gives the final size and hash.
pub fn write_archive_tapped(
    out: &Path,
    opts: &WriteOptions,
    recipients: Option<&crate::crypto::Recipients>,
    inputs: &[ArchiveInput],
    info: &dyn Fn(&[SourceSummary]) -> String,
    progress: Option<&crate::progress::Progress>,
    tap: Option<WriteTap>,
) -> Result<Written> {
    check_component(&opts.top).with_context(|| format!("archive top folder {:?}", opts.top))?;
    match opts.codec {
        Codec::Gzip if opts.level > 9 => {
            bail!("gzip level {} is out of range (0-9)", opts.level)
        }
        Codec::Zstd if !Codec::Zstd.levels().contains(&opts.level) => {
            bail!("zstd level {} is out of range (1-19)", opts.level)
        }
        _ => {}
    }
    check_inputs(inputs)?;

    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    let result = (|| {
        // The umask can only remove bits; make the mode exactly 0600 anyway.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        let meta = file.metadata()?;
        write_into(
            out,
            file,
            (meta.dev(), meta.ino()),
            opts,
            recipients,
            inputs,
            info,
            progress,
            tap,
        )
    })();
    match result {
        Ok(w) => Ok(w),
        Err(e) => {
            let _ = fs::remove_file(out);
            Err(e)
        }
    }
}

/// SHA-256 and size of a file, read in a streaming way through a 1 MiB buffer.
pub fn sha256_file(path: &Path) -> Result<([u8; 32], u64)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; IO_BUF];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hasher.finalize().into(), size))
}

// ---------------------------------------------------------------------------

/// A path component that is safe as a single folder name in the archive.
fn check_component(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("must be a plain name (not empty, '.', '..', and without '/')");
    }
    Ok(())
}

fn check_inputs(inputs: &[ArchiveInput]) -> Result<()> {
    let mut seen = HashSet::new();
    for input in inputs {
        check_component(&input.name).with_context(|| format!("source name {:?}", input.name))?;
        if !seen.insert((input.section, input.name.as_str())) {
            bail!(
                "two sources named '{}' in section {}",
                input.name,
                input.section.dir_name()
            );
        }
        source_root_meta(input)?;
    }
    Ok(())
}

/// Metadata of a source's root, following a symlink at the root only.
fn source_root_meta(input: &ArchiveInput) -> Result<Metadata> {
    match fs::metadata(&input.path) {
        Ok(m) => Ok(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "source '{}': {} does not exist",
            input.name,
            input.path.display()
        ),
        Err(e) => bail!(
            "source '{}': cannot read {}: {e}",
            input.name,
            input.path.display()
        ),
    }
}

/// Told how many bytes of the archive have reached the file so far (written with
/// `write(2)`, so readable by another handle on the same file), after each write into
/// the file's buffer; used to upload parts of the archive while it is being written.
pub type WriteTap = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// Counts and hashes what goes to the file.
struct HashingWriter {
    inner: BufWriter<File>,
    hasher: Sha256,
    count: u64,
    /// Told the bytes in the file (those written, less those still in `inner`'s buffer).
    tap: Option<WriteTap>,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if let Some(tap) = &self.tap {
            tap(self.count - self.inner.buffer().len() as u64);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Where the gzip stream goes: straight to the file, or through age first.
enum Sink {
    Plain(HashingWriter),
    Age(age::stream::StreamWriter<HashingWriter>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Age(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Age(w) => w.flush(),
        }
    }
}

impl Sink {
    /// Ends the age stream (its last chunk), if any; returns the file writer.
    fn finish(self) -> io::Result<HashingWriter> {
        match self {
            Sink::Plain(w) => Ok(w),
            Sink::Age(w) => w.finish(),
        }
    }
}

type Gz = ParCompress<'static, ProbedGzip, Sink>;

/// gzp's parallel compressor, made safe to use after an I/O error.
///
/// gzp tears its threads down when its writer thread fails (a full disk, a file size
/// limit, EIO) and returns the error once; any later `write`, `flush` or `finish` — the
/// tar trailer, the cleanup after a failed walk — would then panic on its dropped
/// channels. This wrapper remembers the first error and returns it again instead of
/// touching gzp, so an I/O error ends the backup with a message, never a panic.
struct GzWriter {
    /// `None` once finished.
    gz: Option<Gz>,
    /// The first error gzp returned (kind and text, to return it again).
    failed: Option<(io::ErrorKind, String)>,
}

impl GzWriter {
    fn new(gz: Gz) -> GzWriter {
        GzWriter {
            gz: Some(gz),
            failed: None,
        }
    }

    /// Runs `f` on the compressor unless it failed before; remembers a failure.
    fn call<T>(&mut self, f: impl FnOnce(&mut Gz) -> io::Result<T>) -> io::Result<T> {
        if let Some((kind, msg)) = &self.failed {
            return Err(io::Error::new(*kind, msg.clone()));
        }
        let Some(gz) = self.gz.as_mut() else {
            return Err(io::Error::other("the gzip stream is already finished"));
        };
        f(gz).inspect_err(|e| self.failed = Some((e.kind(), e.to_string())))
    }

    /// Ends the gzip stream; returns the sink.
    fn finish(&mut self) -> io::Result<Sink> {
        self.call(|gz| {
            gz.finish().map_err(|e| match e {
                gzp::GzpError::Io(e) => e,
                e => io::Error::other(e),
            })
        })
        .inspect(|_| self.gz = None)
    }
}

impl Write for GzWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.call(|gz| gz.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.call(|gz| gz.flush())
    }
}

impl Drop for GzWriter {
    fn drop(&mut self) {
        // gzp's own Drop would finish the stream and panic on an error: finish it here
        // (the result no longer matters), or not at all when it failed (gzp has then
        // already stopped its threads, and its Drop does nothing).
        if self.failed.is_none() && self.gz.is_some() {
            let _ = self.finish();
        }
    }
}

/// The compressor the tar stream goes through.
enum Compressor {
    Gzip(GzWriter),
    Zstd(zstd::stream::write::Encoder<'static, Sink>),
}

impl Write for Compressor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(w) => w.write(buf),
            Compressor::Zstd(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Compressor::Gzip(w) => w.write_all(buf),
            Compressor::Zstd(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(w) => w.flush(),
            Compressor::Zstd(w) => w.flush(),
        }
    }
}

impl Compressor {
    fn new(opts: &WriteOptions, threads: usize, sink: Sink) -> Result<Compressor> {
        Ok(match opts.codec {
            Codec::Gzip => Compressor::Gzip(GzWriter::new(
                ParCompressBuilder::<ProbedGzip>::new()
                    .num_threads(threads)
                    .map_err(|e| anyhow!("gzip: {e}"))?
                    .buffer_size(COMPRESS_BLOCK)
                    .map_err(|e| anyhow!("gzip: {e}"))?
                    .compression_level(Compression::new(opts.level))
                    .from_writer(sink),
            )),
            Codec::Zstd => {
                let mut z = zstd::stream::write::Encoder::new(sink, opts.level as i32)
                    .context("zstd: creating the compressor")?;
                z.include_checksum(true).context("zstd: checksum")?;
                // Workers compress while the walk goes on (like `zstd -T0`); with one
                // thread the stream stays single-threaded.
                if threads > 1 {
                    z.multithread(threads as u32)
                        .context("zstd: worker threads")?;
                }
                Compressor::Zstd(z)
            }
        })
    }

    /// Ends the compressed stream; returns the sink.
    fn finish(self) -> Result<Sink> {
        match self {
            Compressor::Gzip(mut gz) => gz.finish().context("finishing the gzip stream"),
            Compressor::Zstd(z) => z.finish().context("finishing the zstd stream"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write_into(
    out: &Path,
    file: File,
    out_id: (u64, u64),
    opts: &WriteOptions,
    recipients: Option<&crate::crypto::Recipients>,
    inputs: &[ArchiveInput],
    info: &dyn Fn(&[SourceSummary]) -> String,
    progress: Option<&crate::progress::Progress>,
    tap: Option<WriteTap>,
) -> Result<Written> {
    // One open folder per level of the deepest source tree, while the walk runs.
    let _open_files = dir_at::raise_open_file_limit();
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let sink = HashingWriter {
        inner: BufWriter::with_capacity(IO_BUF, file),
        hasher: Sha256::new(),
        count: 0,
        tap,
    };
    let sink = match recipients {
        None => Sink::Plain(sink),
        Some(r) => Sink::Age(
            r.wrap(sink)
                .with_context(|| format!("writing {}: age header", out.display()))?,
        ),
    };
    let mut tar = tar::Builder::new(Compressor::new(opts, threads, sink)?);
    tar.mode(HeaderMode::Complete);
    tar.follow_symlinks(false);

    let result = {
        let mut w = Walker {
            tar: &mut tar,
            out,
            out_id,
            out_dir_id: out
                .parent()
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        p
                    }
                })
                .and_then(|p| fs::metadata(p).ok())
                .map(|m| (m.dev(), m.ino())),
            now: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            progress,
            exclude: &opts.exclude,
            names: Names::default(),
            links: HashMap::new(),
        };
        w.write_all(&opts.top, inputs, info)
    };
    let sources = match result {
        Ok(s) => s,
        Err(e) => {
            // Shut the compressor down; a late I/O error no longer matters (see GzWriter).
            if let Ok(c) = tar.into_inner() {
                let _ = c.finish();
            }
            return Err(e);
        }
    };
    let what = out.display();
    let compressor = tar
        .into_inner()
        .with_context(|| format!("writing {what}: finishing the tar stream"))?;
    let sink = compressor
        .finish()
        .with_context(|| format!("writing {what}"))?
        .finish()
        .with_context(|| format!("writing {what}: finishing the age stream"))?;
    let HashingWriter {
        inner,
        hasher,
        count,
        ..
    } = sink;
    let file = inner
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {what}"))?;
    file.sync_all()
        .with_context(|| format!("fsync of {what}"))?;
    let on_disk = file.metadata()?.len();
    if on_disk != count {
        bail!("{what} is {on_disk} bytes on disk but {count} bytes were written");
    }
    Ok(Written {
        size: count,
        sha256: hasher.finalize().into(),
        sources,
    })
}

struct Walker<'a> {
    tar: &'a mut tar::Builder<Compressor>,
    /// The archive's path, for error messages.
    out: &'a Path,
    /// (dev, ino) of the archive being written, never stored in itself.
    out_id: (u64, u64),
    /// (dev, ino) of the folder the archive is written in (the backup folder): when it
    /// lies inside a source, it is left out (else every archive holds all the earlier ones).
    out_dir_id: Option<(u64, u64)>,
    now: u64,
    /// Counts the source bytes read (a bar on a terminal).
    progress: Option<&'a crate::progress::Progress>,
    exclude: &'a crate::exclude::Excludes,
    /// User and group names of the owners met so far.
    names: Names,
    /// Files with more than one link, by (device, inode): the archive path they were
    /// stored under first, which later links point to (as GNU tar does).
    links: HashMap<(u64, u64), PathBuf>,
}

/// User and group names by id (looked up once per id).
#[derive(Default)]
struct Names {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl Names {
    fn user(&mut self, uid: u32) -> Option<&str> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                crate::owners::user_name(uid).and_then(|n| String::from_utf8(n).ok())
            })
            .as_deref()
    }

    fn group(&mut self, gid: u32) -> Option<&str> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                crate::owners::group_name(gid).and_then(|n| String::from_utf8(n).ok())
            })
            .as_deref()
    }
}

/// One folder being walked: open, so that its children are reached relative to it (no
/// path near `PATH_MAX` is ever resolved), with its remaining children, last one first.
struct Frame {
    dir: File,
    /// Its path, for messages and exclude patterns only (never opened again).
    fs: PathBuf,
    ar: PathBuf,
    names: Vec<OsString>,
}

fn header(kind: EntryType, mode: u32, uid: u32, gid: u32, mtime: i64, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_mtime(mtime.max(0) as u64);
    h.set_size(size);
    h
}

/// `path` with a trailing slash, as tar writes folder names.
fn dir_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push("/");
    PathBuf::from(s)
}

/// The tar entry type of a fifo or device node; `None` for anything else (a socket is
/// not stored: GNU tar leaves sockets out too).
fn node_entry_type(ft: &fs::FileType) -> Option<EntryType> {
    if ft.is_fifo() {
        Some(EntryType::Fifo)
    } else if ft.is_char_device() {
        Some(EntryType::Char)
    } else if ft.is_block_device() {
        Some(EntryType::Block)
    } else {
        None
    }
}

fn special_kind(ft: &fs::FileType) -> &'static str {
    if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "fifo (named pipe)"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// A problem with one path of a source: an error, or a note when skipping is allowed.
fn problem(
    input: &ArchiveInput,
    sum: &mut SourceSummary,
    path: &Path,
    reason: String,
) -> Result<()> {
    if input.allow_skip {
        sum.skipped.push(format!("{}: {reason}", path.display()));
        Ok(())
    } else {
        bail!("source '{}': {}: {reason}", input.name, path.display())
    }
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "vanished while the backup was running".to_string(),
        _ if e.raw_os_error() == Some(libc::ELOOP) => {
            "was replaced by a symlink while the backup was running".to_string()
        }
        _ => format!("cannot read: {e}"),
    }
}

impl Walker<'_> {
    fn write_all(
        &mut self,
        top: &str,
        inputs: &[ArchiveInput],
        info: &dyn Fn(&[SourceSummary]) -> String,
    ) -> Result<Vec<SourceSummary>> {
        let top = PathBuf::from(top);
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let now = self.now as i64;
        self.append_dir_header(&top, header(EntryType::Directory, 0o755, uid, gid, now, 0))?;

        let mut sums: Vec<SourceSummary> = inputs
            .iter()
            .map(|i| SourceSummary {
                name: i.name.clone(),
                section: i.section,
                archive_path: format!("{}/{}", i.section.dir_name(), i.name),
                origin: i.path.display().to_string(),
                files: 0,
                dirs: 0,
                symlinks: 0,
                bytes: 0,
                specials: 0,
                skipped: Vec::new(),
                exclude: self.exclude.patterns(&i.name),
                changed: Vec::new(),
            })
            .collect();
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by(|&a, &b| {
            (inputs[a].section, &inputs[a].name).cmp(&(inputs[b].section, &inputs[b].name))
        });

        let mut next = order.iter().peekable();
        for section in SECTIONS {
            let sec_path = top.join(section.dir_name());
            self.append_dir_header(
                &sec_path,
                header(EntryType::Directory, 0o755, uid, gid, now, 0),
            )?;
            while let Some(&&i) = next.peek() {
                if inputs[i].section != section {
                    break;
                }
                next.next();
                let base = sec_path.join(&inputs[i].name);
                self.walk_source(&inputs[i], &base, &mut sums[i])?;
            }
        }

        let text = info(&sums);
        let mut h = header(EntryType::Regular, 0o644, uid, gid, now, text.len() as u64);
        self.tar
            .append_data(&mut h, top.join(INFO_FILE), text.as_bytes())
            .with_context(|| format!("writing {}: backup_info.txt", self.out.display()))?;
        Ok(sums)
    }

    fn append_dir_header(&mut self, path: &Path, mut h: Header) -> Result<()> {
        self.tar
            .append_data(&mut h, dir_path(path), io::empty())
            .with_context(|| format!("writing {}: folder {}", self.out.display(), path.display()))
    }

    fn walk_source(
        &mut self,
        input: &ArchiveInput,
        base: &Path,
        sum: &mut SourceSummary,
    ) -> Result<()> {
        let root = source_root_meta(input)?;
        if root.is_file() {
            // A single file: store it inside a folder named after the source.
            let mut h = self.entry_header(EntryType::Directory, &root, 0, &[])?;
            h.set_mode(0o755);
            self.append_dir_header(base, h)?;
            sum.dirs += 1;
            let name = input
                .path
                .file_name()
                .map_or_else(|| OsString::from("file"), OsStr::to_owned);
            // Opened by its path, following a symlink at the root as its metadata did.
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&input.path);
            return self.visit_file(input, file, &input.path, &base.join(name), sum);
        }
        if !root.is_dir() {
            bail!(
                "source '{}': {} is not a folder (it is a {})",
                input.name,
                input.path.display(),
                special_kind(&root.file_type())
            );
        }
        // The root is opened by its path (following a symlink there, as its metadata did);
        // everything under it relative to its open folder.
        let listed = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK)
            .open(&input.path)
            .and_then(|dir| Ok((dir_at::read_sorted(&dir)?, dir)));
        let (names, dir) = listed.with_context(|| {
            format!(
                "source '{}': cannot list {}",
                input.name,
                input.path.display()
            )
        })?;
        let attrs = dir_at::xattrs(dir.as_raw_fd());
        let h = self.entry_header(EntryType::Directory, &root, 0, &attrs)?;
        self.append_dir_header(base, h)?;
        sum.dirs += 1;
        // Hard links are kept within one source, so that each restores on its own.
        self.links.clear();

        let mut stack = vec![Frame {
            dir,
            fs: input.path.clone(),
            ar: base.to_path_buf(),
            names,
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.names.pop() else {
                stack.pop();
                continue;
            };
            let fs_path = frame.fs.join(&name);
            let ar_path = frame.ar.join(&name);
            let dir = frame.dir.as_raw_fd();
            if let Some(sub) = self.visit(input, dir, &name, fs_path, ar_path, sum)? {
                stack.push(sub);
            }
        }
        Ok(())
    }

    /// Stores the entry `name` of the open folder `dir` (`fs_path` is its path, for
    /// messages and excludes); returns a frame when it is a folder to descend into.
    fn visit(
        &mut self,
        input: &ArchiveInput,
        dir: RawFd,
        name: &OsStr,
        fs_path: PathBuf,
        ar_path: PathBuf,
        sum: &mut SourceSummary,
    ) -> Result<Option<Frame>> {
        let st = match dir_at::c_name(name).and_then(|c| Ok((dir_at::stat_at(dir, &c)?, c))) {
            Ok(s) => s,
            Err(e) => {
                problem(input, sum, &fs_path, io_reason(&e))?;
                return Ok(None);
            }
        };
        let (st, c_name) = st;
        let kind = st.st_mode & libc::S_IFMT;
        let id = (st.st_dev, st.st_ino);
        if self
            .exclude
            .skips(&input.name, &input.path, &fs_path, kind == libc::S_IFDIR)
        {
            return Ok(None);
        }
        if id == self.out_id {
            sum.skipped.push(format!(
                "{}: the archive being written, not stored",
                fs_path.display()
            ));
            return Ok(None);
        }
        if kind == libc::S_IFDIR && Some(id) == self.out_dir_id {
            tracing::warn!(
                "source '{}': {} is the backup folder: left out of the archive",
                input.name,
                fs_path.display()
            );
            sum.skipped.push(format!(
                "{}: the backup folder, not stored in its own archives",
                fs_path.display()
            ));
            return Ok(None);
        }
        if kind == libc::S_IFREG {
            // O_NOFOLLOW (always, see dir_at): never follow a symlink swapped in since the
            // walk saw a file; O_NONBLOCK: never hang on a fifo swapped in.
            let file = dir_at::open_at(dir, &c_name, libc::O_RDONLY | libc::O_NONBLOCK);
            self.visit_file(input, file, &fs_path, &ar_path, sum)?;
            return Ok(None);
        }
        if kind == libc::S_IFDIR {
            return self.visit_dir(input, dir, &c_name, fs_path, ar_path, sum);
        }
        let meta = match dir_at::metadata_at(dir, &c_name) {
            Ok(m) => m,
            Err(e) => {
                problem(input, sum, &fs_path, io_reason(&e))?;
                return Ok(None);
            }
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = match dir_at::read_link_at(dir, &c_name) {
                Ok(t) => t,
                Err(e) => {
                    problem(input, sum, &fs_path, io_reason(&e))?;
                    return Ok(None);
                }
            };
            let mut h = self.entry_header(EntryType::Symlink, &meta, 0, &[])?;
            self.tar
                .append_link(&mut h, &ar_path, &target)
                .with_context(|| {
                    format!(
                        "writing {}: symlink {}",
                        self.out.display(),
                        fs_path.display()
                    )
                })?;
            sum.symlinks += 1;
            Ok(None)
        } else if ft.is_dir() || ft.is_file() {
            // It was something else a moment ago.
            problem(
                input,
                sum,
                &fs_path,
                "changed type while the backup was running".to_string(),
            )?;
            Ok(None)
        } else if let Some(kind) = node_entry_type(&ft) {
            // A fifo or a device node: a header only (with the device's numbers), as GNU
            // tar stores them; restored by `mknod` (devices only as root).
            let mut h = self.entry_header(kind, &meta, 0, &[])?;
            let rdev = meta.rdev();
            if kind != EntryType::Fifo {
                h.set_device_major(libc::major(rdev))
                    .and_then(|()| h.set_device_minor(libc::minor(rdev)))
                    .with_context(|| format!("{}: device numbers", fs_path.display()))?;
            }
            self.tar
                .append_data(&mut h, &ar_path, std::io::empty())
                .with_context(|| {
                    format!(
                        "writing {}: {} {}",
                        self.out.display(),
                        special_kind(&ft),
                        fs_path.display()
                    )
                })?;
            sum.specials += 1;
            Ok(None)
        } else {
            sum.skipped.push(format!(
                "{}: {}, not stored",
                fs_path.display(),
                special_kind(&ft)
            ));
            Ok(None)
        }
    }

    /// Opens the folder `name` of `dir` and stores its header; its children come next.
    fn visit_dir(
        &mut self,
        input: &ArchiveInput,
        dir: RawFd,
        name: &CStr,
        fs_path: PathBuf,
        ar_path: PathBuf,
        sum: &mut SourceSummary,
    ) -> Result<Option<Frame>> {
        let opened = dir_at::open_dir_at(dir, name).and_then(|d| {
            let names = dir_at::read_sorted(&d)?;
            let meta = d.metadata()?;
            Ok((d, names, meta))
        });
        let (sub, names, meta) = match opened {
            Ok(o) => o,
            Err(e) => {
                problem(input, sum, &fs_path, io_reason(&e))?;
                return Ok(None);
            }
        };
        let attrs = dir_at::xattrs(sub.as_raw_fd());
        let h = self.entry_header(EntryType::Directory, &meta, 0, &attrs)?;
        self.append_dir_header(&ar_path, h)?;
        sum.dirs += 1;
        Ok(Some(Frame {
            dir: sub,
            fs: fs_path,
            ar: ar_path,
            names,
        }))
    }

    fn visit_file(
        &mut self,
        input: &ArchiveInput,
        file: io::Result<File>,
        fs_path: &Path,
        ar_path: &Path,
        sum: &mut SourceSummary,
    ) -> Result<()> {
        let file = match file {
            Ok(f) => f,
            Err(e) => return problem(input, sum, fs_path, io_reason(&e)),
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => return problem(input, sum, fs_path, io_reason(&e)),
        };
        if !meta.is_file() {
            return problem(
                input,
                sum,
                fs_path,
                "changed type while the backup was running".to_string(),
            );
        }
        // A further link to a file stored already: a link entry, restored as one inode.
        let id = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&id).cloned() {
                let mut h = self.entry_header(EntryType::Link, &meta, 0, &[])?;
                self.tar
                    .append_link(&mut h, ar_path, &first)
                    .with_context(|| {
                        format!(
                            "writing {}: hard link {}",
                            self.out.display(),
                            fs_path.display()
                        )
                    })?;
                sum.files += 1;
                return Ok(());
            }
        }
        let size = meta.len();
        let attrs = dir_at::xattrs(file.as_raw_fd());
        // Fewer blocks than the size needs: look for holes (one lseek per segment).
        let segments = if meta.blocks() * 512 < size {
            crate::fsutil::data_segments(&file, size)
        } else {
            None
        };
        let sparse = segments.is_some();
        let segments = segments.unwrap_or_else(|| vec![(0, size)]);
        let stored: u64 = segments.iter().map(|s| s.1).sum();
        let mut h = self.entry_header(EntryType::Regular, &meta, stored, &attrs)?;
        let prefix = if sparse {
            sparse_header(&mut h, size, &segments)
        } else {
            Vec::new()
        };
        let mut reader = ExactReader::new(&file, prefix, segments, self.progress);
        reader.pad_shrink = !input.strict || input.allow_skip;
        reader.pad_errors = input.allow_skip;
        if let Err(e) = self.tar.append_data(&mut h, ar_path, &mut reader) {
            if let Some(p) = reader.problem.take() {
                let why = p.text();
                if let Problem::Shrank(_) = p {
                    bail!(
                        "source '{}': {}: {why}; the source is strict (a database dump, or `strict = true`), so a changing file fails the backup",
                        input.name,
                        fs_path.display()
                    );
                }
                bail!("source '{}': {}: {why}", input.name, fs_path.display());
            }
            return Err(e).with_context(|| format!("writing {}", self.out.display()));
        }
        if meta.nlink() > 1 {
            self.links.insert(id, ar_path.to_path_buf());
        }
        let changed = match reader.problem.take() {
            // Only reached when skipping is allowed: the tar stayed well-formed.
            Some(Problem::Error(why)) => {
                sum.skipped.push(format!(
                    "{}: {why}; stored padded with zeros, do not trust it",
                    fs_path.display()
                ));
                None
            }
            Some(Problem::Shrank(why)) => Some(format!("{why}, padded with zeros to {size} bytes")),
            None => {
                // Bytes beyond the size its stat gave (a /proc file, a log appended to
                // between the stat and the read's end) also mean it grew.
                let mut one = [0u8; 1];
                let more = !sparse && matches!(reader.inner.read(&mut one), Ok(n) if n > 0);
                if more {
                    Some(format!(
                        "grew while being read (more than the {size} bytes it had)"
                    ))
                } else {
                    file.metadata()
                        .ok()
                        .and_then(|after| changed_while_read(&meta, &after))
                }
            }
        };
        if let Some(why) = changed {
            if input.strict {
                bail!(
                    "source '{}': {}: {why}; the source is strict (a database dump, or `strict = true`), so a changing file fails the backup",
                    input.name,
                    fs_path.display()
                );
            }
            sum.changed
                .push(format!("{}: {why}; stored as read", fs_path.display()));
        }
        sum.files += 1;
        sum.bytes += size;
        Ok(())
    }

    /// The header of an entry from its metadata (numeric owner and names, mode, mtime),
    /// after writing the pax records it needs first: an mtime before 1970, a name too long
    /// for the header, extended attributes as `SCHILY.xattr.NAME` (as `tar --xattrs`) and
    /// POSIX ACLs as `SCHILY.acl.access`/`.default` text too (as `tar --acls`).
    fn entry_header(
        &mut self,
        kind: EntryType,
        m: &Metadata,
        size: u64,
        attrs: &[(String, Vec<u8>)],
    ) -> Result<Header> {
        let mut h = header(kind, m.mode(), m.uid(), m.gid(), m.mtime(), size);
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if m.mtime() < 0 {
            pax.push(("mtime".into(), m.mtime().to_string().into_bytes()));
        }
        if let Some(u) = self.names.user(m.uid()) {
            if h.set_username(u).is_err() {
                pax.push(("uname".into(), u.as_bytes().to_vec()));
            }
        }
        if let Some(g) = self.names.group(m.gid()) {
            if h.set_groupname(g).is_err() {
                pax.push(("gname".into(), g.as_bytes().to_vec()));
            }
        }
        for (k, v) in attrs {
            pax.push((format!("{}{k}", XATTR_PAX), v.clone()));
            // A POSIX ACL in GNU tar's text too (`tar --acls -x` reads only that).
            if let Some((_, record)) = posix_acl::KINDS.iter().find(|(x, _)| x == k) {
                let names = &mut self.names;
                let text = posix_acl::to_text(v, |who, id| match who {
                    posix_acl::Who::User => names.user(id).map(str::to_owned),
                    posix_acl::Who::Group => names.group(id).map(str::to_owned),
                });
                if let Some(text) = text {
                    pax.push((record.to_string(), text.into_bytes()));
                }
            }
        }
        if !pax.is_empty() {
            self.tar
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .with_context(|| format!("writing {}: pax header", self.out.display()))?;
        }
        Ok(h)
    }
}

/// How a file changed while it was read, judged as GNU tar does: its size, mtime or ctime
/// after the read differ from before.
fn changed_while_read(before: &Metadata, after: &Metadata) -> Option<String> {
    if after.len() != before.len() {
        let how = if after.len() > before.len() {
            "grew"
        } else {
            "shrank"
        };
        return Some(format!(
            "{how} while being read ({} bytes, then {})",
            before.len(),
            after.len()
        ));
    }
    if (after.mtime(), after.mtime_nsec()) != (before.mtime(), before.mtime_nsec())
        || (after.ctime(), after.ctime_nsec()) != (before.ctime(), before.ctime_nsec())
    {
        return Some(
            "was modified while being read (same size, new mtime or ctime): the copy may mix old and new content"
                .to_string(),
        );
    }
    None
}

/// Turns `h` into a GNU sparse header (type `S`) for a file of `size` bytes stored as
/// `segments`; returns the extension headers for the segments beyond the first four, to
/// write between the header and the data.
fn sparse_header(h: &mut Header, size: u64, segments: &[(u64, u64)]) -> Vec<u8> {
    h.set_entry_type(EntryType::GNUSparse);
    let gnu = h.as_gnu_mut().expect("a GNU header");
    gnu.set_real_size(size);
    let (first, rest) = segments.split_at(segments.len().min(gnu.sparse.len()));
    for (slot, &(o, l)) in gnu.sparse.iter_mut().zip(first) {
        slot.set_offset(o);
        slot.set_length(l);
    }
    gnu.set_is_extended(!rest.is_empty());
    let mut out = Vec::new();
    let chunks: Vec<_> = rest.chunks(21).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut ext = tar::GnuExtSparseHeader::new();
        for (slot, &(o, l)) in ext.sparse.iter_mut().zip(chunk.iter()) {
            slot.set_offset(o);
            slot.set_length(l);
        }
        ext.set_is_extended(i + 1 < chunks.len());
        out.extend_from_slice(ext.as_bytes());
    }
    out
}

/// Why a file's content came up short.
enum Problem {
    /// It ended before the size in the header: it shrank while being read.
    Shrank(String),
    /// A read failed.
    Error(String),
}

impl Problem {
    fn text(&self) -> &str {
        match self {
            Problem::Shrank(s) | Problem::Error(s) => s,
        }
    }
}

/// Reads exactly the bytes a file's tar header announced (the whole file, or a sparse
/// file's data segments, after its extension headers). When the file comes up short (it
/// shrank, or a read failed) it either fails (the tar stream is abandoned) or pads with
/// zeros so that the tar stays well-formed, and records why in `problem`.
struct ExactReader<'a> {
    inner: BufReader<&'a File>,
    /// Bytes handed out before the file's data (a sparse entry's extension headers).
    prefix: io::Cursor<Vec<u8>>,
    /// The parts of the file to store, in order: (offset, length).
    segments: Vec<(u64, u64)>,
    next: usize,
    /// Bytes left of the current segment.
    left: u64,
    expected: u64,
    remaining: u64,
    /// Pad when the file ends early (else fail).
    pad_shrink: bool,
    /// Pad when a read fails (else fail).
    pad_errors: bool,
    padding: bool,
    problem: Option<Problem>,
    progress: Option<&'a crate::progress::Progress>,
}

impl<'a> ExactReader<'a> {
    fn new(
        file: &'a File,
        prefix: Vec<u8>,
        segments: Vec<(u64, u64)>,
        progress: Option<&'a crate::progress::Progress>,
    ) -> ExactReader<'a> {
        let expected = segments.iter().map(|s| s.1).sum();
        ExactReader {
            inner: BufReader::with_capacity(IO_BUF, file),
            prefix: io::Cursor::new(prefix),
            segments,
            next: 0,
            left: 0,
            expected,
            remaining: expected,
            pad_shrink: false,
            pad_errors: false,
            padding: false,
            problem: None,
            progress,
        }
    }
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if (self.prefix.position() as usize) < self.prefix.get_ref().len() {
            return self.prefix.read(buf);
        }
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        if self.padding {
            let want = self.remaining.min(buf.len() as u64) as usize;
            buf[..want].fill(0);
            self.remaining -= want as u64;
            return Ok(want);
        }
        while self.left == 0 {
            let Some(&(off, len)) = self.segments.get(self.next) else {
                break;
            };
            if self.next > 0 || off > 0 {
                self.inner.seek(io::SeekFrom::Start(off))?;
            }
            self.next += 1;
            self.left = len;
        }
        let want = self.left.min(buf.len() as u64) as usize;
        let got = self.expected - self.remaining;
        let (why, shrank) = loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    break (
                        format!(
                            "shrank while being read (expected {} bytes, got {got})",
                            self.expected
                        ),
                        true,
                    )
                }
                Ok(n) => {
                    self.remaining -= n as u64;
                    self.left -= n as u64;
                    if let Some(p) = self.progress {
                        p.inc(n as u64);
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break (format!("read error after {got} bytes: {e}"), false),
            }
        };
        let pad = if shrank {
            self.pad_shrink
        } else {
            self.pad_errors
        };
        self.problem = Some(if shrank {
            Problem::Shrank(why.clone())
        } else {
            Problem::Error(why.clone())
        });
        if pad {
            self.padding = true;
            self.read(buf)
        } else {
            Err(io::Error::other(why))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;

    fn input(name: &str, section: Section, path: &Path) -> ArchiveInput {
        ArchiveInput {
            name: name.into(),
            section,
            path: path.into(),
            allow_skip: false,
            strict: false,
        }
    }

    fn entries(archive: &Path) -> Vec<(String, EntryType)> {
        let f = File::open(archive).unwrap();
        let mut ar = tar::Archive::new(MultiGzDecoder::new(f));
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                    e.header().entry_type(),
                )
            })
            .collect()
    }

    #[test]
    fn archive_layout_sections_and_info_last() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("site");
        fs::create_dir_all(src.join("css")).unwrap();
        fs::write(src.join("css/app.css"), "body{}").unwrap();
        let out = tmp.path().join("a.tar.gz.partial");
        let w = write_archive(
            &out,
            &WriteOptions::new("TOP"),
            &[input("site", Section::StaticContent, &src)],
            &|s| format!("sources: {}\n", s.len()),
        )
        .unwrap();
        let names: Vec<String> = entries(&out).into_iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            [
                "TOP/",
                "TOP/postgres_data/",
                "TOP/redis_data/",
                "TOP/static_content/",
                "TOP/static_content/site/",
                "TOP/static_content/site/css/",
                "TOP/static_content/site/css/app.css",
                "TOP/configs/",
                "TOP/docker_volumes/",
                "TOP/backup_info.txt",
            ]
        );
        assert_eq!(w.sources[0].files, 1);
        assert_eq!(w.sources[0].dirs, 2);
        assert_eq!(w.sources[0].bytes, 6);
        assert_eq!(w.sources[0].archive_path, "static_content/site");
        assert_eq!(sha256_file(&out).unwrap(), (w.sha256, w.size));
        assert_eq!(fs::metadata(&out).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn missing_source_is_an_error_and_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("a.partial");
        let err = write_archive(
            &out,
            &WriteOptions::new("TOP"),
            &[input("db", Section::Configs, &tmp.path().join("nope"))],
            &|_| String::new(),
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("source 'db':") && msg.contains("does not exist"),
            "{msg}"
        );
        assert!(!out.exists());
    }

    #[test]
    fn existing_output_is_never_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("a.partial");
        fs::write(&out, "keep").unwrap();
        assert!(write_archive(&out, &WriteOptions::new("TOP"), &[], &|_| String::new()).is_err());
        assert_eq!(fs::read(&out).unwrap(), b"keep");
    }

    #[test]
    fn duplicate_and_bad_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("a.partial");
        let a = input("x", Section::Configs, tmp.path());
        assert!(
            write_archive(&out, &WriteOptions::new("TOP"), &[a.clone(), a], &|_| {
                String::new()
            })
            .is_err()
        );
        let b = input("../x", Section::Configs, tmp.path());
        assert!(write_archive(&out, &WriteOptions::new("TOP"), &[b], &|_| String::new()).is_err());
        assert!(!out.exists());
    }

    #[test]
    fn fifo_is_stored_and_output_inside_source_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("a.txt"), "a").unwrap();
        let fifo = src.join("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let out = src.join("self.partial");
        let w = write_archive(
            &out,
            &WriteOptions::new("TOP"),
            &[input("src", Section::Configs, &src)],
            &|_| String::new(),
        )
        .unwrap();
        let s = &w.sources[0];
        assert_eq!((s.files, s.specials), (1, 1));
        assert_eq!(s.skipped.len(), 1, "{:?}", s.skipped);
        assert!(
            s.skipped[0].contains("archive being written"),
            "{:?}",
            s.skipped
        );
    }

    #[test]
    fn single_file_source_and_sources_in_input_order() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("nginx.conf"), "x").unwrap();
        fs::create_dir(tmp.path().join("d")).unwrap();
        let out = tmp.path().join("a.partial");
        let w = write_archive(
            &out,
            &WriteOptions {
                top: "T".into(),
                codec: Codec::Gzip,
                level: 1,
                threads: 1,
                exclude: Default::default(),
            },
            &[
                input("z", Section::Configs, &tmp.path().join("d")),
                input("n", Section::Configs, &tmp.path().join("nginx.conf")),
            ],
            &|_| String::new(),
        )
        .unwrap();
        assert_eq!(w.sources[0].name, "z");
        assert_eq!(w.sources[1].files, 1);
        let names: Vec<String> = entries(&out).into_iter().map(|e| e.0).collect();
        let n = names
            .iter()
            .position(|p| p == "T/configs/n/nginx.conf")
            .unwrap();
        let z = names.iter().position(|p| p == "T/configs/z/").unwrap();
        assert!(n < z, "{names:?}");
    }

    #[test]
    fn exact_reader_pads_or_fails_on_shrink() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        fs::write(&p, b"abc").unwrap();
        let f = File::open(&p).unwrap();
        let mut r = ExactReader::new(&f, Vec::new(), vec![(0, 5)], None);
        r.pad_shrink = true;
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        assert_eq!(v, b"abc\0\0");
        assert!(matches!(&r.problem, Some(Problem::Shrank(w)) if w.contains("shrank")));

        let f = File::open(&p).unwrap();
        let mut r = ExactReader::new(&f, Vec::new(), vec![(0, 5)], None);
        let mut v = Vec::new();
        assert!(r.read_to_end(&mut v).is_err());
    }
}
