"""BatchNormalization on TensorFlow's fused kernel (FusedBatchNormV3), for training only.

Keras 3's TensorFlow backend computes `BatchNormalization` with unfused moments and arithmetic,
which dominates a training step of these small CNNs on a CPU and keeps oneDNN's bfloat16
convolutions from paying off. `FusedBatchNormalization` computes the same function with the
fused kernel where the kernel can serve the layer (4-D channels-last input, no mask, no renorm,
not synchronized) and falls back to Keras' own code elsewhere (the dense head's 2-D BatchNorm).

Models are trained with it and saved with plain `BatchNormalization` (pipeline.modeling.model converts
between the two forms), so a saved model file needs neither this module nor this package.
"""

from __future__ import annotations

from pipeline.console import quiet_tensorflow

quiet_tensorflow()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

# The dtypes the fused kernel takes for its input (scale, offset and statistics stay float32).
_FUSED_DTYPES = (tf.float32, tf.bfloat16, tf.float16)


class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization with the same weights, outputs and moving-statistics update,
    computed by the fused kernel for 4-D channels-last inputs."""

    def _fusable(self, inputs: tf.Tensor, mask: tf.Tensor | None) -> bool:
        return (mask is None and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and not self.renorm and not self.synchronized
                and inputs.dtype in _FUSED_DTYPES)

    def call(self, inputs: tf.Tensor, training: bool | None = None,
             mask: tf.Tensor | None = None) -> tf.Tensor:
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones((channels,), tf.float32)
        beta = self.beta if self.center else tf.zeros((channels,), tf.float32)
        gamma, beta = tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
            # The kernel returns the batch variance Bessel-corrected (n/(n-1)); Keras' moving
            # variance follows the plain batch variance, which the kernel normalises with.
            n = tf.cast(tf.size(inputs, out_type=tf.int64) // channels, tf.float32)
            variance = variance * tf.maximum(n - 1.0, 0.0) / tf.maximum(n, 1.0)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum
                                        + variance * (1.0 - self.momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=tf.convert_to_tensor(self.moving_mean),
                variance=tf.convert_to_tensor(self.moving_variance), epsilon=self.epsilon,
                data_format="NHWC", is_training=False)
        return tf.cast(outputs, self.compute_dtype)
