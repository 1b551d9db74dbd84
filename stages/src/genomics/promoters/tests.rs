use super::*;

/// A 60 bp contig `c1` with a recognisable sequence, and a 20 bp contig `c2`.
const C1: &str = "AAAAAAAAAACCCCCCCCCCGGGGGGGGGGTTTTTTTTTTacgtacgtacNNNNNNNNNN";
const C2: &str = "ACGTACGTACGTACGTACGT";

fn setup(gff: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let fasta = dir.path().join("test_species.fa");
    std::fs::write(&fasta, format!(">c1\n{C1}\n>c2\n{C2}\n")).unwrap();
    let gff_path = dir.path().join("genes.gff3");
    std::fs::write(&gff_path, gff).unwrap();
    (dir, fasta, gff_path)
}

fn gene(id: &str, seqid: &str, start: u64, end: u64, strand: char, biotype: &str) -> String {
    format!(
        "{seqid}\t.\tgene\t{start}\t{end}\t.\t{strand}\t.\tID=gene-{id};gene_biotype={biotype}\n"
    )
}

fn params(upstream: u64) -> Params {
    Params {
        upstream,
        ..Params::default()
    }
}

fn run_on(gff: &str, p: &Params) -> Result<(Vec<Promoter>, Summary), PromoterError> {
    let (dir, fasta, gff) = setup(gff);
    extract(p, &fasta, &gff, &dir.path().join("work"))
}

#[test]
fn plus_and_minus_strand_windows() {
    // + gene starting at 21: upstream 10 = bases 11..20 (C x10).
    // - gene ending at 30: upstream 10 = bases 31..40 (T x10), reverse-complemented: A x10.
    let gff = gene("P", "c1", 21, 25, '+', "protein_coding")
        + &gene("M", "c1", 26, 30, '-', "protein_coding");
    let (out, summary) = run_on(&gff, &params(10)).unwrap();
    assert_eq!(out[0].gene_id, "P");
    assert_eq!(out[0].seq, b"CCCCCCCCCC");
    assert_eq!((out[0].start, out[0].end, out[0].tss), (11, 20, 21));
    assert_eq!(out[1].seq, b"AAAAAAAAAA");
    assert_eq!((out[1].start, out[1].end, out[1].tss), (31, 40, 30));
    assert_eq!(summary.written, 2);
    assert_eq!(header(&out[1], "sp"), "M sp c1:31-40(-)");
}

#[test]
fn soft_masked_bases_are_upper_cased_and_minus_strand_complemented() {
    // + gene at 51: upstream 10 = bases 41..50 = "acgtacgtac".
    let gff = gene("P", "c1", 51, 55, '+', "protein_coding")
        + &gene("M", "c1", 35, 40, '-', "protein_coding");
    let (out, _) = run_on(&gff, &params(10)).unwrap();
    assert_eq!(out[0].seq, b"ACGTACGTAC");
    // - gene ending at 40: bases 41..50 reverse-complemented.
    assert_eq!(out[1].seq, b"GTACGTACGT");
}

#[test]
fn downstream_bases_extend_into_the_gene() {
    let gff = gene("P", "c1", 21, 40, '+', "protein_coding")
        + &gene("M", "c1", 11, 30, '-', "protein_coding");
    let p = Params {
        upstream: 5,
        downstream: 5,
        ..Params::default()
    };
    let (out, _) = run_on(&gff, &p).unwrap();
    assert_eq!(out[0].seq, b"CCCCCGGGGG");
    assert_eq!((out[0].start, out[0].end), (16, 25));
    // - strand: [30-5+1, 30+5] = 26..35 = GGGGGTTTTT, reverse-complemented.
    assert_eq!(out[1].seq, b"AAAAACCCCC");
}

#[test]
fn windows_past_a_contig_end_are_dropped_or_clipped() {
    let gff = gene("P", "c2", 5, 10, '+', "protein_coding")
        + &gene("M", "c2", 12, 18, '-', "protein_coding");
    let (out, summary) = run_on(
        &(gff.clone() + &gene("ok", "c1", 21, 25, '+', "protein_coding")),
        &params(10),
    )
    .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(summary.dropped["window past contig end"], 2);
    let keep = Params {
        edge: Edge::Keep,
        ..params(10)
    };
    let (out, _) = run_on(&gff, &keep).unwrap();
    assert_eq!(out[0].seq, b"ACGT");
    assert_eq!((out[0].start, out[0].end), (1, 4));
    assert_eq!(out[1].seq, seq::reverse_complement(b"GT"));
    assert_eq!((out[1].start, out[1].end), (19, 20));
}

