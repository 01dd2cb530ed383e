//! Offline validation of `deploy/`: what an operator runs must at least parse and lint.
//!
//! - The compose file passes `docker-compose config -q` (Debian's `docker-compose` 1.29: no
//!   engine needed) and defines the whole stack.
//! - The Helm chart passes `helm lint` and renders, with its defaults and with every optional part
//!   on, through helm's own Go library (the `helm-sdkpy` package: `tests/python/helm_chart.py`),
//!   and every rendered manifest passes `kubernetes-validate --strict` against the oldest and the
//!   newest Kubernetes the chart supports. Only kinds defined by CRDs, whose schemas are not
//!   bundled, skip schema validation: [`CRD_KINDS`].
//!
//! A missing tool fails the test naming how to install it; nothing is skipped.

use std::collections::BTreeMap;
use std::process::Command;

use lcserve_tests::python::{python, run, scripts, workspace};
use serde_json::{Value, json};

/// Kinds the chart renders that Kubernetes does not define: prometheus-operator's CRD.
const CRD_KINDS: [&str; 1] = ["ServiceMonitor"];
/// The chart's `kubeVersion` floor and the newest schemas kubernetes-validate bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.27.0", "1.37.0"];

#[test]
fn the_compose_file_is_valid_and_defines_the_whole_stack() {
    let compose = workspace().join("deploy/compose/docker-compose.yml");
    let config = |extra: &[&str]| {
        let mut command = Command::new("docker-compose");
        command.arg("-f").arg(&compose).arg("config").args(extra);
        if command.output().is_err() {
            panic!(
                "docker-compose is not installed: `apt-get install docker-compose` (Debian's 1.29 validates offline)"
            );
        }
        run(&mut command, "docker-compose config")
    };
    config(&["-q"]);

    let services: Vec<String> = config(&["--services"]).lines().map(str::to_owned).collect();
    for service in [
        "router",
        "prefill-1",
        "prefill-2",
        "decode-1",
        "decode-2",
        "kvstore",
        "redis",
        "otel-collector",
        "jaeger",
        "prometheus",
        "grafana",
    ] {
        assert!(services.iter().any(|s| s == service), "service {service} in {services:?}");
    }
    // The files the services mount from deploy/.
    for file in [
        "deploy/Dockerfile",
        "deploy/compose/prometheus.yml",
        "deploy/compose/otel-collector.yaml",
        "deploy/grafana/provisioning/datasources/prometheus.yaml",
        "deploy/grafana/provisioning/dashboards/lcserve.yaml",
    ] {
        assert!(workspace().join(file).is_file(), "{file} exists");
    }
}

/// Lints and renders the chart with `values` over its defaults; returns the rendered manifests
/// by kind after checking that lint found nothing and every manifest validates.
fn lint_render_validate(values: &Value) -> BTreeMap<String, Vec<Value>> {
    let scratch = tempfile::tempdir().expect("temp dir");
    let chart = workspace().join("deploy/helm/lcserve");
    let mut command = python().command();
    // helm's Go runtime reads the environment the process starts with.
    command
        .env("HELM_DRIVER", "memory")
        .env("HELM_CACHE_HOME", scratch.path().join("cache"))
        .env("HELM_CONFIG_HOME", scratch.path().join("config"))
        .env("HELM_DATA_HOME", scratch.path().join("data"))
        .arg(scripts().join("helm_chart.py"))
        .arg(&chart)
        .arg(values.to_string());
    let stdout = run(&mut command, "helm lint and render (helm_chart.py)");
    let got: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("helm_chart.py printed no JSON ({e})"));

    assert_eq!(got["lint_errors"], Value::Null, "helm lint: {}", got["lint"]);
    let findings: Vec<&Value> =
        got["lint"].as_array().expect("lint messages").iter().filter(|m| m["severity"] != "info").collect();
    assert!(findings.is_empty(), "helm lint warnings or errors: {findings:?}");

    let documents = got["documents"].as_array().expect("rendered documents");
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for document in documents {
        let kind = document["kind"].as_str().unwrap_or_else(|| panic!("a manifest without kind: {document}"));
        by_kind.entry(kind.to_owned()).or_default().push(document.clone());
    }

    // JSON is YAML: one multi-document file of everything Kubernetes has a schema for.
    let validated: Vec<String> = documents
        .iter()
        .filter(|d| !CRD_KINDS.contains(&d["kind"].as_str().unwrap_or_default()))
        .map(Value::to_string)
        .collect();
    let manifests = scratch.path().join("manifests.yaml");
    std::fs::write(&manifests, validated.join("\n---\n")).expect("write the rendered manifests");
    for version in KUBERNETES_VERSIONS {
        let output = run(
            Command::new(python().bin("kubernetes-validate")).args(["--strict", "-k", version]).arg(&manifests),
            &format!("kubernetes-validate --strict against Kubernetes {version}"),
        );
        assert!(!output.contains("Couldn't find schema"), "every non-CRD kind has a schema: {output}");
        assert_eq!(output.matches(" passed for resource ").count(), validated.len(), "each manifest passed: {output}");
    }
    by_kind
}

