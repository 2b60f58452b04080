"""Operations: the failure-alert sensor against a real HTTP receiver, jobs, the full-graph job and the
project instance settings (dagster.yaml)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest

from iimed_assets.core.alerts import check_failure, slack_payload
from iimed_assets.definitions import defs
from iimed_assets.resources.alerts import ENV_WEBHOOK_URL, AlertWebhook
from iimed_assets.resources.catalog import SourceCatalog
from iimed_assets.resources.defaults import catalog_from_env, warehouse_from_env
from iimed_assets.sensors import evaluate_alerts

REPO = Path(__file__).resolve().parents[1]
PARTITION = "medicationqa"  # a small bundled eval set


class Receiver:
    """A Slack-style incoming webhook on 127.0.0.1 that records every JSON body it accepts."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.refuse = 0  # answer HTTP 500 to this many requests first
        self.accept_first = 0  # ... after accepting this many
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.accept_first > 0:
                    receiver.accept_first -= 1
                elif receiver.refuse > 0:
                    receiver.refuse -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.bodies.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _instance(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return dg.instance_for_test(temp_dir=str(home))


def _eval_items():
    return next(a for a in defs.assets if a.key.to_user_string() == "eval_items")


def _materialize(instance, catalog: SourceCatalog) -> dg.ExecuteInProcessResult:
    return dg.materialize([_eval_items()], partition_key=PARTITION, instance=instance, raise_on_error=False,
                          resources={"warehouse": warehouse_from_env(), "catalog": catalog})


class Ticker:
    """Evaluates the sensor tick after tick, carrying its cursor like the daemon does."""

    def __init__(self, instance) -> None:
        self.instance = instance
        self.cursor: str | None = None

    def tick(self) -> str:
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor)
        skip = evaluate_alerts(context, AlertWebhook())
        self.cursor = context.cursor
        return skip.skip_message


def test_alerts_once_per_failed_check_and_run(warehouse_path, monkeypatch, tmp_path):
    with Receiver() as receiver, _instance(tmp_path) as instance:
        monkeypatch.setenv(ENV_WEBHOOK_URL, receiver.url)
        ticker = Ticker(instance)
        assert "started" in ticker.tick()

        ok = _materialize(instance, catalog_from_env())
        assert ok.success and all(e.passed for e in ok.get_asset_check_evaluations())
        assert "0 alerts posted" in ticker.tick()  # passing checks alert nothing
        assert receiver.bodies == []

        # A blocking ERROR (too few rows), a non-blocking WARN (too many rows), and a failed run.
        error = _materialize(instance, SourceCatalog(row_bounds={PARTITION: [10**9, 10**10]}))
        warn = _materialize(instance, SourceCatalog(row_bounds={PARTITION: [0, 1]}))
        crashed = _materialize(instance, SourceCatalog(overrides={PARTITION: str(tmp_path / "missing.jsonl")}))
        assert not crashed.success
        summary = ticker.tick()
        assert receiver.url not in summary  # the webhook URL is a secret

        checks = [b for b in receiver.bodies if b["text"].count("Check failed")]
        runs = [b for b in receiver.bodies if "Run failed" in b["text"]]
        assert sorted(b["text"].split("\n")[0] for b in checks) == [
            f":rotating_light: *Check failed: eval_items[{PARTITION}] · row_count_in_bounds (ERROR)*",
            f":warning: *Check failed: eval_items[{PARTITION}] · row_count_in_bounds (WARN)*",
        ]
        assert any(error.run_id in b["text"] for b in checks) and any(warn.run_id in b["text"] for b in checks)
        # Every failed run alerts (the blocking ERROR check fails its run too).
        failed_runs = {r.run_id for r in (error, warn, crashed) if not r.success}
        assert crashed.run_id in failed_runs
        assert {b["text"].split("run `")[1].split("`")[0] for b in runs} == failed_runs
        crash_alert = next(b for b in runs if crashed.run_id in b["text"])
        assert "missing.jsonl" in crash_alert["text"] or "No such file" in crash_alert["text"]
        for body in receiver.bodies:  # Slack-compatible shape
            assert body["blocks"][0]["type"] == "section" and body["blocks"][-1]["type"] == "context"
        assert summary.startswith(f"{len(receiver.bodies)} alerts posted")

        before = len(receiver.bodies)
        assert ticker.tick().startswith("0 alerts posted")  # one failure alerts once
        assert len(receiver.bodies) == before


def test_undelivered_alert_is_retried_not_lost(warehouse_path, monkeypatch, tmp_path):
    with Receiver() as receiver, _instance(tmp_path) as instance:
        monkeypatch.setenv(ENV_WEBHOOK_URL, receiver.url)
        ticker = Ticker(instance)
        ticker.tick()
        _materialize(instance, SourceCatalog(row_bounds={PARTITION: [0, 1]}))  # one WARN, run succeeds
        receiver.refuse = 1
        assert "waiting to deliver" in ticker.tick()
        assert receiver.bodies == []
        assert ticker.tick().startswith("1 alerts posted")
        assert len(receiver.bodies) == 1 and "(WARN)" in receiver.bodies[0]["text"]
        assert ticker.tick().startswith("0 alerts posted")


def test_alerts_of_one_run_cut_by_an_outage_are_resumed_not_repeated(warehouse_path, monkeypatch, tmp_path):
    """A run with two alerts (its blocking ERROR check, then the run failure): the webhook takes the first and
    refuses the second; the next tick sends only the second."""
    with Receiver() as receiver, _instance(tmp_path) as instance:
        monkeypatch.setenv(ENV_WEBHOOK_URL, receiver.url)
        ticker = Ticker(instance)
        ticker.tick()
        failed = _materialize(instance, SourceCatalog(row_bounds={PARTITION: [10**9, 10**10]}))
        assert not failed.success
        receiver.accept_first, receiver.refuse = 1, 1
        assert "waiting to deliver run:" in ticker.tick()
        assert len(receiver.bodies) == 1 and "Check failed" in receiver.bodies[0]["text"]
        assert ticker.tick().startswith("1 alerts posted")
        assert len(receiver.bodies) == 2 and "Run failed" in receiver.bodies[1]["text"]
        assert ticker.tick().startswith("0 alerts posted")


