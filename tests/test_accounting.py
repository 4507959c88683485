import pytest

from benchmarks.accounting import account, table

# Seconds per action as SimpleProfiler names them, for a 10-step epoch of 1 s.
DURATIONS = {
    "run_training_epoch": [1.0],
    "[_TrainingEpochLoop].train_dataloader_next": [0.001] * 10,
    "[LightningModule]RecurrentClassifier.transfer_batch_to_device": [0.0005] * 10,
    "[LightningDataModule]MNISTDataModule.on_after_batch_transfer": [0.0005] * 10,  # the shift
    "[LightningModule]RecurrentClassifier.optimizer_step": [0.08] * 10,
    "[Strategy]SingleDeviceStrategy.training_step": [0.03] * 10,
    "[Strategy]SingleDeviceStrategy.backward": [0.03] * 10,
    "[LightningModule]RecurrentClassifier.configure_gradient_clipping": [0.005] * 10,
    "[LightningModule]RecurrentClassifier.optimizer_zero_grad": [0.001] * 10,
    "[LightningModule]RecurrentClassifier.lr_scheduler_step": [0.0005] * 10,
    "[Callback]RecurrenceViews.on_train_batch_end": [0.02] + [0.0] * 9,
    "[Callback]LearningRateMonitor.on_train_batch_start": [0.0002] * 10,
    "[Callback]StopOnNonFinite.on_train_batch_end": [0.0001] * 10,
    "[Strategy]SingleDeviceStrategy.validation_step": [0.5, 0.02, 0.03],  # the sanity check's batch first
    "[Callback]RecurrenceViews.on_validation_epoch_end": [0.01],
    "save_checkpoint": [0.005],
    "[Callback]RecurrenceViews.on_fit_end": [0.2],
}


def test_the_parts_add_up_to_the_epoch_and_the_optimizer_step_is_what_the_closure_leaves():
    a = account(DURATIONS, epoch_seconds=1.0, steps=10, bare_step_s=0.07, recipe_step_s=0.075, sanity_batches=1)
    per_step = dict((label, ms) for label, ms, _ in a["per_step"])
    assert per_step["batch: next(), transfer and the data module's shift"] == pytest.approx(2.0)
    # optimizer_step holds the closure (training_step, backward, clipping, zero_grad) and Adam's own step.
    assert per_step["Adam step (fused) and the closure's hook dispatch"] == pytest.approx(80 - 30 - 30 - 5 - 1)
    assert per_step["train/gradient_by_step view (every 100 steps)"] == pytest.approx(2.0)
    others = next(ms for label, ms, _ in a["per_step"] if label.startswith("other callbacks"))
    assert others == pytest.approx(0.3)
    per_epoch = dict((label, s) for label, s, _ in a["per_epoch"])
    assert per_epoch["validation passes (5,000 digits)"] == pytest.approx(0.05)
    # Everything the profiler did not time is the loop's: the parts and the rest make the whole epoch.
    total = sum(ms for _, ms, _ in a["per_step"]) * 10 / 1e3 + sum(s for _, s, _ in a["per_epoch"])
    assert total == pytest.approx(1.0)
    assert sum(share for *_, share in a["per_step"]) + sum(share for *_, share in a["per_epoch"]) == pytest.approx(1.0)
    assert a["epoch_vs_bare"] == pytest.approx(0.7) and a["epoch_vs_recipe"] == pytest.approx(0.75)
    assert a["fit_end_s"] == pytest.approx(0.2)
    printed = table({"precision": "32-true", "threads": 1, **a})
    assert "epoch / bare 0.70x, epoch / bare with the recipe's step 0.75x" in printed and "| backward" in printed
    assert printed.count("\n") == len(a["per_step"]) + len(a["per_epoch"]) + 6  # title, header, 2 bare rows, 1 heading, fit end


def test_lightnings_simple_profiler_still_records_durations_by_action():
    # benchmarks/accounting.py reads SimpleProfiler.recorded_durations, undocumented (docs/layout.md, private APIs).
    from lightning.pytorch.profilers import SimpleProfiler

    profiler = SimpleProfiler()
    with profiler.profile("[Strategy]SingleDeviceStrategy.training_step"):
        pass
    durations = profiler.recorded_durations["[Strategy]SingleDeviceStrategy.training_step"]
    assert len(durations) == 1 and durations[0] >= 0