/// The names of the rendered objects of `kind`.
fn names(by_kind: &BTreeMap<String, Vec<Value>>, kind: &str) -> Vec<String> {
    let objects = by_kind.get(kind).map(Vec::as_slice).unwrap_or_default();
    objects.iter().map(|o| o["metadata"]["name"].as_str().expect("a name").to_owned()).collect()
}

/// The container of the Deployment (or StatefulSet) `name`.
fn container<'a>(by_kind: &'a BTreeMap<String, Vec<Value>>, name: &str) -> &'a Value {
    let workload = by_kind
        .values()
        .flatten()
        .find(|o| o["metadata"]["name"] == name && o["spec"]["template"].is_object())
        .unwrap_or_else(|| panic!("a workload named {name}"));
    &workload["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn the_helm_chart_lints_renders_and_validates_with_its_defaults() {
    let rendered = lint_render_validate(&json!({}));
    let mut deployments = names(&rendered, "Deployment");
    deployments.sort();
    let expected =
        ["decode-0", "decode-1", "kvstore", "prefill-0", "prefill-1", "router"].map(|d| format!("lcserve-{d}"));
    assert_eq!(deployments, expected);
    assert_eq!(names(&rendered, "StatefulSet"), ["lcserve-redis"], "Redis bundled by default");
    for kind in ["Secret", "HorizontalPodAutoscaler", "ServiceMonitor"] {
        assert!(names(&rendered, kind).is_empty(), "no {kind} by default");
    }

    // Plaintext: the kubelet's gRPC probe asks grpc.health.v1; the router's HTTP probes.
    let worker = container(&rendered, "lcserve-decode-0");
    assert_eq!(worker["readinessProbe"]["grpc"]["port"], 50061, "{worker}");
    let router = container(&rendered, "lcserve-router");
    assert_eq!(router["readinessProbe"]["httpGet"]["path"], "/ready");
    let pre_stop = &router["lifecycle"]["preStop"]["exec"]["command"];
    assert_eq!(pre_stop, &json!(["sleep", "5"]), "proxies forget the router before it stops accepting");
    for deployment in &rendered["Deployment"] {
        let grace = &deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"];
        assert_eq!(grace, 120, "time to drain on SIGTERM: {}", deployment["metadata"]["name"]);
    }
    assert_eq!(router["livenessProbe"]["httpGet"]["path"], "/health");
    // Every router replica keeps and finds stored responses in the bundled Redis.
    let responses_redis = env_entry(router, "LCSERVE_ROUTER_RESPONSES_REDIS_URL");
    assert_eq!(responses_redis["value"], "redis://lcserve-redis:6379/0", "{router}");

    // The router reaches every worker by its own Service.
    let config = &rendered["ConfigMap"][0]["data"];
    assert_eq!(config["LCSERVE_ROUTER_PREFILL"], "http://lcserve-prefill-0:50061,http://lcserve-prefill-1:50061");
    assert_eq!(config["LCSERVE_ROUTER_DECODE"], "http://lcserve-decode-0:50061,http://lcserve-decode-1:50061");
    assert_eq!(config["LCSERVE_KVSTORE"], "http://lcserve-kvstore:50052");
    assert_eq!(config["LCSERVE_ROUTER_RESPONSES_KEY_PREFIX"], "lcserve:responses:");
    assert_eq!(config["LCSERVE_ROUTER_RESPONSES_TTL"], "720h");
}