def test_sensor_uses_public_dagster_apis_only():
    """`instance.get_event_records` is deprecated in 1.13 and dagster._core is private: the sensor reads the
    event log through fetch_run_status_changes and get_records_for_run only."""
    source = (REPO / "iimed_assets" / "sensors.py").read_text()
    assert "dagster._" not in source and "get_event_records" not in source and "event_log_storage" not in source


def test_without_webhook_failures_are_logged_and_cursor_moves(warehouse_path, monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_WEBHOOK_URL, raising=False)
    with _instance(tmp_path) as instance:
        ticker = Ticker(instance)
        ticker.tick()
        _materialize(instance, SourceCatalog(row_bounds={PARTITION: [0, 1]}))
        assert ticker.tick().startswith(f"0 alerts posted, 1 logged only (set ${ENV_WEBHOOK_URL}")
        assert ticker.tick().startswith("0 alerts posted, 0 logged only")


def test_slack_payload_is_plain_json_with_link():
    failure = check_failure(key="check:7", run_id="abc123", job="eval_sets", asset="sft_final", partition=None,
                            check="no_contamination", severity="ERROR", blocking=True,
                            description="3 contaminated rows", metadata={"contaminated": 3, "rows": 201})
    payload = slack_payload(failure, ui_url="http://127.0.0.1:3000/")
    json.dumps(payload)
    assert "<http://127.0.0.1:3000/assets/sft_final?view=checks|open in Dagster>" in payload["text"]
    assert "blocking: yes" in payload["text"] and "3 contaminated rows" in payload["text"]
    assert {"type": "mrkdwn", "text": "*contaminated*\n3"} in payload["blocks"][1]["fields"]


def test_sensor_is_registered_and_on_by_default():
    sensor = defs.resolve_sensor_def("failure_alerts")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert "alerts" in sensor.required_resource_keys


def test_jobs_cover_every_asset_once_per_section():
    expected = {
        "section1_public_reasoning": {"public_reasoning_rows"},
        "section2_rejection_sampling": {"qa_seed_rows", "qa_samples", "qa_verified"},
        "section4_instruct": {"instruct_prompt_rows", "instruct_responses", "instruct_judged"},
        "eval_sets": {"eval_items"},
        "cleaning_and_export": {"sft_candidates", "sft_deduped", "sft_decontaminated", "sft_final", "source_funnel",
                                "sft_export"},
    }
    covered: set[str] = set()
    for name in [*expected, "section3_r1_domain_filter", "spend_plan"]:
        job = defs.resolve_job_def(name)
        keys = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
        if name in expected:
            assert keys == expected[name], name
        assert not covered & keys, f"{name} repeats {covered & keys}"
        covered |= keys
    all_assets = {a.key.to_user_string() for a in defs.assets}
    assert covered == all_assets  # every asset belongs to exactly one job besides full_graph
    assert defs.resolve_job_def("section2_rejection_sampling").partitions_def.get_partition_keys() == \
        ["medmcqa", "medqa", "pubmedqa_unlabeled", "medreason"]


def test_gpu_bound_assets_share_the_gpu_pool():
    pools = {a.key.to_user_string(): a.get_pool_for_asset_key(a.key) if hasattr(a, "get_pool_for_asset_key")
             else next(iter(a.node_def.pools), None) for a in defs.assets}
    for name in ["qa_samples", "qa_verified", "instruct_responses", "instruct_judged"]:
        assert pools[name] == "gpu", (name, pools[name])
    assert pools["eval_items"] is None


def test_section_job_reruns_one_source_partition(warehouse_path, tmp_path):
    with _instance(tmp_path) as instance:
        result = defs.resolve_job_def("eval_sets").execute_in_process(partition_key=PARTITION, instance=instance)
        assert result.success
        [event] = result.get_asset_materialization_events()
        assert event.partition == PARTITION and event.materialization.metadata["dagster/row_count"].value > 0


def test_full_graph_job_runs_partitions_as_runs(warehouse_path, tmp_path):
    with _instance(tmp_path) as instance:
        job = defs.resolve_job_def("full_graph")
        config = {"ops": {"materialize_full_graph": {"config": {"assets": ["eval_items"],
                                                                  "partitions": [PARTITION, "liveqa_med"]}}}}
        result = job.execute_in_process(run_config=config, instance=instance)
        assert result.success
        children = [r for r in instance.get_runs() if r.tags.get("iimed/parent_run") == result.run_id]
        assert sorted(r.tags["dagster/partition"] for r in children) == ["liveqa_med", PARTITION]
        assert all(r.is_success for r in children)

        bad = {"ops": {"materialize_full_graph": {"config": {"assets": ["no_such_asset"]}}}}
        assert not job.execute_in_process(run_config=bad, instance=instance, raise_on_error=False).success


def test_project_instance_settings_load(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_bytes((REPO / ".dagster_home" / "dagster.yaml").read_bytes())
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.global_op_concurrency_default_limit == 1
        config = instance.get_concurrency_config()
        assert config.run_queue_config.max_concurrent_runs == 4
        assert config.pool_config.default_pool_limit == 1


@pytest.mark.parametrize("argv", [["dev", "--help"]])
def test_cli_has_dev_command(argv, capsys):
    from iimed_assets.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "--port" in capsys.readouterr().out
