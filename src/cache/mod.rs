//! The content-addressed cache and its sled index.
//!
//! # What goes into a job's key
//!
//! | part | why |
//! | --- | --- |
//! | the stage kind's name and version | a new version of a kind may compute something else |
//! | the params, type-checked, defaults filled in, as canonical JSON (keys sorted) | a param edit re-runs the job |
//! | each input's name and *content* digest | a changed input re-runs the job; an unchanged one does not, whoever made it |
//!
//! What stays out: the stage's name and `foreach` item, paths, mtimes, `resources`, the executor,
//! and the upstream *keys* (only their artifacts' digests count, which gives early cutoff: a job
//! that re-runs and produces the same bytes leaves its dependents cached).
//!
//! # Layout
//!
//! ```text
//! <cache>/lock                  held by the driving flora (see `lock`)
//! <cache>/index/                sled: keys -> records, job history, artifact metadata, file memos
//! <cache>/artifacts/<digest>/   published outputs, named by the blake3 of their content, read-only
//! <cache>/scratch/              where running jobs write; published by rename only after success
//! <cache>/work/<key>/           per-key folders for checkpoints; survive a crash, removed on success
//!                               (or by `cache gc` once no kept workflow has the key)
//! <cache>/logs/<key>.log        each job's output
//! <cache>/collections/<digest>/ one folder per fan-out input: links to its items' artifacts
//! <cache>/running/<key>.json    the jobs running now, for `flora log` during a run (`running`)
//! ```
//!
//! A job killed mid-write leaves only a scratch folder, which the next run deletes: nothing
//! half-written is ever found under `artifacts/`.

pub mod gc;
pub mod key;
pub mod lock;
pub mod log_header;
pub mod records;
pub mod running;
pub mod verify;

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::hash::{self, Digest};
pub use lock::Wait;
use records::{ArtifactRecord, FileMemo, JobRecord, LastRun};

