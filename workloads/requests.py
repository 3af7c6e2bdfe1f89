"""Serving requests: who arrives when, with how many prompt and output tokens, sharing which prefix.

Two sources, one type (`Request`):
- `poisson_requests`: a seeded Poisson process at a rate, with token counts fixed, uniform or geometric
  (geometric output lengths make per-request service time exponential, which queueing tests rely on);
- `load_trace`: a CSV with columns `arrival_s, prompt_tokens, output_tokens[, prefix_id, prefix_tokens]` and no
  others (an unknown column is refused, not dropped).

`prefix_id` names a shared prefix (a system prompt): requests with the same id share their first
`prefix_tokens` prompt tokens, which KV policies may store and read once. The two columns come together, and one
id has one length (`check_prefix_length`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fabricsim.errors import FabricsimError
from fabricsim.hwmodels.fileio import atomic_write_text, read_text
from fabricsim.simcore.errors import ScenarioError
from fabricsim.simcore.units import MAX_SECONDS, check_seconds

from .counts import MAX_TOKENS, check_count

TRACE_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")
OPTIONAL_COLUMNS = ("prefix_id", "prefix_tokens")
LENGTH_DISTRIBUTIONS = ("fixed", "uniform", "geometric")
# Past this a number is a typo, refused before anything is drawn: a stream is drawn whole, and a million requests
# already take hundreds of MiB before the first step (more is a trace's job); token counts stop at `MAX_TOKENS`.
MAX_REQUESTS = 10**6


class RequestError(FabricsimError):
    """A request list or trace is malformed (missing column, negative time, non-integer tokens, ...)."""


@dataclass(frozen=True)
class Request:
    """One request. `prefix_tokens` of the prompt are shared with every request of the same `prefix_id`."""

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_id: str | None = None
    prefix_tokens: int = 0

    def __post_init__(self) -> None:
        """Every field checked where a request is made, naming the request and the field: past here a prompt of 5.5
        tokens was refused as the decode batch's ("batch must be a whole number"), and a NaN count ran. Token counts
        are whole numbers by `check_count` (>= 1, the prefix >= 0), the arrival a time by `check_seconds` (finite,
        >= 0, at most 10^9 s: beyond, float seconds lose the microseconds a step takes); each is kept as the plain
        Python number it names (512.0 and NumPy integers as int)."""
        object.__setattr__(self, "id", check_count(self.id, "request id", lo=0, error=RequestError))
        where = f"request {self.id}"
        try:
            object.__setattr__(self, "arrival_s", check_seconds(self.arrival_s, f"{where}: arrival_s"))
        except ScenarioError as exc:
            raise RequestError(str(exc)) from None
        for name in ("prompt_tokens", "output_tokens", "prefix_tokens"):
            object.__setattr__(self, name, check_count(getattr(self, name), f"{where}: {name}",
                                                       lo=0 if name == "prefix_tokens" else 1, error=RequestError))
        if self.prefix_tokens > self.prompt_tokens:
            raise RequestError(f"{where}: prefix_tokens must be in [0, prompt_tokens={self.prompt_tokens}], "
                               f"got {self.prefix_tokens}")
        if self.prefix_id is not None and not (isinstance(self.prefix_id, str) and self.prefix_id):
            raise RequestError(f"{where}: prefix_id must be a name (a non-empty string) or None, got "
                               f"{self.prefix_id!r}")
        if self.prefix_tokens and self.prefix_id is None:
            raise RequestError(f"{where}: prefix_tokens given without a prefix_id")


def check_requests(requests: Iterable[object]) -> None:
    """Refuse a request list that is not one: an item that is not a `Request`, two requests with one id (results,
    traces and the serving loop's tie-break name requests by id; a repeated id was served silently, its metrics
    then unattributable), or one prefix_id of two lengths (`check_prefix_length`)."""
    seen: dict[int, int] = {}
    prefixes: dict[str, tuple[int, str]] = {}
    for k, r in enumerate(requests):
        if not isinstance(r, Request):
            raise RequestError(f"requests[{k}] is not a Request, got {r!r}")
        if (first := seen.setdefault(r.id, k)) != k:
            raise RequestError(f"request id {r.id} is given twice (requests[{first}] and requests[{k}]); "
                               f"each request needs its own id")
        check_prefix_length(prefixes, r, f"request {r.id}", f"request {r.id}")


def check_prefix_length(seen: dict[str, tuple[int, str]], request: Request, where: str, label: str) -> None:
    """Refuse `request` when its prefix_id was seen (in `seen`: prefix_id -> (prefix_tokens, where it was first
    given)) with another prefix_tokens: one prefix_id names one shared prefix, so one length. The KV policies keep a
    prefix by its id, at the length of the first request that stored it, so a second length was served as the first
    without a word. `where` starts the message; `label` says where this request is, for a later one's message."""
    if request.prefix_id is None:
        return
    tokens, first = seen.setdefault(request.prefix_id, (request.prefix_tokens, label))
    if tokens != request.prefix_tokens:
        raise RequestError(f"{where}: prefix_id {request.prefix_id!r} has prefix_tokens {request.prefix_tokens} "
                           f"here but {tokens} at {first}; one prefix_id names one shared prefix, of one length")


