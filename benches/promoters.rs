//! Promoter extraction: flora against `bedtools flank -s` + `bedtools getfasta -s`, on the same
//! inputs, checking that both give the same sequences.
//!
//! ```sh
//! cargo bench --bench promoters                 # A. thaliana chr1 (needs FLORA_SHARED_DATA) + 2 Gb generated
//! PROMOTER_BENCH_GB=0.2 cargo bench --bench promoters   # a smaller generated genome
//! ```
//! flora's side runs with the environment flora gives its jobs. Needs `bedtools` on PATH (Debian: `apt-get install bedtools`). With `bgzip` too (Debian:
//! `tabix`), it also times bedtools piped into `bgzip -l 1 -@ 2`, which writes the same kind of
//! file as flora (a bgzip FASTA) where bedtools alone writes plain text.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use flora_stages::genomics::promoters;

/// Each tool runs this many times, the two alternating so that both see the same machine; the
/// fastest run of each counts (the page cache is warm for both).
const RUNS: usize = 5;

struct Case {
    name: String,
    fasta: PathBuf,
    gff: PathBuf,
}

fn main() {
    // flora runs every built-in job with flora::executor::JOB_TUNING in its environment.
    flora::executor::rerun_tuned().unwrap();
    if Command::new("bedtools").arg("--version").output().is_err() {
        eprintln!("bedtools is not installed (apt-get install bedtools): nothing to compare with");
        std::process::exit(1);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/promoters");
    std::fs::create_dir_all(&root).unwrap();
    let mut cases = Vec::new();
    match std::env::var_os("FLORA_SHARED_DATA").map(PathBuf::from) {
        Some(data) if data.join("athaliana_chr1").is_dir() => {
            let dir = data.join("athaliana_chr1");
            let plain = root.join("athaliana_chr1.fa");
            if !plain.exists() {
                let mut r = flora_stages::genomics::io::open_text(
                    &dir.join("AthaTAIR10_chr1_GCF_000001735.4_TAIR10.1_genomic.fna.gz"),
                )
                .unwrap();
                std::io::copy(&mut r, &mut std::fs::File::create(&plain).unwrap()).unwrap();
            }
            cases.push(Case {
                name: "A. thaliana chr1 (30 Mb)".into(),
                fasta: plain,
                gff: dir.join("AthaTAIR10_chr1.gff.gz"),
            });
        }
        _ => eprintln!("SKIPPED the A. thaliana case: FLORA_SHARED_DATA is not set"),
    }
    let gb: f64 = std::env::var("PROMOTER_BENCH_GB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let generated = root.join(format!("generated_{gb}gb"));
    generate(&generated, (gb * 1e9) as u64, 40_000);
    cases.push(Case {
        name: format!("generated {gb} Gb, 40,000 genes"),
        fasta: generated.join("genome.fa"),
        gff: generated.join("genes.gff3"),
    });

    let bgzip = Command::new("bgzip").arg("--version").output().is_ok();
    if !bgzip {
        eprintln!("bgzip is not installed (apt-get install tabix): no bedtools | bgzip column");
    }
    println!("| input | promoters | flora (bgzip FASTA) | bedtools flank + getfasta (plain FASTA) | speed-up | bedtools + bgzip -l 1 -@ 2 | speed-up | identical |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for case in &cases {
        let (n, flora_s, bed_s, same) = compare(case, &root, false);
        let zipped = if bgzip {
            let (_, flora_z, bed_z, _) = compare(case, &root, true);
            format!("{bed_z:.2} s | {:.1}x", bed_z / flora_z)
        } else {
            "- | -".into()
        };
        println!(
            "| {} | {n} | {flora_s:.2} s | {bed_s:.2} s | {:.1}x | {zipped} | {same} |",
            case.name,
            bed_s / flora_s
        );
    }
}

/// Times flora and bedtools on one case (bedtools' output piped through bgzip when `zip`).
fn compare(case: &Case, root: &Path, zip: bool) -> (usize, f64, f64, String) {
    let work = root.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    // Both tools read the same plain FASTA with the same .fai; build it once, outside the timings.
    let prepared =
        flora_stages::genomics::fasta::Genome::prepare(&case.fasta, &work.join("idx")).unwrap();
    let params = promoters::Params {
        edge: promoters::Edge::Keep,
        species: Some("bench".into()),
        ..promoters::Params::default()
    };

    // flora: read the GFF3, extract, write bgzip FASTA + TSV.
    let out = work.join("flora");
    std::fs::create_dir_all(&out).unwrap();
    let mut proms = Vec::new();
    let mut run_flora = || {
        let t = Instant::now();
        let (found, summary) =
            promoters::extract(&params, &prepared, &case.gff, &work.join("w")).unwrap();
        promoters::write(&out, &found, &summary).unwrap();
        let s = t.elapsed().as_secs_f64();
        proms = found;
        s
    };

    // bedtools: the same inputs (the GFF3 and the FASTA). The genome sizes file is made outside
    // the timing; turning the GFF3's protein-coding genes into BED6 (what a user pipes in front of
    // bedtools) is timed with it.
    let sizes = work.join("genome.sizes");
    let fai = std::fs::read_to_string(format!("{}.fai", prepared.display())).unwrap();
    std::fs::write(
        &sizes,
        fai.lines()
            .map(|l| l.split('\t').take(2).collect::<Vec<_>>().join("\t") + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let bed_out = work.join("bedtools.fa");
    let script = format!(
        "{cat} {gff} | awk -F'\\t' -v OFS='\\t' '$3 == \"gene\" && $9 ~ /biotype=protein_coding/ {{ \
           match($9, /ID=[^;]*/); id = substr($9, RSTART + 3, RLENGTH - 3); sub(/^gene[:-]/, \"\", id); \
           print $1, $4 - 1, $5, id, 0, $7 }}' \
         | bedtools flank -s -l 1000 -r 0 -i - -g {sizes} | bedtools getfasta -s -nameOnly -fi {fasta} -bed - {sink}",
        cat = if case.gff.extension().is_some_and(|e| e == "gz") { "zcat" } else { "cat" },
        gff = case.gff.display(),
        sizes = sizes.display(),
        fasta = prepared.display(),
        sink = if zip {
            format!("| bgzip -l 1 -@ 2 > {}.gz", bed_out.display())
        } else {
            format!("-fo {}", bed_out.display())
        }
    );
    let run_bedtools = || {
        let t = Instant::now();
        let status = Command::new("sh").arg("-c").arg(&script).status().unwrap();
        assert!(status.success(), "bedtools failed");
        t.elapsed().as_secs_f64()
    };

    let (mut flora_s, mut bed_s) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..RUNS {
        flora_s = flora_s.min(run_flora());
        bed_s = bed_s.min(run_bedtools());
    }

    if zip {
        let status = Command::new("bgzip")
            .args(["-d", "-f"])
            .arg(format!("{}.gz", bed_out.display()))
            .status()
            .unwrap();
        assert!(status.success(), "bgzip -d failed");
    }

    // Same sequences?
    let text = std::fs::read_to_string(&bed_out).unwrap();
    let mut theirs: HashMap<String, String> = HashMap::new();
    let mut lines = text.lines();
    while let (Some(h), Some(s)) = (lines.next(), lines.next()) {
        let name = h
            .trim_start_matches('>')
            .split('(')
            .next()
            .unwrap()
            .to_string();
        theirs.insert(name, s.to_ascii_uppercase());
    }
    let mut differ = 0;
    for p in &proms {
        match theirs.get(&p.gene_id) {
            Some(s) if s.as_bytes() == p.seq.as_slice() => {}
            _ => differ += 1,
        }
    }
    let same = if differ == 0 && theirs.len() == proms.len() {
        format!("yes, all {}", proms.len())
    } else {
        format!(
            "NO: {differ} of {} differ ({} from bedtools)",
            proms.len(),
            theirs.len()
        )
    };
    (proms.len(), flora_s, bed_s, same)
}

/// Writes a random genome of `bases` bases in 10 contigs (plain FASTA + .fai) and a GFF3 with
/// `genes` protein-coding genes on both strands; skipped when already there.
fn generate(dir: &Path, bases: u64, genes: usize) {
    let fasta = dir.join("genome.fa");
    if fasta.exists() && dir.join("genes.gff3").exists() {
        return;
    }
    std::fs::create_dir_all(dir).unwrap();
    let mut state: u64 = 0x9E3779B97F4A7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let contigs = 10u64;
    let per = bases / contigs;
    let mut fa = BufWriter::with_capacity(1 << 22, std::fs::File::create(&fasta).unwrap());
    let mut fai = String::new();
    let mut offset = 0u64;
    let mut line = [0u8; 61];
    line[60] = b'\n';
    for c in 0..contigs {
        let header = format!(">chr{}\n", c + 1);
        fa.write_all(header.as_bytes()).unwrap();
        offset += header.len() as u64;
        fai.push_str(&format!("chr{}\t{per}\t{offset}\t60\t61\n", c + 1));
        let mut left = per;
        while left > 0 {
            let n = left.min(60) as usize;
            for chunk in line[..n].chunks_mut(32) {
                let mut r = next();
                for b in chunk {
                    *b = b"ACGT"[(r & 3) as usize];
                    r >>= 2;
                }
            }
            fa.write_all(&line[..n]).unwrap();
            fa.write_all(b"\n").unwrap();
            offset += n as u64 + 1;
            left -= n as u64;
        }
    }
    fa.flush().unwrap();
    std::fs::write(format!("{}.fai", fasta.display()), fai).unwrap();
    let mut gff = BufWriter::new(std::fs::File::create(dir.join("genes.gff3")).unwrap());
    writeln!(gff, "##gff-version 3").unwrap();
    let per_contig = genes as u64 / contigs;
    for c in 0..contigs {
        let mut starts: Vec<u64> = (0..per_contig)
            .map(|_| 2000 + next() % (per - 10_000))
            .collect();
        starts.sort_unstable();
        for (i, s) in starts.iter().enumerate() {
            let len = 1000 + next() % 4000;
            let strand = if next() % 2 == 0 { '+' } else { '-' };
            writeln!(
                gff,
                "chr{}\tbench\tgene\t{s}\t{}\t.\t{strand}\t.\tID=gene-G{}_{i};gene_biotype=protein_coding",
                c + 1,
                s + len,
                c + 1
            )
            .unwrap();
        }
    }
    gff.flush().unwrap();
}
