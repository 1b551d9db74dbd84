//! A streaming GFF3 reader: one [`Record`] per feature line, with errors that name the line.
//!
//! Comment and directive lines are skipped, a `##FASTA` section ends the features, CRLF line ends
//! are accepted, and attribute values are percent-decoded.

use std::io::BufRead;

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

/// Reads records from any buffered reader.
pub struct Reader<R> {
    inner: R,
    line: usize,
    buf: Vec<u8>,
    done: bool,
    skip: Vec<&'static [u8]>,
}

impl<R: BufRead> Reader<R> {
    /// A reader over `inner`.
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            line: 0,
            buf: Vec::new(),
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

    /// The 1-based number of the last line read.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The next feature, or `None` at the end of the features.
    pub fn read_record(&mut self) -> Result<Option<Record>, GffError> {
        while !self.done {
            let io_err = |line, source| GffError::Io { line, source };
            let avail = match self.inner.fill_buf() {
                Ok(avail) => avail,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(self.line + 1, e)),
            };
            // A line that lies whole in the reader's buffer is looked at where it is; one that
            // spans buffers is gathered in `self.buf` first.
            let (seen, consumed) = match memchr::memchr(b'\n', avail) {
                Some(i) if self.buf.is_empty() => (examine(&avail[..i], &self.skip), i + 1),
                Some(i) => {
                    self.buf.extend_from_slice(&avail[..i]);
                    (examine(&self.buf, &self.skip), i + 1)
                }
                None if avail.is_empty() => {
                    self.done = true;
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    (examine(&self.buf, &self.skip), 0)
                }
                None => {
                    let n = avail.len();
                    self.buf.extend_from_slice(avail);
                    self.inner.consume(n);
                    continue;
                }
            };
            self.inner.consume(consumed);
            self.buf.clear();
            self.line += 1;
            match seen {
                Seen::Pass => {}
                Seen::End => self.done = true,
                Seen::Feature(parsed) => {
                    return parsed.map(Some).map_err(|message| GffError::Parse {
                        line: self.line,
                        message,
                    })
                }
            }
        }
        Ok(None)
    }
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
    let (attributes, pairs) = if cols[8] == "." {
        (String::new(), Vec::new())
    } else {
        (cols[8].to_string(), attribute_spans(cols[8])?)
    };
    Ok(Record {
        seqid: decode(cols[0]),
        ty: cols[2].to_string(),
        start,
        end,
        strand,
        attributes,
        pairs,
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
