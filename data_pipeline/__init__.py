"""Input side of norton-jax: feature store, reference sampling, tf.data and TFDS."""
