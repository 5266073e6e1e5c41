"""A conformance checker for the file protocol, in the manner of Autobahn|Testsuite and h2spec.

docs/protocol.md numbers every requirement; each case here checks one of them
(case 6.1.1 checks requirement 6.1) on connections of its own, within a time
budget, and ends OK, NON-STRICT, FAILED, INFORMATIONAL or UNIMPLEMENTED.

* :mod:`.model`: outcomes, requirements, cases and results (pure data);
* :mod:`.wire`: the checker's raw connections, every wait bounded;
* :mod:`.cases`: the cases, by section;
* :mod:`.matrix`: conformance.json and the Markdown matrix;
* :mod:`.runner`: starting the implementations and running the cases
  (``python run_experiment.py --conformance``).
"""

from .cases import CASES
from .model import OUTCOMES, REQUIREMENTS, Case, CaseResult, ImplementationRun, Outcome, select
from .runner import Implementation, add_arguments, check, main, run_case, write_outputs

__all__ = ["CASES", "OUTCOMES", "REQUIREMENTS", "Case", "CaseResult", "ImplementationRun", "Implementation",
           "Outcome", "add_arguments", "check", "main", "run_case", "select", "write_outputs"]
