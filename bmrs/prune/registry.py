"""The name -> criterion registry: every pruning method of the project by its key.

* the paper's criteria (:mod:`bmrs.prune.criteria`): ``l2``, ``etheta``, ``snr``, ``bmrs_n`` (ΔF_N of Eq. 8),
  ``bmrs_n_code`` (the released code's ΔF_N without 2π: the paper's BMRS_N), ``bmrs_u8``, ``bmrs_u4`` and any
  ``bmrs_u<p1>``;
* the data-dependent baselines: ``c_obd`` (:mod:`bmrs.prune.eigendamage`), ``dirichlet``
  (:mod:`bmrs.prune.dirichlet`); EigenDamage (``eigendamage``) rebuilds layers instead of masking units,
  so it is a method (:class:`bmrs.prune.eigendamage.EigenDamage`), not a criterion.
"""

from __future__ import annotations

from bmrs.prune.criteria import BMRSN, BMRSU, L2, SNR, Criterion, ExpectedTheta
from bmrs.prune.dirichlet import Dirichlet
from bmrs.prune.eigendamage import COBD

#: The structured-pruning baselines beside the paper's methods.
BASELINES: tuple[str, ...] = ("c_obd", "dirichlet", "eigendamage")
#: Methods that prune a trained base network once and then fine-tune (L2 as in the paper, and the baselines).
POST_HOC: tuple[str, ...] = ("l2",) + BASELINES

CRITERIA = {
    "l2": lambda **kw: L2(),
    "etheta": lambda **kw: ExpectedTheta(**kw),
    "snr": lambda **kw: SNR(**kw),
    "bmrs_n": lambda **kw: BMRSN(**kw),
    "bmrs_n_code": lambda **kw: BMRSN(include_2pi=False, **kw),
    "bmrs_u8": lambda **kw: BMRSU(p1=8, **kw),
    "bmrs_u4": lambda **kw: BMRSU(p1=4, **kw),
    "c_obd": lambda **kw: COBD(**kw),
    "dirichlet": lambda **kw: Dirichlet(**kw),
}


def make_criterion(name: str, **kwargs) -> Criterion:
    """A criterion by its short name (see CRITERIA); e.g. make_criterion('bmrs_u4')."""
    key = name.lower()
    if key.startswith("bmrs_u") and key not in CRITERIA:
        try:
            return BMRSU(p1=float(key.removeprefix("bmrs_u").lstrip("-")), **kwargs)
        except ValueError:
            pass
    if key not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; valid: {', '.join(CRITERIA)} (or bmrs_u<p1>, e.g. bmrs_u6)")
    return CRITERIA[key](**kwargs)
