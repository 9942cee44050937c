//! Progress of long work on stderr: a bar on a terminal; elsewhere (CI logs, `nohup`, notebooks)
//! one line every [`LINE_EVERY`] (and at the end) with done/total, the caller's status (loss
//! terms, learning rate), seconds per item and the time left.
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a line is printed when stderr is not a terminal.
pub const LINE_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    what: String,
    total: u64,
    done: u64,
    status: String,
    started: Instant,
    last_line: Option<Instant>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(what: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(what.to_string());
            bar
        });
        Self { what: what.into(), total, done: 0, status: String::new(), started: Instant::now(), last_line: None, bar }
    }

    /// Restarts the count (a new phase of the same work, e.g. after resuming at `done`).
    pub fn reset(&mut self, what: &str, done: u64, total: u64) {
        self.what = what.into();
        self.total = total;
        self.done = done;
        self.started = Instant::now();
        self.last_line = None;
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
            b.reset_eta();
            b.set_message(what.to_string());
        }
    }

    /// The status shown beside the count (e.g. `loss 0.1234 lr 1e-4`).
    pub fn status(&mut self, status: String) {
        if let Some(b) = &self.bar {
            b.set_message(format!("{} {status}", self.what));
        }
        self.status = status;
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(b) => b.inc(n),
            None => {
                let due = self.last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY);
                if due || self.done >= self.total {
                    eprintln!("{}", self.line());
                    self.last_line = Some(Instant::now());
                }
            }
        }
    }

    /// The line printed when stderr is not a terminal.
    pub fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let per = if self.done > 0 { secs / self.done as f64 } else { 0.0 };
        let left = per * self.total.saturating_sub(self.done) as f64;
        let status = if self.status.is_empty() { String::new() } else { format!(" {}", self.status) };
        format!("{} {}/{}{status} {per:.2} s/it, eta {}", self.what, self.done, self.total, clock(left))
    }

    /// A message that does not disturb the bar.
    pub fn message(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{msg}")),
            None => eprintln!("{msg}"),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// `h:mm:ss` or `m:ss`.
fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 { format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60) } else { format!("{}:{:02}", s / 60, s % 60) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_count_status_speed_and_time_left() {
        let mut p = Progress { bar: None, ..Progress::new("training", 10) };
        p.done = 4;
        p.status("loss 0.5".into());
        let line = p.line();
        assert!(line.starts_with("training 4/10 loss 0.5 ") && line.contains("s/it, eta "), "{line}");
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(clock(65.0), "1:05");
    }
}
