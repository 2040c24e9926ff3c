"""Peer implementations of the benchmark workloads: NumPy, PyTorch and JAX doing exactly lgd's work.

Every peer runs C configurations (one stepsize each, all from the same W_0) for T steps and keeps the
risk of every step t = 0..T: ``prepare(workload, dtype, device)`` returns ``run(steps) -> risk (C, T + 1)``
as a host numpy array (the copy to the host is the device synchronisation). Sweeps are batched over
configurations in every peer (NumPy and PyTorch through batched products, JAX through ``vmap``).

The formulas are lgd's (science.md): Z = X W^T, phi(z) = c z + (1 - c) softplus(z), f = (1/m) phi(Z) a,
risk = mean softplus(-y f), W <- W - eta * G^T X with G = -y sigmoid(-y f) / n * phi'(Z) * a / m.

Torch and JAX are imported inside the functions that use them: a missing peer raises
:class:`Unavailable` (the benchmark skips and reports it), it never fails an import.

>>> from lgd.benchmark.workloads import WORKLOADS
>>> run = prepare("numpy", WORKLOADS["S"].shrunk(), "float64")
>>> run(3).shape
(1, 4)
"""

from __future__ import annotations

import importlib.util

import numpy as np

from .workloads import ACTIVATION, LOSS, SLOPE, Workload, model, problem

# Configuration-steps one lgd-numpy call may take: it is the oracle, one Python-level step per configuration, and
# would take minutes on the sweeps. Its throughput does not depend on the number of steps.
ORACLE_CONFIG_STEPS = 20_000

LGD = ("lgd-numpy", "lgd-numba", "lgd-cupy")
PEERS = ("numpy", "torch-autograd", "torch-analytic", "torch-compile", "jax-jit", "jax-scan")
IMPLEMENTATIONS = LGD + PEERS


class Unavailable(Exception):
    """This implementation cannot run here (library missing, no device); the message says why."""


