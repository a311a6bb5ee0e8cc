//! Upload while archiving: `backup --push` and `hook` send the new archive to every
//! remote as it is written, so that a run takes about the longer of archiving and
//! uploading rather than their sum.
//!
//! The archive is written exactly as `backup` writes it (tar → gzip|zstd → [age] →
//! sha256 → `NAME.partial`, 0600 → fsync → rename → local manifest). The writer tells a
//! [`Feed`] how many bytes have reached the file (`archive::WriteTap`); one task per
//! remote reads each completed part of the growing file through its own read handle
//! (`pread`, so renames do not matter), hashes it (the part's SHA-256 travels with it,
//! as in `push`) and sends it, at most `part_concurrency` parts in flight: nothing is
//! buffered beyond those parts, and the writer never waits for a remote.
//!
//! Nothing becomes visible on a remote before the archive is finished:
//! - the multipart upload is created without the archive's hash (unknown until the end);
//!   parts are sized from the backend's limits (8 MiB with the defaults: 10,000 parts
//!   hold 78 GiB; an archive that outgrows them is handed to the `push` that follows);
//! - only after the local archive is complete, fsynced, renamed and its manifest written
//!   does each task check that the bytes it sent hash to the archive's SHA-256, record
//!   size and hash in its journal, complete the upload with that hash (file:// and sftp://
//!   check it and record it; S3 and GCS keep no hash for a multipart object created before
//!   the hash was known: there the backend's per-part SHA-256 checks plus the sender's
//!   whole-archive hash over exactly the bytes it sent stand in for a read-back, which
//!   would double the transfer), check the remote copy's size and write the remote
//!   manifest last (`verify --remote NAME --deep` re-reads it when wanted);
//! - an archive that fits in one part is sent with one `put` after it is finished, like
//!   `push` (S3 and GCS then record its hash);
//! - a failed backup aborts every upload (no manifest anywhere, no object under the
//!   final name); a remote that fails is reported, its upload aborted, and it is left
//!   for the next `push` while the others go on;
//! - a run killed after the archive was finished leaves a journal with the archive's
//!   size and hash, so the next `push` resumes the upload (or starts it over); one killed
//!   earlier leaves a journal without them, which `push` and `push --cleanup` abort.
//!
//! Afterwards the usual `push` runs for the remotes that did not fail: it uploads
//! anything else they lack (and what was handed over) and prunes them as configured.

use crate::error::Exit;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, OnceLock};

use anyhow::{Context, Result};
use bytes::Bytes;
use pronto_backends::UploadId;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Mutex};

use crate::config::Config;
use crate::fsutil::human_bytes;
use crate::journal::{Intent, Journal};
use crate::local_backup::{BackupOptions, Started, Watch};
use crate::manifest::Manifest;
use crate::progress::Progress;
use crate::push_remotes::RemoteReport;
use crate::replicate::{self, RemoteHandle};
use crate::retry::retry;

/// The writer tells the uploaders again once this many more bytes are in the file.
const PUBLISH_STEP: u64 = 1 << 20;

/// How the archive ended.
#[derive(Clone)]
enum End {
    /// Complete, fsynced, renamed, its local manifest written.
    Done(Arc<Manifest>),
    /// The backup failed: abort.
    Failed,
}

/// What the writer has told the uploaders so far.
#[derive(Clone, Default)]
struct Tail {
    /// The archive's file name (its key on the remotes), once the backup chose it.
    file: Option<String>,
    /// A read handle on the `.partial` file, opened at its first write.
    reader: Option<std::result::Result<Arc<File>, String>>,
    /// Bytes in the file so far.
    written: u64,
    end: Option<End>,
}

/// The writer's side: fed by [`crate::local_backup::Watch`], read by the uploaders.
struct Feed {
    tx: watch::Sender<Tail>,
    partial: StdMutex<Option<PathBuf>>,
    opened: OnceLock<()>,
    published: AtomicU64,
}

