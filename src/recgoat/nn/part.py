"""The contract every part of a composed model (RecGOAT's) keeps, so the model sums and logs what its parts report
without knowing which parts are present."""
from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn


class Part(nn.Module):
    """A part of a composed model. Besides its own ``forward``, a part reports two things, the same way for every
    part:

    - :meth:`loss_terms`: ``(name, weight, unweighted value)`` of each term it adds to the objective, given the
      batch and the model's representations of this step (a part adding none yields nothing);
    - :meth:`logged_values`: learned scalars worth following during training (a fusion's weights), which go to the
      logger, never into the objective.
    """

    def loss_terms(self, batch: dict[str, Tensor], reps: dict) -> Iterator[tuple[str, float, Tensor]]:
        return iter(())

    def logged_values(self) -> dict[str, Tensor]:
        return {}
