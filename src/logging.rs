//! Logging: human-readable lines (or JSON with `--log-format json`) on stderr, and the
//! same events in a log file when `[log] file` is set, rotated by size.
//!
//! Every failure is logged at the ERROR level, so each failure line carries the word
//! `ERROR` (text: `… ERROR message`, JSON: `"level":"ERROR"`) and the seed's
//! `grep ERROR /var/log/pronto-backup.log` keeps working.
//!
//! The log file is attached once the config is loaded ([`attach_file`]); until then (and
//! for config errors) only stderr gets the lines. Several processes may append to one log
//! file: lines are written with one `write` each in append mode, and a process that finds
//! the file rotated by another reopens it.
//!
//! The rotation is hand-written on purpose: `tracing-appender` rotates by time, not size,
//! and neither it nor `file-rotate` notices that another process (a second run appending
//! to the same log) has rotated the file, so it would keep writing into `FILE.1`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter::LevelFilter, EnvFilter, Layer};

pub use crate::config::log::{parse_size, LogConfig, DEFAULT_KEEP, DEFAULT_MAX_SIZE};

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines
    #[default]
    Text,
    /// One JSON object per line
    Json,
}

// ---- the log file ----

static SINK: OnceLock<Mutex<RotatingFile>> = OnceLock::new();
static SINK_FAILED: AtomicBool = AtomicBool::new(false);
/// 0 = text, 1 = json (set by [`init`]).
static FORMAT: AtomicU8 = AtomicU8::new(0);

/// A file that rotates itself by size: `FILE` → `FILE.1` → … → `FILE.<keep>`.
pub struct RotatingFile {
    path: PathBuf,
    max_size: u64,
    keep: usize,
    file: File,
}

impl RotatingFile {
    /// Open (create, mode 0600) `cfg.file` for appending; creates its folder (0700).
    pub fn open(cfg: &LogConfig) -> io::Result<RotatingFile> {
        if let Some(dir) = cfg.file.parent() {
            if !dir.as_os_str().is_empty() {
                std::os::unix::fs::DirBuilderExt::mode(
                    std::fs::DirBuilder::new().recursive(true),
                    0o700,
                )
                .create(dir)?;
            }
        }
        Ok(RotatingFile {
            path: cfg.file.clone(),
            max_size: cfg.max_size,
            keep: cfg.keep,
            file: Self::open_file(&cfg.file)?,
        })
    }

    fn open_file(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
    }

