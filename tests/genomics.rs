//! The genomics stage kinds through the real binary: `flora stage promoters` and workflows.

use crate::util::Project;

/// A small genome: two contigs of pseudo-random bases, and genes on both strands.
fn fixture(p: &Project) {
    let mut state: u64 = 42;
    let mut base = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        b"ACGT"[(state >> 33) as usize % 4] as char
    };
    let contig = |n: usize, base: &mut dyn FnMut() -> char| -> String {
        let s: String = (0..n).map(|_| base()).collect();
        s.as_bytes()
            .chunks(60)
            .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
            .collect()
    };
    let fa = format!(
        ">chrA\n{}>chrB\n{}",
        contig(5000, &mut base),
        contig(3000, &mut base)
    );
    p.write("genome/toy.fa", &fa);
    p.write(
        "genome/toy.gff3",
        "##gff-version 3
chrA\ttoy\tgene\t1201\t2000\t.\t+\t.\tID=gene:G1;biotype=protein_coding
chrA\ttoy\tgene\t2501\t3000\t.\t-\t.\tID=gene:G2;biotype=protein_coding
chrA\ttoy\tgene\t3001\t3500\t.\t+\t.\tID=gene:G3;biotype=lncRNA
chrB\ttoy\tgene\t100\t900\t.\t+\t.\tID=gene:G4;biotype=protein_coding
chrB\ttoy\tgene\t1500\t2500\t.\t-\t.\tID=gene:G5;biotype=protein_coding
",
    );
}

/// `n` FASTA records of `len` pseudo-random bases followed by `motif`, from `seed`.
fn random_promoters(seed: u64, n: usize, len: usize, motif: &str) -> String {
    let mut state = seed;
    (0..n)
        .map(|i| {
            let s: String = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ['A', 'C', 'G', 'T'][(state >> 33) as usize % 4]
                })
                .collect();
            format!(">p{i} toy\n{s}{motif}\n")
        })
        .collect()
}

fn read_gz(path: &std::path::Path) -> String {
    let mut s = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap()),
        &mut s,
    )
    .unwrap();
    s
}

#[test]
fn stage_promoters_writes_the_contract_files() {
    let p = Project::new();
    fixture(&p);
    let out = p.ok(&[
        "stage",
        "promoters",
        "--input",
        "fasta=genome/toy.fa",
        "--input",
        "gff=genome/toy.gff3",
        "--set",
        "upstream=1000",
        "--set",
        "avoid_overlap=false",
        "--out",
        "prom",
    ]);
    assert!(out.starts_with("ran promoters -> prom"), "{out}");
    let fa = read_gz(&p.path("prom/promoters.fa.gz"));
    let headers: Vec<&str> = fa.lines().filter(|l| l.starts_with('>')).collect();
    // G3 is lncRNA; G4 starts at 100 (window past the contig start); G5 ends 2500 + 1000 <= 3000.
    assert_eq!(
        headers,
        [">G1 toy chrA:201-1200(+)", ">G2 toy chrA:3001-4000(-)"]
    );
    let tsv = p.read("prom/promoters.tsv");
    assert!(
        tsv.starts_with("gene_id\tspecies\tchrom\tstrand\ttss\tstart\tend\tlength\tn_fraction\n"),
        "{tsv}"
    );
    assert!(
        tsv.contains("G1\ttoy\tchrA\t+\t1201\t201\t1200\t1000\t0.0000\n"),
        "{tsv}"
    );
    let summary: serde_json::Value = serde_json::from_str(&p.read("prom/summary.json")).unwrap();
    assert_eq!(summary["dropped"]["biotype lncRNA"], 1);
    assert_eq!(summary["dropped"]["window past contig end"], 2, "{summary}");
}

