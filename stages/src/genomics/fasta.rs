//! Indexed FASTA (plain or bgzip) through htslib's faidx, made safe to call.
//!
//! rust-htslib 1.0.2 does not check what htslib returns: a contig name missing from the index, or
//! a plain-gzip file, crash the process. [`Genome`] therefore reads the `.fai` itself, checks every
//! name and range against it before calling htslib, and [`Genome::prepare`] makes sure that only a
//! plain or bgzip FASTA with a complete index ever reaches htslib (a gzip file is recompressed to
//! bgzip first).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::io::{compression, Compression};

/// A problem with a FASTA file.
#[derive(Debug, thiserror::Error)]
pub enum FastaError {
    /// The file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// htslib could not index the file.
    #[error("{path}: cannot index this FASTA (htslib's faidx refused it, re-wrapped or not: is it FASTA?)")]
    Index {
        /// The file.
        path: PathBuf,
    },
    /// Two records have one name: faidx would index the first and drop the second unsaid.
    #[error(
        "{path}: records {first} and {second} are both named `{name}`; an index reads only the \
         first, so give each sequence a name of its own"
    )]
    DuplicateName {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
        /// The first record with it (1-based).
        first: usize,
        /// The next one.
        second: usize,
    },
    /// A contig is not in the FASTA.
    #[error(
        "{path}: no sequence named `{name}` (the FASTA has {count} sequences, e.g. {examples})"
    )]
    UnknownContig {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// How many sequences the file has.
        count: usize,
        /// A few of their names.
        examples: String,
    },
    /// A region lies outside its contig.
    #[error("{path}: region {name}:{start}-{end} is outside the sequence (length {len})")]
    OutOfRange {
        /// The file.
        path: PathBuf,
        /// The contig.
        name: String,
        /// 0-based start.
        start: u64,
        /// 0-based exclusive end.
        end: u64,
        /// The contig's length.
        len: u64,
    },
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> FastaError {
    FastaError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// An indexed FASTA file.
pub struct Genome {
    path: PathBuf,
    reader: Reader,
    /// The `.fai`, by contig name.
    index: HashMap<String, FaiEntry>,
    /// Contig names in file order.
    names: Vec<String>,
}

/// How regions are read: htslib for bgzip, positioned reads for plain FASTA (one system call per
/// region, where htslib refills a whole buffer).
enum Reader {
    Htslib(rust_htslib::faidx::Reader),
    Plain(std::fs::File),
}

/// One line of a `.fai`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaiEntry {
    /// Contig length in bases.
    pub len: u64,
    /// File offset of the contig's first base.
    pub offset: u64,
    /// Bases per line.
    pub line_bases: u64,
    /// Bytes per line, line end included.
    pub line_bytes: u64,
}

impl FaiEntry {
    /// The file offset of base `pos` (0-based).
    fn at(&self, pos: u64) -> u64 {
        self.offset + pos / self.line_bases * self.line_bytes + pos % self.line_bases
    }

    /// Drops the line ends from `raw`, the bytes read from the offset of base `start`: whole
    /// runs of bases move down at once (the index guarantees every line but the last is full).
    fn strip_line_ends(&self, raw: &mut Vec<u8>, start: u64) {
        let gap = (self.line_bytes - self.line_bases) as usize;
        let line = self.line_bases as usize;
        let mut kept = (line - (start % self.line_bases) as usize).min(raw.len());
        let mut from = kept + gap;
        while from < raw.len() {
            let n = line.min(raw.len() - from);
            raw.copy_within(from..from + n, kept);
            kept += n;
            from += n + gap;
        }
        raw.truncate(kept);
    }
}

impl std::fmt::Debug for Genome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Genome({}, {} contigs)",
            self.path.display(),
            self.names.len()
        )
    }
}

/// Reads a `.fai`: each contig's name and index line, in file order.
pub fn read_fai(fai: &Path) -> Result<Vec<(String, FaiEntry)>, FastaError> {
    let text = std::fs::read_to_string(fai).map_err(|e| io_err(fai, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            let cols: Vec<&str> = l.split('\t').collect();
            let num = |k: usize| cols.get(k).and_then(|s| s.parse::<u64>().ok());
            match (num(1), num(2), num(3), num(4)) {
                (Some(len), Some(offset), Some(line_bases), Some(line_bytes))
                    if line_bases > 0 && line_bytes >= line_bases =>
                {
                    Ok((
                        cols[0].to_string(),
                        FaiEntry {
                            len,
                            offset,
                            line_bases,
                            line_bytes,
                        },
                    ))
                }
                _ => Err(io_err(
                    fai,
                    format!("line {}: not a faidx index line", i + 1),
                )),
            }
        })
        .collect()
}

