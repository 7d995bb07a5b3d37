"""torchvision, the reference both benchmarks measure against: the module, or None where it cannot be imported."""
from typing import Optional

MISSING_REFERENCE: Optional[BaseException] = None  # why torchvision cannot be imported, where it cannot
try:  # the "test" extra installs it, the main-job install does not
    import torchvision
except (ImportError, RuntimeError) as error:  # RuntimeError: a torchvision built for another torch
    torchvision, MISSING_REFERENCE = None, error


def missing_reference_message(script: str) -> str:
    """The one-line error a benchmark's door prints (then exits 2) when torchvision is None."""
    return (f"{script}: error: torchvision, the reference this benchmark compares against, cannot be imported "
            f'({MISSING_REFERENCE}); install it: pip install -c constraints.txt -e ".[test]"')
