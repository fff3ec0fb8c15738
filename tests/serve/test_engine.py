"""The engine against `generate` (the reference): one job, many batched jobs, prefix-cache hits,
cancellation, stop tokens and strings, seeded sampling; the prefix cache and the text stream alone."""

from __future__ import annotations

import threading

import pytest
import torch

from ssmkit.serve.engine import Done, Engine, Failed, Job, SamplingParams, Token
from ssmkit.serve.prefix_cache import PrefixCache
from ssmkit.serve.textstream import TextStream
from ssmkit.training.tokenizer import ByteTokenizer
from tests.serve.server_process import tiny_model

TOK = ByteTokenizer()
# float64 takes the ops' reference paths, which say so once
pytestmark = pytest.mark.filterwarnings("ignore:ssmkit.ops:RuntimeWarning")


class Collector:
    """The `emit` callback of a job: keeps its events, signals the last one."""

    def __init__(self):
        self.events, self.finished = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, (Done, Failed)):
            self.finished.set()

    def wait(self) -> Done:
        assert self.finished.wait(60), "the job did not finish"
        done = self.events[-1]
        assert isinstance(done, Done), done
        assert "".join(e.text for e in self.events if isinstance(e, Token)) == done.text
        return done


@pytest.fixture(scope="module")
def model():
    return tiny_model(dtype=torch.float64)  # float64: argmax never hangs on a rounding difference


def make_engine(model, chunk=16, cache_bytes=1 << 24, **kw) -> Engine:
    return Engine(model, TOK, PrefixCache(chunk, cache_bytes, model.config.config_hash()), **kw)


def run(engine, prompt, state=None, **params) -> Done:
    c = Collector()
    engine.submit(Job(list(prompt), state, SamplingParams(**{"temperature": 0, **params}), c))
    return c.wait()


def reference(model, prompt, n, state=None) -> list[int]:
    ids = torch.tensor([list(prompt)])
    return model.generate(ids, max_new_tokens=n, state=state)[0, ids.shape[1] :].tolist()


def assert_states_close(a, b, tol=1e-9):
    for x, y in zip(a.layers, b.layers):
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=tol, atol=tol)


def test_one_job_is_generate(model):
    engine = make_engine(model)
    try:
        prompt = torch.randint(0, 256, (37,)).tolist()
        done = run(engine, prompt, max_tokens=20)
        st = model.init_state(1, dtype=torch.float64)
        assert done.ids == reference(model, prompt, 20, state=st)
        assert done.finish_reason == "length" and done.prompt_tokens == 37 and done.cached_tokens == 0
        assert_states_close(done.state, st)  # consumed the prompt and all 20 tokens, as generate's
        # continuing from the returned state is continuing the transcript
        more = run(engine, [65, 66], state=done.state, max_tokens=8)
        assert more.ids == reference(model, [65, 66], 8, state=st)
    finally:
        engine.stop()


def test_concurrent_jobs_decode_together_and_match_alone(model):
    engine = make_engine(model)
    try:
        prompts = [torch.randint(0, 256, (n,)).tolist() for n in (3, 17, 50, 90, 9, 33)]
        lengths = [12, 30, 7, 25, 18, 1]
        collectors = []
        for p, n in zip(prompts, lengths):
            c = Collector()
            engine.submit(Job(p, None, SamplingParams(max_tokens=n, temperature=0), c))
            collectors.append(c)
        for c, p, n in zip(collectors, prompts, lengths):
            assert c.wait().ids == reference(model, p, n)
        assert engine.steps < sum(lengths) / 2  # rows shared their steps
        assert engine.stats()["decoding"] == 0
    finally:
        engine.stop()


def test_prefix_cache_hit_changes_only_the_work(model):
    shared = torch.randint(0, 256, (100,)).tolist()
    cold, warm = make_engine(model, cache_bytes=0), make_engine(model)
    try:
        run(warm, shared + [1, 2, 3], max_tokens=5)
        for suffix in ([7, 8, 9, 10], [200]):
            hit, miss = run(warm, shared + suffix, max_tokens=10), run(cold, shared + suffix, max_tokens=10)
            assert hit.cached_tokens == 96 and miss.cached_tokens == 0  # the last whole chunk of 16 shared
            assert hit.ids == miss.ids
            for x, y in zip(hit.state.layers, miss.state.layers):  # the same cuts: bit for bit
                assert all(torch.equal(x[k], y[k]) for k in x)
        assert (warm.tokens_read, cold.tokens_read) == (103 + 8 + 5, 104 + 101)  # a hit reads the rest only
        exact = run(warm, shared[:48] + [5], max_tokens=3)  # a prompt ending right after a boundary
        assert exact.cached_tokens == 48
        whole = run(warm, shared[:64], max_tokens=3)  # one token must stay to be read for the logits
        assert whole.cached_tokens == 48
    finally:
        cold.stop()
        warm.stop()


