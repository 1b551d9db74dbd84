//! How fast training goes and how long it has left, for the progress lines of `pretrain` and
//! `finetune` (stderr only: the artifacts stay the same bytes from run to run).

use std::time::{Duration, Instant};

/// The pace of a training run since it started (or resumed).
#[derive(Debug, Clone)]
pub struct Pace {
    start: Instant,
    first_step: u64,
    total: u64,
}

impl Pace {
    /// Starts timing at `step` (0, or the checkpoint's step) of `total`.
    pub fn start(step: u64, total: u64) -> Pace {
        Pace {
            start: Instant::now(),
            first_step: step,
            total,
        }
    }

    /// `about 3m 10s left, 1m 02s so far, 1,234 tokens/s` after `step`, with `tokens` processed
    /// since the start (none given: no rate of tokens).
    pub fn line(&self, step: u64, tokens: Option<u64>) -> String {
        self.line_after(self.start.elapsed(), step, tokens)
    }

    fn line_after(&self, elapsed: Duration, step: u64, tokens: Option<u64>) -> String {
        let done = step.saturating_sub(self.first_step);
        let seconds = elapsed.as_secs_f64();
        // Time left first: a terminal's progress bar shows the start of the line.
        let mut parts = Vec::new();
        if done > 0 && step < self.total {
            let left = seconds / done as f64 * (self.total - step) as f64;
            parts.push(format!("about {} left", clock(left)));
        }
        parts.push(format!("{} so far", clock(seconds)));
        if let Some(t) = tokens.filter(|_| seconds > 0.0) {
            parts.push(format!("{} tokens/s", thousands(t as f64 / seconds)));
        }
        parts.join(", ")
    }
}

/// `3,456` (rounded to a whole number).
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `45s`, `3m 10s`, `2h 05m`.
pub fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_time_so_far_and_time_left() {
        let pace = Pace::start(100, 700);
        // 200 steps (100 to 300) in 50 s: 400 left take 100 s.
        let line = pace.line_after(Duration::from_secs(50), 300, Some(1_234_567));
        assert_eq!(line, "about 1m 40s left, 50s so far, 24,691 tokens/s");
        assert_eq!(
            pace.line_after(Duration::from_secs(7300), 700, None),
            "2h 01m so far"
        );
        // Nothing done yet: no estimate.
        assert_eq!(
            pace.line_after(Duration::from_millis(10), 100, Some(0)),
            "0s so far, 0 tokens/s"
        );
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(clock(3599.0), "59m 59s");
    }
}
