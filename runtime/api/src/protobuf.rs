//! Kubernetes' protobuf request bodies (`application/vnd.kubernetes.protobuf`) decoded into
//! JSON objects. kubectl's typed clients (`kubectl create namespace|configmap|secret|
//! serviceaccount`) send them; responses are always JSON, which those clients accept.
//!
//! A body is the magic `k8s\0` followed by a `runtime.Unknown` message whose `raw` field is
//! the typed object. Each supported kind is described by a small field table.

use base64::Engine;
use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("not a Kubernetes protobuf body (missing the k8s magic prefix)")]
    NoMagic,
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
    #[error("protobuf bodies are accepted for Namespace, ConfigMap, Secret and ServiceAccount, not {0}: send JSON (kubectl apply does)")]
    UnsupportedKind(String),
}

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    Time,
    MapStr,
    MapBytes,
    Msg(&'static [Field]),
}

#[derive(Clone, Copy)]
struct Field {
    number: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
}

const fn f(number: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        number,
        name,
        ty,
        repeated: false,
    }
}

const fn r(number: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        number,
        name,
        ty,
        repeated: true,
    }
}

const OWNER_REFERENCE: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "controller", Ty::Bool),
    f(7, "blockOwnerDeletion", Ty::Bool),
];

const OBJECT_META: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "generateName", Ty::Str),
    f(3, "namespace", Ty::Str),
    f(5, "uid", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "generation", Ty::Int),
    f(8, "creationTimestamp", Ty::Time),
    f(9, "deletionTimestamp", Ty::Time),
    f(10, "deletionGracePeriodSeconds", Ty::Int),
    f(11, "labels", Ty::MapStr),
    f(12, "annotations", Ty::MapStr),
    r(13, "ownerReferences", Ty::Msg(OWNER_REFERENCE)),
    r(14, "finalizers", Ty::Str),
];

const OBJECT_REFERENCE: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(2, "namespace", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "fieldPath", Ty::Str),
];

const LOCAL_OBJECT_REFERENCE: &[Field] = &[f(1, "name", Ty::Str)];

const NAMESPACE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(&[r(1, "finalizers", Ty::Str)])),
    f(3, "status", Ty::Msg(&[f(1, "phase", Ty::Str)])),
];

const CONFIG_MAP: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", Ty::MapStr),
    f(3, "binaryData", Ty::MapBytes),
    f(4, "immutable", Ty::Bool),
];

const SECRET: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", Ty::MapBytes),
    f(3, "type", Ty::Str),
    f(4, "stringData", Ty::MapStr),
    f(5, "immutable", Ty::Bool),
];

const SERVICE_ACCOUNT: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    r(2, "secrets", Ty::Msg(OBJECT_REFERENCE)),
    r(3, "imagePullSecrets", Ty::Msg(LOCAL_OBJECT_REFERENCE)),
    f(4, "automountServiceAccountToken", Ty::Bool),
];

const TYPE_META: &[Field] = &[f(1, "apiVersion", Ty::Str), f(2, "kind", Ty::Str)];

fn schema_for(kind: &str) -> Option<&'static [Field]> {
    match kind {
        "Namespace" => Some(NAMESPACE),
        "ConfigMap" => Some(CONFIG_MAP),
        "Secret" => Some(SECRET),
        "ServiceAccount" => Some(SERVICE_ACCOUNT),
        _ => None,
    }
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

fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), ProtoError> {
    let mut rd = Reader { buf: b, pos: 0 };
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    while !rd.done() {
        let key = rd.varint()?;
        match (key >> 3, key & 7) {
            (1, 2) => k = utf8(rd.bytes()?)?,
            (2, 2) => {
                let raw = rd.bytes()?;
                v = if bytes_value {
                    json!(base64::engine::general_purpose::STANDARD.encode(raw))
                } else {
                    json!(utf8(raw)?)
                };
            }
            (_, w) => rd.skip(w)?,
        }
    }
    Ok((k, v))
}

fn time(b: &[u8]) -> Result<Value, ProtoError> {
    let mut rd = Reader { buf: b, pos: 0 };
    let mut secs = 0i64;
    while !rd.done() {
        let key = rd.varint()?;
        match (key >> 3, key & 7) {
            (1, 0) => secs = rd.varint()? as i64,
            (_, w) => rd.skip(w)?,
        }
    }
    Ok(json!(cairn_wire::time::rfc3339(secs)))
}

fn message(b: &[u8], fields: &[Field]) -> Result<Value, ProtoError> {
    let mut rd = Reader { buf: b, pos: 0 };
    let mut out = Map::new();
    while !rd.done() {
        let key = rd.varint()?;
        let (number, wire) = (key >> 3, key & 7);
        let Some(field) = fields.iter().find(|f| f.number == number) else {
            rd.skip(wire)?;
            continue;
        };
        let value = match (field.ty, wire) {
            (Ty::Int, 0) => json!(rd.varint()? as i64),
            (Ty::Bool, 0) => json!(rd.varint()? != 0),
            (Ty::Str, 2) => json!(utf8(rd.bytes()?)?),
            (Ty::Time, 2) => time(rd.bytes()?)?,
            (Ty::Msg(inner), 2) => message(rd.bytes()?, inner)?,
            (Ty::MapStr | Ty::MapBytes, 2) => {
                let (k, v) = map_entry(rd.bytes()?, matches!(field.ty, Ty::MapBytes))?;
                let m = out.entry(field.name).or_insert_with(|| json!({}));
                if let Some(m) = m.as_object_mut() {
                    m.insert(k, v);
                }
                continue;
            }
            (_, w) => {
                rd.skip(w)?;
                continue;
            }
        };
        if field.repeated {
            let list = out.entry(field.name).or_insert_with(|| json!([]));
            if let Some(l) = list.as_array_mut() {
                l.push(value);
            }
        } else {
            out.insert(field.name.to_string(), value);
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a protobuf request body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let rest = body.strip_prefix(b"k8s\0").ok_or(ProtoError::NoMagic)?;
    let mut rd = Reader { buf: rest, pos: 0 };
    let (mut type_meta, mut raw) = (Value::Null, None);
    while !rd.done() {
        let key = rd.varint()?;
        match (key >> 3, key & 7) {
            (1, 2) => type_meta = message(rd.bytes()?, TYPE_META)?,
            (2, 2) => raw = Some(rd.bytes()?),
            (_, w) => rd.skip(w)?,
        }
    }
    let kind = type_meta["kind"].as_str().unwrap_or_default().to_string();
    let schema = schema_for(&kind).ok_or_else(|| ProtoError::UnsupportedKind(kind.clone()))?;
    let mut obj = message(raw.unwrap_or_default(), schema)?;
    obj["kind"] = json!(kind);
    obj["apiVersion"] = type_meta["apiVersion"].clone();
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
        ld(2, b"Deployment", &mut tm);
        ld(1, &tm, &mut body);
        assert!(matches!(decode(&body), Err(ProtoError::UnsupportedKind(k)) if k == "Deployment"));
        let truncated = b"k8s\0\x0a\x10abc";
        assert!(matches!(decode(truncated), Err(ProtoError::Malformed(_))));
    }
}
