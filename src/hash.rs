//! Content digests: blake3 of files and of whole folders.
//!
//! A folder's digest covers, for every entry in byte order of its relative path: the path, whether
//! it is a folder, a file (with its executable bit) or a symbolic link (with its target), and each
//! file's content digest. Timestamps, owners and the folder's own name are left out, so the same
//! content anywhere gives the same digest.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rayon::prelude::*;

/// A 256-bit blake3 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The lowercase hex form (64 characters).
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// The first 12 hex characters, for display.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }

    /// The digest of a byte string.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(*blake3::hash(bytes).as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        blake3::Hash::from_hex(s)
            .map(|h| Digest(*h.as_bytes()))
            .map_err(|e| format!("not a blake3 digest: {s:?} ({e})"))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The blake3 digest of a file's content.
pub fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut hasher = blake3::Hasher::new();
    let mut file = fs::File::open(path)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Digest(*hasher.finalize().as_bytes()))
}

/// One entry of a folder, as hashed.
#[derive(Debug, Clone)]
pub struct TreeEntry {
    /// Path relative to the folder, with `/` separators.
    pub rel: String,
    /// The absolute path.
    pub path: PathBuf,
    /// What it is.
    pub kind: EntryKind,
}

/// The type of a folder entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A sub-folder.
    Dir,
    /// A regular file; `true` when executable.
    File {
        /// Whether any execute bit is set.
        executable: bool,
        /// Size in bytes.
        size: u64,
    },
    /// A symbolic link and its target.
    Symlink(PathBuf),
}

/// Every entry below `root`, sorted by relative path.
pub fn walk(root: &Path) -> io::Result<Vec<TreeEntry>> {
    let mut out = Vec::new();
    walk_into(root, "", &mut out)?;
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn walk_into(dir: &Path, prefix: &str, out: &mut Vec<TreeEntry>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            out.push(TreeEntry {
                rel,
                kind: EntryKind::Symlink(fs::read_link(&path)?),
                path,
            });
        } else if ft.is_dir() {
            out.push(TreeEntry {
                rel: rel.clone(),
                path: path.clone(),
                kind: EntryKind::Dir,
            });
            walk_into(&path, &rel, out)?;
        } else if ft.is_file() {
            out.push(TreeEntry {
                rel,
                path,
                kind: EntryKind::File {
                    executable: meta.permissions().mode() & 0o111 != 0,
                    size: meta.len(),
                },
            });
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is neither a file, a folder nor a symbolic link",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The digest of a folder, hashing its files in parallel; `file_digest` gives each file's digest
/// (plain hashing, or a memoised one).
pub fn hash_tree_with<F>(root: &Path, file_digest: F) -> io::Result<Digest>
where
    F: Fn(&Path) -> io::Result<Digest> + Sync,
{
    hash_entries(&walk(root)?, file_digest)
}

/// The digest of a folder from its already-walked entries (see [`walk`]).
pub fn hash_entries<F>(entries: &[TreeEntry], file_digest: F) -> io::Result<Digest>
where
    F: Fn(&Path) -> io::Result<Digest> + Sync,
{
    let digests: Vec<Option<Digest>> = entries
        .par_iter()
        .map(|e| match e.kind {
            EntryKind::File { .. } => file_digest(&e.path).map(Some),
            _ => Ok(None),
        })
        .collect::<io::Result<_>>()?;
    let mut h = blake3::Hasher::new();
    h.update(b"flora-tree-v1\0");
    for (e, d) in entries.iter().zip(digests) {
        match &e.kind {
            EntryKind::Dir => {
                h.update(b"d\0");
            }
            EntryKind::File { executable, .. } => {
                h.update(if *executable { b"x\0" } else { b"f\0" });
                h.update(&d.expect("files have digests").0);
            }
            EntryKind::Symlink(target) => {
                h.update(b"l\0");
                h.update(target.to_string_lossy().as_bytes());
                h.update(b"\0");
            }
        }
        h.update(e.rel.as_bytes());
        h.update(b"\0");
    }
    Ok(Digest(*h.finalize().as_bytes()))
}

/// The digest of a folder.
pub fn hash_tree(root: &Path) -> io::Result<Digest> {
    hash_tree_with(root, hash_file)
}

/// Total size in bytes of the files below `root`.
pub fn tree_size(root: &Path) -> io::Result<u64> {
    Ok(entries_size(&walk(root)?))
}

/// Total size in bytes of the files among `entries`.
pub fn entries_size(entries: &[TreeEntry]) -> u64 {
    entries
        .iter()
        .map(|e| match e.kind {
            EntryKind::File { size, .. } => size,
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_digest_depends_on_content_names_and_mode_only() {
        let base = std::env::temp_dir().join(format!("flora-hash-{}", std::process::id()));
        let (a, b) = (base.join("a"), base.join("b"));
        for d in [&a, &b] {
            fs::create_dir_all(d.join("sub")).unwrap();
            fs::write(d.join("sub/x.txt"), "hello").unwrap();
            fs::write(d.join("y"), "").unwrap();
        }
        assert_eq!(hash_tree(&a).unwrap(), hash_tree(&b).unwrap());
        fs::write(b.join("y"), "1").unwrap();
        assert_ne!(hash_tree(&a).unwrap(), hash_tree(&b).unwrap());
        fs::write(b.join("y"), "").unwrap();
        fs::set_permissions(b.join("y"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(hash_tree(&a).unwrap(), hash_tree(&b).unwrap());
        fs::set_permissions(b.join("y"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::create_dir(b.join("empty")).unwrap();
        assert_ne!(hash_tree(&a).unwrap(), hash_tree(&b).unwrap());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn digest_round_trips_through_hex() {
        let d = Digest::of(b"abc");
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
        assert!("zz".parse::<Digest>().is_err());
    }
}