impl Feed {
    fn start(&self, s: &Started) {
        *self.partial.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.partial.clone());
        self.tx.send_modify(|t| t.file = Some(s.file.clone()));
    }

    /// Called on the writer's thread after each write (see `archive::WriteTap`).
    fn written(&self, n: u64) {
        // The file exists now: open the uploaders' read handle before it is renamed.
        self.opened.get_or_init(|| {
            let path = self
                .partial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let reader = match path {
                Some(p) => File::open(&p).map(Arc::new).map_err(|e| {
                    format!(
                        "opening {} to read it while it is written: {e}",
                        p.display()
                    )
                }),
                None => Err("the archive's name was never announced".to_string()),
            };
            self.tx.send_modify(|t| t.reader = Some(reader));
        });
        if n >= self.published.load(Ordering::Relaxed) + PUBLISH_STEP {
            self.published.store(n, Ordering::Relaxed);
            self.tx.send_modify(|t| t.written = t.written.max(n));
        }
    }

    fn end(&self, end: End) {
        self.tx.send_modify(|t| t.end = Some(end));
    }
}

/// What one remote's task did.
enum Streamed {
    /// Complete on the remote, verified, manifest written.
    Uploaded { file: String, bytes: u64 },
    /// The remote failed: reported, its upload aborted, left for the next push.
    Failed { file: String, error: anyhow::Error },
    /// Nothing left on the remote: the backup failed, or the archive is left to the push
    /// that follows (the reason says why).
    Handover(Option<String>),
}

/// How a stream ended without a remote error.
enum Next {
    Uploaded(u64),
    Handover(Option<String>),
}

/// One remote's uploader.
struct Job {
    r: RemoteHandle,
    dir: PathBuf,
    part_size: u64,
    max_parts: u32,
}

impl Job {
    async fn run(self, mut rx: watch::Receiver<Tail>, bar: Progress) -> Streamed {
        let file = match rx.wait_for(|t| t.file.is_some() || t.end.is_some()).await {
            Ok(t) => t.file.clone(),
            Err(_) => None,
        };
        let Some(file) = file else {
            return Streamed::Handover(None);
        };
        let mut multipart: Option<(UploadId, PathBuf)> = None;
        // Before anything is written: `push --cleanup` may abort what this upload leaves.
        let intent = match Intent::record(&self.dir, &self.r.name, &file) {
            Ok(p) => p,
            Err(error) => return Streamed::Failed { file, error },
        };
        let res = self.stream(&file, &mut rx, &bar, &mut multipart).await;
        if matches!(res, Ok(Next::Uploaded(_))) {
            let _ = intent.done();
        }
        if let Some((id, jpath)) = multipart.take() {
            // Failed, or handed over: nothing of this upload may stay on the remote.
            match self.r.backend.abort_upload(&file, &id).await {
                Ok(()) => {
                    tracing::info!("{}: aborted the unfinished upload of {file}", self.r.name);
                    let _ = Journal::remove(&jpath);
                }
                Err(e) => tracing::warn!(
                    "{}: could not abort the unfinished upload of {file} ({e}); `pronto-offsite push --cleanup` aborts it later",
                    self.r.name
                ),
            }
        }
        match res {
            Ok(Next::Uploaded(bytes)) => Streamed::Uploaded { file, bytes },
            Ok(Next::Handover(why)) => Streamed::Handover(why),
            Err(error) => Streamed::Failed { file, error },
        }
    }

