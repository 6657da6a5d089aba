"""Deployment files against the real server: a real Prometheus (Debian's `prometheus`)
scrapes a running svdq-server and answers queries with sensible values, evaluates every
dashboard expression and loads every alert rule; every metric the dashboard, the alerts and
the autoscaler use is one the server exports (from a real scrape); the compose and
Kubernetes files parse, and the files, ports and probes they name exist and agree."""
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, free_port
from test_server_e2e import generate

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "svdq.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
K8S = DEPLOY / "k8s"
SERVICE = "svdq.v1.Generation"


def dashboard_exprs():
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def alert_exprs():
    return [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def k8s_docs():
    docs = {}
    for f in sorted(K8S.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d and "kind" in d:
                docs.setdefault(d["kind"], []).append(d)
    return docs


def hpa_metric():
    return k8s_docs()["HorizontalPodAutoscaler"][0]["spec"]["metrics"][0]["pods"]["metric"]["name"]


def scrape_families(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {l.split()[2]: l.split()[3] for l in text.splitlines() if l.startswith("# TYPE ")}


def metric_names(expr):
    # Identifiers followed by a selector, a range or an operator, not label names or functions.
    expr = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"\b(svdq_[a-z0-9_]+|up)\b(?!\s*\()", expr))


def test_dashboard_alerts_and_autoscaler_use_exported_metrics(cpu_server, stubs):
    generate(stubs, cpu_server.addr, text="Hello", max_tokens=2)
    families = scrape_families(cpu_server.metrics_port)
    used = set()
    for e in dashboard_exprs() + alert_exprs() + [hpa_metric()]:
        used |= metric_names(e)
    assert len(used) > 15
    for name in sorted(used):
        if name == "up":  # made by Prometheus for every target
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in families or families.get(base) == "histogram", f"{name} is not exported by svdq-server"


def prom_query(port, q):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", (q, body)
    return body["data"]["result"]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus is not installed (deploy/install-deps.sh installs it)")
def test_real_prometheus_scrapes_the_server(cpu_server, stubs, tmp_path):
    port = free_port()
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "alerts.yml")],
        "scrape_configs": [{"job_name": "svdq", "static_configs": [{"targets": [f"127.0.0.1:{cpu_server.metrics_port}"]}]}],
    }))
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _, _, final = generate(stubs, cpu_server.addr, text="The capital of France is", max_tokens=6, ignore_eos=True)
        assert final.usage.completion_tokens == 6
        deadline, tokens = time.time() + 90, []
        while time.time() < deadline:
            try:
                tokens = prom_query(port, 'svdq_generation_tokens_total{job="svdq"}')
                if tokens and float(tokens[0]["value"][1]) >= 6:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert tokens and float(tokens[0]["value"][1]) >= 6, (tmp_path / "prometheus.log").read_text()[-2000:]

        def value(q):
            r = prom_query(port, q)
            assert len(r) == 1, (q, r)
            return float(r[0]["value"][1])
        assert value('up{job="svdq"}') == 1
        assert value("svdq_kv_cache_blocks") > 0
        assert 0 <= value("svdq_kv_cache_usage_ratio") <= 1
        assert value("svdq_key_compression_ratio") > 0
        assert value("svdq_time_to_first_token_seconds_count") >= 1
        assert value('svdq_request_success_total{finished_reason="length"}') >= 1
        assert value("svdq_cache_config_info") == 1
        # Every dashboard expression is valid PromQL and evaluates.
        for e in dashboard_exprs():
            prom_query(port, e.replace("$__rate_interval", "1m"))
        # Every alert rule loads and evaluates without error.
        deadline = time.time() + 30
        while time.time() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10) as r:
                rules = [x for g in json.loads(r.read())["data"]["groups"] for x in g["rules"]]
            if rules and all(x.get("lastEvaluation", "").startswith("20") and x["health"] == "ok" for x in rules):
                break
            time.sleep(0.5)
        assert len(rules) == len(alert_exprs()) and all(x["health"] == "ok" for x in rules), rules
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_alert_rules_pass_promtool_and_match_the_k8s_copy():
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    rule = k8s_docs()["PrometheusRule"][0]
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text()), "deploy/k8s/prometheusrule.yaml drifted from alerts.yml"


