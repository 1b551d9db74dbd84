//! flora: reproduce and extend FloraBERT as a cached, incremental workflow.
//!
//! The binary is thin: it parses the command line, dispatches to `cli`, and turns errors into
//! messages and exit codes (0: success; 1: a job failed or the cache is damaged; 2: the workflow
//! or the command line is wrong).

use flora::{cli, jobspec, workflow};

use std::io::IsTerminal;
use std::process::ExitCode;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = cli::parse();
    init_tracing(cli.verbose);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Run(args) => cli::run::run(cli, args),
        Command::Plan(args) => cli::run::plan(cli, args),
        Command::Dag(args) => cli::run::dag(args),
        Command::Show(args) => cli::inspect::show(cli, args),
        Command::Log(args) => cli::inspect::log(cli, args),
        Command::Stage(args) => cli::stage::stage(cli, args),
        Command::Cache(cmd) => cli::cache_cmd::cache(cli, cmd),
        Command::Predict(args) => cli::model_cmd::predict(args),
        Command::Embed(args) => cli::model_cmd::embed(args),
        Command::Variants(args) => cli::model_cmd::variants(args),
        Command::Mutagenesis(args) => cli::model_cmd::mutagenesis(args),
        Command::Bench(args) => cli::bench::bench(args),
        Command::Check(args) => cli::check::check(cli, args),
        Command::Job { spec, driver } => {
            if let Some(driver) = driver {
                flora::executor::local::die_with_driver(*driver);
            }
            jobspec::JobSpec::read(spec)?.run()
        }
        Command::Reaper => Ok(flora::executor::reaper::serve()?),
    }
}

fn report(err: &anyhow::Error) -> ExitCode {
    // A reader that stopped reading (`flora plan wf.yaml | head`) is not an error.
    if err
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    {
        return ExitCode::SUCCESS;
    }
    if let Some(diags) = err.downcast_ref::<workflow::Diagnostics>() {
        for d in &diags.0 {
            eprintln!("error: {d}");
        }
        return ExitCode::from(2);
    }
    if err.downcast_ref::<cli::run::Interrupted>().is_some() {
        eprintln!("flora: {err}");
        return ExitCode::from(130);
    }
    if err.downcast_ref::<cli::run::JobsFailed>().is_some()
        || err.downcast_ref::<cli::cache_cmd::Damaged>().is_some()
        || err.downcast_ref::<cli::check::ChecksFailed>().is_some()
    {
        eprintln!("flora: {err}");
        return ExitCode::from(1);
    }
    eprintln!("error: {err:#}");
    ExitCode::from(2)
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    // Colour only on a terminal: a job's stderr is its log file, and users redirect theirs.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .init();
}
