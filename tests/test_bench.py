import json

import pytest

from benchmarks import bench


def test_flop_count_matches_the_lstm_formula():
    # 28 steps x 2 x 4H(28+H) forward, three times that with the backward pass.
    assert bench.lstm_train_flop_per_sample(128) == 3 * 28 * 2 * 4 * 128 * (28 + 128)
    assert bench.lstm_train_flop_per_sample(128) / 1e6 == pytest.approx(13.4, abs=0.05)


def test_smoke_mode_runs_every_section_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--smoke", "--json", str(out)])
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["smoke"] is True
    assert results["matmul_gflops"]["fp32"] > 0
    for name in ("default", "seed"):
        rates = results[name]["samples_per_s"]
        assert rates["project"] > 0 and rates["handwritten"] > 0 and rates["bare"] > 0
        assert results[name]["speedup_vs_handwritten"] == pytest.approx(rates["project"] / rates["handwritten"])
    assert results["seed"]["batch"] == 10 and results["seed"]["precision"] == "32-true"
    assert results["default"]["inference_samples_per_s"] > 0
    assert results["default"]["predict_files_per_s"] > 0
    full = results["full_fit"]
    assert full["peak_rss_mb"] > 100 and 0.0 <= full["test_acc"] <= 1.0
    assert "speedup" in printed and f"figures written to {out}" in printed


def test_existing_json_is_not_overwritten(tmp_path):
    out = tmp_path / "bench.json"
    out.write_text("keep me")
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--json", str(out)])
    assert out.read_text() == "keep me"
