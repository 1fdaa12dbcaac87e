//! Kubernetes' protobuf request bodies (`application/vnd.kubernetes.protobuf`) decoded into
//! the JSON objects they stand for. kubectl's typed clients send them for every built-in kind
//! (`kubectl create deployment|service|job|role|...`, `drain`'s evictions and DeleteOptions);
//! responses are always JSON, which those clients accept.
//!
//! A body is the magic `k8s\0` followed by a `runtime.Unknown` message whose `raw` field is
//! the typed object. Every message is decoded generically from a table generated at build time
//! from the Kubernetes protobuf definitions (see `build.rs`); a few apimachinery types have a
//! JSON form of their own (times, quantities, int-or-strings, raw JSON), as in Go.
//!
//! Go writes every non-pointer field, so a decoded object carries empty strings and empty
//! times the JSON form would omit; they are dropped, which is what Go's `omitempty` does.

use base64::Engine;
use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("not a Kubernetes protobuf body (missing the k8s magic prefix)")]
    NoMagic,
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
    #[error("protobuf bodies are not known for {0}: send JSON")]
    UnsupportedKind(String),
}

/// The type of a field in the generated table.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ty {
    Str,
    Bytes,
    Bool,
    Int,
    Double,
    /// A message, by its full name.
    Msg(&'static str),
    /// `map<string, V>`.
    Map(&'static Ty),
}

#[derive(Debug)]
pub(crate) struct Field {
    number: u32,
    json: &'static str,
    ty: Ty,
    repeated: bool,
    /// Embedded inline in Go: its fields are the parent's in JSON.
    inline: bool,
}

#[derive(Debug)]
pub(crate) struct Message {
    name: &'static str,
    fields: &'static [Field],
}

include!(concat!(env!("OUT_DIR"), "/k8s_protobuf.rs"));

fn message_named(name: &str) -> Option<&'static Message> {
    MESSAGES
        .binary_search_by(|m| m.name.cmp(name))
        .ok()
        .map(|i| &MESSAGES[i])
}

/// The message of `kind` in `apiVersion`; the meta.k8s.io kinds (DeleteOptions) for any
/// version, as clients send them under the version of the resource they talk to.
fn message_for(api_version: &str, kind: &str) -> Option<&'static Message> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    KINDS
        .iter()
        .find(|(g, v, k, _)| *g == group && *v == version && *k == kind)
        .and_then(|(_, _, _, m)| message_named(m))
        // Kinds that are not resources of their own (policy/v1 Eviction, a subresource's
        // body) live in their group's package.
        .or_else(|| {
            let package = if group.is_empty() {
                "core"
            } else {
                group.split('.').next().unwrap_or(group)
            };
            message_named(&format!("api.{package}.{version}.{kind}"))
        })
        .or_else(|| message_named(&format!("apimachinery.pkg.apis.meta.v1.{kind}")))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(ProtoError::Malformed("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtoError::Malformed("varint too long"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let len = usize::try_from(self.varint()?).map_err(|_| ProtoError::Malformed("length"))?;
        let end = self
            .pos
            .checked_add(len)
            .ok_or(ProtoError::Malformed("length"))?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or(ProtoError::Malformed("truncated field"))?;
        self.pos = end;
        Ok(out)
    }

    /// Skips a field of a wire type we do not map (unknown or unsupported fields).
    fn skip(&mut self, wire: u64) -> Result<(), ProtoError> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            _ => Err(ProtoError::Malformed("unsupported wire type")),
        }
    }

    fn fixed(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let out = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or(ProtoError::Malformed("truncated fixed field"))?;
        self.pos += n;
        Ok(out)
    }

    fn advance(&mut self, n: usize) -> Result<(), ProtoError> {
        if self.pos + n > self.buf.len() {
            return Err(ProtoError::Malformed("truncated fixed field"));
        }
        self.pos += n;
        Ok(())
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

fn utf8(b: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError::Malformed("string is not UTF-8"))
}

fn zigzag_free(v: u64) -> i64 {
    // int32/int64 are plain two's-complement varints (negative int32s as ten bytes).
    v as i64
}

