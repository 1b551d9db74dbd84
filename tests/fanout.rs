//! `foreach` fan-outs: one job per item, item references, and whole-fan-out inputs.

use crate::util::{state_of, Project};

const FANOUT: &str = r#"
vars:
  species:
    - {name: ath, chroms: 5}
    - {name: zma, chroms: 10}
    - {name: osa, chroms: 12}
stages:
  genome:
    kind: exec
    foreach: ${vars.species}
    params: {argv: [sh, -c, "echo ${item.name} ${item.chroms} > $FLORA_OUT/info"]}
  size:
    kind: exec
    foreach: [ath, zma]
    inputs: {g: "genome[${item}]"}
    params: {argv: [sh, -c, "cut -d' ' -f2 $FLORA_IN_g/info > $FLORA_OUT/n"]}
  table:
    kind: exec
    inputs: {all: genome}
    params: {argv: [sh, -c, "cat $FLORA_IN_all/*/info | sort > $FLORA_OUT/table"]}
  one:
    kind: exec
    inputs: {info: "genome[osa]/info"}
    params: {argv: [sh, -c, "cp $FLORA_IN_info $FLORA_OUT/osa"]}
"#;

#[test]
fn fan_out_runs_one_job_per_item_and_gathers_them() {
    let p = Project::new();
    p.write("wf.yaml", FANOUT);
    let out = p.ok(&["run", "wf.yaml"]);
    for job in [
        "genome[ath]",
        "genome[zma]",
        "genome[osa]",
        "size[ath]",
        "size[zma]",
        "table",
        "one",
    ] {
        assert_eq!(state_of(&out, job), "ran", "{job}\n{out}");
    }
    assert_eq!(p.read("results/wf/table/table"), "ath 5\nosa 12\nzma 10\n");
    assert_eq!(p.read("results/wf/size/zma/n"), "10\n");
    assert_eq!(p.read("results/wf/genome/osa/info"), "osa 12\n");
    assert_eq!(p.read("results/wf/one/osa"), "osa 12\n");
    assert!(p.path("results/wf/genome/ath.log").exists());
}

#[test]
fn adding_an_item_runs_only_the_new_job_and_the_gatherer() {
    let p = Project::new();
    p.write("wf.yaml", FANOUT);
    p.ok(&["run", "wf.yaml"]);
    p.write(
        "wf.yaml",
        &FANOUT.replace(
            "    - {name: osa, chroms: 12}\n",
            "    - {name: osa, chroms: 12}\n    - {name: sbi, chroms: 10}\n",
        ),
    );
    let out = p.ok(&["run", "wf.yaml"]);
    assert_eq!(state_of(&out, "genome[sbi]"), "ran");
    assert_eq!(state_of(&out, "genome[ath]"), "cached");
    assert_eq!(state_of(&out, "size[ath]"), "cached");
    assert_eq!(state_of(&out, "table"), "ran");
    assert_eq!(state_of(&out, "one"), "cached");
    assert_eq!(
        p.read("results/wf/table/table"),
        "ath 5\nosa 12\nsbi 10\nzma 10\n"
    );
}

#[test]
fn until_and_force_accept_single_jobs_of_a_fan_out() {
    let p = Project::new();
    p.write("wf.yaml", FANOUT);
    let out = p.ok(&["run", "wf.yaml", "--until", "size[zma]"]);
    let jobs: Vec<String> = crate::util::Project::run_states(&out)
        .into_iter()
        .map(|(j, _)| j)
        .collect();
    assert_eq!(jobs, ["genome[zma]", "size[zma]"]);
    let out = p.ok(&["run", "wf.yaml", "--force", "genome[zma]"]);
    assert_eq!(state_of(&out, "genome[zma]"), "ran");
    assert_eq!(
        state_of(&out, "size[zma]"),
        "cached",
        "same output: early cutoff"
    );
}

/// Result links replace only what flora made: links, and a folder of links (a stage that no
/// longer fans out). A file or folder of the user's in the way is refused by name before
/// anything runs, and kept; it was deleted before.
#[test]
fn result_links_never_replace_the_users_files() {
    let p = Project::new();
    p.write("wf.yaml", FANOUT);
    let in_the_way = [
        ("results/wf/table/notes.txt", "results/wf/table"),
        ("results/wf/table.log", "results/wf/table.log"),
        ("results/wf/genome/zma", "results/wf/genome/zma"),
        (
            "results/wf/genome/ath.log/mine.txt",
            "results/wf/genome/ath.log",
        ),
    ];
    for (file, named) in in_the_way {
        p.write(file, "precious\n");
        let e = p.fails(&["run", "wf.yaml"], 2);
        assert!(
            e.contains(&format!(
                "{named} is in the way of a result link and flora did not make it"
            )),
            "{file}: {e}"
        );
        assert_eq!(p.read(file), "precious\n", "{file} was kept");
        assert!(!p.path("cache/artifacts").exists(), "nothing ran");
        std::fs::remove_file(p.path(file)).unwrap();
        let parent = p.path(file).parent().unwrap().to_path_buf();
        let _ = std::fs::remove_dir(&parent);
    }
    std::fs::remove_dir_all(p.path("results")).unwrap();
    p.write("results/wf", "a file\n");
    let e = p.fails(&["run", "wf.yaml"], 2);
    assert!(
        e.contains("results/wf is where the results are linked, but it is not a folder"),
        "{e}"
    );
    std::fs::remove_file(p.path("results/wf")).unwrap();
    p.ok(&["run", "wf.yaml"]);
    // A stage that stops fanning out replaces its folder of links with one link.
    p.write(
        "wf.yaml",
        &FANOUT.replace(
            "    foreach: [ath, zma]\n    inputs: {g: \"genome[${item}]\"}",
            "    inputs: {g: \"genome[ath]\"}",
        ),
    );
    p.ok(&["run", "wf.yaml"]);
    assert_eq!(p.read("results/wf/size/n"), "5\n");
}
