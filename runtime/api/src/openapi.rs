//! OpenAPI v3, derived from the resource table: `GET /openapi/v3` lists one document per
//! group/version, `GET /openapi/v3/api/v1` and `/openapi/v3/apis/<group>/<version>` serve
//! them.
//!
//! What clients use it for:
//! - `kubectl apply` (validation on) looks for the `fieldValidation` query parameter on the
//!   PATCH operation carrying the kind's `x-kubernetes-group-version-kind`; when it is there
//!   kubectl lets the server validate (`?fieldValidation=Strict`) instead of downloading
//!   `/openapi/v2`, which this server does not serve.
//! - `kubectl explain` finds the kind through the operations' GVK and prints the component
//!   schema with the same GVK.
//!
//! The schemas are not complete: `spec`, `status` and similar fields are objects with
//! `x-kubernetes-preserve-unknown-fields`, so nothing valid is rejected. Because of that the
//! PATCH operations do not offer `application/strategic-merge-patch+json`: kubectl computes
//! a strategic merge patch from the OpenAPI schema when the PATCH operation offers it, and an
//! incomplete schema makes that fail with a warning; without it kubectl uses its compiled-in
//! types, which is right for every built-in kind (the server still accepts strategic merge
//! patches). Set [`ADVERTISE_STRATEGIC_MERGE`] once the schemas are complete.

use super::resources::{builtin_group_versions as group_versions, Resource, RESOURCES};
use super::status::ApiError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Whether PATCH operations list `application/strategic-merge-patch+json` (see module docs).
pub const ADVERTISE_STRATEGIC_MERGE: bool = false;

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

const API_VERSION_DESC: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DESC: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const METADATA_DESC: &str = "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const LIST_METADATA_DESC: &str = "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

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

