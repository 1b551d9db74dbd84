//! On a cluster node an `exec` job's program runs as a child of its job process (`flora
//! __job`), which passes the signals that stop a job on to everything the program started, and
//! then ends as the program ended. (The local executor starts the program itself; its reaper
//! does this job there.)
//!
//! The job process could replace itself with the program instead, but then the signal Linux
//! sends it when the driver dies (SIGKILL, the OOM killer) would reach the program alone, and a
//! shell's children would live on, writing into the cache. Here the job process takes that
//! signal (or the driver's SIGTERM, or a SIGHUP) and sends it to the program's process group,
//! then SIGKILL after [`GRACE`] if the group is still there.

use std::process::{Command, ExitStatus};

use anyhow::Context as _;
use signal_hook::iterator::Signals;

use crate::executor::local::GRACE;

/// The signals that stop a job.
const STOP: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Runs `cmd` to its end, passing stop signals on to it; returns only if it could not start.
/// Otherwise the process ends with the program's exit status, or by the signal that ended it.
pub fn run(mut cmd: Command, program: &str) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    // From here on a stop signal is written to a pipe (signal-hook's handler) instead of ending
    // this process; the forwarder reads it once the program has started, so one that comes
    // before is passed on too. The program starts with every signal at its default: exec
    // resets handlers, and nothing is blocked. No hook runs between fork and exec, so the
    // standard library starts the program with posix_spawn.
    let stops = Signals::new(STOP).context("exec: cannot take the stop signals")?;
    // The program gets a process group of its own, for the forwarder to stop it and everything
    // it started together.
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("exec: cannot start `{program}`"))?;
    let group = child.id();
    std::thread::spawn(move || forward(stops, group));
    let status = child
        .wait()
        .with_context(|| format!("exec: lost track of `{program}`"))?;
    end_as(status)
}

/// Waits for a stop signal and sends it to `group`, then SIGKILL after [`GRACE`]. Later signals
/// change nothing.
fn forward(mut stops: Signals, group: u32) {
    let Ok(group) = libc::pid_t::try_from(group) else {
        return;
    };
    let Some(signal) = stops.forever().next() else {
        return;
    };
    tracing::debug!("passing signal {signal} on to the program's process group {group}");
    // SAFETY: killpg takes plain integers.
    #[allow(unsafe_code)]
    unsafe {
        libc::killpg(group, signal);
    }
    std::thread::sleep(GRACE);
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe {
        libc::killpg(group, libc::SIGKILL);
    }
}

/// Ends this process as the program ended: with its exit code, or killed by its signal (without
/// a core file of flora's own).
fn end_as(status: ExitStatus) -> ! {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        std::process::exit(code);
    }
    let signal = status.signal().unwrap_or(libc::SIGKILL);
    // SAFETY: plain calls with integers and structs on this stack; the process is meant to end
    // here.
    #[allow(unsafe_code)]
    unsafe {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(signal, libc::SIG_DFL);
        let mut only = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut only);
        libc::sigaddset(&mut only, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
        libc::raise(signal);
    }
    // A signal whose default is not to end a process cannot have ended the program.
    std::process::exit(128 + signal)
}
