"""The Ray backend of ``zsqbench sweep``: each job attempt is a Ray task on an existing cluster (``ray start``).

The task asks for the resources the protocol declares for the sweep's device (``"resources"`` in the protocol
file, e.g. ``{"cpu": {"cpus": 1}, "cuda": {"cpus": 1, "gpus": 0.25}}``), and on the node Ray picks it runs the
same ``zsqbench run`` command as the local backend, as a child that dies with the task's worker. Everything else
is ``run_sweep``'s, as for local jobs: skipping finished jobs, retrying a failed attempt (a crashed worker or node
included), ``sweep.jsonl`` and the progress bar. The job directories must be on storage every node sees at the
same path; the record is written atomically by the run, so a restarted sweep trusts only finished records.
"""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from zsqbench.frontends.sweep import Job, _die_with_parent, open_job_log
from zsqbench.spine.errors import UserError

DEFAULT_RESOURCES = {"cpu": {"cpus": 1}, "cuda": {"cpus": 1, "gpus": 1}}  # a protocol that declares none
CAPACITY_REFRESH_S = 10.0  # nodes may join or leave while a sweep runs


def job_resources(protocol: dict, device: str) -> dict:
    """What one job asks Ray for, ``{"cpus": c, "gpus": g}``: the protocol's ``resources`` entry for the device's
    kind (``cuda`` for cuda/cuda:N, else ``cpu``)."""
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    declared = (protocol.get("resources") or DEFAULT_RESOURCES).get(kind) or DEFAULT_RESOURCES[kind]
    wanted = {"cpus": declared.get("cpus", 1), "gpus": declared.get("gpus", 0)}
    unknown = set(declared) - set(wanted)
    bad = [k for k, v in wanted.items() if not isinstance(v, (int, float)) or v < 0]
    if unknown or bad or (wanted["gpus"] > 1 and wanted["gpus"] != int(wanted["gpus"])):
        raise UserError(f"protocol {protocol['name']}: resources.{kind} = {declared} is not valid: give cpus and "
                        "gpus as non-negative numbers (gpus a fraction up to 1, or a whole number)")
    return wanted


DEFAULT_CONNECT_TIMEOUT_S = 30.0  # --ray-timeout / $ZSQBENCH_RAY_TIMEOUT
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _check_reachable(address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
    """Ray waits minutes for a cluster that is not there, and prints its own logging meanwhile; a plain TCP connect
    and an HTTP/2 greeting (a Ray head, GCS or Ray client server, speaks gRPC) say so in seconds, in one line."""
    if address == "auto":
        return
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--address {address!r}: give HOST:PORT of the Ray head (e.g. 10.0.0.5:6379), "
                        "ray://HOST:10001, or leave it out to use $RAY_ADDRESS or the cluster started on this machine")
    wait = max(0.1, min(5.0, timeout))
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=wait)
    except OSError as e:
        why = "no answer" if isinstance(e, socket.timeout) else (e.strerror or str(e) or type(e).__name__)
        raise UserError(f"no Ray cluster answers at {address} ({why}): start one with `ray start --head` "
                        "(docs/clusters.md) or check --address") from None
    try:
        conn.settimeout(wait)
        conn.sendall(HTTP2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    except OSError:
        head = b""
    finally:
        conn.close()
    if len(head) < 9 or head[3] != 0x04:  # a gRPC server opens with a SETTINGS frame
        raise UserError(f"the service at {address} is not a Ray cluster (it does not answer as a gRPC server): "
                        "check --address (the head's port, 6379 by default; ray://HOST:10001 for Ray client)")


def resolve_address(address: str | None) -> str:
    return address or os.environ.get("RAY_ADDRESS") or "auto"


def check_cluster(address: str | None, timeout=None) -> None:
    """The cheap checks of ``--address`` and ``--ray-timeout`` (no Ray import): the sweep makes them before any
    work."""
    _check_reachable(resolve_address(address), connect_timeout(timeout))


def connect_timeout(value=None) -> float:
    """Seconds a connection to a Ray cluster may take: ``value`` (--ray-timeout), else $ZSQBENCH_RAY_TIMEOUT, else
    30."""
    raw = value if value is not None else os.environ.get("ZSQBENCH_RAY_TIMEOUT")
    if raw is None:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"Ray connection timeout {raw!r} (--ray-timeout or $ZSQBENCH_RAY_TIMEOUT): give seconds > 0")
    return seconds


def _init_bounded(ray, address: str, timeout: float, left: float) -> None:
    """``ray.init`` that answers within ``timeout`` seconds, with Ray's own logging (its C++ core prints to the
    terminal while it retries) kept in a temporary file unless $ZSQBENCH_RAY_LOG=1 asks for it."""
    import logging
    import tempfile
    import threading
    show = os.environ.get("ZSQBENCH_RAY_LOG", "") not in ("", "0")
    outcome: dict = {}

    def target():
        try:
            ray.init(address=address, logging_level=logging.INFO if show else logging.ERROR,
                     log_to_driver=show, configure_logging=True)
            outcome["ok"] = True
        except BaseException as e:  # ConnectionError, a version mismatch, ...: Ray's first line says which
            outcome["error"] = e

    saved = log = None
    if not show:
        sys.stderr.flush()
        log = tempfile.TemporaryFile()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
    try:
        worker = threading.Thread(target=target, name="ray-init", daemon=True)
        worker.start()
        worker.join(left)
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        if log is not None:
            log.close()
    if worker.is_alive():
        raise RayConnectTimeout(f"the Ray cluster at {address} did not answer within {timeout:g} s: check that it "
                                "runs (`ray status`) and --address, or allow longer with --ray-timeout SECONDS")
    if "error" in outcome:
        e = outcome["error"]
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot connect to the Ray cluster at {address}: {first[:300]}")


