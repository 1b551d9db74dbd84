//! Sequences along the phylogeny: ancestral promoters with planted motifs, and their evolution by
//! substitutions, indels and transposon-like insertions.

use memchr::memmem;

use super::{motif_weights, Gene, Genome, Params, MOTIFS, TISSUES};
use crate::rng::Rng;

/// A uniform draw in [0, 1).
pub fn uniform(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut Rng) -> f64 {
    let u = uniform(rng).max(f64::MIN_POSITIVE);
    let v = uniform(rng);
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// A Poisson draw with mean `mean` (inversion; small means only).
fn poisson(mean: f64, rng: &mut Rng) -> usize {
    let (mut k, mut p, limit) = (0usize, 1.0, (-mean).exp());
    loop {
        p *= uniform(rng);
        if p <= limit || k > 1000 {
            return k;
        }
        k += 1;
    }
}

/// A base drawn with GC content `gc`.
fn base(gc: f64, rng: &mut Rng) -> u8 {
    let strong = uniform(rng) < gc;
    match (strong, rng.below(2)) {
        (true, 0) => b'G',
        (true, _) => b'C',
        (false, 0) => b'A',
        (false, _) => b'T',
    }
}

/// `len` random bases with GC content `gc`.
pub fn random_seq(len: usize, gc: f64, rng: &mut Rng) -> Vec<u8> {
    (0..len).map(|_| base(gc, rng)).collect()
}

/// Plants a Poisson number of motifs into `seq`, each ending at an exponentially drawn distance
/// (mean `placement`) from the TSS (the sequence's 3' end).
fn plant(seq: &mut [u8], p: &Params, rng: &mut Rng) {
    for _ in 0..poisson(p.motifs_per_promoter, rng) {
        let (_, motif) = MOTIFS[rng.below(MOTIFS.len())];
        let room = seq.len() - motif.len();
        let d = ((-uniform(rng).max(1e-12).ln()) * p.placement) as usize;
        let end = seq.len() - d.min(room);
        seq[end - motif.len()..end].copy_from_slice(motif.as_bytes());
    }
}

/// `seq` after one branch: substitutions at `rate` towards `gc` (a tenth of it inside motifs,
/// which selection conserves), indels of 1-4 bases at a tenth of it outside motifs, and
/// transposon insertions (a 10%-diverged copy of `te`, Poisson with mean
/// `te_rate`); the length is kept by trimming or extending the 5' (far) end.
fn mutate(seq: &[u8], rate: f64, gc: f64, te: &[u8], te_rate: f64, rng: &mut Rng) -> Vec<u8> {
    let len = seq.len();
    // Purifying selection: bases inside a motif change ten times more rarely, and indels skip them.
    let mut conserved = vec![false; len];
    for (m, d) in occurrences(seq) {
        let end = len - d;
        conserved[end - MOTIFS[m].1.len()..end].fill(true);
    }
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0;
    while i < seq.len() {
        let u = uniform(rng);
        if conserved[i] {
            out.push(if u < rate / 10.0 {
                base(gc, rng)
            } else {
                seq[i]
            });
            i += 1;
            continue;
        }
        if u < rate / 10.0 {
            let n = 1 + rng.below(4);
            if rng.below(2) == 0 {
                // An insertion of n random bases before this one.
                out.extend(random_seq(n, gc, rng));
                out.push(seq[i]);
                i += 1;
            } else {
                // A deletion of n bases from this one.
                i += n;
            }
            continue;
        }
        out.push(if u < rate { base(gc, rng) } else { seq[i] });
        i += 1;
    }
    for _ in 0..poisson(te_rate, rng) {
        let copy: Vec<u8> = te
            .iter()
            .map(|&b| if uniform(rng) < 0.1 { base(gc, rng) } else { b })
            .collect();
        let at = rng.below(out.len() + 1);
        out.splice(at..at, copy);
    }
    if out.len() > len {
        out.drain(..out.len() - len);
    } else if out.len() < len {
        let mut pad = random_seq(len - out.len(), gc, rng);
        pad.extend(out);
        out = pad;
    }
    out
}

/// Every occurrence of every motif in `promoter`: (motif index, distance from the motif's 3' end
/// to the TSS).
pub fn occurrences(promoter: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (m, (_, motif)) in MOTIFS.iter().enumerate() {
        for pos in memmem::find_iter(promoter, motif.as_bytes()) {
            out.push((m, promoter.len() - (pos + motif.len())));
        }
    }
    out
}

/// Ln TPM per tissue of a promoter: the family's baseline plus each occurrence's weight, decayed
/// with distance, plus noise.
fn expression(
    promoter: &[u8],
    baseline: f64,
    weights: &[[f64; 9]],
    p: &Params,
    rng: &mut Rng,
) -> Vec<f64> {
    let mut ln = vec![baseline; TISSUES.len()];
    for (m, d) in occurrences(promoter) {
        let decay = (-(d as f64) / p.decay).exp();
        for (t, v) in ln.iter_mut().enumerate() {
            *v += weights[m][t] * decay;
        }
    }
    for v in &mut ln {
        *v += p.noise * normal(rng);
    }
    ln
}

/// Every genome of the simulation.
pub fn genomes(p: &Params) -> Result<Vec<Genome>, String> {
    let mut rng = Rng::new(p.seed);
    let te = random_seq(150, 0.4, &mut rng);
    let weights = motif_weights(p.seed);
    let ancestors: Vec<Vec<u8>> = (0..p.families)
        .map(|_| {
            let mut s = random_seq(p.promoter_length, 0.4, &mut rng);
            plant(&mut s, p, &mut rng);
            s
        })
        .collect();
    let baselines: Vec<f64> = (0..p.families)
        .map(|_| 1.5 + 0.3 * normal(&mut rng))
        .collect();
    let branch = |seqs: &[Vec<u8>], rate: f64, gc: f64, rng: &mut Rng| -> Vec<Vec<u8>> {
        seqs.iter()
            .map(|s| mutate(s, rate, gc, &te, p.transposons, rng))
            .collect()
    };
    // One ancestor per clade, in the order clades first appear.
    let mut clades: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for s in &p.species {
        if clades.iter().all(|(g, _)| *g != s.group) {
            let members: Vec<f64> = p
                .species
                .iter()
                .filter(|x| x.group == s.group)
                .map(|x| x.gc)
                .collect();
            let gc = members.iter().sum::<f64>() / members.len() as f64;
            clades.push((
                s.group.clone(),
                branch(&ancestors, p.clade_distance, gc, &mut rng),
            ));
        }
    }
    let mut out = Vec::new();
    for s in &p.species {
        let clade = &clades
            .iter()
            .find(|(g, _)| *g == s.group)
            .expect("every clade was made")
            .1;
        let own = branch(clade, s.distance, s.gc, &mut rng);
        // (family, duplicate?, promoter)
        let mut genes: Vec<(usize, bool, Vec<u8>)> = Vec::new();
        for (f, promoter) in own.into_iter().enumerate() {
            let dup = uniform(&mut rng) < p.duplication;
            if dup {
                let copy = mutate(
                    &promoter,
                    p.paralog_distance,
                    s.gc,
                    &te,
                    p.transposons,
                    &mut rng,
                );
                genes.push((f, false, promoter));
                genes.push((f, true, copy));
            } else {
                genes.push((f, false, promoter));
            }
        }
        let lines: Vec<Option<String>> = if s.lines.is_empty() {
            vec![None]
        } else {
            s.lines.iter().cloned().map(Some).collect()
        };
        for line in lines {
            let name = line.clone().unwrap_or_else(|| s.name.clone());
            let genes: Vec<Gene> = genes
                .iter()
                .map(|(f, dup, promoter)| {
                    let promoter = if line.is_some() {
                        mutate(
                            promoter,
                            p.line_distance,
                            s.gc,
                            &te,
                            p.transposons * p.line_distance,
                            &mut rng,
                        )
                    } else {
                        promoter.clone()
                    };
                    let ln_tpm = s
                        .expression
                        .then(|| expression(&promoter, baselines[*f], &weights, p, &mut rng));
                    Gene {
                        id: format!("{name}_{f:04}{}", if *dup { "d" } else { "" }),
                        family: *f,
                        promoter,
                        ln_tpm,
                    }
                })
                .collect();
            out.push(Genome {
                name,
                species: s.name.clone(),
                group: s.group.clone(),
                line,
                genes,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutation_keeps_the_length_and_diverges_at_the_rate() {
        let mut rng = Rng::new(1);
        let seq = random_seq(5000, 0.4, &mut rng);
        let te = random_seq(150, 0.4, &mut rng);
        let same = mutate(&seq, 0.0, 0.4, &te, 0.0, &mut rng);
        assert_eq!(same, seq);
        let m = mutate(&seq, 0.05, 0.4, &te, 0.0, &mut rng);
        assert_eq!(m.len(), 5000);
        // Indels shift positions, so compare 12-mers: each survives a branch with probability
        // about (1 - 0.05 * 3/4 - 0.005)^12 = 0.6; unrelated sequences share almost none.
        let kmers = |s: &[u8]| {
            s.windows(12)
                .map(<[u8]>::to_vec)
                .collect::<std::collections::HashSet<_>>()
        };
        let (a, b) = (kmers(&seq), kmers(&m));
        let shared = a.intersection(&b).count() as f64 / a.len() as f64;
        assert!(shared > 0.45 && shared < 0.75, "{shared}");
        let other = kmers(&random_seq(5000, 0.4, &mut rng));
        assert!((a.intersection(&other).count() as f64) < 0.01 * a.len() as f64);
        // Substitutions move GC content towards the target.
        let gc = |s: &[u8]| {
            s.iter().filter(|&&b| b == b'G' || b == b'C').count() as f64 / s.len() as f64
        };
        let rich = mutate(&seq, 0.9, 0.8, &te, 0.0, &mut rng);
        assert!(
            gc(&rich) > 0.65 && gc(&seq) < 0.45,
            "{} {}",
            gc(&rich),
            gc(&seq)
        );
        // A transposon insertion carries the element.
        let with_te = mutate(&seq, 0.0, 0.4, &te, 50.0, &mut rng);
        assert_eq!(with_te.len(), 5000);
        let shared = te
            .windows(20)
            .filter(|w| memmem::find(&with_te, w).is_some())
            .count();
        assert!(shared > 0, "no trace of the transposon");
    }

    #[test]
    fn occurrences_measure_distance_to_the_tss() {
        let mut s = vec![b'A'; 100];
        s[90..96].copy_from_slice(b"CACGTG");
        let occ = occurrences(&s);
        let g_box = MOTIFS.iter().position(|m| m.0 == "G-box").unwrap();
        assert!(occ.contains(&(g_box, 4)), "{occ:?}");
    }
}
