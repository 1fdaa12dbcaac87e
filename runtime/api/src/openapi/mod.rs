//! OpenAPI as clients read it, from the resource table and the schemas of `definitions`:
//!
//! - `GET /openapi/v3` lists one document per served group/version (built-in and custom);
//!   `GET /openapi/v3/api/v1` and `/openapi/v3/apis/<group>/<version>` serve them.
//! - `GET /openapi/v2` serves the whole Swagger 2.0 document, as JSON or in gnostic's
//!   protobuf form (see `v2`).
//!
//! What clients use them for:
//! - `kubectl apply` (validation on) looks for the `fieldValidation` query parameter on the
//!   PATCH operation carrying the kind's `x-kubernetes-group-version-kind`; when it is there
//!   kubectl lets the server validate (`?fieldValidation=Strict`).
//! - `kubectl apply` computes strategic merge patches from the v3 schema (merge keys and
//!   strategies) when the PATCH operation offers `application/strategic-merge-patch+json`:
//!   built-in kinds offer it, custom resources (which have no merge keys) do not.
//! - `kubectl explain` finds the kind through the definitions' GVK and prints the schema
//!   with its descriptions (v3 by default, v2 with `--output=plaintext-openapiv2`).
//!
//! Documents are built on first use and cached until a CustomResourceDefinition changes.

pub mod definitions;
mod paths;
pub mod v2;

use super::resources::{self, Resource};
use super::status::ApiError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

/// `api/v1` or `apis/<group>/<version>`: the key of a document under `/openapi/v3/`.
pub fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The component name kube gives a kind: `io.k8s.api.core.v1.ConfigMap`,
/// `io.k8s.api.apps.v1.Deployment`, ...
pub fn schema_name(group: &str, version: &str, kind: &str) -> String {
    match group {
        "" => format!("io.k8s.api.core.{version}.{kind}"),
        "apiextensions.k8s.io" => {
            format!("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{version}.{kind}")
        }
        "apiregistration.k8s.io" => {
            format!("io.k8s.kube-aggregator.pkg.apis.apiregistration.{version}.{kind}")
        }
        g if g.ends_with(".k8s.io") || !g.contains('.') => {
            let package = g.split('.').next().unwrap_or(g);
            format!("io.k8s.api.{package}.{version}.{kind}")
        }
        // Other groups as their reversed domain, as CRD schemas are named.
        g => {
            let reversed: Vec<&str> = g.split('.').rev().collect();
            format!("{}.{version}.{kind}", reversed.join("."))
        }
    }
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

/// The served resources of one group/version, built-in and custom.
fn resources_of(group: &str, version: &str) -> Vec<&'static Resource> {
    resources::all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect()
}

/// The definitions one group/version's operations refer to.
fn roots(resources: &[&'static Resource]) -> Vec<String> {
    let mut roots: Vec<String> = ["Status", "DeleteOptions", "Patch", "WatchEvent"]
        .iter()
        .map(|k| format!("{META}.{k}"))
        .collect();
    for r in resources {
        let name = schema_name(r.group, r.version, r.kind);
        roots.push(format!("{name}List"));
        roots.push(name);
        if r.subresources.contains(&"scale") {
            roots.push("io.k8s.api.autoscaling.v1.Scale".into());
        }
        if r.group.is_empty() && r.kind == "Pod" {
            roots.push("io.k8s.api.core.v1.Binding".into());
            roots.push("io.k8s.api.policy.v1.Eviction".into());
        }
    }
    roots
}

/// Every definition, with the custom resources' and the GVKs kube-apiserver gives the
/// bodies every group/version shares.
fn all_definitions() -> Map<String, Value> {
    let mut defs = v2::all_definitions();
    let shared: Vec<Value> = resources::group_versions()
        .into_iter()
        .flat_map(|(g, v)| [gvk(g, v, "DeleteOptions"), gvk(g, v, "WatchEvent")])
        .collect();
    for (name, kind) in [
        ("DeleteOptions", "DeleteOptions"),
        ("WatchEvent", "WatchEvent"),
    ] {
        if let Some(d) = defs.get_mut(&format!("{META}.{name}")) {
            let list: Vec<Value> = shared
                .iter()
                .filter(|x| x["kind"] == kind)
                .cloned()
                .collect();
            d["x-kubernetes-group-version-kind"] = Value::Array(list);
        }
    }
    if let Some(d) = defs.get_mut(&format!("{META}.Status")) {
        d["x-kubernetes-group-version-kind"] = json!([gvk("", "v1", "Status")]);
    }
    defs
}

/// The OpenAPI 3.0 document of one group/version, or None when it is not served.
fn document_from(defs: &Map<String, Value>, group: &str, version: &str) -> Option<Value> {
    let resources = resources_of(group, version);
    if resources.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    for r in &resources {
        paths::resource_paths(r, &mut paths);
    }
    let schemas: Map<String, Value> = definitions::closure(defs, &roots(&resources))
        .into_iter()
        .map(|(n, s)| (n, definitions::to_v3(&s)))
        .collect();
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": super::version()["gitVersion"]},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}},
        },
        "security": [{"BearerToken": []}],
    }))
}

