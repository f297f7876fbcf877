"""Exceptions the engine raises for things a user can fix or must know about.

Every message is one line that names the culprit (a file, a parameter, a module), so the
command line can print it as is and exit non-zero without a traceback.
"""


class RefmasterError(Exception):
    """Base class: anything the command line reports as one clear line."""


class AudioError(RefmasterError):
    """An audio file or buffer that cannot be used (missing, corrupt, too short, NaN, ...)."""


class ParamError(RefmasterError, ValueError):
    """A chain parameter that is unknown, missing, not a number or out of range."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        super().__init__(f"parameter '{name}': {reason}")


class UsageError(RefmasterError, ValueError):
    """A request that cannot be carried out as asked (a missing reference, an unknown choice, a
    configuration that does not match the run it would continue)."""


class OptimisationError(RefmasterError, ArithmeticError):
    """ITO (or a nudge) whose objective stopped being a finite number: the inputs cannot be optimised."""


class ChainError(RefmasterError, ArithmeticError):
    """A numerical failure inside one module of the mastering chain."""

    def __init__(self, module: str, reason: str):
        self.module = module
        super().__init__(f"chain module '{module}': {reason}")
