//! The registry of stage kinds: the one place that knows both the engine and flora-stages.
//!
//! Each kind has a name, a version (bumped whenever its output for the same params and inputs
//! changes, which invalidates every cached artifact of that kind), a params check that turns the
//! workflow's YAML into the typed, canonical params that feed the cache key, how many of the GPUs
//! a job asks for it can use, and the function that runs it inside a job process.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml::Value;

use flora_stages::analysis::positional as importance;
use flora_stages::analysis::species as embeddings;
use flora_stages::analysis::table as analysis;
use flora_stages::baselines::stage as baselines;
use flora_stages::download;
use flora_stages::genomics::promoters;
use flora_stages::model::param_checks::BadParam;
use flora_stages::model::tokenizer as bpe;
use flora_stages::model::{finetune, pretrain};
use flora_stages::report;
use flora_stages::simulate;
use flora_stages::splits::{corpus, paralogs, split};
use flora_stages::tables::expression;
use flora_stages::{exec, Context};

use crate::workflow::spans::Seg;
pub use gpu_use::GpuUse;

mod gpu_use;

/// A problem with a stage's params, with the path of the offending param.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// Path inside the stage's params.
    pub path: Vec<Seg>,
    /// Whether the problem is the key itself (an unknown param) rather than its value.
    pub at_key: bool,
    /// What is wrong.
    pub message: String,
}

/// A check's message about the params as a whole.
impl From<String> for ParamError {
    fn from(message: String) -> ParamError {
        ParamError {
            path: Vec::new(),
            at_key: false,
            message,
        }
    }
}

/// A training stage's bad param: the error points at its value.
impl From<BadParam> for ParamError {
    fn from(bad: BadParam) -> ParamError {
        ParamError {
            path: vec![Seg::Key(bad.param.to_string())],
            at_key: false,
            message: bad.message,
        }
    }
}

/// One stage kind.
pub struct Kind {
    /// The name used in `kind:`.
    pub name: &'static str,
    /// Bumped whenever the kind's output changes for the same params and inputs.
    pub version: u32,
    /// One line for `flora stage --list`.
    pub summary: &'static str,
    /// Whether its jobs are given the provenance of every job upstream (`Context::provenance`).
    pub provenance: bool,
    /// Top-level params that change how a job runs but never what it writes (checkpoint cadence,
    /// retry policy): left out of the cache key and of what a plan reports as changed.
    pub unkeyed: &'static [&'static str],
    /// Params that may name a local file (a path or a `file://` URL) that the job reads without
    /// it being an input, so without flora hashing it: `plan` and `run` warn about each.
    pub path_params: &'static [&'static str],
    /// How many of the GPUs a job asks for (`resources: {gpus: N}`) it can use.
    pub gpus: GpuUse,
    /// Type-checks params and returns them in canonical form, with defaults filled in.
    pub check: fn(&Value) -> Result<serde_json::Value, ParamError>,
    /// Runs the kind inside a job process. `exec` ends the process as its program ends and
    /// returns only if the program could not start.
    pub run: fn(&serde_json::Value, &Context) -> anyhow::Result<()>,
}

impl Kind {
    /// `params` as they enter the cache key: without the kind's unkeyed params.
    pub fn keyed_params(&self, params: &serde_json::Value) -> serde_json::Value {
        let mut keyed = params.clone();
        if let Some(map) = keyed.as_object_mut() {
            for name in self.unkeyed {
                map.remove(*name);
            }
        }
        keyed
    }
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kind({} v{})", self.name, self.version)
    }
}

