//! Using a model: `flora predict`, `flora embed`, `flora mutagenesis` and `flora variants`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use candle_core::Device;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use flora_stages::genomics::fasta::Genome;
use flora_stages::genomics::promoters;
use flora_stages::genomics::records::{self, FastaRecord};
use flora_stages::genomics::window::Window;
use flora_stages::model::predictor::Predictor;
use flora_stages::model::{mutagenesis, variants};

/// Where a model runs and how much it reads at once.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// The model folder (from `finetune`; `embed` also takes a pretrained one).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 32, value_name = "N", value_parser = super::count)]
    pub batch_size: usize,
    /// Run on this CUDA device (needs a flora built with `--features cuda`).
    #[arg(long, value_name = "INDEX")]
    pub gpu: Option<usize>,
}

/// `flora predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    /// Promoter sequences: a FASTA (plain or gzip/bgzip), or a `promoters` output folder.
    #[arg(long, value_name = "FILE")]
    pub fasta: PathBuf,
    /// Output TSV (default: stdout).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `flora embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    /// Promoter sequences: a FASTA (plain or gzip/bgzip), or a `promoters` output folder.
    #[arg(long, value_name = "FILE")]
    pub fasta: PathBuf,
    /// Output: `.tsv` (id, then one column per dimension) or `.npy` (float32 rows, with the ids
    /// in `<name>.ids.txt` beside it).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

/// `flora mutagenesis`.
#[derive(Debug, Args)]
pub struct MutagenesisArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    /// A FASTA holding the promoter (its only record, or the one named by --id), or a
    /// `promoters` output folder.
    #[arg(long, value_name = "FILE")]
    pub fasta: PathBuf,
    /// Which record of the FASTA.
    #[arg(long)]
    pub id: Option<String>,
    /// Output TSV (default: stdout).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also draw the map as an SVG heat map (distance to the TSS by new base).
    #[arg(long, value_name = "FILE.svg")]
    pub figure: Option<PathBuf>,
    /// The tissue the figure shows (default: the first).
    #[arg(long, value_name = "NAME", requires = "figure")]
    pub target: Option<String>,
}

/// `flora variants`.
#[derive(Debug, Args)]
pub struct VariantsArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    /// The genome FASTA (plain, gzip or bgzip).
    #[arg(long, value_name = "FILE")]
    pub genome: PathBuf,
    /// Its genes (GFF3).
    #[arg(long, value_name = "FILE")]
    pub gff: PathBuf,
    /// Variant calls (VCF, bgzipped VCF or BCF).
    #[arg(long, value_name = "FILE")]
    pub vcf: PathBuf,
    /// Promoter window: bases upstream of the TSS (default: the window the model records,
    /// else 1000).
    #[arg(long, value_name = "N")]
    pub upstream: Option<u64>,
    /// Bases downstream of the TSS (default: the model's, else 0).
    #[arg(long, value_name = "N")]
    pub downstream: Option<u64>,
    /// Where the TSS is: the gene's start, or its canonical (else longest) transcript's (the
    /// `promoters` param `feature`).
    #[arg(long, value_name = "gene|transcript", default_value = "gene",
          value_parser = ["gene", "transcript"])]
    pub feature: String,
    /// The GFF3 attribute that names genes: `auto`, `locus_tag`, `Name`, ... (the `promoters`
    /// param `id_attribute`).
    #[arg(long, value_name = "NAME", default_value = "auto")]
    pub id_attribute: String,
    /// The biotypes of the genes scored, comma-separated, or `all` (the `promoters` param
    /// `biotypes`).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "protein_coding"
    )]
    pub biotypes: Vec<String>,
    /// Clip each window where it reaches into the neighbouring gene upstream (the `promoters`
    /// param `avoid_overlap`).
    #[arg(long)]
    pub avoid_overlap: bool,
    /// Output TSV (default: stdout).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

