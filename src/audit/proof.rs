//! Merkle roots, inclusion proofs and consistency proofs (RFC 6962 §2.1, RFC 9162 §2.1), computed
//! from stored subtree hashes, and the verifier side of both proofs.
//!
//! Generation never rehashes the log. Every proof element is the hash of a subtree `[start, end)`.
//! A complete subtree of 2^k leaves starting at `s` is the stored node `(k, s >> k)`; an incomplete
//! one (only ever at the right edge of the tree) is folded from the complete subtrees it splits
//! into, one per set bit of its width. The elements of one proof are disjoint subtrees, so at
//! most one of them reaches the right edge: a proof costs O(log n) node reads and hashes.
//!
//! Algorithms are planned first (which ranges, which nodes) and then assembled from any
//! [`NodeSource`], so the same code runs over the store (the nodes are fetched asynchronously,
//! then assembled), over an in-memory [`MemoryTree`] (benchmarks, the offline verifier) and in
//! tests. This module never does I/O.

use std::collections::HashMap;
use std::ops::Range;

use super::merkle::{Hash, empty_root, node_hash};

/// Anything that can answer "the hash of the complete subtree at (level, index)".
pub trait NodeSource {
    /// The stored hash of the complete subtree of `2^level` leaves starting at leaf
    /// `index << level`, or `None` if the source does not hold it.
    fn node(&self, level: u8, index: u64) -> Option<Hash>;
}

impl NodeSource for HashMap<(u8, u64), Hash> {
    fn node(&self, level: u8, index: u64) -> Option<Hash> {
        self.get(&(level, index)).copied()
    }
}

/// A proof or root could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The request is out of range: index ≥ tree size, from > to, a size of 0, or a size beyond
    /// the log. Caller input, answered with 400.
    #[error("{0}")]
    OutOfRange(String),
    /// A node the computation needs is not stored: the log is corrupt.
    #[error("tree node at level {level}, index {index} is missing")]
    MissingNode {
        /// The node's level (0 = leaf).
        level: u8,
        /// The node's index within its level.
        index: u64,
    },
}

/// Which subtrees a root or proof is made of; assemble it with [`Plan::assemble`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    ranges: Vec<Range<u64>>,
}

impl Plan {
    /// The plan of the root of a tree of `size` leaves (one range; the empty tree has none).
    pub fn root(size: u64) -> Plan {
        let mut ranges = Vec::with_capacity(1);
        if size > 0 {
            ranges.push(0..size);
        }
        Plan { ranges }
    }

    /// The plan of the inclusion proof (audit path, RFC 6962 §2.1.1) of leaf `index` in the tree
    /// of `size` leaves, leaf to root.
    pub fn inclusion(index: u64, size: u64) -> Result<Plan, ProofError> {
        if size == 0 {
            return Err(ProofError::OutOfRange("tree_size must be at least 1".into()));
        }
        if index >= size {
            return Err(ProofError::OutOfRange(format!(
                "index {index} is not in a tree of {size} leaves (it must be below tree_size)"
            )));
        }
        let mut ranges = Vec::new();
        path(index, 0, size, &mut ranges);
        Ok(Plan { ranges })
    }

    /// The plan of the consistency proof (RFC 6962 §2.1.2) from the tree of `from` leaves to
    /// the tree of `to` leaves. `from == to` is the empty proof; `from == 0` is refused, as
    /// nothing can be proved about the empty tree.
    pub fn consistency(from: u64, to: u64) -> Result<Plan, ProofError> {
        if from == 0 {
            return Err(ProofError::OutOfRange("from must be at least 1".into()));
        }
        if from > to {
            return Err(ProofError::OutOfRange(format!("from ({from}) must not exceed to ({to})")));
        }
        let mut ranges = Vec::new();
        subproof(from, 0, to, true, &mut ranges);
        Ok(Plan { ranges })
    }

    /// The subtree ranges, in proof order.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Every stored node the plan needs, as (level, index), without duplicates.
    pub fn nodes(&self) -> Vec<(u8, u64)> {
        let mut out = Vec::new();
        for range in &self.ranges {
            for position in decompose(range) {
                if !out.contains(&position) {
                    out.push(position);
                }
            }
        }
        out
    }

    /// The hash of every range, read from `source`.
    pub fn assemble<S: NodeSource + ?Sized>(&self, source: &S) -> Result<Vec<Hash>, ProofError> {
        self.ranges.iter().map(|range| range_hash(source, range)).collect()
    }

