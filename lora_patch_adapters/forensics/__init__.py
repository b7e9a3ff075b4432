"""Patch forensics: has this generator been patched, and how?

:func:`analyse` compares a generator's weights with a reference (the original weights, their fingerprint, or the
patch directory that records it) and classifies the difference:

* ``"unchanged"``               no weight differs beyond float round-off, no adapter tensors;
* ``"low-rank patch merged"``   every changed tensor is a weight matrix whose difference has low numerical rank, as
  ``W + gate * scale * B @ A`` leaves it (the estimated rank is reported);
* ``"unmerged patch"``          the model carries adapter tensors (``lora_patch_A/B/gate``, stock ``lora_A/B``);
* ``"other change"``            anything else: a dense fine-tune, changed biases or norms, added or removed tensors;
* ``"changed"``                 only with a fingerprint reference, when the fingerprints differ (no per-layer view).

Matrix views of a weight (rank is a property of a matrix, so 4-D kernels are flattened):

* Linear ``[out, in]`` as is; a merged patch ``B @ A`` has rank <= r.
* Conv2d ``[out, in, kh, kw]`` -> ``[out, in*kh*kw]``: ``dW = einsum("or,rikl->oikl", B, A)`` is ``B @ A.flatten(1)``,
  rank <= r.
* ConvTranspose2d ``[in, out, kh, kw]``: ``dW = einsum("irkl,or->iokl", A, B)``; with dim 1 moved first it is
  ``B @ A.movedim(1, 0).flatten(1)`` of shape ``[out, in*kh*kw]``, rank <= r. In the dim-0 view the same patch has
  rank up to ``min(in, r*kh*kw)``.

A state dict does not say whether a 4-D kernel belongs to a Conv2d or a ConvTranspose2d, so both views are computed.
The view that matches the layer type shows the patch's rank; the other one shows a larger rank, or -- with fewer than
r rows, e.g. the 8 input channels of StarGAN's first layer under a rank-16 patch -- its full rank, which says nothing
about the change. So a rank-deficient view is preferred (the smaller rank among them); a layer with fewer than r
rows in its matching view (the 3-channel output conv) then uses whichever view stays within the patch rank the other
layers establish; a dense change is full rank in both.

Classification: a changed matrix is low-rank when its rank is at most half its smaller side; those layers give the
patch rank r, and a changed layer of rank <= r also fits the patch (a layer with fewer than r rows in some view is
full rank there whatever the change). Limits: a change that is low-rank for another reason (e.g. one SGD step on a
single image, pruned channels) looks like a merged patch, and a tiny layer cannot tell a patch from anything else.
``running_mean`` / ``running_var`` are listed but not counted: every forward pass in train mode (StarGAN's official
inference) updates them.

Files are read with safetensors or ``torch.load(weights_only=True)``; no pickled code is ever run.
"""

from .analyse import analyse
from .report import (
    DEFAULT_RTOL,
    OVERALL_VERDICTS,
    VERDICTS,
    ForensicsError,
    ForensicsReport,
    LayerReport,
)
from .weights import fingerprint_weights, read_weights, split_adapters, weight_layers

__all__ = [
    "DEFAULT_RTOL",
    "OVERALL_VERDICTS",
    "VERDICTS",
    "ForensicsError",
    "ForensicsReport",
    "LayerReport",
    "analyse",
    "fingerprint_weights",
    "read_weights",
    "split_adapters",
    "weight_layers",
]
