"""Golden values for tests/test_musicnn.py, produced by the ORIGINAL musicnn (its own
``musicnn.extractor.extractor``: librosa + TensorFlow) on the clips of :mod:`tools.musicnn_clips`.
Run in the venv that has TensorFlow, librosa and the musicnn wheel (not refmaster's)::

    python3.11 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu==2.15.1 librosa==0.8.1 numpy==1.23.5 numba==0.58.1 \
        scipy==1.11.4 scikit-learn==1.3.2 safetensors
    /tmp/tfvenv/bin/pip install --no-deps /tmp/musicnn/musicnn-0.1.0-py3-none-any.whl
    /tmp/tfvenv/bin/python -m tools.musicnn_golden      # from the repository root

Each clip is written as a float WAV at its own rate; ``extractor`` loads it with librosa
(mono, resampled to 16 kHz where it is not), cuts 3 s patches without overlap and returns, per patch,
the 50 tag probabilities: the ``taggram`` stored here. The 200-d penultimate layer is taken from
musicnn's own graph (``models.define_model``, ``batch_data``, its checkpoint) run on all patches at
once, because ``extractor`` 0.1.0 repeats the first patch's penultimate for every later patch (its
loop appends ``penultimate_`` from the first batch; the later ones go to ``backend_``); that run's
probabilities must equal ``extractor``'s. Written to tests/data/musicnn_golden.json with the
versions and this command.

librosa 0.8.1 (with numpy 1.23.5, numba 0.58.1, scipy 1.11.4): the original's era (musicnn 0.1.0
needs librosa >= 0.7). From librosa 0.9 the STFT pads with zeros instead of reflecting, which
changes the first and last frame of every clip.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from tools.musicnn_clips import golden_clips

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "musicnn_golden.json"
COMMAND = "/work/runs/tfvenv/bin/python -m tools.musicnn_golden   (from the repository root)"


def penultimate(path: str, model: str, labels) -> tuple:
    """(probabilities, penultimate) per patch from musicnn's own graph and checkpoint, all patches at once."""
    import numpy as np
    import tensorflow as tf
    from musicnn import configuration as config
    from musicnn import models
    from musicnn.extractor import batch_data

    frames = 187  # extractor's n_frames for input_length=3: librosa.time_to_frames(3, ...) + 1
    tf.compat.v1.reset_default_graph()
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, frames, config.N_MELS])
        is_training = tf.compat.v1.placeholder(tf.bool)
        outputs = models.define_model(x, is_training, model, len(labels))
        probabilities = tf.nn.sigmoid(outputs[0])
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        tf.compat.v1.train.Saver().restore(sess, str(Path(models.__file__).parent / model) + "/")
        batch, _ = batch_data(path, frames, frames)
        p, e = sess.run([probabilities, outputs[-1]], feed_dict={x: batch, is_training: False})
    return np.asarray(p), np.asarray(e)


def main() -> int:
    import librosa
    import musicnn
    import numpy as np
    import soundfile as sf
    import tensorflow as tf
    from musicnn.extractor import extractor

    result = {"command": COMMAND, "produced_by": "musicnn.extractor.extractor(file, model, input_length=3, "
              "input_overlap=False, extract_features=True)",
              "versions": {"musicnn": "0.1.0", "tensorflow": tf.__version__, "librosa": librosa.__version__,
                           "numpy": np.__version__, "python": sys.version.split()[0],
                           "musicnn_path": str(Path(musicnn.__file__).parent)},
              "clips": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (rate, audio) in golden_clips().items():
            path = Path(tmp) / f"{name}.wav"
            sf.write(path, audio.T if audio.ndim == 2 else audio, rate, subtype="FLOAT")
            entry = {"rate": rate}
            for model in ("MSD_musicnn", "MTT_musicnn"):
                taggram, labels, features = extractor(str(path), model=model, input_length=3, input_overlap=False,
                                                      extract_features=True)
                probs, emb = penultimate(str(path), model, labels)
                assert np.abs(probs - taggram).max() < 1e-6, (name, model, np.abs(probs - taggram).max())
                assert np.abs(features["penultimate"][0] - emb[0]).max() < 1e-4
                entry[model] = {"taggram": np.round(taggram.astype(np.float64), 9).tolist(),
                                "penultimate": np.round(emb.astype(np.float64), 7).tolist()}
                top = [labels[i] for i in np.argsort(-taggram.mean(0))[:3]]
                print(f"{name:10} {model}: {taggram.shape[0]} patches, top tags {top}")
            result["clips"][name] = entry
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
