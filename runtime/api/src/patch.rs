//! The three patch formats kube-apiserver accepts on `PATCH`, over `serde_json::Value`:
//!
//! - `application/merge-patch+json`: [`merge_patch`] (RFC 7386/7396: objects merge, `null`
//!   deletes, anything else replaces);
//! - `application/json-patch+json`: [`json_patch`] (RFC 6902 operations, through the
//!   `json-patch` crate, all or nothing);
//! - `application/strategic-merge-patch+json`: [`strategic_merge_patch`], the Kubernetes
//!   variant where some lists merge by a key (containers by `name`, ports by `containerPort`,
//!   ...) and directives (`$patch`, `$retainKeys`, `$setElementOrder/<list>`,
//!   `$deleteFromPrimitiveList/<list>`) steer the merge. Which lists merge, and by which key, is
//!   asked of a [`MergeKeys`]; [`MergeKeyTable::for_kind`] answers it for the built-in kinds
//!   from the `patchStrategy`/`patchMergeKey` tags of the Kubernetes Go types.
//!
//! The strategic merge follows `k8s.io/apimachinery/pkg/util/strategicpatch` (apply side,
//! `MergeParallelList` and `IgnoreUnmatchedNulls` on, as kube-apiserver calls it), including
//! the order of merged lists: items named in the patch come in the patch's order (or the
//! `$setElementOrder` one), items only on the server keep their relative order, and a new item
//! is placed before the server-only items that do not precede it on the server.

use serde_json::{Map, Value};
use std::fmt;

/// The most operations kube-apiserver accepts in one JSON patch.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// What kind of failure a patch met, to choose the HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchErrorKind {
    /// The patch is malformed (not JSON of the right shape, bad directive, missing merge
    /// key): 400 Bad Request.
    BadRequest,
    /// A well-formed JSON patch could not be applied to this object (a `test` failed, a path is
    /// missing): 422 Unprocessable Entity, as kube-apiserver answers.
    Unprocessable,
    /// kube-apiserver answers 409 Conflict to lists of lists in a strategic merge patch.
    Conflict,
    /// More than [`MAX_JSON_PATCH_OPERATIONS`] operations: 413 Request Entity Too Large.
    TooLarge,
}

/// A patch that could not be applied, with a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchError {
    kind: PatchErrorKind,
    message: String,
}

impl PatchError {
    fn new(kind: PatchErrorKind, message: impl Into<String>) -> Self {
        PatchError {
            kind,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        PatchError::new(PatchErrorKind::BadRequest, message)
    }

    pub fn kind(&self) -> PatchErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status kube-apiserver would answer with.
    pub fn http_status(&self) -> u16 {
        match self.kind {
            PatchErrorKind::BadRequest => 400,
            PatchErrorKind::Unprocessable => 422,
            PatchErrorKind::Conflict => 409,
            PatchErrorKind::TooLarge => 413,
        }
    }
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PatchError {}

// ---------------------------------------------------------------------------------------------
// JSON merge patch (RFC 7386 / 7396).
// ---------------------------------------------------------------------------------------------

/// Applies a JSON merge patch: members of an object patch merge recursively into the target,
/// `null` members delete, and any non-object patch (or a non-object target) is replaced
/// wholesale. kube-apiserver rejects a merge patch whose top level is not an object before
/// applying it; that check belongs to the caller.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let mut doc = target.clone();
    json_patch::merge(&mut doc, patch);
    doc
}

// ---------------------------------------------------------------------------------------------
// JSON patch (RFC 6902).
// ---------------------------------------------------------------------------------------------

/// Applies a JSON patch (a list of `add`/`remove`/`replace`/`move`/`copy`/`test` operations).
/// Either every operation applies or the target is left as it was and an error names the
/// first failing operation.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops = match patch {
        Value::Array(ops) => ops,
        _ => {
            return Err(PatchError::bad(
                "invalid JSON patch: expected a JSON array of operations",
            ))
        }
    };
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::new(
            PatchErrorKind::TooLarge,
            format!(
                "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got: {}",
                ops.len()
            ),
        ));
    }
    let parsed: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::bad(format!("invalid JSON patch: {e}")))?;
    // Work on a copy: on failure it holds the state the failing operation saw, which makes the
    // message precise, and the caller's target is untouched either way.
    let mut doc = target.clone();
    match json_patch::patch_unsafe(&mut doc, &parsed) {
        Ok(()) => Ok(doc),
        Err(e) => {
            let index = e.operation;
            let op = &parsed[index];
            Err(PatchError::new(
                PatchErrorKind::Unprocessable,
                describe_json_patch_error(&doc, index, op, &e.kind),
            ))
        }
    }
}

fn describe_json_patch_error(
    doc: &Value,
    index: usize,
    op: &json_patch::PatchOperation,
    kind: &json_patch::PatchErrorKind,
) -> String {
    use json_patch::PatchErrorKind as K;
    use json_patch::PatchOperation as Op;
    let (name, from) = match op {
        Op::Add(_) => ("add", None),
        Op::Remove(_) => ("remove", None),
        Op::Replace(_) => ("replace", None),
        Op::Move(m) => ("move", Some(m.from.as_str())),
        Op::Copy(c) => ("copy", Some(c.from.as_str())),
        Op::Test(_) => ("test", None),
    };
    let path = op.path().as_str();
    let detail = match kind {
        K::TestFailed => {
            let expected = match op {
                Op::Test(t) => t.value.to_string(),
                _ => String::new(),
            };
            let found = doc.pointer(path).map(Value::to_string).unwrap_or_default();
            format!("test failed: the value is {found}, expected {expected}")
        }
        K::InvalidFromPointer => match from {
            Some(from) => format!(
                "\"from\" path {}",
                describe_pointer_failure(doc, from, false)
            ),
            None => "\"from\" path is invalid".to_string(),
        },
        K::CannotMoveInsideItself => "cannot move a value into one of its own children".into(),
        K::InvalidPointer => {
            let for_add = matches!(op, Op::Add(_) | Op::Move(_) | Op::Copy(_));
            describe_pointer_failure(doc, path, for_add)
        }
        other => other.to_string(),
    };
    format!("json patch operation {index} ({name} \"{path}\") failed: {detail}")
}

/// Why a JSON pointer does not resolve in `doc`. With `for_add`, the last token names a
/// place to create (a new member, an index up to the length, or `-`), so only its parent has
/// to exist.
fn describe_pointer_failure(doc: &Value, pointer: &str, for_add: bool) -> String {
    if pointer.is_empty() {
        return "the whole document cannot be removed".to_string();
    }
    if !pointer.starts_with('/') {
        return format!("\"{pointer}\" is not a JSON pointer (it must start with '/')");
    }
    let tokens: Vec<String> = pointer[1..]
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let mut cur = doc;
    let mut walked = String::new();
    for (i, token) in tokens.iter().enumerate() {
        let last = i + 1 == tokens.len();
        let here = if walked.is_empty() { "/" } else { &walked };
        match cur {
            Value::Object(map) => match map.get(token) {
                Some(v) => cur = v,
                None if last && for_add => return format!("cannot add at \"{pointer}\""),
                None => {
                    return format!(
                        "\"{pointer}\" does not exist (no member \"{token}\" in {here})"
                    )
                }
            },
            Value::Array(items) => {
                let len = items.len();
                if token == "-" {
                    if last && for_add {
                        return format!("cannot append at \"{pointer}\"");
                    }
                    return format!("\"-\" (the end of {here}) names no element");
                }
                let index = match token.parse::<usize>() {
                    Ok(n) if token == "0" || !token.starts_with('0') => n,
                    _ => return format!("\"{token}\" is not a valid index into the list {here}"),
                };
                let limit = if last && for_add {
                    len
                } else {
                    len.saturating_sub(1)
                };
                if index > limit || (len == 0 && !(last && for_add)) {
                    return format!(
                        "index {index} is out of bounds of the list {here} (length {len})"
                    );
                }
                match items.get(index) {
                    Some(v) => cur = v,
                    None => return format!("cannot add at \"{pointer}\""),
                }
            }
            _ => {
                return format!(
                    "{here} is not an object or a list, so \"{pointer}\" does not exist"
                )
            }
        }
        walked.push('/');
        walked.push_str(&token.replace('~', "~0").replace('/', "~1"));
    }
    format!("\"{pointer}\" is invalid")
}