static KINDS: &[Kind] = &[
    Kind {
        name: "exec",
        version: 1,
        summary: "run a program (argv, env) with FLORA_OUT and FLORA_IN_<name> in its environment",
        provenance: false,
        unkeyed: &[],
        gpus: GpuUse::Any,
        path_params: &[],
        check: |v| check(v, |p: &exec::Params| exec::validate(p).map_err(|e| e.to_string())),
        run: run_exec,
    },
    Kind {
        name: "simulate",
        version: 1,
        summary: "plant-like genomes along a phylogeny (FASTA + GFF3), planted cis-elements, paralogs, maize lines and expression in 9 tissues, with the truth",
        provenance: false,
        unkeyed: &[],
        gpus: GpuUse::None,
        path_params: &[],
        check: |v| check(v, no_check::<simulate::Params>),
        run: |p, ctx| run_typed(p, ctx, simulate::run),
    },
    Kind {
        name: "download",
        version: 1,
        summary: "a genome FASTA + GFF3 from URLs, paths, Ensembl Plants, RefSeq or MaizeGDB; checksummed, bgzip-indexed",
        provenance: false,
        unkeyed: &["retries", "timeout_s", "backoff_s"],
        gpus: GpuUse::None,
        path_params: &["fasta", "gff"],
        check: |v| check(v, no_check::<download::Params>),
        run: |p, ctx| run_typed(p, ctx, download::run),
    },
    Kind {
        name: "promoters",
        version: 1,
        summary: "promoter windows upstream of each gene's TSS (inputs: fasta + gff, or genome)",
        provenance: false,
        unkeyed: &[],
        gpus: GpuUse::None,
        path_params: &[],
        check: |v| check(v, no_check::<promoters::Params>),
        run: |p, ctx| run_typed(p, ctx, promoters::run),
    },
    Kind {
        name: "expression",
        version: 1,
        summary: "expression tables (genes x samples, NAM runs x genes, or ready id/sequence/targets) to genes x tissues",
        provenance: false,
        unkeyed: &[],
        gpus: GpuUse::None,
        path_params: &["url"],
        check: |v| check(v, no_check::<expression::Params>),
        run: |p, ctx| run_typed(p, ctx, expression::run),
    },
    Kind {
        name: "paralogs",
        version: 1,
        summary: "paralog groups from a syntenic/paralog table (union-find) or promoter similarity (MinHash)",
        provenance: false,
        unkeyed: &[],
        gpus: GpuUse::None,
        path_params: &[],
        check: |v| check(v, no_check::<paralogs::Params>),
        run: |p, ctx| run_typed(p, ctx, paralogs::run),
    },
    Kind {
        name: "split",
        version: 1,
        summary: "whole paralog groups to train/validation/test from a seed (default 70/30, 10% validation)",
        provenance: false,
        unkeyed: &[],
        gpus: GpuUse::None,
        path_params: &[],
        check: |v| check(v, no_check::<split::Params>),
        run: |p, ctx| run_typed(p, ctx, split::run),
    },
    Kind {
        name: "corpus",
        version: 1,
        summary: "pretraining corpus with every held-out (test) promoter, and any identical sequence, removed",
        provenance: false,
        unkeyed: &[],
        gpus: GpuUse::None,
        path_params: &[],
        check: |v| check(v, no_check::<corpus::Params>),
        run: |p, ctx| run_typed(p, ctx, corpus::run),
    },
    Kind {
        name: "bpe",
        version: 1,
        summary: "byte-level BPE tokenizer (vocab 5,000 + <s> </s> <pad> <unk> <mask>) trained on a promoter corpus",
        provenance: false,
        unkeyed: &[],
        gpus: GpuUse::None,
        path_params: &[],
        check: |v| check(v, no_check::<bpe::Params>),
        run: |p, ctx| run_typed(p, ctx, bpe::run),
    },
    Kind {
        name: "pretrain",
        version: 2,
        summary: "RoBERTa masked-language-model pretraining with LAMB (inputs: corpus, tokenizer, optional init model)",
        provenance: false,
        unkeyed: &["checkpoint_every", "checkpoint_minutes"],
        gpus: GpuUse::MicroBatches,
        path_params: &[],
        check: |v| check(v, pretrain::Params::check),
        run: |p, ctx| run_typed(p, ctx, pretrain::run),
    },
    Kind {
        name: "finetune",
        version: 2,
        summary: "expression head on a pretrained model, trained per tissue (inputs: model + table, or model + promoters + expression [+ split])",
        provenance: false,
        unkeyed: &["checkpoint_minutes"],
        gpus: GpuUse::MicroBatches,
        path_params: &[],
        check: |v| check(v, finetune::Params::check),
        run: |p, ctx| run_typed(p, ctx, finetune::run),
    },
    Kind {
        name: "baselines",
        version: 2,
        summary: "each tissue's training mean (`constant`) and a bag-of-k-mers linear (ridge) regression per k (`bow2`..`bow5`), scored on the test rows (inputs as finetune, without a model)",
        provenance: false,
        unkeyed: &[],
        gpus: GpuUse::None,
        path_params: &[],
        check: |v| check(v, no_check::<baselines::Params>),
        run: |p, ctx| run_typed(p, ctx, baselines::run),
    },
    Kind {
        name: "analysis",
        version: 3,
        summary: "Table 1: every model's test R2 (both kinds), Pearson, Spearman and MSE, over all tissues and per tissue (inputs: predictions of finetune, baselines, ...)",
        provenance: false,
        unkeyed: &[],
        gpus: GpuUse::None,
        path_params: &[],
        check: |v| check(v, no_check::<analysis::Params>),
        run: |p, ctx| run_typed(p, ctx, analysis::run),
    },
    Kind {
        name: "importance",
        version: 1,
        summary: "positional importance (the paper's Figure 2): mean |change in prediction| when a random k-mer at a given distance from the TSS is replaced, k = 1..6, as TSV and heat map (inputs: model, promoters)",
        provenance: false,
        unkeyed: &[],
        gpus: GpuUse::One,
        path_params: &[],
        check: |v| check(v, no_check::<importance::Params>),
        run: |p, ctx| run_typed(p, ctx, importance::run),
    },
    Kind {
        name: "embeddings",
        version: 1,
        summary: "species embeddings: each species' mean promoter embedding and its base composition, PCA scatters coloured by a workflow attribute (inputs: model, promoter sets)",
        provenance: false,
        unkeyed: &[],
        gpus: GpuUse::One,
        path_params: &[],
        check: |v| check(v, no_check::<embeddings::Params>),
        run: |p, ctx| run_typed(p, ctx, embeddings::run),
    },
    Kind {
        name: "report",
        version: 2,
        summary: "one self-contained HTML page: Table 1, every figure, training curves, stage summaries and the provenance of every upstream job (inputs: any stage outputs)",
        provenance: true,
        unkeyed: &[],
        gpus: GpuUse::None,
        path_params: &[],
        check: |v| check(v, no_check::<report::Params>),
        run: |p, ctx| run_typed(p, ctx, report::run),
    },
];

