"""Activation-statistics suite: what conv, pconv and mconv do to activations on padded batches."""