/// The v3 document of one group/version (tests and callers that want it as a value).
pub fn document(group: &str, version: &str) -> Option<Value> {
    document_from(&all_definitions(), group, version)
}

struct Documents {
    /// The CRD generation they were built for.
    generation: u64,
    root: Vec<u8>,
    /// `api/v1` → (document bytes, hash)
    by_path: BTreeMap<String, (Vec<u8>, String)>,
    /// The v2 document as JSON and as protobuf.
    v2_json: Vec<u8>,
    v2_protobuf: Vec<u8>,
}

fn build() -> Documents {
    let generation = definitions::custom_generation();
    let defs = all_definitions();
    let mut by_path = BTreeMap::new();
    let mut root = Map::new();
    let mut all_paths = Map::new();
    for (g, v) in resources::group_versions() {
        let Some(doc) = document_from(&defs, g, v) else {
            continue;
        };
        if let Some(p) = doc["paths"].as_object() {
            all_paths.extend(p.clone());
        }
        let bytes = serde_json::to_vec(&doc).unwrap_or_default();
        let hash = hex::encode_upper(Sha256::digest(&bytes));
        let path = group_version_path(g, v);
        root.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
        );
        by_path.insert(path, (bytes, hash));
    }
    let served: Vec<&'static Resource> = resources::all();
    let v2_defs = definitions::closure(&defs, &roots(&served));
    let version = super::version()["gitVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let v2_doc = v2::document(&all_paths, v2_defs, &version);
    Documents {
        generation,
        root: serde_json::to_vec(&json!({"paths": root})).unwrap_or_default(),
        by_path,
        v2_json: serde_json::to_vec(&v2_doc).unwrap_or_default(),
        v2_protobuf: v2::protobuf(&v2_doc),
    }
}

/// The documents, rebuilt when a CRD changed since they were built.
fn documents() -> Arc<Documents> {
    static DOCS: Mutex<Option<Arc<Documents>>> = Mutex::new(None);
    let mut docs = DOCS.lock().unwrap_or_else(|e| e.into_inner());
    match &*docs {
        Some(d) if d.generation == definitions::custom_generation() => d.clone(),
        _ => {
            let built = Arc::new(build());
            *docs = Some(built.clone());
            built
        }
    }
}

/// The discovery document of `GET /openapi/v3`.
pub fn root() -> Value {
    serde_json::from_slice(&documents().root).unwrap_or(Value::Null)
}

