# Per promoter: GC share, and the distance from the TSS (the 3' end) of the last TATAAA, or NA.
# Prints a TSV with a header: gene, gc, tata_distance.
function flush() {
  if (id == "") return
  n = length(seq); g = gsub(/[GC]/, "&", seq)
  last = 0; s = seq; off = 0
  while ((p = index(s, "TATAAA")) > 0) { last = off + p; off += p; s = substr(s, p + 1) }
  printf("%s\t%.4f\t%s\n", id, g / n, last ? n - last + 1 : "NA")
}
BEGIN { OFS = "\t"; print "gene", "gc", "tata_distance" }
/^>/ { flush(); id = substr($0, 2); seq = ""; next }
{ seq = seq toupper($0) }
END { flush() }
