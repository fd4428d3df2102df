"""Image metrics of the Diffusion-4K paper: GLCM Score and Compression Ratio (docs/ops.md, GLCM Score
and Compression Ratio).

    load_image(path)                 uint8 (H, W, 3) BGR/RGB, as the paper's cv2.imread
    rgb_to_gray(x, order)            OpenCV-exact 8-bit gray on tensors (any device)
    glcm_score_image(path | tensor)  the paper's GLCM Score of one image / a batch
    glcm_score_files(paths)          per-file scores, streamed
    evaluate_folder(dir)             per-image records + summary (streamed, torchrun-sharded)
    compression_ratio(files | tensor)  bytes on disk (paper) or in-memory JPEG q=95

The GLCM kernels themselves live in :mod:`d4k_kernels.ops.glcm` (``glcm_score``).
"""
from .compression import (
    compression_ratio,
    compression_ratio_files,
    compression_ratio_tensor,
    jpeg_bytes,
)
from .evaluate import (
    EvalResult,
    ImageRecord,
    evaluate_files,
    evaluate_folder,
    glcm_score_files,
    glcm_score_image,
    resolve_device,
)
from .gray import bgr_to_gray, rgb_to_gray
from .io import IMAGE_EXTENSIONS, ImageLoadError, image_size, is_image_file, list_images, load_image

__all__ = [
    "compression_ratio",
    "compression_ratio_files",
    "compression_ratio_tensor",
    "jpeg_bytes",
    "EvalResult",
    "ImageRecord",
    "evaluate_files",
    "evaluate_folder",
    "glcm_score_files",
    "glcm_score_image",
    "resolve_device",
    "bgr_to_gray",
    "rgb_to_gray",
    "IMAGE_EXTENSIONS",
    "ImageLoadError",
    "image_size",
    "is_image_file",
    "list_images",
    "load_image",
]
