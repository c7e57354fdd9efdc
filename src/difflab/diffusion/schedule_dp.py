"""Dynamic programming over a fine grid of noise levels for ``schedule_search``: the local cost of
one sampler step between any two levels of a teacher trajectory, from per-trajectory Gram
matrices (no network calls), and the min-cost paths of exactly K steps (GITS, Chen et al. 2024:
V_k(j) = min_{i<j} V_{k-1}(i) + c(i, j)); ``dp_two_step`` runs over (previous, current) pairs
for the two-step DPM-Solver++(2M) update."""
from __future__ import annotations

import math

import torch

_CHUNK = 1 << 15  # quadratic forms evaluated per batch of jumps (bounds memory to B * _CHUNK)


def _gram(vectors: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Per-trajectory Gram matrices G[b] = V_b V_b^T (float64) of vectors [M, B, d]: [B, M, M]."""
    M, B, _ = vectors.shape
    out = torch.empty(B, M, M, dtype=torch.float64, device=vectors.device)
    for start in range(0, B, chunk):
        v = vectors[:, start:start + chunk].double().transpose(0, 1)  # [b, M, d]
        out[start:start + chunk] = v @ v.transpose(1, 2)
    return out


def _quadratic_costs(gram: torch.Tensor, index: torch.Tensor, coef: torch.Tensor,
                     dim: int) -> torch.Tensor:
    """mean_b sqrt(q_b / dim) with q_b = || sum_m coef[t, m] V_b[index[t, m]] ||^2, for each jump t
    (index, coef: [T, m]); returns [T] float64."""
    out = torch.empty(index.shape[0], dtype=torch.float64, device=gram.device)
    terms = index.shape[1]
    for start in range(0, index.shape[0], _CHUNK):
        idx, c = index[start:start + _CHUNK], coef[start:start + _CHUNK]
        q = torch.zeros(gram.shape[0], idx.shape[0], dtype=torch.float64, device=gram.device)
        for m in range(terms):
            for n in range(m, terms):
                weight = c[:, m] * c[:, n] * (1.0 if m == n else 2.0)
                q += weight * gram[:, idx[:, m], idx[:, n]]
        out[start:start + _CHUNK] = (q.clamp(min=0) / dim).sqrt().mean(0)
    return out


def euler_costs(gram: torch.Tensor, levels: torch.Tensor, weights: torch.Tensor,
                dim: int) -> torch.Tensor:
    """c(i, j) of one Euler/DDIM step from the teacher at level i to level j, [N, N + 1] with inf
    where j <= i. Vector layout of ``gram``: y_0..y_N, then D_0..D_{N-1}."""
    N = levels.shape[0] - 1
    i, j = torch.triu_indices(N, N + 1, offset=1, device=gram.device)
    a = levels[j] / levels[i]
    index = torch.stack([i, N + 1 + i, j], dim=1)
    coef = torch.stack([a, 1 - a, -torch.ones_like(a)], dim=1)
    costs = torch.full((N, N + 1), math.inf, dtype=torch.float64, device=gram.device)
    costs[i, j] = weights[j] * _quadratic_costs(gram, index, coef, dim)
    return costs


def dpmpp_2m_costs(gram: torch.Tensor, levels: torch.Tensor, weights: torch.Tensor, dim: int,
                   max_step_growth: float = math.inf) -> torch.Tensor:
    """c(p, i, j) of one DPM-Solver++(2M) step from the teacher at level i, previous level p, to a
    positive level j (p < i < j < N); [N, N, N], inf elsewhere (steps to 0 use ``euler_costs``)
    and where the step is more than ``max_step_growth`` times the previous one in log sigma."""
    N = levels.shape[0] - 1
    triples = torch.combinations(torch.arange(N, device=gram.device), r=3)
    costs = torch.full((N, N, N), math.inf, dtype=torch.float64, device=gram.device)
    if triples.numel() == 0:
        return costs
    p, i, j = triples.unbind(1)
    log = levels[:N].log()
    a = levels[j] / levels[i]
    r = (log[p] - log[i]) / (log[i] - log[j])  # h_prev / h with lambda = -log sigma
    index = torch.stack([i, N + 1 + i, N + 1 + p, j], dim=1)
    coef = torch.stack([a, (1 - a) * (1 + 1 / (2 * r)), -(1 - a) / (2 * r), -torch.ones_like(a)],
                       dim=1)
    cost = weights[j] * _quadratic_costs(gram, index, coef, dim)
    costs[p, i, j] = cost.masked_fill(r * max_step_growth < 1, math.inf)  # h / h_prev > max
    return costs


def dp_single_step(costs: torch.Tensor, steps: int) -> tuple[list[int], float]:
    """Min-cost path 0 -> N with exactly ``steps`` jumps over costs [N, N + 1] (GITS's DP)."""
    N = costs.shape[0]
    costs = costs.masked_fill(~torch.ones_like(costs, dtype=torch.bool).triu(1), math.inf)  # i < j
    value = torch.full((N + 1,), math.inf, dtype=torch.float64, device=costs.device)
    value[0] = 0.0
    back = []
    for _ in range(steps):
        total = value[:N, None] + costs  # [from, to]
        value, arg = total.min(dim=0)
        back.append(arg)
    if not math.isfinite(value[N]):
        raise ValueError(f"schedule search: no path of {steps} steps over {N} candidate levels")
    path = [N]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1], float(value[N])


def dp_two_step(first: torch.Tensor, history: torch.Tensor, steps: int) -> tuple[list[int], float]:
    """Min-cost path 0 -> N with exactly ``steps`` jumps when a jump's cost depends on the previous
    level: ``first`` [N, N + 1] holds the costs without history (first step, and every step to 0),
    ``history`` [N, N, N] the costs c(p, i, j) of steps between positive levels."""
    N = first.shape[0]
    if steps == 1:
        return [0, N], float(first[0, N])
    first = first.masked_fill(~torch.ones_like(first, dtype=torch.bool).triu(1), math.inf)
    upper = torch.ones(N, N, dtype=torch.bool, device=first.device).triu(1)
    history = history.masked_fill(~(upper[:, :, None] & upper[None, :, :]), math.inf)  # p < i < j
    value = torch.full((N, N), math.inf, dtype=torch.float64, device=first.device)  # [prev, cur]
    value[0, 1:] = first[0, 1:N]
    back = []
    for _ in range(steps - 2):
        total = value[:, :, None] + history  # [p, i, j]
        value, arg = total.min(dim=0)  # -> [i, j]
        back.append(arg)
    final = value + first[:, N][None, :]  # [p, i] + cost of i -> 0
    best = int(final.argmin())
    cost = float(final.flatten()[best])
    if not math.isfinite(cost):
        raise ValueError(f"schedule search: no path of {steps} steps over {N} candidate levels")
    prev, cur = divmod(best, N)
    path = [N, cur, prev]
    for arg in reversed(back):
        prev, cur = int(arg[prev, cur]), prev
        path.append(prev)
    return path[::-1], cost