def test_decoding_in_place_leaves_cached_and_given_states_alone():
    """float32 Mamba-2 decodes in place (numba step_): the batch owns its tensors, so neither the
    prefix cache's states nor a State the caller gave are written, and a second identical request
    (a cache hit) replies as the first did."""
    model = tiny_model(dtype=torch.float32)
    engine, cold = make_engine(model), make_engine(model, cache_bytes=0)
    try:
        prompt = torch.randint(0, 256, (32,)).tolist()  # ends on a boundary: its last state is cached
        first = run(engine, prompt, max_tokens=8)
        longer = run(engine, prompt + [1, 2], max_tokens=8)
        assert longer.cached_tokens == 32 and longer.ids == run(cold, prompt + [1, 2], max_tokens=8).ids
        given = first.state.clone()
        held = [dict(d) for d in given.layers]
        before = [{k: v.clone() for k, v in d.items()} for d in held]
        run(engine, [5, 6, 7], state=given, max_tokens=6)
        for d, b in zip(held, before):
            assert all(torch.equal(d[k], b[k]) for k in d)
    finally:
        engine.stop()
        cold.stop()


def test_prefix_cache_chain_and_lru_bound(model):
    cache = PrefixCache(4, max_bytes=3 * model.init_state(1).nbytes, salt="m")
    a, b = list(range(20)), list(range(10)) + [99] * 10
    ka, kb = cache.keys(a), cache.keys(b)
    assert len(ka) == 5 and ka[:2] == kb[:2] and ka[2] != kb[2]  # chunk 3 differs (tokens 8..11)
    assert PrefixCache(4, 1, salt="other model").keys(a)[0] != ka[0]
    states = [model.init_state(1) for _ in range(5)]
    for key, st in zip(ka, states):
        cache.insert(key, st)
    assert len(cache) == 3 and cache.nbytes <= cache.max_bytes  # the two oldest were evicted
    n, st = cache.lookup(a, ka)
    assert n == 16 and st is not states[3] and st.layers[0]["ssm"] is states[3].layers[0]["ssm"]  # shared
    assert cache.lookup(b, kb) == (0, None)


def test_cancelled_job_leaves_the_batch(model):
    engine = make_engine(model)
    try:
        long, short = Collector(), Collector()
        job = Job([1, 2, 3], None, SamplingParams(max_tokens=2000, temperature=0), long)
        engine.submit(job)
        engine.submit(Job([4, 5], None, SamplingParams(max_tokens=5, temperature=0), short))
        short.wait()
        job.cancel()
        for _ in range(200):
            if engine.stats()["decoding"] == 0:
                break
            threading.Event().wait(0.01)
        assert engine.stats()["decoding"] == 0
        assert not long.finished.is_set() and sum(isinstance(e, Token) for e in long.events) < 2000
    finally:
        engine.stop()


def test_stop_token_and_stop_string(model):
    prompt = [10, 20, 30]
    ids = reference(model, prompt, 12)
    engine = make_engine(model, stop_ids=(ids[4],))
    try:
        done = run(engine, prompt, max_tokens=12)
        assert done.finish_reason == "stop" and done.ids == ids[:5]  # the stop token was consumed too
        assert done.text == TOK.decode(ids[:4])
    finally:
        engine.stop()
    engine = make_engine(model)
    try:
        text = TOK.decode(ids)
        done = run(engine, prompt, max_tokens=12, stop=(text[6:8],))
        assert done.finish_reason == "stop" and done.text == text[:6] and len(done.ids) == 8
    finally:
        engine.stop()


def test_seeded_sampling_repeats(model):
    engine = make_engine(model)
    try:
        a, b = (run(engine, [1, 2], max_tokens=20, temperature=1.0, top_p=0.9, seed=3) for _ in range(2))
        c = run(engine, [1, 2], max_tokens=20, temperature=1.0, top_p=0.9, seed=4)
        assert a.ids == b.ids and a.ids != c.ids
    finally:
        engine.stop()


def test_text_stream_holds_back_partial_characters_and_stops():
    s = TextStream(TOK, stop=["END"])
    e_acute = list("é".encode())
    assert s.push(ord("a")) == ("a", False)
    assert s.push(e_acute[0]) == ("", False)  # half a character
    assert s.push(e_acute[1]) == ("é", False)
    assert s.push(ord("E")) == ("", False)  # may start "END"
    assert s.push(ord("x")) == ("Ex", False)
    for ch in "EN":
        assert s.push(ord(ch)) == ("", False)
    assert s.push(ord("D")) == ("", True)
    assert s.text == "aéEx" and s.flush() == ""
    t = TextStream(TOK, stop=["zz"])
    t.push(ord("q"))
    t.push(ord("z"))
    assert t.flush() == "z" and t.text == "qz"


def test_persisted_prefixes_outlive_the_process(model, tmp_path):
    from ssmkit.serve.store import SQLiteStore

    tokens = torch.randint(0, 256, (40,)).tolist()
    first = PrefixCache(16, 1 << 24, salt="m", store=SQLiteStore(tmp_path / "s.db"))
    keys = first.keys(tokens)
    st = model.init_state(1, dtype=torch.float64)
    model(torch.tensor([tokens[:32]]), state=st)
    first.insert(keys[1], st)
    restarted = PrefixCache(16, 1 << 24, salt="m", store=SQLiteStore(tmp_path / "s.db"))
    n, got = restarted.lookup(tokens, keys)
    assert n == 32 and all(torch.equal(a[k], b[k]) for a, b in zip(got.layers, st.layers) for k in a)
    assert len(restarted) == 1  # now in memory too