// ---------------------------------------------------------------------------------------------
// Strategic merge patch.
// ---------------------------------------------------------------------------------------------

const DIRECTIVE_MARKER: &str = "$patch";
const DELETE_DIRECTIVE: &str = "delete";
const REPLACE_DIRECTIVE: &str = "replace";
const MERGE_DIRECTIVE: &str = "merge";
const RETAIN_KEYS_DIRECTIVE: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST_PREFIX: &str = "$deleteFromPrimitiveList";
const SET_ELEMENT_ORDER_PREFIX: &str = "$setElementOrder";

/// How a strategic merge patch treats one list field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListStrategy<'a> {
    /// The patch's list replaces the live one (no `patchStrategy` tag: the default).
    Replace,
    /// A list of objects merged item by item, items matched by this key field
    /// (`patchStrategy:"merge" patchMergeKey:"<key>"`).
    MergeByKey(&'a str),
    /// A list of scalars merged as a set: the union, without duplicates
    /// (`patchStrategy:"merge"` without a key, as `metadata.finalizers`).
    MergeSet,
}

/// Answers, for a list field, how a strategic merge patch merges it. `path` holds the field
/// names from the object's root to the list, list items not counted: the env of a Deployment's
/// containers is `["spec", "template", "spec", "containers", "env"]`.
pub trait MergeKeys {
    fn list_strategy(&self, path: &[String]) -> ListStrategy<'_>;
}

impl<F> MergeKeys for F
where
    F: Fn(&[String]) -> ListStrategy<'static>,
{
    fn list_strategy(&self, path: &[String]) -> ListStrategy<'_> {
        self(path)
    }
}

/// Applies a strategic merge patch to an object, as kube-apiserver does for
/// `application/strategic-merge-patch+json`.
///
/// - Maps merge recursively; a `null` value deletes the key.
/// - Lists merge as `keys` says ([`ListStrategy`]); other lists and scalars are replaced.
/// - `$patch: replace` in a map replaces the map; `$patch: delete` empties it. In a merging
///   list, an item `{"<key>": v, "$patch": "delete"}` deletes the item(s) with that key and
///   `{"$patch": "replace"}` makes the patch's items replace the whole list.
/// - `$retainKeys: [..]` in a map drops the live keys not listed.
/// - `$deleteFromPrimitiveList/<list>: [..]` deletes those values from a list of scalars.
/// - `$setElementOrder/<list>: [..]` orders the merged list (by key or value).
///
/// New content (a key or list item absent from the target) is added without its `null`
/// members and without directives.
pub fn strategic_merge_patch(
    target: &Value,
    patch: &Value,
    keys: &dyn MergeKeys,
) -> Result<Value, PatchError> {
    let (Value::Object(original), Value::Object(patch)) = (target, patch) else {
        return Err(PatchError::bad("invalid JSON document"));
    };
    let mut path = Vec::new();
    let merged = merge_map(original.clone(), patch.clone(), keys, &mut path)?;
    Ok(Value::Object(merged))
}

/// [`strategic_merge_patch`] with the [`MergeKeyTable`] of a built-in kind.
pub fn strategic_merge_patch_for(
    kind: &str,
    target: &Value,
    patch: &Value,
) -> Result<Value, PatchError> {
    strategic_merge_patch(target, patch, &MergeKeyTable::for_kind(kind))
}

fn no_merge_key(item: &Value, key: &str) -> PatchError {
    PatchError::bad(format!(
        "map: {item} does not contain declared merge key: {key}"
    ))
}

fn bad_patch_type(directive: &Value, map: &Map<String, Value>) -> PatchError {
    let d = directive
        .as_str()
        .map_or_else(|| directive.to_string(), str::to_string);
    PatchError::bad(format!(
        "unknown patch type: {d} in map: {}",
        Value::Object(map.clone())
    ))
}

fn dotted(path: &[String]) -> String {
    path.join(".")
}

/// The part of a directive key after `<prefix>/`.
fn extract_key<'a>(key: &'a str, prefix: &str) -> Result<&'a str, PatchError> {
    match key.split_once('/') {
        Some((p, rest)) if p == prefix => Ok(rest),
        _ if prefix == DELETE_FROM_PRIMITIVE_LIST_PREFIX => {
            Err(PatchError::bad("invalid patch format of primitive list"))
        }
        _ => Err(PatchError::bad(
            "invalid patch format of setElementOrder list",
        )),
    }
}

fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    keys: &dyn MergeKeys,
    path: &mut Vec<String>,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(directive) = patch.get(DIRECTIVE_MARKER) {
        return match directive.as_str() {
            Some(REPLACE_DIRECTIVE) => {
                patch.remove(DIRECTIVE_MARKER);
                Ok(clean_map(patch))
            }
            Some(DELETE_DIRECTIVE) => Ok(Map::new()),
            _ => Err(bad_patch_type(directive, &patch)),
        };
    }

    apply_retain_keys(&mut original, &mut patch)?;
    apply_set_element_order(&mut original, &mut patch, keys, path)?;

    for (patch_key, patch_v) in patch {
        let (key, is_delete_list) = if patch_key.starts_with(DELETE_FROM_PRIMITIVE_LIST_PREFIX) {
            (
                extract_key(&patch_key, DELETE_FROM_PRIMITIVE_LIST_PREFIX)?.to_string(),
                true,
            )
        } else {
            (patch_key, false)
        };

        if patch_v.is_null() {
            original.remove(&key);
            continue;
        }

        let Some(original_v) = original.get_mut(&key) else {
            if !is_delete_list {
                if let Some(v) = clean(patch_v) {
                    original.insert(key, v);
                }
            }
            continue;
        };

        match (original_v, patch_v) {
            (Value::Object(o), Value::Object(p)) => {
                let o = std::mem::take(o);
                path.push(key.clone());
                let merged = merge_map(o, p, keys, path);
                path.pop();
                original.insert(key, Value::Object(merged?));
            }
            (Value::Array(o), Value::Array(p)) => {
                let o = std::mem::take(o);
                path.push(key.clone());
                let merged = merge_list_field(o, p, keys, path, is_delete_list);
                path.pop();
                original.insert(key, Value::Array(merged?));
            }
            (Value::Object(_), p) | (Value::Array(_), p) => {
                // Different types: the patch value replaces (unless it only lists deletions).
                if !is_delete_list {
                    match clean(p) {
                        Some(v) => original.insert(key, v),
                        None => original.remove(&key),
                    };
                }
            }
            (_, p @ (Value::Object(_) | Value::Array(_))) => {
                if !is_delete_list {
                    match clean(p) {
                        Some(v) => original.insert(key, v),
                        None => original.remove(&key),
                    };
                }
            }
            (slot, p) => *slot = p,
        }
    }
    Ok(original)
}