/// A reference with its own description, the way kube's v3 documents wrap them.
fn wrapped_ref(name: &str, description: &str) -> Value {
    json!({"allOf": [reference(name)], "default": {}, "description": description})
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

/// An object whose fields are not described yet: anything is accepted.
fn open_object(description: &str) -> Value {
    json!({"type": "object", "description": description, "x-kubernetes-preserve-unknown-fields": true})
}

fn open_array(description: &str) -> Value {
    json!({"type": "array", "description": description, "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}})
}

fn string(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

fn string_map(description: &str, format: Option<&str>) -> Value {
    let mut item = json!({"type": "string", "default": ""});
    if let Some(f) = format {
        item["format"] = json!(f);
    }
    json!({"type": "object", "description": description, "additionalProperties": item})
}

fn time(description: &str) -> Value {
    wrapped_ref(&format!("{META}.Time"), description)
}

// ---------------------------------------------------------------------------------------
// Kinds.

fn kind_description(r: &Resource) -> String {
    match (r.group, r.kind) {
        ("", "Namespace") => "Namespace provides a scope for Names. Use of multiple namespaces is optional.".into(),
        ("", "Node") => "Node is a worker node in Kubernetes. Each node will have a unique identifier in the cache (i.e. in etcd).".into(),
        ("", "Pod") => "Pod is a collection of containers that can run on a host. This resource is created by clients and scheduled onto hosts.".into(),
        ("", "Service") => "Service is a named abstraction of software service (for example, mysql) consisting of local port (for example 3306) that the proxy listens on, and the selector that determines which pods will answer requests sent through the proxy.".into(),
        ("", "Endpoints") => "Endpoints is a collection of endpoints that implement the actual service.".into(),
        ("", "ConfigMap") => "ConfigMap holds configuration data for pods to consume.".into(),
        ("", "Secret") => "Secret holds secret data of a certain type. The total bytes of the values in the Data field must be less than MaxSecretSize bytes.".into(),
        ("", "ServiceAccount") => "ServiceAccount binds together: * a name, understood by users, and perhaps by peripheral systems, for an identity * a principal that can be authenticated and authorized * a set of secrets".into(),
        (_, "Event") => "Event is a report of an event somewhere in the cluster. Events have a limited retention time and triggers and messages may evolve with time.".into(),
        ("coordination.k8s.io", "Lease") => "Lease defines a lease concept.".into(),
        ("discovery.k8s.io", "EndpointSlice") => "EndpointSlice represents a subset of the endpoints that implement a service. For a given service there may be multiple EndpointSlice objects, selected by labels, which must be joined to produce the full set of endpoints.".into(),
        ("apps", "Deployment") => "Deployment enables declarative updates for Pods and ReplicaSets.".into(),
        ("apps", "ReplicaSet") => "ReplicaSet ensures that a specified number of pod replicas are running at any given time.".into(),
        ("apps", "DaemonSet") => "DaemonSet represents the configuration of a daemon set.".into(),
        ("apps", "StatefulSet") => "StatefulSet represents a set of pods with consistent identities. Identities are defined as: - Network: A single stable DNS and hostname. - Storage: As many VolumeClaims as requested.".into(),
        ("batch", "Job") => "Job represents the configuration of a single job.".into(),
        ("batch", "CronJob") => "CronJob represents the configuration of a single cron job.".into(),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => "CustomResourceDefinition represents a resource that should be exposed on the API server.  Its name MUST be in the format <.spec.name>.<.spec.group>.".into(),
        (_, kind) => format!("{kind} is served by cairn."),
    }
}

fn spec_and_status(kind: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("spec", open_object(&format!("Spec defines the desired behavior of the {kind}. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#spec-and-status"))),
        ("status", open_object(&format!("Status represents the current state of the {kind}. This data may be out of date by some window of time. Populated by the system. Read-only. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#spec-and-status"))),
    ]
}

/// The top-level fields of a kind besides apiVersion, kind and metadata.
fn body_fields(r: &Resource) -> Vec<(&'static str, Value)> {
    match (r.group, r.kind) {
        ("", "Endpoints") => vec![("subsets", open_array("The set of all endpoints is the union of all subsets. Addresses are placed into subsets according to the IPs they share."))],
        ("", "ConfigMap") => vec![
            ("binaryData", string_map("BinaryData contains the binary data. Each key must consist of alphanumeric characters, '-', '_' or '.'.", Some("byte"))),
            ("data", string_map("Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'.", None)),
            ("immutable", json!({"type": "boolean", "description": "Immutable, if set to true, ensures that data stored in the ConfigMap cannot be updated (only object metadata can be modified)."})),
        ],
        ("", "Secret") => vec![
            ("data", string_map("Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string.", Some("byte"))),
            ("immutable", json!({"type": "boolean", "description": "Immutable, if set to true, ensures that data stored in the Secret cannot be updated (only object metadata can be modified)."})),
            ("stringData", string_map("stringData allows specifying non-binary secret data in string form. It is provided as a write-only input field for convenience.", None)),
            ("type", string("Used to facilitate programmatic handling of secret data.")),
        ],
        ("", "ServiceAccount") => vec![
            ("automountServiceAccountToken", json!({"type": "boolean", "description": "AutomountServiceAccountToken indicates whether pods running as this service account should have an API token automatically mounted."})),
            ("imagePullSecrets", open_array("ImagePullSecrets is a list of references to secrets in the same namespace to use for pulling any images in pods that reference this ServiceAccount.")),
            ("secrets", open_array("Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.")),
        ],
        ("", "Event") => vec![
            ("action", string("What action was taken/failed regarding to the Regarding object.")),
            ("count", json!({"type": "integer", "format": "int32", "description": "The number of times this event has occurred."})),
            ("eventTime", time("Time when this Event was first observed.")),
            ("firstTimestamp", time("The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)")),
            ("involvedObject", open_object("The object that this event is about.")),
            ("lastTimestamp", time("The time at which the most recent occurrence of this event was recorded.")),
            ("message", string("A human-readable description of the status of this operation.")),
            ("reason", string("This should be a short, machine understandable string that gives the reason for the transition into the object's current status.")),
            ("related", open_object("Optional secondary object for more complex actions.")),
            ("reportingComponent", string("Name of the controller that emitted this Event, e.g. `kubernetes.io/kubelet`.")),
            ("reportingInstance", string("ID of the controller instance, e.g. `kubelet-xyzf`.")),
            ("series", open_object("Data about the Event series this event represents or nil if it's a singleton Event.")),
            ("source", open_object("The component reporting this event. Should be a short machine understandable string.")),
            ("type", string("Type of this event (Normal, Warning), new types could be added in the future")),
        ],
        ("events.k8s.io", "Event") => vec![
            ("action", string("action is what action was taken/failed regarding to the regarding object.")),
            ("deprecatedCount", json!({"type": "integer", "format": "int32", "description": "deprecatedCount is the deprecated field assuring backward compatibility with core.v1 Event type."})),
            ("deprecatedFirstTimestamp", time("deprecatedFirstTimestamp is the deprecated field assuring backward compatibility with core.v1 Event type.")),
            ("deprecatedLastTimestamp", time("deprecatedLastTimestamp is the deprecated field assuring backward compatibility with core.v1 Event type.")),
            ("deprecatedSource", open_object("deprecatedSource is the deprecated field assuring backward compatibility with core.v1 Event type.")),
            ("eventTime", string("eventTime is the time when this Event was first observed. It is required.")),
            ("note", string("note is a human-readable description of the status of this operation.")),
            ("reason", string("reason is why the action was taken. It is human-readable.")),
            ("regarding", open_object("regarding contains the object this Event is about.")),
            ("related", open_object("related is the optional secondary object for more complex actions.")),
            ("reportingController", string("reportingController is the name of the controller that emitted this Event, e.g. `kubernetes.io/kubelet`.")),
            ("reportingInstance", string("reportingInstance is the ID of the controller instance, e.g. `kubelet-xyzf`.")),
            ("series", open_object("series is data about the Event series this event represents or nil if it's a singleton Event.")),
            ("type", string("type is the type of this event (Normal, Warning), new types could be added in the future.")),
        ],
        ("discovery.k8s.io", "EndpointSlice") => vec![
            ("addressType", string("addressType specifies the type of address carried by this EndpointSlice. All addresses in this slice must be the same type.")),
            ("endpoints", open_array("endpoints is a list of unique endpoints in this slice. Each slice may include a maximum of 1000 endpoints.")),
            ("ports", open_array("ports specifies the list of network ports exposed by each endpoint in this slice.")),
        ],
        ("coordination.k8s.io", "Lease") => vec![spec_and_status(r.kind).remove(0)],
        (_, kind) => spec_and_status(kind),
    }
}

fn kind_schema(r: &Resource) -> Value {
    let mut props = Map::new();
    props.insert("apiVersion".into(), string(API_VERSION_DESC));
    props.insert("kind".into(), string(KIND_DESC));
    props.insert(
        "metadata".into(),
        wrapped_ref(&format!("{META}.ObjectMeta"), METADATA_DESC),
    );
    for (k, v) in body_fields(r) {
        props.insert(k.into(), v);
    }
    json!({
        "description": kind_description(r),
        "type": "object",
        "properties": props,
        "x-kubernetes-group-version-kind": [gvk(r.group, r.version, r.kind)],
    })
}

fn list_schema(r: &Resource) -> Value {
    let item = schema_name(r.group, r.version, r.kind);
    json!({
        "description": format!("{}List is a list of {} objects.", r.kind, r.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": string(API_VERSION_DESC),
            "items": {
                "type": "array",
                "description": format!("Items is the list of {} objects.", r.kind),
                "items": {"allOf": [reference(&item)], "default": {}},
            },
            "kind": string(KIND_DESC),
            "metadata": wrapped_ref(&format!("{META}.ListMeta"), LIST_METADATA_DESC),
        },
        "x-kubernetes-group-version-kind": [gvk(r.group, r.version, &format!("{}List", r.kind))],
    })
}

/// The apimachinery schemas every document refers to.
fn meta_schemas(out: &mut Map<String, Value>) {
    let m = |n: &str| format!("{META}.{n}");
    out.insert(m("Time"), json!({"description": "Time is a wrapper around time.Time which supports correct marshaling to YAML and JSON.  Wrappers are provided for many of the factory methods that the time package offers.", "type": "string", "format": "date-time"}));
    out.insert(m("MicroTime"), json!({"description": "MicroTime is version of Time with microsecond level precision.", "type": "string", "format": "date-time"}));
    out.insert(m("FieldsV1"), json!({"description": "FieldsV1 stores a set of fields in a data structure like a Trie, in JSON format.", "type": "object"}));
    out.insert(m("Patch"), json!({"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.", "type": "object"}));
    out.insert(m("OwnerReference"), json!({
        "description": "OwnerReference contains enough information to let you identify an owning object. An owning object must be in the same namespace as the dependent, or be cluster-scoped, so there is no namespace field.",
        "type": "object",
        "required": ["apiVersion", "kind", "name", "uid"],
        "properties": {
            "apiVersion": {"type": "string", "default": "", "description": "API version of the referent."},
            "blockOwnerDeletion": {"type": "boolean", "description": "If true, AND if the owner has the \"foregroundDeletion\" finalizer, then the owner cannot be deleted from the key-value store until this reference is removed."},
            "controller": {"type": "boolean", "description": "If true, this reference points to the managing controller."},
            "kind": {"type": "string", "default": "", "description": "Kind of the referent. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"},
            "name": {"type": "string", "default": "", "description": "Name of the referent. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"},
            "uid": {"type": "string", "default": "", "description": "UID of the referent. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#uids"},
        },
        "x-kubernetes-map-type": "atomic",
    }));
    out.insert(m("ManagedFieldsEntry"), json!({
        "description": "ManagedFieldsEntry is a workflow-id, a FieldSet and the group version of the resource that the fieldset applies to.",
        "type": "object",
        "properties": {
            "apiVersion": string("APIVersion defines the version of this resource that this field set applies to."),
            "fieldsType": string("FieldsType is the discriminator for the different fields format and version. There is currently only one possible value: \"FieldsV1\""),
            "fieldsV1": wrapped_ref(&m("FieldsV1"), "FieldsV1 holds the first JSON version format as described in the \"FieldsV1\" type."),
            "manager": string("Manager is an identifier of the workflow managing these fields."),
            "operation": string("Operation is the type of operation which lead to this ManagedFieldsEntry being created. The only valid values for this field are 'Apply' and 'Update'."),
            "subresource": string("Subresource is the name of the subresource used to update that object, or empty string if the object was updated through the main resource."),
            "time": time("Time is the timestamp of when the ManagedFields entry was added."),
        },
    }));
    out.insert(m("ObjectMeta"), json!({
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
        "type": "object",
        "properties": {
            "annotations": string_map("Annotations is an unstructured key value map stored with a resource that may be set by external tools to store and retrieve arbitrary metadata. They are not queryable and should be preserved when modifying objects. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/annotations", None),
            "creationTimestamp": time("CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists."),
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64", "description": "Number of seconds allowed for this object to gracefully terminate before it will be removed from the system. Only set when deletionTimestamp is also set. May only be shortened. Read-only."},
            "deletionTimestamp": time("DeletionTimestamp is RFC 3339 date and time at which this resource will be deleted. This field is set by the server when a graceful deletion is requested by the user, and is not directly settable by a client.\n\nPopulated by the system when a graceful deletion is requested. Read-only."),
            "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "description": "Must be empty before the object is deleted from the registry. Each entry is an identifier for the responsible component that will remove the entry from the list.", "x-kubernetes-list-type": "set", "x-kubernetes-patch-strategy": "merge"},
            "generateName": string("GenerateName is an optional prefix, used by the server, to generate a unique name ONLY IF the Name field has not been provided."),
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state. Populated by the system. Read-only."},
            "labels": string_map("Map of string keys and values that can be used to organize and categorize (scope and select) objects. May match selectors of replication controllers and services. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels", None),
            "managedFields": {"type": "array", "items": {"allOf": [reference(&m("ManagedFieldsEntry"))], "default": {}}, "description": "ManagedFields maps workflow-id and version to the set of fields that are managed by that workflow. This is mostly for internal housekeeping, and users typically shouldn't need to set or understand this field.", "x-kubernetes-list-type": "atomic"},
            "name": string("Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"),
            "namespace": string("Namespace defines the space within which each name must be unique. An empty namespace is equivalent to the \"default\" namespace, but \"default\" is the canonical representation. Not all objects are required to be scoped to a namespace - the value of this field for those objects will be empty.\n\nMust be a DNS_LABEL. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/namespaces"),
            "ownerReferences": {"type": "array", "items": {"allOf": [reference(&m("OwnerReference"))], "default": {}}, "description": "List of objects depended by this object. If ALL objects in the list have been deleted, this object will be garbage collected.", "x-kubernetes-list-map-keys": ["uid"], "x-kubernetes-list-type": "map", "x-kubernetes-patch-merge-key": "uid", "x-kubernetes-patch-strategy": "merge"},
            "resourceVersion": string("An opaque value that represents the internal version of this object that can be used by clients to determine when objects have changed. Populated by the system. Read-only. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#concurrency-control-and-consistency"),
            "selfLink": string("Deprecated: selfLink is a legacy read-only field that is no longer populated by the system."),
            "uid": string("UID is the unique in time and space value for this object. It is typically generated by the server on successful creation of a resource and is not allowed to change on PUT operations.\n\nPopulated by the system. Read-only. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#uids"),
        },
    }));
    out.insert(m("ListMeta"), json!({
        "description": "ListMeta describes metadata that synthetic resources must have, including lists and various status objects. A resource may have only one of {ObjectMeta, ListMeta}.",
        "type": "object",
        "properties": {
            "continue": string("continue may be set if the user set a limit on the number of items returned, and indicates that the server has more data available."),
            "remainingItemCount": {"type": "integer", "format": "int64", "description": "remainingItemCount is the number of subsequent items in the list which are not included in this list response."},
            "resourceVersion": string("String that identifies the server's internal version of this object that can be used by clients to determine when objects have changed. Populated by the system. Read-only."),
            "selfLink": string("Deprecated: selfLink is a legacy read-only field that is no longer populated by the system."),
        },
    }));
    out.insert(m("Preconditions"), json!({
        "description": "Preconditions must be fulfilled before an operation (update, delete, etc.) is carried out.",
        "type": "object",
        "properties": {
            "resourceVersion": string("Specifies the target ResourceVersion"),
            "uid": string("Specifies the target UID."),
        },
    }));
    out.insert(m("DeleteOptions"), json!({
        "description": "DeleteOptions may be provided when deleting an API object.",
        "type": "object",
        "properties": {
            "apiVersion": string(API_VERSION_DESC),
            "dryRun": {"type": "array", "items": {"type": "string", "default": ""}, "description": "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed", "x-kubernetes-list-type": "atomic"},
            "gracePeriodSeconds": {"type": "integer", "format": "int64", "description": "The duration in seconds before the object should be deleted. Value must be non-negative integer. The value zero indicates delete immediately."},
            "kind": string(KIND_DESC),
            "orphanDependents": {"type": "boolean", "description": "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7."},
            "preconditions": wrapped_ref(&m("Preconditions"), "Must be fulfilled before a deletion is carried out. If not possible, a 409 Conflict status will be returned."),
            "propagationPolicy": string("Whether and how garbage collection will be performed. Acceptable values are: 'Orphan', 'Background', 'Foreground'."),
        },
    }));
    out.insert(m("StatusCause"), json!({
        "description": "StatusCause provides more information about an api.Status failure, including cases when multiple errors are encountered.",
        "type": "object",
        "properties": {
            "field": string("The field of the resource that has caused this error, as named by its JSON serialization."),
            "message": string("A human-readable description of the cause of the error."),
            "reason": string("A machine-readable description of the cause of the error. If this value is empty there is no information available."),
        },
    }));
    out.insert(m("StatusDetails"), json!({
        "description": "StatusDetails is a set of additional properties that MAY be set by the server to provide additional information about a response.",
        "type": "object",
        "properties": {
            "causes": {"type": "array", "items": {"allOf": [reference(&m("StatusCause"))], "default": {}}, "description": "The Causes array includes more details associated with the StatusReason failure.", "x-kubernetes-list-type": "atomic"},
            "group": string("The group attribute of the resource associated with the status StatusReason."),
            "kind": string("The kind attribute of the resource associated with the status StatusReason."),
            "name": string("The name attribute of the resource associated with the status StatusReason (when there is a single name which can be described)."),
            "retryAfterSeconds": {"type": "integer", "format": "int32", "description": "If specified, the time in seconds before the operation should be retried."},
            "uid": string("UID of the resource. (when there is a single resource which can be described)."),
        },
    }));
    out.insert(m("Status"), json!({
        "description": "Status is a return value for calls that don't return other objects.",
        "type": "object",
        "properties": {
            "apiVersion": string(API_VERSION_DESC),
            "code": {"type": "integer", "format": "int32", "description": "Suggested HTTP return code for this status, 0 if not set."},
            "details": wrapped_ref(&m("StatusDetails"), "Extended data associated with the reason."),
            "kind": string(KIND_DESC),
            "message": string("A human-readable description of the status of this operation."),
            "metadata": wrapped_ref(&m("ListMeta"), LIST_METADATA_DESC),
            "reason": string("A machine-readable description of why this operation is in the \"Failure\" status."),
            "status": string("Status of the operation. One of: \"Success\" or \"Failure\"."),
        },
        "x-kubernetes-group-version-kind": [gvk("", "v1", "Status")],
    }));
}

fn scale_schemas(out: &mut Map<String, Value>) {
    out.insert("io.k8s.api.autoscaling.v1.ScaleSpec".into(), json!({
        "description": "ScaleSpec describes the attributes of a scale subresource.",
        "type": "object",
        "properties": {"replicas": {"type": "integer", "format": "int32", "description": "replicas is the desired number of instances for the scaled object."}},
    }));
    out.insert("io.k8s.api.autoscaling.v1.ScaleStatus".into(), json!({
        "description": "ScaleStatus represents the current status of a scale subresource.",
        "type": "object",
        "required": ["replicas"],
        "properties": {
            "replicas": {"type": "integer", "format": "int32", "default": 0, "description": "replicas is the actual number of observed instances of the scaled object."},
            "selector": string("selector is the label query over pods that should match the replicas count."),
        },
    }));
    out.insert("io.k8s.api.autoscaling.v1.Scale".into(), json!({
        "description": "Scale represents a scaling request for a resource.",
        "type": "object",
        "properties": {
            "apiVersion": string(API_VERSION_DESC),
            "kind": string(KIND_DESC),
            "metadata": wrapped_ref(&format!("{META}.ObjectMeta"), METADATA_DESC),
            "spec": wrapped_ref("io.k8s.api.autoscaling.v1.ScaleSpec", "spec defines the behavior of the scale."),
            "status": wrapped_ref("io.k8s.api.autoscaling.v1.ScaleStatus", "status is the current status of the scale."),
        },
        "x-kubernetes-group-version-kind": [gvk("autoscaling", "v1", "Scale")],
    }));
}

// ---------------------------------------------------------------------------------------
// Paths.

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

/// The media types a PATCH accepts, as listed in its requestBody.
pub fn patch_content_types() -> Vec<&'static str> {
    let mut t = vec![
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
    ];
    if ADVERTISE_STRATEGIC_MERGE {
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
fn resource_paths(r: &Resource, paths: &mut Map<String, Value>) {
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
    let patch_body = body(&patch_ref, &patch_content_types(), true);

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

/// The OpenAPI 3.0 document of one group/version, or None when it is not served.
pub fn document(group: &str, version: &str) -> Option<Value> {
    let resources: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if resources.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    meta_schemas(&mut schemas);
    for r in &resources {
        resource_paths(r, &mut paths);
        schemas.insert(schema_name(r.group, r.version, r.kind), kind_schema(r));
        schemas.insert(
            schema_name(r.group, r.version, &format!("{}List", r.kind)),
            list_schema(r),
        );
        if r.subresources.contains(&"scale") {
            scale_schemas(&mut schemas);
        }
    }
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

struct Documents {
    root: Vec<u8>,
    /// `api/v1` → (document bytes, hash)
    by_path: BTreeMap<String, (Vec<u8>, String)>,
}

fn documents() -> &'static Documents {
    static DOCS: OnceLock<Documents> = OnceLock::new();
    DOCS.get_or_init(|| {
        let mut by_path = BTreeMap::new();
        let mut root = Map::new();
        for (g, v) in group_versions() {
            let Some(doc) = document(g, v) else { continue };
            let bytes = serde_json::to_vec(&doc).unwrap_or_default();
            let hash = hex::encode_upper(Sha256::digest(&bytes));
            let path = group_version_path(g, v);
            root.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            );
            by_path.insert(path, (bytes, hash));
        }
        Documents {
            root: serde_json::to_vec(&json!({"paths": root})).unwrap_or_default(),
            by_path,
        }
    })
}

/// The discovery document of `GET /openapi/v3`.
pub fn root() -> Value {
    serde_json::from_slice(&documents().root).unwrap_or(Value::Null)
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
        assert_eq!(op_names("", "v1").gv, "CoreV1");
        assert_eq!(op_names("coordination.k8s.io", "v1").tag, "coordinationV1");
        assert_eq!(op_names("apps", "v1beta1").gv, "AppsV1beta1");
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
            assert_eq!(
                schema["properties"]["metadata"]["allOf"][0]["$ref"],
                "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
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
                assert_eq!(
                    ct.contains_key("application/strategic-merge-patch+json"),
                    ADVERTISE_STRATEGIC_MERGE
                );
            }
        }
    }

    #[test]
    fn schemas_accept_what_they_do_not_describe() {
        let core = doc("");
        let schemas = &core["components"]["schemas"];
        let cm = &schemas["io.k8s.api.core.v1.ConfigMap"]["properties"];
        assert_eq!(cm["data"]["additionalProperties"]["type"], "string");
        let pod = &schemas["io.k8s.api.core.v1.Pod"]["properties"];
        assert_eq!(pod["spec"]["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(pod["spec"]["type"], "object");
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