/// One value of type `ty` at the reader (its key already read, with wire type `wire`).
fn value(rd: &mut Reader<'_>, ty: Ty, wire: u64) -> Result<Option<Value>, ProtoError> {
    Ok(Some(match (ty, wire) {
        (Ty::Int, 0) => json!(zigzag_free(rd.varint()?)),
        (Ty::Bool, 0) => json!(rd.varint()? != 0),
        (Ty::Double, 1) => {
            let b = rd.fixed(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            json!(f64::from_le_bytes(a))
        }
        (Ty::Str, 2) => {
            let s = utf8(rd.bytes()?)?;
            if s.is_empty() {
                return Ok(None);
            }
            json!(s)
        }
        (Ty::Bytes, 2) => json!(base64::engine::general_purpose::STANDARD.encode(rd.bytes()?)),
        (Ty::Msg(name), 2) => return special_or_message(name, rd.bytes()?),
        (_, w) => {
            rd.skip(w)?;
            return Ok(None);
        }
    }))
}

/// The fields of a small helper message by number (for the types with a JSON form of their
/// own).
fn scalars(b: &[u8]) -> Result<Vec<(u64, u64, Vec<u8>)>, ProtoError> {
    let mut rd = Reader { buf: b, pos: 0 };
    let mut out = Vec::new();
    while !rd.done() {
        let key = rd.varint()?;
        let (n, w) = (key >> 3, key & 7);
        match w {
            0 => out.push((n, rd.varint()?, Vec::new())),
            2 => out.push((n, 0, rd.bytes()?.to_vec())),
            _ => rd.skip(w)?,
        }
    }
    Ok(out)
}

/// Go's `time.Duration` string (`1h2m3.5s`) of nanoseconds.
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let ns = ns.unsigned_abs();
    let (h, rest) = (ns / 3_600_000_000_000, ns % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let secs = rest as f64 / 1e9;
    let mut out = String::from(sign);
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    let s = format!("{secs:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    out.push_str(&format!("{s}s"));
    out
}

fn raw_json(b: &[u8]) -> Result<Option<Value>, ProtoError> {
    if b.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(b)
        .map(Some)
        .map_err(|_| ProtoError::Malformed("embedded JSON is not valid"))
}

fn special_or_message(name: &str, b: &[u8]) -> Result<Option<Value>, ProtoError> {
    let field = |fields: &[(u64, u64, Vec<u8>)], n: u64| fields.iter().find(|f| f.0 == n).cloned();
    match name {
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let f = scalars(b)?;
            let Some((_, secs, _)) = field(&f, 1) else {
                return Ok(None);
            };
            let base = cairn_wire::time::rfc3339(secs as i64);
            if name.ends_with("MicroTime") {
                let micros = field(&f, 2).map_or(0, |x| x.1) / 1000;
                let base = base.trim_end_matches('Z');
                return Ok(Some(json!(format!("{base}.{micros:06}Z"))));
            }
            Ok(Some(json!(base)))
        }
        "apimachinery.pkg.apis.meta.v1.Duration" => {
            let f = scalars(b)?;
            Ok(Some(json!(go_duration(
                field(&f, 1).map_or(0, |x| x.1) as i64
            ))))
        }
        "apimachinery.pkg.api.resource.Quantity" => {
            let f = scalars(b)?;
            let s = field(&f, 1).map(|x| x.2).unwrap_or_default();
            Ok(Some(json!(utf8(&s)?)))
        }
        "apimachinery.pkg.util.intstr.IntOrString" => {
            let f = scalars(b)?;
            let is_string = field(&f, 1).is_some_and(|x| x.1 == 1);
            if is_string {
                let s = field(&f, 3).map(|x| x.2).unwrap_or_default();
                Ok(Some(json!(utf8(&s)?)))
            } else {
                Ok(Some(json!(field(&f, 2).map_or(0, |x| x.1) as i32)))
            }
        }
        "apimachinery.pkg.runtime.RawExtension"
        | "apimachinery.pkg.apis.meta.v1.FieldsV1"
        | "apiextensions_apiserver.pkg.apis.apiextensions.v1.Json"
        | "apiextensions_apiserver.pkg.apis.apiextensions.v1beta1.Json" => {
            let f = scalars(b)?;
            raw_json(&field(&f, 1).map(|x| x.2).unwrap_or_default())
        }
        _ if name.ends_with(".ExtraValue") => {
            // A Go []string with a protobuf wrapper: its JSON form is the list.
            let v = message(
                b,
                message_named(name).ok_or(ProtoError::Malformed("no ExtraValue"))?,
            )?;
            Ok(Some(v.get("items").cloned().unwrap_or_else(|| json!([]))))
        }
        _ => {
            let m = message_named(name).ok_or(ProtoError::Malformed("unknown message type"))?;
            message(b, m).map(Some)
        }
    }
}

fn map_entry(b: &[u8], value_ty: Ty) -> Result<(String, Value), ProtoError> {
    let mut rd = Reader { buf: b, pos: 0 };
    let (mut k, mut v) = (String::new(), None);
    while !rd.done() {
        let key = rd.varint()?;
        match (key >> 3, key & 7) {
            (1, 2) => k = utf8(rd.bytes()?)?,
            (2, w) => v = value(&mut rd, value_ty, w)?,
            (_, w) => rd.skip(w)?,
        }
    }
    // An entry whose value is the type's zero is written without it.
    let zero = match value_ty {
        Ty::Str => json!(""),
        Ty::Bytes => json!(""),
        Ty::Int => json!(0),
        Ty::Bool => json!(false),
        _ => json!({}),
    };
    Ok((k, v.unwrap_or(zero)))
}

fn message(b: &[u8], m: &Message) -> Result<Value, ProtoError> {
    let mut rd = Reader { buf: b, pos: 0 };
    let mut out = Map::new();
    while !rd.done() {
        let key = rd.varint()?;
        let (number, wire) = (key >> 3, key & 7);
        let Some(field) = m.fields.iter().find(|f| u64::from(f.number) == number) else {
            rd.skip(wire)?;
            continue;
        };
        if let Ty::Map(value_ty) = field.ty {
            if wire != 2 {
                rd.skip(wire)?;
                continue;
            }
            let (k, v) = map_entry(rd.bytes()?, *value_ty)?;
            let entry = out.entry(field.json).or_insert_with(|| json!({}));
            if let Some(map) = entry.as_object_mut() {
                map.insert(k, v);
            }
            continue;
        }
        // Packed repeated scalars (a length-delimited run of varints).
        if field.repeated && wire == 2 && matches!(field.ty, Ty::Int | Ty::Bool) {
            let mut inner = Reader {
                buf: rd.bytes()?,
                pos: 0,
            };
            let list = out.entry(field.json).or_insert_with(|| json!([]));
            while !inner.done() {
                let n = inner.varint()?;
                if let Some(l) = list.as_array_mut() {
                    l.push(match field.ty {
                        Ty::Bool => json!(n != 0),
                        _ => json!(zigzag_free(n)),
                    });
                }
            }
            continue;
        }
        let v = value(&mut rd, field.ty, wire)?;
        if field.inline {
            if let Some(Value::Object(inner)) = v {
                out.extend(inner);
            }
            continue;
        }
        if field.repeated {
            let list = out.entry(field.json).or_insert_with(|| json!([]));
            if let Some(l) = list.as_array_mut() {
                // An element keeps its place even when empty ("" in a list of strings).
                l.push(v.unwrap_or_else(|| match field.ty {
                    Ty::Str => json!(""),
                    _ => Value::Null,
                }));
            }
        } else if let Some(v) = v {
            out.insert(field.json.to_string(), v);
        }
    }
    Ok(Value::Object(out))
}

const TYPE_META: Message = Message {
    name: "runtime.TypeMeta",
    fields: &[
        Field {
            number: 1,
            json: "apiVersion",
            ty: Ty::Str,
            repeated: false,
            inline: false,
        },
        Field {
            number: 2,
            json: "kind",
            ty: Ty::Str,
            repeated: false,
            inline: false,
        },
    ],
};

/// Decodes a protobuf request body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let rest = body.strip_prefix(b"k8s\0").ok_or(ProtoError::NoMagic)?;
    let mut rd = Reader { buf: rest, pos: 0 };
    let (mut type_meta, mut raw) = (Value::Null, None);
    while !rd.done() {
        let key = rd.varint()?;
        match (key >> 3, key & 7) {
            (1, 2) => type_meta = message(rd.bytes()?, &TYPE_META)?,
            (2, 2) => raw = Some(rd.bytes()?),
            (_, w) => rd.skip(w)?,
        }
    }
    let kind = type_meta["kind"].as_str().unwrap_or_default().to_string();
    let api_version = type_meta["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let m = message_for(&api_version, &kind)
        .ok_or_else(|| ProtoError::UnsupportedKind(format!("{kind} in {api_version:?}")))?;
    let mut obj = message(raw.unwrap_or_default(), m)?;
    obj["kind"] = json!(kind);
    obj["apiVersion"] = json!(api_version);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn ld(number: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        ld(1, k.as_bytes(), &mut e);
        ld(2, v, &mut e);
        e
    }

    #[test]
    fn decodes_a_configmap_like_kubectl_create_sends() {
        let mut meta = Vec::new();
        ld(1, b"cfg", &mut meta);
        ld(3, b"default", &mut meta);
        ld(11, &entry("app", b"web"), &mut meta);
        let mut cm = Vec::new();
        ld(1, &meta, &mut cm);
        ld(2, &entry("a", b"1"), &mut cm);
        ld(2, &entry("b", b"2"), &mut cm);
        ld(3, &entry("bin", &[0, 1]), &mut cm);
        let mut tm = Vec::new();
        ld(1, b"v1", &mut tm);
        ld(2, b"ConfigMap", &mut tm);
        let mut body = b"k8s\0".to_vec();
        ld(1, &tm, &mut body);
        ld(2, &cm, &mut body);
        ld(3, b"", &mut body);
        ld(4, b"", &mut body);

        let v = decode(&body).unwrap();
        assert_eq!(v["kind"], "ConfigMap");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["metadata"]["name"], "cfg");
        assert_eq!(v["metadata"]["labels"]["app"], "web");
        assert_eq!(v["data"], json!({"a": "1", "b": "2"}));
        assert_eq!(v["binaryData"]["bin"], "AAE=");
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert_eq!(decode(b"{}"), Err(ProtoError::NoMagic));
        let mut body = b"k8s\0".to_vec();
        let mut tm = Vec::new();
        ld(1, b"v1", &mut tm);
        ld(2, b"Gizmo", &mut tm);
        ld(1, &tm, &mut body);
        assert!(
            matches!(decode(&body), Err(ProtoError::UnsupportedKind(k)) if k.starts_with("Gizmo"))
        );
        let truncated = b"k8s\0\x0a\x10abc";
        assert!(matches!(decode(truncated), Err(ProtoError::Malformed(_))));
    }
}
