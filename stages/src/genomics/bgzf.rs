//! BGZF (blocked gzip) in parallel: every block is an independent gzip member, so blocks are
//! compressed and decompressed on all cores with libdeflate, and the results joined in order.
//!
//! Files written here are ordinary bgzip files (htslib, `bgzip -d` and `zcat` read them); the
//! reader accepts any bgzip file, including ones written by htslib.

use std::io::{self, BufRead, Read};

use libdeflater::{CompressionLvl, Compressor, Decompressor};
use rayon::prelude::*;

/// The most uncompressed bytes one block holds (htslib's choice, so that even incompressible
/// data fits the 64 KiB block limit).
const BLOCK_DATA: usize = 0xff00;
/// The largest block, header and footer included.
const MAX_BLOCK: usize = 0x10000;
/// Header (18 bytes) plus footer (CRC32 and ISIZE, 8 bytes).
const FRAME: usize = 26;
/// The empty block that ends every BGZF file.
pub const EOF_BLOCK: [u8; 28] = [
    0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 6, 0, b'B', b'C', 2, 0, 0x1b, 0, 3, 0, 0, 0, 0, 0, 0, 0,
    0, 0,
];
/// Blocks decompressed together, in parallel, before the reader hands out their text.
const BATCH: usize = 64;

/// How each block's data is deflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// One dynamic-Huffman block of literals ([`super::huffman`]): for DNA text, as small as
    /// libdeflate's fastest level and several times faster.
    Huffman,
    /// libdeflate at this level (1 fastest, 12 smallest).
    Level(i32),
}

/// Blocks compressed together by one task of [`compress`].
const BLOCKS_PER_TASK: usize = 16;
/// A block header with BSIZE still 0 (bytes 16-17).
const HEADER: [u8; 18] = [
    0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 6, 0, b'B', b'C', 2, 0, 0, 0,
];

/// Compresses `data` into BGZF blocks with `codec`, in parallel; the result has no end-of-file
/// block (append [`EOF_BLOCK`] after the last piece).
pub fn compress(data: &[u8], codec: Codec) -> Vec<u8> {
    let parts: Vec<Vec<u8>> = data
        .par_chunks(BLOCK_DATA * BLOCKS_PER_TASK)
        .map(|part| {
            let mut out = Vec::new();
            compress_into(part, codec, &mut out);
            out
        })
        .collect();
    parts.concat()
}

/// Appends `data` as BGZF blocks to `out`, on this thread (for callers that already work in
/// parallel pieces); blocks that do not shrink are stored (one stored DEFLATE block is 5 bytes
/// over its data, and BLOCK_DATA leaves room for them).
pub fn compress_into(data: &[u8], codec: Codec, out: &mut Vec<u8>) {
    let mut compressor = match codec {
        Codec::Huffman => None,
        Codec::Level(level) => Some(Compressor::new(
            CompressionLvl::new(level).unwrap_or_else(|_| CompressionLvl::fastest()),
        )),
    };
    out.reserve(data.len() / 3 + FRAME * (data.len() / BLOCK_DATA + 1));
    for chunk in data.chunks(BLOCK_DATA) {
        let start = out.len();
        out.extend_from_slice(&HEADER);
        let body = start + HEADER.len();
        let deflated = match compressor.as_mut() {
            None => {
                super::huffman::compress_into(chunk, out);
                true
            }
            Some(c) => libdeflate_into(c, chunk, out, body),
        };
        if !deflated || out.len() - body > chunk.len() + 5 {
            let mut stored = Compressor::new(CompressionLvl::new(0).expect("level 0 exists"));
            assert!(
                libdeflate_into(&mut stored, chunk, out, body),
                "stored deflate fits its bound"
            );
        }
        out.extend_from_slice(&libdeflater::crc32(chunk).to_le_bytes());
        out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        let size = (out.len() - start - 1) as u16;
        out[start + 16..start + 18].copy_from_slice(&size.to_le_bytes());
    }
}

