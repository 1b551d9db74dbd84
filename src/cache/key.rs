//! Job keys and the digests of composite inputs.

use crate::hash::Digest;

/// The cache key of a job: blake3 over its kind, the kind's version, canonical params and the
/// content digests of its named inputs (see the table in [`crate::cache`]).
pub fn job_key(
    kind: &str,
    version: u32,
    params: &serde_json::Value,
    inputs: &[(String, Digest)],
) -> Digest {
    let doc = serde_json::json!({
        "kind": kind,
        "version": version,
        "params": params,
        "inputs": inputs.iter().map(|(n, d)| (n.clone(), d.to_hex())).collect::<Vec<_>>(),
    });
    let mut h = blake3::Hasher::new();
    h.update(b"flora-key-v1\0");
    h.update(doc.to_string().as_bytes());
    Digest(*h.finalize().as_bytes())
}

/// The digest of a fan-out read as one input: its items' names and artifact digests.
pub fn collection_digest(items: &[(String, Digest)]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"flora-collection-v1\0");
    for (item, d) in items {
        h.update(item.as_bytes());
        h.update(b"\0");
        h.update(&d.0);
    }
    Digest(*h.finalize().as_bytes())
}

/// The digest of an input that names a path inside an upstream artifact.
pub fn sub_digest(artifact: &Digest, sub: &std::path::Path) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"flora-sub-v1\0");
    h.update(&artifact.0);
    h.update(sub.to_string_lossy().as_bytes());
    Digest(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_each_part_and_not_with_key_order() {
        let p1: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":2}"#).unwrap();
        let p2: serde_json::Value = serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap();
        let d = Digest::of(b"x");
        let base = job_key("exec", 1, &p1, &[("src".into(), d)]);
        assert_eq!(base, job_key("exec", 1, &p2, &[("src".into(), d)]));
        assert_ne!(base, job_key("exec", 2, &p1, &[("src".into(), d)]));
        assert_ne!(base, job_key("other", 1, &p1, &[("src".into(), d)]));
        assert_ne!(base, job_key("exec", 1, &p1, &[("dst".into(), d)]));
        assert_ne!(
            base,
            job_key("exec", 1, &p1, &[("src".into(), Digest::of(b"y"))])
        );
    }
}
