//! The paths of the documents: for each resource its collection, item, all-namespaces and
//! subresource operations, in the shape kube-apiserver publishes them.

use super::{group_version_path, gvk, reference, schema_name, META};
use crate::resources::Resource;
use serde_json::{json, Map, Value};

fn query_param(name: &str, description: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn pretty() -> Value {
    query_param("pretty", "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).", "string")
}

fn dry_run() -> Value {
    query_param("dryRun", "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed", "string")
}

fn field_manager() -> Value {
    query_param("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint.", "string")
}

fn field_validation() -> Value {
    query_param("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.", "string")
}

fn force() -> Value {
    query_param("force", "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests.", "boolean")
}

fn list_params() -> Vec<Value> {
    vec![
        query_param("allowWatchBookmarks", "allowWatchBookmarks requests watch events with type \"BOOKMARK\". Servers that do not implement bookmarks may ignore this flag and bookmarks are sent at the server's discretion.", "boolean"),
        query_param("continue", "The continue option should be set when retrieving more results from the server. Since this value is server defined, clients may only use the continue value from a previous query result with identical query parameters (except for the value of continue).", "string"),
        query_param("fieldSelector", "A selector to restrict the list of returned objects by their fields. Defaults to everything.", "string"),
        query_param("labelSelector", "A selector to restrict the list of returned objects by their labels. Defaults to everything.", "string"),
        query_param("limit", "limit is a maximum number of responses to return for a list call. If more items exist, the server will set the `continue` field on the list metadata to a value that can be used with the same initial query to retrieve the next set of results.", "integer"),
        query_param("resourceVersion", "resourceVersion sets a constraint on what resource versions a request may be served from. Defaults to unset", "string"),
        query_param("resourceVersionMatch", "resourceVersionMatch determines how resourceVersion is applied to list calls. Defaults to unset", "string"),
        query_param("sendInitialEvents", "`sendInitialEvents=true` may be set together with `watch=true`. In that case, the watch stream will begin with synthetic events to produce the current state of objects in the collection.", "boolean"),
        query_param("timeoutSeconds", "Timeout for the list/watch call. This limits the duration of the call, regardless of any activity or inactivity.", "integer"),
        query_param("watch", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications. Specify resourceVersion.", "boolean"),
    ]
}

fn delete_params() -> Vec<Value> {
    vec![
        dry_run(),
        query_param("gracePeriodSeconds", "The duration in seconds before the object should be deleted. Value must be non-negative integer. The value zero indicates delete immediately. If this value is nil, the default grace period for the specified type will be used.", "integer"),
        query_param("orphanDependents", "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7. Should the dependent objects be orphaned.", "boolean"),
        query_param("propagationPolicy", "Whether and how garbage collection will be performed. Either this field or OrphanDependents may be set, but not both. Acceptable values are: 'Orphan' - orphan the dependents; 'Background' - allow the garbage collector to delete the dependents in the background; 'Foreground' - a cascading policy that deletes all dependents in the foreground.", "string"),
    ]
}

fn content(schema: &Value, types: &[&str]) -> Value {
    let mut m = Map::new();
    for t in types {
        m.insert((*t).into(), json!({"schema": schema}));
    }
    Value::Object(m)
}

const RESPONSE_TYPES: &[&str] = &["application/json", "application/yaml"];

fn responses(codes: &[(&str, &str)], schema: &Value) -> Value {
    let mut m = Map::new();
    for (code, desc) in codes {
        m.insert(
            (*code).into(),
            json!({"description": desc, "content": content(schema, RESPONSE_TYPES)}),
        );
    }
    m.insert("401".into(), json!({"description": "Unauthorized"}));
    Value::Object(m)
}

/// The media types a PATCH of `r` accepts, as listed in its requestBody: strategic merge
/// for built-in kinds only, as kube-apiserver.
pub fn patch_content_types(r: &Resource) -> Vec<&'static str> {
    let mut t = vec![
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
    ];
    if !r.custom {
        t.push("application/strategic-merge-patch+json");
    }
    t
}

struct OpNames {
    /// e.g. `AppsV1`
    gv: String,
    /// e.g. `appsV1`
    tag: String,
}

fn op_names(group: &str, version: &str) -> OpNames {
    let mut v = version.to_string();
    if let Some(f) = v.get_mut(0..1) {
        f.make_ascii_uppercase();
    }
    let base = if group.is_empty() {
        "core".to_string()
    } else {
        group.trim_end_matches(".k8s.io").to_string()
    };
    let camel: String = base
        .split(['.', '-'])
        .map(|p| {
            let mut p = p.to_string();
            if let Some(f) = p.get_mut(0..1) {
                f.make_ascii_uppercase();
            }
            p
        })
        .collect();
    let mut tag = format!("{camel}{v}");
    if let Some(f) = tag.get_mut(0..1) {
        f.make_ascii_lowercase();
    }
    OpNames {
        gv: format!("{camel}{v}"),
        tag,
    }
}

#[allow(clippy::too_many_arguments)]
fn operation(
    names: &OpNames,
    id: String,
    action: &str,
    description: String,
    gvk_value: &Value,
    params: Vec<Value>,
    body: Option<Value>,
    responses: Value,
) -> Value {
    let mut op = json!({
        "tags": [names.tag],
        "description": description,
        "operationId": id,
        "parameters": params,
        "responses": responses,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk_value,
    });
    if let Some(b) = body {
        op["requestBody"] = b;
    }
    op
}

fn body(schema: &Value, types: &[&str], required: bool) -> Value {
    json!({"content": content(schema, types), "required": required})
}

/// The paths of one resource: collection, item, all-namespaces list and subresources.
pub(super) fn resource_paths(r: &Resource, paths: &mut Map<String, Value>) {
    let prefix = format!("/{}", group_version_path(r.group, r.version));
    let names = op_names(r.group, r.version);
    let kind_ref = reference(&schema_name(r.group, r.version, r.kind));
    let list_ref = reference(&schema_name(r.group, r.version, &format!("{}List", r.kind)));
    let status_ref = reference(&format!("{META}.Status"));
    let patch_ref = reference(&format!("{META}.Patch"));
    let delete_body = body(
        &reference(&format!("{META}.DeleteOptions")),
        RESPONSE_TYPES,
        false,
    );
    let the_gvk = gvk(r.group, r.version, r.kind);
    let (ns, ns_word) = if r.namespaced {
        ("/namespaces/{namespace}", "Namespaced")
    } else {
        ("", "")
    };
    let kind = r.kind;
    let gv = &names.gv;
    let name_param = path_param("name", &format!("name of the {kind}"));
    let ns_param = path_param(
        "namespace",
        "object name and auth scope, such as for teams and projects",
    );
    let mut collection_params = vec![];
    if r.namespaced {
        collection_params.push(ns_param.clone());
    }
    collection_params.push(pretty());
    let mut item_params = vec![name_param];
    item_params.extend(collection_params.iter().cloned());

    let write_params = vec![dry_run(), field_manager(), field_validation()];
    let patch_params = vec![dry_run(), field_manager(), field_validation(), force()];
    let patch_body = body(&patch_ref, &patch_content_types(r), true);

    // Collection: list, create, deletecollection.
    let mut deletecollection_params = list_params();
    deletecollection_params.extend(delete_params());
    paths.insert(
        format!("{prefix}{ns}/{}", r.plural),
        json!({
            "get": operation(&names, format!("list{gv}{ns_word}{kind}"), "list",
                format!("list or watch objects of kind {kind}"), &the_gvk, list_params(), None,
                responses(&[("200", "OK")], &list_ref)),
            "post": operation(&names, format!("create{gv}{ns_word}{kind}"), "post",
                format!("create a {kind}"), &the_gvk, write_params.clone(),
                Some(body(&kind_ref, RESPONSE_TYPES, true)),
                responses(&[("200", "OK"), ("201", "Created"), ("202", "Accepted")], &kind_ref)),
            "delete": operation(&names, format!("delete{gv}Collection{ns_word}{kind}"), "deletecollection",
                format!("delete collection of {kind}"), &the_gvk, deletecollection_params,
                Some(delete_body.clone()), responses(&[("200", "OK")], &status_ref)),
            "parameters": collection_params,
        }),
    );

    // Item: read, replace, patch, delete.
    paths.insert(
        format!("{prefix}{ns}/{}/{{name}}", r.plural),
        json!({
            "get": operation(&names, format!("read{gv}{ns_word}{kind}"), "get",
                format!("read the specified {kind}"), &the_gvk, vec![], None,
                responses(&[("200", "OK")], &kind_ref)),
            "put": operation(&names, format!("replace{gv}{ns_word}{kind}"), "put",
                format!("replace the specified {kind}"), &the_gvk, write_params.clone(),
                Some(body(&kind_ref, RESPONSE_TYPES, true)),
                responses(&[("200", "OK"), ("201", "Created")], &kind_ref)),
            "patch": operation(&names, format!("patch{gv}{ns_word}{kind}"), "patch",
                format!("partially update the specified {kind}"), &the_gvk, patch_params.clone(),
                Some(patch_body.clone()),
                responses(&[("200", "OK"), ("201", "Created")], &kind_ref)),
            "delete": operation(&names, format!("delete{gv}{ns_word}{kind}"), "delete",
                format!("delete a {kind}"), &the_gvk, delete_params(), Some(delete_body),
                responses(&[("200", "OK"), ("202", "Accepted")], &status_ref)),
            "parameters": item_params,
        }),
    );

    // Every namespace at once.
    if r.namespaced {
        paths.insert(
            format!("{prefix}/{}", r.plural),
            json!({
                "get": operation(&names, format!("list{gv}{kind}ForAllNamespaces"), "list",
                    format!("list or watch objects of kind {kind}"), &the_gvk, list_params(), None,
                    responses(&[("200", "OK")], &list_ref)),
                "parameters": [pretty()],
            }),
        );
    }

    // status and scale.
    for sub in r.subresources {
        let (sub_gvk, sub_ref, word) = match *sub {
            "status" => (the_gvk.clone(), kind_ref.clone(), "Status"),
            "scale" => (
                gvk("autoscaling", "v1", "Scale"),
                reference("io.k8s.api.autoscaling.v1.Scale"),
                "Scale",
            ),
            _ => continue,
        };
        let mut params = vec![path_param("name", &format!("name of the {word}"))];
        params.extend(collection_params.iter().cloned());
        paths.insert(
            format!("{prefix}{ns}/{}/{{name}}/{sub}", r.plural),
            json!({
                "get": operation(&names, format!("read{gv}{ns_word}{kind}{word}"), "get",
                    format!("read {sub} of the specified {kind}"), &sub_gvk, vec![], None,
                    responses(&[("200", "OK")], &sub_ref)),
                "put": operation(&names, format!("replace{gv}{ns_word}{kind}{word}"), "put",
                    format!("replace {sub} of the specified {kind}"), &sub_gvk, write_params.clone(),
                    Some(body(&sub_ref, RESPONSE_TYPES, true)),
                    responses(&[("200", "OK"), ("201", "Created")], &sub_ref)),
                "patch": operation(&names, format!("patch{gv}{ns_word}{kind}{word}"), "patch",
                    format!("partially update {sub} of the specified {kind}"), &sub_gvk,
                    patch_params.clone(), Some(patch_body.clone()),
                    responses(&[("200", "OK"), ("201", "Created")], &sub_ref)),
                "parameters": params,
            }),
        );
    }
}
