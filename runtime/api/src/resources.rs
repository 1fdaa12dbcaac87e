//! The resource table: every kind the API serves, described once. Discovery, routing,
//! storage keys and field selectors are all derived from it.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Field selectors beyond metadata.name and metadata.namespace.
    pub fields: &'static [&'static str],
    pub subresources: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Served from a CustomResourceDefinition (see [`Registry`]).
    pub custom: bool,
    /// A CRD's additionalPrinterColumns: (name, type, JSONPath).
    pub printer_columns: &'static [(&'static str, &'static str, &'static str)],
}

const R: Resource = Resource {
    group: "",
    version: "v1",
    kind: "",
    plural: "",
    singular: "",
    namespaced: true,
    short_names: &[],
    fields: &[],
    subresources: &[],
    categories: &[],
    custom: false,
    printer_columns: &[],
};

pub const RESOURCES: &[Resource] = &[
    Resource {
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        fields: &["status.phase"],
        subresources: &["status", "finalize"],
        ..R
    },
    Resource {
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        fields: &["spec.unschedulable"],
        subresources: &["status"],
        ..R
    },
    Resource {
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        short_names: &["po"],
        fields: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        subresources: &[
            "status",
            "binding",
            "log",
            "exec",
            "attach",
            "portforward",
            "eviction",
            "proxy",
        ],
        categories: &["all"],
        ..R
    },
    Resource {
        kind: "Service",
        plural: "services",
        singular: "service",
        short_names: &["svc"],
        subresources: &["status", "proxy"],
        categories: &["all"],
        ..R
    },
    Resource {
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        short_names: &["ep"],
        ..R
    },
    Resource {
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        short_names: &["cm"],
        ..R
    },
    Resource {
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        fields: &["type"],
        ..R
    },
    Resource {
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        short_names: &["sa"],
        ..R
    },
    Resource {
        kind: "Event",
        plural: "events",
        singular: "event",
        short_names: &["ev"],
        fields: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ..R
    },
    Resource {
        group: "events.k8s.io",
        kind: "Event",
        plural: "events",
        singular: "event",
        short_names: &["ev"],
        fields: &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "reason",
            "type",
        ],
        ..R
    },
    Resource {
        group: "coordination.k8s.io",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        ..R
    },
    Resource {
        group: "discovery.k8s.io",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        ..R
    },
    Resource {
        group: "apps",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        short_names: &["deploy"],
        subresources: &["status", "scale"],
        categories: &["all"],
        ..R
    },
    Resource {
        group: "apps",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        short_names: &["rs"],
        subresources: &["status", "scale"],
        categories: &["all"],
        ..R
    },
    Resource {
        group: "apps",
        kind: "DaemonSet",
        plural: "daemonsets",
        singular: "daemonset",
        short_names: &["ds"],
        subresources: &["status"],
        categories: &["all"],
        ..R
    },
    Resource {
        group: "apps",
        kind: "StatefulSet",
        plural: "statefulsets",
        singular: "statefulset",
        short_names: &["sts"],
        subresources: &["status", "scale"],
        categories: &["all"],
        ..R
    },
    Resource {
        group: "batch",
        kind: "Job",
        plural: "jobs",
        singular: "job",
        subresources: &["status"],
        categories: &["all"],
        ..R
    },
    Resource {
        group: "batch",
        kind: "CronJob",
        plural: "cronjobs",
        singular: "cronjob",
        short_names: &["cj"],
        subresources: &["status"],
        categories: &["all"],
        ..R
    },
    Resource {
        group: "apiextensions.k8s.io",
        kind: "CustomResourceDefinition",
        plural: "customresourcedefinitions",
        singular: "customresourcedefinition",
        namespaced: false,
        short_names: &["crd", "crds"],
        subresources: &["status"],
        ..R
    },
    // core/v1, the rest of it.
    Resource {
        kind: "PersistentVolume",
        plural: "persistentvolumes",
        singular: "persistentvolume",
        namespaced: false,
        short_names: &["pv"],
        subresources: &["status"],
        ..R
    },
    Resource {
        kind: "PersistentVolumeClaim",
        plural: "persistentvolumeclaims",
        singular: "persistentvolumeclaim",
        short_names: &["pvc"],
        subresources: &["status"],
        ..R
    },
    Resource {
        kind: "ReplicationController",
        plural: "replicationcontrollers",
        singular: "replicationcontroller",
        short_names: &["rc"],
        subresources: &["status", "scale"],
        categories: &["all"],
        fields: &["status.replicas"],
        ..R
    },
    Resource {
        kind: "PodTemplate",
        plural: "podtemplates",
        singular: "podtemplate",
        ..R
    },
    Resource {
        kind: "LimitRange",
        plural: "limitranges",
        singular: "limitrange",
        short_names: &["limits"],
        ..R
    },
    Resource {
        kind: "ResourceQuota",
        plural: "resourcequotas",
        singular: "resourcequota",
        short_names: &["quota"],
        subresources: &["status"],
        ..R
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        kind: "Role",
        plural: "roles",
        singular: "role",
        ..R
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        kind: "ClusterRole",
        plural: "clusterroles",
        singular: "clusterrole",
        namespaced: false,
        ..R
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        kind: "RoleBinding",
        plural: "rolebindings",
        singular: "rolebinding",
        ..R
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        kind: "ClusterRoleBinding",
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        namespaced: false,
        ..R
    },
    Resource {
        group: "policy",
        kind: "PodDisruptionBudget",
        plural: "poddisruptionbudgets",
        singular: "poddisruptionbudget",
        short_names: &["pdb"],
        subresources: &["status"],
        ..R
    },
    Resource {
        group: "networking.k8s.io",
        kind: "Ingress",
        plural: "ingresses",
        singular: "ingress",
        short_names: &["ing"],
        subresources: &["status"],
        ..R
    },
    Resource {
        group: "networking.k8s.io",
        kind: "IngressClass",
        plural: "ingressclasses",
        singular: "ingressclass",
        namespaced: false,
        ..R
    },
    Resource {
        group: "networking.k8s.io",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
        singular: "networkpolicy",
        short_names: &["netpol"],
        ..R
    },
    Resource {
        group: "storage.k8s.io",
        kind: "StorageClass",
        plural: "storageclasses",
        singular: "storageclass",
        namespaced: false,
        short_names: &["sc"],
        ..R
    },
    Resource {
        group: "storage.k8s.io",
        kind: "CSIDriver",
        plural: "csidrivers",
        singular: "csidriver",
        namespaced: false,
        ..R
    },
    Resource {
        group: "storage.k8s.io",
        kind: "CSINode",
        plural: "csinodes",
        singular: "csinode",
        namespaced: false,
        ..R
    },
    Resource {
        group: "storage.k8s.io",
        kind: "VolumeAttachment",
        plural: "volumeattachments",
        singular: "volumeattachment",
        namespaced: false,
        subresources: &["status"],
        ..R
    },
    Resource {
        group: "autoscaling",
        version: "v2",
        kind: "HorizontalPodAutoscaler",
        plural: "horizontalpodautoscalers",
        singular: "horizontalpodautoscaler",
        short_names: &["hpa"],
        subresources: &["status"],
        categories: &["all"],
        ..R
    },
    // Stored as v2, served converted (`conversion.rs`); v2 stays the preferred version.
    Resource {
        group: "autoscaling",
        version: "v1",
        kind: "HorizontalPodAutoscaler",
        plural: "horizontalpodautoscalers",
        singular: "horizontalpodautoscaler",
        short_names: &["hpa"],
        subresources: &["status"],
        categories: &["all"],
        ..R
    },
    Resource {
        group: "scheduling.k8s.io",
        kind: "PriorityClass",
        plural: "priorityclasses",
        singular: "priorityclass",
        namespaced: false,
        short_names: &["pc"],
        ..R
    },
    Resource {
        group: "admissionregistration.k8s.io",
        kind: "ValidatingWebhookConfiguration",
        plural: "validatingwebhookconfigurations",
        singular: "validatingwebhookconfiguration",
        namespaced: false,
        categories: &["api-extensions"],
        ..R
    },
    Resource {
        group: "admissionregistration.k8s.io",
        kind: "MutatingWebhookConfiguration",
        plural: "mutatingwebhookconfigurations",
        singular: "mutatingwebhookconfiguration",
        namespaced: false,
        categories: &["api-extensions"],
        ..R
    },
    Resource {
        group: "apiregistration.k8s.io",
        kind: "APIService",
        plural: "apiservices",
        singular: "apiservice",
        namespaced: false,
        subresources: &["status"],
        categories: &["api-extensions"],
        ..R
    },
    Resource {
        group: "certificates.k8s.io",
        kind: "CertificateSigningRequest",
        plural: "certificatesigningrequests",
        singular: "certificatesigningrequest",
        namespaced: false,
        short_names: &["csr"],
        subresources: &["status", "approval"],
        fields: &["spec.signerName"],
        ..R
    },
    Resource {
        group: "node.k8s.io",
        kind: "RuntimeClass",
        plural: "runtimeclasses",
        singular: "runtimeclass",
        namespaced: false,
        ..R
    },
];

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage key prefix of every object of this kind (in `namespace` if given).
    pub fn key_prefix(&self, namespace: Option<&str>) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{group}/{}/{ns}/", self.plural),
            _ => format!("/registry/{group}/{}/", self.plural),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.key_prefix(namespace))
    }

    pub fn supports_field(&self, field: &str) -> bool {
        field == "metadata.name"
            || (self.namespaced && field == "metadata.namespace")
            || self.fields.contains(&field)
    }
}

