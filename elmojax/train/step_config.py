"""The steps' static configuration, ``StepConfig``: its own module so that the train state
(:mod:`elmojax.train.state`) and the steps (:mod:`elmojax.train.step`) both import it, and not
each other. Import it from :mod:`elmojax.train.step`, where it is documented
(:class:`elmojax.train.step.StepConfig`)."""

from __future__ import annotations

import dataclasses

from jax.sharding import Mesh

from elmojax import parallel
from elmojax.data.batches import StepBatch
from elmojax.errors import OptionsError
from elmojax.model.lm import LanguageModel, samples_softmax
from elmojax.model.numerics import Numerics
from elmojax.options import ElmoOptions
from elmojax.train.optim import check_row_sparse, get_optimizer
from elmojax.train.sparse import SparseView, sparse_view


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything static about the steps: a hashable jit argument, so equal configs share compilations.

    ``mesh`` (optional) is the device mesh the steps run on: the returned state is pinned to its
    shardings and the kernels contract a sharded batch without gathering it. ``optimizer`` names
    one of :data:`elmojax.train.optim.OPTIMIZERS`. ``sparse`` (the default) updates the softmax and
    a word-level token embedding only on the rows a step touches, which is exact for some
    optimisers only (a sparse config with another is refused); ``False`` is the plain dense update,
    kept as the reference the sparse one is tested against. ``sparse_fraction``: a step's distinct
    rows above this share of the table update it densely instead (the sparse gather/scatter then
    costs more than it saves).
    """

    options: ElmoOptions
    n_vocab: int
    numerics: Numerics = Numerics()
    mesh: Mesh | None = None
    sparse: bool = True
    optimizer: str = "adagrad"
    sparse_fraction: float = 0.25

    def __post_init__(self):
        if not 0 <= self.sparse_fraction <= 1:
            raise OptionsError(f"`sparse_fraction` must be between 0 and 1, not {self.sparse_fraction}")
        get_optimizer(self.optimizer)
        if self.sparse:
            check_row_sparse(self.optimizer)

    @property
    def model(self) -> LanguageModel:
        """The model whose forward the steps run, on ``mesh``."""
        return LanguageModel(self.options, self.numerics, self.n_vocab, self.mesh)

    @property
    def sample_softmax(self) -> bool:
        """bilm-tf's sampled softmax, unless the vocabulary is not larger than the sample."""
        return samples_softmax(self.options, self.n_vocab)

    @property
    def sparse_softmax(self) -> bool:
        """Whether the softmax may be updated on the rows a step touches only."""
        return self.sparse and self.sample_softmax

    @property
    def sparse_embedding(self) -> bool:
        """Whether a word-level model's token embedding may be updated on the step's rows only."""
        return self.sparse and self.options.char_cnn is None

    @property
    def vocab_rows(self) -> int:
        """Rows of the softmax: the vocabulary, padded to split evenly over the mesh's shards."""
        return parallel.vocab_rows(self.n_vocab, self.mesh)

    @property
    def embedding_rows(self) -> int | None:
        """Rows of a word-level model's token embedding (padding row 0 included), padded likewise;
        None for character models."""
        if self.options.char_cnn is not None:
            return None
        return parallel.vocab_rows(self.options.require_vocab_size() + 1, self.mesh)

    def view(self, params: dict, batch: StepBatch) -> tuple[SparseView, dict, StepBatch]:
        """The step's sparse view of ``params`` and ``batch`` (:func:`elmojax.train.sparse.sparse_view`)."""
        return sparse_view(
            params,
            batch,
            self.n_vocab,
            softmax=self.sparse_softmax,
            embedding=self.sparse_embedding,
            mesh=self.mesh,
            fraction=self.sparse_fraction,
        )
