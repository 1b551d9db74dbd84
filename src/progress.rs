//! What the user sees while a run goes on: a progress bar on a terminal, one line per finished job
//! otherwise (logs, CI).

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The run's live display.
pub struct Progress {
    bar: ProgressBar,
    tty: bool,
    running: BTreeSet<String>,
    note: String,
}

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
                "{elapsed_precise} [{bar:30}] {pos}/{len} jobs {wide_msg}",
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
            running: BTreeSet::new(),
            note: String::new(),
        }
    }

    fn refresh(&self) {
        if self.tty {
            let mut names: Vec<&str> = self.running.iter().map(String::as_str).take(4).collect();
            if self.running.len() > 4 {
                names.push("...");
            }
            let note = if self.note.is_empty() {
                String::new()
            } else {
                format!(" [{}]", self.note)
            };
            self.bar
                .set_message(format!("running: {}{note}", names.join(", ")));
        }
    }

    /// A job started.
    pub fn started(&mut self, id: &str) {
        self.running.insert(id.to_string());
        self.refresh();
    }

    /// A job was found in the cache.
    pub fn cached(&mut self) {
        self.bar.inc(1);
    }

    /// A job ended; `what` is `ran` or `failed`.
    pub fn finished(&mut self, id: &str, what: &str, seconds: f64) {
        self.running.remove(id);
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
