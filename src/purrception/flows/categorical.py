"""The K-way categorical head: cross-entropy with z-loss, and the posterior mean over the codebook.

``logits = head(h)`` for final features ``h``; the posterior is ``pi = softmax(logits / tau)`` (paper eq. 15) and
its mean ``mu = pi E`` (eq. 13); training minimises ``CE(logits, c)`` (eq. 14) plus ``lambda_z mean(lse^2)`` with
``lse = logsumexp(logits)`` (App. D).

With the paper's tokenizers ``K = 16384``, so materialising all ``B x H x W x K`` logits in float32 dominates the
step's memory (docs/ARCHITECTURE.md, "Where the speed is"). :func:`cross_entropy_and_zloss` and
:func:`posterior_mean` never do: they run the head's classifier over chunks of rows (see the row view in
``models.heads``), each chunk holding at most a memory budget of logits, and keep only ``O(rows)`` per-row results
(log-partition, target logit). Every row's ``K`` logits live in one chunk, so the softmax needs no cross-chunk
(online) rescaling and is exact. A chunk's logits are held once, transposed (``W x^T``, the faster GEMM for thin
chunks), and only ever overwritten in place.

Training gradients come from a custom autograd function. Given ``z_loss_weight`` (the weight the caller puts on
``z_sq``), it computes the gradients of ``ce + z_loss_weight * z_sq`` during the forward sweep, while each chunk's
logits are at hand (Liger-kernel style): the head then costs the same three matmuls as the naive head. If the
backward pass asks for a different combination (or no weight was given) it recomputes each chunk's logits in
backward instead (one extra matmul). Both give the naive gradients to float tolerance.

:func:`masked_cross_entropy_and_zloss` averages over selected positions only (DFM's loss on its masked positions):
it sweeps only the rows that feed a selected position and weights each row's entries 1 or 0 when a row covers
several positions (the full head with patch size > 1), so the means and gradients are those over the selection.

The ``naive_*`` functions materialise every logit; they are the references for tests and benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from purrception.models.dit import DiT

__all__ = ["DEFAULT_CHUNK_BYTES", "CACHE_CHUNK_BYTES", "GEMM_FULL_RATE_ROWS", "FOLDED_BIAS_MAX_SPREAD",
           "bytes_per_logit", "chunk_rows", "matmul_dtype", "logits_from_features", "naive_cross_entropy_and_zloss",
           "naive_masked_cross_entropy_and_zloss", "naive_posterior_mean", "linear_cross_entropy_and_zloss",
           "cross_entropy_and_zloss", "masked_cross_entropy_and_zloss", "posterior_mean"]

#: Memory budget for one chunk of logits (and their temporaries), by device type.
DEFAULT_CHUNK_BYTES: dict[str, int] = {"cpu": 32 << 20, "cuda": 1 << 30}
_FALLBACK_CHUNK_BYTES = 256 << 20
#: CPU only: chunks of about this many bytes keep the softmax passes in cache, but never fewer than
#: :data:`GEMM_FULL_RATE_ROWS` rows, which the chunk GEMM needs to run at its full rate (``bench/head.py`` measures
#: the trade-off; its figures are in BENCHMARKS.md).
CACHE_CHUNK_BYTES: dict[str, int] = {"cpu": 8 << 20}
GEMM_FULL_RATE_ROWS = 128
#: :func:`posterior_mean` folds the bias into the read's values when every group's ``bias / tau`` spans at most this
#: many nats (``exp(-60)`` is ~1e-26, far above float32's smallest normal number); wider biases are added to the logits.
FOLDED_BIAS_MAX_SPREAD = 60.0


def bytes_per_logit(dtype: torch.dtype) -> int:
    """Memory one logit of a chunk takes: the float32 (float64) buffer the softmax works in place in, plus the
    low-precision copy the matmuls read or write under autocast (``dtype`` = the matmul dtype)."""
    acc = torch.promote_types(dtype, torch.float32)
    return acc.itemsize + (dtype.itemsize if dtype != acc else 0)


def chunk_rows(num_rows: int, logits_per_row: int, device: torch.device, chunk_bytes: int | None = None,
               dtype: torch.dtype = torch.float32) -> int:
    """Rows per chunk: as many as fit one chunk's logits and temporaries in ``chunk_bytes`` (default by device); on
    devices in :data:`CACHE_CHUNK_BYTES`, no more than fit that size or :data:`GEMM_FULL_RATE_ROWS`, whichever is
    more."""
    budget = chunk_bytes if chunk_bytes is not None else DEFAULT_CHUNK_BYTES.get(device.type, _FALLBACK_CHUNK_BYTES)
    row_bytes = logits_per_row * bytes_per_logit(dtype)
    rows = budget // row_bytes
    if device.type in CACHE_CHUNK_BYTES:
        rows = min(rows, max(GEMM_FULL_RATE_ROWS, CACHE_CHUNK_BYTES[device.type] // row_bytes))
    return max(1, min(num_rows, rows))


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would use for ``x`` here (its own dtype outside autocast)."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


# ------------------------------------------------------------------------------------------------------------
# References: materialise all logits
# ------------------------------------------------------------------------------------------------------------


def logits_from_features(model: DiT, h: torch.Tensor) -> torch.Tensor:
    """Final features ``(B, N, hidden)`` -> all logits ``(B, H, W, K)`` in float32 (float64 stays), materialised."""
    logits = model.unpatchify(model.head(h), model.config.out_channels)
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def naive_cross_entropy_and_zloss(model: DiT, h: torch.Tensor,
                                  codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for :func:`cross_entropy_and_zloss` on materialised logits (eq. 14, App. D)."""
    logits = logits_from_features(model, h)
    flat = logits.reshape(-1, logits.shape[-1])
    ce = F.cross_entropy(flat, codes.reshape(-1).long())
    z_sq = torch.logsumexp(flat, dim=-1).pow(2).mean()
    return ce, z_sq


