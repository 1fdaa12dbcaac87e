//! The generic registry: how any object is created, updated and deleted, whoever writes it.
//!
//! kube-apiserver keeps one generic store and one *strategy* per kind; so does cairn. The HTTP
//! handler, the controllers, the server's bootstrap and joins all write through [`create`],
//! [`update`] and [`delete`] here, so a rule (what the server fills in, what a write may change,
//! generation, graceful deletion, defaulting, validation, derived fields such as a pod's QoS
//! class) is written once: the generic part in this module, the per-kind part in the kind's
//! [`Strategy`](strategy::Strategy).
//!
//! A write is checked completely before the store is touched, and `dry_run` stops right
//! before it, so a refused or dry-run request never changes the store.

pub mod custom;
pub mod meta;
pub mod pod;
pub mod policy;
pub mod strategy;
pub mod workloads;

use crate::conversion::to_storage;
use crate::objects::{encode, generated_name, with_revision};
use crate::resources::Resource;
use crate::status::ApiError;
use crate::{apply, crd};
use cairn_store::{Store, StoreError};
use serde_json::{json, Value};
use strategy::for_resource;

/// A write the registry refused or could not do. Store failures keep their kind (a writer
/// that races another may want to retry on a conflict, or ignore what is already gone).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{}", .0.message)]
    Api(#[from] ApiError),
}

impl RegistryError {
    /// The error as the API reports it for `name` of `r`.
    pub fn into_api(self, r: &Resource, name: &str) -> ApiError {
        match self {
            RegistryError::Api(e) => e,
            RegistryError::Store(e) => store_error(e, r, name),
        }
    }
}

/// A store failure as the API reports it for `name` of resource `r`.
pub fn store_error(e: StoreError, r: &Resource, name: &str) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found(r.plural, r.group, name),
        StoreError::AlreadyExists => ApiError::already_exists(r.plural, r.group, name),
        StoreError::Conflict { .. } => ApiError::conflict(r.plural, r.group, name),
        StoreError::Compacted { compacted } => ApiError::gone(format!(
            "too old resource version (compacted to {compacted})"
        )),
        other => ApiError::internal(other.to_string()),
    }
}

/// What every write carries besides the object.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Check everything, write nothing (`dryRun=All`).
    pub dry_run: bool,
    /// The field manager recorded in `managedFields`; `None` when the caller recorded them
    /// itself (server-side apply) or records none.
    pub field_manager: Option<String>,
    /// The writer sets a new object's status too (an in-process writer that owns it, such as
    /// a test fixture or the bootstrap); over HTTP the server sets it.
    pub owns_status: bool,
}

impl WriteOptions {
    /// What an in-process writer (a controller, the bootstrap) passes: it owns what it writes.
    pub fn in_process(manager: &str) -> WriteOptions {
        WriteOptions {
            dry_run: false,
            field_manager: Some(manager.to_string()),
            owns_status: true,
        }
    }
}

/// Which part of an object an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The object through its main resource: status is kept where the kind has a status
    /// subresource.
    Main,
    /// `/status`: only status changes.
    Status,
    /// `namespaces/{name}/finalize`: only `spec.finalizers` changes.
    Finalize,
    /// `certificatesigningrequests/{name}/approval`: only `status.conditions` changes.
    Approval,
    /// Spec and status at once: only for in-process writers that own both (a controller that
    /// keeps an object's status with its spec), never reachable over HTTP.
    Whole,
}

impl Part {
    /// The subresource an update over HTTP names.
    pub fn from_subresource(r: &Resource, sub: Option<&str>) -> Result<Part, ApiError> {
        match sub {
            None => Ok(Part::Main),
            Some("status") => Ok(Part::Status),
            Some("finalize") if r.kind == "Namespace" && r.group.is_empty() => Ok(Part::Finalize),
            Some("approval") if r.kind == "CertificateSigningRequest" => Ok(Part::Approval),
            Some(other) => Err(ApiError::bad_request(format!(
                "the subresource {other:?} cannot be updated here"
            ))),
        }
    }

    fn subresource(self) -> Option<&'static str> {
        match self {
            Part::Status => Some("status"),
            Part::Finalize => Some("finalize"),
            Part::Approval => Some("approval"),
            Part::Main | Part::Whole => None,
        }
    }
}

/// A created or updated object as stored, with its resourceVersion.
pub type Written = Value;

/// The store key of `obj` as an object of `r`.
fn key_of(r: &Resource, obj: &Value) -> String {
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .filter(|n| !n.is_empty());
    r.key(ns.filter(|_| r.namespaced), meta::name(obj))
}

