"""Tests for the deployment files in deploy/ (run by deploy/test.sh, inside its venv).

Static checks: hadolint (Dockerfile), yamllint (every YAML file), kubernetes-validate --strict
(k8s/), check-jsonschema with the Compose specification (compose.yaml), each linter first shown
a broken file it must refuse; then what the files must agree on (probes, drain timings, names,
ports, nginx locations, the Rust version the builder needs, the build context).

Live checks: a real Herald started with the Deployment's command line and environment (the
image's ENTRYPOINT/CMD/ENV from the Dockerfile, the ConfigMap, the Secret; only the port, the
Redis address and the data directory replaced) must pass /ready, the Dockerfile's HEALTHCHECK
and `herald config check`; traffic is driven through it (HTTP API, Socket.IO over long-polling,
Redis) so that every metric the Grafana dashboard queries appears in its /metrics; it must
drain on SIGTERM within server.shutdown_grace_secs. Then compose.yaml's two Herald instances
(their environment from the file) behind nginx running compose-nginx.conf (upstreams pointed at
them) must deliver to a long-polling client through nginx what either instance is sent.

Output: one line per check ("ok", "FAIL", "skip"), then "deploy: N passed, N failed, N skipped".
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
VENV_BIN = Path(sys.executable).parent
HERALD = Path(os.environ.get("HERALD_BIN", ROOT / "target" / "debug" / "herald"))

results = {"passed": 0, "failed": 0, "skipped": 0}
cleanups = []


def check(name, fn):
    """Runs one check: fn() returns None/True (ok) or raises; a string return is a skip reason."""
    try:
        outcome = fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
        results["failed"] += 1
        print(f"FAIL - {name}: {e}", flush=True)
        return False
    if isinstance(outcome, str):
        results["skipped"] += 1
        print(f"skip - {name}: {outcome}", flush=True)
        return None
    results["passed"] += 1
    print(f"ok - {name}", flush=True)
    return True


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def run(args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


def tool(name):
    return VENV_BIN / name


# ---------------------------------------------------------------------------------------------
# The files, parsed


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def manifests():
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs.extend(load_yaml_docs(path))
    return docs


def one(kind, name=None):
    found = [d for d in manifests() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    expect(len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def dockerfile_stages():
    """[(from line, [instructions])] from the Dockerfile, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stages.append((rest.strip(), []))
        elif stages:
            stages[-1][1].append((word, rest.strip()))
    return stages


def final_stage():
    return dockerfile_stages()[-1][1]


def exec_form(instruction):
    values = [rest for word, rest in final_stage() if word == instruction]
    expect(values, f"the runtime stage has no {instruction}")
    parsed = json.loads(values[-1])
    expect(isinstance(parsed, list) and all(isinstance(x, str) for x in parsed), f"{instruction} is not in exec (JSON) form")
    return parsed


def image_env():
    env = {}
    for word, rest in final_stage():
        if word == "ENV":
            for m in re.finditer(r'(\w+)=("[^"]*"|\S+)', rest):
                env[m[1]] = m[2].strip('"')
    return env


def healthcheck_command():
    for word, rest in final_stage():
        if word == "HEALTHCHECK":
            m = re.search(r"\bCMD\s+(\[.*\])\s*$", rest)
            expect(m, "HEALTHCHECK has no CMD in exec form")
            return json.loads(m[1]), rest
    raise AssertionError("no HEALTHCHECK in the runtime stage")


def herald_container():
    deployment = one("Deployment", "herald")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == "herald"]
    expect(len(found) == 1, "the Deployment has no container named herald")
    return deployment, found[0]


def secret_values(name):
    secret = one("Secret", name)
    values = dict(secret.get("stringData") or {})
    import base64

    for key, value in (secret.get("data") or {}).items():
        values[key] = base64.b64decode(value).decode()
    return values


