"""Tiny random-weight diffusers pipelines for tests: FluxPipeline and StableDiffusion3Pipeline with every
component real (text encoders and tokenizers included), built here from configs in well under a second.
Nothing is downloaded.

    from tiny_pipelines import flux_pipeline, sd3_pipeline, save_pipeline
    pipe = flux_pipeline()                          # SC-VAE F16 (stride 2); sc_vae=False: a Flux-style F8 VAE
    image = pipe("a red chair", height=64, width=96, num_inference_steps=2).images[0]
    folder = save_pipeline(pipe, tmp_path / "flux")  # a diffusers pipeline folder, as released checkpoints are

What they are:

* tokenizers trained with the ``tokenizers`` library on :data:`CORPUS` and loaded by transformers'
  CLIP / T5 tokenizer classes: a byte-level BPE with CLIP's normalizer, pre-tokenizer and ``</w>``
  suffix (ids: ``<|startoftext|>`` 0, ``<|endoftext|>`` 1, which is also the pad), and a Unigram
  with T5's metaspace pre-tokenizer (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2). Any text tokenizes
  (unknown characters are bytes for CLIP and ``<unk>`` for T5); 77 and 512 tokens as the real ones;
* text encoders: CLIPTextModel (Flux) or two CLIPTextModelWithProjection (SD3), hidden size 16,
  and a T5EncoderModel with d_model 32, one layer each;
* the VAE: :func:`tiny_vae`, four levels (F8) of 8-16 channels and 16 latent channels as Flux / SD3
  have; with ``sc=True`` (default) the SC-VAE (:class:`d4k_kernels.vae.SCAutoencoderKL`, stride 2:
  F16, partitioned tail);
* the transformer: one double and one single block (Flux, in_channels 64 = 16 x 2x2 packing) or
  one joint block (SD3, patch 2), 2 heads of 16;
* the scheduler: FlowMatchEulerDiscreteScheduler with Flux's dynamic shift (use_dynamic_shifting,
  base / max image sequence 256 / 4096, shift 0.5 / 1.15) for Flux, SD3's static shift 3.0 for SD3.

Weights are drawn from ``seed`` (the same seed: the same pipeline, bit for bit). The VAE's weights
get an extra random perturbation so that its decode is not a near-constant image.
:func:`save_pipeline` writes the folder the way the Diffusion-4K checkpoints are laid out: the VAE
as a diffusers ``AutoencoderKL`` whose config adds ``stride: 2`` / ``partitioned`` (which stock
``from_pretrained`` ignores: load it with ``d4k_kernels.integrations.diffusers.load_vae`` or
``load_pipeline``).
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
from typing import Optional

import torch

__all__ = ["CORPUS", "clip_tokenizer", "t5_tokenizer", "tiny_vae", "flux_pipeline", "sd3_pipeline",
           "save_pipeline", "CLIP_HIDDEN", "T5_DIM", "LATENT_CHANNELS"]

CORPUS = (
    "a photo of a cat sitting on a red chair",
    "a city street at night with neon lights and wet reflective ground",
    "an extreme close-up of an old man with a grey beard and glasses",
    "snowy mountains under a clear blue sky, 4k, highly detailed",
    "a bowl of fruit on a wooden table by the window",
    "the quick brown fox jumps over the lazy dog",
)
CLIP_HIDDEN = 16       # each CLIP text encoder's hidden size
T5_DIM = 32            # the T5 encoder's d_model = the transformers' joint_attention_dim
LATENT_CHANNELS = 16   # as the Flux / SD3 VAEs


def _saved_tokenizer(cls, tok_json: str, config: dict):
    """A transformers tokenizer ``cls`` loaded from a folder holding ``tok_json`` (a tokenizers.Tokenizer
    serialised)."""
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(tok_json)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(config, f)
        return cls.from_pretrained(d)


_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


@functools.lru_cache(maxsize=None)
def _clip_bpe() -> str:
    """The CLIP-style BPE trained on CORPUS, serialised (trained once per process)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    bos, eos = _BOS, _EOS
    tok = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=eos,
                               fuse_unk=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    words = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[bos, eos], end_of_word_suffix="</w>",
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok.to_str()


def clip_tokenizer():
    """A CLIP-style byte-level BPE tokenizer (transformers' CLIPTokenizerFast), 77 tokens."""
    from transformers import CLIPTokenizerFast

    return _saved_tokenizer(CLIPTokenizerFast, _clip_bpe(), dict(model_max_length=77, bos_token=_BOS,
                                                                 eos_token=_EOS, unk_token=_EOS, pad_token=_EOS))


