"""Training-free dense CLIP: the baseline of open-vocabulary segmentation, CLIP scored per patch (MaskCLIP).

CLIP's image embedding describes the whole image; its patch tokens after the last block do not line up with the
text embeddings. MaskCLIP (Zhou et al., ECCV 2022) reads them out another way: in the last vision block each patch
attends only to itself, which leaves the attention's value path (`out_proj(v_proj(norm1(x)))`); the residual and
the MLP are kept, then every token goes through `post_layernorm` and `visual_projection` like the CLS token does.
Each patch's embedding is scored against the class embeddings by scaled cosine similarity.

This is what users of CLIP try first, and the reference to compare a fine-tuned segmenter with: CAT-Seg's cost
volume is the same kind of score map (its last block adds the CLS token instead of the patch as the residual),
before any aggregation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPModel
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.utils.generic import can_return_tuple


class DenseClipForSemanticSegmentation(CLIPModel):
    """A `CLIPModel` that segments: per-class logits on the patch grid, with no segmentation training.

    It has exactly CLIP's weights, so any CLIP checkpoint loads into it:

    ```python
    >>> from modeling_catseg import DenseClipForSemanticSegmentation
    >>> model = DenseClipForSemanticSegmentation.from_pretrained("openai/clip-vit-base-patch16")
    >>> processor = ...  # a CAT-Seg processor: CLIP's normalisation, its tokenizer and prompt template
    >>> inputs = processor(images=image, text=["cat", "sofa", "wooden floor"], return_tensors="pt")
    >>> logits = model(**inputs).logits  # (1, 3, 14, 14) for 224-pixel inputs at patch 16
    ```

    Inputs of other sizes than CLIP's are embedded with interpolated position embeddings.
    """

    def get_dense_image_features(self, pixel_values: torch.FloatTensor) -> torch.Tensor:
        """`(batch, projection_dim, grid_height, grid_width)` patch embeddings in CLIP's joint space (see module
        docstring), not normalised."""
        vision = self.vision_model
        hidden_states = vision.pre_layrnorm(vision.embeddings(pixel_values, interpolate_pos_encoding=True))
        *blocks, last_block = vision.encoder.layers
        for block in blocks:
            hidden_states = block(hidden_states, None)
        attention = last_block.self_attn
        hidden_states = hidden_states + attention.out_proj(attention.v_proj(last_block.layer_norm1(hidden_states)))
        hidden_states = hidden_states + last_block.mlp(last_block.layer_norm2(hidden_states))
        patches = self.visual_projection(vision.post_layernorm(hidden_states[:, 1:]))
        patch_size = self.config.vision_config.patch_size
        grid = (pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size)
        return patches.transpose(1, 2).unflatten(2, grid)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_embeds: torch.FloatTensor | None = None,
    ) -> SemanticSegmenterOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Images normalised with the CLIP mean and std; height and width multiples of the patch size.
            input_ids (`torch.LongTensor` of shape `(num_classes, sequence_length)`, *optional*):
                The tokenised class prompts, one vocabulary shared by the whole batch.
            attention_mask (`torch.Tensor` of shape `(num_classes, sequence_length)`, *optional*):
                Mask of `input_ids`.
            text_embeds (`torch.FloatTensor` of shape `(num_classes, projection_dim)`, *optional*):
                Precomputed text features (`get_text_features(...).pooler_output`) instead of `input_ids`.

        Returns:
            `SemanticSegmenterOutput` whose `logits` `(batch_size, num_classes, grid_height, grid_width)` are CLIP's
            scaled cosine similarities between each patch and each class.
        """
        if (input_ids is None) == (text_embeds is None):
            raise ValueError(
                "Give the class vocabulary exactly once: either input_ids (num_classes, sequence_length) from the "
                "processor, or text_embeds (num_classes, projection_dim) from get_text_features()."
            )
        if text_embeds is None:
            text_embeds = self.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        patches = F.normalize(self.get_dense_image_features(pixel_values), dim=1)
        classes = F.normalize(text_embeds, dim=-1).to(patches.dtype)
        logits = self.logit_scale.exp() * torch.einsum("bchw,tc->bthw", patches, classes)
        return SemanticSegmenterOutput(logits=logits)


__all__ = ["DenseClipForSemanticSegmentation"]