class RayConnectTimeout(UserError):
    """``ray.init`` still waits after the timeout: the CLI prints the line and leaves at once (``os._exit``), since a
    normal exit would run Ray's shutdown hooks, which wait for the stuck connection."""
    exit_now = True


def run_attempt(job: Job, attempt: int, cmd: list[str], threads: int, forwarded_env: dict) -> int:
    """The Ray task: one attempt of one job on whichever node Ray chose; returns the run's exit status."""
    cmd = [sys.executable, *cmd[1:]]  # this node's Python (the driver's path may not exist here)
    env = {**os.environ, **forwarded_env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    where = f" on {socket.gethostname()} (ray worker pid {os.getpid()})"
    with open_job_log(job, attempt, cmd, where) as logf:
        # the run dies with this worker (PR_SET_PDEATHSIG): a killed worker or driver leaves no orphan behind
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        return proc.wait()


class RayBackend:
    """Job attempts as Ray tasks, as many at once as the cluster's resources hold (at most ``limit``)."""
    name = "ray"
    settle_s = 10.0  # a record written on another node may take a moment to show on network storage

    def __init__(self, protocol: dict, device: str, address: str | None = None, limit: int | None = None,
                 threads: int | None = None, timeout: float | None = None):
        timeout = connect_timeout(timeout)
        t0 = time.monotonic()
        self.address = resolve_address(address)
        _check_reachable(self.address, timeout)  # before importing Ray (seconds): a bad address costs no more
        try:
            import ray
        except ImportError:
            raise UserError("--backend ray needs Ray on this machine and on every node: "
                            "pip install 'zsqbench[ray]'") from None
        self.ray = ray
        _init_bounded(ray, self.address, timeout, max(1.0, timeout - (time.monotonic() - t0)))
        self.request = job_resources(protocol, device)
        self.limit = limit
        self.threads = threads or max(1, math.ceil(self.request["cpus"]))
        self.forwarded_env = {k: v for k, v in os.environ.items() if k.startswith("ZSQBENCH_")}
        self.task = ray.remote(run_attempt).options(num_cpus=self.request["cpus"], num_gpus=self.request["gpus"],
                                                    max_retries=0)  # retries are the sweep's, logged as such
        self.refs: set = set()
        self._fit, self._checked = self._jobs_that_fit(), time.monotonic()
        if self._fit == 0:
            have = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
            ray.shutdown()
            raise UserError(f"no node of the Ray cluster at {self.address} can run a {protocol['name']} job on "
                            f"{device}: a job asks for {self.request['cpus']} CPU and {self.request['gpus']} GPU, "
                            f"the cluster has {have or 'none'}")

    def describe(self) -> dict:
        return {"backend": "ray", "address": self.address, "parallel": self.capacity(), "threads": self.threads,
                "resources": self.request}

    def _jobs_that_fit(self) -> int:
        total = self.ray.cluster_resources()
        fits = [math.floor(total.get(key, 0) / self.request[want] + 1e-9)
                for key, want in (("CPU", "cpus"), ("GPU", "gpus")) if self.request[want] > 0]
        return min(fits) if fits else 1

    def capacity(self) -> int:
        if time.monotonic() - self._checked > CAPACITY_REFRESH_S:
            self._fit, self._checked = self._jobs_that_fit(), time.monotonic()
        fit = max(self._fit, 1)  # nodes gone for now: Ray holds the task until one returns
        return min(fit, self.limit) if self.limit else fit

    def submit(self, job: Job, attempt: int, cmd: list[str]):
        ref = self.task.remote(job, attempt, cmd, self.threads, self.forwarded_env)
        self.refs.add(ref)
        return ref

    def finished(self) -> list[tuple[object, int | None, str]]:
        if not self.refs:
            time.sleep(0.2)
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0.2)
        ended = []
        for ref in ready:
            self.refs.discard(ref)
            try:
                ended.append((ref, self.ray.get(ref), ""))
            except Exception as e:  # the worker or its node died, or the task could not reach the job directory
                first = (str(e).strip().splitlines() or [""])[0]
                ended.append((ref, None, f"{type(e).__name__}: {first}"[:300]))
        return ended

    def stop(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)

    def close(self) -> None:
        self.ray.shutdown()


def absolute(path: str | Path | None) -> str | None:
    """Every node reads the same paths: the driver's relative ones mean nothing on the workers."""
    return None if path is None else str(Path(path).expanduser().resolve())
