//! RFC 8785 JSON Canonicalization Scheme for the values audit events hold.
//!
//! Invariant: audit events contain only strings, integers below 2^53, booleans, null, arrays
//! and objects, so number formatting (the subtle part of JCS) reduces to integer decimals.
//! Object members are ordered by their UTF-16 code units, as RFC 8785 §3.2.3 requires; string
//! escaping by `serde_json` (`\"`, `\\`, `\b\f\n\r\t`, other controls as lower-case `\u00xx`,
//! everything else literal UTF-8) is exactly JCS's.

use serde_json::Value;

/// The canonical bytes of `value`.
pub fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Value::Object(members) => {
            let mut keys: Vec<&String> = members.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write(&members[key], out);
            }
            out.push(b'}');
        }
    }
}

/// The canonical bytes of `event` without `seq` and `time` and without the closing brace: the
/// prefix a [`PendingEvent`](crate::store::PendingEvent) carries. Written member by member in
/// RFC 8785 order (all names are ASCII, so UTF-16 order is byte order: `action`, `actor`
/// (`role`, `sub`), `customer_id`, `fields`, `outcome`, `purpose`, `reason`, `recipient`,
/// `request_id`; `seq` and `time` would follow), without building a [`Value`] first (that was
/// 4 % of a read's CPU). `tests::event_prefix_is_the_canonical_form_less_seq_and_time` holds it
/// to [`canonical`].
pub fn event_prefix(event: &super::Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(320);
    out.extend_from_slice(b"{\"action\":");
    write_serialized(&event.action, &mut out);
    out.extend_from_slice(b",\"actor\":{\"role\":");
    write_string(&event.actor.role, &mut out);
    out.extend_from_slice(b",\"sub\":");
    match &event.actor.sub {
        Some(sub) => write_string(sub, &mut out),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    if let Some(id) = &event.customer_id {
        out.extend_from_slice(b",\"customer_id\":");
        write_string(id, &mut out);
    }
    if let Some(fields) = &event.fields {
        out.extend_from_slice(b",\"fields\":");
        write_strings(fields, &mut out);
    }
    out.extend_from_slice(b",\"outcome\":");
    write_serialized(&event.outcome, &mut out);
    if let Some(purpose) = &event.purpose {
        out.extend_from_slice(b",\"purpose\":");
        write_string(purpose, &mut out);
    }
    if let Some(reason) = &event.reason {
        out.extend_from_slice(b",\"reason\":");
        write_strings(reason, &mut out);
    }
    if let Some(recipient) = &event.recipient {
        out.extend_from_slice(b",\"recipient\":");
        write_string(recipient, &mut out);
    }
    out.extend_from_slice(b",\"request_id\":");
    write_string(&event.request_id, &mut out);
    out
}

fn write_strings(items: &[String], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(item, out);
    }
    out.push(b']');
}

/// A unit enum as the JSON string serde gives it.
fn write_serialized<T: serde::Serialize>(value: &T, out: &mut Vec<u8>) {
    // invariant: the audit enums serialise to plain ASCII strings.
    serde_json::to_writer(&mut *out, value).expect("enum serialises");
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // invariant: serialising a &str to JSON cannot fail.
    serde_json::to_writer(&mut *out, s).expect("string serialises");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const ACTIONS: [&str; 18] = [
        "customer.create",
        "customer.read",
        "customer.update",
        "customer.lookup",
        "customer.erase",
        "customer.export",
        "payment_method.create",
        "payment_method.list",
        "payment_method.delete",
        "consent.update",
        "objection.update",
        "restriction.update",
        "disclosure",
        "audit.read",
        "auth.denied",
        "retention.purge",
        "key.rotate",
        "store.restore",
    ];

    /// Any text, controls, quotes, backslashes and astral characters included.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[a-z_.\\\\\"\u{0}-\u{1f}\u{7f}é€\u{10000}]{0,12}"]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn event_prefix_is_the_canonical_form_less_seq_and_time(
            action in 0..ACTIONS.len(),
            outcome in prop::sample::select(vec!["allowed", "denied", "failed"]),
            role in text(),
            sub in prop::option::of(text()),
            customer_id in prop::option::of(text()),
            fields in prop::option::of(prop::collection::vec(text(), 0..4)),
            purpose in prop::option::of(text()),
            recipient in prop::option::of(text()),
            reason in prop::option::of(prop::collection::vec(text(), 0..4)),
            request_id in text(),
            seq in 0u64..(1 << 53),
        ) {
            let event = crate::audit::Event {
                seq,
                time: "2026-11-30T12:00:00.000Z".into(),
                action: serde_json::from_value(json!(ACTIONS[action])).unwrap(),
                outcome: serde_json::from_value(json!(outcome)).unwrap(),
                actor: crate::audit::Actor { role, sub },
                customer_id,
                fields,
                purpose,
                recipient,
                reason,
                request_id,
            };
            let mut value = serde_json::to_value(&event).unwrap();
            let members = value.as_object_mut().unwrap();
            members.remove("seq");
            members.remove("time");
            let mut expected = canonical(&value);
            expected.pop();
            prop_assert_eq!(event_prefix(&event), expected);
        }
    }

    #[test]
    fn members_are_sorted_and_whitespace_removed() {
        let v = json!({"b": 1, "a": [true, null, "x"], "c": {"z": 0, "y": "\u{1}\n"}});
        assert_eq!(
            String::from_utf8(canonical(&v)).unwrap(),
            r#"{"a":[true,null,"x"],"b":1,"c":{"y":"\u0001\n","z":0}}"#
        );
    }

    #[test]
    fn ordering_uses_utf16_code_units() {
        // RFC 8785 §3.2.3: U+10000 (surrogates D800 DC00) sorts before U+FB01 in UTF-16,
        // though after it in UTF-8 byte order.
        let v = json!({"\u{fb01}": 1, "\u{10000}": 2});
        assert_eq!(String::from_utf8(canonical(&v)).unwrap(), "{\"\u{10000}\":2,\"\u{fb01}\":1}");
    }

    #[test]
    fn non_ascii_is_kept_literal() {
        assert_eq!(canonical(&json!("é€")), "\"é€\"".as_bytes());
    }
}
