# Random bases for the demo's simulators, loaded with `-f random.awk` before them.
# Park-Miller "minimal standard" generator: exact in awk's doubles (products stay below 2^53).
# Callers set `state` from their seed with seed_rng() first.
function seed_rng(s) { state = s % 2147483647; if (state <= 0) state = 1 }
function rnd() { state = (state * 16807) % 2147483647; return state / 2147483647 }
# One base with GC share `gc`.
function base(   r) {
  r = rnd()
  if (r < gc / 2) return "G"
  if (r < gc) return "C"
  if (r < gc + (1 - gc) / 2) return "A"
  return "T"
}
