"""Adam for the training loop: torch's fused kernel, a problem's bits independent of the others in its tensors."""

from __future__ import annotations

import functools

import torch

__all__ = ["Adam", "fused_adam_runs"]


class Adam:
    """Adam (Kingma & Ba; betas 0.9, 0.999, eps 1e-8) by torch's fused kernel (the bits of
    ``torch.optim.Adam(fused=True)`` on tensors of whole vector lanes), without importing ``torch.optim``: its first
    use in a process imports ``torch._dynamo``, 1.7 s on the 2-core CPU (measured), longer than a whole shared RSMI
    step. The kernel reads each element once where the for-loop's formula made seven passes (2-core CPU: the default
    run's flow at the earlier settings 26.8 / 24.0 -> 23.5 / 23.4 s, ``estimate_mi``'s P = 1 000 batch 37.8 / 35.6 ->
    34.8 / 33.5 s, its one-problem loop unchanged), and every element goes through its vector lanes
    (:meth:`_fused_step`), so a problem's numbers do not depend on which others share the batch. On a device or
    dtype without the kernel, non-contiguous tensors or mixed ones: ``torch.optim.Adam``'s for-loop operations.
    ``state[t]`` holds ``exp_avg`` / ``exp_avg_sq`` (cut by :func:`estimators.training._compact` when problems leave)."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, (self.beta1, self.beta2), self.eps = params, float(lr), betas, eps
        self.state: dict[torch.Tensor, dict] = {t: {} for t in params}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for t in self.params:
            t.grad = None

    @torch.no_grad()
    def step(self) -> None:
        groups: dict[float, list[torch.Tensor]] = {}  # by step count (a parameter without a gradient skips a step)
        for t in self.params:
            if t.grad is None:
                continue
            st = self.state[t]
            if not st:
                st.update(step=0.0, exp_avg=torch.zeros_like(t), exp_avg_sq=torch.zeros_like(t))
            st["step"] += 1.0
            groups.setdefault(st["step"], []).append(t)
        for step, ts in groups.items():
            tensors = (ts, [t.grad for t in ts], [self.state[t]["exp_avg"] for t in ts],
                       [self.state[t]["exp_avg_sq"] for t in ts])
            first = ts[0]
            fused = (first.device.type in FUSED_DEVICES and first.dtype in FUSED_DTYPES
                     and fused_adam_runs(first.device.type)
                     and all(u.is_contiguous() and u.dtype == first.dtype and u.device == first.device
                             for group in tensors for u in group))
            (self._fused_step if fused else self._foreach_step)(*tensors, step)

    def _fused_step(self, ts, grads, ms, vs, step: float) -> None:
        """One ``torch._fused_adam_`` over the tensors' first ``numel - numel % LANES`` elements, one over their
        remainders packed together and zero-padded to a multiple of :data:`LANES`: the CPU kernel
        computes a tensor's last ``numel % width`` elements in a scalar loop whose roundings differ from its vector
        lanes', which would make a problem's bits depend on how many problems share its tensors."""
        count = torch.tensor(step, dtype=torch.float32, device=ts[0].device)  # the kernel reads it only
        options = {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "weight_decay": 0.0, "eps": self.eps,
                   "amsgrad": False, "maximize": False}
        flat = [[u.view(-1) for u in group] for group in (ts, grads, ms, vs)]
        cut = [u.numel() - u.numel() % LANES for u in flat[0]]
        heads = [[u[:c] for u, c in zip(group, cut) if c] for group in flat]
        if heads[0]:
            torch._fused_adam_(*heads, [], [count] * len(heads[0]), **options)
        tails = [[u[c:] for u, c in zip(group, cut) if c < u.numel()] for group in flat]
        if tails[0]:
            sizes = [u.numel() for u in tails[0]]
            pad = -sum(sizes) % LANES
            packed = [torch.cat([*group, group[0].new_zeros(pad)]) for group in tails]  # zeros: no update, no NaN
            torch._fused_adam_(*([u] for u in packed), [], [count], **options)
            for i in (0, 2, 3):  # parameters and moments back; the gradients were read only
                torch._foreach_copy_(tails[i], list(packed[i][:sum(sizes)].split(sizes)))

    def _foreach_step(self, ts, grads, ms, vs, step: float) -> None:
        """``torch.optim.Adam``'s for-loop operations, a few kernels for all parameters."""
        b1, b2 = self.beta1, self.beta2
        torch._foreach_lerp_(ms, grads, 1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, (1 - b2 ** step) ** 0.5)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(ts, ms, denom, value=-self.lr / (1 - b1 ** step))


# where ``torch._fused_adam_`` has a kernel (torch.optim's fused Adam supports these)
FUSED_DEVICES = ("cpu", "cuda")
FUSED_DTYPES = (torch.float32, torch.float64)
# elements: a multiple of every width the CPU kernel's vector lanes take (float32: 16 with AVX-512, 8 with AVX2)
LANES = 16


@functools.cache
def fused_adam_runs(device_type: str) -> bool:
    """Whether this torch has ``torch._fused_adam_`` for ``device_type`` (its CPU kernel came with torch 2.4; the
    package accepts torch >= 2.1): one update of ``LANES`` zeros, tried once per process."""
    try:
        t = torch.zeros(LANES, device=device_type)
        torch._fused_adam_([t], [t.clone()], [t.clone()], [t.clone()], [], [torch.ones((), device=device_type)],
                           lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)
    except (AttributeError, NotImplementedError, RuntimeError):
        return False
    return True
