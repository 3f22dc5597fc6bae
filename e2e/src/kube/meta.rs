//! Object metadata the server assigns and checks: UIDs, timestamps, generated names, name
//! syntax, and reading owner references and finalizers.

use rand::Rng;
use serde_json::Value;

use crate::kube::error::FieldError;

/// Now, as Kubernetes writes `metav1.Time`: RFC 3339 in UTC, whole seconds.
pub fn now() -> String {
    timestamp_after(0)
}

/// `seconds` from now, as [`now`] writes it.
pub fn timestamp_after(seconds: i64) -> String {
    let at = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .unwrap_or_else(|_| jiff::Timestamp::now());
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Seconds since a `metav1.Time`, for ages in `kubectl get`.
pub fn seconds_since(timestamp: &str) -> Option<i64> {
    let then: jiff::Timestamp = timestamp.parse().ok()?;
    Some(jiff::Timestamp::now().as_second() - then.as_second())
}

/// A random (version 4) UUID.
pub fn uid() -> String {
    let mut bytes: [u8; 16] = rand::thread_rng().gen();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `generateName` plus five characters, from the alphabet the API server uses.
pub fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// Checks a name against RFC 1123 subdomain syntax, as the API server does for most kinds.
pub fn validate_name(name: &str) -> Option<FieldError> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.is_empty() {
        return Some(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    }
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Some(FieldError::invalid(
            "metadata.name",
            Value::String(name.to_string()),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character (e.g. \
             'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ));
    }
    None
}

pub fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn namespace_of(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or_default()
}

pub fn uid_of(object: &Value) -> &str {
    object["metadata"]["uid"].as_str().unwrap_or_default()
}

pub fn finalizers_of(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn set_finalizers(object: &mut Value, finalizers: &[String]) {
    let metadata = &mut object["metadata"];
    if let Some(map) = metadata.as_object_mut() {
        if finalizers.is_empty() {
            map.remove("finalizers");
        } else {
            map.insert("finalizers".into(), Value::from(finalizers.to_vec()));
        }
    }
}

pub fn is_terminating(object: &Value) -> bool {
    object["metadata"]
        .get("deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

/// UIDs of an object's owners.
pub fn owner_uids(object: &Value) -> Vec<String> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_version_4() {
        let uid = uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
    }

    #[test]
    fn names_follow_rfc_1123() {
        assert!(validate_name("kv-0.peer").is_none());
        assert!(validate_name("Kv").is_some());
        assert!(validate_name("-kv").is_some());
        assert!(validate_name("").is_some());
    }

    #[test]
    fn timestamps_round_trip() {
        let stamp = now();
        assert!(stamp.ends_with('Z'));
        assert!(seconds_since(&stamp).unwrap() <= 1);
    }
}
