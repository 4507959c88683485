"""`mnist-rnn predict`: the official test set by default, the user's own image files with --data.predict_path."""

import csv

import pytest
import torch
from PIL import Image

from mnist_rnn.data.mnist_files import load_split
from tests.conftest import run_cli, run_main
from tests.test_images import write_huge_png

PROBABILITIES = [f"p{k}" for k in range(10)]
COLUMNS = ["path", "prediction", "confidence", *PROBABILITIES]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def render(digit: torch.Tensor, how: str) -> Image.Image:
    """One real MNIST test digit as a user might hand it over."""
    if how == "inverted":  # dark ink on light paper, 28x28 grey
        return Image.fromarray(255 - digit.numpy())
    if how == "enlarged":  # 200 px, off the centre of a larger light sheet
        sheet = Image.new("L", (420, 300), 255)
        sheet.paste(Image.fromarray(255 - digit.numpy()).resize((200, 200), Image.Resampling.BICUBIC), (30, 80))
        return sheet
    if how == "coloured":  # blue ink on cream paper, RGB, 84 px
        ink = (digit.float() / 255).unsqueeze(-1)
        paper, pen = torch.tensor([245.0, 235.0, 200.0]), torch.tensor([30.0, 40.0, 150.0])
        rgb = (paper * (1 - ink) + pen * ink).round().to(torch.uint8).numpy()
        return Image.fromarray(rgb, "RGB").resize((84, 84), Image.Resampling.BILINEAR)
    raise ValueError(how)


RENDERINGS = {"inverted": "png", "enlarged": "jpg", "coloured": "jpg"}
PER_RENDERING = 40


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """PER_RENDERING test digits in each rendering, as PNG and JPEG files named <rendering>_<index>_<label>."""
    folder = tmp_path_factory.mktemp("own_digits")
    images, labels = load_split("test")
    for how, suffix in RENDERINGS.items():
        for i in range(PER_RENDERING):
            render(images[i], how).save(folder / f"{how}_{i:02d}_{int(labels[i])}.{suffix}")
    return folder


def test_predict_own_digits_in_several_renderings(trained_ckpt, rendered, tmp_path):
    out = tmp_path / "own.csv"
    status, stdout, _ = run_main(
        "predict", "--ckpt_path", str(trained_ckpt), "--data.predict_path", str(rendered / "*_*"),
        "--predictions.output", str(out), cwd=tmp_path,
    )
    assert status == 0
    assert f"predictions for {len(RENDERINGS) * PER_RENDERING} images: {out}" in stdout
    header, *rows = read_csv(out)
    assert header == COLUMNS  # no label column: the user's images have none
    assert len(rows) == len(RENDERINGS) * PER_RENDERING
    assert sorted(row[0] for row in rows) == sorted(str(p) for p in rendered.iterdir())
    for how in RENDERINGS:
        mine = [row for row in rows if row[0].rsplit("/", 1)[1].startswith(how)]
        correct = sum(int(row[1]) == int(row[0].rsplit("_", 1)[1].split(".")[0]) for row in mine)
        # These renderings scored 96.6-97.2% over 500 test digits each with a 95.9% model (docs/predict.md).
        assert correct / len(mine) >= 0.85, f"{how}: {correct}/{len(mine)} correct"
    for row in rows:
        probs = [float(p) for p in row[3:]]
        assert sum(probs) == pytest.approx(1.0, abs=0.01)  # ten values rounded to 4 decimals in the CSV
        assert float(row[2]) == max(probs) and int(row[1]) == probs.index(max(probs))


