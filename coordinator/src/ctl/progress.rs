//! Progress of a long CLI operation on stderr: a bar when stderr is a terminal, plain lines
//! otherwise (a log, a CI job, `| tee`), so stdout stays the command's answer.

use std::io::IsTerminal;
use std::io::Write;
use std::time::Duration;
use std::time::Instant;

use indicatif::ProgressBar;
use indicatif::ProgressStyle;

/// Least time between two plain lines: a 1,000,000-line import in batches of 1,000 would
/// otherwise print a thousand of them.
const LINE_INTERVAL: Duration = Duration::from_secs(1);

/// Counts `done` of `total` items, drawn as a bar or as lines.
pub struct Progress {
    total: u64,
    done: u64,
    what: &'static str,
    view: View,
}

enum View {
    Bar(ProgressBar),
    Lines { out: Box<dyn Write + Send>, started: Instant, last: Option<Instant> },
}

impl Progress {
    /// Progress over `total` items named `what` ("bindings imported"), on stderr.
    pub fn new(total: u64, what: &'static str) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let template = format!("{{bar:40}} {{pos}}/{{len}} {what} ({{per_sec}}, eta {{eta}})");
            bar.set_style(ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()));
            return Progress { total, done: 0, what, view: View::Bar(bar) };
        }
        Progress::lines(total, what, Box::new(std::io::stderr()))
    }

    /// Plain lines written to `out`.
    fn lines(total: u64, what: &'static str, out: Box<dyn Write + Send>) -> Progress {
        Progress { total, done: 0, what, view: View::Lines { out, started: Instant::now(), last: None } }
    }

    /// `count` more items are done.
    pub fn advance(&mut self, count: u64) {
        self.done = (self.done + count).min(self.total);
        let (done, total, what) = (self.done, self.total, self.what);
        match &mut self.view {
            View::Bar(bar) => bar.set_position(done),
            View::Lines { out, started, last } => {
                let due = last.is_none_or(|at| at.elapsed() >= LINE_INTERVAL);
                if due || done == total {
                    *last = Some(Instant::now());
                    let _ = writeln!(out, "{done}/{total} {what} after {:.1}s", started.elapsed().as_secs_f64());
                }
            }
        }
    }

    /// Clears the bar; plain lines stay as they are.
    pub fn finish(self) {
        if let View::Bar(bar) = self.view {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::Mutex;

    use super::*;

    /// A writer whose text the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_lines_are_spaced_out_and_the_last_one_is_always_written() {
        let captured = Captured::default();
        let mut progress = Progress::lines(3_000, "bindings imported", Box::new(captured.clone()));
        progress.advance(1_000);
        progress.advance(1_000); // within a second of the first line: not written
        progress.advance(1_000); // the end: written whatever the time
        progress.finish();
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("1000/3000 bindings imported after "), "{text}");
        assert!(lines[1].starts_with("3000/3000 bindings imported after "), "{text}");
    }

    #[test]
    fn never_counts_past_the_total() {
        let captured = Captured::default();
        let mut progress = Progress::lines(10, "unbound", Box::new(captured.clone()));
        progress.advance(25);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("10/10 unbound"), "{text}");
    }
}