/// The env entry `name` of `container`.
fn env_entry<'a>(container: &'a Value, name: &str) -> &'a Value {
    let list = container["env"].as_array().expect("env");
    list.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("no {name} in {container}"))
}

#[test]
fn the_helm_chart_lints_renders_and_validates_with_every_option_on() {
    let pem = |label: &str| format!("-----BEGIN {label}-----\nMIIBtest\n-----END {label}-----\n");
    let values = json!({
        "redis": { "enabled": false, "url": "rediss://:password@redis.example.invalid:6380/0" },
        "tls": { "enabled": true, "cert": pem("CERTIFICATE"), "key": pem("PRIVATE KEY"), "ca": pem("CERTIFICATE") },
        "metrics": { "serviceMonitor": { "enabled": true, "labels": { "release": "prometheus" } } },
        "router": {
            "autoscaling": { "enabled": true },
            "apiKeys": {
                "enabled": true,
                "keys": [
                    { "key": "sk-team-a", "tenant": "team-a" },
                    { "key": "sk-chat", "tenant": "chat", "minPriority": -10 },
                ],
            },
        },
        "prefill": { "gpus": 1 },
        "decode": { "gpus": 1 },
        "model": { "source": "hostPath" },
        "telemetry": { "otlpEndpoint": "http://otel-collector.observability:4317" },
    });
    let rendered = lint_render_validate(&values);
    assert!(names(&rendered, "StatefulSet").is_empty(), "external Redis: none bundled");
    assert_eq!(names(&rendered, "HorizontalPodAutoscaler"), ["lcserve-router"]);
    assert_eq!(names(&rendered, "ServiceMonitor"), ["lcserve"]);
    let mut secrets = names(&rendered, "Secret");
    secrets.sort();
    assert_eq!(secrets, ["lcserve", "lcserve-tls"]);
    let secret = rendered["Secret"].iter().find(|s| s["metadata"]["name"] == "lcserve").expect("the Secret");
    assert_eq!(secret["stringData"]["redis-url"], "rediss://:password@redis.example.invalid:6380/0");
    let keys = secret["stringData"]["api-keys"].as_str().unwrap_or_default();
    let lines: Vec<&str> = keys.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    assert_eq!(lines, ["sk-team-a team-a", "sk-chat chat min_priority=-10"], "{secret}");

    let env = |container: &Value| -> BTreeMap<String, Value> {
        let list = container["env"].as_array().expect("env");
        list.iter().map(|e| (e["name"].as_str().expect("name").to_owned(), e["value"].clone())).collect()
    };
    let router = container(&rendered, "lcserve-router");
    assert_eq!(env(router)["LCSERVE_ROUTER_API_KEYS"], "/etc/lcserve/api-keys/api-keys");
    for name in ["lcserve-router", "lcserve-kvstore"] {
        let variable =
            if name == "lcserve-router" { "LCSERVE_ROUTER_RESPONSES_REDIS_URL" } else { "LCSERVE_REDIS_URL" };
        let reference = &env_entry(container(&rendered, name), variable)["valueFrom"]["secretKeyRef"];
        assert_eq!((&reference["name"], &reference["key"]), (&json!("lcserve"), &json!("redis-url")), "{name}");
    }
    for name in ["lcserve-router", "lcserve-prefill-1", "lcserve-kvstore"] {
        let env = env(container(&rendered, name));
        assert_eq!(env["LCSERVE_TLS_CA"], "/etc/lcserve/tls/ca.crt", "{name}");
        assert_eq!(env["LCSERVE_TLS_CERT"], "/etc/lcserve/tls/tls.crt", "{name}");
    }
    let worker = container(&rendered, "lcserve-prefill-0");
    assert_eq!(worker["resources"]["limits"]["nvidia.com/gpu"], 1, "{worker}");
    assert!(worker["readinessProbe"]["tcpSocket"].is_object(), "the kubelet's gRPC probe has no TLS: {worker}");
    let config = &rendered["ConfigMap"][0]["data"];
    assert_eq!(config["LCSERVE_ROUTER_DECODE"], "https://lcserve-decode-0:50061,https://lcserve-decode-1:50061");
    assert_eq!(config["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://otel-collector.observability:4317");
}
