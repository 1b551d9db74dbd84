//! What the user sees while a run goes on: a progress bar on a terminal, one line per finished job
//! otherwise (logs, CI).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The run's live display.
pub struct Progress {
    bar: ProgressBar,
    tty: bool,
    /// The running jobs and their logs.
    running: BTreeMap<String, PathBuf>,
    note: String,
    /// The last line of the one running job's log, as the bar shows it.
    latest: String,
    /// When that log was last read.
    read_at: Instant,
}

/// How often the bar reads the one running job's log for its latest line.
const READ_EVERY: Duration = Duration::from_secs(1);

impl Progress {
    /// A display for `total` jobs, on stderr.
    pub fn new(total: usize) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = ProgressBar::with_draw_target(
            Some(total as u64),
            if tty {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:20}] {pos}/{len} jobs {wide_msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        if tty {
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        Progress {
            bar,
            tty,
            running: BTreeMap::new(),
            note: String::new(),
            latest: String::new(),
            read_at: Instant::now(),
        }
    }

    fn refresh(&self) {
        if self.tty {
            let names: Vec<&str> = self.running.keys().map(String::as_str).collect();
            self.bar
                .set_message(message(&names, &self.note, &self.latest));
        }
    }

    /// A job started, writing its log to `log`.
    pub fn started(&mut self, id: &str, log: &Path) {
        self.running.insert(id.to_string(), log.to_path_buf());
        self.latest.clear();
        self.refresh();
    }

    /// While jobs run: on a terminal, when one job runs alone, shows the latest line of its log
    /// (a training's step, loss and time left) beside it, read at most once a second.
    pub fn tick(&mut self) {
        if !self.tty || self.running.len() != 1 || self.read_at.elapsed() < READ_EVERY {
            return;
        }
        self.read_at = Instant::now();
        if let Some(line) = self.running.values().next().and_then(|log| last_line(log)) {
            if line != self.latest {
                self.latest = line;
                self.refresh();
            }
        }
    }

    /// A job was found in the cache.
    pub fn cached(&mut self) {
        self.bar.inc(1);
    }

    /// A started job was taken back before it ran (the run stopped): it no longer shows.
    pub fn withdrawn(&mut self, id: &str) {
        self.running.remove(id);
        self.refresh();
    }

    /// A job ended; `what` is `ran` or `failed`.
    pub fn finished(&mut self, id: &str, what: &str, seconds: f64) {
        self.running.remove(id);
        self.latest.clear();
        self.bar.inc(1);
        if !self.tty {
            eprintln!("{what:>7} {id} ({seconds:.2} s)");
        } else {
            self.bar.println(format!("{what:>7} {id} ({seconds:.2} s)"));
        }
        self.refresh();
    }

    /// Sets a short note shown after the running jobs (e.g. Slurm's queue states).
    pub fn set_note(&mut self, note: &str) {
        if self.note != note {
            self.note = note.to_string();
            self.refresh();
        }
    }

    /// Whether the display is a live bar on a terminal (else one line per event).
    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// Prints a line above the bar.
    pub fn println(&self, line: &str) {
        if self.tty {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The bar's message: the running jobs (four at most), the latest line of the one running job's
/// log, and a note.
fn message(running: &[&str], note: &str, latest: &str) -> String {
    let mut names: Vec<&str> = running.iter().copied().take(4).collect();
    if running.len() > 4 {
        names.push("...");
    }
    let mut text = format!("running: {}", names.join(", "));
    if running.len() == 1 && !latest.is_empty() {
        // `pretrain: step 10/622 ...` beside `running: pretrain` needs no second `pretrain:`.
        let word = latest.split_once(": ").filter(|(w, _)| {
            !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        });
        text.push_str(&format!(" | {}", word.map_or(latest, |(_, rest)| rest)));
    }
    if !note.is_empty() {
        text.push_str(&format!(" [{note}]"));
    }
    text
}

/// The last line of `log` with something in it, other than flora's own `---` lines (read from
/// its last 4 KiB).
fn last_line(log: &Path) -> Option<String> {
    let mut file = std::fs::File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    // A progress bar of the job's own redraws its line with carriage returns.
    text.lines()
        .rev()
        .filter_map(|l| l.rsplit('\r').map(str::trim).find(|part| !part.is_empty()))
        .find(|l| !l.starts_with("---"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_the_latest_log_line_of_a_lone_job() {
        assert_eq!(
            message(&["pretrain"], "", "pretrain: step 10/20 loss 6.1"),
            "running: pretrain | step 10/20 loss 6.1"
        );
        assert_eq!(
            message(&["fan[x]"], "", "Loading: 10% done"),
            "running: fan[x] | Loading: 10% done"
        );
        assert_eq!(
            message(&["a", "b"], "slurm: 2 running", "ignored"),
            "running: a, b [slurm: 2 running]"
        );
        assert_eq!(
            message(&["a", "b", "c", "d", "e"], "", ""),
            "running: a, b, c, d, ..."
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("job.log");
        assert_eq!(last_line(&log), None);
        std::fs::write(&log, "--- flora 0.1.0: job pretrain\n--- key abc\n").unwrap();
        assert_eq!(last_line(&log), None);
        std::fs::write(
            &log,
            "--- key abc\nflora: CPU threads: 2\nstep 1\nstep 2\n\n",
        )
        .unwrap();
        assert_eq!(last_line(&log).as_deref(), Some("step 2"));
        std::fs::write(&log, "step 2\n 10%\r 20%\r").unwrap();
        assert_eq!(last_line(&log).as_deref(), Some("20%"));
        // Only the end of a long log is read.
        let long = format!("{}\nlast\n", "x".repeat(100_000));
        std::fs::write(&log, long).unwrap();
        assert_eq!(last_line(&log).as_deref(), Some("last"));
    }
}