    /// Send the archive's parts as they are written, then (once it is finished) complete,
    /// verify and commit. `multipart` holds the upload while there is one to abort.
    async fn stream(
        &self,
        file: &str,
        rx: &mut watch::Receiver<Tail>,
        bar: &Progress,
        multipart: &mut Option<(UploadId, PathBuf)>,
    ) -> Result<Next> {
        let r = &self.r;
        let ps = self.part_size;
        // A manifest left beside an older copy under this name goes first, as in `push`.
        let mkey = Manifest::file_name_for(file);
        retry(r.retry, &format!("removal of {mkey} on {}", r.name), || {
            r.backend.delete(&mkey)
        })
        .await
        .with_context(|| format!("{}: removing stale manifest of {file}", r.name))?;

        // 1. Wait for a first whole part, or for the whole archive when it fits in one.
        let reader = loop {
            let (written, end, reader) = {
                let t = rx.borrow_and_update();
                (t.written, t.end.clone(), t.reader.clone())
            };
            let first_part = match &end {
                Some(End::Failed) => return Ok(Next::Handover(None)),
                Some(End::Done(m)) => m.size > ps,
                None => written >= ps,
            };
            let reader = match reader {
                Some(Ok(f)) => f,
                Some(Err(e)) => return Ok(Next::Handover(Some(e))),
                None if end.is_some() || first_part => {
                    return Ok(Next::Handover(Some(
                        "the archive was never opened for reading".into(),
                    )))
                }
                None => {
                    if rx.changed().await.is_err() {
                        return Ok(Next::Handover(None));
                    }
                    continue;
                }
            };
            match &end {
                Some(End::Done(m)) if !first_part => return self.single_put(reader, m, bar).await,
                _ if first_part => break reader,
                _ => {}
            }
            if rx.changed().await.is_err() {
                // The backup side is gone without a word: never complete.
                return Ok(Next::Handover(None));
            }
        };

        // 2. The multipart upload, journaled before any part is sent. Size and hash are
        // unknown yet: a journal without them is never resumed, only aborted (by `push`
        // or `push --cleanup`) until the archive is finished.
        let id = retry(
            r.retry,
            &format!("start of upload {file} to {}", r.name),
            || r.backend.create_upload(file),
        )
        .await
        .with_context(|| format!("{}: starting upload of {file}", r.name))?;
        let jpath = Journal::path(&self.dir, &r.name, file);
        let j = Journal {
            key: file.to_string(),
            size: 0,
            sha256: String::new(),
            upload_id: id.clone(),
            part_size: ps,
            parts: Vec::new(),
            failures: 0,
        };
        *multipart = Some((id.clone(), jpath.clone()));
        j.save(&jpath)?;
        let journal = Arc::new(Mutex::new(j));

        // 3. The parts, through the one upload loop, as the file grows.
        let mut source = GrowingFile {
            rx,
            reader,
            file: file.to_string(),
            part_size: ps,
            max_parts: self.max_parts,
            next: 1,
            read: 0,
            size: None,
            hasher: Some(Sha256::new()),
            journal: journal.clone(),
            jpath: jpath.clone(),
        };
        let sent =
            replicate::send_parts_from(r, file, &id, &journal, &jpath, &mut source, Some(bar))
                .await;
        if let Err(e) = &sent {
            if let Some(Handover(why)) = e.downcast_ref::<Handover>() {
                return Ok(Next::Handover(why.clone()));
            }
        }
        sent?;
        let read = source.read;
        let whole: [u8; 32] = source.hasher.take().expect("one hasher").finalize().into();
        drop(source);

        // 4. The archive is finished (renamed, local manifest written) and every part
        // sent: the bytes read must be the finished archive's before anything completes.
        let Some(End::Done(m)) = rx.borrow().end.clone() else {
            return Ok(Next::Handover(None));
        };
        let sha = m.sha256_bytes()?;
        if read != m.size || whole != sha {
            // Never let a `push` resume these parts (should the abort fail).
            let mut j = journal.lock().await;
            j.sha256 = String::new();
            j.save(&jpath)?;
            return Ok(Next::Handover(Some(format!(
                "the bytes read while {file} was written ({read} bytes, sha256 {}) are not the finished archive's; sending it again from the finished file",
                hex::encode(whole)
            ))));
        }
        replicate::complete_journaled(r, file, &id, &journal, sha, &jpath).await?;
        *multipart = None;
        let local = match rx.borrow().reader.clone() {
            Some(Ok(file)) => Some(replicate::LocalCopy {
                file,
                part_size: self.part_size,
            }),
            _ => None,
        };
        replicate::verify_and_write_manifest(r, &m, true, local.as_ref()).await?;
        Ok(Next::Uploaded(m.size))
    }

    /// An archive that fits in one part: one `put` once it is finished, as `push` does.
    async fn single_put(&self, reader: Arc<File>, m: &Manifest, bar: &Progress) -> Result<Next> {
        let r = &self.r;
        let (body, sha, _) =
            match read_growing_part(Arc::clone(&reader), 0, m.size, Sha256::new()).await {
                Ok(x) => x,
                Err(e) => return Ok(Next::Handover(Some(format!("{e:#}")))),
            };
        if sha != m.sha256_bytes()? {
            return Ok(Next::Handover(Some(format!(
                "{} read back with another sha256 than its manifest's; sending it again from the finished file",
                m.file
            ))));
        }
        retry(
            r.retry,
            &format!("upload of {} to {}", m.file, r.name),
            || r.backend.put(&m.file, body.clone(), sha),
        )
        .await
        .with_context(|| format!("{}: uploading {}", r.name, m.file))?;
        bar.inc(m.size);
        let local = replicate::LocalCopy {
            file: reader,
            part_size: self.part_size,
        };
        replicate::verify_and_write_manifest(r, m, false, Some(&local)).await?;
        Ok(Next::Uploaded(m.size))
    }
}

