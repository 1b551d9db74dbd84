//! A streaming GFF3 reader: one [`Record`] per feature line, with errors that name the line.
//!
//! Comment and directive lines are skipped, a `##FASTA` section ends the features, CRLF line ends
//! are accepted, and attribute values are percent-decoded. A GTF line (`key "value";`
//! attributes) is read too, its attributes rewritten as GFF3 ([`super::gtf`]).

use std::io::BufRead;

use rayon::prelude::*;

/// The strand of a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Strand {
    /// `+`
    Forward,
    /// `-`
    Reverse,
    /// `.` or `?`
    Unknown,
}

impl Strand {
    /// `+`, `-` or `.`.
    pub fn symbol(self) -> char {
        match self {
            Strand::Forward => '+',
            Strand::Reverse => '-',
            Strand::Unknown => '.',
        }
    }
}

/// Where one attribute's key and value lie in column 9.
type Pair = (std::ops::Range<usize>, std::ops::Range<usize>);

/// One feature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Column 1: the sequence (contig) name.
    pub seqid: String,
    /// Column 3: the feature type (`gene`, `mRNA`, ...).
    pub ty: String,
    /// Column 4: 1-based start.
    pub start: u64,
    /// Column 5: 1-based inclusive end.
    pub end: u64,
    /// Column 7.
    pub strand: Strand,
    /// Column 9 as written (checked to be `KEY=VALUE;...`); decoded on access.
    pub attributes: String,
    /// Where each `KEY=VALUE` pair's key and value lie in `attributes`, found once when parsed.
    pairs: Vec<Pair>,
    /// Read from a GTF line: `attributes` were rewritten as GFF3 ([`super::gtf`]).
    pub gtf: bool,
}

impl Record {
    /// The first value of attribute `key`, percent-decoded.
    pub fn attr(&self, key: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.raw_pairs()
            .find(|(k, _)| *k == key || (k.contains('%') && decode(k) == key))
            .map(|(_, v)| {
                if v.contains('%') {
                    std::borrow::Cow::Owned(decode(v))
                } else {
                    std::borrow::Cow::Borrowed(v)
                }
            })
    }

    /// Every attribute, decoded, in file order.
    pub fn attribute_pairs(&self) -> Vec<(String, String)> {
        self.raw_pairs()
            .map(|(k, v)| (decode(k), decode(v)))
            .collect()
    }

    /// Keys and values as written.
    fn raw_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs
            .iter()
            .map(|(k, v)| (&self.attributes[k.clone()], &self.attributes[v.clone()]))
    }
}

/// Splits column 9 into the spans of its `KEY=VALUE` pairs (blank parts between `;` are
/// allowed), or names the first part that is not a pair.
fn attribute_spans(column: &str) -> Result<Vec<Pair>, String> {
    let mut pairs = Vec::new();
    let mut from = 0;
    for part in column.split(';') {
        let start = from + (part.len() - part.trim_start().len());
        let trimmed = part.trim();
        from += part.len() + 1;
        if trimmed.is_empty() {
            continue;
        }
        let Some(eq) = trimmed.find('=') else {
            return Err(format!("attribute {trimmed:?} is not KEY=VALUE"));
        };
        pairs.push((start..start + eq, start + eq + 1..start + trimmed.len()));
    }
    Ok(pairs)
}

/// A problem reading GFF3.
#[derive(Debug, thiserror::Error)]
pub enum GffError {
    /// The file could not be read.
    #[error("line {line}: {source}")]
    Io {
        /// 1-based line number where reading failed.
        line: usize,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line is not valid GFF3.
    #[error("line {line}: {message}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Bytes of whole lines read and parsed together, in parallel.
const BATCH_BYTES: usize = 4 << 20;

/// Reads records from any buffered reader: lines are taken in batches of about
/// [`BATCH_BYTES`], and each batch is parsed on all cores (rayon) and handed out in file order.
pub struct Reader<R> {
    inner: R,
    /// The line of the last record handed out.
    line: usize,
    /// Lines taken into batches so far.
    lines_read: usize,
    /// The start of a line that the last batch cut off.
    pending: Vec<u8>,
    /// Parsed records not yet handed out, with their lines.
    ready: std::collections::VecDeque<(usize, Record)>,
    /// The error that ends the records in `ready`.
    error: Option<GffError>,
    /// No more lines will be read (end of input, `##FASTA` or an error).
    done: bool,
    skip: Vec<&'static [u8]>,
}

impl<R: BufRead> Reader<R> {
    /// A reader over `inner`.
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            line: 0,
            lines_read: 0,
            pending: Vec::new(),
            ready: Default::default(),
            error: None,
            done: false,
            skip: Vec::new(),
        }
    }