impl Genome {
    /// Returns a path to `input` as plain or bgzip FASTA with its `.fai` (and `.gzi`) beside it:
    /// `input` itself when it already has them, else a link or bgzip copy in `work` that is
    /// indexed there (the input's folder may be read-only).
    pub fn prepare(input: &Path, work: &Path) -> Result<PathBuf, FastaError> {
        let kind = compression(input).map_err(|e| io_err(input, e))?;
        let with_ext = |p: &Path, ext: &str| PathBuf::from(format!("{}{ext}", p.display()));
        let indexed = |p: &Path| {
            with_ext(p, ".fai").is_file()
                && (kind != Compression::Bgzip || with_ext(p, ".gzi").is_file())
        };
        if kind != Compression::Gzip && indexed(input) {
            return Ok(input.to_path_buf());
        }
        check_unique_names(input)?;
        std::fs::create_dir_all(work).map_err(|e| io_err(work, e))?;
        let local = work.join(if kind == Compression::Plain {
            "genome.fa"
        } else {
            "genome.fa.gz"
        });
        for p in [
            local.clone(),
            with_ext(&local, ".fai"),
            with_ext(&local, ".gzi"),
        ] {
            let _ = std::fs::remove_file(p);
        }
        match kind {
            Compression::Gzip => to_bgzip(input, &local)?,
            _ => {
                let abs = std::fs::canonicalize(input).map_err(|e| io_err(input, e))?;
                std::os::unix::fs::symlink(abs, &local).map_err(|e| io_err(&local, e))?;
            }
        }
        match build_index(&local) {
            Err(FastaError::Index { .. }) => {}
            other => return other.map(|()| local),
        }
        // faidx needs lines of one length within each record: a ragged file is re-wrapped.
        let rewrapped = work.join("genome.rewrapped.fa");
        let _ = std::fs::remove_file(with_ext(&rewrapped, ".fai"));
        super::rewrap::rewrap(input, &rewrapped)?;
        build_index(&rewrapped).map_err(|e| match e {
            FastaError::Index { .. } => FastaError::Index {
                path: input.to_path_buf(),
            },
            other => other,
        })?;
        eprintln!(
            "{}: its lines differ in length within a record, which htslib cannot index; \
             re-wrapped to {} bases a line in {}",
            input.display(),
            super::rewrap::WIDTH,
            rewrapped.display()
        );
        Ok(rewrapped)
    }

    /// Opens a FASTA that [`Genome::prepare`] returned (or any plain/bgzip FASTA, indexing it
    /// when it has no index yet, after checking that no two records share a name).
    pub fn open(path: &Path) -> Result<Genome, FastaError> {
        let fai = PathBuf::from(format!("{}.fai", path.display()));
        if !fai.is_file() {
            check_unique_names(path)?;
            build_index(path)?;
        }
        let entries = read_fai(&fai)?;
        let reader = if compression(path).map_err(|e| io_err(path, e))? == Compression::Plain {
            Reader::Plain(std::fs::File::open(path).map_err(|e| io_err(path, e))?)
        } else {
            Reader::Htslib(
                rust_htslib::faidx::Reader::from_path(path).map_err(|e| io_err(path, e))?,
            )
        };
        Ok(Genome {
            path: path.to_path_buf(),
            reader,
            names: entries.iter().map(|(n, _)| n.clone()).collect(),
            index: entries.into_iter().collect(),
        })
    }

