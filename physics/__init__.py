"""imcsim.physics: Numba kernels and parameter sets of device and circuit models (SI units)."""
