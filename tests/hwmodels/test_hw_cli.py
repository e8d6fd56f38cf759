"""`mirrorstream hw ...`: JSON shapes and one-line errors with exit status 2."""
import json
import os
import subprocess
import sys

import pytest

from hwmodels.calibration import measurements_path
from mirrorstream.cli import main


def run_json(capsys, *argv):
    assert main(["hw", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_latency_json(capsys):
    out = run_json(capsys, "latency", "--device", "h100-sxm", "--model", "qwen3-32b", "--tokens", "8",
                   "--context", "1024", "--tp", "8", "--layers", "0:32")
    assert set(out["breakdown"]) == {"compute", "memory", "overhead", "communication"}
    assert out["seconds"] == pytest.approx(sum(out["breakdown"].values()))
    assert out["bound"] in ("memory", "compute") and out["layers"] == [0, 32] and out["classifier"] is False


def test_latency_text_and_spellings(capsys):
    assert main(["hw", "latency", "--device", "M2-Ultra-ANE", "--model", "Qwen3-0.6B", "--tokens", "8",
                 "--tp", "8", "--sharding", "spd"]) == 0
    out = capsys.readouterr().out
    assert "m2-ultra-ane" in out and "communication" in out and "-bound" in out


def test_scale_option_is_inverse(capsys):
    base = run_json(capsys, "latency", "--device", "a100-80gb", "--model", "vicuna-7b", "--tokens", "4")
    fast = run_json(capsys, "latency", "--device", "a100-80gb", "--model", "vicuna-7b", "--tokens", "4", "--scale", "2")
    assert fast["seconds"] == pytest.approx(base["seconds"] / 2)


def test_list_and_show_json(capsys):
    listing = run_json(capsys, "list")
    assert {"h100-sxm", "m2-ultra-ane", "cpu"} <= {d["device"] for d in listing["devices"]}
    assert "qwen3-32b" in {m["model"] for m in listing["models"]}
    assert "thunderbolt-5" in {link["link"] for link in listing["links"]}
    assert {"cpu-refimpl", "tgi-codellama34b-a100"} <= {c["calibration"] for c in listing["calibrations"]}
    shown = run_json(capsys, "show", "H100")
    assert shown["catalog"] == "device" and shown["kind"] == "gpu" and shown["peak_flops"]["fp16"] == 989.4e12
    assert "datasheet" in shown["sources"]["memory_bandwidth"]
    assert run_json(capsys, "show", "llama-3.1-8b")["params"] == 8_030_261_248


def test_list_and_show_text(capsys):
    assert main(["hw", "list"]) == 0
    assert "h100-sxm" in capsys.readouterr().out
    assert main(["hw", "show", "m2-ultra-gpu"]) == 0
    assert "27.2 TFLOPS" in capsys.readouterr().out


def test_calibrate_json(capsys, tmp_path):
    output = tmp_path / "fit.json"
    out = run_json(capsys, "calibrate", str(measurements_path("tgi_codellama34b")), "--free", "pass_overhead_s",
                   "--shared", "link_alpha_s", "--output", str(output))
    assert out["summary"]["points"] == 6 and out["summary"]["max_abs_loo_error"] < 0.14
    assert set(out["params"]) == {"a100-80gb", "h100-sxm"}
    assert json.loads(output.read_text())["params"] == out["params"]
    fitted = run_json(capsys, "latency", "--device", f"h100@{output}", "--model", "codellama-34b", "--context", "100")
    assert fitted["seconds"] == pytest.approx(out["points"][3]["fitted_s"], rel=1e-9)


def test_step_json_adds_up_and_matches_the_api(capsys):
    import hwmodels
    out = run_json(capsys, "step", "--method", "eagle", "--device", "a100-80gb", "--model", "vicuna-7b",
                   "--tokens", "26", "--context", "512", "--draft-rows", "4,4,8,8,3")
    assert out["seconds"] == pytest.approx(sum(out["parts"].values()))
    assert out["seconds"] == pytest.approx(hwmodels.step_seconds("eagle", "vicuna-7b", "a100-80gb", 26, 512,
                                                                 draft_rows=(4, 4, 8, 8, 3)), rel=1e-12)
    assert out["ratio_to_ar"] == pytest.approx(out["seconds"] / out["ar_seconds"]) and out["ratio_to_ar"] > 1.2


@pytest.mark.parametrize("argv, match", [
    (["step", "--method", "eagle", "--device", "a100", "--model", "vicuna-7b", "--draft-rows", "4,x"],
     "--draft-rows: expected comma-separated"),
    (["step", "--method", "sd", "--device", "a100", "--model", "vicuna-7b", "--draft-rows", "1"], "--draft-model:"),
    (["step", "--method", "medusa", "--device", "a100", "--model", "vicuna-7b", "--heads", "0"], "heads: medusa needs"),
    (["latency", "--device", "tpu-v9", "--model", "qwen3-32b"], "unknown device 'tpu-v9' (known: a100-40gb"),
    (["latency", "--device", "h100", "--model", "gpt-5"], "unknown model 'gpt-5' (known: codellama-34b"),
    (["latency", "--device", "h100", "--model", "qwen3-32b", "--tokens", "0"], "tokens: must be >= 1"),
    (["latency", "--device", "h100", "--model", "qwen3-32b", "--context", "-5"], "context: must be >= 0"),
    (["latency", "--device", "h100", "--model", "qwen3-32b", "--scale", "-2"], "--scale: must be a positive"),
    (["latency", "--device", "h100", "--model", "qwen3-32b", "--layers", "0:65"], "outside model qwen3-32b"),
    (["latency", "--device", "h100", "--model", "qwen3-32b", "--layers", "3"], "--layers: expected a:b"),
    (["latency", "--device", "m2-ultra-ane", "--model", "qwen3-0.6b", "--dtype", "fp32"], "does not support fp32"),
    (["show", "nothing-at-all"], "unknown device"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, match):
    assert main(["hw", *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


HEADER = "device,model,n,L,B,G,seconds\n"


@pytest.mark.parametrize("data, match", [
    (b"device,model,n\nh100,x,1\n", "missing column"),
    (HEADER.encode() + b"h100-sxm,qwen3-32b,1,0,1,1,abc\n", "line 2: column seconds is not a number"),
    (HEADER.encode() + b"# a comment\nh100-sxm,qwen3-32b,1,0,1,1,1e300\n", "line 3: column seconds = 1e300 is beyond"),
    (HEADER.encode() + b"h100-sxm,qwen3-32b,1,0,1,1,0.02\nh100-sxm,qwen3-32b,1,0,1,1,0.\xe9\n", "line 3: not UTF-8"),
    (HEADER.encode() + b"h100-sxm,qwen3-32b,1,0,1,1,0.02\n", "1 measurement(s) for 2 free parameter(s)"),
    (HEADER.encode() + b"h100-sxm,qwen3-32b,1,0,1,1,0.03\nh100-sxm,qwen3-32b,1,900,1,1,0.031\n"
     b"h100-sxm,qwen3-32b,1,2000,1,1,0.032\nh100-sxm,qwen3-32b,1,3000,1,1,0.033\na100,qwen3-32b,1,0,1,1,0.05\n",
     "device a100-80gb has 1 measurement(s) for its 2 parameter(s)"),
    (HEADER.encode() + b"h100-sxm,qwen3-32b,1,0,1,1,0.02\nh100-sxm,qwen3-32b,1,100,1,1,0.0201\n"
     b"h100-sxm,nomodel,1,0,1,1,0.02\n", "line 4: model: unknown model 'nomodel'"),
    # Qwen3-32B in fp16 is 65.5 GB: reading it in 1 ms needs 65 TB/s, 20x the H100's 3.35 TB/s.
    (HEADER.encode() + b"h100-sxm,qwen3-32b,1,0,1,1,0.001\nh100-sxm,qwen3-32b,1,2048,1,1,0.00101\n"
     b"h100-sxm,qwen3-32b,1,4096,1,1,0.00102\n", "needs memory_efficiency = "),
])
def test_bad_calibration_csv(capsys, tmp_path, data, match):
    path = tmp_path / "bad.csv"
    path.write_bytes(data)
    assert main(["hw", "calibrate", str(path)]) == 2
    err = capsys.readouterr().err
    assert match in err and str(path) in err and err.count("\n") == 1


def test_calibration_table_that_is_a_fifo_is_refused_at_once(capsys, tmp_path):
    path = tmp_path / "pipe.csv"
    os.mkfifo(path)
    assert main(["hw", "calibrate", str(path)]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_calibration_csv_with_a_byte_order_mark_is_read(capsys, tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeff".encode() + measurements_path("tgi_codellama34b").read_bytes())
    out = run_json(capsys, "calibrate", str(path), "--free", "pass_overhead_s", "--shared", "link_alpha_s")
    assert out["summary"]["points"] == 6


def test_one_row_fits_no_parameter_but_reports_its_error(capsys, tmp_path):
    """With no free parameter, one point is a prediction: its error is reported, not a 0.0 % fit."""
    path = tmp_path / "one.csv"
    path.write_text(HEADER + "h100-sxm,qwen3-32b,1,0,1,1,0.030\n")
    out = run_json(capsys, "calibrate", str(path), "--free", "")
    assert out["summary"]["max_abs_error"] > 0.1


def test_console_script_exit_status():
    proc = subprocess.run([sys.executable, "-m", "mirrorstream.cli", "hw", "latency", "--device", "nope",
                           "--model", "qwen3-32b"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "unknown device" in proc.stderr and not proc.stdout
