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
}

impl Record {
    /// The first value of attribute `key`, percent-decoded.
    pub fn attr(&self, key: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.attributes
            .split(';')
            .filter_map(|part| part.trim().split_once('='))
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
        self.attributes
            .split(';')
            .filter_map(|part| part.trim().split_once('='))
            .map(|(k, v)| (decode(k), decode(v)))
            .collect()
    }
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
    buf: String,
    done: bool,
    skip: Vec<&'static str>,
}

impl<R: BufRead> Reader<R> {
    /// A reader over `inner`.
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            line: 0,
            buf: String::new(),
            done: false,
            skip: Vec::new(),
        }
    }

    /// A reader that passes over features of these types without parsing them beyond the third
    /// column (a speed-up for callers that ignore, say, `CDS` lines, which are most of a GFF3).
    pub fn skipping(inner: R, types: Vec<&'static str>) -> Self {
        Reader {
            skip: types,
            ..Reader::new(inner)
        }
    }

    /// The 1-based number of the last line read.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The next feature, or `None` at the end of the features.
    pub fn read_record(&mut self) -> Result<Option<Record>, GffError> {
        loop {
            if self.done {
                return Ok(None);
            }
            self.buf.clear();
            let n = self
                .inner
                .read_line(&mut self.buf)
                .map_err(|source| GffError::Io {
                    line: self.line + 1,
                    source,
                })?;
            if n == 0 {
                self.done = true;
                return Ok(None);
            }
            self.line += 1;
            let text = self.buf.trim_end_matches(['\n', '\r']);
            if text.starts_with("##FASTA") {
                self.done = true;
                return Ok(None);
            }
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            if !self.skip.is_empty() {
                // The type is the third column: look no further into lines of skipped types.
                let mut cols = text.splitn(4, '\t');
                if cols.nth(2).is_some_and(|t| self.skip.contains(&t)) && cols.next().is_some() {
                    continue;
                }
            }
            return parse_line(text)
                .map(Some)
                .map_err(|message| GffError::Parse {
                    line: self.line,
                    message,
                });
        }
    }
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
    let cols: Vec<&str> = text.split('\t').collect();
    if cols.len() != 9 {
        return Err(format!(
            "expected 9 tab-separated columns, found {}{}",
            cols.len(),
            if cols.len() == 1 && text.contains(' ') {
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
    if cols[8] != "." {
        if let Some(part) = cols[8]
            .split(';')
            .map(str::trim)
            .find(|p| !p.is_empty() && !p.contains('='))
        {
            return Err(format!("attribute {part:?} is not KEY=VALUE"));
        }
    }
    Ok(Record {
        seqid: decode(cols[0]),
        ty: cols[2].to_string(),
        start,
        end,
        strand,
        attributes: if cols[8] == "." {
            String::new()
        } else {
            cols[8].to_string()
        },
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
    fn decodes_percent_escapes() {
        assert_eq!(decode("a%3Bb%2Cc"), "a;b,c");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}
