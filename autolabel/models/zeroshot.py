"""CLIP zero-shot concerns shared by the methods, tune and the toy world: every prompt-template
list, and the image-level presence filter (which classes CLIP thinks an image shows).

The template lists are read by settings validation (autolabel.methods.settings), which must not
load torch; numpy, PIL and torch are therefore imported inside the functions that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from autolabel.models.clip import ClipModel
    from autolabel.vocab import Vocabulary

# The 7-template subset OpenAI selected for ImageNet zero-shot (CLIP notebook "prompt
# engineering"); `fast`'s default and the presence filter's. A recipe can pass the 80-template
# list or a single "{}".
DEFAULT_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
# CaR's classifier templates, `car.semantic_templates` of every semantic-segmentation config
# (github.com/google-research/google-research clip_as_rnn/configs/); θ is calibrated against the
# double softmax over these (clip_wrapper.py `forward_clip`).
SEMANTIC_TEMPLATES = (
    "a clean origami {}.",
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)
CAM_TEMPLATE = "a clean origami {}."  # CLIP-ES's template for background words (and quirk texts)
# The toy model's raw read-outs (autolabel.toyworld.readout).
READOUT_TEMPLATES = ("a photo of a {}.",)


def clip_inputs(clip: ClipModel, images: list[np.ndarray]) -> torch.Tensor:
    """Squash-resize each image to CLIP's input size: (B, 3, S, S) floats in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    size = clip.image_size
    arrays = [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return batch.to(clip.device)


def clip_probabilities(
    clip: ClipModel, normalized: torch.Tensor, text: torch.Tensor
) -> torch.Tensor:
    """Softmax over the text rows (M, D) for each normalised image (B, 3, S, S): (B, M)."""
    import torch

    with torch.no_grad():
        feats = clip.model.encode_image(normalized).float()
        feats = feats / feats.norm(dim=-1, keepdim=True)
        model = clip.model
        scale = model.logit_scale.exp().float() if hasattr(model, "logit_scale") else 100.0
        return (scale * feats @ text.T).softmax(dim=-1)


def class_text(clip: ClipModel, vocab: Vocabulary) -> tuple[torch.Tensor, list[int]]:
    """Template-averaged embeddings of the vocabulary's prompt table (every class prompt then
    every background word) and the class index (1-based; 0 = background word) of each row."""
    prompts, owners = vocab.prompt_table()
    return clip.encode_templates(prompts, list(DEFAULT_TEMPLATES)), owners


def clip_presence(clip: ClipModel, images: list[np.ndarray], vocab: Vocabulary) -> np.ndarray:
    """Image-level probability of each class (B, K): CLIP's softmax over every class prompt and
    background word, summed over each class's prompts."""
    import torch

    text, owners = class_text(clip, vocab)
    probs = clip_probabilities(clip, clip.normalize(clip_inputs(clip, images)), text)
    owner = torch.tensor(owners, device=probs.device)
    per_class = torch.stack([probs[:, owner == k + 1].sum(dim=1) for k in range(len(vocab))], dim=1)
    return per_class.cpu().numpy()
