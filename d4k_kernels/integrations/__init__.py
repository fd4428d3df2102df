"""Thin integrations with other libraries (imported lazily; each needs its library installed).

* :mod:`d4k_kernels.integrations.diffusers`: ``enable_exact_tiling(vae)`` / ``disable_exact_tiling(vae)``
  (exact tiled VAE decoding patched into a loaded diffusers VAE) and ``load_vae(path)`` (returns the
  SC-VAE class when the config says ``stride: 2``).
"""