    /// A reader that passes over features of these types without parsing them beyond the third
    /// column (a speed-up for callers that ignore, say, `CDS` lines, which are most of a GFF3).
    pub fn skipping(inner: R, types: Vec<&'static str>) -> Self {
        Reader {
            skip: types.into_iter().map(str::as_bytes).collect(),
            ..Reader::new(inner)
        }
    }

    /// The 1-based number of the line of the last record read.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The next feature, or `None` at the end of the features.
    pub fn read_record(&mut self) -> Result<Option<Record>, GffError> {
        loop {
            if let Some((line, rec)) = self.ready.pop_front() {
                self.line = line;
                return Ok(Some(rec));
            }
            if let Some(e) = self.error.take() {
                return Err(e);
            }
            if self.done {
                return Ok(None);
            }
            let records = self.read_lines(&Some)?;
            self.ready.extend(records);
        }
    }

    /// The next records with their 1-based lines, as many as one batch holds, or `None` at the
    /// end of the features. An error comes after the records of the lines before it.
    pub fn read_batch(&mut self) -> Result<Option<Vec<(usize, Record)>>, GffError> {
        self.read_batch_with(&Some)
    }

    /// Like [`Reader::read_batch`], with each record turned into a `T` by `map` on the thread
    /// that parsed it (`None` leaves it out): work done there runs in parallel.
    pub fn read_batch_with<T: Send>(
        &mut self,
        map: &(impl Fn(Record) -> Option<T> + Sync),
    ) -> Result<Option<Vec<(usize, T)>>, GffError> {
        loop {
            if !self.ready.is_empty() {
                let batch: Vec<(usize, T)> = std::mem::take(&mut self.ready)
                    .into_iter()
                    .filter_map(|(l, rec)| map(rec).map(|t| (l, t)))
                    .collect();
                return Ok(Some(batch));
            }
            if let Some(e) = self.error.take() {
                return Err(e);
            }
            if self.done {
                return Ok(None);
            }
            let batch = self.read_lines(map)?;
            if let Some((l, _)) = batch.last() {
                self.line = *l;
                return Ok(Some(batch));
            }
        }
    }

    /// Reads the next batch of whole lines, parses it in parallel and maps each record with
    /// `map`; a bad line is kept in `error` for after the records before it.
    fn read_lines<T: Send>(
        &mut self,
        map: &(impl Fn(Record) -> Option<T> + Sync),
    ) -> Result<Vec<(usize, T)>, GffError> {
        let mut text = std::mem::take(&mut self.pending);
        let mut has_newline = memchr::memchr(b'\n', &text).is_some();
        let mut at_end = false;
        while text.len() < BATCH_BYTES || !has_newline {
            let avail = match self.inner.fill_buf() {
                Ok(avail) => avail,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    self.done = true;
                    let line = self.lines_read + 1 + memchr::memchr_iter(b'\n', &text).count();
                    return Err(GffError::Io { line, source });
                }
            };
            if avail.is_empty() {
                at_end = true;
                break;
            }
            has_newline = has_newline || memchr::memchr(b'\n', avail).is_some();
            text.extend_from_slice(avail);
            let n = avail.len();
            self.inner.consume(n);
        }
        if !at_end {
            let cut = memchr::memrchr(b'\n', &text).map_or(text.len(), |i| i + 1);
            self.pending = text.split_off(cut);
        }
        self.done = at_end;