/// The media type clients ask for the protobuf v2 document with.
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
/// The media type it is answered with: `@` is not allowed in a media type, so clients that
/// parse the answer's Content-Type (Go's `mime`) need kube-openapi's spelling.
pub const V2_PROTOBUF_CONTENT_TYPE: &str =
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Answers `GET /openapi/v2`: protobuf when the client accepts it (kubectl, Helm), else
/// JSON, with an ETag for `If-None-Match`.
pub fn serve_v2(accept: Option<&str>, if_none_match: Option<&str>) -> Response {
    let docs = documents();
    let protobuf = accept.is_some_and(|a| {
        a.split(',')
            .map(|t| t.split(';').next().unwrap_or("").trim())
            .any(|t| t == V2_PROTOBUF || t == V2_PROTOBUF_CONTENT_TYPE)
    });
    let (bytes, content_type) = if protobuf {
        (&docs.v2_protobuf, V2_PROTOBUF_CONTENT_TYPE)
    } else {
        (&docs.v2_json, "application/json")
    };
    let etag = format!("\"{}\"", hex::encode_upper(Sha256::digest(bytes)));
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ETAG, &etag)
        .header(header::VARY, "Accept")
        .header(header::CACHE_CONTROL, "no-cache, private");
    let fresh =
        if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let result = if fresh {
        builder
            .status(StatusCode::NOT_MODIFIED)
            .body(axum::body::Body::empty())
    } else {
        builder
            .status(StatusCode::OK)
            .body(axum::body::Body::from(bytes.clone()))
    };
    result.unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
}

/// Answers `GET /openapi/v3/<rest>`: the root when `rest` is empty, else one document.
/// With `?hash=` equal to the document's hash the answer is cacheable forever, as
/// kube-apiserver's; `If-None-Match` with the current hash gets 304.
pub fn serve(rest: &[&str], query: Option<&str>, if_none_match: Option<&str>) -> Response {
    let docs = documents();
    if rest.is_empty() {
        return (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-cache, private"),
            ],
            docs.root.clone(),
        )
            .into_response();
    }
    let Some((bytes, hash)) = docs.by_path.get(&rest.join("/")) else {
        return ApiError::not_found_path().into_response();
    };
    let etag = format!("\"{hash}\"");
    let hashed = query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "hash" && v == hash.as_str())
    });
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ETAG, &etag);
    builder = if hashed {
        builder
            .header(header::CACHE_CONTROL, "public, immutable")
            .header(
                header::EXPIRES,
                http_date(cairn_wire::time::now_secs() + 365 * 86_400),
            )
    } else {
        builder.header(header::CACHE_CONTROL, "no-cache, private")
    };
    let fresh =
        if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let result = if fresh {
        builder
            .status(StatusCode::NOT_MODIFIED)
            .body(axum::body::Body::empty())
    } else {
        builder
            .status(StatusCode::OK)
            .body(axum::body::Body::from(bytes.clone()))
    };
    result.unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
}

