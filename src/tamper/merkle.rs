//! The Merkle tree of RFC 9162 §2.1: hashes, tree heads, inclusion proofs, and the
//! append-only [`Frontier`] the agent keeps in memory.
//!
//! Leaf: `SHA-256(0x00 || data)`; interior node: `SHA-256(0x01 || left || right)`; the tree
//! of `n` leaves splits at `k`, the largest power of two below `n` (MTH, §2.1.1). The empty
//! tree's head is `SHA-256("")`.

use sha2::{Digest, Sha256};

/// A SHA-256 value.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The head of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// MTH over the given leaf hashes.
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// PATH(m, D\[n\]) (§2.1.3.1): the audit path of leaf `index` in the tree of `leaves`, from
/// the leaf's sibling up. Empty when `index` is out of range or the tree has one leaf.
pub fn inclusion_path(index: usize, leaves: &[Hash]) -> Vec<Hash> {
    let mut out = Vec::new();
    if index < leaves.len() {
        path_into(index, leaves, &mut out);
    }
    out
}

fn path_into(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path_into(m, &leaves[..k], out);
        out.push(root_of(&leaves[k..]));
    } else {
        path_into(m - k, &leaves[k..], out);
        out.push(root_of(&leaves[..k]));
    }
}

/// The tree head that an inclusion proof implies (§2.1.3.2), or `None` if the proof does
/// not fit the tree size (wrong length, index out of range). Compare it with a signed head.
pub fn root_from_inclusion(index: u64, size: u64, leaf: &Hash, path: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if sn == 0 {
            return None;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    (sn == 0).then_some(r)
}

/// An append-only tree kept as the roots of the perfect subtrees of its size's binary
/// decomposition (largest first): O(log n) memory, O(1) amortised per leaf, and the head is
/// their right fold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    stack: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut s = self.size;
        // Each trailing one bit of the old size is a perfect subtree the new leaf completes.
        while s & 1 == 1 {
            match self.stack.pop() {
                Some(left) => h = node_hash(&left, &h),
                None => break,
            }
            s >>= 1;
        }
        self.stack.push(h);
        self.size += 1;
    }

    /// The tree head, MTH of every leaf pushed.
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |r, left| node_hash(left, &r))
    }
}

/// Lower-case hex of a hash (or any bytes).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// A hash from 64 hex digits (either case).
pub fn parse_hex(s: &str) -> Option<Hash> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        let hi = (b[2 * i] as char).to_digit(16)?;
        let lo = (b[2 * i + 1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leaf inputs of the Certificate Transparency reference tests (RFC 6962's code base).
    const CT_INPUTS: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    /// Their tree heads for sizes 1..=8.
    const CT_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_le_bytes()))
            .collect()
    }

    /// MTH written independently: pairwise levels, an odd node carried up unchanged. For an
    /// append-only tree this gives the same head as the recursive definition.
    fn naive_root(leaves: &[Hash]) -> Hash {
        if leaves.is_empty() {
            return empty_root();
        }
        let mut level = leaves.to_vec();
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|c| {
                    if c.len() == 2 {
                        node_hash(&c[0], &c[1])
                    } else {
                        c[0]
                    }
                })
                .collect();
        }
        level[0]
    }

    #[test]
    fn empty_tree_and_ct_reference_vectors() {
        assert_eq!(
            hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let hashes: Vec<Hash> = CT_INPUTS.iter().map(|d| leaf_hash(d)).collect();
        let mut f = Frontier::new();
        for (n, want) in CT_ROOTS.iter().enumerate() {
            assert_eq!(hex(&root_of(&hashes[..=n])), *want, "size {}", n + 1);
            f.push(hashes[n]);
            assert_eq!(hex(&f.root()), *want, "frontier size {}", n + 1);
        }
    }

    #[test]
    fn frontier_and_recursive_head_match_the_naive_tree() {
        let all = leaves(300);
        let mut f = Frontier::new();
        assert_eq!(f.root(), empty_root());
        for n in 1..=all.len() {
            f.push(all[n - 1]);
            let want = naive_root(&all[..n]);
            assert_eq!(root_of(&all[..n]), want, "size {n}");
            assert_eq!(f.root(), want, "size {n}");
            assert_eq!(f.size(), n as u64);
        }
    }

    #[test]
    fn every_inclusion_proof_verifies_and_a_wrong_one_does_not() {
        let all = leaves(70);
        for n in 1..=all.len() {
            let root = root_of(&all[..n]);
            for m in 0..n {
                let path = inclusion_path(m, &all[..n]);
                let got = root_from_inclusion(m as u64, n as u64, &all[m], &path);
                assert_eq!(got, Some(root), "leaf {m} of {n}");
                // Another leaf, another index or a shorter path must not give the head.
                let other = all[(m + 1) % n];
                if n > 1 {
                    assert_ne!(
                        root_from_inclusion(m as u64, n as u64, &other, &path),
                        Some(root)
                    );
                }
                if !path.is_empty() {
                    assert_ne!(
                        root_from_inclusion(m as u64, n as u64, &all[m], &path[1..]),
                        Some(root)
                    );
                }
            }
            assert_eq!(root_from_inclusion(n as u64, n as u64, &all[0], &[]), None);
        }
    }

    #[test]
    fn ct_reference_audit_paths() {
        // RFC 6962 reference test: leaf 0 of 8, leaf 5 of 8 and leaf 2 of 3.
        let hashes: Vec<Hash> = CT_INPUTS.iter().map(|d| leaf_hash(d)).collect();
        let p = inclusion_path(0, &hashes);
        assert_eq!(
            p.iter().map(|h| hex(h)).collect::<Vec<_>>(),
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]
        );
        let p = inclusion_path(5, &hashes);
        assert_eq!(
            p.iter().map(|h| hex(h)).collect::<Vec<_>>(),
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
        let p = inclusion_path(2, &hashes[..3]);
        assert_eq!(
            p.iter().map(|h| hex(h)).collect::<Vec<_>>(),
            ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]
        );
    }

    #[test]
    fn hex_round_trips() {
        let h = leaf_hash(b"x");
        assert_eq!(parse_hex(&hex(&h)), Some(h));
        assert_eq!(parse_hex(&hex(&h).to_uppercase()), Some(h));
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex(&"g".repeat(64)), None);
    }
}