/// The resources served from CustomResourceDefinitions, beside the built-in [`RESOURCES`].
///
/// Entries are `&'static Resource` like the built-ins, so every caller (handler targets,
/// controllers, tables) keeps using plain `&'static Resource`. They are leaked once per
/// distinct CRD definition: a bounded, small set (an unchanged CRD reuses its entry), in
/// exchange for no lifetimes or `Arc`s anywhere else.
static DYNAMIC: std::sync::RwLock<Vec<&'static Resource>> = std::sync::RwLock::new(Vec::new());

fn dynamic() -> Vec<&'static Resource> {
    DYNAMIC.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Every resource served now: the built-ins, then the custom resources.
pub fn all() -> Vec<&'static Resource> {
    RESOURCES.iter().chain(dynamic()).collect()
}

/// Replaces the custom resources of the CRD `crd_name` ("plural.group") with `entries`
/// (none when the CRD is gone). Entries equal to ones already served are reused.
pub fn set_custom(crd_name: &str, entries: Vec<Resource>) {
    let mut dynamic = DYNAMIC.write().unwrap_or_else(|e| e.into_inner());
    let old: Vec<&'static Resource> = dynamic
        .iter()
        .copied()
        .filter(|r| format!("{}.{}", r.plural, r.group) == crd_name)
        .collect();
    dynamic.retain(|r| format!("{}.{}", r.plural, r.group) != crd_name);
    for e in entries {
        let kept = old.iter().copied().find(|o| **o == e);
        dynamic.push(kept.unwrap_or_else(|| Box::leak(Box::new(e))));
    }
}

