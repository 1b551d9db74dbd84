//! The `download` stage: a genome's FASTA and GFF3, from URLs, local paths or a named database,
//! checked against published checksums and stored ready for region reads.
//!
//! The artifact is a folder holding `genome.fa.gz` (bgzip) with `genome.fa.gz.fai` and
//! `genome.fa.gz.gzi`, `genes.gff3.gz`, and `source.json` (where each file came from and which
//! checksum was verified). Inputs `fasta` and `gff` (files that another stage wrote, such as
//! `simulate`'s genomes) are fetched like `file://` URLs. Partial downloads live in the job's work folder, so a re-run after a
//! crash resumes them; nothing is published unless every check passes.

pub mod checksum;
pub mod http;
pub mod sources;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::genomics::fasta::{to_bgzip, Genome};
use crate::genomics::io::{compression, Compression};
use crate::Context;
use checksum::Expected;
use http::{Fetcher, Location};

/// Where the files come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `fasta` and `gff` are URLs (http, https, file) or paths.
    Url,
    /// Ensembl Plants: `species` and `release`.
    EnsemblPlants,
    /// NCBI RefSeq/GenBank: `accession`.
    Refseq,
    /// MaizeGDB: `genome`.
    Maizegdb,
}

/// Params of the `download` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Where the files come from (default url).
    pub source: Source,
    /// url: the FASTA (plain, gzip or bgzip).
    pub fasta: Option<String>,
    /// url: the GFF3 (plain or compressed).
    pub gff: Option<String>,
    /// url: the FASTA's checksum, `sha256:HEX` or `md5:HEX`.
    pub fasta_checksum: Option<String>,
    /// url: the GFF3's checksum, `sha256:HEX` or `md5:HEX`.
    pub gff_checksum: Option<String>,
    /// url: a published checksum list (md5checksums.txt, CHECKSUMS) naming both files.
    pub checksums: Option<String>,
    /// ensembl_plants: the species folder, e.g. `arabidopsis_thaliana`.
    pub species: Option<String>,
    /// ensembl_plants: the release number.
    pub release: Option<u32>,
    /// refseq: the assembly accession, e.g. `GCF_000001735.4`.
    pub accession: Option<String>,
    /// maizegdb: the genome, e.g. `Zm-B73-REFERENCE-NAM-5.0`.
    pub genome: Option<String>,
    /// The database's root, to use a mirror (default: the database's own site).
    pub base_url: Option<String>,
    /// Fail unless a checksum was found and matched (default false: verify when one is published).
    pub require_checksum: bool,
    /// Retries after a failed transfer, with exponential backoff (default 5).
    pub retries: u32,
    /// Seconds without progress before a transfer is abandoned (default 60).
    pub timeout_s: u64,
    /// Seconds before the first retry; doubled each time (default 1.0).
    pub backoff_s: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            source: Source::Url,
            fasta: None,
            gff: None,
            fasta_checksum: None,
            gff_checksum: None,
            checksums: None,
            species: None,
            release: None,
            accession: None,
            genome: None,
            base_url: None,
            require_checksum: false,
            retries: 5,
            timeout_s: 60,
            backoff_s: 1.0,
        }
    }
}

/// Where the files came from, as recorded in `source.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Provenance {
    /// The source kind.
    pub source: String,
    /// The FASTA's location.
    pub fasta: String,
    /// The GFF3's location.
    pub gff: String,
    /// The FASTA checksum that was verified, if any.
    pub fasta_verified: Option<String>,
    /// The GFF3 checksum that was verified, if any.
    pub gff_verified: Option<String>,
    /// FASTA bytes downloaded.
    pub fasta_bytes: u64,
    /// GFF3 bytes downloaded.
    pub gff_bytes: u64,
}

pub(crate) fn parse_checksum(s: &str) -> Result<Expected, String> {
    match s.split_once(':') {
        Some(("sha256", h)) if h.len() == 64 => Ok(Expected::Sha256(h.to_ascii_lowercase())),
        Some(("md5", h)) if h.len() == 32 => Ok(Expected::Md5(h.to_ascii_lowercase())),
        _ => Err(format!(
            "checksum {s:?}: expected sha256:<64 hex digits> or md5:<32 hex digits>"
        )),
    }
}