/// A genome whose lines differ in length within a record (concatenated pieces), which htslib's
/// faidx cannot index, gives the promoters of its evenly wrapped copy; the log says why it was
/// re-wrapped.
#[test]
fn a_genome_with_ragged_lines_gives_the_same_promoters() {
    let p = Project::new();
    fixture(&p);
    let even = p.read("genome/toy.fa");
    let mut ragged = String::new();
    for record in even.split_inclusive('>').filter(|r| *r != ">") {
        let (header, seq) = record.split_once('\n').unwrap();
        let seq: String = seq.chars().filter(|c| c.is_ascii_alphabetic()).collect();
        ragged.push_str(&format!(">{header}\n"));
        let mut at = 0;
        for width in [70, 13, 200].iter().cycle() {
            if at >= seq.len() {
                break;
            }
            let end = (at + width).min(seq.len());
            ragged.push_str(&format!("{}\n", &seq[at..end]));
            at = end;
        }
    }
    p.write("genome/ragged.fa", &ragged.replacen(">>", ">", 1));
    for (fasta, out) in [("genome/toy.fa", "even"), ("genome/ragged.fa", "ragged")] {
        p.ok(&[
            "stage",
            "promoters",
            "--input",
            &format!("fasta={fasta}"),
            "--input",
            "gff=genome/toy.gff3",
            "--out",
            out,
        ]);
    }
    let promoters = |out: &str| read_gz(&p.path(&format!("{out}/promoters.fa.gz")));
    assert!(promoters("even").contains(">G1 "), "{}", promoters("even"));
    assert_eq!(
        promoters("even").replace(" toy ", " "),
        promoters("ragged").replace(" ragged ", " ")
    );
    assert_eq!(
        p.logs_containing("its lines differ in length within a record")
            .len(),
        1
    );
}

/// The same genes as GTF (Ensembl's, with gene lines, and as assemblers write it, with
/// transcripts alone) give the same promoters as the GFF3.
#[test]
fn a_gtf_gives_the_same_promoters_as_the_gff3() {
    let p = Project::new();
    fixture(&p);
    let mut with_genes = String::new();
    let mut transcripts_only = String::new();
    for line in p.read("genome/toy.gff3").lines().skip(1) {
        let c: Vec<&str> = line.split('\t').collect();
        let id = c[8]
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("ID=gene:");
        let biotype = c[8].rsplit("biotype=").next().unwrap();
        let at = |ty: &str, attrs: &str| {
            format!(
                "{}\t{}\t{ty}\t{}\t{}\t.\t{}\t.\t{attrs}\n",
                c[0], c[1], c[3], c[4], c[6]
            )
        };
        with_genes.push_str(&at(
            "gene",
            &format!("gene_id \"{id}\"; gene_biotype \"{biotype}\";"),
        ));
        with_genes.push_str(&at(
            "transcript",
            &format!("gene_id \"{id}\"; transcript_id \"{id}.1\"; gene_biotype \"{biotype}\";"),
        ));
        transcripts_only.push_str(&at(
            "transcript",
            &format!("gene_id \"{id}\"; transcript_id \"{id}.1\"; gene_biotype \"{biotype}\";"),
        ));
        transcripts_only.push_str(&at(
            "exon",
            &format!("gene_id \"{id}\"; transcript_id \"{id}.1\";"),
        ));
    }
    p.write("genome/toy.gtf", &with_genes);
    p.write("genome/plain.gtf", &transcripts_only);
    for (gff, out) in [
        ("genome/toy.gff3", "gff3"),
        ("genome/toy.gtf", "gtf"),
        ("genome/plain.gtf", "plain"),
    ] {
        p.ok(&[
            "stage",
            "promoters",
            "--input",
            "fasta=genome/toy.fa",
            "--input",
            &format!("gff={gff}"),
            "--out",
            out,
        ]);
    }
    let table = |out: &str| p.read(&format!("{out}/promoters.tsv"));
    assert_eq!(table("gff3").lines().count(), 3, "{}", table("gff3"));
    assert_eq!(table("gtf"), table("gff3"));
    assert_eq!(table("plain"), table("gff3"));
    let fasta = |out: &str| read_gz(&p.path(&format!("{out}/promoters.fa.gz")));
    assert_eq!(fasta("gtf"), fasta("gff3"));
}

