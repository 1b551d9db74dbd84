//! The command line: flags, parsed by clap in one step, then one function per subcommand.
//!
//! Output goes through [`out!`] and [`outln!`], which return an error instead of panicking when
//! stdout is closed (`flora plan wf.yaml | head`); the binary exits quietly on a broken pipe.

/// `print!` that returns `std::io::Error` instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*)?;
    }};
}

/// `println!` that returns `std::io::Error` instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?;
    }};
}

pub mod bench;
pub mod cache_cmd;
pub mod check;
pub mod inspect;
pub mod live_log;
pub mod model_cmd;
pub mod run;
pub mod stage;
pub mod summary;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::dag::render::Format;

/// flora: reproduce and extend FloraBERT (plant gene expression from promoter DNA) as a cached,
/// incremental workflow.
#[derive(Debug, Parser)]
#[command(name = "flora", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// The cache folder (artifacts, index, logs).
    #[arg(long, global = true, env = "FLORA_CACHE", default_value = "cache")]
    pub cache: PathBuf,
    /// Fail at once instead of waiting when another flora is using the cache.
    #[arg(long, global = true)]
    pub no_wait: bool,
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "Examples:
  flora run workflows/demo.yaml
  flora plan workflows/paper.yaml --set finetune.lr=1e-4
  flora run workflows/paper.yaml --until pretrain --gpus 0,1
  flora show workflows/demo.yaml finetune
  flora stage exec --set 'argv=[sh, -c, \"date > $FLORA_OUT/now\"]' --out now/";

/// Options shared by the commands that read a workflow.
#[derive(Debug, Args, Clone)]
pub struct WorkflowArgs {
    /// The workflow file (YAML).
    pub workflow: PathBuf,
    /// Override a param: STAGE.PARAM=VALUE, VALUE read as YAML; nested with dots; `vars.NAME=...` sets a var, `STAGE.resources.NAME=...` a resource.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    pub sets: Vec<String>,
}

/// Which jobs a run or plan covers.
#[derive(Debug, Args, Clone, Default)]
pub struct SelectArgs {
    /// Only this stage (or job `stage[item]`) and what it depends on.
    #[arg(long, value_name = "STAGE")]
    pub until: Option<String>,
    /// Run this stage (or job) even if it is cached; repeatable.
    #[arg(long, value_name = "STAGE")]
    pub force: Vec<String>,
}