/// Why the stream stopped without a remote error: the archive is left to the `push`
/// that follows (`None`: the backup itself failed or went away).
#[derive(Debug, thiserror::Error)]
#[error("handed over to push")]
struct Handover(Option<String>);

/// The parts of the archive being written, as the writer announces them ([`Tail`]):
/// each part is read once whole parts are in the file (the last once the archive is
/// finished), hashed in order into the whole archive's SHA-256. When the archive is
/// finished, its size and hash go into the journal, so that from then on a killed run
/// leaves an upload the next `push` resumes (same key, size, hash and part size).
struct GrowingFile<'a> {
    rx: &'a mut watch::Receiver<Tail>,
    reader: Arc<File>,
    file: String,
    part_size: u64,
    max_parts: u32,
    next: u32,
    read: u64,
    /// The archive's size, once it is finished.
    size: Option<u64>,
    hasher: Option<Sha256>,
    journal: Arc<Mutex<Journal>>,
    jpath: PathBuf,
}

impl replicate::PartSource for GrowingFile<'_> {
    async fn ready(&mut self) -> Result<bool> {
        loop {
            let (written, end) = {
                let t = self.rx.borrow_and_update();
                (t.written, t.end.clone())
            };
            match &end {
                Some(End::Failed) => return Err(Handover(None).into()),
                Some(End::Done(m)) if self.size.is_none() => {
                    let mut j = self.journal.lock().await;
                    j.size = m.size;
                    j.sha256 = m.sha256.clone();
                    j.save(&self.jpath)?;
                    self.size = Some(m.size);
                }
                _ => {}
            }
            match self.size {
                Some(size) => return Ok(size > self.read),
                None if written >= self.read + self.part_size => return Ok(true),
                None => {}
            }
            if self.rx.changed().await.is_err() {
                // The backup side is gone without a word: never complete.
                return Err(Handover(None).into());
            }
        }
    }

    async fn take(&mut self) -> Result<(u32, Bytes, [u8; 32])> {
        let len = match self.size {
            Some(size) => size.saturating_sub(self.read).min(self.part_size),
            None => self.part_size,
        };
        if self.next > self.max_parts {
            return Err(Handover(Some(format!(
                "{} outgrew {} parts of {}",
                self.file,
                self.max_parts,
                human_bytes(self.part_size)
            )))
            .into());
        }
        let hasher = self.hasher.take().expect("one hasher");
        let (body, psha, hasher) = read_growing_part(self.reader.clone(), self.read, len, hasher)
            .await
            .map_err(|e| Handover(Some(format!("{e:#}"))))?;
        self.hasher = Some(hasher);
        let n = self.next;
        self.next += 1;
        self.read += len;
        Ok((n, body, psha))
    }
}

/// Read `len` bytes at `offset` on a blocking thread, hashing them into `whole` (parts
/// are read in order) and on their own ([`replicate::read_hashed_at`]).
async fn read_growing_part(
    reader: Arc<File>,
    offset: u64,
    len: u64,
    mut whole: Sha256,
) -> Result<(Bytes, [u8; 32], Sha256)> {
    tokio::task::spawn_blocking(move || {
        let (buf, psha) = replicate::read_hashed_at(&reader, offset, len, Some(&mut whole))
            .with_context(|| format!("reading the archive being written at {offset}"))?;
        Ok((Bytes::from(buf), psha, whole))
    })
    .await?
}

/// What [`backup_and_push`] does besides the stream.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Prune each remote after its uploads, as `push` does (its `prune` key).
    pub prune: bool,
    /// Push older archives to the remotes even when the backup failed (`hook`).
    pub push_after_failed_backup: bool,
}

/// What a streamed backup did.
pub struct Outcome {
    /// The backup's result, exactly as `backup` gives it.
    pub backup: Result<(Manifest, PathBuf)>,
    /// One report per configured remote, in config order (empty when the push was skipped
    /// after a failed backup).
    pub remotes: Vec<RemoteReport>,
}

