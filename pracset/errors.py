"""Errors that the command line turns into one line on stderr and exit code 2.

Everything a user can get wrong (a name, a path, a number, a file) raises a
:class:`PracsetError` subclass with a message that names the problem; bugs stay
ordinary exceptions so that their tracebacks are kept.
"""


class PracsetError(Exception):
    """Base class of the errors caused by user input."""


class ConfigError(PracsetError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class DataError(PracsetError):
    """A data set cannot be found, read or parsed."""


class RunFileError(PracsetError):
    """A file pracset wrote into a run directory (a ledger, a stage's metrics, a mask, a rewind point) is
    damaged, truncated or does not hold the structure pracset writes there; the message names the file."""


class UnknownNameError(PracsetError, KeyError):
    """A name is not in a registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TrainingDiverged(PracsetError):
    """Training blew up (a non-finite loss, a learning rate the weight update overflows): the settings are to blame.

    Raised by the training loops once per epoch (no host sync per step); the
    message names the stage and the epoch.
    """


class FloatHashesWarning(UserWarning):
    """A manifest's content hashes are taken of float inputs (e.g. after ToTensor + Normalize), not uint8 pixels.

    They match only the same float tensors, never the images stored as uint8
    (a Hugging Face copy, image files): :func:`pracset.load_subset` and
    ``save_hf_dataset`` then need ``match="id"``. Emitted through
    :mod:`warnings` (and logged) when such a manifest is written; its
    ``dataset.hash_form`` metadata says ``"float-tensor"``.
    """


class DegenerateTrainingWarning(UserWarning):
    """A training stage ended near chance or ran below the budget floor: what was computed from it is suspect.

    Emitted through :mod:`warnings` (and logged); ``tickets.json`` and the
    report carry the same flag (see :mod:`pracset.tickets.health`).
    """
