"""Convert musicnn's TensorFlow checkpoints from the ``musicnn==0.1.0`` wheel into the safetensors
files ``engine.model.musicnn`` loads. Run once, in a venv with TensorFlow (never needed at run time)::

    pip download musicnn==0.1.0 --no-deps -d /tmp/musicnn
    python3.11 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.15.1 safetensors
    /tmp/tfvenv/bin/python -m tools.musicnn_convert /tmp/musicnn/musicnn-0.1.0-py3-none-any.whl

The variables are named by creation order in musicnn/models.py (``conv2d``, ``conv2d_1``, …;
``batch_normalization``, …); :data:`LAYERS` maps each to the Torch module of
``engine.model.musicnn.Musicnn`` and the layouts are transposed (TF NHWC kernels
``(kh, kw, in, out)`` -> Torch ``(out, in, kh, kw)``; dense ``(in, out)`` -> ``(out, in)``).
The optimiser's slots (Adam) are left behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "engine" / "weights"
FILES = {"MSD_musicnn": "musicnn-msd.safetensors", "MTT_musicnn": "musicnn-mtt.safetensors"}

#: (torch module, TF layer, kind): kind "bn", "conv2d", "conv1d" (a TF conv2d spanning all of its
#: input's width, i.e. a 1-D convolution over time) or "dense".
LAYERS = [("input_bn", "batch_normalization", "bn")]
LAYERS += [(f"frontend.{i}.conv", "conv2d" + (f"_{i}" if i else ""), "conv2d") for i in range(5)]
LAYERS += [(f"frontend.{i}.bn", f"batch_normalization_{i + 1}", "bn") for i in range(5)]
LAYERS += [(f"midend.{j}.conv", f"conv2d_{5 + j}", "conv1d") for j in range(3)]
LAYERS += [(f"midend.{j}.bn", f"batch_normalization_{6 + j}", "bn") for j in range(3)]
LAYERS += [("pool_bn", "batch_normalization_9", "bn"), ("dense", "dense", "dense"),
           ("dense_bn", "batch_normalization_10", "bn"), ("logits", "dense_1", "dense")]


def convert(read, labels) -> dict:
    """``read(tf variable name) -> np.ndarray`` -> the Torch state dict as NumPy arrays."""
    out = {}
    for torch_name, tf_name, kind in LAYERS:
        if kind == "bn":
            for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                                 ("running_var", "moving_variance")):
                out[f"{torch_name}.{ours}"] = read(f"{tf_name}/{theirs}")
            out[f"{torch_name}.num_batches_tracked"] = np.zeros((), np.int64)
            continue
        kernel, bias = read(f"{tf_name}/kernel"), read(f"{tf_name}/bias")
        if kind == "conv2d":
            kernel = kernel.transpose(3, 2, 0, 1)
        elif kind == "conv1d":
            assert kernel.shape[2] == 1, (tf_name, kernel.shape)
            kernel = kernel[:, :, 0, :].transpose(2, 1, 0)
        else:
            kernel = kernel.T
        out[f"{torch_name}.weight"], out[f"{torch_name}.bias"] = kernel, bias
    assert out["logits.bias"].shape == (len(labels),)
    return {k: np.ascontiguousarray(v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", help="musicnn-0.1.0-py3-none-any.whl")
    ap.add_argument("--out", default=str(OUT), help="folder for the safetensors files (default: engine/weights)")
    args = ap.parse_args(argv)
    import tensorflow as tf
    from safetensors.numpy import save_file

    wheel = Path(args.wheel)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as z:
        z.extractall(tmp)
        config = Path(tmp) / "musicnn" / "configuration.py"
        namespace: dict = {}
        exec(config.read_text(), namespace)  # the wheel's own label lists, in the network's output order
        for model, filename in FILES.items():
            labels = namespace["MSD_LABELS" if model.startswith("MSD") else "MTT_LABELS"]
            reader = tf.compat.v1.train.NewCheckpointReader(str(Path(tmp) / "musicnn" / model) + "/")
            tensors = convert(reader.get_tensor, labels)
            meta = {"model": model, "labels": labels, "source": "musicnn==0.1.0 wheel, musicnn/" + model + "/",
                    "wheel_sha256": digest, "licence": "ISC", "copyright": "Music Technology Group, Universitat "
                    "Pompeu Fabra 2019; code by Jordi Pons", "converted_with": f"tensorflow {tf.__version__}"}
            path = Path(args.out) / filename
            save_file(tensors, str(path), metadata={"meta": json.dumps(meta)})
            path.chmod(0o644)  # safetensors writes through a private temporary file
            params = sum(int(v.size) for k, v in tensors.items() if not k.endswith("num_batches_tracked"))
            print(f"{model}: {params} parameters -> {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