        let pieces = line_pieces(
            &text,
            (text.len() / (4 * rayon::current_num_threads())).max(1 << 16),
        );
        let parsed: Vec<Piece<T>> = pieces
            .into_par_iter()
            .map(|range| parse_piece(&text[range], &self.skip, map))
            .collect();
        // Lines are counted per piece, so the mapped records' lines are made absolute here.
        let mut out = Vec::with_capacity(parsed.iter().map(|p| p.records.len()).sum());
        for piece in parsed {
            let base = self.lines_read;
            out.extend(piece.records.into_iter().map(|(l, t)| (base + l, t)));
            self.lines_read += piece.lines;
            let Some(stop) = piece.stop else {
                continue;
            };
            if let Stop::Error(line, message) = stop {
                self.error = Some(GffError::Parse {
                    line: base + line,
                    message,
                });
            }
            self.done = true;
            self.pending.clear();
            break;
        }
        Ok(out)
    }
}

/// Splits `text` into ranges of whole lines of about `size` bytes.
fn line_pieces(text: &[u8], size: usize) -> Vec<std::ops::Range<usize>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + size).min(text.len());
        if end < text.len() {
            end = memchr::memchr(b'\n', &text[end..]).map_or(text.len(), |i| end + i + 1);
        }
        pieces.push(start..end);
        start = end;
    }
    pieces
}

/// Why a piece stopped before its last line.
enum Stop {
    /// `##FASTA`.
    End,
    /// A bad line (1-based within the piece) and what is wrong with it.
    Error(usize, String),
}

/// The (mapped) records of a run of whole lines.
struct Piece<T> {
    /// Records with their 1-based line within the piece.
    records: Vec<(usize, T)>,
    /// Lines the piece holds.
    lines: usize,
    /// Set when a line ended the features early.
    stop: Option<Stop>,
}

/// Parses a run of whole lines (the last may lack its line end), mapping each record.
fn parse_piece<T>(mut rest: &[u8], skip: &[&[u8]], map: &impl Fn(Record) -> Option<T>) -> Piece<T> {
    let mut piece = Piece {
        records: Vec::new(),
        lines: 0,
        stop: None,
    };
    while !rest.is_empty() {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        piece.lines += 1;
        match examine(line, skip) {
            Seen::Pass => {}
            Seen::End => piece.stop = Some(Stop::End),
            Seen::Feature(Ok(rec)) => {
                if let Some(t) = map(rec) {
                    piece.records.push((piece.lines, t));
                }
            }
            Seen::Feature(Err(message)) => piece.stop = Some(Stop::Error(piece.lines, message)),
        }
        if piece.stop.is_some() {
            break;
        }
    }
    piece
}

/// What one line holds.
enum Seen {
    /// A comment, a blank line or a feature of a skipped type.
    Pass,
    /// `##FASTA`: the features are over.
    End,
    /// A feature, parsed.
    Feature(Result<Record, String>),
}

/// Looks at one line (its line end excluded); lines of types in `skip` are passed over after
/// finding their third column, as bytes.
fn examine(line: &[u8], skip: &[&[u8]]) -> Seen {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.starts_with(b"##FASTA") {
        return Seen::End;
    }
    if line.is_empty() || line[0] == b'#' {
        return Seen::Pass;
    }
    if !skip.is_empty() {
        let mut tabs = memchr::memchr_iter(b'\t', line);
        if let (Some(_), Some(second), Some(third)) = (tabs.next(), tabs.next(), tabs.next()) {
            if skip.contains(&&line[second + 1..third]) {
                return Seen::Pass;
            }
        }
    }
    Seen::Feature(match std::str::from_utf8(line) {
        Ok(text) => parse_line(text),
        Err(e) => Err(format!(
            "not valid UTF-8 text (byte {} of the line)",
            e.valid_up_to() + 1
        )),
    })
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = Result<Record, GffError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.read_record().transpose()
    }
}

