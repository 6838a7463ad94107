//! The log's tree math as one pure function: pending events in, completed leaves and the new
//! head out. Every backend's sequencer calls it (through [`crate::store::Integrator`]), so the
//! same events give the same leaves, nodes and root wherever they are integrated.

use super::merkle::{self, Frontier};
use crate::store::{IntegratedLeaf, Integrator, PendingEvent, TreeHead};

/// The integrator the audit log injects into the store.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tree;

impl Integrator for Tree {
    fn integrate(&self, head: &TreeHead, pending: Vec<PendingEvent>) -> (Vec<IntegratedLeaf>, TreeHead) {
        integrate(head, pending)
    }
}

/// Gives `pending` the seqs after `head`, completes each event's canonical JSON with its `seq`
/// and `time` (RFC 8785: they sort last), hashes its leaf (RFC 9162 §2.1.1) and lists the nodes
/// it completes. Returns the leaves and the head after them.
///
/// # Panics
/// If `head.roots` does not match `head.size` (one root per set bit): a corrupt head is
/// refused when the store opens, so it cannot reach here.
pub fn integrate(head: &TreeHead, pending: Vec<PendingEvent>) -> (Vec<IntegratedLeaf>, TreeHead) {
    // invariant: stores build heads only from `Frontier::roots` or check them on open.
    let mut frontier = Frontier::from_roots(head.size, head.roots.clone()).expect("a well-formed head");
    let mut leaves = Vec::with_capacity(pending.len());
    for event in pending {
        let seq = frontier.size();
        let bytes = complete(event.prefix, seq, &event.time);
        let nodes = frontier.push(merkle::leaf_hash(&bytes));
        leaves.push(IntegratedLeaf { seq, event: bytes, customer: event.customer, nodes });
    }
    let head = TreeHead { size: frontier.size(), roots: frontier.roots().to_vec() };
    (leaves, head)
}

/// `prefix ‖ ,"seq":N,"time":"T"}`: the canonical JSON of an event whose other members are in
/// `prefix` (which ends after the last of them, without the closing brace).
fn complete(mut prefix: Vec<u8>, seq: u64, time: &str) -> Vec<u8> {
    // A `time` is RFC 3339 (digits, `-`, `:`, `.`, `T`, `Z`): nothing JCS would escape.
    debug_assert!(time.bytes().all(|b| b.is_ascii_alphanumeric() || b"-:.".contains(&b)));
    let separator = if prefix.len() > 1 { "," } else { "" };
    prefix.extend_from_slice(format!("{separator}\"seq\":{seq},\"time\":\"{time}\"}}").as_bytes());
    prefix
}

/// The root of the tree whose head is `head` (RFC 9162 §2.1.1; the empty tree's root for size 0).
pub fn root(head: &TreeHead) -> Option<merkle::Hash> {
    Frontier::from_roots(head.size, head.roots.clone()).map(|f| f.root())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(n: u64) -> PendingEvent {
        let prefix = format!("{{\"action\":\"customer.read\",\"request_id\":\"r{n}\"").into_bytes();
        PendingEvent { prefix, time: "2026-11-30T12:00:00.000Z".into(), customer: None }
    }

    #[test]
    fn integration_in_one_batch_or_many_gives_the_same_leaves_and_head() {
        let (all, head) = integrate(&TreeHead::default(), (0..11).map(pending).collect());
        let mut step = TreeHead::default();
        let mut one_by_one = Vec::new();
        for n in 0..11 {
            let (mut leaves, next) = integrate(&step, vec![pending(n)]);
            one_by_one.append(&mut leaves);
            step = next;
        }
        assert_eq!(head, step);
        assert_eq!(head.size, 11);
        for (a, b) in all.iter().zip(&one_by_one) {
            assert_eq!((a.seq, &a.event, &a.nodes), (b.seq, &b.event, &b.nodes));
        }
        let mut reference = Frontier::default();
        for leaf in &all {
            reference.push(merkle::leaf_hash(&leaf.event));
        }
        assert_eq!(root(&head), Some(reference.root()));
    }

    #[test]
    fn a_completed_event_is_canonical_json_with_seq_and_time_last() {
        let (leaves, _) = integrate(&TreeHead::default(), vec![pending(7)]);
        let text = String::from_utf8(leaves[0].event.clone()).unwrap();
        assert_eq!(
            text,
            r#"{"action":"customer.read","request_id":"r7","seq":0,"time":"2026-11-30T12:00:00.000Z"}"#
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(super::super::jcs::canonical(&value), leaves[0].event);
    }
}
