//! Fine-tuning and using a model through the binary: `stage bpe`, `stage pretrain`,
//! `stage finetune`, then `predict`, `embed`, `mutagenesis` and `variants`, on planted data and
//! on real A. thaliana promoters.

use std::io::Read;
use std::path::Path;

use flora_stages::testing::{planted, planted_table, PLANTED_MOTIFS};

use crate::util::Project;

/// bpe -> tiny pretrain -> finetune, through the contract commands; returns the project.
fn finetuned() -> Project {
    let p = Project::new();
    let rows = planted(240, 150, 5);
    let fasta: String = rows
        .iter()
        .map(|r| format!(">{}\n{}\n", r.id, r.seq))
        .collect();
    p.write("corpus.fa", &fasta);
    p.write("table.tsv", &planted_table(&rows));
    p.bpe(300, "tok");
    p.ok(&[
        "stage",
        "pretrain",
        "--input",
        "corpus=corpus.fa",
        "--input",
        "tokenizer=tok",
        "--set",
        "layers=2",
        "--set",
        "hidden=32",
        "--set",
        "heads=2",
        "--set",
        "intermediate=64",
        "--set",
        "max_len=96",
        "--set",
        "epochs=1",
        "--set",
        "batch_size=16",
        "--out",
        "pre",
    ]);
    p.ok(&[
        "stage",
        "finetune",
        "--input",
        "model=pre",
        "--input",
        "table=table.tsv",
        "--set",
        "epochs=3",
        "--set",
        "lr=0.005",
        "--out",
        "ft",
    ]);
    p
}

#[test]
fn finetune_writes_the_contract_files() {
    let p = finetuned();
    let pred = p.read("ft/predictions.tsv");
    assert!(
        pred.starts_with("id\ttarget\tobserved\tpredicted\n"),
        "{pred}"
    );
    // 240 rows, 30% test, three targets each.
    assert_eq!(pred.lines().count(), 1 + 72 * 3);
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "train_log.tsv",
        "summary.json",
    ] {
        assert!(p.path("ft").join(name).is_file(), "{name}");
    }
    let config: serde_json::Value = serde_json::from_str(&p.read("ft/config.json")).unwrap();
    assert_eq!(config["flora_head"]["targets"][2], "seed");
    assert_eq!(config["problem_type"], "regression");
    let summary: serde_json::Value = serde_json::from_str(&p.read("ft/summary.json")).unwrap();
    assert!(summary["test_all"]["r2"].is_number());
}

#[test]
fn predict_embed_and_mutagenesis_on_planted_sequences() {
    let p = finetuned();
    let rows = planted(20, 150, 99);
    let mut fasta: String = rows
        .iter()
        .map(|r| format!(">{}\n{}\n", r.id, r.seq))
        .collect();
    // IUPAC codes and lower case are read, not refused: the tokenizer sees them as they are.
    fasta.push_str(">iupac\nACGTRYKMNNNNacgt\n");
    p.write("seqs.fa", &fasta);

    p.ok(&[
        "predict", "--model", "ft", "--fasta", "seqs.fa", "-o", "pred.tsv",
    ]);
    let pred = p.read("pred.tsv");
    let mut lines = pred.lines();
    assert_eq!(lines.next(), Some("id\tleaf\troot\tseed"));
    assert_eq!(lines.clone().count(), 21);
    assert!(lines.all(|l| l
        .split('\t')
        .skip(1)
        .all(|v| v.parse::<f32>().unwrap().is_finite())));
    // stdout when no -o, and the same numbers.
    assert_eq!(
        p.ok(&["predict", "--model", "ft", "--fasta", "seqs.fa"]),
        pred
    );
    // A smaller batch gives the same predictions, but for rounding: each batch is cut to its
    // own longest sequence, so sums over keys and features run in another order.
    let small = p.ok(&[
        "predict",
        "--model",
        "ft",
        "--fasta",
        "seqs.fa",
        "--batch-size",
        "3",
    ]);
    assert_same_table(&small, &pred, 5e-5);

    p.ok(&[
        "embed", "--model", "ft", "--fasta", "seqs.fa", "-o", "emb.tsv",
    ]);
    let emb = p.read("emb.tsv");
    assert!(emb.starts_with("id\tdim0\t"));
    assert_eq!(emb.lines().nth(1).unwrap().split('\t').count(), 1 + 32);
    // The pretrained model (no head) embeds too; .npy with ids beside it.
    p.ok(&[
        "embed", "--model", "pre", "--fasta", "seqs.fa", "-o", "emb.npy",
    ]);
    let mut npy = Vec::new();
    std::fs::File::open(p.path("emb.npy"))
        .unwrap()
        .read_to_end(&mut npy)
        .unwrap();
    assert_eq!(&npy[..6], b"\x93NUMPY");
    let header = String::from_utf8_lossy(&npy[..128]).to_string();
    assert!(header.contains("(21,32,)"), "{header}");
    assert_eq!(p.read("emb.ids.txt").lines().count(), 21);

    p.write("one.fa", &format!(">one\n{}\n", &rows[0].seq[..60]));
    p.ok(&[
        "mutagenesis",
        "--model",
        "ft",
        "--fasta",
        "one.fa",
        "-o",
        "map.tsv",
    ]);
    let map = p.read("map.tsv");
    assert!(map.starts_with("# one: predicted leaf="), "{map}");
    let mut lines = map.lines().skip(1);
    assert_eq!(
        lines.next(),
        Some("position\tdistance_to_tss\tref\talt\tdelta_leaf\tdelta_root\tdelta_seed")
    );
    assert_eq!(lines.count(), 3 * 60);
}

