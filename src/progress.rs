//! Progress bars (indicatif) for `backup`, `push` and `pull`: drawn on stderr only when
//! stderr is a terminal and the command did not ask for `-q` or `--json`; otherwise every
//! [`Progress`] is a no-op. The CLI decides with [`enable`]; the library default is off.
//!
//! Bars (one per concurrent transfer, e.g. one per remote in `push`) share one
//! `MultiProgress`; log lines on stderr (see `logging`) and the commands' lines on stdout
//! go through [`suspend`], which hides the bars, writes, and redraws them, so they never
//! garble each other. A finished bar is cleared: the command's own line reports the result.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

static ENABLED: AtomicBool = AtomicBool::new(false);
static MULTI: OnceLock<MultiProgress> = OnceLock::new();

fn multi() -> &'static MultiProgress {
    MULTI.get_or_init(MultiProgress::new)
}

/// Turn bars on when `wanted` and stderr is a terminal.
pub fn enable(wanted: bool) {
    let on = wanted && io::IsTerminal::is_terminal(&io::stderr());
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether bars are drawn.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A byte-counting progress bar; does nothing when bars are off.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for `total` bytes (ETA shown), or a spinner with a running count when unknown.
    pub fn bytes(label: impl Into<String>, total: Option<u64>) -> Progress {
        if !enabled() {
            return Progress { bar: None };
        }
        let (bar, template) = match total {
            Some(t) => (
                ProgressBar::new(t),
                "{prefix} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            ),
            None => (
                ProgressBar::new_spinner(),
                "{spinner} {prefix} {binary_bytes} read, {binary_bytes_per_sec}, {elapsed}",
            ),
        };
        let style = ProgressStyle::with_template(template)
            .expect("a valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label.into());
        let bar = multi().add(bar);
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress { bar: Some(bar) }
    }

    /// A disabled bar.
    pub fn none() -> Progress {
        Progress { bar: None }
    }

    /// `n` more bytes done.
    #[inline]
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// A counter for this bar that a backend's long write can call from any thread.
    pub fn counter(&self) -> pronto_backends::OnBytes {
        let bar = self.bar.clone();
        std::sync::Arc::new(move |n| {
            if let Some(b) = &bar {
                b.inc(n);
            }
        })
    }

    /// Done: the bar is cleared (also when dropped unfinished, e.g. on an error).
    pub fn finish(self) {}
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
            multi().remove(&b);
        }
    }
}

/// Run `f` with the bars (if any) hidden, e.g. to print a line on the terminal.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    if enabled() {
        multi().suspend(f)
    } else {
        f()
    }
}

/// A writer (e.g. stdout) whose writes happen with the bars hidden.
pub struct Suspending<W: Write>(pub W);

impl<W: Write> Write for Suspending<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        suspend(|| self.0.write(buf))
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        suspend(|| self.0.write_all(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The `MakeWriter` of the stderr log layer: log lines never garble a bar.
pub fn stderr() -> Suspending<io::Stderr> {
    Suspending(io::stderr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_is_a_no_op() {
        let p = Progress::bytes("x", Some(10));
        assert!(p.bar.is_none());
        p.inc(5);
        p.finish();
        assert_eq!(suspend(|| 7), 7);
    }
}
