"""Conv-basis attention: causal attention as a sum of k convolution matrices, applied with FFTs.

Liang, Liu, Shi, Song, Xu, Yin et al., "Conv-Basis: A New Paradigm for Efficient Attention
Inference and Gradient Computation in Transformers" (arXiv 2405.05219).

Notation (one head, sequence length n):

    H = M ∘ (s · Q Kᵀ)          masked pre-softmax logits (M lower-triangular, s the scaling)
    A = M ∘ exp(H),  Z = A 1,  Y = diag(Z)⁻¹ A V

`H` has a k-conv basis when `H = Σ_i conv(b_i, m_i)`. This module uses the equivalent
*segment form*: column j's profile is `c_j[t] = H[j + t, j]`; there are breakpoints
`0 = j_1 < ... < j_k < n` and profiles `s_1..s_k` such that every column j of segment i
(`j_i <= j < j_{i+1}`) has `c_j = s_i[:n - j]` (then `m_i = n - j_i`, `b_1 = s_1`,
`b_i = s_i - s_{i-1}[:m_i]`). Entrywise functions keep the structure (exp, Gemma-2's
`cap · tanh(H / cap)`), so with `e_i = exp(s_i - C)`:

    numerator   N = Σ_i e_i ⊛ (V restricted to the columns of segment i)      (causal convolution)
    denominator Z = Σ_i e_i ⊛ (1 restricted to the columns of segment i)
    Y = N / Z

computed with block FFTs summed in the frequency domain (`_fft_segments`; segments only a few
columns wide, common with the paper's recovery, are summed directly in O(width · n · d)). No
n × n tensor is formed on the convolution path.

Numerics. An FFT convolution's error is relative to its largest term, so a row whose mass
is far below the largest kernel value loses all precision. In float64 (training, float64
inputs, and the fallback below) each kernel is therefore split into *magnitude bands* of width
`B` nats (`e^{-B} < ẽ <= 1` within a band after rescaling), each band is convolved separately,
and band m's result is kept only on the rows that touch at least one of its entries (an exact
0/1 convolution of indicators). A kept band contributes at least `e^{-B}` (relative) to a row,
so every row's relative error is about `eps · e^B`, whatever the spread of the logits.

Inference runs the FFTs in float32 with one band (their pass is about 1.7x faster) and checks
every row instead (`_apply_basis`): the rounding error of block pair (r, p) is about
`eps · ‖g‖₂ ‖V_p‖₂`, so each row gets an error estimate from the block norms, and the rows over
`_FLOAT32_TOLERANCE` are recomputed, those of the first quarter as a float64 prefix (the first
rows hold little mass next to the kernel window they share with later rows), the later ones
densely. Too many unsure rows, or a kernel spanning more than float32's range, and the head
group runs in float64. Float32 with three 7-nat bands was tried first: slower than float64.
The kernel logits are computed in the input precision (at least float32, as exact attention
computes them) and exponentiated in the FFT precision relative to their peak: in float32 that
rounds each weight by at most ~5e-6 (80 nats · 6e-8), which the estimate does not include.
Without autograd the largest buffers are reused from one head group to the next.

Beyond the paper: an exact local window (the last `local_window` columns of each row are
computed exactly, the basis covers the farther ones), exact sink columns (the first
`sink_tokens` columns are their own one-column segments, hence exact) and an `"auto"` policy
that keeps the basis only for heads whose error on sampled rows is under a tolerance.
"""

import torch

__all__ = [
    "conv_basis_decompose",
    "conv_basis_recompose",
    "recover_conv_basis",
    "conv_basis_attention",
    "exact_attention",
    "sampled_row_error",
]

POLICIES = ("paper", "auto")

# Precision of the FFTs and band width B (nats): eps · e^B ≈ 2e-6.
_FFT_DTYPE = torch.float64
_BAND_WIDTH = 23.0

# Float32 FFTs (inference): a row's relative error is estimated as this factor times the error scale of
# `_fft_segments` (the largest ratio measured on k-conv logits of std 1-4, n up to 65536, was 0.42 of it) and
# must stay under the tolerance.
_FLOAT32_ERROR_FACTOR = torch.finfo(torch.float32).eps
_FLOAT32_TOLERANCE = 1e-4
# Kernels spanning more nats than this would underflow in float32 (normal down to e^-87), which the estimate does
# not see: they run in float64.
_FLOAT32_RANGE = 80.0
# Unsure rows after the first quarter are evaluated densely, this many at a time, while rows × keys stays under
# `_DENSE_KEYS_PER_POSITION · n` (about what float32 saves; dense rows cost ~10 ns per key); else float64.
_DENSE_ROW_GROUP = 64
_DENSE_KEYS_PER_POSITION = 32

# Heads are applied in groups of at most this many (batch · head · position) rows.
_HEAD_POSITIONS = 2**15

# Channels are convolved in chunks of at most this many bytes of (batch · head · channel · position) values:
# the spectra and their layout copies then stay in cache (float32, k = 8: best at n = 32768 and 65536 among 1, 1.25,
# 1.5 and 2 MiB, 8% slower than 1 MiB at 16384).
_CHUNK_BYTES = 3 * 2**19

# Positions per tile when transposing V for the FFTs and converting Q for the kernel logits.
_TRANSPOSE_TILE = 2048

# Segments at most this many columns wide are summed directly: W·n·d work beats a block of FFTs.
_DIRECT_MAX_WIDTH = 16

# PyTorch's fused CPU flash kernel, which also returns each row's log-sum-exp. It is a private op: without it the
# local window runs through plain matrix products.
_CPU_FLASH_ATTENTION = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


# ----------------------------------------------------------------------------------------------
# The existence result: exact decomposition of a lower-triangular matrix into its conv basis
# ----------------------------------------------------------------------------------------------


