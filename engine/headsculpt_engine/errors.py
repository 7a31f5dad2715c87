"""Errors whose message is meant for a person: the CLI prints them without a traceback, the server
returns them as a 4xx answer or as a failed job's reason."""


class HeadSculptError(Exception):
    """Something the user can fix; the message says what and how."""


class InputError(HeadSculptError):
    """Bad input: a mesh, prompt, setting or file that cannot be used."""


class ModelNotFoundError(HeadSculptError):
    """A diffusion model is neither in the local cache nor in the given folder."""


class Cancelled(HeadSculptError):
    """The run was cancelled on request; its last checkpoint is kept."""


class DownloadError(HeadSculptError):
    """A model could not be fetched from the Hugging Face Hub (access, id, connection)."""