@functools.lru_cache(maxsize=None)
def _t5_unigram() -> str:
    """The T5-style Unigram trained on CORPUS, serialised (trained once per process)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
    ])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok.to_str()


def t5_tokenizer():
    """A T5-style Unigram tokenizer (transformers' T5TokenizerFast, no extra ids), 512 tokens."""
    from transformers import T5TokenizerFast

    return _saved_tokenizer(T5TokenizerFast, _t5_unigram(), dict(model_max_length=512, eos_token="</s>",
                                                                 unk_token="<unk>", pad_token="<pad>", extra_ids=0))


def _clip_encoder(vocab_size: int, projection_dim: Optional[int] = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=CLIP_HIDDEN, intermediate_size=2 * CLIP_HIDDEN,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                         projection_dim=projection_dim or CLIP_HIDDEN, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1)
    cls = CLIPTextModel if projection_dim is None else CLIPTextModelWithProjection
    return cls(cfg).eval()


def _t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=vocab_size, d_model=T5_DIM, d_kv=16, d_ff=2 * T5_DIM, num_layers=1, num_heads=2,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(cfg).eval()


def tiny_vae(sc: bool = True, *, scaling_factor: float = 0.3611, shift_factor: float = 0.1159):
    """A four-level VAE (F8) with 16 latent channels; ``sc=True``: the SC-VAE (stride 2, F16).
    Draws from the current torch seed."""
    from diffusers import AutoencoderKL

    from d4k_kernels.vae import SCAutoencoderKL

    cls, extra = (SCAutoencoderKL, dict(stride=2)) if sc else (AutoencoderKL, {})
    vae = cls(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
              block_out_channels=[8, 8, 16, 16], layers_per_block=1, latent_channels=LATENT_CHANNELS,
              norm_num_groups=4, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
              scaling_factor=scaling_factor, shift_factor=shift_factor, **extra)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vae.eval()


def _scheduler(dynamic: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if dynamic:  # Flux's
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                               base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5,
                                               max_shift=1.15)
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)  # SD3's


def flux_pipeline(*, sc_vae: bool = True, seed: int = 0):
    """A tiny random-weight FluxPipeline (guidance-embedded, as FLUX.1-dev); ``sc_vae``: the SC-VAE (F16)
    or a Flux-style F8 VAE."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(seed)
    te, te2 = _clip_encoder(len(tok)), _t5_encoder(len(tok2))
    tr = FluxTransformer2DModel(patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1,
                                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_DIM,
                                pooled_projection_dim=CLIP_HIDDEN, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    return FluxPipeline(scheduler=_scheduler(True), vae=tiny_vae(sc_vae), text_encoder=te, tokenizer=tok,
                        text_encoder_2=te2, tokenizer_2=tok2, transformer=tr.eval())


def sd3_pipeline(*, sc_vae: bool = True, seed: int = 0):
    """A tiny random-weight StableDiffusion3Pipeline (two CLIP encoders and T5); ``sc_vae``: the SC-VAE
    (F16) or an F8 VAE."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    tok, tok2, tok3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(seed)
    te, te2 = _clip_encoder(len(tok), projection_dim=8), _clip_encoder(len(tok2), projection_dim=8)
    te3 = _t5_encoder(len(tok3))
    # the CLIP hidden states (2 x 16) are padded to the T5 width (32); the pooled projections are 2 x 8
    tr = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=LATENT_CHANNELS, num_layers=1,
                               attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_DIM,
                               caption_projection_dim=32, pooled_projection_dim=16, out_channels=LATENT_CHANNELS,
                               pos_embed_max_size=96)
    vae = tiny_vae(sc_vae, scaling_factor=1.5305, shift_factor=0.0609)
    return StableDiffusion3Pipeline(transformer=tr.eval(), scheduler=_scheduler(False), vae=vae, text_encoder=te,
                                    tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2, text_encoder_3=te3,
                                    tokenizer_3=tok3)


def save_pipeline(pipe, folder) -> str:
    """``pipe.save_pretrained(folder)``, with an SC-VAE written as the Diffusion-4K checkpoints have it:
    ``vae/config.json`` says ``"_class_name": "AutoencoderKL"`` plus ``stride`` / ``partitioned``, and
    model_index.json lists it as diffusers' AutoencoderKL. Returns the folder."""
    folder = os.fspath(folder)
    pipe.save_pretrained(folder)
    index_path, vae_cfg_path = os.path.join(folder, "model_index.json"), os.path.join(folder, "vae", "config.json")
    with open(index_path) as f:
        index = json.load(f)
    with open(vae_cfg_path) as f:
        vae_cfg = json.load(f)
    index["vae"] = ["diffusers", "AutoencoderKL"]
    vae_cfg["_class_name"] = "AutoencoderKL"
    for path, obj in ((index_path, index), (vae_cfg_path, vae_cfg)):
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)
    return folder
