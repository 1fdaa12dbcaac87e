//! Reading fields of objects held as JSON values.

use serde_json::Value;

/// The string at a JSON pointer, "" when absent.
pub fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}
