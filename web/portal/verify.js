// Verifies a receipt from GET /v1/me/events/{seq}/receipt in the browser, with WebCrypto only:
//  0. that the receipt's event is the entry the page lists (same RFC 8785 form): a receipt
//     proves only the copy it carries, so a listing that differs from it is not verified;
//  1. the leaf hash SHA-256(0x00 || JCS(event)) (RFC 9162 §2.1.1, RFC 8785);
//  2. the root from the inclusion proof (RFC 9162 §2.1.3.2);
//  3. that root against the one the checkpoint note signs (C2SP tlog-checkpoint), and the note's
//     Ed25519 signature (C2SP signed-note) by the key the receipt names, whose key id is
//     SHA-256(name || 0x0A || 0x01 || public key)[0..4].
// It trusts nothing the server says about the outcome: every check is recomputed here.
"use strict";

(function () {
  const enc = new TextEncoder();

  // RFC 8785 for what audit events hold (objects, arrays, strings, integers, booleans, null):
  // members sorted by UTF-16 code units (JavaScript's default sort), JSON.stringify's escaping.
  function jcs(value) {
    if (value === null || typeof value !== "object") return JSON.stringify(value);
    if (Array.isArray(value)) return "[" + value.map(jcs).join(",") + "]";
    const keys = Object.keys(value).sort();
    return "{" + keys.map((k) => JSON.stringify(k) + ":" + jcs(value[k])).join(",") + "}";
  }

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }

  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  function b64(text) {
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function hex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function equal(a, b) {
    return a.length === b.length && a.every((x, i) => x === b[i]);
  }

  const leafHash = (bytes) => sha256(concat(new Uint8Array([0]), bytes));
  const nodeHash = (l, r) => sha256(concat(new Uint8Array([1]), l, r));

  // RFC 9162 §2.1.3.2, with arithmetic instead of 32-bit bit operators (sizes may exceed 2^31).
  async function rootFromInclusion(index, size, leaf, proof) {
    if (index >= size) throw new Error("the index is outside the tree");
    let fn = index, sn = size - 1, r = leaf;
    for (const p of proof) {
      if (sn === 0) throw new Error("the proof is too long");
      if (fn % 2 === 1 || fn === sn) {
        r = await nodeHash(p, r);
        if (fn % 2 === 0) {
          while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
        }
      } else {
        r = await nodeHash(r, p);
      }
      fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
    }
    if (sn !== 0) throw new Error("the proof is too short");
    return r;
  }

  // `name+hexid+base64(0x01 || key)`.
  async function parseVerifierKey(text) {
    // The name has no '+'; the base64 key may.
    const first = text.indexOf("+");
    const second = first < 0 ? -1 : text.indexOf("+", first + 1);
    if (first <= 0 || second < 0) throw new Error("malformed verifier key");
    const name = text.slice(0, first), id = text.slice(first + 1, second), keyB64 = text.slice(second + 1);
    const raw = b64(keyB64);
    if (raw.length !== 33 || raw[0] !== 1) throw new Error("not an Ed25519 verifier key");
    const pub = raw.slice(1);
    const computed = (await sha256(concat(enc.encode(name), new Uint8Array([0x0a, 0x01]), pub))).slice(0, 4);
    if (hex(computed) !== id.toLowerCase()) throw new Error("the key id does not match the key");
    return { name, id: hex(computed), pub };
  }

  // Splits a signed note into its text (signed, final newline included) and signature lines.
  function parseNote(note) {
    const split = note.indexOf("\n\n");
    if (split < 0) throw new Error("malformed signed note");
    const text = note.slice(0, split + 1);
    const signatures = note.slice(split + 2).split("\n").filter((l) => l.length > 0);
    const lines = text.slice(0, -1).split("\n");
    if (lines.length < 3) throw new Error("malformed checkpoint");
    const size = Number(lines[1]);
    if (!/^(0|[1-9][0-9]*)$/.test(lines[1]) || !Number.isSafeInteger(size)) throw new Error("malformed tree size");
    return { text, origin: lines[0], size, root: b64(lines[2]), signatures };
  }

  async function verifySignature(note, key) {
    for (const line of note.signatures) {
      if (!line.startsWith("\u2014 ")) continue;
      const rest = line.slice(2);
      const space = rest.lastIndexOf(" ");
      if (space < 0 || rest.slice(0, space) !== key.name) continue;
      const blob = b64(rest.slice(space + 1));
      if (blob.length !== 68 || hex(blob.slice(0, 4)) !== key.id) continue;
      let publicKey;
      try {
        publicKey = await crypto.subtle.importKey("raw", key.pub, { name: "Ed25519" }, false, ["verify"]);
      } catch (e) {
        // No Ed25519 in this browser's WebCrypto: no verdict either way.
        const unsupported = new Error("this browser cannot verify Ed25519 signatures");
        unsupported.unsupported = true;
        throw unsupported;
      }
      return crypto.subtle.verify({ name: "Ed25519" }, publicKey, blob.slice(4), enc.encode(note.text));
    }
    return false;
  }

  /**
   * Checks a receipt for `listed`, the entry as the page shows it. Resolves to
   * {ok: true, size, keyId, keyName}, or {ok: false, reason} (with `unsupported: true` when the
   * browser lacks Ed25519, which is no verdict on the entry).
   */
  async function verifyReceipt(receipt, listed) {
    try {
      const event = receipt.event;
      if (listed === null || typeof listed !== "object") return { ok: false, reason: "there is no listed entry to compare" };
      if (jcs(listed) !== jcs(event)) return { ok: false, reason: "the entry listed here differs from the one in the log" };
      const index = receipt.inclusion.index;
      if (event.seq !== index) return { ok: false, reason: "the event is not the one asked for" };
      const key = await parseVerifierKey(receipt.key.verifier_key);
      const note = parseNote(receipt.checkpoint.note);
      if (note.origin !== key.name) return { ok: false, reason: "the checkpoint is of another log" };
      if (!(await verifySignature(note, key))) return { ok: false, reason: "the checkpoint's signature does not verify" };
      if (note.size !== receipt.inclusion.tree_size) return { ok: false, reason: "the proof is for another tree size" };
      const leaf = await leafHash(enc.encode(jcs(event)));
      const root = await rootFromInclusion(index, note.size, leaf, receipt.inclusion.proof.map(b64));
      if (!equal(root, note.root)) return { ok: false, reason: "the entry does not match the signed log" };
      return { ok: true, size: note.size, keyId: key.id, keyName: key.name };
    } catch (e) {
      return { ok: false, unsupported: !!(e && e.unsupported), reason: String(e && e.message ? e.message : e) };
    }
  }

  window.CustodiaVerify = { verifyReceipt, jcs };
})();
