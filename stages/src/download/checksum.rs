//! Checksums that genome databases publish: sha256, md5 (NCBI `md5checksums.txt`), and the BSD
//! `sum` of Ensembl's `CHECKSUMS` files.

use std::io::Read;
use std::path::Path;

use md5::Md5;
use sha2::{Digest, Sha256};

/// An expected checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// SHA-256, lowercase hex.
    Sha256(String),
    /// MD5, lowercase hex.
    Md5(String),
    /// BSD `sum`: 16-bit checksum and size in 1 KiB blocks (Ensembl `CHECKSUMS`).
    BsdSum(u16, u64),
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Sha256(h) => write!(f, "sha256 {h}"),
            Expected::Md5(h) => write!(f, "md5 {h}"),
            Expected::BsdSum(s, b) => write!(f, "sum {s} {b}"),
        }
    }
}

/// Computes the same kind of checksum over `path`.
pub fn compute(path: &Path, like: &Expected) -> std::io::Result<Expected> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    match like {
        Expected::Sha256(_) => {
            let mut h = Sha256::new();
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Ok(Expected::Sha256(hex(&h.finalize())))
        }
        Expected::Md5(_) => {
            let mut h = Md5::new();
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Ok(Expected::Md5(hex(&h.finalize())))
        }
        Expected::BsdSum(..) => {
            let (mut sum, mut size) = (0u16, 0u64);
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                for &b in &buf[..n] {
                    sum = sum.rotate_right(1).wrapping_add(b as u16);
                }
            }
            Ok(Expected::BsdSum(sum, size.div_ceil(1024)))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Finds `file`'s entry in a published checksum list: NCBI `md5checksums.txt` (`<md5>  ./name`),
/// Ensembl `CHECKSUMS` (`<sum> <blocks> name`) or `sha256sum`/`md5sum` output.
pub fn lookup(list: &str, file: &str) -> Option<Expected> {
    for line in list.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let Some(name) = cols.last() else { continue };
        let name = name.trim_start_matches('*').trim_start_matches("./");
        if name != file {
            continue;
        }
        match cols.as_slice() {
            [sum, blocks, _] => {
                if let (Ok(s), Ok(b)) = (sum.parse::<u16>(), blocks.parse::<u64>()) {
                    return Some(Expected::BsdSum(s, b));
                }
            }
            [h, _] if h.len() == 64 => return Some(Expected::Sha256(h.to_ascii_lowercase())),
            [h, _] if h.len() == 32 => return Some(Expected::Md5(h.to_ascii_lowercase())),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, "hello\n").unwrap();
        assert_eq!(
            compute(&p, &Expected::Md5(String::new())).unwrap(),
            Expected::Md5("b1946ac92492d2347c6235b4d2611184".into())
        );
        assert_eq!(
            compute(&p, &Expected::Sha256(String::new())).unwrap(),
            Expected::Sha256(
                "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03".into()
            )
        );
        // `echo hello | sum` prints 36979 1.
        assert_eq!(
            compute(&p, &Expected::BsdSum(0, 0)).unwrap(),
            Expected::BsdSum(36979, 1)
        );
    }

    #[test]
    fn reads_published_lists() {
        let ncbi = "d41d8cd98f00b204e9800998ecf8427e  ./GCF_1_x_genomic.fna.gz\n";
        assert_eq!(
            lookup(ncbi, "GCF_1_x_genomic.fna.gz"),
            Some(Expected::Md5("d41d8cd98f00b204e9800998ecf8427e".into()))
        );
        let ensembl = "12345 678 Arabidopsis_thaliana.TAIR10.dna.toplevel.fa.gz\n";
        assert_eq!(
            lookup(ensembl, "Arabidopsis_thaliana.TAIR10.dna.toplevel.fa.gz"),
            Some(Expected::BsdSum(12345, 678))
        );
        assert_eq!(lookup(ensembl, "other"), None);
    }
}
