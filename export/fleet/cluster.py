"""Connecting to Ray and getting back what a job's tasks did: the --address forms, the one place `import ray`
happens for the command line, the CPU count of the cluster, and a failed task's UserError recovered from Ray's
wrapping so the command line can print its one sentence."""

from __future__ import annotations

import logging
import re
import socket
import sys
from contextlib import contextmanager
from typing import Iterator

from ralu_edge.errors import UserError

ADDRESS_FORMS = "auto, local, serial, ray://HOST:PORT (Ray Client) or HOST:PORT (a cluster's GCS address)"
RAY_MISSING = "Ray is not installed; install the extra with `pip install 'ralu-edge[ray]'`, or use --address serial."


def check_address(address: str) -> str:
    """The address, or UserError naming the accepted forms.

    auto: the cluster this machine belongs to (`ray start` ran here, or RAY_ADDRESS names one); local: a new
    one-machine cluster for this run only; serial: no Ray, one process (the reference path); ray://HOST:PORT: a
    remote cluster through Ray Client; HOST:PORT: a cluster's GCS address (what `ray start --head` prints)."""
    if address in ("auto", "local", "serial") or re.fullmatch(r"(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}", address):
        return address
    raise UserError(f"--address {address!r} is not one of: {ADDRESS_FORMS}.")


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the `ray[data]` part of the extra)
    except ImportError:
        raise UserError(RAY_MISSING) from None
    return ray


@contextmanager
def connected(address: str, num_cpus: int | None = None) -> Iterator[None]:
    """Ray initialised for the duration of the block (nothing for `serial`); a local cluster started here is
    stopped at the end. num_cpus: the CPUs of a `local` cluster (default: all of this machine's)."""
    if address == "serial":
        yield
        return
    ray = import_ray()
    if address not in ("auto", "local"):
        check_reachable(address)
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address == "local":
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as e:
        raise UserError(f"no Ray cluster answers at --address {address} ({_first_line(e)}); start one with "
                        "`ray start --head`, or use --address local.") from None
    quiet_ray_data()
    try:
        yield
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """UserError unless something accepts a TCP connection at HOST:PORT (ray.init would retry an address where
    nothing listens for minutes before giving up)."""
    host, port = address.removeprefix("ray://").rsplit(":", 1)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise UserError(f"nothing answers at --address {address} ({getattr(e, 'strerror', None) or e}); start the "
                        "cluster with `ray start --head`, or use --address local.") from None


def quiet_ray_data() -> None:
    """Ray Data's own progress bars and per-run log lines off: the job shows one progress bar of its own."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def cluster_cpus() -> float:
    """The CPUs of the cluster Ray is connected to."""
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))


def check_workers(workers: int, cpus_per_worker: int) -> None:
    """UserError unless the connected cluster has CPUs for `workers` workers of `cpus_per_worker` CPUs (a
    fixed-size actor pool that cannot be placed would wait forever)."""
    total = cluster_cpus()
    if workers * cpus_per_worker > total:
        raise UserError(f"{workers} workers x {cpus_per_worker} CPUs need {workers * cpus_per_worker} CPUs but the "
                        f"cluster has {total:g}; lower --workers or --cpus-per-worker, or add nodes.")


def default_workers(cpus_per_worker: int) -> int:
    return max(1, int(cluster_cpus() // cpus_per_worker))


def user_error_in(error: BaseException) -> UserError | None:
    """The UserError a remote task raised, found through Ray's wrapping (RayTaskError, Ray Data's
    UserCodeException, chained causes); None when the failure was something else (a bug keeps its traceback)."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e) is UserError:
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


@contextmanager
def user_errors_unwrapped() -> Iterator[None]:
    """Re-raise a remote task's UserError as itself, so the command line prints its sentence, not Ray's report."""
    try:
        yield
    except Exception as e:  # a RayTaskError is also an instance of its cause's class, UserError included
        found = user_error_in(e)
        if found is None or found is e:
            raise
        raise UserError(str(found)) from None


def progress(total: int, unit: str, disable: bool = False):
    """A tqdm bar on stderr (hidden when stderr is not a terminal, as every ralu CLI does)."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, disable=disable or not sys.stderr.isatty(), leave=False)


def _first_line(error: Exception) -> str:
    return " ".join(str(error).split())[:160]