#[test]
fn promoters_in_a_workflow_with_bad_params_and_inputs() {
    let p = Project::new();
    fixture(&p);
    p.write(
        "wf.yaml",
        "stages:\n  prom:\n    kind: promoters\n    inputs: {fasta: genome/toy.fa, gff: genome/toy.gff3}\n    params: {upstream: 500, species: toy, feature: gene}\n",
    );
    p.ok(&["run", "wf.yaml"]);
    assert!(read_gz(&p.path("results/wf/prom/promoters.fa.gz"))
        .starts_with(">G1 toy chrA:701-1200(+)\n"));
    let err = p.fails(&["plan", "wf.yaml", "--set", "prom.upstream=-5"], 2);
    assert!(
        err.contains(
            "--set prom.upstream=-5: stage `prom`: invalid value: integer `-5`, expected u64"
        ),
        "{err}"
    );
    let err = p.fails(&["plan", "wf.yaml", "--set", "prom.feature=exon"], 2);
    assert!(
        err.contains("unknown variant `exon`, expected `gene` or `transcript`"),
        "{err}"
    );
    // A GFF3 whose contigs are not in the FASTA fails the job with a clear message.
    p.write(
        "genome/other.gff3",
        "chrZ\t.\tgene\t10\t20\t.\t+\t.\tID=x;biotype=protein_coding\n",
    );
    p.write(
        "bad.yaml",
        "stages:\n  prom:\n    kind: promoters\n    inputs: {fasta: genome/toy.fa, gff: genome/other.gff3}\n",
    );
    let err = p.fails(&["run", "bad.yaml"], 1);
    assert!(
        err.contains("none of the GFF3's sequence names (chrZ) is in the FASTA (chrA, chrB)"),
        "{err}"
    );
    // A malformed GFF3 line is named by file and line.
    p.write("genome/broken.gff3", "##gff-version 3\nchrA\t.\tgene\t10\n");
    p.write(
        "broken.yaml",
        "stages:\n  prom:\n    kind: promoters\n    inputs: {fasta: genome/toy.fa, gff: genome/broken.gff3}\n",
    );
    let err = p.fails(&["run", "broken.yaml"], 1);
    assert!(
        err.contains("broken.gff3: line 2: expected 9 tab-separated columns, found 4"),
        "{err}"
    );
    // Two genomes concatenated with a contig name in common: refused, not read as one.
    let toy = p.read("genome/toy.fa");
    p.write("genome/twice.fa", &format!("{toy}{toy}"));
    p.write(
        "twice.yaml",
        "stages:\n  prom:\n    kind: promoters\n    inputs: {fasta: genome/twice.fa, gff: genome/toy.gff3}\n",
    );
    let err = p.fails(&["run", "twice.yaml"], 1);
    assert!(
        err.contains("twice.fa: records 1 and 3 are both named `chrA`"),
        "{err}"
    );
    // A FASTA given as `genome`, which takes a `download` folder.
    p.write(
        "as-genome.yaml",
        "stages:\n  prom:\n    kind: promoters\n    inputs: {genome: genome/toy.fa}\n",
    );
    let err = p.fails(&["run", "as-genome.yaml"], 1);
    assert!(
        err.contains("input `genome` is a file (") && err.contains("as input `fasta`"),
        "{err}"
    );
}

/// Real data through the binary: A. thaliana chr1 and A. arenosa chr1-2 (skipped without them).
#[test]
fn real_genomes_through_the_binary() {
    let Some(data) = flora_stages::testing::shared_data("real_genomes_through_the_binary") else {
        return;
    };
    let ath = data.join("athaliana_chr1");
    let are = data.join("aarenosa_chr1_chr2");
    if !ath.is_dir() || !are.is_dir() {
        flora_stages::testing::skipped(&format!(
            "real_genomes_through_the_binary: {} has no genome folders",
            data.display()
        ));
        return;
    }
    let p = Project::new();
    let arg = |name: &str, path: std::path::PathBuf| format!("{name}={}", path.display());
    let out = p.ok(&[
        "stage",
        "promoters",
        "--input",
        &arg(
            "fasta",
            ath.join("AthaTAIR10_chr1_GCF_000001735.4_TAIR10.1_genomic.fna.gz"),
        ),
        "--input",
        &arg("gff", ath.join("AthaTAIR10_chr1.gff.gz")),
        "--set",
        "upstream=1000",
        "--set",
        "avoid_overlap=false",
        "--set",
        "species=athaliana",
        "--out",
        "ath",
    ]);
    assert!(out.starts_with("ran promoters"), "{out}");
    let fa = read_gz(&p.path("ath/promoters.fa.gz"));
    assert!(
        fa.starts_with(">AT1G01010 athaliana NC_003070.9:2631-3630(+)\n"),
        "{}",
        &fa[..200]
    );
    let rows = p.read("ath/promoters.tsv").lines().count() - 1;
    assert!(rows > 7000 && rows <= 7156, "{rows} promoters");
    // A. arenosa: GenBank-submitter ids (gene-AARE701A_LOCUS1 -> AARE701A_LOCUS1), minus strand first.
    p.ok(&[
        "stage",
        "promoters",
        "--input",
        &arg(
            "fasta",
            are.join("AareAARE701a_chr1_chr2_GCA_905216605.1_AARE701a_genomic.fna.gz"),
        ),
        "--input",
        &arg("gff", are.join("AareAARE701a_chr1_chr2.gff.gz")),
        "--set",
        "species=aarenosa",
        "--out",
        "are",
    ]);
    let fa = read_gz(&p.path("are/promoters.fa.gz"));
    assert!(
        fa.starts_with(">AARE701A_LOCUS1 aarenosa LR999451.1:28482-29481(-)\n"),
        "{}",
        &fa[..200]
    );
}

