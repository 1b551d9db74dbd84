//! Diagnostics: a problem in a workflow, said with where it is (file:line:column or the command-line
//! flag) and which stage it concerns.

use std::fmt;
use std::path::PathBuf;

/// Where a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A place in a workflow file (1-based line and column).
    File {
        /// The workflow file, as the user named it.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
    },
    /// A command-line flag, e.g. `--set hello.env.MSG=bye`.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line, col } => write!(f, "{}:{line}:{col}", path.display()),
            Origin::Flag(flag) => write!(f, "{flag}"),
        }
    }
}

/// One problem found in a workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where it is.
    pub origin: Origin,
    /// The stage it concerns, if any.
    pub stage: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        if let Some(stage) = &self.stage {
            write!(f, "stage `{stage}`: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// Every problem found in a workflow; checking goes on past the first so that one edit fixes many.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Adds one problem.
    pub fn push(&mut self, origin: Origin, stage: Option<&str>, message: impl Into<String>) {
        self.0.push(Diagnostic {
            origin,
            stage: stage.map(str::to_string),
            message: message.into(),
        });
    }

    /// True when no problem was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