/// An HTTP date (`Tue, 15 Nov 1994 08:12:31 GMT`).
fn http_date(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let stamp = cairn_wire::time::rfc3339(secs); // YYYY-MM-DDTHH:MM:SSZ
    let month: usize = stamp[5..7].parse().unwrap_or(1);
    let weekday = DAYS[secs.div_euclid(86_400).rem_euclid(7) as usize];
    format!(
        "{weekday}, {} {} {} {} GMT",
        &stamp[8..10],
        MONTHS[month - 1],
        &stamp[0..4],
        &stamp[11..19]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{builtin_group_versions as group_versions, RESOURCES};

    fn doc(group: &str) -> Value {
        document(group, "v1").unwrap()
    }

    #[test]
    fn names() {
        assert_eq!(
            schema_name("", "v1", "ConfigMap"),
            "io.k8s.api.core.v1.ConfigMap"
        );
        assert_eq!(
            schema_name("apps", "v1", "Deployment"),
            "io.k8s.api.apps.v1.Deployment"
        );
        assert_eq!(
            schema_name("coordination.k8s.io", "v1", "Lease"),
            "io.k8s.api.coordination.v1.Lease"
        );
        assert_eq!(
            schema_name("rbac.authorization.k8s.io", "v1", "Role"),
            "io.k8s.api.rbac.v1.Role"
        );
        assert_eq!(
            schema_name("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition"
        );
        assert_eq!(
            schema_name("example.com", "v1", "Widget"),
            "com.example.v1.Widget"
        );
        assert_eq!(http_date(784_887_151), "Tue, 15 Nov 1994 08:12:31 GMT");
    }

    #[test]
    fn root_lists_every_group_version() {
        let root = root();
        let paths = root["paths"].as_object().unwrap();
        for (g, v) in group_versions() {
            let key = group_version_path(g, v);
            let url = paths[&key]["serverRelativeURL"].as_str().unwrap();
            let hash = &documents().by_path[&key].1;
            assert_eq!(url, format!("/openapi/v3/{key}?hash={hash}"));
            assert_eq!(hash.len(), 64);
        }
        assert!(paths.contains_key("api/v1"));
        assert!(paths.contains_key("apis/apps/v1"));
        assert!(document("nope", "v1").is_none());
    }

    #[test]
    fn every_resource_has_its_paths_and_schema() {
        for r in RESOURCES {
            let d = document(r.group, r.version).unwrap();
            let prefix = format!("/{}", group_version_path(r.group, r.version));
            let ns = if r.namespaced {
                "/namespaces/{namespace}"
            } else {
                ""
            };
            let collection = &d["paths"][format!("{prefix}{ns}/{}", r.plural)];
            let item = &d["paths"][format!("{prefix}{ns}/{}/{{name}}", r.plural)];
            for (p, verb, action) in [
                (collection, "get", "list"),
                (collection, "post", "post"),
                (collection, "delete", "deletecollection"),
                (item, "get", "get"),
                (item, "put", "put"),
                (item, "patch", "patch"),
                (item, "delete", "delete"),
            ] {
                let op = &p[verb];
                assert_eq!(op["x-kubernetes-action"], action, "{} {verb}", r.plural);
                assert_eq!(
                    op["x-kubernetes-group-version-kind"],
                    json!({"group": r.group, "version": r.version, "kind": r.kind})
                );
            }
            if r.namespaced {
                assert!(d["paths"][format!("{prefix}/{}", r.plural)]["get"].is_object());
            }
            if r.subresources.contains(&"status") {
                assert!(
                    d["paths"][format!("{prefix}{ns}/{}/{{name}}/status", r.plural)]["patch"]
                        .is_object()
                );
            }
            let schema = &d["components"]["schemas"][schema_name(r.group, r.version, r.kind)];
            assert_eq!(
                schema["x-kubernetes-group-version-kind"],
                json!([{"group": r.group, "version": r.version, "kind": r.kind}])
            );
            let metadata = &schema["properties"]["metadata"];
            let meta_ref = metadata
                .get("$ref")
                .unwrap_or(&metadata["allOf"][0]["$ref"]);
            assert_eq!(
                meta_ref, "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                "{}",
                r.kind
            );
            assert!(schema["properties"]["apiVersion"].is_object());
            let list = &d["components"]["schemas"]
                [schema_name(r.group, r.version, &format!("{}List", r.kind))];
            assert!(list["properties"]["items"].is_object());
        }
    }

    #[test]
    fn patch_operations_carry_what_kubectl_looks_for() {
        for (g, v) in group_versions() {
            let d = document(g, v).unwrap();
            for (path, item) in d["paths"].as_object().unwrap() {
                let Some(op) = item.get("patch") else {
                    continue;
                };
                let params: Vec<(&str, &str)> = op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p["name"].as_str().unwrap(), p["in"].as_str().unwrap()))
                    .collect();
                for want in ["fieldValidation", "fieldManager", "dryRun", "force"] {
                    assert!(params.contains(&(want, "query")), "{path}: {want}");
                }
                let ct = op["requestBody"]["content"].as_object().unwrap();
                for t in [
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/apply-patch+yaml",
                ] {
                    assert!(ct.contains_key(t), "{path}: {t}");
                }
                assert!(ct.contains_key("application/strategic-merge-patch+json"));
            }
        }
    }

    #[test]
    fn schemas_are_the_real_ones() {
        let core = doc("");
        let schemas = &core["components"]["schemas"];
        let cm = &schemas["io.k8s.api.core.v1.ConfigMap"]["properties"];
        assert_eq!(cm["data"]["additionalProperties"]["type"], "string");
        let pod = &schemas["io.k8s.api.core.v1.Pod"]["properties"];
        assert_eq!(
            pod["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.PodSpec"
        );
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(
            containers["items"]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.Container"
        );
        let image = &schemas["io.k8s.api.core.v1.Container"]["properties"]["image"];
        assert!(image["description"].as_str().unwrap().contains("image"));
        let meta = &schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"];
        for f in [
            "name",
            "namespace",
            "labels",
            "annotations",
            "uid",
            "resourceVersion",
            "ownerReferences",
        ] {
            assert!(meta[f].is_object(), "{f}");
        }
        // Every $ref points at a schema in the same document.
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                        out.push(r.trim_start_matches("#/components/schemas/").to_string());
                    }
                    m.values().for_each(|x| refs(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        for (g, v) in group_versions() {
            let d = document(g, v).unwrap();
            let mut all = Vec::new();
            refs(&d, &mut all);
            for r in all {
                assert!(d["components"]["schemas"].get(&r).is_some(), "{g}/{v}: {r}");
            }
        }
        let apps = doc("apps");
        assert!(
            apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]["get"]
                .is_object()
        );
        assert!(apps["components"]["schemas"]["io.k8s.api.autoscaling.v1.Scale"].is_object());
    }

    #[test]
    fn custom_resources_are_published_with_their_schema() {
        crate::crd::set_schemas(
            "gadgets.openapi.example.com",
            vec![definitions::CustomSchema {
                group: "openapi.example.com".into(),
                version: "v1".into(),
                kind: "Gadget".into(),
                schema: Arc::new(
                    json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}),
                ),
                scale: None,
            }],
        );
        let defs = all_definitions();
        let gadget = &defs["com.example.openapi.v1.Gadget"];
        assert_eq!(
            gadget["properties"]["spec"]["properties"]["size"]["type"],
            "integer"
        );
        assert_eq!(
            gadget["x-kubernetes-group-version-kind"],
            json!([{"group": "openapi.example.com", "version": "v1", "kind": "Gadget"}])
        );
        assert!(defs["com.example.openapi.v1.GadgetList"].is_object());
        crate::crd::set_schemas("gadgets.openapi.example.com", Vec::new());
        assert!(!all_definitions().contains_key("com.example.openapi.v1.Gadget"));
    }

    #[test]
    fn every_served_kind_has_its_definition() {
        let defs = all_definitions();
        for r in RESOURCES {
            let name = schema_name(r.group, r.version, r.kind);
            let d = defs.get(&name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(
                d["x-kubernetes-group-version-kind"],
                json!([{"group": r.group, "version": r.version, "kind": r.kind}]),
                "{name}"
            );
        }
    }

    #[test]
    fn v2_is_served_as_protobuf_and_json() {
        let r = serve_v2(Some(V2_PROTOBUF), None);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], V2_PROTOBUF_CONTENT_TYPE);
        let etag = r.headers()[header::ETAG].to_str().unwrap().to_string();
        assert_eq!(
            serve_v2(Some(V2_PROTOBUF), Some(&etag)).status(),
            StatusCode::NOT_MODIFIED
        );
        let r = serve_v2(Some("application/json"), None);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let docs = documents();
        let doc: Value = serde_json::from_slice(&docs.v2_json).unwrap();
        assert_eq!(doc["swagger"], "2.0");
        assert!(doc["definitions"]["io.k8s.api.apps.v1.Deployment"].is_object());
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert!(patch["consumes"]
            .as_array()
            .unwrap()
            .contains(&json!("application/strategic-merge-patch+json")));
        assert!(docs.v2_protobuf.len() > 100_000);
    }

    #[test]
    fn serving() {
        let r = serve(&[], None, None);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let hash = documents().by_path["apis/apps/v1"].1.clone();
        let r = serve(
            &["apis", "apps", "v1"],
            Some(&format!("hash={hash}&timeout=32s")),
            None,
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "public, immutable");
        assert!(r.headers().contains_key(header::EXPIRES));
        let r = serve(&["apis", "apps", "v1"], Some("hash=old"), None);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache, private");
        let r = serve(
            &["api", "v1"],
            None,
            Some(&format!("\"{}\"", documents().by_path["api/v1"].1)),
        );
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            serve(&["apis", "nope", "v1"], None, None).status(),
            StatusCode::NOT_FOUND
        );
    }
}