def conv_basis_decompose(matrix: torch.Tensor, atol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact conv basis (segment form) of a lower-triangular matrix.

    Column j starts a new segment unless its profile equals the previous column's profile
    shifted by one (`H[r, j] == H[r - 1, j - 1]` for all `r >= j`); by induction every column
    of a segment then equals the segment's first column, so `k <= n` always exists.

    Args:
        matrix (`torch.Tensor` of shape `(n, n)`): lower-triangular; entries above the diagonal are ignored.
        atol (`float`, defaults to 0.0): largest absolute difference still counted as equal.

    Returns:
        `tuple(torch.Tensor, torch.Tensor)`: `breakpoints` (long, `(k,)`, starting with 0) and
        `profiles` (`(k, n)`): `profiles[i, t] = matrix[j_i + t, j_i]`, zero for `t >= n - j_i`.
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be a square (n, n) tensor, got shape {tuple(matrix.shape)}")
    n = matrix.shape[0]
    lower = torch.ones(n, n, dtype=torch.bool, device=matrix.device).tril()
    shifted = torch.zeros_like(matrix)
    shifted[1:, 1:] = matrix[:-1, :-1]  # shifted[r, j] = H[r - 1, j - 1]
    differs = ((matrix - shifted).abs() > atol) & lower
    is_break = differs[:, 1:].any(dim=0)
    breakpoints = torch.cat([torch.zeros(1, dtype=torch.long, device=matrix.device), 1 + is_break.nonzero().flatten()])
    return breakpoints, _column_profiles(matrix, breakpoints)


def _column_profiles(matrix: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    n = matrix.shape[0]
    t = torch.arange(n, device=matrix.device)
    rows = columns[:, None] + t[None, :]
    valid = rows < n
    values = matrix[rows.clamp(max=n - 1), columns[:, None].expand_as(rows)]
    return torch.where(valid, values, torch.zeros((), dtype=matrix.dtype, device=matrix.device))


def conv_basis_recompose(breakpoints: torch.Tensor, profiles: torch.Tensor, n: int) -> torch.Tensor:
    """Lower-triangular `(n, n)` matrix of a conv basis in segment form (inverse of `conv_basis_decompose`).

    Args:
        breakpoints (`torch.Tensor` of shape `(k,)`): increasing column indices, the first one 0.
        profiles (`torch.Tensor` of shape `(k, n)`): segment profiles `s_i`.
        n (`int`): matrix size.

    Returns:
        `torch.Tensor` of shape `(n, n)`: `H[r, j] = s_i[r - j]` for `r >= j`, j in segment i; 0 above the diagonal.
    """
    breakpoints = torch.as_tensor(breakpoints, dtype=torch.long)
    if breakpoints.ndim != 1 or breakpoints.numel() == 0 or int(breakpoints[0]) != 0:
        raise ValueError(f"breakpoints must be a 1-D tensor starting with 0, got {breakpoints.tolist()}")
    if bool((breakpoints[1:] <= breakpoints[:-1]).any()) or int(breakpoints[-1]) >= n:
        raise ValueError(f"breakpoints must increase strictly and stay below n={n}, got {breakpoints.tolist()}")
    if profiles.shape != (breakpoints.numel(), n):
        raise ValueError(f"profiles must have shape ({breakpoints.numel()}, {n}), got {tuple(profiles.shape)}")
    columns = torch.arange(n, device=profiles.device)
    segment = torch.searchsorted(breakpoints.to(profiles.device), columns, right=True) - 1  # segment of each column
    lag = columns[:, None] - columns[None, :]  # r - j
    values = profiles[segment[None, :].expand(n, n), lag.clamp(min=0)]
    return torch.where(lag >= 0, values, torch.zeros((), dtype=profiles.dtype, device=profiles.device))


# ----------------------------------------------------------------------------------------------
# Shared pieces: logits on demand, masks, exact attention
# ----------------------------------------------------------------------------------------------


def _transform_logits(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    # Gemma-2 soft capping is entrywise, so it keeps the Toeplitz structure.
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


def _expand_kv(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    # Grouped-query attention: each key/value head serves num_heads // num_kv_heads query heads.
    groups = num_heads // tensor.shape[1]
    return tensor if groups == 1 else tensor.repeat_interleave(groups, dim=1)


def exact_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scaling: float,
    softcap: float | None = None,
    key_mask: torch.Tensor | None = None,
    sliding_window: int | None = None,
    dropout: float = 0.0,
    query_positions: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    row_chunk: int = 1024,
) -> torch.Tensor:
    """Exact causal attention, computed in blocks of query rows (memory O(row_chunk · n)).

    By default the queries are the last `Lq` positions of the keys (a query shorter than the
    keys is the tail of the sequence, as with a KV cache). Rows without any visible key give 0.

    Args:
        query (`torch.Tensor` of shape `(B, H, Lq, D)`), key (`(B, H, Lk, D)`), value (`(B, H, Lk, Dv)`).
        scaling (`float`): multiplies `Q Kᵀ`.
        softcap (`float`, *optional*): logits become `softcap · tanh(logits / softcap)`.
        key_mask (`torch.Tensor` of shape `(B, Lk)`, *optional*): True for keys that may be attended.
        sliding_window (`int`, *optional*): a row sees only the keys `r - c < sliding_window`.
        dropout (`float`, defaults to 0.0): dropout probability on the attention weights.
        query_positions (`torch.Tensor` of shape `(Lq,)`, *optional*): key position of each query row.
        attention_mask (`torch.Tensor` (bool), broadcastable to `(B, H, Lq, Lk)`, *optional*): True = attend.
            When given it is the whole visibility pattern (as built by transformers, cache offsets included)
            and replaces the causal, sliding-window and key masks.
        row_chunk (`int`, defaults to 1024): query rows per block.

    Returns:
        `torch.Tensor` of shape `(B, H, Lq, Dv)` in the dtype of `query`.
    """
    lq, lk = query.shape[2], key.shape[2]
    plain_causal = attention_mask is None and key_mask is None and sliding_window is None and query_positions is None
    if softcap is None and plain_causal and lq == lk:  # PyTorch's fused kernel computes the same thing faster
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, is_causal=True, scale=scaling, dropout_p=dropout
        )
    compute_dtype = torch.promote_types(query.dtype, torch.float32)
    q, k, v = query.to(compute_dtype), key.to(compute_dtype), value.to(compute_dtype)
    columns = torch.arange(lk, device=q.device)
    if query_positions is None:
        query_positions = torch.arange(lk - lq, lk, device=q.device)
    outputs = []
    for start in range(0, lq, row_chunk):
        rows = query_positions[start : start + row_chunk]
        logits = _transform_logits(scaling * q[:, :, start : start + rows.numel()] @ k.transpose(-1, -2), softcap)
        if attention_mask is not None:
            visible = attention_mask[..., start : start + rows.numel(), :].bool()
        else:
            lag = rows[:, None] - columns[None, :]
            visible = lag >= 0
            if sliding_window is not None:
                visible = visible & (lag < sliding_window)
            visible = visible[None, None]
            if key_mask is not None:
                visible = visible & key_mask[:, None, None, :].bool()
        logits = logits.masked_fill(~visible, float("-inf"))
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # fully masked rows -> 0
        if dropout > 0.0:
            weights = torch.nn.functional.dropout(weights, p=dropout)
        outputs.append(weights @ v)
    return torch.cat(outputs, dim=2).to(query.dtype)


def sampled_row_error(approx: torch.Tensor, reference: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Largest relative error per head over (sampled) rows: `max_r ‖Ỹ_r - Y_r‖₂ / ‖Y_r‖₂`.

    Rows whose reference norm is below 1e-6 of the head's largest row norm are measured
    against that floor instead, so near-zero rows do not dominate.

    Args:
        approx (`torch.Tensor` of shape `(B, H, L, D)`), reference (same shape).
        rows (`torch.Tensor`, *optional*): row indices to compare; all rows by default.

    Returns:
        `torch.Tensor` of shape `(B, H)` (float32).
    """
    if rows is not None:
        approx, reference = approx[:, :, rows], reference[:, :, rows]
    approx, reference = approx.double(), reference.double()
    ref_norm = reference.norm(dim=-1)
    floor = 1e-6 * ref_norm.amax(dim=-1, keepdim=True) + torch.finfo(torch.float64).tiny
    return ((approx - reference).norm(dim=-1) / torch.maximum(ref_norm, floor)).amax(dim=-1).float()


# ----------------------------------------------------------------------------------------------
# The paper's recovery of the basis from Q and K
# ----------------------------------------------------------------------------------------------


def _rows_at(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`tensor[b, h, index[b, h, ...]]` for `tensor` `(B, H, n, D)` -> `(B, H, ..., D)` (one flat index_select)."""
    batch, num_heads, n, dim = tensor.shape
    base = (torch.arange(batch * num_heads, device=tensor.device) * n).view(
        batch, num_heads, *([1] * (index.ndim - 2))
    )
    flat = tensor.reshape(-1, dim).index_select(0, (base + index.clamp(max=n - 1)).flatten())
    return flat.view(*index.shape, dim)


def _profile_entries(q, k, columns, lags, scaling, softcap):
    """`H[j + t, j]` for per-head columns j `(B, H, P)` and lags t `(T,)` -> `(B, H, P, T)` (NaN past the end)."""
    rows = columns[..., None] + lags  # (B, H, P, T)
    values = (_rows_at(q, rows) @ _rows_at(k, columns)[..., None]).squeeze(-1)
    return _transform_logits(scaling * values, softcap).masked_fill(rows >= q.shape[2], float("nan"))


def recover_conv_basis(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scaling: float,
    num_bases: int | None = None,
    probe_len: int = 16,
    threshold: float = 1e-4,
    softcap: float | None = None,
    sliding_window: int | None = None,
    local_window: int = 0,
    sink_tokens: int = 0,
    key_mask: torch.Tensor | None = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Breakpoints of a conv basis of `H = M ∘ (s Q Kᵀ)` per (batch, head), without forming `Q Kᵀ`.

    Profiles are compared on lags `t` in `[local_window, local_window + probe_len)` (only the
    lags the basis is used for); lags at or beyond `sliding_window` are masked and never compared.

    - `num_bases=k` (the paper): after the previous breakpoint `a` with profile `s = c_a`, the
      next breakpoint is the smallest `j > a` with `‖c_j[:T] - s[:T]‖₁ > T · threshold`, found by
      a search over columns (O(log n) probes of O(T d) each; valid when the test is monotone, which
      the paper's non-degeneracy assumption guarantees), up to k breakpoints.
    - `num_bases=None` (exact): column j starts a segment iff its full profile differs from
      the previous column's by more than `threshold` in some entry (`H[r, j]` vs `H[r-1, j-1]`).
      Costs O(n² d) in blocks of `chunk_size` rows; the result is an exact basis.

    Args:
        query (`torch.Tensor` of shape `(B, H, n, D)`), key (`(B, Hkv, n, D)`, `Hkv` divides `H`).
        scaling (`float`): `s`.
        num_bases (`int`, *optional*): k, the number of bases after the sink columns; `None` = exact.
        probe_len (`int`, defaults to 16): T, the profile prefix compared by the binary search.
        threshold (`float`, defaults to 1e-4): mean absolute logit difference that separates profiles
            (the paper's ℓ1 test with `τ = T · threshold`).
        softcap (`float`, *optional*): Gemma-2 logit soft capping, applied before comparing.
        sliding_window (`int`, *optional*): lags `t >= sliding_window` are masked.
        local_window (`int`, defaults to 0): lags `t < local_window` are computed exactly elsewhere.
        sink_tokens (`int`, defaults to 0): the first attended columns are one-column segments each.
        key_mask (`torch.Tensor` of shape `(B, n)`, *optional*): attended keys. With left padding the
            recovery starts at the first attended key; the padding columns form one segment of their own.
        chunk_size (`int`, defaults to 256): rows per block in exact mode.

    Returns:
        `torch.Tensor` (long) of shape `(B, H, K)`: increasing breakpoints per head, padded with `n`.
    """
    _check_attention_inputs(query, key, None)
    if num_bases is not None and num_bases < 1:
        raise ValueError(f"num_bases must be None or an integer >= 1, got {num_bases}")
    if probe_len < 1:
        raise ValueError(f"probe_len must be >= 1, got {probe_len}")
    batch, num_heads, n, _ = query.shape
    k = _expand_kv(key, num_heads)
    device = query.device
    lag_end = n if sliding_window is None else min(n, sliding_window)
    with torch.no_grad():
        # Left padding: the basis starts at the first attended key (0 without a mask).
        offset = torch.zeros(batch, dtype=torch.long, device=device)
        if key_mask is not None:
            offset = torch.where(key_mask.any(-1), key_mask.long().argmax(-1), offset)
        leading = torch.where(offset > 0, 0, n)[:, None]  # the padding columns' own segment
        sinks = (offset[:, None] + torch.arange(sink_tokens, device=device)).clamp(max=n)
        first = (offset + sink_tokens).clamp(max=n)[:, None].expand(batch, num_heads)
        if num_bases is None:
            far = _exact_breakpoints(query, k, scaling, softcap, local_window, lag_end, first, threshold, chunk_size)
        else:
            far = _binary_search_breakpoints(
                query, k, scaling, softcap, local_window, lag_end, first, num_bases, probe_len, threshold
            )
        fixed = torch.cat([leading, sinks], dim=-1)[:, None].expand(batch, num_heads, -1)
        breakpoints = torch.cat([fixed, far], dim=-1).sort(dim=-1).values
    return breakpoints[..., : int((breakpoints < n).sum(-1).max())]


def _exact_breakpoints(q, k, scaling, softcap, lag_start, lag_end, first, threshold, chunk_size):
    batch, num_heads, n, _ = q.shape
    columns = torch.arange(n, device=q.device)
    is_break = torch.zeros(batch, num_heads, n, dtype=torch.bool, device=q.device)
    is_break.scatter_(-1, first[..., None].clamp(max=n - 1), (first < n)[..., None])
    first = first[..., None, None]
    previous = None
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        logits = _transform_logits(scaling * q[:, :, start:stop] @ k.transpose(-1, -2), softcap)  # rows start..stop
        # H[r - 1, j - 1] for r in [start, stop), j >= 1: the previous row, one column to the left.
        above = torch.cat([previous, logits[:, :, :-1]], dim=2) if previous is not None else logits[:, :, :-1]
        rows = torch.arange(start if previous is not None else start + 1, stop, device=q.device)
        current = logits[:, :, rows - start, 1:]
        lag = rows[:, None] - columns[None, 1:]
        compared = (lag >= lag_start) & (lag < lag_end) & (columns[None, 1:] > first)  # (B, H, rows, columns)
        differs = ((current - above[..., :-1]).abs() > threshold) & compared
        is_break[..., 1:] |= differs.any(dim=2)
        previous = logits[:, :, -1:]
    order = torch.where(is_break, columns, n).sort(dim=-1).values
    return order[..., : int(is_break.sum(-1).max())]


def _binary_search_breakpoints(
    q, k, scaling, softcap, lag_start, lag_end, first, num_bases, probe_len, threshold, fan_out=64
):
    """The paper's search, probing `fan_out` evenly spaced columns per step instead of one (same answer
    for a monotone test, log_{fan_out}(n) steps instead of log_2(n): fewer, larger tensor operations)."""
    batch, num_heads, n, _ = q.shape
    lags = torch.arange(lag_start, min(lag_start + probe_len, max(lag_end, lag_start + 1)), device=q.device)
    spread = torch.arange(fan_out, device=q.device)
    current = first
    found = [current]
    active = current < n
    for _ in range(num_bases - 1):
        reference = _profile_entries(q, k, current[..., None], lags, scaling, softcap)  # s[:T], (B, H, 1, T)
        low, high = current + 1, torch.full_like(current, n)  # answer in [low, high]; high = n means none
        while bool((searching := active & (low < high)).any()):
            candidates = (low[..., None] + (high - low)[..., None] * spread // fan_out).clamp(max=n - 1)
            gap = (_profile_entries(q, k, candidates, lags, scaling, softcap) - reference).abs()  # (B, H, fan, T)
            count = (~gap.isnan()).sum(-1)
            # the paper's test ‖c_j[:T] - s[:T]‖₁ > T · threshold
            hits = (gap.nan_to_num(0.0).sum(-1) > threshold * count) & (count > 0)
            first_hit = hits.long().argmax(-1, keepdim=True)  # the smallest probed column that differs
            any_hit = hits.any(-1)
            before_hit = torch.where(
                first_hit > 0, candidates.gather(-1, (first_hit - 1).clamp(min=0)) + 1, low[..., None]
            )
            high = torch.where(searching & any_hit, candidates.gather(-1, first_hit)[..., 0], high)
            low = torch.where(searching, torch.where(any_hit, before_hit[..., 0], candidates[..., -1] + 1), low)
        active = active & (low < n)
        current = torch.where(active, low, current)
        found.append(torch.where(active, low, torch.full_like(low, n)))
        if not bool(active.any()):
            break
    return torch.stack(found, dim=-1)


# ----------------------------------------------------------------------------------------------
# Applying a basis with FFTs
# ----------------------------------------------------------------------------------------------


def _block_size(n: int) -> int:
    # Smallest power of two >= n / 16, so about 16 blocks: balances the O(n log b) FFTs against the O(n² / b)
    # block sums and their layout copies (measured on CPU, k = 8: the best power of two for n = 4k..128k).
    return 1 << max(0, (-(-n // 16) - 1).bit_length())


def _kernel_windows(signal: torch.Tensor, block: int, num_blocks: int) -> torch.Tensor:
    """The kernel windows `g_δ[t] = e[δ·block + t - (block - 1)]`, δ < num_blocks: `(..., n)` -> `(..., num_blocks, 2·block)`."""
    left = block - 1
    padded = torch.nn.functional.pad(signal, (left, (num_blocks + 1) * block - left - signal.shape[-1]))
    return padded.unfold(-1, 2 * block, block)


def _segment_kernels(q, k, starts, scaling, softcap, sliding_window, local_window):
    """Kernel logits `s_i[t] = H[j_i + t, j_i]` (the profile of each segment's first column), `-inf` where unused."""
    batch, num_heads, n, _ = q.shape
    lags = torch.arange(n, device=q.device)
    # The logits in the precision of the inputs (at least float32), as exact attention computes them; half-precision
    # Q is converted a tile of rows at a time, as a float32 copy of all of it would be mapped afresh on every call.
    dtype = torch.promote_types(q.dtype, torch.float32)
    start_keys = _rows_at(k, starts).to(dtype) * scaling  # (B, H, K, D)
    scores = q.new_empty(*starts.shape, n, dtype=_FFT_DTYPE)
    for first in range(0, n, _TRANSPOSE_TILE):
        tile = q[:, :, first : first + _TRANSPOSE_TILE].to(dtype)
        scores[..., first : first + _TRANSPOSE_TILE] = torch.einsum("bhnd,bhkd->bhkn", tile, start_keys)
    kernel = _transform_logits(scores.gather(-1, (starts[..., None] + lags).clamp_(max=n - 1)), softcap)
    used = (lags < n - starts[..., None]) & (lags >= local_window)  # the local window's lags are computed exactly
    if sliding_window is not None:
        used = used & (lags < sliding_window)
    return kernel.masked_fill_(~used, float("-inf"))


def _buffer(workspace, name, shape, dtype, device):
    """An uninitialised tensor, kept in `workspace` (a dict; None for a fresh tensor) for the next head group."""
    if workspace is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if (name, dtype) not in workspace or workspace[name, dtype].shape != torch.Size(shape):
        workspace[name, dtype] = torch.empty(shape, dtype=dtype, device=device)
    return workspace[name, dtype]


def _fft_segments(kernel, starts, ends, augmented, band_width, workspace):
    """Σ_i e_i ⊛ (augmented restricted to segment i) with FFTs, in magnitude bands: `(sums, log_scale, error_scale)`.

    Uniformly partitioned convolution: rows and columns are cut into blocks of `b` (`_block_size`).
    Output block r is `Σ_c T_{r-c} V_c` with `V_c` the columns of block c and `T_δ` the Toeplitz block of
    lags `(δb - b, δb + b)`; in the frequency domain (rFFT of length 2b, overlap-save) each term is a
    product, so the sum over column blocks is one small matrix product per frequency:

        Ŷ_r(f) = Σ_p ĝ_{i_p, r - c_p}(f) · V̂_p(f)        over pieces p = (segment i_p, column block c_p ≤ r)

    where a piece holds the columns of segment i_p inside block c_p (blocks cut by a breakpoint give one
    piece per segment). The FFT work is O(n log b) per channel whatever k is; the block sums cost O(n² / b).
    Channels go a few at a time (`_CHUNK_BYTES`), so each chunk's spectra and their layout copies stay in
    cache and its buffers are reused.

    With one band (`band_width=inf`), `error_scale` `(B, H, 2, n)` sizes the rounding error of each row's
    numerator (2-norm over the value channels) and denominator, in the scale of `sums` and in units of the
    FFT precision. An FFT convolution's error is about its precision times `‖g‖₂ ‖x‖₂`, and the errors of
    different pieces are independent, so output block r's is `(Σ_p ‖g_{i_p, r - c_p}‖₂² ‖x_p‖₂²)^½`.
    With several bands it is None.
    """
    batch, num_heads, channels, n = augmented.shape
    used = kernel > -torch.inf
    single_band = band_width == float("inf")
    if not bool(used.any()):  # every kernel entry lies in the exact local window
        error_scale = augmented.new_zeros(batch, num_heads, 2, n) if single_band else None
        return augmented.new_zeros(batch, num_heads, channels, n), augmented.new_full((batch, num_heads, n), -torch.inf), error_scale
    # Magnitude bands (see module docstring): ẽ = exp(s - C + mB) in (e^-B, 1] on band m, `band_masks[m]` its
    # entries; float32's single band has m = 0 and an infinite width.
    peak = kernel.detach().amax(dim=(-1, -2), keepdim=True)  # C, one constant per head
    peak = torch.where(peak.isfinite(), peak, torch.zeros_like(peak))
    band_masks = {0: used}
    if not single_band:
        band = torch.where(used, ((peak - kernel.detach()) / band_width).floor(), torch.zeros_like(kernel)).long()
        band_masks = {m: used & (band == m) for m in range(int(band.max()) + 1)}
        band_masks = {m: mask for m, mask in band_masks.items() if bool(mask.any())}
    bands = list(band_masks)

    block = _block_size(n)
    num_blocks = -(-n // block)
    device = augmented.device
    block_starts = torch.arange(num_blocks, device=device) * block
    # Pieces (segment i, column block c) holding a column of segment i for some head, zero-padded to 2b.
    holds = (starts[..., None] < block_starts + block) & (ends[..., None] > block_starts) & used.any(-1)[..., None]
    piece_segment, piece_block = holds.flatten(0, 1).any(0).nonzero(as_tuple=True)
    columns = piece_block[:, None] * block + torch.arange(block, device=device)  # (P, b)
    in_piece = (columns >= starts[..., piece_segment, None]) & (columns < ends[..., piece_segment, None])
    cut_pieces = (~in_piece.flatten(0, 1).all(0).all(-1)).nonzero()[:, 0].tolist()  # pieces a breakpoint cuts
    cut_masks = in_piece[:, :, None, cut_pieces].to(augmented.dtype)  # (B, H, 1, cut pieces, b)
    # Ŷ_r = Σ_p ĝ_{i_p, r - c_p} V̂_p: the transfer matrix (r, p) per frequency, a zero block where c_p > r.
    lag_block = torch.arange(num_blocks, device=device)[:, None] - piece_block  # (R, P)
    zero_block = kernel.shape[2] * num_blocks
    transfer_index = torch.where(lag_block >= 0, piece_segment * num_blocks + lag_block, zero_block).flatten()

    def block_matrix(per_lag_block, out=None):  # (B, H, K, R, X) -> (B, H, X, R, P)
        # Entry (r, p) is segment i_p's lag block r - c_p, gathered frequency-major in one pass.
        flat = per_lag_block.flatten(2, 3).transpose(-1, -2)
        flat = torch.cat([flat, flat.new_zeros(batch, num_heads, flat.shape[2], 1)], dim=-1)  # the zero block last
        index = transfer_index.expand(batch, num_heads, flat.shape[2], -1)
        return torch.gather(flat, -1, index, out=out).unflatten(-1, (num_blocks, -1))

    def transfer_matrices(kernel_values, m):  # band m's (B, H, F, R, P), contiguous for the per-frequency products
        kernel_fft = torch.fft.rfft(_kernel_windows(kernel_values.to(augmented.dtype), block, num_blocks), dim=-1)
        shape = (batch, num_heads, block + 1, transfer_index.numel())
        out = None if workspace is None else _buffer(workspace, f"transfer{m}", shape, kernel_fft.dtype, device)
        return block_matrix(kernel_fft, out)  # without a workspace autograd records it: no `out=`

    # A few channels at a time keep each chunk's spectra and their layout copies in cache.
    chunk = max(1, _CHUNK_BYTES // (augmented.element_size() * batch * num_heads * num_blocks * block))
    padded = augmented if num_blocks * block == n else torch.nn.functional.pad(augmented, (0, num_blocks * block - n))
    signal_blocks = padded.unflatten(-1, (num_blocks, block))
    # Zero-padded pieces (only their first half is ever written), reused for every chunk unless autograd
    # records the writes.
    piece_shape = (batch, num_heads, piece_block.numel(), min(chunk, channels), 2 * block)
    piece_buffer = None if torch.is_grad_enabled() and augmented.requires_grad else augmented.new_zeros(piece_shape)

    def piece_spectra(signals, square_norms=None):  # (B, H, C', R, b) -> (B, H, F, P, C'): a matrix per frequency
        # Pieces before channels: the spectra's layout copy then moves runs of P·C' values (2x faster than C').
        pieces = (augmented.new_zeros(piece_shape) if piece_buffer is None else piece_buffer)[:, :, :, : signals.shape[2]]
        pieces[..., :block].copy_(signals.index_select(3, piece_block).transpose(2, 3))
        for i, p in enumerate(cut_pieces):  # keep the columns of the piece's segment
            pieces[:, :, p, :, :block].mul_(cut_masks[..., i, :])
        if square_norms is not None:  # ‖x_p‖₂² per channel, for the error scale, while the pieces are in cache
            square_norms.copy_(torch.linalg.vector_norm(pieces[..., :block].detach(), dim=-1).square().transpose(2, 3))
        return torch.fft.rfft(pieces, dim=-1).permute(0, 1, 4, 2, 3).contiguous()

    def block_sums(transfer, spectra):  # -> (B, H, C', R, b): output block r at [:, :, :, r]
        out = torch.fft.irfft(transfer @ spectra, n=2 * block, dim=2)[:, :, block - 1 : 2 * block - 1]  # overlap-save
        return out.permute(0, 1, 4, 3, 2)

    if len(bands) == 1:  # the usual case in fp64: rows the kernels do not reach hold no mass
        reached = _reached_rows(used, starts, ends, augmented[:, :, -1] > 0)
        log_scale = peak[..., 0].expand(batch, num_heads, n).masked_fill(~reached, float("-inf"))
        band_weights = [None]
    else:
        # Band m is kept only where the row touches one of its entries through an attended key (the last
        # channel is the key mask, so this 0/1 count is exact), and rescaled to the row's top band.
        mask_spectra = piece_spectra(signal_blocks[:, :, -1:])
        top_band = torch.full((batch, num_heads, n), bands[-1] + 1, dtype=torch.long, device=device)
        touched = {}
        for m in reversed(bands):
            indicator = transfer_matrices(band_masks[m], m)
            touched[m] = block_sums(indicator, mask_spectra)[:, :, 0].flatten(-2)[..., :n] > 0.5
            top_band = torch.where(touched[m], m, top_band)
        band_weights = [
            torch.nn.functional.pad(
                torch.exp(-(m - top_band).clamp(min=0).to(kernel.dtype) * band_width) * touched[m],
                (0, num_blocks * block - n),
            ).view(batch, num_heads, 1, num_blocks, block)
            for m in bands
        ]
        log_scale = peak[..., 0] - top_band.to(kernel.dtype) * band_width
        log_scale = log_scale.masked_fill(top_band > bands[-1], float("-inf"))
    band_kernels = [  # in the FFT precision: float32 rounds the logits relative to the peak by at most ~5e-6 (80 nats)
        torch.exp((kernel - peak + (m * band_width if m else 0.0)).to(augmented.dtype)).masked_fill(~band_masks[m], 0.0)
        for m in bands
    ]
    transfers = [transfer_matrices(values, m) for m, values in zip(bands, band_kernels)]
    sums = _buffer(workspace, "sums", (batch, num_heads, channels, num_blocks, block), augmented.dtype, device)
    piece_norms = augmented.new_empty(batch, num_heads, channels, piece_block.numel()) if single_band else None
    for first in range(0, channels, chunk):
        chunk_norms = None if piece_norms is None else piece_norms[:, :, first : first + chunk]
        spectra = piece_spectra(signal_blocks[:, :, first : first + chunk], chunk_norms)
        target = sums[:, :, first : first + chunk]
        for m, (transfer, weight) in enumerate(zip(transfers, band_weights)):
            out = block_sums(transfer, spectra)
            if m == 0:
                target.copy_(out if weight is None else out * weight)
            else:
                target.addcmul_(out, weight)
    sums = sums.flatten(-2)[..., :n]
    if not single_band:
        return sums, log_scale, None
    window_norms = torch.linalg.vector_norm(_kernel_windows(band_kernels[0].detach(), block, num_blocks), dim=-1)
    pair_norms = block_matrix(window_norms[..., None])[:, :, 0]  # (B, H, R, P): ‖g_{i_p, r - c_p}‖₂
    piece_norms = torch.stack([piece_norms[:, :, :-1].sum(2), piece_norms[:, :, -1]], 2)  # (B, H, 2, P): numerator summed
    block_errors = (piece_norms @ pair_norms.square().transpose(-1, -2)).sqrt()  # (B, H, 2, R)
    return sums, log_scale, block_errors.repeat_interleave(block, dim=-1)[..., :n]


def _reached_rows(used, starts, ends, attended):
    """Rows that reach a used kernel entry through an attended key: `(B, H, n)` bool, exact integer counts.

    Each segment's used lags form one range `[lo, hi)`, so row r reaches the segment's columns
    `(r - hi, r - lo]`; prefix sums of the attended keys count them.
    """
    n = used.shape[-1]
    covered = (ends - starts).clamp(min=0).sum(-1) == n  # these segments hold every column (no narrow ones apart)
    if bool(attended.all()) and bool(covered.all()) and bool((used[..., 0] | (starts >= ends)).all()):
        return torch.ones_like(attended)  # every row reaches its own key through lag 0
    has_lag = used.any(-1)  # (B, H, K)
    lo = used.long().argmax(-1)
    hi = n - used.flip(-1).long().argmax(-1)
    prefix = torch.nn.functional.pad(attended.long().cumsum(-1), (1, 0))  # keys attended before each column
    rows = torch.arange(n, device=used.device)
    upper = torch.minimum(torch.maximum(rows - lo[..., None] + 1, starts[..., None]), ends[..., None])
    lower = torch.minimum(torch.maximum(rows - hi[..., None] + 1, starts[..., None]), ends[..., None])
    count = prefix.gather(-1, upper.flatten(2)) - prefix.gather(-1, lower.flatten(2))
    return ((count.view_as(upper) > 0) & has_lag[..., None]).any(2)


def _direct_columns(kernel, starts, ends, augmented, group_size=32):
    """Narrow segments summed column by column (W·n·d work beats an FFT for a few columns): `[(sums, log_scale)]`.

    Column j of segment i contributes `e_i[r - j] · augmented[j]` to every row `r >= j`.
    """
    batch, num_heads, channels, n = augmented.shape
    widths = (ends - starts).clamp(min=0)
    entries = [(i, c) for i in range(kernel.shape[2]) for c in range(int(widths[..., i].max()))]
    rows = torch.arange(n, device=augmented.device)
    parts = []
    for first in range(0, len(entries), group_size):
        segment, offset = (torch.tensor(x, device=augmented.device) for x in zip(*entries[first : first + group_size]))
        columns = starts[..., segment] + offset  # (B, H, W)
        in_segment = offset < widths[..., segment]
        columns = columns.clamp(max=n - 1)
        attended = in_segment & (augmented[:, :, -1].gather(-1, columns) > 0)  # in the segment and key kept
        lag = rows - columns[..., None]  # (B, H, W, n)
        logits = kernel[:, :, segment].gather(-1, lag.clamp(min=0))
        logits = logits.masked_fill((lag < 0) | ~attended[..., None], float("-inf"))
        row_max = logits.detach().amax(dim=2)  # (B, H, n)
        weights = torch.exp(logits - torch.where(row_max.isfinite(), row_max, torch.zeros_like(row_max))[:, :, None])
        values = augmented.gather(-1, columns[:, :, None, :].expand(batch, num_heads, channels, -1))  # (B, H, C, W)
        parts.append((values @ weights.to(values.dtype), row_max))
    return parts


def _local_window_part(q, k, v, augmented, window, scaling, softcap, key_mask, max_elements=2**24):
    """Exact attention over the lags `t < window`, in blocks of `window` rows: `(sums, row_max)`.

    Each block of rows sees the keys of the previous and of its own block (2·window columns); groups of
    blocks keep the logits under `max_elements` entries. Computed in the input precision (at least fp32).
    On CPU without soft capping, PyTorch's fused flash kernel does the same blocks (about 3x faster at n = 8192).
    """
    if _CPU_FLASH_ATTENTION is not None and q.device.type == "cpu" and softcap is None and v.shape[-1] == q.shape[-1]:
        return _local_window_flash(q, k, v, window, scaling, key_mask, augmented.dtype)
    batch, num_heads, n, dim = q.shape
    dtype = torch.promote_types(q.dtype, torch.float32)
    blocks = -(-n // window)
    pad = blocks * window - n

    def as_blocks(tensor):  # (B, H, n, X) -> (B, H, blocks + 1, window, X), one empty block in front
        tensor = torch.nn.functional.pad(tensor.to(dtype), (0, 0, window, pad))
        return tensor.view(batch, num_heads, blocks + 1, window, tensor.shape[-1])

    q_blocks = as_blocks(q)[:, :, 1:]
    k_blocks = as_blocks(k)
    v_blocks = as_blocks(augmented.transpose(-1, -2))  # (B, H, blocks + 1, window, C)
    keys_kept = torch.ones(batch, n, dtype=torch.bool, device=q.device) if key_mask is None else key_mask.bool()
    attended = torch.nn.functional.pad(keys_kept, (window, pad)).view(batch, 1, blocks + 1, 1, window)  # front block: none
    offsets = torch.arange(window, device=q.device)
    lag = offsets[:, None] - offsets[None, :]  # row - column within a block
    visible = torch.cat([lag + window < window, lag >= 0], dim=-1)  # previous block, own block: 0 <= lag < window
    group = max(1, max_elements // (batch * num_heads * 2 * window * window))
    sums, row_maxes = [], []
    for first in range(0, blocks, group):
        chosen = slice(first, min(first + group, blocks))
        previous, own = slice(first, chosen.stop), slice(first + 1, chosen.stop + 1)
        logits = torch.cat(
            [
                q_blocks[:, :, chosen] @ k_blocks[:, :, previous].transpose(-1, -2),
                q_blocks[:, :, chosen] @ k_blocks[:, :, own].transpose(-1, -2),
            ],
            dim=-1,
        )  # (B, H, g, w, 2w)
        logits = _transform_logits(scaling * logits, softcap)
        seen = visible & torch.cat([attended[:, :, previous], attended[:, :, own]], dim=-1)
        logits = logits.masked_fill(~seen, float("-inf"))
        row_max = logits.detach().amax(dim=-1, keepdim=True)
        weights = torch.exp(logits - torch.where(row_max.isfinite(), row_max, torch.zeros_like(row_max)))
        block_sums = weights[..., :window] @ v_blocks[:, :, previous] + weights[..., window:] @ v_blocks[:, :, own]
        sums.append(block_sums.flatten(2, 3))  # (B, H, g·w, C)
        row_maxes.append(row_max.flatten(2))
    sums = torch.cat(sums, 2)[:, :, :n].transpose(-1, -2)
    return sums.to(augmented.dtype), torch.cat(row_maxes, -1)[..., :n].to(augmented.dtype)


def _local_window_flash(q, k, v, window, scaling, key_mask, sums_dtype):
    """`_local_window_part` through `_CPU_FLASH_ATTENTION`, which also returns each row's log-sum-exp: the
    window's sums are `[output; 1] · e^{lse}`."""
    batch, num_heads, n, dim = q.shape
    dtype = torch.promote_types(q.dtype, torch.float32)
    blocks = -(-n // window)
    pad = blocks * window - n
    attention = _CPU_FLASH_ATTENTION

    def blocks_of(tensor, size):  # (B, H, n, D) -> (blocks · B, H, size, D), block-major: rows [bw + w - size, bw + w)
        padded = torch.nn.functional.pad(tensor.to(dtype), (0, 0, window, pad))  # one empty block in front
        windows = padded.unfold(2, size, window)[:, :, -blocks:].transpose(-1, -2)  # (B, H, blocks, size, D)
        return windows.permute(2, 0, 1, 3, 4).flatten(0, 1)

    queries, keys, values = blocks_of(q, window), blocks_of(k, 2 * window), blocks_of(v, 2 * window)
    offsets = torch.arange(window, device=q.device)
    lag = offsets[:, None] + window - torch.arange(2 * window, device=q.device)  # row - column
    band = (lag >= 0) & (lag < window)  # (w, 2w): the previous and the own block
    if key_mask is None:
        # Every block but the first sees the same band, a broadcast mask never materialised; the first block's rows
        # see only their own block: plain causal attention.
        parts = [attention(queries[:batch], keys[:batch, :, window:], values[:batch, :, window:], is_causal=True, scale=scaling)]
        if blocks > 1:
            bias = torch.zeros(1, 1, window, 2 * window, dtype=dtype, device=q.device).masked_fill_(~band, float("-inf"))
            parts.append(attention(queries[batch:], keys[batch:], values[batch:], attn_mask=bias, scale=scaling))
        output, lse = (torch.cat(outputs) for outputs in zip(*parts))
    else:
        kept = torch.nn.functional.pad(key_mask.bool(), (window, pad)).unfold(1, 2 * window, window)  # (B, blocks, 2w)
        visible = band & kept.transpose(0, 1).flatten(0, 1)[:, None, None, :]  # (blocks · B, 1, w, 2w)
        bias = torch.zeros(visible.shape, dtype=dtype, device=q.device).masked_fill_(~visible, float("-inf"))
        output, lse = attention(queries, keys, values, attn_mask=bias, scale=scaling)  # (blocks · B, H, w, D), (…, w)
    lse = lse.view(blocks, batch, num_heads, window).permute(1, 2, 0, 3).reshape(batch, num_heads, -1)[..., :n]
    output = output.view(blocks, batch, num_heads, window, dim).permute(1, 2, 4, 0, 3).reshape(batch, num_heads, dim, -1)
    sums = output.new_empty(batch, num_heads, dim + 1, n, dtype=sums_dtype)
    sums[:, :, :dim] = output[..., :n]
    sums[:, :, dim] = 1.0
    reached = lse.isfinite()  # rows without a kept key in the window hold no mass
    if not bool(reached.all()):
        sums.masked_fill_(~reached[:, :, None], 0.0)
    return sums, lse.to(sums_dtype)


def _merge(parts):
    """Add partial sums `(sums, log_scale)` (true sums `sums · e^{log_scale}`), shifted by the largest scale.

    Returns the sums and that shift, `-inf` on rows no part reaches (they hold no mass). A common row scale
    cancels in `numerator / denominator`, so a single part is returned as it is.
    """
    if len(parts) == 1:
        return parts[0]
    shift = torch.stack([log_scale.to(torch.float64) for _, log_scale in parts]).amax(dim=0)
    finite_shift = torch.where(shift.isfinite(), shift, torch.zeros_like(shift))
    total = None
    for sums, log_scale in parts:
        weight = torch.exp(log_scale - finite_shift).to(sums.dtype)[:, :, None, :]
        total = sums * weight if total is None else total.addcmul_(sums, weight)
    return total, shift


def _basis_rows(query, key, value, kernel, breakpoints, rows, scaling, softcap, sliding_window, window, key_mask):
    """The basis's attention output on the given rows, evaluated densely in O(rows · n · d): `(B, H, R, Dv)`.

    Row r's logit for column j is the profile of j's segment at lag r - j (`kernel`, from `_segment_kernels`),
    exact within the local window: what `_apply_basis` computes for every row. The keys and values may be the
    prefix of the sequence that the rows see.
    """
    n = key.shape[2]
    columns = torch.arange(n, device=query.device)
    segment = torch.searchsorted(breakpoints.contiguous(), columns.expand(*breakpoints.shape[:2], n).contiguous(), right=True) - 1
    lag = rows[:, None] - columns  # (R, n)
    index = segment[:, :, None, :] * kernel.shape[-1] + lag.clamp(min=0)  # (B, H, R, n) into the flattened kernels
    logits = kernel.flatten(2).gather(-1, index.flatten(2)).view_as(index)
    if window > 0:
        exact_logits = scaling * query[:, :, rows].to(_FFT_DTYPE) @ key.to(_FFT_DTYPE).transpose(-1, -2)
        logits = torch.where(lag < window, _transform_logits(exact_logits, softcap), logits)
    visible = (lag >= 0) if sliding_window is None else (lag >= 0) & (lag < sliding_window)
    if key_mask is not None:
        visible = visible & key_mask[:, None, None, :].bool()
    weights = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1).nan_to_num(0.0)
    return weights @ value.to(_FFT_DTYPE)


def _apply_basis(
    query, key, value, kernel, breakpoints, scaling, softcap, sliding_window, window, key_mask, out, workspace,
    float64=False,
):  # fmt: skip
    """Attention through a given basis (plus the exact local window), written into `out` `(B, H, n, Dv)`.

    `kernel` holds the basis's kernel logits (`_segment_kernels`). `workspace` is None when autograd records the
    call (`conv_basis_attention` decides), else a dict of buffers.

    Without autograd the FFTs run in float32 (their pass about 1.7x faster) and `_basis_sums` estimates each row's
    rounding error. The rows over `_FLOAT32_TOLERANCE` lie mostly at the start of the sequence, where a row's mass
    is small next to the kernel window it shares with later rows: the prefix holding those of the first quarter is
    recomputed in float64 (causal attention on a prefix is a problem of its own), the later ones densely. When those
    would cost too much (`_DENSE_KEYS_PER_POSITION`), when the kernel spans more than `_FLOAT32_RANGE` nats, or with
    `float64`, the group runs in float64, where the magnitude bands bound the error (module docstring).
    """
    args = (query, key, value, kernel, breakpoints, scaling, softcap, window, key_mask, workspace)
    records_grad = workspace is None
    span = kernel.amax(dim=(-1, -2)) - kernel.nan_to_num(neginf=torch.inf).amin(dim=(-1, -2))  # over used entries
    if float64 or records_grad or query.dtype == torch.float64 or bool((span > _FLOAT32_RANGE).any()):
        _basis_sums(*args, torch.float64, out)
        return
    unsure = _basis_sums(*args, torch.float32, out)
    rows = unsure.flatten(0, 1).any(0).nonzero()[:, 0]
    early = rows[rows < query.shape[2] // 4]
    late = rows[early.numel() :].split(_DENSE_ROW_GROUP) if rows.numel() > early.numel() else ()
    if sum(len(group) * (int(group[-1]) + 1) for group in late) > _DENSE_KEYS_PER_POSITION * query.shape[2]:
        _basis_sums(*args, torch.float64, out)
        return
    if early.numel():
        end = int(early[-1]) + 1
        prefix = [t[:, :, :end] for t in (query, key, value)]
        prefix_mask = None if key_mask is None else key_mask[:, :end]
        prefix_basis, prefix_window = breakpoints.clamp(max=end), min(window, end)
        prefix_kernel = _segment_kernels(*prefix[:2], prefix_basis, scaling, softcap, sliding_window, prefix_window)
        _apply_basis(
            *prefix, prefix_kernel, prefix_basis, scaling, softcap, sliding_window, prefix_window, prefix_mask,
            out[:, :, :end], workspace, float64=True,
        )  # fmt: skip
    for group in late:
        seen = int(group[-1]) + 1  # causal: these rows see only the first `seen` keys
        mask = None if key_mask is None else key_mask[:, :seen]
        dense = _basis_rows(
            query, key[:, :, :seen], value[:, :, :seen], kernel[..., :seen], breakpoints, group, scaling, softcap,
            sliding_window, window, mask,
        )  # fmt: skip
        out[:, :, group] = dense.to(out.dtype)


def _basis_sums(query, key, value, kernel, breakpoints, scaling, softcap, window, key_mask, workspace, dtype, out):
    """`_apply_basis` with FFTs in `dtype`, written into `out`: returns `unsure` `(B, H, n)` in float32, the rows whose
    estimated relative rounding error exceeds `_FLOAT32_TOLERANCE` (None in float64, where the bands bound it)."""
    n = query.shape[2]
    # Channels along the sequence (last dim, contiguous for the FFTs): V·u (numerator) and u (denominator),
    # u = key mask. V is transposed in tiles of positions: about 3x faster than at once, as a tile stays in cache.
    augmented = _buffer(workspace, "augmented", (*value.shape[:2], value.shape[-1] + 1, n), dtype, value.device)
    for first in range(0, n, _TRANSPOSE_TILE):
        augmented[:, :, :-1, first : first + _TRANSPOSE_TILE] = value[:, :, first : first + _TRANSPOSE_TILE].transpose(-1, -2)
    augmented[:, :, -1] = 1.0
    if key_mask is not None:
        augmented = augmented * key_mask[:, None, None, :]
    starts = breakpoints  # j_i, padded with n
    ends = torch.cat([breakpoints[..., 1:], torch.full_like(breakpoints[..., :1], n)], dim=-1)  # j_{i+1}
    # Segments a few columns wide are summed directly; the others go through the FFT.
    widths = (ends - starts).amax(dim=(0, 1))
    narrow = [i for i in range(starts.shape[-1]) if 0 < widths[i] <= _DIRECT_MAX_WIDTH]
    wide = [i for i in range(starts.shape[-1]) if widths[i] > _DIRECT_MAX_WIDTH]
    parts = _direct_columns(kernel[:, :, narrow], starts[..., narrow], ends[..., narrow], augmented) if narrow else []
    error_scale = None
    if wide:
        band_width = _BAND_WIDTH if dtype == torch.float64 else float("inf")
        *fft_part, error_scale = _fft_segments(
            kernel[:, :, wide], starts[..., wide], ends[..., wide], augmented, band_width, workspace
        )  # fmt: skip
        parts.append(fft_part)
    if window > 0:
        parts.append(_local_window_part(query, key, value, augmented, window, scaling, softcap, key_mask))
    sums, shift = _merge(parts)
    numerator, denominator = sums[:, :, :-1], sums[:, :, -1]
    reached = shift.isfinite()
    has_mass = reached & (denominator > 0)
    inverse = torch.where(has_mass, 1.0 / torch.where(has_mass, denominator, 1.0), 0.0)  # rows without mass give 0
    estimate = error_scale is not None  # float32 with an FFT part (direct sums and the exact window are accurate)
    row_norm = inverse.new_empty(inverse.shape) if estimate else None
    # Y = N / Z a tile of positions at a time: the transposing read stays in cache, and the row norms of the error
    # estimate are taken while the tile is.
    for first in range(0, n, _TRANSPOSE_TILE):
        tile = slice(first, first + _TRANSPOSE_TILE)
        if workspace is None:  # autograd records the write
            out[:, :, tile] = numerator[..., tile].transpose(-1, -2) * inverse[..., tile, None]
        else:
            torch.mul(numerator[..., tile].transpose(-1, -2), inverse[..., tile, None], out=out[:, :, tile])
        if estimate:
            rows = out[:, :, tile].float()  # a no-op for float32 outputs
            torch.linalg.vecdot(rows, rows, out=row_norm[..., tile])
    if not estimate:
        return None if dtype == torch.float64 else torch.zeros_like(reached)
    # Y = N / Z loses |ΔY| <= (|ΔN| + |Y| |ΔZ|) / Z; the FFT part's error scale is rescaled like its sums.
    row_norm = row_norm.sqrt_()
    fft_weight = torch.exp(fft_part[1] - torch.where(reached, shift, torch.zeros_like(shift))).nan_to_num(0.0)
    numerator_error, denominator_error = (error_scale * (fft_weight * _FLOAT32_ERROR_FACTOR)[:, :, None]).unbind(2)
    floor = 1e-6 * row_norm.amax(dim=-1, keepdim=True)  # near-zero rows, measured as `sampled_row_error` does
    estimate = (numerator_error + row_norm * denominator_error) / (denominator * torch.maximum(row_norm, floor))
    return reached & ~(has_mass & (estimate <= _FLOAT32_TOLERANCE))  # Z <= 0: lost


def _check_attention_inputs(query, key, value):
    if query.ndim != 4 or key.ndim != 4:
        raise ValueError(
            "query and key must be 4-D (batch, heads, seq_len, head_dim), "
            f"got shapes {tuple(query.shape)} and {tuple(key.shape)}"
        )
    if key.shape[0] != query.shape[0] or key.shape[-1] != query.shape[-1] or query.shape[1] % key.shape[1] != 0:
        raise ValueError(
            f"key shape {tuple(key.shape)} does not match query shape {tuple(query.shape)}: expected the same batch "
            "and head_dim and a number of key heads dividing the number of query heads"
        )
    if value is not None and (value.ndim != 4 or value.shape[:3] != key.shape[:3]):
        raise ValueError(
            f"value must have shape (batch, kv_heads, seq_len, Dv) = {tuple(key.shape[:3])} + (Dv,), "
            f"got {tuple(value.shape)}"
        )


def conv_basis_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scaling: float | None = None,
    num_bases: int | None = None,
    probe_len: int = 16,
    threshold: float = 1e-4,
    local_window: int = 0,
    sink_tokens: int = 0,
    policy: str = "paper",
    auto_tolerance: float = 0.05,
    auto_sample_rows: int = 32,
    softcap: float | None = None,
    sliding_window: int | None = None,
    key_mask: torch.Tensor | None = None,
    dropout: float = 0.0,
    breakpoints: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention `softmax(M ∘ s Q Kᵀ) V` through a conv basis, in O(k n d log n).

    Args:
        query (`torch.Tensor` of shape `(B, H, n, D)`), key (`(B, Hkv, n, D)`), value (`(B, Hkv, n, Dv)`):
            `Hkv` divides `H` (grouped-query heads are expanded here).
        scaling (`float`, *optional*): `s`; `D ** -0.5` by default.
        num_bases (`int`, *optional*): k; `None` = as many as needed (exact, recovery costs O(n² d)).
        probe_len (`int`, defaults to 16): T, see `recover_conv_basis`.
        threshold (`float`, defaults to 1e-4): mean absolute logit difference separating two profiles.
        local_window (`int`, defaults to 0): lags `t < local_window` (the most recent keys of each row)
            are computed exactly; the basis covers the farther ones. 0 = off (the paper).
        sink_tokens (`int`, defaults to 0): the first keys are exact one-column segments (attention sinks).
        policy (`str`, defaults to `"paper"`): `"paper"` uses the basis for every head; `"auto"` measures
            each head's error on `auto_sample_rows` rows and computes heads above `auto_tolerance` exactly.
        auto_tolerance (`float`, defaults to 0.05): largest sampled relative row error kept by `"auto"`.
        auto_sample_rows (`int`, defaults to 32): rows sampled (evenly spaced, the last included) by `"auto"`.
        softcap (`float`, *optional*): Gemma-2 logit soft capping.
        sliding_window (`int`, *optional*): a row sees only keys with `r - c < sliding_window`.
        key_mask (`torch.Tensor` of shape `(B, n)`, *optional*): True for keys that may be attended (padding).
        dropout (`float`, defaults to 0.0): attention dropout; weights are never formed on the convolution
            path, so a positive value computes exact attention.
        breakpoints (`torch.Tensor` of shape `(B, H, K)`, *optional*): a basis from `recover_conv_basis`
            to apply instead of recovering one.

    Returns:
        `torch.Tensor` of shape `(B, H, n, Dv)` in the dtype of `query`; rows without a visible key are 0.
    """
    _check_attention_inputs(query, key, value)
    if key.shape[2] != query.shape[2]:
        raise ValueError(
            f"conv_basis_attention needs as many queries as keys, got {query.shape[2]} and {key.shape[2]}; "
            "use exact_attention for a query shorter than the keys"
        )
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if local_window < 0 or sink_tokens < 0:
        raise ValueError(f"local_window and sink_tokens must be >= 0, got {local_window} and {sink_tokens}")
    if key_mask is not None and key_mask.shape != (query.shape[0], key.shape[2]):
        raise ValueError(f"key_mask must have shape {(query.shape[0], key.shape[2])}, got {tuple(key_mask.shape)}")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    num_heads = query.shape[1]
    k, v = _expand_kv(key, num_heads), _expand_kv(value, num_heads)
    common = dict(scaling=scaling, softcap=softcap, key_mask=key_mask, sliding_window=sliding_window)
    if dropout > 0.0:
        return exact_attention(query, k, v, dropout=dropout, **common)

    n = query.shape[2]
    window = min(local_window, n, sliding_window or n)
    if breakpoints is None:
        breakpoints = recover_conv_basis(
            query, k, scaling=scaling, num_bases=num_bases, probe_len=probe_len, threshold=threshold,
            softcap=softcap, sliding_window=sliding_window, local_window=window, sink_tokens=sink_tokens,
            key_mask=key_mask,
        )  # fmt: skip
    # A few heads at a time (one from n = 32768): the per-head work space (kernels, transfer matrices, sums) stays
    # small, and one head per group measured 15-25% faster than two at n = 32768.
    group = max(1, _HEAD_POSITIONS // (query.shape[0] * n))
    rows = None
    if policy == "auto":
        rows = torch.linspace(0, n - 1, min(auto_sample_rows, n), device=query.device).round().long().unique()
    output = query.new_empty(*query.shape[:3], v.shape[-1])
    # The largest buffers are kept from one head group to the next, unless autograd records them: freeing and
    # re-mapping tens of MB per head cost about 10% of the time at n = 65536 (page faults).
    records_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    workspace = None if records_grad else {}
    for h in range(0, num_heads, group):
        q, k_group, v_group, basis = (t[:, h : h + group] for t in (query, k, v, breakpoints))
        kernel = _segment_kernels(q, k_group, basis, scaling, softcap, sliding_window, window)
        if rows is None:
            _apply_basis(
                q, k_group, v_group, kernel, basis, scaling, softcap, sliding_window, window, key_mask,
                output[:, h : h + group], workspace,
            )  # fmt: skip
            continue
        # "auto": the basis's output on the sampled rows, evaluated densely, decides per head before any FFT work.
        approx = _basis_rows(q, k_group, v_group, kernel, basis, rows, scaling, softcap, sliding_window, window, key_mask)
        reference = exact_attention(q[:, :, rows], k_group, v_group, **common, query_positions=rows)
        keep = sampled_row_error(approx, reference) <= auto_tolerance  # (B, heads of the group)
        for chosen, use_basis in ((keep, True), (~keep, False)):
            b_idx, h_idx = chosen.nonzero(as_tuple=True)
            if b_idx.numel() == 0:
                continue
            # The chosen (batch, head) pairs become a batch of one-head sequences.
            pair_q, pair_k, pair_v = (t[b_idx, h_idx][:, None] for t in (q, k_group, v_group))
            pair_mask = None if key_mask is None else key_mask[b_idx]
            if use_basis:
                pair_basis, pair_kernel = basis[b_idx, h_idx][:, None], kernel[b_idx, h_idx][:, None]
                out = output.new_empty(pair_q.shape[:3] + pair_v.shape[-1:])
                _apply_basis(
                    pair_q, pair_k, pair_v, pair_kernel, pair_basis, scaling, softcap, sliding_window, window, pair_mask,
                    out, workspace,
                )  # fmt: skip
            else:
                out = exact_attention(
                    pair_q, pair_k, pair_v, scaling=scaling, softcap=softcap, sliding_window=sliding_window,
                    key_mask=pair_mask,
                )  # fmt: skip
            output[b_idx, h + h_idx] = out[:, 0].to(output.dtype)
    return output
