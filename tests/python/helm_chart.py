"""Lint and render a Helm chart with helm's own Go library (the helm-sdkpy package), no cluster.

    python helm_chart.py CHART_DIR VALUES_JSON

VALUES_JSON overrides the chart's values.yaml (deep-merged). Prints one JSON object:
`{"lint": [{"severity": "warning", "path": ...}, ...], "documents": [manifest, ...]}`.

helm-sdkpy has no `helm template`: it lints and installs. `helm lint` reads only the chart's own
values.yaml, so the chart is copied with the merged values written in. Rendering is `helm install`
with release storage in memory (HELM_DRIVER=memory) against a loopback endpoint that answers
Kubernetes API discovery for the kinds the chart uses and accepts every create: helm renders the
chart, maps each kind to its API resource, creates it, and returns the release whose `manifest`
is exactly what `helm template` prints. A kind missing from API_RESOURCES fails the install,
naming the kind.
"""

import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import helm_sdkpy
import yaml

KUBERNETES_VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0"}
# group/version -> (kind, plural); ServiceMonitor is prometheus-operator's CRD.
API_RESOURCES = {
    "v1": [
        ("ConfigMap", "configmaps"),
        ("Secret", "secrets"),
        ("Service", "services"),
        ("PersistentVolumeClaim", "persistentvolumeclaims"),
        ("ServiceAccount", "serviceaccounts"),
    ],
    "apps/v1": [("Deployment", "deployments"), ("StatefulSet", "statefulsets")],
    "autoscaling/v2": [("HorizontalPodAutoscaler", "horizontalpodautoscalers")],
    "monitoring.coreos.com/v1": [("ServiceMonitor", "servicemonitors")],
}
LINT_SEVERITY = {0: "unknown", 1: "info", 2: "warning", 3: "error"}


class KubernetesApi(BaseHTTPRequestHandler):
    """Discovery of API_RESOURCES; every GET of an object is 404, every create succeeds."""

    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def discovery(self, path):
        if path == "/version":
            return KUBERNETES_VERSION
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            groups = []
            for group_version in API_RESOURCES:
                if "/" in group_version:
                    group, version = group_version.split("/")
                    entry = {"groupVersion": group_version, "version": version}
                    groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        for group_version, kinds in API_RESOURCES.items():
            if path == ("/api/" if group_version == "v1" else "/apis/") + group_version:
                resources = [
                    {"name": plural, "singularName": kind.lower(), "namespaced": True, "kind": kind,
                     "verbs": ["create", "get", "list", "patch", "update", "delete"]}
                    for kind, plural in kinds
                ]
                return {"kind": "APIResourceList", "groupVersion": group_version, "resources": resources}
        return None

    def do_GET(self):
        body = self.discovery(self.path.split("?")[0])
        if body is None:
            self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
        else:
            self.reply(200, body)

    def do_POST(self):
        created = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.reply(201, created)


def merge(base, override):
    """`override` deep-merged into `base` (maps merge, everything else replaces)."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base.get(key), value)
        return merged
    return override


def main():
    chart, overrides = sys.argv[1], json.loads(sys.argv[2])
    # helm's Go runtime reads the environment the process started with, so the caller sets it.
    if os.environ.get("HELM_DRIVER") != "memory":
        sys.exit("run with HELM_DRIVER=memory (and HELM_{CACHE,CONFIG,DATA}_HOME in a scratch dir)")
    with tempfile.TemporaryDirectory() as work:
        copy = os.path.join(work, os.path.basename(os.path.normpath(chart)))
        shutil.copytree(chart, copy)
        with open(os.path.join(chart, "values.yaml")) as f:
            values = merge(yaml.safe_load(f) or {}, overrides)
        with open(os.path.join(copy, "values.yaml"), "w") as f:
            yaml.safe_dump(values, f)

        server = ThreadingHTTPServer(("127.0.0.1", 0), KubernetesApi)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
            "users": [{"name": "local", "user": {}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "local"}}],
            "current-context": "local",
        }
        kubeconfig_path = os.path.join(work, "kubeconfig")
        with open(kubeconfig_path, "w") as f:
            yaml.safe_dump(kubeconfig, f)

        config = helm_sdkpy.Configuration(namespace="lcserve", kubeconfig=kubeconfig_path)
        lint = asyncio.run(helm_sdkpy.Lint(config).run(copy))
        release = asyncio.run(helm_sdkpy.Install(config).run("lcserve", copy, wait=False))
        server.shutdown()

    # helm's lint messages carry their text in a Go error that does not serialize: path and level.
    messages = [
        {"severity": LINT_SEVERITY.get(m.get("Severity"), str(m.get("Severity"))), "path": m.get("Path")}
        for m in lint.get("Messages") or []
    ]
    documents = [doc for doc in yaml.safe_load_all(release["manifest"]) if doc]
    print(json.dumps({"lint": messages, "lint_errors": lint.get("Errors"), "documents": documents}))


if __name__ == "__main__":
    main()
