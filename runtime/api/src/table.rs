//! Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get` asks for, with
//! kube-apiserver's columns and cell logic for every kind in the resource table
//! (ported from kubernetes/pkg/printers/internalversion/printers.go, 1.32).
//!
//! The server always prints every column, as kube-apiserver does; columns with priority 1
//! are the ones kubectl shows only with `-o wide`.

use super::resources::Resource;
use cairn_wire::time::parse_rfc3339;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};

/// What each row's `object` holds (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// `None`: no object.
    None,
    /// `Metadata` (the default): a `PartialObjectMetadata`.
    Metadata,
    /// `Object`: the full object.
    Object,
}

impl IncludeObject {
    pub fn from_query(v: Option<&str>) -> IncludeObject {
        match v {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Whether an `Accept` header asks for a `meta.k8s.io/v1` Table before any plain media type.
/// kubectl sends `application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json`.
pub fn wants_table(accept: &str) -> bool {
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let (mut as_, mut g, mut v) = ("", "", "");
        for p in parts {
            if let Some((k, val)) = p.split_once('=') {
                match k.trim() {
                    "as" => as_ = val.trim(),
                    "g" => g = val.trim(),
                    "v" => v = val.trim(),
                    _ => {}
                }
            }
        }
        let known = matches!(
            media.as_str(),
            "application/json"
                | "application/yaml"
                | "application/vnd.kubernetes.protobuf"
                | "application/*"
                | "*/*"
        );
        if !known {
            continue;
        }
        if as_.is_empty() {
            // A plain media type comes first: the client wants the object itself.
            return false;
        }
        if as_ == "Table" && g == "meta.k8s.io" && v == "v1" {
            return true;
        }
        // as=Table;v=v1beta1, as=PartialObjectMetadata...: not served, try the next range.
    }
    false
}

/// The Table of `objects` (all of kind `resource.kind`), as kube-apiserver prints it.
/// `metadata` is empty; [`list_to_table`] and [`object_to_table`] fill it.
pub fn table_for(
    resource: &Resource,
    objects: &[Value],
    include_object: IncludeObject,
    now: i64,
) -> Value {
    if resource.custom && !resource.printer_columns.is_empty() {
        return custom_table(resource, objects, include_object, now);
    }
    let printer = printer_for(resource);
    let columns: Vec<Value> = printer
        .columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.ty,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let obj = &normalize(resource, obj);
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array((printer.cells)(obj, now)));
            if let Some(c) = (printer.conditions)(obj) {
                row.insert("conditions".into(), c);
            }
            row.insert("object".into(), row_object(obj, include_object));
            Value::Object(row)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// A custom resource's Table: Name, its CRD's additionalPrinterColumns, then Age.
fn custom_table(
    resource: &Resource,
    objects: &[Value],
    include_object: IncludeObject,
    now: i64,
) -> Value {
    let has_age = resource.printer_columns.iter().any(|(n, _, _)| *n == "Age");
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    for (n, ty, path) in resource.printer_columns {
        let ty = if *ty == "date" { "date" } else { ty };
        columns.push(json!({"name": n, "type": ty, "format": "", "description": format!("Custom resource definition column (in JSONPath format): {path}"), "priority": 0}));
    }
    if !has_age {
        columns.push(json!({"name": "Age", "type": "date", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0}));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut cells = vec![name(obj)];
            for (_, ty, path) in resource.printer_columns {
                let v = simple_json_path(obj, path);
                cells.push(match (*ty, v) {
                    (_, None) => Value::Null,
                    ("date", Some(v)) => json!(since(v, now)),
                    (_, Some(v)) => v.clone(),
                });
            }
            if !has_age {
                cells.push(age(obj, now));
            }
            json!({"cells": cells, "object": row_object(obj, include_object)})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// The value at a simple JSONPath (`.spec.replicas`, `{.status.phase}`, `.a[0].b`).
fn simple_json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut cur = obj;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(i) = index {
            cur = cur.get(i)?;
        }
    }
    (!cur.is_null()).then_some(cur)
}

/// A `…List` answer as a Table, keeping its resourceVersion and continue token.
pub fn list_to_table(resource: &Resource, list: &Value, include: IncludeObject, now: i64) -> Value {
    let items = list["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut table = table_for(resource, items, include, now);
    let mut meta = Map::new();
    for k in ["resourceVersion", "continue", "remainingItemCount"] {
        if let Some(v) = list["metadata"].get(k).filter(|v| !v.is_null()) {
            meta.insert(k.into(), v.clone());
        }
    }
    table["metadata"] = Value::Object(meta);
    table
}

/// One object as a one-row Table (a get, or one watch event).
pub fn object_to_table(
    resource: &Resource,
    obj: &Value,
    include: IncludeObject,
    now: i64,
) -> Value {
    let mut table = table_for(resource, std::slice::from_ref(obj), include, now);
    if let Some(rv) = obj["metadata"].get("resourceVersion") {
        table["metadata"]["resourceVersion"] = rv.clone();
    }
    table
}

/// What a GET handler answers: `value` itself, or its Table when `accept` asks for one.
/// `value` is either a `…List` or one object of `resource`.
pub fn respond(
    resource: &Resource,
    accept: &str,
    query: &HashMap<String, String>,
    value: Value,
) -> Value {
    if !wants_table(accept) {
        return value;
    }
    let include = IncludeObject::from_query(query.get("includeObject").map(String::as_str));
    if value.get("items").is_some() && value["kind"].as_str().is_some_and(|k| k.ends_with("List")) {
        list_to_table(resource, &value, include, cairn_wire::time::now_secs())
    } else {
        object_to_table(resource, &value, include, cairn_wire::time::now_secs())
    }
}

/// The object of one watch event: itself, or a one-row Table when `table` is set.
pub fn watch_object(resource: &Resource, table: Option<IncludeObject>, obj: &Value) -> Value {
    match table {
        Some(include) => object_to_table(resource, obj, include, cairn_wire::time::now_secs()),
        None => obj.clone(),
    }
}

fn row_object(obj: &Value, include: IncludeObject) -> Value {
    match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => obj.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"].clone(),
        }),
    }
}

/// events.k8s.io/v1 Events print with the core printer: map their fields onto core's.
fn normalize(resource: &Resource, obj: &Value) -> Value {
    if resource.kind != "Event" || resource.group != "events.k8s.io" {
        return obj.clone();
    }
    let mut o = obj.clone();
    for (from, to) in [
        ("regarding", "involvedObject"),
        ("note", "message"),
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
        ("deprecatedCount", "count"),
        ("deprecatedSource", "source"),
        ("reportingController", "reportingComponent"),
    ] {
        if let Some(v) = obj.get(from) {
            o[to] = v.clone();
        }
    }
    o
}

// ---------------------------------------------------------------------------------------
// Column definitions.

struct Col {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    priority: i64,
    description: &'static str,
}

const fn col(name: &'static str, ty: &'static str, description: &'static str) -> Col {
    Col {
        name,
        ty,
        format: "",
        priority: 0,
        description,
    }
}

const fn wide(name: &'static str, ty: &'static str, description: &'static str) -> Col {
    Col {
        name,
        ty,
        format: "",
        priority: 1,
        description,
    }
}

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const CONTAINERS_DESC: &str = "Names of each container in the template.";
const IMAGES_DESC: &str = "Images referenced by each container in the template.";
const SELECTOR_DESC: &str = "A label query over pods that should match the replica count. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors";

const NAME: Col = Col {
    name: "Name",
    ty: "string",
    format: "name",
    priority: 0,
    description: NAME_DESC,
};
const AGE: Col = col("Age", "string", AGE_DESC);

const NAMESPACE_COLS: &[Col] = &[
    NAME,
    col("Status", "string", "The status of the namespace"),
    AGE,
];

