"""Every environment variable has one home (settings.py), is resolved where the definitions are built, and is in
the README; secrets are never resolved into config."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from iimed_assets import settings
from iimed_assets.resources.defaults import default_resources, definitions_resources

REPO = Path(__file__).resolve().parents[1]
SOURCE_FILES = [p for p in (REPO / "iimed_assets").rglob("*.py")]


def test_every_variable_named_in_the_code_is_declared():
    names = set()
    for path in SOURCE_FILES:
        names |= set(re.findall(r"[\"'](IIMED_[A-Z0-9_]*[A-Z0-9])[\"']", path.read_text(encoding="utf-8")))
    assert len(names) >= 10  # the scan finds the project's variables
    for name in sorted(names):
        settings.declared(name)  # raises for a variable with no entry
    with pytest.raises(KeyError):
        settings.declared("IIMED_NOT_A_SETTING")


def test_resources_read_no_environment_but_secrets_by_name():
    reads = []
    for path in (REPO / "iimed_assets" / "resources").rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if "os.environ" in line or "getenv(" in line:
                reads.append((path.name, line.strip()))
    # what is left: the API key and the webhook URL, read when used; llama.cpp's OpenMP wait policy (a default for the
    # process, not a setting of ours)
    allowed = ("api_key_env", "url_env", "OMP_WAIT_POLICY")
    assert reads and all(any(a in line for a in allowed) for _, line in reads), reads


def test_the_environment_becomes_resource_config_where_definitions_are_built(tmp_path):
    env = {"IIMED_WAREHOUSE": str(tmp_path / "w.duckdb"), "IIMED_DUCKDB_MEMORY_LIMIT": "3GB",
           "IIMED_SOURCE_MODE": "hub", "IIMED_SOURCE_MEDQA": "/data/medqa.parquet", "IIMED_HUB_MIRROR": "/mirror",
           "IIMED_SOURCE_MAX_ROWS": "10", "IIMED_UI_URL": "http://ui:3000", "IIMED_JUDGE_MAX_TOKENS": "77",
           "IIMED_ALERT_WEBHOOK_URL": "https://hooks.example/secret-token"}
    res = definitions_resources(environ=env)
    assert (res["warehouse"].path, res["warehouse"].memory_limit) == (env["IIMED_WAREHOUSE"], "3GB")
    cat = res["catalog"]
    assert (cat.mode, cat.hub_mirror, cat.max_rows, cat.overrides) == ("hub", "/mirror", 10, {"medqa": "/data/medqa.parquet"})
    assert res["alerts"].ui_url() == "http://ui:3000" and res["judge"].max_tokens == 77
    # the secret stays out of every resource's config
    assert not any("secret-token" in repr(r) for r in res.values())
    # unset: the built-in defaults, not whatever this test process has in its environment
    bare = default_resources(environ={})
    assert bare["warehouse"].path is None and bare["catalog"].mode is None and bare["catalog"].overrides == {}


def test_the_code_location_shows_the_resolved_values(tmp_path):
    code = ("from iimed_assets.definitions import defs; r = defs.resources; "
            "print(r['warehouse'].path, r['catalog'].mode, r['catalog'].overrides)")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path),
           "IIMED_WAREHOUSE": str(tmp_path / "x.duckdb"), "IIMED_SOURCE_MODE": "hub", "IIMED_SOURCE_MEDQA": "/m.jsonl"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=tmp_path)
    assert out.stdout.strip().splitlines()[-1] == f"{tmp_path / 'x.duckdb'} hub {{'medqa': '/m.jsonl'}}"


def test_secrets_are_never_read_into_config_and_shown_only_as_set():
    with pytest.raises(ValueError, match="secret"):
        settings.value("IIMED_ALERT_WEBHOOK_URL", {"IIMED_ALERT_WEBHOOK_URL": "https://x"})
    rows = {r[0]: r for r in settings.table({"OPENAI_API_KEY": "sk-123", "IIMED_JUDGE_MODEL": "gpt-4o"})}
    assert rows["OPENAI_API_KEY"][1] == "set" and "sk-123" not in repr(rows)
    assert rows["IIMED_<ROLE>_<KEY>"][1] == "IIMED_JUDGE_MODEL=gpt-4o" and rows["HF_TOKEN"][1] == "unset"


def test_every_setting_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [s.name for s in settings.SETTINGS if s.name not in readme]
    assert not missing, missing