/// Which GPUs jobs may use.
#[derive(Debug, Args, Clone, Default)]
pub struct DeviceArgs {
    /// GPU device indices that GPU stages may use, e.g. 0,1.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub gpus: Vec<usize>,
    /// Fail if a GPU stage would have to run on the CPU.
    #[arg(long)]
    pub require_gpu: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a workflow: every job that is not cached, in parallel.
    #[command(after_help = "Examples:
  flora run workflows/demo.yaml
  flora run workflows/demo.yaml --set finetune.epochs=5 --jobs 2
  flora run workflows/paper.yaml --until maize_pretrain --gpus 0,1 --require-gpu
  flora run workflows/demo.yaml --force baselines --keep-going
  flora run workflows/paper.yaml --executor slurm --partition cpu --account plants
  flora run workflows/paper.yaml --executor slurm --slurm-arg=--qos=long")]
    Run(RunArgs),
    /// Show what a run would do: each job, cached or to run, and why.
    #[command(after_help = "Examples:
  flora plan workflows/demo.yaml
  flora plan workflows/demo.yaml --set finetune.lr=1e-4 --json")]
    Plan(PlanArgs),
    /// Draw the workflow's graph (Graphviz dot or Mermaid).
    #[command(after_help = "Examples:
  flora dag workflows/demo.yaml | dot -Tsvg > dag.svg
  flora dag workflows/demo.yaml --format mermaid --jobs")]
    Dag(DagArgs),
    /// Where a stage's artifact is, and how it was made (provenance).
    #[command(after_help = "Example:\n  flora show workflows/demo.yaml finetune")]
    Show(ShowArgs),
    /// Print a stage's log (of the run that made its current artifact, or its last run; while
    /// a run runs it, the log so far).
    #[command(after_help = "Examples:
  flora log workflows/demo.yaml 'genome[athaliana]'
  flora log workflows/paper.yaml pretrain --follow     # while a run trains it")]
    Log(LogArgs),
    /// Run one stage kind outside a workflow (still cached), or list the kinds.
    #[command(after_help = "Examples:
  flora stage --list
  flora stage exec --input src=genes.txt --set 'argv=[sh, -c, \"sort $FLORA_IN_src > $FLORA_OUT/sorted.txt\"]' --out sorted/")]
    Stage(StageArgs),
    /// Inspect and maintain the cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Predict expression per tissue for promoter sequences with a fine-tuned model.
    #[command(after_help = "Example:
  flora predict --model results/demo/finetune --fasta promoters.fa.gz -o predictions.tsv")]
    Predict(model_cmd::PredictArgs),
    /// Mean-pooled embeddings of promoter sequences (TSV, or .npy for large sets).
    #[command(after_help = "Examples:
  flora embed --model results/demo/pretrain --fasta promoters.fa.gz -o embeddings.npy
  flora embed --model results/demo/finetune --fasta few.fa -o embeddings.tsv")]
    Embed(model_cmd::EmbedArgs),
    /// Predicted effect of every variant in a promoter window (alt minus ref, per tissue).
    #[command(after_help = "Example:
  flora variants --model results/demo/finetune --genome genome.fa.gz --gff genes.gff3 --vcf calls.vcf.gz -o effects.tsv")]
    Variants(model_cmd::VariantsArgs),
    /// In-silico saturation mutagenesis of one promoter: every base changed to each other base.
    #[command(after_help = "Example:
  flora mutagenesis --model results/demo/finetune --fasta one.fa -o map.tsv --figure map.svg --target root")]
    Mutagenesis(model_cmd::MutagenesisArgs),
    /// Compare a workflow's key figures with its expected-results file, within tolerances.
    #[command(after_help = "Examples:
  flora check workflows/demo.yaml
  flora check workflows/arabidopsis.yaml --set vars.data=../shared/data --expected my.expected.yaml")]
    Check(check::CheckArgs),
    /// Time training steps of a model of a given size on the CPU or a GPU (tokens/s, FLOP/s).
    #[command(after_help = "Examples:
  flora bench --steps 3
  flora bench --gpu 0 --precision bf16 --batch 84 --steps 20 --json")]
    Bench(bench::BenchArgs),
    /// Run one job from a spec file (used by executors).
    #[command(name = "__job", hide = true)]
    Job {
        /// The spec file written by the driver.
        spec: PathBuf,
        /// The local driver's process id: the job ends when that process does.
        #[arg(long)]
        driver: Option<u32>,
    },
    /// Stop a local run's `exec` programs should the run die (used by the local executor).
    #[command(name = "__reaper", hide = true)]
    Reaper,
}

/// `flora run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub workflow: WorkflowArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub select: SelectArgs,
    /// At most N jobs at once (default: the number of cores; with --executor slurm, 500 Slurm
    /// jobs, a bundle of jobs counting once).
    #[arg(short, long, value_name = "N", value_parser = count)]
    pub jobs: Option<usize>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub devices: DeviceArgs,
    /// After a failure, keep running every job that does not depend on it.
    #[arg(short, long)]
    pub keep_going: bool,
    /// Where to link each stage's output (default: results/<workflow name>).
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// Where jobs run: child processes here, or one Slurm job each (`sbatch`).
    #[arg(long, value_enum, default_value = "local")]
    pub executor: ExecutorKind,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub slurm: SlurmArgs,
}

/// Where `flora run` runs jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    /// Child processes of this flora, on this machine.
    Local,
    /// One Slurm batch job per flora job; needs the cache on a shared file system.
    Slurm,
}

