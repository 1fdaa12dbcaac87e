//! The OpenAPI definitions `src/openapi/` serves, generated at build time.
//!
//! Every schema comes from k8s-openapi (its `schemars` impls are generated from the upstream
//! OpenAPI document: types, descriptions, required fields, formats). What those impls leave
//! out is added from the upstream `generated.proto` comments k8s-pb carries: the struct tags
//! `+patchMergeKey`, `+patchStrategy`, `+listType`, `+listMapKey` and `+mapType` become
//! `x-kubernetes-patch-merge-key`, `x-kubernetes-patch-strategy`, `x-kubernetes-list-type`,
//! `x-kubernetes-list-map-keys` and `x-kubernetes-map-type`, as kube-apiserver publishes them.
//! Kinds get `x-kubernetes-group-version-kind`, and each kind its `<Kind>List`.
//!
//! The result is one JSON object, name → schema in OpenAPI v2 form (`$ref` to
//! `#/definitions/…`, siblings beside a `$ref`), written deflated to `$OUT_DIR`.

use k8s_openapi::schemars::gen::{SchemaGenerator, SchemaSettings};
use k8s_openapi::schemars::JsonSchema;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::Path;

/// Field markers of one message: JSON field name → (marker, value) in source order.
pub type FieldMarkers = BTreeMap<String, Vec<(String, String)>>;

/// The `+name=value` markers of a field's doc comment that shape merges.
pub fn field_markers(attrs: &[syn::Attribute]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for a in attrs {
        let syn::Meta::NameValue(nv) = &a.meta else {
            continue;
        };
        if !nv.path.is_ident("doc") {
            continue;
        }
        let syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) = &nv.value
        else {
            continue;
        };
        let line = s.value();
        let Some((name, value)) = line
            .trim()
            .strip_prefix('+')
            .and_then(|l| l.split_once('='))
        else {
            continue;
        };
        if matches!(
            name,
            "patchMergeKey" | "patchStrategy" | "listType" | "listMapKey" | "mapType"
        ) {
            out.push((name.to_string(), value.trim().to_string()));
        }
    }
    out
}

struct Kinds {
    gen: SchemaGenerator,
    /// schema name → (group, version, kind)
    gvks: Vec<(String, String, String, String)>,
}

impl Kinds {
    fn kind<T: JsonSchema + k8s_openapi::Resource>(&mut self) {
        self.gen.subschema_for::<T>();
        self.gvks.push((
            T::schema_name(),
            T::GROUP.to_string(),
            T::VERSION.to_string(),
            T::KIND.to_string(),
        ));
    }

    fn schema<T: JsonSchema>(&mut self) {
        self.gen.subschema_for::<T>();
    }
}

/// Every kind the server serves, and the other bodies its operations carry. The server's
/// tests check that each kind of its resource table has its definition here.
fn generate() -> Kinds {
    use k8s_openapi::api::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as apiregistration;
    let settings = SchemaSettings::draft07().with(|s| {
        s.definitions_path = "#/definitions/".into();
        s.meta_schema = None;
    });
    let mut k = Kinds {
        gen: settings.into_generator(),
        gvks: Vec::new(),
    };
    k.kind::<core::v1::Namespace>();
    k.kind::<core::v1::Node>();
    k.kind::<core::v1::Pod>();
    k.kind::<core::v1::Service>();
    k.kind::<core::v1::Endpoints>();
    k.kind::<core::v1::ConfigMap>();
    k.kind::<core::v1::Secret>();
    k.kind::<core::v1::ServiceAccount>();
    k.kind::<core::v1::Event>();
    k.kind::<core::v1::PersistentVolume>();
    k.kind::<core::v1::PersistentVolumeClaim>();
    k.kind::<core::v1::ReplicationController>();
    k.kind::<core::v1::PodTemplate>();
    k.kind::<core::v1::LimitRange>();
    k.kind::<core::v1::ResourceQuota>();
    k.kind::<core::v1::Binding>();
    k.kind::<events::v1::Event>();
    k.kind::<coordination::v1::Lease>();
    k.kind::<discovery::v1::EndpointSlice>();
    k.kind::<apps::v1::Deployment>();
    k.kind::<apps::v1::ReplicaSet>();
    k.kind::<apps::v1::DaemonSet>();
    k.kind::<apps::v1::StatefulSet>();
    k.kind::<batch::v1::Job>();
    k.kind::<batch::v1::CronJob>();
    k.kind::<apiextensions::CustomResourceDefinition>();
    k.kind::<rbac::v1::Role>();
    k.kind::<rbac::v1::ClusterRole>();
    k.kind::<rbac::v1::RoleBinding>();
    k.kind::<rbac::v1::ClusterRoleBinding>();
    k.kind::<policy::v1::PodDisruptionBudget>();
    k.kind::<policy::v1::Eviction>();
    k.kind::<networking::v1::Ingress>();
    k.kind::<networking::v1::IngressClass>();
    k.kind::<networking::v1::NetworkPolicy>();
    k.kind::<storage::v1::StorageClass>();
    k.kind::<storage::v1::CSIDriver>();
    k.kind::<storage::v1::CSINode>();
    k.kind::<storage::v1::VolumeAttachment>();
    k.kind::<autoscaling::v1::HorizontalPodAutoscaler>();
    k.kind::<autoscaling::v1::Scale>();
    k.kind::<autoscaling::v2::HorizontalPodAutoscaler>();
    k.kind::<scheduling::v1::PriorityClass>();
    k.kind::<admissionregistration::v1::ValidatingWebhookConfiguration>();
    k.kind::<admissionregistration::v1::MutatingWebhookConfiguration>();
    k.kind::<apiregistration::APIService>();
    k.kind::<certificates::v1::CertificateSigningRequest>();
    k.kind::<node::v1::RuntimeClass>();
    k.schema::<meta::Status>();
    k.schema::<meta::DeleteOptions>();
    k.schema::<meta::WatchEvent<Value>>();
    k.schema::<meta::Patch>();
    k
}