/// Merges a list field whose live and patch values are both lists, per its strategy.
fn merge_list_field(
    original: Vec<Value>,
    patch: Vec<Value>,
    keys: &dyn MergeKeys,
    path: &mut Vec<String>,
    is_delete_list: bool,
) -> Result<Vec<Value>, PatchError> {
    match keys.list_strategy(path) {
        ListStrategy::MergeByKey(key) => {
            let key = key.to_string();
            merge_list(original, patch, Some(&key), keys, path, is_delete_list)
        }
        ListStrategy::MergeSet => merge_list(original, patch, None, keys, path, is_delete_list),
        ListStrategy::Replace if is_delete_list => {
            merge_list(original, patch, None, keys, path, true)
        }
        ListStrategy::Replace => Ok(clean_list(patch)),
    }
}

/// The JSON type of list elements, for the checks kube-apiserver makes on merged lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ElementKind {
    Null,
    Bool,
    Number,
    String,
    Object,
}

fn element_kind(lists: &[&[Value]]) -> Result<Option<ElementKind>, PatchError> {
    let mut kind = None;
    for list in lists {
        for v in list.iter() {
            let k = match v {
                Value::Null => ElementKind::Null,
                Value::Bool(_) => ElementKind::Bool,
                Value::Number(_) => ElementKind::Number,
                Value::String(_) => ElementKind::String,
                Value::Object(_) => ElementKind::Object,
                Value::Array(_) => {
                    return Err(PatchError::new(
                        PatchErrorKind::Conflict,
                        "lists of lists are not supported",
                    ))
                }
            };
            match kind {
                None => kind = Some(k),
                Some(prev) if prev != k => {
                    return Err(PatchError::bad(format!(
                        "list element types are not identical: {} and {}",
                        Value::Array(lists[0].to_vec()),
                        Value::Array(lists.last().map(|l| l.to_vec()).unwrap_or_default())
                    )))
                }
                Some(_) => {}
            }
        }
    }
    Ok(kind)
}

/// Merges two lists that merge (by key, as a set, or as a deletion list), then orders the
/// result.
fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    merge_key: Option<&str>,
    keys: &dyn MergeKeys,
    path: &mut Vec<String>,
    is_delete_list: bool,
) -> Result<Vec<Value>, PatchError> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let kind = element_kind(&[&original, &patch])?.unwrap_or(ElementKind::Null);

    let (merged, patch, original) = if kind != ElementKind::Object {
        if is_delete_list {
            return Ok(original
                .into_iter()
                .filter(|v| !patch.contains(v))
                .collect());
        }
        let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
        for v in original.iter().chain(patch.iter()) {
            if !merged.contains(v) {
                merged.push(v.clone());
            }
        }
        (merged, patch, original)
    } else {
        let Some(merge_key) = merge_key else {
            return Err(PatchError::bad(format!(
                "cannot merge lists without merge key for {}",
                dotted(path)
            )));
        };
        let (original, patch) = apply_list_directives(original, patch, merge_key)?;
        let server_order = original.clone();
        let merged = merge_items_by_key(original, &patch, merge_key, keys, path)?;
        (merged, patch, server_order)
    };

    let key = if kind == ElementKind::Object {
        merge_key
    } else {
        None
    };
    let (patch_items, server_only) = partition_by_presence(merged, &patch, key)?;
    normalize_element_order(patch_items, server_only, &patch, &original, key)
}

/// Handles the `$patch` items of a list merged by key: `delete` removes the live items with
/// that key, `replace` makes the other patch items the whole list. Returns the live list to
/// merge into and the patch items left to merge.
fn apply_list_directives(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    merge_key: &str,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut rest = Vec::with_capacity(patch.len());
    let mut replace = false;
    for item in patch {
        let Some(directive) = item.get(DIRECTIVE_MARKER) else {
            rest.push(item);
            continue;
        };
        match directive.as_str() {
            Some(DELETE_DIRECTIVE) => {
                let Some(key_value) = item.get(merge_key) else {
                    return Err(no_merge_key(&item, merge_key));
                };
                for o in &original {
                    if !o.is_object() {
                        return Err(PatchError::bad(format!(
                            "value for key {merge_key} is not a map: {o}"
                        )));
                    }
                }
                original.retain(|o| o.get(merge_key) != Some(key_value));
            }
            Some(REPLACE_DIRECTIVE) => replace = true,
            Some(MERGE_DIRECTIVE) => {
                return Err(PatchError::bad(
                    "merging lists cannot yet be specified in the patch",
                ))
            }
            _ => {
                let map = item.as_object().cloned().unwrap_or_default();
                return Err(bad_patch_type(directive, &map));
            }
        }
    }
    if replace {
        Ok((clean_list(rest), Vec::new()))
    } else {
        Ok((original, rest))
    }
}

/// Merges each patch item into the live item with the same key, or appends it.
fn merge_items_by_key(
    mut original: Vec<Value>,
    patch: &[Value],
    merge_key: &str,
    keys: &dyn MergeKeys,
    path: &mut Vec<String>,
) -> Result<Vec<Value>, PatchError> {
    for item in patch {
        let Some(key_value) = item.get(merge_key) else {
            return Err(no_merge_key(item, merge_key));
        };
        let mut found = None;
        for (i, o) in original.iter().enumerate() {
            let Value::Object(o) = o else {
                return Err(PatchError::bad(format!("value for key {i} is not a map")));
            };
            if o.get(merge_key) == Some(key_value) {
                found = Some(i);
                break;
            }
        }
        match found {
            Some(i) => {
                let Value::Object(live) = std::mem::take(&mut original[i]) else {
                    unreachable!("checked above");
                };
                let Value::Object(p) = item.clone() else {
                    unreachable!("list elements are objects");
                };
                original[i] = Value::Object(merge_map(live, p, keys, path)?);
            }
            None => {
                if let Some(v) = clean(item.clone()) {
                    original.push(v);
                }
            }
        }
    }
    Ok(original)
}

/// The identity of a list element for ordering: its merge key's value, or itself.
fn identity<'v>(item: &'v Value, merge_key: Option<&str>) -> Option<&'v Value> {
    match merge_key {
        Some(k) => item.get(k),
        None => Some(item),
    }
}

fn position(list: &[Value], item: &Value, merge_key: Option<&str>) -> Option<usize> {
    let id = identity(item, merge_key);
    list.iter().position(|v| identity(v, merge_key) == id)
}

/// Splits `merged` into the items named in `by` and the others (server-only), keeping order.
fn partition_by_presence(
    merged: Vec<Value>,
    by: &[Value],
    merge_key: Option<&str>,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut named = Vec::new();
    let mut server_only = Vec::new();
    for v in merged {
        if let Some(k) = merge_key {
            if v.get(k).is_none() {
                return Err(no_merge_key(&v, k));
            }
        }
        if position(by, &v, merge_key).is_some() {
            named.push(v);
        } else {
            server_only.push(v);
        }
    }
    Ok((named, server_only))
}

/// Orders `patch_items` by `patch_order` and `server_only` by `server_order`, then interleaves
/// them: a server-only item goes before a patch item only when both are on the server and it
/// comes first there.
fn normalize_element_order(
    patch_items: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: Option<&str>,
) -> Result<Vec<Value>, PatchError> {
    let right = sort_by_order(patch_items, patch_order, merge_key)?;
    let left = sort_by_order(server_only, server_order, merge_key)?;
    let mut out = Vec::with_capacity(left.len() + right.len());
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => {
                match (
                    position(server_order, l, merge_key),
                    position(server_order, r, merge_key),
                ) {
                    (Some(li), Some(ri)) => li < ri,
                    _ => false,
                }
            }
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    Ok(out)
}