#[test]
fn avoid_overlap_clips_at_the_upstream_neighbour() {
    // Neighbour (a tRNA, still a neighbour) ends at 15; P starts at 21 with upstream 10 -> 16..20.
    let gff = gene("T", "c1", 12, 15, '+', "tRNA")
        + &gene("P", "c1", 21, 25, '+', "protein_coding")
        + &gene("Q", "c1", 50, 55, '-', "protein_coding")
        + &gene("R", "c1", 44, 49, '-', "protein_coding");
    let p = Params {
        avoid_overlap: true,
        ..params(10)
    };
    let (out, summary) = run_on(&gff, &p).unwrap();
    let by_id: HashMap<&str, &Promoter> = out.iter().map(|p| (p.gene_id.as_str(), p)).collect();
    assert_eq!((by_id["P"].start, by_id["P"].end), (16, 20));
    // R (- strand, ends at 49) has Q starting at 50 right upstream: nothing left.
    assert!(!by_id.contains_key("R"));
    assert_eq!(
        summary.dropped["window shorter than min_length after clipping"],
        1
    );
    assert_eq!(summary.dropped["biotype tRNA"], 1);
    // Without clipping, the same windows overlap the neighbours.
    let (out, _) = run_on(&gff, &params(10)).unwrap();
    assert_eq!(out.iter().find(|p| p.gene_id == "P").unwrap().start, 11);
}

#[test]
fn transcript_feature_uses_the_canonical_or_longest_transcript() {
    let gff = "c1\t.\tgene\t11\t40\t.\t+\t.\tID=gene-G;gene_biotype=protein_coding
c1\t.\tmRNA\t11\t40\t.\t+\t.\tID=rna-1;Parent=gene-G
c1\t.\texon\t11\t15\t.\t+\t.\tParent=rna-1
c1\t.\tmRNA\t21\t40\t.\t+\t.\tID=rna-2;Parent=gene-G
c1\t.\texon\t21\t40\t.\t+\t.\tParent=rna-2
";
    let p = Params {
        feature: Feature::Transcript,
        ..params(5)
    };
    let (out, _) = run_on(gff, &p).unwrap();
    assert_eq!(out[0].tss, 21, "rna-2 has the longer exons");
    assert_eq!(out[0].seq, b"CCCCC");
}

#[test]
fn n_filter_dedup_and_biotypes() {
    // Two genes with identical windows (both + at 21 on c1 would be duplicate ids; use c2 repeats).
    let gff = gene("A", "c2", 9, 12, '+', "protein_coding")
        + &gene("B", "c2", 13, 16, '+', "protein_coding")
        + &gene("N", "c1", 60, 60, '-', "protein_coding")
        + &gene("L", "c1", 55, 58, '+', "lncRNA");
    let p = Params {
        upstream: 4,
        max_n_fraction: 0.5,
        dedup: true,
        ..Params::default()
    };
    let (out, summary) = run_on(&gff, &p).unwrap();
    // A: bases 5..8 = ACGT; B: bases 9..12 = ACGT (a duplicate).
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].gene_id, "A");
    assert_eq!(summary.dropped["duplicate sequence"], 1);
    assert_eq!(summary.dropped["biotype lncRNA"], 1);
    // N is - strand at the contig end: its window runs past the end.
    assert_eq!(summary.dropped["window past contig end"], 1);
    let gff = gene("N", "c1", 40, 50, '+', "protein_coding");
    let p = Params {
        upstream: 10,
        max_n_fraction: 0.0,
        ..Params::default()
    };
    // M's window (51..60) is all N; N's (30..39) has none.
    let (out, summary) = run_on(
        &(gff.clone() + &gene("M", "c1", 45, 50, '-', "protein_coding")),
        &p,
    )
    .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(summary.dropped["too many N"], 1);
    let err = run_on(&gene("M", "c1", 45, 50, '-', "protein_coding"), &p).unwrap_err();
    assert!(
        err.to_string()
            .contains("no promoter was written (1 genes read; dropped: too many N: 1)"),
        "{err}"
    );
    let all = Params {
        biotypes: vec![],
        upstream: 4,
        ..Params::default()
    };
    let (out, _) = run_on(&gene("L", "c1", 55, 58, '+', "lncRNA"), &all).unwrap();
    assert_eq!(out.len(), 1);
}