/// Creates `obj` (identity already checked: kind, apiVersion, namespace as `r` wants them).
/// A name from `generateName` is drawn again when it is taken, as kube-apiserver does.
pub async fn create(
    store: &dyn Store,
    r: &Resource,
    mut obj: Value,
    opts: &WriteOptions,
) -> Result<Written, RegistryError> {
    let strategy = for_resource(r);
    // A name drawn from generateName, here or by an in-process writer that drew it already
    // (the prefix and five random characters), is drawn again when taken.
    let generate = obj["metadata"]["generateName"]
        .as_str()
        .filter(|prefix| {
            let name = meta::name(&obj);
            name.is_empty() || (name.len() == prefix.len() + 5 && name.starts_with(*prefix))
        })
        .map(str::to_string);
    if let Some(prefix) = generate.as_deref().filter(|_| meta::name(&obj).is_empty()) {
        obj["metadata"]["name"] = json!(generated_name(prefix));
    }
    meta::prepare_for_create(&mut obj);
    let kept_status = match opts.owns_status {
        true => obj.get("status").cloned(),
        false => None,
    };
    if strategy.resets_status_on_create() {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    strategy.prepare_for_create(&mut obj);
    if r.group.is_empty() && r.kind == "Pod" && !r.custom {
        policy::resolve_pod_priority(store, &mut obj).await?;
    }
    if let Some(Value::Object(kept)) = kept_status {
        // What the strategy derives (a pod's QoS class) stays the strategy's.
        let derived = obj["status"].clone();
        let mut status = Value::Object(kept);
        for (k, v) in derived.as_object().into_iter().flatten() {
            if status.get(k).is_none() || k == "qosClass" {
                status[k] = v.clone();
            }
        }
        obj["status"] = status;
    }
    let mut causes = meta::validate(r, &obj, None);
    causes.extend(strategy.validate(&obj));
    if !causes.is_empty() {
        return Err(ApiError::invalid(r.kind, r.group, meta::name(&obj), causes).into());
    }
    if r.namespaced {
        meta::check_namespace_open(store, r, &obj).await?;
    }
    if let Some(manager) = &opts.field_manager {
        apply::record_update(
            r.kind,
            r.custom,
            &r.api_version(),
            None,
            None,
            &mut obj,
            manager,
        );
    }
    let is_crd = crd::is_crd(r);
    if is_crd {
        crd::validate(&obj)?;
        crd::set_status(&mut obj);
    }
    if opts.dry_run {
        return Ok(obj);
    }
    let mut tries = 0;
    let rec = loop {
        match store
            .create(&key_of(r, &obj), encode(&to_storage(r, &obj))?)
            .await
        {
            Err(StoreError::AlreadyExists) if tries < 7 && generate.is_some() => {
                tries += 1;
                let prefix = generate.as_deref().unwrap_or_default();
                obj["metadata"]["name"] = json!(generated_name(prefix));
            }
            other => break other?,
        }
    };
    if is_crd {
        crd::register(&obj);
    }
    Ok(with_revision(obj, rec.revision))
}

/// Replaces `old` (read at revision `expected`) by `new`, compare-and-swap; `part` says what
/// the write may change. An object being deleted whose last finalizer this update removes is
/// deleted, as kube-apiserver does.
pub async fn update(
    store: &dyn Store,
    r: &Resource,
    old: &Value,
    expected: i64,
    mut new: Value,
    part: Part,
    opts: &WriteOptions,
) -> Result<Written, RegistryError> {
    let strategy = for_resource(r);
    match part {
        Part::Status => {
            let status = new.get("status").cloned().unwrap_or(Value::Null);
            new = old.clone();
            new["status"] = status;
        }
        Part::Finalize => {
            let finalizers = new["spec"]["finalizers"].clone();
            new = old.clone();
            new["spec"]["finalizers"] = finalizers;
        }
        Part::Approval => {
            let conditions = new["status"]["conditions"].clone();
            new = old.clone();
            new["status"]["conditions"] = conditions;
        }
        Part::Main => {
            if r.subresources.contains(&"status") {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
        }
        Part::Whole => {}
    }
    if let Some(manager) = &opts.field_manager {
        let version = r.api_version();
        let sub = part.subresource();
        apply::record_update(
            r.kind,
            r.custom,
            &version,
            sub,
            Some(old),
            &mut new,
            manager,
        );
    }
    meta::prepare_for_update(&mut new, old);
    strategy.prepare_for_update(&mut new, old);
    let mut causes = meta::validate(r, &new, Some(old));
    causes.extend(strategy.validate_update(&new, old));
    if !causes.is_empty() {
        return Err(ApiError::invalid(r.kind, r.group, meta::name(&new), causes).into());
    }
    let is_crd = crd::is_crd(r);
    if is_crd {
        crd::validate(&new)?;
        crd::set_status(&mut new);
    }
    if meta::name(&new) != meta::name(old) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({})",
            meta::name(&new),
            meta::name(old)
        ))
        .into());
    }
    if opts.dry_run {
        return Ok(with_revision(new, expected));
    }
    let key = key_of(r, old);
    if meta::is_deleting(old)
        && !strategy.has_finalizers(&new)
        && old["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .is_none_or(|g| g == 0)
    {
        let rec = store.delete(&key, Some(expected)).await?;
        if is_crd {
            crd::removed(store, &new).await?;
        }
        return Ok(with_revision(new, rec.revision));
    }
    let rec = store
        .update(&key, encode(&to_storage(r, &new))?, expected)
        .await?;
    if is_crd {
        crd::register(&new);
    }
    Ok(with_revision(new, rec.revision))
}