#[test]
fn promoters_to_a_leak_free_corpus() {
    let p = Project::new();
    fixture(&p);
    // Two more genes so that the split has something to deal; G1 and G2 are paralogs.
    let gff = p.read("genome/toy.gff3")
        + "chrA\ttoy\tgene\t4001\t4500\t.\t+\t.\tID=gene:G6;biotype=protein_coding\n"
        + "chrB\ttoy\tgene\t1101\t1400\t.\t+\t.\tID=gene:G7;biotype=protein_coding\n";
    p.write("genome/toy.gff3", &gff);
    p.write("data/paralogs.tsv", "a\tb\nG1\tG2\n");
    p.write(
        "data/tpm.csv",
        "gene_id,s1,s2\nG1,5,7\nG2,1,1\nG6,0,0\nG7,30,10\n",
    );
    p.write(
        "wf.yaml",
        r#"
stages:
  promoters:
    kind: promoters
    inputs: {fasta: genome/toy.fa, gff: genome/toy.gff3}
    params: {species: toy}
  expression:
    kind: expression
    inputs: {table: data/tpm.csv}
    params: {tissue: leaf}
  paralogs:
    kind: paralogs
    inputs: {table: data/paralogs.tsv, genes: promoters}
  split:
    kind: split
    inputs: {groups: paralogs}
    params: {test: 0.5, seed: 3}
  corpus:
    kind: corpus
    inputs: {promoters: promoters, split: split, heldout: promoters}
"#,
    );
    let out = p.ok(&["run", "wf.yaml"]);
    assert!(out.contains("5 jobs: 5 ran"), "{out}");
    let groups = p.read("results/wf/paralogs/groups.tsv");
    assert_eq!(groups, "gene_id\tgroup\nG1\tG1\nG2\tG1\nG6\tG6\nG7\tG7\n");
    let split = p.read("results/wf/split/split.tsv");
    let test: Vec<&str> = split
        .lines()
        .filter(|l| l.ends_with("\ttest"))
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert!(!test.is_empty(), "{split}");
    let corpus = read_gz(&p.path("results/wf/corpus/corpus.fa.gz"));
    for gene in &test {
        assert!(
            !corpus.contains(&format!(">{gene} ")),
            "test gene {gene} leaked into\n{corpus}"
        );
    }
    let expr = p.read("results/wf/expression/expression.tsv");
    assert_eq!(expr, "gene_id\tleaf\nG1\t6\nG2\t1\nG7\t20\n");
    // The corpus refuses to run without a split.
    p.write(
        "nosplit.yaml",
        "stages:\n  corpus: {kind: corpus, inputs: {promoters: genome/toy.fa}}\n",
    );
    let err = p.fails(&["run", "nosplit.yaml"], 1);
    assert!(err.contains("needs an input `split`"), "{err}");
}