    /// The single hash of a [`Plan::root`] (the empty-tree hash for size 0).
    pub fn assemble_root<S: NodeSource + ?Sized>(&self, source: &S) -> Result<Hash, ProofError> {
        match self.ranges.first() {
            None => Ok(empty_root()),
            Some(range) => range_hash(source, range),
        }
    }
}

/// The root of the first `size` leaves of `source`.
pub fn root<S: NodeSource + ?Sized>(source: &S, size: u64) -> Result<Hash, ProofError> {
    Plan::root(size).assemble_root(source)
}

/// The inclusion proof of leaf `index` in the tree of the first `size` leaves of `source`.
pub fn inclusion_proof<S: NodeSource + ?Sized>(
    source: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError> {
    Plan::inclusion(index, size)?.assemble(source)
}

/// The consistency proof between the trees of the first `from` and `to` leaves of `source`.
pub fn consistency_proof<S: NodeSource + ?Sized>(
    source: &S,
    from: u64,
    to: u64,
) -> Result<Vec<Hash>, ProofError> {
    Plan::consistency(from, to)?.assemble(source)
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// PATH(m, D[start : start + n]) of RFC 6962 §2.1.1, leaf to root.
fn path(m: u64, start: u64, n: u64, out: &mut Vec<Range<u64>>) {
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, start, k, out);
        out.push(start + k..start + n);
    } else {
        path(m - k, start + k, n - k, out);
        out.push(start..start + k);
    }
}

/// SUBPROOF(m, D[start : start + n], b) of RFC 6962 §2.1.2.
fn subproof(m: u64, start: u64, n: u64, complete: bool, out: &mut Vec<Range<u64>>) {
    if m == n {
        if !complete {
            out.push(start..start + n);
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, k, complete, out);
        out.push(start + k..start + n);
    } else {
        subproof(m - k, start + k, n - k, false, out);
        out.push(start..start + k);
    }
}

/// The complete subtrees `[start, end)` splits into, left to right, as (level, index): one per
/// set bit of the width, largest first. In an RFC 6962 tree every subtree starts at a multiple
/// of its largest part, so each part is a stored node.
fn decompose(range: &Range<u64>) -> Vec<(u8, u64)> {
    let mut parts = Vec::new();
    let mut start = range.start;
    let mut width = range.end.saturating_sub(range.start);
    while width > 0 {
        let level = 63 - width.leading_zeros() as u8;
        parts.push((level, start >> level));
        start += 1u64 << level;
        width -= 1u64 << level;
    }
    parts
}

/// MTH(D[range]) from the complete subtrees it splits into.
fn range_hash<S: NodeSource + ?Sized>(source: &S, range: &Range<u64>) -> Result<Hash, ProofError> {
    let mut parts = decompose(range).into_iter().rev();
    let fetch =
        |(level, index): (u8, u64)| source.node(level, index).ok_or(ProofError::MissingNode { level, index });
    let Some(last) = parts.next() else {
        return Ok(empty_root());
    };
    let mut acc = fetch(last)?;
    for part in parts {
        acc = node_hash(&fetch(part)?, &acc);
    }
    Ok(acc)
}

/// Every node of a tree held in memory, level by level (level 0 = leaf hashes); 2n hashes for n
/// leaves. Used by the offline verifier and the benchmarks.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        MemoryTree::default()
    }

    /// A tree over `leaves`, built level by level.
    pub fn from_leaves(leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        loop {
            let below = &levels[levels.len() - 1];
            if below.len() < 2 {
                break;
            }
            let above: Vec<Hash> = below.chunks_exact(2).map(|pair| node_hash(&pair[0], &pair[1])).collect();
            levels.push(above);
        }
        MemoryTree { levels }
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.node(0, index)
    }

    /// Appends a leaf hash and every node it completes.
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let nodes = &mut self.levels[level];
            nodes.push(hash);
            if nodes.len() % 2 == 1 {
                return;
            }
            hash = node_hash(&nodes[nodes.len() - 2], &nodes[nodes.len() - 1]);
            level += 1;
        }
    }
}

impl NodeSource for MemoryTree {
    fn node(&self, level: u8, index: u64) -> Option<Hash> {
        let nodes = self.levels.get(usize::from(level))?;
        nodes.get(usize::try_from(index).ok()?).copied()
    }
}

