"""ralu-fleet (issue 19) on a real two-node Ray cluster on loopback (`ray start --head` plus `ray start --address`,
one CPU each), started and stopped here: each job equals its single-process path bit for bit while one of its
worker processes is SIGKILLed mid-job, nothing is lost or duplicated, and a killed user's personalization resumes
from its checkpoint. Slow (minutes: a fit per user twice, an export twice)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import random_image_folder

ray = pytest.importorskip("ray", reason="the `ray` extra (scripts/setup.sh installs it)")
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoNodeCluster:
    """A head node and a worker node, each `ray start` in its own process group (so every daemon and worker
    process of the cluster, and nothing else, can be signalled), session files under one short temporary folder."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="rayfleet-", dir="/tmp"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.client_address = f"ray://127.0.0.1:{_free_port()}"  # Ray Client's server on the head node
        self.groups: list[int] = []

    def _start(self, name: str, *args: str) -> None:
        cmd = [str(BIN / "ray"), "start", "--num-cpus=1", f"--temp-dir={self.root / name}", "--disable-usage-stats",
               "--node-ip-address=127.0.0.1", f"--dashboard-agent-listen-port={_free_port()}", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                                start_new_session=True)
        self.groups.append(proc.pid)  # the session leader's pid is the group id every daemon inherits
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, output[-3000:]

    def start(self) -> "TwoNodeCluster":
        self._start("head", "--head", f"--port={self.port}", "--include-dashboard=false",
                    f"--dashboard-port={_free_port()}",
                    f"--ray-client-server-port={self.client_address.rsplit(':', 1)[1]}")
        self._start("worker", f"--address={self.address}")
        return self

    def pids(self) -> list[int]:
        """Live processes of this cluster: the `ray start` groups' daemons and their descendants (Ray puts each
        worker process in a process group of its own, under its node's raylet)."""
        parents, groups = {}, {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parents[int(entry.name)], groups[int(entry.name)] = int(fields[1]), int(fields[2])
        members = {pid for pid, group in groups.items() if group in self.groups}
        grew = True
        while grew:
            children = {pid for pid, parent in parents.items() if parent in members} - members
            members |= children
            grew = bool(children)
        return sorted(members)

    def process_titled(self, title: str) -> int | None:
        """The pid of this cluster's process whose title (Ray's `ray::<task name>`) is `title`."""
        for pid in self.pids():
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() == title:
                    return pid
            except OSError:
                continue
        return None

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 10
            while self.pids() and time.time() < deadline:
                time.sleep(0.2)
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = TwoNodeCluster()
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture
def driver(cluster):
    """This test process as a Ray driver of the cluster."""
    from ralu_export.fleet.cluster import quiet_ray_data

    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    quiet_ray_data()
    try:
        yield ray
    finally:
        ray.shutdown()


def _kill_when(condition, find_pid, timeout: float = 900) -> dict:
    """In a thread: once condition() holds, SIGKILL the process find_pid() names; what happened is in the dict."""
    happened: dict = {}

    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline and "pid" not in happened:
            state = condition()
            pid = find_pid() if state is not None else None
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                happened.update(pid=pid, state=state)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    happened["thread"] = thread
    return happened


def test_two_nodes_fleet_eval_survives_a_killed_actor_and_equals_the_serial_path(cluster, driver, desktop_bundle):
    from ralu_export.fleet import evaluate, grid, scoring

    assert sum(1 for n in ray.nodes() if n["Alive"]) == 2
    plan = grid.plan_eval([desktop_bundle], "baseline,ralu-4x", "none", 4, "0", 8)
    killed: dict = {}

    def on_row(row):  # SIGKILL the actor that made the first image, while the job has 7 images to go
        if not killed:
            killed["pid"] = int(row["worker"].split(":")[1])
            os.kill(killed["pid"], signal.SIGKILL)

    run = evaluate.run_on_ray(plan, workers=2, cpus_per_worker=1, on_row=on_row)  # checks: each image once
    assert len(run.rows) == len(plan.tasks()) == 8
    pids = {int(r["worker"].split(":")[1]) for r in run.rows}
    nodes = {r["worker"].split(":")[2].split("/")[0] for r in run.rows}
    assert killed["pid"] in pids and len(nodes) == 2  # usually 3 pids: the restarted actor is a new process
    assert {r["worker_pipelines"] for r in run.rows} == {1} and {r["worker_sessions"] for r in run.rows} == {4}

    serial = evaluate.run_serial(plan, threads=1)
    assert [r["image_sha256"] for r in serial.rows] == [r["image_sha256"] for r in run.rows]
    assert all(a["image"] == b["image"] for a, b in zip(serial.rows, run.rows))
    assert scoring.score(plan, serial.rows) == scoring.score(plan, run.rows)


def test_the_command_line_through_ray_client_writes_what_the_serial_path_writes(cluster, desktop_bundle, tmp_path):
    """`ralu-fleet eval --address ray://...` (a remote driver, as against a real cluster) and `--address serial`:
    the same table, the same pixels, one PNG per image, and each worker's sessions counted in summary.json."""
    grid_args = ["eval", "--bundle", str(desktop_bundle), "--modes", "baseline,ralu-7x", "--limit", "2",
                 "--seeds", "1", "--steps", "4", "--no-progress"]
    outs = {}
    for name, address in (("ray", cluster.client_address), ("serial", "serial")):
        outs[name] = tmp_path / name
        done = subprocess.run([str(BIN / "ralu-fleet"), *grid_args, "--address", address, "--out", str(outs[name])],
                              capture_output=True, text=True, env=ENV)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().splitlines()[-1] == str(outs[name])
    assert (outs["ray"] / "table.txt").read_text() == (outs["serial"] / "table.txt").read_text()
    rows = {name: [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
            for name, out in outs.items()}
    assert [r["image_sha256"] for r in rows["ray"]] == [r["image_sha256"] for r in rows["serial"]]
    assert all((outs["ray"] / r["png"]).read_bytes() == (outs["serial"] / r["png"]).read_bytes() for r in rows["ray"])
    summary = json.loads((outs["ray"] / "summary.json").read_text())
    assert summary["run"]["nodes"] == 2 and summary["run"]["path"] == "ray"
    assert sum(w["images"] for w in summary["workers"]) == 4
    assert all(w["pipelines_opened"] == 1 and w["ort_sessions"] == 4 for w in summary["workers"])
    import pyarrow.parquet as pq

    assert pq.read_table(outs["ray"] / "results.parquet").to_pylist() == rows["ray"]


def _fleet(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "ralu-fleet"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def _checkpoint_step(folder: Path) -> int | None:
    try:
        return json.loads((folder / "state.json").read_text())["state"]["step"]
    except (OSError, ValueError, KeyError):
        return None


def test_two_nodes_batch_personalization_resumes_a_killed_users_checkpoint(cluster, desktop_bundle, tmp_path):
    steps = ["--steps", "40", "--checkpoint-every", "2"]
    users = []
    for user, photos in (("alice", 2), ("bob", 3)):
        users.append({"user": user, "images": str(random_image_folder(tmp_path / user, photos)),
                      "token": f"<{user}>", "init_word": "square"})
    (tmp_path / "users.jsonl").write_text("".join(json.dumps(u) + "\n" for u in users))
    out = tmp_path / "out"
    checkpoint = out / "alice" / "learned_embeds.safetensors.checkpoint"
    job = _fleet("personalize", "--bundle", str(desktop_bundle), "--manifest", str(tmp_path / "users.jsonl"),
                 "--out", str(out), "--address", cluster.address, "--workers", "2", *steps)
    killed = _kill_when(lambda: (s if (s := _checkpoint_step(checkpoint)) is not None and s >= 6 else None),
                        lambda: cluster.process_titled("ray::ralu-personalize:alice"))
    stdout, stderr = job.communicate(timeout=1800)
    assert job.returncode == 0, stderr[-3000:]
    assert "pid" in killed, "alice finished before her worker could be killed"
    summary = {u["user"]: u for u in json.loads((out / "summary.json").read_text())["users"]}
    assert summary["alice"]["resumed_from"] >= killed["state"] >= 6  # from her checkpoint, not from step 0
    assert summary["bob"]["resumed_from"] == 0 and summary["alice"]["steps"] == summary["bob"]["steps"] == 40

    for u in users:  # the single-process path: ralu-personalize, one ORT thread as each 1-CPU task
        reference = tmp_path / f"{u['user']}.safetensors"
        done = subprocess.run([str(BIN / "ralu-personalize"), "--bundle", str(desktop_bundle), "--images",
                               u["images"], "--token", u["token"], "--init-word", u["init_word"], "--threads", "1",
                               "--out", str(reference), *steps], capture_output=True, text=True, env=ENV)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (out / u["user"] / "learned_embeds.safetensors").read_bytes() == reference.read_bytes()


def test_two_nodes_batch_export_survives_a_killed_task_and_equals_ralu_export(cluster, tmp_path):
    out = tmp_path / "out"
    job = _fleet("export", "--model", "shapes", "--target", "desktop", "--out", str(out),
                 "--address", cluster.address, "--cpus-per-worker", "1")
    def graphs_being_written():  # the first attempt is killed once its temporary bundle holds a graph
        return next(iter((out / "shapes").glob("desktop.tmp-*/*/*.onnx")), None) if (out / "shapes").is_dir() else None

    killed = _kill_when(graphs_being_written, lambda: cluster.process_titled("ray::ralu-export:shapes/desktop"))
    stdout, stderr = job.communicate(timeout=1800)
    assert job.returncode == 0, stderr[-3000:]
    assert "pid" in killed, "the export finished before its worker could be killed"
    assert sorted(p.name for p in (out / "shapes").iterdir()) == ["desktop"]  # the killed attempt left nothing

    reference = tmp_path / "reference"  # the single-process path, with the task's thread count and hash seed
    done = subprocess.run([str(BIN / "ralu-export"), "--model", "shapes", "--target", "desktop", "--out",
                           str(reference), "--quiet"], capture_output=True, text=True,
                          env={**ENV, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    from ralu_export.fleet.batch_export import bundle_hashes

    fleet = json.loads((out / "summary.json").read_text())["bundles"]
    assert len(fleet) == 1 and fleet[0]["files"] == bundle_hashes(out / "shapes" / "desktop")
    assert bundle_hashes(out / "shapes" / "desktop") == bundle_hashes(reference)


def test_the_fixture_sees_both_nodes_and_their_workers(cluster, driver):
    """What the fixture stops is the whole cluster: both raylets, and a worker process running a task."""
    raylets = [pid for pid in cluster.pids() if b"/raylet" in Path(f"/proc/{pid}/cmdline").read_bytes()[:300]]
    assert len(raylets) == 2
    worker = ray.get(ray.remote(num_cpus=1)(lambda: os.getpid()).remote())
    assert worker in cluster.pids() and os.getpgid(worker) not in cluster.groups
