"""docker-compose.yml cannot run here (no Docker engine): its production settings are
checked as data, so that an edit that loosens them fails a test."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import click
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_the_workers_health_check_is_readiness() -> None:
    worker = _services()["worker"]
    check = " ".join(worker["healthcheck"]["test"])
    assert "/health/ready" in check
    # Prometheus waits for a ready worker.
    assert _services()["prometheus"]["depends_on"]["worker"]["condition"] == "service_healthy"


def _session_hashes_compact(command: list[str]) -> bool:
    """Redis keeps a session's hash compact: values of a few hundred bytes allowed."""
    limit = "--hash-max-listpack-value"
    return limit in command and int(command[command.index(limit) + 1]) >= 512


def test_production_is_locked_down() -> None:
    services = _services()
    env = services["worker"]["environment"]
    assert env["STREAMREC_AUTO_CREATE_TENANTS"] == "0"  # tenants created by an operator
    assert env["STREAMREC_REQUIRE_KEYS"] == "1"  # every tenant route needs a key
    assert env["STREAMREC_ADMIN_TOKEN"].startswith("${STREAMREC_ADMIN_TOKEN")  # no default
    assert env["STREAMREC_REDIS_URL"].startswith("redis://:${STREAMREC_REDIS_PASSWORD")
    assert "--requirepass" in services["redis"]["command"]
    assert _session_hashes_compact(services["redis"]["command"])
    # HTTP published on the host's loopback only.
    assert all(str(p).startswith("127.0.0.1:") for p in services["worker"]["ports"])