const NODE_COLS: &[Col] = &[
    NAME,
    col("Status", "string", "The status of the node"),
    col("Roles", "string", "The roles of the node"),
    AGE,
    col("Version", "string", "Kubelet Version reported by the node."),
    wide("Internal-IP", "string", "List of addresses reachable to the node. Queried from cloud provider, if available."),
    wide("External-IP", "string", "List of addresses reachable to the node. Queried from cloud provider, if available."),
    wide("OS-Image", "string", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
    wide("Kernel-Version", "string", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
    wide("Container-Runtime", "string", "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
];

const POD_COLS: &[Col] = &[
    NAME,
    col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
    col("Status", "string", "The aggregate status of the containers in this pod."),
    col("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
    AGE,
    wide("IP", "string", "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
    wide("Node", "string", "NodeName indicates in which node this pod is scheduled."),
    wide("Nominated Node", "string", "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods."),
    wide("Readiness Gates", "string", "If specified, all readiness gates will be evaluated for pod readiness."),
];

const SERVICE_COLS: &[Col] = &[
    NAME,
    col("Type", "string", "type determines how the Service is exposed. Defaults to ClusterIP."),
    col("Cluster-IP", "string", "clusterIP is the IP address of the service and is usually assigned randomly."),
    col("External-IP", "string", "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
    col("Port(s)", "string", "The list of ports that are exposed by this service."),
    AGE,
    wide("Selector", "string", "Route service traffic to pods with label keys and values matching this selector."),
];

const ENDPOINTS_COLS: &[Col] = &[
    NAME,
    col(
        "Endpoints",
        "string",
        "The set of all endpoints is the union of all subsets.",
    ),
    AGE,
];

const CONFIGMAP_COLS: &[Col] = &[
    NAME,
    col("Data", "string", "Data contains the configuration data."),
    AGE,
];

const SECRET_COLS: &[Col] = &[
    NAME,
    col(
        "Type",
        "string",
        "Used to facilitate programmatic handling of secret data.",
    ),
    col("Data", "string", "Data contains the secret data."),
    AGE,
];

const SERVICEACCOUNT_COLS: &[Col] = &[
    NAME,
    col("Secrets", "string", "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."),
    AGE,
];

const EVENT_COLS: &[Col] = &[
    col("Last Seen", "string", "The time at which the most recent occurrence of this event was recorded."),
    col("Type", "string", "Type of this event (Normal, Warning), new types could be added in the future"),
    col("Reason", "string", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
    col("Object", "string", "The object that this event is about."),
    wide("Subobject", "string", "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement."),
    wide("Source", "string", "The component reporting this event. Should be a short machine understandable string."),
    col("Message", "string", "A human-readable description of the status of this operation."),
    wide("First Seen", "string", "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)"),
    wide("Count", "string", "The number of times this event has occurred."),
    Col {
        name: "Name",
        ty: "string",
        format: "name",
        priority: 1,
        description: NAME_DESC,
    },
];

const LEASE_COLS: &[Col] = &[
    NAME,
    col(
        "Holder",
        "string",
        "holderIdentity contains the identity of the holder of a current lease.",
    ),
    AGE,
];

const DEPLOYMENT_COLS: &[Col] = &[
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    col("Up-to-date", "string", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
    col("Available", "string", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
    AGE,
    wide("Containers", "string", CONTAINERS_DESC),
    wide("Images", "string", IMAGES_DESC),
    wide("Selector", "string", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
];

const REPLICASET_COLS: &[Col] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "Replicas is the number of desired replicas.",
    ),
    col(
        "Current",
        "integer",
        "Replicas is the most recently observed number of replicas.",
    ),
    col(
        "Ready",
        "integer",
        "The number of ready replicas for this replica set.",
    ),
    AGE,
    wide("Containers", "string", CONTAINERS_DESC),
    wide("Images", "string", IMAGES_DESC),
    wide("Selector", "string", SELECTOR_DESC),
];

const DAEMONSET_COLS: &[Col] = &[
    NAME,
    col("Desired", "integer", "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod)."),
    col("Current", "integer", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
    col("Ready", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
    col("Up-to-date", "integer", "The total number of nodes that are running updated daemon pod"),
    col("Available", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)"),
    col("Node Selector", "string", "NodeSelector is a selector which must be true for the pod to fit on a node."),
    AGE,
    wide("Containers", "string", CONTAINERS_DESC),
    wide("Images", "string", IMAGES_DESC),
    wide("Selector", "string", SELECTOR_DESC),
];

const STATEFULSET_COLS: &[Col] = &[
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    AGE,
    wide("Containers", "string", CONTAINERS_DESC),
    wide("Images", "string", IMAGES_DESC),
];

const JOB_COLS: &[Col] = &[
    NAME,
    col("Status", "string", "Status of the job."),
    col(
        "Completions",
        "string",
        "The number of pods which reached phase Succeeded.",
    ),
    col("Duration", "string", "Time required to complete the job."),
    AGE,
    wide("Containers", "string", CONTAINERS_DESC),
    wide("Images", "string", IMAGES_DESC),
    wide(
        "Selector",
        "string",
        "A label query over pods that should match the pod count.",
    ),
];

const CRONJOB_COLS: &[Col] = &[
    NAME,
    col("Schedule", "string", "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
    col("Timezone", "string", "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones."),
    col("Suspend", "boolean", "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions."),
    col("Active", "integer", "A list of pointers to currently running jobs."),
    col("Last Schedule", "string", "Information when was the last time the job was successfully scheduled."),
    AGE,
    wide("Containers", "string", CONTAINERS_DESC),
    wide("Images", "string", IMAGES_DESC),
    wide("Selector", "string", "A label query over pods that should match the pod count."),
];

const ENDPOINTSLICE_COLS: &[Col] = &[
    NAME,
    col(
        "AddressType",
        "string",
        "addressType specifies the type of address carried by this EndpointSlice.",
    ),
    col(
        "Ports",
        "string",
        "ports specifies the list of network ports exposed by each endpoint in this slice.",
    ),
    col(
        "Endpoints",
        "string",
        "endpoints is a list of unique endpoints in this slice.",
    ),
    AGE,
];

const CRD_COLS: &[Col] = &[
    NAME,
    Col {
        name: "Created At",
        ty: "date",
        format: "",
        priority: 0,
        description: AGE_DESC,
    },
];

const DEFAULT_COLS: &[Col] = &[NAME, AGE];

struct Printer {
    columns: &'static [Col],
    cells: fn(&Value, i64) -> Vec<Value>,
    conditions: fn(&Value) -> Option<Value>,
}

fn no_conditions(_: &Value) -> Option<Value> {
    None
}

fn printer_for(r: &Resource) -> Printer {
    let p = |columns, cells| Printer {
        columns,
        cells,
        conditions: no_conditions,
    };
    match (r.group, r.kind) {
        ("", "Namespace") => p(NAMESPACE_COLS, namespace_cells),
        ("", "Node") => p(NODE_COLS, node_cells),
        ("", "Pod") => Printer {
            columns: POD_COLS,
            cells: pod_cells,
            conditions: pod_conditions,
        },
        ("", "Service") => p(SERVICE_COLS, service_cells),
        ("", "Endpoints") => p(ENDPOINTS_COLS, endpoints_cells),
        ("", "ConfigMap") => p(CONFIGMAP_COLS, configmap_cells),
        ("", "Secret") => p(SECRET_COLS, secret_cells),
        ("", "ServiceAccount") => p(SERVICEACCOUNT_COLS, serviceaccount_cells),
        ("", "Event") | ("events.k8s.io", "Event") => p(EVENT_COLS, event_cells),
        ("coordination.k8s.io", "Lease") => p(LEASE_COLS, lease_cells),
        ("apps", "Deployment") => p(DEPLOYMENT_COLS, deployment_cells),
        ("apps", "ReplicaSet") => p(REPLICASET_COLS, replicaset_cells),
        ("apps", "DaemonSet") => p(DAEMONSET_COLS, daemonset_cells),
        ("apps", "StatefulSet") => p(STATEFULSET_COLS, statefulset_cells),
        ("batch", "Job") => p(JOB_COLS, job_cells),
        ("batch", "CronJob") => p(CRONJOB_COLS, cronjob_cells),
        ("discovery.k8s.io", "EndpointSlice") => p(ENDPOINTSLICE_COLS, endpointslice_cells),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => p(CRD_COLS, crd_cells),
        ("", "PersistentVolume") => p(PV_COLS, pv_cells),
        ("", "PersistentVolumeClaim") => p(PVC_COLS, pvc_cells),
        ("", "ReplicationController") => p(RC_COLS, rc_cells),
        ("", "PodTemplate") => p(PODTEMPLATE_COLS, podtemplate_cells),
        ("", "LimitRange") => p(CREATED_AT_COLS, created_at_cells),
        ("", "ResourceQuota") => p(QUOTA_COLS, quota_cells),
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            p(CREATED_AT_COLS, created_at_cells)
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            p(BINDING_COLS, binding_cells)
        }
        ("policy", "PodDisruptionBudget") => p(PDB_COLS, pdb_cells),
        ("networking.k8s.io", "Ingress") => p(INGRESS_COLS, ingress_cells),
        ("networking.k8s.io", "IngressClass") => p(INGRESSCLASS_COLS, ingressclass_cells),
        ("networking.k8s.io", "NetworkPolicy") => p(NETWORKPOLICY_COLS, networkpolicy_cells),
        ("storage.k8s.io", "StorageClass") => p(STORAGECLASS_COLS, storageclass_cells),
        ("storage.k8s.io", "CSIDriver") => p(CSIDRIVER_COLS, csidriver_cells),
        ("storage.k8s.io", "CSINode") => p(CSINODE_COLS, csinode_cells),
        ("storage.k8s.io", "VolumeAttachment") => p(VOLUMEATTACHMENT_COLS, volumeattachment_cells),
        ("autoscaling", "HorizontalPodAutoscaler") => p(HPA_COLS, hpa_cells),
        ("scheduling.k8s.io", "PriorityClass") => p(PRIORITYCLASS_COLS, priorityclass_cells),
        ("admissionregistration.k8s.io", _) => p(WEBHOOK_COLS, webhook_cells),
        ("apiregistration.k8s.io", "APIService") => p(APISERVICE_COLS, apiservice_cells),
        ("certificates.k8s.io", "CertificateSigningRequest") => p(CSR_COLS, csr_cells),
        ("node.k8s.io", "RuntimeClass") => p(RUNTIMECLASS_COLS, runtimeclass_cells),
        _ => p(DEFAULT_COLS, default_cells),
    }
}

// ---------------------------------------------------------------------------------------
// Small accessors.

fn st(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

fn name(obj: &Value) -> Value {
    json!(st(&obj["metadata"]["name"]))
}

fn age(obj: &Value, now: i64) -> Value {
    json!(since(&obj["metadata"]["creationTimestamp"], now))
}

/// `translateTimestampSince`: the human age of a timestamp, `<unknown>` when unset.
fn since(ts: &Value, now: i64) -> String {
    match ts.as_str().and_then(parse_rfc3339) {
        Some(t) => human_duration(now - t),
        None => "<unknown>".into(),
    }
}

/// kube's `duration.HumanDuration`: `5s`, `3m2s`, `4h5m`, `2d3h`, `45d`, `2y3d`.
pub fn human_duration(secs: i64) -> String {
    // A deviation of up to 2 seconds (excluded) counts as now: clocks differ a little.
    if secs < -1 {
        return "<invalid>".into();
    } else if secs < 0 {
        return "0s".into();
    } else if secs < 60 * 2 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        if s == 0 {
            return format!("{minutes}m");
        }
        return format!("{minutes}m{s}s");
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            return format!("{hours}h");
        }
        format!("{hours}h{m}m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            return format!("{}d", hours / 24);
        }
        format!("{}d{h}h", hours / 24)
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 {
            return format!("{}y", hours / 24 / 365);
        }
        format!("{}y{dy}d", hours / 24 / 365)
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

/// `labels.FormatLabels`: `a=1,b=2` sorted by key, `<none>` when empty.
fn format_labels(m: &Value) -> String {
    let mut pairs: Vec<String> = m
        .as_object()
        .map(|o| o.iter().map(|(k, v)| format!("{k}={}", st(v))).collect())
        .unwrap_or_default();
    pairs.sort();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

/// `metav1.LabelSelectorAsSelector(...).String()`; Err for an invalid selector.
fn selector_string(sel: &Value) -> Result<String, ()> {
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(ml) = sel["matchLabels"].as_object() {
        for (k, v) in ml {
            reqs.push((k.clone(), format!("{k}={}", st(v))));
        }
    }
    for e in arr(&sel["matchExpressions"]) {
        let key = st(&e["key"]).to_string();
        let values: BTreeSet<&str> = arr(&e["values"]).iter().map(st).collect();
        let values = values.into_iter().collect::<Vec<_>>().join(",");
        let s = match st(&e["operator"]) {
            "In" => format!("{key} in ({values})"),
            "NotIn" => format!("{key} notin ({values})"),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            _ => return Err(()),
        };
        reqs.push((key, s));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(reqs
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(","))
}

/// `metav1.FormatLabelSelector`: `<none>` when empty, `<error>` when invalid.
fn format_label_selector(sel: &Value) -> String {
    match selector_string(sel) {
        Ok(s) if s.is_empty() => "<none>".into(),
        Ok(s) => s,
        Err(()) => "<error>".into(),
    }
}

/// `layoutContainerCells`: container names and images, comma-separated.
fn containers_and_images(containers: &Value) -> (Value, Value) {
    let c = arr(containers);
    let names: Vec<&str> = c.iter().map(|x| st(&x["name"])).collect();
    let images: Vec<&str> = c.iter().map(|x| st(&x["image"])).collect();
    (json!(names.join(",")), json!(images.join(",")))
}

fn bool_cell(v: &Value) -> String {
    // kube defaults unset booleans such as suspend to false before printing.
    if v.as_bool().unwrap_or(false) {
        "True".into()
    } else {
        "False".into()
    }
}

// ---------------------------------------------------------------------------------------
// Printers, one per kind.

fn default_cells(obj: &Value, now: i64) -> Vec<Value> {
    vec![name(obj), age(obj, now)]
}

fn crd_cells(obj: &Value, _now: i64) -> Vec<Value> {
    let created = obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(parse_rfc3339)
        .map(cairn_wire::time::rfc3339)
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".into());
    vec![name(obj), json!(created)]
}

fn namespace_cells(obj: &Value, now: i64) -> Vec<Value> {
    vec![name(obj), json!(st(&obj["status"]["phase"])), age(obj, now)]
}

fn node_address(obj: &Value, ty: &str) -> String {
    arr(&obj["status"]["addresses"])
        .iter()
        .find(|a| st(&a["type"]) == ty)
        .map(|a| st(&a["address"]).to_string())
        .unwrap_or_else(|| "<none>".into())
}

fn node_cells(obj: &Value, now: i64) -> Vec<Value> {
    let mut status: Vec<String> = Vec::new();
    if let Some(c) = arr(&obj["status"]["conditions"])
        .iter()
        .rev()
        .find(|c| st(&c["type"]) == "Ready")
    {
        status.push(if st(&c["status"]) == "True" {
            "Ready".into()
        } else {
            "NotReady".into()
        });
    }
    if status.is_empty() {
        status.push("Unknown".into());
    }
    if obj["spec"]["unschedulable"].as_bool().unwrap_or(false) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles = BTreeSet::new();
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.insert(role.to_string());
                }
            } else if k == "kubernetes.io/role" && !st(v).is_empty() {
                roles.insert(st(v).to_string());
            }
        }
    }
    let roles = or_none(&roles.into_iter().collect::<Vec<_>>().join(","));
    let info = &obj["status"]["nodeInfo"];
    let unknown = |v: &Value| {
        if st(v).is_empty() {
            "<unknown>".to_string()
        } else {
            st(v).to_string()
        }
    };
    vec![
        name(obj),
        json!(status.join(",")),
        json!(roles),
        age(obj, now),
        json!(st(&info["kubeletVersion"])),
        json!(node_address(obj, "InternalIP")),
        json!(node_address(obj, "ExternalIP")),
        json!(unknown(&info["osImage"])),
        json!(unknown(&info["kernelVersion"])),
        json!(unknown(&info["containerRuntimeVersion"])),
    ]
}

fn condition_true(conditions: &Value, ty: &str) -> bool {
    arr(conditions)
        .iter()
        .any(|c| st(&c["type"]) == ty && st(&c["status"]) == "True")
}

fn pod_conditions(obj: &Value) -> Option<Value> {
    match st(&obj["status"]["phase"]) {
        "Succeeded" => Some(
            json!([{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}]),
        ),
        "Failed" => Some(
            json!([{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]),
        ),
        _ => None,
    }
}

/// The reason a terminated container shows: its reason, else `Signal:n` / `ExitCode:n`.
fn terminated_reason(t: &Value, prefix: &str) -> String {
    if !st(&t["reason"]).is_empty() {
        return format!("{prefix}{}", st(&t["reason"]));
    }
    if int(&t["signal"]) != 0 {
        format!("{prefix}Signal:{}", int(&t["signal"]))
    } else {
        format!("{prefix}ExitCode:{}", int(&t["exitCode"]))
    }
}

fn pod_cells(pod: &Value, now: i64) -> Vec<Value> {
    let spec = &pod["spec"];
    let status = &pod["status"];
    let mut restarts = 0i64;
    let mut sidecar_restarts = 0i64;
    let mut total = arr(&spec["containers"]).len();
    let mut ready = 0usize;
    let mut last_restart: Option<i64> = None;
    let mut last_sidecar_restart: Option<i64> = None;

    let phase = st(&status["phase"]);
    let mut reason = if st(&status["reason"]).is_empty() {
        phase.to_string()
    } else {
        st(&status["reason"]).to_string()
    };
    for c in arr(&status["conditions"]) {
        if st(&c["type"]) == "PodScheduled" && st(&c["reason"]) == "SchedulingGated" {
            reason = "SchedulingGated".into();
        }
    }

    let init_specs = arr(&spec["initContainers"]);
    let is_sidecar = |name: &str| {
        init_specs
            .iter()
            .any(|c| st(&c["name"]) == name && st(&c["restartPolicy"]) == "Always")
    };
    total += init_specs
        .iter()
        .filter(|c| st(&c["restartPolicy"]) == "Always")
        .count();
    let finished = |c: &Value| {
        c["lastState"]["terminated"]["finishedAt"]
            .as_str()
            .and_then(parse_rfc3339)
    };

    let mut initializing = false;
    for (i, c) in arr(&status["initContainerStatuses"]).iter().enumerate() {
        restarts += int(&c["restartCount"]);
        if let Some(t) = finished(c) {
            last_restart = last_restart.max(Some(t));
        }
        let sidecar = is_sidecar(st(&c["name"]));
        if sidecar {
            sidecar_restarts += int(&c["restartCount"]);
            if let Some(t) = finished(c) {
                last_sidecar_restart = last_sidecar_restart.max(Some(t));
            }
        }
        let terminated = &c["state"]["terminated"];
        let waiting = &c["state"]["waiting"];
        if terminated.is_object() && int(&terminated["exitCode"]) == 0 {
            continue;
        }
        if sidecar && c["started"].as_bool().unwrap_or(false) {
            if c["ready"].as_bool().unwrap_or(false) {
                ready += 1;
            }
            continue;
        }
        if terminated.is_object() {
            reason = terminated_reason(terminated, "Init:");
        } else if waiting.is_object()
            && !st(&waiting["reason"]).is_empty()
            && st(&waiting["reason"]) != "PodInitializing"
        {
            reason = format!("Init:{}", st(&waiting["reason"]));
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }

    if !initializing || condition_true(&status["conditions"], "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for c in arr(&status["containerStatuses"]).iter().rev() {
            restarts += int(&c["restartCount"]);
            if let Some(t) = finished(c) {
                last_restart = last_restart.max(Some(t));
            }
            let waiting = &c["state"]["waiting"];
            let terminated = &c["state"]["terminated"];
            if !st(&waiting["reason"]).is_empty() {
                reason = st(&waiting["reason"]).to_string();
            } else if terminated.is_object() {
                reason = terminated_reason(terminated, "");
            } else if c["ready"].as_bool().unwrap_or(false) && c["state"]["running"].is_object() {
                has_running = true;
                ready += 1;
            }
        }
        // A pod with a container still running is Running, not Completed.
        if reason == "Completed" && has_running {
            reason = if condition_true(&status["conditions"], "Ready") {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }

    let deleting = pod["metadata"]["deletionTimestamp"].is_string();
    if deleting && st(&status["reason"]) == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }

    let restarts_cell = match last_restart {
        Some(t) => format!("{restarts} ({} ago)", human_duration(now - t)),
        None => restarts.to_string(),
    };

    let ip = arr(&status["podIPs"])
        .first()
        .map(|p| st(&p["ip"]))
        .filter(|s| !s.is_empty())
        .unwrap_or(st(&status["podIP"]));
    let gates = arr(&spec["readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conditions = arr(&status["conditions"]);
        let true_count = gates
            .iter()
            .filter(|g| {
                conditions
                    .iter()
                    .find(|c| st(&c["type"]) == st(&g["conditionType"]))
                    .is_some_and(|c| st(&c["status"]) == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };
    vec![
        name(pod),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_cell),
        age(pod, now),
        json!(or_none(ip)),
        json!(or_none(st(&spec["nodeName"]))),
        json!(or_none(st(&status["nominatedNodeName"]))),
        json!(readiness_gates),
    ]
}

/// `makePortString`: `80/TCP`, `80:30080/TCP`, comma-separated.
pub fn service_ports(ports: &Value) -> String {
    arr(ports)
        .iter()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            let node_port = int(&p["nodePort"]);
            if node_port > 0 {
                format!("{}:{node_port}/{proto}", int(&p["port"]))
            } else {
                format!("{}/{proto}", int(&p["port"]))
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn service_external_ip(svc: &Value) -> String {
    let external: Vec<&str> = arr(&svc["spec"]["externalIPs"]).iter().map(st).collect();
    match svc["spec"]["type"].as_str().unwrap_or("ClusterIP") {
        "ClusterIP" | "NodePort" => or_none(&external.join(",")),
        "LoadBalancer" => {
            let lb: BTreeSet<&str> = arr(&svc["status"]["loadBalancer"]["ingress"])
                .iter()
                .filter_map(|i| {
                    [st(&i["ip"]), st(&i["hostname"])]
                        .into_iter()
                        .find(|s| !s.is_empty())
                })
                .collect();
            let mut all: Vec<&str> = lb.into_iter().collect();
            all.extend(external);
            if all.is_empty() {
                "<pending>".into()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => st(&svc["spec"]["externalName"]).to_string(),
        _ => "<unknown>".into(),
    }
}

fn service_cells(svc: &Value, now: i64) -> Vec<Value> {
    let spec = &svc["spec"];
    let cluster_ip = arr(&spec["clusterIPs"])
        .first()
        .map(st)
        .filter(|s| !s.is_empty())
        .unwrap_or(st(&spec["clusterIP"]));
    vec![
        name(svc),
        json!(spec["type"].as_str().unwrap_or("ClusterIP")),
        json!(or_none(cluster_ip)),
        json!(service_external_ip(svc)),
        json!(or_none(&service_ports(&spec["ports"]))),
        age(svc, now),
        json!(format_labels(&spec["selector"])),
    ]
}

fn join_host_port(ip: &str, port: i64) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// `formatEndpoints`: at most three `ip:port`, then `+ n more...`.
fn format_endpoints(ep: &Value) -> String {
    let subsets = arr(&ep["subsets"]);
    if subsets.is_empty() {
        return "<none>".into();
    }
    const MAX: usize = 3;
    let mut list = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for ss in subsets {
        let addresses = arr(&ss["addresses"]);
        let ports = arr(&ss["ports"]);
        if ports.is_empty() {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(st(&a["ip"]).to_string());
            }
            continue;
        }
        for p in ports {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(join_host_port(st(&a["ip"]), int(&p["port"])));
            }
        }
    }
    let ret = list.join(",");
    if more {
        format!("{ret} + {} more...", count - MAX)
    } else {
        ret
    }
}

fn endpoints_cells(obj: &Value, now: i64) -> Vec<Value> {
    vec![name(obj), json!(format_endpoints(obj)), age(obj, now)]
}

fn map_len(v: &Value) -> usize {
    v.as_object().map_or(0, Map::len)
}

fn configmap_cells(obj: &Value, now: i64) -> Vec<Value> {
    let n = map_len(&obj["data"]) + map_len(&obj["binaryData"]);
    vec![name(obj), json!(n), age(obj, now)]
}

fn secret_cells(obj: &Value, now: i64) -> Vec<Value> {
    // The server folds stringData into data on write; count both to be safe.
    let mut keys: BTreeSet<&str> = BTreeSet::new();
    for f in ["data", "stringData"] {
        if let Some(m) = obj[f].as_object() {
            keys.extend(m.keys().map(String::as_str));
        }
    }
    vec![
        name(obj),
        json!(obj["type"].as_str().unwrap_or("Opaque")),
        json!(keys.len()),
        age(obj, now),
    ]
}

fn serviceaccount_cells(obj: &Value, now: i64) -> Vec<Value> {
    vec![name(obj), json!(arr(&obj["secrets"]).len()), age(obj, now)]
}

fn event_cells(ev: &Value, now: i64) -> Vec<Value> {
    let first = if ev["firstTimestamp"]
        .as_str()
        .and_then(parse_rfc3339)
        .is_some()
    {
        since(&ev["firstTimestamp"], now)
    } else {
        since(&ev["eventTime"], now)
    };
    let mut last = if ev["lastTimestamp"]
        .as_str()
        .and_then(parse_rfc3339)
        .is_some()
    {
        since(&ev["lastTimestamp"], now)
    } else {
        first.clone()
    };
    let mut count = int(&ev["count"]);
    if ev["series"].is_object() {
        last = since(&ev["series"]["lastObservedTime"], now);
        count = int(&ev["series"]["count"]);
    } else if count == 0 {
        count = 1;
    }
    let involved = &ev["involvedObject"];
    let kind = st(&involved["kind"]).to_lowercase();
    let target = if st(&involved["name"]).is_empty() {
        kind
    } else {
        format!("{kind}/{}", st(&involved["name"]))
    };
    let component = [
        st(&ev["source"]["component"]),
        st(&ev["reportingComponent"]),
    ]
    .into_iter()
    .find(|s| !s.is_empty())
    .unwrap_or("");
    let instance = [st(&ev["source"]["host"]), st(&ev["reportingInstance"])]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or("");
    let source = if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };
    vec![
        json!(last),
        json!(st(&ev["type"])),
        json!(st(&ev["reason"])),
        json!(target),
        json!(st(&involved["fieldPath"])),
        json!(source),
        json!(st(&ev["message"]).trim()),
        json!(first),
        json!(count),
        name(ev),
    ]
}

fn lease_cells(obj: &Value, now: i64) -> Vec<Value> {
    vec![
        name(obj),
        json!(or_none(st(&obj["spec"]["holderIdentity"]))),
        age(obj, now),
    ]
}

/// spec.replicas as kube defaults it (1 when unset).
fn desired_replicas(obj: &Value) -> i64 {
    obj["spec"]["replicas"].as_i64().unwrap_or(1)
}

fn deployment_cells(obj: &Value, now: i64) -> Vec<Value> {
    let status = &obj["status"];
    let (containers, images) =
        containers_and_images(&obj["spec"]["template"]["spec"]["containers"]);
    let selector =
        selector_string(&obj["spec"]["selector"]).unwrap_or_else(|()| "<invalid>".into());
    vec![
        name(obj),
        json!(format!(
            "{}/{}",
            int(&status["readyReplicas"]),
            desired_replicas(obj)
        )),
        json!(int(&status["updatedReplicas"])),
        json!(int(&status["availableReplicas"])),
        age(obj, now),
        containers,
        images,
        json!(selector),
    ]
}

fn replicaset_cells(obj: &Value, now: i64) -> Vec<Value> {
    let status = &obj["status"];
    let (containers, images) =
        containers_and_images(&obj["spec"]["template"]["spec"]["containers"]);
    vec![
        name(obj),
        json!(desired_replicas(obj)),
        json!(int(&status["replicas"])),
        json!(int(&status["readyReplicas"])),
        age(obj, now),
        containers,
        images,
        json!(format_label_selector(&obj["spec"]["selector"])),
    ]
}

fn daemonset_cells(obj: &Value, now: i64) -> Vec<Value> {
    let status = &obj["status"];
    let (containers, images) =
        containers_and_images(&obj["spec"]["template"]["spec"]["containers"]);
    vec![
        name(obj),
        json!(int(&status["desiredNumberScheduled"])),
        json!(int(&status["currentNumberScheduled"])),
        json!(int(&status["numberReady"])),
        json!(int(&status["updatedNumberScheduled"])),
        json!(int(&status["numberAvailable"])),
        json!(format_labels(
            &obj["spec"]["template"]["spec"]["nodeSelector"]
        )),
        age(obj, now),
        containers,
        images,
        json!(format_label_selector(&obj["spec"]["selector"])),
    ]
}

fn statefulset_cells(obj: &Value, now: i64) -> Vec<Value> {
    let (containers, images) =
        containers_and_images(&obj["spec"]["template"]["spec"]["containers"]);
    vec![
        name(obj),
        json!(format!(
            "{}/{}",
            int(&obj["status"]["readyReplicas"]),
            desired_replicas(obj)
        )),
        age(obj, now),
        containers,
        images,
    ]
}

fn job_cells(obj: &Value, now: i64) -> Vec<Value> {
    let spec = &obj["spec"];
    let status = &obj["status"];
    let succeeded = int(&status["succeeded"]);
    let completions = match spec["completions"].as_i64() {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let parallelism = int(&spec["parallelism"]);
            if parallelism > 1 {
                format!("{succeeded}/1 of {parallelism}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let start = status["startTime"].as_str().and_then(parse_rfc3339);
    let end = status["completionTime"].as_str().and_then(parse_rfc3339);
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(s), None) => human_duration(now - s),
        (Some(s), Some(e)) => human_duration(e - s),
    };
    let conditions = &status["conditions"];
    let state = if condition_true(conditions, "Complete") {
        "Complete"
    } else if condition_true(conditions, "Failed") {
        "Failed"
    } else if obj["metadata"]["deletionTimestamp"].is_string() {
        "Terminating"
    } else if condition_true(conditions, "Suspended") {
        "Suspended"
    } else if condition_true(conditions, "FailureTarget") {
        "FailureTarget"
    } else if condition_true(conditions, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let (containers, images) = containers_and_images(&spec["template"]["spec"]["containers"]);
    vec![
        name(obj),
        json!(state),
        json!(completions),
        json!(duration),
        age(obj, now),
        containers,
        images,
        json!(format_label_selector(&spec["selector"])),
    ]
}

fn cronjob_cells(obj: &Value, now: i64) -> Vec<Value> {
    let spec = &obj["spec"];
    let last = match obj["status"]["lastScheduleTime"].as_str() {
        Some(_) => since(&obj["status"]["lastScheduleTime"], now),
        None => "<none>".into(),
    };
    let job_spec = &spec["jobTemplate"]["spec"];
    let (containers, images) = containers_and_images(&job_spec["template"]["spec"]["containers"]);
    vec![
        name(obj),
        json!(st(&spec["schedule"])),
        json!(or_none(st(&spec["timeZone"]))),
        json!(bool_cell(&spec["suspend"])),
        json!(arr(&obj["status"]["active"]).len()),
        json!(last),
        age(obj, now),
        containers,
        images,
        json!(format_label_selector(&job_spec["selector"])),
    ]
}

fn list_with_more(list: Vec<String>, more: bool, count: usize, max: usize) -> String {
    let ret = list.join(",");
    if more {
        format!("{ret} + {} more...", count - max)
    } else if ret.is_empty() {
        "<unset>".into()
    } else {
        ret
    }
}

fn endpointslice_cells(obj: &Value, now: i64) -> Vec<Value> {
    const MAX: usize = 3;
    let (mut ports, mut more, mut count) = (Vec::new(), false, 0);
    for p in arr(&obj["ports"]) {
        if ports.len() < MAX {
            ports.push(match (p["port"].as_i64(), p["name"].as_str()) {
                (Some(n), _) => n.to_string(),
                (None, Some(n)) => n.to_string(),
                (None, None) => "*".to_string(),
            });
        } else if ports.len() == MAX {
            more = true;
        }
        count += 1;
    }
    let ports = list_with_more(ports, more, count, MAX);
    let (mut addrs, mut more, mut count) = (Vec::new(), false, 0);
    for e in arr(&obj["endpoints"]) {
        for a in arr(&e["addresses"]) {
            if addrs.len() < MAX {
                addrs.push(st(a).to_string());
            } else if addrs.len() == MAX {
                more = true;
            }
            count += 1;
        }
    }
    let endpoints = list_with_more(addrs, more, count, MAX);
    vec![
        name(obj),
        json!(st(&obj["addressType"])),
        json!(ports),
        json!(endpoints),
        age(obj, now),
    ]
}

// The printers of the kinds beyond the workloads, with kube-apiserver's columns
// (pkg/printers/internalversion).

const CREATED_AT: Col = col("Created At", "date", AGE_DESC);
const CREATED_AT_COLS: &[Col] = &[NAME, CREATED_AT];

const PV_COLS: &[Col] = &[
    NAME,
    col("Capacity", "string", "capacity is the description of the persistent volume's resources and capacity."),
    col("Access Modes", "string", "accessModes contains all ways the volume can be mounted."),
    col("Reclaim Policy", "string", "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim."),
    col("Status", "string", "phase indicates if a volume is available, bound to a claim, or released by a claim."),
    col("Claim", "string", "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim."),
    col("StorageClass", "string", "storageClassName is the name of StorageClass to which this persistent volume belongs."),
    col("VolumeAttributesClass", "string", "Name of VolumeAttributesClass to which this persistent volume belongs."),
    col("Reason", "string", "reason is a brief CamelCase string that describes any failure."),
    AGE,
    wide("VolumeMode", "string", "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state."),
];

const PVC_COLS: &[Col] = &[
    NAME,
    col("Status", "string", "phase represents the current phase of PersistentVolumeClaim."),
    col("Volume", "string", "volumeName is the binding reference to the PersistentVolume backing this claim."),
    col("Capacity", "string", "capacity represents the actual resources of the underlying volume."),
    col("Access Modes", "string", "accessModes contains the desired access modes the volume should have."),
    col("StorageClass", "string", "storageClassName is the name of the StorageClass required by the claim."),
    col("VolumeAttributesClass", "string", "volumeAttributesClassName may be used to set the VolumeAttributesClass used by this claim."),
    AGE,
    wide("VolumeMode", "string", "volumeMode defines what type of volume is required by the claim."),
];

const RC_COLS: &[Col] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "Replicas is the number of desired replicas.",
    ),
    col(
        "Current",
        "integer",
        "Replicas is the most recently observed number of replicas.",
    ),
    col(
        "Ready",
        "integer",
        "The number of ready replicas for this replication controller.",
    ),
    AGE,
    wide("Containers", "string", CONTAINERS_DESC),
    wide("Images", "string", IMAGES_DESC),
    wide("Selector", "string", SELECTOR_DESC),
];

const PODTEMPLATE_COLS: &[Col] = &[
    col("Template", "string", "The name of the template."),
    col("Containers", "string", CONTAINERS_DESC),
    col("Images", "string", IMAGES_DESC),
    col("Pod Labels", "string", "The labels for the pod template."),
];

const QUOTA_COLS: &[Col] = &[
    NAME,
    AGE,
    col("Request", "string", "Request represents a minimum amount of cpu/memory that a container may consume."),
    col("Limit", "string", "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node."),
];

const BINDING_COLS: &[Col] = &[
    NAME,
    col("Role", "string", "RoleRef is the reference to the role."),
    AGE,
    wide("Users", "string", "Users in the roleBinding"),
    wide("Groups", "string", "Groups in the roleBinding"),
    wide(
        "ServiceAccounts",
        "string",
        "ServiceAccounts in the roleBinding",
    ),
];

const PDB_COLS: &[Col] = &[
    NAME,
    col("Min Available", "string", "The minimum number of pods that must be available simultaneously.  This can be either an integer or a string specifying a percentage, e.g. \"28%\"."),
    col("Max Unavailable", "string", "The maximum number of pods that may be unavailable simultaneously.  This can be either an integer or a string specifying a percentage, e.g. \"28%\"."),
    col("Allowed Disruptions", "integer", "Calculated number of pods that may be disrupted at this time."),
    AGE,
];

const INGRESS_COLS: &[Col] = &[
    NAME,
    col("Class", "string", "The name of the IngressClass resource."),
    col(
        "Hosts",
        "string",
        "Hosts that incoming requests are matched against before the ingress rule",
    ),
    col(
        "Address",
        "string",
        "Address is a list containing ingress points for the load-balancer",
    ),
    col("Ports", "string", "Ports of TLS configurations that open"),
    AGE,
];

const INGRESSCLASS_COLS: &[Col] = &[
    NAME,
    col(
        "Controller",
        "string",
        "Controller that is responsible for handling this class",
    ),
    col(
        "Parameters",
        "string",
        "A reference to a resource with additional parameters",
    ),
    AGE,
];

const NETWORKPOLICY_COLS: &[Col] = &[NAME, col("Pod-Selector", "string", "Pod selector"), AGE];

const STORAGECLASS_COLS: &[Col] = &[
    NAME,
    col(
        "Provisioner",
        "string",
        "Indicates the type of the provisioner.",
    ),
    col(
        "ReclaimPolicy",
        "string",
        "Indicates the type of the reclaim policy.",
    ),
    col(
        "VolumeBindingMode",
        "string",
        "Indicates how PersistentVolumeClaims should be provisioned and bound",
    ),
    col(
        "AllowVolumeExpansion",
        "string",
        "Indicates whether the storage class allow volume expand",
    ),
    AGE,
];

const CSIDRIVER_COLS: &[Col] = &[
    NAME,
    col("AttachRequired", "boolean", "Indicates this CSI volume driver requires an attach operation"),
    col("PodInfoOnMount", "boolean", "Indicates this CSI volume driver requires additional pod information during mount operations"),
    col("StorageCapacity", "boolean", "Indicates this CSI volume driver wants pod scheduling to consider the storage capacity"),
    col("TokenRequests", "string", "Indicates the CSI driver needs pods' service account tokens it is mounting volume for to do necessary authentication."),
    col("RequiresRepublish", "boolean", "Indicates the CSI driver wants NodePublishVolume being periodically called to reflect any possible change in the mounted volume"),
    col("Modes", "string", "Indicates volume lifecycle modes supported by this driver"),
    AGE,
];

const CSINODE_COLS: &[Col] = &[
    NAME,
    col(
        "Drivers",
        "integer",
        "Drivers indicates the number of CSI drivers registered on the node",
    ),
    AGE,
];

const VOLUMEATTACHMENT_COLS: &[Col] = &[
    NAME,
    col(
        "Attacher",
        "string",
        "Attacher indicates the name of the volume driver that MUST handle this request.",
    ),
    col("PV", "string", "Name of the persistent volume to attach."),
    col(
        "Node",
        "string",
        "The node that the volume should be attached to.",
    ),
    col(
        "Attached",
        "boolean",
        "Indicates the volume is successfully attached.",
    ),
    AGE,
];

const HPA_COLS: &[Col] = &[
    NAME,
    col("Reference", "string", "reference to scaled resource"),
    col("Targets", "string", "the current and target metrics"),
    col("MinPods", "string", "minReplicas is the lower limit for the number of replicas to which the autoscaler can scale down."),
    col("MaxPods", "integer", "maxReplicas is the upper limit for the number of replicas to which the autoscaler can scale up."),
    col("Replicas", "integer", "currentReplicas is current number of replicas of pods managed by this autoscaler."),
    AGE,
];

const PRIORITYCLASS_COLS: &[Col] = &[
    NAME,
    col("Value", "integer", "The value of this priority class. This is the actual priority that pods receive when they have the name of this class in their pod spec."),
    col("Global-Default", "boolean", "globalDefault specifies whether this PriorityClass should be considered as the default priority for pods that do not have any priority class."),
    AGE,
    col("PreemptionPolicy", "string", "preemptionPolicy is the Policy for preempting pods with lower priority."),
];

const WEBHOOK_COLS: &[Col] = &[
    NAME,
    col(
        "Webhooks",
        "integer",
        "Webhooks indicates the number of webhooks registered in this configuration",
    ),
    AGE,
];

const APISERVICE_COLS: &[Col] = &[
    NAME,
    col(
        "Service",
        "string",
        "The reference to the service that hosts this API endpoint.",
    ),
    col("Available", "string", "Whether this service is available."),
    AGE,
];

const CSR_COLS: &[Col] = &[
    NAME,
    AGE,
    col(
        "SignerName",
        "string",
        "Name of the signer that will sign the certificate.",
    ),
    col(
        "Requestor",
        "string",
        "Name of the user which made this request.",
    ),
    col(
        "RequestedDuration",
        "string",
        "Requested duration of the issued certificate.",
    ),
    col(
        "Condition",
        "string",
        "The current status of the request: Approved, Denied, Issued, Failed, Pending.",
    ),
];

const RUNTIMECLASS_COLS: &[Col] = &[
    NAME,
    col("Handler", "string", "Handler is the name of the underlying runtime and configuration that the CRI implementation will use to handle pods of this class."),
    AGE,
];

fn created_at_cells(obj: &Value, _now: i64) -> Vec<Value> {
    crd_cells(obj, _now)
}

fn access_modes(v: &Value) -> String {
    let short: Vec<&str> = arr(v)
        .iter()
        .map(|m| match st(m) {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect();
    short.join(",")
}

fn storage_class_of(obj: &Value) -> String {
    let from_spec = st(&obj["spec"]["storageClassName"]);
    let annotated = st(&obj["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-class"]);
    if !from_spec.is_empty() {
        from_spec.to_string()
    } else {
        annotated.to_string()
    }
}

fn pv_cells(obj: &Value, now: i64) -> Vec<Value> {
    let spec = &obj["spec"];
    let claim = match spec["claimRef"].as_object() {
        Some(c) => format!(
            "{}/{}",
            c.get("namespace").map(st).unwrap_or(""),
            c.get("name").map(st).unwrap_or("")
        ),
        None => String::new(),
    };
    vec![
        name(obj),
        json!(st(&spec["capacity"]["storage"])),
        json!(access_modes(&spec["accessModes"])),
        json!(or_default(
            st(&spec["persistentVolumeReclaimPolicy"]),
            "Retain"
        )),
        json!(st(&obj["status"]["phase"])),
        json!(claim),
        json!(storage_class_of(obj)),
        json!(or_unset(st(&spec["volumeAttributesClassName"]))),
        json!(st(&obj["status"]["reason"])),
        age(obj, now),
        json!(or_default(st(&spec["volumeMode"]), "Filesystem")),
    ]
}

fn or_default<'a>(s: &'a str, d: &'a str) -> &'a str {
    if s.is_empty() {
        d
    } else {
        s
    }
}

fn or_unset(s: &str) -> String {
    if s.is_empty() {
        "<unset>".into()
    } else {
        s.to_string()
    }
}

fn pvc_cells(obj: &Value, now: i64) -> Vec<Value> {
    let spec = &obj["spec"];
    let bound = !st(&spec["volumeName"]).is_empty();
    let (capacity, modes) = if bound {
        (
            st(&obj["status"]["capacity"]["storage"]).to_string(),
            access_modes(&obj["status"]["accessModes"]),
        )
    } else {
        (String::new(), String::new())
    };
    vec![
        name(obj),
        json!(or_default(st(&obj["status"]["phase"]), "Pending")),
        json!(st(&spec["volumeName"])),
        json!(capacity),
        json!(modes),
        json!(storage_class_of(obj)),
        json!(or_unset(st(&spec["volumeAttributesClassName"]))),
        age(obj, now),
        json!(or_default(st(&spec["volumeMode"]), "Filesystem")),
    ]
}

fn rc_cells(obj: &Value, now: i64) -> Vec<Value> {
    let status = &obj["status"];
    let (containers, images) =
        containers_and_images(&obj["spec"]["template"]["spec"]["containers"]);
    vec![
        name(obj),
        json!(desired_replicas(obj)),
        json!(int(&status["replicas"])),
        json!(int(&status["readyReplicas"])),
        age(obj, now),
        containers,
        images,
        json!(format_labels(&obj["spec"]["selector"])),
    ]
}

fn podtemplate_cells(obj: &Value, _now: i64) -> Vec<Value> {
    let (containers, images) = containers_and_images(&obj["template"]["spec"]["containers"]);
    vec![
        name(obj),
        containers,
        images,
        json!(format_labels(&obj["template"]["metadata"]["labels"])),
    ]
}

/// `requests.cpu: 0/1, ...` for the Request and Limit columns of a quota.
fn quota_cells(obj: &Value, now: i64) -> Vec<Value> {
    let hard = obj["status"]["hard"]
        .as_object()
        .or(obj["spec"]["hard"].as_object());
    let used = &obj["status"]["used"];
    let mut requests = Vec::new();
    let mut limits = Vec::new();
    for (k, v) in hard.into_iter().flatten() {
        let cell = format!(
            "{k}: {}/{}",
            used[k.as_str()].as_str().unwrap_or("0"),
            st(v)
        );
        if k.starts_with("limits.") {
            limits.push(cell);
        } else {
            requests.push(cell);
        }
    }
    vec![
        name(obj),
        age(obj, now),
        json!(requests.join(", ")),
        json!(limits.join(", ")),
    ]
}

fn binding_cells(obj: &Value, now: i64) -> Vec<Value> {
    let subjects = arr(&obj["subjects"]);
    let of = |kind: &str| -> String {
        let v: Vec<String> = subjects
            .iter()
            .filter(|s| st(&s["kind"]) == kind)
            .map(|s| {
                if kind == "ServiceAccount" {
                    format!("{}/{}", st(&s["namespace"]), st(&s["name"]))
                } else {
                    st(&s["name"]).to_string()
                }
            })
            .collect();
        v.join(", ")
    };
    vec![
        name(obj),
        json!(format!(
            "{}/{}",
            st(&obj["roleRef"]["kind"]),
            st(&obj["roleRef"]["name"])
        )),
        age(obj, now),
        json!(of("User")),
        json!(of("Group")),
        json!(of("ServiceAccount")),
    ]
}

fn int_or_string(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => "N/A".into(),
    }
}

fn pdb_cells(obj: &Value, now: i64) -> Vec<Value> {
    vec![
        name(obj),
        json!(int_or_string(&obj["spec"]["minAvailable"])),
        json!(int_or_string(&obj["spec"]["maxUnavailable"])),
        json!(int(&obj["status"]["disruptionsAllowed"])),
        age(obj, now),
    ]
}

fn ingress_cells(obj: &Value, now: i64) -> Vec<Value> {
    let spec = &obj["spec"];
    let mut hosts: Vec<&str> = arr(&spec["rules"])
        .iter()
        .map(|r| st(&r["host"]))
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        hosts.push("*");
    }
    let addresses: Vec<&str> = arr(&obj["status"]["loadBalancer"]["ingress"])
        .iter()
        .map(|i| {
            if st(&i["ip"]).is_empty() {
                st(&i["hostname"])
            } else {
                st(&i["ip"])
            }
        })
        .collect();
    let ports = if arr(&spec["tls"]).is_empty() {
        "80"
    } else {
        "80, 443"
    };
    let class = st(&spec["ingressClassName"]);
    vec![
        name(obj),
        json!(if class.is_empty() { "<none>" } else { class }),
        json!(hosts.join(",")),
        json!(addresses.join(",")),
        json!(ports),
        age(obj, now),
    ]
}

fn ingressclass_cells(obj: &Value, now: i64) -> Vec<Value> {
    let p = &obj["spec"]["parameters"];
    let params = if p.is_object() {
        let group = st(&p["apiGroup"]);
        let kind = if group.is_empty() {
            st(&p["kind"]).to_string()
        } else {
            format!("{}.{group}", st(&p["kind"]))
        };
        format!("{kind}/{}", st(&p["name"]))
    } else {
        "<none>".into()
    };
    vec![
        name(obj),
        json!(st(&obj["spec"]["controller"])),
        json!(params),
        age(obj, now),
    ]
}

fn networkpolicy_cells(obj: &Value, now: i64) -> Vec<Value> {
    let sel = format_label_selector(&obj["spec"]["podSelector"]);
    vec![name(obj), json!(sel), age(obj, now)]
}

fn storageclass_cells(obj: &Value, now: i64) -> Vec<Value> {
    let mut n = st(&obj["metadata"]["name"]).to_string();
    let ann = &obj["metadata"]["annotations"];
    if st(&ann["storageclass.kubernetes.io/is-default-class"]) == "true"
        || st(&ann["storageclass.beta.kubernetes.io/is-default-class"]) == "true"
    {
        n.push_str(" (default)");
    }
    vec![
        json!(n),
        json!(st(&obj["provisioner"])),
        json!(or_default(st(&obj["reclaimPolicy"]), "Delete")),
        json!(or_default(st(&obj["volumeBindingMode"]), "Immediate")),
        json!(obj["allowVolumeExpansion"].as_bool().unwrap_or(false)),
        age(obj, now),
    ]
}

fn csidriver_cells(obj: &Value, now: i64) -> Vec<Value> {
    let spec = &obj["spec"];
    let audiences: Vec<&str> = arr(&spec["tokenRequests"])
        .iter()
        .map(|t| st(&t["audience"]))
        .collect();
    let modes: Vec<&str> = arr(&spec["volumeLifecycleModes"]).iter().map(st).collect();
    vec![
        name(obj),
        json!(spec["attachRequired"].as_bool().unwrap_or(true)),
        json!(spec["podInfoOnMount"].as_bool().unwrap_or(false)),
        json!(spec["storageCapacity"].as_bool().unwrap_or(false)),
        json!(if audiences.is_empty() {
            "<unset>".to_string()
        } else {
            audiences.join(",")
        }),
        json!(spec["requiresRepublish"].as_bool().unwrap_or(false)),
        json!(if modes.is_empty() {
            "Persistent".to_string()
        } else {
            modes.join(",")
        }),
        age(obj, now),
    ]
}

fn csinode_cells(obj: &Value, now: i64) -> Vec<Value> {
    vec![
        name(obj),
        json!(arr(&obj["spec"]["drivers"]).len()),
        age(obj, now),
    ]
}

fn volumeattachment_cells(obj: &Value, now: i64) -> Vec<Value> {
    let spec = &obj["spec"];
    vec![
        name(obj),
        json!(st(&spec["attacher"])),
        json!(st(&spec["source"]["persistentVolumeName"])),
        json!(st(&spec["nodeName"])),
        json!(obj["status"]["attached"].as_bool().unwrap_or(false)),
        age(obj, now),
    ]
}

fn hpa_cells(obj: &Value, now: i64) -> Vec<Value> {
    // v1's single CPU target reads as the v2 metric it stands for.
    let v2;
    let obj = if obj["apiVersion"] == "autoscaling/v1" {
        v2 = crate::conversion::hpa_v1_to_v2(obj);
        &v2
    } else {
        obj
    };
    let spec = &obj["spec"];
    let target = &spec["scaleTargetRef"];
    let metrics = arr(&spec["metrics"]);
    let current = arr(&obj["status"]["currentMetrics"]);
    let mut targets: Vec<String> = Vec::new();
    for (i, m) in metrics.iter().enumerate() {
        if st(&m["type"]) != "Resource" {
            targets.push(format!("<unknown>/{}", st(&m["type"])));
            continue;
        }
        let t = &m["resource"]["target"];
        let cur = &current
            .get(i)
            .map_or(&Value::Null, |c| &c["resource"]["current"]);
        let name = st(&m["resource"]["name"]);
        if let Some(u) = t["averageUtilization"].as_i64() {
            let now = cur["averageUtilization"]
                .as_i64()
                .map_or("<unknown>".into(), |c| format!("{c}%"));
            targets.push(format!("{name}: {now}/{u}%"));
        } else {
            let want = if st(&t["averageValue"]).is_empty() {
                st(&t["value"])
            } else {
                st(&t["averageValue"])
            };
            let have = if st(&cur["averageValue"]).is_empty() {
                "<unknown>"
            } else {
                st(&cur["averageValue"])
            };
            targets.push(format!("{name}: {have}/{want}"));
        }
    }
    let targets = if targets.is_empty() {
        "<none>".to_string()
    } else {
        targets.join(", ")
    };
    let min = spec["minReplicas"]
        .as_i64()
        .map_or("<unset>".into(), |m| m.to_string());
    vec![
        name(obj),
        json!(format!("{}/{}", st(&target["kind"]), st(&target["name"]))),
        json!(targets),
        json!(min),
        json!(int(&spec["maxReplicas"])),
        json!(int(&obj["status"]["currentReplicas"])),
        age(obj, now),
    ]
}

fn priorityclass_cells(obj: &Value, now: i64) -> Vec<Value> {
    vec![
        name(obj),
        json!(int(&obj["value"])),
        json!(obj["globalDefault"].as_bool().unwrap_or(false)),
        age(obj, now),
        json!(or_default(
            st(&obj["preemptionPolicy"]),
            "PreemptLowerPriority"
        )),
    ]
}

fn webhook_cells(obj: &Value, now: i64) -> Vec<Value> {
    vec![name(obj), json!(arr(&obj["webhooks"]).len()), age(obj, now)]
}

fn apiservice_cells(obj: &Value, now: i64) -> Vec<Value> {
    let svc = &obj["spec"]["service"];
    let service = if svc.is_object() {
        format!("{}/{}", st(&svc["namespace"]), st(&svc["name"]))
    } else {
        "Local".into()
    };
    let available = arr(&obj["status"]["conditions"])
        .iter()
        .find(|c| st(&c["type"]) == "Available")
        .map(|c| {
            if st(&c["status"]) == "True" {
                "True".to_string()
            } else {
                format!("{} ({})", st(&c["status"]), st(&c["reason"]))
            }
        })
        .unwrap_or_else(|| "Unknown".into());
    vec![name(obj), json!(service), json!(available), age(obj, now)]
}

fn csr_cells(obj: &Value, now: i64) -> Vec<Value> {
    let mut conditions: Vec<&str> = arr(&obj["status"]["conditions"])
        .iter()
        .filter(|c| st(&c["status"]) != "False")
        .map(|c| st(&c["type"]))
        .collect();
    if !obj["status"]["certificate"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        conditions.push("Issued");
    }
    let condition = if conditions.is_empty() {
        "Pending".to_string()
    } else {
        conditions.join(",")
    };
    let duration = obj["spec"]["expirationSeconds"]
        .as_i64()
        .map_or("<none>".into(), human_duration);
    vec![
        name(obj),
        age(obj, now),
        json!(st(&obj["spec"]["signerName"])),
        json!(st(&obj["spec"]["username"])),
        json!(duration),
        json!(condition),
    ]
}

fn runtimeclass_cells(obj: &Value, now: i64) -> Vec<Value> {
    vec![name(obj), json!(st(&obj["handler"])), age(obj, now)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    const NOW: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

    fn ts(secs_ago: i64) -> String {
        cairn_wire::time::rfc3339(NOW - secs_ago)
    }

    fn cells(group: &str, plural: &str, obj: Value) -> Vec<Value> {
        let r = find(group, "v1", plural).unwrap();
        let t = table_for(r, &[obj], IncludeObject::Metadata, NOW);
        let row = &t["rows"][0];
        let c = row["cells"].as_array().unwrap().clone();
        assert_eq!(c.len(), t["columnDefinitions"].as_array().unwrap().len());
        c
    }

    fn pod_status(pod: Value) -> String {
        cells("", "pods", pod)[2].as_str().unwrap().to_string()
    }

    #[test]
    fn accept_negotiation() {
        assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert!(wants_table(
            "application/json; as=Table; g=meta.k8s.io; v=v1"
        ));
        assert!(!wants_table("application/json"));
        assert!(!wants_table("application/json, */*"));
        assert!(!wants_table(""));
        assert!(!wants_table(
            "application/json,application/json;as=Table;v=v1;g=meta.k8s.io"
        ));
        assert!(!wants_table(
            "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert_eq!(IncludeObject::from_query(None), IncludeObject::Metadata);
        assert_eq!(
            IncludeObject::from_query(Some("Object")),
            IncludeObject::Object
        );
        assert_eq!(IncludeObject::from_query(Some("None")), IncludeObject::None);
    }

    #[test]
    fn human_durations() {
        for (secs, want) in [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (182, "3m2s"),
            (599, "9m59s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (4 * 3600 + 5 * 60, "4h5m"),
            (8 * 3600, "8h"),
            (47 * 3600 + 59 * 60, "47h"),
            (2 * 86_400 + 3 * 3600, "2d3h"),
            (3 * 86_400, "3d"),
            (45 * 86_400, "45d"),
            (729 * 86_400, "729d"),
            ((2 * 365 + 3) * 86_400, "2y3d"),
            (3 * 365 * 86_400, "3y"),
            (9 * 365 * 86_400, "9y"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
    }

    #[test]
    fn timestamps_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Some(NOW));
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.123456Z"), Some(NOW));
        assert_eq!(parse_rfc3339("2023-11-15T00:13:20+02:00"), Some(NOW));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2023-13-14T22:13:20Z"), None);
    }

    #[test]
    fn pod_status_reasons() {
        let running = json!({
            "metadata": {"name": "web", "creationTimestamp": ts(300)},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": true, "restartCount": 0, "state": {"running": {}}},
            ]},
        });
        let c = cells("", "pods", running.clone());
        assert_eq!(c[0], "web");
        assert_eq!(c[1], "2/2");
        assert_eq!(c[2], "Running");
        assert_eq!(c[3], "0");
        assert_eq!(c[4], "5m");
        assert_eq!(c[5], "<none>");
        assert_eq!(c[6], "<none>");

        let pending = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}});
        let c = cells("", "pods", pending);
        assert_eq!(c[1], "0/1");
        assert_eq!(c[2], "Pending");
        assert_eq!(c[4], "<unknown>");

        let crash = json!({
            "metadata": {"name": "c"},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "a", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "finishedAt": ts(120)}},
            }]},
        });
        let c = cells("", "pods", crash);
        assert_eq!(c[1], "0/1");
        assert_eq!(c[2], "CrashLoopBackOff");
        assert_eq!(c[3], "4 (2m ago)");

        let completed = json!({
            "metadata": {"name": "j"},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Succeeded", "containerStatuses": [{
                "name": "a", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            }]},
        });
        assert_eq!(pod_status(completed.clone()), "Completed");
        let r = find("", "v1", "pods").unwrap();
        let t = table_for(r, &[completed], IncludeObject::Metadata, NOW);
        assert_eq!(t["rows"][0]["conditions"][0]["reason"], "Succeeded");

        let exit_code = json!({
            "metadata": {"name": "e"},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "a", "state": {"terminated": {"exitCode": 137}},
            }]},
        });
        assert_eq!(pod_status(exit_code), "ExitCode:137");

        let init = json!({
            "metadata": {"name": "i"},
            "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "i1", "state": {"terminated": {"exitCode": 0}}},
                {"name": "i2", "state": {"running": {}}},
            ], "containerStatuses": [{"name": "a", "state": {"waiting": {"reason": "PodInitializing"}}}]},
        });
        assert_eq!(pod_status(init), "Init:1/2");

        let init_crash = json!({
            "metadata": {"name": "i"},
            "spec": {"initContainers": [{"name": "i1"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "i1", "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            ]},
        });
        assert_eq!(pod_status(init_crash), "Init:CrashLoopBackOff");

        let init_failed = json!({
            "metadata": {"name": "i"},
            "spec": {"initContainers": [{"name": "i1"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "i1", "state": {"terminated": {"exitCode": 2}}},
            ]},
        });
        assert_eq!(pod_status(init_failed), "Init:ExitCode:2");

        let mut terminating = running.clone();
        terminating["metadata"]["deletionTimestamp"] = json!(ts(1));
        assert_eq!(pod_status(terminating), "Terminating");

        let mut gated = json!({"metadata": {"name": "g"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}});
        gated["status"]["conditions"] =
            json!([{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]);
        assert_eq!(pod_status(gated), "SchedulingGated");

        let sidecar = json!({
            "metadata": {"name": "s"},
            "spec": {"initContainers": [{"name": "proxy", "restartPolicy": "Always"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
                "initContainerStatuses": [{"name": "proxy", "started": true, "ready": true, "restartCount": 1, "state": {"running": {}}}],
                "containerStatuses": [{"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}}]},
        });
        let c = cells("", "pods", sidecar);
        assert_eq!(c[1], "2/2");
        assert_eq!(c[2], "Running");
        assert_eq!(c[3], "1");

        let wide = json!({
            "metadata": {"name": "w"},
            "spec": {"nodeName": "node1", "containers": [{"name": "a"}],
                     "readinessGates": [{"conditionType": "x/y"}, {"conditionType": "x/z"}]},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "conditions": [{"type": "x/y", "status": "True"}]},
        });
        let c = cells("", "pods", wide);
        assert_eq!(c[5], "10.42.0.5");
        assert_eq!(c[6], "node1");
        assert_eq!(c[7], "<none>");
        assert_eq!(c[8], "1/2");
    }

    #[test]
    fn service_columns() {
        assert_eq!(
            service_ports(&json!([{"port": 80, "protocol": "TCP"}])),
            "80/TCP"
        );
        assert_eq!(
            service_ports(
                &json!([{"port": 80, "nodePort": 30080}, {"port": 53, "protocol": "UDP"}])
            ),
            "80:30080/TCP,53/UDP"
        );
        let svc = json!({
            "metadata": {"name": "web", "creationTimestamp": ts(10)},
            "spec": {"clusterIP": "10.43.0.10", "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "web", "tier": "a"}},
        });
        let c = cells("", "services", svc);
        assert_eq!(
            c,
            vec![
                json!("web"),
                json!("ClusterIP"),
                json!("10.43.0.10"),
                json!("<none>"),
                json!("80/TCP"),
                json!("10s"),
                json!("app=web,tier=a")
            ]
        );
        let lb = json!({
            "metadata": {"name": "lb"},
            "spec": {"type": "LoadBalancer", "clusterIPs": ["10.43.0.11"], "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}]},
        });
        let c = cells("", "services", lb.clone());
        assert_eq!(c[3], "<pending>");
        assert_eq!(c[4], "443:31443/TCP");
        assert_eq!(c[6], "<none>");
        let mut lb2 = lb;
        lb2["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}});
        assert_eq!(cells("", "services", lb2)[3], "192.0.2.7");
    }

    #[test]
    fn deployment_ready_counts() {
        let d = json!({
            "metadata": {"name": "web", "creationTimestamp": ts(2 * 86_400 + 3 * 3600)},
            "spec": {"replicas": 3,
                     "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]}]},
                     "template": {"spec": {"containers": [{"name": "c1", "image": "nginx"}, {"name": "c2", "image": "busybox"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
        });
        let c = cells("apps", "deployments", d);
        assert_eq!(
            c,
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("2d3h"),
                json!("c1,c2"),
                json!("nginx,busybox"),
                json!("app=web,env in (dev,prod)")
            ]
        );
        // replicas unset defaults to 1; no status yet.
        let fresh = json!({"metadata": {"name": "new"}, "spec": {"template": {"spec": {"containers": []}}}});
        let c = cells("apps", "deployments", fresh);
        assert_eq!(c[1], "0/1");
        assert_eq!(c[2], 0);
        let rs = json!({"metadata": {"name": "web-1"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}}, "status": {"replicas": 2, "readyReplicas": 1}});
        let c = cells("apps", "replicasets", rs);
        assert_eq!(&c[1..4], &[json!(2), json!(2), json!(1)]);
        assert_eq!(c[7], "app=web");
        let sts = json!({"metadata": {"name": "db"}, "spec": {"replicas": 3}, "status": {"readyReplicas": 3}});
        assert_eq!(cells("apps", "statefulsets", sts)[1], "3/3");
    }

    #[test]
    fn other_kinds() {
        let mut node = json!({
            "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/master": "true"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "10.0.0.2"}],
                       "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "cairn"}},
        });
        let c = cells("", "nodes", node.clone());
        assert_eq!(c[1], "Ready,SchedulingDisabled");
        assert_eq!(c[2], "control-plane,master");
        assert_eq!(c[4], "v1.32.0");
        assert_eq!(
            &c[5..],
            &[
                json!("10.0.0.2"),
                json!("<none>"),
                json!("cairn"),
                json!("<unknown>"),
                json!("<unknown>")
            ]
        );
        node["status"]["conditions"] = json!([{"type": "Ready", "status": "Unknown"}]);
        node["spec"] = json!({});
        node["metadata"]["labels"] = json!({});
        let c = cells("", "nodes", node);
        assert_eq!(c[1], "NotReady");
        assert_eq!(c[2], "<none>");

        let ns = json!({"metadata": {"name": "default", "creationTimestamp": ts(45 * 86_400)}, "status": {"phase": "Active"}});
        assert_eq!(
            cells("", "namespaces", ns),
            vec![json!("default"), json!("Active"), json!("45d")]
        );

        let cm = json!({"metadata": {"name": "cfg"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}});
        assert_eq!(cells("", "configmaps", cm)[1], 3);
        let secret = json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}});
        assert_eq!(
            &cells("", "secrets", secret)[1..3],
            &[json!("kubernetes.io/tls"), json!(2)]
        );

        let ep = json!({"metadata": {"name": "web"}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "10.0.0.3"}, {"ip": "10.0.0.4"}], "ports": [{"port": 80}]}]});
        assert_eq!(
            cells("", "endpoints", ep)[1],
            "10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 1 more..."
        );
        assert_eq!(
            cells("", "endpoints", json!({"metadata": {"name": "x"}}))[1],
            "<none>"
        );

        let ev = json!({"metadata": {"name": "web.1"}, "type": "Normal", "reason": "Scheduled",
            "involvedObject": {"kind": "Pod", "name": "web"}, "message": "assigned ", "firstTimestamp": ts(60), "lastTimestamp": ts(30), "count": 2,
            "source": {"component": "default-scheduler"}});
        let c = cells("", "events", ev);
        assert_eq!(c[0], "30s");
        assert_eq!(c[3], "pod/web");
        assert_eq!(c[5], "default-scheduler");
        assert_eq!(c[6], "assigned");
        assert_eq!(c[7], "60s");
        assert_eq!(c[8], 2);
        let ev2 = json!({"metadata": {"name": "e2"}, "type": "Warning", "reason": "X", "regarding": {"kind": "Node", "name": "n1"}, "note": "hi", "eventTime": ts(5), "reportingController": "cairn", "reportingInstance": "n1"});
        let r = find("events.k8s.io", "v1", "events").unwrap();
        let t = table_for(r, &[ev2], IncludeObject::None, NOW);
        let c = &t["rows"][0]["cells"];
        assert_eq!(c[0], "5s");
        assert_eq!(c[3], "node/n1");
        assert_eq!(c[5], "cairn, n1");
        assert_eq!(c[6], "hi");
        assert_eq!(c[8], 1);
        assert!(t["rows"][0]["object"].is_null());

        let lease = json!({"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1"}});
        assert_eq!(cells("coordination.k8s.io", "leases", lease)[1], "n1");

        let job = json!({"metadata": {"name": "j"}, "spec": {"completions": 3, "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
            "status": {"succeeded": 3, "startTime": ts(100), "completionTime": ts(40), "conditions": [{"type": "Complete", "status": "True"}]}});
        let c = cells("batch", "jobs", job);
        assert_eq!(&c[1..4], &[json!("Complete"), json!("3/3"), json!("60s")]);
        assert_eq!(c[7], "<none>");

        let cj = json!({"metadata": {"name": "cj"}, "spec": {"schedule": "*/5 * * * *"}, "status": {"active": [{}], "lastScheduleTime": ts(90)}});
        let c = cells("batch", "cronjobs", cj);
        assert_eq!(
            &c[1..6],
            &[
                json!("*/5 * * * *"),
                json!("<none>"),
                json!("False"),
                json!(1),
                json!("90s")
            ]
        );

        let ds = json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}}}}, "status": {"desiredNumberScheduled": 2, "numberReady": 1}});
        let c = cells("apps", "daemonsets", ds);
        assert_eq!(
            &c[1..7],
            &[
                json!(2),
                json!(0),
                json!(1),
                json!(0),
                json!(0),
                json!("kubernetes.io/os=linux")
            ]
        );

        let slice = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4", "ports": [{"port": 80, "name": "http"}], "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]});
        assert_eq!(
            &cells("discovery.k8s.io", "endpointslices", slice)[1..4],
            &[json!("IPv4"), json!("80"), json!("10.0.0.1,10.0.0.2")]
        );
        let empty = json!({"metadata": {"name": "e"}, "addressType": "IPv4"});
        assert_eq!(
            &cells("discovery.k8s.io", "endpointslices", empty)[2..4],
            &[json!("<unset>"), json!("<unset>")]
        );
    }

    #[test]
    fn crd_and_default_columns() {
        let r = find("apiextensions.k8s.io", "v1", "customresourcedefinitions").unwrap();
        let t = table_for(
            r,
            &[
                json!({"metadata": {"name": "foos.example.com", "creationTimestamp": "2023-11-14T22:13:20Z"}}),
            ],
            IncludeObject::Metadata,
            NOW,
        );
        assert_eq!(t["columnDefinitions"][1]["name"], "Created At");
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["foos.example.com", "2023-11-14T22:13:20Z"])
        );
        let other = Resource {
            group: "example.com",
            kind: "Widget",
            ..find("", "v1", "configmaps").unwrap().clone()
        };
        let t = table_for(
            &other,
            &[json!({"metadata": {"name": "w", "creationTimestamp": ts(7)}})],
            IncludeObject::Metadata,
            NOW,
        );
        assert_eq!(t["rows"][0]["cells"], json!(["w", "7s"]));
    }

    #[test]
    fn table_shape() {
        let r = find("", "v1", "configmaps").unwrap();
        let list = json!({
            "kind": "ConfigMapList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "42", "continue": "abc"},
            "items": [{"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "a", "resourceVersion": "40"}, "data": {"k": "v"}}],
        });
        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
        let t = respond(r, accept, &HashMap::new(), list.clone());
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(
            t["metadata"],
            json!({"resourceVersion": "42", "continue": "abc"})
        );
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Data", "Age"]);
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(t["columnDefinitions"][0]["priority"], 0);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "a");
        assert!(t["rows"][0]["object"].get("data").is_none());

        let q: HashMap<String, String> =
            [("includeObject".to_string(), "Object".to_string())].into();
        let t = respond(r, accept, &q, list.clone());
        assert_eq!(t["rows"][0]["object"]["data"]["k"], "v");

        // An empty list still has an (empty) rows array: kubectl prints "No resources found".
        let empty = json!({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": []});
        let t = respond(r, accept, &HashMap::new(), empty);
        assert_eq!(t["rows"], json!([]));

        let one = list["items"][0].clone();
        let t = respond(r, accept, &HashMap::new(), one.clone());
        assert_eq!(t["metadata"]["resourceVersion"], "40");
        assert_eq!(t["rows"].as_array().unwrap().len(), 1);
        assert_eq!(
            respond(r, "application/json", &HashMap::new(), one.clone()),
            one
        );

        let w = watch_object(r, Some(IncludeObject::Metadata), &one);
        assert_eq!(w["kind"], "Table");
        assert_eq!(w["rows"][0]["cells"][0], "a");
        assert_eq!(watch_object(r, None, &one), one);

        // Wide columns have priority 1; every kind prints as many cells as it has columns.
        let pods = find("", "v1", "pods").unwrap();
        let t = table_for(pods, &[json!({})], IncludeObject::Metadata, NOW);
        let prio: Vec<i64> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["priority"].as_i64().unwrap())
            .collect();
        assert_eq!(prio, [0, 0, 0, 0, 0, 1, 1, 1, 1]);
        for r in crate::resources::RESOURCES {
            let t = table_for(r, &[json!({})], IncludeObject::Metadata, NOW);
            assert_eq!(
                t["rows"][0]["cells"].as_array().unwrap().len(),
                t["columnDefinitions"].as_array().unwrap().len(),
                "{}",
                r.kind
            );
        }
    }
}
