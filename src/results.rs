//! `results/<workflow>/<stage>`: links to each stage's artifact (and `<stage>.log` to its log), so
//! users find outputs without knowing digests. A fan-out stage is a folder with one link per item.
//!
//! Only what flora made there is ever replaced: links, and folders that hold nothing but links (a
//! stage that used to fan out). A file or folder of the user's in the way is refused, before
//! the run starts ([`check`]), rather than deleted.

use std::io;
use std::path::{Path, PathBuf};

use crate::dag::JobGraph;
use crate::scheduler::JobReport;

/// The paths under `dir` that [`link`] would write for `graph`'s stages.
fn paths(dir: &Path, graph: &JobGraph) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    for stage in &graph.stages {
        let here = dir.join(&stage.name);
        if stage.foreach {
            for &j in &stage.jobs {
                let item = graph.jobs[j].item.clone().unwrap_or_default();
                out.push((here.join(&item), false));
                out.push((here.join(format!("{item}.log")), false));
            }
        } else {
            out.push((dir.join(format!("{}.log", stage.name)), false));
        }
        out.push((here, stage.foreach));
    }
    out
}

/// Whether flora may replace `path`: nothing there, a link, or a folder of links only.
fn replaceable(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Err(_) => true,
        Ok(m) if m.file_type().is_symlink() => true,
        Ok(m) if m.is_dir() => std::fs::read_dir(path).is_ok_and(|entries| {
            entries
                .flatten()
                .all(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        }),
        Ok(_) => false,
    }
}

/// Checks, before a run, that linking its results into `dir` replaces nothing flora did not
/// make; names the first file or folder in the way.
pub fn check(dir: &Path, graph: &JobGraph) -> Result<(), String> {
    if std::fs::symlink_metadata(dir).is_ok_and(|_| !dir.is_dir()) {
        return Err(format!(
            "{} is where the results are linked, but it is not a folder; move it, or pass \
             --results DIR",
            dir.display()
        ));
    }
    for (path, folder_of_links) in paths(dir, graph) {
        let fine = if folder_of_links {
            // A fan-out stage's folder: its item links are checked one by one.
            std::fs::symlink_metadata(&path).map_or(true, |m| m.is_dir() || m.is_symlink())
        } else {
            replaceable(&path)
        };
        if !fine {
            return Err(format!(
                "{} is in the way of a result link and flora did not make it; move it, or pass \
                 --results DIR to link the results elsewhere",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Points `dir/<stage>` at the artifacts of the jobs that finished.
pub fn link(
    dir: &Path,
    graph: &JobGraph,
    reports: &[JobReport],
    cache_root: &Path,
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let artifacts = cache_root.join("artifacts");
    for stage in &graph.stages {
        let target = |j: usize| reports[j].artifact.map(|d| artifacts.join(d.to_hex()));
        let here = dir.join(&stage.name);
        if stage.foreach {
            if here.is_symlink() {
                std::fs::remove_file(&here)?;
            }
            std::fs::create_dir_all(&here)?;
            let mut keep = std::collections::HashSet::new();
            for &j in &stage.jobs {
                let item = graph.jobs[j].item.clone().unwrap_or_default();
                if let Some(t) = target(j) {
                    set_link(&here.join(&item), &t)?;
                    keep.insert(item.clone());
                }
                if let Some(log) = reports[j].log.as_ref().filter(|l| l.exists()) {
                    set_link(&here.join(format!("{item}.log")), log)?;
                    keep.insert(format!("{item}.log"));
                }
            }
            for e in std::fs::read_dir(&here)?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) && e.path().is_symlink() {
                    std::fs::remove_file(e.path())?;
                }
            }
        } else if let Some(&j) = stage.jobs.first() {
            if here.is_dir() && !here.is_symlink() && replaceable(&here) {
                std::fs::remove_dir_all(&here)?;
            }
            if let Some(t) = target(j) {
                set_link(&here, &t)?;
            }
            if let Some(log) = reports[j].log.as_ref().filter(|l| l.exists()) {
                set_link(&dir.join(format!("{}.log", stage.name)), log)?;
            }
        }
    }
    Ok(())
}

/// Makes `link` point at `target`, replacing any old link atomically; leaves it if already right.
fn set_link(link: &Path, target: &Path) -> io::Result<()> {
    if std::fs::read_link(link).ok().as_deref() == Some(target) {
        return Ok(());
    }
    if !replaceable(link) {
        return Err(io::Error::other(format!(
            "{} is in the way and flora did not make it",
            link.display()
        )));
    }
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = link.with_file_name(format!(".{name}.flora-tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}
