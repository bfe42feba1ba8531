"""``python -m dustin demo`` end to end, in a subprocess: the real-pair path on a tiny pair saved to a temp dir
(``--pair-dir``, offline), and ``--tiny``."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from transformers import AutoTokenizer

from helpers import tiny_model, word_tokenizer

PASSAGE = ("it is a truth universally acknowledged, that a single man in possession of a good fortune, must be "
           "in want of a wife. however little known the feelings or views of such a man may be on his first "
           "entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families.")


def _demo(*args, cwd):
    # A wide terminal: each continuation fits on one line of its column.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "COLUMNS": "2000"}
    return subprocess.run([sys.executable, "-m", "dustin", "demo", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def _saved_pair(tmp_path):
    tokenizer = word_tokenizer()
    target, draft = tiny_model("qwen2", seed=0), tiny_model("qwen2", seed=1, num_hidden_layers=1)
    target.lm_head.weight.data[target.config.eos_token_id] = 0  # no early eos: a continuation that can differ
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(tmp_path / "pair" / name)
        tokenizer.save_pretrained(tmp_path / "pair" / name)
    text = tmp_path / "passage.txt"
    text.write_text(PASSAGE)
    return target, str(tmp_path / "pair"), str(text)


def _table(stdout: str) -> dict[str, str]:
    """The result table's rows by arm name."""
    lines = stdout[stdout.index("decode tok/s"):].splitlines()[1:]
    return {line.split()[0]: line for line in lines if line.split()}


def test_demo_on_a_local_pair(tmp_path):
    """Four arms on one passage; ar's continuation is the target's greedy one; dense and exact agree with it."""
    target, pair_dir, text = _saved_pair(tmp_path)
    result = _demo("--pair-dir", pair_dir, "--text-file", text, "--context", "60", "--max-new-tokens", "12",
                   "--budget", "24", "--n-sink", "2", "--window", "6", "--backend", "eager", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = _table(result.stdout)
    assert list(rows) == ["ar", "dense", "sparse", "exact"]
    assert rows["dense"].endswith(" 1.000") and rows["exact"].endswith(" 1.000")
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(pair_dir, "target"))
    ids = tokenizer(PASSAGE, return_tensors="pt").input_ids[:, :60]
    with torch.no_grad():
        expected = target.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    text = tokenizer.decode(expected[0, 60:], skip_special_tokens=True)
    assert len(text.strip()) >= 6  # a real continuation
    ar_column = next(line for line in result.stdout.splitlines() if "-ar-" in line)
    first_line = result.stdout.splitlines()[result.stdout.splitlines().index(ar_column) + 1]
    assert first_line.startswith(" ".join(text.split()))


def test_demo_refuses_a_context_longer_than_the_text(tmp_path):
    _, pair_dir, text = _saved_pair(tmp_path)
    result = _demo("--pair-dir", pair_dir, "--text-file", text, "--context", "5000", "--max-new-tokens", "4",
                   "--backend", "eager", cwd=tmp_path)
    assert result.returncode != 0
    tokens = len(AutoTokenizer.from_pretrained(os.path.join(pair_dir, "target"))(PASSAGE).input_ids)
    assert f"--context 5000: {text} has only {tokens} tokens; use a smaller --context" in result.stderr


def test_tiny_demo_checks_ar_against_target_generate(tmp_path):
    result = _demo("--tiny", "--context", "96", "--max-new-tokens", "8", "--batch", "2", "--backend", "eager",
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ar == target.generate (greedy): True" in result.stdout
    assert list(_table(result.stdout)) == ["ar", "dense", "sparse", "exact"]


def test_batch_is_for_the_tiny_demo(tmp_path):
    result = _demo("--batch", "2", cwd=tmp_path)
    assert result.returncode != 0 and "--batch is for --tiny" in result.stderr
