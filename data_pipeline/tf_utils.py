"""TensorFlow import helper: tf.data runs on the CPU only; GPUs/TPUs stay with JAX."""
from __future__ import annotations

import os

_DONE = False


def configure_tensorflow_environment() -> None:
    """Set TensorFlow's environment before it loads (the one place that does; a user's values win).

    ``TF_CPP_MIN_LOG_LEVEL=2`` hides TensorFlow's C++ info/warning lines; ``TF_ENABLE_ONEDNN_OPTS=0``
    because TF here only runs tf.data and summaries, never math worth oneDNN's start-up.
    Call it at the top of an entry point, before anything imports TensorFlow.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def import_tensorflow():
    """Import TensorFlow with every GPU hidden from it (``tf.config.set_visible_devices([], "GPU")``)."""
    global _DONE
    configure_tensorflow_environment()
    import tensorflow as tf

    if not _DONE:
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # devices already initialised by someone else; nothing to hide then
            pass
        _DONE = True
    return tf