/// `io.k8s.api.core.v1.Container` → `api.core.v1.container`, the key k8s-pb's message
/// markers are filed under (prost and upstream spell acronyms differently: no case).
fn proto_key(schema_name: &str) -> String {
    schema_name
        .strip_prefix("io.k8s.")
        .unwrap_or(schema_name)
        .replace('-', "_")
        .to_lowercase()
}

fn add_markers(schema: &mut Value, markers: Option<&FieldMarkers>) {
    let (Some(markers), Some(props)) = (
        markers,
        schema.get_mut("properties").and_then(Value::as_object_mut),
    ) else {
        return;
    };
    for (field, list) in markers {
        let Some(prop) = props.get_mut(field).and_then(Value::as_object_mut) else {
            continue;
        };
        let keys: Vec<Value> = list
            .iter()
            .filter(|(n, _)| n == "listMapKey")
            .map(|(_, v)| json!(v))
            .collect();
        for (name, value) in list {
            let ext = match name.as_str() {
                "patchMergeKey" => "x-kubernetes-patch-merge-key",
                "patchStrategy" => "x-kubernetes-patch-strategy",
                "listType" => "x-kubernetes-list-type",
                "mapType" => "x-kubernetes-map-type",
                _ => continue,
            };
            prop.insert(ext.into(), json!(value));
        }
        if !keys.is_empty() {
            prop.insert("x-kubernetes-list-map-keys".into(), Value::Array(keys));
        }
    }
}

/// `<Kind>List` beside a kind, described in the words kube-apiserver's lists use and with
/// the field descriptions of the kind itself.
fn list_schema(item_name: &str, item: &Value, list_meta: &Value, kind: &str) -> Value {
    let desc = |f: &str| item["properties"][f]["description"].clone();
    json!({
        "description": format!("{kind}List is a list of {kind} objects."),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": desc("apiVersion")},
            "items": {
                "type": "array",
                "description": format!("items is the list of {kind} objects."),
                "items": {"$ref": format!("#/definitions/{item_name}")},
            },
            "kind": {"type": "string", "description": desc("kind")},
            "metadata": {
                "$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
                "description": list_meta["description"].clone(),
            },
        },
    })
}

/// Writes `openapi_definitions.json.deflate` into `out_dir`.
pub fn write(out_dir: &Path, markers: &HashMap<String, FieldMarkers>) {
    let mut k = generate();
    let mut defs: Map<String, Value> = k
        .gen
        .take_definitions()
        .into_iter()
        .map(|(name, s)| (name, serde_json::to_value(s).expect("schemas serialise")))
        .collect();
    for (name, schema) in defs.iter_mut() {
        add_markers(schema, markers.get(&proto_key(name)));
    }
    let list_meta = defs["io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"].clone();
    for (name, group, version, kind) in std::mem::take(&mut k.gvks) {
        let gvk = |kind: &str| json!([{"group": group, "version": version, "kind": kind}]);
        let item = defs.get_mut(&name).expect("a kind's definition");
        item["x-kubernetes-group-version-kind"] = gvk(&kind);
        // k8s-openapi lists `metadata` as required because its Rust field is not optional;
        // upstream's schemas do not require it (a generateName-only object is valid).
        if let Some(required) = item.get_mut("required").and_then(Value::as_array_mut) {
            required.retain(|f| f != "metadata");
            if required.is_empty() {
                item.as_object_mut().map(|o| o.remove("required"));
            }
        }
        let item = item.clone();
        if matches!(kind.as_str(), "Scale" | "Eviction" | "Binding") {
            continue; // bodies of subresources: no lists
        }
        let mut list = list_schema(&name, &item, &list_meta, &kind);
        list["x-kubernetes-group-version-kind"] = gvk(&format!("{kind}List"));
        defs.insert(format!("{name}List"), list);
    }
    assert!(
        defs.len() > 300,
        "only {} OpenAPI definitions generated",
        defs.len()
    );
    let text = serde_json::to_vec(&defs).expect("definitions serialise");
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&text).expect("deflate");
    let bytes = z.finish().expect("deflate");
    let dest = out_dir.join("openapi_definitions.json.deflate");
    std::fs::write(&dest, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
}
