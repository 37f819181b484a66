"""The audit on a Ray cluster, when a prompt library outgrows one machine (``audit --ray``).

Ray actors, one model replica each (a whole GPU, or a share of one, or a CPU), run
``analyze_many`` on chunks of prompts; the driver keeps the store and the table. Stored prompts
are answered locally without a worker; each finished chunk comes back as plain arrays and JSON,
is written into the local store under the same keys a local audit uses, and its rows are
yielded in file order. So a re-run, or a later dashboard session, finds every row, and an
interrupted run resumes with only the missing prompts. Ray is optional: requirements-ray.txt.
"""

import os
import socket
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

from sinkviz.flow.analysis import Settings, analyze_many, from_stored, load_stored, result_key, to_meta
from sinkviz.flow.audit import AuditRow, BadRow, _chunks, row_of
from sinkviz.errors import BadSetting, SinkvizError
from sinkviz.numbers.metrics import Thresholds
from sinkviz.flow.prompts import check_prompt
from sinkviz.flow.store import ResultStore


RAY_CHUNK = 32   # prompts per worker call: small enough that every worker has work (batches form inside)


class AuditWorker:
    """One model replica on a Ray worker: chunks of prompts in, (index, (meta, arrays) or error) out."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.scratch = ResultStore(tempfile.mkdtemp(prefix="sinkviz-ray-"))  # the driver's store is the real one

    def run(self, prompts: list[str]) -> list[tuple[int, object]]:
        out = []
        for index, result in analyze_many(prompts, self.settings, store=self.scratch, head_maps=False):
            out.append((index, result if isinstance(result, SinkvizError)
                        else (to_meta(result), result.stats.to_arrays(pack_maps=True))))
        return out


def connect(address: str | None, workers: int | None) -> tuple[object, int, float, float]:
    """(ray, workers, GPUs per worker, CPUs per worker) on the cluster at ``address`` (None: a
    local one). Workers default to one per GPU, else 2; several workers may share a GPU."""
    try:
        import ray
    except ImportError:
        raise BadSetting("--ray needs Ray: pip install -r requirements-ray.txt") from None
    if address not in (None, "auto"):
        _reachable(address)
    package_root = str(Path(__file__).resolve().parents[2])
    if address is None:   # a local cluster's workers inherit this environment: sinkviz on their path
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        runtime = None
    else:                 # a remote one gets the package shipped (needs ray[default] there)
        env = {k: v for k, v in os.environ.items() if k.startswith(("SINKVIZ_", "HF_HUB_OFFLINE", "TQDM_"))}
        runtime = {"py_modules": [str(Path(__file__).resolve().parents[1])], "env_vars": env}
    try:
        ray.init(address=address, runtime_env=runtime, ignore_reinit_error=True, log_to_driver=False,
                 include_dashboard=False)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise BadSetting(f"cannot reach the Ray cluster at {address or 'a new local cluster'}: "
                         f"{str(err).splitlines()[0][:200]}") from None
    gpus = ray.cluster_resources().get("GPU", 0)
    workers = workers or int(gpus) or 2
    if workers < 1:
        raise BadSetting(f"--workers must be at least 1, not {workers}")
    return ray, workers, (min(1.0, gpus / workers) if gpus else 0.0), (0 if gpus else 1)


def _reachable(address: str, seconds: float = 5.0) -> None:
    """BadSetting unless host:port (optionally ray://host:port) accepts a TCP connection: Ray
    itself retries an unreachable address for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=seconds):
            return
    except (OSError, ValueError) as err:
        raise BadSetting(f"cannot reach the Ray cluster at {address}: "
                         f"{getattr(err, 'strerror', None) or err}") from None


def ray_audit_rows(prompts: Iterable[str | BadRow], settings: Settings, first_n: int = 3,
                   thresholds: Thresholds = Thresholds(), *, address: str | None = None,
                   workers: int | None = None, store: ResultStore | None = None,
                   chunk: int = RAY_CHUNK) -> Iterator[AuditRow]:
    """audit_rows() with the computing spread over Ray workers: the same rows, keys and store.
    Up to two chunks per worker are in flight while the driver saves and yields the oldest."""
    from sinkviz.flow.models import identity
    ray, count, gpus, cpus = connect(address, workers)
    store = store or ResultStore()
    model = identity(settings.model, settings.device, settings.dtype)
    actor = ray.remote(num_gpus=gpus, num_cpus=cpus)(AuditWorker)
    pool = ray.util.ActorPool([actor.remote(settings) for _ in range(count)])
    in_flight: deque = deque()
    try:
        for number, part in enumerate(_chunks(prompts, chunk)):
            in_flight.append(_submitted(pool, number, part, store, lambda p: result_key(model, settings, p)))
            if len(in_flight) > 2 * count:
                yield from _finished(pool, in_flight.popleft(), store, first_n, thresholds, chunk)
        while in_flight:
            yield from _finished(pool, in_flight.popleft(), store, first_n, thresholds, chunk)
    except ray.exceptions.RayError as err:
        raise SinkvizError(f"a Ray worker failed ({type(err).__name__}); the rows already done are in the "
                           "store, and a re-run computes only the missing ones") from None


def _submitted(pool, number: int, part: list, store: ResultStore, key_of) -> tuple:
    """(number, prompts, {index: stored Analysis or error}, [(index, prompt) sent to a worker])."""
    stored, todo = {}, []
    for i, prompt in enumerate(part):
        if isinstance(prompt, BadRow):
            continue
        try:
            check_prompt(prompt)
            hit = load_stored(store, key_of(prompt))
        except SinkvizError as err:   # refused as analyze() would, without a worker
            stored[i] = err
            continue
        if hit is None:
            todo.append((i, prompt))
        else:
            stored[i] = hit
    if todo:
        pool.submit(lambda worker, work: worker.run.remote([p for _, p in work]), todo)
    return number, part, stored, todo


def _finished(pool, submitted: tuple, store: ResultStore, first_n: int, thresholds: Thresholds,
              chunk: int) -> Iterator[AuditRow]:
    """The oldest chunk's rows: its worker results saved to the store, then rows in file order."""
    number, part, results, todo = submitted
    for position, outcome in (pool.get_next() if todo else []):
        index = todo[position][0]
        if isinstance(outcome, SinkvizError):
            results[index] = outcome
        else:
            meta, arrays = outcome
            store.put(meta["key"], meta, arrays)
            results[index] = from_stored(meta, arrays)
    for i, prompt in enumerate(part):
        yield row_of(number * chunk + i + 1, prompt, results.get(i), first_n, thresholds)
