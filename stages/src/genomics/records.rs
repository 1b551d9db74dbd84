//! Streaming FASTA records (header and sequence) from plain, gzip or bgzip files, for promoter
//! sets and corpora (no index needed). Sequences are upper-cased, and a record with a byte that
//! is no nucleotide code (a protein FASTA given by mistake) is refused by id and position.

use std::io::BufRead;
use std::path::Path;

/// One FASTA record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastaRecord {
    /// The id: the header up to the first white space.
    pub id: String,
    /// The rest of the header.
    pub description: String,
    /// The sequence, lines joined.
    pub seq: Vec<u8>,
}

/// Reads every record of `path`; errors name the file and line.
pub fn read_all(path: &Path) -> Result<Vec<FastaRecord>, String> {
    let input = super::io::open_text(path).map_err(|e| format!("{}: {e}", path.display()))?;
    read_from(input).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads every record from FASTA text.
pub fn read_from(input: impl BufRead) -> Result<Vec<FastaRecord>, String> {
    let mut out: Vec<FastaRecord> = Vec::new();
    for (i, line) in input.split(b'\n').enumerate() {
        let line = line.map_err(|e| format!("line {}: {e}", i + 1))?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if let Some(header) = line.strip_prefix(b">") {
            let header = String::from_utf8_lossy(header);
            let (id, description) = header.split_once([' ', '\t']).unwrap_or((&header, ""));
            if id.is_empty() {
                return Err(format!("line {}: a header with no id", i + 1));
            }
            out.push(FastaRecord {
                id: id.to_string(),
                description: description.trim().to_string(),
                seq: Vec::new(),
            });
        } else if !line.is_empty() {
            let rec = out.last_mut().ok_or_else(|| {
                format!(
                    "line {}: sequence before the first `>` header (is this FASTA?)",
                    i + 1
                )
            })?;
            super::seq::check_dna(line).map_err(|e| {
                let position = rec.seq.len() + e.position;
                let e = super::seq::NotNucleotide { position, ..e };
                format!("record {} {e}", rec.id)
            })?;
            rec.seq.extend(line.iter().map(u8::to_ascii_uppercase));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_and_reports_junk() {
        let recs = read_from(&b">a desc here\r\nacg\r\nT\n>b\n\nGG\n"[..]).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(
            (recs[0].id.as_str(), recs[0].description.as_str()),
            ("a", "desc here")
        );
        assert_eq!(recs[0].seq, b"ACGT");
        assert_eq!(recs[1].seq, b"GG");
        assert!(read_from(&b"ACGT\n"[..])
            .unwrap_err()
            .contains("line 1: sequence before"));
        // The position counts from the record's first base, across its lines.
        assert_eq!(
            read_from(&b">ok\nACGT\n>p1 kinase\nMKTA\nYIAK\n"[..]).unwrap_err(),
            "record p1 has `I` at position 6, which is not a nucleotide code (A, C, G, T, N or \
             another IUPAC code)"
        );
        assert!(read_from(&b">\nA\n"[..])
            .unwrap_err()
            .contains("line 1: a header with no id"));
    }
}