#[test]
fn model_commands_refuse_bad_input_clearly() {
    let p = finetuned();
    // `flora COMMAND --model ft --fasta FASTA MORE...`, expected to fail with status 2.
    let refused = |command: &str, fasta: &str, more: &[&str]| {
        let mut args = vec![command, "--model", "ft", "--fasta", fasta];
        args.extend_from_slice(more);
        p.fails(&args, 2)
    };
    p.write("empty.fa", "");
    let e = refused("predict", "empty.fa", &[]);
    assert!(e.contains("empty.fa: holds no sequences"), "{e}");
    p.write("two.fa", ">a\nACGT\n>b\nGGCC\n");
    let e = refused("mutagenesis", "two.fa", &[]);
    assert!(e.contains("holds 2 sequences; name one with --id"), "{e}");
    p.ok(&[
        "mutagenesis",
        "--model",
        "ft",
        "--fasta",
        "two.fa",
        "--id",
        "b",
    ]);
    let e = p.fails(&["predict", "--model", "pre", "--fasta", "two.fa"], 2);
    assert!(e.contains("without an expression head"), "{e}");
    let e = p.fails(&["predict", "--model", "nowhere", "--fasta", "two.fa"], 2);
    assert!(e.contains("nowhere"), "{e}");
    // Where the output cannot go is said before any work, for every command that writes one.
    let at = |command: &str, flag: &str, path: &str| {
        let id: &[&str] = if command == "mutagenesis" {
            &["--id", "a"]
        } else {
            &[]
        };
        refused(command, "two.fa", &[&[flag, path][..], id].concat())
    };
    for command in ["predict", "embed", "mutagenesis"] {
        let e = at(command, "-o", "no/such/folder/out.tsv");
        assert!(
            e.contains("-o no/such/folder/out.tsv: the folder no/such/folder does not exist"),
            "{command}: {e}"
        );
        let e = at(command, "-o", ".");
        assert!(
            e.contains("-o .: is a folder; name a file"),
            "{command}: {e}"
        );
    }
    let e = at("mutagenesis", "--figure", "no/map.svg");
    assert!(
        e.contains("--figure no/map.svg: the folder no does not exist"),
        "{e}"
    );
    let e = at("embed", "-o", "e.npz");
    assert!(
        e.contains("-o e.npz: embed writes `.tsv` (a table) or `.npy` (float32 rows), not `.npz`"),
        "{e}"
    );
    assert!(!p.path("e.npz").exists());
    let e = refused("mutagenesis", "two.fa", &["--id", "a", "--target", "root"]);
    assert!(
        e.contains("--figure"),
        "--target draws nothing without --figure: {e}"
    );
    // A protein FASTA given by mistake is refused, not predicted from unknown tokens.
    p.write("protein.fa", ">ok\nACGTNRY\n>p1 kinase\nMKTAYIAKQR\n");
    for command in ["predict", "embed"] {
        let e = refused(command, "protein.fa", &["-o", "x.tsv"]);
        assert!(
            e.contains("protein.fa: record p1 has `I` at position 6, which is not a nucleotide"),
            "{e}"
        );
    }
    for command in ["predict", "mutagenesis"] {
        let e = refused(command, "two.fa", &["--batch-size", "0"]);
        assert!(
            e.contains("invalid value '0' for '--batch-size <N>': must be at least 1"),
            "{e}"
        );
    }
    if !cfg!(feature = "cuda") {
        let e = refused("predict", "two.fa", &["--gpu", "0"]);
        assert!(e.contains("built without CUDA"), "{e}");
    }
}

/// A model folder whose files do not agree (a config edited by hand, weights or a tokenizer from
/// another model) is refused by file before any prediction, rather than panicking in a tensor op
/// or predicting from part of the model.
#[test]
fn a_model_folder_whose_files_disagree_is_refused_by_file() {
    let p = finetuned();
    p.write("two.fa", ">a\nACGTACGTAC\n>b\nGGCCGGCCTT\n");
    let config = p.read("ft/config.json");
    let broken = |name: &str, edit: &dyn Fn(&Project)| {
        std::fs::create_dir_all(p.path(name)).unwrap();
        for file in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(
                p.path(&format!("ft/{file}")),
                p.path(&format!("{name}/{file}")),
            )
            .unwrap();
        }
        edit(&p);
        p.fails(&["predict", "--model", name, "--fasta", "two.fa"], 2)
    };
    // Configs edited by hand: (folder, from, to, the error).
    let edits = [
        (
            "heads",
            "\"num_attention_heads\": 2",
            "\"num_attention_heads\": 3",
            "heads/config.json: hidden_size 32 is not a multiple of num_attention_heads 3",
        ),
        (
            "layers",
            "\"num_hidden_layers\": 2",
            "\"num_hidden_layers\": 1",
            "layers/model.safetensors: the weights hold `roberta.encoder.layer.1.",
        ),
        (
            "act",
            "\"hidden_act\": \"gelu\"",
            "\"hidden_act\": \"gelu_new\"",
            "act/config.json: hidden_act `gelu_new`",
        ),
    ];
    let mut outputs = Vec::new();
    for (name, from, to, want) in edits {
        let out = broken(name, &|p| {
            p.write(&format!("{name}/config.json"), &config.replace(from, to));
        });
        assert!(out.contains(want), "{out}");
        outputs.push(out);
    }
    assert!(outputs[1].contains("num_hidden_layers 1 does not have"));
    let tokenizer = broken("tokenizer", &|p| {
        p.bpe(400, "tok400");
        std::fs::copy(
            p.path("tok400/tokenizer.json"),
            p.path("tokenizer/tokenizer.json"),
        )
        .unwrap();
    });
    assert!(
        tokenizer.contains(
            "tokenizer/tokenizer.json: the tokenizer has 405 tokens, more than the \
                            model's vocab_size 305"
        ),
        "{tokenizer}"
    );
    outputs.push(tokenizer);
    for out in outputs {
        assert!(!out.contains("panicked"), "{out}");
    }
}

