"""Checks done before any work: every failure names the argument, what was expected, what came, and the fix."""

from __future__ import annotations

import torch

from .errors import ModelPairError
from .masks import mask_spec

SUPPORTED_ATTENTION = ("sdpa",)


def _is_causal_lm(model: object) -> bool:
    from transformers import PreTrainedModel

    return (
        isinstance(model, PreTrainedModel)
        and hasattr(model, "get_output_embeddings")
        and model.get_output_embeddings() is not None
        and not getattr(model.config, "is_encoder_decoder", False)
    )


def check_model(model: object, name: str) -> None:
    if not _is_causal_lm(model):
        raise ModelPairError(
            f"`{name}` must be a Hugging Face causal LM (a PreTrainedModel with an LM head, e.g. from "
            f"AutoModelForCausalLM.from_pretrained), got {type(model).__name__}"
        )
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in SUPPORTED_ATTENTION:
        raise ModelPairError(
            f"`{name}` uses attn_implementation={impl!r}; dustin rewrites SDPA attention. Reload it with "
            f"attn_implementation='sdpa' (or call {name}.set_attn_implementation('sdpa'))"
        )
    mask_spec(model, name)  # refuses layer kinds dustin cannot run; sliding windows are honoured
    check_rope(model, name)


def rope_parameters(model: torch.nn.Module) -> list[dict]:
    """The RoPE parameter sets of a transformers 5.x config (one, or one per layer type)."""
    params = getattr(model.config, "rope_parameters", None) or {}
    if "rope_type" in params or "rope_theta" in params:
        return [params]
    return [p for p in params.values() if isinstance(p, dict)]


def check_rope(model: torch.nn.Module, name: str) -> None:
    """``dynamic`` RoPE recomputes its frequencies in a data-dependent branch on the longest position each forward
    sees: a compiled dustin step cannot hold that branch, and its forwards see other lengths than transformers'
    generate, so the output could differ. (``longrope`` is checked per call: ``longrope_limit``.)"""
    for params in rope_parameters(model):
        if params.get("rope_type") == "dynamic":
            raise ModelPairError(
                f"`{name}` uses rope_type 'dynamic' (dynamic NTK scaling), whose frequencies depend on the longest "
                "position each forward sees; dustin's compiled steps cannot reproduce transformers' choice. Use the "
                "checkpoint with a static RoPE (e.g. rope_type 'default', 'linear', 'yarn' or 'llama3')"
            )


def longrope_limit(model: torch.nn.Module) -> int | None:
    """For ``longrope``: the length up to which every forward uses the short factors (transformers switches all of
    a forward's positions to the long factors once its longest position exceeds it). Within it dustin's steps and
    transformers' generate compute the same frequencies; past it they would pick differently, so a call must stay
    within it. None for other RoPE types."""
    limits = [params.get("original_max_position_embeddings")
              or getattr(model.config, "original_max_position_embeddings", None)
              for params in rope_parameters(model) if params.get("rope_type") == "longrope"]
    limits = [int(limit) for limit in limits if limit]
    return min(limits) if limits else None


def vocab_size(model: torch.nn.Module) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _special_ids(model: torch.nn.Module) -> dict[str, object]:
    cfg = model.config
    return {k: getattr(cfg, k, None) for k in ("bos_token_id", "eos_token_id")}


