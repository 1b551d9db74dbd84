//! The reaper: one small process per local run that stops the run's `exec` programs should the
//! driver die without stopping them (SIGKILL, the OOM killer).
//!
//! Locally, an `exec` job's program is started by the driver itself, in a process group of its
//! own, without a `flora __job` process between them (that process cost more than the program
//! in a run of small steps). Linux's parent-death signal would reach the program alone and leave
//! what a shell started running, so instead the driver tells the reaper (`flora __reaper`, its
//! child, in a group of its own so that a Ctrl-C at the terminal does not end it) each group it
//! starts and each that ended, one line on the reaper's stdin (`+PGID`, `-PGID`). When that pipe
//! closes, the driver is gone: the reaper sends SIGTERM to every group still listed, then SIGKILL
//! to those still there after [`GRACE`], as the driver's own Ctrl-C does.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Instant;

use super::local::GRACE;

/// The driver's end: a pipe to the reaper.
pub struct Reaper {
    to_reaper: Option<ChildStdin>,
    process: Child,
}

impl Reaper {
    /// Starts `exe __reaper`.
    pub fn start(exe: &Path) -> std::io::Result<Reaper> {
        use std::os::unix::process::CommandExt;
        let mut process = Command::new(exe)
            .arg("__reaper")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        let to_reaper = process.stdin.take();
        Ok(Reaper { to_reaper, process })
    }

    /// Asks the reaper to stop process group `pgid` should the driver die.
    pub fn watch(&mut self, pgid: u32) -> std::io::Result<()> {
        self.say(&format!("+{pgid}"))
    }

    /// The group `pgid` ended (its leader did): the reaper forgets it.
    pub fn forget(&mut self, pgid: u32) -> std::io::Result<()> {
        self.say(&format!("-{pgid}"))
    }

    fn say(&mut self, line: &str) -> std::io::Result<()> {
        match &mut self.to_reaper {
            Some(pipe) => writeln!(pipe, "{line}"),
            None => Ok(()),
        }
    }
}

impl Drop for Reaper {
    /// Closes the pipe (the run is over, and its groups with it) and collects the reaper.
    fn drop(&mut self) {
        drop(self.to_reaper.take());
        let _ = self.process.wait();
    }
}

/// The body of `flora __reaper`: reads the driver's lines until the pipe closes, then stops
/// every group still listed.
pub fn serve() -> std::io::Result<()> {
    let mut groups = BTreeSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        apply(&mut groups, &line);
    }
    stop(&groups);
    Ok(())
}

/// Takes one of the driver's lines into `groups`: `+PGID` adds a group, `-PGID` removes one;
/// anything else, and groups 0 and 1 (to killpg: this process's own group, and init), change
/// nothing.
fn apply(groups: &mut BTreeSet<libc::pid_t>, line: &str) {
    let group = |sign| {
        line.strip_prefix(sign)
            .and_then(|g| g.parse::<libc::pid_t>().ok())
    };
    if let Some(pgid) = group('+') {
        if pgid > 1 {
            groups.insert(pgid);
        }
    } else if let Some(pgid) = group('-') {
        groups.remove(&pgid);
    }
}

/// SIGTERM to each group, then SIGKILL to those still there after [`GRACE`].
fn stop(groups: &BTreeSet<libc::pid_t>) {
    let mut left: Vec<_> = groups
        .iter()
        .copied()
        .filter(|&g| signal(g, libc::SIGTERM))
        .collect();
    let since = Instant::now();
    while !left.is_empty() && since.elapsed() < GRACE {
        std::thread::sleep(std::time::Duration::from_millis(100));
        left.retain(|&g| signal(g, 0));
    }
    for g in left {
        signal(g, libc::SIGKILL);
    }
}

/// Sends `sig` to group `pgid` (0: only checks); whether the group still exists.
fn signal(pgid: libc::pid_t, sig: libc::c_int) -> bool {
    // SAFETY: killpg takes plain integers and touches no memory of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::killpg(pgid, sig) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_s_lines_add_and_remove_groups() {
        let mut groups = BTreeSet::new();
        for line in [
            "+120", "+77", "-120", "+1", "+0", "+-5", "-", "77", "é+9", "+ 9", "",
        ] {
            apply(&mut groups, line);
        }
        assert_eq!(groups.into_iter().collect::<Vec<_>>(), vec![77]);
    }
}
