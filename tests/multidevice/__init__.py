"""Test programs that need several (simulated) devices: each runs as ``python -m tests.multidevice.NAME``
in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (``helpers.run_module``),
since JAX fixes its devices when it starts."""