    /// Contig names in file order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The length of contig `name`.
    pub fn len_of(&self, name: &str) -> Result<u64, FastaError> {
        self.index
            .get(name)
            .map(|e| e.len)
            .ok_or_else(|| FastaError::UnknownContig {
                path: self.path.clone(),
                name: name.to_string(),
                count: self.names.len(),
                examples: self
                    .names
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Bases `[start, end)` (0-based) of contig `name`, as stored (case kept).
    pub fn fetch(&self, name: &str, start: u64, end: u64) -> Result<Vec<u8>, FastaError> {
        let len = self.len_of(name)?;
        if start > end || end > len {
            return Err(FastaError::OutOfRange {
                path: self.path.clone(),
                name: name.to_string(),
                start,
                end,
                len,
            });
        }
        if start == end {
            return Ok(Vec::new());
        }
        let seq = match &self.reader {
            Reader::Htslib(r) => r
                .fetch_seq(name, start as usize, end as usize - 1)
                .map_err(|e| io_err(&self.path, e))?,
            Reader::Plain(file) => {
                use std::os::unix::fs::FileExt;
                let e = self.index[name];
                let (from, to) = (e.at(start), e.at(end - 1) + 1);
                let mut raw = vec![0u8; (to - from) as usize];
                file.read_exact_at(&mut raw, from)
                    .map_err(|err| io_err(&self.path, err))?;
                e.strip_line_ends(&mut raw, start);
                raw
            }
        };
        if seq.len() as u64 != end - start {
            return Err(io_err(
                &self.path,
                format!(
                    "read {} bases of {name}:{start}-{end}, expected {}",
                    seq.len(),
                    end - start
                ),
            ));
        }
        Ok(seq)
    }

    /// The whole of contig `name`.
    pub fn fetch_all(&self, name: &str) -> Result<Vec<u8>, FastaError> {
        let len = self.len_of(name)?;
        self.fetch(name, 0, len)
    }
}

/// Fails on the first name that two records share: htslib's faidx keeps the first of them and
/// only warns, so the second's genes would be read from the first's sequence. Reads the whole
/// file (plain, gzip or bgzip), once, as the index is built.
pub fn check_unique_names(path: &Path) -> Result<(), FastaError> {
    use std::io::BufRead;
    let mut reader = super::io::open_text(path).map_err(|e| io_err(path, e))?;
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    let (mut line, mut record) = (Vec::new(), 0);
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(|e| io_err(path, e))?
            == 0
        {
            return Ok(());
        }
        if line.first() != Some(&b'>') {
            continue;
        }
        record += 1;
        let name = line[1..]
            .split(|b| b.is_ascii_whitespace())
            .next()
            .unwrap_or_default();
        if let Some(first) = seen.insert(name.to_vec(), record) {
            return Err(FastaError::DuplicateName {
                path: path.to_path_buf(),
                name: String::from_utf8_lossy(name).into_owned(),
                first,
                second: record,
            });
        }
    }
}

/// Builds `path.fai` (and `.gzi` for bgzip) with htslib.
fn build_index(path: &Path) -> Result<(), FastaError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.len() == 0 {
        return Err(io_err(path, "the file is empty"));
    }
    rust_htslib::faidx::build(path).map_err(|_| FastaError::Index {
        path: path.to_path_buf(),
    })
}

/// Recompresses a FASTA (plain or gzip) as bgzip, so that htslib can read regions of it.
pub fn to_bgzip(input: &Path, output: &Path) -> Result<(), FastaError> {
    use std::io::{Read, Write};
    let mut reader = super::io::open_text(input).map_err(|e| io_err(input, e))?;
    let mut writer = rust_htslib::bgzf::Writer::from_path(output).map_err(|e| io_err(output, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| io_err(input, e))?;
        if n == 0 {
            break;
        }
        writer.write_all(&buf[..n]).map_err(|e| io_err(output, e))?;
    }
    writer.flush().map_err(|e| io_err(output, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Writes `text` gzip-compressed (not bgzip) to `dir/name`.
    fn write_gzip(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&p).unwrap(),
            flate2::Compression::default(),
        );
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();
        p
    }

    #[test]
    fn fetches_checked_regions_from_plain_gzip_and_bgzip() {
        let dir = tempfile::tempdir().unwrap();
        let text = ">chr1 desc\nACGTACGTAC\nGGGG\n>chr2\nttttnnnn\n";
        let plain = write(dir.path(), "g.fa", text);
        let gz = write_gzip(dir.path(), "g.fa.gz", text);
        for (input, work) in [(&plain, "w1"), (&gz, "w2")] {
            let prepared = Genome::prepare(input, &dir.path().join(work)).unwrap();
            let g = Genome::open(&prepared).unwrap();
            assert_eq!(g.names(), ["chr1", "chr2"]);
            assert_eq!(g.len_of("chr1").unwrap(), 14);
            assert_eq!(g.fetch("chr1", 8, 12).unwrap(), b"ACGG");
            assert_eq!(g.fetch_all("chr2").unwrap(), b"ttttnnnn");
            assert!(matches!(
                g.fetch("chrX", 0, 1),
                Err(FastaError::UnknownContig { .. })
            ));
            assert!(matches!(
                g.fetch("chr2", 5, 9),
                Err(FastaError::OutOfRange { .. })
            ));
        }
        // The gzip input became bgzip in the work folder, and is now usable as it is.
        let bgz = dir.path().join("w2/genome.fa.gz");
        assert_eq!(compression(&bgz).unwrap(), Compression::Bgzip);
        assert_eq!(Genome::prepare(&bgz, &dir.path().join("w3")).unwrap(), bgz);
    }

    /// An empty file and one that is not FASTA are refused by name; a FASTA whose lines differ
    /// in length within a record (which faidx cannot index) is re-wrapped and reads back whole.
    #[test]
    fn refuses_empty_and_garbled_files_and_rewraps_ragged_ones() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(dir.path(), "e.fa", "");
        assert!(Genome::prepare(&empty, &dir.path().join("w"))
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let ragged = write(dir.path(), "r.fa", ">a\nACGTA\nAC\nACGTT\n>b\nGG\nGGGC\n");
        let prepared = Genome::prepare(&ragged, &dir.path().join("w2")).unwrap();
        let g = Genome::open(&prepared).unwrap();
        assert_eq!(g.fetch_all("a").unwrap(), b"ACGTAACACGTT");
        assert_eq!(g.fetch("b", 2, 6).unwrap(), b"GGGC");
        let garbled = write(dir.path(), "g.fa", "\u{1}\u{2}binary\n>x\n");
        let err = Genome::prepare(&garbled, &dir.path().join("w3")).unwrap_err();
        assert!(matches!(err, FastaError::Index { .. }), "{err}");
        assert!(
            err.to_string().starts_with(&garbled.display().to_string()),
            "{err}"
        );
    }

    /// Two records of one name (a file concatenated from two assemblies) are refused, plain or
    /// gzip, naming the name and both records: faidx would silently read the first for both.
    #[test]
    fn refuses_two_records_of_one_name() {
        let dir = tempfile::tempdir().unwrap();
        let text = ">1 assembly A\nACGT\n>2\nGGGG\n>1 assembly B\nTTTT\n";
        let plain = write(dir.path(), "two.fa", text);
        let gz = write_gzip(dir.path(), "two.fa.gz", text);
        for (input, work) in [(&plain, "w1"), (&gz, "w2")] {
            let err = Genome::prepare(input, &dir.path().join(work)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "{}: records 1 and 3 are both named `1`; an index reads only the first, so \
                     give each sequence a name of its own",
                    input.display()
                )
            );
        }
        // Names that differ only in their descriptions are one name to faidx; distinct ones pass.
        let distinct = write(dir.path(), "ok.fa", ">1 A\nACGT\n>10 A\nGG\n");
        assert!(Genome::prepare(&distinct, &dir.path().join("w3")).is_ok());
    }
}

