"""eval --merge: runs measured separately become one set of tables and plots; mismatched settings are refused."""

from __future__ import annotations

import csv

import pytest

from dustin.eval_output import Results, merge

SETTINGS = dict(pair="p", profile="x.json", machine="cpu", device="cpu", dtype="float32", gamma=4, n_sink=4,
                window=64, draft_kv="auto", backend="eager")


def _run(path, context, speed, **changes):
    results = Results(path, {**SETTINGS, **changes})
    for arm, kind, budget, ratio in (("ar", "ar", "", 1.0), ("sparse@512", "sparse", 512, speed)):
        results.add("free", dict(context=context, arm=arm, kind=kind, budget=budget, selector="", new_tokens=8,
                                 agreement_with_ar=1.0, first_divergence="", equals_ar=True, tau=1.5,
                                 tokens_per_target_pass=1.5, target_passes=4, decode_tokens_per_s=2.0 * ratio,
                                 speedup_vs_ar=ratio, decode_s=1.0))
    results.add("fidelity", dict(context=context, budget=512, selector="dustin", agreement=0.9, ppl_ratio=1.01,
                                 kl=0.01, recovery_mean=0.8))
    return path


def test_merge_keeps_every_row_typed_and_draws_speedup_vs_context(tmp_path):
    pytest.importorskip("matplotlib")
    runs = [_run(tmp_path / "a", 4096, 0.5), _run(tmp_path / "b", 8192, 0.75)]
    merged = merge(runs, tmp_path / "out")
    assert [r["context"] for r in merged.rows["free"]] == [4096, 4096, 8192, 8192]
    assert merged.rows["free"][3]["speedup_vs_ar"] == 0.75 and merged.rows["free"][3]["equals_ar"] is True
    assert merged.rows["free"][0]["budget"] == ""
    with open(tmp_path / "out" / "free.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    written = {p.name for p in merged.plots()}
    assert written == {"fidelity.png", "free.png", "free_vs_context.png"}


def test_merge_refuses_runs_of_different_settings(tmp_path):
    runs = [_run(tmp_path / "a", 4096, 0.5), _run(tmp_path / "b", 8192, 0.7, dtype="bfloat16")]
    with pytest.raises(ValueError, match=r"settings differ \{'dtype': \('float32', 'bfloat16'\)\}"):
        merge(runs, tmp_path / "out")
