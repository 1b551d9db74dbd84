//! GTF (GFF2 with `key "value";` attributes, as Ensembl, GENCODE-style and RNA-seq pipelines
//! write it) read as GFF3: each line's attributes are rewritten with the GFF3 links that GTF
//! leaves implicit.
//!
//! | feature | GFF3 attributes made |
//! | --- | --- |
//! | `gene` (and `*_gene`, `pseudogene`) | `ID=<gene_id>`, `biotype=<gene_biotype or gene_type>` |
//! | `exon` | `Parent=<transcript_id>` |
//! | `transcript`, `mRNA`, `*RNA`, `*_transcript` | `ID=<transcript_id>`, `Parent=<gene_id>`, `biotype=<transcript_biotype or transcript_type>` |
//! | others (`CDS`, UTRs, codons) | none: genes do not need them |
//!
//! Every attribute is also kept as written (a repeated key, such as Ensembl's `tag`, joined by
//! commas), so `id_attribute: gene_name` works as on GFF3. Many
//! GTF files have no gene lines: [`super::genes`] makes each gene from its transcripts.

/// Whether column 9 is GTF's `key "value"; ...` rather than GFF3's `KEY=VALUE;...`.
pub fn is_gtf(column: &str) -> bool {
    let first = column.split(';').map(str::trim).find(|p| !p.is_empty());
    first.is_some_and(|attribute| {
        attribute.split_once(' ').is_some_and(|(key, value)| {
            !key.is_empty()
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && value.trim().starts_with('"')
        })
    })
}

/// Column 9 of a GTF line of feature type `ty`, as GFF3 attributes (values percent-encoded).
pub fn to_gff3(ty: &str, column: &str) -> Result<String, String> {
    let pairs = parse(column)?;
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| pairs.iter().find(|(key, _)| key == k))
            .map(|(_, v)| v.clone())
    };
    let gene_id = first(&["gene_id"]);
    let transcript_id = first(&["transcript_id"]);
    let mut made: Vec<(&str, String)> = Vec::new();
    let is_gene = ty == "gene" || ty == "pseudogene" || ty.ends_with("_gene");
    if is_gene {
        made.extend(gene_id.map(|id| ("ID", id)));
        made.extend(first(&["gene_biotype", "gene_type"]).map(|b| ("biotype", b)));
    } else if ty == "exon" {
        made.extend(transcript_id.map(|id| ("Parent", id)));
    } else if is_transcript(ty) {
        made.extend(transcript_id.map(|id| ("ID", id)));
        made.extend(gene_id.map(|g| ("Parent", g)));
        made.extend(first(&["transcript_biotype", "transcript_type"]).map(|b| ("biotype", b)));
    }
    // CDS, UTRs, codons: no links; genes do not need them.
    let mut out: Vec<String> = made
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    // The rest as written, a repeated key's values joined (`tag "basic"; tag "canonical"`).
    let mut rest: Vec<(&str, Vec<&str>)> = Vec::new();
    for (key, value) in &pairs {
        if made.iter().any(|(k, _)| k == key) {
            continue;
        }
        match rest.iter_mut().find(|(k, _)| k == key) {
            Some((_, values)) => values.push(value),
            None => rest.push((key, vec![value])),
        }
    }
    for (key, values) in rest {
        let values: Vec<String> = values.iter().map(|v| encode(v)).collect();
        out.push(format!("{}={}", encode(key), values.join(",")));
    }
    Ok(out.join(";"))
}

/// Whether GTF feature type `ty` is a transcript (`transcript`, `mRNA`, `ncRNA`, `lnc_RNA`,
/// `pseudogenic_transcript`, ...).
fn is_transcript(ty: &str) -> bool {
    ty == "transcript" || ty.ends_with("RNA") || ty.ends_with("_transcript")
}

/// The `key "value"` pairs of a GTF column 9, in order (values unquoted; an unquoted value, as
/// some tools write numbers, is taken as it stands).
fn parse(column: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut rest = column.trim();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("GTF attribute {rest:?} has no value"))?;
        let after = after.trim_start();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted
                .find('"')
                .ok_or_else(|| format!("GTF attribute `{key}`: the quoted value never ends"))?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            after.split_once(';').unwrap_or((after, ""))
        };
        pairs.push((key.to_string(), value.trim().to_string()));
        rest = after.trim_start();
        rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
    }
    Ok(pairs)
}

/// Percent-encodes the characters GFF3 reserves in attribute values.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            ';' | '=' | ',' | '%' | '&' | '\t' | '\n' => {
                out.push_str(&format!("%{:02X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtf_attributes_become_gff3_links() {
        let gene = r#"gene_id "Zm1"; gene_name "abc1"; gene_biotype "protein_coding";"#;
        assert!(is_gtf(gene));
        assert!(!is_gtf("ID=gene:Zm1;biotype=protein_coding"));
        assert_eq!(
            to_gff3("gene", gene).unwrap(),
            "ID=Zm1;biotype=protein_coding;gene_id=Zm1;gene_name=abc1;gene_biotype=protein_coding"
        );
        let transcript = r#"gene_id "Zm1"; transcript_id "Zm1_T1"; gene_biotype "protein_coding"; transcript_biotype "protein_coding"; tag "basic"; tag "Ensembl_canonical";"#;
        assert_eq!(
            to_gff3("transcript", transcript).unwrap(),
            "ID=Zm1_T1;Parent=Zm1;biotype=protein_coding;gene_id=Zm1;transcript_id=Zm1_T1;\
             gene_biotype=protein_coding;transcript_biotype=protein_coding;\
             tag=basic,Ensembl_canonical"
        );
        assert_eq!(
            to_gff3(
                "exon",
                r#"gene_id "Zm1"; transcript_id "Zm1_T1"; exon_number "1";"#
            )
            .unwrap(),
            "Parent=Zm1_T1;gene_id=Zm1;transcript_id=Zm1_T1;exon_number=1"
        );
        // Reserved characters are encoded; unquoted values are read as they stand.
        assert_eq!(
            to_gff3("gene", r#"gene_id "a;b=c"; level 2;"#).unwrap(),
            "ID=a%3Bb%3Dc;gene_id=a%3Bb%3Dc;level=2"
        );
        // A UTR is no transcript: it links to nothing.
        assert_eq!(
            to_gff3(
                "five_prime_utr",
                r#"gene_id "Zm1"; transcript_id "Zm1_T1";"#
            )
            .unwrap(),
            "gene_id=Zm1;transcript_id=Zm1_T1"
        );
        let e = to_gff3("gene", r#"gene_id "Zm1"#).unwrap_err();
        assert!(e.contains("the quoted value never ends"), "{e}");
    }
}