fn load(args: &ModelArgs) -> anyhow::Result<Predictor> {
    let device = match args.gpu {
        None => Device::Cpu,
        Some(i) => {
            flora_stages::model::device::cuda(i).map_err(|e| anyhow::anyhow!("--gpu: {e}"))?
        }
    };
    let mut model = Predictor::load(&args.model, device).map_err(anyhow::Error::msg)?;
    model.batch_size = args.batch_size;
    Ok(model)
}

/// The records of a FASTA, or of every promoters FASTA in a stage's output folder (a
/// `promoters` artifact, or a fan-out of them), as stage inputs are read.
fn read_fasta(path: &Path) -> anyhow::Result<Vec<FastaRecord>> {
    let files = if path.is_dir() {
        flora_stages::splits::corpus::fasta_files(path).map_err(anyhow::Error::msg)?
    } else {
        vec![path.to_path_buf()]
    };
    let mut recs = Vec::new();
    for file in &files {
        recs.extend(records::read_all(file).map_err(anyhow::Error::msg)?);
    }
    if recs.is_empty() {
        bail!("{}: holds no sequences", path.display());
    }
    if let Some(r) = recs.iter().find(|r| r.seq.is_empty()) {
        bail!("{}: record {} has no sequence", path.display(), r.id);
    }
    Ok(recs)
}

/// Checks, before any work, that `path` (given with `flag`; none: stdout) can be written: its
/// folder exists and it is not a folder itself. A long run must not end in "no such file".
fn check_output(flag: &str, path: Option<&Path>) -> anyhow::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        bail!(
            "{flag} {}: the folder {} does not exist",
            path.display(),
            folder.display()
        );
    }
    if path.is_dir() {
        bail!("{flag} {}: is a folder; name a file", path.display());
    }
    Ok(())
}

/// Whether `flora embed` writes `path` as `.npy` (else TSV); other formats are refused.
fn embed_writes_npy(path: &Path) -> anyhow::Result<bool> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => Ok(true),
        None | Some("tsv" | "txt" | "tab") => Ok(false),
        Some(other) => bail!(
            "-o {}: embed writes `.tsv` (a table) or `.npy` (float32 rows), not `.{other}`",
            path.display()
        ),
    }
}

