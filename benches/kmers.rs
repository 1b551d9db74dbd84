//! The k-mer baseline: 5-mer counting and the linear fit on 40,000 promoters of 1 kb (9 targets),
//! flora against scikit-learn (`CountVectorizer(analyzer="char", ngram_range=(5, 5))` +
//! `LinearRegression`) on the same table, checking that both fits predict the same values.
//!
//! ```sh
//! bash benches/kmers/run.sh        # installs scikit-learn in a venv, then runs this
//! KMER_BENCH_ROWS=4000 bash benches/kmers/run.sh
//! ```
//! Without `FLORA_SKLEARN_PYTHON` (a Python with scikit-learn; run.sh sets it) only flora runs.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use flora_stages::baselines::kmers::{self, Counting};
use flora_stages::baselines::ridge;
use flora_stages::rng::Rng;

/// Each side runs this many times; the fastest run counts.
const RUNS: usize = 3;
const LEN: usize = 1000;
const TARGETS: usize = 9;
const K: usize = 5;

fn main() {
    let rows: usize = std::env::var("KMER_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40_000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/kmers");
    std::fs::create_dir_all(&root).unwrap();
    let table = root.join(format!("table_{rows}.tsv"));
    let (seqs, y) = generate(rows, &table);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "k-mer baseline: {rows} promoters x {LEN} bp, k = {K}, {TARGETS} targets, {threads} threads, best of {RUNS}"
    );

    let mut best = (f64::MAX, f64::MAX);
    let mut fitted = None;
    for _ in 0..RUNS {
        let start = Instant::now();
        let x: Vec<Vec<f64>> = {
            use rayon::prelude::*;
            seqs.par_iter()
                .map(|s| kmers::features(s, &[K], Counting::Overlapping))
                .collect()
        };
        let count = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let m = ridge::fit(&x, &y, 0.0).unwrap();
        let fit = start.elapsed().as_secs_f64();
        if count + fit < best.0 + best.1 {
            best = (count, fit);
        }
        fitted = Some((x, m));
    }
    let (x, m) = fitted.unwrap();
    let flora_pred: Vec<Vec<f64>> = x.iter().map(|xi| m.predict(xi)).collect();
    let flora_r2 = r2(&y, &flora_pred);
    println!(
        "flora:        count {:.3} s + fit {:.3} s = {:.3} s   (train R2 {flora_r2:.6})",
        best.0,
        best.1,
        best.0 + best.1
    );

    let Some(python) = std::env::var_os("FLORA_SKLEARN_PYTHON") else {
        eprintln!("SKIPPED scikit-learn: FLORA_SKLEARN_PYTHON is not set (bash benches/kmers/run.sh sets it)");
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/kmers/sklearn_kmers.py");
    let out = root.join("sklearn_predictions.tsv");
    let mut sk_best = (f64::MAX, f64::MAX);
    let mut sk_r2 = 0.0;
    for _ in 0..RUNS {
        let o = Command::new(&python)
            .arg(&script)
            .arg(&table)
            .arg(K.to_string())
            .arg(&out)
            .output()
            .expect("runs python");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let (c, f) = (v["count_s"].as_f64().unwrap(), v["fit_s"].as_f64().unwrap());
        if c + f < sk_best.0 + sk_best.1 {
            sk_best = (c, f);
        }
        sk_r2 = v["r2_train"].as_f64().unwrap();
    }
    println!(
        "scikit-learn: count {:.3} s + fit {:.3} s = {:.3} s   (train R2 {sk_r2:.6})",
        sk_best.0,
        sk_best.1,
        sk_best.0 + sk_best.1
    );
    let sk_pred = read_predictions(&out);
    let diff = flora_pred
        .iter()
        .flatten()
        .zip(sk_pred.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!("largest |flora - scikit-learn| prediction: {diff:.2e}");
    println!(
        "speed-up: counting {:.1}x, fit {:.1}x, total {:.1}x",
        sk_best.0 / best.0,
        sk_best.1 / best.1,
        (sk_best.0 + sk_best.1) / (best.0 + best.1)
    );
}

/// Random 1 kb promoters whose targets are a linear function of a few planted 5-mers' counts plus
/// noise; written as a `id, sequence, t0..t8` table (once per size) and returned.
fn generate(rows: usize, table: &Path) -> (Vec<Vec<u8>>, Vec<Vec<f64>>) {
    let mut rng = Rng::new(5);
    let motifs: [&[u8]; 4] = [b"TATAA", b"CACGT", b"TTGAC", b"AAAGC"];
    let weights: Vec<Vec<f64>> = (0..motifs.len())
        .map(|_| {
            (0..TARGETS)
                .map(|_| rng.below(2000) as f64 / 1000.0 - 1.0)
                .collect()
        })
        .collect();
    let mut seqs = Vec::with_capacity(rows);
    let mut ys = Vec::with_capacity(rows);
    let mut w = BufWriter::new(std::fs::File::create(table).unwrap());
    let names: Vec<String> = (0..TARGETS).map(|t| format!("t{t}")).collect();
    writeln!(w, "id\tsequence\t{}", names.join("\t")).unwrap();
    for i in 0..rows {
        let seq: Vec<u8> = (0..LEN).map(|_| b"ACGT"[rng.below(4)]).collect();
        let mut y = vec![0.0; TARGETS];
        for (m, motif) in motifs.iter().enumerate() {
            let n = seq.windows(K).filter(|win| win == motif).count() as f64;
            for (t, yt) in y.iter_mut().enumerate() {
                *yt += weights[m][t] * n;
            }
        }
        for yt in &mut y {
            *yt += (rng.below(1000) as f64 / 1000.0 - 0.5) * 0.5;
        }
        let cells: Vec<String> = y.iter().map(|v| format!("{v:.6}")).collect();
        writeln!(
            w,
            "p{i}\t{}\t{}",
            std::str::from_utf8(&seq).unwrap(),
            cells.join("\t")
        )
        .unwrap();
        seqs.push(seq);
        ys.push(y);
    }
    w.flush().unwrap();
    (seqs, ys)
}

fn r2(y: &[Vec<f64>], pred: &[Vec<f64>]) -> f64 {
    let q = y[0].len();
    let means: Vec<f64> = (0..q)
        .map(|t| y.iter().map(|r| r[t]).sum::<f64>() / y.len() as f64)
        .collect();
    let (mut res, mut tot) = (0.0, 0.0);
    for (yr, pr) in y.iter().zip(pred) {
        for t in 0..q {
            res += (yr[t] - pr[t]).powi(2);
            tot += (yr[t] - means[t]).powi(2);
        }
    }
    1.0 - res / tot
}

fn read_predictions(path: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').map(|v| v.parse().unwrap()).collect())
        .collect()
}
