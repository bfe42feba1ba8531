"""transformers' stock caches under DustinBackend: refused with a hint that says what to use (strict), or run as
traced with nothing rewritten (strict=False), equal to the stock decode loop."""

from __future__ import annotations

import pytest
import torch
from transformers import StaticCache

from dustin.passes import DustinBackend, PassError, RewritePlan
from helpers import tiny_model


def _decode(model, backend, prompt, steps):
    """A stock decode loop: prefill eagerly, then one token per compiled step on a StaticCache."""
    cache = StaticCache(config=model.config, max_cache_len=64)

    def step(ids, position):
        return model(input_ids=ids, cache_position=position, past_key_values=cache, use_cache=True).logits

    run = torch.compile(step, backend=backend, fullgraph=True) if backend is not None else step
    with torch.no_grad():
        logits = model(input_ids=prompt, past_key_values=cache, use_cache=True).logits
        tokens = [logits[:, -1].argmax(-1)]
        for i in range(steps):
            position = torch.tensor([prompt.shape[1] + i])
            tokens.append(run(tokens[-1][:, None], position)[:, -1].argmax(-1))
    return torch.stack(tokens, 1)


def test_stock_static_cache_is_refused_with_what_to_use():
    model = tiny_model("llama")
    backend = DustinBackend(RewritePlan(attention="sparse"), lambda: {"indices": torch.zeros(1, 4, dtype=torch.long)},
                            name="stock", inductor=False)
    prompt = torch.randint(3, 100, (1, 9), generator=torch.Generator().manual_seed(0))
    with pytest.raises(Exception) as caught:
        _decode(model, backend, prompt, 2)
    error = caught.value.inner_exception if hasattr(caught.value, "inner_exception") else caught.value
    assert isinstance(error, PassError)
    message = str(error)
    assert "unsupported mask" in message and "StaticCache" in message and "dustin.compile" in message


def test_stock_static_cache_with_strict_false_runs_unrewritten():
    model = tiny_model("llama", seed=1)
    prompt = torch.randint(3, 100, (1, 11), generator=torch.Generator().manual_seed(1))
    backend = DustinBackend(RewritePlan(attention="dense"), lambda: {}, name="stock", inductor=False, strict=False)
    got = _decode(model, backend, prompt, 5)
    assert torch.equal(got, _decode(model, None, prompt, 5))
    assert backend.reports[-1].rewritten == 0 and backend.reports[-1].count("declined") == 2
