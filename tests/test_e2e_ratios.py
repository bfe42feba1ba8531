"""benchmarks/e2e.py: the drift guard (ar interleaved between arms, each arm's ratio to the ar measured around it),
the @ref tag and where --out puts the run's files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from e2e import interleave_ar, output_stem, vs_ar  # noqa: E402


def test_interleave_puts_ar_around_every_arm_once():
    assert interleave_ar(["dense", "sparse@q8", "hf-assisted"]) == "ar,dense,ar,sparse@q8,ar,hf-assisted,ar"
    assert interleave_ar(["ar", "dense", "ar", "exact"]) == "ar,dense,ar,exact,ar"  # the ar already there count
    assert interleave_ar(["ar"]) == "ar"


def test_vs_ar_divides_by_the_mean_of_the_nearest_ar_on_each_side_of_the_same_setting():
    rows = [dict(context=c, batch=1, arm=a, decode_tps=t) for c, a, t in
            [(4, "ar", 2.0), (4, "dense", 3.0), (8, "ar", 10.0), (4, "ar", 4.0), (4, "x", 5.0), (4, "ar", 6.0),
             (4, "hf-ar", 1.5), (8, "dense", 5.0), (16, "dense", 1.0)]]
    vs_ar(rows)
    got = [r["vs_ar"] for r in rows]
    # dense@4 sits between ar 2 and ar 4 (the 8k ar between them is another setting); x between 4 and 6; hf-ar after
    # the last ar only; each ar against its neighbours; 16k has no ar at all.
    assert got == [2.0 / 4.0, 3.0 / 3.0, "", 4.0 / 4.0, 5.0 / 5.0, 6.0 / 4.0, 1.5 / 6.0, 5.0 / 10.0, ""]


def test_ref_tag_runs_an_arm_on_the_torch_references_and_restores_the_switch(monkeypatch):
    from e2e import arm_config, cpu_kernels

    from dustin.kernels import cpu_ext

    monkeypatch.setenv(cpu_ext.ENV, "fused")
    assert arm_config("sparse@ref@b1024") == ({"budget": 1024, "mode": "sparse"}, True)
    with cpu_kernels("sparse@ref"):
        assert cpu_ext.choice() == "reference"
    assert cpu_ext.choice() == "fused"
    with cpu_kernels("sparse@b1024"):
        assert cpu_ext.choice() == "fused"
    monkeypatch.delenv(cpu_ext.ENV)
    with cpu_kernels("dense@ref"):
        assert cpu_ext.choice() == "reference"
    assert cpu_ext.choice() == "auto"


def test_vs_ar_by_round_is_the_median_of_the_ratios_to_each_rounds_ar():
    from e2e import vs_ar_by_round

    rows = [dict(arm=a, decode_tps=t, note="n") for a, t in [("ar", 3.0), ("dense", 4.0), ("hf-assisted", 1.0)]]
    # The ar drifts from 2 to 4 over the rounds; dense tracks it at 1.5x except in one round: the per-round ratios are
    # 1.5, 1.5 and 1.0 (median 1.5), where the medians' ratio (3.5 / 3) would say 1.17.
    vs_ar_by_round(rows, {"ar": [2.0, 3.0, 4.0], "dense": [3.0, 4.5, 4.0]})
    assert [r["vs_ar"] for r in rows] == [1.0, 1.5, 1.0 / 3.0]
    assert rows[1]["note"] == "n; vs_ar by round 1.50 1.50 1.00"
    assert rows[2]["note"] == "n"  # run once, outside the rounds: against the median ar


def test_planner_table_holds_what_the_planner_measured_and_prints_it():
    from e2e import _planner_costs, _planner_table

    from dustin.adaptive import GammaPlanner

    planner = GammaPlanner(gamma_max=2)
    planner.record_cost("draft", 1, 4096, 0.1)
    planner.record_cost("verify", 2, 4096, 0.3)
    planner.record_acceptance(2, [2])
    table = _planner_table(planner, 4096)
    assert table["context"] == 4096 and len(table["acceptance"]) == 2
    assert table["ms_by_rows"]["draft"][1] == 100.0
    assert table["ms_by_rows"]["verify"][2] == 300.0  # every measured (kind, rows) at this context's bucket
    text = _planner_costs(table)
    assert "draft        ms by rows" in text and "2:300" in text


def test_planner_ceiling_solves_for_the_acceptance_a_target_needs():
    from planner_ceiling import acceptance_needed, planner_from

    # One draft position: a draft step of 100 ms, a 1- or 2-row verification of 300 ms, ar at 1 / 0.3 s. gamma = 1
    # commits 1 + a tokens per 0.4 s: 1.2x ar (4 tok/s) needs a = 0.6; 2x ar (6.67 tok/s) is out of reach (a <= 1).
    table = dict(context=4096, acceptance=[0.5], ms_by_rows={"draft": {"0": 0.0, "1": 100.0},
                                                             "verify": {"1": 300.0, "2": 300.0}})
    assert abs(planner_from(table).predict(4096)[1] - 1.5 / 0.4) < 1e-9
    assert abs(acceptance_needed(table, 1.2 / 0.3, "verify") - 0.6) < 1e-6
    assert acceptance_needed(table, 2.0 / 0.3, "verify") is None


def test_planner_ceiling_compares_per_row_rates_with_ar_per_row(tmp_path, capsys):
    """The planner's rates are per row, the csv's tokens/s count every row of the batch: at batch 4 an ar of 8 tok/s
    is 2 per row, and a gamma = 0 step of 0.5 s (2 tok/s per row) is 1.00x of it, not 0.25x."""
    import json

    from planner_ceiling import main

    table = dict(context=8192, acceptance=[0.5], ms_by_rows={"draft": {"0": 0.0, "1": 100.0},
                                                             "verify": {"1": 500.0, "2": 600.0}})
    (tmp_path / "p.json").write_text(json.dumps({"8192x4 dense": table}))
    (tmp_path / "r.csv").write_text("context,batch,arm,decode_tps\n8192,4,ar,8.0\n")
    assert main([str(tmp_path / "p.json"), str(tmp_path / "r.csv"), "--targets", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "ar 8.00 tok/s (2.00 per row)" in out and "| 0 | 0 | 500 | 1.00 | 500 | 2.00 | 1.00x |" in out


def test_out_is_a_directory_of_stamped_files_or_names_them():
    assert output_stem("benchmarks/results", "20261207-051415") == "benchmarks/results/e2e-20261207-051415"
    assert output_stem("docs/speed/e2e_8k_b4.csv", "20261207-051415") == "docs/speed/e2e_8k_b4"
    assert output_stem("run.csv", "x") == "run"


def test_prompts_from_another_start_are_the_rows_further_in(monkeypatch):
    """``--prompt-start k``: row b is the prompt that row k + b is from start 0 (another text, same settings)."""
    import texts

    paragraphs = [" ".join(f"p{i}w{j}" for j in range(i % 5 + 3)) for i in range(70)]
    monkeypatch.setattr(texts.assets, "text", lambda name: "\n\n".join(paragraphs))

    class WordTokenizer:
        def __call__(self, text):
            return type("Encoding", (), {"input_ids": [hash(w) % 1000 for w in text.split()]})()

    tok = WordTokenizer()
    base = texts.long_prompts(tok, 40, texts.ROW_STARTS)
    assert len({tuple(row) for row in base}) == texts.ROW_STARTS and all(len(row) == 40 for row in base)
    for first in range(texts.ROW_STARTS - 2):
        assert texts.long_prompts(tok, 40, 2, first) == base[first : first + 2]
    with pytest.raises(ValueError, match="starting places"):
        texts.long_prompts(tok, 40, 1, texts.ROW_STARTS)
