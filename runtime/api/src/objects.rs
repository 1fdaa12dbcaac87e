//! What the server fills in on every object: uid, timestamps, resourceVersion, generation.

use super::status::ApiError;
use cairn_store::Record;
use serde_json::{json, Value};

/// A random RFC 4122 version 4 UUID.
pub fn new_uid() -> String {
    let mut b = [0u8; 16];
    // Without randomness the uid would still be unique enough per store revision; never fail.
    let _ = getrandom::getrandom(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub fn metadata(obj: &Value) -> &Value {
    &obj["metadata"]
}

pub fn name_of(obj: &Value) -> Option<&str> {
    obj["metadata"]["name"].as_str()
}

/// Sets `metadata.resourceVersion` to the store revision the object was read at.
pub fn with_revision(mut obj: Value, revision: i64) -> Value {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), json!(revision.to_string()));
    }
    obj
}

/// A stored record as the API shows it: the JSON value with its revision as resourceVersion.
pub fn decode(record: &Record) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(&record.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is corrupt: {e}", record.key)))?;
    Ok(with_revision(v, record.revision))
}

/// The bytes stored for an object; the revision is the row's, never kept inside the value.
pub fn encode(obj: &Value) -> Result<Vec<u8>, ApiError> {
    let mut obj = obj.clone();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&obj).map_err(|e| ApiError::internal(e.to_string()))
}

/// Generates a name from `generateName` the way kube-apiserver does (5 random characters).
pub fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut b = [0u8; 5];
    let _ = getrandom::getrandom(&mut b);
    let suffix: String = b
        .iter()
        .map(|x| ALPHABET[*x as usize % ALPHABET.len()] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// Whether a name is a valid DNS-1123 subdomain (what most kinds require).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_and_names() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(valid_name("web-1.example"));
        assert!(!valid_name("Web"));
        assert!(!valid_name("-x"));
        assert!(generated_name("web-").starts_with("web-"));
    }
}