/// An open cache: the lock is held for as long as this lives.
pub struct Cache {
    /// The cache's root folder.
    pub root: PathBuf,
    jobs: sled::Tree,
    history: sled::Tree,
    artifacts: sled::Tree,
    files: sled::Tree,
    db: sled::Db,
    scratch_seq: AtomicU64,
    // Declared last so that it is dropped last: the index is closed before the lock is released.
    _lock: lock::CacheLock,
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

/// The history's key of `job` in `workflow`: the workflow's path, a NUL, the job id.
fn history_key(workflow: &Path, job: &str) -> Vec<u8> {
    let mut k = workflow.as_os_str().as_encoded_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(job.as_bytes());
    k
}

/// A file's modification time in nanoseconds since the epoch, as its memo keeps it.
fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

impl FileMemo {
    /// Whether the memo was taken of the file as `meta` shows it now (size, mtime, inode).
    fn describes(&self, meta: &std::fs::Metadata) -> bool {
        self.size == meta.len() && self.mtime_ns == mtime_ns(meta) && self.ino == meta.ino()
    }
}

/// The workflow file and job id a history key names.
fn split_history_key(k: &[u8]) -> (&Path, String) {
    let mut parts = k.splitn(2, |b| *b == 0);
    let workflow = path_of_bytes(parts.next().unwrap_or_default());
    let job = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    (workflow, job)
}

/// A path the index holds as `OsStr::as_encoded_bytes` (on Unix, any bytes are a path).
fn path_of_bytes(bytes: &[u8]) -> &Path {
    Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes))
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Cache {
    /// Opens (creating it if needed) the cache at `root`, taking its lock.
    pub fn open(root: &Path, wait: Wait) -> anyhow::Result<Cache> {
        for sub in [
            "artifacts",
            "scratch",
            "work",
            "logs",
            "collections",
            running::FOLDER,
        ] {
            std::fs::create_dir_all(root.join(sub)).with_context(|| {
                format!(
                    "cannot create the cache folder {}",
                    root.join(sub).display()
                )
            })?;
        }
        let root = std::fs::canonicalize(root)?;
        let lock = lock::CacheLock::acquire(&root, wait, |holder| {
            eprintln!(
                "flora: waiting for the cache {} (in use by {holder}) ...",
                root.display()
            );
        })?;
        let db = open_index(&root.join("index"))?;
        let cache = Cache {
            jobs: db.open_tree("jobs")?,
            history: db.open_tree("history")?,
            artifacts: db.open_tree("artifacts")?,
            files: db.open_tree("files")?,
            db,
            root,
            _lock: lock,
            scratch_seq: AtomicU64::new(0),
        };
        cache.clean_scratch();
        running::clear(&cache.root);
        Ok(cache)
    }

    /// Removes what crashed runs left in `scratch/` (we hold the lock: nothing of ours is live).
    fn clean_scratch(&self) {
        if let Ok(entries) = std::fs::read_dir(self.root.join("scratch")) {
            for e in entries.flatten() {
                let p = e.path();
                make_writable(&p);
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }

    /// The folder of the artifact `digest`.
    pub fn artifact_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("artifacts").join(digest.to_hex())
    }

    /// The persistent work folder of `key`.
    pub fn work_path(&self, key: &Digest) -> PathBuf {
        self.root.join("work").join(key.to_hex())
    }

    /// The log file of `key`.
    pub fn log_path(&self, key: &Digest) -> PathBuf {
        self.root.join("logs").join(format!("{}.log", key.to_hex()))
    }

    /// A fresh, empty scratch folder for a job, with a sibling path for its spec file.
    pub fn new_scratch(&self, key: &Digest) -> io::Result<PathBuf> {
        let n = self.scratch_seq.fetch_add(1, Ordering::Relaxed);
        let p =
            self.root
                .join("scratch")
                .join(format!("{}-{}-{n}", key.short(), std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }

    /// The record of `key`, if its artifact is still in the store.
    pub fn lookup(&self, key: &Digest) -> Option<JobRecord> {
        let rec: JobRecord = parse(&self.jobs.get(key.0).ok()??)?;
        self.artifact_path(&rec.artifact).is_dir().then_some(rec)
    }

    /// The record of `key`, even when its artifact is gone.
    pub fn record_of(&self, key: &Digest) -> Option<JobRecord> {
        parse(&self.jobs.get(key.0).ok()??)
    }

    /// Hashes a finished scratch folder and moves it into the store, atomically.
    pub fn publish(&self, scratch: &Path) -> io::Result<Digest> {
        // One walk serves the digest, the size and the permissions.
        let entries = hash::walk(scratch)?;
        let digest = hash::hash_entries(&entries, hash::hash_file)?;
        let dest = self.artifact_path(&digest);
        if dest.is_dir() {
            // The same bytes are already published (early cutoff, or a shared result).
            make_writable(scratch);
            std::fs::remove_dir_all(scratch)?;
        } else {
            let size = hash::entries_size(&entries);
            make_read_only(&entries)?;
            if let Err(e) = std::fs::rename(scratch, &dest) {
                if !dest.is_dir() {
                    return Err(e);
                }
                make_writable(scratch);
                std::fs::remove_dir_all(scratch)?;
            }
            self.artifacts
                .insert(
                    digest.0,
                    json(&ArtifactRecord {
                        size,
                        created: now_secs(),
                    }),
                )
                .map_err(io::Error::other)?;
        }
        Ok(digest)
    }

    /// Records a finished job.
    pub fn record(&self, rec: &JobRecord) -> anyhow::Result<()> {
        self.jobs.insert(rec.key.0, json(rec))?;
        Ok(())
    }

    /// The last run of `job` in `workflow`.
    pub fn last_run(&self, workflow: &Path, job: &str) -> Option<LastRun> {
        parse(&self.history.get(history_key(workflow, job)).ok()??)
    }

    /// Remembers the last run of `job` in `workflow` (written only when it changed).
    pub fn set_last_run(&self, workflow: &Path, job: &str, last: &LastRun) -> anyhow::Result<()> {
        let k = history_key(workflow, job);
        if self.last_run(workflow, job).as_ref() != Some(last) {
            self.history.insert(k, json(last))?;
        }
        Ok(())
    }

    /// For each key, the jobs (workflow file, job id) whose last run was under it.
    pub fn last_runs_by_key(&self) -> std::collections::HashMap<Digest, Vec<(PathBuf, String)>> {
        let mut by_key: std::collections::HashMap<Digest, Vec<(PathBuf, String)>> =
            Default::default();
        for (k, v) in self.history.iter().flatten() {
            if let Some(last) = parse::<LastRun>(&v) {
                let (workflow, job) = split_history_key(&k);
                by_key
                    .entry(last.key)
                    .or_default()
                    .push((workflow.to_path_buf(), job));
            }
        }
        by_key
    }

    /// Metadata of an artifact.
    pub fn artifact_record(&self, digest: &Digest) -> Option<ArtifactRecord> {
        parse(&self.artifacts.get(digest.0).ok()??)
    }

    /// Every job record.
    pub fn all_jobs(&self) -> impl Iterator<Item = JobRecord> + '_ {
        self.jobs
            .iter()
            .filter_map(|kv| kv.ok().and_then(|(_, v)| parse(&v)))
    }

    /// Writes the index to disk.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// The content digest of an external file or folder, memoised by (path, size, mtime, inode).
    pub fn input_digest(&self, path: &Path) -> io::Result<Digest> {
        let meta = std::fs::metadata(path)?;
        if meta.is_dir() {
            hash::hash_tree_with(path, |p| self.file_digest(p))
        } else {
            self.file_digest(path)
        }
    }

    fn file_digest(&self, path: &Path) -> io::Result<Digest> {
        let meta = std::fs::metadata(path)?;
        let mtime_ns = mtime_ns(&meta);
        let key = path.as_os_str().as_encoded_bytes();
        if let Some(m) = self
            .files
            .get(key)
            .ok()
            .flatten()
            .and_then(|v| parse::<FileMemo>(&v))
        {
            if m.describes(&meta) {
                tracing::trace!("{}: unchanged since it was hashed", path.display());
                return Ok(m.digest);
            }
        }
        let hashing = std::time::Instant::now();
        let digest = hash::hash_file(path)?;
        tracing::debug!(
            "hashed {} ({} bytes) in {:.2?}: {}",
            path.display(),
            meta.len(),
            hashing.elapsed(),
            digest.short()
        );
        // A file changed within the clock's granularity of now could change again unseen with the
        // same mtime: do not trust the memo for it yet (git's "racy clean" rule).
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        if now_ns - mtime_ns > 2_000_000_000 {
            let memo = FileMemo {
                size: meta.len(),
                mtime_ns,
                ino: meta.ino(),
                digest,
            };
            let _ = self.files.insert(key, json(&memo));
        }
        Ok(digest)
    }

    /// A folder holding one link per item to that item's artifact (the input of a stage that reads
    /// a whole fan-out); built once per distinct set of artifacts.
    pub fn collection(&self, items: &[(String, Digest)]) -> io::Result<(PathBuf, Digest)> {
        let digest = key::collection_digest(items);
        let dir = self.root.join("collections").join(digest.to_hex());
        if !dir.is_dir() {
            let tmp = self.new_scratch(&digest)?;
            for (item, d) in items {
                std::os::unix::fs::symlink(
                    Path::new("../../artifacts").join(d.to_hex()),
                    tmp.join(item),
                )?;
            }
            if std::fs::rename(&tmp, &dir).is_err() && !dir.is_dir() {
                return Err(io::Error::other(format!("cannot create {}", dir.display())));
            }
        }
        Ok((dir, digest))
    }

    pub(crate) fn trees(&self) -> (&sled::Tree, &sled::Tree, &sled::Tree) {
        (&self.jobs, &self.artifacts, &self.history)
    }
}

/// Opens the sled index. The previous holder of the cache lock may still be closing it as it exits,
/// so a busy index is retried for a few seconds.
fn open_index(path: &Path) -> anyhow::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(64 << 20)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if (e.kind() == io::ErrorKind::WouldBlock || e.to_string().contains("lock"))
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot open the cache index {}", path.display()))
            }
        }
    }
}

/// Removes write permission from every file among `entries` (artifacts are immutable).
fn make_read_only(entries: &[hash::TreeEntry]) -> io::Result<()> {
    for e in entries {
        if let hash::EntryKind::File { .. } = e.kind {
            let meta = std::fs::metadata(&e.path)?;
            let mut perm = meta.permissions();
            perm.set_mode(perm.mode() & !0o222);
            std::fs::set_permissions(&e.path, perm)?;
        }
    }
    Ok(())
}

/// Gives the owner write permission on every folder below `dir`, so that it can be removed.
pub(crate) fn make_writable(dir: &Path) {
    if let Ok(entries) = hash::walk(dir) {
        for e in entries {
            if e.kind == hash::EntryKind::Dir {
                if let Ok(meta) = std::fs::metadata(&e.path) {
                    let mut perm = meta.permissions();
                    perm.set_mode(perm.mode() | 0o700);
                    let _ = std::fs::set_permissions(&e.path, perm);
                }
            }
        }
    }
}
