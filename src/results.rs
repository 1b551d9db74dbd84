//! `results/<workflow>/<stage>`: links to each stage's artifact (and `<stage>.log` to its log), so
//! users find outputs without knowing digests. A fan-out stage is a folder with one link per item.

use std::io;
use std::path::Path;

use crate::dag::JobGraph;
use crate::scheduler::JobReport;

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
            if here.is_symlink() || here.is_file() {
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
            if here.is_dir() && !here.is_symlink() {
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
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = link.with_file_name(format!(".{name}.flora-tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}
