# Writes a small simulated genome for one species into DIR: genome.fa (contigs of random bases
# with the species' GC share) and genes.gff3 (genes on both strands, RefSeq-style attributes).
# A share of genes carry a TATA box about 30 bp upstream of their TSS, on their own strand.
# Deterministic for a given seed.
# Usage: awk -v species=ath -v seed=1 -v gc=0.36 -v contigs=2 -v len=120000 -v genes=60 -v tata=0.5 -v dir=OUT -f random.awk -f genome.awk
function revcomp(s,   i, out, c) {
  out = ""
  for (i = length(s); i >= 1; i--) {
    c = substr(s, i, 1)
    out = out (c == "A" ? "T" : c == "T" ? "A" : c == "C" ? "G" : "C")
  }
  return out
}
BEGIN {
  seed_rng(seed)
  fa = dir "/genome.fa"; gff = dir "/genes.gff3"
  print "##gff-version 3" > gff
  n = 0
  for (c = 1; c <= contigs; c++) {
    name = species "_chr" c
    seq = ""
    for (i = 1; i <= len; i++) seq = seq base()
    # Genes every len/(genes/contigs) bases, 1-2 kb long, away from the contig ends.
    step = int(len / (genes / contigs))
    for (g = 1; g <= genes / contigs; g++) {
      start = (g - 1) * step + 1500 + int(rnd() * (step - 4000))
      glen = 1000 + int(rnd() * 1000)
      end = start + glen - 1
      plus = rnd() < 0.5
      if (rnd() < tata) {
        if (plus) {
          at = start - 30 - int(rnd() * 6)
          seq = substr(seq, 1, at - 1) "TATAAA" substr(seq, at + 6)
        } else {
          at = end + 30 + int(rnd() * 6) - 5
          seq = substr(seq, 1, at - 1) revcomp("TATAAA") substr(seq, at + 6)
        }
      }
      n++
      id = sprintf("%s%05d", toupper(species), n)
      printf("%s\tdemo\tgene\t%d\t%d\t.\t%s\t.\tID=gene-%s;gene_biotype=protein_coding;locus_tag=%s\n", name, start, end, plus ? "+" : "-", id, id) > gff
    }
    printf(">%s\n", name) > fa
    for (i = 1; i <= len; i += 80) print substr(seq, i, 80) > fa
  }
}
