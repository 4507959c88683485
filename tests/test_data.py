
import pytest
import torch

from mnist_rnn.data.datamodule import MNISTDataModule, split_indices
from mnist_rnn.data.mnist_files import load_split
from mnist_rnn.data.normalization import normalize
from mnist_rnn.errors import ConfigError, DatasetError
from tests.conftest import write_fake_mnist


@pytest.fixture(scope="module")
def mnist():
    dm = MNISTDataModule(batch_size=128)
    dm.setup("fit")
    dm.setup("test")
    return dm


def test_embedded_splits_shapes_and_dtypes(mnist):
    assert len(mnist.datasets["train"]) == 55_000
    assert len(mnist.datasets["val"]) == 5_000
    assert len(mnist.datasets["test"]) == 10_000
    images, labels = next(iter(mnist.train_dataloader()))
    assert images.shape == (128, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (128,) and labels.dtype == torch.int64
    assert 0 <= labels.min() and labels.max() <= 9  # the ten digits


def test_training_images_are_normalized(mnist):
    images = mnist.datasets["train"].images
    # MNIST's constants are over all 60,000 training images; over the 55,000 kept: mean -0.0002, std 0.99999.
    assert abs(images.mean().item()) < 0.01
    assert abs(images.std().item() - 1.0) < 0.01


def test_evaluation_loaders_drop_no_sample(mnist):
    assert sum(len(y) for _, y in mnist.val_dataloader()) == 5_000
    assert sum(len(y) for _, y in mnist.test_dataloader()) == 10_000
    assert sum(len(y) for _, y in mnist.train_dataloader()) == 55_000


def test_test_split_is_the_official_one(mnist):
    images, labels = load_split("test")
    assert torch.equal(mnist.datasets["test"].labels, labels)
    assert torch.equal(mnist.datasets["test"].images, normalize(images))
    # The first official test digit is a 7, the second a 2.
    assert labels[:2].tolist() == [7, 2]


def test_split_is_disjoint_covering_and_reproducible():
    train, val = split_indices(60_000, 5_000, seed=0)
    assert len(val) == 5_000 and len(train) == 55_000
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(60_000))
    again_train, again_val = split_indices(60_000, 5_000, seed=0)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)
    _, other_val = split_indices(60_000, 5_000, seed=1)
    assert not torch.equal(val, other_val)


def test_datamodule_uses_the_seeded_split(mnist):
    images, labels = load_split("train")
    _, val = split_indices(60_000, 5_000, seed=0)
    assert torch.equal(mnist.datasets["val"].labels, labels[val])
    assert torch.equal(mnist.datasets["val"].images, normalize(images[val]))


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("layout", ["flat", "MNIST/raw"])
def test_data_dir_reads_idx_files(tmp_path, gz, layout):
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    written = write_fake_mnist(folder, n_train=300, n_test=50, gz=gz)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=50, batch_size=32)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.datasets["train"]) == 250 and len(dm.datasets["val"]) == 50
    assert torch.equal(dm.datasets["test"].labels, written["t10k"][1])
    # data.mean/std auto: another dataset is normalized with its own training split's statistics.
    train_idx, _ = split_indices(300, 50, seed=0)
    train_pixels = written["train"][0][train_idx].double() / 255
    assert dm.hparams.mean == pytest.approx(train_pixels.mean().item())
    assert dm.hparams.std == pytest.approx(train_pixels.std().item())
    assert torch.equal(dm.datasets["test"].images, normalize(written["t10k"][0], dm.hparams.mean, dm.hparams.std))
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 28, 28) and labels.shape == (32,)


def test_data_dir_that_does_not_exist(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match=r"nope does not exist.*--data.download true"):
        dm.setup("fit")


def test_data_dir_without_idx_files(tmp_path):
    (tmp_path / "notes.txt").write_text("no data here")
    dm = MNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(DatasetError, match="holds no MNIST-format IDX files"):
        dm.setup("test")


def test_data_dir_with_a_truncated_file(tmp_path):
    write_fake_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    dm = MNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte: not a valid MNIST-format IDX images file"):
        dm.setup("test")


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"eval_batch_size": -1}, {"std": 0.0}, {"mean": 1.5}, {"mean": "median"}, {"max_shift": 9},
     {"steps_per_execution": 0}],  # fmt: skip
)
def test_invalid_data_settings_are_rejected(kwargs):
    with pytest.raises(ConfigError, match=f"^data.{next(iter(kwargs))} must be "):
        MNISTDataModule(**kwargs)


def test_a_refused_data_setting_names_its_range_and_a_loaded_data_module_holds_plain_numbers():
    # The annotations' types (mnist_rnn/run/ranges.py), which the CLI's parser applies, refuse from Python too.
    with pytest.raises(ConfigError) as refused:
        MNISTDataModule(mean=2.0)
    assert str(refused.value) == "data.mean must be a ClosedUnitInterval (float restricted to be ≥0 and ≤1) or 'auto', got 2.0"
    # Through jsonargparse (the checkpoint names Lightning's instantiate_module), as plain numbers: see test_model.py.
    from mnist_rnn.commands.bundled import BUNDLED_CKPT

    dm = MNISTDataModule.load_from_checkpoint(BUNDLED_CKPT)
    assert dm.hparams.mean == 0.1307 and dm.hparams.batch_size == 128
    assert all(type(v) in (int, float, str, bool, type(None)) for v in dm.hparams.values()), dm.hparams


def test_val_size_out_of_range(tmp_path):
    write_fake_mnist(tmp_path, n_train=100)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=100)
    with pytest.raises(ConfigError, match=r"val_size must lie in 1\.\.99"):
        dm.setup("fit")


def test_shift_moves_each_digit_within_bounds_and_fills_background():
    from mnist_rnn.data.batches import shift_images

    torch.manual_seed(0)
    images = torch.zeros(64, 28, 28)
    images[:, 10, 12] = 1.0
    shifted = shift_images(images, 2, background=-0.4)
    offsets = set()
    for image in shifted:
        (row, col), = (image == 1.0).nonzero().tolist()
        dy, dx = row - 10, col - 12
        assert abs(dy) <= 2 and abs(dx) <= 2  # max_shift 2
        offsets.add((dy, dx))
        # Rows/columns pulled in from outside the frame are background, nothing else changes.
        assert (image == -0.4).sum() == 28 * abs(dy) + 28 * abs(dx) - abs(dy) * abs(dx)
    assert len(offsets) > 10  # a fresh offset per image


def test_shift_augments_training_batches_only(tmp_path):
    from tests.conftest import TINY, run_cli

    cli, _ = run_cli("fit", "-c", TINY, "--data.max_shift", "2", "--trainer.max_epochs", "1", cwd=tmp_path)
    dm = cli.datamodule
    batch = next(iter(dm.val_dataloader()))
    cli.trainer.training = False
    cli.trainer.validating = True
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)[0], batch[0])
    cli.trainer.training = True
    assert not torch.equal(dm.on_after_batch_transfer(batch, 0)[0], batch[0])
    with pytest.raises(ConfigError, match="max_shift"):
        MNISTDataModule(max_shift=-1)
