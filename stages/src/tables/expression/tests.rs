use super::*;

fn table(text: &str, name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    (dir, p)
}

#[test]
fn genes_by_samples_averages_replicates_and_filters() {
    let (_d, p) = table(
        "gene_id,ERR1,ERR2,ERR3,logMaxTPM\nG1,1.0,3.0,10,9\nG2,0.1,0.2,0.3,9\nG3,NA,4,,9\n",
        "t.csv",
    );
    let params = Params {
        tissues: Some(OrderedMap::from_pairs(&[
            ("ERR1", "leaf"),
            ("ERR2", "leaf"),
            ("ERR3", "root"),
        ])),
        ..Params::default()
    };
    let (t, s) = read(&p, &params).unwrap();
    assert_eq!(t.tissues, ["leaf", "root"]);
    assert_eq!(t.rows, vec![("G1".to_string(), vec![2.0, 10.0])]);
    assert_eq!(s.dropped["below 1 TPM in every tissue"], 1);
    assert_eq!(s.dropped["missing values"], 1, "G3 has no root value");
    assert_eq!(s.replicates["leaf"], 2);
    // One tissue for all samples, a column ignored.
    let params = Params {
        tissue: Some("leaf".into()),
        ignore_columns: vec!["logMaxTPM".into()],
        min_tpm: 0.0,
        ..Params::default()
    };
    let (t, _) = read(&p, &params).unwrap();
    assert_eq!(t.tissues, ["leaf"]);
    assert_eq!(t.rows[0], ("G1".to_string(), vec![14.0 / 3.0]));
    assert_eq!(
        t.rows[2],
        ("G3".to_string(), vec![4.0]),
        "NA and empty cells are left out of the mean"
    );
}

#[test]
fn runs_by_genes_uses_the_study_tissues() {
    let mut text = String::from("Cultivar\torganism_part\tZm1\tZm2\n");
    for (i, part) in [
        "endosperm",
        "tassel",
        "base",
        "anther",
        "middle",
        "ear",
        "shoot",
        "root",
        "tip",
        "embryo",
    ]
    .iter()
    .enumerate()
    {
        text.push_str(&format!("B73\t{part}\t{}\t0.5\n", i + 1));
    }
    text.push_str("B73\troot\t10\t0.5\nMo17\troot\t100\t0.5\n");
    let (_d, p) = table(&text, "nam.txt");
    let (t, s) = read(
        &p,
        &Params {
            cultivar: Some("B73".into()),
            ..Params::default()
        },
    )
    .unwrap();
    assert_eq!(s.layout, "RunsByGenes");
    assert_eq!(
        t.tissues,
        [
            "endosperm",
            "tassel",
            "leaf_base",
            "anther",
            "leaf_middle",
            "ear",
            "shoot",
            "root",
            "leaf_tip"
        ]
    );
    assert_eq!(t.rows.len(), 1, "Zm2 is below 1 TPM everywhere");
    assert_eq!(
        t.rows[0].1,
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 9.0, 9.0]
    );
    assert_eq!(s.replicates["root"], 2);
    let err = read(
        &p,
        &Params {
            cultivar: Some("W22".into()),
            ..Params::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("no runs of tissue endosperm"),
        "{err}"
    );
}

#[test]
fn ready_tables_pass_through_with_sequences() {
    let (_d, p) = table("gene_id,gene_id_full,seq,fold,tassel,root\nG1,G1::c:1-5(+),acgt,test,-1.5,2\nG2,x,GGCC,train_0,0,NA\n", "r.csv");
    let (t, s) = read(&p, &Params::default()).unwrap();
    assert_eq!(s.layout, "Ready");
    assert_eq!(t.tissues, ["tassel", "root"]);
    assert_eq!(t.rows, vec![("G1".to_string(), vec![-1.5, 2.0])]);
    assert_eq!(t.sequences, vec![("G1".to_string(), "ACGT".to_string())]);
    assert_eq!(s.dropped["missing values"], 1);
}

