"""Example applications of the ledger; ``examples.fraud`` is the scenario behind ``ledger demo``.

A pkgutil-style namespace package: ``examples`` is a common name, and a project's own
``examples/`` folder (without an ``__init__.py``) on ``sys.path`` joins this package rather than
being hidden by it once the wheel is installed — ``python -m examples.train`` from the
project's root finds the project's module beside ``examples.fraud``.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
