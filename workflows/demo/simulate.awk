# Writes N simulated 1 kb promoters (FASTA, TSS at the 3' end) for one species: random bases with
# the species' GC share, and a TATA box (TATAAA) planted about 30 bp upstream of the TSS in a given
# share of genes. Deterministic for a given seed.
# Usage: awk -v species=ath -v n=200 -v gc=0.36 -v tata=0.3 -v seed=1 -f random.awk -f simulate.awk
BEGIN {
  seed_rng(seed)
  for (g = 1; g <= n; g++) {
    seq = ""
    for (i = 1; i <= 1000; i++) seq = seq base()
    if (rnd() < tata) {
      at = 1000 - 30 - int(rnd() * 6)
      seq = substr(seq, 1, at - 1) "TATAAA" substr(seq, at + 6)
    }
    printf(">%s_g%04d\n", species, g)
    for (i = 1; i <= 1000; i += 80) print substr(seq, i, 80)
  }
}