type Columns = &'static [(&'static str, &'static str, &'static str)];

#[derive(Default)]
struct Interned {
    strs: std::collections::HashSet<&'static str>,
    lists: std::collections::HashSet<&'static [&'static str]>,
    columns: std::collections::HashSet<Columns>,
}

static INTERNED: std::sync::Mutex<Option<Interned>> = std::sync::Mutex::new(None);

fn with_interned<T>(f: impl FnOnce(&mut Interned) -> T) -> T {
    let mut g = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Interned::default))
}

/// A `'static` copy of `s` for a custom resource's entry, leaked once per distinct string.
pub fn intern(s: &str) -> &'static str {
    with_interned(|i| match i.strs.get(s) {
        Some(x) => *x,
        None => {
            let x: &'static str = Box::leak(s.to_string().into_boxed_str());
            i.strs.insert(x);
            x
        }
    })
}

/// A `'static` list of strings, leaked once per distinct list.
pub fn intern_list(v: &[String]) -> &'static [&'static str] {
    let items: Vec<&'static str> = v.iter().map(|s| intern(s)).collect();
    with_interned(|i| match i.lists.get(items.as_slice()) {
        Some(x) => *x,
        None => {
            let x: &'static [&'static str] = Box::leak(items.into_boxed_slice());
            i.lists.insert(x);
            x
        }
    })
}

/// `'static` printer columns (name, type, JSONPath), leaked once per distinct list.
pub fn intern_columns(v: &[(String, String, String)]) -> Columns {
    let items: Vec<(&'static str, &'static str, &'static str)> = v
        .iter()
        .map(|(a, b, c)| (intern(a), intern(b), intern(c)))
        .collect();
    with_interned(|i| match i.columns.get(items.as_slice()) {
        Some(x) => *x,
        None => {
            let x: Columns = Box::leak(items.into_boxed_slice());
            i.columns.insert(x);
            x
        }
    })
}

/// Every group/version served, core first (the order discovery reports).
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    gvs(all())
}

/// The group/versions of the built-in kinds only (what the OpenAPI documents describe).
pub fn builtin_group_versions() -> Vec<(&'static str, &'static str)> {
    gvs(RESOURCES.iter().collect())
}

fn gvs(resources: Vec<&'static Resource>) -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in resources {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
        .or_else(|| {
            dynamic()
                .into_iter()
                .find(|r| r.group == group && r.version == version && r.plural == plural)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_lookup() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(
            pods.key(Some("default"), "web"),
            "/registry/core/pods/default/web"
        );
        assert_eq!(pods.key_prefix(None), "/registry/core/pods/");
        let ns = find("", "v1", "namespaces").unwrap();
        assert_eq!(
            ns.key(None, "kube-system"),
            "/registry/core/namespaces/kube-system"
        );
        assert_eq!(
            find("apps", "v1", "deployments").unwrap().api_version(),
            "apps/v1"
        );
        assert!(pods.supports_field("spec.nodeName"));
        assert!(!pods.supports_field("spec.bogus"));
        assert_eq!(group_versions()[0], ("", "v1"));
    }
}
