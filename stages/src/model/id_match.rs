//! Why the gene ids of the promoters and of an expression table do not meet: a few of each, and
//! the usual culprit when there is one (a version or transcript suffix, a `gene:` prefix, case).

use std::collections::HashSet;

/// A way two spellings of one gene's id differ, and the normalisation that undoes it.
type Rule = (&'static str, fn(&str) -> String);

/// The usual ways two spellings of one gene's id differ.
const RULES: [Rule; 3] = [
    (
        "a version or transcript suffix (`.1`, `_T001`, `_P001`)",
        without_suffix,
    ),
    ("a prefix (`gene:`, `gene-`)", without_prefix),
    ("letter case", |id| id.to_lowercase()),
];

/// A hint for promoter ids `promoters` that meet none of the table's ids `table`: a few of
/// each, and what they differ by when one rule makes some of them meet.
pub fn hint(promoters: &[String], table: &[String]) -> String {
    let sample = |ids: &[String]| {
        let shown: Vec<&str> = ids.iter().take(3).map(String::as_str).collect();
        shown.join(", ")
    };
    let mut text = format!(
        "Promoter ids look like {}; the table's like {}.",
        sample(promoters),
        sample(table)
    );
    let best = RULES
        .iter()
        .map(|(what, normalise)| {
            let known: HashSet<String> = table.iter().map(|id| normalise(id)).collect();
            let meet = promoters
                .iter()
                .filter(|id| known.contains(&normalise(id)))
                .count();
            (meet, *what)
        })
        .max_by_key(|(meet, _)| *meet);
    if let Some((meet, what)) = best.filter(|(meet, _)| *meet > 0) {
        text.push_str(&format!(
            " They differ by {what}: {meet} of {} promoters would match without it.",
            promoters.len()
        ));
    }
    text.push_str(
        " Make both name genes alike (the promoters stage's `id_attribute` picks the GFF3 \
         attribute that names them).",
    );
    text
}

/// `id` without a trailing `.N`, `_TN` or `_PN` (a version, or a maize-style transcript or
/// protein number).
fn without_suffix(id: &str) -> String {
    let numbered = |sep: &str| {
        let (stem, n) = id.rsplit_once(sep)?;
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(stem)
    };
    numbered(".")
        .or_else(|| numbered("_T"))
        .or_else(|| numbered("_P"))
        .unwrap_or(id)
        .to_string()
}

/// `id` without a leading `word:` or `gene-`/`transcript-` (Ensembl and RefSeq GFF3 ids).
fn without_prefix(id: &str) -> String {
    let id = id.split_once(':').map_or(id, |(_, rest)| rest);
    ["gene-", "transcript-", "rna-"]
        .iter()
        .find_map(|p| id.strip_prefix(p))
        .unwrap_or(id)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_the_difference_that_makes_ids_meet() {
        let promoters = ids(&["AT1G01010", "AT1G01020", "AT1G01030", "AT1G01040"]);
        let versioned = ids(&["AT1G01010.1", "AT1G01020.2", "AT1G99999.1"]);
        let h = hint(&promoters, &versioned);
        assert!(
            h.starts_with(
                "Promoter ids look like AT1G01010, AT1G01020, AT1G01030; the table's like \
                 AT1G01010.1, AT1G01020.2, AT1G99999.1. They differ by a version or transcript \
                 suffix (`.1`, `_T001`, `_P001`): 2 of 4 promoters would match without it."
            ),
            "{h}"
        );
        let maize = hint(&ids(&["Zm00001eb000010"]), &ids(&["Zm00001eb000010_T001"]));
        assert!(maize.contains("suffix"), "{maize}");
        let prefixed = hint(&ids(&["gene:AT1G01010"]), &ids(&["AT1G01010"]));
        assert!(prefixed.contains("They differ by a prefix"), "{prefixed}");
        let case = hint(&ids(&["at1g01010"]), &ids(&["AT1G01010"]));
        assert!(case.contains("They differ by letter case"), "{case}");
        let unrelated = hint(&ids(&["g1"]), &ids(&["x9"]));
        assert!(!unrelated.contains("They differ"), "{unrelated}");
        assert!(unrelated.ends_with("`id_attribute` picks the GFF3 attribute that names them)."));
    }
}