/// A genome with one gene on each strand and the activating motif just upstream of both TSSs.
/// Two TSV tables with the same header and ids whose numbers agree within `tol`.
/// A model of 64 one-element heads on 4,096-token sequences: each layer's attention
/// probabilities of one 64-sequence batch alone are 16 GiB in f32.
const HUGE_ATTENTION: [&str; 10] = [
    "layers=3",
    "hidden=64",
    "heads=64",
    "intermediate=64",
    "max_len=4096",
    "epochs=1",
    "batch_size=64",
    "checkpoint_every=1000",
    "validation=0.05",
    "seed=1",
];

/// `flora stage pretrain` of the [`HUGE_ATTENTION`] model on `corpus` with tokenizer `tok`, into
/// `pre`.
fn huge_pretrain(corpus: &str) -> Vec<String> {
    let mut args: Vec<String> = ["stage", "pretrain", "--input"].map(String::from).to_vec();
    args.push(format!("corpus={corpus}"));
    args.extend(["--input", "tokenizer=tok", "--out", "pre"].map(String::from));
    for set in HUGE_ATTENTION {
        args.extend(["--set".to_string(), set.to_string()]);
    }
    args
}

/// A batch whose training step cannot fit in this machine's memory is refused before any step,
/// naming the sizes, where it would abort or be killed; nothing is published.
#[test]
fn model_stages_refuse_a_step_that_cannot_fit_in_memory() {
    let Some(free) = flora_stages::memory::available() else {
        eprintln!("SKIPPED: this machine does not say how much memory it has available");
        return;
    };
    if free > 100 << 30 {
        eprintln!(
            "SKIPPED: {} available, more than the 100 GiB this test's steps need",
            flora_stages::memory::human(free)
        );
        return;
    }
    let p = Project::new();
    // 16 kb promoters: about 4,000 tokens of a 300-token vocabulary, cut to 4,096.
    p.write_planted_fasta("corpus.fa", 70, 16_000, 8);
    p.bpe(300, "tok");
    let args = huge_pretrain("corpus.fa");
    let e = p.fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), 1);
    assert!(
        e.contains("pretrain: batch_size 64 of sequences up to 4096 tokens: a training step needs at least"),
        "{e}"
    );
    assert!(e.contains("is available; lower batch_size"), "{e}");
    assert!(
        !p.path("pre").exists(),
        "a refused stage published its output"
    );

    // The same model pretrained on short sequences, then fine-tuned on the long ones.
    p.write_planted_fasta("short.fa", 40, 150, 9);
    let args = huge_pretrain("short.fa");
    p.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    p.write("table.tsv", &planted_table(&planted(70, 16_000, 8)));
    let finetune = [
        "stage",
        "finetune",
        "--input",
        "model=pre",
        "--input",
        "table=table.tsv",
        "--set",
        "batch_size=64",
        "--out",
        "ft",
    ];
    let e = p.fails(&finetune, 1);
    assert!(
        e.contains("finetune: batch_size 64 of sequences up to 4096 tokens: a training step needs at least"),
        "{e}"
    );
    assert!(
        e.contains("lower batch_size (grad_accum keeps the optimizer's step as large)"),
        "{e}"
    );
    assert!(
        !p.path("ft").exists(),
        "a refused stage published its output"
    );
}

fn assert_same_table(a: &str, b: &str, tol: f64) {
    assert_eq!(a.lines().count(), b.lines().count(), "{a}\n---\n{b}");
    for (la, lb) in a.lines().zip(b.lines()) {
        let (ca, cb): (Vec<&str>, Vec<&str>) = (la.split('\t').collect(), lb.split('\t').collect());
        assert_eq!(ca.len(), cb.len(), "{la} vs {lb}");
        for (x, y) in ca.iter().zip(&cb) {
            match (x.parse::<f64>(), y.parse::<f64>()) {
                (Ok(x), Ok(y)) => assert!((x - y).abs() <= tol, "{la} vs {lb}"),
                _ => assert_eq!(x, y, "{la} vs {lb}"),
            }
        }
    }
}

