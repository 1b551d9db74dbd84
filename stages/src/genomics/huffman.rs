//! Huffman-only DEFLATE: one dynamic-Huffman block of literals, no string matching.
//!
//! DNA text carries about two bits per base and few long exact repeats within a 64 KiB block,
//! so LZ77 matching costs most of a deflate encoder's time and buys little: on real promoter
//! FASTA (A. thaliana chr1, maize NAM) a Huffman-only block is as small as libdeflate's fastest
//! level, or smaller, at a fraction of its time. No crate offers a fast one (zlib-rs's
//! `HuffmanOnly` strategy was slower than libdeflate level 1 here), hence these few lines.
//! Every stream is a valid RFC 1951 block that any inflater (zlib, libdeflate, htslib) reads.

/// Longest literal/length code DEFLATE allows.
const MAX_CODE: u8 = 15;
/// Longest code-length code DEFLATE allows.
const MAX_CL_CODE: u8 = 7;
/// The end-of-block symbol.
const END_OF_BLOCK: usize = 256;
/// Order in which the code-length code's lengths are sent (RFC 1951, 3.2.7).
const CL_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// Appends `data` to `out` as one final DEFLATE block (raw, no zlib or gzip frame).
pub fn compress_into(data: &[u8], out: &mut Vec<u8>) {
    let mut freqs = [0u32; 257];
    count(data, &mut freqs);
    freqs[END_OF_BLOCK] = 1;
    let lit_lengths = code_lengths(&freqs, MAX_CODE);
    let lit_codes = canonical_codes(&lit_lengths);
    // Two distance codes of one bit each, never used: a complete code every inflater accepts.
    let dist_lengths = [1u8, 1];

    let mut w = BitWriter::new(out);
    w.put(1, 1); // BFINAL
    w.put(2, 2); // BTYPE = dynamic Huffman
    write_code_lengths(&mut w, &lit_lengths, &dist_lengths);

    // Literal codes packed as code | length << 16 so the hot loop does one lookup per byte.
    let mut table = [0u64; 256];
    for (s, entry) in table.iter_mut().enumerate() {
        *entry = lit_codes[s] as u64 | (lit_lengths[s] as u64) << 16;
    }
    w.reserve(data.len() * MAX_CODE as usize / 8 + 16);
    // After a flush fewer than 8 bits wait, so `per_flush` codes of the longest length in use
    // fit in the 64-bit buffer before the next flush.
    let longest = lit_lengths.iter().copied().max().unwrap_or(1).max(1) as usize;
    let per_flush = (64 - 7) / longest;
    let mut groups = data.chunks_exact(per_flush.min(4));
    if per_flush >= 4 {
        for g in &mut groups {
            w.add(table[g[0] as usize]);
            w.add(table[g[1] as usize]);
            w.add(table[g[2] as usize]);
            w.add(table[g[3] as usize]);
            w.flush_bytes();
        }
    } else {
        for g in &mut groups {
            for &b in g {
                w.add(table[b as usize]);
            }
            w.flush_bytes();
        }
    }
    for &b in groups.remainder() {
        w.add(table[b as usize]);
        w.flush_bytes();
    }
    w.put(
        lit_codes[END_OF_BLOCK] as u32,
        lit_lengths[END_OF_BLOCK] as u32,
    );
    w.finish();
}

/// Byte frequencies, counted into eight tables from 8-byte words: DNA has few distinct bytes,
/// and one table would make every increment wait for the previous one to the same counter.
fn count(data: &[u8], freqs: &mut [u32]) {
    let mut tables = [[0u32; 256]; 8];
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        for (lane, table) in tables.iter_mut().enumerate() {
            table[(w >> (8 * lane)) as usize & 0xff] += 1;
        }
    }
    for &b in words.remainder() {
        tables[0][b as usize] += 1;
    }
    for (s, f) in freqs.iter_mut().take(256).enumerate() {
        *f = tables.iter().map(|t| t[s]).sum();
    }
}

/// Huffman code lengths no longer than `limit`: frequencies are halved (never to zero) until
/// the tree is shallow enough. At least two symbols always get a code, so the code is complete.
pub fn code_lengths(freqs: &[u32], limit: u8) -> Vec<u8> {
    let mut f = freqs.to_vec();
    let used = f.iter().filter(|&&x| x > 0).count();
    for slot in f
        .iter_mut()
        .filter(|x| **x == 0)
        .take(2usize.saturating_sub(used))
    {
        *slot = 1;
    }
    loop {
        let lengths = huffman_lengths(&f);
        if lengths.iter().all(|&l| l <= limit) {
            return lengths;
        }
        for x in f.iter_mut().filter(|x| **x > 0) {
            *x = (*x / 2).max(1);
        }
    }
}