/// A proof did not verify. The variants say which check failed; none carries secret data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The sizes or index admit no proof (index ≥ size, size 0, size1 = 0, size1 > size2).
    #[error("{0}")]
    InvalidSizes(String),
    /// A leaf hash or proof element is not 32 bytes.
    #[error("a hash is not 32 bytes")]
    BadHashLength,
    /// The proof has too many or too few elements for the sizes.
    #[error("the proof has the wrong number of elements")]
    WrongProofLength,
    /// The recomputed root differs from the given one.
    #[error("the recomputed root does not match")]
    RootMismatch,
}

fn to_hash(bytes: &[u8]) -> Result<Hash, VerifyError> {
    bytes.try_into().map_err(|_| VerifyError::BadHashLength)
}

fn hashes<T: AsRef<[u8]>>(proof: &[T]) -> Result<Vec<Hash>, VerifyError> {
    proof.iter().map(|p| to_hash(p.as_ref())).collect()
}

/// Verifies that `leaf_hash` is leaf `index` of the tree of `size` leaves with root `root`
/// (RFC 9162 §2.1.3.2). The leaf hash and every proof element must be 32 bytes; `root` is
/// compared bytewise.
pub fn verify_inclusion<T: AsRef<[u8]>>(
    index: u64,
    size: u64,
    leaf_hash: &[u8],
    proof: &[T],
    root: &[u8],
) -> Result<(), VerifyError> {
    if index >= size {
        return Err(VerifyError::InvalidSizes(format!("index {index} is not below tree size {size}")));
    }
    let leaf = to_hash(leaf_hash)?;
    let proof = hashes(proof)?;
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = leaf;
    for p in &proof {
        if sn == 0 {
            return Err(VerifyError::WrongProofLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(VerifyError::WrongProofLength);
    }
    if r.as_slice() != root {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

/// Verifies that the tree of `size2` leaves with root `root2` extends the tree of `size1`
/// leaves with root `root1` (RFC 9162 §2.1.4.2).
///
/// Edge cases, as the public test vectors expect: `size1 = 0` is refused (nothing to prove);
/// `size1 == size2` needs an empty proof and byte-equal roots; `size1 > size2` is refused.
pub fn verify_consistency<T: AsRef<[u8]>>(
    size1: u64,
    size2: u64,
    root1: &[u8],
    root2: &[u8],
    proof: &[T],
) -> Result<(), VerifyError> {
    if size1 == 0 {
        return Err(VerifyError::InvalidSizes("consistency with the empty tree proves nothing".into()));
    }
    if size1 > size2 {
        return Err(VerifyError::InvalidSizes(format!("size1 ({size1}) exceeds size2 ({size2})")));
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(VerifyError::WrongProofLength);
        }
        return if root1 == root2 { Ok(()) } else { Err(VerifyError::RootMismatch) };
    }
    if proof.is_empty() {
        return Err(VerifyError::WrongProofLength);
    }
    let first = to_hash(root1).map_err(|_| VerifyError::RootMismatch)?;
    let mut path = hashes(proof)?;
    if size1.is_power_of_two() {
        path.insert(0, first);
    }
    let (mut fn_, mut sn) = (size1 - 1, size2 - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if sn == 0 {
            return Err(VerifyError::WrongProofLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(VerifyError::WrongProofLength);
    }
    if fr.as_slice() != root1 || sr.as_slice() != root2 {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::{Frontier, leaf_hash};
    use serde_json::Value;

    fn vectors() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rfc6962_vectors.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn h(v: &Value) -> Vec<u8> {
        unhex(v.as_str().unwrap())
    }

    fn hexes(v: &Value) -> Vec<Vec<u8>> {
        v.as_array().unwrap().iter().map(h).collect()
    }

    fn reference_tree(v: &Value) -> MemoryTree {
        let leaves = v["leaf_inputs"].as_array().unwrap().iter().map(|i| leaf_hash(&h(i))).collect();
        MemoryTree::from_leaves(leaves)
    }

    fn root_of(v: &Value, size: u64) -> Vec<u8> {
        let roots = v["roots"].as_array().unwrap();
        h(&roots.iter().find(|r| r["tree_size"] == size).unwrap()["root"])
    }

    #[test]
    fn every_hasher_vector_matches() {
        let v = vectors();
        let hasher = v["hasher"].as_array().unwrap();
        assert_eq!(hasher.len(), 4);
        for case in hasher {
            let got = match case["id"].as_str().unwrap() {
                "empty-tree" => empty_root(),
                "empty-leaf" | "leaf-L123456" => leaf_hash(&h(&case["leaf_input"])),
                "node-N123-N456" => {
                    // The vector hashes raw child bytes (not 32-byte hashes), so hash by hand.
                    crate::crypto::sha256(&[&[0x01], &h(&case["left"]), &h(&case["right"])])
                }
                other => panic!("unknown hasher vector {other}"),
            };
            assert_eq!(got.to_vec(), h(&case["expected"]), "{}", case["id"]);
        }
    }

    #[test]
    fn leaf_and_subtree_hashes_of_the_reference_tree_match() {
        let v = vectors();
        let tree = reference_tree(&v);
        for (i, expected) in v["leaf_hashes"].as_array().unwrap().iter().enumerate() {
            assert_eq!(tree.leaf(i as u64).unwrap().to_vec(), h(expected));
        }
        let subtrees = v["subtree_hashes"].as_array().unwrap();
        assert_eq!(subtrees.len(), 15);
        for s in subtrees {
            let (level, index) = (s["level"].as_u64().unwrap() as u8, s["index"].as_u64().unwrap());
            assert_eq!(tree.node(level, index).unwrap().to_vec(), h(&s["hash"]), "({level}, {index})");
        }
    }

    #[test]
    fn every_root_is_computed_from_stored_nodes_at_every_size() {
        let v = vectors();
        let tree = reference_tree(&v);
        let roots = v["roots"].as_array().unwrap();
        assert_eq!(roots.len(), 9);
        for r in roots {
            let size = r["tree_size"].as_u64().unwrap();
            assert_eq!(root(&tree, size).unwrap().to_vec(), h(&r["root"]), "size {size}");
        }
    }

    #[test]
    fn every_inclusion_proof_vector_is_generated_and_verifies() {
        let v = vectors();
        let tree = reference_tree(&v);
        for case in v["inclusion_proofs"].as_array().unwrap() {
            let (index, size) = (case["leaf_index"].as_u64().unwrap(), case["tree_size"].as_u64().unwrap());
            let expected = hexes(&case["proof"]);
            let got: Vec<Vec<u8>> =
                inclusion_proof(&tree, index, size).unwrap().iter().map(|x| x.to_vec()).collect();
            assert_eq!(got, expected, "{}", case["id"]);
            assert_eq!(leaf_hash(&h(&case["leaf_input"])).to_vec(), h(&case["leaf_hash"]));
            assert_eq!(h(&case["root"]), root_of(&v, size));
            verify_inclusion(index, size, &h(&case["leaf_hash"]), &expected, &h(&case["root"])).unwrap();
        }
    }

    #[test]
    fn every_consistency_proof_vector_is_generated_and_verifies() {
        let v = vectors();
        let tree = reference_tree(&v);
        for case in v["consistency_proofs"].as_array().unwrap() {
            let (size1, size2) = (case["size1"].as_u64().unwrap(), case["size2"].as_u64().unwrap());
            let expected = hexes(&case["proof"]);
            let got: Vec<Vec<u8>> =
                consistency_proof(&tree, size1, size2).unwrap().iter().map(|x| x.to_vec()).collect();
            assert_eq!(got, expected, "{}", case["id"]);
            verify_consistency(size1, size2, &h(&case["root1"]), &h(&case["root2"]), &expected).unwrap();
        }
    }

    #[test]
    fn the_rfc_example_paths_and_proofs_have_the_documented_shape() {
        let v = vectors();
        let example = &v["rfc6962_example"];
        let labels = example["labels"].as_object().unwrap();
        let named = |names: &Value| -> Vec<Range<u64>> {
            names
                .as_array()
                .unwrap()
                .iter()
                .map(|n| {
                    let r = labels[n.as_str().unwrap()].as_array().unwrap();
                    r[0].as_u64().unwrap()..r[1].as_u64().unwrap()
                })
                .collect()
        };
        for p in example["audit_paths"].as_array().unwrap() {
            let plan = Plan::inclusion(p["leaf_index"].as_u64().unwrap(), p["tree_size"].as_u64().unwrap());
            assert_eq!(plan.unwrap().ranges(), named(&p["path"]).as_slice(), "{p}");
        }
        for p in example["consistency_proofs"].as_array().unwrap() {
            let plan = Plan::consistency(p["size1"].as_u64().unwrap(), p["size2"].as_u64().unwrap());
            assert_eq!(plan.unwrap().ranges(), named(&p["proof"]).as_slice(), "{p}");
        }
    }

    #[test]
    fn all_inclusion_probes_are_decided_as_the_vectors_say() {
        let v = vectors();
        let probes = v["probes"]["inclusion"].as_array().unwrap();
        assert_eq!(probes.len(), 98);
        for p in probes {
            let result = verify_inclusion(
                p["leaf_index"].as_u64().unwrap(),
                p["tree_size"].as_u64().unwrap(),
                &h(&p["leaf_hash"]),
                &hexes(&p["proof"]),
                &h(&p["root"]),
            );
            assert_eq!(result.is_err(), p["want_error"].as_bool().unwrap(), "{}: {result:?}", p["file"]);
        }
    }

    #[test]
    fn all_consistency_probes_are_decided_as_the_vectors_say() {
        let v = vectors();
        let probes = v["probes"]["consistency"].as_array().unwrap();
        assert_eq!(probes.len(), 98);
        for p in probes {
            let result = verify_consistency(
                p["size1"].as_u64().unwrap(),
                p["size2"].as_u64().unwrap(),
                &h(&p["root1"]),
                &h(&p["root2"]),
                &hexes(&p["proof"]),
            );
            assert_eq!(result.is_err(), p["want_error"].as_bool().unwrap(), "{}: {result:?}", p["file"]);
        }
    }

    #[test]
    fn proofs_over_a_larger_tree_verify_at_every_size_and_read_few_nodes() {
        let leaves: Vec<Hash> = (0..300u64).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let tree = MemoryTree::from_leaves(leaves.clone());
        let mut frontier = Frontier::default();
        let mut roots = vec![empty_root()];
        for leaf in &leaves {
            frontier.push(*leaf);
            roots.push(frontier.root());
        }
        for size in 1..=300u64 {
            assert_eq!(root(&tree, size).unwrap(), roots[size as usize]);
            for index in (0..size).step_by(7).chain([size - 1]) {
                let plan = Plan::inclusion(index, size).unwrap();
                assert!(plan.nodes().len() <= 2 * 9, "too many node reads");
                let proof = plan.assemble(&tree).unwrap();
                verify_inclusion(index, size, &leaves[index as usize], &proof, &roots[size as usize])
                    .unwrap();
                // A proof for another index or size fails.
                if size > 1 {
                    let other = (index + 1) % size;
                    assert!(
                        verify_inclusion(other, size, &leaves[index as usize], &proof, &roots[size as usize])
                            .is_err()
                    );
                }
            }
            for from in (1..=size).step_by(11).chain([size]) {
                let proof = consistency_proof(&tree, from, size).unwrap();
                verify_consistency(from, size, &roots[from as usize], &roots[size as usize], &proof).unwrap();
                if from < size {
                    let wrong = roots[(from - 1) as usize];
                    assert!(verify_consistency(from, size, &wrong, &roots[size as usize], &proof).is_err());
                }
            }
        }
    }

    #[test]
    fn a_pushed_memory_tree_equals_one_built_level_by_level() {
        let leaves: Vec<Hash> = (0..77u64).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        let mut pushed = MemoryTree::new();
        for leaf in &leaves {
            pushed.push(*leaf);
        }
        let built = MemoryTree::from_leaves(leaves);
        assert_eq!(pushed.levels, built.levels);
    }

    #[test]
    fn bad_requests_are_out_of_range_and_missing_nodes_are_reported() {
        assert!(matches!(Plan::inclusion(0, 0), Err(ProofError::OutOfRange(_))));
        assert!(matches!(Plan::inclusion(5, 5), Err(ProofError::OutOfRange(_))));
        assert!(matches!(Plan::consistency(0, 5), Err(ProofError::OutOfRange(_))));
        assert!(matches!(Plan::consistency(6, 5), Err(ProofError::OutOfRange(_))));
        assert_eq!(Plan::consistency(5, 5).unwrap().ranges(), &[] as &[Range<u64>]);
        let empty = MemoryTree::new();
        assert!(matches!(inclusion_proof(&empty, 0, 2), Err(ProofError::MissingNode { level: 0, index: 1 })));
        assert_eq!(root(&empty, 0).unwrap(), empty_root());
        // Sizes near u64::MAX plan without overflow.
        let plan = Plan::inclusion(u64::MAX - 1, u64::MAX).unwrap();
        assert!(plan.ranges().len() <= 64);
        assert!(Plan::consistency(u64::MAX / 3, u64::MAX).is_ok());
    }
}
