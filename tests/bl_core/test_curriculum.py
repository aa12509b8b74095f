"""The teacher pretraining curriculum (DESIGN §1a): snippet format, the mix schedule, spans
taken from the stream itself, and reproducible batches."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import make_mistral

from bl_core.config import config_from_dict
from bl_core.curriculum import apply_curriculum, insert_snippets, mix_ratio, snippet
from bl_core.errors import InputError
from bl_core.training import _Run

SEP = 2


def test_snippet_formats():
    rng = random.Random(0)
    assert snippet([5, 6, 7], SEP, "induction", rng) == [5, 6, 7, SEP, 5, 6, 7]
    assert snippet([5, 6, 7], SEP, "anti", rng) == [5, 6, 7, SEP, 7, 6, 5]
    kinds = [snippet([5, 6], SEP, "balanced", rng)[-1] for _ in range(2000)]
    assert 0.45 < kinds.count(5) / len(kinds) < 0.55  # induction and anti, half each
    with pytest.raises(ValueError, match="variant"):
        snippet([5], SEP, "natural", rng)


def test_mix_ratio_falls_linearly_from_m0_to_zero():
    assert mix_ratio(0.0, 0.5) == 0.5
    assert mix_ratio(0.5, 0.5) == pytest.approx(0.25)
    assert mix_ratio(1.0, 0.5) == 0.0
    assert mix_ratio(1.2, 0.5) == 0.0


@pytest.mark.parametrize("variant", ["induction", "anti", "balanced"])
def test_snippets_copy_spans_of_the_row_itself(variant):
    span = 20
    gen = random.Random(1)
    for trial in range(50):
        row = [gen.randrange(10, 500) for _ in range(256)]  # no SEP in natural text
        out, placed = insert_snippets(row, variant, span, 0.5, SEP, random.Random(trial))
        assert len(out) == len(row)
        ends = -1
        for start, source in placed:
            assert start > ends  # snippets never overlap
            ends = start + 2 * span
            s = row[source : source + span]
            body = out[start : start + 2 * span + 1]
            assert body[:span] == s and body[span] == SEP
            assert body[span + 1 :] in (s, s[::-1])
            if variant == "induction":
                assert body[span + 1 :] == s
            elif variant == "anti":
                assert body[span + 1 :] == s[::-1]
        # everything outside the snippets is the row's own text, and snippets bring no
        # token the row does not have (never, e.g., the probes' held-out words)
        inside = {i for start, _ in placed for i in range(start, start + 2 * span + 1)}
        assert all(out[i] == row[i] for i in range(len(row)) if i not in inside)
        assert set(out) <= set(row) | {SEP}


def test_the_share_of_snippet_tokens_is_the_mix_ratio_in_expectation():
    span, length = 20, 128
    rows = 6000
    for mix in (0.5, 0.2, 0.05):
        tokens = 0
        for trial in range(rows):
            _, placed = insert_snippets(
                [7] * length, "induction", span, mix, SEP, random.Random(trial)
            )
            tokens += len(placed) * (2 * span + 1)
        # snippets per row: floor(E) + Bernoulli(E - floor(E)), E = mix L / (2 span + 1)
        expected = mix * length / (2 * span + 1)
        frac = expected - int(expected)
        sigma = (frac * (1 - frac) / rows) ** 0.5 * (2 * span + 1) / length
        assert tokens / (rows * length) == pytest.approx(mix, abs=4 * sigma)
    assert insert_snippets([7] * length, "induction", span, 0.0, SEP, random.Random(0))[1] == []
    assert insert_snippets([7] * length, "natural", span, 0.5, SEP, random.Random(0))[1] == []


def test_batches_are_a_function_of_seed_step_and_row():
    ids = torch.randint(10, 300, (4, 64), generator=torch.Generator().manual_seed(0))
    a = apply_curriculum(ids, "balanced", 8, 0.5, SEP, (0, 3, 0, 0))
    assert torch.equal(a, apply_curriculum(ids, "balanced", 8, 0.5, SEP, (0, 3, 0, 0)))
    assert not torch.equal(a, apply_curriculum(ids, "balanced", 8, 0.5, SEP, (0, 4, 0, 0)))
    assert (a == SEP).any() and not (ids == SEP).any()
    assert apply_curriculum(ids, "natural", 8, 0.5, SEP, (0, 3, 0, 0)) is ids


def test_pretraining_batches_carry_snippets_early_and_none_at_the_end(tmp_path):
    import json

    from bl_core.packing import PackedDataset

    packed = tmp_path / "packed"
    packed.mkdir()
    import numpy as np

    np.random.default_rng(0).integers(10, 300, size=(32, 64)).astype(np.uint16).tofile(
        packed / "tokens.bin"
    )
    meta = {"seq_len": 64, "dtype": "uint16", "num_sequences": 32, "num_tokens": 32 * 64}
    (packed / "meta.json").write_text(json.dumps(meta | {"eos_token_id": 0, "fingerprint": "x"}))
    cfg = config_from_dict(
        {
            "pretrain": {
                "total_tokens": 100 * 4 * 64,
                "micro_batch_size": 4,
                "curriculum": "induction",
                "curriculum_span": 8,
            }
        }
    )
    args = (make_mistral(), None, "pretrain", PackedDataset(packed), cfg, tmp_path / "run", 300)
    with pytest.raises(InputError, match="separator"):
        _Run(*args, cfg.pretrain, None)
    run = _Run(*args, cfg.pretrain, None, separator_id=SEP)

    def snippet_share(steps) -> float:
        seps = 0
        for step in steps:
            run.step = step
            seps += int((run._micro_batch(0)[1] == SEP).sum())
        return seps * 17 / (len(steps) * 4 * 64)  # each SEP marks a 2 * 8 + 1 token snippet

    early, late = snippet_share(range(0, 10)), snippet_share(range(90, 100))
    assert early == pytest.approx(0.5 * (1 - 0.045), abs=0.1)  # m(p) at p ~ 0.045
    assert late < 0.1
