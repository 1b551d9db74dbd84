use super::*;
use crate::genomics::promoters::{self, Params};
use crate::model::finetune::tests::trained;
use crate::model::mutagenesis::saturate;
use crate::rng::Rng;
use crate::testing::PLANTED_MOTIFS;

/// A 2 kb contig with a + strand gene at 501..900 and a - strand gene at 1201..1500, the
/// activating motif planted 25 bases upstream of each TSS (on the gene's strand).
fn genome(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let mut rng = Rng::new(9);
    let mut bases: Vec<u8> = (0..2000).map(|_| b"ACGT"[rng.below(4)]).collect();
    let motif = PLANTED_MOTIFS[0].0.as_bytes();
    // + strand: TSS 501, motif at 1-based 469..475.
    bases[468..475].copy_from_slice(motif);
    // - strand: TSS 1500, motif on the - strand at 1-based 1526..1532 of the + strand.
    bases[1525..1532].copy_from_slice(&reverse_complement(motif));
    let fa = dir.join("genome.fa");
    let mut text = String::from(">chr1\n");
    for line in bases.chunks(60) {
        text.push_str(std::str::from_utf8(line).unwrap());
        text.push('\n');
    }
    std::fs::write(&fa, text).unwrap();
    let gff = dir.join("genes.gff3");
    std::fs::write(
        &gff,
        "##gff-version 3\nchr1\tt\tgene\t501\t900\t.\t+\t.\tID=gene:plus;biotype=protein_coding\nchr1\tt\tgene\t1201\t1500\t.\t-\t.\tID=gene:minus;biotype=protein_coding\n",
    )
    .unwrap();
    (fa, gff, bases)
}

fn vcf(dir: &Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("calls.vcf");
    std::fs::write(
        &p,
        format!("##fileformat=VCFv4.2\n##contig=<ID=chr1,length=2000>\n##contig=<ID=chrZ,length=10>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n{body}"),
    )
    .unwrap();
    p
}

fn windows(dir: &Path, fa: &Path, gff: &Path) -> (Genome, Vec<Promoter>) {
    let p = Params {
        upstream: 150,
        ..Params::default()
    };
    let (w, _) = promoters::extract(&p, fa, gff, &dir.join("w")).unwrap();
    let prepared = Genome::prepare(fa, &dir.join("w")).unwrap();
    (Genome::open(&prepared).unwrap(), w)
}

#[test]
fn scores_alleles_on_the_genes_strand_and_counts_what_it_skips() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, gff, bases) = genome(dir.path());
    let (g, w) = windows(dir.path(), &fa, &gff);
    assert_eq!(w.len(), 2);
    let base = |pos: usize| bases[pos - 1] as char;
    let other = |pos: usize| if base(pos) == 'A' { 'C' } else { 'A' };
    let body = [
        // The motif's 4th base (T A T [A] A A T) in the + gene's promoter, and in the - gene's.
        "chr1\t472\t.\tA\tG\t.\t.\t.\n".to_string(),
        "chr1\t1529\t.\tT\tC\t.\t.\t.\n".to_string(),
        // Multi-allelic, inside the + window.
        format!(
            "chr1\t400\t.\t{}\t{},{}\t.\t.\t.\n",
            base(400),
            other(400),
            'T'
        ),
        // A deletion reaching past the + window's end (500).
        format!(
            "chr1\t498\t.\t{}\t{}\t.\t.\t.\n",
            String::from_utf8_lossy(&bases[497..503]),
            base(498)
        ),
        // REF that is not the genome's, a symbolic allele, one outside every window, an unknown contig.
        format!("chr1\t420\t.\t{}\tA\t.\t.\t.\n", other(420)),
        format!("chr1\t430\t.\t{}\t<DEL>\t.\t.\t.\n", base(430)),
        format!("chr1\t100\t.\t{}\t{}\t.\t.\t.\n", base(100), other(100)),
        "chrZ\t5\t.\tA\tC\t.\t.\t.\n".to_string(),
    ]
    .concat();
    let report = score(
        &Predictor::load(&trained().out, candle_core::Device::Cpu).unwrap(),
        &g,
        &w,
        &vcf(dir.path(), &body),
    )
    .unwrap();
    assert_eq!(report.skipped["crosses the window edge"], 1, "{report:?}");
    assert_eq!(report.skipped["REF does not match the genome"], 1);
    assert_eq!(report.skipped["symbolic allele"], 1);
    assert_eq!(report.skipped["contig not in the genome"], 1);
    assert_eq!(report.outside, 1);
    assert_eq!(
        report.effects.len(),
        4,
        "two SNVs + two alleles of one record"
    );
    let plus = &report.effects[0];
    assert_eq!(
        (plus.gene_id.as_str(), plus.strand, plus.distance_to_tss),
        ("plus", Strand::Forward, 29)
    );
    let minus = &report.effects[1];
    assert_eq!(
        (minus.gene_id.as_str(), minus.strand, minus.distance_to_tss),
        ("minus", Strand::Reverse, 29)
    );
    // Breaking the activating motif lowers `leaf` (its effect is +2) on both strands.
    assert!(plus.delta[0] < -0.1, "{:?}", plus.delta);
    assert!(minus.delta[0] < -0.1, "{:?}", minus.delta);
    assert_eq!(report.effects[2].alt, other(400).to_string());
    assert_eq!(report.effects[3].alt, "T");
}