/// Parses one feature line.
///
/// ```
/// let r = flora_stages::genomics::gff::parse_line("chr1\t.\tgene\t101\t200\t.\t-\t.\tID=g1;Name=a%3Bb").unwrap();
/// assert_eq!((r.start, r.end, r.attr("Name").as_deref()), (101, 200, Some("a;b")));
/// ```
pub fn parse_line(text: &str) -> Result<Record, String> {
    let mut cols = [""; 9];
    let mut found = 0;
    for (i, col) in text.split('\t').enumerate() {
        if i < 9 {
            cols[i] = col;
        }
        found = i + 1;
    }
    if found != 9 {
        return Err(format!(
            "expected 9 tab-separated columns, found {found}{}",
            if found == 1 && text.contains(' ') {
                " (spaces instead of tabs?)"
            } else {
                ""
            }
        ));
    }
    let pos = |i: usize, name: &str| -> Result<u64, String> {
        cols[i]
            .parse::<u64>()
            .map_err(|_| format!("{name} {:?} is not a positive whole number", cols[i]))
    };
    let start = pos(3, "start")?;
    let end = pos(4, "end")?;
    if start == 0 {
        return Err("start is 0, but GFF3 positions start at 1".into());
    }
    if end < start {
        return Err(format!("end {end} is before start {start}"));
    }
    let strand = match cols[6] {
        "+" => Strand::Forward,
        "-" => Strand::Reverse,
        "." | "?" => Strand::Unknown,
        other => return Err(format!("strand {other:?} is not +, - or .")),
    };
    let gtf = super::gtf::is_gtf(cols[8]);
    let attributes = if gtf {
        super::gtf::to_gff3(cols[2], cols[8])?
    } else if cols[8] == "." {
        String::new()
    } else {
        cols[8].to_string()
    };
    let pairs = attribute_spans(&attributes)?;
    Ok(Record {
        seqid: decode(cols[0]),
        ty: cols[2].to_string(),
        start,
        end,
        strand,
        attributes,
        pairs,
        gtf,
    })
}