/// A stable sort by position in `order`; items not in `order` go last. For lists of objects,
/// every item must carry the merge key, and `$patch: delete` items go to the end.
fn sort_by_order(
    items: Vec<Value>,
    order: &[Value],
    merge_key: Option<&str>,
) -> Result<Vec<Value>, PatchError> {
    let mut deletes = Vec::new();
    let mut items = match merge_key {
        Some(k) => {
            for v in items.iter().chain(order.iter()) {
                if !v.is_object() {
                    return Err(PatchError::bad(format!(
                        "expected a map in a list merged by {k}, got {v}"
                    )));
                }
                if v.get(k).is_none() {
                    return Err(no_merge_key(v, k));
                }
            }
            let (del, keep): (Vec<Value>, Vec<Value>) = items.into_iter().partition(|v| {
                v.get(DIRECTIVE_MARKER).and_then(Value::as_str) == Some(DELETE_DIRECTIVE)
            });
            deletes = del;
            keep
        }
        None => items,
    };
    items.sort_by_key(|v| position(order, v, merge_key).unwrap_or(usize::MAX));
    items.extend(deletes);
    Ok(items)
}

/// `$retainKeys: [..]`: the live keys not listed are dropped; every key the patch sets must
/// be listed.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), PatchError> {
    let Some(retain) = patch.remove(RETAIN_KEYS_DIRECTIVE) else {
        return Ok(());
    };
    let Value::Array(retain) = retain else {
        return Err(PatchError::bad("invalid patch format of retainKeys"));
    };
    let listed = |k: &str| retain.iter().any(|v| v.as_str() == Some(k));
    for (k, v) in patch.iter() {
        if v.is_null()
            || k.starts_with(DELETE_FROM_PRIMITIVE_LIST_PREFIX)
            || k.starts_with(SET_ELEMENT_ORDER_PREFIX)
        {
            continue;
        }
        if !listed(k) {
            return Err(PatchError::bad(format!(
                "invalid patch format of retainKeys: \"{k}\" is set by the patch but not in $retainKeys"
            )));
        }
    }
    original.retain(|k, _| listed(k));
    Ok(())
}

/// `$setElementOrder/<list>: [..]`: merges `<list>` (when the patch has it) and orders the
/// result: items named in the directive in its order, server-only items kept in their
/// relative order among them. The list is then done: it is taken out of the patch.
fn apply_set_element_order(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    keys: &dyn MergeKeys,
    path: &mut Vec<String>,
) -> Result<(), PatchError> {
    let directives: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ELEMENT_ORDER_PREFIX))
        .cloned()
        .collect();
    for directive in directives {
        let order = patch.remove(&directive).unwrap_or_default();
        let field = extract_key(&directive, SET_ELEMENT_ORDER_PREFIX)?.to_string();
        let Value::Array(order) = order else {
            return Err(PatchError::bad(format!(
                "invalid patch format of setElementOrder list: {directive} must be a list"
            )));
        };
        let live = match original.get(&field) {
            None => None,
            Some(Value::Array(l)) => Some(l.clone()),
            Some(other) => {
                return Err(PatchError::bad(format!(
                    "{SET_ELEMENT_ORDER_PREFIX}/{field}: the live {field} is not a list: {other}"
                )))
            }
        };
        let patch_list = match patch.remove(&field) {
            None => None,
            Some(Value::Array(l)) => Some(l),
            Some(other) => {
                return Err(PatchError::bad(format!(
                    "{SET_ELEMENT_ORDER_PREFIX}/{field}: the patch's {field} is not a list: {other}"
                )))
            }
        };

        path.push(field.clone());
        let result = order_list_field(live, patch_list, &order, keys, path);
        path.pop();
        if let Some(list) = result? {
            original.insert(field, Value::Array(list));
        }
    }
    Ok(())
}

fn order_list_field(
    live: Option<Vec<Value>>,
    patch_list: Option<Vec<Value>>,
    order: &[Value],
    keys: &dyn MergeKeys,
    path: &mut Vec<String>,
) -> Result<Option<Vec<Value>>, PatchError> {
    let strategy = keys.list_strategy(path);
    let merge_key = match strategy {
        ListStrategy::MergeByKey(k) => Some(k.to_string()),
        _ => None,
    };
    let merge_key = merge_key.as_deref();
    check_order_matches_patch(patch_list.as_deref().unwrap_or_default(), order, merge_key)?;

    let server_order = live.clone().unwrap_or_default();
    let kind = element_kind(&[&server_order, patch_list.as_deref().unwrap_or_default()])?;
    let merged = match (live, patch_list) {
        (Some(live), None) => live,
        (None, Some(p)) => clean_list(p),
        (Some(live), Some(p)) => merge_list_field(live, p, keys, path, false)?,
        (None, None) => return Ok(None),
    };
    let key = if kind == Some(ElementKind::Object) {
        merge_key
    } else {
        None
    };
    let (named, server_only) = partition_by_presence(merged, order, key)?;
    normalize_element_order(named, server_only, order, &server_order, key).map(Some)
}

/// The patch's items (deletions aside) must appear in `$setElementOrder` in the same
/// relative order.
fn check_order_matches_patch(
    patch_list: &[Value],
    order: &[Value],
    merge_key: Option<&str>,
) -> Result<(), PatchError> {
    if patch_list.is_empty() || order.is_empty() {
        return Ok(());
    }
    let items: Vec<&Value> = match merge_key {
        Some(k) => {
            let mut kept = Vec::new();
            for v in patch_list {
                if !v.is_object() {
                    return Err(PatchError::bad(format!(
                        "expected a map in a list merged by {k}, got {v}"
                    )));
                }
                if v.get(DIRECTIVE_MARKER).and_then(Value::as_str) != Some(DELETE_DIRECTIVE) {
                    kept.push(v);
                }
            }
            kept
        }
        None => patch_list.iter().collect(),
    };
    let (mut pi, mut oi) = (0, 0);
    while pi < items.len() && oi < order.len() {
        if items[pi].get(DIRECTIVE_MARKER).is_some() {
            pi += 1;
            continue;
        }
        let equal = match merge_key {
            None => items[pi] == &order[oi],
            Some(k) => {
                let a = items[pi].get(k).ok_or_else(|| no_merge_key(items[pi], k))?;
                let b = order[oi]
                    .get(k)
                    .ok_or_else(|| no_merge_key(&order[oi], k))?;
                a == b
            }
        };
        if equal {
            pi += 1;
        }
        oi += 1;
    }
    if pi < items.len() && oi >= order.len() {
        return Err(PatchError::bad(format!(
            "The order in patch list:\n{}\n doesn't match {SET_ELEMENT_ORDER_PREFIX} list:\n{}\n",
            Value::Array(patch_list.to_vec()),
            Value::Array(order.to_vec())
        )));
    }
    Ok(())
}

/// Prepares patch content that is added as is (no live counterpart): `null` members are
/// dropped, maps marked `$patch: delete` (or with an unknown `$patch`) vanish, `$patch:
/// replace` markers and the `$retainKeys`, `$setElementOrder/..` and
/// `$deleteFromPrimitiveList/..` directives are removed. `None` means "nothing to add".
fn clean(v: Value) -> Option<Value> {
    match v {
        Value::Object(mut map) => {
            if let Some(d) = map.remove(DIRECTIVE_MARKER) {
                if d.as_str() != Some(REPLACE_DIRECTIVE) {
                    return None;
                }
            }
            Some(Value::Object(clean_map(map)))
        }
        Value::Array(items) => Some(Value::Array(clean_list(items))),
        other => Some(other),
    }
}

fn clean_map(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .filter(|(k, v)| {
            !v.is_null()
                && k != DIRECTIVE_MARKER
                && k != RETAIN_KEYS_DIRECTIVE
                && !k.starts_with(SET_ELEMENT_ORDER_PREFIX)
                && !k.starts_with(DELETE_FROM_PRIMITIVE_LIST_PREFIX)
        })
        .filter_map(|(k, v)| clean(v).map(|v| (k, v)))
        .collect()
}