def test_unreadable_files_are_named_and_skipped(trained_ckpt, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    images, _ = load_split("test")
    for i in range(3):
        Image.fromarray(255 - images[i].numpy()).save(folder / f"digit{i}.png")
    second_frame = Image.new("L", (28, 28))
    Image.fromarray(images[3].numpy()).save(folder / "frames.gif", save_all=True, append_images=[second_frame])
    (folder / "notes.txt").write_text("not a picture")
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes((folder / "digit0.png").read_bytes()[:-40])
    write_huge_png(folder / "huge.png", 20_000)
    out = tmp_path / "mixed.csv"
    status, stdout, stderr = run_main(
        "predict", "--ckpt_path", str(trained_ckpt), "--data.predict_path", str(folder),
        "--predictions.output", str(out), cwd=tmp_path,
    )
    assert status != 0
    for name, reason in [
        ("notes.txt", "not an image"), ("empty.png", "empty file"), ("truncated.png", "truncated"),
        ("huge.png", "too large"),
    ]:
        assert f"skipped {folder / name}: {reason}" in stderr
    assert "4 of 8 inputs could not be read" in stderr
    rows = read_csv(out)[1:]
    assert sorted(row[0].rsplit("/", 1)[1] for row in rows) == ["digit0.png", "digit1.png", "digit2.png", "frames.gif"]
    assert f"predictions for 4 images: {out}" in stdout


def test_test_set_predict_reports_the_accuracy_of_test(trained_ckpt, tmp_path):
    cli, _ = run_cli("test", "--ckpt_path", str(trained_ckpt), cwd=tmp_path)
    test_acc = cli.trainer.callback_metrics["test/acc"].item()
    status, stdout, _ = run_main("predict", "--ckpt_path", str(trained_ckpt), cwd=tmp_path)
    assert status == 0
    out = tmp_path / "predictions" / "predictions_0.csv"
    header, *rows = read_csv(out)
    assert header == [*COLUMNS, "label"]
    assert len(rows) == 10_000 and rows[0][0] == "test#0" and rows[0][-1] == "7"
    correct = sum(row[1] == row[-1] for row in rows)
    assert correct / 10_000 == pytest.approx(test_acc, abs=1e-6)  # the same count: float32 rounding only
    assert f"accuracy: {test_acc:.4f} ({correct}/10000)" in stdout
    assert test_acc > 0.9  # this fixture's model (LSTM 64, 400 batches) scores about 96% (docs/export.md)


def test_default_output_never_overwrites(trained_ckpt, tmp_path):
    Image.new("L", (28, 28)).save(tmp_path / "blank.png")
    for _ in range(2):
        status, stdout, _ = run_main(
            "predict", "--ckpt_path", str(trained_ckpt), "--data.predict_path", "blank.png", cwd=tmp_path
        )
        assert status == 0
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["predictions_0.csv", "predictions_1.csv"]
    assert "predictions for 1 images: predictions/predictions_1.csv" in stdout


@pytest.mark.parametrize(
    "path,message",
    [("empty_folder", "is an empty folder"), ("*.png", "matches no file"), ("nowhere/x.png", "does not exist")],
)
def test_nothing_to_predict_is_a_one_line_error(trained_ckpt, tmp_path, path, message):
    (tmp_path / "empty_folder").mkdir()
    status, stdout, stderr = run_main(
        "predict", "--ckpt_path", str(trained_ckpt), "--data.predict_path", path, cwd=tmp_path
    )
    assert status == 2
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"mnist-rnn: error: --data.predict_path {path} {message}")
    assert "Traceback" not in stderr
    assert not (tmp_path / "predictions").exists()


def test_an_output_that_cannot_be_written_fails_before_predicting(trained_ckpt, tmp_path):
    Image.new("L", (28, 28)).save(tmp_path / "blank.png")
    (tmp_path / "a_file").write_text("in the way")
    status, stdout, stderr = run_main(
        "predict", "--ckpt_path", str(trained_ckpt), "--data.predict_path", "blank.png",
        "--predictions.output", "a_file/out.csv", cwd=tmp_path,
    )
    assert status == 2
    assert "mnist-rnn: error: cannot write predictions to a_file/out.csv" in stderr
    assert "Traceback" not in stderr
    assert "predictions for" not in stdout