/// Unrestricted Huffman code lengths (two-queue construction over sorted leaves).
fn huffman_lengths(freqs: &[u32]) -> Vec<u8> {
    let mut leaves: Vec<(u32, usize)> = freqs
        .iter()
        .enumerate()
        .filter(|(_, &f)| f > 0)
        .map(|(s, &f)| (f, s))
        .collect();
    leaves.sort_unstable();
    let n = leaves.len();
    let mut lengths = vec![0u8; freqs.len()];
    if n < 2 {
        if let Some(&(_, s)) = leaves.first() {
            lengths[s] = 1;
        }
        return lengths;
    }
    // Nodes 0..n are the leaves in order; n..2n-1 the internal nodes in order of creation,
    // which is also increasing weight, so two queues give the two lightest nodes each time.
    let mut weight: Vec<u64> = leaves.iter().map(|&(f, _)| f as u64).collect();
    let mut parent = vec![0usize; 2 * n - 1];
    let (mut next_leaf, mut next_inner) = (0usize, n);
    for node in n..2 * n - 1 {
        let mut lightest = || {
            let take_leaf =
                next_leaf < n && (next_inner >= node || weight[next_leaf] <= weight[next_inner]);
            if take_leaf {
                next_leaf += 1;
                next_leaf - 1
            } else {
                next_inner += 1;
                next_inner - 1
            }
        };
        let (a, b) = (lightest(), lightest());
        weight.push(weight[a] + weight[b]);
        parent[a] = node;
        parent[b] = node;
    }
    let mut depth = vec![0u8; 2 * n - 1];
    for node in (0..2 * n - 2).rev() {
        depth[node] = depth[parent[node]] + 1;
    }
    for (i, &(_, s)) in leaves.iter().enumerate() {
        lengths[s] = depth[i];
    }
    lengths
}

/// Canonical codes for `lengths` (RFC 1951, 3.2.2), bit-reversed for DEFLATE's LSB-first stream.
fn canonical_codes(lengths: &[u8]) -> Vec<u16> {
    let mut per_length = [0u16; 16];
    for &l in lengths.iter().filter(|&&l| l > 0) {
        per_length[l as usize] += 1;
    }
    let mut next = [0u16; 16];
    let mut code = 0u16;
    for bits in 1..16 {
        code = (code + per_length[bits - 1]) << 1;
        next[bits] = code;
    }
    lengths
        .iter()
        .map(|&l| {
            if l == 0 {
                return 0;
            }
            let c = next[l as usize];
            next[l as usize] += 1;
            c.reverse_bits() >> (16 - l)
        })
        .collect()
}

/// Writes HLIT, HDIST, HCLEN, the code-length code and the run-length coded code lengths.
fn write_code_lengths(w: &mut BitWriter, lit: &[u8], dist: &[u8]) {
    let all: Vec<u8> = lit.iter().chain(dist).copied().collect();
    // (symbol, extra bits, extra value) runs of the code-length alphabet.
    let mut runs: Vec<(u8, u32, u32)> = Vec::new();
    let mut i = 0;
    while i < all.len() {
        let v = all[i];
        let run = all[i..].iter().take_while(|&&x| x == v).count();
        i += run;
        let mut left = run;
        if v == 0 {
            while left >= 11 {
                let r = left.min(138);
                runs.push((18, 7, (r - 11) as u32));
                left -= r;
            }
            if left >= 3 {
                runs.push((17, 3, (left - 3) as u32));
                left = 0;
            }
        } else {
            runs.push((v, 0, 0));
            left -= 1;
            while left >= 3 {
                let r = left.min(6);
                runs.push((16, 2, (r - 3) as u32));
                left -= r;
            }
        }
        runs.extend(std::iter::repeat_n((v, 0, 0), left));
    }
    let mut cl_freqs = [0u32; 19];
    for &(s, _, _) in &runs {
        cl_freqs[s as usize] += 1;
    }
    let cl_lengths = code_lengths(&cl_freqs, MAX_CL_CODE);
    let cl_codes = canonical_codes(&cl_lengths);
    let sent = 4.max(
        19 - CL_ORDER
            .iter()
            .rev()
            .take_while(|&&s| cl_lengths[s] == 0)
            .count(),
    );

    w.put((lit.len() - 257) as u32, 5);
    w.put((dist.len() - 1) as u32, 5);
    w.put((sent - 4) as u32, 4);
    for &s in &CL_ORDER[..sent] {
        w.put(cl_lengths[s] as u32, 3);
    }
    for (s, extra_bits, extra) in runs {
        w.put(cl_codes[s as usize] as u32, cl_lengths[s as usize] as u32);
        w.put(extra, extra_bits);
    }
}