def container_env(pod_name="herald-test-0"):
    """The environment the Deployment gives Herald: image ENV, then envFrom, then env."""
    _, container = herald_container()
    env = dict(image_env())
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data = one("ConfigMap", source["configMapRef"]["name"]).get("data") or {}
        else:
            data = secret_values(source["secretRef"]["name"])
        env.update({source.get("prefix", "") + k: str(v) for k, v in data.items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            values = secret_values(ref["secretKeyRef"]["name"])
            key = ref["secretKeyRef"]["key"]
            expect(key in values, f"Secret {ref['secretKeyRef']['name']} has no key {key}")
            env[item["name"]] = values[key]
        elif "configMapKeyRef" in ref:
            data = one("ConfigMap", ref["configMapKeyRef"]["name"]).get("data") or {}
            env[item["name"]] = data[ref["configMapKeyRef"]["key"]]
        elif ref.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = pod_name
        else:
            raise AssertionError(f"env {item['name']}: a source this test cannot reproduce: {ref}")
    return env


def container_argv():
    """What the kubelet runs: `command` replaces the ENTRYPOINT, `args` the CMD."""
    _, container = herald_container()
    entrypoint = container.get("command") or exec_form("ENTRYPOINT")
    args = container.get("args") if "args" in container else (exec_form("CMD") if "command" not in container else [])
    return entrypoint + args


def compose():
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def herald_services():
    services = compose()["services"]
    return {name: s for name, s in services.items() if "herald" in str(s.get("image", "")) or "build" in s}


def interpolate(value, variables):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?message}."""

    def one_var(m):
        name, op, arg = m[1], m[2], m[3]
        if name in variables and (variables[name] != "" or op is None):
            return variables[name]
        if op == ":?":
            raise AssertionError(f"${{{name}}} is required: {arg}")
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one_var, str(value))


def nginx_locations(text):
    """The text of every top-level `location` block of a server block."""
    blocks, i = [], 0
    while (start := text.find("    location ", i)) >= 0:
        depth, j = 0, text.index("{", start)
        while True:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        blocks.append(text[start : j + 1])
        i = j + 1
    return blocks


def shutdown_grace(env):
    return int(env.get("HERALD__SERVER__SHUTDOWN_GRACE_SECS", 10))


# ---------------------------------------------------------------------------------------------
# Static checks


def lint_dockerfile():
    with tempfile.NamedTemporaryFile("w", suffix=".Dockerfile", delete=False) as bad:
        bad.write("FROM debian\nRUN apt-get install curl\nCMD herald\n")
    refused = run([tool("hadolint"), bad.name])
    os.unlink(bad.name)
    expect(refused.returncode != 0 and "DL3008" in refused.stdout + refused.stderr, f"hadolint accepted a broken Dockerfile: {refused.stdout}")
    result = run([tool("hadolint"), DEPLOY / "Dockerfile"])
    expect(result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}")


def dockerfile_shape():
    stages = dockerfile_stages()
    expect(len(stages) >= 2, "not a multi-stage build")
    builder = stages[0][0]
    expect(re.match(r"rust:[\d.]+-\w+\s+AS\s+\w+", builder, re.I), f"builder stage {builder!r}: expected rust:<version>-<debian> AS <name>")
    builder_release = builder.split()[0].split("-")[-1]
    runtime = stages[-1][0]
    expect(runtime.startswith("debian:") and builder_release in runtime, f"runtime {runtime!r} is not the builder's Debian release {builder_release} (glibc)")
    users = [rest for word, rest in final_stage() if word == "USER"]
    expect(users and users[-1].split(":")[0] not in ("0", "root"), "the runtime stage does not switch to a non-root user")
    copies = [rest for word, rest in final_stage() if word == "COPY"]
    expect(any(c.startswith("--from=") for c in copies), "the runtime stage copies nothing from the builder")
    command, options = healthcheck_command()
    expect(command[:2] == ["herald", "probe"], f"HEALTHCHECK does not use herald probe: {command}")
    timeout = re.search(r"--timeout=(\d+)s", options)
    probe_timeout = float(command[command.index("--timeout") + 1]) if "--timeout" in command else 3.0
    expect(timeout and probe_timeout < int(timeout[1]), "herald probe's --timeout must be below HEALTHCHECK --timeout")
    expect(exec_form("ENTRYPOINT") + exec_form("CMD") == ["herald", "serve", "--log-format", "json"], "ENTRYPOINT + CMD")


def builder_rust_is_new_enough():
    meta = run(["cargo", "metadata", "--format-version", "1", "--locked"], cwd=ROOT)
    expect(meta.returncode == 0, f"cargo metadata: {meta.stderr[-500:]}")
    needed = max(
        (tuple(int(x) for x in (p["rust_version"] + ".0.0").split(".")[:3]), p["name"])
        for p in json.loads(meta.stdout)["packages"]
        if p.get("rust_version")
    )
    version = re.match(r"rust:([\d.]+)", dockerfile_stages()[0][0])[1]
    have = tuple(int(x) for x in (version + ".0.0").split(".")[:3])
    expect(have >= needed[0], f"rust:{version} is older than {needed[1]}'s rust-version {'.'.join(map(str, needed[0]))}")


def build_context_has_what_the_builder_copies():
    patterns = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]

    def ignored(name):
        verdict = False
        for p in patterns:
            negate = p.startswith("!")
            p = p.lstrip("!").rstrip("/")
            if p == "*" or p == name or name.startswith(p + "/"):
                verdict = not negate
        return verdict

    sources = []
    for word, rest in dockerfile_stages()[0][1]:
        if word == "COPY" and not rest.startswith("--from"):
            sources.extend(rest.split()[:-1])
    expect(sources, "the builder copies nothing")
    for source in sources:
        expect((ROOT / source).exists(), f"COPY {source}: not in the repository")
        expect(not ignored(source.rstrip("/")), f"COPY {source}: excluded from the build context")
    for big in ["target", ".git", "client-test", "data"]:
        expect(ignored(big), f"{big}/ would be sent as build context")


def lint_yaml():
    bad = run([tool("yamllint"), "-c", DEPLOY / ".yamllint.yaml", "-"], input="a: 1\na: 2\n")
    expect(bad.returncode != 0, "yamllint accepted a duplicate key")
    files = sorted(str(p) for p in DEPLOY.rglob("*.y*ml") if ".venv" not in p.parts)
    expect(len(files) >= 9, f"only {len(files)} YAML files found")
    result = run([tool("yamllint"), "--strict", "-c", DEPLOY / ".yamllint.yaml", *files])
    expect(result.returncode == 0, f"yamllint:\n{result.stdout}{result.stderr}")


def validate_k8s():
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as bad:
        bad.write("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: two, selector: {}, template: {}}\n")
    refused = run([tool("kubernetes-validate"), "--strict", "--quiet", bad.name])
    os.unlink(bad.name)
    expect(refused.returncode != 0, "kubernetes-validate accepted a broken Deployment")
    files = sorted((DEPLOY / "k8s").glob("*.yaml"))
    result = run([tool("kubernetes-validate"), "--strict", *files])
    expect(result.returncode == 0 and "passed" in result.stdout, f"kubernetes-validate:\n{result.stdout}{result.stderr}")
    expect("WARN" not in result.stdout + result.stderr, f"kubernetes-validate warnings:\n{result.stdout}{result.stderr}")


def validate_compose_schema():
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as bad:
        bad.write("services:\n  a:\n    image: 3\n    bogus: 1\n")
    refused = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", bad.name])
    os.unlink(bad.name)
    expect(refused.returncode != 0, "check-jsonschema accepted a broken compose file")
    result = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", DEPLOY / "compose.yaml"])
    expect(result.returncode == 0, f"compose schema:\n{result.stdout}{result.stderr}")


def deployment_probes_and_drain():
    deployment, container = herald_container()
    pod = deployment["spec"]["template"]["spec"]
    env = container_env()
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen = int(env.get("HERALD__SERVER__PORT", 5000))
    for probe, path in [("readinessProbe", "/ready"), ("livenessProbe", "/health")]:
        get = container[probe]["httpGet"]
        expect(get["path"] == path, f"{probe} path {get['path']}, expected {path}")
        port = port_names.get(get["port"], get["port"])
        expect(port == listen, f"{probe} port {get['port']} is not the port Herald listens on ({listen})")
    # /health waits up to 1 s for the other instances' counts.
    expect(container["livenessProbe"].get("timeoutSeconds", 1) > 1, "livenessProbe.timeoutSeconds must exceed /health's 1 s cluster wait")
    pre_stop = container["lifecycle"]["preStop"]
    pause = int(pre_stop["exec"]["command"][1]) if "exec" in pre_stop else int(pre_stop["sleep"]["seconds"])
    grace = pod["terminationGracePeriodSeconds"]
    drain = shutdown_grace(env)
    expect(grace >= pause + drain + 5, f"terminationGracePeriodSeconds {grace} < preStop {pause} + shutdown_grace_secs {drain} + 5")
    expect(deployment["spec"]["replicas"] == 1 or env.get("HERALD__REDIS__URL"), "several replicas need redis.url")
    security = container["securityContext"]
    if security.get("readOnlyRootFilesystem"):
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        expect(env["HERALD__STORAGE__DATA_DIR"] in mounts, "storage.data_dir is not a volume on a read-only root filesystem")
    run_as = pod.get("securityContext", {}).get("runAsUser")
    users = [rest for word, rest in final_stage() if word == "USER"]
    expect(str(run_as) == users[-1].split(":")[0], f"runAsUser {run_as} is not the image's USER {users[-1]}")


def names_agree():
    deployment, container = herald_container()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selects = lambda selector: all(labels.get(k) == v for k, v in selector.items())  # noqa: E731
    expect(selects(deployment["spec"]["selector"]["matchLabels"]), "the Deployment's selector does not select its pods")
    service = one("Service", "herald")
    expect(selects(service["spec"]["selector"]), "the Service does not select Herald's pods")
    port_names = {p["name"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        expect(port["targetPort"] in port_names or port["targetPort"] in [p["containerPort"] for p in container["ports"]], f"Service targetPort {port['targetPort']}")
    expect(service["spec"].get("sessionAffinity") == "ClientIP", "long-polling needs ClientIP affinity on the Service")
    pdb = one("PodDisruptionBudget", "herald")
    expect(selects(pdb["spec"]["selector"]["matchLabels"]), "the PodDisruptionBudget does not select Herald's pods")
    expect(pdb["spec"].get("maxUnavailable", 0) < deployment["spec"]["replicas"] or pdb["spec"].get("minAvailable", 0) < deployment["spec"]["replicas"], "the PDB blocks every disruption")
    hpa = one("HorizontalPodAutoscaler", "herald")
    target = hpa["spec"]["scaleTargetRef"]
    expect((target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"]), f"HPA targets {target}")
    expect(hpa["spec"]["minReplicas"] >= 2, "the HPA may scale to one pod, which a PDB of maxUnavailable 1 cannot protect")
    expect("cpu" in json.dumps(container["resources"]["requests"]), "CPU autoscaling needs a CPU request")
    ingress = one("Ingress", "herald")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    expect(backend["name"] == "herald" and backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]], f"Ingress backend {backend}")
    redis_url = container_env()["HERALD__REDIS__URL"]
    redis_service = urllib.parse.urlparse(redis_url).hostname
    expect(any(d["kind"] == "Service" and d["metadata"]["name"] == redis_service for d in manifests()), f"redis-url names {redis_service}, not a Service here")


def compose_agrees():
    services = herald_services()
    expect(len(services) == 2, f"expected two Herald services, found {sorted(services)}")
    spec = compose()
    nginx_conf = (DEPLOY / "compose-nginx.conf").read_text()
    nginx = spec["services"]["nginx"]
    expect(any(v.startswith("./compose-nginx.conf:") for v in nginx["volumes"]), "nginx does not mount compose-nginx.conf")
    nginx_ip = nginx["networks"]["herald"]["ipv4_address"]
    for name, service in services.items():
        build = service["build"]
        expect((DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile", f"{name} builds {build}")
        env = {k: interpolate(v, {"HERALD_JWT_SECRET": "j", "HERALD_API_KEYS": "k"}) for k, v in service["environment"].items()}
        expect(re.search(rf"server {re.escape(name)}:{env.get('HERALD__SERVER__PORT', 5000)}\b", nginx_conf), f"nginx has no upstream {name}")
        expect(nginx_ip in env["HERALD__SERVER__TRUSTED_PROXIES"].split(","), f"{name} does not trust nginx ({nginx_ip}) for X-Forwarded-For")
        stop = int(service["stop_grace_period"].rstrip("s"))
        expect(stop > shutdown_grace(env), f"{name}: stop_grace_period {stop}s <= shutdown_grace_secs")
        expect(urllib.parse.urlparse(env["HERALD__REDIS__URL"]).hostname in spec["services"], f"{name}: redis host is not a service")
        expect(nginx["depends_on"][name]["condition"] == "service_healthy", f"nginx should wait for {name} to be healthy")
    subnet = spec["networks"]["herald"]["ipam"]["config"][0]["subnet"]
    expect(subnet.startswith("10."), f"subnet {subnet} is outside nginx.conf's allow 10.0.0.0/8")


def nginx_locations_match():
    production = nginx_locations((DEPLOY / "nginx.conf").read_text())
    composed = nginx_locations((DEPLOY / "compose-nginx.conf").read_text())
    expect(len(production) == 4, f"nginx.conf has {len(production)} location blocks")
    expect(production == composed, "compose-nginx.conf's location blocks differ from nginx.conf's")


# ---------------------------------------------------------------------------------------------
# Live: processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv, env, log_name):
    log = open(LOGS / f"{log_name}.log", "w")
    proc = subprocess.Popen([str(a) for a in argv], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=LOGS)
    cleanups.append(lambda: stop(proc))
    return proc


def stop(proc, sig=signal.SIGTERM, wait=10):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def base_env(extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD__")}
    env.update(extra)
    return env


def fetch(method, url, body=None, headers=None, timeout=10):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    hdrs = dict(headers or {})
    if data is not None and "content-type" not in {k.lower() for k in hdrs}:
        hdrs["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=hdrs)
    response = conn.getresponse()
    text = response.read().decode(errors="replace")
    conn.close()
    return response.status, text


def wait_for(what, fn, timeout=20):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            if (value := fn()):
                return value
        except Exception as e:  # noqa: BLE001
            last = e
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s (last error: {last})")


def herald_argv(argv):
    expect(argv[0] == "herald", f"the container runs {argv[0]}, not herald")
    return [HERALD, *argv[1:]]


def start_redis():
    if not shutil.which("redis-server"):
        return None
    port = free_port()
    directory = LOGS / f"redis-{port}"
    directory.mkdir()
    proc = start(["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory], os.environ.copy(), f"redis-{port}")
    wait_for("redis-server", lambda: run(["redis-cli", "-p", port, "ping"]).stdout.strip() == "PONG", 10)
    return proc, port


def metrics_text(base):
    status, text = fetch("GET", f"{base}/metrics")
    expect(status == 200, f"/metrics {status}")
    return text


class Polling:
    """A Socket.IO v5 client over Engine.IO v4 long-polling, on plain HTTP."""

    def __init__(self, base, token=None, auth=None, origin=None):
        self.base, self.headers = base, ({"Origin": origin} if origin else {})
        query = {"EIO": "4", "transport": "polling"}
        if token:
            query["token"] = token
        status, body = fetch("GET", f"{base}/socket.io/?{urllib.parse.urlencode(query)}", headers=self.headers)
        expect(status == 200 and body.startswith("0{"), f"Engine.IO handshake: {status} {body[:200]}")
        self.sid = json.loads(body[1:])["sid"]
        self.path = f"{base}/socket.io/?EIO=4&transport=polling&sid={self.sid}"
        self.pending = []
        self.send("40" + (json.dumps(auth) if auth else ""))
        packet = self.wait(lambda p: p.startswith("40") or p.startswith("44"))
        expect(packet.startswith("40"), f"namespace connect refused: {packet}")

    def send(self, *packets):
        status, body = fetch("POST", self.path, body="\x1e".join(packets), headers={**self.headers, "Content-Type": "text/plain;charset=UTF-8"})
        expect(status == 200, f"polling POST: {status} {body[:200]}")

    def poll(self):
        status, body = fetch("GET", self.path, headers=self.headers, timeout=25)
        expect(status == 200, f"polling GET: {status} {body[:200]}")
        for packet in body.split("\x1e"):
            if packet == "2":
                self.send("3")
            elif packet:
                self.pending.append(packet)

    def wait(self, predicate, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for i, packet in enumerate(self.pending):
                if predicate(packet):
                    return self.pending.pop(i)
            self.poll()
        raise AssertionError(f"no matching packet within {timeout} s; got {self.pending[-5:]}")

    def event(self, name, predicate=lambda args: True, timeout=10):
        def matches(packet):
            if not packet.startswith("42"):
                return False
            items = json.loads(packet[2:])
            return items[0] == name and predicate(items[1:])

        return json.loads(self.wait(matches, timeout)[2:])[1:]

    def emit(self, name, *args):
        self.send("42" + json.dumps([name, *args]))


# ---------------------------------------------------------------------------------------------
# Live: the Deployment's container


class Live:
    env = None
    base = None
    proc = None
    redis = None


def manifest_herald_env(port, redis_port, data_dir):
    env = container_env()
    expect(env.get("HERALD__SERVER__PORT", "5000") == "5000", "the test expects the image's port 5000")
    env["HERALD__SERVER__PORT"] = str(port)
    env["HERALD__SERVER__HOST"] = "127.0.0.1"
    url = urllib.parse.urlparse(env["HERALD__REDIS__URL"])
    env["HERALD__REDIS__URL"] = url._replace(netloc=f"127.0.0.1:{redis_port}").geturl()
    env["HERALD__STORAGE__DATA_DIR"] = str(data_dir)
    return env


def live_manifest_herald():
    redis = start_redis()
    if not redis:
        return "redis-server is not installed (scripts/test-all installs it)"
    Live.redis = redis
    port = free_port()
    data = LOGS / "k8s-data"
    data.mkdir()
    Live.env = manifest_herald_env(port, redis[1], data)
    Live.base = f"http://127.0.0.1:{port}"
    argv = herald_argv(container_argv())
    proc = start(argv, base_env(Live.env), "k8s-herald")
    wait_for("/ready of the Deployment's Herald", lambda: proc.poll() is None and fetch("GET", f"{Live.base}/ready")[0] == 200, 30)
    Live.proc = proc
    status, body = fetch("GET", f"{Live.base}/health")
    health = json.loads(body)
    expect(status == 200 and health["node_id"] == "herald-test-0" and health["redis"] == "up", f"/health: {body}")


def needs_live(fn):
    def wrapped():
        if Live.proc is None:
            return "the Deployment's Herald did not start"
        return fn()

    return wrapped


@needs_live
def live_healthcheck():
    command, _ = healthcheck_command()
    result = run(herald_argv(command), env=base_env(Live.env), cwd=LOGS)
    expect(result.returncode == 0, f"HEALTHCHECK {command}: exit {result.returncode}: {result.stderr}")
    expect(f"127.0.0.1:{Live.env['HERALD__SERVER__PORT']}/health" in result.stdout, result.stdout)


@needs_live
def live_config_check():
    result = run([HERALD, "config", "check"], env=base_env(Live.env), cwd=LOGS)
    expect(result.returncode == 0, f"config check: {result.stderr}")
    secrets = secret_values("herald-secrets")
    for key in ["jwt-secret", "api-keys"]:
        expect(secrets[key] not in result.stdout + result.stderr, f"config check printed the {key}")
    expect('jwt_secret = "<redacted>"' in result.stdout, result.stdout)
    expect(f"shutdown_grace_secs = {shutdown_grace(Live.env)}" in result.stdout, "the ConfigMap's drain time is not in effect")


def token(env, user, ttl=3600):
    result = run([HERALD, "token", "--user", user, "--ttl", ttl], env=base_env(env), cwd=LOGS)
    expect(result.returncode == 0, f"herald token: {result.stderr}")
    return result.stdout.strip()


def api_key(env):
    return env["HERALD__API__KEYS"].split(",")[0]


def notify(env, base, user, message, expect_status=202):
    status, body = fetch("POST", f"{base}/api/v1/notify", {"to": {"user": user}, "type": "test", "message": message}, {"Authorization": f"Bearer {api_key(env)}"})
    expect(status == expect_status, f"notify: {status} {body}")
    return json.loads(body)


# Metrics the dashboard may query that this test cannot make Herald produce, each with why.
NOT_PRODUCED = {
    "herald_cluster_fallbacks_total": "counted when the Redis adapter fails on a command while Redis was believed up "
    "(the first moments of an outage); once Herald knows Redis is down, commands go to the outbox without trying it",
}


@needs_live
def live_traffic():
    env, base = Live.env, Live.base
    # HTTP refusals: no key; a browser from an origin the ConfigMap does not list.
    expect(fetch("POST", f"{base}/api/v1/notify", {})[0] == 401, "no key")
    expect(fetch("GET", f"{base}/socket.io/?EIO=4&transport=polling", headers={"Origin": "https://evil.example"})[0] == 403, "unlisted origin")
    # A stored notification, then a socket that resumes before it: replay.
    first = notify(env, base, "1", "before connect")["id"]
    user1 = Polling(base, token(env, "1"), auth={"last_id": "0-0"}, origin="https://app.example.com")
    replayed = user1.event("notification", lambda a: a[0].get("message") == "before connect")
    expect(replayed[0]["id"] == first, f"replayed {replayed}")
    # Live delivery, client events, a refused room, a flood, a token refresh.
    notify(env, base, "1", "live")
    user1.event("notification", lambda a: a[0].get("message") == "live")
    user1.send('421["ping",{"timestamp":1}]')
    user1.send('422["room:join","user_999"]')
    user1.wait(lambda p: p.startswith("432") and '"ok":false' in p)
    user1.send('423["auth:refresh",{"token":"%s"}]' % token(env, "1"))
    user1.wait(lambda p: p.startswith("433") and '"ok":true' in p)
    user1.send(*['42["ping",{"timestamp":2}]'] * 60)
    # Redis ingress: Herald's notify:* channel.
    published = run(["redis-cli", "-p", Live.redis[1], "PUBLISH", "notify:user:1", json.dumps({"type": "t", "message": "via redis"})])
    expect(published.stdout.strip() == "1", f"PUBLISH reached {published.stdout.strip()} subscribers")
    user1.event("notification", lambda a: a[0].get("message") == "via redis")
    # A token that expires while connected.
    expiring = Polling(base, token(env, "2", ttl=2))
    expiring.event("auth:expired", timeout=10)
    # A socket that never reads: its buffer fills, later packets miss it.
    Polling(base, token(env, "3"))
    key = api_key(env)
    conn = http.client.HTTPConnection("127.0.0.1", int(env["HERALD__SERVER__PORT"]), timeout=10)
    for i in range(int(env.get("HERALD__DELIVERY__MAX_REPLAY", 100)) + 160):
        conn.request("POST", "/api/v1/emit", json.dumps({"event": "tick", "args": [i], "rooms": ["user_3"]}), {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        expect(response.status == 202, f"emit {i}: {response.status}")
    conn.close()
    user1.send("41")
    # Redis goes away: HTTP commands are queued in the outbox (a live emit first: it tries the
    # Redis adapter, then falls back), replay cannot read the store.
    stop(Live.redis[0])
    wait_for("herald_redis_up 0", lambda: "herald_redis_up 0" in metrics_text(base), 15)
    status, body = fetch("POST", f"{base}/api/v1/emit", {"event": "custom", "args": [1], "rooms": ["room-x"]}, {"Authorization": f"Bearer {key}"})
    expect(status == 202 and '"queued":true' in body, f"emit while Redis is down: {status} {body}")
    queued = notify(env, base, "1", "while redis is down")
    expect(queued.get("queued") is True, f"notify while Redis is down: {queued}")
    try:
        Polling(base, token(env, "1"), auth={"last_id": "0-0"}, origin="https://app.example.com")
    except AssertionError:
        pass  # refused or closed: what matters is that the replay failure is counted
    # The store's request may take its response timeout to fail: wait for the count.
    wait_for("herald_replay_failures_total", lambda: "herald_replay_failures_total" in metrics_text(base), 15)


def metric_names_in_source():
    names = set()
    for path in list((ROOT / "src").rglob("*.rs")) + list(ROOT.glob("crates/**/*.rs")):
        names.update(re.findall(r'"(herald_[a-z0-9_]+)"', path.read_text()))
    return names


def dashboard_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "herald-dashboard.json").read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    used = {}
    ids = [p["id"] for p in panels]
    expect(len(ids) == len(set(ids)), "duplicate panel ids")
    for panel in panels:
        if panel["type"] == "row":
            continue
        expect(panel.get("targets"), f"panel {panel['title']!r} has no query")
        expect(panel["datasource"]["uid"] == "${datasource}", f"panel {panel['title']!r} does not use the datasource variable")
        for target in panel["targets"]:
            found = {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"\bherald_[a-z0-9_]+", target["expr"])}
            expect(found, f"panel {panel['title']!r}: query {target['expr']!r} reads no Herald metric")
            for name in found:
                used.setdefault(name, []).append(panel["title"])
    return used


def dashboard_static():
    used = dashboard_metrics()
    known = metric_names_in_source()
    unknown = sorted(set(used) - known)
    expect(not unknown, f"panels query metrics Herald does not export: {unknown}")
    expect(len(used) >= 15, f"the dashboard uses only {len(used)} metrics")


@needs_live
def dashboard_live():
    text = metrics_text(Live.base)
    present = set()
    for line in text.splitlines():
        m = re.match(r"(?:# (?:HELP|TYPE) )?(herald_[a-z0-9_]+)", line)
        if m:
            present.add(re.sub(r"_(bucket|sum|count)$", "", m[1]))
    used = dashboard_metrics()
    missing = sorted(name for name in used if name not in present and name not in NOT_PRODUCED)
    expect(not missing, f"not in the live /metrics after the traffic: {missing}")
    for name in sorted(set(used) - present):
        print(f"  note: {name} not produced by this test ({NOT_PRODUCED[name]}); it is in Herald's source")
    print(f"  {len(set(used) & present)} of {len(used)} dashboard metrics seen live")


@needs_live
def live_drain():
    started = time.time()
    code = stop(Live.proc, signal.SIGTERM, wait=shutdown_grace(Live.env) + 5)
    elapsed = time.time() - started
    expect(code == 0, f"exit {code} after SIGTERM")
    expect(elapsed <= shutdown_grace(Live.env) + 1, f"took {elapsed:.1f} s, more than shutdown_grace_secs")


# ---------------------------------------------------------------------------------------------
# Live: compose's two instances behind compose-nginx.conf


def nginx_binary():
    return next((p for p in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx", shutil.which("nginx")] if p and os.path.exists(p)), None)


def nginx_accepts_production_conf():
    nginx = nginx_binary()
    if not nginx or not shutil.which("openssl"):
        return "nginx or openssl is not installed (scripts/test-all installs nginx)"
    prefix = LOGS / "nginx-t"
    prefix.mkdir()
    made = run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", prefix / "key.pem", "-out", prefix / "cert.pem", "-days", "1", "-subj", "/CN=test"])
    expect(made.returncode == 0, f"openssl: {made.stderr}")
    conf = (DEPLOY / "nginx.conf").read_text()
    for path, replacement in [("/etc/ssl/certs/notifications.example.com.pem", "cert.pem"), ("/etc/ssl/private/notifications.example.com.key", "key.pem")]:
        expect(conf.count(path) == 1, f"nginx.conf does not name {path} once")
        conf = conf.replace(path, str(prefix / replacement))
    (prefix / "herald.conf").write_text(conf)
    (prefix / "nginx.conf").write_text(f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\nevents {{}}\nhttp {{\n    include {prefix}/herald.conf;\n}}\n")
    result = run([nginx, "-t", "-p", prefix, "-c", prefix / "nginx.conf", "-e", prefix / "error.log"])
    expect(result.returncode == 0, f"nginx -t: {result.stderr}")


def live_compose():
    nginx = nginx_binary()
    if not nginx:
        return "nginx is not installed (scripts/test-all installs it)"
    redis = start_redis()
    if not redis:
        return "redis-server is not installed"
    variables = {"HERALD_JWT_SECRET": "compose-test-secret", "HERALD_API_KEYS": "compose-test-key"}
    conf = (DEPLOY / "compose-nginx.conf").read_text()
    instances = {}
    for name, service in sorted(herald_services().items()):
        env = dict(image_env())
        env.update({k: interpolate(v, variables) for k, v in service["environment"].items()})
        port = free_port()
        url = urllib.parse.urlparse(env["HERALD__REDIS__URL"])
        env.update(
            HERALD__SERVER__PORT=str(port),
            HERALD__SERVER__HOST="127.0.0.1",
            HERALD__SERVER__NODE_ID=service.get("hostname", name),
            HERALD__REDIS__URL=url._replace(netloc=f"127.0.0.1:{redis[1]}").geturl(),
            HERALD__STORAGE__DATA_DIR=str(LOGS / f"{name}-data"),
        )
        argv = service.get("command") or exec_form("CMD")
        proc = start(herald_argv(exec_form("ENTRYPOINT") + argv), base_env(env), name)
        instances[name] = (env, f"http://127.0.0.1:{port}", proc)
        upstream = f"server {name}:5000 "
        expect(conf.count(upstream) == 1, f"compose-nginx.conf has no single upstream {upstream!r}")
        conf = conf.replace(upstream, f"server 127.0.0.1:{port} ")
    for name, (_, base, proc) in instances.items():
        wait_for(f"{name} /ready", lambda: proc.poll() is None and fetch("GET", f"{base}/ready")[0] == 200, 30)
    nginx_port = free_port()
    expect(conf.count("    listen 80;") == 1, "compose-nginx.conf does not listen on 80 once")
    conf = conf.replace("    listen 80;", f"    listen 127.0.0.1:{nginx_port};")
    prefix = LOGS / "nginx"
    prefix.mkdir()
    (prefix / "herald.conf").write_text(conf)
    temp = "\n".join(f"    {kind}_temp_path {prefix}/{kind};" for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
    (prefix / "nginx.conf").write_text(
        f"daemon off;\nmaster_process off;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n"
        f"events {{ worker_connections 256; }}\nhttp {{\n    access_log {prefix}/access.log;\n{temp}\n    include {prefix}/herald.conf;\n}}\n"
    )
    proc = start([nginx, "-p", prefix, "-c", prefix / "nginx.conf", "-e", prefix / "error.log"], os.environ.copy(), "nginx")
    front = f"http://127.0.0.1:{nginx_port}"
    wait_for("nginx", lambda: proc.poll() is None and fetch("GET", f"{front}/socket.io/?EIO=4&transport=polling")[0] == 200, 15)
    # From 127.0.0.1, outside 10.0.0.0/8: the API and operations paths are closed.
    for path in ["/api/v1/notify", "/health", "/metrics"]:
        status, _ = fetch("POST" if "api" in path else "GET", f"{front}{path}", {} if "api" in path else None)
        expect(status == 403, f"{path} through nginx from outside 10.0.0.0/8: {status}")
    # A long-polling client through nginx gets what either instance is sent.
    (env_a, base_a, _), (env_b, base_b, _) = instances.values()
    client = Polling(front, token(env_a, "c1"))
    notify(env_a, base_a, "c1", "via the first instance")
    notify(env_b, base_b, "c1", "via the second instance")
    for message in ["via the first instance", "via the second instance"]:
        client.event("notification", lambda a, m=message: a[0].get("message") == m)
    connections = [json.loads(fetch("GET", f"{base}/health")[1])["connections"] for _, base, _ in instances.values()]
    expect(sorted(connections) == [0, 1], f"the client is not on exactly one instance: {connections}")


# ---------------------------------------------------------------------------------------------


def main():
    global LOGS
    LOGS = Path(tempfile.mkdtemp(prefix="herald-deploy-test."))
    expect(HERALD.exists(), f"{HERALD} is missing: build it (cargo build) or set HERALD_BIN")
    checks = [
        ("Dockerfile: hadolint", lint_dockerfile),
        ("Dockerfile: multi-stage, non-root, HEALTHCHECK by herald probe, exec-form ENTRYPOINT/CMD", dockerfile_shape),
        ("Dockerfile: the builder's Rust is as new as the locked crates need", builder_rust_is_new_enough),
        ("Dockerfile: the build context holds what the builder copies, not target/", build_context_has_what_the_builder_copies),
        ("YAML: yamllint --strict", lint_yaml),
        ("k8s: kubernetes-validate --strict", validate_k8s),
        ("compose: the Compose specification's schema", validate_compose_schema),
        ("k8s: probes on /ready and /health, drain fits terminationGracePeriodSeconds, non-root, data volume", deployment_probes_and_drain),
        ("k8s: selectors, Service, PDB, HPA, Ingress and Redis names agree", names_agree),
        ("compose: services, nginx upstreams, trusted proxy, stop grace, network agree", compose_agrees),
        ("nginx: compose-nginx.conf has nginx.conf's location blocks", nginx_locations_match),
        ("nginx: nginx -t accepts nginx.conf (a self-signed certificate in place of the real one)", nginx_accepts_production_conf),
        ("grafana: every panel queries a metric Herald exports", dashboard_static),
        ("live: Herald with the Deployment's command line, env, ConfigMap and Secret passes /ready", live_manifest_herald),
        ("live: the Dockerfile's HEALTHCHECK passes", live_healthcheck),
        ("live: herald config check accepts the manifests' settings and redacts the Secret", live_config_check),
        ("live: API, polling sockets, Redis ingress, token expiry, full buffers, Redis outage", live_traffic),
        ("live: every dashboard metric is in /metrics", dashboard_live),
        ("live: SIGTERM drains within shutdown_grace_secs, exit 0", live_drain),
        ("live: compose's two instances behind compose-nginx.conf deliver to a polling client", live_compose),
    ]
    try:
        for name, fn in checks:
            check(name, fn)
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception:  # noqa: BLE001
                pass
    if results["failed"]:
        print(f"logs: {LOGS}")
    else:
        shutil.rmtree(LOGS, ignore_errors=True)
    print(f"deploy: {results['passed']} passed, {results['failed']} failed, {results['skipped']} skipped")
    return 1 if results["failed"] else 0


LOGS = None

if __name__ == "__main__":
    sys.exit(main())