#[cfg(test)]
mod crlf_tests {
    use super::*;

    #[test]
    fn every_window_of_a_wrapped_contig_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let bases: Vec<u8> = (0..97u32).map(|i| b"ACGTN"[(i * 7 % 5) as usize]).collect();
        for (name, ending) in [("lf", "\n"), ("crlf", "\r\n")] {
            let mut text = String::from(">c\n");
            for line in bases.chunks(10) {
                text.push_str(std::str::from_utf8(line).unwrap());
                text.push_str(ending);
            }
            let p = dir.path().join(format!("{name}.fa"));
            std::fs::write(&p, text.replace(">c\n", &format!(">c{ending}"))).unwrap();
            let g = Genome::open(&Genome::prepare(&p, &dir.path().join(name)).unwrap()).unwrap();
            for start in 0..bases.len() {
                for end in start..=bases.len() {
                    assert_eq!(
                        g.fetch("c", start as u64, end as u64).unwrap(),
                        &bases[start..end],
                        "{name} {start}..{end}"
                    );
                }
            }
        }
    }

    #[test]
    fn crlf_fasta_reads_like_lf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("crlf.fa");
        std::fs::write(&p, ">c1\r\nACGTA\r\nCCGTT\r\nGG\r\n").unwrap();
        let g = Genome::open(&Genome::prepare(&p, &dir.path().join("w")).unwrap()).unwrap();
        assert_eq!(g.len_of("c1").unwrap(), 12);
        assert_eq!(g.fetch("c1", 3, 8).unwrap(), b"TACCG");
        assert_eq!(g.fetch_all("c1").unwrap(), b"ACGTACCGTTGG");
    }
}
