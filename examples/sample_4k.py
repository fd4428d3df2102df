"""Sample one 4096^2 image from a Diffusion-4K Flux (or SD3) pipeline folder with the SC-VAE, through the
Python API (``d4k sample`` is the command-line version, with prompt files, batches and resume).

    python examples/sample_4k.py --model path/to/flux-4k --prompt "a city street at night" [--max-memory 8GiB]
    python examples/sample_4k.py --model path/to/flux-4k --offload     # GPUs with less memory (accelerate)

To try it without a checkpoint, save a tiny random pipeline first (a few seconds on the CPU):

    python -c "import sys; sys.path.insert(0, 'tests'); import tiny_pipelines as t; t.save_pipeline(t.flux_pipeline(), '/tmp/tiny-flux')"
    python examples/sample_4k.py --model /tmp/tiny-flux --size 256 --steps 2

docs/sampling.md says what the patch changes and how much memory a 4K sample takes.
"""
import argparse
import time

import torch

from d4k_kernels.integrations.diffusers import check_size, load_pipeline, patch_pipeline


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a diffusers FluxPipeline / StableDiffusion3Pipeline folder")
    ap.add_argument("--prompt", default="snowy mountains under a clear blue sky, highly detailed")
    ap.add_argument("--size", type=int, default=4096, help="height = width")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-memory", default=None, help="the exact tiled decode's budget, e.g. 8GiB")
    ap.add_argument("--offload", action="store_true", help="enable_model_cpu_offload() instead of .to('cuda')")
    ap.add_argument("--out", default="sample_4k.jpg")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    # the folder's VAE is read through load_vae: an SC-VAE (config "stride": 2) becomes SCAutoencoderKL
    pipe = load_pipeline(args.model, torch_dtype=torch.bfloat16 if cuda else torch.float32)
    # vae_scale_factor 16, sizes checked, exact tiled decode within the budget
    patch_pipeline(pipe, max_memory=args.max_memory)
    check_size(pipe, args.size, args.size)   # e.g. 4100 -> "nearest valid: 4096 or 4128"
    if args.offload:
        pipe.enable_model_cpu_offload()      # the patch lives on the instance: it survives the hooks
    elif cuda:
        pipe.to("cuda")
    t0 = time.perf_counter()
    image = pipe(args.prompt, height=args.size, width=args.size, num_inference_steps=args.steps,
                 generator=torch.Generator("cpu").manual_seed(args.seed)).images[0]
    seconds = time.perf_counter() - t0
    image.save(args.out, quality=95)
    peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else ""
    print(f"{args.out}: {image.size[0]}x{image.size[1]} in {seconds:.1f} s{peak}")
    return image


if __name__ == "__main__":
    main()