#[test]
fn download_then_promoters_from_the_genome_folder() {
    let p = Project::new();
    fixture(&p);
    let root = p.root().display().to_string();
    p.write(
        "wf.yaml",
        &format!(
            r#"
vars: {{site: "file://{root}/genome"}}
stages:
  download:
    kind: download
    foreach: [toy]
    params: {{fasta: "${{vars.site}}/${{item}}.fa", gff: "${{vars.site}}/${{item}}.gff3"}}
  promoters:
    kind: promoters
    foreach: [toy]
    inputs: {{genome: "download[${{item}}]"}}
    params: {{species: "${{item}}", upstream: 300}}
"#
        ),
    );
    let out = p.ok(&["run", "wf.yaml"]);
    assert!(out.contains("2 jobs: 2 ran"), "{out}");
    // The retry policy changes no byte fetched: still cached.
    let out = p.ok(&[
        "run",
        "wf.yaml",
        "--set",
        "download.retries=0",
        "--set",
        "download.timeout_s=5",
    ]);
    assert!(out.contains("2 jobs: 0 ran, 2 cached"), "{out}");
    for f in [
        "genome.fa.gz",
        "genome.fa.gz.fai",
        "genome.fa.gz.gzi",
        "genes.gff3.gz",
        "source.json",
    ] {
        assert!(p.path("results/wf/download/toy").join(f).is_file(), "{f}");
    }
    let fa = read_gz(&p.path("results/wf/promoters/toy/promoters.fa.gz"));
    assert!(fa.starts_with(">G1 toy chrA:901-1200(+)\n"), "{fa}");
    // The contract form: `flora stage promoters --input genome=DIR`.
    let dir = std::fs::canonicalize(p.path("results/wf/download/toy")).unwrap();
    let out = p.ok(&[
        "stage",
        "promoters",
        "--input",
        &format!("genome={}", dir.display()),
        "--set",
        "upstream=1000",
        "--out",
        "p2",
    ]);
    assert!(out.starts_with("ran promoters"), "{out}");
    // A failed download publishes nothing and names the file.
    let err = p.fails(
        &[
            "run",
            "wf.yaml",
            "--set",
            "download.fasta=file:///nowhere/x.fa",
        ],
        1,
    );
    assert!(err.contains("/nowhere/x.fa: no such file"), "{err}");
}

#[test]
fn stage_bpe_trains_a_tokenizer_json() {
    let p = Project::new();
    p.write("corpus.fa", &random_promoters(9, 100, 400, "TATAAAAGG"));
    let out = p.ok(&[
        "stage",
        "bpe",
        "--input",
        "corpus=corpus.fa",
        "--set",
        "vocab_size=300",
        "--out",
        "tok",
    ]);
    assert!(out.starts_with("ran bpe"), "{out}");
    let tok: serde_json::Value = serde_json::from_str(&p.read("tok/tokenizer.json")).unwrap();
    assert_eq!(tok["model"]["type"], "BPE");
    assert_eq!(tok["model"]["vocab"]["<s>"], 0);
    assert_eq!(tok["model"]["vocab"]["<mask>"], 4);
    assert_eq!(tok["model"]["vocab"].as_object().unwrap().len(), 305);
    let summary: serde_json::Value = serde_json::from_str(&p.read("tok/summary.json")).unwrap();
    assert_eq!(summary["sequences"], 100);
    assert!(summary["tokens_per_kb"].as_f64().unwrap() < 1000.0);
    let err = p.fails(
        &[
            "stage",
            "bpe",
            "--input",
            "corpus=corpus.fa",
            "--set",
            "vocab_size=100",
            "--out",
            "t3",
        ],
        1,
    );
    assert!(err.contains("must exceed the 256 byte symbols"), "{err}");
    let err = p.fails(
        &[
            "stage",
            "bpe",
            "--input",
            "corpus=corpus.fa",
            "--set",
            "vocab_size=-1",
            "--out",
            "t2",
        ],
        2,
    );
    assert!(err.contains("invalid value: integer `-1`"), "{err}");
}

