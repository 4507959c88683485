"""The machine's choices: precision and threads."""

import torch

from mnist_rnn import hardware


def test_the_private_bf16_probes_still_exist():
    # hardware.native_bf16_cpu relies on these private torch helpers (checked with torch 2.14.1).
    assert callable(torch.cpu._is_avx512_bf16_supported) and callable(torch.cpu._is_amx_tile_supported)
    assert isinstance(hardware.native_bf16_cpu(), bool)


def test_small_batches_train_in_fp32_on_one_thread():
    assert hardware.auto_precision("cpu", 10) == "32-true"
    assert hardware.auto_threads(10) == 1


def test_large_batches_use_bf16_only_where_the_cpu_has_it():
    expected = "bf16-mixed" if hardware.native_bf16_cpu() else "32-true"
    assert hardware.auto_precision("cpu", 128) == expected


def test_784_step_sequences_train_in_fp32():
    # docs/precision.md: bf16 was only shown to lose nothing on the 28-step rows model.
    for sequence in ("pixels", "permuted"):
        assert hardware.auto_precision("cpu", 128, sequence) == "32-true"
