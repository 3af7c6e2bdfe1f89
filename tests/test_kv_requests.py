"""Request arrivals and traces: reproducible Poisson streams, and clear errors for malformed traces."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from fabricsim.workloads.requests import Request, RequestError, load_trace, poisson_requests, write_trace
from fabricsim.workloads.serving import ServingConfig, serve


def test_same_seed_same_requests():
    a = poisson_requests(5.0, 200, prompt_tokens=100, output_tokens=50, seed=3, output_dist="geometric")
    b = poisson_requests(5.0, 200, prompt_tokens=100, output_tokens=50, seed=3, output_dist="geometric")
    c = poisson_requests(5.0, 200, prompt_tokens=100, output_tokens=50, seed=4, output_dist="geometric")
    assert a == b
    assert a != c


def test_poisson_rate_and_lengths():
    reqs = poisson_requests(10.0, 20_000, prompt_tokens=64, output_tokens=40, seed=1, output_dist="geometric",
                            prompt_dist="uniform")
    gaps = np.diff([0.0] + [r.arrival_s for r in reqs])
    assert gaps.mean() == pytest.approx(0.1, rel=0.03)
    assert gaps.std() == pytest.approx(0.1, rel=0.03)  # exponential: std == mean
    assert np.mean([r.output_tokens for r in reqs]) == pytest.approx(40, rel=0.03)
    assert np.mean([r.prompt_tokens for r in reqs]) == pytest.approx(64, rel=0.03)
    assert min(r.output_tokens for r in reqs) >= 1


def test_offline_batch_and_prefixes():
    reqs = poisson_requests(float("inf"), 40, prompt_tokens=150, output_tokens=5, prefix_tokens=100, prefixes=2,
                            prompt_dist="uniform")
    assert {r.arrival_s for r in reqs} == {0.0}
    assert all(r.prompt_tokens >= 101 and r.prefix_tokens == 100 for r in reqs)
    assert any(r.prompt_tokens == 101 for r in reqs)  # drawn shorter than the prefix and one token: raised
    assert {r.prefix_id for r in reqs} <= {"p0", "p1"}


@pytest.mark.parametrize("prefix", [100, 10])
def test_a_prefix_not_shorter_than_the_mean_prompt_is_refused(prefix):
    """Every prompt was raised to prefix + 1 tokens without a word (a trial's 5000-token prefix on 1024-token
    prompts made TTFT 10x)."""
    with pytest.raises(RequestError, match=f"prefix_tokens {prefix} is not shorter than the mean prompt length "
                                           f"\\(prompt_tokens 10\\).*raised to {prefix + 1} tokens"):
        poisson_requests(float("inf"), 8, prompt_tokens=10, output_tokens=5, prefix_tokens=prefix)
    assert poisson_requests(1.0, 2, prompt_tokens=10, output_tokens=5, prefix_tokens=9)[0].prompt_tokens == 10
    with pytest.raises(RequestError, match="prompt_tokens: mean must be"):  # a bad mean: its own message
        poisson_requests(1.0, 2, prompt_tokens=0, output_tokens=5, prefix_tokens=prefix)


def test_trace_round_trip(tmp_path):
    reqs = poisson_requests(2.0, 20, prompt_tokens=30, output_tokens=7, seed=0, prefix_tokens=10)
    path = tmp_path / "t.csv"
    write_trace(reqs, path)
    back = load_trace(path)
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens, r.prefix_id, r.prefix_tokens) for r in back] == [
        (r.arrival_s, r.prompt_tokens, r.output_tokens, r.prefix_id, r.prefix_tokens) for r in reqs]


def test_trace_minimal_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s, prompt_tokens, output_tokens\n0.5, 10, 3\n0.1, 20, 4\n")
    reqs = load_trace(path)
    assert [r.arrival_s for r in reqs] == [0.1, 0.5]
    assert reqs[0].prefix_id is None


@pytest.mark.parametrize("text, match", [
    ("arrival_s,prompt_tokens\n0,10\n", "missing column.*output_tokens"),
    ("prompt_tokens,output_tokens\n10,3\n", "missing column.*arrival_s"),
    ("arrival_s,prompt_tokens,output_tokens\n0,10,3\n-1,10,3\n", "line 3: arrival_s: time must be .* >= 0, got -1.0"),
    ("arrival_s,prompt_tokens,output_tokens\nsoon,10,3\n", "line 2.*arrival_s.*not a number"),
    ("arrival_s,prompt_tokens,output_tokens\n0,10.5,3\n", "line 2.*prompt_tokens.*whole number"),
    ("arrival_s,prompt_tokens,output_tokens\n0,10,0\n", "line 2.*output_tokens must be >= 1"),
    ("arrival_s,prompt_tokens,output_tokens\n", "no requests"),
    ("arrival_s,prompt_tokens,output_tokens\n0,1e300,5\n", "line 2: prompt_tokens is more than 2\\^53"),
    # a column the reader does not know was dropped without a word; a misspelt optional one lost every prefix
    ("arrival_s,prompt_tokens,output_tokens,extra\n0,10,3,x\n", "unknown column\\(s\\) extra \\(need"),
    ("arrival_s,prompt_tokens,output_tokens,prefix_id,prefix_token\n0,10,3,a,5\n", "unknown column.*prefix_token "),
    ("arrival_s,prompt_tokens,output_tokens,\n0,10,3,\n", "unknown column.*unnamed one: a trailing comma"),
    ("arrival_s,prompt_tokens,output_tokens,prompt_tokens\n0,10,3,4\n", "prompt_tokens given twice"),
    ("arrival_s,prompt_tokens,output_tokens\n0,10,3\n1,10,3,x\n", "line 3: 4 fields, but the header names 3"),
    # one prefix_id, one length (served as its first before); a prefix_id without its length shared nothing
    ("arrival_s,prompt_tokens,output_tokens,prefix_id,prefix_tokens\n0,100,10,a,50\n0.1,100,10,b,60\n"
     "0.2,100,10,a,60\n", "line 4: prefix_id 'a' has prefix_tokens 60 here but 50 at line 2; one prefix_id names"),
    ("arrival_s,prompt_tokens,output_tokens,prefix_id\n0,100,10,a\n",
     ": column prefix_id without column prefix_tokens: a shared prefix needs its length"),
    # a blank line is skipped, and still counted: the line named is the one at fault, not the one before it
    ("arrival_s,prompt_tokens,output_tokens\n0,10,3\n\n0,x,3\n", "line 4: column 'prompt_tokens' is not a number"),
])
def test_bad_traces(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(RequestError, match=match):
        load_trace(path)


@pytest.mark.parametrize("fields, message", [
    ((0, 0.0, 5.5, 10), "request 0: prompt_tokens must be a whole number >= 1, got 5.5"),
    ((0, 0.0, math.nan, 10), "request 0: prompt_tokens must be a whole number >= 1, got nan"),
    ((0, 0.0, 10, math.inf), "request 0: output_tokens must be a whole number >= 1, got inf"),
    ((1, 0.0, 10, 10, "a", 2.5), "request 1: prefix_tokens must be a whole number >= 0, got 2.5"),
    ((1, 0.0, 10, 10, "a", -1), "request 1: prefix_tokens must be >= 0, got -1"),
    ((2, math.nan, 10, 10), "request 2: arrival_s: time must be a finite number >= 0, got nan"),
    ((2, -math.inf, 10, 10), "request 2: arrival_s: time must be a finite number >= 0, got -inf"),
    ((2, "0", 10, 10), "request 2: arrival_s: expected a time, got '0'"),
    ((3, 0.0, 10, 10, "", 0), "request 3: prefix_id must be a name (a non-empty string) or None, got ''"),
    ((3, 0.0, 10, 10, 7, 4), "request 3: prefix_id must be a name (a non-empty string) or None, got 7"),
    ((-1, 0.0, 10, 10), "request id must be >= 0, got -1"),
    ((0.5, 0.0, 10, 10), "request id must be a whole number >= 0, got 0.5"),
])
def test_a_request_is_checked_where_it_is_made(fields, message):
    """Each field of a request by the rule of its kind, naming the request and the field: a prompt of 5.5 tokens was
    refused deep in the run as the decode batch's ('decode batch: batch must be a whole number'), and a NaN count
    or arrival ran."""
    with pytest.raises(RequestError, match=f"^{re.escape(message)}$"):
        Request(*fields)


def test_a_request_keeps_plain_numbers():
    """Whole floats and NumPy numbers are the counts and times they name, kept as Python ints and floats."""
    r = Request(np.int64(3), np.float32(0.5), 512.0, np.int32(8), "a", np.int64(2))
    assert (r.id, r.arrival_s, r.prompt_tokens, r.output_tokens, r.prefix_tokens) == (3, 0.5, 512, 8, 2)
    assert [type(v) for v in (r.id, r.arrival_s, r.prompt_tokens, r.output_tokens, r.prefix_tokens)] == [
        int, float, int, int, int]


def test_serve_refuses_a_request_id_given_twice_and_what_is_no_request():
    """Two requests with one id were served silently (results name requests by id)."""
    reqs = [Request(0, 0.0, 10, 2), Request(1, 0.0, 10, 2), Request(0, 0.1, 10, 2)]
    with pytest.raises(RequestError, match=r"^request id 0 is given twice \(requests\[0\] and requests\[2\]\)"):
        serve("h100-1", reqs, "hbm-only", ServingConfig())
    with pytest.raises(RequestError, match=r"^requests\[1\] is not a Request, got \(1, 0.0, 10, 2\)"):
        serve("h100-1", [reqs[0], (1, 0.0, 10, 2)], "hbm-only", ServingConfig())


def test_serve_refuses_one_prefix_id_of_two_lengths():
    """The KV policies keep a shared prefix by its id at the first request's length: a second length was served as
    the first without a word."""
    reqs = [Request(0, 0.0, 100, 2, "a", 50), Request(1, 0.0, 100, 2, "b", 60), Request(2, 0.1, 100, 2, "a", 60)]
    with pytest.raises(RequestError, match=r"^request 2: prefix_id 'a' has prefix_tokens 60 here but 50 at request "
                                           r"0; one prefix_id names one shared prefix, of one length$"):
        serve("h100-1", reqs, "prefix-sharing", ServingConfig())


def test_bad_arguments(tmp_path):
    with pytest.raises(RequestError, match="rate"):
        poisson_requests(0, 10, prompt_tokens=1, output_tokens=1)
    with pytest.raises(RequestError, match="distribution"):
        poisson_requests(1, 10, prompt_tokens=1, output_tokens=1, output_dist="zipf")
    with pytest.raises(RequestError, match="arrival_s"):
        Request(0, -0.1, 1, 1)
    with pytest.raises(RequestError, match="does-not-exist"):
        load_trace(tmp_path / "does-not-exist.csv")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n": 10**13}, "more than the 1,000,000"),
    ({"prompt_tokens": 1e300}, "prompt_tokens: mean .* beyond 2\\^53"),
    ({"output_tokens": 1e300, "output_dist": "uniform"}, "output_tokens: mean .* beyond 2\\^53"),
    ({"output_tokens": 1e300, "output_dist": "geometric"}, "output_tokens: mean .* beyond 2\\^53"),
    ({"prefix_tokens": 10**20}, "prefix_tokens is beyond 2\\^53"),
    ({"prefix_tokens": 8, "prefixes": 10**20}, "distinct prefixes"),
])
def test_absurd_streams_are_refused_before_drawing(kwargs, match):
    """Sizes past any workload once ended in numpy's MemoryError or an int64 overflow, as tracebacks."""
    args = {"n": 4, "prompt_tokens": 16, "output_tokens": 4, **kwargs}
    with pytest.raises(RequestError, match=match):
        poisson_requests(float("inf"), args.pop("n"), **args)