/// Resolves the two files and their checksums.
pub fn resolve(p: &Params, f: &Fetcher, workdir: &Path) -> Result<sources::Resolved, String> {
    let need = |v: &Option<String>, name: &str| {
        v.clone()
            .ok_or_else(|| format!("source `{:?}` needs `{name}`", p.source).to_lowercase())
    };
    let base = |default: &str| Location::parse(p.base_url.as_deref().unwrap_or(default), workdir);
    match p.source {
        Source::Url => {
            let fasta = Location::parse(&need(&p.fasta, "fasta")?, workdir);
            let gff = Location::parse(&need(&p.gff, "gff")?, workdir);
            let list = match &p.checksums {
                Some(c) => Some(
                    f.text(&Location::parse(c, workdir))
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            let from_list = |loc: &Location| {
                list.as_deref()
                    .and_then(|l| checksum::lookup(l, &loc.file_name()))
            };
            let fasta_checksum = match &p.fasta_checksum {
                Some(c) => Some(parse_checksum(c)?),
                None => from_list(&fasta),
            };
            let gff_checksum = match &p.gff_checksum {
                Some(c) => Some(parse_checksum(c)?),
                None => from_list(&gff),
            };
            if list.is_some() && fasta_checksum.is_none() {
                return Err(format!(
                    "{}: the checksum list has no entry for {}",
                    p.checksums.as_deref().unwrap_or(""),
                    fasta.file_name()
                ));
            }
            Ok(sources::Resolved {
                fasta,
                gff,
                fasta_checksum,
                gff_checksum,
            })
        }
        Source::EnsemblPlants => {
            let species = need(&p.species, "species")?;
            let release = p.release.ok_or("source `ensembl_plants` needs `release`")?;
            sources::ensembl_plants(
                f,
                &base("https://ftp.ensemblgenomes.ebi.ac.uk/pub/plants"),
                &species,
                release,
            )
        }
        Source::Refseq => sources::refseq(
            f,
            &base("https://ftp.ncbi.nlm.nih.gov"),
            &need(&p.accession, "accession")?,
        ),
        Source::Maizegdb => sources::maizegdb(
            f,
            &base("https://download.maizegdb.org"),
            &need(&p.genome, "genome")?,
        ),
    }
}

pub(crate) fn verify(
    path: &Path,
    what: &str,
    loc: &Location,
    expected: Option<&Expected>,
    required: bool,
) -> Result<Option<String>, String> {
    match expected {
        Some(exp) => {
            let got =
                checksum::compute(path, exp).map_err(|e| format!("{}: {e}", path.display()))?;
            if &got != exp {
                // A corrupt download must not be resumed from: remove it.
                let _ = std::fs::remove_file(path);
                return Err(format!(
                    "{what} {loc}: checksum mismatch: expected {exp}, got {got}"
                ));
            }
            Ok(Some(exp.to_string()))
        }
        None if required => Err(format!(
            "{what} {loc}: no checksum was given or published, and require_checksum is set"
        )),
        None => {
            eprintln!("download: warning: no checksum for {loc}; not verified");
            Ok(None)
        }
    }
}

/// Runs the stage.
pub fn run(p: &Params, ctx: &Context) -> Result<Provenance, String> {
    // Files from another stage (e.g. `simulate`) come in as inputs and are fetched as file:// URLs.
    let mut p = p.clone();
    for (name, slot) in [("fasta", &mut p.fasta), ("gff", &mut p.gff)] {
        if let Some(path) = ctx.inputs.get(name) {
            if slot.is_some() {
                return Err(format!(
                    "download: `{name}` is given both as a param and as an input: keep one"
                ));
            }
            if p.source != Source::Url {
                return Err(format!(
                    "download: an input `{name}` needs `source: url`, not {:?}",
                    p.source
                ));
            }
            *slot = Some(format!("file://{}", path.display()));
        }
    }
    let p = &p;
    let fetcher = Fetcher::new(
        Duration::from_secs(p.timeout_s.max(1)),
        p.retries,
        Duration::from_secs_f64(p.backoff_s.max(0.0)),
    );
    let r = resolve(p, &fetcher, &ctx.workdir).map_err(|e| format!("download: {e}"))?;
    std::fs::create_dir_all(&ctx.work).map_err(|e| e.to_string())?;
    let fasta_dl: PathBuf = ctx.work.join(format!("fasta-{}", r.fasta.file_name()));
    let gff_dl: PathBuf = ctx.work.join(format!("gff-{}", r.gff.file_name()));
    let mut prov = Provenance {
        source: format!("{:?}", p.source).to_lowercase(),
        fasta: r.fasta.to_string(),
        gff: r.gff.to_string(),
        ..Provenance::default()
    };
    for (loc, dest, sum, what) in [
        (&r.fasta, &fasta_dl, r.fasta_checksum.as_ref(), "FASTA"),
        (&r.gff, &gff_dl, r.gff_checksum.as_ref(), "GFF3"),
    ] {
        eprintln!("download: {loc}");
        let bytes = fetcher
            .download(loc, dest)
            .map_err(|e| format!("download: {e}"))?;
        let verified = verify(dest, what, loc, sum, p.require_checksum)
            .map_err(|e| format!("download: {e}"))?;
        if what == "FASTA" {
            prov.fasta_bytes = bytes;
            prov.fasta_verified = verified;
        } else {
            prov.gff_bytes = bytes;
            prov.gff_verified = verified;
        }
    }
    // FASTA -> bgzip with its index.
    let fasta_out = ctx.out.join("genome.fa.gz");
    match compression(&fasta_dl).map_err(|e| e.to_string())? {
        Compression::Bgzip => {
            std::fs::copy(&fasta_dl, &fasta_out).map_err(|e| e.to_string())?;
        }
        _ => to_bgzip(&fasta_dl, &fasta_out).map_err(|e| format!("download: {e}"))?,
    }
    let genome = Genome::open(&fasta_out)
        .map_err(|e| format!("download: the FASTA from {}: {e}", r.fasta))?;
    if genome.names().is_empty() {
        return Err(format!(
            "download: the FASTA from {} has no sequences",
            r.fasta
        ));
    }
    // GFF3 -> compressed.
    let gff_out = ctx.out.join("genes.gff3.gz");
    match compression(&gff_dl).map_err(|e| e.to_string())? {
        Compression::Plain => to_bgzip(&gff_dl, &gff_out).map_err(|e| format!("download: {e}"))?,
        _ => {
            std::fs::copy(&gff_dl, &gff_out).map_err(|e| e.to_string())?;
        }
    }
    crate::genomics::genes::read_genes(&gff_out, "auto")
        .map_err(|e| format!("download: the GFF3 from {}: {e}", r.gff))?;
    std::fs::write(
        ctx.out.join("source.json"),
        serde_json::to_string_pretty(&prov).expect("serializes"),
    )
    .map_err(|e| e.to_string())?;
    // The downloads are published in their converted form: free the work folder.
    let _ = std::fs::remove_file(&fasta_dl);
    let _ = std::fs::remove_file(&gff_dl);
    eprintln!(
        "download: {} contigs; FASTA {} bytes ({}), GFF3 {} bytes ({})",
        genome.names().len(),
        prov.fasta_bytes,
        prov.fasta_verified.as_deref().unwrap_or("unverified"),
        prov.gff_bytes,
        prov.gff_verified.as_deref().unwrap_or("unverified")
    );
    Ok(prov)
}

#[cfg(test)]
mod tests;

/// Fetches one file from `url` (http, https, file:// or a path read against `base`) into
/// `dest`, verified against `checksum` (`sha256:HEX` or `md5:HEX`) when one is given.
pub fn fetch_one(
    url: &str,
    checksum: Option<&str>,
    base: &Path,
    dest: &Path,
) -> Result<u64, String> {
    let fetcher = Fetcher::new(Duration::from_secs(60), 5, Duration::from_secs(1));
    let loc = Location::parse(url, base);
    let expected = checksum.map(parse_checksum).transpose()?;
    let bytes = fetcher.download(&loc, dest).map_err(|e| e.to_string())?;
    verify(dest, "table", &loc, expected.as_ref(), false)?;
    Ok(bytes)
}
