"""Drives a running cairn server with the official Python `kubernetes` client.

Usage: client_check.py KUBECONFIG
Exits non-zero with a message on the first thing that does not work as on kube-apiserver.
"""
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def expect(cond, what):
    if not cond:
        raise SystemExit(f"python client: {what}")


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    names = [ns.metadata.name for ns in core.list_namespace().items]
    expect("default" in names and "kube-system" in names, f"namespaces: {names}")

    # A Node object stands in for a node until the agent registers real ones.
    node = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "py-node", "labels": {"kubernetes.io/hostname": "py-node"}},
        "status": {
            "capacity": {"cpu": "2", "memory": "2Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "2Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok",
                            "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "nodeInfo": {"architecture": "arm64", "bootID": "b", "containerRuntimeVersion": "containerd://1.7.24",
                         "kernelVersion": "6.12", "kubeProxyVersion": "", "kubeletVersion": "v1.32.0",
                         "machineID": "m", "operatingSystem": "linux", "osImage": "cairn", "systemUUID": "u"},
        },
    }
    core.create_node(node)
    got = core.read_node("py-node")
    expect(got.status.node_info.os_image == "cairn", "node round trip")
    expect(any(n.metadata.name == "py-node" for n in core.list_node().items), "node listed")

    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-cm", labels={"app": "py"}), data={"a": "1"})
    created = core.create_namespaced_config_map("default", cm)
    expect(created.metadata.uid and created.metadata.resource_version, "server-set metadata")
    try:
        core.create_namespaced_config_map("default", cm)
        raise SystemExit("python client: duplicate create was accepted")
    except ApiException as e:
        expect(e.status == 409, f"duplicate create: {e.status}")

    dep = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "py"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "py"}},
                 "template": {"metadata": {"labels": {"app": "py"}},
                              "spec": {"containers": [{"name": "c1", "image": "nginx"}]}}},
    }
    apps.create_namespaced_deployment("default", dep)
    apps.patch_namespaced_deployment("py", "default", {"spec": {"replicas": 2}})
    expect(apps.read_namespaced_deployment("py", "default").spec.replicas == 2, "strategic merge patch")
    apps.patch_namespaced_deployment("py", "default", [{"op": "replace", "path": "/spec/replicas", "value": 3}])
    expect(apps.read_namespaced_deployment("py", "default").spec.replicas == 3, "JSON patch")

    selected = core.list_namespaced_config_map("default", label_selector="app=py").items
    expect([c.metadata.name for c in selected] == ["py-cm"], "label selector")

    seen = []

    def watcher():
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_config_map, "default", timeout_seconds=5):
            seen.append((ev["type"], ev["object"].metadata.name))
            if ev["object"].metadata.name == "py-watched":
                w.stop()

    t = threading.Thread(target=watcher)
    t.start()
    time.sleep(1)
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-watched")))
    t.join(10)
    expect(("ADDED", "py-watched") in seen, f"watch events: {seen}")

    apps.delete_namespaced_deployment("py", "default")
    try:
        apps.read_namespaced_deployment("py", "default")
        raise SystemExit("python client: deployment still there after delete")
    except ApiException as e:
        expect(e.status == 404, f"read after delete: {e.status}")
    # The groups beyond core and apps: list, watch, patch, and an eviction the budget refuses.
    rbac = client.RbacAuthorizationV1Api()
    rbac.create_namespaced_role("default", {
        "metadata": {"name": "py-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
    rbac.patch_namespaced_role("py-reader", "default", {"metadata": {"labels": {"team": "py"}}})
    roles = rbac.list_namespaced_role("default", label_selector="team=py").items
    expect([r.metadata.name for r in roles] == ["py-reader"], "roles by label")
    net = client.NetworkingV1Api()
    net.create_namespaced_network_policy("default", {
        "metadata": {"name": "py-deny"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
    policies = net.list_namespaced_network_policy("default").items
    expect([p.metadata.name for p in policies] == ["py-deny"], "network policies")
    policy = client.PolicyV1Api()
    policy.create_namespaced_pod_disruption_budget("default", {
        "metadata": {"name": "py-pdb"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "py-pod"}}}})
    seen_pdb = []
    w = watch.Watch()
    for ev in w.stream(policy.list_namespaced_pod_disruption_budget, "default", timeout_seconds=5):
        seen_pdb.append(ev["object"].metadata.name)
        w.stop()
    expect(seen_pdb == ["py-pdb"], f"watch of PodDisruptionBudgets: {seen_pdb}")
    scheduling = client.SchedulingV1Api()
    names = [c.metadata.name for c in scheduling.list_priority_class().items]
    expect("system-node-critical" in names, f"priority classes: {names}")
    print("python client: ok")


if __name__ == "__main__":
    main(sys.argv[1])
