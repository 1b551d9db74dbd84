use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use super::*;

#[path = "tests/server.rs"]
mod server;
use server::{Fault, Server};

const FASTA: &str = ">chr1 test\nACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTACGTACGT\nACGTACGTAC\n>chr2\nGGGGCCCCAAAATTTT\n";
const GFF: &str =
    "##gff-version 3\nchr1\tt\tgene\t20\t40\t.\t+\t.\tID=gene:G1;biotype=protein_coding\n";

fn gzip(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

fn md5(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, bytes).unwrap();
    match checksum::compute(&p, &Expected::Md5(String::new())).unwrap() {
        Expected::Md5(h) => h,
        _ => unreachable!(),
    }
}

fn sum(bytes: &[u8]) -> (u16, u64) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, bytes).unwrap();
    match checksum::compute(&p, &Expected::BsdSum(0, 0)).unwrap() {
        Expected::BsdSum(s, b) => (s, b),
        _ => unreachable!(),
    }
}

fn put(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn ctx(dir: &Path) -> Context {
    let c = Context::new(dir.join("out"), dir.join("work"), dir.to_path_buf());
    std::fs::create_dir_all(&c.out).unwrap();
    c
}

fn quick(p: Params) -> Params {
    Params {
        backoff_s: 0.01,
        timeout_s: 2,
        ..p
    }
}

fn assert_artifact(out: &Path) {
    for f in [
        "genome.fa.gz",
        "genome.fa.gz.fai",
        "genome.fa.gz.gzi",
        "genes.gff3.gz",
        "source.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        compression(&out.join("genome.fa.gz")).unwrap(),
        Compression::Bgzip
    );
    let g = Genome::open(&out.join("genome.fa.gz")).unwrap();
    assert_eq!(g.fetch("chr2", 4, 8).unwrap(), b"CCCC");
}

#[test]
fn urls_with_checksums_resume_after_a_dropped_connection() {
    let site = tempfile::tempdir().unwrap();
    let fa = gzip(FASTA);
    put(site.path(), "g/genome.fa.gz", &fa);
    put(site.path(), "g/genes.gff3", GFF.as_bytes());
    let faults = HashMap::from([("/g/genome.fa.gz".to_string(), Fault::DropAfter(40, 1))]);
    let srv = Server::start(site.path().to_path_buf(), faults);
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(dir.path());
    let p = quick(Params {
        fasta: Some(format!("{}/g/genome.fa.gz", srv.url)),
        gff: Some(format!("{}/g/genes.gff3", srv.url)),
        fasta_checksum: Some(format!("md5:{}", md5(&fa))),
        ..Params::default()
    });
    let prov = run(&p, &c).unwrap();
    assert_artifact(&c.out);
    assert_eq!(prov.fasta_verified, Some(format!("md5 {}", md5(&fa))));
    assert_eq!(prov.gff_verified, None);
    let log = srv.log.lock().unwrap().clone();
    assert!(
        log.contains(&"GET /g/genome.fa.gz from 40".to_string()),
        "resumed with Range: {log:?}"
    );
}

#[test]
fn wrong_checksum_404_and_timeout_fail_clearly() {
    let site = tempfile::tempdir().unwrap();
    put(site.path(), "g/genome.fa", FASTA.as_bytes());
    put(site.path(), "g/genes.gff3", GFF.as_bytes());
    let faults = HashMap::from([
        ("/g/hang.fa".to_string(), Fault::Hang),
        ("/g/flaky.fa".to_string(), Fault::Status(503)),
    ]);
    let srv = Server::start(site.path().to_path_buf(), faults);
    let base = |fasta: &str| {
        quick(Params {
            fasta: Some(format!("{}/g/{fasta}", srv.url)),
            gff: Some(format!("{}/g/genes.gff3", srv.url)),
            retries: 1,
            ..Params::default()
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let wrong = Params {
        fasta_checksum: Some(format!("sha256:{}", "0".repeat(64))),
        ..base("genome.fa")
    };
    let err = run(&wrong, &ctx(dir.path())).unwrap_err();
    assert!(
        err.contains("checksum mismatch: expected sha256 0000"),
        "{err}"
    );
    assert!(!dir.path().join("out/genome.fa.gz").exists());

    let dir = tempfile::tempdir().unwrap();
    let err = run(&base("missing.fa"), &ctx(dir.path())).unwrap_err();
    assert!(err.contains("missing.fa: HTTP 404 (not found"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let hang = Params {
        timeout_s: 1,
        retries: 0,
        ..base("hang.fa")
    };
    let err = run(&hang, &ctx(dir.path())).unwrap_err();
    assert!(
        err.contains("hang.fa") && err.contains("after 1 attempts"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let err = run(&base("flaky.fa"), &ctx(dir.path())).unwrap_err();
    assert!(err.contains("HTTP 503 (after 2 attempts)"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let bad = Params {
        fasta_checksum: Some("crc:1".into()),
        ..base("genome.fa")
    };
    assert!(run(&bad, &ctx(dir.path()))
        .unwrap_err()
        .contains("expected sha256:"));
    let dir = tempfile::tempdir().unwrap();
    let strict = Params {
        require_checksum: true,
        ..base("genome.fa")
    };
    assert!(run(&strict, &ctx(dir.path()))
        .unwrap_err()
        .contains("require_checksum"));

    // A FASTA with a name twice is refused before its index would drop the second record.
    put(
        site.path(),
        "g/twice.fa",
        format!("{FASTA}{FASTA}").as_bytes(),
    );
    let dir = tempfile::tempdir().unwrap();
    let err = run(&base("twice.fa"), &ctx(dir.path())).unwrap_err();
    assert!(
        err.contains("twice.fa: ") && err.contains("records 1 and 3 are both named `chr1`"),
        "{err}"
    );
}

#[test]
fn local_paths_and_file_urls() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "data/g.fa", FASTA.as_bytes());
    put(dir.path(), "data/g.gff3.gz", &gzip(GFF));
    let c = ctx(dir.path());
    let p = Params {
        fasta: Some("data/g.fa".into()),
        gff: Some(format!(
            "file://{}",
            dir.path().join("data/g.gff3.gz").display()
        )),
        ..Params::default()
    };
    run(&p, &c).unwrap();
    assert_artifact(&c.out);
    let dir2 = tempfile::tempdir().unwrap();
    let p = Params {
        fasta: Some("nowhere.fa".into()),
        gff: Some("data/g.gff3.gz".into()),
        ..Params::default()
    };
    assert!(run(&p, &ctx(dir2.path()))
        .unwrap_err()
        .contains("nowhere.fa: no such file"));
}

#[test]
fn named_sources_resolve_from_the_database_layouts() {
    let site = tempfile::tempdir().unwrap();
    let fa = gzip(FASTA);
    let gff = gzip(GFF);
    // Ensembl Plants, with BSD-sum CHECKSUMS files.
    let (s1, b1) = sum(&fa);
    let (s2, b2) = sum(&gff);
    put(
        site.path(),
        "plants/release-57/fasta/zea_mays/dna/Zea_mays.Zm-B73-REFERENCE-NAM-5.0.dna.toplevel.fa.gz",
        &fa,
    );
    put(site.path(), "plants/release-57/fasta/zea_mays/dna/Zea_mays.Zm-B73-REFERENCE-NAM-5.0.dna.chromosome.1.fa.gz", b"x");
    put(
        site.path(),
        "plants/release-57/fasta/zea_mays/dna/CHECKSUMS",
        format!("{s1} {b1} Zea_mays.Zm-B73-REFERENCE-NAM-5.0.dna.toplevel.fa.gz\n").as_bytes(),
    );
    put(
        site.path(),
        "plants/release-57/gff3/zea_mays/Zea_mays.Zm-B73-REFERENCE-NAM-5.0.57.gff3.gz",
        &gff,
    );
    put(
        site.path(),
        "plants/release-57/gff3/zea_mays/Zea_mays.Zm-B73-REFERENCE-NAM-5.0.57.chr.gff3.gz",
        b"x",
    );
    put(
        site.path(),
        "plants/release-57/gff3/zea_mays/CHECKSUMS",
        format!("{s2} {b2} Zea_mays.Zm-B73-REFERENCE-NAM-5.0.57.gff3.gz\n").as_bytes(),
    );
    // RefSeq, with md5checksums.txt.
    let asm = "genomes/all/GCF/000/001/735/GCF_000001735.4_TAIR10.1";
    put(
        site.path(),
        &format!("{asm}/GCF_000001735.4_TAIR10.1_genomic.fna.gz"),
        &fa,
    );
    put(
        site.path(),
        &format!("{asm}/GCF_000001735.4_TAIR10.1_genomic.gff.gz"),
        &gff,
    );
    put(site.path(), &format!("{asm}/md5checksums.txt"), format!("{}  ./GCF_000001735.4_TAIR10.1_genomic.fna.gz\n{}  ./GCF_000001735.4_TAIR10.1_genomic.gff.gz\n", md5(&fa), md5(&gff)).as_bytes());
    // MaizeGDB, with a .md5 beside the FASTA.
    put(
        site.path(),
        "maize/Zm-B97-REFERENCE-NAM-1.0/Zm-B97-REFERENCE-NAM-1.0.fa.gz",
        &fa,
    );
    put(
        site.path(),
        "maize/Zm-B97-REFERENCE-NAM-1.0/Zm-B97-REFERENCE-NAM-1.0.fa.gz.md5",
        format!("{}\n", md5(&fa)).as_bytes(),
    );
    put(
        site.path(),
        "maize/Zm-B97-REFERENCE-NAM-1.0/Zm-B97-REFERENCE-NAM-1.0_Zm00018ab.1.gff3.gz",
        &gff,
    );
    let srv = Server::start(site.path().to_path_buf(), HashMap::new());

    let cases = [
        Params {
            source: Source::EnsemblPlants,
            species: Some("zea_mays".into()),
            release: Some(57),
            base_url: Some(format!("{}/plants", srv.url)),
            ..Params::default()
        },
        Params {
            source: Source::Refseq,
            accession: Some("GCF_000001735.4".into()),
            base_url: Some(srv.url.clone()),
            ..Params::default()
        },
        Params {
            source: Source::Maizegdb,
            genome: Some("Zm-B97-REFERENCE-NAM-1.0".into()),
            base_url: Some(format!("{}/maize", srv.url)),
            ..Params::default()
        },
    ];
    for p in cases {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(dir.path());
        let prov = run(&quick(p.clone()), &c).unwrap_or_else(|e| panic!("{:?}: {e}", p.source));
        assert_artifact(&c.out);
        assert!(prov.fasta_verified.is_some(), "{:?}: {prov:?}", p.source);
    }
    // The same layouts through file:// work too, and a wrong release is a clear 404.
    let dir = tempfile::tempdir().unwrap();
    let p = Params {
        source: Source::EnsemblPlants,
        species: Some("zea_mays".into()),
        release: Some(58),
        base_url: Some(format!("{}/plants", srv.url)),
        ..Params::default()
    };
    let err = run(&quick(p), &ctx(dir.path())).unwrap_err();
    assert!(
        err.contains("release-58/fasta/zea_mays/dna/: HTTP 404"),
        "{err}"
    );
    let p = Params {
        source: Source::Refseq,
        accession: Some("GCF_1".into()),
        ..Params::default()
    };
    assert!(run(&p, &ctx(dir.path()))
        .unwrap_err()
        .contains("not of the form GCF_000001735.4"));
    let p = Params {
        source: Source::Maizegdb,
        genome: Some("Zm-B97-REFERENCE-NAM-1.0".into()),
        base_url: Some(format!("file://{}/maize", site.path().display())),
        ..Params::default()
    };
    let dir = tempfile::tempdir().unwrap();
    run(&p, &ctx(dir.path())).unwrap();
}