def naive_masked_cross_entropy_and_zloss(model: DiT, h: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor
                                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for :func:`masked_cross_entropy_and_zloss`: CE and ``lse^2`` averaged over the positions where
    ``mask`` ``(B, H, W)`` is true, on materialised logits."""
    chosen = logits_from_features(model, h)[mask]                                  # (positions, K)
    ce = F.cross_entropy(chosen, codes.long()[mask])
    z_sq = torch.logsumexp(chosen, dim=-1).pow(2).mean()
    return ce, z_sq


def naive_posterior_mean(model: DiT, h: torch.Tensor, codebook: torch.Tensor, tau: float) -> torch.Tensor:
    """Reference for :func:`posterior_mean` on materialised logits (eqs. 13 and 15)."""
    pi = torch.softmax(logits_from_features(model, h) / tau, dim=-1)
    return (pi @ codebook.to(pi.dtype)).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------------------------
# Chunked
# ------------------------------------------------------------------------------------------------------------


def _chunk_logits(xc: torch.Tensor, weight: torch.Tensor, bias_column: torch.Tensor | None, groups: int,
                  buffer: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """One chunk's logits, transposed: ``W xc^T + b`` as ``(G, K, c)``, written into ``buffer``; with ``shift``
    ``(G, c)``, each row's logits minus its shift.

    The transposed product (weight first) is the faster GEMM when the chunk has few rows and ``G K`` is large
    (``bench/head.py``). The bias and the shift are written first and the
    product accumulated onto them, the one pass over the chunk a bias add costs anyway. ``buffer`` is a flat float32
    (float64) tensor of at least ``G K c`` elements, reused across chunks: a fresh chunk-sized allocation is a fresh
    ``mmap`` on CPU, whose page faults would cost a visible share of the GEMM's time.
    """
    c = xc.shape[0]
    out = buffer[:weight.shape[0] * c].view(weight.shape[0], c)                                  # (G*K, c)
    if bias_column is None and shift is None:
        if weight.dtype != buffer.dtype:  # autocast: the matmul in low precision, the softmax in float32
            out.copy_(weight @ xc.T)
        else:
            torch.mm(weight, xc.T, out=out)
        return out.view(groups, -1, c)
    start = out.view(groups, -1, c)
    if shift is None:
        start.copy_(bias_column.view(groups, -1, 1))
    elif bias_column is None:
        torch.neg(shift.unsqueeze(1).expand_as(start), out=start)
    else:
        torch.sub(bias_column.view(groups, -1, 1), shift.unsqueeze(1), out=start)
    if weight.dtype != buffer.dtype:
        out.add_(weight @ xc.T)
    else:
        out.addmm_(weight, xc.T)
    return start


def _sums_in_exp_range(sums: torch.Tensor) -> bool:
    """Whether softmax numerators taken with a shift other than each row's max are exact for rows with these sums
    and safe in the gradient matmuls.

    Every sum in ``[tiny^(1/2), max^(1/2)]`` of its dtype (float32: about ``[1e-19, 2e19]``) means no term
    overflowed, none that matters underflowed (terms below ``tiny`` are under ``tiny^(1/2)`` of their row's sum),
    and products with the weights stay in range. Training shifts each row by its target logit, which the max and
    shift passes over the chunk would otherwise cost: the sum is then ``exp(ce)`` of the row, at least 1, and in
    range while the row's cross-entropy is under ~43 nats (float32). A chunk out of range is recomputed with the
    max shift, and so is the rest of the sweep.
    """
    info = torch.finfo(sums.dtype)
    return bool(((sums >= info.tiny ** 0.5) & (sums <= info.max ** 0.5)).all())


def _read_in_exp_range(read: torch.Tensor) -> bool:
    """Whether the posterior read ``[E | 1]^T exp(logits)`` (normaliser last), taken without any shift, is exact: it
    is when it is finite (no exponential or product overflowed; overflow never comes back) and every normaliser is at
    least ``tiny^(1/2)`` (see :func:`_sums_in_exp_range`), i.e. for log-partitions up to ~88 in float32. That saves
    the max and shift passes over every chunk. Log-partitions grow as the model gets confident, so at low ``tau``
    some reads leave the range: a chunk out of range is recomputed with the max shift, and so is the rest of the read.
    """
    return bool(torch.isfinite(read).all() and (read[:, -1] >= torch.finfo(read.dtype).tiny ** 0.5).all())


def _sweep(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, groups: int,
           rows: int, dtype: torch.dtype, grad_ce: torch.Tensor | None = None, grad_z: torch.Tensor | None = None,
           entry_weights: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None]:
    """One pass over row chunks of ``logits = x W^T + b`` viewed as ``(M, G, K)``.

    Returns the log-partition ``lse`` and the target logits, both ``(M, G)`` float32, and, when ``grad_ce`` and
    ``grad_z`` are given, the gradients of ``grad_ce * ce + grad_z * z_sq`` w.r.t. ``x``, ``weight``, ``bias``
    (float32, or float64 for float64 inputs), where ``ce = mean(lse - target)`` and ``z_sq = mean(lse^2)`` over
    all ``M G`` entries: ``dlogits = softmax * s - grad_ce onehot / (M G)`` with the per-entry scale
    ``s = (grad_ce + 2 grad_z lse) / (M G)``. With ``entry_weights`` ``a`` ``(M, G)`` (accumulation dtype) the
    means are weighted, ``sum(a (lse - target)) / sum(a)`` and ``sum(a lse^2) / sum(a)``: ``M G`` becomes ``sum(a)``
    and both gradient terms of an entry are scaled by its ``a`` (a 0/1 mask drops entries from the loss).

    Each chunk's logits are held once, transposed (``(G, K, c)``, see :func:`_chunk_logits`), and turned into the
    softmax numerators in place: ``exp(logits - target logit)``, the shift written with the bias before the matmul,
    while the row sums allow it (:func:`_sums_in_exp_range`), else ``exp(logits - max)``. ``dlogits`` is never
    formed: the scale ``s`` (with the softmax's ``1 / sum`` folded in) is applied to the ``c x r`` side of each
    gradient matmul, and the one-hot term is a gather / index-add of ``c G`` rows.
    """
    m, r = x.shape
    k = weight.shape[0] // groups
    count = m * groups if entry_weights is None else entry_weights.sum()
    acc = torch.promote_types(dtype, torch.float32)
    w = weight.to(dtype)
    bias_column = None if bias is None else bias.to(dtype).unsqueeze(1)
    bias_acc = None if bias is None else bias.to(acc)
    lse = torch.empty(m, groups, dtype=acc, device=x.device)
    tgt = torch.empty_like(lse)
    buffer = torch.empty(weight.shape[0] * min(rows, m), dtype=acc, device=x.device)
    offsets = torch.arange(groups, device=x.device).unsqueeze(1) * k                       # (G, 1)
    grads = None
    if grad_ce is not None:
        gx = torch.empty(x.shape, dtype=acc, device=x.device)
        gw = torch.zeros(groups, k, r, dtype=acc, device=x.device)
        gb = torch.zeros(groups, k, 1, dtype=acc, device=x.device) if bias is not None else None
        grads = (gx, gw.view(-1, r), None if gb is None else gb.view(-1))
        per_group = w.view(groups, k, r)
    by_target = True
    for start in range(0, m, rows):
        stop = min(start + rows, m)
        xc = x[start:stop].to(dtype)                                                        # (c, r)
        xc_acc = xc.to(acc)
        rows_of_targets = (targets[start:stop].T + offsets).reshape(-1)                     # (G*c,) into G*K
        target_rows = weight.index_select(0, rows_of_targets).to(acc).view(groups, -1, r)  # (G, c, r)
        target = (target_rows * xc_acc).sum(-1)                                             # (G, c)
        if bias_acc is not None:
            target += bias_acc.index_select(0, rows_of_targets).view(groups, -1)
        tgt[start:stop] = target.T
        # softmax numerators in place: each row shifted by its target logit, which keeps its sum >= 1 (see
        # _sums_in_exp_range), or, once a chunk's sums leave the range, by its max; lse = shift + log(sum)
        shift = target if by_target else None
        logits = _chunk_logits(xc, w, bias_column, groups, buffer, shift)                  # (G, K, c)
        if by_target:
            unnorm = logits.exp_()
            total = unnorm.sum(dim=1)                                                       # (G, c)
            by_target = _sums_in_exp_range(total)
            if not by_target:
                logits = _chunk_logits(xc, w, bias_column, groups, buffer)
        if not by_target:
            shift = logits.amax(dim=1)                                                      # (G, c)
            unnorm = logits.sub_(shift.unsqueeze(1)).exp_()
            total = unnorm.sum(dim=1)
        lse_c = shift + total.log()
        lse[start:stop] = lse_c.T
        if grads is None:
            continue
        scale = (grad_ce + 2.0 * grad_z * lse_c) / (count * total)                          # (G, c)
        onehot = grad_ce / count
        if entry_weights is not None:
            a = entry_weights[start:stop].T                                                 # (G, c)
            scale = scale * a
            onehot = (onehot * a).unsqueeze(-1)                                             # (G, c, 1)
        scale = scale.unsqueeze(-1)                                                         # (G, c, 1)
        p = unnorm.to(dtype)
        # gx = sum_g dlogits_g^T W_g
        target_term = onehot * target_rows.sum(0) if entry_weights is None else (onehot * target_rows).sum(0)
        gx[start:stop] = (torch.bmm(p.transpose(1, 2), per_group).to(acc) * scale).sum(0) - target_term
        # gW_g += dlogits_g x_c, gb_g += dlogits_g 1
        scaled_x = (scale * xc_acc).to(dtype)                                               # (G, c, r)
        if dtype == acc:
            gw.baddbmm_(p, scaled_x)
        else:
            gw += torch.bmm(p, scaled_x).to(acc)
        target_x = (-onehot * xc_acc).repeat(groups, 1) if entry_weights is None else (-onehot * xc_acc).reshape(-1, r)
        gw.view(-1, r).index_add_(0, rows_of_targets, target_x)
        if gb is not None:
            gb.baddbmm_(unnorm, scale)
            target_b = (-onehot).expand(rows_of_targets.shape) if entry_weights is None else (-onehot).reshape(-1)
            gb.view(-1).index_add_(0, rows_of_targets, target_b.to(acc))
    return lse, tgt, grads


class _LinearCrossEntropy(torch.autograd.Function):
    """``(ce, z_sq)`` of ``logits = x W^T + b`` without materialising all logits; see :func:`_sweep`."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, groups, rows, z_loss_weight, entry_weights):  # noqa: D102
        dtype = matmul_dtype(x)
        acc = torch.promote_types(dtype, torch.float32)
        if entry_weights is not None:
            entry_weights = entry_weights.to(acc)
        with torch.autocast(x.device.type, enabled=False):
            if z_loss_weight is None:
                lse, tgt, grads = _sweep(x, weight, bias, targets, groups, rows, dtype, entry_weights=entry_weights)
            else:
                one = torch.ones((), dtype=acc, device=x.device)
                lse, tgt, grads = _sweep(x, weight, bias, targets, groups, rows, dtype, one, one * z_loss_weight,
                                         entry_weights)
        ctx.save_for_backward(x, weight, bias, targets, entry_weights)
        ctx.groups, ctx.rows, ctx.dtype, ctx.z_loss_weight, ctx.grads = groups, rows, dtype, z_loss_weight, grads
        if entry_weights is None:
            return (lse - tgt).mean(), lse.pow(2).mean()
        total = entry_weights.sum()
        return ((lse - tgt) * entry_weights).sum() / total, (lse.pow(2) * entry_weights).sum() / total

    @staticmethod
    def backward(ctx, grad_ce, grad_z):  # noqa: D102
        x, weight, bias, targets, entry_weights = ctx.saved_tensors
        grads, ctx.grads = ctx.grads, None
        ce_w, z_w = float(grad_ce), float(grad_z)
        if grads is not None and abs(z_w - ctx.z_loss_weight * ce_w) <= 1e-6 * abs(ctx.z_loss_weight * ce_w):
            gx, gw, gb = (None if g is None else g.mul_(grad_ce) for g in grads)
        else:
            with torch.autocast(x.device.type, enabled=False):
                _, _, (gx, gw, gb) = _sweep(x, weight, bias, targets, ctx.groups, ctx.rows, ctx.dtype,
                                            grad_ce, grad_z, entry_weights)
        return (gx.to(x.dtype), gw.to(weight.dtype), None if gb is None else gb.to(bias.dtype),
                None, None, None, None, None)


def linear_cross_entropy_and_zloss(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                   targets: torch.Tensor, groups: int = 1, z_loss_weight: float | None = None,
                                   chunk_bytes: int | None = None, entry_weights: torch.Tensor | None = None
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (eq. 14) and mean squared log-partition (App. D) of ``G`` linear classifiers, chunked.

    Args:
        x: rows ``(M, r)``.
        weight: ``(G*K, r)``; group ``g`` owns rows ``g*K:(g+1)*K``.
        bias: ``(G*K,)`` or ``None``.
        targets: ``(M, G)`` class ids in ``[0, K)``.
        groups: ``G``.
        z_loss_weight: the weight the caller gives ``z_sq`` in its loss; when given, gradients are computed in the
            forward sweep (no recomputation); any other use of the outputs is still differentiated correctly.
        chunk_bytes: memory budget for one chunk of logits; default by device (:data:`DEFAULT_CHUNK_BYTES`).
        entry_weights: optional ``(M, G)`` non-negative weights (not differentiated), with a positive sum: the
            means become weighted means, so a 0/1 mask averages over the selected entries only.

    Returns:
        ``(ce, z_sq)``, float32 (float64 for float64 inputs) scalars averaged over all ``M G`` entries (weighted
        by ``entry_weights`` when given).
    """
    rows = chunk_rows(x.shape[0], weight.shape[0], x.device, chunk_bytes, matmul_dtype(x))
    return _LinearCrossEntropy.apply(x, weight, bias, targets.long(), groups, rows, z_loss_weight, entry_weights)


def cross_entropy_and_zloss(model: DiT, h: torch.Tensor, codes: torch.Tensor, z_loss_weight: float | None = None,
                            chunk_bytes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy to ``codes`` ``(B, H, W)`` (eq. 14) and mean squared log-partition (App. D).

    Equal to :func:`naive_cross_entropy_and_zloss` (values and gradients) without materialising all logits.
    Pass the loss's ``z_loss_weight`` to get the gradients of ``ce + z_loss_weight * z_sq`` at no extra matmul.
    A grid padded to the patch size (``models.heads``) averages over its real positions only.
    """
    head = model.head
    if head.padding:
        every = torch.ones(codes.shape, dtype=torch.bool, device=codes.device)
        return masked_cross_entropy_and_zloss(model, h, codes, every, z_loss_weight, chunk_bytes)
    return linear_cross_entropy_and_zloss(head.rows(h), head.classifier_weight, head.classifier_bias,
                                          head.row_targets(codes), head.groups, z_loss_weight, chunk_bytes)


def masked_cross_entropy_and_zloss(model: DiT, h: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor,
                                   z_loss_weight: float | None = None, chunk_bytes: int | None = None
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cross_entropy_and_zloss` averaged over the positions where ``mask`` ``(B, H, W)`` is true only.

    Equal to :func:`naive_masked_cross_entropy_and_zloss` (values and gradients); ``mask`` must select at least one
    position. Only the head's rows that feed a selected position go through the classifier: with one row per
    position (patch size 1, or the factorised head) those are exactly the selected positions; with the full head
    and patch size ``p > 1`` a row (a token) feeds ``p*p`` positions, so the rows with any selected sub-position
    are kept and each of their entries is weighted 1 (selected) or 0 (not).
    """
    head = model.head
    chosen = head.row_targets(mask)                                              # (M, G) bool
    keep = chosen.any(dim=1).nonzero().squeeze(1)                               # rows feeding a selected position
    x = head.rows(h).index_select(0, keep)
    targets = head.row_targets(codes).index_select(0, keep)
    entries = chosen.index_select(0, keep)
    weights = None if bool(entries.all()) else entries
    return linear_cross_entropy_and_zloss(x, head.classifier_weight, head.classifier_bias, targets, head.groups,
                                          z_loss_weight, chunk_bytes, weights)


def _fold_bias_into_values(values: torch.Tensor, bias: torch.Tensor | None, tau: float, groups: int,
                           acc: torch.dtype, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The read's values ``(G, d+1, K)`` and the bias column left for the logits matmul (``None`` when folded).

    ``softmax(l + b) = softmax(l) * exp(b)`` renormalised, so the bias can scale the values instead of being added
    to every chunk's logits (on CPU that add is a full write and read of the chunk). Each group's bias is shifted to
    a maximum of 0 first; folding is exact as long as ``exp(b / tau - max)`` stays well inside the float range, which
    :data:`FOLDED_BIAS_MAX_SPREAD` guarantees: then every row's normaliser is at least ``exp(-spread)``.
    """
    unfolded = values.expand(groups, -1, -1).contiguous()
    if bias is None:
        return unfolded, None
    shifted = (bias.to(acc) / tau).view(groups, values.shape[1])
    shifted = shifted - shifted.amax(dim=1, keepdim=True)
    if shifted.min() < -FOLDED_BIAS_MAX_SPREAD:
        return unfolded, (bias / tau).to(dtype).unsqueeze(1)
    return values.unsqueeze(0) * shifted.exp().unsqueeze(1), None


def posterior_mean(model: DiT, h: torch.Tensor, codebook: torch.Tensor, tau: float,
                   chunk_bytes: int | None = None) -> torch.Tensor:
    """``mu = softmax(logits / tau) @ E`` (eqs. 13 and 15) as latents ``(B, d, H, W)``, chunk by chunk.

    An attention read over the codebook: queries are the head's rows, keys its classifier weights, values ``E``.
    Softmax and the read are in float32 (float64 for float64 inputs) whatever the autocast dtype of the logits matmul.
    For sampling: no autograd graph is built (the chunks are written into one reused buffer).
    """
    head = model.head
    x = head.rows(h)                                                            # (M, r)
    groups, k = head.groups, head.out_channels
    dtype = matmul_dtype(x)
    acc = torch.promote_types(dtype, torch.float32)
    rows = chunk_rows(x.shape[0], groups * k, x.device, chunk_bytes, dtype)
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        # logits / tau = W (x / tau)^T + b / tau: the temperature costs a pass over the rows, not over the logits
        w = head.classifier_weight.to(dtype)
        # values [E | 1]^T: one matmul gives both sum_k e_k E_k and the softmax normaliser sum_k e_k. Read as
        # [E | 1]^T (G, K, c), not chunk^T [E | 1]: with d + 1 output columns the latter ran ~8x slower on CPU
        values = torch.cat([codebook.to(acc), codebook.new_ones(k, 1, dtype=acc)], dim=1).T                # (d+1, K)
        values, bias_column = _fold_bias_into_values(values, head.classifier_bias, tau, groups, acc, dtype)
        buffer = torch.empty(groups * k * min(rows, x.shape[0]), dtype=acc, device=x.device)
        parts = []
        shifted = False
        for start in range(0, x.shape[0], rows):
            xc = x[start:start + rows].div(tau).to(dtype)
            logits = _chunk_logits(xc, w, bias_column, groups, buffer)                            # (G, K, c)
            if not shifted:  # exp(logits), kept if the read is in range (see _read_in_exp_range)
                read = torch.bmm(values, logits.exp_())                                     # (G, d+1, c)
                shifted = not _read_in_exp_range(read)
                if shifted:
                    logits = _chunk_logits(xc, w, bias_column, groups, buffer)
            if shifted:      # exp(logits - max)
                read = torch.bmm(values, logits.sub_(logits.amax(dim=1, keepdim=True)).exp_())
            parts.append((read[:, :-1] / read[:, -1:]).permute(2, 0, 1))                    # (c, G, d)
    return head.from_rows(torch.cat(parts), h.shape[0]).permute(0, 3, 1, 2)
