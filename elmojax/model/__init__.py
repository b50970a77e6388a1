"""The biLM in pure JAX: linen modules, softmax losses, the start state, the ``Elmo`` layer, the
standard weights HDF5, FLOP counts, numerics and the custom-VJP kernels."""