    /// Append one record (one or more whole lines), rotating first when it would not fit.
    pub fn write_record(&mut self, buf: &[u8]) -> io::Result<()> {
        // Another process rotated (or someone removed) the file: follow the name.
        let ours = self.file.metadata()?;
        match std::fs::metadata(&self.path) {
            Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {}
            _ => self.file = Self::open_file(&self.path)?,
        }
        let size = self.file.metadata()?.len();
        if self.max_size > 0 && size > 0 && size + buf.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(buf)
    }

    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        if self.keep == 0 {
            match std::fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        } else {
            for i in (1..self.keep).rev() {
                let from = numbered(i);
                if from.exists() {
                    std::fs::rename(&from, numbered(i + 1))?;
                }
            }
            match std::fs::rename(&self.path, numbered(1)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.file = Self::open_file(&self.path)?;
        Ok(())
    }
}

/// Start writing log lines to `cfg.file` too. Called once the config is loaded; a file
/// that cannot be opened is reported (ERROR on stderr) and the run goes on without it.
pub fn attach_file(cfg: Option<&LogConfig>) {
    let Some(cfg) = cfg else { return };
    if SINK.get().is_some() {
        return;
    }
    match RotatingFile::open(cfg) {
        Ok(f) => {
            let _ = SINK.set(Mutex::new(f));
        }
        Err(e) => {
            tracing::error!(
                "cannot open log file {}: {e}; logging to stderr only",
                cfg.file.display()
            );
        }
    }
}

fn write_to_file(buf: &[u8]) {
    let Some(sink) = SINK.get() else { return };
    let mut f = match sink.lock() {
        Ok(f) => f,
        Err(p) => p.into_inner(),
    };
    if let Err(e) = f.write_record(buf) {
        if !SINK_FAILED.swap(true, Ordering::Relaxed) {
            let _ = writeln!(
                io::stderr(),
                "ERROR: cannot write log file {}: {e}",
                f.path.display()
            );
        }
    }
}

/// The `MakeWriter` of the file layer: writes go to the attached file, or nowhere.
#[derive(Clone, Copy)]
struct FileSink;

struct FileSinkWriter;

impl Write for FileSinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_to_file(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for FileSink {
    type Writer = FileSinkWriter;
    fn make_writer(&'a self) -> FileSinkWriter {
        FileSinkWriter
    }
}

/// Timestamps in the log file: UTC, RFC 3339, seconds.
struct UtcSeconds;

impl FormatTime for UtcSeconds {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        write!(w, "{}", chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"))
    }
}

/// Set up logging: stderr at warn (`-q`), info, or debug (`-v`), overridable with
/// `$PRONTO_OFFSITE_LOG` (an env-filter directive); the log file (once attached) at info,
/// or debug with `-v`, with timestamps.
pub fn init(quiet: bool, verbose: bool, format: LogFormat) {
    FORMAT.store(matches!(format, LogFormat::Json) as u8, Ordering::Relaxed);
    let level = if quiet {
        "warn"
    } else if verbose {
        "debug"
    } else {
        "info"
    };
    let stderr_filter =
        EnvFilter::try_from_env("PRONTO_OFFSITE_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let file_level = if verbose {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    };
    let ansi = io::IsTerminal::is_terminal(&io::stderr());
    // Other crates' chatter (hyper, rustls, ...) stays out of the file below WARN.
    let file_filter = tracing_subscriber::filter::filter_fn(move |m| {
        m.level() <= &file_level
            && (m.target().starts_with("pronto") || m.level() <= &tracing::Level::WARN)
    });
    let res = match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(crate::progress::stderr)
                    .with_target(false)
                    .with_ansi(ansi)
                    .without_time()
                    .with_filter(stderr_filter),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(FileSink)
                    .with_target(false)
                    .with_ansi(false)
                    .with_timer(UtcSeconds)
                    .with_filter(file_filter),
            )
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(crate::progress::stderr)
                    .with_timer(UtcSeconds)
                    .with_filter(stderr_filter),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(FileSink)
                    .with_timer(UtcSeconds)
                    .with_filter(file_filter),
            )
            .try_init(),
    };
    let _ = res;
}

/// Report the error a command ends with: `ERROR: …` on stderr (a JSON line with
/// `"level":"ERROR"` under `--log-format json`), and the same in the log file.
pub fn final_error(message: &str) {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
    if FORMAT.load(Ordering::Relaxed) == 1 {
        let line = serde_json::json!({
            "timestamp": now.to_string(),
            "level": "ERROR",
            "fields": {"message": message},
            "target": "pronto_offsite",
        });
        eprintln!("{line}");
        write_to_file(format!("{line}\n").as_bytes());
    } else {
        eprintln!("ERROR: {message}");
        write_to_file(format!("{now} ERROR {message}\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("10 MiB"), Ok(10 << 20));
        assert_eq!(parse_size("500KB"), Ok(500_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("10 parsecs").is_err());
    }

    #[test]
    fn rotation_keeps_n_files_and_never_splits_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            file: dir.path().join("x.log"),
            max_size: 100,
            keep: 2,
        };
        let mut f = RotatingFile::open(&cfg).unwrap();
        for i in 0..20 {
            f.write_record(format!("line {i:02} {}\n", "x".repeat(30)).as_bytes())
                .unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["x.log", "x.log.1", "x.log.2"]);
        for n in &names {
            let text = std::fs::read_to_string(dir.path().join(n)).unwrap();
            assert!(text.len() <= 100, "{n} is {} bytes", text.len());
            assert!(text.ends_with('\n'));
        }
        let newest = std::fs::read_to_string(dir.path().join("x.log")).unwrap();
        assert!(newest.contains("line 19"));
    }
}
