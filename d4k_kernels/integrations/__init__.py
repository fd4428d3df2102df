"""Thin integrations with other libraries (imported lazily; each needs its library installed).

* :mod:`d4k_kernels.integrations.diffusers`: ``enable_exact_tiling(vae)`` / ``disable_exact_tiling(vae)``
  (exact tiled VAE decoding patched into a loaded diffusers VAE), ``load_vae(path)`` (returns the
  SC-VAE class when the config says ``stride: 2``), ``load_pipeline(folder)`` and
  ``patch_pipeline(pipe)`` / ``unpatch_pipeline(pipe)`` (Flux / SD3 pipelines sampling at 4K with the
  SC-VAE and exact tiled decoding).
"""
