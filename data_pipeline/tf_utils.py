"""TensorFlow import helper: tf.data runs on the CPU only; GPUs/TPUs stay with JAX."""
from __future__ import annotations

import os

_DONE = False


def import_tensorflow():
    """Import TensorFlow with every GPU hidden from it (``tf.config.set_visible_devices([], "GPU")``)."""
    global _DONE
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # tf.data only: no TF math to speed up
    import tensorflow as tf

    if not _DONE:
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # devices already initialised by someone else; nothing to hide then
            pass
        _DONE = True
    return tf
