//! The controllers together against a real store: a Deployment rolls out, is updated, and is
//! garbage collected, with a stand-in for the node agent marking pods Ready.

use super::util;
use super::*;
use serde_json::{json, Value};

use super::testkit::eventually;

async fn list(store: &dyn Store, r: &cairn_api::resources::Resource) -> Vec<Value> {
    util::list(store, &r.key_prefix(Some("default")))
        .await
        .expect("list")
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    util::condition(obj, kind)
}

/// What a node agent would do: run (mark Ready) the pods bound to its node, and finish the
/// deletion of the ones being deleted.
async fn fake_agent(store: Arc<dyn Store>, node: &'static str) {
    let pods = util::pods();
    loop {
        for pod in list(&*store, pods).await {
            if cairn_wire::value::str_at(&pod, "/spec/nodeName") != node {
                continue;
            }
            if util::is_deleting(&pod) {
                let _ = store.delete(&util::key_of(pods, &pod), None).await;
            } else if !util::pod_ready(&pod) {
                let mut new = pod.clone();
                new["status"]["phase"] = json!("Running");
                new["status"]["conditions"] = json!([
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "True",
                     "lastTransitionTime": cairn_wire::time::now_rfc3339()}]);
                let _ = util::update(&*store, pods, &pod, new).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_out_updates_and_is_collected() {
    let (_dir, store) = super::testkit::temp_store().await;
    let opts = LoopOptions {
        resync: Duration::from_secs(2),
    };
    let mut tasks = vec![
        spawn(
            replicaset::ReplicaSetController::default(),
            store.clone(),
            opts,
        ),
        spawn(deployment::DeploymentController, store.clone(), opts),
        spawn(gc::GarbageCollector::default(), store.clone(), opts),
        spawn(scheduler::Scheduler, store.clone(), opts),
    ];
    let s = &*store;
    let (deployments, replicasets, pods) = (util::deployments(), util::replicasets(), util::pods());

    util::create(
        s,
        util::nodes(),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
               "spec": {},
               "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                          "conditions": [{"type": "Ready", "status": "True"}]}}),
    )
    .await
    .expect("create node");
    util::create(
        s,
        deployments,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": 3,
                     "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}},
        }),
    )
    .await
    .expect("create deployment");

    // A ReplicaSet and three pods, bound to the node, not ready: nothing is available.
    let first_rs = eventually("the first ReplicaSet and its 3 pods", || async move {
        let rses = list(s, replicasets).await;
        let pods = list(s, pods).await;
        let bound = pods
            .iter()
            .filter(|p| cairn_wire::value::str_at(p, "/spec/nodeName") == "node-1")
            .count();
        (rses.len() == 1 && pods.len() == 3 && bound == 3).then(|| rses[0].clone())
    })
    .await;
    let hash =
        cairn_wire::value::str_at(&first_rs, "/metadata/labels/pod-template-hash").to_string();
    assert_eq!(util::name(&first_rs), format!("web-{hash}"));
    for pod in list(s, pods).await {
        assert!(util::name(&pod).starts_with(&format!("web-{hash}-")));
        assert_eq!(pod["metadata"]["labels"]["pod-template-hash"], json!(hash));
        assert!(util::is_controlled_by(&pod, &first_rs));
        assert_eq!(condition(&pod, "PodScheduled").unwrap()["status"], "True");
    }
    let d = eventually("status with 3 unavailable replicas", || async move {
        let d = util::get(s, &deployments.key(Some("default"), "web"))
            .await
            .unwrap()?;
        (d["status"]["updatedReplicas"] == 3 && d["status"]["unavailableReplicas"] == 3)
            .then_some(d)
    })
    .await;
    assert_eq!(condition(&d, "Available").unwrap()["status"], "False");
    assert!(d["status"].get("availableReplicas").is_none());

    // The node agent starts the pods: the rollout completes.
    tasks.push(tokio::spawn(fake_agent(store.clone(), "node-1")));
    let complete = |generation: i64| async move {
        let d = util::get(s, &deployments.key(Some("default"), "web"))
            .await
            .unwrap()?;
        let st = &d["status"];
        let progressing = condition(&d, "Progressing")?;
        // What `kubectl rollout status` checks.
        (st["observedGeneration"] == generation
            && st["replicas"] == 3
            && st["updatedReplicas"] == 3
            && st["availableReplicas"] == 3
            && st["readyReplicas"] == 3
            && condition(&d, "Available")?["status"] == "True"
            && progressing["reason"] == "NewReplicaSetAvailable")
            .then_some(d)
    };
    let d = eventually("the first rollout to complete", || complete(1)).await;
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );

    // A new image: a second ReplicaSet takes over.
    let mut updated = d.clone();
    updated["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.28");
    util::update(s, deployments, &d, updated)
        .await
        .expect("update deployment");
    let d = eventually("the second rollout to complete", || complete(2)).await;
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    let first_uid = util::uid(&first_rs).to_string();
    let first_uid = first_uid.as_str();
    let rses = eventually("the old ReplicaSet scaled to zero", || async move {
        let rses = list(s, replicasets).await;
        let old = rses.iter().find(|r| util::uid(r) == first_uid)?;
        (rses.len() == 2 && old["spec"]["replicas"] == 0 && old["status"]["replicas"] == 0)
            .then_some(rses)
    })
    .await;
    let new_rs = rses
        .iter()
        .find(|r| util::uid(r) != util::uid(&first_rs))
        .unwrap();
    assert_eq!(
        new_rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    let new_pods = eventually("three pods of the new template", || async move {
        let pods = list(s, pods).await;
        (pods.len() == 3).then_some(pods)
    })
    .await;
    for pod in &new_pods {
        assert!(util::is_controlled_by(pod, new_rs));
        assert_eq!(pod["spec"]["containers"][0]["image"], "nginx:1.28");
    }

    // Deleting the Deployment takes its ReplicaSets and their pods with it.
    s.delete(&deployments.key(Some("default"), "web"), None)
        .await
        .expect("delete deployment");
    eventually("the ReplicaSets and pods to be collected", || async move {
        (list(s, replicasets).await.is_empty() && list(s, pods).await.is_empty()).then_some(())
    })
    .await;

    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collector_policies() {
    let (_dir, store) = super::testkit::temp_store().await;
    let s = &*store;
    let (replicasets, pods, cms) = (
        util::replicasets(),
        util::pods(),
        cairn_api::resources::find("", "v1", "configmaps").unwrap(),
    );
    let owner = |name: &str, finalizer: Option<&str>| {
        let mut o = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"replicas": 0,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                             "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
        if let Some(f) = finalizer {
            o["metadata"]["finalizers"] = json!([f]);
        }
        o
    };
    let dependent = |name: &str, owners: &[&Value]| {
        let refs: Vec<Value> = owners
            .iter()
            .map(|o| {
                json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": util::name(o),
                       "uid": util::uid(o), "blockOwnerDeletion": true})
            })
            .collect();
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "default", "ownerReferences": refs}})
    };
    let keep = util::create(s, replicasets, owner("keep", None))
        .await
        .unwrap();
    let gone = util::create(s, replicasets, owner("gone", None))
        .await
        .unwrap();
    let orphaning = util::create(
        s,
        replicasets,
        owner("orphaning", Some(gc::ORPHAN_FINALIZER)),
    )
    .await
    .unwrap();
    let foreground = util::create(
        s,
        replicasets,
        owner("foreground", Some(gc::FOREGROUND_FINALIZER)),
    )
    .await
    .unwrap();
    util::create(s, cms, dependent("of-gone", &[&gone]))
        .await
        .unwrap();
    util::create(s, cms, dependent("of-both", &[&keep, &gone]))
        .await
        .unwrap();
    util::create(s, cms, dependent("of-orphaning", &[&orphaning]))
        .await
        .unwrap();
    util::create(s, cms, dependent("of-foreground", &[&foreground]))
        .await
        .unwrap();
    // Written with an owner that never existed: collected too.
    let ghost = json!({"metadata": {"name": "ghost", "uid": "no-such-uid"}});
    util::create(s, cms, dependent("of-ghost", &[&ghost]))
        .await
        .unwrap();

    let task = spawn(
        gc::GarbageCollector::default(),
        store.clone(),
        LoopOptions::default(),
    );
    s.delete(&util::key_of(replicasets, &gone), None)
        .await
        .unwrap();
    // What the API does for propagationPolicy Orphan / Foreground: mark, keep the finalizer.
    for o in [&orphaning, &foreground] {
        util::delete(s, replicasets, o).await.unwrap();
    }
    let cm = |name: &'static str| async move {
        util::get(s, &cms.key(Some("default"), name)).await.unwrap()
    };
    eventually(
        "dependents of deleted owners to be handled",
        || async move {
            let both = cm("of-both").await?;
            let orphaned = cm("of-orphaning").await?;
            let done = cm("of-gone").await.is_none()
                && cm("of-ghost").await.is_none()
                && cm("of-foreground").await.is_none()
                && util::owner_refs(&both).len() == 1
                && util::owner_refs(&orphaned).is_empty();
            done.then_some(())
        },
    )
    .await;
    assert_eq!(
        util::owner_refs(&cm("of-both").await.unwrap())[0]["uid"],
        json!(util::uid(&keep))
    );
    eventually(
        "owners with finished finalizers to be removed",
        || async move {
            let left = list(s, replicasets).await;
            (left.len() == 1 && util::name(&left[0]) == "keep").then_some(())
        },
    )
    .await;
    assert!(list(s, pods).await.is_empty());
    task.abort();
}
