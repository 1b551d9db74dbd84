//! Fetching files over http(s), from `file://` URLs and local paths: streamed to disk, resumed
//! with HTTP Range after an interruption, retried with exponential backoff.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server answered with an error status (404 and the like are not retried).
    #[error("{url}: HTTP {status}{hint}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// A hint for common statuses.
        hint: &'static str,
    },
    /// The transfer kept failing.
    #[error("{url}: {message} (after {attempts} attempts)")]
    Failed {
        /// The URL.
        url: String,
        /// The last error.
        message: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A local file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Where a file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An http or https URL.
    Http(String),
    /// A local file (from a path or a `file://` URL).
    File(PathBuf),
}

impl Location {
    /// Parses a URL or a path; relative paths are read against `base`.
    pub fn parse(s: &str, base: &Path) -> Location {
        if s.starts_with("http://") || s.starts_with("https://") {
            Location::Http(s.to_string())
        } else if let Some(p) = s.strip_prefix("file://") {
            Location::File(PathBuf::from(p))
        } else {
            Location::File(base.join(s))
        }
    }

    /// The last path segment (the file's name).
    pub fn file_name(&self) -> String {
        let s = match self {
            Location::Http(u) => u.split(['?', '#']).next().unwrap_or(u).to_string(),
            Location::File(p) => p.display().to_string(),
        };
        s.trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// Joins a name onto a folder location.
    pub fn join(&self, name: &str) -> Location {
        match self {
            Location::Http(u) => Location::Http(format!("{}/{}", u.trim_end_matches('/'), name)),
            Location::File(p) => Location::File(p.join(name)),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Http(u) => f.write_str(u),
            Location::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A downloader with retry settings.
pub struct Fetcher {
    agent: ureq::Agent,
    retries: u32,
    backoff: Duration,
    progress: bool,
}

enum Attempt {
    Done,
    Retry(String),
}

impl Fetcher {
    /// A fetcher that gives up on a stalled read after `timeout`, and retries `retries` times.
    pub fn new(timeout: Duration, retries: u32, backoff: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeout))
            .timeout_per_read(Some(timeout))
            .user_agent(concat!("flora/", env!("CARGO_PKG_VERSION")))
            .build();
        Fetcher {
            agent: config.into(),
            retries,
            backoff,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    /// Reads a small text file (a directory listing, a checksum list).
    pub fn text(&self, loc: &Location) -> Result<String, FetchError> {
        let dir = tempfile_path();
        let r = self.download(loc, &dir).and_then(|_| {
            std::fs::read_to_string(&dir).map_err(|e| FetchError::Io {
                path: dir.clone(),
                message: e.to_string(),
            })
        });
        let _ = std::fs::remove_file(&dir);
        let _ = std::fs::remove_file(part_path(&dir));
        r
    }

    /// The names in a folder: an HTML directory listing, or a local folder (sub-folders end in `/`).
    pub fn list(&self, loc: &Location) -> Result<Vec<String>, FetchError> {
        match loc {
            Location::Http(url) => {
                let url = format!("{}/", url.trim_end_matches('/'));
                Ok(listing(&self.text(&Location::Http(url))?))
            }
            Location::File(dir) => {
                let mut names: Vec<String> = std::fs::read_dir(dir)
                    .map_err(|e| FetchError::Io {
                        path: dir.clone(),
                        message: e.to_string(),
                    })?
                    .filter_map(|e| e.ok())
                    .map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        if e.path().is_dir() {
                            format!("{n}/")
                        } else {
                            n
                        }
                    })
                    .collect();
                names.sort();
                Ok(names)
            }
        }
    }

    /// Downloads `loc` to `dest`, resuming from `dest.part` if an earlier attempt left one.
    pub fn download(&self, loc: &Location, dest: &Path) -> Result<u64, FetchError> {
        let io = |path: &Path, e: std::io::Error| FetchError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        match loc {
            Location::File(src) => {
                if !src.is_file() {
                    return Err(FetchError::Io {
                        path: src.clone(),
                        message: "no such file".into(),
                    });
                }
                std::fs::copy(src, dest).map_err(|e| io(src, e))
            }
            Location::Http(url) => {
                let part = part_path(dest);
                let mut last = String::new();
                for attempt in 0..=self.retries {
                    if attempt > 0 {
                        let wait = self.backoff * 2u32.saturating_pow(attempt - 1);
                        eprintln!(
                            "download: {url}: {last}; retry {attempt} of {} in {wait:?}",
                            self.retries
                        );
                        std::thread::sleep(wait.min(Duration::from_secs(60)));
                    }
                    match self.attempt(url, &part)? {
                        Attempt::Done => {
                            std::fs::rename(&part, dest).map_err(|e| io(dest, e))?;
                            return Ok(std::fs::metadata(dest).map_err(|e| io(dest, e))?.len());
                        }
                        Attempt::Retry(why) => last = why,
                    }
                }
                Err(FetchError::Failed {
                    url: url.clone(),
                    message: last,
                    attempts: self.retries + 1,
                })
            }
        }
    }

    /// One try: fetch the rest of the file after what `part` already holds.
    fn attempt(&self, url: &str, part: &Path) -> Result<Attempt, FetchError> {
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let mut req = self.agent.get(url);
        if have > 0 {
            req = req.header("Range", format!("bytes={have}-"));
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::Retry(e.to_string())),
        };
        let status = resp.status().as_u16();
        let append = match status {
            206 => true,
            200 => false,
            416 if have > 0 => {
                // The part file already holds everything (or is corrupt): start again.
                let _ = std::fs::remove_file(part);
                return Ok(Attempt::Retry(
                    "range not satisfiable; starting over".into(),
                ));
            }
            500..=599 | 408 | 429 => return Ok(Attempt::Retry(format!("HTTP {status}"))),
            _ => {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status,
                    hint: match status {
                        404 => " (not found: check the species, release or accession)",
                        401 | 403 => " (access denied)",
                        _ => "",
                    },
                })
            }
        };
        let total = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(part)
            .map_err(|e| FetchError::Io {
                path: part.to_path_buf(),
                message: e.to_string(),
            })?;
        let bar = if self.progress {
            let b = indicatif::ProgressBar::new(
                total
                    .map(|t| t + if append { have } else { 0 })
                    .unwrap_or(0),
            );
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} {bytes}/{total_bytes} {bytes_per_sec} {bar:30}",
                )
                .expect("valid template"),
            );
            b.set_message(url.rsplit('/').next().unwrap_or(url).to_string());
            b.set_position(if append { have } else { 0 });
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    bar.abandon();
                    return Ok(Attempt::Retry(format!(
                        "connection lost after {got} bytes: {e}"
                    )));
                }
            };
            file.write_all(&buf[..n]).map_err(|e| FetchError::Io {
                path: part.to_path_buf(),
                message: e.to_string(),
            })?;
            got += n as u64;
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        if let Some(t) = total {
            if got < t {
                return Ok(Attempt::Retry(format!(
                    "connection closed after {got} of {t} bytes"
                )));
            }
        }
        Ok(Attempt::Done)
    }
}

fn part_path(dest: &Path) -> PathBuf {
    PathBuf::from(format!("{}.part", dest.display()))
}

fn tempfile_path() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "flora-fetch-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The file names linked from an HTML directory listing (`href="name"`), folders with a trailing `/`.
pub fn listing(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find("href=\"") {
        rest = &rest[i + 6..];
        let Some(end) = rest.find('"') else { break };
        let target = &rest[..end];
        rest = &rest[end..];
        if target.starts_with('?')
            || target.starts_with('/')
            || target.starts_with("..")
            || target.contains("://")
        {
            continue;
        }
        let name = target.trim_start_matches("./");
        if !name.is_empty() && !out.iter().any(|x| x == name) {
            out.push(name.to_string());
        }
    }
    out
}