def check_pair(target: object, draft: object, tokenizer=None, draft_tokenizer=None,
               dtype: torch.dtype | None = None) -> None:
    """The pair must share a tokenizer, a dtype and a device. ``dtype``: both models will be cast to it (checked as
    they will be, without casting: nothing is changed before every check has passed)."""
    check_model(target, "target")
    check_model(draft, "draft")
    vt, vd = vocab_size(target), vocab_size(draft)
    if vd > vt:
        raise ModelPairError(
            f"draft vocabulary ({vd}) is larger than the target's ({vt}): the draft could propose tokens the target "
            "cannot score. Use a draft that shares the target's tokenizer"
        )
    st, sd = _special_ids(target), _special_ids(draft)
    clash = {k: (st[k], sd[k]) for k in st if st[k] is not None and sd[k] is not None and st[k] != sd[k]}
    if clash:
        raise ModelPairError(
            f"target and draft disagree on special tokens {clash} (target, draft): they do not share a tokenizer. "
            "Use a draft from the target's family"
        )
    if (tokenizer is None) != (draft_tokenizer is None):
        raise ModelPairError("pass both `tokenizer` and `draft_tokenizer` to compare them, or neither")
    if tokenizer is not None and tokenizer.get_vocab() != draft_tokenizer.get_vocab():
        raise ModelPairError(
            "`tokenizer` and `draft_tokenizer` have different vocabularies: speculative decoding needs one tokenizer "
            "for both models"
        )
    pt, pd = next(target.parameters()), next(draft.parameters())
    if pt.device != pd.device:
        raise ModelPairError(
            f"target is on {pt.device} but draft on {pd.device}: move both to one device (e.g. draft.to('{pt.device}'))"
        )
    if dtype is None and pt.dtype != pd.dtype:
        raise ModelPairError(
            f"target dtype {pt.dtype} differs from draft dtype {pd.dtype}: cast one (draft.to({pt.dtype})) or pass "
            f"dtype=... to dustin.compile to cast both"
        )


def check_dense_layers(target: torch.nn.Module, dense_layers) -> None:
    """``dense_layers`` (the config's, else the profile's) must be layers of the target."""
    layers = target.config.num_hidden_layers
    bad = sorted(i for i in set(dense_layers) if i >= layers)
    if bad:
        raise ValueError(f"dense_layers {bad} out of range: the target has {layers} layers (0..{layers - 1})")


def prompts_from(input_ids: object, attention_mask: object, vocab: int | None = None) -> list[torch.Tensor]:
    """The real tokens of each row (left padding removed). Raises on malformed input, and on token ids outside
    ``[0, vocab)`` (they would index past the embedding table inside a compiled graph)."""
    prompts = _strip_left_padding(input_ids, attention_mask)
    if vocab is not None:
        for b, row in enumerate(prompts):
            bad = (row < 0) | (row >= vocab)
            if bool(bad.any()):
                raise ValueError(
                    f"`input_ids` row {b} holds token id {int(row[bad][0])} outside the target's vocabulary "
                    f"[0, {vocab}): encode the prompt with the pair's tokenizer"
                )
    return prompts


def _strip_left_padding(input_ids: object, attention_mask: object) -> list[torch.Tensor]:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(
            f"`input_ids` must be an integer torch.Tensor [batch, length] (e.g. tokenizer(..., return_tensors='pt')"
            f".input_ids), got {type(input_ids).__name__}{'' if not isinstance(input_ids, torch.Tensor) else ' ' + str(input_ids.dtype)}"
        )
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
        attention_mask = attention_mask[None] if isinstance(attention_mask, torch.Tensor) else attention_mask
    if input_ids.dim() != 2 or input_ids.shape[0] == 0:
        raise ValueError(f"`input_ids` must have shape [batch >= 1, length], got {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("`input_ids` is empty: every prompt needs at least one token (e.g. the BOS token)")
    if attention_mask is None:
        return [row.long() for row in input_ids]
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"`attention_mask` must have the shape of `input_ids` {tuple(input_ids.shape)}, got {got}")
    mask = attention_mask.bool()
    prompts = []
    for b in range(input_ids.shape[0]):
        row = mask[b]
        if not bool(row.any()):
            raise ValueError(f"`attention_mask` row {b} is all zeros: prompt {b} is empty")
        first = int(row.long().argmax())
        if not bool(row[first:].all()):
            raise ValueError(
                f"`attention_mask` row {b} has padding after the prompt starts: dustin expects left padding "
                "(tokenizer.padding_side = 'left'), as transformers' generate does for decoder-only models"
            )
        prompts.append(input_ids[b, first:].long())
    return prompts