fn small_genome(p: &Project) {
    let motif = PLANTED_MOTIFS[0].0;
    let rev: String = motif
        .chars()
        .rev()
        .map(|c| match c {
            'A' => 'T',
            'T' => 'A',
            'C' => 'G',
            _ => 'C',
        })
        .collect();
    let filler = |n: usize, seed: usize| -> String {
        (0..n)
            .map(|i| ['A', 'C', 'G', 'T'][(i * 7 + seed * 13 + i / 3) % 4])
            .collect()
    };
    // 1..=460 filler, motif at 461..=467, filler to 1530, motif (reverse) at 1531..=1537, rest.
    let seq = format!(
        "{}{motif}{}{rev}{}",
        filler(460, 1),
        filler(1530 - 467, 2),
        filler(2000 - 1537, 3)
    );
    let mut fa = String::from(">chr1\n");
    for chunk in seq.as_bytes().chunks(60) {
        fa.push_str(std::str::from_utf8(chunk).unwrap());
        fa.push('\n');
    }
    p.write("genome.fa", &fa);
    p.write(
        "genes.gff3",
        "##gff-version 3\nchr1\tt\tgene\t501\t900\t.\t+\t.\tID=gene:plus;biotype=protein_coding\nchr1\tt\tgene\t1201\t1500\t.\t-\t.\tID=gene:minus;biotype=protein_coding\n",
    );
}

/// `flora variants` with the model `ft` on the small genome and its genes, the calls in `vcf`,
/// then `more`.
fn variants_on_small_genome(p: &Project, vcf: &str, more: &[&str]) -> std::process::Output {
    let mut args = vec![
        "variants",
        "--model",
        "ft",
        "--genome",
        "genome.fa",
        "--gff",
        "genes.gff3",
        "--vcf",
        vcf,
    ];
    args.extend_from_slice(more);
    p.output(&args)
}

fn vcf(body: &str) -> String {
    format!("##fileformat=VCFv4.2\n##contig=<ID=chr1,length=2000>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n{body}")
}

