"""kwneuro-pydra: content-addressed caching of neuroimaging pipeline steps.

The same `cacheable` steps run eagerly inside ``with Cache(...)`` and as nodes of Pydra 1.0
workflows (`kwneuro_pydra.pydra`), sharing one cache.
"""

from kwneuro_pydra._fingerprint import fingerprint
from kwneuro_pydra._kwneuro import adopt, install
from kwneuro_pydra._store import Entry
from kwneuro_pydra._version import __version__
from kwneuro_pydra.cache import Cache, CacheSpec, Explanation, cacheable, current_cache

__all__ = [
    "Cache",
    "CacheSpec",
    "Entry",
    "Explanation",
    "__version__",
    "adopt",
    "cacheable",
    "current_cache",
    "fingerprint",
]

install()  # kwneuro 1.0's own steps go through our cache (see kwneuro_pydra._kwneuro)
del install
