"""Local checkpoints, a tokenizer, streaming and a ragged batch — the way a pipeline holds its models.

    python examples/local_checkpoints.py [--backend eager] [--keep DIR]

It saves a small Llama pair (random weights; the draft is the target's first layer, a layer-skip draft) and a character-level tokenizer to a directory, loads them back with
`from_pretrained(..., attn_implementation="sdpa")` as you would your own checkpoints, streams one generation with
`transformers.TextStreamer`, and decodes a left-padded batch. The text is gibberish (random weights); the check at
the end is not: dustin's output equals the target's own `generate`. The same directories work with the CLI:
`python -m dustin generate --target DIR/target --draft DIR/draft --prompt "..." --max-new-tokens 32`.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast, TextStreamer

import dustin

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?'"


def character_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer built in memory (no downloads): <pad>=0, <s>=1, </s>=2, <unk>=3, then letters."""
    symbols = ["<pad>", "<s>", "</s>", "<unk>", *ALPHABET]
    tok = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left")


def save_pair(root: Path) -> tuple[Path, Path]:
    tokenizer = character_tokenizer()
    shape = dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                 pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    target = AutoModelForCausalLM.from_config(LlamaConfig(num_hidden_layers=4, **shape))
    # Large token embeddings make a random model behave like a smooth n-gram model, so that a draft made of its
    # first layer agrees with it often enough to show acceptance (unscaled random models agree by chance only).
    target.model.embed_tokens.weight.data *= 20
    draft = copy.deepcopy(target)
    draft.model.layers = draft.model.layers[:1]
    draft.config.num_hidden_layers = 1
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "target", root / "draft"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("inductor", "eager"), default="inductor")
    parser.add_argument("--keep", type=Path, help="save the checkpoints here (default: a temporary directory)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        target_dir, draft_dir = save_pair(root)
        print(f"saved the pair under {root}")
        target = AutoModelForCausalLM.from_pretrained(target_dir, attn_implementation="sdpa")
        draft = AutoModelForCausalLM.from_pretrained(draft_dir, attn_implementation="sdpa")
        tokenizer = AutoTokenizer.from_pretrained(target_dir)
        draft_tokenizer = AutoTokenizer.from_pretrained(draft_dir)

        # Passing both tokenizers lets dustin check that the pair really shares one.
        model = dustin.compile(target, draft, tokenizer=tokenizer, draft_tokenizer=draft_tokenizer,
                               backend=args.backend)

        prompt = tokenizer("it is a truth universally acknowledged, that a single man", return_tensors="pt")
        print("streamed (random weights: the text is gibberish; the equality check at the end is what counts):")
        model.generate(prompt.input_ids, max_new_tokens=40, streamer=TextStreamer(tokenizer, skip_prompt=True))

        batch = tokenizer(["emma woodhouse, handsome, clever, and rich", "the family of dashwood", "persuasion"],
                          return_tensors="pt", padding=True)  # left padding, as for generate
        out = model.generate(batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=30,
                             pad_token_id=tokenizer.pad_token_id)
        with torch.no_grad():
            expected = target.generate(**batch, max_new_tokens=30, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
        for row in tokenizer.batch_decode(out.sequences, skip_special_tokens=True):
            print("batch:", row)
        print(out.stats.table())
        if not torch.equal(out.sequences, expected):
            raise SystemExit("dustin's dense speculative decoding must equal the target's greedy generate")
        print("equal to target.generate(): True")


if __name__ == "__main__":
    main()
