"""`taskvec` with the test backbones and tasks registered: what tests launch in fresh processes
(under torchrun too). TASKVEC_TEST_FAIL="<rank>:<stage function>" makes that rank raise inside
that stage, for the tests of failures on one rank."""

import os
import sys

import conftest  # noqa: F401  (registers tiny-cnn and the toy tasks)


def _fail_on_rank() -> None:
    spec = os.environ.get("TASKVEC_TEST_FAIL")
    if not spec:
        return
    rank, name = spec.split(":")
    if os.environ.get("RANK", "0") != rank:
        return
    from taskvec.errors import TaskvecError
    from taskvec.pipeline import analyses, evaluations, reporting

    def fail(*args, **kwargs):
        raise TaskvecError(f"injected failure in {name} on rank {rank}")

    (module,) = [m for m in (evaluations, analyses, reporting) if hasattr(m, name)]  # the stage computations
    setattr(module, name, fail)


if __name__ == "__main__":
    _fail_on_rank()
    from taskvec.cli import main

    main(sys.argv[1:])