/// Back up, uploading the new archive to every configured remote as it is written; then
/// `push` to the remotes that did not fail (what else they lack; prune as configured).
/// Per-remote lines and the summary go to `out`.
pub fn backup_and_push(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
    opts: &Options,
    out: &mut dyn Write,
) -> Outcome {
    // Parts of 8 MiB (the backends' default) hold 78 GiB in 10,000 parts; bigger ones only
    // when the newest archive says this one may be bigger than half of that.
    let estimate = crate::catalog::scan(&cfg.local)
        .ok()
        .and_then(|all| {
            all.into_iter()
                .filter_map(|a| a.manifest.map(|m| (a.name.time, m.size)))
                .max()
        })
        .map_or(0, |(_, size)| size.saturating_mul(2));
    let (tx, rx) = watch::channel(Tail::default());
    let feed = Arc::new(Feed {
        tx,
        partial: StdMutex::new(None),
        opened: OnceLock::new(),
        published: AtomicU64::new(0),
    });

    enum Slot {
        NotOpened(String),
        Task(tokio::task::JoinHandle<Streamed>),
    }
    let slots: Vec<(String, Slot)> = cfg
        .remotes
        .iter()
        .map(|remote| {
            // A remote that lost its marker (not mounted?) gets nothing streamed: the
            // push after the backup refuses it with the reason.
            let opened = crate::remotes::open(cfg, remote).and_then(|r| {
                rt.block_on(crate::marker::ensure(
                    cfg,
                    remote,
                    &r,
                    remote.init_marker,
                    false,
                    &mut std::io::sink(),
                ))
                .map(|()| r)
            });
            let slot = match opened {
                Ok(r) => {
                    let caps = r.backend.capabilities();
                    let bar = Progress::bytes(format!("{}: upload", r.name), None);
                    let job = Job {
                        // The final size is unknown: plan for the estimate.
                        part_size: replicate::part_size_for(estimate, &caps),
                        max_parts: caps.max_parts,
                        dir: cfg.local.dir.clone(),
                        r,
                    };
                    Slot::Task(rt.spawn(job.run(rx.clone(), bar)))
                }
                Err(e) => Slot::NotOpened(format!("{e:#}")),
            };
            (remote.name.clone(), slot)
        })
        .collect();
    drop(rx);

    let on_start = |s: &Started| feed.start(s);
    let tap_feed = feed.clone();
    let watch = Watch {
        on_start: Some(&on_start),
        tap: Some(Arc::new(move |n| tap_feed.written(n))),
    };
    let backup = crate::local_backup::run_watched(cfg, &BackupOptions::default(), &watch);
    feed.end(match &backup {
        Ok((m, _)) => End::Done(Arc::new(m.clone())),
        Err(_) => End::Failed,
    });
    drop(watch);

    // Each remote's stream, in config order.
    let streamed: Vec<(String, std::result::Result<Streamed, String>)> = rt.block_on(async {
        let mut v = Vec::new();
        for (name, slot) in slots {
            let res = match slot {
                Slot::NotOpened(e) => Err(e),
                Slot::Task(h) => h.await.map_err(|e| format!("upload task: {e}")),
            };
            v.push((name, res));
        }
        v
    });
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut uploaded: Vec<(String, String, u64)> = Vec::new();
    for (name, res) in streamed {
        match res {
            Ok(Streamed::Uploaded { file, bytes }) => {
                tracing::info!("{name}: {file} uploaded while it was written and verified");
                let _ = writeln!(
                    out,
                    "{name}: uploaded {file} ({}) while it was written; verified",
                    human_bytes(bytes)
                );
                uploaded.push((name, file, bytes));
            }
            Ok(Streamed::Failed { file, error }) => {
                let e = format!("{error:#}");
                tracing::error!("remote {name}: {e}");
                let _ = writeln!(
                    out,
                    "{name}: FAILED while uploading {file} as it was written: {e}; the next push uploads it"
                );
                failed.push((name, e));
            }
            Ok(Streamed::Handover(Some(why))) => {
                tracing::warn!("{name}: {why}; the push that follows uploads it");
            }
            Ok(Streamed::Handover(None)) => {}
            Err(e) => {
                tracing::error!("remote {name}: {e}");
                failed.push((name, e));
            }
        }
    }
    let _ = out.flush();

    if backup.is_err() && !opts.push_after_failed_backup {
        return Outcome {
            backup,
            remotes: Vec::new(),
        };
    }

    // The usual push, for every remote that did not fail: it finds the streamed archive
    // complete, uploads anything else missing, and prunes as configured.
    let mut rest = cfg.clone();
    rest.remotes
        .retain(|r| !failed.iter().any(|(name, _)| name == &r.name));
    let pushed: std::result::Result<Vec<RemoteReport>, String> = if rest.remotes.is_empty() {
        Ok(Vec::new())
    } else {
        let mut cut = DropSummary::new(&mut *out);
        let res = rt.block_on(crate::push_remotes::run_with(
            &rest, None, false, opts.prune, &mut cut,
        ));
        cut.finish();
        res.map_err(|e| {
            tracing::error!("push failed: {e:#}");
            format!("{e:#}")
        })
    };
    let reports: Vec<RemoteReport> = cfg
        .remotes
        .iter()
        .map(|remote| {
            let name = &remote.name;
            let mut rep = match (&pushed, failed.iter().find(|(n, _)| n == name)) {
                (_, Some((_, e))) => RemoteReport {
                    name: name.clone(),
                    error: Some(e.clone()),
                    ..Default::default()
                },
                (Ok(reps), None) => reps
                    .iter()
                    .find(|r| &r.name == name)
                    .cloned()
                    .unwrap_or_else(|| RemoteReport {
                        name: name.clone(),
                        ..Default::default()
                    }),
                (Err(e), None) => RemoteReport {
                    name: name.clone(),
                    error: Some(e.clone()),
                    ..Default::default()
                },
            };
            if let Some((_, file, bytes)) = uploaded.iter().find(|(n, _, _)| n == name) {
                if !rep.uploaded.contains(file) {
                    rep.uploaded.insert(0, file.clone());
                    rep.bytes_sent += bytes;
                    // The push found it there already and counted it so.
                    rep.skipped = rep.skipped.saturating_sub(1);
                }
            }
            rep
        })
        .collect();
    let _ = writeln!(out);
    for r in &reports {
        let _ = match &r.error {
            None => writeln!(out, "{}", r.summary(false)),
            Some(e) => writeln!(out, "{}: FAILED: {e}", r.name),
        };
    }
    let _ = out.flush();
    Outcome {
        backup,
        remotes: reports,
    }
}

