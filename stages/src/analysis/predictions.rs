//! Test-split predictions in the one format every model writes (`id, target, observed,
//! predicted`, a row per sequence and target; a stage that fits several models, such as
//! `baselines`, puts a `model` column first), with their metrics.

use std::collections::BTreeMap;

use super::metrics::{self, Metrics};

/// The header of a single model's predictions.
pub const HEADER: &str = "id\ttarget\tobserved\tpredicted\n";

/// The header of a predictions table, with a leading `model` column when `with_model`.
pub fn header(with_model: bool) -> String {
    if with_model {
        format!("model\t{HEADER}")
    } else {
        HEADER.to_string()
    }
}

/// A predictions table's rows and how well they score.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The TSV rows, without the [`header`].
    pub rows: String,
    /// Over every target and row together; `None` without rows.
    pub all: Option<Metrics>,
    /// Per target.
    pub per_target: BTreeMap<String, Metrics>,
}

/// Scores `predicted` against `observed` (a row per id, a column per target) and writes the
/// table's rows, with a leading `model` column when `model` is given.
pub fn score(
    model: Option<&str>,
    ids: &[&str],
    targets: &[String],
    observed: &[Vec<f64>],
    predicted: &[Vec<f64>],
) -> Scored {
    let lead = model.map_or(String::new(), |m| format!("{m}\t"));
    let mut rows = String::new();
    for ((id, obs), pred) in ids.iter().zip(observed).zip(predicted) {
        for (k, name) in targets.iter().enumerate() {
            rows.push_str(&format!("{lead}{id}\t{name}\t{}\t{}\n", obs[k], pred[k]));
        }
    }
    let mut per_target = BTreeMap::new();
    let (mut all_obs, mut all_pred) = (Vec::new(), Vec::new());
    for (k, name) in targets.iter().enumerate() {
        let o: Vec<f64> = observed.iter().map(|r| r[k]).collect();
        let p: Vec<f64> = predicted.iter().map(|r| r[k]).collect();
        if !o.is_empty() {
            per_target.insert(name.clone(), metrics::compare(&o, &p));
        }
        all_obs.extend(o);
        all_pred.extend(p);
    }
    let all = (!all_obs.is_empty()).then(|| metrics::compare(&all_obs, &all_pred));
    Scored {
        rows,
        all,
        per_target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_id_and_target() {
        let targets = vec!["leaf".to_string(), "root".to_string()];
        let s = score(
            None,
            &["a", "b"],
            &targets,
            &[vec![1.0, 2.0], vec![3.0, 4.0]],
            &[vec![1.5, 2.0], vec![3.0, 3.0]],
        );
        assert_eq!(
            header(false) + &s.rows,
            "id\ttarget\tobserved\tpredicted\na\tleaf\t1\t1.5\na\troot\t2\t2\nb\tleaf\t3\t3\nb\troot\t4\t3\n"
        );
        assert_eq!(s.all.unwrap().n, 4);
        assert!((s.per_target["root"].mse - 0.5).abs() < 1e-12);
        let m = score(
            Some("bow2"),
            &["a"],
            &targets[..1],
            &[vec![1.0]],
            &[vec![2.0]],
        );
        assert_eq!(
            header(true) + &m.rows,
            "model\tid\ttarget\tobserved\tpredicted\nbow2\ta\tleaf\t1\t2\n"
        );
    }
}
