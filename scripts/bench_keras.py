#!/usr/bin/env python
"""Keras 3 worker of ``bench_speed.py``: the same two models, trained with Keras on one backend.

``KERAS_BACKEND`` is read once, when keras is first imported, so ``bench_speed.py`` starts this
script once per backend (tensorflow, torch) with the variable set and the benchmark's arrays in
an ``.npz`` file. It prints one JSON line: median samples/s and tokens/s per workload.

The models match the PyTorch ones: embedding -> 2 x LSTM (stateful, fixed batch) -> dense over
the vocabulary for the LM; embedding (``mask_zero``) -> bidirectional LSTM -> dense(2) for the
classifier, AdamW with the same learning rate, weight decay and global norm clipping. Keras
trains from fixed-shape arrays, so the classifier's inputs are padded to the longest example and
masked (Keras's usual way; it has no per-batch padding or packing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from typing import Any

import numpy as np


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help=".npz written by bench_speed.py")
    parser.add_argument("--config", required=True, help="JSON: sizes, warmup, repeats, threads, vocabularies")
    return parser.parse_args()


def set_threads(backend: str, threads: int) -> None:
    """The same thread count as the PyTorch side."""
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)


def optimizer(keras: Any) -> Any:
    return keras.optimizers.AdamW(learning_rate=3e-3, weight_decay=0.01, beta_1=0.9, beta_2=0.999,
                                  global_clipnorm=1.0)


# Keras 3.15 on torch: a stateful LSTM on the fused kernel fails in backward (the state variable is
# updated in place; keras-team/keras#23462, fixed after 3.15.1). use_cudnn=False takes Keras's own
# step loop, which works.
STATEFUL_TORCH_WORKAROUND = {"use_cudnn": False}


def lm_model(keras: Any, cfg: dict[str, Any], vocab: int, backend: str) -> Any:
    lm = cfg["lm"]
    inputs = keras.Input(batch_shape=(lm["batch"], lm["bptt"]), dtype="int32")
    x = keras.layers.Embedding(vocab, lm["emb"])(inputs)
    options = STATEFUL_TORCH_WORKAROUND if backend == "torch" else {}
    for _ in range(lm["layers"]):
        x = keras.layers.LSTM(lm["hidden"], return_sequences=True, stateful=True, **options)(x)
    model = keras.Model(inputs, keras.layers.Dense(vocab)(x))
    model.compile(optimizer=optimizer(keras), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def cls_model(keras: Any, cfg: dict[str, Any], vocab: int, steps: int) -> Any:
    cls = cfg["cls"]
    inputs = keras.Input(shape=(steps,), dtype="int32")
    x = keras.layers.Embedding(vocab, cls["emb"], mask_zero=True)(inputs)
    x = keras.layers.Bidirectional(keras.layers.LSTM(cls["hidden"]))(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    model.compile(optimizer=optimizer(keras), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def lm_arrays(streams: np.ndarray, bptt: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows ordered window-major, so batch i + 1 continues batch i row by row (stateful)."""
    length = streams.shape[1]
    starts = range(0, length - 1 - bptt + 1, bptt)
    x = np.concatenate([streams[:, s : s + bptt] for s in starts]).astype("int32")
    y = np.concatenate([streams[:, s + 1 : s + 1 + bptt] for s in starts]).astype("int32")
    return x, y


def reset_states(model: Any) -> None:
    for layer in model.layers:
        reset = getattr(layer, "reset_state", None) or getattr(layer, "reset_states", None)
        if callable(reset) and getattr(layer, "stateful", False):
            reset()


def timed_epochs(keras: Any, model: Any, x: np.ndarray, y: np.ndarray, batch: int, shuffle: bool,
                 warmup: int, repeats: int) -> list[float]:
    """Seconds of each timed epoch (callback-timed, like lstmkit's epoch timer)."""

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seconds = time.perf_counter() - self.start

    seconds = []
    for r in range(warmup + repeats):
        reset_states(model)
        timer = Timer()
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=shuffle, verbose=0, callbacks=[timer])
        if r >= warmup:
            seconds.append(timer.seconds)
    return seconds


def summary(seconds: list[float], samples: int, tokens: int) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {"samples_per_s": round(samples / median, 2), "tokens_per_s": round(tokens / median, 1),
            "epoch_s_runs": [round(s, 4) for s in seconds]}


def main() -> None:
    args = parse_args()
    cfg = json.loads(args.config)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    set_threads(backend, int(cfg["threads"]))
    import keras

    keras.utils.set_random_seed(0)
    data = np.load(args.data)
    lm = cfg["lm"]
    x, y = lm_arrays(data["streams"], lm["bptt"])
    seconds = timed_epochs(keras, lm_model(keras, cfg, cfg["vocab_lm"], backend), x, y, lm["batch"], False,
                           cfg["warmup"], cfg["repeats"])
    result: dict[str, Any] = {"backend": backend, "keras": keras.__version__,
                              "lm": summary(seconds, len(x), int(x.size))}
    if backend == "torch":
        result["lm"]["note"] = "stateful LSTM with use_cudnn=False (keras-team/keras#23462)"
    inputs, targets = data["cls_inputs"].astype("int32"), data["cls_targets"].astype("int32")
    model = cls_model(keras, cfg, cfg["vocab_cls"], inputs.shape[1])
    seconds = timed_epochs(keras, model, inputs, targets, cfg["cls"]["batch"], True, cfg["warmup"], cfg["repeats"])
    result["classifier"] = summary(seconds, len(inputs), int(data["cls_lengths"].sum()))
    result["classifier"]["padded_to"] = int(inputs.shape[1])
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