#[test]
fn missing_sequences_and_genes_past_the_end() {
    let gff = gene("A", "c1", 21, 25, '+', "protein_coding")
        + &gene("X", "chrUn", 21, 25, '+', "protein_coding")
        + &gene("E", "c2", 15, 99, '+', "protein_coding");
    let (out, summary) = run_on(&gff, &params(5)).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(summary.dropped["sequence not in the FASTA"], 1);
    assert_eq!(summary.dropped["gene past contig end"], 1);
    let err = run_on(
        &gene("X", "chr9", 21, 25, '+', "protein_coding"),
        &params(5),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("none of the GFF3's sequence names (chr9) is in the FASTA (c1, c2)"),
        "{err}"
    );
}

#[test]
fn bad_gff_names_file_and_line() {
    let (dir, fasta, gff) = setup("##gff-version 3\nc1\t.\tgene\t21\tx\t.\t+\t.\tID=a\n");
    let err = extract(&params(5), &fasta, &gff, &dir.path().join("w"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("genes.gff3: line 2: end \"x\" is not"),
        "{err}"
    );
    let (dir, fasta, gff) = setup("");
    let err = extract(&params(5), &fasta, &gff, &dir.path().join("w"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no gene features found"), "{err}");
}

#[test]
fn writes_bgzip_fasta_tsv_and_summary() {
    let (dir, fasta, gff) = setup(
        &(gene("P", "c1", 21, 25, '+', "protein_coding")
            + &gene("M", "c1", 26, 30, '-', "protein_coding")),
    );
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut ctx = Context::new(
        out.clone(),
        dir.path().join("work"),
        dir.path().to_path_buf(),
    );
    ctx.inputs.insert("fasta".into(), fasta);
    ctx.inputs.insert("gff".into(), gff);
    let summary = run(&params(10), &ctx).unwrap();
    assert_eq!(summary.species, "test_species");
    let fa = out.join("promoters.fa.gz");
    assert_eq!(
        super::super::io::compression(&fa).unwrap(),
        super::super::io::Compression::Bgzip
    );
    let mut text = String::new();
    std::io::Read::read_to_string(&mut super::super::io::open_text(&fa).unwrap(), &mut text)
        .unwrap();
    assert_eq!(
        text,
        ">P test_species c1:11-20(+)\nCCCCCCCCCC\n>M test_species c1:31-40(-)\nAAAAAAAAAA\n"
    );
    let tsv = std::fs::read_to_string(out.join("promoters.tsv")).unwrap();
    assert_eq!(
        tsv,
        "gene_id\tspecies\tchrom\tstrand\ttss\tstart\tend\tlength\tn_fraction\nP\ttest_species\tc1\t+\t21\t11\t20\t10\t0.0000\nM\ttest_species\tc1\t-\t30\t31\t40\t10\t0.0000\n"
    );
    let json: Summary =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(json, summary);
}

/// Inputs given the wrong way are told how to give them: a FASTA file as `genome` (which takes a
/// `download` folder), a folder without a genome, and neither `genome` nor `fasta` + `gff`.
#[test]
fn inputs_given_the_wrong_way_say_how_to_give_them() {
    let (dir, fasta, gff) = setup(&gene("P", "c1", 21, 25, '+', "protein_coding"));
    let ctx_with = |inputs: &[(&str, &Path)]| {
        let mut ctx = Context::new(
            dir.path().join("out"),
            dir.path().join("work"),
            dir.path().to_path_buf(),
        );
        for (name, path) in inputs {
            ctx.inputs.insert(name.to_string(), path.to_path_buf());
        }
        ctx
    };
    let error =
        |inputs: &[(&str, &Path)]| run(&params(10), &ctx_with(inputs)).unwrap_err().to_string();
    let e = error(&[("genome", &fasta)]);
    assert!(
        e.contains("input `genome` is a file (")
            && e.contains("give a FASTA as input `fasta` and its annotation as input `gff`"),
        "{e}"
    );
    let e = error(&[("genome", dir.path())]);
    assert!(e.contains("has no genome.fa[.gz]"), "{e}");
    let e = error(&[("gff", &gff)]);
    assert!(e.contains("needs inputs `fasta` and `gff`"), "{e}");
}

/// Real data: A. thaliana TAIR10 chr1 with its RefSeq GFF3 (skipped, loudly, without it).
#[test]
fn athaliana_chr1_promoters_match_the_genome() {
    let Some(data) = crate::testing::shared_data("athaliana_chr1_promoters_match_the_genome")
    else {
        return;
    };
    let dir = data.join("athaliana_chr1");
    let fasta = dir.join("AthaTAIR10_chr1_GCF_000001735.4_TAIR10.1_genomic.fna.gz");
    let gff = dir.join("AthaTAIR10_chr1.gff.gz");
    if !fasta.exists() {
        crate::testing::skipped(&format!(
            "athaliana_chr1_promoters_match_the_genome: {} is missing",
            fasta.display()
        ));
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (out, summary) = extract(&Params::default(), &fasta, &gff, work.path()).unwrap();
    // 7,156 protein-coding genes on chr1, as SOURCE.txt says; a few lose their window at the ends.
    let coding = summary.written
        + summary
            .dropped
            .get("window past contig end")
            .copied()
            .unwrap_or(0);
    assert_eq!(coding, 7156, "{summary:?}");
    assert!(out.iter().all(|p| p.seq.len() == 1000));
    // AT1G01010 (+, starts at 3631): bases 2631..3630 of the chromosome.
    let g = Genome::open(&Genome::prepare(&fasta, work.path()).unwrap()).unwrap();
    let first = out.iter().find(|p| p.gene_id == "AT1G01010").unwrap();
    assert_eq!(
        first.seq,
        g.fetch("NC_003070.9", 2630, 3630)
            .unwrap()
            .to_ascii_uppercase()
    );
    // AT1G01020 is on the minus strand: the reverse complement of the 1000 bases after its end.
    let minus = out.iter().find(|p| p.gene_id == "AT1G01020").unwrap();
    assert_eq!(minus.strand, Strand::Reverse);
    assert_eq!(
        minus.seq,
        seq::reverse_complement(&g.fetch("NC_003070.9", minus.tss, minus.tss + 1000).unwrap())
    );
}

#[test]
fn manifest_rows_and_headers_format_every_field() {
    let p = Promoter {
        gene_id: "AT1G01020".into(),
        chrom: "NC_003070.9".into(),
        strand: Strand::Reverse,
        tss: 9130,
        start: 9131,
        end: 10130,
        seq: b"ACGN".to_vec(),
        n_fraction: 0.25,
    };
    let mut row = Vec::new();
    write_row(&mut row, &p, "A_thaliana");
    assert_eq!(
        String::from_utf8(row).unwrap(),
        "AT1G01020\tA_thaliana\tNC_003070.9\t-\t9130\t9131\t10130\t4\t0.2500\n"
    );
    assert_eq!(
        header(&p, "A_thaliana"),
        "AT1G01020 A_thaliana NC_003070.9:9131-10130(-)"
    );
    let mut row = Vec::new();
    write_row(
        &mut row,
        &Promoter {
            n_fraction: 1.0 / 3.0,
            ..p
        },
        "s",
    );
    assert!(String::from_utf8(row).unwrap().ends_with("\t4\t0.3333\n"));
}

#[test]
fn an_annotation_without_biotypes_is_told_how_to_keep_its_genes() {
    // Gene lines with no biotype and no mRNA (a minimal GFF3 of the user's own) are `unknown`.
    let gff = "c1\t.\tgene\t21\t25\t.\t+\t.\tID=g1\nc1\t.\tgene\t26\t30\t.\t-\t.\tID=g2\n";
    let err = run_on(gff, &params(10)).unwrap_err().to_string();
    assert!(err.contains("dropped: biotype unknown: 2"), "{err}");
    assert!(
        err.contains("`biotypes` keeps protein_coding") && err.contains("set `biotypes: []`"),
        "{err}"
    );
    let keep_all = Params {
        biotypes: vec![],
        ..params(10)
    };
    let (out, _) = run_on(gff, &keep_all).unwrap();
    assert_eq!(out.len(), 2);
    // Other reasons get no biotype hint.
    let p = Params {
        upstream: 10,
        max_n_fraction: 0.0,
        ..Params::default()
    };
    let err = run_on(&gene("M", "c1", 45, 50, '-', "protein_coding"), &p)
        .unwrap_err()
        .to_string();
    assert!(!err.contains("biotypes"), "{err}");
}
