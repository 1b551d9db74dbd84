//! Named sources: where Ensembl Plants, NCBI RefSeq and MaizeGDB keep a genome's FASTA, GFF3 and
//! checksums, found by walking each site's documented folder layout.
//!
//! | source | given | FASTA | GFF3 | checksums |
//! | --- | --- | --- | --- | --- |
//! | `ensembl_plants` | `species`, `release` | `release-R/fasta/SPECIES/dna/*.dna.toplevel.fa.gz` | `release-R/gff3/SPECIES/*.R.gff3.gz` | `CHECKSUMS` (BSD sum) in each folder |
//! | `refseq` | `accession` (GCF_/GCA_) | `genomes/all/GCF/000/001/735/<asm>/<asm>_genomic.fna.gz` | `<asm>_genomic.gff.gz` | `md5checksums.txt` |
//! | `maizegdb` | `genome` (e.g. Zm-B73-REFERENCE-NAM-5.0) | `<genome>/<genome>.fa.gz` | `<genome>/*.gff3.gz` | `md5checksums.txt`, `CHECKSUMS` or `<file>.md5`, when published |

use super::checksum::{lookup, Expected};
use super::http::{Fetcher, Location};

/// A genome's two files and their published checksums.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The FASTA.
    pub fasta: Location,
    /// The GFF3.
    pub gff: Location,
    /// The FASTA's published checksum.
    pub fasta_checksum: Option<Expected>,
    /// The GFF3's published checksum.
    pub gff_checksum: Option<Expected>,
}

fn pick(
    names: &[String],
    what: &str,
    at: &Location,
    ok: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let found: Vec<&String> = names.iter().filter(|n| ok(n)).collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!(
            "{at}: no {what} among {} entries ({}{})",
            names.len(),
            names.iter().take(8).cloned().collect::<Vec<_>>().join(", "),
            if names.len() > 8 { ", ..." } else { "" }
        )),
        many => Err(format!(
            "{at}: {} candidates for the {what}: {}",
            many.len(),
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn checksum_in(
    f: &Fetcher,
    dir: &Location,
    names: &[String],
    file: &str,
) -> Result<Option<Expected>, String> {
    for list in ["CHECKSUMS", "md5checksums.txt", "MD5SUMS", "md5sum.txt"] {
        if names.iter().any(|n| n == list) {
            let text = f.text(&dir.join(list)).map_err(|e| e.to_string())?;
            return Ok(lookup(&text, file));
        }
    }
    let md5 = format!("{file}.md5");
    if names.contains(&md5) {
        let text = f.text(&dir.join(&md5)).map_err(|e| e.to_string())?;
        return Ok(lookup(&text, file).or_else(|| {
            text.split_whitespace()
                .next()
                .filter(|h| h.len() == 32)
                .map(|h| Expected::Md5(h.to_ascii_lowercase()))
        }));
    }
    Ok(None)
}

/// Ensembl Plants: a species' toplevel DNA and its GFF3 for one release.
pub fn ensembl_plants(
    f: &Fetcher,
    base: &Location,
    species: &str,
    release: u32,
) -> Result<Resolved, String> {
    let rel = base.join(&format!("release-{release}"));
    let fasta_dir = rel.join("fasta").join(species).join("dna");
    let names = f.list(&fasta_dir).map_err(|e| e.to_string())?;
    let fasta = pick(&names, "*.dna.toplevel.fa.gz", &fasta_dir, |n| {
        n.ends_with(".dna.toplevel.fa.gz")
    })?;
    let fasta_checksum = checksum_in(f, &fasta_dir, &names, &fasta)?;
    let gff_dir = rel.join("gff3").join(species);
    let names_g = f.list(&gff_dir).map_err(|e| e.to_string())?;
    let suffix = format!(".{release}.gff3.gz");
    let gff = pick(&names_g, &format!("*{suffix}"), &gff_dir, |n| {
        n.ends_with(&suffix)
            && !n.contains(".chr")
            && !n.contains(".chromosome.")
            && !n.contains("abinitio")
    })?;
    let gff_checksum = checksum_in(f, &gff_dir, &names_g, &gff)?;
    Ok(Resolved {
        fasta: fasta_dir.join(&fasta),
        gff: gff_dir.join(&gff),
        fasta_checksum,
        gff_checksum,
    })
}

/// NCBI RefSeq/GenBank: an assembly accession such as GCF_000001735.4.
pub fn refseq(f: &Fetcher, base: &Location, accession: &str) -> Result<Resolved, String> {
    let bad = || format!("accession {accession:?} is not of the form GCF_000001735.4 (or GCA_...)");
    let (prefix, rest) = accession.split_once('_').ok_or_else(bad)?;
    let (digits, _version) = rest.split_once('.').ok_or_else(bad)?;
    if !matches!(prefix, "GCF" | "GCA")
        || digits.len() != 9
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let dir = base
        .join("genomes")
        .join("all")
        .join(prefix)
        .join(&digits[0..3])
        .join(&digits[3..6])
        .join(&digits[6..9]);
    let names = f.list(&dir).map_err(|e| e.to_string())?;
    let asm = pick(
        &names,
        &format!("{accession}_* assembly folder"),
        &dir,
        |n| n.starts_with(&format!("{accession}_")),
    )?;
    let asm = asm.trim_end_matches('/').to_string();
    let asm_dir = dir.join(&asm);
    let files = f.list(&asm_dir).map_err(|e| e.to_string())?;
    let fasta = format!("{asm}_genomic.fna.gz");
    let gff = format!("{asm}_genomic.gff.gz");
    for want in [&fasta, &gff] {
        if !files.iter().any(|n| n == want) {
            return Err(format!("{asm_dir}: no {want}"));
        }
    }
    Ok(Resolved {
        fasta_checksum: checksum_in(f, &asm_dir, &files, &fasta)?,
        gff_checksum: checksum_in(f, &asm_dir, &files, &gff)?,
        fasta: asm_dir.join(&fasta),
        gff: asm_dir.join(&gff),
    })
}

/// MaizeGDB: a NAM founder genome such as Zm-B73-REFERENCE-NAM-5.0.
pub fn maizegdb(f: &Fetcher, base: &Location, genome: &str) -> Result<Resolved, String> {
    let dir = base.join(genome);
    let names = f.list(&dir).map_err(|e| e.to_string())?;
    let fasta = pick(&names, &format!("{genome}.fa.gz"), &dir, |n| {
        n == format!("{genome}.fa.gz")
    })?;
    let gff = pick(&names, "*.gff3.gz", &dir, |n| n.ends_with(".gff3.gz"))?;
    Ok(Resolved {
        fasta_checksum: checksum_in(f, &dir, &names, &fasta)?,
        gff_checksum: checksum_in(f, &dir, &names, &gff)?,
        fasta: dir.join(&fasta),
        gff: dir.join(&gff),
    })
}
