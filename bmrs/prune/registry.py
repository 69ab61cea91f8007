"""The name -> criterion registry: every pruning method of the project by its key.

* the paper's criteria (:mod:`bmrs.prune.criteria`): ``l2``, ``etheta``, ``snr``, ``bmrs_n`` (ΔF_N of Eq. 8),
  ``bmrs_n_code`` (the released code's ΔF_N without 2π: the paper's BMRS_N), ``bmrs_u8``, ``bmrs_u4`` and any
  ``bmrs_u<p1>``;
* the data-dependent baselines: ``c_obd`` (:mod:`bmrs.prune.eigendamage`), ``dirichlet``
  (:mod:`bmrs.prune.dirichlet`); EigenDamage (``eigendamage``) rebuilds layers instead of masking units,
  so it is a method (:class:`bmrs.prune.eigendamage.EigenDamage`), not a criterion.
"""

from __future__ import annotations

import re

from bmrs.prune.criteria import BMRSN, BMRSU, L2, SNR, Criterion, ExpectedTheta
from bmrs.prune.dirichlet import Dirichlet
from bmrs.prune.eigendamage import COBD

#: The structured-pruning baselines beside the paper's methods.
BASELINES: tuple[str, ...] = ("c_obd", "dirichlet", "eigendamage")
#: Methods that prune a trained base network once and then fine-tune (L2 as in the paper, and the baselines).
POST_HOC: tuple[str, ...] = ("l2",) + BASELINES

CRITERIA = {
    "l2": L2,
    "etheta": ExpectedTheta,
    "snr": SNR,
    "bmrs_n": BMRSN,
    "bmrs_n_code": lambda **kw: BMRSN(include_2pi=False, **kw),
    "bmrs_u8": lambda **kw: BMRSU(p1=8, **kw),
    "bmrs_u4": lambda **kw: BMRSU(p1=4, **kw),
    "c_obd": COBD,
    "dirichlet": Dirichlet,
}

# p1 of "bmrs_u<p1>": a decimal number, sign and exponent included (so that "bmrs_u-3" is refused by BMRSU for its
# value instead of being read as 3).
_BMRS_U_P1 = re.compile(r"bmrs_u([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)")


def make_criterion(name: str, **kwargs) -> Criterion:
    """A criterion by its short name (see CRITERIA), with keyword arguments of its class; e.g.
    make_criterion('bmrs_u4'), make_criterion('snr', threshold=0.5), make_criterion('bmrs_u6').

    Raises TypeError for a name that is not a string or a keyword the criterion does not take, ValueError for an
    unknown name or an invalid value (e.g. p1 outside [0, p2))."""
    if not isinstance(name, str):
        raise TypeError(f"a criterion is named by a string such as 'bmrs_n'; got {name!r}")
    key = name.strip().lower()
    if key in CRITERIA:
        factory = CRITERIA[key]
    elif (m := _BMRS_U_P1.fullmatch(key)):
        p1 = float(m.group(1))
        factory = lambda **kw: BMRSU(p1=p1, **kw)  # noqa: E731
    else:
        raise ValueError(f"unknown criterion {name!r}; valid: {', '.join(CRITERIA)} (or bmrs_u<p1>, e.g. bmrs_u6)")
    try:
        return factory(**kwargs)
    except TypeError as exc:
        if "argument" not in str(exc):
            raise
        raise TypeError(f"criterion {name!r} does not take {', '.join(map(repr, sorted(kwargs)))} ({exc})") from None