fn clean_list(items: Vec<Value>) -> Vec<Value> {
    items.into_iter().filter_map(clean).collect()
}

// ---------------------------------------------------------------------------------------------
// The merge keys of the built-in kinds.
// ---------------------------------------------------------------------------------------------

use ListStrategy::{MergeByKey, MergeSet};

/// `metav1.ObjectMeta`.
const OBJECT_META: &[(&str, ListStrategy<'static>)] = &[
    ("ownerReferences", MergeByKey("uid")),
    ("finalizers", MergeSet),
];

/// `core/v1.Container` (and `EphemeralContainerCommon`, which has the same tags).
const CONTAINER: &[(&str, ListStrategy<'static>)] = &[
    ("ports", MergeByKey("containerPort")),
    ("env", MergeByKey("name")),
    ("volumeMounts", MergeByKey("mountPath")),
    ("volumeDevices", MergeByKey("devicePath")),
];

/// `core/v1.PodSpec`, apart from the container lists.
const POD_SPEC: &[(&str, ListStrategy<'static>)] = &[
    ("containers", MergeByKey("name")),
    ("initContainers", MergeByKey("name")),
    ("ephemeralContainers", MergeByKey("name")),
    ("volumes", MergeByKey("name")),
    ("imagePullSecrets", MergeByKey("name")),
    ("hostAliases", MergeByKey("ip")),
    ("topologySpreadConstraints", MergeByKey("topologyKey")),
    ("schedulingGates", MergeByKey("name")),
    ("resourceClaims", MergeByKey("name")),
];

const POD_CONTAINER_LISTS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];

/// `core/v1.PodStatus`.
const POD_STATUS: &[(&str, ListStrategy<'static>)] = &[
    ("conditions", MergeByKey("type")),
    ("podIPs", MergeByKey("ip")),
    ("hostIPs", MergeByKey("ip")),
    ("resourceClaimStatuses", MergeByKey("name")),
];

/// `core/v1.ContainerStatus`.
const CONTAINER_STATUS: &[(&str, ListStrategy<'static>)] = &[
    ("volumeMounts", MergeByKey("mountPath")),
    ("allocatedResourcesStatus", MergeByKey("name")),
];

const POD_CONTAINER_STATUS_LISTS: &[&str] = &[
    "containerStatuses",
    "initContainerStatuses",
    "ephemeralContainerStatuses",
];

/// Where a kind keeps a pod template (`metadata` + `spec`), if it has one.
fn pod_template_root(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "PodTemplate" => "template",
        "ReplicationController"
        | "Deployment"
        | "ReplicaSet"
        | "DaemonSet"
        | "StatefulSet"
        | "Job" => "spec.template",
        "CronJob" => "spec.jobTemplate.spec.template",
        _ => return None,
    })
}

/// Entries specific to a kind, besides its pod template and `metadata`.
fn kind_entries(kind: &str) -> &'static [(&'static str, ListStrategy<'static>)] {
    match kind {
        "ReplicationController"
        | "Deployment"
        | "ReplicaSet"
        | "DaemonSet"
        | "StatefulSet"
        | "Job"
        | "Namespace"
        | "PersistentVolumeClaim" => &[("status.conditions", MergeByKey("type"))],
        "Service" => &[
            ("spec.ports", MergeByKey("port")),
            ("status.conditions", MergeByKey("type")),
        ],
        "Node" => &[
            ("spec.podCIDRs", MergeSet),
            ("status.conditions", MergeByKey("type")),
            ("status.addresses", MergeByKey("type")),
        ],
        "ServiceAccount" => &[("secrets", MergeByKey("name"))],
        "ComponentStatus" => &[("conditions", MergeByKey("type"))],
        _ => &[],
    }
}

/// The strategic-merge list strategies of one kind, from the `patchStrategy` and
/// `patchMergeKey` tags of its Go type. Lists not in the table are replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeKeyTable {
    entries: Vec<(Vec<String>, ListStrategy<'static>)>,
}

impl MergeKeyTable {
    /// The table of a built-in kind (by `kind`, e.g. `"Deployment"`). Every kind gets the
    /// `metadata` entries; the kinds with a pod template get the pod spec's under it; Pod,
    /// Service, Node, the workload kinds, Namespace, PersistentVolumeClaim, ServiceAccount and
    /// ComponentStatus get their own. Other kinds (ConfigMap, Secret, ...) have no merging list
    /// beyond `metadata`. Custom resources do not take strategic merge patches at all:
    /// kube-apiserver answers 415 Unsupported Media Type, and so should the caller.
    pub fn for_kind(kind: &str) -> MergeKeyTable {
        let mut t = MergeKeyTable {
            entries: Vec::new(),
        };
        t.add_all("metadata", OBJECT_META);
        if kind == "Pod" {
            t.add_pod_spec("spec");
            t.add_all("status", POD_STATUS);
            for list in POD_CONTAINER_STATUS_LISTS {
                t.add_all(&format!("status.{list}"), CONTAINER_STATUS);
            }
        }
        if kind == "CronJob" {
            t.add_all("spec.jobTemplate.metadata", OBJECT_META);
        }
        if let Some(root) = pod_template_root(kind) {
            t.add_all(&format!("{root}.metadata"), OBJECT_META);
            t.add_pod_spec(&format!("{root}.spec"));
        }
        t.add_all("", kind_entries(kind));
        t
    }

    /// A table with the `metadata` entries only.
    pub fn metadata_only() -> MergeKeyTable {
        MergeKeyTable::for_kind("")
    }

    /// The entries, as dotted paths, for documentation and debugging.
    pub fn entries(&self) -> impl Iterator<Item = (String, ListStrategy<'static>)> + '_ {
        self.entries.iter().map(|(p, s)| (p.join("."), *s))
    }

    fn add_pod_spec(&mut self, root: &str) {
        self.add_all(root, POD_SPEC);
        for list in POD_CONTAINER_LISTS {
            self.add_all(&format!("{root}.{list}"), CONTAINER);
        }
    }

    fn add_all(&mut self, root: &str, entries: &[(&'static str, ListStrategy<'static>)]) {
        for (rel, strategy) in entries {
            let path = root
                .split('.')
                .chain(rel.split('.'))
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            self.entries.push((path, *strategy));
        }
    }
}

impl MergeKeys for MergeKeyTable {
    fn list_strategy(&self, path: &[String]) -> ListStrategy<'_> {
        self.entries
            .iter()
            .find(|(p, _)| p.len() == path.len() && p.iter().zip(path).all(|(a, b)| a == b))
            .map_or(ListStrategy::Replace, |(_, s)| *s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(kind: &str, target: Value, patch: Value) -> Value {
        strategic_merge_patch(&target, &patch, &MergeKeyTable::for_kind(kind))
            .unwrap_or_else(|e| panic!("strategic merge patch failed: {e}"))
    }

    fn smp_err(kind: &str, target: Value, patch: Value) -> PatchError {
        strategic_merge_patch(&target, &patch, &MergeKeyTable::for_kind(kind))
            .map(|v| panic!("expected an error, got {v}"))
            .unwrap_err()
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "labels": {"app": "web", "tier": "front"},
                "finalizers": ["a.example.com/x"]
            },
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "c1",
                                "image": "nginx:1",
                                "ports": [{"containerPort": 80}],
                                "env": [{"name": "A", "value": "1"}]
                            },
                            {"name": "sidecar", "image": "busybox"}
                        ],
                        "tolerations": [{"key": "k1", "operator": "Exists"}]
                    }
                }
            }
        })
    }

    // --- merge patch ---------------------------------------------------------------------

    #[test]
    fn merge_patch_merges_and_deletes() {
        let out = merge_patch(
            &deployment(),
            &json!({"metadata": {"labels": {"tier": null, "new": "x"}}, "spec": {"replicas": 3}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "new": "x"}));
        assert_eq!(out["spec"]["replicas"], 3);
        // Lists are replaced wholesale.
        let out = merge_patch(
            &deployment(),
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "only"}]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only"}])
        );
    }

    #[test]
    fn merge_patch_edge_cases() {
        // A non-object patch replaces the document.
        assert_eq!(merge_patch(&json!({"a": 1}), &json!([1, 2])), json!([1, 2]));
        // An object patch over a non-object builds an object.
        assert_eq!(merge_patch(&json!("x"), &json!({"a": 1})), json!({"a": 1}));
        // Nulls inside new members are dropped; deleting a missing key is a no-op.
        assert_eq!(
            merge_patch(&json!({}), &json!({"a": {"b": null, "c": 1}, "d": null})),
            json!({"a": {"c": 1}})
        );
        // An empty patch changes nothing.
        assert_eq!(merge_patch(&deployment(), &json!({})), deployment());
    }

    // --- JSON patch ----------------------------------------------------------------------

    #[test]
    fn json_patch_operations() {
        let doc = json!({"a": {"b": 1}, "list": [1, 2]});
        let out = json_patch(
            &doc,
            &json!([
                {"op": "test", "path": "/a/b", "value": 1},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "add", "path": "/list/0", "value": 0},
                {"op": "replace", "path": "/a/b", "value": 2},
                {"op": "copy", "from": "/a", "path": "/c"},
                {"op": "move", "from": "/c/b", "path": "/d"},
                {"op": "remove", "path": "/list/1"}
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"a": {"b": 2}, "c": {}, "d": 2, "list": [0, 2, 3]})
        );
    }

    #[test]
    fn json_patch_test_failure_is_an_error_and_changes_nothing() {
        let doc = json!({"spec": {"replicas": 1}});
        let e = json_patch(
            &doc,
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 5},
                {"op": "test", "path": "/spec/replicas", "value": 2}
            ]),
        )
        .unwrap_err();
        assert_eq!(e.kind(), PatchErrorKind::Unprocessable);
        assert_eq!(e.http_status(), 422);
        assert_eq!(
            e.message(),
            "json patch operation 1 (test \"/spec/replicas\") failed: test failed: the value is 5, expected 2"
        );
        assert_eq!(doc, json!({"spec": {"replicas": 1}}));
    }

    #[test]
    fn json_patch_missing_paths() {
        let doc = json!({"metadata": {"labels": {"a": "b"}}, "list": [1]});
        let e = json_patch(
            &doc,
            &json!([{"op": "remove", "path": "/metadata/labels/x"}]),
        )
        .unwrap_err();
        assert_eq!(
            e.message(),
            "json patch operation 0 (remove \"/metadata/labels/x\") failed: \"/metadata/labels/x\" does not exist (no member \"x\" in /metadata/labels)"
        );
        let e = json_patch(
            &doc,
            &json!([{"op": "replace", "path": "/spec/x", "value": 1}]),
        )
        .unwrap_err();
        assert!(e.message().contains("no member \"spec\" in /"), "{e}");
        let e =
            json_patch(&doc, &json!([{"op": "add", "path": "/spec/x", "value": 1}])).unwrap_err();
        assert!(e.message().contains("no member \"spec\""), "{e}");
        let e =
            json_patch(&doc, &json!([{"op": "add", "path": "/list/5", "value": 1}])).unwrap_err();
        assert!(
            e.message()
                .contains("index 5 is out of bounds of the list /list (length 1)"),
            "{e}"
        );
        let e = json_patch(&doc, &json!([{"op": "remove", "path": "/list/-"}])).unwrap_err();
        assert!(e.message().contains("names no element"), "{e}");
        let e = json_patch(
            &doc,
            &json!([{"op": "move", "from": "/nope", "path": "/x"}]),
        )
        .unwrap_err();
        assert!(
            e.message()
                .contains("\"from\" path \"/nope\" does not exist"),
            "{e}"
        );
        let e = json_patch(
            &doc,
            &json!([{"op": "move", "from": "/metadata", "path": "/metadata/x"}]),
        )
        .unwrap_err();
        assert!(e.message().contains("own children"), "{e}");
        // Adding at the end index or a new member works.
        let out = json_patch(
            &doc,
            &json!([
                {"op": "add", "path": "/list/1", "value": 2},
                {"op": "add", "path": "/metadata/labels/x~1y", "value": "z"}
            ]),
        )
        .unwrap();
        assert_eq!(out["list"], json!([1, 2]));
        assert_eq!(out["metadata"]["labels"]["x/y"], "z");
    }

    #[test]
    fn json_patch_malformed() {
        let doc = json!({});
        let e = json_patch(&doc, &json!({"op": "add"})).unwrap_err();
        assert_eq!(e.kind(), PatchErrorKind::BadRequest);
        let e = json_patch(&doc, &json!([{"op": "frobnicate", "path": "/a"}])).unwrap_err();
        assert_eq!(e.kind(), PatchErrorKind::BadRequest);
        assert!(e.message().starts_with("invalid JSON patch: "), "{e}");
        let e = json_patch(&doc, &json!([{"op": "add", "path": "/a"}])).unwrap_err();
        assert_eq!(e.kind(), PatchErrorKind::BadRequest);
        let many: Vec<Value> = (0..=MAX_JSON_PATCH_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "", "value": {}}))
            .collect();
        let e = json_patch(&doc, &Value::Array(many)).unwrap_err();
        assert_eq!(e.http_status(), 413);
    }

    // --- strategic merge patch -----------------------------------------------------------

    fn containers(v: &Value) -> &Value {
        &v["spec"]["template"]["spec"]["containers"]
    }

    #[test]
    fn smp_container_image_by_name_keeps_the_others() {
        let out = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c1", "image": "nginx:2"}]}}}}),
        );
        assert_eq!(
            containers(&out),
            &json!([
                {
                    "name": "c1",
                    "image": "nginx:2",
                    "ports": [{"containerPort": 80}],
                    "env": [{"name": "A", "value": "1"}]
                },
                {"name": "sidecar", "image": "busybox"}
            ])
        );
        // The rest of the object is untouched.
        assert_eq!(out["metadata"], deployment()["metadata"]);
    }

    #[test]
    fn smp_env_var_added_and_changed() {
        let out = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{
                "name": "c1",
                "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "one"}]
            }]}}}}),
        );
        assert_eq!(
            containers(&out)[0]["env"],
            json!([{"name": "B", "value": "2"}, {"name": "A", "value": "one"}])
        );
        // A port by containerPort is merged, not duplicated.
        let out = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{
                "name": "c1",
                "ports": [{"containerPort": 80, "name": "http"}]
            }]}}}}),
        );
        assert_eq!(
            containers(&out)[0]["ports"],
            json!([{"containerPort": 80, "name": "http"}])
        );
    }

    #[test]
    fn smp_new_items_come_before_server_only_ones() {
        // As kube-apiserver orders them: patch items first unless the server orders them.
        let out = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "new", "image": "x"}]}}}}),
        );
        let names: Vec<&str> = containers(&out)
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["new", "c1", "sidecar"]);
    }

    #[test]
    fn smp_patch_delete_removes_a_container() {
        let out = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "sidecar", "$patch": "delete"}
            ]}}}}),
        );
        assert_eq!(containers(&out).as_array().unwrap().len(), 1);
        assert_eq!(containers(&out)[0]["name"], "c1");
        // Deleting an item that does not exist is fine.
        let out = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "ghost", "$patch": "delete"}
            ]}}}}),
        );
        assert_eq!(containers(&out), containers(&deployment()));
        // A delete item needs the merge key.
        let e = smp_err(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{"$patch": "delete"}]}}}}),
        );
        assert!(
            e.message()
                .contains("does not contain declared merge key: name"),
            "{e}"
        );
    }

    #[test]
    fn smp_patch_replace_in_list_and_map() {
        let out = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [
                {"$patch": "replace"},
                {"name": "solo", "image": "alpine", "env": [{"name": "X", "value": null}]}
            ]}}}}),
        );
        assert_eq!(
            containers(&out),
            &json!([{"name": "solo", "image": "alpine", "env": [{"name": "X"}]}])
        );

        let out = smp(
            "Deployment",
            deployment(),
            json!({"metadata": {"labels": {"$patch": "replace", "only": "this"}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"only": "this"}));

        let out = smp(
            "Deployment",
            deployment(),
            json!({"metadata": {"labels": {"$patch": "delete"}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({}));

        let e = smp_err(
            "Deployment",
            deployment(),
            json!({"metadata": {"labels": {"$patch": "bogus"}}}),
        );
        assert!(
            e.message().starts_with("unknown patch type: bogus in map"),
            "{e}"
        );
        let e = smp_err(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{"$patch": "merge"}]}}}}),
        );
        assert_eq!(
            e.message(),
            "merging lists cannot yet be specified in the patch"
        );
    }

    #[test]
    fn smp_null_removes_a_label() {
        let out = smp(
            "Deployment",
            deployment(),
            json!({"metadata": {"labels": {"tier": null, "missing": null}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
        // Null removes a field of a merged list item.
        let out = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c1", "ports": null}]}}}}),
        );
        assert!(containers(&out)[0].get("ports").is_none());
    }

    #[test]
    fn smp_set_element_order_reorders() {
        let out = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "c1"}]
            }}}}),
        );
        assert_eq!(
            containers(&out),
            &json!([
                {"name": "sidecar", "image": "busybox"},
                {
                    "name": "c1",
                    "image": "nginx:1",
                    "ports": [{"containerPort": 80}],
                    "env": [{"name": "A", "value": "1"}]
                }
            ])
        );
    }

    #[test]
    fn smp_set_element_order_with_additions_and_server_only_items() {
        let keys = |p: &[String]| {
            if p == ["list"] {
                ListStrategy::MergeByKey("name")
            } else {
                ListStrategy::Replace
            }
        };
        // A kubectl-apply-style patch: add 3 and 4 at given places.
        let target = json!({"list": [{"name": 1, "other": "a"}, {"name": 2, "value": 2}]});
        let patch = json!({
            "$setElementOrder/list": [{"name": 1}, {"name": 4}, {"name": 2}, {"name": 3}],
            "list": [{"name": 4, "value": 4}, {"name": 3, "value": 3}]
        });
        let out = strategic_merge_patch(&target, &patch, &keys).unwrap();
        assert_eq!(
            out,
            json!({"list": [
                {"name": 1, "other": "a"},
                {"name": 4, "value": 4},
                {"name": 2, "value": 2},
                {"name": 3, "value": 3}
            ]})
        );
        // Server-only items keep their place relative to the ones before them.
        let target = json!({"list": [
            {"name": 1}, {"name": 2}, {"name": 7}, {"name": 9}, {"name": 8}, {"name": 3}, {"name": 4}
        ]});
        let patch = json!({
            "$setElementOrder/list": [{"name": 2}, {"name": 1}, {"name": 4}, {"name": 3}]
        });
        let out = strategic_merge_patch(&target, &patch, &keys).unwrap();
        let names: Vec<i64> = out["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_i64().unwrap())
            .collect();
        assert_eq!(names, [2, 1, 7, 9, 8, 4, 3]);
        // The patch list must follow the directive's order.
        let e = strategic_merge_patch(
            &json!({"list": [{"name": 1}, {"name": 3}, {"name": 2}]}),
            &json!({
                "$setElementOrder/list": [{"name": 1}, {"name": 2}, {"name": 3}],
                "list": [{"name": 3, "v": 3}, {"name": 1, "v": 1}]
            }),
            &keys,
        )
        .unwrap_err();
        assert!(
            e.message().contains("doesn't match $setElementOrder list"),
            "{e}"
        );
    }

    #[test]
    fn smp_kubectl_apply_style_removal_and_volume_source_change() {
        let mut d = deployment();
        d["spec"]["template"]["spec"]["volumes"] =
            json!([{"name": "data", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "a"}}]);
        // A container dropped from the applied configuration, and a volume whose source
        // changes kind (which kubectl sends with $retainKeys).
        let out = smp(
            "Deployment",
            d,
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "c1"}],
                "containers": [{"$patch": "delete", "name": "sidecar"}],
                "$setElementOrder/volumes": [{"name": "cfg"}, {"name": "data"}],
                "volumes": [{
                    "$retainKeys": ["hostPath", "name"],
                    "name": "data",
                    "hostPath": {"path": "/srv"},
                    "emptyDir": null
                }]
            }}}}),
        );
        let spec = &out["spec"]["template"]["spec"];
        assert_eq!(spec["containers"].as_array().unwrap().len(), 1);
        assert_eq!(spec["containers"][0]["name"], "c1");
        assert_eq!(
            spec["volumes"],
            json!([
                {"name": "cfg", "configMap": {"name": "a"}},
                {"name": "data", "hostPath": {"path": "/srv"}}
            ])
        );
    }

    #[test]
    fn smp_set_element_order_edge_cases() {
        let keys = |p: &[String]| {
            if p == ["list"] {
                ListStrategy::MergeByKey("name")
            } else {
                ListStrategy::Replace
            }
        };
        // The directive may name items that exist nowhere: they are skipped.
        let out = strategic_merge_patch(
            &json!({"list": [{"name": 1}, {"name": 3}]}),
            &json!({
                "$setElementOrder/list": [{"name": 3}, {"name": 2}, {"name": 1}],
                "list": [{"name": 3, "value": 3}, {"name": 1, "value": 1}]
            }),
            &keys,
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"list": [{"name": 3, "value": 3}, {"name": 1, "value": 1}]})
        );
        // A list new to the object is taken from the patch, without its deletions.
        let out = strategic_merge_patch(
            &json!({"other": 1}),
            &json!({
                "$setElementOrder/list": [{"name": "a"}, {"name": "b"}],
                "list": [{"name": "a"}, {"name": "b"}, {"name": "gone", "$patch": "delete"}]
            }),
            &keys,
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"other": 1, "list": [{"name": "a"}, {"name": "b"}]})
        );
        // Without the list anywhere, the directive does nothing.
        let out = strategic_merge_patch(
            &json!({"other": 1}),
            &json!({"$setElementOrder/list": [{"name": "a"}]}),
            &keys,
        )
        .unwrap();
        assert_eq!(out, json!({"other": 1}));
        let e =
            strategic_merge_patch(&json!({}), &json!({"$setElementOrder": []}), &keys).unwrap_err();
        assert_eq!(e.message(), "invalid patch format of setElementOrder list");
    }

    #[test]
    fn smp_set_element_order_for_scalars() {
        let keys = |p: &[String]| {
            if p == ["ints"] {
                ListStrategy::MergeSet
            } else {
                ListStrategy::Replace
            }
        };
        let out = strategic_merge_patch(
            &json!({"ints": [1, 2, 4]}),
            &json!({"$setElementOrder/ints": [1, 2, 3], "ints": [3]}),
            &keys,
        )
        .unwrap();
        assert_eq!(out, json!({"ints": [1, 2, 3, 4]}));
    }

    #[test]
    fn smp_finalizers_merge_as_a_set_and_delete_from_primitive_list() {
        let out = smp(
            "Deployment",
            deployment(),
            json!({"metadata": {"finalizers": ["b.example.com/y", "a.example.com/x"]}}),
        );
        assert_eq!(
            out["metadata"]["finalizers"],
            json!(["b.example.com/y", "a.example.com/x"])
        );
        let out = smp(
            "Deployment",
            out,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a.example.com/x", "zzz"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b.example.com/y"]));
        // On a missing list, a deletion list adds nothing.
        let out = smp(
            "ConfigMap",
            json!({"metadata": {"name": "c"}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
        );
        assert_eq!(out, json!({"metadata": {"name": "c"}}));
        // It also works on a list that is otherwise replaced.
        let out = smp(
            "ConfigMap",
            json!({"args": ["a", "b", "c"]}),
            json!({"$deleteFromPrimitiveList/args": ["b"]}),
        );
        assert_eq!(out, json!({"args": ["a", "c"]}));
    }

    #[test]
    fn smp_non_merging_lists_are_replaced() {
        let out = smp(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"tolerations": [{"key": "k2", "operator": "Exists"}]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "k2", "operator": "Exists"}])
        );
        // Without a table entry (a ConfigMap has none) containers would be replaced too.
        let out = smp(
            "ConfigMap",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}}),
        );
        assert_eq!(containers(&out), &json!([{"name": "a", "image": "x"}]));
    }

    #[test]
    fn smp_retain_keys() {
        let mut d = deployment();
        d["spec"]["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}});
        let out = smp(
            "Deployment",
            d.clone(),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let e = smp_err(
            "Deployment",
            d,
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}}),
        );
        assert!(
            e.message()
                .starts_with("invalid patch format of retainKeys"),
            "{e}"
        );
    }

    #[test]
    fn smp_pod_and_other_kinds() {
        let pod = json!({
            "metadata": {"name": "p", "ownerReferences": [{"uid": "u1", "name": "rs"}]},
            "spec": {
                "containers": [{"name": "c", "volumeMounts": [{"mountPath": "/a", "name": "v"}]}],
                "volumes": [{"name": "v", "emptyDir": {}}]
            },
            "status": {"conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "PodScheduled", "status": "True"}
            ]}
        });
        let out = smp(
            "Pod",
            pod,
            json!({
                "metadata": {"ownerReferences": [{"uid": "u1", "controller": true}]},
                "spec": {
                    "containers": [{"name": "c", "volumeMounts": [{"mountPath": "/b", "name": "w"}]}],
                    "volumes": [{"name": "w", "configMap": {"name": "cm"}}]
                },
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}
            }),
        );
        assert_eq!(
            out["metadata"]["ownerReferences"],
            json!([{"uid": "u1", "name": "rs", "controller": true}])
        );
        assert_eq!(
            out["spec"]["containers"][0]["volumeMounts"],
            json!([{"mountPath": "/b", "name": "w"}, {"mountPath": "/a", "name": "v"}])
        );
        assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 2);
        assert_eq!(
            out["status"]["conditions"],
            json!([
                {"type": "Ready", "status": "True"},
                {"type": "PodScheduled", "status": "True"}
            ])
        );

        let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
        let out = smp(
            "Service",
            svc,
            json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
        );
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090}, {"port": 443}])
        );

        let node =
            json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}});
        let out = smp(
            "Node",
            node,
            json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}]}}),
        );
        assert_eq!(out["status"]["addresses"].as_array().unwrap().len(), 2);

        let cj = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]
        }}}}}});
        let out = smp(
            "CronJob",
            cj,
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
                "containers": [{"name": "b", "image": "2"}]
            }}}}}}),
        );
        assert_eq!(
            out["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "1"}, {"name": "b", "image": "2"}])
        );
    }

    #[test]
    fn smp_new_content_is_cleaned_and_types_replace() {
        let out = smp(
            "Deployment",
            deployment(),
            json!({"spec": {
                "paused": true,
                "strategy": {"type": "Recreate", "rollingUpdate": null},
                "template": {"spec": {"containers": [
                    {"name": "n", "image": "x", "env": null, "$setElementOrder/env": []}
                ]}}
            }}),
        );
        assert_eq!(out["spec"]["paused"], true);
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(containers(&out)[0], json!({"name": "n", "image": "x"}));
        // A scalar over a map (and the reverse) replaces.
        let out = smp("ConfigMap", json!({"a": {"b": 1}}), json!({"a": "s"}));
        assert_eq!(out, json!({"a": "s"}));
        let out = smp(
            "ConfigMap",
            json!({"a": "s"}),
            json!({"a": {"b": 1, "c": null}}),
        );
        assert_eq!(out, json!({"a": {"b": 1}}));
    }

    #[test]
    fn smp_errors() {
        let e = strategic_merge_patch(&json!({}), &json!([1]), &MergeKeyTable::metadata_only())
            .unwrap_err();
        assert_eq!(e.message(), "invalid JSON document");
        let e = smp_err(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
        );
        assert!(
            e.message()
                .contains("does not contain declared merge key: name"),
            "{e}"
        );
        let e = smp_err(
            "Node",
            json!({"spec": {"podCIDRs": [["a"]]}}),
            json!({"spec": {"podCIDRs": [["b"]]}}),
        );
        assert_eq!(e.kind(), PatchErrorKind::Conflict);
        let e = smp_err(
            "Node",
            json!({"spec": {"podCIDRs": [{"a": 1}]}}),
            json!({"spec": {"podCIDRs": [{"b": 1}]}}),
        );
        assert!(e
            .message()
            .starts_with("cannot merge lists without merge key for spec.podCIDRs"));
    }

    #[test]
    fn smp_kubectl_apply_patch_from_the_reference_log() {
        // What `kubectl apply` sent (client-side apply) to scale the Deployment.
        let patch = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}\n"}},
            "spec": {"replicas": 2}
        });
        let out = smp("Deployment", deployment(), patch);
        assert_eq!(out["spec"]["replicas"], 2);
        assert_eq!(
            out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
            "{}\n"
        );
        assert_eq!(containers(&out), containers(&deployment()));
    }

    #[test]
    fn merge_key_table_lookups() {
        let t = MergeKeyTable::for_kind("Deployment");
        let p = |s: &str| s.split('.').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            t.list_strategy(&p("spec.template.spec.containers")),
            ListStrategy::MergeByKey("name")
        );
        assert_eq!(
            t.list_strategy(&p("spec.template.spec.initContainers.env")),
            ListStrategy::MergeByKey("name")
        );
        assert_eq!(
            t.list_strategy(&p("spec.template.spec.containers.ports")),
            ListStrategy::MergeByKey("containerPort")
        );
        assert_eq!(
            t.list_strategy(&p("spec.template.spec.tolerations")),
            ListStrategy::Replace
        );
        assert_eq!(
            t.list_strategy(&p("spec.template.spec.containers.envFrom")),
            ListStrategy::Replace
        );
        assert_eq!(
            t.list_strategy(&p("metadata.finalizers")),
            ListStrategy::MergeSet
        );
        assert_eq!(
            t.list_strategy(&p("status.conditions")),
            ListStrategy::MergeByKey("type")
        );
        assert_eq!(
            t.list_strategy(&p("spec.containers")),
            ListStrategy::Replace
        );
        let pod = MergeKeyTable::for_kind("Pod");
        assert_eq!(
            pod.list_strategy(&p("spec.containers")),
            ListStrategy::MergeByKey("name")
        );
        assert_eq!(
            pod.list_strategy(&p("status.containerStatuses.volumeMounts")),
            ListStrategy::MergeByKey("mountPath")
        );
        assert_eq!(
            MergeKeyTable::for_kind("CronJob")
                .list_strategy(&p("spec.jobTemplate.spec.template.spec.volumes")),
            ListStrategy::MergeByKey("name")
        );
        assert!(MergeKeyTable::for_kind("ConfigMap").entries().count() == 2);
    }
}
