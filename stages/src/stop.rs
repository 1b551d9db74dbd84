//! A stop asked of a long stage by SIGTERM, the signal a run sends its jobs when it stops
//! (Ctrl-C, a failure elsewhere) and Slurm sends a job at its time limit.
//!
//! By default SIGTERM ends the process, as it always did. While a [`StopOnSignal`] lives (a
//! training loop), the first SIGTERM only sets a flag that the loop reads between steps, so it
//! can save a checkpoint and end cleanly instead of losing the steps since the last one; a
//! second SIGTERM ends the process at once.
//!
//! The flags are the process's, so a test that raised SIGTERM would stop every training loop of
//! its test binary: the binary's integration tests send it to a real job instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use signal_hook::consts::SIGTERM;

/// The process-wide flags that the SIGTERM actions read and write.
struct Flags {
    /// True outside training loops, and after a first SIGTERM in one: the next SIGTERM then
    /// ends the process.
    end_now: Arc<AtomicBool>,
    /// Set by a SIGTERM: a stop is asked.
    stop: Arc<AtomicBool>,
    /// How many [`StopOnSignal`]s live.
    holders: Mutex<usize>,
}

/// Registers the actions once: the default action when `end_now` is set, then the stop flag,
/// then `end_now` (actions run in the order registered).
fn flags() -> Result<&'static Flags, String> {
    static FLAGS: OnceLock<Result<Flags, String>> = OnceLock::new();
    FLAGS
        .get_or_init(|| {
            let flags = Flags {
                end_now: Arc::new(AtomicBool::new(true)),
                stop: Arc::new(AtomicBool::new(false)),
                holders: Mutex::new(0),
            };
            let register = || -> std::io::Result<()> {
                signal_hook::flag::register_conditional_default(SIGTERM, flags.end_now.clone())?;
                signal_hook::flag::register(SIGTERM, flags.stop.clone())?;
                signal_hook::flag::register(SIGTERM, flags.end_now.clone())?;
                Ok(())
            };
            register()
                .map(|()| flags)
                .map_err(|e| format!("cannot handle SIGTERM: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// While it lives, a first SIGTERM asks for a stop instead of ending the process.
pub struct StopOnSignal {
    flags: &'static Flags,
}

impl StopOnSignal {
    /// Starts taking SIGTERM as a request to stop.
    pub fn install() -> Result<StopOnSignal, String> {
        let flags = flags()?;
        let mut holders = flags.holders.lock().unwrap_or_else(|e| e.into_inner());
        if *holders == 0 {
            flags.stop.store(false, Ordering::SeqCst);
            flags.end_now.store(false, Ordering::SeqCst);
        }
        *holders += 1;
        Ok(StopOnSignal { flags })
    }

    /// Whether a SIGTERM has asked for a stop.
    pub fn requested(&self) -> bool {
        self.flags.stop.load(Ordering::SeqCst)
    }
}

impl Drop for StopOnSignal {
    fn drop(&mut self) {
        let mut holders = self.flags.holders.lock().unwrap_or_else(|e| e.into_inner());
        *holders -= 1;
        if *holders == 0 {
            // SIGTERM ends the process again. One that came after the loop's last look is not
            // acted on: what follows the loop only writes the stage's output, and the run that
            // sent it throws that away.
            self.flags.end_now.store(true, Ordering::SeqCst);
        }
    }
}
