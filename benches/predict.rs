//! Inference with the paper's model size (6 layers x 768, 6 heads, 3072, 256 tokens, 9 tissues)
//! on the CPU: `flora predict`'s throughput (sequences/s), how much of the machine's cores it
//! keeps busy, and `variants` over many SNVs, with peak memory. The weights are random: speed
//! does not depend on them.
//!
//! ```sh
//! cargo bench --bench predict                          # 512 sequences, 10,000 variants
//! BENCH_SEQS=128 BENCH_VARIANTS=1000 cargo bench --bench predict
//! ```

use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use flora_stages::genomics::fasta::Genome;
use flora_stages::genomics::promoters;
use flora_stages::model::head::{self, HeadConfig, Transform};
use flora_stages::model::predictor::{self, Predictor};
use flora_stages::model::roberta::{Config, Params, Positions};
use flora_stages::model::{tokenizer as bpe, variants};
use flora_stages::rng::Rng;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn status(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

fn random_seq(rng: &mut Rng, n: usize) -> String {
    (0..n).map(|_| ['A', 'C', 'G', 'T'][rng.below(4)]).collect()
}

fn model(dir: &Path, seqs: &[String]) -> Predictor {
    let tok = bpe::train(seqs.iter(), &bpe::Params::default()).unwrap();
    let cfg = Config::new(
        tok.get_vocab_size(true),
        6,
        768,
        6,
        3072,
        256,
        0.1,
        Positions::Tss,
    );
    let mut w = Params::init(&cfg, 0, &Device::Cpu).unwrap();
    head::init(&mut w, &cfg, 9, 0, &Device::Cpu).unwrap();
    let head_cfg = HeadConfig {
        targets: (1..=9).map(|i| format!("tissue{i}")).collect(),
        transform: Transform::Log,
        offset: 0.001,
        dropout: 0.2,
        pooling: "mean".into(),
        promoter_window: None,
    };
    std::fs::create_dir_all(dir).unwrap();
    predictor::save(dir, &cfg, &head_cfg, &w, &tok).unwrap();
    Predictor::load(dir, Device::Cpu).unwrap()
}

fn main() {
    let n_seqs = env("BENCH_SEQS", 512);
    let n_variants = env("BENCH_VARIANTS", 10_000);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let root =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/predict");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let mut rng = Rng::new(3);
    let seqs: Vec<String> = (0..n_seqs.max(200))
        .map(|_| random_seq(&mut rng, 1000))
        .collect();
    let model = model(&root.join("model"), &seqs[..200]);

    // predict
    let refs: Vec<&[u8]> = seqs[..n_seqs].iter().map(|s| s.as_bytes()).collect();
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let enc = model.encode(&refs).unwrap();
    let tokens: usize = enc
        .rows
        .iter()
        .map(|r| r.iter().filter(|&&t| t != 2).count())
        .sum();
    let pred = model.predict(&enc.rows).unwrap();
    let (wall, used) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    assert_eq!(pred.len(), n_seqs);
    println!("| measure | value |");
    println!("| --- | ---: |");
    println!(
        "| predict: sequences | {n_seqs} (1 kb, {} tokens each on average) |",
        tokens / n_seqs
    );
    println!("| predict: wall time | {wall:.2} s |");
    println!("| predict: sequences/s | {:.1} |", n_seqs as f64 / wall);
    println!("| predict: tokens/s | {:.0} |", tokens as f64 / wall);
    println!(
        "| predict: cores busy (CPU time / wall time, of {cores}) | {:.2} |",
        used / wall
    );
    println!(
        "| peak memory after predict (VmHWM) | {:.0} MiB |",
        status("VmHWM:")
    );

    // variants: SNVs spread over the promoter windows of a generated genome.
    let genes = (n_variants / 10).max(10);
    let contig = genes * 3000 + 2000;
    let genome_seq = random_seq(&mut rng, contig);
    let mut fa = String::from(">chr1\n");
    for line in genome_seq.as_bytes().chunks(60) {
        fa.push_str(std::str::from_utf8(line).unwrap());
        fa.push('\n');
    }
    std::fs::write(root.join("genome.fa"), fa).unwrap();
    let mut gff = String::from("##gff-version 3\n");
    for g in 0..genes {
        let start = 1500 + g * 3000;
        let strand = if g % 2 == 0 { '+' } else { '-' };
        gff.push_str(&format!(
            "chr1\tb\tgene\t{start}\t{}\t.\t{strand}\t.\tID=gene:g{g};biotype=protein_coding\n",
            start + 1000
        ));
    }
    std::fs::write(root.join("genes.gff3"), gff).unwrap();
    let p = promoters::Params {
        edge: promoters::Edge::Keep,
        ..promoters::Params::default()
    };
    let (windows, _) = promoters::extract(
        &p,
        &root.join("genome.fa"),
        &root.join("genes.gff3"),
        &root.join("w"),
    )
    .unwrap();
    let mut vcf = String::from(
        "##fileformat=VCFv4.2\n##contig=<ID=chr1>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n",
    );
    let mut positions: Vec<u64> = Vec::new();
    for w in &windows {
        for k in 0..10 {
            positions.push(w.start + 50 + k * 95);
        }
    }
    positions.truncate(n_variants);
    positions.sort_unstable();
    for pos in &positions {
        let r = genome_seq.as_bytes()[*pos as usize - 1] as char;
        let a = if r == 'A' { 'C' } else { 'A' };
        vcf.push_str(&format!("chr1\t{pos}\t.\t{r}\t{a}\t.\t.\t.\n"));
    }
    std::fs::write(root.join("calls.vcf"), vcf).unwrap();
    let genome =
        Genome::open(&Genome::prepare(&root.join("genome.fa"), &root.join("w")).unwrap()).unwrap();
    let t = Instant::now();
    let report = variants::score(&model, &genome, &windows, &root.join("calls.vcf")).unwrap();
    let wall = t.elapsed().as_secs_f64();
    println!(
        "| variants: SNVs scored | {} (in {} windows) |",
        report.effects.len(),
        windows.len()
    );
    println!("| variants: wall time | {wall:.1} s |");
    println!(
        "| variants: variants/s | {:.1} |",
        report.effects.len() as f64 / wall
    );
    println!("| peak memory (VmHWM) | {:.0} MiB |", status("VmHWM:"));
}