/// An LSB-first bit stream appended to a buffer: whole bytes are flushed with one unaligned
/// 8-byte store into room made beforehand, so the hot loop has no branches but the bounds check.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    pos: usize,
    bits: u64,
    count: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        let pos = out.len();
        Self {
            out,
            pos,
            bits: 0,
            count: 0,
        }
    }

    /// Makes room for `bytes` more bytes (plus the 8 a flush may store past the end).
    fn reserve(&mut self, bytes: usize) {
        let need = self.pos + bytes + 8;
        if self.out.len() < need {
            self.out.resize(need, 0);
        }
    }

    /// Adds a packed `code | length << 16` without flushing (the caller flushes in time).
    #[inline(always)]
    fn add(&mut self, entry: u64) {
        self.bits |= (entry & 0xffff) << self.count;
        self.count += (entry >> 16) as u32;
    }

    /// Stores the whole bytes waiting in the buffer; fewer than 8 bits remain.
    #[inline(always)]
    fn flush_bytes(&mut self) {
        self.out[self.pos..self.pos + 8].copy_from_slice(&self.bits.to_le_bytes());
        let whole = self.count & !7;
        self.pos += (whole / 8) as usize;
        // `whole` is at most 56 here (at most 63 bits wait before a flush).
        self.bits >>= whole;
        self.count -= whole;
    }

    /// Appends the low `n` (at most 16) bits of `value`.
    fn put(&mut self, value: u32, n: u32) {
        self.reserve(8);
        self.add(value as u64 | (n as u64) << 16);
        self.flush_bytes();
    }

    /// Pads to a byte boundary and cuts the buffer after the last byte written.
    fn finish(mut self) {
        self.reserve(8);
        self.flush_bytes();
        let end = self.pos + self.count.div_ceil(8) as usize;
        self.out.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        compress_into(data, &mut out);
        out
    }

    fn inflate(stream: &[u8], size: usize) -> Vec<u8> {
        let mut out = vec![0u8; size];
        let n = libdeflater::Decompressor::new()
            .deflate_decompress(stream, &mut out)
            .expect("libdeflate reads the block");
        out.truncate(n);
        // And a second, independent inflater (zlib-rs through flate2).
        let mut again = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(stream), &mut again)
            .expect("flate2 reads the block");
        assert_eq!(again, out);
        out
    }

    fn dna(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                if i % 61 == 60 {
                    return b'\n';
                }
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                b"ACGT"[(s >> 62) as usize]
            })
            .collect()
    }

    #[test]
    fn round_trips_dna_text_and_shrinks_it_near_two_bits_a_base() {
        let data = dna(0xff00, 7);
        let z = compress(&data);
        assert_eq!(inflate(&z, data.len()), data);
        let ratio = z.len() as f64 / data.len() as f64;
        assert!((0.25..0.30).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn round_trips_every_byte_value_single_symbols_and_empty_input() {
        let all: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        assert_eq!(inflate(&compress(&all), all.len()), all);
        let one = vec![b'A'; 5000];
        let z = compress(&one);
        assert_eq!(inflate(&z, one.len()), one);
        assert!(z.len() < 700, "{} bytes for one repeated symbol", z.len());
        assert_eq!(inflate(&compress(b""), 0), b"");
        assert_eq!(inflate(&compress(b"x"), 1), b"x");
    }

    #[test]
    fn skewed_frequencies_are_limited_to_fifteen_bits() {
        // Fibonacci frequencies make an unrestricted Huffman tree 25 levels deep.
        let mut data = Vec::new();
        let (mut a, mut b) = (1usize, 1usize);
        for s in 0..26u8 {
            data.extend(std::iter::repeat_n(b'A' + s, a));
            (a, b) = (b, a + b);
        }
        data.truncate(0xff00);
        let mut freqs = vec![0u32; 257];
        count(&data, &mut freqs);
        assert!(huffman_lengths(&freqs).iter().any(|&l| l > MAX_CODE));
        let z = compress(&data);
        assert_eq!(inflate(&z, data.len()), data);
    }

    #[test]
    fn code_lengths_satisfy_kraft_with_equality() {
        let freqs: Vec<u32> = (0..40).map(|i| (i * i % 17) as u32).collect();
        for limit in [7u8, 15] {
            let l = code_lengths(&freqs, limit);
            let kraft: f64 = l
                .iter()
                .filter(|&&x| x > 0)
                .map(|&x| 0.5f64.powi(x as i32))
                .sum();
            assert!((kraft - 1.0).abs() < 1e-12, "limit {limit}: {kraft}");
            assert!(l.iter().all(|&x| x <= limit));
        }
    }
}