#[test]
fn variants_through_the_binary() {
    let p = finetuned();
    small_genome(&p);
    // An SNV in each motif (4th base A -> G on the gene's strand), a multi-allelic one, a
    // deletion over the + window's end, a REF mismatch.
    p.write(
        "calls.vcf",
        &vcf("chr1\t464\t.\tA\tG\t.\t.\t.\nchr1\t1534\t.\tT\tC\t.\t.\t.\nchr1\t400\t.\tT\tA,C\t.\t.\t.\nchr1\t498\t.\tTAAAA\tT\t.\t.\t.\nchr1\t420\t.\tG\tC\t.\t.\t.\n"),
    );
    let genome = std::fs::read_to_string(p.path("genome.fa")).unwrap();
    let bases: String = genome.lines().skip(1).collect();
    // Make the fixture's REFs true to the genome where the test needs them to be.
    let fixed = p.read("calls.vcf").replace(
        "chr1\t400\t.\tT\t",
        &format!("chr1\t400\t.\t{}\t", &bases[399..400]),
    );
    let deletion_ref = &bases[497..502];
    let fixed = fixed.replace(
        "chr1\t498\t.\tTAAAA\tT",
        &format!("chr1\t498\t.\t{deletion_ref}\t{}", &bases[497..498]),
    );
    let wrong = if &bases[419..420] == "G" { "C" } else { "G" };
    let fixed = fixed.replace("chr1\t420\t.\tG\tC", &format!("chr1\t420\t.\t{wrong}\tA"));
    p.write("calls.vcf", &fixed);
    let variants = |vcf: &str, more: &[&str]| variants_on_small_genome(&p, vcf, more);
    let out = variants("calls.vcf", &["--upstream", "150", "-o", "effects.tsv"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let effects = p.read("effects.tsv");
    let mut lines = effects.lines();
    assert_eq!(
        lines.next(),
        Some("chrom\tpos\tref\talt\tgene_id\tstrand\tdistance_to_tss\tdelta_leaf\tdelta_root\tdelta_seed")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 4, "{effects}");
    assert_eq!(&rows[0][..7], ["chr1", "464", "A", "G", "plus", "+", "37"]);
    assert_eq!(
        &rows[1][..7],
        ["chr1", "1534", "T", "C", "minus", "-", "34"]
    );
    assert!(stderr.contains("crosses the window edge: 1"), "{stderr}");
    assert!(
        stderr.contains("REF does not match the genome: 1"),
        "{stderr}"
    );

    // The window: a model trained from a ready table records none, so the default is said; one
    // trained on promoters records theirs (`finetune` writes it, a unit test checks) and is
    // scored with it unless the command line says otherwise, which is warned about.
    let out = variants("calls.vcf", &["-o", "wide.tsv"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "the model records no promoter window; scoring windows of 1000 bases upstream and 0 \
             downstream of the TSS (--upstream and --downstream set them)"
        ),
        "{out:?}"
    );
    let mut config: serde_json::Value = serde_json::from_str(&p.read("ft/config.json")).unwrap();
    config["flora_head"]["promoter_window"] = serde_json::json!({"upstream": 150, "downstream": 0});
    p.write("ft/config.json", &config.to_string());
    let out = variants("calls.vcf", &["-o", "recorded.tsv"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "variants: windows of 150 bases upstream and 0 downstream of the TSS, as the model \
             was trained on"
        ),
        "{out:?}"
    );
    assert_eq!(p.read("recorded.tsv"), effects);
    let out = variants("calls.vcf", &["--upstream", "200", "-o", "asked.tsv"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "variants: warning: the model was trained on promoters cut with 150 bases upstream \
             and 0 downstream of the TSS; scoring windows of 200 bases upstream and 0 downstream \
             of the TSS as asked"
        ),
        "{out:?}"
    );

    p.write("other.vcf", "##fileformat=VCFv4.2\n##contig=<ID=Chr9,length=100>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\nChr9\t5\t.\tA\tC\t.\t.\t.\n");
    let fails = |vcf: &str, more: &[&str]| {
        let out = variants(vcf, more);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let e = fails("other.vcf", &["--upstream", "150"]);
    assert!(
        e.contains("none of its contigs (Chr9) is in the genome (chr1)"),
        "{e}"
    );
    let e = fails("calls.vcf", &["-o", "out/effects.tsv"]);
    assert!(
        e.contains("-o out/effects.tsv: the folder out does not exist"),
        "{e}"
    );
}

/// `flora variants` picks genes and their TSS with the `promoters` stage's own params:
/// `--feature`, `--id-attribute`, `--biotypes` and `--avoid-overlap`.
#[test]
fn variants_picks_genes_as_the_promoters_stage_does() {
    let p = finetuned();
    small_genome(&p);
    // The + gene's one transcript starts 50 bases into it; the - gene is a lncRNA.
    p.write(
        "genes.gff3",
        "##gff-version 3\n\
         chr1\tt\tgene\t501\t900\t.\t+\t.\tID=gene:plus;biotype=protein_coding;locus_tag=LOC_PLUS\n\
         chr1\tt\tmRNA\t551\t900\t.\t+\t.\tID=transcript:plus_T1;Parent=gene:plus;biotype=protein_coding\n\
         chr1\tt\tgene\t1201\t1500\t.\t-\t.\tID=gene:minus;biotype=lncRNA;locus_tag=LOC_MINUS\n",
    );
    let genome = std::fs::read_to_string(p.path("genome.fa")).unwrap();
    let bases: Vec<char> = genome.lines().skip(1).flat_map(str::chars).collect();
    let snv = |pos: usize| {
        let r = bases[pos - 1];
        let alt = if r == 'A' { 'C' } else { 'A' };
        format!("chr1\t{pos}\t.\t{r}\t{alt}\t.\t.\t.\n")
    };
    p.write("calls.vcf", &vcf(&format!("{}{}", snv(464), snv(1534))));
    let variants = |more: &[&str]| variants_on_small_genome(&p, "calls.vcf", more);
    // Each row's gene_id and distance_to_tss, and stderr.
    let scored = |more: &[&str]| {
        let mut args = vec!["--upstream", "150"];
        args.extend_from_slice(more);
        let out = variants(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{more:?}: {stderr}");
        let rows: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| {
                let cells: Vec<&str> = l.split('\t').collect();
                (cells[4].to_string(), cells[6].to_string())
            })
            .collect();
        (rows, stderr)
    };
    let pair = |id: &str, d: &str| (id.to_string(), d.to_string());
    // By default: protein-coding genes, the gene's start, ids from `ID`.
    let (rows, stderr) = scored(&[]);
    assert_eq!(rows, [pair("plus", "37")], "{stderr}");
    assert!(
        stderr.contains("variants: 1 promoter windows of 2 genes (dropped: biotype lncRNA: 1)"),
        "{stderr}"
    );
    let (rows, _) = scored(&["--biotypes", "all", "--id-attribute", "locus_tag"]);
    assert_eq!(rows, [pair("LOC_PLUS", "37"), pair("LOC_MINUS", "34")]);
    let (rows, _) = scored(&["--biotypes", "protein_coding,lncRNA"]);
    assert_eq!(rows, [pair("plus", "37"), pair("minus", "34")]);
    // The transcript's start is 50 bases further on.
    let (rows, _) = scored(&["--feature", "transcript"]);
    assert_eq!(rows, [pair("plus", "87")]);

    let fails = |more: &[&str]| {
        let out = variants(more);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let e = fails(&["--biotypes", "miRNA"]);
    assert!(
        e.contains("dropped: biotype lncRNA: 1, biotype protein_coding: 1")
            && e.contains("`flora variants --biotypes all`"),
        "{e}"
    );
    let e = fails(&["--feature", "exon"]);
    assert!(e.contains("invalid value 'exon' for '--feature"), "{e}");
}

/// `--fasta` takes a `promoters` output folder as stage inputs do: its `promoters.fa.gz`.
#[test]
fn model_commands_read_a_promoters_folder() {
    let p = finetuned();
    small_genome(&p);
    p.ok(&[
        "stage",
        "promoters",
        "--input",
        "fasta=genome.fa",
        "--input",
        "gff=genes.gff3",
        "--set",
        "upstream=150",
        "--out",
        "prom",
    ]);
    let from_folder = p.ok(&["predict", "--model", "ft", "--fasta", "prom"]);
    let rows: Vec<&str> = from_folder.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{from_folder}");
    assert!(rows[0].starts_with("plus\t") && rows[1].starts_with("minus\t"));
    let from_file = p.ok(&[
        "predict",
        "--model",
        "ft",
        "--fasta",
        "prom/promoters.fa.gz",
    ]);
    assert_eq!(from_folder, from_file);
    p.write("empty/notes.txt", "");
    let out = p.output(&["predict", "--model", "ft", "--fasta", "empty"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("empty holds no promoters.fa.gz or sequences.fa.gz or corpus.fa.gz"));
}

fn gunzip(path: &Path) -> String {
    let mut s = String::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut s)
        .unwrap();
    s
}

/// FloraBERT's own maize NAM fine-tuning table (`gene_id, gene_id_full, seq, fold, <8 tissues>`,
/// log2 values) fine-tunes and scores as published: its `fold` column gives the splits, with
/// `train_4` as the validation rows, and the test rows are exactly those of its `test.tsv`.
#[test]
fn florabert_nam_table_trains_on_its_published_folds() {
    let Some(data) =
        flora_stages::testing::shared_data("florabert_nam_table_trains_on_its_published_folds")
    else {
        return;
    };
    let nam = data.join("maize_nam_expression");
    let table = nam.join("merged_seq_genex.csv");
    let table_arg = format!("table={}", table.display());
    let p = finetuned();
    let common = ["--set", "validation_fold=train_4"];
    let mut args = vec![
        "stage",
        "finetune",
        "--input",
        "model=pre",
        "--input",
        &table_arg,
        "--set",
        "epochs=1",
        "--set",
        "batch_size=64",
        "--out",
        "nam_ft",
    ];
    args.extend(common);
    let out = p.output(&args);
    assert!(out.status.success(), "{out:?}");
    let mut args = vec![
        "stage",
        "baselines",
        "--input",
        &table_arg,
        "--out",
        "nam_bl",
    ];
    args.extend(common);
    p.ok(&args);
    for stage in ["nam_ft", "nam_bl"] {
        let summary: serde_json::Value =
            serde_json::from_str(&p.read(&format!("{stage}/summary.json"))).unwrap();
        assert_eq!(
            summary["rows"],
            serde_json::json!({"train": 1143, "validation": 261, "test": 453}),
            "{stage}: the published train.tsv, eval.tsv and test.tsv sizes"
        );
        assert_eq!(
            summary["transform"], "none",
            "{stage}: the values are log2 already"
        );
    }
    let log = p
        .logs_containing("finetune: table columns left out")
        .join("");
    assert!(
        log.contains("left out (text, not targets): gene_id_full"),
        "{log}"
    );
    // The test rows are test.tsv's sequences, every tissue scored.
    let merged = std::fs::read_to_string(&table).unwrap();
    let sequence_of: std::collections::HashMap<&str, &str> = merged
        .lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            (cells[0], cells[2])
        })
        .collect();
    let published: std::collections::HashSet<String> =
        std::fs::read_to_string(nam.join("test.tsv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect();
    let predictions = p.read("nam_ft/predictions.tsv");
    let rows: Vec<Vec<&str>> = predictions
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len(), 453 * 8);
    let tested: std::collections::HashSet<String> = rows
        .iter()
        .map(|r| sequence_of[r[0]].to_ascii_uppercase())
        .collect();
    assert_eq!(tested, published, "the test rows are test.tsv's");
}

#[test]
fn real_arabidopsis_promoters_through_predict_embed_mutagenesis_and_variants() {
    let Some(data) = flora_stages::testing::shared_data(
        "real_arabidopsis_promoters_through_predict_embed_mutagenesis_and_variants",
    ) else {
        return;
    };
    let ath = data.join("athaliana_chr1");
    let genome = ath.join("AthaTAIR10_chr1_GCF_000001735.4_TAIR10.1_genomic.fna.gz");
    let gff = ath.join("AthaTAIR10_chr1.gff.gz");
    let p = finetuned();
    p.ok(&[
        "stage",
        "promoters",
        "--input",
        &format!("fasta={}", genome.display()),
        "--input",
        &format!("gff={}", gff.display()),
        "--set",
        "upstream=1000",
        "--out",
        "ath",
    ]);
    // The first 200 promoters (1 kb, longer than the tiny model reads: their 5' ends are cut).
    let fa = gunzip(&p.path("ath/promoters.fa.gz"));
    let first: String = fa.lines().take(400).map(|l| format!("{l}\n")).collect();
    p.write("ath200.fa", &first);
    let out = p.output(&[
        "predict",
        "--model",
        "ft",
        "--fasta",
        "ath200.fa",
        "-o",
        "ath.tsv",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("200 of 200 sequences were longer"));
    let pred = p.read("ath.tsv");
    assert_eq!(pred.lines().count(), 201);
    assert!(pred.lines().nth(1).unwrap().starts_with("AT1G01010\t"));
    p.ok(&[
        "embed",
        "--model",
        "ft",
        "--fasta",
        "ath200.fa",
        "-o",
        "ath.npy",
    ]);
    let one: String = fa.lines().take(2).map(|l| format!("{l}\n")).collect();
    p.write("one.fa", &one);
    p.ok(&[
        "mutagenesis",
        "--model",
        "ft",
        "--fasta",
        "one.fa",
        "-o",
        "map.tsv",
    ]);
    assert_eq!(p.read("map.tsv").lines().count(), 2 + 3 * 1000);

    // SNVs 10 bases into the windows of the first five + strand promoters, REF from the window.
    let table = p.read("ath/promoters.tsv");
    let seqs: std::collections::HashMap<&str, &str> = fa
        .lines()
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|c| (c[0][1..].split(' ').next().unwrap(), c[1]))
        .collect();
    let mut body = String::new();
    let mut n = 0;
    for line in table.lines().skip(1) {
        let c: Vec<&str> = line.split('\t').collect();
        if c[3] != "+" || n == 5 {
            continue;
        }
        let start: u64 = c[5].parse().unwrap();
        let reference = &seqs[c[0]][10..11];
        let alt = if reference == "A" { "C" } else { "A" };
        body.push_str(&format!(
            "{}\t{}\t.\t{reference}\t{alt}\t.\t.\t.\n",
            c[2],
            start + 10
        ));
        n += 1;
    }
    p.write(
        "ath.vcf",
        &format!("##fileformat=VCFv4.2\n##contig=<ID=NC_003070.9,length=30427671>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n{body}"),
    );
    let out = p.output(&[
        "variants",
        "--model",
        "ft",
        "--genome",
        &genome.display().to_string(),
        "--gff",
        &gff.display().to_string(),
        "--vcf",
        "ath.vcf",
        "-o",
        "ath_effects.tsv",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effects = p.read("ath_effects.tsv");
    let at_990 = effects
        .lines()
        .skip(1)
        .filter(|l| l.split('\t').nth(6) == Some("990"))
        .count();
    assert_eq!(at_990, 5, "{effects}");
}

#[test]
fn baselines_score_the_same_rows_as_finetune() {
    let p = finetuned();
    p.ok(&[
        "stage",
        "baselines",
        "--input",
        "table=table.tsv",
        "--set",
        "k=[2, 3]",
        "--out",
        "bl",
    ]);
    let ft_ids = |text: &str| -> Vec<String> {
        text.lines()
            .skip(1)
            .map(|l| l.split('\t').take(2).collect::<Vec<_>>().join("\t"))
            .collect()
    };
    let ft = ft_ids(&p.read("ft/predictions.tsv"));
    let bl = p.read("bl/predictions.tsv");
    assert!(
        bl.starts_with("model\tid\ttarget\tobserved\tpredicted\n"),
        "{bl}"
    );
    for model in ["constant", "bow2", "bow3"] {
        let rows: Vec<String> = bl
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{model}\t")))
            .map(|l| l.split('\t').take(2).collect::<Vec<_>>().join("\t"))
            .collect();
        assert_eq!(
            rows, ft,
            "{model} scores the test rows finetune scored, in order"
        );
    }
    let summary: serde_json::Value = serde_json::from_str(&p.read("bl/summary.json")).unwrap();
    assert_eq!(summary["features"]["bow2"], 16);
    assert_eq!(summary["features"]["bow3"], 64);
    // Table 1 over the three models.
    p.ok(&[
        "stage",
        "analysis",
        "--input",
        "finetune=ft",
        "--input",
        "baselines=bl",
        "--out",
        "an",
    ]);
    let md = p.read("an/table1.md");
    for row in ["| finetune |", "| constant |", "| bow2 |", "| bow3 |"] {
        assert_eq!(md.matches(row).count(), 2, "{row} in both tables:\n{md}");
    }
    assert!(p
        .read("an/table1.tsv")
        .starts_with("model\tmetric\tAll\tleaf\troot\tseed\n"));
    // A predicted-against-observed figure per model, a panel per tissue.
    for model in ["finetune", "constant", "bow2", "bow3"] {
        let svg = p.read(&format!("an/scatter_{model}.svg"));
        assert!(
            svg.starts_with("<svg") && svg.contains("Pearson r²"),
            "{model}"
        );
        assert_eq!(
            svg.matches("<circle").count(),
            72 * 3,
            "{model}: one point per test row and tissue"
        );
    }
    assert!(summary["test_all"]["bow3"]["r2"].is_number());
    let table = p.read("an/table1.tsv");
    for model in ["finetune", "constant", "bow2", "bow3"] {
        for metric in ["r2", "pearson_r2"] {
            assert!(
                table.contains(&format!("\n{model}\t{metric}\t")),
                "{model} {metric}:\n{table}"
            );
        }
    }
    let e = p.fails(
        &[
            "stage",
            "baselines",
            "--input",
            "table=table.tsv",
            "--set",
            "k=[7]",
            "--out",
            "bad",
        ],
        1,
    );
    assert!(e.contains("each k must be 1 to 6"), "{e}");
}

#[test]
fn importance_maps_where_replacements_move_the_prediction() {
    let p = finetuned();
    p.ok(&[
        "stage",
        "importance",
        "--input",
        "model=ft",
        "--input",
        "promoters=corpus.fa",
        "--set",
        "sequences=20",
        "--set",
        "bin=30",
        "--set",
        "ks=[1, 2]",
        "--out",
        "imp",
    ]);
    let tsv = p.read("imp/importance.tsv");
    let mut lines = tsv.lines();
    assert_eq!(lines.next(), Some("k\tfrom\tto\tmean_abs_change\tn"));
    // 150-base promoters in bins of 30: five bins for each k.
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 10, "{tsv}");
    for r in &rows {
        assert_eq!(r[4], "20", "{tsv}");
        let change: f64 = r[3].parse().unwrap();
        assert!(change.is_finite() && change >= 0.0, "{tsv}");
    }
    let svg = p.read("imp/importance.svg");
    assert!(svg.starts_with("<svg") && svg.contains("bases to the TSS"));
    // A model without a head, and a missing input, are clear errors.
    let e = p.fails(
        &[
            "stage",
            "importance",
            "--input",
            "model=pre",
            "--input",
            "promoters=corpus.fa",
            "--out",
            "imp2",
        ],
        1,
    );
    assert!(e.contains("without an expression head"), "{e}");
    let e = p.fails(
        &[
            "stage",
            "importance",
            "--input",
            "model=ft",
            "--out",
            "imp3",
        ],
        1,
    );
    assert!(e.contains("needs an input `promoters`"), "{e}");
}

#[test]
fn embeddings_compare_species_of_a_pretrained_model() {
    let p = finetuned();
    // The planted promoters as two species: the first half, and the second half made AT-rich.
    let rows = planted(240, 150, 5);
    let mut a = String::new();
    let mut b = String::new();
    for (i, r) in rows.iter().enumerate().take(80) {
        if i % 2 == 0 {
            a.push_str(&format!(">{} maize chr1:1-150(+)\n{}\n", r.id, r.seq));
        } else {
            let at: String = r
                .seq
                .chars()
                .map(|c| if c == 'G' { 'A' } else { c })
                .collect();
            b.push_str(&format!(">{} cress chr1:1-150(-)\n{at}\n", r.id));
        }
    }
    p.write("maize.fa", &a).write("cress.fa", &b);
    p.ok(&[
        "stage",
        "embeddings",
        "--input",
        "model=pre",
        "--input",
        "maize=maize.fa",
        "--input",
        "cress=cress.fa",
        "--set",
        "attribute=clade",
        "--set",
        "groups={maize: monocot, cress: eudicot}",
        "--out",
        "emb",
    ]);
    let table = p.read("emb/species.tsv");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("species\tclade\tsequences\tpc1\tpc2\tcomposition_pc1"));
    assert!(lines[1].starts_with("cress\teudicot\t40\t"), "{table}");
    assert!(lines[2].starts_with("maize\tmonocot\t40\t"), "{table}");
    let svg = p.read("emb/species_pca.svg");
    for t in [
        "mean promoter embedding",
        "base (1-mer) composition",
        "clade: monocot",
        "cress",
    ] {
        assert!(svg.contains(t), "{t}");
    }
    let summary: serde_json::Value = serde_json::from_str(&p.read("emb/summary.json")).unwrap();
    assert!(
        summary["explained"][0].as_f64().unwrap() > 0.99,
        "two species: one axis"
    );
    // One species cannot be compared; a param of the wrong type names the param.
    let e = p.fails(
        &[
            "stage",
            "embeddings",
            "--input",
            "model=pre",
            "--input",
            "maize=maize.fa",
            "--out",
            "emb2",
        ],
        1,
    );
    assert!(
        e.contains("at least 2 species to compare, found 1: maize"),
        "{e}"
    );
    let e = p.fails(
        &[
            "stage",
            "embeddings",
            "--input",
            "model=pre",
            "--set",
            "per_species=many",
            "--out",
            "emb3",
        ],
        2,
    );
    assert!(e.contains("per_species"), "{e}");
}

/// Soft-masked (lower-case) bases are the same bases to every stage (FASTA records are read
/// upper-cased), so a soft-masked corpus trains the tokenizer and the model its upper-case copy
/// trains. A record that is not DNA is refused by file, record and position.
#[test]
fn soft_masked_corpora_train_as_upper_case_and_proteins_are_refused() {
    let p = Project::new();
    let rows = planted(60, 150, 5);
    let fasta = |lower: bool| -> String {
        rows.iter()
            .enumerate()
            .map(|(i, r)| {
                let seq = if lower && i % 2 == 0 {
                    r.seq.to_ascii_lowercase()
                } else {
                    r.seq.clone()
                };
                format!(">{}\n{seq}\n", r.id)
            })
            .collect()
    };
    let pretrain = |out: &str, tok: &str| {
        let tokenizer = format!("tokenizer={tok}");
        p.ok(&[
            "stage",
            "pretrain",
            "--input",
            "corpus=corpus.fa",
            "--input",
            &tokenizer,
            "--set",
            "layers=1",
            "--set",
            "hidden=32",
            "--set",
            "heads=2",
            "--set",
            "intermediate=32",
            "--set",
            "max_len=64",
            "--set",
            "max_steps=2",
            "--set",
            "batch_size=8",
            "--out",
            out,
        ]);
    };
    p.write("corpus.fa", &fasta(false));
    p.bpe(300, "tok_upper");
    pretrain("pre_upper", "tok_upper");
    p.write("corpus.fa", &fasta(true));
    p.bpe(300, "tok_soft");
    pretrain("pre_soft", "tok_upper");
    let bytes = |f: &str| std::fs::read(p.path(f)).unwrap();
    assert!(
        bytes("tok_upper/tokenizer.json") == bytes("tok_soft/tokenizer.json"),
        "the soft-masked corpus trained another tokenizer"
    );
    assert!(
        bytes("pre_upper/model.safetensors") == bytes("pre_soft/model.safetensors"),
        "the soft-masked corpus pretrained other weights"
    );

    p.write("corpus.fa", ">ok\nACGTACGTAC\n>p1 kinase\nMKTAYIAKQR\n");
    for kind in ["bpe", "pretrain"] {
        let e = p.fails(
            &[
                "stage",
                kind,
                "--input",
                "corpus=corpus.fa",
                "--input",
                "tokenizer=tok_upper",
                "--out",
                &format!("refused_{kind}"),
            ],
            1,
        );
        assert!(
            e.contains("corpus.fa: record p1 has `I` at position 6, which is not a nucleotide"),
            "{kind}: {e}"
        );
    }
}
