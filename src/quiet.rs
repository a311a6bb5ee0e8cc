//! `-q` for the commands cron runs (`hook`, `push`, `prune`): nothing at all on success,
//! so cron sends no mail, and a short summary on failure.
//!
//! How: while the command runs, file descriptor 1 points at an anonymous in-memory file
//! (stderr already carries only warnings and errors with `-q`). Afterwards stdout is put
//! back; on exit code 0 the captured text is dropped, otherwise [`summary`] of it is
//! printed. With `--json` nothing is captured: a script asked for that output.

use crate::error::Exit;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd};

/// At most this many lines of a failed command's output are shown (the hook's report is
/// shown whole: it is already a summary).
const TAIL_LINES: usize = 12;

/// Run `f` with stdout captured; print nothing when it returns `Ok(Exit::Ok)`, else the
/// [`summary`] of what it printed. When stdout cannot be redirected, `f` just runs.
pub fn run(f: impl FnOnce() -> anyhow::Result<Exit>) -> anyhow::Result<Exit> {
    let Some(capture) = Capture::start() else {
        return f();
    };
    let res = f();
    let text = capture.finish();
    let failed = !matches!(res, Ok(Exit::Ok));
    if failed && !text.trim().is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(summary(&text).as_bytes());
        let _ = out.flush();
    }
    res
}

/// The short form of a failed command's output: the hook's report (from its summary
/// line on), else the last [`TAIL_LINES`] lines, saying how many were left out.
pub fn summary(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if let Some(at) = lines
        .iter()
        .rposition(|l| l.starts_with("pronto-offsite hook on "))
    {
        return lines[at..].join("\n") + "\n";
    }
    let lines: Vec<&str> = lines.into_iter().filter(|l| !l.trim().is_empty()).collect();
    let skip = lines.len().saturating_sub(TAIL_LINES);
    let mut s = String::new();
    if skip > 0 {
        s.push_str(&format!(
            "({skip} earlier line(s) not shown: run without -q to see them)\n"
        ));
    }
    for l in &lines[skip..] {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// Stdout redirected into a memfd, with the original kept to restore.
struct Capture {
    saved: std::fs::File,
    file: std::fs::File,
}

impl Capture {
    fn start() -> Option<Capture> {
        let _ = std::io::stdout().flush();
        // SAFETY: plain syscalls on descriptors we own; each result is checked.
        unsafe {
            let mfd = libc::memfd_create(c"pronto-offsite-quiet".as_ptr(), libc::MFD_CLOEXEC);
            if mfd < 0 {
                return None;
            }
            let file = std::fs::File::from_raw_fd(mfd);
            let saved = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
            if saved < 0 {
                return None;
            }
            let saved = std::fs::File::from_raw_fd(saved);
            if libc::dup2(file.as_raw_fd(), 1) < 0 {
                return None;
            }
            Some(Capture { saved, file })
        }
    }

    /// Put stdout back and return what was written meanwhile.
    fn finish(mut self) -> String {
        let _ = std::io::stdout().flush();
        // SAFETY: restores fd 1 from the descriptor saved in `start`.
        unsafe {
            libc::dup2(self.saved.as_raw_fd(), 1);
        }
        let mut text = String::new();
        if self.file.rewind().is_ok() {
            let mut bytes = Vec::new();
            let _ = self.file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_keeps_the_hook_report_or_the_tail() {
        let hook = "nas: uploaded x\nprune: y\n\npronto-offsite hook on h: FAILED (exit 1): backup failed\n\nbackup   FAILED: boom\n";
        assert_eq!(
            summary(hook),
            "pronto-offsite hook on h: FAILED (exit 1): backup failed\n\nbackup   FAILED: boom\n"
        );
        let many: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        let s = summary(&many);
        assert!(s.starts_with("(8 earlier line(s) not shown"), "{s}");
        assert!(s.ends_with("line 20\n") && !s.contains("line 8\n"), "{s}");
    }
}