#[test]
fn bad_tables_name_file_line_and_column() {
    let (_d, p) = table("gene_id\tS1\tS2\nG1\t1\t2\nG2\t3\tabc\n", "bad.tsv");
    let err = read(&p, &Params::default()).unwrap_err().to_string();
    assert!(
        err.ends_with("bad.tsv: line 3, column `S2`: \"abc\" is not a number"),
        "{err}"
    );
    let (_d, p) = table("gene_id\tS1\tS2\nG1\t1\n", "ragged.tsv");
    let err = read(&p, &Params::default()).unwrap_err().to_string();
    assert!(err.contains("ragged.tsv: line 2"), "{err}");
    let (_d, p) = table("", "empty.tsv");
    assert!(read(&p, &Params::default())
        .unwrap_err()
        .to_string()
        .contains("the file is empty"));
    let (_d, p) = table("gene_id\tS1\r\nG1\t5\r\n", "crlf.tsv");
    let (t, _) = read(&p, &Params::default()).unwrap();
    assert_eq!(t.rows, vec![("G1".to_string(), vec![5.0])]);
    let (_d, p) = table("gene_id,S1\nG1,1\n", "t.csv");
    let err = read(
        &p,
        &Params {
            tissues: Some(OrderedMap::from_pairs(&[("S9", "x")])),
            ..Params::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("no column S9 (columns: S1)"),
        "{err}"
    );
}

/// Real data: the A. thaliana leaf table and the maize B73 NAM-layout table.
#[test]
fn real_tables() {
    let Some(data) = crate::testing::shared_data("real_tables") else {
        return;
    };
    let leaf = data.join("athaliana_leaf_tpm/arabidopsis_leaf_counts.csv");
    let maize = data.join("maize_b73_tpm/B73_TPM_expression_counts_aligned_against_own_genome.txt");
    if !leaf.exists() || !maize.exists() {
        crate::testing::skipped(&format!(
            "real_tables: tables missing under {}",
            data.display()
        ));
        return;
    }
    let p = Params {
        tissue: Some("leaf".into()),
        ignore_columns: vec!["logMaxTPM".into()],
        min_tpm: 0.0,
        ..Params::default()
    };
    let (t, s) = read(&leaf, &p).unwrap();
    assert_eq!(s.genes, 27_655);
    let g = t.rows.iter().find(|r| r.0 == "AT1G01010").unwrap();
    let expect = [
        15.5858, 13.4085, 11.0055, 13.0791, 7.11422, 8.7652, 4.86114, 5.16119, 3.26178, 3.60497,
        5.1054, 3.34023, 3.92258, 6.87751,
    ];
    assert!((g.1[0] - expect.iter().sum::<f64>() / 14.0).abs() < 1e-9);
    let (t, s) = read(&maize, &Params::default()).unwrap();
    assert_eq!(s.genes, 39_756);
    assert_eq!(t.tissues.len(), 9);
    let g = t.rows.iter().find(|r| r.0 == "Zm00001eb000010").unwrap();
    assert!(
        (g.1[0] - 10.81252).abs() < 1e-9 && (g.1[2] - 6.610342).abs() < 1e-9,
        "{:?}",
        g.1
    );
}

#[test]
fn a_table_can_be_fetched_from_a_url_with_a_checksum() {
    use sha2::Digest as _;
    let text = "gene_id\tleaf\troot\nG1\t5\t7\nG2\t3\t0\n";
    let (d, p) = table(text, "tpm.tsv");
    let sha = format!("sha256:{:x}", sha2::Sha256::digest(text.as_bytes()));
    let mut ctx = crate::Context::new(d.path().join("out"), d.path().join("work"), d.path().into());
    std::fs::create_dir_all(&ctx.out).unwrap();
    let params = Params {
        url: Some(format!("file://{}", p.display())),
        checksum: Some(sha),
        ..Params::default()
    };
    let s = run(&params, &ctx).unwrap();
    assert_eq!(s.written, 2);
    assert!(std::fs::read_to_string(ctx.out.join("expression.tsv"))
        .unwrap()
        .starts_with("gene_id\tleaf\troot\n"));
    // A wrong checksum fails and names both; a url and an input together are refused.
    let wrong = Params {
        checksum: Some(format!("sha256:{}", "0".repeat(64))),
        ..params.clone()
    };
    let e = run(&wrong, &ctx).unwrap_err().to_string();
    assert!(e.contains("checksum mismatch"), "{e}");
    ctx.inputs.insert("table".into(), p.clone());
    let e = run(&params, &ctx).unwrap_err().to_string();
    assert!(e.contains("not both"), "{e}");
}
