import json

import pytest

from benchmarks import bench


def test_smoke_mode_runs_every_section_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--smoke", "--json", str(out)])
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["smoke"] is True
    # Each figure was measured (a rate above zero), whatever this machine's speed.
    assert results["matmul_gflops"]["fp32"] > 0
    for name in ("default", "seed"):
        rates = results[name]["samples_per_s"]
        assert rates["project"] > 0 and rates["handwritten"] > 0 and rates["bare"] > 0
    assert results["seed"]["batch"] == 10 and results["seed"]["precision"] == "32-true"
    assert results["default"]["inference_samples_per_s"] > 0
    assert results["default"]["predict_files_per_s"] > 0
    full = results["full_fit"]
    # Importing the CUDA build of torch with lightning alone takes about 830 MB (measured by the bench).
    assert full["peak_rss_mb"] > 100 and "test_acc" in full
    assert "speedup" in printed and f"figures written to {out}" in printed


def test_existing_json_is_not_overwritten(tmp_path):
    out = tmp_path / "bench.json"
    out.write_text("keep me")
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--json", str(out)])
    assert out.read_text() == "keep me"