def _lengths(rng: np.random.Generator, n: int, mean: float, dist: str, what: str) -> np.ndarray:
    """`n` token counts >= 1 with the given mean: fixed, uniform on [1, 2*mean-1], or geometric on {1, 2, ...}."""
    if not 1 <= mean < math.inf:
        raise RequestError(f"{what}: mean must be a finite number >= 1 token, got {mean}")
    if mean > MAX_TOKENS:
        raise RequestError(f"{what}: mean {mean:.3g} tokens is beyond 2^53; check the unit")
    if dist == "fixed":
        return np.full(n, int(round(mean)), dtype=np.int64)
    if dist == "uniform":
        hi = max(1, int(round(2 * mean - 1)))
        return rng.integers(1, hi + 1, size=n)
    if dist == "geometric":
        return rng.geometric(1.0 / mean, size=n) if mean > 1 else np.ones(n, dtype=np.int64)
    raise RequestError(f"{what}: unknown length distribution '{dist}' (known: {', '.join(LENGTH_DISTRIBUTIONS)})")


def check_shared_prefix(prefix_tokens: int, prompt_tokens: float, *,
                        names: tuple[str, str] = ("prefix_tokens", "prompt_tokens")) -> None:
    """Refuse a shared prefix not shorter than the mean prompt: every prompt holds the prefix and one token of its
    own, so such a prefix would raise every prompt to `prefix_tokens + 1` tokens, a different workload from the one
    asked for and almost surely a mistake (a trial's 5000-token prefix on 1024-token prompts made TTFT 10x, with
    nothing said). `names` spell the two inputs in the message (the CLI passes its flags). A mean that is no valid
    length (below 1, NaN) is left to the length check, whose message is the one that applies."""
    if prefix_tokens > 0 and 1 <= prompt_tokens <= prefix_tokens:
        prefix, prompt = names
        raise RequestError(f"{prefix} {prefix_tokens} is not shorter than the mean prompt length ({prompt} "
                           f"{prompt_tokens:g}): every prompt would be raised to {prefix_tokens + 1} tokens (the "
                           f"shared prefix and one of its own); give a shorter prefix or longer prompts")


def poisson_requests(rate_per_s: float, n: int, *, prompt_tokens: float, output_tokens: float, seed: int = 0,
                     prompt_dist: str = "fixed", output_dist: str = "fixed", prefix_tokens: int = 0,
                     prefixes: int = 1, start_s: float = 0.0) -> list[Request]:
    """`n` requests of a Poisson process at `rate_per_s` (exponential gaps), reproducible from `seed`.

    With `prefix_tokens > 0` every prompt starts with one of `prefixes` shared prefixes (chosen uniformly),
    and prompts are at least `prefix_tokens + 1` long; a prefix not shorter than the mean prompt is refused
    (`check_shared_prefix`). `rate_per_s = inf` means everything arrives at `start_s`
    (an offline batch).
    """
    if not rate_per_s > 0:
        raise RequestError(f"arrival rate must be > 0 requests/s, got {rate_per_s}")
    if n / rate_per_s > MAX_SECONDS:
        raise RequestError(f"arrival rate {rate_per_s:g} requests/s spreads {n} requests over about "
                           f"{n / rate_per_s:.3g} s, beyond 10^9 s (31 years); check the unit")
    if n < 1:
        raise RequestError(f"need at least one request, got n={n}")
    if n > MAX_REQUESTS:
        raise RequestError(f"{n:,} requests is more than the {MAX_REQUESTS:,} a stream draws (use a request trace)")
    if prefix_tokens < 0 or prefixes < 1:
        raise RequestError(f"prefix_tokens must be >= 0 and prefixes >= 1, got {prefix_tokens}, {prefixes}")
    if prefix_tokens > MAX_TOKENS:
        raise RequestError("prefix_tokens is beyond 2^53 tokens; check the unit")
    if prefixes > MAX_REQUESTS:
        raise RequestError(f"{prefixes:,} distinct prefixes is more than the {MAX_REQUESTS:,} requests a stream draws")
    check_shared_prefix(prefix_tokens, prompt_tokens)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise RequestError(f"seed must be a whole number >= 0, got {seed!r}")
    if not (math.isfinite(start_s) and start_s >= 0):
        raise RequestError(f"start_s must be a finite number >= 0, got {start_s!r}")
    rng = np.random.default_rng(seed)
    if math.isinf(rate_per_s):
        arrivals = np.full(n, float(start_s))
    else:
        arrivals = start_s + np.cumsum(rng.exponential(1.0 / rate_per_s, size=n))
    prompts = _lengths(rng, n, prompt_tokens, prompt_dist, "prompt_tokens")
    outputs = _lengths(rng, n, output_tokens, output_dist, "output_tokens")
    which = rng.integers(0, prefixes, size=n) if prefix_tokens else np.zeros(n, dtype=np.int64)
    out = []
    for i in range(n):
        prompt = int(prompts[i])
        pid = None
        if prefix_tokens:
            prompt = max(prompt, prefix_tokens + 1)
            pid = f"p{int(which[i])}"
        out.append(Request(i, float(arrivals[i]), prompt, int(outputs[i]), pid, prefix_tokens))
    return out


