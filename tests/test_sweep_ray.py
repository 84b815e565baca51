"""zsqbench sweep --backend ray on a real local Ray cluster (a head started here with 2 CPUs): the same records as
the local backend, resume after the driver is killed with SIGKILL, a retry after a worker is killed mid-job."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ONE_THREAD
from test_sweep import COMPARED, records
from zsqbench.frontends.sweep import RECORD

pytest.importorskip("ray", reason="the Ray backend's tests need the extra: pip install -e '.[ray]'")
pytestmark = pytest.mark.slow  # each module starts a local Ray cluster

RAY = str(Path(sys.executable).with_name("ray"))
METHODS = "noise,gdfq"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address():
    """A one-node cluster of our own: own temp dir and ports (another cluster on this machine is left alone),
    stopped by killing its process group, never by `ray stop` (which stops every cluster of the user)."""
    temp = Path(tempfile.mkdtemp(prefix="zr", dir="/tmp"))  # short: Ray's socket paths must stay < 108 characters
    port = free_port()
    log = open(temp / "head.log", "w")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
         "--num-gpus", "0", "--temp-dir", str(temp), "--include-dashboard=false", "--disable-usage-stats",
         "--dashboard-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
         "--ray-client-server-port", str(free_port())],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        deadline = time.time() + 120
        while "Ray runtime started" not in (temp / "head.log").read_text():
            assert head.poll() is None and time.time() < deadline, (temp / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def env():
    clean = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**clean, **ONE_THREAD, "COLUMNS": "200", "RAY_USAGE_STATS_ENABLED": "0"}


def sweep_cmd(out, cache, *extra, methods=METHODS):
    return [sys.executable, "-m", "zsqbench.frontends.cli", "sweep", "-p", "smoke", "--methods", methods, "--models",
            "resnet20@fmnist", "-o", str(out), "--cache-dir", str(cache), "--threads", "1", "-q", *extra]


def job_dirs(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.is_dir()]


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]


def same_results(a: dict, b: dict) -> None:
    """What the runs computed; not ``sweep_job``, which also fingerprints the source files (a concurrent edit of
    the tree between the two sweeps changes it, not the results)."""
    assert a.keys() == b.keys()  # same job directories: named by the settings hash
    computed = [k for k in COMPARED if k != "sweep_job"]
    for name in a:
        assert {k: a[name].get(k) for k in computed} == {k: b[name].get(k) for k in computed}, name


@pytest.fixture(scope="module")
def local_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    done = subprocess.run(sweep_cmd(out / "sweep", out / "cache"), env=env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    return records(out / "sweep")


def test_ray_sweep_yields_the_local_records(ray_address, local_records, tmp_path):
    out = tmp_path / "sweep"
    done = subprocess.run(sweep_cmd(out, tmp_path / "cache", "--backend", "ray", "--address", ray_address),
                          env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stderr == ""  # Ray's own logging stays out of the sweep's output
    same_results(records(out), local_records)
    start = events(out)[0]
    assert start["backend"] == "ray" and start["resources"] == {"cpus": 1, "gpus": 0} and start["parallel"] == 2
    for job in job_dirs(out):
        log = (job / "log.txt").read_text()
        assert log.count("attempt") == 1 and "ray worker pid" in log and "final top-1" in log


def test_ray_sweep_resumes_after_the_driver_is_killed(ray_address, local_records, tmp_path):
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    one_at_a_time = sweep_cmd(out, cache, "--backend", "ray", "--address", ray_address, "-j", "1")
    driver = subprocess.Popen(one_at_a_time, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(out.glob(f"*/{RECORD}")) and time.time() < deadline:
        time.sleep(0.1)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    first = records(out)
    assert len(first) == 1, "the kill should land between the first and the last job"
    time.sleep(5)  # Ray ends a dead driver's tasks, and each run dies with its worker: no record appears afterwards
    assert records(out).keys() == first.keys()
    mtimes = {p: p.stat().st_mtime for p in out.glob(f"*/{RECORD}")}

    again = subprocess.run(one_at_a_time, env=env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr + again.stdout
    assert all(p.stat().st_mtime == t for p, t in mtimes.items()), "finished jobs must not run again"
    assert [e["skipped"] for e in events(out) if e["event"] == "start"] == [0, 1]
    same_results(records(out), local_records)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_a_worker_killed_mid_job_is_retried(ray_address, tmp_path):
    out = tmp_path / "sweep"
    cmd = sweep_cmd(out, tmp_path / "cache", "--backend", "ray", "--address", ray_address, methods="gdfq")
    driver = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    header = ""
    while "ray worker pid" not in header and time.time() < deadline:
        logs = list(out.glob("*/log.txt"))
        header = logs[0].read_text().split("\n")[0] if logs else ""
        time.sleep(0.1)
    worker = int(header.split("ray worker pid ")[1].split(")")[0])
    run = _children(worker)
    assert len(run) == 1, "the worker runs the job as its one child"
    os.kill(worker, signal.SIGKILL)
    for _ in range(50):  # the run dies with its worker (PR_SET_PDEATHSIG): no orphan races the retry
        if not Path(f"/proc/{run[0]}").exists() or "Z" in Path(f"/proc/{run[0]}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the killed worker's run is still alive")
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output
    retry = [e for e in events(out) if e["event"] == "retry"]
    assert len(retry) == 1 and retry[0]["returncode"] is None and "Worker" in retry[0]["error"], retry
    assert [e["event"] for e in events(out)][-2:] == ["ok", "end"]
    (job,) = job_dirs(out)
    assert (job / "log.txt").read_text().count("attempt") == 2 and len(records(out)) == 1


def test_bad_ray_input_is_one_line(ray_address, tmp_path):
    base = sweep_cmd(tmp_path / "sweep", tmp_path / "cache")
    for extra, message in [(["--backend", "ray", "--address", f"127.0.0.1:{free_port()}"], "no Ray cluster answers"),
                           (["--address", ray_address], "use it with --backend ray"),
                           (["--backend", "ray", "--address", ray_address, "--device", "cuda"], "no node")]:
        done = subprocess.run(base + extra, env=env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    # without Ray installed (hidden from the import system here): the same one line, naming the extra
    no_ray = ("import sys; sys.modules['ray'] = None; from zsqbench.frontends.cli import main; "
              "sys.argv[0] = 'zsqbench'; main()")
    done = subprocess.run([sys.executable, "-c", no_ray, *base[3:], "--backend", "ray"], env=env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "pip install 'zsqbench[ray]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "sweep" / "sweep.jsonl").exists()
