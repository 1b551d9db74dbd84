//! Where each node of a YAML document is: a map from a path (keys and indices) to its line and
//! column, built from yaml-rust2's marked events, so that checks done on values parsed by
//! serde_yaml can still point at the exact place in the file.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a path into a YAML document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

impl Seg {
    /// A key step.
    pub fn key(k: impl Into<String>) -> Self {
        Seg::Key(k.into())
    }
}

/// A path as written in messages: keys joined by `.`, indices as `[i]` (`stages.a.params`).
pub fn dotted(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A line and a column, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Option<Pos>,
    value: Pos,
}

/// A key written twice in one mapping (serde_yaml refuses it, but names only the mapping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// The mapping's path from the document root.
    pub mapping: Vec<Seg>,
    /// The key.
    pub key: String,
    /// Where it is first written.
    pub first: Pos,
    /// Where it is written again.
    pub again: Pos,
}

/// Positions of every key and value in a document.
#[derive(Debug, Default, Clone)]
pub struct SpanIndex {
    entries: HashMap<Vec<Seg>, Entry>,
    duplicates: Vec<DuplicateKey>,
}

impl SpanIndex {
    /// Indexes `source`; a document that does not parse gives an empty index (serde_yaml reports
    /// the syntax error itself).
    pub fn build(source: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(source);
        if parser.load(&mut builder, false).is_err() {
            return SpanIndex::default();
        }
        SpanIndex {
            entries: builder.entries,
            duplicates: builder.duplicates,
        }
    }

    /// Every key written a second (or later) time in its mapping, in document order.
    pub fn duplicate_keys(&self) -> &[DuplicateKey] {
        &self.duplicates
    }

    /// Where the value at `path` is, or of its nearest ancestor that exists.
    pub fn value(&self, path: &[Seg]) -> Pos {
        self.find(path, false)
    }

    /// Where the key of the entry at `path` is (for "unknown key" problems), else its value.
    pub fn key(&self, path: &[Seg]) -> Pos {
        self.find(path, true)
    }

    fn find(&self, path: &[Seg], key: bool) -> Pos {
        for len in (0..=path.len()).rev() {
            if let Some(e) = self.entries.get(&path[..len]) {
                return if key {
                    e.key.unwrap_or(e.value)
                } else {
                    e.value
                };
            }
        }
        Pos { line: 1, col: 1 }
    }
}

enum Frame {
    Map {
        path: Vec<Seg>,
        key: Option<(String, Pos)>,
        seen: HashMap<String, Pos>,
    },
    Seq {
        path: Vec<Seg>,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    entries: HashMap<Vec<Seg>, Entry>,
    duplicates: Vec<DuplicateKey>,
    done: bool,
}

fn pos(mark: Marker) -> Pos {
    Pos {
        line: mark.line(),
        col: mark.col() + 1,
    }
}

impl Builder {
    /// Claims the slot for a new value: returns its path and the position of its key, or `None`
    /// when the scalar is a mapping key.
    fn value_slot(&mut self, scalar_key: Option<&str>, at: Pos) -> Option<(Vec<Seg>, Option<Pos>)> {
        match self.stack.last_mut() {
            None => Some((Vec::new(), None)),
            Some(Frame::Seq { path, next }) => {
                let mut p = path.clone();
                p.push(Seg::Index(*next));
                *next += 1;
                Some((p, None))
            }
            Some(Frame::Map { path, key, seen }) => match key.take() {
                Some((k, kpos)) => {
                    let mut p = path.clone();
                    p.push(Seg::Key(k));
                    Some((p, Some(kpos)))
                }
                None => {
                    // This node is a key. Complex (non-scalar) keys get a placeholder name.
                    if let Some(k) = scalar_key {
                        if let Some(&first) = seen.get(k) {
                            self.duplicates.push(DuplicateKey {
                                mapping: path.clone(),
                                key: k.to_string(),
                                first,
                                again: at,
                            });
                        } else {
                            seen.insert(k.to_string(), at);
                        }
                    }
                    *key = Some((scalar_key.unwrap_or("?").to_string(), at));
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.done {
            return;
        }
        let at = pos(mark);
        match ev {
            Event::Scalar(s, ..) => {
                if let Some((path, key)) = self.value_slot(Some(&s), at) {
                    self.entries.insert(path, Entry { key, value: at });
                }
            }
            Event::Alias(_) => {
                if let Some((path, key)) = self.value_slot(None, at) {
                    self.entries.insert(path, Entry { key, value: at });
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let (path, key) = match self.value_slot(None, at) {
                    Some(slot) => slot,
                    // A complex key: index nothing inside it.
                    None => (vec![Seg::key("?")], None),
                };
                self.entries.insert(path.clone(), Entry { key, value: at });
                self.stack.push(if is_map {
                    Frame::Map {
                        path,
                        key: None,
                        seen: HashMap::new(),
                    }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::DocumentEnd => self.done = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_values() {
        let src = "stages:\n  hello:\n    kind: exec\n    params: {argv: [sh, -c, x]}\n";
        let idx = SpanIndex::build(src);
        let p = |s: &[&str]| s.iter().map(|k| Seg::key(*k)).collect::<Vec<_>>();
        assert_eq!(idx.key(&p(&["stages", "hello"])), Pos { line: 2, col: 3 });
        assert_eq!(
            idx.value(&p(&["stages", "hello", "kind"])),
            Pos { line: 3, col: 11 }
        );
        let mut argv = p(&["stages", "hello", "params", "argv"]);
        argv.push(Seg::Index(2));
        assert_eq!(idx.value(&argv), Pos { line: 4, col: 29 });
        // A missing path falls back to its nearest ancestor.
        assert_eq!(
            idx.key(&p(&["stages", "hello", "params", "nope"])),
            Pos { line: 4, col: 5 }
        );
        assert!(idx.duplicate_keys().is_empty());
    }

    #[test]
    fn finds_keys_written_twice_in_block_and_flow_mappings() {
        let src = "stages:\n  a:\n    kind: exec\n  b: {kind: x, kind: y}\n  a:\n    kind: exec\n";
        let idx = SpanIndex::build(src);
        let stages = vec![Seg::key("stages")];
        assert_eq!(
            idx.duplicate_keys(),
            [
                DuplicateKey {
                    mapping: vec![Seg::key("stages"), Seg::key("b")],
                    key: "kind".into(),
                    first: Pos { line: 4, col: 7 },
                    again: Pos { line: 4, col: 16 },
                },
                DuplicateKey {
                    mapping: stages,
                    key: "a".into(),
                    first: Pos { line: 2, col: 3 },
                    again: Pos { line: 5, col: 3 },
                },
            ]
        );
    }
}
