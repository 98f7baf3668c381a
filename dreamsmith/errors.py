"""The one exception family for users' mistakes: the CLI prints the message, no traceback."""


class DreamsmithError(Exception):
    """A user's mistake or an environment problem, with a message that says what to do."""


class ConfigError(DreamsmithError):
    """A configuration or override that cannot be used."""


class ModelLoadError(DreamsmithError):
    """A diffusion model that cannot be found or loaded."""


class RunDirError(DreamsmithError):
    """A run directory that cannot be written, resumed or exported."""


class BatchError(DreamsmithError):
    """A batch manifest, output directory or executor that cannot be used."""
