//! The host memory a job can still take, and byte counts as people read them.
//!
//! A training step whose tensors cannot fit is refused before it starts, with a message that
//! names the sizes: Rust aborts a process whose allocation fails, and the kernel kills one that
//! overcommits, so neither would leave a readable error.

use std::path::Path;

/// The bytes this process can still allocate: the kernel's `MemAvailable`, or less where a cgroup
/// (a container, a Slurm job's `--mem`) caps the process below it. `None` where neither is known
/// (not Linux).
pub fn available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| mem_available(&t));
    let cgroup = cgroup_headroom(Path::new("/sys/fs/cgroup"), "/proc/self/cgroup");
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What the cgroup v2 of this process (named in `self_cgroup`, under `root`) still lets it take:
/// `memory.max` less `memory.current`, the tightest over the group and its parents. `None` where
/// no group sets a limit.
fn cgroup_headroom(root: &Path, self_cgroup: &str) -> Option<u64> {
    let text = std::fs::read_to_string(self_cgroup).ok()?;
    // cgroup v2 is the line `0::/path`.
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut dir = root.join(path.trim_start_matches('/'));
    let mut tightest: Option<u64> = None;
    loop {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        if let (Some(max), Some(current)) = (read("memory.max"), read("memory.current")) {
            if let (Ok(max), Ok(current)) =
                (max.trim().parse::<u64>(), current.trim().parse::<u64>())
            {
                let left = max.saturating_sub(current);
                tightest = Some(tightest.map_or(left, |t| t.min(left)));
            }
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            return tightest;
        }
    }
}

/// `bytes` in binary units, one decimal: `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(mem_available(text), Some(20_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn a_cgroup_limit_is_the_tightest_of_the_group_and_its_parents() {
        let dir = std::env::temp_dir().join(format!("flora-cgroup-{}", std::process::id()));
        let job = dir.join("slurm/job_7");
        std::fs::create_dir_all(&job).unwrap();
        let self_cgroup = dir.join("self");
        std::fs::write(&self_cgroup, "0::/slurm/job_7\n").unwrap();
        // The job's own group has no limit; its parent allows 8 GiB and uses 3.
        std::fs::write(job.join("memory.max"), "max\n").unwrap();
        std::fs::write(job.join("memory.current"), "1000\n").unwrap();
        std::fs::write(dir.join("slurm/memory.max"), "8589934592\n").unwrap();
        std::fs::write(dir.join("slurm/memory.current"), "3221225472\n").unwrap();
        let got = cgroup_headroom(&dir, self_cgroup.to_str().unwrap());
        assert_eq!(got, Some(5 * 1024 * 1024 * 1024));
        // A tighter limit on the job itself wins.
        std::fs::write(job.join("memory.max"), "4096\n").unwrap();
        let got = cgroup_headroom(&dir, self_cgroup.to_str().unwrap());
        assert_eq!(got, Some(3096));
        // cgroup v1 only (no `0::` line): unknown.
        std::fs::write(&self_cgroup, "4:memory:/x\n").unwrap();
        assert_eq!(cgroup_headroom(&dir, self_cgroup.to_str().unwrap()), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn this_machine_reports_some_memory() {
        if cfg!(target_os = "linux") {
            assert!(available().is_some_and(|b| b > 1 << 20));
        }
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(human(1_920_000_000_000), "1.7 TiB");
    }
}
