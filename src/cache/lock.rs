//! The cache lock: one driving `flora` per cache at a time, so the sled index has one writer.
//!
//! An advisory lock (flock) on `<cache>/lock`. The holder writes its pid and command there so that
//! a second `flora` can say who it is waiting for. The operating system releases the lock when the
//! holder exits, even by SIGKILL, so a crash never leaves the cache locked.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Whether to wait for a busy cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Block until the other `flora` is done (with a message).
    Block,
    /// Fail at once.
    NoWait,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it and `--no-wait` was given.
    #[error("the cache {path} is in use by another flora ({holder}); wait for it, or run without --no-wait to queue behind it")]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as it wrote itself down.
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock the cache at {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A held cache lock; released when dropped or when the process ends.
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// Takes the lock on `root/lock`; `on_wait` is told who holds it before blocking.
    pub fn acquire(root: &Path, wait: Wait, on_wait: impl FnOnce(&str)) -> Result<Self, LockError> {
        let path = root.join("lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "unknown process".to_string(),
                    h => h.to_string(),
                };
                match wait {
                    Wait::NoWait => return Err(LockError::Busy { path, holder }),
                    Wait::Block => {
                        on_wait(&holder);
                        file.lock().map_err(io)?;
                    }
                }
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let me = format!(
            "pid {}: {}",
            std::process::id(),
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(me.as_bytes()).map_err(io)?;
        Ok(CacheLock { _file: file })
    }
}
