"""Train a tiny randomly initialised Flux (or SD3) transformer for a few steps with the fused wavelet
flow-matching loss, on random latents, on the CPU (or a GPU if you have one). Prints the loss going down.

    python examples/train_wlf_tiny.py                      # Flux, 30 steps
    python examples/train_wlf_tiny.py --model sd3 --levels 2 --band-weights 1 2 2 4

A real run swaps the random latents / text embeddings for VAE latents and text-encoder outputs and
the tiny config for the pretrained transformer (docs/training.md).
"""
import argparse
import time

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel

from d4k_kernels.training import FlowMatchingWLFStep


def tiny_transformer(kind: str):
    if kind == "flux":
        return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2,
                                      attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                      pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    return SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=16,
                                 num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32,
                                 pooled_projection_dim=16, out_channels=16, pos_embed_max_size=16)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("flux", "sd3"), default="flux")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=16, help="latent height = width (even)")
    ap.add_argument("--levels", type=int, default=1)
    ap.add_argument("--band-weights", type=float, nargs="+", default=None,
                    help="4 values (LL LH HL HH) or 1+3*levels values (LL_J, then LH HL HH per level)")
    ap.add_argument("--weighting-scheme", default="logit_normal",
                    choices=("none", "sigma_sqrt", "logit_normal", "mode", "cosmap"))
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    transformer = tiny_transformer(args.model).to(device).train()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    step = FlowMatchingWLFStep(transformer, scheduler, weighting_scheme=args.weighting_scheme,
                               levels=args.levels, band_weights=args.band_weights)
    opt = torch.optim.AdamW(transformer.parameters(), lr=args.lr)

    # one fixed "dataset" batch: latents, T5-like and CLIP-like embeddings
    g = torch.Generator().manual_seed(args.seed)
    latents = torch.randn(args.batch, 16, args.size, args.size, generator=g).to(device)
    prompt_embeds = torch.randn(args.batch, 8, 32, generator=g).to(device)
    pooled = torch.randn(args.batch, 16, generator=g).to(device)
    # fixed noise and timesteps too, so that the loss of this one batch is comparable across steps
    noise = torch.randn(latents.shape, generator=g).to(device)
    u = step.sample_u(args.batch, generator=g)

    t0 = time.perf_counter()
    first = None
    for i in range(args.steps):
        opt.zero_grad(set_to_none=True)
        loss = step(latents, prompt_embeds, pooled, noise=noise, u=u, backward=True)
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        first = loss.item() if first is None else first
        if i % max(1, args.steps // 10) == 0 or i == args.steps - 1:
            print(f"step {i:3d}  loss {loss.item():.5f}", flush=True)
    print(f"{args.model}: loss {first:.5f} -> {loss.item():.5f} in {args.steps} steps "
          f"({time.perf_counter() - t0:.1f} s on {device.type})")
    return 0 if loss.item() < first else 1


if __name__ == "__main__":
    raise SystemExit(main())