const ORPHAN_FINALIZER: &str = "orphan";
const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// How dependents go with their owner (`propagationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// Nothing asked: the kind's default (background for every kind served here).
    #[default]
    Default,
    Orphan,
    Background,
    Foreground,
}

/// `DeleteOptions` as the registry uses them.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub dry_run: bool,
    /// `gracePeriodSeconds`; `None` takes the object's own (a pod's
    /// `terminationGracePeriodSeconds`).
    pub grace_period: Option<i64>,
    pub propagation: Propagation,
    /// `preconditions.resourceVersion` / `preconditions.uid`.
    pub precondition_revision: Option<String>,
    pub precondition_uid: Option<String>,
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// The object is gone.
    Removed,
    /// The object is marked for deletion (finalizers, or graceful termination to wait for).
    Marked,
}

/// Deletes `old` (read at revision `rev`), or marks it for deletion when finalizers or a
/// graceful termination must run first; deleting an object already marked changes nothing.
pub async fn delete(
    store: &dyn Store,
    r: &Resource,
    old: &Value,
    rev: i64,
    opts: &DeleteOptions,
) -> Result<(Deleted, Value), RegistryError> {
    let name = meta::name(old);
    if let Some(pre) = &opts.precondition_revision {
        if *pre != rev.to_string() {
            return Err(ApiError::conflict(r.plural, r.group, name).into());
        }
    }
    if let Some(pre) = &opts.precondition_uid {
        if pre != meta::uid(old) {
            return Err(ApiError::conflict(r.plural, r.group, name).into());
        }
    }
    let strategy = for_resource(r);
    let mut finalizers: Vec<Value> = old["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let policy_finalizer = match opts.propagation {
        Propagation::Orphan => Some(ORPHAN_FINALIZER),
        Propagation::Foreground => Some(FOREGROUND_FINALIZER),
        Propagation::Background | Propagation::Default => None,
    };
    if let Some(f) = policy_finalizer {
        if !finalizers.iter().any(|x| x == f) {
            finalizers.push(json!(f));
        }
        // The policies exclude each other: the last one asked for wins.
        let other = if f == ORPHAN_FINALIZER {
            FOREGROUND_FINALIZER
        } else {
            ORPHAN_FINALIZER
        };
        finalizers.retain(|x| x != other);
    } else if opts.propagation == Propagation::Background {
        finalizers.retain(|x| x != ORPHAN_FINALIZER && x != FOREGROUND_FINALIZER);
    }
    let grace = strategy.grace_period(old, opts.grace_period);
    let waits = strategy.waits_on_delete(old);
    if !finalizers.is_empty() || grace.is_some() || waits {
        let already = meta::is_deleting(old);
        let unchanged_finalizers = old["metadata"]["finalizers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            == finalizers.as_slice();
        if already && unchanged_finalizers {
            return Ok((Deleted::Marked, old.clone()));
        }
        let mut marked = old.clone();
        if !already {
            marked["metadata"]["deletionTimestamp"] = json!(cairn_wire::time::now_rfc3339());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace.unwrap_or(0));
            strategy.prepare_for_delete(&mut marked);
        }
        if finalizers.is_empty() {
            if let Some(m) = marked["metadata"].as_object_mut() {
                m.remove("finalizers");
            }
        } else {
            marked["metadata"]["finalizers"] = Value::Array(finalizers);
        }
        if opts.dry_run {
            return Ok((Deleted::Marked, marked));
        }
        let rec = store
            .update(&key_of(r, old), encode(&to_storage(r, &marked))?, rev)
            .await?;
        return Ok((Deleted::Marked, with_revision(marked, rec.revision)));
    }
    if opts.dry_run {
        return Ok((Deleted::Removed, old.clone()));
    }
    let rec = store.delete(&key_of(r, old), Some(rev)).await?;
    if crd::is_crd(r) {
        crd::removed(store, old).await?;
    }
    Ok((Deleted::Removed, with_revision(old.clone(), rec.revision)))
}
