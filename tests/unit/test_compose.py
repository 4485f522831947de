"""docker-compose.yml is valid and wires the production stack as documented."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.helpers.paths import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_and_healthchecks(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "api", "worker", "flower"}
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        assert hc and hc["test"], f"{name} has no healthcheck"
        assert hc["test"][0] in ("CMD", "CMD-SHELL"), name


def test_worker_reserves_an_nvidia_gpu(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "--pool" in compose["services"]["worker"]["command"]


def test_api_migrates_then_serves(compose):
    api = compose["services"]["api"]
    cmd = " ".join(api["command"])
    assert cmd.index("alembic -c migrations/alembic.ini upgrade head") < cmd.index("uvicorn")
    assert "kdaudit.service.app:create_app" in cmd and "--factory" in cmd
    for dep in ("postgres", "redis"):
        assert api["depends_on"][dep]["condition"] == "service_healthy"
    assert compose["services"]["worker"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_env_points_at_the_compose_services(compose):
    services = compose["services"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["KDAUDIT_DATABASE_URL"].startswith("postgresql+psycopg://") and "@postgres:5432/" in env["KDAUDIT_DATABASE_URL"]
        assert env["KDAUDIT_BROKER_URL"] == "redis://redis:6379/0"
        assert env["KDAUDIT_STORAGE_DIR"]
    # api and worker share the teacher store and the settings
    assert services["api"]["environment"] == services["worker"]["environment"]
    assert "teachers:/var/lib/kdaudit/teachers" in services["api"]["volumes"]
    assert "teachers:/var/lib/kdaudit/teachers" in services["worker"]["volumes"]
    pg = services["postgres"]["environment"]
    assert pg["POSTGRES_DB"] == "kdaudit" and pg["POSTGRES_USER"] == "kdaudit"
    assert "redis://redis:6379/0" in " ".join(services["flower"]["command"])


def test_settings_in_compose_exist():
    from kdaudit.store.settings import ServiceSettings

    compose = yaml.safe_load(COMPOSE.read_text())
    fields = {f"KDAUDIT_{n.upper()}" for n in ServiceSettings.model_fields}
    assert set(compose["services"]["api"]["environment"]) <= fields


def _has_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _has_compose(), reason="no `docker compose` plugin here (the YAML checks above still ran)")
def test_docker_compose_config_accepts_it():
    r = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