def dockerfile():
    return (ROOT / "Dockerfile").read_text()


def docker_env():
    env = {}
    for k, v in re.findall(r"(SVDQ_[A-Z_]+)=(\S+)", dockerfile()):
        env[k] = v.rstrip("\\").strip()
    return env


def test_dockerfile_stages_user_healthcheck_and_scripts():
    d = dockerfile()
    froms = re.findall(r"^FROM (\S+)", d, re.M)
    version = re.search(r"ARG CUDA_VERSION=(\S+)", d).group(1)
    assert version.startswith("13.")
    assert froms == ["nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04", "nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04"]
    assert re.search(r"^USER (\S+)", d, re.M).group(1) not in ("root", "0")
    assert "HEALTHCHECK" in d and '"svdq-cli", "--addr", "127.0.0.1:50051", "health"' in d
    for script in re.findall(r"deploy/[a-z-]+\.sh", d):
        assert (ROOT / script).exists(), script
    assert "deploy/install-deps.sh" in d  # the build reuses the project's install script
    assert "svdq-cli" in (DEPLOY / "collect-runtime.sh").read_text()
    env = docker_env()
    assert env["SVDQ_PORT"] == "50051" and env["SVDQ_METRICS_PORT"] == "9464" and env["SVDQ_HTTP_PORT"] == "8000"
    assert env["SVDQ_HOST"] == "0.0.0.0" and env["SVDQ_METRICS_HOST"] == "0.0.0.0"  # HTTP follows SVDQ_HOST
    assert re.search(r"^EXPOSE 50051 8000 9464$", d, re.M)


def test_compose_file_references_exist_and_agree():
    c = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert set(c["services"]) == {"svdq", "prometheus", "grafana"}
    svdq = c["services"]["svdq"]
    assert (DEPLOY / svdq["build"]["context"] / svdq["build"]["dockerfile"]).exists()
    assert {"50051:50051", "8000:8000", "9464:9464"} <= set(svdq["ports"])
    assert svdq["healthcheck"]["test"][1:] == ["svdq-cli", "--addr", "127.0.0.1:50051", "health"]
    grace = int(svdq["environment"]["SVDQ_SHUTDOWN_GRACE_SECONDS"])
    assert int(svdq["stop_grace_period"].rstrip("s")) > grace
    for name, s in c["services"].items():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: {src}"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["svdq:9464"]
    mounted = {v.split(":")[1] for v in c["services"]["prometheus"]["volumes"]}
    assert set(prom["rule_files"]) <= mounted
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    uids = {t["datasource"]["uid"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]}
    assert uids == {ds["datasources"][0]["uid"]}
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "svdq.yml").read_text())
    assert prov["providers"][0]["options"]["path"] in {v.split(":")[1] for v in c["services"]["grafana"]["volumes"]}


def test_kubernetes_manifests_agree():
    docs = k8s_docs()
    dep = docs["Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    ctr = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports == {"grpc": 50051, "http": 8000, "metrics": 9464}
    assert ctr["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert ctr[probe]["grpc"]["port"] == ports["grpc"], probe
    assert ctr["readinessProbe"]["grpc"]["service"] == SERVICE
    assert ctr["startupProbe"]["grpc"]["service"] == SERVICE
    assert "service" not in ctr["livenessProbe"]["grpc"]  # "" is liveness
    env = {e["name"]: e["value"] for e in ctr["env"]}
    assert pod["terminationGracePeriodSeconds"] > int(env["SVDQ_SHUTDOWN_GRACE_SECONDS"])
    assert pod["securityContext"]["runAsNonRoot"] and "10001" in dockerfile()
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for svc in docs["Service"]:
        assert svc["spec"]["selector"].items() <= labels.items()
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports and p["port"] == ports[p["targetPort"]]
    sm = docs["ServiceMonitor"][0]
    main_svc = docs["Service"][0]
    assert sm["spec"]["selector"]["matchLabels"].items() <= main_svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in main_svc["spec"]["ports"]}
    hpa = docs["HorizontalPodAutoscaler"][0]
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    adapter = yaml.safe_load((K8S / "prometheus-adapter-rules.yaml").read_text())
    rule = adapter["rules"]["custom"][0]
    assert rule["name"]["as"] == hpa_metric() and hpa_metric() in rule["seriesQuery"]
