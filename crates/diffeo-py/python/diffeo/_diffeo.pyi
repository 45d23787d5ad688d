"""Type stubs of the native module (the classes and functions ``diffeo`` re-exports)."""

from os import PathLike
from typing import Any, Callable, Literal, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

__version__: str

Shape = Union[int, Tuple[int, int], Tuple[int, int, int]]
Target = Callable[[NDArray[np.float64]], Union[ArrayLike, Tuple[ArrayLike, ArrayLike]]]

def families() -> list[Tuple[str, str]]:
    """The flow families as ``(name, description)`` pairs."""

class FitReport:
    """What a fit did."""

    steps: int
    best_step: int
    best_val_log_likelihood: Optional[float]
    final_train_loss: float
    stopped_early: bool
    interrupted: bool
    seconds: float
    train_rows: int
    val_rows: int
    history: list[Tuple[int, float, Optional[float]]]

class Flow:
    """A normalizing flow: a family's architecture, fit by maximum likelihood to arrays.

    Build one with ``Flow.build(family, dim, **options)`` (or ``Flow.maf``, ``Flow.nsf``, …),
    fit it with ``fit``, then ``log_prob``, ``sample``, ``save``. Model files are the command
    line's: ``Flow.load`` reads files written by ``diffeo fit`` and vice versa.
    """

    @staticmethod
    def build(family: str, dim: Shape, *, context_dim: int = 0, **options: Any) -> "Flow":
        """A flow of ``family`` (see ``families()``) on ``dim`` features (image families:
        ``(C, H, W)``), conditional on ``context_dim`` values. ``options`` are the command
        line's architecture flags by their Python names: ``transforms``, ``hidden=(128, 128)``,
        ``activation``, ``bins``, ``tail_bound``, ``spline_tails``, ``batch_norm``, ``lu``,
        ``residual_blocks``, ``dropout``, ``base``, ``seed``, the cnf, residual, monotone and
        image settings (``levels``, ``steps_per_level``, ``hidden_channels``, …)."""
    @staticmethod
    def maf(dim: int, *, context_dim: int = 0, **options: Any) -> "Flow":
        """Masked autoregressive flow: fast densities, D-pass sampling."""
    @staticmethod
    def nsf(dim: int, *, context_dim: int = 0, **options: Any) -> "Flow":
        """Autoregressive neural spline flow."""
    @staticmethod
    def nsf_coupling(dim: int, *, context_dim: int = 0, **options: Any) -> "Flow":
        """Neural spline flow with coupling layers: fast in both directions."""
    @staticmethod
    def realnvp(dim: int, *, context_dim: int = 0, **options: Any) -> "Flow":
        """RealNVP affine coupling flow."""
    @staticmethod
    def glow(dim: Tuple[int, int, int], *, context_dim: int = 0, **options: Any) -> "Flow":
        """Glow on images ``(C, H, W)``."""
    @staticmethod
    def load(path: Union[str, PathLike[str]]) -> "Flow":
        """Reads a model file (``FileNotFoundError`` if missing, ``OSError`` if unreadable)."""
    def save(self, path: Union[str, PathLike[str]]) -> None:
        """Writes the model file atomically."""
    def fit(
        self,
        x: ArrayLike,
        *,
        context: Optional[ArrayLike] = None,
        val: Optional[ArrayLike] = None,
        val_context: Optional[ArrayLike] = None,
        steps: Optional[int] = None,
        epochs: Optional[int] = None,
        batch: Optional[int] = None,
        lr: Optional[float] = None,
        schedule: Optional[Literal["cosine", "constant", "cooldown"]] = None,
        patience: Optional[int] = None,
        eval_every: Optional[int] = None,
        clip_grad: Optional[float] = None,
        average_decay: Optional[float] = None,
        time_budget: Optional[float] = None,
        dequantize: bool = False,
        seed: Optional[int] = None,
        progress: bool = True,
    ) -> FitReport:
        """Maximum-likelihood fit to the rows of ``x`` (``[N, D]``; images ``[N, C, H, W]``) and
        their ``context`` (``[N, C]``). Validation on ``val``, else 10 % held out; the best
        validation weights are kept. The first fit builds the model from the data
        (standardized inside the model); later fits continue it. Ctrl-C stops after the
        current step, keeps the best model so far and raises ``KeyboardInterrupt``."""
    def log_prob(self, x: ArrayLike, context: Optional[ArrayLike] = None, *, dtype: DTypeLike = None) -> NDArray[Any]:
        """``log p(x | context)`` per row, shape ``(N,)``. ``ValueError`` for a wrong shape, a
        non-float dtype or a non-finite value."""
    def sample(
        self, n: int, context: Optional[ArrayLike] = None, *, seed: Optional[int] = None, temperature: float = 1.0, dtype: DTypeLike = None
    ) -> NDArray[Any]:
        """``n`` samples ``[n, D]`` (images ``[n, C, H, W]``); ``[M, n, D]`` for a context matrix
        ``[M, C]``."""
    def sample_and_log_prob(
        self, n: int, context: Optional[ArrayLike] = None, *, seed: Optional[int] = None, dtype: DTypeLike = None
    ) -> Tuple[NDArray[Any], NDArray[Any]]:
        """Samples and their log-densities in one pass."""
    def info(self) -> dict[str, Any]:
        """The model's description (``diffeo info --json``)."""
    def check(self, n: int = 1000, seed: int = 0) -> dict[str, Any]:
        """The self-check of ``diffeo check`` in f64 (inverse and log-dets against the
        Jacobian), run in a fresh interpreter; ``result["passed"]``."""
    @property
    def dim(self) -> int: ...
    @property
    def context_dim(self) -> int: ...
    @property
    def event_shape(self) -> list[int]: ...
    @property
    def family(self) -> str: ...
    @property
    def trained(self) -> bool: ...
    @property
    def parameters(self) -> int: ...