def test_tenant_numbers_need_the_admin_token_and_prometheus_sends_it() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    env = services["worker"]["environment"]
    assert env.get("STREAMREC_PUBLIC_DASHBOARD", "0") == "0"
    # No worker without a token: `docker compose` stops with this message instead.
    assert env["STREAMREC_ADMIN_TOKEN"].startswith("${STREAMREC_ADMIN_TOKEN:?")
    # Prometheus scrapes /metrics with that token, read from a compose secret.
    (secret,) = services["prometheus"]["secrets"]
    assert compose["secrets"][secret] == {"environment": "STREAMREC_ADMIN_TOKEN"}
    config = yaml.safe_load((COMPOSE.parent / "scripts/monitoring/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"] == {
        "type": "Bearer",
        "credentials_file": f"/run/secrets/{secret}",
    }


def test_compose_runs_the_kafka_the_tests_run() -> None:
    from stream.dev.kafka_node import KAFKA_VERSION

    services = _services()
    for name in ("kafka", "kafka-init"):
        assert services[name]["image"] == f"apache/kafka:{KAFKA_VERSION}", name


def test_a_trainer_service_retrains_periodically() -> None:
    trainer = _services()["trainer"]
    command = trainer["command"]
    assert command[0] == "trainer" and "--every" in command and "--once" not in command
    assert "profiles" not in trainer  # started with the stack, not only on demand
    assert trainer.get("restart") == "unless-stopped"
    assert trainer["environment"] == _services()["worker"]["environment"]
    assert trainer["volumes"] == _services()["worker"]["volumes"]  # the same registry


def test_monitoring_is_published_on_the_hosts_loopback_only() -> None:
    services = _services()
    for name in ("prometheus", "grafana"):
        ports = services[name].get("ports", [])
        assert all(str(p).startswith("127.0.0.1:") for p in ports), (name, ports)


def _stages() -> list[list[str]]:
    """The Dockerfile's stages, each a list of instructions (continuation lines joined)."""
    text = (COMPOSE.parent / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_the_image_is_built_in_two_stages_from_pinned_versions() -> None:
    builder, runtime = _stages()
    assert builder[0].split()[-2:] == ["AS", "builder"]
    assert any("build-essential" in line for line in builder)
    # The runtime stage installs the builder's wheels, without a compiler: from Debian
    # only the OpenMP runtime that LightGBM's wheel links.
    assert not any("build-essential" in line or "gcc" in line for line in runtime)
    debian = [line for line in runtime if "apt-get install" in line]
    assert all(re.search(r"--no-install-recommends libgomp1\s*(&&|$)", line) for line in debian)
    assert any("from=builder" in line for line in runtime)
    assert any("pip install" in line and "--no-index" in line for line in runtime)
    # Base images by exact version (not a moving tag such as 3.11-slim or latest).
    for stage in (builder, runtime):
        image = stage[0].split()[1]
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", image), image
    # Every install in the build follows the constraints file.
    installs = [line for line in builder if "pip wheel" in line or "pip install" in line]
    assert installs and all("constraints.txt" in line for line in installs), installs


def test_the_image_ships_its_kernels_compiled_for_any_x86_64_cpu() -> None:
    _, runtime = _stages()
    env: dict[str, str] = {}
    warmed_with: dict[str, str] | None = None
    user = "root"
    for line in runtime:
        word, _, rest = line.partition(" ")
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
        elif word == "USER":
            user = rest.strip()
        elif word == "RUN" and "streamrec warm" in rest and "--check" not in rest:
            warmed_with = dict(env)
    # Compiled at build, generic code (the cache is keyed by the CPU model), into a
    # directory of the image that the volume does not hide and nobody can write.
    assert warmed_with is not None, runtime
    assert warmed_with.get("NUMBA_CPU_NAME") == env.get("NUMBA_CPU_NAME") == "generic"
    cache = warmed_with.get("NUMBA_CACHE_DIR")
    assert cache and cache == env.get("NUMBA_CACHE_DIR"), (warmed_with, env)
    volumes = [line for line in runtime if line.startswith("VOLUME")]
    assert not any(cache.startswith(v) for line in volumes for v in json.loads(line[7:]))
    assert any(f"chown -R nobody:nogroup {Path(cache).parent}" in line for line in runtime)
    # And checked as the runtime user: the build fails if a start would compile.
    checks = [i for i, line in enumerate(runtime) if "streamrec warm --check" in line]
    users = [i for i, line in enumerate(runtime) if line.startswith("USER nobody")]
    assert checks and users and users[0] < checks[0], runtime
    assert user == "nobody"


def test_the_constraints_pin_every_dependency_of_the_image() -> None:
    pinned = {}
    for line in (COMPOSE.parent / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version.strip(), f"not pinned: {line}"
            pinned[_canonical(name)] = version.strip()
    project = tomllib.loads((COMPOSE.parent / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
        assert _canonical(name) in pinned, f"{name} is not in constraints.txt"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _production_section() -> str:
    readme = (COMPOSE.parent / "README.md").read_text()
    return readme.split("## Production (docker-compose)")[1].split("\n## ")[0]


def test_the_readme_says_how_to_create_the_first_tenant_and_key() -> None:
    commands = re.findall(
        r"^docker compose exec \w+ streamrec (.+?)(?:\s+#.*)?$", _production_section(), re.M
    )
    given = [shlex.split(c) for c in commands]
    assert ["tenant", "create"] in [a[:2] for a in given], commands
    assert ["tenant", "key", "create"] in [a[:3] for a in given], commands
    for args in given:
        _parse(args)
    # And how to refresh the constraints after a dependency changes.
    assert "constraints.txt" in _production_section()


def _parse(args: list[str]) -> None:
    """Raises unless ``streamrec ARGS`` names a command whose arguments parse."""
    from stream.cli import cli

    command: click.Command = cli
    ctx = click.Context(cli)
    while isinstance(command, click.Group):
        name, args = args[0], args[1:]
        found = command.get_command(ctx, name)
        assert found is not None, f"no command {name!r}"
        command = found
    command.make_context(command.name or "", list(args))  # UsageError if they do not


def _topics() -> dict[str, int]:
    """Topic -> partitions, as kafka-init creates them."""
    (script,) = _services()["kafka-init"]["command"]
    out = {}
    for line in script.splitlines():
        found = re.search(r"create_topic (\S+) (\d+)$", line.strip())
        if found:
            out[found.group(1)] = int(found.group(2))
    return out


def test_the_topics_are_made_for_several_workers_and_trainers() -> None:
    topics = _topics()
    assert {"clicks", "recommendations", "clicks.dlq", "feedback", "retrain"} <= set(topics)
    assert topics["clicks"] == topics["retrain"] == 12, topics  # room to add processes


def test_two_workers_and_two_trainers_sharing_the_tenants_in_a_group() -> None:
    services = _services()
    assert services["worker"]["deploy"]["replicas"] == 2
    # Room for thousands of models' memory maps (one file descriptor each).
    assert services["worker"]["ulimits"]["nofile"]["soft"] >= 200_000
    trainer = services["trainer"]
    assert trainer["deploy"]["replicas"] == 2
    command = trainer["command"]
    assert command[command.index("--group") + 1] == "trainers", command
    assert command[command.index("--every") + 1] == "1h", command


def test_a_redis_cluster_profile_of_three_masters_with_a_replica_each() -> None:
    services = _services()
    nodes = {n: s for n, s in services.items() if n.startswith("redis-node-")}
    assert len(nodes) == 6
    for name, node in nodes.items():
        assert node["profiles"] == ["cluster"], name
        command = node["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes", name
        assert "--requirepass" in command and "--masterauth" in command, name
        assert _session_hashes_compact(command), name
    init = services["redis-cluster-init"]
    assert init["profiles"] == ["cluster"]
    script = " ".join(init["command"])
    assert "--cluster create" in script and "--cluster-replicas 1" in script
    assert all(f"{name}:6379" in script for name in nodes), script
    assert set(init["depends_on"]) == set(nodes)
    # The workers and trainers use it when told to; without the profile, the single Redis.
    for name in ("worker", "trainer"):
        env = services[name]["environment"]
        assert env["STREAMREC_REDIS_CLUSTER"] == "${STREAMREC_REDIS_CLUSTER:-0}"
        assert "@${STREAMREC_REDIS_NODE:-redis}:6379" in env["STREAMREC_REDIS_URL"]
        cluster = services[name]["depends_on"]["redis-cluster-init"]
        assert cluster == {"condition": "service_completed_successfully", "required": False}


def test_only_the_api_is_published_and_on_the_loopback() -> None:
    services = _services()
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"worker"}, published
    assert all(str(p).startswith("127.0.0.1:") for p in services["worker"]["ports"])


def test_grafanas_override_publishes_grafana_alone_on_the_loopback() -> None:
    override = yaml.safe_load((COMPOSE.parent / "docker-compose.grafana.yml").read_text())
    assert set(override) == {"services"} and set(override["services"]) == {"grafana"}
    assert override["services"]["grafana"] == {"ports": ["127.0.0.1:3000:3000"]}
    # Merged as `docker compose -f ... -f ...` merges it: still valid Compose.
    compose = yaml.safe_load(COMPOSE.read_text())
    compose["services"]["grafana"].update(override["services"]["grafana"])
    assert _compose_errors(compose) == []


def test_grafana_and_prometheus_need_a_login() -> None:
    services = _services()
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert grafana["GF_USERS_ALLOW_SIGN_UP"] == "false"
    # Prometheus serves with basic auth from a web config file holding a bcrypt hash,
    # made from PROMETHEUS_PASSWORD before it starts (no password in the repository).
    prometheus = services["prometheus"]
    (flag,) = [a for a in prometheus["command"] if a.startswith("--web.config.file=")]
    web_config = flag.split("=", 1)[1]
    auth = services["prometheus-auth"]
    script = " ".join(auth["command"])
    assert "htpasswd -nbB" in script and web_config in script and "basic_auth_users" in script
    assert auth["environment"]["PROMETHEUS_PASSWORD"].startswith("${PROMETHEUS_PASSWORD:?")
    assert prometheus["depends_on"]["prometheus-auth"] == {
        "condition": "service_completed_successfully"
    }
    # Grafana's datasource logs in with that password.
    assert services["grafana"]["environment"]["PROMETHEUS_PASSWORD"].startswith(
        "${PROMETHEUS_PASSWORD:?"
    )
    source = yaml.safe_load(
        (
            COMPOSE.parent / "scripts/monitoring/grafana/provisioning/datasources/prometheus.yml"
        ).read_text()
    )["datasources"][0]
    assert source["basicAuth"] is True and source["basicAuthUser"] == "grafana"
    assert source["secureJsonData"]["basicAuthPassword"] == "$PROMETHEUS_PASSWORD"


# The Compose Specification's JSON schema, from github.com/compose-spec/compose-spec
# (schema/compose-spec.json, Apache License 2.0), kept here because tests download nothing.
COMPOSE_SPEC = Path(__file__).parent / "data" / "compose-spec.json"


def _compose_errors(compose: dict) -> list[str]:
    """What `docker compose config` would refuse: the schema, then references between
    services, volumes and secrets, and dependencies across profiles."""
    import json

    import jsonschema

    schema = json.loads(COMPOSE_SPEC.read_text())
    errors = [
        f"{'/'.join(map(str, e.path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(compose)
    ]
    services = compose.get("services", {})
    for name, service in services.items():
        depends = service.get("depends_on", {})
        needs = {d: {} for d in depends} if isinstance(depends, list) else dict(depends)
        for target, how in needs.items():
            if target not in services:
                errors.append(f"{name} depends on {target}, which is not a service")
            elif (
                "profiles" not in service
                and "profiles" in services[target]
                and how.get("required", True)
            ):
                errors.append(f"{name} always starts but needs {target}, only in a profile")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            named = source and not source.startswith((".", "/", "$"))
            if named and source not in (compose.get("volumes") or {}):
                errors.append(f"{name} mounts volume {source}, which is not declared")
        for secret in service.get("secrets", []):
            secret = secret if isinstance(secret, str) else secret["source"]
            if secret not in (compose.get("secrets") or {}):
                errors.append(f"{name} uses secret {secret}, which is not declared")
    for value in _strings(compose):
        for match in re.finditer(r"(?<!\$)\$\{([^}]*)\}", value):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(:?[-?+].*)?", match.group(1)):
                errors.append(f"bad interpolation {match.group(0)!r}")
    return errors


def _strings(node: object):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def test_the_compose_file_is_valid_compose() -> None:
    assert _compose_errors(yaml.safe_load(COMPOSE.read_text())) == []


def test_the_compose_check_catches_what_compose_would_refuse() -> None:
    def broken(edit) -> list[str]:
        compose = yaml.safe_load(COMPOSE.read_text())
        edit(compose)
        return _compose_errors(compose)

    assert broken(lambda c: c["services"]["worker"].update(restrat="always"))
    assert broken(
        lambda c: c["services"]["worker"]["depends_on"]["redis-cluster-init"].pop("required")
    )
    assert broken(lambda c: c["volumes"].pop("models"))
    assert broken(lambda c: c["secrets"].clear())
    assert broken(lambda c: c["services"]["grafana"]["environment"].update(X="${A B}"))
    assert broken(lambda c: c["services"]["grafana"].update(depends_on=["prometheus2"]))
