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

fn write_string(s: &str, out: &mut Vec<u8>) {
    // invariant: serialising a &str to JSON cannot fail.
    serde_json::to_writer(&mut *out, s).expect("string serialises");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