/// Decodes `%XX` escapes.
fn decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_skipping_comments_and_stops_at_fasta() {
        let text = b"##gff-version 3\r\n#c\r\nchr1\tRefSeq\tgene\t101\t200\t.\t+\t.\tID=gene-A;gene_biotype=protein_coding\r\n\r\n##FASTA\n>chr1\nACGT\n";
        let recs: Vec<Record> = Reader::new(&text[..]).map(|r| r.unwrap()).collect();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].seqid, "chr1");
        assert_eq!(
            recs[0].attr("gene_biotype").as_deref(),
            Some("protein_coding")
        );
        assert_eq!(recs[0].attribute_pairs().len(), 2);
        assert_eq!(recs[0].strand, Strand::Forward);
    }

    #[test]
    fn every_parse_error_names_its_line() {
        let cases: &[(&str, &str)] = &[
            ("chr1 . gene 1 2 . + . ID=a", "spaces instead of tabs"),
            ("chr1\t.\tgene\tx\t2\t.\t+\t.\tID=a", "start \"x\" is not"),
            ("chr1\t.\tgene\t1\t-2\t.\t+\t.\tID=a", "end \"-2\" is not"),
            ("chr1\t.\tgene\t0\t2\t.\t+\t.\tID=a", "start is 0"),
            (
                "chr1\t.\tgene\t5\t2\t.\t+\t.\tID=a",
                "end 2 is before start 5",
            ),
            ("chr1\t.\tgene\t1\t2\t.\t*\t.\tID=a", "strand \"*\""),
            ("chr1\t.\tgene\t1\t2\t.\t+\t.\tIDa", "not KEY=VALUE"),
            (
                "chr1\t.\tgene\t1\t2\t.\t+\t.\tgene_id \"G1",
                "the quoted value never ends",
            ),
        ];
        for (line, want) in cases {
            let text = format!("##gff-version 3\n{line}\n");
            let err = Reader::new(text.as_bytes()).next().unwrap().unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("line 2: "), "{msg}");
            assert!(msg.contains(want), "{msg} should contain {want}");
        }
    }

    #[test]
    fn lines_across_buffer_edges_skips_and_a_missing_last_newline() {
        let mut text = String::from("##gff-version 3\n");
        for i in 1..=50 {
            text.push_str(&format!(
                "chr{i}\tsrc\tCDS\t1\t9\t.\t+\t0\tParent=t{i};Note={}\n",
                "x".repeat(i * 3)
            ));
            text.push_str(&format!(
                "chr{i}\tsrc\tgene\t{i}\t{}\t.\t-\t.\tID=g{i}\r\n",
                i + 100
            ));
        }
        text.pop();
        text.pop(); // the file ends without a line end
        for capacity in [1, 7, 64, 1 << 16] {
            let input = std::io::BufReader::with_capacity(capacity, text.as_bytes());
            let mut reader = Reader::skipping(input, vec!["CDS"]);
            let mut ids = Vec::new();
            while let Some(rec) = reader.read_record().unwrap() {
                assert_eq!(rec.ty, "gene");
                ids.push((reader.line(), rec.attr("ID").unwrap().into_owned(), rec.end));
            }
            assert_eq!(ids.len(), 50, "buffer of {capacity}");
            assert_eq!(ids[0], (3, "g1".to_string(), 101));
            assert_eq!(ids[49], (101, "g50".to_string(), 150));
        }
    }

    /// Gene lines, each followed by a CDS line, `n` of each: about 100 bytes a pair.
    fn many(n: usize) -> String {
        (1..=n)
            .map(|i| {
                format!("c1\ts\tgene\t{i}\t{}\t.\t+\t.\tID=g{i}\nc1\ts\tCDS\t{i}\t9999999\t.\t+\t0\tParent=g{i}\n", i + 5)
            })
            .collect()
    }

    #[test]
    fn batches_of_several_megabytes_keep_order_and_line_numbers() {
        // 100,000 genes: about 9 MB, so three batches of many pieces each.
        let text = many(100_000);
        let mut reader = Reader::skipping(text.as_bytes(), vec!["CDS"]);
        let mut seen = 0;
        while let Some(batch) = reader.read_batch().unwrap() {
            for (line, rec) in batch {
                seen += 1;
                assert_eq!(line, 2 * seen - 1);
                assert_eq!(rec.start as usize, seen);
            }
        }
        assert_eq!(seen, 100_000);

        // A bad line deep in the third batch: every record before it, then the error.
        let mut bad = many(90_000);
        bad.push_str("c1\ts\tgene\t7\t2\t.\t+\t.\tID=late\n");
        bad.push_str(&many(10));
        let mut reader = Reader::new(bad.as_bytes());
        let mut records = 0;
        let err = loop {
            match reader.read_record() {
                Ok(Some(_)) => records += 1,
                Ok(None) => panic!("the bad line was not reported"),
                Err(e) => break e.to_string(),
            }
        };
        assert_eq!(records, 180_000);
        assert!(
            err.starts_with("line 180001: end 2 is before start 7"),
            "{err}"
        );

        // `##FASTA` in the middle of a batch ends the features there.
        let mut fasta = many(50_000);
        fasta.push_str("##FASTA\n>c1\nACGT\n");
        fasta.push_str(&many(50_000));
        let mut reader = Reader::skipping(fasta.as_bytes(), vec!["CDS"]);
        let mut genes = 0;
        while let Some(batch) = reader.read_batch().unwrap() {
            genes += batch.len();
        }
        assert_eq!(genes, 50_000);
    }

    #[test]
    fn invalid_utf8_is_an_error_naming_the_line() {
        let text = b"chr1\t.\tgene\t1\t2\t.\t+\t.\tID=a\nchr1\t.\tgene\t1\t2\t.\t+\t.\tID=\xff\n";
        let mut reader = Reader::new(&text[..]);
        assert!(reader.read_record().unwrap().is_some());
        let msg = reader.read_record().unwrap_err().to_string();
        assert!(msg.starts_with("line 2: not valid UTF-8"), "{msg}");
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(decode("a%3Bb%2Cc"), "a;b,c");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}
