"""Multi-process DDP on CPU (gloo), through the CLI, as a user would launch it."""

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_rnn.run.checkpoints import read_checkpoint
from tests.conftest import TINY, subprocess_env

# One pytest-xdist worker runs them all: the module's fit is made once, and no two DDP runs share the cores.
pytestmark = pytest.mark.xdist_group("ddp")

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
LAST = Path("runs/tiny/version_0/checkpoints/last.ckpt")


def fit(cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mnist_rnn", "fit", "-c", TINY, *flags],
        cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ddp")
    result = fit(
        cwd, *DDP, "--data.batch_size", "64",
        "--trainer.callbacks+=tests.helpers.RecordTrainingSamples", f"--trainer.callbacks.out_dir={cwd / 'seen'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result


def test_ranks_see_disjoint_halves_in_a_new_order_every_epoch(ddp_run):
    cwd, _ = ddp_run
    seen = [torch.load(cwd / "seen" / f"rank{r}.pt") for r in (0, 1)]  # {epoch: pixel sums of its samples}
    assert sorted(seen[0]) == sorted(seen[1]) == [0, 1]  # tiny.yaml: two epochs
    for epoch in (0, 1):
        rank0, rank1 = seen[0][epoch], seen[1][epoch]
        assert len(rank0) == len(rank1) == 20 * 64  # limit_train_batches x per-rank batch
        assert not set(rank0.tolist()) & set(rank1.tolist())
    for rank in (0, 1):
        assert not torch.equal(seen[rank][0], seen[rank][1])  # the order changes between epochs


def test_only_rank_zero_writes_one_run(ddp_run):
    cwd, result = ddp_run
    assert [p.name for p in (cwd / "runs" / "tiny").iterdir()] == ["version_0"]
    run = cwd / "runs" / "tiny" / "version_0"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert result.stdout.count("best checkpoint:") == 1


# One optimizer step in fp32 with plain SGD (its step is proportional to the gradient, unlike Adam's
# first step) and no clipping (which would hide the gradient's scale).
ONE_STEP = [
    "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.precision", "32-true",
    "--trainer.gradient_clip_val", "null", "--model.optimizer", "sgd", "--model.scheduler", "none",
    "--model.lr", "0.5", "--threads", "1", "--data.batch_size", "32",
]  # fmt: skip


def test_one_two_process_step_equals_one_single_process_step_on_the_same_samples(tmp_path):
    from mnist_rnn.model.classifier import RecurrentClassifier

    result = fit(
        tmp_path, *DDP, *ONE_STEP,
        "--trainer.callbacks+=tests.helpers.RecordOneStep", f"--trainer.callbacks.folder={tmp_path / 'step'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    start, end = (torch.load(tmp_path / "step" / f"{name}.pt") for name in ("start", "end"))
    batches = [torch.load(tmp_path / "step" / f"batch_rank{r}.pt") for r in (0, 1)]
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert len(images) == 64 and len(set(images.double().sum(dim=(1, 2)).tolist())) == 64  # two disjoint halves

    # The same step in one process, on the 64 samples both ranks saw together, from the same weights.
    settings = read_checkpoint(tmp_path / LAST)["hyper_parameters"]
    model = RecurrentClassifier(**{k: v for k, v in settings.items() if not k.startswith("_")})
    model.load_state_dict(start)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, nesterov=True)
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    moved = max((end[k] - start[k]).abs().max().item() for k in start if k.startswith("net."))
    assert moved > 1e-3  # the step did move the weights, so a wrong gradient scale would show
    for key, value in model.net.state_dict().items():
        key = f"net.{key}"
        # fp32 sums taken in another order differ in the last bits (seen: 3e-8); unaveraged
        # gradients or other samples move the weights by about as much as the step itself (seen: 0.07).
        torch.testing.assert_close(end[key], value, rtol=0, atol=1e-5, msg=key)


STOP_AT_STEP = 5


# SIGINT takes the same path through StopOnSignal as SIGTERM; it runs with the slow tests (about a
# minute of the default suite's on 2 cores).
@pytest.mark.parametrize(
    "signum", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_to_the_launching_process_stops_every_rank_at_one_step_and_resumes(tmp_path, signum):
    # Dropout between two layers, so that each rank's random generators matter for the weights.
    flags = [*DDP, "--data.batch_size", "32", "--model.num_layers", "2", "--model.dropout", "0.3"]
    # The signal to the launching process (rank 0) as the batch of step 6 starts (SendSignal: a
    # deterministic moment, where a kill from outside lands wherever a busy machine has the run then).
    sender = json.dumps({"class_path": "tests.interrupts.SendSignal", "init_args": {"step": STOP_AT_STEP, "signum": int(signum)}})
    args = [
        sys.executable, "-m", "mnist_rnn", "fit", "-c", TINY, *flags, f"--trainer.callbacks+={sender}",
        "--trainer.callbacks+=tests.interrupts.RecordStop", f"--trainer.callbacks.folder={tmp_path / 'stops'}",
    ]  # fmt: skip
    stopped = subprocess.run(args, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    err = stopped.stderr
    assert stopped.returncode == 128 + signum, err[-3000:]

    stopped_at = {p.name: int(p.read_text()) for p in (tmp_path / "stops").glob("rank*")}
    # Every rank stopped after the batch under way when the signal came, step 6: promptly, and together.
    assert stopped_at == {"rank0": STOP_AT_STEP + 1, "rank1": STOP_AT_STEP + 1}, stopped_at
    step = stopped_at["rank0"]
    saved = read_checkpoint(tmp_path / LAST)
    assert saved["global_step"] == step
    match = re.search(rf"^mnist-rnn: stopped by {signum.name} in epoch 1, after step {step}; saved (\S+)$", err, re.M)
    assert match and Path(match[1]) == LAST, err[-3000:]
    resume = re.search(r"^resume with: mnist-rnn (.*)$", err, re.M)
    assert resume, err[-3000:]

    import shlex

    finished = subprocess.run(
        [sys.executable, "-m", "mnist_rnn", *shlex.split(resume[1])],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    final = read_checkpoint(tmp_path / LAST)
    assert final["global_step"] == 2 * 20  # tiny.yaml: 2 epochs of 20 steps
    if signum == signal.SIGTERM:
        # The same run without the stop: the same weights mean every rank carried on with its own
        # remaining batches and its own random generators.
        (tmp_path / "uninterrupted").mkdir()
        reference = fit(tmp_path / "uninterrupted", *flags)
        assert reference.returncode == 0, reference.stderr[-3000:]
        expected = read_checkpoint(tmp_path / "uninterrupted" / LAST)["state_dict"]
        for name, tensor in expected.items():
            assert torch.equal(final["state_dict"][name], tensor), name
        # And each rank kept its own share of the interrupted epoch's accuracy sums (RandomState):
        # with rank 0's loaded on both, epoch 1's train/acc came out 0.1273 instead of 0.1367 here.
        from tests.soak import scalars

        got, want = (scalars(folder / LAST.parent.parent)["train/acc"] for folder in (tmp_path, tmp_path / "uninterrupted"))
        assert got == want


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_nodes(cwd: Path, *flags: str) -> list[tuple[int, str]]:
    """`mnist-rnn fit` on two torchrun "nodes" of one process each on this machine, started as docs/scale.md
    tells users to (one launcher per node, its node rank, the first node's address): each launcher's exit
    status and output."""
    port, logs, launchers = free_port(), [cwd / f"node{rank}.log" for rank in (0, 1)], []
    for rank, log in enumerate(logs):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
            "--master_addr", "127.0.0.1", "--master_port", str(port),
            "-m", "mnist_rnn", "fit", "-c", TINY, "--trainer.num_nodes", "2", "--trainer.devices", "1",
            "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", *flags,
        ]  # fmt: skip
        with log.open("w") as out:
            launchers.append(subprocess.Popen(command, cwd=cwd, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT))
    try:
        return [(launcher.wait(timeout=600), log.read_text()) for launcher, log in zip(launchers, logs)]
    finally:
        for launcher in launchers:
            launcher.kill()  # only one left running after the other failed


@pytest.mark.slow
def test_two_torchrun_nodes_write_one_run_stop_on_sigterm_to_each_launcher_and_resume_exactly(tmp_path):
    # Dropout between two layers, so that each rank's random generators matter for the weights.
    flags = ["--data.batch_size", "32", "--model.num_layers", "2", "--model.dropout", "0.3"]
    # Each rank signals its own node's launcher at step 5, as a scheduler ending the job signals every node;
    # torchrun passes SIGTERM on to its worker, which stops after the batch rank 0 is on when its signal arrives.
    # Paced at 0.1 s a step, the 34 steps after the signal leave it over 3 s to arrive before the run ends.
    pace = json.dumps({"class_path": "tests.interrupts.Pace", "init_args": {"seconds": 0.1}})
    stopper = ["--trainer.callbacks+=tests.interrupts.SignalLauncher", f"--trainer.callbacks+={pace}"]
    (node0, log0), (node1, log1) = two_nodes(tmp_path, *flags, *stopper)
    assert node0 != 0 and node1 != 0, log0[-3000:]  # torchrun ends with its SignalException
    stop = re.search(rf"^mnist-rnn: stopped by SIGTERM in epoch 1, after step (\d+); saved {LAST}$", log0, re.M)
    assert stop, log0[-3000:]
    assert "mnist-rnn: stopped" not in log1  # only the first node's rank 0 reports
    step = int(stop[1])
    assert 5 < step < 40 and read_checkpoint(tmp_path / LAST)["global_step"] == step
    assert [p.name for p in (tmp_path / "runs" / "tiny").iterdir()] == ["version_0"]
    assert len(list((tmp_path / LAST.parent.parent).glob("events.out.tfevents.*"))) == 1

    results = two_nodes(tmp_path, *flags, "--ckpt_path", "last")
    assert [status for status, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert f"resuming runs/tiny/version_0 from {LAST} (epoch 1, after step {step})" in results[0][1]
    assert [p.name for p in (tmp_path / "runs" / "tiny").iterdir()] == ["version_0"]

    (tmp_path / "uninterrupted").mkdir()
    results = two_nodes(tmp_path / "uninterrupted", *flags)
    assert [status for status, _ in results] == [0, 0], results[0][1][-3000:]
    from tests.soak import assert_same_state

    got, expected = read_checkpoint(tmp_path / LAST), read_checkpoint(tmp_path / "uninterrupted" / LAST)
    for key in ("epoch", "global_step", "state_dict", "optimizer_states", "lr_schedulers", "loops", "MNISTDataModule"):
        assert_same_state(got[key], expected[key], key)


@pytest.mark.gpu
def test_gpu_fit_keeps_the_dataset_on_the_device(tmp_path):
    from tests.conftest import run_cli

    cli, _ = run_cli("fit", "-c", TINY, "--trainer.accelerator", "gpu", "--trainer.devices", "1", cwd=tmp_path)
    assert cli.datamodule.datasets["train"].images.device.type == "cuda"
    assert cli.trainer.precision in ("bf16-mixed", "32-true")
    # The same tiny run on the CPU reaches val/acc 0.23 after its 40 steps (seed 42); a GPU run that
    # learned nothing would sit near chance, 0.10.
    assert cli.trainer.callback_metrics["val/acc"].item() > 0.18
