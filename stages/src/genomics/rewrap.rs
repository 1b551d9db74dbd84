//! Re-wrapping a FASTA whose lines differ in length within a record, which htslib's faidx cannot
//! index (a file concatenated from pieces, or edited by hand): the same records, with every
//! sequence in lines of [`WIDTH`] bases and no carriage returns. Coordinates do not change.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use super::fasta::FastaError;

/// Bases per line of a re-wrapped FASTA.
pub const WIDTH: usize = 60;

/// Writes `input` (plain, gzip or bgzip) to `output` as plain FASTA with lines of [`WIDTH`]
/// bases, streaming (a genome is never held in memory whole).
pub fn rewrap(input: &Path, output: &Path) -> Result<(), FastaError> {
    let read_err = |e: std::io::Error| FastaError::Io {
        path: input.to_path_buf(),
        message: e.to_string(),
    };
    let write_err = |e: std::io::Error| FastaError::Io {
        path: output.to_path_buf(),
        message: e.to_string(),
    };
    let mut reader = super::io::open_text(input).map_err(read_err)?;
    let file = std::fs::File::create(output).map_err(write_err)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut pending: Vec<u8> = Vec::with_capacity(2 * WIDTH);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(read_err)? == 0 {
            break;
        }
        let text = line.trim_ascii_end();
        if text.first() == Some(&b'>') {
            flush(&mut out, &mut pending, true).map_err(write_err)?;
            out.write_all(text).map_err(write_err)?;
            out.write_all(b"\n").map_err(write_err)?;
        } else {
            pending.extend(text.iter().filter(|b| !b.is_ascii_whitespace()));
            flush(&mut out, &mut pending, false).map_err(write_err)?;
        }
    }
    flush(&mut out, &mut pending, true).map_err(write_err)?;
    out.flush().map_err(write_err)
}

/// Writes the whole lines of `pending` (and, at a record's end, the rest).
fn flush(out: &mut impl Write, pending: &mut Vec<u8>, end: bool) -> std::io::Result<()> {
    let whole = pending.len() / WIDTH * WIDTH;
    for chunk in pending[..whole].chunks(WIDTH) {
        out.write_all(chunk)?;
        out.write_all(b"\n")?;
    }
    pending.drain(..whole);
    if end && !pending.is_empty() {
        out.write_all(pending)?;
        out.write_all(b"\n")?;
        pending.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ragged_records_come_out_in_lines_of_equal_length() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("ragged.fa");
        let seq1: String = "ACGT".repeat(40);
        let text = format!(
            ">chr1 first\r\n{}\r\n{}\n\n{}\n>chr2\n{}\n",
            &seq1[..70],
            &seq1[70..73],
            &seq1[73..],
            "GGCC".repeat(16)
        );
        std::fs::write(&input, text).unwrap();
        let output = dir.path().join("rewrapped.fa");
        rewrap(&input, &output).unwrap();
        let got = std::fs::read_to_string(&output).unwrap();
        let want = format!(
            ">chr1 first\n{}\n{}\n{}\n>chr2\n{}\n{}\n",
            &seq1[..60],
            &seq1[60..120],
            &seq1[120..],
            &"GGCC".repeat(16)[..60],
            "GGCC"
        );
        assert_eq!(got, want);
    }
}