/// `backup --push`: the backup (an error when it fails, as `backup`), the new archive
/// streamed to every remote, then `push`; returns the manifest, the archive's path and the
/// exit code (0, or 3 when a remote failed: the archive was made).
pub fn run_backup_push(cfg: &Config, out: &mut dyn Write) -> Result<(Manifest, PathBuf, Exit)> {
    if cfg.remotes.is_empty() {
        return Err(crate::error::usage(format!(
            "{}: no [[remotes]] configured: nowhere to push (run `backup` without --push)",
            cfg.file.display()
        )));
    }
    let rt = crate::remotes::runtime()?;
    let outcome = backup_and_push(
        cfg,
        &rt,
        &Options {
            prune: true,
            push_after_failed_backup: false,
        },
        out,
    );
    let (m, path) = outcome.backup?;
    // The archive was made: failed remotes make at worst a partial run.
    let failed = outcome.remotes.iter().filter(|r| r.error.is_some()).count();
    let code = Exit::for_locations(failed, outcome.remotes.len() + 1);
    Ok((m, path, code))
}

/// Passes `push`'s lines through, but drops its closing summary (the block after its last
/// empty line), which [`backup_and_push`] prints itself with the streamed uploads counted.
struct DropSummary<'a> {
    out: &'a mut dyn Write,
    line: Vec<u8>,
    /// Lines after the latest empty line, held back until another empty line shows that
    /// they were not the closing block.
    held: Option<Vec<u8>>,
}

impl<'a> DropSummary<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        DropSummary {
            out,
            line: Vec::new(),
            held: None,
        }
    }

    fn finish(mut self) {
        let _ = self.out.flush();
        self.held = None;
    }
}

impl Write for DropSummary<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        for &b in data {
            self.line.push(b);
            if b != b'\n' {
                continue;
            }
            let line = std::mem::take(&mut self.line);
            if line == b"\n" {
                if let Some(h) = self.held.take() {
                    self.out.write_all(b"\n")?;
                    self.out.write_all(&h)?;
                }
                self.held = Some(Vec::new());
            } else if let Some(h) = &mut self.held {
                h.extend_from_slice(&line);
            } else {
                self.out.write_all(&line)?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_summary_keeps_lines_and_drops_the_closing_block() {
        let mut buf = Vec::new();
        let mut w = DropSummary::new(&mut buf);
        w.write_all(b"a: upload x\n\nprune block\nb: up to date\n")
            .unwrap();
        w.write_all(b"\na: uploaded 1\nb: uploaded 0\n").unwrap();
        w.finish();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "a: upload x\n\nprune block\nb: up to date\n"
        );
    }
}