def steps_for(impl: str, workload: Workload) -> int:
    """Steps one timed call of ``impl`` runs: the workload's, except lgd-numpy on large sweeps (see above)."""
    if impl == "lgd-numpy":
        return max(2, min(workload.steps, ORACLE_CONFIG_STEPS // workload.configs))
    return workload.steps


def prepare(impl: str, workload: Workload, dtype: str, device: bool = False, activation: str = ACTIVATION):
    """``run(steps) -> risk (C, steps + 1)`` of ``impl`` on ``workload``; raises :class:`Unavailable`.

    ``activation`` other than the workloads' own is for lgd's backends only (the breakdown of a step)."""
    if impl in LGD:
        return _lgd(impl.split("-", 1)[1], workload, dtype, device, activation)
    if activation != ACTIVATION:
        raise ValueError("peers implement the workloads' activation only")
    if impl == "numpy":
        if device:
            raise Unavailable("the NumPy peer runs on the CPU only")
        return _numpy(*problem(workload, dtype))
    if impl.startswith("torch-"):
        return _torch(impl.split("-", 1)[1], workload, dtype, device)
    if impl.startswith("jax-"):
        return _jax(impl.split("-", 1)[1], workload, dtype, device)
    raise ValueError(f"unknown implementation {impl!r}; valid: {', '.join(IMPLEMENTATIONS)}")


def _lgd(backend: str, workload: Workload, dtype: str, device: bool, activation: str):
    import lgd

    if device != (backend == "cupy"):
        raise Unavailable(f"lgd's {backend} backend is not a {'GPU' if device else 'CPU'} backend")
    usable, reason = lgd.backends.availability(backend)
    if not usable:
        raise Unavailable(f"lgd backend {backend!r}: {reason}")
    X, y = lgd.data.separable(n=workload.n, d=workload.d, margin=0.1, seed=0)
    net = model(workload, activation)

    def run(steps: int) -> np.ndarray:
        result = lgd.sweep(X, y, net, LOSS, stepsizes=workload.stepsizes, steps=steps,
                           record=lgd.Record(neuron_margins=False),
                           compute=lgd.Compute(backend=backend, dtype=dtype, progress=False))
        if any(status != "completed" for status in result.status):
            raise RuntimeError(f"lgd {backend} run did not complete: {sorted(set(result.status))}")
        return result.risk

    return run


def _numpy(X, y, W0, a, etas):
    n, m = X.shape[0], W0.shape[1]
    dtype = X.dtype.type
    c, scale = dtype(SLOPE), dtype(1.0 / m)
    eta = etas.astype(X.dtype)[:, None, None]
    weights = (scale * a)[None, None, :]

    def run(steps: int) -> np.ndarray:
        W = W0.copy()
        risk = np.empty((W.shape[0], steps + 1), dtype=X.dtype)
        for t in range(steps + 1):
            Z = np.matmul(X, W.transpose(0, 2, 1))  # (C, n, m)
            E = np.exp(-np.abs(Z))
            P = c * Z + (1 - c) * (np.maximum(Z, 0) + np.log1p(E))
            f = scale * np.matmul(P, a)  # (C, n)
            u = y * f
            risk[:, t] = np.logaddexp(0, -u).mean(axis=1)
            if t == steps:
                break
            Eu = np.exp(-np.abs(u))
            coef = -y * np.where(u >= 0, Eu, 1) / (1 + Eu) / n  # -y sigmoid(-u) / n
            dphi = c + (1 - c) * np.where(Z >= 0, 1, E) / (1 + E)
            G = coef[:, :, None] * dphi * weights
            W -= eta * np.matmul(G.transpose(0, 2, 1), X)
        return risk

    return run


def _torch(variant: str, workload: Workload, dtype: str, device: bool):
    if importlib.util.find_spec("torch") is None:
        raise Unavailable("PyTorch is not installed (pip install torch==2.13.0)")
    import torch
    import torch.nn.functional as F

    if device and not torch.cuda.is_available():
        raise Unavailable("PyTorch sees no CUDA device")
    where = torch.device("cuda" if device else "cpu")
    X, y, W0, a, etas = (torch.as_tensor(v, device=where) for v in problem(workload, dtype))
    etas = etas.to(X.dtype)[:, None, None]
    m = W0.shape[1]
    n = X.shape[0]
    c, scale = SLOPE, 1.0 / m
    weights = scale * a

    def risk_of(W):
        Z = torch.matmul(X, W.transpose(1, 2))
        f = scale * torch.matmul(c * Z + (1 - c) * F.softplus(Z), a)
        return F.softplus(-y * f).mean(dim=1)

    def analytic_step(W, eta):
        Z = torch.matmul(X, W.transpose(1, 2))
        f = scale * torch.matmul(c * Z + (1 - c) * F.softplus(Z), a)
        u = y * f
        coef = -y * torch.sigmoid(-u) / n
        G = coef[:, :, None] * (c + (1 - c) * torch.sigmoid(Z)) * weights
        return W - eta * torch.matmul(G.transpose(1, 2), X), F.softplus(-u).mean(dim=1)

    if variant == "autograd":
        def step(W, eta):
            W = W.detach().requires_grad_(True)
            risk = risk_of(W)
            (grad,) = torch.autograd.grad(risk.sum(), W)  # configurations are independent: sum keeps each gradient
            return (W - eta * grad).detach(), risk.detach()
        final = risk_of
    elif variant == "analytic":
        step, final = analytic_step, risk_of
    elif variant == "compile":
        step, final = torch.compile(analytic_step, dynamic=False), torch.compile(risk_of, dynamic=False)
    else:
        raise ValueError(f"unknown torch variant {variant!r}")

    def run(steps: int) -> np.ndarray:
        W = W0.clone()
        risk = torch.empty((W.shape[0], steps + 1), dtype=X.dtype, device=where)
        grad_mode = torch.enable_grad() if variant == "autograd" else torch.no_grad()
        with grad_mode:
            for t in range(steps):
                W, risk[:, t] = step(W, etas)
            with torch.no_grad():
                risk[:, steps] = final(W)
        return risk.cpu().numpy()  # the copy synchronises a GPU

    return run


def _jax(variant: str, workload: Workload, dtype: str, device: bool):
    if importlib.util.find_spec("jax") is None:
        raise Unavailable("JAX is not installed (pip install jax jaxlib)")
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)  # float64 runs need it; float32 arrays stay float32
    # float32 products in true float32 (on a GPU JAX would otherwise use TF32), as lgd and PyTorch compute them.
    jax.config.update("jax_default_matmul_precision", "highest")
    try:
        where = jax.devices("gpu" if device else "cpu")[0]
    except RuntimeError:
        raise Unavailable("JAX sees no GPU") from None
    X, y, W0, a, etas = (jax.device_put(v, where) for v in problem(workload, dtype))
    etas = etas.astype(X.dtype)
    m = W0.shape[1]
    c, scale = SLOPE, 1.0 / m

    def risk_of(W):
        Z = X @ W.T
        f = scale * ((c * Z + (1 - c) * jax.nn.softplus(Z)) @ a)
        return jnp.mean(jax.nn.softplus(-y * f))

    def step(W, eta):
        risk, grad = jax.value_and_grad(risk_of)(W)
        return W - eta * grad, risk

    batched_step, batched_risk = jax.vmap(step), jax.vmap(risk_of)

    if variant == "jit":
        jit_step, jit_risk = jax.jit(batched_step), jax.jit(batched_risk)

        def run(steps: int) -> np.ndarray:
            W, risks = W0, []
            for _ in range(steps):
                W, risk = jit_step(W, etas)
                risks.append(risk)
            risks.append(jit_risk(W))
            return np.asarray(jnp.stack(risks, axis=1))  # the copy waits for the device

        return run
    if variant == "scan":
        def make(steps: int):
            def body(W, _):
                return batched_step(W, etas)

            def whole(W):
                W, risks = jax.lax.scan(body, W, None, length=steps)
                return jnp.concatenate([risks.T, batched_risk(W)[:, None]], axis=1)

            return jax.jit(whole)

        compiled = {}

        def run(steps: int) -> np.ndarray:
            if steps not in compiled:
                compiled[steps] = make(steps)
            return np.asarray(compiled[steps](W0))

        return run
    raise ValueError(f"unknown jax variant {variant!r}")