/// A sink: the file, or stdout.
fn sink(path: Option<&Path>) -> anyhow::Result<Box<dyn Write>> {
    Ok(match path {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("{}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    })
}

fn bar(total: usize, what: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total as u64), target);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {what} ({{per_sec}}, {{eta}} left)"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Runs `f` over the sequences in blocks, with a progress bar; returns the rows in order.
fn in_blocks(
    model: &Predictor,
    recs: &[FastaRecord],
    f: impl Fn(&Predictor, &[Vec<u32>]) -> Result<Vec<Vec<f32>>, String>,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let progress = bar(recs.len(), "sequences");
    let mut out = Vec::with_capacity(recs.len());
    let mut truncated = 0;
    for block in recs.chunks(model.batch_size * 8) {
        let seqs: Vec<&[u8]> = block.iter().map(|r| r.seq.as_slice()).collect();
        let enc = model.encode(&seqs).map_err(anyhow::Error::msg)?;
        truncated += enc.truncated;
        out.extend(f(model, &enc.rows).map_err(anyhow::Error::msg)?);
        progress.inc(block.len() as u64);
    }
    progress.finish_and_clear();
    if truncated > 0 {
        eprintln!(
            "{truncated} of {} sequences were longer than the model reads ({} tokens) and lost their 5' end",
            recs.len(),
            model.max_len()
        );
    }
    Ok(out)
}

fn row(out: &mut dyn Write, first: &str, values: &[f32]) -> std::io::Result<()> {
    write!(out, "{first}")?;
    for v in values {
        write!(out, "\t{v:.5}")?;
    }
    writeln!(out)
}

/// `flora predict`.
pub fn predict(args: &PredictArgs) -> anyhow::Result<()> {
    check_output("-o", args.output.as_deref())?;
    let model = load(&args.model)?;
    let targets = model.head().map_err(anyhow::Error::msg)?.targets.clone();
    let recs = read_fasta(&args.fasta)?;
    let preds = in_blocks(&model, &recs, |m, rows| m.predict(rows))?;
    per_sequence(args.output.as_deref(), &targets, &recs, &preds)
}

/// Writes `id` and `columns` as a header, then each record's id and values.
fn per_sequence(
    path: Option<&Path>,
    columns: &[String],
    recs: &[FastaRecord],
    values: &[Vec<f32>],
) -> anyhow::Result<()> {
    let mut out = sink(path)?;
    writeln!(out, "id\t{}", columns.join("\t"))?;
    for (r, v) in recs.iter().zip(values) {
        row(&mut out, &r.id, v)?;
    }
    out.flush()?;
    Ok(())
}

/// `flora embed`.
pub fn embed(args: &EmbedArgs) -> anyhow::Result<()> {
    check_output("-o", Some(&args.output))?;
    let npy = embed_writes_npy(&args.output)?;
    let model = load(&args.model)?;
    let recs = read_fasta(&args.fasta)?;
    let emb = in_blocks(&model, &recs, |m, rows| m.embed(rows))?;
    if npy {
        let dims = emb.first().map_or(0, Vec::len);
        let flat: Vec<f32> = emb.iter().flatten().copied().collect();
        candle_core::Tensor::from_vec(flat, (recs.len(), dims), &Device::Cpu)?
            .write_npy(&args.output)
            .with_context(|| format!("{}", args.output.display()))?;
        let ids = args.output.with_extension("ids.txt");
        let text: String = recs.iter().map(|r| format!("{}\n", r.id)).collect();
        std::fs::write(&ids, text).with_context(|| format!("{}", ids.display()))?;
    } else {
        let dims = emb.first().map_or(0, Vec::len);
        let header: Vec<String> = (0..dims).map(|d| format!("dim{d}")).collect();
        per_sequence(Some(&args.output), &header, &recs, &emb)?;
    }
    Ok(())
}

/// `flora mutagenesis`.
pub fn mutagenesis(args: &MutagenesisArgs) -> anyhow::Result<()> {
    check_output("-o", args.output.as_deref())?;
    check_output("--figure", args.figure.as_deref())?;
    let model = load(&args.model)?;
    let targets = model.head().map_err(anyhow::Error::msg)?.targets.clone();
    let recs = read_fasta(&args.fasta)?;
    let rec = match &args.id {
        Some(id) => recs
            .iter()
            .find(|r| &r.id == id)
            .with_context(|| format!("{}: no record {id}", args.fasta.display()))?,
        None if recs.len() == 1 => &recs[0],
        None => bail!(
            "{}: holds {} sequences; name one with --id",
            args.fasta.display(),
            recs.len()
        ),
    };
    let shown = match &args.target {
        Some(t) => targets.iter().position(|x| x == t).with_context(|| {
            format!(
                "--target {t}: the model's targets are {}",
                targets.join(", ")
            )
        })?,
        None => 0,
    };
    let (base, muts) = mutagenesis::saturate(&model, &rec.seq).map_err(anyhow::Error::msg)?;
    if let Some(path) = &args.figure {
        let cells: Vec<(usize, u8, f32)> = muts
            .iter()
            .map(|m| (m.distance_to_tss, m.alt, m.delta[shown]))
            .collect();
        let title = format!("{}: change in predicted {}", rec.id, targets[shown]);
        let svg = flora_stages::analysis::figures::mutagenesis_heatmap(&cells, &title)
            .map_err(anyhow::Error::msg)?;
        std::fs::write(path, svg).with_context(|| format!("{}", path.display()))?;
    }
    let mut out = sink(args.output.as_deref())?;
    let deltas: Vec<String> = targets.iter().map(|t| format!("delta_{t}")).collect();
    writeln!(
        out,
        "# {}: predicted {}",
        rec.id,
        fmt_values(&targets, &base)
    )?;
    writeln!(
        out,
        "position\tdistance_to_tss\tref\talt\t{}",
        deltas.join("\t")
    )?;
    for m in &muts {
        let first = format!(
            "{}\t{}\t{}\t{}",
            m.position, m.distance_to_tss, m.reference as char, m.alt as char
        );
        row(&mut out, &first, &m.delta)?;
    }
    out.flush()?;
    Ok(())
}

fn fmt_values(names: &[String], values: &[f32]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}={v:.4}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The promoter window `flora variants` cuts: what the command line says, else what the model
/// was trained on, else 1000 bases upstream; stderr says which, and warns when the command line
/// differs from the model's.
fn variant_window(args: &VariantsArgs, trained: Option<Window>) -> Window {
    let fallback = trained.unwrap_or(Window {
        upstream: 1000,
        downstream: 0,
    });
    let window = Window {
        upstream: args.upstream.unwrap_or(fallback.upstream),
        downstream: args.downstream.unwrap_or(fallback.downstream),
    };
    match trained {
        Some(t) if t != window => eprintln!(
            "variants: warning: the model was trained on promoters cut with {t}; scoring \
             windows of {window} as asked"
        ),
        Some(t) if args.upstream.is_none() || args.downstream.is_none() => {
            eprintln!("variants: windows of {t}, as the model was trained on")
        }
        Some(_) => {}
        None if args.upstream.is_none() || args.downstream.is_none() => eprintln!(
            "variants: the model records no promoter window; scoring windows of {window} \
             (--upstream and --downstream set them)"
        ),
        None => {}
    }
    window
}

/// `flora variants`.
pub fn variants(args: &VariantsArgs) -> anyhow::Result<()> {
    check_output("-o", args.output.as_deref())?;
    let model = load(&args.model)?;
    let head = model.head().map_err(anyhow::Error::msg)?;
    let targets = head.targets.clone();
    let window = variant_window(args, head.promoter_window);
    let work = tempfile::tempdir()?;
    let params = promoters::Params {
        upstream: window.upstream,
        downstream: window.downstream,
        edge: promoters::Edge::Keep,
        feature: if args.feature == "transcript" {
            promoters::Feature::Transcript
        } else {
            promoters::Feature::Gene
        },
        id_attribute: args.id_attribute.clone(),
        biotypes: if args.biotypes.iter().any(|b| b == "all") {
            Vec::new()
        } else {
            args.biotypes.clone()
        },
        avoid_overlap: args.avoid_overlap,
        ..promoters::Params::default()
    };
    let (windows, summary) = promoters::extract(&params, &args.genome, &args.gff, work.path())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let dropped: Vec<String> = summary
        .dropped
        .iter()
        .map(|(why, n)| format!("{why}: {n}"))
        .collect();
    eprintln!(
        "variants: {} promoter windows of {} genes{}",
        windows.len(),
        summary.genes,
        if dropped.is_empty() {
            String::new()
        } else {
            format!(" (dropped: {})", dropped.join(", "))
        }
    );
    let prepared =
        Genome::prepare(&args.genome, work.path()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let genome = Genome::open(&prepared).map_err(|e| anyhow::anyhow!("{e}"))?;
    let report =
        variants::score(&model, &genome, &windows, &args.vcf).map_err(anyhow::Error::msg)?;
    let mut out = sink(args.output.as_deref())?;
    let deltas: Vec<String> = targets.iter().map(|t| format!("delta_{t}")).collect();
    writeln!(
        out,
        "chrom\tpos\tref\talt\tgene_id\tstrand\tdistance_to_tss\t{}",
        deltas.join("\t")
    )?;
    for e in &report.effects {
        let first = format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            e.chrom,
            e.pos,
            e.reference,
            e.alt,
            e.gene_id,
            e.strand.symbol(),
            e.distance_to_tss
        );
        row(&mut out, &first, &e.delta)?;
    }
    out.flush()?;
    let skipped: Vec<String> = report
        .skipped
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    eprintln!(
        "variants: {} alleles scored; {} outside every promoter window; skipped: {}",
        report.effects.len(),
        report.outside,
        if skipped.is_empty() {
            "none".into()
        } else {
            skipped.join(", ")
        }
    );
    Ok(())
}