#[test]
fn a_vcf_on_other_contigs_is_an_error_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, gff, _) = genome(dir.path());
    let (g, w) = windows(dir.path(), &fa, &gff);
    let model = Predictor::load(&trained().out, candle_core::Device::Cpu).unwrap();
    let e = score(
        &model,
        &g,
        &w,
        &vcf(dir.path(), "chrZ\t5\t.\tA\tC\t.\t.\t.\n"),
    )
    .unwrap_err();
    assert!(
        e.contains("none of its contigs (chrZ) is in the genome (chr1)"),
        "{e}"
    );
    let e = score(&model, &g, &w, &dir.path().join("absent.vcf")).unwrap_err();
    assert!(e.contains("absent.vcf"), "{e}");
}

#[test]
fn saturation_mutagenesis_finds_the_planted_motif() {
    let t = trained();
    let model = Predictor::load(&t.out, candle_core::Device::Cpu).unwrap();
    let row = t
        .rows
        .iter()
        .find(|r| r.present[0] && !r.present[1] && !r.present[2])
        .unwrap();
    let (_, muts) = saturate(&model, row.seq.as_bytes()).unwrap();
    assert_eq!(muts.len(), 3 * row.seq.len());
    // The position whose changes move `leaf` most lies in the motif.
    let mut by_pos = vec![0f32; row.seq.len() + 1];
    for m in &muts {
        by_pos[m.position] += m.delta[0].abs();
    }
    let top = (1..by_pos.len())
        .max_by(|&a, &b| by_pos[a].total_cmp(&by_pos[b]))
        .unwrap();
    let start = row.seq.find(PLANTED_MOTIFS[0].0).unwrap() + 1;
    assert!(
        (start..start + 7).contains(&top),
        "top position {top}, motif at {start}"
    );
    assert!(saturate(&model, b"").is_err());
}

/// A VCF without `##contig` lines, or naming a contig its header does not declare (htslib adds
/// it as it reads), is read like any other: it crashed flora with a segmentation fault, as the
/// name was looked up in a copy of the header taken before the contig was added.
#[test]
fn contigs_the_header_does_not_declare_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, gff, bases) = genome(dir.path());
    let (g, w) = windows(dir.path(), &fa, &gff);
    let model = Predictor::load(&trained().out, candle_core::Device::Cpu).unwrap();
    let alt = if bases[471] == b'A' { 'C' } else { 'A' };
    let body = format!(
        "chrY\t5\t.\tA\tC\t.\t.\t.\nchr1\t472\t.\t{}\t{alt}\t.\t.\t.\nchrX\t9\t.\tG\tT\t.\t.\t.\n",
        bases[471] as char
    );
    let calls = dir.path().join("bare.vcf");
    std::fs::write(
        &calls,
        format!("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n{body}"),
    )
    .unwrap();
    let report = score(&model, &g, &w, &calls).unwrap();
    assert_eq!(report.effects.len(), 1, "{report:?}");
    assert_eq!(report.effects[0].gene_id, "plus");
    assert_eq!(report.skipped["contig not in the genome"], 2);
    let e = score(
        &model,
        &g,
        &w,
        &vcf(dir.path(), "chrQ\t5\t.\tA\tC\t.\t.\t.\n"),
    )
    .unwrap_err();
    assert!(
        e.contains("none of its contigs (chrQ) is in the genome"),
        "{e}"
    );
}