/// Options of `--executor slurm`.
#[derive(Debug, Args)]
pub struct SlurmArgs {
    /// Slurm partition for jobs whose stage names none in `resources: {partition: ...}`.
    #[arg(long, value_name = "P")]
    pub partition: Option<String>,
    /// Slurm account to charge.
    #[arg(long, value_name = "A")]
    pub account: Option<String>,
    /// One more `sbatch` argument, as given (repeatable), e.g. --slurm-arg=--qos=high.
    #[arg(long = "slurm-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub slurm_args: Vec<String>,
    /// Submit a job again this many times when Slurm reports NODE_FAIL, PREEMPTED or BOOT_FAIL.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub slurm_retries: usize,
    /// Submit a job again, up to this many times, when Slurm ends it (a time limit, a node
    /// failure, a pre-emption) after it saved something in its work folder (a checkpoint), so
    /// that it goes on from there.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub slurm_continuations: usize,
    /// Seconds between two looks at the queue (`squeue`); a job's end is seen sooner, by its
    /// end marker.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub slurm_poll: f64,
    /// Seconds a completed job's output may take to show here (network file systems).
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub slurm_latency: f64,
}

/// `flora plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub workflow: WorkflowArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub select: SelectArgs,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `flora dag`.
#[derive(Debug, Args)]
pub struct DagArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub workflow: WorkflowArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "dot")]
    pub format: Format,
    /// One node per job instead of per stage.
    #[arg(long)]
    pub jobs: bool,
}

/// `flora show` and `flora log`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The workflow file (YAML).
    pub workflow: PathBuf,
    /// A stage, or one job of a fan-out: `stage[item]`.
    pub stage: String,
    /// Override a param, as for `flora run`.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    pub sets: Vec<String>,
}

/// `flora log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub show: ShowArgs,
    /// While a run runs the job, print its log as it grows, until the job ends.
    #[arg(short, long)]
    pub follow: bool,
}

/// `flora stage`.
#[derive(Debug, Args)]
pub struct StageArgs {
    /// The stage kind to run.
    #[arg(required_unless_present = "list")]
    pub kind: Option<String>,
    /// An input: NAME=PATH; repeatable.
    #[arg(long = "input", value_name = "NAME=PATH")]
    pub inputs: Vec<String>,
    /// A param: PARAM=VALUE (VALUE read as YAML; nested with dots); repeatable.
    #[arg(long = "set", value_name = "PARAM=VALUE")]
    pub sets: Vec<String>,
    /// Where to copy the output (must not exist, or be empty).
    #[arg(long, value_name = "DIR", required_unless_present = "list")]
    pub out: Option<PathBuf>,
    /// CPU threads the job may use [default: every CPU].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub devices: DeviceArgs,
    /// List the stage kinds.
    #[arg(long)]
    pub list: bool,
}

/// `flora cache ...`.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List artifacts (digest, size, when, and which jobs made them), then the work folders that
    /// unfinished jobs left (and the step of their checkpoints).
    Ls,
    /// Remove what the given workflows do not use and what is older than a date: artifacts, the
    /// work folders and logs of jobs that will not run again, and stale index entries.
    #[command(after_help = "Examples:
  flora cache gc --keep workflows/demo.yaml --keep workflows/paper.yaml
  flora cache gc --newer-than 2026-11-01 --dry-run
  flora cache gc --newer-than 7days")]
    Gc(GcArgs),
    /// Re-hash every artifact and report any that changed on disk.
    Verify {
        /// Delete damaged artifacts, so that the jobs that made them run again.
        #[arg(long)]
        remove: bool,
    },
}

/// `flora cache gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep the artifacts, work folders and logs of this workflow's current jobs (as planned
    /// now); repeatable.
    #[arg(long, value_name = "WORKFLOW")]
    pub keep: Vec<PathBuf>,
    /// Keep artifacts published, and work folders and logs changed, after this date (2026-11-01,
    /// RFC 3339) or within this long ago (7days).
    #[arg(long, value_name = "WHEN")]
    pub newer_than: Option<String>,
    /// Say what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// A count that must be at least 1 (`--jobs`, `--batch-size`): 0 is refused by name rather than
/// quietly read as 1.
fn count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses the command line.
pub fn parse() -> Cli {
    Cli::parse()
}
