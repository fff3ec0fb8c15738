"""Text generation with a recurrent State: prefill (optionally in chunks), then one `step` per token.

    out = generate(model, input_ids, max_new_tokens=32)            # greedy, prompt + new tokens
    for tok in generate(model, ids, stream=True): ...               # tok: (batch,) as it comes
    st = model.init_state(1)
    generate(model, ids, state=st); generate(model, next_ids, state=st)   # one transcript

Decoding calls every layer's `step`, so a token costs the same at context 10 and 100,000 for SSM
layers (attention layers read their growing KV cache). Prefill reads the prompt in chunks of
`prefill_chunk_size` tokens (default PREFILL_CHUNK) carrying the State, so the intermediates (the
projections' outputs, the scan's buffers) are bounded by the chunk, not the prompt; the result is the
one-call prefill's (the chunking law every mixer obeys).

Contract with `state=`: when generation returns (or a streamed token is handed out), the State has
consumed the prompt and every token returned so far, padding after a stop token included; so
calling generate again with the next prompt continues the same transcript, in this process or in
another one after `state.save(path)` / `State.load(path)`.

Decoding writes the State in place (`model.step_`), on tensors that generate owns: a given State is
first given private copies of its tensors, so tensors the caller held before are never written.
While a stream is being consumed, the State's tensors are generate's working buffers, updated as
each token is decoded: take `state.clone()` to keep a snapshot of one moment.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ssmkit._checks import check_tensor

PREFILL_CHUNK = 2048  # tokens per prefill call when not given: long enough that per-call overhead is
# small, short enough that a 130M model's intermediates stay well under its weights


def sample_next(
    logits: torch.Tensor,
    seen: torch.Tensor | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token per row from logits (b, V). seen (b, V) bool marks tokens penalized for repetition.

    Repetition penalty as in CTRL: a seen token's positive logit is divided by the penalty, a negative
    one multiplied. Then greedy argmax, or temperature, top-k, top-p (nucleus) and a draw.
    """
    logits = logits.float()
    if seen is not None and repetition_penalty != 1.0:
        penalized = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keeps at least the top one
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def generate(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    attention_mask: torch.Tensor | None = None,
    prefill_chunk_size: int | None = None,
    state=None,
    stream: bool = False,
    cuda_graphs: bool | None = None,
):
    """Generate up to `max_new_tokens` after `input_ids` (b, l) with an SSMForCausalLM.

    eos_token_id: stop token(s); a row that produced one gets `pad_token_id` (default: the first
        stop token) afterwards, and generation ends when every row has stopped.
    seed: seeds a private torch.Generator for sampling (the global RNG is untouched).
    attention_mask (b, l): 1 = token, 0 = left padding; each row is generated as if it were alone.
    prefill_chunk_size: read the prompt in chunks of this many tokens (bounded memory); None:
        PREFILL_CHUNK.
    state: an `ssmkit.State` (batch b) to continue; it is updated in place (see the module docstring).
    stream: return an iterator yielding the new tokens, one (b,) tensor per step.
    cuda_graphs: decode through a CUDA graph of the model's step, captured once per batch size
        (ssmkit.inference.graphs); None: when input_ids are on CUDA and the state has a fixed size.
    Returns prompt and new tokens, (b, l + n_new), unless stream=True.
    """
    attention_mask = _check_options(input_ids, max_new_tokens, do_sample, temperature, top_p, top_k,
                                    repetition_penalty, cuda_graphs, prefill_chunk_size, attention_mask)
    b, L = input_ids.shape
    if state is not None:
        model._check_state(state, b)
    stops = None
    if eos_token_id is not None:
        ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        stops = torch.tensor(ids, dtype=torch.long, device=input_ids.device)
        pad_token_id = ids[0] if pad_token_id is None else pad_token_id
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    sampling = dict(
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        generator=generator,
    )

    if b == 0:  # no sequences: nothing to run, the (empty) rows still have the requested width
        empty = input_ids.new_zeros(0, L + max_new_tokens)
        return iter(()) if stream else empty
    tokens = _decode(
        model,
        input_ids,
        max_new_tokens,
        attention_mask,
        prefill_chunk_size,
        state,
        stops,
        pad_token_id,
        sampling,
        input_ids.device.type == "cuda" if cuda_graphs is None else cuda_graphs,
    )
    if stream:
        return tokens
    new = list(tokens)
    if not new:
        return input_ids
    return torch.cat([input_ids, torch.stack(new, 1).to(input_ids.dtype)], dim=1)


