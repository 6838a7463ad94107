//! RFC 6962 / RFC 9162 Merkle tree hashing and the append frontier.
//!
//! leaf = SHA-256(0x00 ‖ data), node = SHA-256(0x01 ‖ left ‖ right), empty tree = SHA-256("").

use crate::crypto::sha256;

/// A 32-byte tree hash.
pub type Hash = [u8; 32];

/// The hash of a leaf holding `data`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    sha256(&[&[0x00], data])
}

/// The hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// The hash of the empty tree.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// The roots of the complete subtrees along the right edge of a tree of `size` leaves, largest
/// first: one per set bit of `size`. Enough to append and to compute the current root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    roots: Vec<Hash>,
}

impl Frontier {
    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The (level, index) of each subtree root the frontier of a `size`-leaf tree holds,
    /// largest first; used to rebuild the frontier from stored nodes.
    pub fn positions(size: u64) -> Vec<(u8, u64)> {
        (0..64u8)
            .rev()
            .filter(|level| size & (1u64 << level) != 0)
            .map(|level| {
                let start = (size >> (level + 1)) << (level + 1);
                (level, start >> level)
            })
            .collect()
    }

    /// The subtree roots, largest first (see [`Frontier::positions`]).
    pub fn roots(&self) -> &[Hash] {
        &self.roots
    }

    /// A frontier from the subtree roots at [`Frontier::positions`]`(size)`.
    pub fn from_roots(size: u64, roots: Vec<Hash>) -> Option<Self> {
        (roots.len() == size.count_ones() as usize).then_some(Frontier { size, roots })
    }

    /// Appends a leaf hash and returns every node it completes as (level, index, hash), the
    /// leaf itself first.
    pub fn push(&mut self, leaf: Hash) -> Vec<(u8, u64, Hash)> {
        let mut nodes = vec![(0, self.size, leaf)];
        let (mut hash, mut level, mut index) = (leaf, 0u8, self.size);
        while index & 1 == 1 {
            // invariant: an odd index at this level means its left sibling is the frontier's
            // last root, because the frontier mirrors the set bits of `size`.
            let left = self.roots.pop().expect("frontier holds the left sibling");
            hash = node_hash(&left, &hash);
            level += 1;
            index >>= 1;
            nodes.push((level, index, hash));
        }
        self.roots.push(hash);
        self.size += 1;
        nodes
    }

    /// The root hash of the tree.
    pub fn root(&self) -> Hash {
        let mut roots = self.roots.iter().rev();
        match roots.next() {
            None => empty_root(),
            Some(last) => roots.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn vectors() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rfc6962_vectors.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn roots_of_the_reference_tree_match_the_public_vectors() {
        let v = vectors();
        let inputs: Vec<Vec<u8>> =
            v["leaf_inputs"].as_array().unwrap().iter().map(|s| unhex(s.as_str().unwrap())).collect();
        let roots = &v["roots"];
        let mut frontier = Frontier::default();
        let root_of = |size: usize| -> String {
            let r = &roots.as_array().unwrap().iter().find(|r| r["tree_size"] == size).unwrap();
            r["root"].as_str().unwrap().to_owned()
        };
        assert_eq!(hex(&frontier.root()), root_of(0));
        for (i, input) in inputs.iter().enumerate() {
            frontier.push(leaf_hash(input));
            assert_eq!(hex(&frontier.root()), root_of(i + 1), "size {}", i + 1);
        }
    }

    #[test]
    fn a_frontier_rebuilt_from_stored_nodes_continues_identically() {
        let mut full = Frontier::default();
        let mut stored = std::collections::HashMap::new();
        for i in 0..37u64 {
            for (level, index, hash) in full.push(leaf_hash(&i.to_be_bytes())) {
                stored.insert((level, index), hash);
            }
            let size = i + 1;
            let roots = Frontier::positions(size).iter().map(|p| stored[p]).collect();
            let rebuilt = Frontier::from_roots(size, roots).unwrap();
            assert_eq!(rebuilt, full);
        }
    }
}