/// Every kind, in the order `flora stage --list` shows them.
pub fn all() -> &'static [Kind] {
    KINDS
}

/// The kind called `name`.
pub fn lookup(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// Deserializes `P` from YAML with the path of any error, runs `extra`, and returns canonical JSON
/// (keys sorted, defaults filled in).
fn check<P: DeserializeOwned + Serialize, E: Into<ParamError>>(
    value: &Value,
    extra: fn(&P) -> Result<(), E>,
) -> Result<serde_json::Value, ParamError> {
    let params: P = serde_path_to_error::deserialize(value.clone()).map_err(param_error)?;
    extra(&params).map_err(Into::into)?;
    serde_json::to_value(&params).map_err(|e| ParamError {
        path: Vec::new(),
        at_key: false,
        message: format!("params cannot be written as JSON: {e}"),
    })
}

/// No check beyond the params' types.
fn no_check<P>(_: &P) -> Result<(), String> {
    Ok(())
}

/// A deserialization error as a [`ParamError`]: the path of the offending param, and whether the
/// key itself is the problem (an unknown param).
pub fn param_error(e: serde_path_to_error::Error<serde_yaml::Error>) -> ParamError {
    let mut path: Vec<Seg> = e
        .path()
        .iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect();
    let message = e.inner().to_string();
    let at_key = message.starts_with("unknown field");
    if at_key {
        if let Some(field) = message.split('`').nth(1) {
            if path.last() != Some(&Seg::Key(field.to_string())) {
                path.push(Seg::Key(field.to_string()));
            }
        }
    }
    ParamError {
        path,
        at_key,
        message: message.replace("unknown field", "unknown param"),
    }
}

/// Runs a kind whose params deserialize into `P`.
fn run_typed<P: DeserializeOwned, T, E: std::fmt::Display>(
    params: &serde_json::Value,
    ctx: &Context,
    f: impl FnOnce(&P, &Context) -> Result<T, E>,
) -> anyhow::Result<()> {
    let p: P = serde_json::from_value(params.clone())?;
    f(&p, ctx).map(drop).map_err(|e| anyhow::anyhow!("{e}"))
}

fn run_exec(params: &serde_json::Value, ctx: &Context) -> anyhow::Result<()> {
    let params: exec::Params = serde_json::from_value(params.clone())?;
    let cmd = exec::command(&params, ctx)?;
    // The job process ends as the user's program ends: its exit status is the job's.
    crate::supervise::run(cmd, &params.argv[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn unkeyed_params_are_real_params_and_left_out_of_the_key() {
        for kind in all().iter().filter(|k| !k.unkeyed.is_empty()) {
            let defaults = (kind.check)(&yaml("{}")).unwrap();
            for name in kind.unkeyed {
                assert!(
                    defaults.get(*name).is_some(),
                    "{}: `{name}` is not a param",
                    kind.name
                );
            }
            let keyed = kind.keyed_params(&defaults);
            assert_eq!(
                keyed.as_object().unwrap().len(),
                defaults.as_object().unwrap().len() - kind.unkeyed.len(),
                "{}",
                kind.name
            );
        }
        let pretrain = lookup("pretrain").unwrap();
        let a = (pretrain.check)(&yaml("{checkpoint_minutes: 1, lr: 0.002}")).unwrap();
        let b = (pretrain.check)(&yaml("{checkpoint_every: 5, lr: 0.002}")).unwrap();
        let c = (pretrain.check)(&yaml("{lr: 0.003}")).unwrap();
        assert_ne!(a, b);
        assert_eq!(pretrain.keyed_params(&a), pretrain.keyed_params(&b));
        assert_ne!(pretrain.keyed_params(&a), pretrain.keyed_params(&c));
    }

    #[test]
    fn the_attention_kernel_is_a_keyed_param_of_both_trainings() {
        for kind in ["pretrain", "finetune"] {
            let stage = lookup(kind).unwrap();
            let flash = (stage.check)(&yaml("{attention: flash, precision: bf16}")).unwrap();
            let products = (stage.check)(&yaml("{precision: bf16}")).unwrap();
            assert_eq!(flash["attention"], "flash", "{kind}");
            assert_eq!(products["attention"], "products", "{kind}");
            // A changed kernel re-runs the training: its numbers differ by bf16 rounding.
            assert_ne!(stage.keyed_params(&flash), stage.keyed_params(&products));
            let e = (stage.check)(&yaml("{attention: fast}")).unwrap_err();
            assert_eq!(e.path, vec![Seg::key("attention")], "{kind}");
            assert!(
                e.message.contains("expected `products` or `flash`"),
                "{kind}: {}",
                e.message
            );
        }
    }

    #[test]
    fn exec_params_are_checked_and_canonical() {
        let exec = lookup("exec").unwrap();
        let ok = (exec.check)(&yaml("{argv: [echo, hi]}")).unwrap();
        assert_eq!(ok, serde_json::json!({"argv": ["echo", "hi"], "env": {}}));

        let e = (exec.check)(&yaml("{argv: [echo], argvv: 1}")).unwrap_err();
        assert_eq!(e.path, vec![Seg::key("argvv")]);
        assert!(e.at_key);
        assert!(
            e.message.starts_with("unknown param `argvv`"),
            "{}",
            e.message
        );

        let e = (exec.check)(&yaml("{argv: [echo], env: {MSG: [1]}}")).unwrap_err();
        assert_eq!(e.path, vec![Seg::key("env"), Seg::key("MSG")]);
        assert!(
            e.message.contains("a string, number or boolean"),
            "{}",
            e.message
        );
        let ok = (exec.check)(&yaml("{argv: [head, -n, 5], env: {N: 1.5, B: true}}")).unwrap();
        assert_eq!(ok["argv"][2], "5");
        assert_eq!(ok["env"]["B"], "true");

        let e = (exec.check)(&yaml("{argv: []}")).unwrap_err();
        assert!(e.message.contains("`argv` is empty"), "{}", e.message);
    }
}