def _check_options(input_ids, max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty,
                   cuda_graphs, prefill_chunk_size, attention_mask):
    """generate's argument checks, all before any work; returns the attention mask as bool (or None)."""
    check_tensor("input_ids", input_ids, ndim=2, dtypes=(torch.int64, torch.int32), legend="(batch, length)")
    b, L = input_ids.shape
    if L == 0:
        raise ValueError("input_ids must hold at least one token per row (the prompt)")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0 or repetition_penalty <= 0:
        raise ValueError(f"top_k must be >= 0 and repetition_penalty > 0, got {top_k}, {repetition_penalty}")
    if cuda_graphs and input_ids.device.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs input_ids on a CUDA device, got {input_ids.device}")
    if prefill_chunk_size is not None and (
        not isinstance(prefill_chunk_size, int) or prefill_chunk_size <= 0
    ):
        raise ValueError(f"prefill_chunk_size must be a positive int or None, got {prefill_chunk_size!r}")
    if attention_mask is not None:
        check_tensor("attention_mask", attention_mask, shape=(b, L), legend="(batch, length)")
        attention_mask = attention_mask.to(torch.bool)
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("attention_mask: every row needs its last position to be a token (left padding)")
    return attention_mask


def _decode(
    model, input_ids, max_new_tokens, mask, chunk, state, stops, pad_token_id, sampling, graphs
) -> Iterator:
    """The generator behind `generate`: prefill, then sample / step / yield. Grad mode is switched
    off around each model call, never across a `yield` (it is thread-wide state). With `graphs`, the
    steps after the first run through a captured CUDA graph whose state buffers the State points to
    while decoding; it gets tensors of its own back when decoding ends."""
    b, L = input_ids.shape
    own_state = state is None
    if max_new_tokens == 0 and own_state:
        return
    if own_state:
        state = model.init_state(b, device=input_ids.device)
    chunk = chunk or PREFILL_CHUNK
    with torch.no_grad():
        for a in range(0, L, chunk):
            m = None if mask is None else mask[:, a : a + chunk]
            logits = model(
                input_ids[:, a : a + chunk], state=state, attention_mask=m, num_last_tokens=1
            ).logits[:, -1]
    if max_new_tokens == 0:
        return
    if not own_state:
        state.update_(state.clone())  # decode in place on private tensors: the caller's are never written
    seen = None
    if sampling["repetition_penalty"] != 1.0:
        weight = torch.ones_like(input_ids) if mask is None else mask.to(input_ids.dtype)
        counts = torch.zeros(b, logits.shape[-1], dtype=input_ids.dtype, device=input_ids.device)
        seen = counts.scatter_add_(1, input_ids, weight) > 0  # (b, V)
    finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    rows = torch.arange(b, device=input_ids.device)
    runner = None
    try:
        for i in range(max_new_tokens):
            tok = sample_next(logits, seen, **sampling)  # (b,)
            if stops is not None:
                tok = torch.where(finished, torch.full_like(tok, pad_token_id), tok)
                finished = finished | torch.isin(tok, stops)
            if seen is not None:
                seen[rows, tok] = True
            last = i == max_new_tokens - 1 or bool(finished.all())
            if not (last and own_state):
                runner, logits = _step(model, tok, state, runner, graphs)  # state consumes tok
            yield tok
            if last:
                return
    finally:
        if runner is not None:
            if not own_state:
                state.layers = [{k: v.clone() for k, v in d.items()} for d in runner.layers]
            runner.release()


def _step(model, tok, state, runner, graphs):
    """One decoding step; the first with `graphs` decides (on the state's shapes) whether a graph follows."""
    if runner is not None:
        return runner, runner(tok)
    if not graphs:
        with torch.no_grad():
            return None, model._step_(tok, state.layers)  # in place, on generate's private tensors
    before = state.layers
    logits = model.step(tok, state)
    from ssmkit.inference.graphs import fixed_size, static_step

    if fixed_size(before, state.layers):
        runner = static_step(model, state, capture=tok.device.type == "cuda")
        if runner is not None:
            state.layers = [dict(d) for d in runner.layers]
    return runner, logits
