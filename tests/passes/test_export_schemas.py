"""The ops an exported graph may hold have schemas Torch-TensorRT's automatic plugin generation accepts.

Its rules (torch_tensorrt.dynamo.conversion.plugins, 2.14): arguments are Tensor, int, float, bool or str only
(no ``float?``, ``Tensor?``, ``int[]``), tensors come first, and the op does not mutate its inputs. This check
mirrors them, so a schema change cannot silently break the plugin path; ``score_heads_t`` also equals the list form.
"""

import math

import pytest
import torch

import dustin.kernels  # noqa: F401
from dustin.kernels import score_heads
from dustin.passes import EXPORT_OPS

PLAIN = {"Tensor", "int", "float", "bool", "str"}


def plugin_rule_violations(op: torch._ops.OpOverload) -> list[str]:
    schema = op._schema
    problems = []
    kinds = [str(arg.type) for arg in schema.arguments]
    problems += [f"argument `{a.name}` is {k}" for a, k in zip(schema.arguments, kinds) if k not in PLAIN]
    first_other = next((i for i, k in enumerate(kinds) if k != "Tensor"), len(kinds))
    problems += [f"tensor `{a.name}` after a non-tensor" for a in schema.arguments[first_other:] if str(a.type) == "Tensor"]
    problems += [f"mutates `{a.name}`" for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    returns = [str(r.type) for r in schema.returns]
    if returns != ["Tensor"]:
        problems.append(f"returns {returns or 'nothing'} (one Tensor expected)")
    return problems


@pytest.mark.parametrize("op", EXPORT_OPS, ids=lambda op: op.name())
def test_export_ops_follow_plugin_rules(op):
    assert plugin_rule_violations(op) == []


def test_the_check_catches_each_rule():
    ops = torch.ops.dustin
    assert "argument `heads` is List[int]" in plugin_rule_violations(ops.score_heads.default)
    assert "argument `scale` is Optional[float]" in plugin_rule_violations(ops.score_heads.default)
    assert "mutates `out`" in plugin_rule_violations(ops.score_heads_into.default)
    assert any("returns" in p for p in plugin_rule_violations(ops.score_heads_into.default))


@pytest.mark.parametrize("heads", [[0], [5, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
def test_score_heads_t_equals_score_heads(heads):
    generator = torch.Generator().manual_seed(len(heads))
    q, k = torch.randn(2, 8, 3, 32, generator=generator), torch.randn(2, 2, 64, 32, generator=generator)
    seq_lens = torch.tensor([50, 17])
    scale = 1 / math.sqrt(q.shape[-1])
    got = torch.ops.dustin.score_heads_t(q, k, seq_lens, torch.tensor(heads), scale)
    torch.testing.assert_close(got, score_heads(q, k, seq_lens, heads))
    torch.library.opcheck(torch.ops.dustin.score_heads_t.default, (q, k, seq_lens, torch.tensor(heads), 0.3))