#[test]
fn stage_pretrain_writes_a_huggingface_model_folder_and_continues_from_init() {
    let p = Project::new();
    p.write("corpus.fa", &random_promoters(11, 64, 150, "TATAAACACGTG"));
    p.bpe(300, "tok");
    let args = [
        "stage",
        "pretrain",
        "--input",
        "corpus=corpus.fa",
        "--input",
        "tokenizer=tok",
        "--set",
        "layers=2",
        "--set",
        "hidden=64",
        "--set",
        "heads=2",
        "--set",
        "intermediate=128",
        "--set",
        "epochs=1",
        "--set",
        "batch_size=16",
        "--set",
        "max_len=64",
        "--out",
        "model",
    ];
    let out = p.ok(&args);
    assert!(out.starts_with("ran pretrain"), "{out}");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "train_log.tsv",
    ] {
        assert!(p.path("model").join(f).is_file(), "{f}");
    }
    let log = p.read("model/train_log.tsv");
    let header: Vec<&str> = log.lines().next().unwrap().split('\t').collect();
    assert!(
        header.contains(&"step") && header.contains(&"loss"),
        "{log}"
    );
    let cfg: serde_json::Value = serde_json::from_str(&p.read("model/config.json")).unwrap();
    assert_eq!(cfg["model_type"], "roberta");
    assert_eq!(cfg["num_hidden_layers"], 2);
    assert_eq!(cfg["pad_token_id"], 2);
    // The maize step: continue from the model just made.
    let mut cont = args.to_vec();
    cont.extend(["--input", "init=model"]);
    *cont.iter_mut().find(|a| **a == "model").unwrap() = "maize";
    let out = p.ok(&cont);
    assert!(out.starts_with("ran pretrain"), "{out}");
    assert_ne!(
        std::fs::read(p.path("model/model.safetensors")).unwrap(),
        std::fs::read(p.path("maize/model.safetensors")).unwrap()
    );
    let err = p.fails(
        &[
            "stage",
            "pretrain",
            "--input",
            "corpus=corpus.fa",
            "--input",
            "tokenizer=tok",
            "--set",
            "hidden=30",
            "--set",
            "heads=4",
            "--out",
            "bad",
        ],
        2,
    );
    // Refused with the params, before the job starts.
    assert!(
        err.contains("hidden 30 is not a multiple of heads 4"),
        "{err}"
    );
}

/// The grass syntenic list (sorghum v3 genes with their maize v4 copies on either subgenome)
/// groups as paralogs: the sorghum and maize id columns named, every gene once, and each
/// sorghum gene's maize1 and maize2 copies (the maize homeologs) in one group. Without the
/// columns, the subgenome label would join everything; that is refused with what to do.
#[test]
fn grass_syntenic_list_groups_maize_homeologs() {
    let Some(data) =
        flora_stages::testing::shared_data("grass_syntenic_list_groups_maize_homeologs")
    else {
        return;
    };
    let list = data.join("grass_syntenic/SbZmPvSynListUsedForDEG.csv");
    let input = format!("table={}", list.display());
    let p = Project::new();
    let e = p.fails(&["stage", "paralogs", "--input", &input, "--out", "all"], 1);
    assert!(
        e.contains("is larger than max_group_size 1000")
            && e.contains("Name the id columns with `columns:`"),
        "{e}"
    );
    p.ok(&[
        "stage",
        "paralogs",
        "--input",
        &input,
        "--set",
        "columns=[sorghum3, maize4]",
        "--out",
        "groups",
    ]);
    let summary: serde_json::Value = serde_json::from_str(&p.read("groups/summary.json")).unwrap();
    // 18,979 sorghum and 22,268 maize genes (SOURCE.txt), each in exactly one group.
    assert_eq!(summary["genes"], 41_247, "{summary}");
    let groups = p.read("groups/groups.tsv");
    let group_of: std::collections::HashMap<&str, &str> = groups
        .lines()
        .skip(1)
        .map(|l| l.split_once('\t').unwrap())
        .collect();
    assert_eq!(group_of.len(), 41_247);
    let text = std::fs::read_to_string(&list).unwrap();
    let mut copies: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    for line in text.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        copies.entry(cells[1]).or_default().push(cells[2]);
        assert_eq!(group_of[cells[1]], group_of[cells[2]], "{line}");
    }
    let homeologs = copies.values().filter(|maize| maize.len() >= 2).count();
    assert!(
        homeologs >= 6_030,
        "{homeologs} sorghum genes with two maize copies"
    );
}