class Posterior:
    """A posterior ``q(θ | x)`` from ``npe``: samples keep to the prior's support."""

    def sample(self, n: int, observation: ArrayLike, *, seed: Optional[int] = None, dtype: DTypeLike = None) -> NDArray[Any]:
        """``n`` samples of θ at one observation: ``[n, D]``."""
    def log_prob(self, theta: ArrayLike, observation: ArrayLike, *, seed: int = 0, dtype: DTypeLike = None) -> NDArray[Any]:
        """``log q(θ | x)`` per row of ``theta``, −inf outside the prior's support."""
    def save(self, path: Union[str, PathLike[str]]) -> None: ...
    @staticmethod
    def load(path: Union[str, PathLike[str]]) -> "Posterior": ...
    def info(self) -> dict[str, Any]: ...
    @property
    def dim(self) -> int: ...
    @property
    def x_dim(self) -> int: ...
    @property
    def prior(self) -> str: ...
    @property
    def simulations(self) -> Optional[Tuple[NDArray[np.float64], NDArray[np.float64]]]: ...

def vi(
    target: Union[Target, str],
    dim: Optional[int] = None,
    *,
    flow: str = "nsf-coupling",
    steps: int = 5000,
    samples: int = 256,
    lr: float = 2e-3,
    schedule: Literal["cosine", "constant", "cooldown"] = "cosine",
    stl: bool = False,
    anneal: Optional[int] = None,
    clip_grad: Optional[float] = None,
    log_z: Optional[float] = None,
    diagnostic_samples: int = 20000,
    seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> Tuple[Flow, dict[str, Any]]:
    """Fits a flow to an unnormalized log-density by reverse KL. ``target``: a callable on a
    batch ``[N, D] -> [N]`` (or ``-> (values [N], gradients [N, D])``), called once per step, or
    a built-in target's name. Returns the flow and its diagnostics (``elbo``, ``log_z``,
    ``log_z_stderr``, ``ess``, ``khat``, …)."""

def npe(
    theta: Optional[ArrayLike] = None,
    x: Optional[ArrayLike] = None,
    *,
    prior: str,
    simulator: Optional[Callable[[NDArray[np.float64]], ArrayLike]] = None,
    observation: Optional[ArrayLike] = None,
    rounds: int = 1,
    simulations: int = 10000,
    simulation_batch: int = 1000,
    flow: str = "nsf",
    ensemble: int = 5,
    support: Literal["reject", "transform"] = "reject",
    embedding: Optional[Literal["mlp", "deepsets"]] = None,
    embedding_hidden: Optional[Sequence[int]] = None,
    embedding_dim: int = 16,
    iid_groups: Optional[int] = None,
    batch: Optional[int] = None,
    lr: Optional[float] = None,
    patience: Optional[int] = None,
    max_epochs: Optional[int] = None,
    clip_grad: Optional[float] = None,
    seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> Posterior:
    """Neural posterior estimation on simulated pairs ``theta [N, D]``, ``x [N, K]`` drawn
    from ``prior`` (e.g. ``"uniform:-1:1x2"``), or on ``simulations`` made by ``simulator``
    (a callable from θ rows ``[M, D]`` to x rows ``[M, K]``, called once per batch of
    ``simulation_batch``), over ``rounds`` truncated sequential rounds focused on
    ``observation``. If the simulator raises, its exception carries the simulations made so far
    as ``.simulations = (theta, x)``; a trained posterior has them in ``.simulations``."""