/// Deflates `chunk` with libdeflate into `out` from `body` on (what was there is replaced);
/// false when it did not fit the bound.
fn libdeflate_into(c: &mut Compressor, chunk: &[u8], out: &mut Vec<u8>, body: usize) -> bool {
    out.resize(body + c.deflate_compress_bound(chunk.len()), 0);
    match c.deflate_compress(chunk, &mut out[body..]) {
        Ok(n) => {
            out.truncate(body + n);
            true
        }
        Err(_) => {
            out.truncate(body);
            false
        }
    }
}

/// Reads a BGZF file: a background thread decompresses [`BATCH`] blocks at a time, in parallel,
/// while the caller works through the previous batch; every block's CRC32 and length are checked.
pub struct Reader {
    batches: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    text: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Reader {
    /// A reader over the compressed bytes of `inner`.
    pub fn new<R: Read + Send + 'static>(inner: R) -> Self {
        let (send, batches) = std::sync::mpsc::sync_channel(2);
        std::thread::spawn(move || {
            let mut blocks = Blocks { inner, offset: 0 };
            loop {
                let batch = blocks.next_batch();
                let last = !matches!(batch, Ok(Some(_)));
                // A send fails when the reader was dropped: nobody wants the rest.
                if let Some(batch) = batch.transpose() {
                    if send.send(batch).is_err() {
                        return;
                    }
                }
                if last {
                    return;
                }
            }
        });
        Reader {
            batches,
            text: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

/// The compressed side: raw blocks read from `inner`.
struct Blocks<R> {
    inner: R,
    /// Compressed offset of the next block, for error messages.
    offset: u64,
}

impl<R: Read> Blocks<R> {
    /// Reads up to [`BATCH`] blocks and decompresses them, in parallel, into one buffer;
    /// `None` at the end of the file.
    fn next_batch(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut raw: Vec<(u64, Vec<u8>)> = Vec::with_capacity(BATCH);
        while raw.len() < BATCH {
            let mut header = [0u8; 18];
            match read_full(&mut self.inner, &mut header)? {
                0 => break,
                18 => {}
                n => {
                    return Err(bad(
                        self.offset,
                        format!("truncated block header ({n} bytes)"),
                    ))
                }
            }
            if header[..4] != [0x1f, 0x8b, 8, 4] || header[12..16] != [b'B', b'C', 2, 0] {
                return Err(bad(self.offset, "not a BGZF block".into()));
            }
            let total = u16::from_le_bytes([header[16], header[17]]) as usize + 1;
            if total < FRAME {
                return Err(bad(self.offset, format!("block size {total} is too small")));
            }
            let mut block = vec![0u8; total];
            block[..18].copy_from_slice(&header);
            if read_full(&mut self.inner, &mut block[18..])? != total - 18 {
                return Err(bad(self.offset, "truncated block".into()));
            }
            let size = text_size(&block);
            if size > MAX_BLOCK {
                return Err(bad(
                    self.offset,
                    format!("block claims {size} bytes of text"),
                ));
            }
            raw.push((self.offset, block));
            self.offset += total as u64;
        }
        if raw.is_empty() {
            return Ok(None);
        }
        let mut text = vec![0u8; raw.iter().map(|(_, b)| text_size(b)).sum()];
        let mut outs: Vec<&mut [u8]> = Vec::with_capacity(raw.len());
        let mut rest = text.as_mut_slice();
        for (_, block) in &raw {
            let (out, tail) = rest.split_at_mut(text_size(block));
            outs.push(out);
            rest = tail;
        }
        raw.par_iter()
            .zip(outs.into_par_iter())
            .map_init(Decompressor::new, |d, ((offset, block), out)| {
                inflate(d, *offset, block, out)
            })
            .collect::<io::Result<()>>()?;
        Ok(Some(text))
    }
}

/// The uncompressed size a whole block declares in its footer.
fn text_size(block: &[u8]) -> usize {
    let n = block.len();
    u32::from_le_bytes(block[n - 4..].try_into().expect("4 bytes")) as usize
}

/// Decompresses one whole block into `out` (its declared size) and checks its CRC32.
fn inflate(d: &mut Decompressor, offset: u64, block: &[u8], out: &mut [u8]) -> io::Result<()> {
    let n = block.len();
    let crc = u32::from_le_bytes(block[n - 8..n - 4].try_into().expect("4 bytes"));
    let got = d
        .deflate_decompress(&block[18..n - 8], out)
        .map_err(|e| bad(offset, format!("corrupt data: {e}")))?;
    if got != out.len() || libdeflater::crc32(out) != crc {
        return Err(bad(offset, "CRC or length mismatch".into()));
    }
    Ok(())
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn bad(offset: u64, what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("BGZF block at byte {offset}: {what}"),
    )
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let have = self.fill_buf()?;
        let n = have.len().min(buf.len());
        buf[..n].copy_from_slice(&have[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Reader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos >= self.text.len() && !self.done {
            match self.batches.recv() {
                Ok(Ok(text)) => {
                    self.text = text;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The worker has finished: the file is over.
                Err(_) => self.done = true,
            }
        }
        Ok(if self.pos < self.text.len() {
            &self.text[self.pos..]
        } else {
            &[]
        })
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.text.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        let mut rng = crate::rng::Rng::new(7);
        (0..n)
            .map(|i| {
                if i % 61 == 60 {
                    b'\n'
                } else {
                    b"ACGT"[(rng.next_u64() % 4) as usize]
                }
            })
            .collect()
    }

    #[test]
    fn round_trips_through_htslib_and_itself() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample(3 * BLOCK_DATA + 123);
        for codec in [Codec::Huffman, Codec::Level(1), Codec::Level(6)] {
            let mut file = compress(&data, codec);
            file.extend_from_slice(&EOF_BLOCK);
            let path = dir.path().join("x.gz");
            std::fs::write(&path, &file).unwrap();

            let mut ours = Vec::new();
            Reader::new(io::Cursor::new(file.clone()))
                .read_to_end(&mut ours)
                .unwrap();
            assert_eq!(ours, data);

            let mut theirs = Vec::new();
            rust_htslib::bgzf::Reader::from_path(&path)
                .unwrap()
                .read_to_end(&mut theirs)
                .unwrap();
            assert_eq!(theirs, data);
            assert_eq!(
                crate::genomics::io::compression(&path).unwrap(),
                crate::genomics::io::Compression::Bgzip
            );
        }
    }

    #[test]
    fn incompressible_blocks_are_stored() {
        let mut rng = crate::rng::Rng::new(1);
        let data: Vec<u8> = (0..2 * BLOCK_DATA).map(|_| rng.next_u64() as u8).collect();
        for codec in [Codec::Huffman, Codec::Level(1)] {
            let file = compress(&data, codec);
            assert!(
                file.len() <= data.len() + 2 * (FRAME + 5),
                "{codec:?}: {}",
                file.len()
            );
            let mut back = Vec::new();
            Reader::new(io::Cursor::new(file.clone()))
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn corruption_and_truncation_are_errors_naming_the_block() {
        let data = sample(2 * BLOCK_DATA);
        let file = compress(&data, Codec::Huffman);
        let second = u16::from_le_bytes([file[16], file[17]]) as usize + 1;

        let mut flipped = file.clone();
        flipped[second + 40] ^= 0xff;
        let err = Reader::new(io::Cursor::new(flipped))
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains(&format!("byte {second}")), "{err}");

        let cut = &file[..file.len() - 5];
        let err = Reader::new(io::Cursor::new(cut.to_vec()))
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");

        let err = Reader::new(&b"plain text, not gzip at all"[..])
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("not a BGZF block"), "{err}");
    }
}
