"""Pure functions of a matmat ``V ↦ C·V`` (``(P, K) → (P, K)``): they never see a model.

- :mod:`.segments`: coordinates grouped into contiguous blocks (layers), per-block reductions.
- :mod:`.lanczos`: Lanczos with full reorthogonalisation, one process per block and column;
  its parts: :mod:`.lanczos_slabs` (stored vectors), :mod:`.lanczos_orthogonal` (the next
  vector), :mod:`.lanczos_projected` (the small matrix T), :mod:`.lanczos_memory` (its bytes).
- :mod:`.eigen`: extreme (top / most negative) eigenvalues with honest residuals;
  :mod:`.ritz` reads Ritz pairs as eigenvalues (residuals, errors, convergence).
- :mod:`.lockstep`: several Lanczos searches advanced together, sharing each data pass.
- :mod:`.density`: the eigenvalue density by stochastic Lanczos quadrature.
- :mod:`.sketch`: deflated random probing, the core of Hutch++ and Diag++.
- :mod:`.trace`: exact, Hutchinson and Hutch++ traces, global and per block from the same probes.
- :mod:`.diagonal`: exact and estimated diagonals, and their statistics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: A symmetric operator applied to a block of columns: ``(P, K) → (P, K)``.
Matmat = Callable[[torch.Tensor], torch.Tensor]
