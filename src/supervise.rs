//! An `exec` job's program runs as a child of its job process (`flora __job`), which passes the
//! signals that stop a job on to everything the program started, and then ends as the program
//! ended.
//!
//! The job process could replace itself with the program instead, but then the signal Linux
//! sends it when the driver dies (SIGKILL, the OOM killer) would reach the program alone, and a
//! shell's children would live on, writing into the cache. Here the job process takes that
//! signal (or the driver's SIGTERM, or a SIGHUP) and sends it to the program's process group,
//! then SIGKILL after [`GRACE`] if the group is still there.

use std::process::{Command, ExitStatus};

use anyhow::Context as _;

use crate::executor::local::GRACE;

/// The signals that stop a job.
const STOP: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Runs `cmd` to its end, passing stop signals on to it; returns only if it could not start.
/// Otherwise the process ends with the program's exit status, or by the signal that ended it.
pub fn run(mut cmd: Command, program: &str) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let stop = stop_set();
    // Block the stop signals in this thread before any other thread starts, so that every
    // thread inherits the mask and only the forwarder takes them; the program starts with
    // them unblocked again (a child inherits the mask).
    // SAFETY: plain calls on a sigset_t that lives on this stack; in the child, between fork
    // and exec, pthread_sigmask is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &stop, std::ptr::null_mut());
        cmd.pre_exec(move || {
            match libc::pthread_sigmask(libc::SIG_UNBLOCK, &stop, std::ptr::null_mut()) {
                0 => Ok(()),
                error => Err(std::io::Error::from_raw_os_error(error)),
            }
        });
    }
    // The local executor makes each job process a group leader: the program stays in its
    // group, so the driver's own SIGTERM and SIGKILL to the group reach it too. Elsewhere (a
    // batch script's group) the program gets a group of its own.
    let own_group = current_group();
    let leader = own_group == std::process::id();
    if !leader {
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("exec: cannot start `{program}`"))?;
    let group = if leader { own_group } else { child.id() };
    std::thread::spawn(move || forward(stop, group));
    let status = child
        .wait()
        .with_context(|| format!("exec: lost track of `{program}`"))?;
    end_as(status)
}

/// The stop signals as a signal set.
fn stop_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset reads it.
    #[allow(unsafe_code)]
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for signal in STOP {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// This process's group id.
fn current_group() -> u32 {
    // SAFETY: getpgrp takes nothing and cannot fail.
    #[allow(unsafe_code)]
    let group = unsafe { libc::getpgrp() };
    u32::try_from(group).unwrap_or(0)
}

/// Waits for a stop signal and sends it to `group`, then SIGKILL after [`GRACE`]. Later signals
/// (this process gets its own copy when it leads the group) change nothing.
fn forward(stop: libc::sigset_t, group: u32) {
    let Ok(group) = libc::pid_t::try_from(group) else {
        return;
    };
    let mut forwarded = false;
    loop {
        let mut signal = 0;
        // SAFETY: sigwait reads the set and writes one int, both on this stack.
        #[allow(unsafe_code)]
        let waited = unsafe { libc::sigwait(&stop, &mut signal) };
        if waited != 0 || forwarded {
            continue;
        }
        forwarded = true;
        tracing::debug!("passing signal {signal} on to the program's process group {group}");
        // SAFETY: killpg takes plain integers.
        #[allow(unsafe_code)]
        unsafe {
            libc::killpg(group, signal);
        }
        std::thread::spawn(move || {
            std::thread::sleep(GRACE);
            // SAFETY: as above.
            #[allow(unsafe_code)]
            unsafe {
                libc::killpg(group, libc::SIGKILL);
            }
        });
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