def _field(row: dict[str, str], col: str, where: str, kind: type) -> float | int:
    raw = (row.get(col) or "").strip()
    try:
        value = float(raw)
    except ValueError:
        raise RequestError(f"{where}: column '{col}' is not a number: {raw!r}") from None
    if kind is int:
        if not value.is_integer():
            raise RequestError(f"{where}: column '{col}' must be a whole number of tokens, got {raw!r}")
        return int(value)
    return value


def load_trace(path: str | Path) -> list[Request]:
    """Read a request trace CSV; every error names the file, the line and the column."""
    path = Path(path)
    text = read_text(path, RequestError, "request trace")
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    columns = f"need {', '.join(TRACE_COLUMNS)}[, {', '.join(OPTIONAL_COLUMNS)}]; found {header}"
    missing = [c for c in TRACE_COLUMNS if c not in header]
    if missing:
        raise RequestError(f"trace {path}: missing column(s) {', '.join(missing)} ({columns})")
    # A column the reader does not know would be dropped without a word (a trial's `extra` column was), and a
    # misspelt optional one (prefix_token) would leave every request without its prefix: refused, as is a column
    # given twice (only its last copy would be read) or an unnamed one (a trailing comma).
    unknown = [c for c in header if c not in (*TRACE_COLUMNS, *OPTIONAL_COLUMNS)]
    if unknown:
        shown = ", ".join(c or "'' (an unnamed one: a trailing comma?)" for c in unknown)
        raise RequestError(f"trace {path}: unknown column(s) {shown} ({columns})")
    if twice := sorted({c for c in header if header.count(c) > 1}):
        raise RequestError(f"trace {path}: column(s) {', '.join(twice)} given twice")
    if "prefix_id" in header and "prefix_tokens" not in header:  # every request's prefix would be 0 tokens long
        raise RequestError(f"trace {path}: column prefix_id without column prefix_tokens: a shared prefix needs its "
                           f"length in tokens (add prefix_tokens, or drop prefix_id)")
    out: list[Request] = []
    prefixes: dict[str, tuple[int, str]] = {}
    for row in reader:
        # the reader's own count of lines read, not the rows': it skips blank lines, and a count of rows then named
        # the line before the one at fault
        where = f"trace {path} line {reader.line_num}"
        if None in row:  # csv.DictReader's key for the fields past the header's
            raise RequestError(f"{where}: {len(header) + len(row[None])} fields, but the header names "
                               f"{len(header)} columns ({', '.join(header)})")
        arrival = _field(row, "arrival_s", where, float)  # (a time by `Request`'s check, named with this line)
        pid = (row.get("prefix_id") or "").strip() or None
        ptoks = _field(row, "prefix_tokens", where, int) if (row.get("prefix_tokens") or "").strip() else 0
        try:
            out.append(Request(len(out), arrival, _field(row, "prompt_tokens", where, int),
                               _field(row, "output_tokens", where, int), pid, ptoks))
        except RequestError as exc:
            raise RequestError(f"{where}: {str(exc).split(': ', 1)[1]}") from None
        check_prefix_length(prefixes, out[-1], where, f"line {reader.line_num}")
    if not out:
        raise RequestError(f"trace {path}: no requests (only a header)")
    return sorted(out, key=lambda r: (r.arrival_s, r.id))


def write_trace(requests: Iterable[Request], path: str | Path) -> None:
    """Write requests as a trace CSV (atomically: temp file + rename)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow([*TRACE_COLUMNS, *OPTIONAL_COLUMNS])
    for r in requests:
        w.writerow([repr(r.arrival_s), r.prompt_tokens, r.output_tokens, r.prefix_id or "", r.prefix_tokens])
    atomic_write_text(path, buf.getvalue())


def offered_load(requests: Sequence[Request]) -> dict[str, float]:
    """Summary of a request list: count, span, rate and mean token counts (for reports)."""
    n = len(requests)
    span = max(r.arrival_s for r in requests) - min(r.arrival_s for r in requests) if n else 0.0
    return {
        "requests": float(n),
        "span_s": span,
        "rate_per_s": (n - 1) / span if span > 0 else math.inf,
        "mean_prompt_tokens": sum(r.prompt_tokens for r in requests) / n if n else 0.0,
        "mean_output_tokens": sum(r.output_tokens for r in requests) / n if n else 0.0,
    }
