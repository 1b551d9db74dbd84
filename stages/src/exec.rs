//! The `exec` stage kind: run a user's own program with flora's caching.
//!
//! The program is started directly from `argv` (no shell unless `argv` asks for one), in the
//! workflow's folder, with these variables added to its environment:
//!
//! | variable | value |
//! | --- | --- |
//! | `FLORA_OUT` | the empty folder to write the output into |
//! | `FLORA_IN_<name>` | the path of each input |
//! | `FLORA_WORK` | a folder that survives a crash (checkpoints) |
//! | `FLORA_THREADS` | how many threads the job may use |
//! | `CUDA_VISIBLE_DEVICES` | the GPUs given to the job, when it has any (on Slurm, as Slurm set it) |
//!
//! A non-zero exit fails the job, and nothing is published.

use std::collections::BTreeMap;
use std::process::{Command, ExitStatus};

use crate::Context;

/// Params of the `exec` kind.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The program and its arguments; the first element is looked up on `PATH`. Required.
    /// Numbers and booleans are taken as their text (`[head, -n, 5]`).
    #[serde(deserialize_with = "scalars::list")]
    pub argv: Vec<String>,
    /// Extra environment variables for the program (default: none); values as for `argv`.
    #[serde(default, deserialize_with = "scalars::map")]
    pub env: BTreeMap<String, String>,
}

/// Reading YAML scalars (strings, numbers, booleans) as text, as a command line would.
mod scalars {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a string, number or boolean")]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }

    impl From<Scalar> for String {
        fn from(s: Scalar) -> String {
            match s {
                Scalar::Text(t) => t,
                Scalar::Int(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            }
        }
    }

    pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(Vec::<Scalar>::deserialize(d)?
            .into_iter()
            .map(String::from)
            .collect())
    }

    pub fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
        Ok(BTreeMap::<String, Scalar>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| (k, String::from(v)))
            .collect())
    }
}

/// Why an `exec` stage failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// `argv` was empty.
    #[error(
        "exec: `argv` is empty; give the program to run, e.g. argv: [\"sh\", \"-c\", \"...\"]"
    )]
    EmptyArgv,
    /// The program could not be started.
    #[error("exec: cannot start `{program}`: {source}")]
    Spawn {
        /// The program that was asked for.
        program: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("exec: `{program}` {status}")]
    Failed {
        /// The program that ran.
        program: String,
        /// How it ended.
        status: ExitStatus,
    },
}

/// Checks params that serde cannot: `argv` must name a program.
pub fn validate(params: &Params) -> Result<(), ExecError> {
    if params.argv.is_empty() {
        return Err(ExecError::EmptyArgv);
    }
    Ok(())
}

/// The name of the environment variable that carries input `name`.
pub fn input_var(name: &str) -> String {
    format!("FLORA_IN_{name}")
}

/// Builds the command that runs the program with the stage's environment.
pub fn command(params: &Params, ctx: &Context) -> Result<Command, ExecError> {
    validate(params)?;
    let mut cmd = Command::new(&params.argv[0]);
    cmd.args(&params.argv[1..])
        .current_dir(&ctx.workdir)
        .env("FLORA_OUT", &ctx.out)
        .env("FLORA_WORK", &ctx.work)
        .env("FLORA_THREADS", ctx.threads.to_string());
    for (name, path) in &ctx.inputs {
        cmd.env(input_var(name), path);
    }
    if !ctx.gpus.is_empty() && !ctx.cluster_gpus {
        let ids: Vec<String> = ctx.gpus.iter().map(|g| g.to_string()).collect();
        cmd.env("CUDA_VISIBLE_DEVICES", ids.join(","));
    }
    cmd.envs(&params.env);
    Ok(cmd)
}

/// Runs the program to completion; a non-zero exit is an error.
pub fn run(params: &Params, ctx: &Context) -> Result<(), ExecError> {
    let program = params.argv.first().cloned().unwrap_or_default();
    let status = command(params, ctx)?
        .status()
        .map_err(|source| ExecError::Spawn {
            program: program.clone(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(ExecError::Failed { program, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(dir: &std::path::Path) -> Context {
        let ctx = Context::new(dir.join("out"), dir.join("work"), dir.to_path_buf());
        std::fs::create_dir_all(&ctx.out).unwrap();
        ctx
    }

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("flora-exec-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn passes_inputs_and_env() {
        let dir = tempdir("env");
        std::fs::write(dir.join("in.txt"), "abc").unwrap();
        let mut c = ctx(&dir);
        c.inputs.insert("src".into(), dir.join("in.txt"));
        c.gpus = vec![1, 3];
        let params = Params {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "cat $FLORA_IN_src > $FLORA_OUT/o; echo \" $MSG $CUDA_VISIBLE_DEVICES\" >> $FLORA_OUT/o"
                    .into(),
            ],
            env: [("MSG".to_string(), "hey".to_string())].into(),
        };
        run(&params, &c).unwrap();
        let got = std::fs::read_to_string(c.out.join("o")).unwrap();
        assert_eq!(got, "abc hey 1,3\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nonzero_exit_is_an_error() {
        let dir = tempdir("fail");
        let params = Params {
            argv: vec!["sh".into(), "-c".into(), "exit 3".into()],
            env: BTreeMap::new(),
        };
        let err = run(&params, &ctx(&dir)).unwrap_err();
        assert!(err.to_string().contains("exit status: 3"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_program_and_empty_argv() {
        let dir = tempdir("missing");
        let params = Params {
            argv: vec!["flora-no-such-program".into()],
            env: BTreeMap::new(),
        };
        let err = run(&params, &ctx(&dir)).unwrap_err();
        assert!(matches!(err, ExecError::Spawn { .. }), "{err}");
        assert!(matches!(
            run(&Params::default(), &ctx(&dir)),
            Err(ExecError::EmptyArgv)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
